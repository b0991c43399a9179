"""Numba and CuPy kernels for the Adam / AdamW parameter update.

The formula and its derivation: tinyllm/optim/adam.py, ``Adam.step``, which calls these kernels
when the switch is on (``tinyllm.dispatch.accelerator``); tests hold the two equal bit for bit
(tests/test_adam_kernel.py, tests/test_kernels_nonfinite.py). p, m and v are updated in place;
g is only read.

The formula is whole-array NumPy (or CuPy) operations: about ten passes over memory per
parameter, most of them writing a temporary the size of p. The Numba kernel does all of it in
one pass over the flattened arrays, reading p, g, m, v once and writing p, m, v once, with no
temporaries, so no allocations and no page faults. For the 0.8M-parameter shakespeare-char GPT
(52 arrays, float32) an AdamW step went from ~8 ms median (~1,000 page faults per step; ~5 ms
where glibc is told to keep freed pages) to ~1.3-1.6 ms (0.85 ms at best) on the project's
2-core machine, ~0.25 ms of it the Python and dispatch cost of 52 calls.

Precision: the kernels give the formula's numbers bit for bit, in float32 and float64.
- The scalars (lr, betas, eps, and the bias corrections 1 - beta^t, computed once per step in
  float64 in Python) are cast to the arrays' dtype before the loop, which is what NumPy does
  with ``float32_array * python_float`` (the result stays float32). So a float32 loop stays
  float32, and rounds where the formula rounds.
- The Numba kernel is compiled without fastmath (``_exact_jit``; the other kernels use
  ``_numba.jit``'s flags). An element-wise loop needs none of them to vectorize (checked: ymm
  vdivps and vsqrtps in the machine code, and the same speed in all three weight-decay modes).
  With them, ``contract`` fuses ``b1 * m + (1 - b1) * g`` into one FMA and ``arcp`` turns
  ``m / bc1`` into ``m * (1 / bc1)``: one rounding fewer or more, which sounds harmless, but
  m is a difference of nearly equal terms wherever the gradient changes sign, and after 10
  steps m and p differed from the formula by up to 1e-2 relative in float32 (1e-10 in
  float64) at such points (``arcp`` and ``reassoc`` alone change p too). Exactness costs speed
  only where the arrays sit in L1/L2 and the divisions are the limit: 13 us against 7.6 us for
  16384 float32 elements; on the GPT's AdamW step, 1.54 against 1.50 ms (median), as most of
  its arrays are bigger than that and memory is the limit.

The Numba kernel runs serially: one element needs ~10 flops for 28 bytes of traffic (float32),
so it is memory-bound, and a parallel launch costs more than these arrays take (see _numba.py).

On CuPy arrays the same loop body runs as one ``ElementwiseKernel`` launch per parameter, where
the formula launches ~12 (each CuPy call costs ~10 us of host time, and a small model's GPU
step is bound by those launches, not by the GPU's work). It is compiled with ``--fmad=false``
for the reason above (NVRTC contracts into FMAs by default).
"""
import numpy as np

from tinyllm import backend
from tinyllm.kernels._numba import NUMBA_AVAILABLE, numba

_NO_DECAY, _DECOUPLED, _L2 = 0, 1, 2          # the kernels' weight-decay modes


# ----------------------------------------------------------------------------------------------
# Numba (1-D views of C-contiguous arrays of one dtype)

def _exact_jit(fn):
    """``numba.njit`` as ``_numba.jit`` does it, but with no fastmath (see the module docstring)."""
    if not NUMBA_AVAILABLE:
        return fn
    return numba.njit(cache=True, error_model="numpy")(fn)


@_exact_jit
def _adam_step_numba(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bias_correction1,
                     bias_correction2, mode):
    # every scalar in the arrays' dtype (new names: a Numba variable has one type)
    f = p.dtype.type
    lr_, eps_, wd = f(lr), f(eps), f(weight_decay)
    b1, b2, one_minus_b1, one_minus_b2 = f(beta1), f(beta2), f(1 - beta1), f(1 - beta2)
    bc1, bc2 = f(bias_correction1), f(bias_correction2)
    shrink = f(1 - lr * weight_decay)             # computed in float64, then rounded, as NumPy
    for i in range(p.shape[0]):
        pi = p[i]
        gi = g[i]
        if mode == _DECOUPLED:
            pi = pi * shrink
        elif mode == _L2:
            gi = gi + wd * pi
        mi = m[i] * b1 + one_minus_b1 * gi
        vi = v[i] * b2 + one_minus_b2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] = pi - lr_ * (mi / bc1) / (np.sqrt(vi / bc2) + eps_)


# ----------------------------------------------------------------------------------------------
# CuPy (GPU): the Numba loop's body as an elementwise kernel; p, m, v in place

_CUPY_ADAM = dict(
    name="tinyllm_adam_step",
    in_params="T g, T lr, T b1, T one_minus_b1, T b2, T one_minus_b2, T eps, T bc1, T bc2, "
              "T wd, T shrink, int32 mode",
    out_params="T p, T m, T v",
    operation="""
        T pi = p;
        T gi = g;
        if (mode == 1) pi = pi * shrink;
        else if (mode == 2) gi = gi + wd * pi;
        T mi = m * b1 + one_minus_b1 * gi;
        T vi = v * b2 + one_minus_b2 * (gi * gi);
        m = mi;
        v = vi;
        p = pi - lr * (mi / bc1) / (sqrt(vi / bc2) + eps);
    """,
    options=("--fmad=false",))


def _adam_step_cupy(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bias_correction1,
                    bias_correction2, mode):
    kern = backend.cupy_elementwise_kernel(**_CUPY_ADAM)
    kern(g, lr, beta1, 1 - beta1, beta2, 1 - beta2, eps, bias_correction1, bias_correction2,
         weight_decay, 1 - lr * weight_decay, mode, p, m, v)


# ----------------------------------------------------------------------------------------------
# the public wrapper: Numba for NumPy arrays, the elementwise kernel for CuPy arrays

def _flat(a):
    """``a`` (C-contiguous) as a 1-D view: the kernel writes through it, so never a copy.

    ``ravel`` of a C-contiguous array is a view, whose ``base`` is set; were it ever a copy, it
    would be a new array with no base. (``reshape(-1, copy=False)`` says the same, at 5x the
    cost: 1.1 us against 0.2 us, which added up to 0.2 ms per GPT step.)
    """
    flat = a.ravel()
    if flat.base is None:                         # pragma: no cover - cannot happen
        raise RuntimeError("adam_step: flattening copied the array; the update would be lost")
    return flat


def adam_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, decoupled):
    """One Adam (``decoupled=False``) or AdamW step at step t = ``step`` (from 1): p, m, v
    updated in place. p, g, m, v: float32 or float64 arrays of one dtype and shape; on the CPU
    also C-contiguous (the kernel writes through flat views)."""
    mode = _NO_DECAY if weight_decay == 0 else (_DECOUPLED if decoupled else _L2)
    if p.size == 0:
        return
    args = (float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
            1.0 - beta1 ** step, 1.0 - beta2 ** step, mode)
    if backend.get_array_module(p) is not np:
        _adam_step_cupy(p, g, m, v, *args)
        return
    _adam_step_numba(_flat(p), _flat(g), _flat(m), _flat(v), *args)

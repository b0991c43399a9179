"""Numba and CuPy kernels for GELU, exact (erf) and tanh forms, forward and backward.

The formula and its derivation: tinyllm/ops/elementwise.py, ``GELU``, whose forward and backward
call these kernels when the switch is on (``tinyllm.dispatch.accelerator``); tests hold the two
equal (tests/test_kernels.py, tests/test_kernels_nonfinite.py).

The formula evaluates GELU as whole-array expressions, about eight temporaries of x's size per
pass; the Numba kernel computes each element in registers in one pass over x (and dout), in
parallel over the flattened array above the size where a launch pays. Backward recomputes
tanh u / erf from x instead of saving them, so forward saves only x. On CuPy arrays the same
element bodies run as one ``ElementwiseKernel`` launch (CUDA's tanh, erf, exp) instead of the
formula's ~8-12. Constants are cast to x's dtype, so a float32 loop stays float32.

NaN and +-inf give what the formula gives, element by element (NaN stays NaN through the fast
tanh and erf of kernels/_math.py; GELU(-inf) is -inf * 0 = NaN in both, and so is the
derivative at +-inf).

Shapes: x, y, dout, dx any shape (treated as flat).
"""
import math

import numpy as np

from tinyllm import backend
from tinyllm.kernels._math import erf, exp, tanh
from tinyllm.kernels._numba import kernel, prange

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------
# Numba (flat arrays; iteration i writes only y[i] / dx[i])

@kernel
def _gelu_tanh_forward_numba(x, y):
    k, a = x.dtype.type(_SQRT_2_OVER_PI), x.dtype.type(0.044715)    # constants in x's dtype
    half, one = x.dtype.type(0.5), x.dtype.type(1)
    for i in prange(x.shape[0]):
        v = x[i]
        t = tanh(k * (v + a * v * v * v))
        y[i] = half * v * (one + t)


@kernel
def _gelu_tanh_backward_numba(x, dout, dx):
    k, a = x.dtype.type(_SQRT_2_OVER_PI), x.dtype.type(0.044715)
    a3, half, one = x.dtype.type(3 * 0.044715), x.dtype.type(0.5), x.dtype.type(1)
    for i in prange(x.shape[0]):
        v = x[i]
        t = tanh(k * (v + a * v * v * v))
        du = k * (one + a3 * v * v)
        dx[i] = dout[i] * (half * (one + t) + half * v * (one - t * t) * du)


@kernel
def _gelu_erf_forward_numba(x, y):
    r2, half, one = x.dtype.type(_INV_SQRT_2), x.dtype.type(0.5), x.dtype.type(1)
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = v * half * (one + erf(v * r2))


@kernel
def _gelu_erf_backward_numba(x, dout, dx):
    r2, half, one = x.dtype.type(_INV_SQRT_2), x.dtype.type(0.5), x.dtype.type(1)
    r2pi = x.dtype.type(_INV_SQRT_2PI)
    for i in prange(x.shape[0]):
        v = x[i]
        cdf = half * (one + erf(v * r2))
        dx[i] = dout[i] * (cdf + v * r2pi * exp(-half * v * v))


# ----------------------------------------------------------------------------------------------
# CuPy (GPU): the Numba loops' bodies as elementwise kernels, constants in x's dtype T

_K = f"const T k = {_SQRT_2_OVER_PI!r}, a = 0.044715, a3 = {3 * 0.044715!r};"
_CUPY_GELU = {
    ("tanh", "forward"): ("T x", "T y", _K + """
        T t = tanh(k * (x + a * x * x * x));
        y = (T)0.5 * x * ((T)1 + t);"""),
    ("tanh", "backward"): ("T x, T dout", "T dx", _K + """
        T t = tanh(k * (x + a * x * x * x));
        T du = k * ((T)1 + a3 * x * x);
        dx = dout * ((T)0.5 * ((T)1 + t) + (T)0.5 * x * ((T)1 - t * t) * du);"""),
    ("none", "forward"): ("T x", "T y", f"""
        y = x * (T)0.5 * ((T)1 + erf(x * (T){_INV_SQRT_2!r}));"""),
    ("none", "backward"): ("T x, T dout", "T dx", f"""
        T cdf = (T)0.5 * ((T)1 + erf(x * (T){_INV_SQRT_2!r}));
        dx = dout * (cdf + x * (T){_INV_SQRT_2PI!r} * exp((T)-0.5 * x * x));"""),
}


def _gelu_cupy(approximate, direction):
    in_params, out_params, operation = _CUPY_GELU[(approximate, direction)]
    return backend.cupy_elementwise_kernel(
        f"tinyllm_gelu_{approximate}_{direction}", in_params, out_params, operation)


# ----------------------------------------------------------------------------------------------
# the public wrappers: Numba for NumPy arrays, the elementwise kernel for CuPy arrays

def gelu_forward(x, approximate="none"):
    """GELU of the float32 or float64 array x (non-empty); ``approximate`` "none" or "tanh"."""
    if backend.get_array_module(x) is not np:
        return _gelu_cupy(approximate, "forward")(x)
    x1 = np.ascontiguousarray(x).reshape(-1)                      # any shape -> (n,)
    y1 = np.empty_like(x1)
    launch = _gelu_tanh_forward_numba if approximate == "tanh" else _gelu_erf_forward_numba
    launch.run(x1.size, x1, y1)
    return y1.reshape(x.shape)


def gelu_backward(x, dout, approximate="none"):
    """dx of GELU from the input x and the upstream gradient dout (x's shape and dtype)."""
    if backend.get_array_module(x) is not np:
        return _gelu_cupy(approximate, "backward")(x, dout)
    x1 = np.ascontiguousarray(x).reshape(-1)                      # any shape -> (n,)
    dout1 = np.ascontiguousarray(dout).reshape(-1)
    dx1 = np.empty_like(x1)
    launch = _gelu_tanh_backward_numba if approximate == "tanh" else _gelu_erf_backward_numba
    launch.run(x1.size, x1, dout1, dx1)
    return dx1.reshape(x.shape)

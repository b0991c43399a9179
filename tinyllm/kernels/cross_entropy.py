"""Cross-entropy fused with log-softmax: NumPy reference, Numba kernel, dispatcher.

Per row n of logits z (C classes), target t, label smoothing e:
    lse = m + log sum_c e^(z_c - m),   m = max_c z_c          (log-sum-exp, stable)
    -log p_c = lse - z_c
    loss = (1 - e)(lse - z_t) + e (lse - mean_c z_c)          (= -sum_c q_c log p_c,
                                                                q = (1-e) onehot(t) + e/C)
    dloss/dz_c = p_c - q_c = e^(z_c - lse) - (1 - e)[c == t] - e/C
Rows whose target is ``ignore_index`` get loss 0 and gradient 0, even when their logits hold NaN
or inf (they are not part of the loss; the reference once multiplied NaN by a zero dloss).
Elsewhere NaN and inf go through as in the formulas: a NaN or +inf logit makes its row's lse,
loss and gradient NaN (m = inf, e^(inf - inf)); a -inf logit has p_c = 0, and an infinite
loss if it is the target. Only an all -inf max is replaced by 0 (see kernels/softmax.py).

Forward keeps only lse (N,) for backward, not the (N, C) probabilities: backward recomputes
p_c = e^(z_c - lse) in the same pass that writes the gradient (as llm.c does), so forward +
backward touch z twice each and allocate nothing of size (N, C) but the gradient itself.

Shapes: z (N, C); t (N,) integers; loss, lse, dloss (N,); dz (N, C).
``dloss`` is the upstream gradient of each row's loss (for reduction="mean" it is
dout / n_valid for every row), so one backward serves every reduction.
"""
import numpy as np

from tinyllm import backend
from tinyllm.kernels._math import exp, row_max
from tinyllm.kernels._numba import choose, jit, kernel, prange

AUTO_MIN_ELEMENTS = 1       # serial Numba beat NumPy from (2, 8) up; see benchmarks/RESULTS.md


# ----------------------------------------------------------------------------------------------
# reference (NumPy or CuPy)

def cross_entropy_forward_reference(z, t, ignore_index=-100, label_smoothing=0.0):
    """Per-row loss (N,) (0 on ignored rows) and log-sum-exp (N,) of logits z (N, C)."""
    xp = backend.get_array_module(z)
    N = z.shape[0]
    valid = t != ignore_index
    ts = xp.where(valid, t, 0)                                   # any class on ignored rows
    m = z.max(axis=1)                                            # NaN if the row has a NaN
    m = xp.where(m == -xp.inf, 0, m)                             # all -inf row: lse = -inf
    lse = m + xp.log(xp.exp(z - m[:, None]).sum(axis=1))         # (N,)
    loss = lse - z[xp.arange(N), ts]
    if label_smoothing:
        loss = (1 - label_smoothing) * loss + label_smoothing * (lse - z.mean(axis=1))
    return xp.where(valid, loss, 0).astype(z.dtype), lse.astype(z.dtype)


def cross_entropy_backward_reference(z, t, lse, dloss, ignore_index=-100, label_smoothing=0.0):
    """dz (N, C) = (softmax(z) - q) * dloss[:, None], zero on ignored rows."""
    xp = backend.get_array_module(z)
    N, C = z.shape
    valid = t != ignore_index
    ts = xp.where(valid, t, 0)
    dz = xp.exp(z - lse[:, None])                                # p, (N, C)
    dz[xp.arange(N), ts] -= 1 - label_smoothing
    if label_smoothing:
        dz -= label_smoothing / C
    dz *= dloss[:, None].astype(z.dtype)
    xp.copyto(dz, 0, where=~valid[:, None])                      # ignored rows: 0, NaN or not
    return dz


# ----------------------------------------------------------------------------------------------
# Numba (rows in parallel; each iteration writes only its own row)

@kernel
def _cross_entropy_forward_numba(z, t, ignore_index, eps, loss, lse):
    N, C = z.shape
    for n in prange(N):
        zr = z[n]
        m = row_max(zr)
        if m == -np.inf:
            m = zr.dtype.type(0)
        s = zr.dtype.type(0)
        total = zr.dtype.type(0)
        for c in range(C):
            s += exp(zr[c] - m)                   # vectorizable exp (kernels/_math.py)
            total += zr[c]
        lse[n] = m + np.log(s)
        if t[n] == ignore_index:
            loss[n] = 0
        elif eps == 0:                            # no 0 * (lse - mean z): NaN for a -inf logit
            loss[n] = lse[n] - zr[t[n]]
        else:
            loss[n] = _smoothed(lse[n] - zr[t[n]], lse[n] - total / C, eps)


@jit(fastmath=False)
def _smoothed(nll, smooth, eps):
    """(1 - e) nll + e smooth, without fastmath: with it, LLVM distributed the products and a
    -inf target logit (nll = smooth = inf) gave inf - inf = NaN where the reference has inf."""
    return (1 - eps) * nll + eps * smooth


@kernel
def _cross_entropy_backward_numba(z, t, lse, dloss, ignore_index, eps, dz):
    N, C = z.shape
    for n in prange(N):
        zr, dzr = z[n], dz[n]
        if t[n] == ignore_index:
            for c in range(C):
                dzr[c] = 0
            continue
        g = dloss[n]
        off = eps / C
        for c in range(C):
            dzr[c] = (exp(zr[c] - lse[n]) - off) * g
        tn = t[n]
        if np.isfinite(g):
            dzr[tn] -= (1 - eps) * g
        else:        # (p - (1 - e) - e/C) g as the reference: p g - (1 - e) g is inf - inf.
            dzr[tn] = (np.exp(zr[tn] - lse[n]) - (1 - eps) - off) * g   # (np.exp: a second
            # inlined fast exp in one kernel makes Numba warn; this runs only for inf dloss)


# ----------------------------------------------------------------------------------------------
# dispatch

def _use_numba(impl, z, t):
    if backend.get_array_module(z) is not np:
        if impl == "numba":
            raise ValueError("cross_entropy: impl='numba' needs NumPy arrays, got CuPy arrays")
        return False
    if z.dtype.kind != "f" or z.ndim != 2 or z.size == 0:
        if impl == "numba":
            raise ValueError(f"cross_entropy: impl='numba' needs float logits (N, C), got "
                             f"dtype {z.dtype}, shape {z.shape}")
        return False
    return choose(impl, z.size >= AUTO_MIN_ELEMENTS) == "numba"


def cross_entropy_forward(z, t, ignore_index=-100, label_smoothing=0.0, impl=None):
    """Per-row losses (N,) and log-sum-exps (N,) for logits z (N, C) and targets t (N,).

    Targets must already be checked to lie in [0, C) or equal ``ignore_index``.
    """
    if not _use_numba(impl, z, t):
        return cross_entropy_forward_reference(z, t, ignore_index, label_smoothing)
    z = np.ascontiguousarray(z)
    loss = np.empty(z.shape[0], z.dtype)
    lse = np.empty(z.shape[0], z.dtype)
    t = np.ascontiguousarray(t, dtype=np.int64)
    _cross_entropy_forward_numba.run(z.size, z, t, ignore_index, z.dtype.type(label_smoothing),
                                     loss, lse)
    return loss, lse


def cross_entropy_backward(z, t, lse, dloss, ignore_index=-100, label_smoothing=0.0,
                           impl=None):
    """dz (N, C) from the logits, targets, saved log-sum-exps and per-row upstream dloss."""
    if not _use_numba(impl, z, t):
        return cross_entropy_backward_reference(z, t, lse, dloss, ignore_index, label_smoothing)
    z = np.ascontiguousarray(z)
    dz = np.empty_like(z)
    t = np.ascontiguousarray(t, dtype=np.int64)
    dloss = np.ascontiguousarray(dloss, dtype=z.dtype)
    _cross_entropy_backward_numba.run(z.size, z, t, lse, dloss, ignore_index,
                                      z.dtype.type(label_smoothing), dz)
    return dz

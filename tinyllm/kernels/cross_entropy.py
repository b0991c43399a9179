"""Numba kernels for cross-entropy fused with log-softmax, forward and backward.

The formula and its derivation: tinyllm/ops/loss.py, ``CrossEntropy``, whose forward and
backward call these kernels when the switch is on (``tinyllm.dispatch.accelerator``); tests
hold the two equal (tests/test_kernels.py, tests/test_kernels_nonfinite.py).

Forward keeps only the log-sum-exp lse (N,) for backward, as the formula does, not the (N, C)
probabilities: backward recomputes p_c = e^(z_c - lse) in the same pass that writes the
gradient (as llm.c does), so forward + backward touch z twice each and allocate nothing of size
(N, C) but the gradient itself. Rows run in parallel (``prange``), each iteration writing only
its own row.

NaN and infinities, as the formula: an ignored row gets loss 0 and gradient 0 whatever its
logits hold; elsewhere a NaN or +inf logit makes its row NaN (the max skips NaNs, the sum of
exps does not). Two places keep IEEE semantics against fastmath: the label-smoothed loss
(``_smoothed``, compiled without it) and an infinite upstream dloss (the target entry computed
in the formula's order).

Shapes: z (N, C); t (N,) integers in [0, C) or ignore_index; loss, lse, dloss (N,); dz (N, C).
"""
import numpy as np

from tinyllm.kernels._math import exp, row_max
from tinyllm.kernels._numba import jit, kernel, prange


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
    -inf target logit (nll = smooth = inf) gave inf - inf = NaN where the formula has inf."""
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
        else:        # (p - (1 - e) - e/C) g as the formula: p g - (1 - e) g is inf - inf.
            dzr[tn] = (np.exp(zr[tn] - lse[n]) - (1 - eps) - off) * g   # (np.exp: a second
            # inlined fast exp in one kernel makes Numba warn; this runs only for inf dloss)


# ----------------------------------------------------------------------------------------------
# the public wrappers

def cross_entropy_forward(z, t, ignore_index=-100, label_smoothing=0.0):
    """Per-row losses (N,) (0 on ignored rows) and log-sum-exps (N,) for float logits z (N, C),
    non-empty, and integer targets t (N,), already checked to lie in [0, C) or equal
    ``ignore_index``."""
    z = np.ascontiguousarray(z)
    loss = np.empty(z.shape[0], z.dtype)
    lse = np.empty(z.shape[0], z.dtype)
    t = np.ascontiguousarray(t, dtype=np.int64)
    _cross_entropy_forward_numba.run(z.size, z, t, ignore_index, z.dtype.type(label_smoothing),
                                     loss, lse)
    return loss, lse


def cross_entropy_backward(z, t, lse, dloss, ignore_index=-100, label_smoothing=0.0):
    """dz (N, C) from the logits, targets, forward's log-sum-exps and the per-row upstream
    gradient dloss (N,)."""
    z = np.ascontiguousarray(z)
    dz = np.empty_like(z)
    t = np.ascontiguousarray(t, dtype=np.int64)
    dloss = np.ascontiguousarray(dloss, dtype=z.dtype)
    _cross_entropy_backward_numba.run(z.size, z, t, lse, dloss, ignore_index,
                                      z.dtype.type(label_smoothing), dz)
    return dz

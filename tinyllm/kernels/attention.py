"""The Numba path of tinyllm/ops/attention.py: BLAS for the four products, one pass per row for
the rest. The formulas, their derivation and the shapes are the op's (ScaledDotProductAttention,
whose ``forward`` and ``backward`` hold them and take these wrappers as an ``if`` beside them
when the kernel switch is on).

Forward: S = q k^T (np.matmul over the (B, H) batch), then one pass per row turns S into
P = softmax(S * scale, masked) in place (no mask array for causal), then out = P v.
Backward: dV = P^T dO and dP = dO V^T on BLAS, one pass per row turns dP into
dS = P * (dP - rowsum(dP * P)) * scale in place, then dQ = dS K and dK = dS^T Q.

q, k, v, out and the gradients may be strided views (the three thirds of a packed qkv
projection, or (B, T, H, D) memory seen as (B, H, T, D)): the kernels read and write through the
strides. NumPy arrays only.

Why not fuse more: a fully fused per-(batch, head) Numba kernel (scores, softmax and the weighted
sum in L1-sized scratch arrays) was tried first and measured 2x slower than this at T=64, D=32:
its inner loops run over 32 or 64 elements, too short for the vectorized loop to pay for its
set-up, where BLAS has register-blocked micro-kernels.
"""
import numpy as np

from tinyllm.kernels._math import softmax_row
from tinyllm.kernels._numba import kernel, prange


@kernel
def _scaled_masked_softmax_numba(p, H, Tq, scale, causal, has_mask, mask):
    """p = softmax(p * scale, masked) IN PLACE for scores p (N, Tk) = (B * H * Tq, Tk) rows,
    one pass per row. (In place by design: with separate input and output arrays that might
    overlap, LLVM vectorizes a loop only behind a run-time overlap check, which fails when
    they are the same array; in place, this measured 1.5x faster.)

    Hidden keys get -inf and the whole row then goes through the plain softmax loops: for a
    causal row that computes exp over its hidden half too (exactly 0), but every loop runs over
    all Tk entries with no remainder, which measured 1.7x faster than stopping at the diagonal
    (T = 64: variable trip counts leave a scalar tail in each of the row's five loops).
    """
    N, Tk = p.shape
    offset = Tk - Tq
    dt = p.dtype.type
    sc = dt(scale)
    for n in prange(N):
        i = n % Tq                                           # query position of this row
        mb = n // (H * Tq) if mask.shape[0] > 1 else 0       # its batch entry and head
        mh = (n // Tq) % H if mask.shape[1] > 1 else 0
        pr = p[n]                                            # 1-D row view
        jmax = min(Tk, max(0, i + offset + 1)) if causal else Tk
        for j in range(Tk):
            pr[j] = pr[j] * sc if j < jmax else -np.inf
        if has_mask:
            for j in range(Tk):
                if mask[mb, mh, i, j]:
                    pr[j] = -np.inf
        softmax_row(pr, pr)                                  # in place (kernels/_math.py)


@kernel
def _softmax_backward_scaled_numba(p, dp, scale):
    """dp <- p * (dp - rowsum(dp * p)) * scale (= dS) IN PLACE, for (N, Tk) rows."""
    N, Tk = p.shape
    sc = p.dtype.type(scale)
    for n in prange(N):
        pr, dpr = p[n], dp[n]
        dot = p.dtype.type(0)
        for j in range(Tk):
            dot += dpr[j] * pr[j]
        for j in range(Tk):
            dpr[j] = pr[j] * (dpr[j] - dot) * sc


_NO_MASK = np.zeros((1, 1, 1, 1), dtype=np.bool_)     # the kernels' "no mask" placeholder


def attention_forward(q, k, v, scale, causal=False, mask=None, out=None):
    """(out, p): softmax(q k^T * scale, masked) v and the weights p (B, H, Tq, Tk).

    q (B, H, Tq, D); k, v (B, H, Tk, D); mask None or boolean (Bm, Hm, Tq, Tk), Bm in {1, B},
    Hm in {1, H}, True = hidden. ``out``: an optional (B, H, Tq, D) array (a view is fine) to
    write the result into, so callers can choose its memory layout.
    """
    B, H, Tq, _ = q.shape
    Tk = k.shape[2]
    p = np.matmul(q, np.swapaxes(k, -1, -2))                          # (B, H, Tq, Tk) scores
    p2 = p.reshape(B * H * Tq, Tk)                                    # a view: rows (N, Tk)
    m = mask if mask is not None else _NO_MASK
    _scaled_masked_softmax_numba.run(p.size, p2, H, Tq, float(scale), bool(causal),
                                     mask is not None, m)              # in place: p = weights
    return np.matmul(p, v, out=out), p


def attention_backward(dout, q, k, v, p, scale, dq=None, dk=None, dv=None):
    """(dq, dk, dv) for ``attention_forward``, from dout (B, H, Tq, D) and the saved p.

    ``dq``, ``dk``, ``dv``: optional arrays (views are fine) to write the gradients into, e.g.
    the three thirds of one packed dqkv array. No mask is needed: masked weights are already
    zero in p, so they pass no gradient.
    """
    dv = np.matmul(np.swapaxes(p, -1, -2), dout, out=dv)                 # (B, H, Tk, D)
    ds = np.matmul(dout, np.swapaxes(v, -1, -2))                        # dP (B, H, Tq, Tk)
    B, H, Tq, Tk = ds.shape
    p2 = np.ascontiguousarray(p).reshape(B * H * Tq, Tk)               # (B, H, Tq, Tk) -> (N, Tk)
    ds2 = ds.reshape(B * H * Tq, Tk)                                    # a view (fresh array)
    _softmax_backward_scaled_numba.run(ds.size, p2, ds2, float(scale))   # in place: dP -> dS
    dq = np.matmul(ds, k, out=dq)                                       # (B, H, Tq, D)
    dk = np.matmul(np.swapaxes(ds, -1, -2), q, out=dk)                  # (B, H, Tk, D)
    return dq, dk, dv

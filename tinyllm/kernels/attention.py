"""Scaled dot-product attention as one fused op: NumPy reference, Numba path, dispatcher.

Forward, for one batch entry and head, with Q (Tq, D), K (Tk, D), V (Tk, D), scale = 1/sqrt(D):

    S = Q K^T * scale                  (Tq, Tk)  scores
    S_ij = -inf where masked           causal: key j after query i; or mask[i, j] True
    P = softmax(S) along j             (Tq, Tk)  attention weights, rows sum to 1
    O = P V                            (Tq, D)   output

Backward, from dO = dL/dO (the chain rule through the three lines above, in reverse):

    dV = P^T dO                        (Tk, D)   O_id = sum_j P_ij V_jd
    dP = dO V^T                        (Tq, Tk)
    dS = P * (dP - rowsum(dP * P))     (Tq, Tk)  the softmax Jacobian applied to dP
    dQ = dS K * scale                  (Tq, D)   S_ij = scale * sum_d Q_id K_jd
    dK = dS^T Q * scale                (Tk, D)

Masked entries have P_ij = 0, so they pass no gradient: the mask needs no backward of its own.
Forward saves P (B, H, Tq, Tk) for the backward pass. On the Numba path S turns into P in place
and dP into dS in place: one (B, H, Tq, Tk) array each way, and no mask array for causal.

Causal masking with Tk >= Tq (decoding with a KV cache): the Tq queries are the *last* Tq
positions, so query i may see keys j <= i + (Tk - Tq).

Shapes: q (B, H, Tq, D); k, v (B, H, Tk, D); out, dout, dq (B, H, Tq, D); dk, dv like k;
p (B, H, Tq, Tk); mask None or boolean (Bm, Hm, Tq, Tk) with Bm in {1, B}, Hm in {1, H},
True where attention is NOT allowed. q, k, v, out and the gradients may be strided views (the
three thirds of a packed qkv projection, or (B, T, H, D) memory seen as (B, H, T, D)): the
kernels read and write through the strides.

Why fuse: composed of ops, one layer of attention is ~12 graph nodes (split, transposes, two
batched matmuls, scale, mask, softmax) with a (B, H, Tq, Tk) temporary for each. The Numba path
keeps the four products on BLAS (``np.matmul`` over the (B, H) batch) and does the row work in
one pass per row: scale, causal or boolean mask and softmax in forward (in place on the scores,
no mask array for causal), the softmax backward times the scale in backward (in place on dP).
A fully fused per-(batch, head) Numba kernel (scores, softmax and the weighted sum in L1-sized
scratch arrays) was tried first and measured 2x slower than this at T=64, D=32: its inner loops
run over 32 or 64 elements, too short for the vectorized loop to pay for its set-up, where BLAS
has register-blocked micro-kernels.
"""
import numpy as np

from tinyllm import backend
from tinyllm.kernels._math import exp, masked_row_fill, row_max
from tinyllm.kernels._numba import choose, kernel, prange
from tinyllm.kernels.softmax import softmax_backward_reference, softmax_forward_reference


# ----------------------------------------------------------------------------------------------
# reference (NumPy or CuPy): the formulas above, one array operation each

def full_mask(Tq, Tk, causal, mask, xp=np):
    """The combined boolean mask (True = masked), broadcastable to (B, H, Tq, Tk), or None."""
    m = None
    if causal:
        m = xp.triu(xp.ones((Tq, Tk), dtype=bool), k=1 + Tk - Tq)     # (Tq, Tk)
    if mask is not None:
        m = mask if m is None else (mask | m)
    return m


def attention_forward_reference(q, k, v, scale, causal=False, mask=None):
    """(out, p) for q (..., Tq, D), k, v (..., Tk, D): softmax(q k^T * scale, masked) v."""
    xp = backend.get_array_module(q, k, v)
    s = xp.matmul(q, xp.swapaxes(k, -1, -2)) * scale                 # (..., Tq, Tk)
    m = full_mask(q.shape[-2], k.shape[-2], causal, mask, xp)
    if m is not None:
        s = xp.where(m, -xp.inf, s)
    p = softmax_forward_reference(s).astype(q.dtype)                  # all-masked rows: zeros
    return xp.matmul(p, v), p                                         # (..., Tq, D)


def attention_backward_reference(dout, q, k, v, p, scale):
    """(dq, dk, dv) from dout (..., Tq, D) and the saved weights p (..., Tq, Tk)."""
    xp = backend.get_array_module(dout, q, k, v, p)
    dv = xp.matmul(xp.swapaxes(p, -1, -2), dout)                      # (..., Tk, D)
    dp = xp.matmul(dout, xp.swapaxes(v, -1, -2))                      # (..., Tq, Tk)
    ds = softmax_backward_reference(p, dp) * scale                    # (..., Tq, Tk)
    dq = xp.matmul(ds, k)                                             # (..., Tq, D)
    dk = xp.matmul(xp.swapaxes(ds, -1, -2), q)                        # (..., Tk, D)
    return dq, dk, dv


# ----------------------------------------------------------------------------------------------
# Numba: the row work fused (scale, mask, softmax; the softmax backward), the products on BLAS

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
        m = row_max(pr)                                      # skips NaN: total catches it
        if m == -np.inf:                                     # no visible key: weights 0
            fill = masked_row_fill(pr)                       # (NaN if a visible score is)
            for j in range(Tk):
                pr[j] = fill
            continue
        total = dt(0)
        for j in range(Tk):
            e = exp(pr[j] - m)                               # vectorizable (kernels/_math.py)
            pr[j] = e
            total += e
        inv = 1 / total
        for j in range(Tk):
            pr[j] *= inv


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


# ----------------------------------------------------------------------------------------------
# dispatch

def check_shapes(q, k, v, mask=None, op="attention"):
    """Raise a ValueError naming ``op`` unless q (B, H, Tq, D), k and v (B, H, Tk, D) (and the
    mask, broadcastable to (B, H, Tq, Tk)) fit together."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"{op}: expected q, k, v of shape (B, H, T, D), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    B, H, Tq, D = q.shape
    if k.shape != v.shape or k.shape[:2] != (B, H) or k.shape[3] != D:
        raise ValueError(f"{op}: q {tuple(q.shape)} needs k and v of shape (B, H, Tk, D) = "
                         f"({B}, {H}, Tk, {D}), got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.dtype != k.dtype or q.dtype != v.dtype or q.dtype.kind != "f":
        raise ValueError(f"{op}: q, k, v must share one floating dtype, got {q.dtype}, "
                         f"{k.dtype}, {v.dtype}")
    if mask is not None:
        Tk = k.shape[2]
        ok = (mask.dtype == np.bool_ and mask.ndim == 4 and mask.shape[2:] == (Tq, Tk)
              and mask.shape[0] in (1, B) and mask.shape[1] in (1, H))
        if not ok:
            raise ValueError(f"{op}: mask must be boolean of shape (B or 1, H or 1, Tq, Tk) = "
                             f"({B}|1, {H}|1, {Tq}, {Tk}), got {mask.dtype} "
                             f"{tuple(mask.shape)}")


_NO_MASK = np.zeros((1, 1, 1, 1), dtype=np.bool_)     # the kernels' "no mask" placeholder


def _use_numba(impl, *arrays):
    if backend.get_array_module(*arrays) is not np:
        if impl == "numba":
            raise ValueError("attention: impl='numba' needs NumPy arrays, got CuPy arrays")
        return False
    return choose(impl, auto_numba=True) == "numba"


def attention_forward(q, k, v, scale, causal=False, mask=None, out=None, impl=None):
    """(out, p): softmax(q k^T * scale, masked) v and the weights p (B, H, Tq, Tk).

    ``out``: an optional (B, H, Tq, D) array (a view is fine) to write the result into, so
    callers can choose its memory layout. ``impl``: None, "numpy" or "numba".
    """
    check_shapes(q, k, v, mask)
    if not _use_numba(impl, q, k, v):
        o, p = attention_forward_reference(q, k, v, scale, causal, mask)
        if out is None:
            return o, p
        out[...] = o
        return out, p
    B, H, Tq, _ = q.shape
    Tk = k.shape[2]
    p = np.matmul(q, np.swapaxes(k, -1, -2))                          # (B, H, Tq, Tk) scores
    p2 = p.reshape(B * H * Tq, Tk)                                    # a view: rows (N, Tk)
    m = mask if mask is not None else _NO_MASK
    _scaled_masked_softmax_numba.run(p.size, p2, H, Tq, float(scale), bool(causal),
                                     mask is not None, m)              # in place: p = weights
    return np.matmul(p, v, out=out), p


def attention_backward(dout, q, k, v, p, scale, dq=None, dk=None, dv=None, impl=None):
    """(dq, dk, dv) for ``attention_forward``, from dout (B, H, Tq, D) and the saved p.

    ``dq``, ``dk``, ``dv``: optional arrays (views are fine) to write the gradients into, e.g.
    the three thirds of one packed dqkv array. No mask is needed: masked weights are already
    zero in p, so they pass no gradient.
    """
    if not _use_numba(impl, dout, q, k, v, p):
        grads = attention_backward_reference(dout, q, k, v, p, scale)
        outs = (dq, dk, dv)
        for target, g in zip(outs, grads):
            if target is not None:
                target[...] = g
        return tuple(g if t is None else t for g, t in zip(grads, outs))
    dv = np.matmul(np.swapaxes(p, -1, -2), dout, out=dv)                 # (B, H, Tk, D)
    ds = np.matmul(dout, np.swapaxes(v, -1, -2))                        # dP (B, H, Tq, Tk)
    B, H, Tq, Tk = ds.shape
    p2 = np.ascontiguousarray(p).reshape(B * H * Tq, Tk)               # (B, H, Tq, Tk) -> (N, Tk)
    ds2 = ds.reshape(B * H * Tq, Tk)                                    # a view (fresh array)
    _softmax_backward_scaled_numba.run(ds.size, p2, ds2, float(scale))   # in place: dP -> dS
    dq = np.matmul(ds, k, out=dq)                                       # (B, H, Tq, D)
    dk = np.matmul(np.swapaxes(ds, -1, -2), q, out=dk)                  # (B, H, Tk, D)
    return dq, dk, dv

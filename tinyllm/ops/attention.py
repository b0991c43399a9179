"""Scaled dot-product attention as one op, and multi-head self-attention from a packed qkv.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(D), masked) V

What runs by default in the models is the same formula composed of ops (matmul, scale,
masked_fill, Softmax, matmul: ``tinyllm.nn.attention.scaled_dot_product_attention``), so its
backward is the chain rule through them, one graph node each. These two ops are its
accelerator, which the attention modules take when the kernel switch is on
(``tinyllm.kernels.set_impl("auto")``): one graph node each, whose backward is derived by hand.

Forward, for one batch entry and head, with Q (Tq, D), K (Tk, D), V (Tk, D), scale = 1/sqrt(D):

    S = Q K^T * scale                  (Tq, Tk)  scores
    S_ij = -inf where masked           causal: key j after query i; or mask[i, j] True
    P = softmax(S) along j             (Tq, Tk)  attention weights, rows sum to 1
    O = P V                            (Tq, D)   output

Backward, from dO = dL/dO (the chain rule through the three lines above, in reverse):

    dV = P^T dO                        (Tk, D)   O_id = sum_j P_ij V_jd
    dP = dO V^T                        (Tq, Tk)
    dS = P * (dP - rowsum(dP * P))     (Tq, Tk)  the softmax Jacobian applied to dP
                                                 (Softmax.backward, tinyllm/ops/softmax.py)
    dQ = dS K * scale                  (Tq, D)   S_ij = scale * sum_d Q_id K_jd
    dK = dS^T Q * scale                (Tk, D)

Masked entries have P_ij = 0, so they pass no gradient: the mask needs no backward of its own.
A query with no visible key gets weights 0 (not NaN), hence output 0 and no gradient. Forward
saves only P (B, H, Tq, Tk) (the composed path also keeps the scores), and causal attention
needs no mask array on the Numba path.

Causal masking with Tk >= Tq (decoding with a KV cache): the Tq queries are the *last* Tq
positions, so query i may see keys j <= i + (Tk - Tq).

The formulas above are the bodies of ``forward`` and ``backward`` below (NumPy or CuPy). The
Numba kernels (tinyllm/kernels/attention.py: BLAS for the four products, one pass per row for
scale, mask and softmax and for the softmax backward, in place) are an ``if`` beside them,
taken with the switch on; tests/test_attention.py holds the two equal and gradchecks both.

Mask convention (as everywhere in tinyllm, and PyTorch's ``key_padding_mask``): True = this
query may NOT attend to this key. (``torch.nn.functional.scaled_dot_product_attention``'s
boolean ``attn_mask`` means the opposite, which is why this op's argument is called ``mask``.)
Attention-weight dropout is not part of these ops: the modules take the composed path when it
is active.
"""
import math

import numpy as np

from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.autograd.tensor import Tensor
from tinyllm.dispatch import accelerator
from tinyllm.kernels import attention as attention_kernels
from tinyllm.ops._util import as_tensor


def causal_mask(Tq, Tk, device="cpu"):
    """(Tq, Tk) boolean, True above the diagonal: key position j > query position i (the
    future). With Tk > Tq the queries are the last Tq positions (as when decoding with a
    cache): query i may see keys j <= i + (Tk - Tq)."""
    xp = backend.xp_for_device(device)
    return xp.triu(xp.ones((Tq, Tk), dtype=bool), k=1 + Tk - Tq)


class ScaledDotProductAttention(Function):
    """out = softmax(q k^T * scale, masked) v over the last two axes, batched over (B, H).

    Shapes: q (B, H, Tq, D); k, v (B, H, Tk, D); mask (Bm, Hm, Tq, Tk) boolean with Bm in
    {1, B}, Hm in {1, H}, or None; out (B, H, Tq, D). ``causal``: key j is hidden from query i
    when j > i + (Tk - Tq). Saved for backward: q, k, v (the inputs, no copies) and the weights
    P (B, H, Tq, Tk). The derivation is the module docstring's.

    The output is a (B, H, Tq, D) view of (B, Tq, H, D) memory, so merging the heads back,
    ``out.transpose(1, 2).reshape(B, Tq, H * D)``, costs no copy. (``out``: the array to write
    it into, for QKVSelfAttention; q, k, v, out may be strided views.)
    """

    def forward(self, q, k, v, mask=None, causal=False, scale=None, out=None):
        xp = backend.get_array_module(q, k, v)
        B, H, Tq, D = q.shape
        Tk = k.shape[2]
        self.q, self.k, self.v = q, k, v
        self.scale = scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
        if out is None:
            out = xp.empty((B, Tq, H, D), q.dtype).transpose(0, 2, 1, 3)   # (B, H, Tq, D) view
        if accelerator("attention", q, k, v):
            _, self.p = attention_kernels.attention_forward(q, k, v, scale, causal, mask, out)
            return out
        s = xp.matmul(q, xp.swapaxes(k, -1, -2)) * scale     # (B, H, Tq, D) x (B, H, D, Tk)
        if causal:                                           # -> (B, H, Tq, Tk) scores
            hidden = causal_mask(Tq, Tk, backend.device_of(q))
            mask = hidden if mask is None else (mask | hidden)
        if mask is not None:
            s = xp.where(mask, -xp.inf, s)
        # softmax over the keys; a row with no visible key (all -inf) gets weights 0
        # (and with no keys at all, Tk = 0, there is no max to take: m = 0)
        m = s.max(axis=-1, keepdims=True) if Tk else xp.zeros(s.shape[:-1] + (1,), s.dtype)
        e = xp.exp(s - xp.where(m == -xp.inf, 0, m))         # every exponent <= 0
        total = e.sum(axis=-1, keepdims=True)
        p = (e / xp.where(total == 0, 1, total)).astype(q.dtype, copy=False)  # (B, H, Tq, Tk)
        self.p = p
        out[...] = xp.matmul(p, v)                           # (B, H, Tq, Tk) x (B, H, Tk, D)
        return out

    def backward(self, dout, into=(None, None, None)):
        # dout (B, H, Tq, D); ``into``: three arrays to write dq, dk, dv into (QKVSelfAttention's
        # thirds of one dqkv), or None each
        q, k, v, p, scale = self.q, self.k, self.v, self.p, self.scale
        if accelerator("attention", dout, q, k, v, p):
            return attention_kernels.attention_backward(dout, q, k, v, p, scale, *into)
        xp = backend.get_array_module(dout, q, k, v, p)
        dv = xp.matmul(xp.swapaxes(p, -1, -2), dout)          # dV = P^T dO       (B, H, Tk, D)
        dp = xp.matmul(dout, xp.swapaxes(v, -1, -2))          # dP = dO V^T       (B, H, Tq, Tk)
        ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))  # dS = P * (dP - rowsum(dP * P))
        dq = xp.matmul(ds, k) * scale                         # dQ = dS K scale   (B, H, Tq, D)
        dk = xp.matmul(xp.swapaxes(ds, -1, -2), q) * scale    # dK = dS^T Q scale (B, H, Tk, D)
        for target, g in zip(into, (dq, dk, dv)):
            if target is not None:
                target[...] = g
        return dq, dk, dv


class QKVSelfAttention(ScaledDotProductAttention):
    """Multi-head self-attention straight from a packed projection: qkv (B, T, 3C) -> (B, T, C).

    qkv holds [Q | K | V] along its last axis, each (B, T, C) with C = H * D, as GPT-2's
    ``c_attn`` produces it. Head h of Q is qkv[..., h*D:(h+1)*D]; seen as (B, T, 3, H, D) the
    three (B, H, T, D) operands are strided views, and the output heads are written straight
    into (B, T, H, D) = (B, T, C) memory. Backward writes dQ, dK, dV into the three thirds of
    one (B, T, 3C) gradient. Composed of ops, the same layer needs a split (whose backward
    builds three zero-padded (B, T, 3C) arrays and adds them), four reshapes and four
    transposes around the attention. The attention itself is ScaledDotProductAttention's.

    Shapes: qkv (B, T, 3C); out (B, T, C); saved P (B, H, T, T).
    """

    def forward(self, qkv, n_head, causal=True, scale=None):
        xp = backend.get_array_module(qkv)
        B, T, C3 = qkv.shape
        H, D = n_head, C3 // 3 // n_head
        self.shape, self.n_head = (B, T, C3), n_head
        qkv5 = qkv.reshape(B, T, 3, H, D)                     # (B, T, 3C) -> (B, T, 3, H, D)
        q, k, v = (qkv5[:, :, i].transpose(0, 2, 1, 3) for i in range(3))   # 3 x (B, H, T, D)
        y = xp.empty((B, T, H, D), qkv.dtype)
        super().forward(q, k, v, causal=causal, scale=scale,
                        out=y.transpose(0, 2, 1, 3))          # (B, H, T, D) view of y
        return y.reshape(B, T, H * D)                         # (B, T, H, D) -> (B, T, C)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        B, T, C3 = self.shape
        H = self.n_head
        D = C3 // 3 // H
        dqkv = xp.empty((B, T, 3, H, D), dout.dtype)
        dq, dk, dv = (dqkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, H, T, D)
        dout4 = dout.reshape(B, T, H, D).transpose(0, 2, 1, 3)   # (B, T, C) -> (B, H, T, D)
        super().backward(dout4, into=(dq, dk, dv))
        return dqkv.reshape(B, T, C3)                         # (B, T, 3, H, D) -> (B, T, 3C)


def _check_shapes(q, k, v, op="attention"):
    """Raise a ValueError naming ``op`` unless q (B, H, Tq, D), k and v (B, H, Tk, D) fit."""
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


def _mask_array(mask, B, H, Tq, Tk, device):
    """A boolean mask (array, Tensor or None) as a (Bm, Hm, Tq, Tk) array, Bm in {1, B}, Hm in
    {1, H} (size-1 query/key axes broadcast; nothing copied)."""
    if mask is None:
        return None
    m = mask.data if isinstance(mask, Tensor) else mask
    if backend.get_array_module(m) is np:
        m = np.asarray(m)
    m = backend.to_device(m, device)
    if m.dtype != np.bool_:
        raise TypeError(f"attention: mask must be boolean (True = masked), got {m.dtype}")
    if m.ndim > 4:
        raise ValueError(f"attention: mask must have at most 4 axes (B, H, Tq, Tk), got shape "
                         f"{tuple(m.shape)}")
    m4 = m.reshape((1,) * (4 - m.ndim) + tuple(m.shape))      # (..., Tq, Tk) -> 4 axes
    ok = (m4.shape[0] in (1, B) and m4.shape[1] in (1, H) and m4.shape[2] in (1, Tq)
          and m4.shape[3] in (1, Tk))
    if not ok:
        raise ValueError(f"attention: mask of shape {tuple(m.shape)} does not broadcast to "
                         f"(B, H, Tq, Tk) = ({B}, {H}, {Tq}, {Tk})")
    xp = backend.get_array_module(m4)
    return xp.broadcast_to(m4, (m4.shape[0], m4.shape[1], Tq, Tk))


def attention(q, k, v, mask=None, causal=False, scale=None):
    """softmax(q k^T * scale, masked) v as one op (scale defaults to 1/sqrt(D)).

    q (B, H, Tq, D); k, v (B, H, Tk, D); ``mask`` boolean, True = hidden, broadcastable to
    (B, H, Tq, Tk); ``causal``: each query sees only keys up to its own position (the last Tq
    of the Tk positions). Returns (B, H, Tq, D).
    """
    q, k, v = (as_tensor(t) for t in (q, k, v))
    _check_shapes(q, k, v, op="attention")
    B, H, Tq, _ = q.shape
    m = _mask_array(mask, B, H, Tq, k.shape[2], q.device)
    return ScaledDotProductAttention.apply(q, k, v, mask=m, causal=bool(causal), scale=scale)


def qkv_self_attention(qkv, n_head, causal=True, scale=None):
    """Multi-head self-attention of a packed qkv (B, T, 3C) (GPT-2's c_attn output), heads
    merged: returns (B, T, C). See ``QKVSelfAttention``."""
    qkv = as_tensor(qkv)
    if qkv.ndim != 3 or qkv.shape[2] % 3 or (qkv.shape[2] // 3) % n_head:
        raise ValueError(f"qkv_self_attention: expected qkv (B, T, 3C) with C divisible by "
                         f"n_head={n_head}, got shape {qkv.shape}")
    if qkv.dtype.kind != "f":
        raise ValueError(f"qkv_self_attention: qkv must be floating point, got {qkv.dtype}")
    return QKVSelfAttention.apply(qkv, n_head=int(n_head), causal=bool(causal), scale=scale)

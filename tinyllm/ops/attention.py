"""Scaled dot-product attention as one op, and multi-head self-attention from a packed qkv.

    Attention(Q, K, V) = softmax(Q K^T / sqrt(D), masked) V

Composed of ops (tinyllm/nn/attention.py, ``scaled_dot_product_attention``), the backward is
the chain rule through matmul, scale, mask and softmax, one graph node each. Here it is one
node whose backward is derived by hand (tinyllm/kernels/attention.py has the derivation):

    dV = P^T dO,   dP = dO V^T,   dS = P * (dP - rowsum(dP * P)),
    dQ = dS K / sqrt(D),   dK = dS^T Q / sqrt(D)

The two give the same numbers (tests/test_attention.py holds them equal and gradchecks both);
the fused op saves only P, and no mask array exists for causal attention.

Mask convention (as everywhere in tinyllm, and PyTorch's ``key_padding_mask``): True = this
query may NOT attend to this key. (``torch.nn.functional.scaled_dot_product_attention``'s
boolean ``attn_mask`` means the opposite, which is why this op's argument is called ``mask``.)
Attention-weight dropout is not part of the fused op: the modules fall back to the composed
path when it is active.
"""
import math

import numpy as np

from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.autograd.tensor import Tensor
from tinyllm.kernels.attention import attention_backward, attention_forward, check_shapes
from tinyllm.ops._util import as_tensor


class ScaledDotProductAttention(Function):
    """out = softmax(q k^T * scale, masked) v over the last two axes, batched over (B, H).

    Shapes: q (B, H, Tq, D); k, v (B, H, Tk, D); mask (Bm, Hm, Tq, Tk) boolean with Bm in
    {1, B}, Hm in {1, H}, or None; out (B, H, Tq, D). ``causal``: key j is hidden from query i
    when j > i + (Tk - Tq). Saved for backward: q, k, v (the inputs, no copies) and the weights
    P (B, H, Tq, Tk).

    The output is a (B, H, Tq, D) view of (B, Tq, H, D) memory, so merging the heads back,
    ``out.transpose(1, 2).reshape(B, Tq, H * D)``, costs no copy.
    """

    def forward(self, q, k, v, mask=None, causal=False, scale=None):
        xp = backend.get_array_module(q, k, v)
        B, H, Tq, D = q.shape
        self.scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
        out = xp.empty((B, Tq, H, D), q.dtype).transpose(0, 2, 1, 3)   # (B, H, Tq, D) view
        out, self.p = attention_forward(q, k, v, self.scale, causal, mask, out=out)
        self.q, self.k, self.v = q, k, v
        return out

    def backward(self, dout):
        return attention_backward(dout, self.q, self.k, self.v, self.p, self.scale)


class QKVSelfAttention(Function):
    """Multi-head self-attention straight from a packed projection: qkv (B, T, 3C) -> (B, T, C).

    qkv holds [Q | K | V] along its last axis, each (B, T, C) with C = H * D, as GPT-2's
    ``c_attn`` produces it. Head h of Q is qkv[..., h*D:(h+1)*D]; seen as (B, T, 3, H, D) the
    three (B, H, T, D) operands are strided views, and the output heads are written straight
    into (B, T, H, D) = (B, T, C) memory. Backward writes dQ, dK, dV into the three thirds of
    one (B, T, 3C) gradient. Composed of ops, the same layer needs a split (whose backward
    builds three zero-padded (B, T, 3C) arrays and adds them), four reshapes and four
    transposes around the attention.

    Shapes: qkv (B, T, 3C); out (B, T, C); saved P (B, H, T, T).
    """

    def forward(self, qkv, n_head, causal=True, scale=None):
        xp = backend.get_array_module(qkv)
        B, T, C3 = qkv.shape
        C = C3 // 3
        H, D = n_head, C // n_head
        self.shape, self.n_head = (B, T, C3), n_head
        self.scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
        qkv5 = qkv.reshape(B, T, 3, H, D)                     # (B, T, 3C) -> (B, T, 3, H, D)
        q, k, v = (qkv5[:, :, i].transpose(0, 2, 1, 3) for i in range(3))   # 3 x (B, H, T, D)
        y = xp.empty((B, T, H, D), qkv.dtype)
        _, self.p = attention_forward(q, k, v, self.scale, causal, None,
                                      out=y.transpose(0, 2, 1, 3))          # (B, H, T, D) view
        self.q, self.k, self.v = q, k, v
        return y.reshape(B, T, C)                             # (B, T, H, D) -> (B, T, C)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        B, T, C3 = self.shape
        H = self.n_head
        D = C3 // 3 // H
        dqkv = xp.empty((B, T, 3, H, D), dout.dtype)
        dq, dk, dv = (dqkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, H, T, D)
        dout4 = dout.reshape(B, T, H, D).transpose(0, 2, 1, 3)   # (B, T, C) -> (B, H, T, D)
        attention_backward(dout4, self.q, self.k, self.v, self.p, self.scale, dq=dq, dk=dk,
                           dv=dv)
        return dqkv.reshape(B, T, C3)                         # (B, T, 3, H, D) -> (B, T, 3C)


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
    check_shapes(q, k, v, op="attention")
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

"""Attention and the Transformer layers built on it (Vaswani et al. 2017).

Scaled dot-product attention, for queries Q (Tq, D), keys K (Tk, D), values V (Tk, D):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(D)) V

Each query's output is an average of the value rows, weighted by how well the query matches
each key. Dividing by sqrt(D) keeps the scores' variance near 1 when q and k have unit-variance
entries (a dot product of D terms has variance D), so the softmax does not saturate. Masked
positions get score -inf, hence weight exactly 0 (a query whose keys are all masked gets
all-zero weights: see tinyllm/kernels/softmax.py).

Multi-head attention runs H such attentions in parallel on learned projections of width
D = d_model / H and concatenates them:

    head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V),   MultiHead = Concat(head_1..H) W^O

implemented as one (d_model, d_model) projection per Q, K, V, reshaped into heads.

``scaled_dot_product_attention`` below is composed of ops whose backward is already derived and
gradient-checked (matmul, softmax, masked_fill, reshape, transpose), so its backward is the
chain rule through them: the readable version, which also returns the weights and applies
weight dropout. The modules use the fused op ``tinyllm.functional.attention`` (one graph node,
hand-derived backward, tinyllm/ops/attention.py) whenever neither is asked for;
tests/test_attention.py holds the two equal and gradchecks both.

Mask conventions (PyTorch's): ``key_padding_mask`` (B, Tk) is True at padded keys (ignored);
``attn_mask`` (Tq, Tk) or (B*, Tq, Tk) is True where attention is *not* allowed; ``causal=True``
adds the mask of future positions (key index > query index).
"""
import math

import numpy as np

from tinyllm import backend
from tinyllm import functional as F
from tinyllm.autograd.tensor import Tensor
from tinyllm.nn.layers import GELU, Dropout, LayerNorm, Linear, ReLU
from tinyllm.nn.module import Module, Parameter


def causal_mask(T_q, T_k, device="cpu"):
    """(T_q, T_k) boolean, True above the diagonal: key position j > query position i (the
    future). With T_k > T_q the queries are the last T_q positions (as when decoding with a
    cache)."""
    xp = backend.xp_for_device(device)
    offset = T_k - T_q
    return xp.triu(xp.ones((T_q, T_k), dtype=bool), k=1 + offset)


def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, training=False):
    """softmax(q k^T / sqrt(D) masked) v, returning (output, attention weights).

    Shapes: q (..., Tq, D); k, v (..., Tk, D); attn_mask broadcastable to (..., Tq, Tk), True
    where attention is not allowed. Output (..., Tq, D); weights (..., Tq, Tk).
    """
    D = q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))        # (..., Tq, Tk)
    if attn_mask is not None:
        scores = scores.masked_fill(attn_mask, float("-inf"))
    weights = F.softmax(scores, axis=-1)
    attended = F.dropout(weights, dropout_p, training=training) if dropout_p else weights
    return attended @ v, weights                                       # (..., Tq, D)


def _combine_masks(B, T_q, T_k, key_padding_mask, attn_mask, causal, device):
    """One boolean mask broadcastable to (B, 1, Tq, Tk) (True = masked), or None."""
    xp = backend.xp_for_device(device)
    mask = None
    if causal:
        mask = causal_mask(T_q, T_k, device)                           # (Tq, Tk)
    if attn_mask is not None:
        m = _bool_array(attn_mask, device)
        mask = m if mask is None else (mask | m)
    if mask is not None and mask.ndim == 3:                            # (B, Tq, Tk)
        mask = mask[:, None]                                           # -> (B, 1, Tq, Tk)
    if key_padding_mask is not None:
        kpm = _bool_array(key_padding_mask, device)
        if kpm.shape != (B, T_k):
            raise ValueError(f"attention: key_padding_mask must have shape (B, Tk) = "
                             f"{(B, T_k)}, got {kpm.shape}")
        kpm = kpm[:, None, None, :]                                    # (B, 1, 1, Tk)
        mask = kpm if mask is None else (xp.asarray(mask) | kpm)
    return mask


def _bool_array(m, device):
    m = m.data if isinstance(m, Tensor) else m
    if backend.get_array_module(m) is np:
        m = np.asarray(m)
    if m.dtype != np.bool_:
        raise TypeError(f"attention: masks must be boolean (True = masked), got {m.dtype}")
    return backend.to_device(m, device)


class MultiHeadAttention(Module):
    """Multi-head attention with separate Q, K, V projections (self- or cross-attention).

    forward(x, memory=None, key_padding_mask=None, attn_mask=None, need_weights=False)
      x: (B, Tq, C) queries (and keys/values for self-attention)
      memory: (B, Tk, C) keys/values for cross-attention (the encoder output)
      returns (B, Tq, C), or (output, weights (B, H, Tq, Tk)) when need_weights.
    """

    def __init__(self, d_model, n_heads, dropout=0.0, bias=True, causal=False, dtype=None):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"MultiHeadAttention: d_model {d_model} is not divisible by "
                             f"n_heads {n_heads}")
        self.d_model, self.n_heads = d_model, n_heads
        self.causal, self.dropout_p = causal, dropout
        self.q_proj = Linear(d_model, d_model, bias=bias, dtype=dtype)
        self.k_proj = Linear(d_model, d_model, bias=bias, dtype=dtype)
        self.v_proj = Linear(d_model, d_model, bias=bias, dtype=dtype)
        self.out_proj = Linear(d_model, d_model, bias=bias, dtype=dtype)
        self.resid_dropout = Dropout(dropout)

    def _heads(self, t, B, T):
        # (B, T, C) -> (B, T, H, D) -> (B, H, T, D)
        return t.reshape(B, T, self.n_heads, self.d_model // self.n_heads).transpose(1, 2)

    def forward(self, x, memory=None, key_padding_mask=None, attn_mask=None,
                need_weights=False, cache=None):
        """``cache`` (a dict, for decoding one step at a time): self-attention appends this
        call's keys and values to the cached ones; cross-attention computes them from
        ``memory`` once and reuses them. ``key_padding_mask`` must then cover all keys."""
        B, T_q, C = x.shape
        kv = x if memory is None else memory
        q = self._heads(self.q_proj(x), B, T_q)                        # (B, H, Tq, D)
        if cache is not None and memory is not None and "k" in cache:
            k, v = cache["k"], cache["v"]                              # fixed encoder keys
        else:
            k = self._heads(self.k_proj(kv), B, kv.shape[1])           # (B, H, Tk, D)
            v = self._heads(self.v_proj(kv), B, kv.shape[1])
            if cache is not None:
                if memory is None and "k" in cache:                    # earlier positions
                    k = F.concatenate([cache["k"], k], axis=2)
                    v = F.concatenate([cache["v"], v], axis=2)
                cache["k"], cache["v"] = k, v
        T_k = k.shape[2]
        weights = None
        if need_weights or (self.dropout_p > 0 and self.training):
            # the composed path, op by op: it returns the weights and applies weight dropout
            mask = _combine_masks(B, T_q, T_k, key_padding_mask, attn_mask, self.causal,
                                  x.device)
            y, weights = scaled_dot_product_attention(q, k, v, mask, self.dropout_p,
                                                      self.training)
        else:
            # one fused op (tinyllm/ops/attention.py); causal needs no mask array
            mask = _combine_masks(B, T_q, T_k, key_padding_mask, attn_mask, False, x.device)
            y = F.attention(q, k, v, mask=mask, causal=self.causal)
        y = y.transpose(1, 2).reshape(B, T_q, C)                       # (B, H, Tq, D) -> (B, Tq, C)
        y = self.resid_dropout(self.out_proj(y))
        return (y, weights) if need_weights else y

    def extra_repr(self):
        return f"d_model={self.d_model}, n_heads={self.n_heads}, causal={self.causal}"


class FeedForward(Module):
    """Position-wise feed-forward: Linear(d_model, d_ff) -> activation -> Linear(d_ff, d_model)."""

    def __init__(self, d_model, d_ff, activation="relu", dropout=0.0, bias=True, dtype=None):
        super().__init__()
        acts = {"relu": ReLU, "gelu": GELU, "gelu_tanh": lambda: GELU("tanh")}
        if activation not in acts:
            raise ValueError(f"FeedForward: activation must be one of {sorted(acts)}, got "
                             f"{activation!r}")
        self.fc1 = Linear(d_model, d_ff, bias=bias, dtype=dtype)
        self.act = acts[activation]()
        self.fc2 = Linear(d_ff, d_model, bias=bias, dtype=dtype)
        self.dropout = Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.fc2(self.act(self.fc1(x))))


def sinusoidal_positions(max_len, d_model, dtype=np.float32):
    """PE (max_len, d_model): PE[pos, 2i] = sin(pos / 10000^(2i/d_model)),
    PE[pos, 2i+1] = cos(pos / 10000^(2i/d_model)) (NumPy array).

    Each pair of dimensions is a sinusoid of its own wavelength (2 pi to 10000 * 2 pi), so
    PE[pos + k] is a fixed linear function (a rotation) of PE[pos] for every offset k.
    """
    pos = np.arange(max_len)[:, None]                                   # (T, 1)
    inv_freq = 1.0 / 10000 ** (np.arange(0, d_model, 2) / d_model)     # (ceil(C/2),)
    pe = np.zeros((max_len, d_model))
    pe[:, 0::2] = np.sin(pos * inv_freq)
    pe[:, 1::2] = np.cos(pos * inv_freq[: d_model // 2])
    return pe.astype(dtype)


class SinusoidalPositionalEncoding(Module):
    """x + PE[:T] for x (B, T, d_model); PE fixed (a non-persistent buffer), not learned."""

    def __init__(self, d_model, max_len=5000, dtype=None):
        super().__init__()
        dt = np.dtype(dtype) if dtype is not None else backend.get_default_dtype()
        self.register_buffer("pe", backend.to_device(sinusoidal_positions(max_len, d_model, dt),
                                                     backend.default_device()),
                             persistent=False)

    def forward(self, x, offset=0):
        T = x.shape[-2]
        if offset + T > self.pe.shape[0]:
            raise ValueError(f"SinusoidalPositionalEncoding: positions up to {offset + T} "
                             f"exceed max_len {self.pe.shape[0]}")
        return x + self.pe[offset:offset + T]


class LearnedPositionalEmbedding(Module):
    """x + P[:T] with P (max_len, d_model) a learned Parameter (GPT-2's wpe, BERT's)."""

    def __init__(self, max_len, d_model, std=0.02, dtype=None):
        super().__init__()
        dt = np.dtype(dtype) if dtype is not None else backend.get_default_dtype()
        gen = backend.get_generator(backend.default_device())
        self.weight = Parameter((gen.standard_normal((max_len, d_model)) * std).astype(dt))

    def forward(self, x, offset=0):
        T = x.shape[-2]
        if offset + T > self.weight.shape[0]:
            raise ValueError(f"LearnedPositionalEmbedding: positions up to {offset + T} exceed "
                             f"max_len {self.weight.shape[0]}")
        return x + self.weight[offset:offset + T]


class TransformerEncoderLayer(Module):
    """Self-attention + feed-forward, each wrapped in a residual connection and LayerNorm.

    Post-LN (``norm_first=False``, the original paper):  x = LN(x + Sublayer(x))
    Pre-LN (``norm_first=True``, GPT-2 style):             x = x + Sublayer(LN(x))
    """

    def __init__(self, d_model, n_heads, d_ff, dropout=0.0, activation="relu",
                 norm_first=False, dtype=None):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout, dtype=dtype)
        self.ff = FeedForward(d_model, d_ff, activation, dropout, dtype=dtype)
        self.norm1 = LayerNorm(d_model, dtype=dtype)
        self.norm2 = LayerNorm(d_model, dtype=dtype)

    def forward(self, x, key_padding_mask=None):
        if self.norm_first:
            x = x + self.self_attn(self.norm1(x), key_padding_mask=key_padding_mask)
            return x + self.ff(self.norm2(x))
        x = self.norm1(x + self.self_attn(x, key_padding_mask=key_padding_mask))
        return self.norm2(x + self.ff(x))


class TransformerDecoderLayer(Module):
    """Causal self-attention, cross-attention to the encoder output, feed-forward; each with a
    residual connection and LayerNorm (post-LN by default, pre-LN with ``norm_first=True``)."""

    def __init__(self, d_model, n_heads, d_ff, dropout=0.0, activation="relu",
                 norm_first=False, dtype=None):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, n_heads, dropout, causal=True, dtype=dtype)
        self.cross_attn = MultiHeadAttention(d_model, n_heads, dropout, dtype=dtype)
        self.ff = FeedForward(d_model, d_ff, activation, dropout, dtype=dtype)
        self.norm1 = LayerNorm(d_model, dtype=dtype)
        self.norm2 = LayerNorm(d_model, dtype=dtype)
        self.norm3 = LayerNorm(d_model, dtype=dtype)

    def forward(self, x, memory, tgt_key_padding_mask=None, memory_key_padding_mask=None,
                cache=None):
        """``cache``: {"self": {}, "cross": {}} for step-by-step decoding (see
        MultiHeadAttention.forward)."""
        c_self = None if cache is None else cache.setdefault("self", {})
        c_cross = None if cache is None else cache.setdefault("cross", {})
        sa = lambda h: self.self_attn(h, key_padding_mask=tgt_key_padding_mask,  # noqa: E731
                                      cache=c_self)
        ca = lambda h: self.cross_attn(h, memory,                                # noqa: E731
                                       key_padding_mask=memory_key_padding_mask, cache=c_cross)
        if self.norm_first:
            x = x + sa(self.norm1(x))
            x = x + ca(self.norm2(x))
            return x + self.ff(self.norm3(x))
        x = self.norm1(x + sa(x))
        x = self.norm2(x + ca(x))
        return self.norm3(x + self.ff(x))

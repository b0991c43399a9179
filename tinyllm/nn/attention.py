"""Attention and the Transformer layers built on it (Vaswani et al. 2017): one attention module
and one residual block, shared by GPT, BERT and the encoder-decoder Transformer.

Scaled dot-product attention, for queries Q (Tq, D), keys K (Tk, D), values V (Tk, D):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(D)) V

Each query's output is an average of the value rows, weighted by how well the query matches
each key. Dividing by sqrt(D) keeps the scores' variance near 1 when q and k have unit-variance
entries (a dot product of D terms has variance D), so the softmax does not saturate. Masked
positions get score -inf, hence weight exactly 0 (a query whose keys are all masked gets
all-zero weights: see tinyllm/ops/softmax.py).

Multi-head attention runs H such attentions in parallel on learned projections of width
D = head_size = n_embd / H and concatenates them:

    head_h = Attention(Q W_h^Q, K W_h^K, V W_h^V),   MultiHead = Concat(head_1..H) W^O

implemented as one (C, C) projection per Q, K, V (or one packed (C, 3C), GPT-2's c_attn),
reshaped into heads.

``scaled_dot_product_attention`` below is composed of ops whose backward is already derived and
gradient-checked (matmul, scale, masked_fill, Softmax, dropout), so its backward is the chain
rule through them: this is the readable path, and what runs by default. The fused ops of
tinyllm/ops/attention.py (one graph node, hand-derived backward; ``QKVSelfAttention`` straight
from a packed projection) are its accelerator, taken only with the kernel switch on
(``tinyllm.kernels.set_impl("auto")``, which ``tinyllm train`` sets) and when neither the
weights nor weight dropout are asked for; tests/test_attention.py holds the two equal.

Mask conventions (PyTorch's nn.MultiheadAttention): ``key_padding_mask`` (B, Tk) is True at
padded keys (ignored); a boolean ``attn_mask`` (Tq, Tk), (B, Tq, Tk) or (B, 1, Tq or 1, Tk) is
True where attention is *not* allowed; a float ``attn_mask`` of those shapes (or (B, H, Tq, Tk))
is *added* to the scores (0 keeps, -inf hides, anything between biases: ALiBi, Hugging Face's
4-d masks); ``causal=True`` adds the mask of future positions (key index > query index).

Grouped-query attention (Ainslie et al. 2023; LLaMA 2/3): with ``n_kv_head`` < ``n_head`` the
keys and values have only n_kv_head heads, each shared by a group of n_head // n_kv_head query
heads (n_kv_head = 1 is multi-query attention). The KV cache shrinks by that factor; the
readable path repeats each key/value head for its group (query head h reads kv head
h // group) and then runs the same attention.
"""
import math

import numpy as np

from tinyllm import backend
from tinyllm import functional as F
from tinyllm.autograd.tensor import Tensor
from tinyllm.dispatch import accelerator
from tinyllm.nn.layers import GELU, Dropout, LayerNorm, Linear, ReLU
from tinyllm.nn.module import Module, Parameter
from tinyllm.ops.attention import causal_mask


def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, training=False,
                                 attn_bias=None):
    """softmax(q k^T / sqrt(D) + bias, masked) v, op by op, returning (output, weights).

    Shapes: q (..., Tq, D); k, v (..., Tk, D); attn_mask broadcastable to (..., Tq, Tk): boolean,
    True where attention is not allowed, or float, added to the scores (then it is the bias);
    attn_bias, a float array or Tensor broadcastable to (..., Tq, Tk), added before the boolean
    mask hides. Output (..., Tq, D); weights (..., Tq, Tk) (before the weight dropout).
    """
    if attn_mask is not None and _is_float(attn_mask):
        if attn_bias is not None:
            raise ValueError("scaled_dot_product_attention: got a float attn_mask and an "
                             "attn_bias; pass one additive mask")
        attn_mask, attn_bias = None, attn_mask
    D = q.shape[-1]
    # scores, one per query and key: (B, H, Tq, D) @ (B, H, D, Tk) -> (B, H, Tq, Tk)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))
    if attn_bias is not None:
        att = att + attn_bias                                   # additive mask: -inf hides
    if attn_mask is not None:
        att = att.masked_fill(attn_mask, float("-inf"))         # hidden keys: weight exactly 0
    weights = F.softmax(att, axis=-1)                           # (B, H, Tq, Tk), rows sum to 1
    att = F.dropout(weights, dropout_p, training=training) if dropout_p else weights
    y = att @ v                                 # (B, H, Tq, Tk) @ (B, H, Tk, D) -> (B, H, Tq, D)
    return y, weights


def _combine_masks(B, Tq, Tk, key_padding_mask, attn_mask, causal, device):
    """One boolean mask broadcastable to (B, 1, Tq, Tk) (True = masked), or None."""
    xp = backend.xp_for_device(device)
    mask = None
    if causal:
        mask = causal_mask(Tq, Tk, device)                             # (Tq, Tk)
    if attn_mask is not None:
        m = _bool_array(attn_mask, device)
        mask = m if mask is None else (mask | m)
    if mask is not None and mask.ndim == 3:                            # (B, Tq, Tk)
        mask = mask[:, None]                                           # -> (B, 1, Tq, Tk)
    if key_padding_mask is not None:
        kpm = _bool_array(key_padding_mask, device)
        if kpm.shape != (B, Tk):
            raise ValueError(f"attention: key_padding_mask must have shape (B, Tk) = "
                             f"{(B, Tk)}, got {kpm.shape}")
        kpm = kpm[:, None, None, :]                                    # (B, 1, 1, Tk)
        mask = kpm if mask is None else (xp.asarray(mask) | kpm)
    return mask


def _is_float(m):
    dtype = getattr(m, "dtype", None)
    return np.dtype(dtype if dtype is not None else np.asarray(m).dtype).kind == "f"


def _float_bias(attn_mask, device):
    """A float attn_mask as an additive bias broadcastable to (B, H, Tq, Tk). A Tensor stays a
    Tensor (a learned bias gets its gradient); an array moves to ``device``."""
    m = attn_mask
    if not isinstance(m, Tensor):
        m = backend.to_device(np.asarray(m) if backend.get_array_module(m) is np else m, device)
    return m[:, None] if m.ndim == 3 else m                 # (B, Tq, Tk) -> (B, 1, Tq, Tk)


def _bool_array(m, device):
    m = m.data if isinstance(m, Tensor) else m
    if backend.get_array_module(m) is np:
        m = np.asarray(m)
    if m.dtype != np.bool_:
        raise TypeError(f"attention: masks must be boolean (True = masked), or float for an "
                        f"additive attn_mask, got {m.dtype}")
    return backend.to_device(m, device)


class Attention(Module):
    """Multi-head attention, self or cross: the one forward of every Transformer in tinyllm.

    forward(x, memory=None, key_padding_mask=None, attn_mask=None, need_weights=False,
            cache=None)
      x: (B, Tq, C) queries (and keys/values for self-attention)
      memory: (B, Tk, C) keys/values for cross-attention (the encoder output)
      attn_mask: boolean (True = hidden) or float (added to the scores): see the module doc
      cache: a KVCache (tinyllm/nn/kv_cache.py), for decoding one step at a time:
             self-attention writes this call's keys and values (B, Hkv, T, D) after the
             cached ones and attends to all; cross-attention computes them from ``memory``
             once and reuses them. ``key_padding_mask`` must then cover all keys.
      returns (B, Tq, C), or (output, weights (B, H, Tq, Tk)) when need_weights.

    ``n_kv_head`` (default n_head): grouped-query attention, k and v with Hkv = n_kv_head heads
    (their projections are (C, Hkv * D)), each shared by n_head // n_kv_head query heads.

    Subclasses hold the projections under the names their checkpoints use, and say how to
    apply them in small methods:
      project(x, kv) -> q (B, Tq, C) from x, and k, v (B, Tk, Hkv * D) from kv (None when kv
                        is None: the cache holds them);
      position(q, k, offset) -> q, k (B, H or Hkv, T, D) with positions applied, for
                        self-attention (RoPE: LlamaAttention); ``offset`` is the number of
                        positions already in the cache. Identity here;
      output(y)      -> the output projection of the merged heads (identity here: BERT keeps
                        it in BertSelfOutput).
    A subclass with one packed (C, 3C) projection (GPT-2's c_attn) also defines
    ``project_packed(x)`` -> qkv (B, T, 3C), which lets the switch take the fused
    ``QKVSelfAttention`` straight from it.
    """

    project_packed = None

    def __init__(self, n_embd, n_head, dropout=0.0, causal=False, n_kv_head=None):
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_embd % n_head:
            raise ValueError(f"{type(self).__name__}: n_embd {n_embd} is not divisible by "
                             f"n_head {n_head}")
        if not 1 <= n_kv_head <= n_head or n_head % n_kv_head:
            raise ValueError(f"{type(self).__name__}: n_head {n_head} must be a multiple of "
                             f"n_kv_head, got n_kv_head {n_kv_head}")
        self.n_embd, self.n_head, self.head_size = n_embd, n_head, n_embd // n_head
        self.n_kv_head = n_kv_head
        self.causal = causal
        self.dropout = dropout                  # on the attention weights, while training

    def project(self, x, kv):
        raise NotImplementedError(f"{type(self).__name__}.project")

    def position(self, q, k, offset):
        return q, k

    def output(self, y):
        return y

    def split_heads(self, t):
        B, T, C = t.shape                       # C = H * D (queries) or Hkv * D (keys, values)
        return t.reshape(B, T, C // self.head_size, self.head_size).transpose(1, 2)  # (B,H,T,D)

    def repeat_kv(self, t):
        """(B, Hkv, T, D) -> (B, H, T, D): query head h reads kv head h // (H / Hkv), as Hugging
        Face's repeat_kv. An index, so backward adds each group's gradients into its head."""
        if self.n_kv_head == self.n_head:
            return t
        xp = backend.get_array_module(t.data)
        kv_head = xp.arange(self.n_head) // (self.n_head // self.n_kv_head)     # (H,)
        return t[:, kv_head]

    def forward(self, x, memory=None, key_padding_mask=None, attn_mask=None,
                need_weights=False, cache=None):
        B, Tq, C = x.shape
        attn_bias = None
        if attn_mask is not None and _is_float(attn_mask):      # additive: kept apart
            attn_mask, attn_bias = None, _float_bias(attn_mask, x.device)
        # the fused ops cannot return the weights, drop some of them, add a bias or share heads
        fusable = (not need_weights and not (self.dropout > 0 and self.training)
                   and attn_bias is None and self.n_kv_head == self.n_head)
        packed = (self.project_packed is not None and memory is None and cache is None
                  and key_padding_mask is None and attn_mask is None
                  and type(self).position is Attention.position)
        if fusable and packed and accelerator("attention", x.data, cupy=True):
            # accelerator: one op from the packed projection to merged heads (B, Tq, C)
            y = F.qkv_self_attention(self.project_packed(x), self.n_head, causal=self.causal)
            return self.output(y)

        cached_memory = cache is not None and memory is not None and cache.length > 0
        kv = None if cached_memory else (x if memory is None else memory)
        q, k, v = self.project(x, kv)            # (B, Tq, C), (B, Tk, Hkv D), (B, Tk, Hkv D)
        q = self.split_heads(q)                        # (B, Tq, C) -> (B, H, Tq, D)
        if cached_memory:
            k, v = cache.tensors()                     # the encoder's keys, computed once
        else:
            k, v = self.split_heads(k), self.split_heads(v)               # (B, Hkv, Tk, D)
            if memory is None:                         # self-attention: positions (RoPE)
                q, k = self.position(q, k, 0 if cache is None else cache.length)
            if cache is not None:
                # written in place after the earlier positions; all of them come back
                k, v = cache.append(k, v)                         # (B, Hkv, Tpast + Tq, D)
        Tk = k.shape[2]
        if fusable and accelerator("attention", q.data, k.data, v.data, cupy=True):
            # accelerator: one fused op; causal needs no mask array there
            mask = _combine_masks(B, Tq, Tk, key_padding_mask, attn_mask, False, x.device)
            y, weights = F.attention(q, k, v, mask=mask, causal=self.causal), None
        else:
            # the readable path: matmul, scale, mask, Softmax, (dropout), matmul
            mask = _combine_masks(B, Tq, Tk, key_padding_mask, attn_mask, self.causal,
                                  x.device)
            k, v = self.repeat_kv(k), self.repeat_kv(v)         # (B, Hkv, Tk, D) -> (B, H, Tk, D)
            y, weights = scaled_dot_product_attention(q, k, v, mask, self.dropout,
                                                      self.training, attn_bias=attn_bias)
        y = y.transpose(1, 2).reshape(B, Tq, C)  # (B, H, Tq, D) -> (B, Tq, H * D) = (B, Tq, C)
        y = self.output(y)
        return (y, weights) if need_weights else y

    def extra_repr(self):
        kv = f", n_kv_head={self.n_kv_head}" if self.n_kv_head != self.n_head else ""
        return f"n_embd={self.n_embd}, n_head={self.n_head}{kv}, causal={self.causal}"


class MultiHeadAttention(Attention):
    """Multi-head attention with separate Q, K, V projections (self- or cross-attention), named
    as PyTorch's: ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` (C, C) each, then residual
    dropout; with ``n_kv_head`` < n_head (grouped-query), k_proj and v_proj are
    (C, n_kv_head * D). See ``Attention`` for forward."""

    def __init__(self, n_embd, n_head, dropout=0.0, bias=True, causal=False, dtype=None,
                 n_kv_head=None):
        super().__init__(n_embd, n_head, dropout, causal, n_kv_head)
        C, C_kv = n_embd, self.n_kv_head * self.head_size
        self.q_proj = Linear(C, C, bias=bias, dtype=dtype)
        self.k_proj = Linear(C, C_kv, bias=bias, dtype=dtype)
        self.v_proj = Linear(C, C_kv, bias=bias, dtype=dtype)
        self.out_proj = Linear(C, C, bias=bias, dtype=dtype)
        self.resid_dropout = Dropout(dropout)

    def project(self, x, kv):
        q = self.q_proj(x)
        if kv is None:
            return q, None, None
        return q, self.k_proj(kv), self.v_proj(kv)

    def output(self, y):
        return self.resid_dropout(self.out_proj(y))


class ResidualBlock(Module):
    """The one residual block: sub-layers f (attention, feed-forward) around a residual stream,
    each wrapped with a LayerNorm in one of two places:

        pre-LN  (``norm_first=True``: GPT-2, nanoGPT)          x = x + f(LN(x))
        post-LN (``norm_first=False``: the paper, BERT)       x = LN(x + f(x))

    Pre-LN keeps an identity path from the output to the input of the whole stack (gradients
    reach the first layers unscaled), so it trains without warm-up; post-LN normalizes each
    layer's output. Subclasses hold the LayerNorms and sub-layers under their checkpoints'
    names and call ``residual`` once per sub-layer.
    """

    def __init__(self, norm_first):
        super().__init__()
        self.norm_first = norm_first

    def residual(self, x, ln, f, *args, **kwargs):
        """One sub-layer: x + f(ln(x)) or ln(x + f(x)); ``args``/``kwargs`` go to f."""
        if self.norm_first:
            return x + f(ln(x), *args, **kwargs)
        return ln(x + f(x, *args, **kwargs))


class FeedForward(Module):
    """Position-wise feed-forward: Linear(n_embd, d_ff) -> activation -> Linear(d_ff, n_embd)."""

    def __init__(self, n_embd, d_ff, activation="relu", dropout=0.0, bias=True, dtype=None):
        super().__init__()
        acts = {"relu": ReLU, "gelu": GELU, "gelu_tanh": lambda: GELU("tanh")}
        if activation not in acts:
            raise ValueError(f"FeedForward: activation must be one of {sorted(acts)}, got "
                             f"{activation!r}")
        self.fc1 = Linear(n_embd, d_ff, bias=bias, dtype=dtype)
        self.act = acts[activation]()
        self.fc2 = Linear(d_ff, n_embd, bias=bias, dtype=dtype)
        self.dropout = Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.fc2(self.act(self.fc1(x))))


def sinusoidal_positions(max_len, n_embd, dtype=np.float32):
    """PE (max_len, n_embd): PE[pos, 2i] = sin(pos / 10000^(2i/n_embd)),
    PE[pos, 2i+1] = cos(pos / 10000^(2i/n_embd)) (NumPy array).

    Each pair of dimensions is a sinusoid of its own wavelength (2 pi to 10000 * 2 pi), so
    PE[pos + k] is a fixed linear function (a rotation) of PE[pos] for every offset k.
    """
    pos = np.arange(max_len)[:, None]                                   # (T, 1)
    inv_freq = 1.0 / 10000 ** (np.arange(0, n_embd, 2) / n_embd)     # (ceil(C/2),)
    pe = np.zeros((max_len, n_embd))
    pe[:, 0::2] = np.sin(pos * inv_freq)
    pe[:, 1::2] = np.cos(pos * inv_freq[: n_embd // 2])
    return pe.astype(dtype)


class SinusoidalPositionalEncoding(Module):
    """x + PE[:T] for x (B, T, n_embd); PE fixed (a non-persistent buffer), not learned."""

    def __init__(self, n_embd, max_len=5000, dtype=None):
        super().__init__()
        dt = np.dtype(dtype) if dtype is not None else backend.get_default_dtype()
        self.register_buffer("pe", backend.to_device(sinusoidal_positions(max_len, n_embd, dt),
                                                     backend.default_device()),
                             persistent=False)

    def forward(self, x, offset=0):
        T = x.shape[-2]
        if offset + T > self.pe.shape[0]:
            raise ValueError(f"SinusoidalPositionalEncoding: positions up to {offset + T} "
                             f"exceed max_len {self.pe.shape[0]}")
        return x + self.pe[offset:offset + T]


class LearnedPositionalEmbedding(Module):
    """x + P[:T] with P (max_len, n_embd) a learned Parameter (GPT-2's wpe, BERT's)."""

    def __init__(self, max_len, n_embd, std=0.02, dtype=None):
        super().__init__()
        dt = np.dtype(dtype) if dtype is not None else backend.get_default_dtype()
        gen = backend.get_generator(backend.default_device())
        self.weight = Parameter((gen.standard_normal((max_len, n_embd)) * std).astype(dt))

    def forward(self, x, offset=0):
        T = x.shape[-2]
        if offset + T > self.weight.shape[0]:
            raise ValueError(f"LearnedPositionalEmbedding: positions up to {offset + T} exceed "
                             f"max_len {self.weight.shape[0]}")
        return x + self.weight[offset:offset + T]


class TransformerEncoderLayer(ResidualBlock):
    """Self-attention, then feed-forward, each a residual sub-layer with its LayerNorm, post-LN
    (``norm_first=False``, the paper) or pre-LN (``norm_first=True``): see ResidualBlock."""

    def __init__(self, n_embd, n_head, d_ff, dropout=0.0, activation="relu",
                 norm_first=False, dtype=None):
        super().__init__(norm_first)
        self.self_attn = MultiHeadAttention(n_embd, n_head, dropout, dtype=dtype)
        self.ff = FeedForward(n_embd, d_ff, activation, dropout, dtype=dtype)
        self.norm1 = LayerNorm(n_embd, dtype=dtype)
        self.norm2 = LayerNorm(n_embd, dtype=dtype)

    def forward(self, x, key_padding_mask=None):
        x = self.residual(x, self.norm1, self.self_attn, key_padding_mask=key_padding_mask)
        return self.residual(x, self.norm2, self.ff)


class TransformerDecoderLayer(ResidualBlock):
    """Causal self-attention, cross-attention to the encoder output, feed-forward; each a
    residual sub-layer with its LayerNorm (post-LN by default, pre-LN with
    ``norm_first=True``)."""

    def __init__(self, n_embd, n_head, d_ff, dropout=0.0, activation="relu",
                 norm_first=False, dtype=None):
        super().__init__(norm_first)
        self.self_attn = MultiHeadAttention(n_embd, n_head, dropout, causal=True, dtype=dtype)
        self.cross_attn = MultiHeadAttention(n_embd, n_head, dropout, dtype=dtype)
        self.ff = FeedForward(n_embd, d_ff, activation, dropout, dtype=dtype)
        self.norm1 = LayerNorm(n_embd, dtype=dtype)
        self.norm2 = LayerNorm(n_embd, dtype=dtype)
        self.norm3 = LayerNorm(n_embd, dtype=dtype)

    def forward(self, x, memory, tgt_key_padding_mask=None, memory_key_padding_mask=None,
                cache=None):
        """``cache``: {"self": KVCache, "cross": KVCache} for step-by-step decoding (see
        Attention.forward)."""
        c_self = None if cache is None else cache["self"]
        c_cross = None if cache is None else cache["cross"]
        x = self.residual(x, self.norm1, self.self_attn, key_padding_mask=tgt_key_padding_mask,
                          cache=c_self)
        x = self.residual(x, self.norm2, self.cross_attn, memory,
                          key_padding_mask=memory_key_padding_mask, cache=c_cross)
        return self.residual(x, self.norm3, self.ff)

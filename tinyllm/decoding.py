"""The compiled decode step's Python side: pack a GPT's or Llama's weights for
tinyllm/kernels/decode.py and run it one token at a time on the model's KV cache.

``compile_decoder(model)`` returns a ``CompiledDecoder``, or None for a model the kernel does
not cover (seq2seq, LSTM, BERT, CuPy arrays, a GPT or Llama whose layers were swapped or
subclassed, mixed dtypes): tinyllm/generate.py then keeps the readable forward. It is built
once per generate() / beam_search() call, not cached on the model: packing copies the weights
(a few ms for a small model, ~0.1 s for GPT-2 small), which is little beside decoding, and a
copy made per call cannot go stale when an optimizer updates the parameters in place between
calls (their arrays keep their identity, so a cache keyed on them would not notice).

``CompiledDecoder.step(ids, cache)`` runs one position for every row: ids (B,) at position
``cache.length``, keys and values written into the cache's KVCache arrays in place, logits
(B, V) returned. The readable forward writes the same arrays, so the two can take turns: the
prompt through ``model(prompt, cache=cache)``, then compiled steps.
"""
import importlib.util

import numpy as np

from tinyllm.kernels import decode as decode_kernels
from tinyllm.models.gpt import GPT, MLP, Block, CausalSelfAttention, TiedLMHead
from tinyllm.models.llama import Llama, LlamaAttention, LlamaDecoderLayer
from tinyllm.nn import LayerNorm, Linear, RMSNorm, SwiGLU


def first_weight(model):
    """One parameter array of ``model`` (what the switch is asked about), or None."""
    params = getattr(model, "parameters", None)
    for p in (params() if params is not None else ()):
        return p.data
    return None


def compile_decoder(model):
    """A CompiledDecoder for ``model`` (GPT or Llama), or None where the kernel does not fit.
    Numba compiles ``np.dot`` into a BLAS call through SciPy: without SciPy, None too."""
    if importlib.util.find_spec("scipy") is None:
        return None
    try:
        if type(model) is GPT:
            return _pack_gpt(model)
        if type(model) is Llama:
            return _pack_llama(model)
    except _Unsupported:
        return None
    return None


class CompiledDecoder:
    """One decode step per call through tinyllm/kernels/decode.py (see the module docstring).

    weights: the kernel's GPTWeights or LlamaWeights; n_positions: the positions it covers
    (GPT: learned positions; Llama: the RoPE tables packed)."""

    def __init__(self, weights, n_head, n_kv_head, eps, n_positions, tanh_gelu=None):
        self.weights, self.n_head, self.n_kv_head = weights, n_head, n_kv_head
        self.eps, self.n_positions, self.tanh_gelu = eps, n_positions, tanh_gelu
        self.dtype = weights[0].dtype
        self.head_size = weights[0].shape[1] // n_head

    def fits(self, cache, B):
        """Can the next position of ``cache`` (a DecoderCache of KVCaches) for B rows be
        decoded here? (Not past the positions packed, nor onto keys of another dtype.)"""
        if cache.length >= self.n_positions:
            return False
        return all(c.k is None or (c.k.dtype == self.dtype and c.k.shape[0] == B)
                   for c in cache)

    def step(self, ids, cache):
        """Logits (B, V) for tokens ids (B,) at position cache.length; the caches advance by
        one position."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        V = self.weights[0].shape[0]
        if ids.size and not (0 <= ids.min() and ids.max() < V):     # the kernel has no checks
            raise IndexError(f"decode step: token ids must be in [0, {V}), got "
                             f"{ids.min()}..{ids.max()}")
        pos = cache.length
        for c in cache:
            c.reserve(ids.shape[0], self.n_kv_head, self.head_size, self.dtype, np, 1)
        kc = tuple(c.k for c in cache)
        vc = tuple(c.v for c in cache)
        if self.tanh_gelu is not None:
            logits = decode_kernels.gpt_decode_step(ids, pos, self.weights, kc, vc,
                                                    self.n_head, self.eps, self.tanh_gelu)
        else:
            logits = decode_kernels.llama_decode_step(ids, pos, self.weights, kc, vc,
                                                      self.n_head, self.n_kv_head, self.eps)
        for c in cache:
            c.advance(1)
        return logits


class _Unsupported(Exception):
    """The model has a part the kernel does not implement."""


def _array(p, dtype):
    a = p.data if hasattr(p, "data") else p
    if type(a) is not np.ndarray or a.dtype != dtype:
        raise _Unsupported
    return a


def _stack(arrays):
    return np.ascontiguousarray(np.stack(arrays))                 # (L, ...) per layer


def _linear(lin, dtype):
    """(weight (in, out), bias (out,)) of a Linear; zeros for an absent bias."""
    if type(lin) is not Linear:
        raise _Unsupported
    w = _array(lin.weight, dtype)
    b = np.zeros(w.shape[1], dtype) if lin.bias is None else _array(lin.bias, dtype)
    return w, b


def _norm(norm, kind, dtype):
    """(weight, bias, eps) of a LayerNorm over the last axis (bias zeros if absent), or
    (weight, None, eps) of an RMSNorm."""
    if type(norm) is not kind or norm.weight is None or len(norm.normalized_shape) != 1:
        raise _Unsupported
    w = _array(norm.weight, dtype)
    if kind is RMSNorm:
        return w, None, norm.eps
    b = np.zeros_like(w) if norm.bias is None else _array(norm.bias, dtype)
    return w, b, norm.eps


def _head(model, dtype):
    """The output projection as (C, V): the transposed embedding when tied."""
    head = model.lm_head
    if type(head) is TiedLMHead:
        return np.ascontiguousarray(_array(head.weight, dtype).T)
    w, b = _linear(head, dtype)
    if head.bias is not None:
        raise _Unsupported
    return w


def _one_eps(values):
    if len(set(values)) != 1:
        raise _Unsupported
    return float(values[0])


def _pack_gpt(model):
    tr, cfg = model.transformer, model.config
    dtype = tr.wte.weight.dtype
    blocks = list(tr.h)
    if any(type(b) is not Block or type(b.attn) is not CausalSelfAttention
           or type(b.mlp) is not MLP or b.attn.n_head != cfg.n_head for b in blocks):
        raise _Unsupported
    ln1 = [_norm(b.ln_1, LayerNorm, dtype) for b in blocks]
    ln2 = [_norm(b.ln_2, LayerNorm, dtype) for b in blocks]
    lnf = _norm(tr.ln_f, LayerNorm, dtype)
    attn = [_linear(b.attn.c_attn, dtype) for b in blocks]
    proj = [_linear(b.attn.c_proj, dtype) for b in blocks]
    fc = [_linear(b.mlp.c_fc, dtype) for b in blocks]
    fcp = [_linear(b.mlp.c_proj, dtype) for b in blocks]
    approximate = {b.mlp.approximate for b in blocks}
    if not blocks or len(approximate) != 1:
        raise _Unsupported
    eps = _one_eps([n[2] for n in ln1 + ln2 + [lnf]])
    w = decode_kernels.GPTWeights(
        wte=_array(tr.wte.weight, dtype), wpe=_array(tr.wpe.weight, dtype),
        ln1_w=_stack([n[0] for n in ln1]), ln1_b=_stack([n[1] for n in ln1]),
        attn_w=_stack([a[0] for a in attn]), attn_b=_stack([a[1] for a in attn]),
        proj_w=_stack([a[0] for a in proj]), proj_b=_stack([a[1] for a in proj]),
        ln2_w=_stack([n[0] for n in ln2]), ln2_b=_stack([n[1] for n in ln2]),
        fc_w=_stack([a[0] for a in fc]), fc_b=_stack([a[1] for a in fc]),
        fcp_w=_stack([a[0] for a in fcp]), fcp_b=_stack([a[1] for a in fcp]),
        lnf_w=lnf[0], lnf_b=lnf[1], head=_head(model, dtype))
    return CompiledDecoder(w, cfg.n_head, cfg.n_head, eps, w.wpe.shape[0],
                           tanh_gelu=approximate == {"tanh"})


def _pack_llama(model):
    m, cfg = model.model, model.config
    dtype = m.embed_tokens.weight.dtype
    layers = list(m.layers)
    if not layers or any(type(la) is not LlamaDecoderLayer
                         or type(la.self_attn) is not LlamaAttention
                         or type(la.mlp) is not SwiGLU for la in layers):
        raise _Unsupported
    attn = [la.self_attn for la in layers]
    if any((a.n_head, a.n_kv_head) != (cfg.n_head, cfg.n_kv_head) for a in attn):
        raise _Unsupported
    ln1 = [_norm(la.input_layernorm, RMSNorm, dtype) for la in layers]
    ln2 = [_norm(la.post_attention_layernorm, RMSNorm, dtype) for la in layers]
    norm = _norm(m.norm, RMSNorm, dtype)
    eps = _one_eps([n[2] for n in ln1 + ln2 + [norm]])
    qkv = [[_linear(lin, dtype) for lin in (a.q_proj, a.k_proj, a.v_proj)] for a in attn]
    out = [_linear(a.o_proj, dtype) for a in attn]
    gate_up = [[_linear(la.mlp.gate_proj, dtype), _linear(la.mlp.up_proj, dtype)]
               for la in layers]
    down = [_linear(la.mlp.down_proj, dtype) for la in layers]
    rotary = attn[0].rotary_emb
    if any((a.rotary_emb.base, a.rotary_emb.head_size) != (rotary.base, rotary.head_size)
           for a in attn):
        raise _Unsupported
    n_positions = cfg.block_size
    cos, sin = rotary.tables(n_positions, "cpu", dtype)          # the readable path's tables
    w = decode_kernels.LlamaWeights(
        embed=_array(m.embed_tokens.weight, dtype),
        ln1_w=_stack([n[0] for n in ln1]),
        qkv_w=_stack([np.concatenate([p[0] for p in ps], axis=1) for ps in qkv]),
        qkv_b=_stack([np.concatenate([p[1] for p in ps]) for ps in qkv]),
        o_w=_stack([o[0] for o in out]), o_b=_stack([o[1] for o in out]),
        ln2_w=_stack([n[0] for n in ln2]),
        gate_up_w=_stack([np.concatenate([p[0] for p in ps], axis=1) for ps in gate_up]),
        gate_up_b=_stack([np.concatenate([p[1] for p in ps]) for ps in gate_up]),
        down_w=_stack([d[0] for d in down]), down_b=_stack([d[1] for d in down]),
        norm_w=norm[0], head=_head(model, dtype),
        cos=np.ascontiguousarray(cos[:n_positions]), sin=np.ascontiguousarray(sin[:n_positions]))
    return CompiledDecoder(w, cfg.n_head, cfg.n_kv_head, eps, n_positions)

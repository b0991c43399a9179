"""The compiled decode step: one new token through a whole GPT or Llama, in one Numba call.

The readable forward (tinyllm/models/gpt.py, llama.py) decodes a token as ~100 ops through
the autograd layer, each a Python call and a few small arrays; at 128 dims that overhead is
most of the time. Here the same arithmetic runs as one compiled function per token:

    x = embed[ids] (+ wpe[pos])                                     (B, C)
    per layer l:
        h = norm_1(x);  qkv = h @ W_qkv[l] + b_qkv[l]               (B, (H + 2 Hkv) D)
        k, v of this position -> cache[l][:, :, pos]   (RoPE on q and k first, for Llama)
        y = softmax(q k^T / sqrt(D)) v over cache positions 0..pos  (B, H D)
        x = x + y @ W_o[l] + b_o[l]
        h = norm_2(x);  x = x + mlp(h)          GPT: GELU MLP; Llama: SwiGLU
    logits = norm_f(x) @ W_head                                     (B, V)

Each formula is the one its op holds (their derivations live there): LayerNorm and RMSNorm
(tinyllm/ops/norm.py), GELU (ops/elementwise.py), SiLU (ops/activation.py), RoPE with the
(i, i + D/2) pairing and its tables (ops/rope.py), attention (nn/attention.py), grouped-query
heads (query head h reads kv head h // (H / Hkv)). Tests hold the two paths equal token for
token (tests/test_decode.py). Matrix products go through ``np.dot`` on contiguous arrays, which
Numba hands to BLAS (through SciPy's cython_blas); the rest are loops over (B, C) rows.

Weights are packed once per generate() call (tinyllm/decoding.py) into the named tuples below,
stacked per layer: W_qkv (L, C, 3C) etc., Linear layout (in, out), absent biases as zeros.
The KV cache is a tuple of L arrays (B, Hkv, T_max, D) per keys and values: the arrays of the
model's KVCache objects (tinyllm/nn/kv_cache.py), written in place at ``pos``.

This module takes and returns arrays only (never a Tensor), and runs only when the switch
says so: ``tinyllm.dispatch.accelerator("decode", ...)`` (tinyllm/generate.py asks).
"""
import math
from collections import namedtuple

import numpy as np

from tinyllm.kernels._math import erf, exp, tanh
from tinyllm.kernels._numba import jit

# GPT-2: LayerNorm, learned positions, GELU MLP. Shapes: wte (V, C), wpe (P, C); per layer
# (L leading): ln*_w, ln*_b (C,), attn_w (C, 3C), attn_b (3C,), proj_w (C, C), proj_b (C,),
# fc_w (C, 4C), fc_b (4C,), fcp_w (4C, C), fcp_b (C,); lnf_w, lnf_b (C,); head (C, V).
GPTWeights = namedtuple("GPTWeights", [
    "wte", "wpe", "ln1_w", "ln1_b", "attn_w", "attn_b", "proj_w", "proj_b",
    "ln2_w", "ln2_b", "fc_w", "fc_b", "fcp_w", "fcp_b", "lnf_w", "lnf_b", "head"])

# Llama: RMSNorm, RoPE, SwiGLU, grouped-query attention. Shapes: embed (V, C); per layer:
# ln1_w, ln2_w (C,), qkv_w (C, (H + 2 Hkv) D) = [q | k | v], qkv_b, o_w (H D, C), o_b (C,),
# gate_up_w (C, 2F) = [gate | up], gate_up_b (2F,), down_w (F, C), down_b (C,); norm_w (C,);
# head (C, V); cos, sin (P, D), RotaryEmbedding's tables in the model's dtype.
LlamaWeights = namedtuple("LlamaWeights", [
    "embed", "ln1_w", "qkv_w", "qkv_b", "o_w", "o_b", "ln2_w", "gate_up_w", "gate_up_b",
    "down_w", "down_b", "norm_w", "head", "cos", "sin"])

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)


# ----------------------------------------------------------------------------------------------
# row helpers (B rows of a (B, C) array)

@jit()
def _layer_norm(x, w, b, eps):
    """(x - mean) / sqrt(var + eps) * w + b per row: ops/norm.py's LayerNorm."""
    B, C = x.shape
    y = np.empty_like(x)
    for r in range(B):
        m = x[r].sum() / C
        var = x.dtype.type(0)
        for c in range(C):
            var += (x[r, c] - m) * (x[r, c] - m)
        rstd = 1 / np.sqrt(var / C + eps)
        for c in range(C):
            y[r, c] = (x[r, c] - m) * rstd * w[c] + b[c]
    return y


@jit()
def _rms_norm(x, w, eps):
    """x / sqrt(mean(x^2) + eps) * w per row: ops/norm.py's RMSNorm."""
    B, C = x.shape
    y = np.empty_like(x)
    for r in range(B):
        ms = x.dtype.type(0)
        for c in range(C):
            ms += x[r, c] * x[r, c]
        rstd = 1 / np.sqrt(ms / C + eps)
        for c in range(C):
            y[r, c] = x[r, c] * rstd * w[c]
    return y


@jit()
def _linear(x, w, b):
    """x @ w + b: (B, in) @ (in, out) through BLAS, then the bias."""
    y = np.dot(x, w)
    for r in range(y.shape[0]):
        for c in range(y.shape[1]):
            y[r, c] += b[c]
    return y


@jit()
def _rope(row, start, D, cos, sin, pos, out):
    """RoPE of one head, row[start:start + D] at position ``pos``, into out (D,): pair
    (i, i + D/2) rotated, x * cos + rotate_half(x) * sin with rotate_half([x1, x2]) = [-x2, x1]
    (ops/rope.py)."""
    half = D // 2
    for i in range(half):
        a, b = row[start + i], row[start + half + i]
        out[i] = a * cos[pos, i] - b * sin[pos, i]
        out[half + i] = b * cos[pos, half + i] + a * sin[pos, half + i]


@jit()
def _attend(qkv, H, Hkv, D, kc, vc, pos, rope, cos, sin):
    """Causal attention of this position's queries over cache positions 0..pos.

    qkv (B, (H + 2 Hkv) D) = [q | k | v], heads side by side (split_heads' order). Writes
    this position's keys (rotated when ``rope``) and values into kc, vc (B, Hkv, T_max, D) at
    ``pos``; returns y (B, H D): softmax(q k^T / sqrt(D)) v per head, query head h reading
    kv head h // (H / Hkv)."""
    B = qkv.shape[0]
    dt = qkv.dtype.type
    scale = dt(1.0 / math.sqrt(D))
    group = H // Hkv
    y = np.zeros((B, H * D), dtype=qkv.dtype)
    q = np.empty(D, dtype=qkv.dtype)
    p = np.empty(pos + 1, dtype=qkv.dtype)
    for b in range(B):
        row = qkv[b]
        for g in range(Hkv):
            k0, v0 = (H + g) * D, (H + Hkv + g) * D
            if rope:
                _rope(row, k0, D, cos, sin, pos, kc[b, g, pos])
            else:
                kc[b, g, pos, :] = row[k0:k0 + D]
            vc[b, g, pos, :] = row[v0:v0 + D]
        for h in range(H):
            if rope:
                _rope(row, h * D, D, cos, sin, pos, q)
            else:
                q[:] = row[h * D:(h + 1) * D]
            K, V = kc[b, h // group], vc[b, h // group]       # (T_max, D)
            m = dt(-np.inf)
            for t in range(pos + 1):
                s = dt(0)
                for d in range(D):
                    s += q[d] * K[t, d]
                p[t] = s * scale
                m = max(m, p[t])
            total = dt(0)
            for t in range(pos + 1):
                p[t] = exp(p[t] - m)
                total += p[t]
            out = y[b, h * D:(h + 1) * D]
            for t in range(pos + 1):
                w = p[t] / total
                for d in range(D):
                    out[d] += w * V[t, d]
    return y


# ----------------------------------------------------------------------------------------------
# the steps

@jit()
def gpt_decode_step(ids, pos, w, kc, vc, n_head, eps, tanh_gelu):
    """Logits (B, V) of a GPT for tokens ``ids`` (B,) at position ``pos``, after the cached
    positions 0..pos-1; writes their keys and values into kc[l], vc[l] (B, H, T_max, D)."""
    B, C = ids.shape[0], w.wte.shape[1]
    D = C // n_head
    dt = w.wte.dtype.type
    x = np.empty((B, C), dtype=w.wte.dtype)
    for b in range(B):
        x[b] = w.wte[ids[b]] + w.wpe[pos]                          # tokens + positions
    no_tables = np.empty((0, D), dtype=w.wte.dtype)
    k, a, half, one = dt(_SQRT_2_OVER_PI), dt(0.044715), dt(0.5), dt(1)
    r2 = dt(_INV_SQRT_2)
    for layer in range(w.attn_w.shape[0]):
        h = _layer_norm(x, w.ln1_w[layer], w.ln1_b[layer], eps)
        qkv = _linear(h, w.attn_w[layer], w.attn_b[layer])                    # (B, 3C)
        y = _attend(qkv, n_head, n_head, D, kc[layer], vc[layer], pos, False,
                    no_tables, no_tables)
        x += _linear(y, w.proj_w[layer], w.proj_b[layer])
        h = _layer_norm(x, w.ln2_w[layer], w.ln2_b[layer], eps)
        f = _linear(h, w.fc_w[layer], w.fc_b[layer])                          # (B, 4C)
        for b in range(B):
            for c in range(f.shape[1]):
                u = f[b, c]
                if tanh_gelu:                  # GPT-2's x (1 + tanh(k (x + 0.044715 x^3))) / 2
                    f[b, c] = half * u * (one + tanh(k * (u + a * u * u * u)))
                else:                          # exact: x (1 + erf(x / sqrt 2)) / 2
                    f[b, c] = u * (half * (one + erf(u * r2)))
        x += _linear(f, w.fcp_w[layer], w.fcp_b[layer])
    return np.dot(_layer_norm(x, w.lnf_w, w.lnf_b, eps), w.head)                # (B, V)


@jit()
def llama_decode_step(ids, pos, w, kc, vc, n_head, n_kv_head, eps):
    """Logits (B, V) of a Llama for tokens ``ids`` (B,) at position ``pos`` (RoPE angle
    pos * theta_i), after the cached positions; writes their rotated keys and values into
    kc[l], vc[l] (B, Hkv, T_max, D)."""
    B, C = ids.shape[0], w.embed.shape[1]
    D = C // n_head
    x = np.empty((B, C), dtype=w.embed.dtype)
    for b in range(B):
        x[b] = w.embed[ids[b]]
    one = w.embed.dtype.type(1)
    for layer in range(w.qkv_w.shape[0]):
        h = _rms_norm(x, w.ln1_w[layer], eps)
        qkv = _linear(h, w.qkv_w[layer], w.qkv_b[layer])             # (B, (H + 2 Hkv) D)
        y = _attend(qkv, n_head, n_kv_head, D, kc[layer], vc[layer], pos, True, w.cos, w.sin)
        x += _linear(y, w.o_w[layer], w.o_b[layer])
        h = _rms_norm(x, w.ln2_w[layer], eps)
        gu = _linear(h, w.gate_up_w[layer], w.gate_up_b[layer])               # (B, 2F)
        F = gu.shape[1] // 2
        g = np.empty((B, F), dtype=gu.dtype)
        for b in range(B):
            for c in range(F):
                z = gu[b, c]
                e = exp(-abs(z))                       # sigmoid from e^-|z|: no overflow
                s = one / (one + e) if z >= 0 else e / (one + e)
                g[b, c] = z * s * gu[b, F + c]         # silu(gate) * up
        x += _linear(g, w.down_w[layer], w.down_b[layer])
    return np.dot(_rms_norm(x, w.norm_w, eps), w.head)                          # (B, V)

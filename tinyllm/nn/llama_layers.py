"""The layers of a LLaMA-style decoder (Touvron et al. 2023), beside RMSNorm (tinyllm/nn/layers.py)
and grouped-query attention (``n_kv_head`` of tinyllm/nn/attention.py's Attention):

- ``RotaryEmbedding``: rotary position embedding (RoPE) of queries and keys, its cos/sin tables
  computed once per (device, dtype) and extended when a longer sequence comes, with a position
  offset for the KV cache;
- ``SwiGLU``: the gated feed-forward down(silu(gate(x)) * up(x)) (Shazeer 2020), under Hugging
  Face's names gate_proj, up_proj, down_proj.

Both are composed of ops (``F.rope``, ``Linear``, ``F.silu``, mul) with their own hand-written
backward, so their backward is the chain rule through them.
"""
import numpy as np

from tinyllm import backend
from tinyllm import functional as F
from tinyllm.nn.layers import Linear
from tinyllm.nn.module import Module


class RotaryEmbedding(Module):
    """RoPE: ``rope(x, offset=0)`` rotates x (B, H, T, D) as positions offset .. offset + T - 1
    (``F.rope``; the angle of channel pair (i, i + D/2) at position p is p * base^(-2i/D)).

    The tables cos, sin (max_positions, D) are computed in float64 and cast to x's dtype
    once, on first use per (device, dtype): a cache, not state (nothing in the state_dict).
    A sequence beyond ``max_positions`` extends them (RoPE has no learned positions).
    """

    def __init__(self, head_size, max_positions=2048, base=10000.0):
        super().__init__()
        if head_size % 2:
            raise ValueError(f"RotaryEmbedding: head_size must be even, got {head_size}")
        self.head_size, self.max_positions, self.base = head_size, max_positions, base
        self._tables = {}                                    # (device, dtype) -> (cos, sin)

    def tables(self, n, device, dtype):
        """cos, sin (>= n, D) on ``device`` in ``dtype``."""
        key = (device, np.dtype(dtype))
        if key not in self._tables or self._tables[key][0].shape[0] < n:
            xp = backend.xp_for_device(device)
            length = max(n, self.max_positions)
            self._tables[key] = F.rope_cos_sin(xp.arange(length), self.head_size, self.base,
                                               dtype=dtype)
        return self._tables[key]

    def forward(self, x, offset=0):
        T = x.shape[-2]
        cos, sin = self.tables(offset + T, x.device, x.dtype)
        return F.rope(x, cos[offset:offset + T], sin[offset:offset + T])      # (B, H, T, D)

    def extra_repr(self):
        return f"head_size={self.head_size}, max_positions={self.max_positions}, base={self.base}"


class SwiGLU(Module):
    """The gated feed-forward of LLaMA: down_proj(silu(gate_proj(x)) * up_proj(x)).

    gate_proj, up_proj (C, d_ff) and down_proj (d_ff, C), no biases by default (LLaMA's), named
    as Hugging Face's LlamaMLP. The gate silu(g) = g sigmoid(g) scales each of the d_ff channels
    of the linear path u: h = silu(g) * u; backward (product rule, then silu's backward):
    du = dh * silu(g), dg = dh * u * silu'(g), silu'(g) = sigmoid(g) (1 + g (1 - sigmoid(g))).

    Shapes: x (..., C) -> (..., d_ff) twice -> (..., C).
    """

    def __init__(self, n_embd, d_ff, bias=False, dtype=None):
        super().__init__()
        self.gate_proj = Linear(n_embd, d_ff, bias=bias, dtype=dtype)
        self.up_proj = Linear(n_embd, d_ff, bias=bias, dtype=dtype)
        self.down_proj = Linear(d_ff, n_embd, bias=bias, dtype=dtype)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))      # (..., C)

"""The units structured pruning removes whole: attention heads and MLP hidden units.

A unit is the set of weight slices that belong to one head or one hidden unit, with a score;
pruning a unit zeroes all of its slices at once.

Attention head h (head size D, rows/columns h D .. (h + 1) D - 1 of each projection):
  score   the L2 norm of the head's rows of the output projection W_O (c_proj, o_proj or
          out_proj): the head's output y_h (T, D) reaches the residual stream only as
          y_h @ W_O[hD:(h+1)D, :], so ||y_h W_O^h|| <= ||y_h|| ||W_O^h||: the norm bounds what
          the head can write.
  slices  those rows of W_O (which alone silence the head), and the head's query columns
          (q_proj, or the first third of GPT-2's packed c_attn); its key and value columns too
          when no other head shares them (n_kv_head == n_head). Biases are kept: with its
          W_O rows at 0, the head contributes nothing whatever its q/k/v biases.
MLP hidden unit j (the j-th of d_ff):
  score   the L2 norm of row j of the down projection (c_proj, down_proj, or FeedForward's
          FeedForward's fc2): how the unit writes to the stream.
  slices  that row, and column j of the up projection(s) (c_fc; gate_proj and up_proj; fc1).
Scores are computed from the effective (already masked) weights.
"""
from collections import namedtuple

import numpy as np

from tinyllm import backend
from tinyllm.compress.masked import effective_weight
from tinyllm.nn.attention import Attention
from tinyllm.nn.layers import Linear

Unit = namedtuple("Unit", ["score", "slices"])          # slices: [(linear, axis, start, stop)]

_HEAD_LAYOUTS = [("c_attn", "c_proj"), ("q_proj", "o_proj"), ("q_proj", "out_proj")]
_MLP_LAYOUTS = [(("c_fc",), "c_proj"), (("gate_proj", "up_proj"), "down_proj"),
                (("fc1",), "fc2")]


def attention_heads(model):
    """[(layer name, [Unit per head])] for every attention module of a known layout."""
    layers = []
    for name, m in model.named_modules():
        if not isinstance(m, Attention):
            continue
        for q_name, o_name in _HEAD_LAYOUTS:
            q, o = _linear(m, q_name), _linear(m, o_name)
            if q is not None and o is not None:
                layers.append((name, [_head(m, h, q, o, q_name == "c_attn")
                                      for h in range(m.n_head)]))
                break
    if not layers:
        raise ValueError("prune: structured='heads' found no attention module with a known "
                         "layout (c_attn/c_proj, q_proj/o_proj, q_proj/out_proj)")
    return layers


def _head(attn, h, q, o, packed):
    D, C = attn.head_size, attn.n_embd
    rows = slice(h * D, (h + 1) * D)
    W_o = effective_weight(o)
    score = float(backend.asnumpy((W_o[rows].astype(np.float64) ** 2).sum()) ** 0.5)
    slices = [(o, 0, rows.start, rows.stop), (q, 1, rows.start, rows.stop)]
    if packed:                                          # c_attn = [W_q | W_k | W_v] (C, 3C)
        slices += [(q, 1, C + rows.start, C + rows.stop),
                   (q, 1, 2 * C + rows.start, 2 * C + rows.stop)]
    elif attn.n_kv_head == attn.n_head:
        for kv in (_linear(attn, "k_proj"), _linear(attn, "v_proj")):
            if kv is not None:
                slices.append((kv, 1, rows.start, rows.stop))
    return Unit(score, slices)


def mlp_units(model):
    """[(layer name, [Unit per hidden unit])] for every feed-forward of a known layout."""
    layers = []
    for name, m in model.named_modules():
        for up_names, down_name in _MLP_LAYOUTS:
            ups = [_linear(m, n) for n in up_names]
            down = _linear(m, down_name)
            if down is None or any(u is None for u in ups) or isinstance(m, Attention):
                continue
            if any(u.out_features != down.in_features for u in ups):
                continue
            W = effective_weight(down).astype(np.float64)          # (d_ff, C)
            scores = backend.asnumpy((W * W).sum(axis=1)) ** 0.5
            layers.append((name, [Unit(float(s), [(down, 0, j, j + 1)]
                                       + [(u, 1, j, j + 1) for u in ups])
                                  for j, s in enumerate(scores)]))
            break
    if not layers:
        raise ValueError("prune: structured='rows' found no feed-forward with a known layout "
                         "(c_fc/c_proj, gate_proj/up_proj/down_proj, fc1/fc2)")
    return layers


def _linear(module, name):
    child = module._modules.get(name)
    return child if isinstance(child, Linear) else None

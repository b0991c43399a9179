"""Cases of the rotary position embedding (issue 19): x * cos + rotate_half(x) * sin, with
tables at positions 0..T-1 and at an offset (the KV cache's later positions)."""
import numpy as np

from tests.op_cases import C, normal
from tinyllm import functional as F

T, D = 5, 6
COS, SIN = F.rope_cos_sin(np.arange(T), D, base=100.0, dtype=np.float64)
COS7, SIN7 = F.rope_cos_sin(np.arange(7, 7 + T), D, base=100.0, dtype=np.float64)


def _rope(x, pos, base=100.0):
    """Each pair (i, i + D/2) rotated by pos * base^(-2i/D), written out pair by pair."""
    y = np.empty_like(x)
    half = D // 2
    for i in range(half):
        a = pos[:, None] * base ** (-2 * i / D)                                   # (T, 1)
        c, s = np.cos(a)[:, 0], np.sin(a)[:, 0]
        y[..., i] = x[..., i] * c - x[..., i + half] * s
        y[..., i + half] = x[..., i + half] * c + x[..., i] * s
    return y


CASES = [
    C("rope", lambda x: F.rope(x, COS, SIN), lambda x: _rope(x, np.arange(T)),
      normal(2, 3, T, D)),
    C("rope_offset", lambda x: F.rope(x, COS7, SIN7), lambda x: _rope(x, np.arange(7, 7 + T)),
      normal(1, 2, T, D)),
]

"""Numba kernels for the LSTM cell's pointwise part, forward and backward.

The formula and its derivation: tinyllm/ops/rnn.py (the module docstring; ``cell_forward`` and
``cell_backward`` there, used by ``LSTMCell`` and ``LSTM``), which call these kernels when the
switch is on (``tinyllm.dispatch.accelerator``); tests hold the two equal
(tests/test_kernels.py, tests/test_kernels_nonfinite.py).

The formula writes each line as whole-array expressions: ~15 calls per step, each a pass over a
small array plus its fixed cost (a few microseconds). A language model's LSTM runs the step T
times per layer and batch, one step after the other, so that fixed cost adds up; these kernels
do the whole step in one pass, element by element, serially (a step's arrays are small).

Shapes: a, gates, da (B, 4H) with the gates in PyTorch's order i f g o; c, h, tanh_c, dh, dc
(B, H). gates holds the activations (i, f, g, o after their nonlinearities), as backward uses
them. Arrays may be strided views (one time step of a (B, T, .) array).
"""
import numpy as np

from tinyllm.kernels._math import exp, tanh
from tinyllm.kernels._numba import jit


@jit()
def _lstm_cell_forward_numba(a, c, h_out, c_out, gates, tanh_c):
    B, H = c.shape
    one, two = a.dtype.type(1), a.dtype.type(2)
    for b in range(B):
        ar, gr = a[b], gates[b]                                   # (4H,) rows
        # every gate as s(k a) = 1 / (1 + e^(-k a)): k = 1 is the sigmoid of i, f and o; for g,
        # k = 2 and tanh(a) = 2 s(2a) - 1. One exp per element in one loop that vectorizes.
        # (e^(-k a) overflows to inf for very negative a, and s to 0: never NaN unless a is;
        # a NaN a gives a NaN gate, as the formula: tests/test_kernels_nonfinite.py.)
        for m in range(4 * H):
            k = two if 2 * H <= m < 3 * H else one
            gr[m] = one / (one + exp(-k * ar[m]))
        for j in range(2 * H, 3 * H):
            gr[j] = two * gr[j] - one
        _lstm_state_update(gr, c[b], c_out[b], tanh_c[b], h_out[b])


@jit()
def _lstm_state_update(gr, c, c_out, tanh_c, h_out):
    """c' = f c + i g and h' = o tanh(c') for one row (a function of its own, so that each
    compiled function inlines the fast exp once: Numba warns on a second copy)."""
    H = c.shape[0]
    for j in range(H):
        cn = gr[H + j] * c[j] + gr[j] * gr[2 * H + j]
        tc = tanh(cn)
        c_out[j], tanh_c[j], h_out[j] = cn, tc, gr[3 * H + j] * tc


@jit()
def _lstm_cell_backward_numba(dh, dc, gates, tanh_c, c, da, dc_prev):
    B, H = c.shape
    one = gates.dtype.type(1)
    for b in range(B):
        for j in range(H):
            i, f, g, o = gates[b, j], gates[b, H + j], gates[b, 2 * H + j], gates[b, 3 * H + j]
            tc, dhj = tanh_c[b, j], dh[b, j]
            dct = dc[b, j] + dhj * o * (one - tc * tc)
            da[b, j] = dct * g * i * (one - i)
            da[b, H + j] = dct * c[b, j] * f * (one - f)
            da[b, 2 * H + j] = dct * i * (one - g * g)
            da[b, 3 * H + j] = dhj * tc * o * (one - o)
            dc_prev[b, j] = dct * f


# ----------------------------------------------------------------------------------------------
# the public wrappers

def lstm_cell_forward(a, c, out=None):
    """(h', c', gates, tanh(c')) for pre-activations a (B, 4H) and cell state c (B, H), float32
    or float64 of one dtype.

    ``out``: optional arrays (h', c', gates, tanh(c')) to write into, e.g. one time step's views
    of a whole sequence's storage, so the caller copies nothing."""
    if out is None:
        B, H = c.shape
        out = tuple(np.empty((B, n), dtype=a.dtype) for n in (H, H, 4 * H, H))
    h_out, c_out, gates, tanh_c = out
    _lstm_cell_forward_numba(a, c, h_out, c_out, gates, tanh_c)
    return out


def lstm_cell_backward(dh, dc, gates, tanh_c, c, out=None):
    """(da (B, 4H), dc_prev (B, H)) from dh, dc (B, H), the saved gates and tanh(c'), and the
    previous cell state c. ``out``: optional (da, dc_prev) arrays to write into."""
    if out is None:
        out = (np.empty(gates.shape, dtype=gates.dtype), np.empty(c.shape, dtype=gates.dtype))
    _lstm_cell_backward_numba(dh, dc, gates, tanh_c, c, out[0], out[1])
    return out

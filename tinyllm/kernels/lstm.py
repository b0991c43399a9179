"""The LSTM cell's pointwise part: NumPy reference, Numba kernel, dispatcher.

An LSTM step is one GEMM (the pre-activations a = x w_ih + h w_hh + b, done by the caller) and
then pointwise work on (B, 4H) and (B, H) arrays (see tinyllm/ops/rnn.py for the derivation):

    forward:   i, f, o = s(a_i), s(a_f), s(a_o);  g = tanh(a_g)
               c' = f c + i g;  h' = o tanh(c')
    backward:  dc_total = dc' + dh' o (1 - tanh(c')^2)
               da_i = dc_total g i (1 - i);  da_f = dc_total c f (1 - f)
               da_g = dc_total i (1 - g^2);  da_o = dh' tanh(c') o (1 - o)
               dc = dc_total f

The reference writes each line as whole-array NumPy expressions: ~15 calls per step, each a
pass over a small array plus its fixed cost (a few microseconds). A language model's LSTM runs
this T times per layer and batch, one step after the other, so that fixed cost adds up; the
Numba kernel does the whole step in one pass, element by element.

Shapes: a, gates, da (B, 4H) with the gates in PyTorch's order i f g o; c, h, tanh_c, dh, dc
(B, H). gates holds the activations (i, f, g, o after their nonlinearities), as backward uses
them. Arrays may be strided views (one time step of a (B, T, .) array).
"""
import numpy as np

from tinyllm import backend
from tinyllm.kernels._math import exp, tanh
from tinyllm.kernels._numba import choose, jit


# ----------------------------------------------------------------------------------------------
# reference (NumPy or CuPy)

def _sigmoid(xp, a):
    e = xp.exp(-xp.abs(a))                     # no overflow: e^-|a| <= 1
    return xp.where(a >= 0, 1 / (1 + e), e / (1 + e))


def lstm_cell_forward_reference(a, c):
    """(h', c', gates, tanh(c')) from the pre-activations a (B, 4H) and the cell state c."""
    xp = backend.get_array_module(a)
    H = c.shape[-1]
    gates = _sigmoid(xp, a)                                 # i, f, o: sigmoid (B, 4H)
    gates[:, 2 * H:3 * H] = xp.tanh(a[:, 2 * H:3 * H])     # g: tanh
    i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
    c_new = f * c + i * g
    tanh_c = xp.tanh(c_new)
    return o * tanh_c, c_new, gates, tanh_c


def lstm_cell_backward_reference(dh, dc, gates, tanh_c, c):
    """(da (B, 4H), dc to the previous cell state) from dh = dL/dh', dc = dL/dc'."""
    xp = backend.get_array_module(dh)
    H = c.shape[-1]
    i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
    dc_total = dc + dh * o * (1 - tanh_c * tanh_c)
    da = xp.empty_like(gates)                                               # (B, 4H)
    da[:, 0:H] = dc_total * g * i * (1 - i)                                 # da_i
    da[:, H:2 * H] = dc_total * c * f * (1 - f)                             # da_f
    da[:, 2 * H:3 * H] = dc_total * i * (1 - g * g)                         # da_g
    da[:, 3 * H:4 * H] = dh * tanh_c * o * (1 - o)                          # da_o
    return da, dc_total * f


# ----------------------------------------------------------------------------------------------
# Numba: one pass over the B x H cells (serial: a step's arrays are small)

@jit()
def _lstm_cell_forward_numba(a, c, h_out, c_out, gates, tanh_c):
    B, H = c.shape
    one, two = a.dtype.type(1), a.dtype.type(2)
    for b in range(B):
        ar, gr = a[b], gates[b]                                   # (4H,) rows
        # every gate as s(k a) = 1 / (1 + e^(-k a)): k = 1 is the sigmoid of i, f and o; for g,
        # k = 2 and tanh(a) = 2 s(2a) - 1. One exp per element in one loop that vectorizes.
        # (e^(-k a) overflows to inf for very negative a, and s to 0: never NaN unless a is;
        # a NaN a gives a NaN gate, as the reference: tests/test_kernels_nonfinite.py.)
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
# dispatch

def _use_numba(impl, *arrays):
    if backend.get_array_module(*arrays) is not np:
        if impl == "numba":
            raise ValueError("lstm_cell: impl='numba' needs NumPy arrays, got CuPy arrays")
        return False
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) != 1 or arrays[0].dtype not in (np.float32, np.float64):
        if impl == "numba":
            raise ValueError(f"lstm_cell: impl='numba' needs float32 or float64 arrays of one "
                             f"dtype, got {sorted(str(d) for d in dtypes)}")
        return False
    return choose(impl, auto_numba=True) == "numba"


def _into(out, results):
    """The reference's results, copied into ``out`` when the caller gave arrays to fill."""
    if out is None:
        return results
    for target, r in zip(out, results):
        target[...] = r
    return out


def lstm_cell_forward(a, c, out=None, impl=None):
    """(h', c', gates, tanh(c')) for pre-activations a (B, 4H) and cell state c (B, H).

    ``out``: optional arrays (h', c', gates, tanh(c')) to write into, e.g. one time step's views
    of a whole sequence's storage, so the caller copies nothing."""
    if not _use_numba(impl, a, c):
        return _into(out, lstm_cell_forward_reference(a, c))
    if out is None:
        B, H = c.shape
        out = tuple(np.empty((B, n), dtype=a.dtype) for n in (H, H, 4 * H, H))
    h_out, c_out, gates, tanh_c = out
    _lstm_cell_forward_numba(a, c, h_out, c_out, gates, tanh_c)
    return out


def lstm_cell_backward(dh, dc, gates, tanh_c, c, out=None, impl=None):
    """(da (B, 4H), dc_prev (B, H)) from dh, dc (B, H), the saved gates and tanh(c'), and the
    previous cell state c. ``out``: optional (da, dc_prev) arrays to write into."""
    if not _use_numba(impl, dh, dc, gates, tanh_c, c):
        return _into(out, lstm_cell_backward_reference(dh, dc, gates, tanh_c, c))
    if out is None:
        out = (np.empty(gates.shape, dtype=gates.dtype), np.empty(c.shape, dtype=gates.dtype))
    _lstm_cell_backward_numba(dh, dc, gates, tanh_c, c, out[0], out[1])
    return out

"""The LSTM (Hochreiter & Schmidhuber 1997, with Gers et al.'s forget gate), as PyTorch computes it.

One step, with x (B, I), h (B, H), c (B, H), w_ih (I, 4H), w_hh (H, 4H), b (4H,):

    a = x @ w_ih + h @ w_hh + b             (B, 4H)  pre-activations of the gates, in the order
    i = s(a[:, 0:H])                                  i f g o (PyTorch's); s = sigmoid
    f = s(a[:, H:2H])
    g = tanh(a[:, 2H:3H])
    o = s(a[:, 3H:4H])
    c' = f * c + i * g                      (B, H)   the cell state: a gated running sum
    h' = o * tanh(c')                       (B, H)   the output, also the next step's input

Backward of one step (the chain rule through the lines above, in reverse), given dh' and the
gradient dc' that reaches c' from later steps:

    dc_total = dc' + dh' * o * (1 - tanh(c')^2)      c' feeds h' and the next step's c
    da_o = dh' * tanh(c') * o (1 - o)                s'(a) = s(a)(1 - s(a))
    da_i = dc_total * g * i (1 - i)
    da_g = dc_total * i * (1 - g^2)                  tanh'(a) = 1 - tanh(a)^2
    da_f = dc_total * c * f (1 - f)
    dc   = dc_total * f                              to the previous step's cell state
    dh   = da @ w_hh^T                               to the previous step's output
    dx   = da @ w_ih^T,  dw_ih = x^T da,  dw_hh = h^T da,  db = sum over rows of da

The cell state's path c -> c' is a product by f, with no squashing in between: that is why an
LSTM passes gradients over many steps where a plain tanh RNN's vanish.

Backprop through time (BPTT) is this step backward run from the last step to the first, each
step adding the dh and dc it sends back to the gradients arriving from the loss at that step.
The weights are shared by every step, so their gradients are sums over steps, which the
sequence op computes as one GEMM each over all (B * T) rows.

The pointwise part of a step (the gates, the state update and their backward) is
``cell_forward`` and ``cell_backward`` below, the lines above as array expressions; with the
switch on, one Numba kernel call each way (tinyllm/kernels/lstm.py). The products are BLAS.

Layout: the weights are (in, 4H) like tinyllm's Linear, the transposes of PyTorch's
``weight_ih_l0`` (4H, in); the one bias b is PyTorch's ``bias_ih + bias_hh``.
"""
from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.autograd.tensor import Tensor
from tinyllm.dispatch import accelerator
from tinyllm.kernels import lstm as lstm_kernels
from tinyllm.ops._util import as_tensor


def _kernel_fits(*arrays):
    """The Numba kernel takes this call: the switch is on, the arrays NumPy float32 or float64
    of one dtype."""
    return accelerator("lstm_cell", *arrays) is not None and arrays[0].dtype.char in "fd"


def _into(out, results):
    """``results``, copied into ``out`` when the caller gave arrays to fill."""
    if out is None:
        return results
    for target, r in zip(out, results):
        target[...] = r
    return out


def _sigmoid(xp, a):
    e = xp.exp(-xp.abs(a))                     # no overflow: e^-|a| <= 1
    return xp.where(a >= 0, 1 / (1 + e), e / (1 + e))


def cell_forward(a, c, out=None):
    """One step's pointwise forward: (h', c', gates, tanh(c')) from the pre-activations
    a (B, 4H) and the cell state c (B, H); gates (B, 4H) holds i, f, g, o after their
    nonlinearities, as backward uses them. ``out``: optional arrays to write the four into
    (one time step's views of a sequence's storage)."""
    if _kernel_fits(a, c):
        return lstm_kernels.lstm_cell_forward(a, c, out=out)
    xp = backend.get_array_module(a)
    H = c.shape[-1]
    gates = _sigmoid(xp, a)                                 # i, f, o: sigmoid (B, 4H)
    gates[:, 2 * H:3 * H] = xp.tanh(a[:, 2 * H:3 * H])     # g: tanh
    i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
    c_new = f * c + i * g
    tanh_c = xp.tanh(c_new)
    return _into(out, (o * tanh_c, c_new, gates, tanh_c))


def cell_backward(dh, dc, gates, tanh_c, c, out=None):
    """One step's pointwise backward: (da (B, 4H), dc to the previous cell state (B, H)) from
    dh = dL/dh', dc = dL/dc' (B, H), forward's gates and tanh(c'), and the previous cell state
    c. ``out``: optional (da, dc_prev) arrays to write into."""
    if _kernel_fits(dh, dc, gates, tanh_c, c):
        return lstm_kernels.lstm_cell_backward(dh, dc, gates, tanh_c, c, out=out)
    xp = backend.get_array_module(dh)
    H = c.shape[-1]
    i, f, g, o = (gates[:, k * H:(k + 1) * H] for k in range(4))
    dc_total = dc + dh * o * (1 - tanh_c * tanh_c)         # c' feeds h' and the next step
    da = xp.empty_like(gates)                                               # (B, 4H)
    da[:, 0:H] = dc_total * g * i * (1 - i)                                 # da_i
    da[:, H:2 * H] = dc_total * c * f * (1 - f)                             # da_f
    da[:, 2 * H:3 * H] = dc_total * i * (1 - g * g)                         # da_g
    da[:, 3 * H:4 * H] = dh * tanh_c * o * (1 - o)                          # da_o
    return _into(out, (da, dc_total * f))


class LSTMCell(Function):
    """One LSTM step: hc = [h', c'] (2, B, H) from x (B, I), h (B, H), c (B, H), w_ih (I, 4H),
    w_hh (H, 4H), b (4H,). See the module docstring for the math.

    h' and c' come out stacked as one array (an op has one output): ``hc[0]`` is h', ``hc[1]``
    is c', and backward receives their two gradients the same way, dout (2, B, H).
    """

    def forward(self, x, h, c, w_ih, w_hh, b):
        a = x @ w_ih + h @ w_hh + b                                         # (B, 4H)
        h_new, c_new, self.gates, self.tanh_c = cell_forward(a, c)
        self.x, self.h, self.c, self.w_ih, self.w_hh = x, h, c, w_ih, w_hh
        return backend.get_array_module(a).stack([h_new, c_new])           # (2, B, H)

    def backward(self, dout):
        da, dc = cell_backward(dout[0], dout[1], self.gates, self.tanh_c, self.c)
        dx = da @ self.w_ih.T                                               # (B, I)
        dh = da @ self.w_hh.T                                               # (B, H)
        dw_ih = self.x.T @ da                                               # (I, 4H)
        dw_hh = self.h.T @ da                                               # (H, 4H)
        db = da.sum(axis=0)                                                 # (4H,)
        return dx, dh, dc, dw_ih, dw_hh, db


class LSTM(Function):
    """One LSTM layer over a whole sequence, with backprop through time.

    x (B, T, I), h0 (B, H), c0 (B, H), w_ih (I, 4H), w_hh (H, 4H), b (4H,) -> hc (B, T, 2H):
    hc[:, t, :H] is h_t and hc[:, t, H:] is c_t, the states after step t. The layer's output
    sequence is hc[..., :H] and its final state (hc[:, -1, :H], hc[:, -1, H:]); a loss may use
    any of them, and backward adds each step's incoming dh_t and dc_t as it walks back.

    The input projection x @ w_ih + b of all T steps is one GEMM before the loop, and in backward
    dx, dw_ih and dw_hh are one GEMM each over all B * T rows; only h @ w_hh and da @ w_hh^T run
    per step, since each needs the step before.
    """

    def forward(self, x, h0, c0, w_ih, w_hh, b):
        xp = backend.get_array_module(x)
        B, T, I = x.shape                                       # noqa: E741 (I: input size)
        H = h0.shape[-1]
        ax = (x.reshape(B * T, I) @ w_ih + b).reshape(B, T, 4 * H)       # (B*T, 4H) -> (B,T,4H)
        hc = xp.empty((B, T, 2 * H), dtype=ax.dtype)
        self.gates = xp.empty((B, T, 4 * H), dtype=ax.dtype)
        self.tanh_c = xp.empty((B, T, H), dtype=ax.dtype)
        h, c = h0, c0
        for t in range(T):
            # step t writes straight into its slices of hc, gates and tanh_c
            h, c, _, _ = cell_forward(ax[:, t] + h @ w_hh, c, out=(
                hc[:, t, :H], hc[:, t, H:], self.gates[:, t], self.tanh_c[:, t]))
        self.x, self.h0, self.c0, self.hc, self.w_ih, self.w_hh = x, h0, c0, hc, w_ih, w_hh
        return hc

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        x, hc, w_hh = self.x, self.hc, self.w_hh
        B, T, I = x.shape                                       # noqa: E741 (I: input size)
        H = self.h0.shape[-1]
        da = xp.empty((B, T, 4 * H), dtype=dout.dtype)
        dh_next = xp.zeros((B, H), dtype=dout.dtype)                        # from step t + 1
        dc_next = xp.zeros((B, H), dtype=dout.dtype)
        w_hh_t = xp.ascontiguousarray(w_hh.T)          # (4H, H): read 64x per layer, once laid out
        for t in reversed(range(T)):
            c_prev = hc[:, t - 1, H:] if t > 0 else self.c0
            _, dc_next = cell_backward(dout[:, t, :H] + dh_next, dout[:, t, H:] + dc_next,
                                       self.gates[:, t], self.tanh_c[:, t], c_prev,
                                       out=(da[:, t], xp.empty_like(dc_next)))
            dh_next = da[:, t] @ w_hh_t                                     # (B, H)
        da2 = da.reshape(B * T, 4 * H)                          # (B, T, 4H) -> (B*T, 4H)
        h_prev = xp.concatenate([self.h0[:, None], hc[:, :T - 1, :H]], axis=1)   # (B, T, H)
        dx = (da2 @ self.w_ih.T).reshape(B, T, I)               # (B*T, I) -> (B, T, I)
        dw_ih = x.reshape(B * T, I).T @ da2                                 # (I, 4H)
        dw_hh = h_prev.reshape(B * T, H).T @ da2                            # (H, 4H)
        db = da2.sum(axis=0)                                                # (4H,)
        return dx, dh_next, dc_next, dw_ih, dw_hh, db


def _tensors(op, *values):
    """The arguments as Tensors on one device, all of one floating dtype (else a TypeError)."""
    like = next((v for v in values if isinstance(v, Tensor)), None)
    ts = [as_tensor(v, like) for v in values]
    dtypes = [t.dtype for t in ts]
    if any(d.kind != "f" for d in dtypes) or len(set(dtypes)) > 1:
        raise TypeError(f"{op}: x, h, c, w_ih, w_hh, b must share one floating dtype, got "
                        f"{', '.join(str(d) for d in dtypes)}")
    return ts


def _check(op, x, h, c, w_ih, w_hh, b, seq):
    lead = "(B, T, I) with T >= 1" if seq else "(B, I)"
    want_ndim = 3 if seq else 2
    if x.ndim != want_ndim or (seq and x.shape[1] == 0):
        raise ValueError(f"{op}: expected x of shape {lead}, got {x.shape}")
    if w_ih.ndim != 2 or w_hh.ndim != 2 or w_ih.shape[1] % 4 or w_hh.shape[1] != w_ih.shape[1]:
        raise ValueError(f"{op}: expected w_ih (I, 4H) and w_hh (H, 4H), got {w_ih.shape} and "
                         f"{w_hh.shape}")
    H = w_ih.shape[1] // 4
    B = x.shape[0]
    if x.shape[-1] != w_ih.shape[0] or w_hh.shape[0] != H:
        raise ValueError(f"{op}: x {x.shape}, w_ih {w_ih.shape} and w_hh {w_hh.shape} do not "
                         f"fit: need x (..., I), w_ih (I, 4H), w_hh (H, 4H)")
    if h.shape != (B, H) or c.shape != (B, H):
        raise ValueError(f"{op}: expected h and c of shape (B, H) = ({B}, {H}), got {h.shape} "
                         f"and {c.shape}")
    if b.shape != (4 * H,):
        raise ValueError(f"{op}: expected b of shape (4H,) = ({4 * H},), got {b.shape}")


def lstm_cell(x, h, c, w_ih, w_hh, b):
    """One LSTM step: returns (h', c'), each (B, H). Shapes and math: see ``LSTMCell``."""
    x, h, c, w_ih, w_hh, b = _tensors("lstm_cell", x, h, c, w_ih, w_hh, b)
    _check("lstm_cell", x, h, c, w_ih, w_hh, b, seq=False)
    hc = LSTMCell.apply(x, h, c, w_ih, w_hh, b)                               # (2, B, H)
    return hc[0], hc[1]


def lstm(x, h0, c0, w_ih, w_hh, b):
    """One LSTM layer over x (B, T, I): returns (out (B, T, H), (h_T, c_T) each (B, H))."""
    x, h0, c0, w_ih, w_hh, b = _tensors("lstm", x, h0, c0, w_ih, w_hh, b)
    _check("lstm", x, h0, c0, w_ih, w_hh, b, seq=True)
    H = h0.shape[-1]
    hc = LSTM.apply(x, h0, c0, w_ih, w_hh, b)                                 # (B, T, 2H)
    return hc[:, :, :H], (hc[:, -1, :H], hc[:, -1, H:])

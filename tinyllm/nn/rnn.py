"""Recurrent layers: LSTMCell (one step) and LSTM (a stack of layers over a sequence).

Thin Modules around the ops in tinyllm/ops/rnn.py, where the math, the backward pass and backprop
through time are written out. As PyTorch's nn.LSTMCell / nn.LSTM, with two differences in the
stored parameters: weights are (in, 4H) (the transpose of PyTorch's (4H, in), as tinyllm's
Linear), and each layer has one bias (PyTorch's bias_ih + bias_hh, which only ever appear
summed). Gate order i, f, g, o and the init U(-1/sqrt(H), 1/sqrt(H)) are PyTorch's.
"""
import math

from tinyllm import functional as F
from tinyllm.nn.layers import Dropout, _dtype, _uniform
from tinyllm.nn.module import Module, Parameter


def _zero_state(x, B, H):
    return (F.zeros(B, H, dtype=x.dtype, device=x.device),
            F.zeros(B, H, dtype=x.dtype, device=x.device))


class LSTMCell(Module):
    """One LSTM step: ``cell(x, (h, c))`` -> (h', c'); x (B, input_size), h, c (B, hidden_size).
    Without a state, h and c start at zero."""

    def __init__(self, input_size, hidden_size, bias=True, dtype=None):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        bound, dt = 1.0 / math.sqrt(hidden_size), _dtype(dtype)
        self.weight_ih = Parameter(_uniform((input_size, 4 * hidden_size), bound, dt))
        self.weight_hh = Parameter(_uniform((hidden_size, 4 * hidden_size), bound, dt))
        if bias:
            self.bias = Parameter(_uniform((4 * hidden_size,), bound, dt))
        else:
            self.register_parameter("bias", None)

    def forward(self, x, state=None):
        h, c = state if state is not None else _zero_state(x, x.shape[0], self.hidden_size)
        b = self.bias
        if b is None:
            b = F.zeros(4 * self.hidden_size, dtype=x.dtype, device=x.device)
        return F.lstm_cell(x, h, c, self.weight_ih, self.weight_hh, b)

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias is not None}"


class LSTM(Module):
    """A stack of ``num_layers`` LSTM layers over a batch-first sequence.

    ``lstm(x, (h0, c0))`` -> (out, (h_n, c_n)): x (B, T, input_size); out (B, T, hidden_size),
    the last layer's h at every step; h0, c0, h_n, c_n (num_layers, B, hidden_size). Without a
    state, every layer starts at zero. ``dropout`` applies to each layer's output except the
    last one's, as PyTorch's. Parameters per layer k: ``weight_ih_l{k}`` (in, 4H),
    ``weight_hh_l{k}`` (H, 4H), ``bias_l{k}`` (4H,).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, dropout=0.0,
                 dtype=None):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"LSTM: num_layers must be >= 1, got {num_layers}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.has_bias = bias
        bound, dt = 1.0 / math.sqrt(hidden_size), _dtype(dtype)
        for k in range(num_layers):
            n_in = input_size if k == 0 else hidden_size
            setattr(self, f"weight_ih_l{k}",
                    Parameter(_uniform((n_in, 4 * hidden_size), bound, dt)))
            setattr(self, f"weight_hh_l{k}",
                    Parameter(_uniform((hidden_size, 4 * hidden_size), bound, dt)))
            if bias:
                setattr(self, f"bias_l{k}", Parameter(_uniform((4 * hidden_size,), bound, dt)))
        self.drop = Dropout(dropout)

    def forward(self, x, state=None):
        if x.ndim != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"LSTM: expected input (B, T, {self.input_size}), got {x.shape}")
        B, H, L = x.shape[0], self.hidden_size, self.num_layers
        if state is not None:
            h0, c0 = state
            if h0.shape != (L, B, H) or c0.shape != (L, B, H):
                raise ValueError(f"LSTM: expected h0 and c0 of shape (num_layers, B, H) = "
                                 f"({L}, {B}, {H}), got {h0.shape} and {c0.shape}")
        hs, cs = [], []
        for k in range(L):
            h, c = (h0[k], c0[k]) if state is not None else _zero_state(x, B, H)
            b = (getattr(self, f"bias_l{k}") if self.has_bias
                 else F.zeros(4 * H, dtype=x.dtype, device=x.device))
            x, (h, c) = F.lstm(x, h, c, getattr(self, f"weight_ih_l{k}"),
                               getattr(self, f"weight_hh_l{k}"), b)
            hs.append(h)
            cs.append(c)
            if k < L - 1:
                x = self.drop(x)
        return x, (F.stack(hs), F.stack(cs))

    def extra_repr(self):
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bias={self.has_bias}, dropout={self.drop.p}")

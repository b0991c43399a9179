"""softmax and log_softmax along one axis, numerically stable.

softmax(x)_i = e^(x_i) / sum_j e^(x_j) is unchanged by subtracting any constant from every x_j;
subtracting m = max_j x_j makes every exponent <= 0, so nothing overflows, and the largest term is
e^0 = 1, so the sum is >= 1 and the log never sees 0.

Rows whose entries are all -inf (fully masked) have no valid distribution: softmax returns zeros
for them (not NaN), so a fully padded query contributes nothing; log_softmax returns NaN there,
as PyTorch does (log 0 - log 0). A NaN or a +inf in a row makes the whole row NaN (e^(inf - inf)),
as in PyTorch.
"""
from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.dispatch import accelerator
from tinyllm.kernels import softmax as softmax_kernels
from tinyllm.ops._util import as_float


def _row_max(x, axis):
    """max along ``axis`` (keepdims), with all -inf rows' max replaced by 0 so that x - m stays
    -inf. A NaN or +inf max stays: the row comes out NaN, as in PyTorch (e^(inf - inf))."""
    xp = backend.get_array_module(x)
    m = x.max(axis=axis, keepdims=True)
    return xp.where(m == -xp.inf, 0, m)


class Softmax(Function):
    """y = softmax(x) along ``axis``:

        y_i = e^(x_i - m) / sum_j e^(x_j - m),   m = max_j x_j

    Jacobian: with S = sum_k e^x_k, dy_i/dx_j = [i == j] e^x_i / S - e^x_i e^x_j / S^2
    = y_i ([i == j] - y_j), so the vector-Jacobian product is
        dx_j = sum_i dout_i y_i ([i == j] - y_j) = y_j (dout_j - sum_i dout_i y_i)
    one dot product per row; the (C, C) Jacobian is never formed.

    Shapes: x, y, dout, dx all the same; the sums run over ``axis``. A row of -inf gives zeros
    (the all -inf max is taken as 0, and the sum 0 as 1), and its dx is 0.
    Fast path: a Numba kernel per direction (tinyllm/kernels/softmax.py), under the switch.
    """

    def forward(self, x, axis=-1):
        self.axis = axis
        if accelerator("softmax", x, axis=axis):
            self.y = softmax_kernels.softmax_forward(x)
            return self.y
        xp = backend.get_array_module(x)
        if x.size == 0:                               # max of an empty axis has no identity
            self.y = xp.zeros_like(x)
            return self.y
        e = xp.exp(x - _row_max(x, axis))             # every exponent <= 0
        s = e.sum(axis=axis, keepdims=True)
        self.y = e / xp.where(s == 0, 1, s)           # all -inf row: 0 / 1 = 0
        return self.y

    def backward(self, dout):
        y, axis = self.y, self.axis
        if accelerator("softmax", y, dout, axis=axis):
            return softmax_kernels.softmax_backward(y, dout)
        return y * (dout - (dout * y).sum(axis=axis, keepdims=True))


class LogSoftmax(Function):
    """y = log softmax(x) = x - m - log sum_j e^(x_j - m), along ``axis``.

    dy_i/dx_j = [i == j] - softmax(x)_j, so  dx_j = dout_j - softmax(x)_j * sum_i dout_i,
    with softmax(x) = e^y.
    """

    def forward(self, x, axis=-1):
        xp = backend.get_array_module(x)
        z = x - _row_max(x, axis)
        self.axis = axis
        self.y = z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))
        return self.y

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        return dout - xp.exp(self.y) * dout.sum(axis=self.axis, keepdims=True)


def _axis(x, axis, op):
    ndim = max(x.ndim, 1)                 # a 0-d tensor has one implicit axis: 0 or -1 (PyTorch)
    if isinstance(axis, bool) or not -ndim <= axis < ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for shape {x.shape}")
    return axis % ndim


def _apply(cls, x, axis, op):
    """cls along ``axis``; a 0-d x is taken as a row of one (softmax 1.0, log_softmax 0.0)."""
    axis = _axis(x, axis, op)
    if x.ndim == 0:
        return cls.apply(x.reshape(1), axis=0).reshape(())
    return cls.apply(x, axis=axis)


def softmax(x, axis=-1):
    """softmax along ``axis`` (default last)."""
    return _apply(Softmax, as_float(x), axis, "softmax")


def log_softmax(x, axis=-1):
    """log of softmax along ``axis``, computed without forming softmax (no log(0) underflow)."""
    return _apply(LogSoftmax, as_float(x), axis, "log_softmax")

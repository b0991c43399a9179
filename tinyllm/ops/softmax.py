"""softmax and log_softmax along one axis, numerically stable.

softmax(x)_i = e^(x_i) / sum_j e^(x_j) is unchanged by subtracting any constant from every x_j;
subtracting m = max_j x_j makes every exponent <= 0, so nothing overflows, and the largest term is
e^0 = 1, so the sum is >= 1 and the log never sees 0.

Rows whose entries are all -inf (fully masked) have no valid distribution: softmax returns zeros
for them (not NaN), so a fully padded query contributes nothing; log_softmax returns NaN there,
as PyTorch does (log 0 - log 0).
"""
from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.kernels.softmax import softmax_backward, softmax_forward
from tinyllm.ops._util import as_float


def _row_max(x, axis):
    """max along ``axis`` (keepdims), with all -inf rows' max replaced by 0 so that x - m stays
    -inf. A NaN or +inf max stays: the row comes out NaN, as in PyTorch (e^(inf - inf))."""
    xp = backend.get_array_module(x)
    m = x.max(axis=axis, keepdims=True)
    return xp.where(m == -xp.inf, 0, m)


class Softmax(Function):
    """y = softmax(x) along ``axis``.

    Jacobian: dy_i/dx_j = y_i ([i == j] - y_j), so the vector-Jacobian product is
        dx_j = sum_i dout_i y_i ([i == j] - y_j) = y_j (dout_j - sum_i dout_i y_i).
    Shapes: x, y, dout, dx all the same; the sum runs over ``axis``.
    Computed by tinyllm/kernels/softmax.py (NumPy reference or Numba kernel; same formulas).
    """

    def forward(self, x, axis=-1):
        self.axis = axis
        self.y = softmax_forward(x, axis)
        return self.y

    def backward(self, dout):
        return softmax_backward(self.y, dout, self.axis)


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
    if x.ndim == 0 or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{op}: axis {axis} is out of range for shape {x.shape}")
    return axis % x.ndim


def softmax(x, axis=-1):
    """softmax along ``axis`` (default last)."""
    x = as_float(x)
    return Softmax.apply(x, axis=_axis(x, axis, "softmax"))


def log_softmax(x, axis=-1):
    """log of softmax along ``axis``, computed without forming softmax (no log(0) underflow)."""
    x = as_float(x)
    return LogSoftmax.apply(x, axis=_axis(x, axis, "log_softmax"))

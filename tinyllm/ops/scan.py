"""Scans and sorting along one axis: cumsum, cumprod; sort, topk.

A scan keeps the axis: out_i combines x_0 .. x_i. Its backward runs the other way: x_j fed every
out_i with i >= j, so dx_j sums over those, a reversed cumulative sum.

sort and topk are an index computation (argsort, no gradient) followed by a differentiable read
of x at those indices (``Gather``, tinyllm/ops/indexing.py): the values' gradient goes back to
the positions they came from, the indices are an int64 tensor without gradient, as PyTorch.
"""
import numpy as np

from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.autograd.tensor import Tensor
from tinyllm.ops._util import as_tensor
from tinyllm.ops.indexing import Gather, _one_axis


def _reverse_cumsum(a, axis):
    """out_j = sum_{i >= j} a_i along ``axis``."""
    xp = backend.get_array_module(a)
    return xp.flip(xp.cumsum(xp.flip(a, axis), axis=axis), axis)


class CumSum(Function):
    """out_i = sum_{j <= i} x_j along ``axis``.

    d out_i / d x_j = [j <= i], so  dx_j = sum_{i >= j} dout_i: dout summed from the end.
    Shapes: x, out, dout, dx all the same.
    """

    def forward(self, x, axis=0):
        self.axis = axis
        return backend.get_array_module(x).cumsum(x, axis=axis)

    def backward(self, dout):
        return _reverse_cumsum(dout, self.axis)


class CumProd(Function):
    """out_i = prod_{j <= i} x_j along ``axis``.

    d out_i / d x_j = [j <= i] prod_{k <= i, k != j} x_k, so
        dx_j = sum_{i >= j} dout_i prod_{k <= i, k != j} x_k.
    Without zeros that is (sum_{i >= j} dout_i out_i) / x_j. With zeros, let z be the first
    zero of the row:
        j <  z:  the same formula (x_j != 0, and out_i = 0 for i >= z drops those terms);
        j == z:  sum_{i >= z} dout_i out'_i, out' the cumprod of x with x_z replaced by 1;
        j >  z:  0 (every product still contains x_z = 0).
    Shapes: x, out, dout, dx all the same.
    """

    def forward(self, x, axis=0):
        xp = backend.get_array_module(x)
        self.x, self.axis = x, axis
        self.out = xp.cumprod(x, axis=axis)
        return self.out

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        x, axis = self.x, self.axis
        zeros_so_far = xp.cumsum(x == 0, axis=axis)
        before = zeros_so_far == 0                        # j < z (the whole row if no zero)
        first = (x == 0) & (zeros_so_far == 1)            # j == z
        dx = xp.where(before, _reverse_cumsum(dout * self.out, axis)
                      / xp.where(before, x, 1), 0)
        if first.any():
            out_without_z = xp.cumprod(xp.where(first, 1, x), axis=axis)
            dx = dx + xp.where(first, _reverse_cumsum(dout * out_without_z, axis), 0)
        return dx


# ----------------------------------------------------------------------------------------------
# the public functions

def _scan_axis(x, axis, dim, op):
    if dim is not None:
        if axis is not None:
            raise TypeError(f"{op}: got both axis={axis!r} and dim={dim!r}; pass one of them")
        axis = dim
    if axis is None:                                  # NumPy: the flattened tensor
        return x.reshape(-1), 0
    if x.ndim == 0:
        _one_axis(axis, 0, op)                        # 0 or -1, as PyTorch
        return x.reshape(1), 0
    return x, _one_axis(axis, x.ndim, op)


def _cast(x, dtype):
    from tinyllm.ops.elementwise import astype
    return as_tensor(x) if dtype is None else astype(x, dtype)


def cumsum(x, axis=None, *, dim=None, dtype=None):
    """Cumulative sum along ``axis`` (None: over the flattened tensor, as NumPy); ``dtype``
    casts x first (as ``torch.cumsum``)."""
    x0 = _cast(x, dtype)
    x, axis = _scan_axis(x0, axis, dim, "cumsum")
    out = CumSum.apply(x, axis=axis)
    return out.reshape(()) if x0.ndim == 0 else out


def cumprod(x, axis=None, *, dim=None, dtype=None):
    """Cumulative product along ``axis``; the gradient is exact with zeros in the input.
    ``dtype`` casts x first (as ``torch.cumprod``)."""
    x0 = _cast(x, dtype)
    x, axis = _scan_axis(x0, axis, dim, "cumprod")
    out = CumProd.apply(x, axis=axis)
    return out.reshape(()) if x0.ndim == 0 else out


def _argsort(data, axis, descending):
    """Stable argsort; descending sorts -data (ties keep their order, as NumPy's stable sort).
    Integers sort ~data = -data - 1 instead: it reverses the order too, and unlike -data it
    cannot overflow (-(-2**63) is -2**63 again in int64)."""
    xp = backend.get_array_module(data)
    if descending:
        data = ~data.astype(np.int64) if data.dtype.kind in "ub" else \
            ~data if data.dtype.kind == "i" else -data
    return xp.argsort(data, axis=axis, kind="stable")


def sort(x, axis=-1, descending=False, *, dim=None, stable=None):
    """(values, indices) of x sorted along ``axis`` (default last), as ``torch.sort``; values
    are differentiable (their gradient goes back to where each came from). Always stable, so
    PyTorch's ``stable=`` is accepted and changes nothing."""
    x = as_tensor(x)
    if dim is not None:
        axis = dim
    if x.ndim == 0:
        _one_axis(axis, 0, "sort")
        return x, Tensor._from_op(backend.get_array_module(x.data).zeros((), dtype=np.int64))
    axis = _one_axis(axis, x.ndim, "sort")
    index = _argsort(x.data, axis, descending)
    return Gather.apply(x, index=index, axis=axis), Tensor._from_op(index.astype(np.int64))


def topk(x, k, axis=-1, largest=True, sorted=True, *, dim=None):
    """(values, indices) of the k largest (``largest=False``: smallest) elements along ``axis``,
    as ``torch.topk``. Always returned in sorted order (``sorted=False`` allows any order)."""
    x = as_tensor(x)
    if dim is not None:
        axis = dim
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"topk: k must be an int, got {k!r}")
    xr = x.reshape(1) if x.ndim == 0 else x
    axis = _one_axis(axis, x.ndim, "topk")
    n = xr.shape[axis]
    if not 0 <= k <= n:
        raise ValueError(f"topk: k={k} is out of range for axis {axis} of length {n} (input "
                         f"shape {x.shape})")
    xp = backend.get_array_module(x.data)
    index = xp.take(_argsort(xr.data, axis, largest), xp.arange(k), axis=axis)
    values, index = Gather.apply(xr, index=index, axis=axis), index.astype(np.int64)
    if x.ndim == 0 and k == 1:
        return values.reshape(()), Tensor._from_op(index.reshape(()))
    return values, Tensor._from_op(index)

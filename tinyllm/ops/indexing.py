"""Indexing by integer arrays along one axis: gather / take_along_axis, index_select,
scatter_add, masked_select, one_hot.

Each reads (or writes) positions named by an index array. The backward of a read is a
scatter-add of dout into zeros at the positions read: a position read k times receives the sum
of the k gradients (``backend.scatter_add``, NumPy's unbuffered ``np.add.at``); the backward of a
scatter-add is a read of dout at the positions written.

Index arrays are integers (any int dtype, negative indices count from the end as in NumPy) and
never receive a gradient.
"""
import numpy as np

from tinyllm import backend
from tinyllm.autograd.function import Function, unbroadcast
from tinyllm.autograd.tensor import Tensor
from tinyllm.ops._util import as_tensor, int_array


def _positions(index, axis, x_shape):
    """The full NumPy index that reads x at ``index`` along ``axis``: for every other axis d an
    arange over index.shape[d] (0 where x has size 1 there, i.e. x broadcasts), shaped to
    broadcast against ``index``. x[_positions(...)] has index's shape."""
    xp = backend.get_array_module(index)
    where = []
    for d, n in enumerate(index.shape):
        if d == axis:
            where.append(index)
            continue
        shape = [1] * index.ndim
        shape[d] = n
        rows = xp.arange(n) if x_shape[d] != 1 else xp.zeros(n, dtype=np.int64)
        where.append(rows.reshape(shape))
    return tuple(where)


class Gather(Function):
    """out = x read at ``index`` along ``axis`` (``torch.gather``, ``np.take_along_axis``).

    For axis = 1 of a 3-d x:  out[i, j, k] = x[i, index[i, j, k], k].
    dx = zeros like x, with dout[i, j, k] added at [i, index[i, j, k], k] (scatter-add: an
    element gathered twice gets both gradients).
    Shapes: index has x's ndim; out has index's shape.
    """

    def forward(self, x, index=None, axis=0):
        self.shape, self.dtype = x.shape, x.dtype
        self.where = _positions(index, axis, x.shape)
        return x[self.where]

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        dx = xp.zeros(self.shape, dtype=self.dtype)
        return backend.scatter_add(dx, self.where, dout)


class IndexSelect(Function):
    """out = x with the slices ``index`` taken along ``axis`` (``torch.index_select``, ``np.take``):
    out[:, j] = x[:, index[j]] for axis 1.

    dx = zeros like x; dx[:, index[j]] += dout[:, j] for every j (repeats add up).
    Shapes: index (K,); out like x with axis length K.
    """

    def forward(self, x, index=None, axis=0):
        xp = backend.get_array_module(x)
        self.shape, self.dtype = x.shape, x.dtype
        self.where = (slice(None),) * axis + (index,)
        return xp.take(x, index, axis=axis)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        dx = xp.zeros(self.shape, dtype=self.dtype)
        return backend.scatter_add(dx, self.where, dout)


class ScatterAdd(Function):
    """out = x, with src[i, j, k] added at [i, index[i, j, k], k] for axis 1
    (``torch.scatter_add``; repeated indices add up).

    out is linear in x and in src:
    dx = dout;   dsrc[i, j, k] = dout[i, index[i, j, k], k] (a gather of dout), 0 where src
    lies outside index's shape (those elements are not added).
    Shapes: x (...); index and src with x's ndim, index.shape <= src.shape and, off ``axis``,
    <= x.shape.
    """

    def forward(self, x, src, index=None, axis=0):
        self.src_shape = src.shape
        self.read = tuple(slice(0, n) for n in index.shape)        # the part of src added
        self.where = _positions(index, axis, x.shape)
        out = x.copy()
        return backend.scatter_add(out, self.where, src[self.read])

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        dsrc = None
        if self.needs_input_grad[1]:
            dsrc = xp.zeros(self.src_shape, dtype=dout.dtype)
            dsrc[self.read] = dout[self.where]
        return dout, dsrc


class MaskedSelect(Function):
    """out = the elements of x where ``mask`` is True, in row-major order, as a 1-d array
    (``torch.masked_select``; x and mask broadcast against each other).

    dx = zeros of the broadcast shape with dout put back at the mask's positions, then summed
    down to x's shape (unbroadcast).   Shapes: out (number of True,).
    """

    def forward(self, x, mask=None):
        xp = backend.get_array_module(x)
        self.x_shape, self.dtype = x.shape, x.dtype
        shape = np.broadcast_shapes(x.shape, mask.shape)
        self.mask = xp.broadcast_to(mask, shape)
        return xp.broadcast_to(x, shape)[self.mask]

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        dx = xp.zeros(self.mask.shape, dtype=self.dtype)
        dx[self.mask] = dout
        return unbroadcast(dx, self.x_shape)


# ----------------------------------------------------------------------------------------------
# the public functions

def _one_axis(axis, ndim, op):
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{op}: axis must be an int, got {axis!r}")
    if not -max(ndim, 1) <= axis < max(ndim, 1):
        raise ValueError(f"{op}: axis {axis} is out of range for a tensor with {ndim} dims")
    return int(axis) % max(ndim, 1)


def _check_bounds(index, n, op, axis):
    if index.size and (int(index.max()) >= n or int(index.min()) < -n):
        raise IndexError(f"{op}: index out of range for axis {axis} of length {n} (index "
                         f"values from {int(index.min())} to {int(index.max())})")


def _axis_spelling(op, axis, dim):
    if dim is not None:
        if axis is not None:
            raise TypeError(f"{op}: got both axis={axis!r} and dim={dim!r}; pass one of them")
        return dim
    return axis


def gather(x, axis=None, index=None, *, dim=None):
    """``torch.gather(x, dim, index)``: out[i][j] = x[index[i][j]][j] for axis 0, out with
    index's shape; index has x's ndim and, off ``axis``, a size no larger than x's."""
    x, axis = as_tensor(x), _axis_spelling("gather", axis, dim)
    index = int_array(index, "gather", "index", x.data)
    axis = _one_axis(axis, x.ndim, "gather")
    if x.ndim == 0 and index.ndim <= 1:              # a 0-d x is one element, as PyTorch
        return gather(x.reshape(1), 0, index.reshape(-1)).reshape(index.shape)
    if index.ndim != x.ndim or any(i > n for d, (i, n) in enumerate(zip(index.shape, x.shape))
                                   if d != axis):
        raise ValueError(f"gather: index of shape {index.shape} does not fit x of shape "
                         f"{x.shape} (same ndim, and no larger than x off axis {axis})")
    _check_bounds(index, x.shape[axis], "gather", axis)
    return Gather.apply(x, index=index, axis=axis)


def take_along_axis(x, indices, axis):
    """``np.take_along_axis``: x read at ``indices`` along ``axis``; off ``axis``, x and indices
    broadcast against each other (``axis=None`` reads the flattened x)."""
    x = as_tensor(x)
    index = int_array(indices, "take_along_axis", "indices", x.data)
    if axis is None:
        x, axis = x.reshape(-1), 0
    axis = _one_axis(axis, x.ndim, "take_along_axis")
    if index.ndim != x.ndim:
        raise ValueError(f"take_along_axis: indices of shape {index.shape} need x's ndim "
                         f"{x.ndim} (x of shape {x.shape})")
    try:
        shape = list(np.broadcast_shapes(tuple(n for d, n in enumerate(x.shape) if d != axis),
                                         tuple(n for d, n in enumerate(index.shape) if d != axis)))
    except ValueError:
        raise ValueError(f"take_along_axis: indices of shape {index.shape} do not broadcast "
                         f"against x of shape {x.shape} off axis {axis}") from None
    shape.insert(axis, index.shape[axis])
    _check_bounds(index, x.shape[axis], "take_along_axis", axis)
    index = backend.get_array_module(index).broadcast_to(index, shape)
    return Gather.apply(x, index=index, axis=axis)


def index_select(x, axis=None, index=None, *, dim=None):
    """``torch.index_select(x, dim, index)``: the slices ``index`` (1-d) of x along ``axis``."""
    x, axis = as_tensor(x), _axis_spelling("index_select", axis, dim)
    index = int_array(index, "index_select", "index", x.data)
    axis = _one_axis(axis, x.ndim, "index_select")
    if index.ndim > 1:
        raise ValueError(f"index_select: index must be 0-d or 1-d, got shape {index.shape}")
    if x.ndim == 0:                                  # one element, as PyTorch
        if index.size != 1:
            raise ValueError(f"index_select: x is 0-d, so index must hold one value, got "
                             f"shape {index.shape}")
        return index_select(x.reshape(1), 0, index.reshape(1)).reshape(())
    _check_bounds(index, x.shape[axis], "index_select", axis)
    return IndexSelect.apply(x, index=index.reshape(-1), axis=axis)


def scatter_add(x, axis=None, index=None, src=None, *, dim=None):
    """``torch.scatter_add(x, dim, index, src)``: x with src[i][j] added at [index[i][j]][j]
    (axis 0); repeated indices add up. Differentiable in x and src."""
    x, axis = as_tensor(x), _axis_spelling("scatter_add", axis, dim)
    src = as_tensor(src, x)
    index = int_array(index, "scatter_add", "index", x.data)
    axis = _one_axis(axis, x.ndim, "scatter_add")
    if x.ndim == 0 and index.ndim <= 1 and src.ndim <= 1:    # one element, as PyTorch
        return scatter_add(x.reshape(1), 0, index.reshape(-1), src.reshape(-1)).reshape(())
    if (index.ndim != x.ndim or src.ndim != x.ndim
            or any(i > s for i, s in zip(index.shape, src.shape))
            or any(i > n for d, (i, n) in enumerate(zip(index.shape, x.shape)) if d != axis)):
        raise ValueError(f"scatter_add: index {index.shape}, src {src.shape} and x {x.shape} "
                         f"need one ndim, index no larger than src, and off axis {axis} no "
                         f"larger than x")
    if src.dtype != x.dtype:
        raise TypeError(f"scatter_add: src has dtype {src.dtype}, x has {x.dtype}; they must "
                        f"match")
    _check_bounds(index, x.shape[axis], "scatter_add", axis)
    return ScatterAdd.apply(x, src, index=index, axis=axis)


def masked_select(x, mask):
    """The elements of x where ``mask`` (boolean, broadcastable with x) is True, as 1-d."""
    x = as_tensor(x)
    m = mask.data if isinstance(mask, Tensor) else mask
    m = backend.to_device(np.asarray(m) if backend.get_array_module(m) is np else m, x.device)
    if m.dtype != bool:
        raise TypeError(f"masked_select: mask must be boolean, got dtype {m.dtype}")
    try:
        np.broadcast_shapes(x.shape, m.shape)
    except ValueError:
        raise ValueError(f"masked_select: mask of shape {m.shape} does not broadcast with x of "
                         f"shape {x.shape}") from None
    return MaskedSelect.apply(x, mask=m)


def one_hot(index, num_classes=-1, dtype=None):
    """``F.one_hot``: out[..., c] = 1 where index == c. Integer index in; int64 out as PyTorch,
    or ``dtype`` (a float dtype gives a float tensor). num_classes=-1: index.max() + 1. No grad."""
    data = index.data if isinstance(index, Tensor) else index
    data = np.asarray(data) if backend.get_array_module(data) is np else data
    if data.dtype.kind not in "iu":
        raise TypeError(f"one_hot: index must hold integers, got dtype {data.dtype}")
    if data.size and int(data.min()) < 0:
        raise ValueError(f"one_hot: class values must be non-negative, got {int(data.min())}")
    if num_classes == -1:
        num_classes = int(data.max()) + 1 if data.size else 0
    if data.size and int(data.max()) >= num_classes:
        raise ValueError(f"one_hot: class value {int(data.max())} is not below num_classes="
                         f"{num_classes}")
    xp = backend.get_array_module(data)
    out = data[..., None] == xp.arange(num_classes)
    return Tensor._from_op(out.astype(np.int64 if dtype is None else np.dtype(dtype)))

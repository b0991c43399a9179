"""Ops that move elements around without changing them: reshape, permute, indexing, joining.

Their backward moves the gradient back the same way: reshape it to the old shape, apply the
inverse permutation, scatter it into the positions that were read, split it where tensors were
joined. No arithmetic except where one element was read several times (integer-array indexing
with repeated indices), whose gradients add up.
"""
import numpy as np

from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.autograd.tensor import Tensor
from tinyllm.ops._util import as_tensor


class Reshape(Function):
    """out = x with a new ``shape`` (same elements, same order).   dx = dout reshaped back."""

    def forward(self, x, shape=None):
        self.in_shape = x.shape
        return x.reshape(shape)

    def backward(self, dout):
        return dout.reshape(self.in_shape)


class Permute(Function):
    """out = x with its axes reordered: out.shape[i] = x.shape[axes[i]].

    dx = dout permuted by the inverse permutation argsort(axes), which puts every axis back.
    """

    def forward(self, x, axes=None):
        self.inverse = tuple(int(i) for i in np.argsort(axes))
        return x.transpose(axes)

    def backward(self, dout):
        return dout.transpose(self.inverse)


class GetItem(Function):
    """out = x[index] for NumPy indices: ints, slices, None, Ellipsis, integer and bool arrays
    (``getitem`` has already turned lists and tuples inside the index into arrays).

    dx = zeros like x, with dout added into the positions ``index`` read. With basic indices
    (and bool masks) every position is read at most once, so a plain assignment does it. With
    integer arrays a position can be read several times (``x[[0, 0, 1]]``): each read passes its
    gradient back, so they must add up, which plain ``dx[index] += dout`` would not do (it is
    buffered: the last write wins). ``backend.scatter_add`` is the unbuffered add.
    """

    def forward(self, x, index=None, scatter=False):
        self.in_shape, self.in_dtype, self.index, self.scatter = x.shape, x.dtype, index, scatter
        return x[index]

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        dx = xp.zeros(self.in_shape, dtype=self.in_dtype)
        if self.scatter:
            backend.scatter_add(dx, self.index, dout)
        else:
            dx[self.index] = dout
        return dx


class Concatenate(Function):
    """out = the inputs joined along ``axis``.   dx_k = the slice of dout that x_k filled."""

    def forward(self, *xs, axis=0):
        xp = backend.get_array_module(xs[0])
        self.axis = axis
        self.bounds = [int(b) for b in np.cumsum([x.shape[axis] for x in xs])[:-1]]
        return xp.concatenate(xs, axis=axis)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        return tuple(xp.split(dout, self.bounds, axis=self.axis))


class Stack(Function):
    """out = the inputs (all the same shape) stacked along a new ``axis``.

    dx_k = dout[..., k, ...] (index k on the new axis).
    """

    def forward(self, *xs, axis=0):
        xp = backend.get_array_module(xs[0])
        self.axis = axis
        return xp.stack(xs, axis=axis)

    def backward(self, dout):
        lead = (slice(None),) * self.axis
        return tuple(dout[lead + (k,)] for k in range(dout.shape[self.axis]))


# ----------------------------------------------------------------------------------------------
# functional forms

def reshape(x, shape):
    """x with a new shape (one entry may be -1)."""
    x = as_tensor(x)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(n) for n in shape)
    return Reshape.apply(x, shape=shape)


def permute(x, axes):
    """x with axes reordered (NumPy's ``transpose(axes)``, PyTorch's ``permute``)."""
    x = as_tensor(x)
    axes = tuple(int(a) for a in axes)
    if sorted(a % max(x.ndim, 1) for a in axes) != list(range(x.ndim)) or len(axes) != x.ndim:
        raise ValueError(f"permute: axes {axes} are not a permutation of the {x.ndim} axes of "
                         f"a tensor of shape {x.shape}")
    axes = tuple(a % x.ndim for a in axes)
    return Permute.apply(x, axes=axes)


def transpose(x, axes=None):
    """NumPy's transpose: reverse the axes, or reorder them by ``axes``."""
    x = as_tensor(x)
    return permute(x, tuple(range(x.ndim - 1, -1, -1)) if axes is None else axes)


def swapaxes(x, axis1, axis2):
    """x with two axes exchanged (PyTorch's ``transpose(dim0, dim1)``)."""
    x = as_tensor(x)
    for a in (axis1, axis2):
        if not -x.ndim <= a < x.ndim:
            raise ValueError(f"swapaxes: axis {a} is out of range for shape {x.shape}")
    axes = list(range(x.ndim))
    axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
    return Permute.apply(x, axes=tuple(axes))


def getitem(x, index):
    """x[index]; index entries may be Tensors, arrays, or lists or tuples of ints or bools.

    As in NumPy and PyTorch, a top-level tuple is the multi-axis index itself (``x[0, 1]``),
    while a list or tuple *inside* it, nested or not, is an array index: ``x[:, (0, 0, 2)]`` and
    ``x[((1, 1, 0),)]`` read columns / rows 0, 0, 2 and 1, 1, 0. Each becomes an integer (or
    bool) array here, so that backward knows positions may repeat and adds their gradients up.
    """
    x = as_tensor(x)
    items = index if isinstance(index, tuple) else (index,)
    norm, scatter = [], False
    for item in items:
        if isinstance(item, Tensor):
            item = item.data
        if isinstance(item, (list, tuple)):
            try:
                item = np.asarray(item)
            except ValueError as e:                      # ragged: [[0, 1], [2]]
                raise IndexError(f"getitem: a sequence index must be rectangular, got {item!r}: "
                                 f"{e} (tensor of shape {x.shape})") from None
            if item.size == 0:
                item = item.astype(np.intp)
        if hasattr(item, "dtype") and hasattr(item, "shape"):
            if item.dtype.kind in "iu":
                scatter = True
            elif item.dtype.kind != "b":
                raise IndexError(f"getitem: index arrays must hold integers or booleans, got "
                                 f"dtype {item.dtype}")
            item = backend.to_device(item, x.device)
        norm.append(item)
    index = tuple(norm) if isinstance(index, tuple) else norm[0]
    try:
        return GetItem.apply(x, index=index, scatter=scatter)
    except IndexError as e:
        raise IndexError(f"getitem: {e} (tensor of shape {x.shape})") from e


def _join_operands(tensors, op):
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError(f"{op}: needs at least one tensor")
    floats = [t.dtype for t in tensors if t.dtype.kind == "f"]
    if floats:
        dtype = np.result_type(*floats)
        tensors = [t if t.dtype.kind == "f" else Tensor._from_op(t.data.astype(dtype))
                   for t in tensors]
    return tensors


def concatenate(tensors, axis=0):
    """Join tensors along an existing ``axis`` (shapes must agree on every other axis)."""
    tensors = _join_operands(tensors, "concatenate")
    ndim = tensors[0].ndim
    if ndim == 0 or not -ndim <= axis < ndim:
        raise ValueError(f"concatenate: axis {axis} is out of range for shapes "
                         f"{[t.shape for t in tensors]}")
    return Concatenate.apply(*tensors, axis=axis % ndim)


cat = concatenate


def stack(tensors, axis=0):
    """Join same-shape tensors along a new ``axis``."""
    tensors = _join_operands(tensors, "stack")
    shapes = {t.shape for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"stack: all tensors must have the same shape, got "
                         f"{[t.shape for t in tensors]}")
    ndim = tensors[0].ndim + 1
    if not -ndim <= axis < ndim:
        raise ValueError(f"stack: axis {axis} is out of range for {ndim}-d output")
    return Stack.apply(*tensors, axis=axis % ndim)


def split(x, indices_or_sections, axis=0):
    """Split x along ``axis`` into a list of tensors, as ``numpy.split``.

    An int n gives n equal parts (the axis length must divide evenly); a list of indices gives
    the cut points. Each part is a slice of x (a ``GetItem``), so its gradient lands in its part.
    """
    x = as_tensor(x)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"split: axis {axis} is out of range for shape {x.shape}")
    axis %= x.ndim
    n = x.shape[axis]
    if isinstance(indices_or_sections, (int, np.integer)):
        sections = int(indices_or_sections)
        if sections <= 0 or n % sections:
            raise ValueError(f"split: axis {axis} of length {n} does not divide into "
                             f"{sections} equal parts (shape {x.shape})")
        step = n // sections
        cuts = [step * k for k in range(1, sections)]
    else:
        cuts = [int(c) for c in indices_or_sections]
    bounds = [0] + cuts + [n]
    lead = (slice(None),) * axis
    return [getitem(x, lead + (slice(lo, hi),)) for lo, hi in zip(bounds[:-1], bounds[1:])]

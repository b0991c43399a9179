"""Elementwise selection between values: clip (clamp), minimum, maximum.

Each output element is one of its inputs' elements, so its gradient goes to the input it was
taken from, and ties follow PyTorch: maximum/minimum split dout in half between equal operands;
clip passes dout to x at the bounds themselves (min <= x <= max).

Shapes: x and the bounds (or x and y) broadcastable; dout has the output's shape; each gradient
is summed back to its input's shape (``unbroadcast``).
"""
import numpy as np

from tinyllm import backend
from tinyllm.autograd.function import Function, unbroadcast
from tinyllm.autograd.tensor import Tensor
from tinyllm.ops._util import as_tensor, operands


class Clip(Function):
    """out = min(max(x, lo), hi)   (a missing bound is -inf or +inf).

    dx  = dout where lo <= x <= hi, else 0        (dout passes at the bounds, as PyTorch)
    dlo = dout where x < lo and lo < hi, else 0   (out = lo there)
    dhi = dout where x > hi or hi < lo, else 0    (out = hi there; hi wins when lo > hi)
    each summed to its input's shape. NaN in x or a bound gives NaN out and 0 gradients.
    """

    def forward(self, x, lo, hi):
        xp = backend.get_array_module(x)
        self.x, self.lo, self.hi = x, lo, hi
        return xp.minimum(xp.maximum(x, lo), hi)

    def backward(self, dout):
        x, lo, hi = self.x, self.lo, self.hi
        dx = dlo = dhi = None
        if self.needs_input_grad[0]:
            dx = unbroadcast(dout * ((x >= lo) & (x <= hi)), x.shape)
        if self.needs_input_grad[1]:
            dlo = unbroadcast(dout * ((x < lo) & (lo < hi)), lo.shape)
        if self.needs_input_grad[2]:
            dhi = unbroadcast(dout * ((x > hi) | (hi < lo)), hi.shape)
        return dx, dlo, dhi


class Maximum(Function):
    """out = max(x, y), elementwise with broadcasting.

    dx = dout where x > y, dout / 2 where x == y, 0 where x < y   (ties split, as PyTorch)
    dy = dout where y > x, dout / 2 where x == y, 0 where y < x
    (a NaN on either side compares false both ways, so both get dout, as PyTorch.)
    """

    def forward(self, x, y):
        self.x, self.y = x, y
        return backend.get_array_module(x).maximum(x, y)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        x, y = self.x, self.y
        zero = xp.zeros((), dtype=dout.dtype)
        shared = xp.where(x == y, dout / 2, dout)
        dx = unbroadcast(xp.where(x < y, zero, shared), x.shape) if self.needs_input_grad[0] \
            else None
        dy = unbroadcast(xp.where(y < x, zero, shared), y.shape) if self.needs_input_grad[1] \
            else None
        return dx, dy


class Minimum(Function):
    """out = min(x, y), elementwise with broadcasting.

    dx = dout where x < y, dout / 2 where x == y, 0 where x > y   (ties split, as PyTorch)
    dy = dout where y < x, dout / 2 where x == y, 0 where y > x
    """

    def forward(self, x, y):
        self.x, self.y = x, y
        return backend.get_array_module(x).minimum(x, y)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        x, y = self.x, self.y
        zero = xp.zeros((), dtype=dout.dtype)
        shared = xp.where(x == y, dout / 2, dout)
        dx = unbroadcast(xp.where(x > y, zero, shared), x.shape) if self.needs_input_grad[0] \
            else None
        dy = unbroadcast(xp.where(y > x, zero, shared), y.shape) if self.needs_input_grad[1] \
            else None
        return dx, dy


# ----------------------------------------------------------------------------------------------
# functional forms

def _kind(value):
    """The dtype kind ('f', 'i', ...) of a bound: a Tensor, an array, a number or a list."""
    if hasattr(value, "dtype"):
        return np.dtype(value.dtype).kind
    return np.asarray(value).dtype.kind


def _bound(value, x, op, name):
    """A clip bound as a Tensor of x's dtype, on x's device."""
    try:
        bound = as_tensor(value, x)
    except TypeError as e:
        raise TypeError(f"{op}: {name} must be a number, a Tensor or an array, got {value!r} "
                        f"of type {type(value).__name__}") from e
    if bound.dtype.kind not in "fiub":
        raise TypeError(f"{op}: {name} must be real, got dtype {bound.dtype}")
    return bound.astype(x.dtype)                   # a differentiable Cast where it differs


def clip(x, min=None, max=None):
    """x limited to [min, max]; either bound may be None, a number or a Tensor (broadcast with
    x, differentiable). ``clamp`` is the same function (PyTorch's name); NumPy's a_min/a_max
    are the same positional arguments. Integer x with integer bounds stays integer."""
    if min is None and max is None:
        raise ValueError("clip: at least one of min and max must be given, got both None")
    x = as_tensor(x)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"clip: expected a real tensor, got dtype {x.dtype}")
    if x.dtype.kind != "f" and any(_kind(b) == "f" for b in (min, max) if b is not None):
        x = Tensor._from_op(x.data.astype(backend.get_default_dtype()))     # as PyTorch
    if x.dtype.kind != "f":                          # integers with integer bounds: no grad
        xp, out = backend.get_array_module(x.data), x.data
        if min is not None:
            out = xp.maximum(out, _bound(min, x, "clip", "min").data)
        if max is not None:
            out = xp.minimum(out, _bound(max, x, "clip", "max").data)
        return Tensor._from_op(out)
    lo = _bound(-np.inf if min is None else min, x, "clip", "min")   # a missing bound: +-inf
    hi = _bound(np.inf if max is None else max, x, "clip", "max")
    return Clip.apply(x, lo, hi)


clamp = clip


def maximum(x, y):
    """Elementwise max of x and y with broadcasting; ties split the gradient (as PyTorch)."""
    return Maximum.apply(*operands(x, y))


def minimum(x, y):
    """Elementwise min of x and y with broadcasting; ties split the gradient (as PyTorch)."""
    return Minimum.apply(*operands(x, y))

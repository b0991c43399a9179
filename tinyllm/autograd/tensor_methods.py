"""Operators and method forms of the ops for ``Tensor``: ``a + b``, ``a @ b``, ``t.sum()``...

Each method calls one function of ``tinyllm.functional`` (the ops), which imports the autograd
core, so the core cannot import it at import time (imports flow backend <- kernels <- autograd
<- ops). ``F`` below stands in for it until first use; then ``F`` is the module itself. This is
the one place autograd reaches up to the ops. ``Tensor`` (tensor.py) inherits these methods.
"""
import numpy as np


class _LazyFunctional:
    """``tinyllm.functional``, imported on first use (then the name ``F`` is the module)."""

    def __getattr__(self, name):
        global F
        from tinyllm import functional
        F = functional
        return getattr(functional, name)


F = _LazyFunctional()


class TensorMethods:
    """The operator and method sugar of ``Tensor``: each method is one call into the ops."""

    __slots__ = ()
    __array_ufunc__ = None       # ndarray + Tensor -> Tensor.__radd__, not an object array

    @property
    def T(self):
        """All axes reversed, as NumPy's ``.T``."""
        return F.permute(self, tuple(range(self.ndim - 1, -1, -1)))

    # ------------------------------------------------------------------------------------------
    # moving between devices and dtypes (differentiable)

    def to(self, target):
        """Move to a device ('cpu' / 'cuda') or cast to a dtype; differentiable either way."""
        if isinstance(target, str) and target in ("cpu", "cuda"):
            return F.to_device(self, target)
        return F.astype(self, target)

    def astype(self, dtype):
        return F.astype(self, dtype)

    def float(self):
        return F.astype(self, np.float32)

    def double(self):
        return F.astype(self, np.float64)

    def cpu(self):
        return self.to("cpu")

    def cuda(self):
        return self.to("cuda")

    # ------------------------------------------------------------------------------------------
    # arithmetic operators (each calls one op in tinyllm.functional)

    def __add__(self, other):
        return F.add(self, other)

    def __radd__(self, other):
        return F.add(other, self)

    def __sub__(self, other):
        return F.sub(self, other)

    def __rsub__(self, other):
        return F.sub(other, self)

    def __mul__(self, other):
        return F.mul(self, other)

    def __rmul__(self, other):
        return F.mul(other, self)

    def __truediv__(self, other):
        return F.div(self, other)

    def __rtruediv__(self, other):
        return F.div(other, self)

    def __pow__(self, other):
        return F.pow(self, other)

    def __rpow__(self, other):
        return F.pow(other, self)

    def __neg__(self):
        return F.neg(self)

    def __pos__(self):
        return self

    def __matmul__(self, other):
        return F.matmul(self, other)

    def __rmatmul__(self, other):
        return F.matmul(other, self)

    def __getitem__(self, index):
        return F.getitem(self, index)

    def __setitem__(self, index, value):
        raise TypeError("Tensor does not support item assignment: an in-place write could "
                        "silently change values saved for backward. Build the new tensor with "
                        "tinyllm.where / masked_fill / concatenate, or write to .data under "
                        "no_grad when you know nothing saved it")

    # comparisons give boolean tensors (masks); they are not differentiable
    def __lt__(self, other):
        return F.compare(self, other, "lt")

    def __le__(self, other):
        return F.compare(self, other, "le")

    def __gt__(self, other):
        return F.compare(self, other, "gt")

    def __ge__(self, other):
        return F.compare(self, other, "ge")

    def __eq__(self, other):
        return F.compare(self, other, "eq")

    def __ne__(self, other):
        return F.compare(self, other, "ne")

    __hash__ = object.__hash__   # tensors are hashed by identity, as in PyTorch

    # ------------------------------------------------------------------------------------------
    # method forms of the ops

    def exp(self):
        return F.exp(self)

    def log(self):
        return F.log(self)

    def sqrt(self):
        return F.sqrt(self)

    def tanh(self):
        return F.tanh(self)

    def sigmoid(self):
        return F.sigmoid(self)

    def relu(self):
        return F.relu(self)

    def gelu(self, approximate="none"):
        return F.gelu(self, approximate=approximate)

    def sum(self, axis=None, keepdims=False):
        return F.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return F.mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return F.max(self, axis=axis, keepdims=keepdims)

    def var(self, axis=None, keepdims=False, ddof=0):
        return F.var(self, axis=axis, keepdims=keepdims, ddof=ddof)

    def reshape(self, *shape):
        return F.reshape(self, shape[0] if len(shape) == 1 and not isinstance(shape[0], int)
                         else shape)

    view = reshape

    def permute(self, *axes):
        return F.permute(self, axes[0] if len(axes) == 1 and not isinstance(axes[0], int)
                         else axes)

    def transpose(self, *dims):
        """``transpose(dim0, dim1)`` swaps two axes (PyTorch); ``transpose()`` reverses all."""
        if len(dims) == 0:
            return self.T
        if len(dims) != 2:
            raise TypeError(f"transpose takes two axes to swap (got {dims}); use permute(*axes) "
                            "for a full permutation")
        return F.swapaxes(self, dims[0], dims[1])

    def swapaxes(self, axis1, axis2):
        return F.swapaxes(self, axis1, axis2)

    def flatten(self):
        return F.reshape(self, (-1,))

    def split(self, indices_or_sections, axis=0):
        return F.split(self, indices_or_sections, axis=axis)

    def masked_fill(self, mask, value):
        return F.masked_fill(self, mask, value)

    def softmax(self, axis=-1):
        return F.softmax(self, axis=axis)

    def log_softmax(self, axis=-1):
        return F.log_softmax(self, axis=axis)

    def matmul(self, other):
        return F.matmul(self, other)

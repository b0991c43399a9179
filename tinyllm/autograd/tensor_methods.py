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

    # issue 19: unary math and activations
    def silu(self):
        return F.silu(self)

    def __abs__(self):
        return F.abs(self)

    def abs(self):
        return F.abs(self)

    def sign(self):
        return F.sign(self)

    def clip(self, min=None, max=None):
        return F.clip(self, min, max)

    def clamp(self, min=None, max=None):
        return F.clip(self, min, max)

    def minimum(self, other):
        return F.minimum(self, other)

    def maximum(self, other):
        return F.maximum(self, other)

    def rsqrt(self):
        return F.rsqrt(self)

    def sin(self):
        return F.sin(self)

    def cos(self):
        return F.cos(self)

    def erf(self):
        return F.erf(self)

    def exp2(self):
        return F.exp2(self)

    def log2(self):
        return F.log2(self)

    def log1p(self):
        return F.log1p(self)

    def expm1(self):
        return F.expm1(self)

    def square(self):
        return F.square(self)

    def reciprocal(self):
        return F.reciprocal(self)

    def floor(self):
        return F.floor(self)

    def ceil(self):
        return F.ceil(self)

    def round(self, decimals=0):
        return F.round(self, decimals=decimals)

    def trunc(self):
        return F.trunc(self)

    def isnan(self):
        return F.isnan(self)

    def isinf(self):
        return F.isinf(self)

    def isfinite(self):
        return F.isfinite(self)

    def logical_not(self):
        return F.logical_not(self)

    def logical_and(self, other):
        return F.logical_and(self, other)

    def logical_or(self, other):
        return F.logical_or(self, other)

    def logical_xor(self, other):
        return F.logical_xor(self, other)

    # reductions (NumPy's axis/keepdims, or PyTorch's dim/keepdim), scans, indexing (issue 19)
    def sum(self, axis=None, keepdims=False, *, dtype=None, dim=None, keepdim=None):
        return F.sum(self, axis, keepdims, dtype=dtype, dim=dim, keepdim=keepdim)

    def mean(self, axis=None, keepdims=False, *, dtype=None, dim=None, keepdim=None):
        return F.mean(self, axis, keepdims, dtype=dtype, dim=dim, keepdim=keepdim)

    def max(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        """The maximum values (NumPy's max, PyTorch's amax); ``argmax`` gives the indices."""
        return F.max(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def min(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        """The minimum values (NumPy's min, PyTorch's amin); ``argmin`` gives the indices."""
        return F.min(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def prod(self, axis=None, keepdims=False, *, dtype=None, dim=None, keepdim=None):
        return F.prod(self, axis, keepdims, dtype=dtype, dim=dim, keepdim=keepdim)

    def var(self, axis=None, keepdims=False, ddof=None, *, correction=None, unbiased=None,
            dim=None, keepdim=None):
        return F.var(self, axis, keepdims, ddof, correction=correction, unbiased=unbiased,
                     dim=dim, keepdim=keepdim)

    def std(self, axis=None, keepdims=False, ddof=None, *, correction=None, unbiased=None,
            dim=None, keepdim=None):
        return F.std(self, axis, keepdims, ddof, correction=correction, unbiased=unbiased,
                     dim=dim, keepdim=keepdim)

    def logsumexp(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        return F.logsumexp(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def argmax(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        return F.argmax(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def argmin(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        return F.argmin(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def all(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        return F.all(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def any(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        return F.any(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def cumsum(self, axis=None, *, dim=None, dtype=None):
        return F.cumsum(self, axis, dim=dim, dtype=dtype)

    def cumprod(self, axis=None, *, dim=None, dtype=None):
        return F.cumprod(self, axis, dim=dim, dtype=dtype)

    def sort(self, axis=-1, descending=False, *, dim=None, stable=None):
        return F.sort(self, axis, descending, dim=dim, stable=stable)

    def topk(self, k, axis=-1, largest=True, sorted=True, *, dim=None):
        return F.topk(self, k, axis, largest, sorted, dim=dim)

    def gather(self, axis=None, index=None, *, dim=None):
        return F.gather(self, axis, index, dim=dim)

    def scatter_add(self, axis=None, index=None, src=None, *, dim=None):
        return F.scatter_add(self, axis, index, src, dim=dim)

    def index_select(self, axis=None, index=None, *, dim=None):
        return F.index_select(self, axis, index, dim=dim)

    def masked_select(self, mask):
        return F.masked_select(self, mask)

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

    # issue 19: shape and movement, linear algebra (NumPy's names; PyTorch's dim=/dims= too)
    def flatten(self, start_axis=0, end_axis=-1, *, start_dim=None, end_dim=None):
        return F.flatten(self, start_axis, end_axis, start_dim=start_dim, end_dim=end_dim)

    def unflatten(self, axis=None, sizes=None, *, dim=None):
        return F.unflatten(self, axis, sizes, dim=dim)

    def squeeze(self, axis=None, *, dim=None):
        """Size-1 axes removed; ``axis=`` names must have size 1 (NumPy), ``dim=`` skips the
        ones that do not (PyTorch)."""
        return F.squeeze(self, axis, dim=dim)

    def unsqueeze(self, axis=None, *, dim=None):
        return F.unsqueeze(self, axis, dim=dim)

    def expand(self, *sizes, size=None):
        """``expand(2, -1)``, ``expand((2, -1))`` or PyTorch's ``expand(size=(2, -1))``."""
        if size is not None:
            if sizes:
                raise TypeError("expand: got sizes both positionally and as size=; pass one")
            sizes = (size,)
        return F.expand(self, *sizes)

    def expand_as(self, other):
        return F.broadcast_to(self, other.shape)

    def broadcast_to(self, shape):
        return F.broadcast_to(self, shape)

    def repeat(self, *sizes, repeats=None):
        """PyTorch's repeat: np.tile semantics (``repeat_interleave`` is np.repeat); the counts
        positionally or as PyTorch's ``repeats=``."""
        if repeats is not None:
            if sizes:
                raise TypeError("repeat: got counts both positionally and as repeats=; pass one")
            sizes = (repeats,)
        return F.repeat(self, *sizes)

    def tile(self, reps=None, *, dims=None):
        return F.tile(self, reps, dims=dims)

    def repeat_interleave(self, repeats, axis=None, *, dim=None):
        return F.repeat_interleave(self, repeats, axis, dim=dim)

    def flip(self, *axes, dims=None):
        """``flip(0, 1)``, ``flip((0, 1))`` or ``flip(dims=...)``; no axes flips them all."""
        axes = axes[0] if len(axes) == 1 else (axes or None)
        return F.flip(self, axes, dims=dims)

    def roll(self, shifts, axis=None, *, dims=None):
        return F.roll(self, shifts, axis, dims=dims)

    def chunk(self, chunks, axis=0, *, dim=None):
        return F.chunk(self, chunks, axis, dim=dim)

    def triu(self, k=0, *, diagonal=None):
        return F.triu(self, k, diagonal=diagonal)

    def tril(self, k=0, *, diagonal=None):
        return F.tril(self, k, diagonal=diagonal)

    def diagonal(self, offset=0, axis1=0, axis2=1, *, dim1=None, dim2=None):
        return F.diagonal(self, offset, axis1, axis2, dim1=dim1, dim2=dim2)

    def outer(self, other):
        return F.outer(self, other)

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

"""Reductions over axes: sum, mean, max, min, prod, var, std, logsumexp; argmax, argmin, all, any.

Each takes NumPy's ``axis`` (None = all, int, or tuple; negatives count from the end) and
``keepdims``; PyTorch's spellings ``dim=`` and ``keepdim=`` are accepted too. A 0-d tensor has
one implicit axis: ``axis`` 0 or -1 reduces nothing, as in PyTorch. In backward, the gradient of
the reduced output is broadcast back over the reduced axes (``expand_reduced``): every input
element that fed an output element gets its share.

Reducing over a non-empty axis of an empty tensor is fine (``max`` of a (0, 3) tensor over axis 1
has shape (0,)); reducing over an axis of length 0 works where the reduction has an identity
(sum 0, prod 1, logsumexp -inf) and raises where it has none (max, min, argmax, argmin), as NumPy.

Shapes, for every reduction: x (...); out and dout x's shape without the reduced axes (kept as
size 1 with keepdims); dx like x.
"""
from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.autograd.tensor import Tensor
from tinyllm.ops._util import as_float, as_tensor, expand_reduced, normalize_axes


class Sum(Function):
    """out = sum of x over ``axis``.   dx = dout broadcast back (d sum/dx_i = 1)."""

    def forward(self, x, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = x.shape, axis, keepdims
        return x.sum(axis=axis, keepdims=keepdims)

    def backward(self, dout):
        return expand_reduced(dout, self.shape, self.axes, self.keepdims)


class Mean(Function):
    """out = sum(x) / n over ``axis`` (n = number of elements reduced).   dx = dout / n."""

    def forward(self, x, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = x.shape, axis, keepdims
        self.n = _count(x.shape, axis)
        return x.mean(axis=axis, keepdims=keepdims)

    def backward(self, dout):
        return expand_reduced(dout / self.n, self.shape, self.axes, self.keepdims)


class Max(Function):
    """out = max of x over ``axis``.

    dx_i = dout * [x_i == max] / (number of elements equal to the max): the gradient goes to the
    argmax; when several elements tie, it is split evenly among them (the average of the
    one-sided derivatives, as ``torch.amax`` does).
    """

    def forward(self, x, axis=None, keepdims=False):
        self.shape, self.axes, self.keepdims = x.shape, axis, keepdims
        m = self.extreme(x, axis)                    # x.max over axis (Min: x.min), kept dims
        self.mask = x == m
        self.count = self.mask.sum(axis=axis, keepdims=True)
        return m if keepdims else m.reshape([n for i, n in enumerate(x.shape) if i not in axis])

    def backward(self, dout):
        d = expand_reduced(dout, self.shape, self.axes, self.keepdims)
        return d * self.mask / self.count

    @staticmethod
    def extreme(x, axis):
        return x.max(axis=axis, keepdims=True)


class Min(Max):
    """out = min of x over ``axis``.

    dx_i = dout * [x_i == min] / (number of elements equal to the min): Max's forward and
    backward with min for max; ties share the gradient evenly (as ``torch.amin`` and
    ``torch.min`` without ``dim`` do).
    """

    @staticmethod
    def extreme(x, axis):
        return x.min(axis=axis, keepdims=True)


class Prod(Function):
    """out = prod_j x_j over ``axis``.

    dx_i = dout * prod_{j != i} x_j (product rule). Without zeros that is out / x_i; the
    division fails at zeros, so the product of the *nonzero* elements P is kept, with the
    number of zeros Z in each reduced group:
        Z == 0:  dx_i = dout * P / x_i
        Z == 1:  dx_i = dout * P at the zero, 0 elsewhere (their products contain the zero)
        Z >= 2:  dx_i = 0 everywhere (every product without x_i still has a zero)
    Shapes: x (...); out with the reduced axes removed (or kept as size 1).
    """

    def forward(self, x, axis=None, keepdims=False):
        xp = backend.get_array_module(x)
        self.x, self.axes, self.keepdims = x, axis, keepdims
        zero = x == 0
        self.zeros = zero.sum(axis=axis, keepdims=True)                # Z per group
        self.nonzero_prod = xp.where(zero, 1, x).prod(axis=axis, keepdims=True)    # P
        return x.prod(axis=axis, keepdims=keepdims)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        x, Z, P = self.x, self.zeros, self.nonzero_prod
        d = expand_reduced(dout, x.shape, self.axes, self.keepdims)
        others = xp.where(x == 0, xp.where(Z == 1, P, 0),               # prod_{j != i} x_j
                          xp.where(Z == 0, P / xp.where(x == 0, 1, x), 0))
        return d * others


class Var(Function):
    """Variance over ``axis``: out = sum((x - mean)^2) / (n - ddof).

    dx = dout * 2 (x - mean) / (n - ddof). (The mean also depends on x, but that term is
    d/dx_i of -2/(n-ddof) * sum_j (x_j - mean) * mean, and sum_j (x_j - mean) = 0.)
    ddof=0 is NumPy's default (population variance); ``torch.var`` defaults to ddof=1.
    """

    def forward(self, x, axis=None, keepdims=False, ddof=0):
        self.shape, self.axes, self.keepdims = x.shape, axis, keepdims
        n = _count(x.shape, axis)
        self.xc = x - x.mean(axis=axis, keepdims=True)
        self.scale = 1.0 / (n - ddof)
        return (self.xc * self.xc).sum(axis=axis, keepdims=keepdims) * self.scale

    def backward(self, dout):
        d = expand_reduced(dout, self.shape, self.axes, self.keepdims)
        return d * (2 * self.scale) * self.xc


class Std(Function):
    """Standard deviation over ``axis``: out = sqrt(var), var = sum((x - mean)^2) / (n - ddof).

    dx = dout * d sqrt(var)/d var * d var/dx = dout / (2 out) * 2 (x - mean) / (n - ddof)
       = dout * (x - mean) / ((n - ddof) out).
    Where out == 0 (all elements equal) the derivative is infinite on one side; dx is taken as 0
    there, as PyTorch does.
    """

    def forward(self, x, axis=None, keepdims=False, ddof=0):
        xp = backend.get_array_module(x)
        self.shape, self.axes, self.keepdims = x.shape, axis, keepdims
        n = _count(x.shape, axis)
        self.xc = x - x.mean(axis=axis, keepdims=True)
        self.scale = 1.0 / (n - ddof)
        self.out = xp.sqrt((self.xc * self.xc).sum(axis=axis, keepdims=True) * self.scale)
        return self.out if keepdims else self.out.reshape(
            [n for i, n in enumerate(x.shape) if i not in axis])

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        d = expand_reduced(dout, self.shape, self.axes, self.keepdims)
        inv = xp.where(self.out == 0, 0, 1 / xp.where(self.out == 0, 1, self.out))
        return d * self.scale * self.xc * inv


class LogSumExp(Function):
    """out = log sum_j e^(x_j) over ``axis``, computed as m + log sum_j e^(x_j - m), m = max x_j
    (every exponent <= 0: no overflow; the largest term is 1: no log 0 underflow).

    dx_i = dout * e^(x_i) / sum_j e^(x_j) = dout * e^(x_i - out) = dout * softmax(x)_i.
    A group of only -inf gives out = -inf and dx = 0 (tinyllm's softmax of such a row is 0;
    PyTorch's dx is NaN there).
    """

    def forward(self, x, axis=None, keepdims=False):
        xp = backend.get_array_module(x)
        self.x, self.axes, self.keepdims = x, axis, keepdims
        m = x.max(axis=axis, keepdims=True) if x.size else xp.zeros(
            [1 if i in axis else n for i, n in enumerate(x.shape)], x.dtype)
        # an all -inf group: e^(-inf - 0) = 0; a +inf: e^inf = inf, not e^(inf - inf) = NaN
        m = xp.where(xp.isinf(m), 0, m)
        s = xp.exp(x - m).sum(axis=axis, keepdims=True)                # >= 1 unless all -inf
        self.out = xp.where(s == 0, -xp.inf, m + xp.log(xp.where(s == 0, 1, s)))
        return self.out if keepdims else self.out.reshape(
            [n for i, n in enumerate(x.shape) if i not in axis])

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        d = expand_reduced(dout, self.x.shape, self.axes, self.keepdims)
        out = xp.where(xp.isneginf(self.out), 0, self.out)
        return d * xp.exp(self.x - out)               # softmax; 0 on an all -inf group


def _count(shape, axes):
    n = 1
    for a in axes:
        n *= shape[a]
    return n


# ----------------------------------------------------------------------------------------------
# argument handling shared by the public functions

def _spellings(op, axis, keepdims, dim, keepdim):
    """NumPy's ``axis``/``keepdims`` or PyTorch's ``dim``/``keepdim`` (not both)."""
    if dim is not None:
        if axis is not None:
            raise TypeError(f"{op}: got both axis={axis!r} and dim={dim!r}; pass one of them")
        axis = dim
    if keepdim is not None:
        keepdims = bool(keepdims) or bool(keepdim)
    return axis, keepdims


def _axes(x, axis, op):
    """``axis`` as a sorted tuple of non-negative ints. A 0-d tensor reduces over nothing; it
    accepts axis 0 and -1 (its one implicit axis), as PyTorch does."""
    if x.ndim == 0:
        for a in (axis if isinstance(axis, (tuple, list)) else (axis,)):
            if a is not None and (isinstance(a, bool) or a not in (0, -1)):
                raise ValueError(f"{op}: axis {a!r} is out of range for a 0-d tensor (accepted: "
                                 f"None, 0, -1)")
        return ()
    return normalize_axes(axis, x.ndim, op)


def _check_not_empty(x, axes, op):
    """A reduction without identity (max, min, argmax, argmin) needs non-empty reduced axes."""
    for a in axes:
        if x.shape[a] == 0:
            raise ValueError(f"{op}: cannot reduce over axis {a} of length 0 (input shape "
                             f"{x.shape}): {op} of zero elements has no identity")


def _reduce(cls, name, x, axis, keepdims, dim=None, keepdim=None, **kwargs):
    axis, keepdims = _spellings(name, axis, keepdims, dim, keepdim)
    x = as_tensor(x)
    return cls.apply(x, axis=_axes(x, axis, name), keepdims=keepdims, **kwargs)


def _cast(x, dtype):
    from tinyllm.ops.elementwise import astype
    return as_tensor(x) if dtype is None else astype(x, dtype)


def _ddof(op, ddof, correction, unbiased):
    """NumPy's ``ddof``, PyTorch's ``correction`` (same meaning) or ``unbiased`` (True: 1)."""
    given = [(k, v) for k, v in (("ddof", ddof), ("correction", correction),
                                 ("unbiased", unbiased)) if v is not None]
    if len(given) > 1:
        raise TypeError(f"{op}: got {', '.join(k for k, _ in given)}; pass only one of them")
    if unbiased is not None:
        return 1 if unbiased else 0
    value = ddof if ddof is not None else correction if correction is not None else 0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{op}: ddof must be a number, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------
# the public functions

def sum(x, axis=None, keepdims=False, *, dtype=None, dim=None, keepdim=None):
    """Sum over ``axis`` (None: all elements); ``dtype`` casts x first (as ``torch.sum``)."""
    return _reduce(Sum, "sum", _cast(x, dtype), axis, keepdims, dim, keepdim)


def mean(x, axis=None, keepdims=False, *, dtype=None, dim=None, keepdim=None):
    """Mean over ``axis`` (None: all elements). Integer input gives the default float dtype;
    ``dtype`` casts x first."""
    return _reduce(Mean, "mean", as_float(_cast(x, dtype)), axis, keepdims, dim, keepdim)


def max(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Maximum over ``axis``; ties share the gradient evenly. Returns the values only (NumPy's
    ``max``, PyTorch's ``amax``); ``argmax`` gives the indices."""
    return _extremum(Max, "max", x, axis, keepdims, dim, keepdim)


def min(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Minimum over ``axis``; ties share the gradient evenly (values only, as ``torch.amin``)."""
    return _extremum(Min, "min", x, axis, keepdims, dim, keepdim)


def _extremum(cls, name, x, axis, keepdims, dim, keepdim):
    axis, keepdims = _spellings(name, axis, keepdims, dim, keepdim)
    x = as_tensor(x)
    axes = _axes(x, axis, name)
    _check_not_empty(x, axes, name)
    return cls.apply(x, axis=axes, keepdims=keepdims)


def prod(x, axis=None, keepdims=False, *, dtype=None, dim=None, keepdim=None):
    """Product over ``axis``; the gradient is exact with zeros in the input."""
    return _reduce(Prod, "prod", _cast(x, dtype), axis, keepdims, dim, keepdim)


def var(x, axis=None, keepdims=False, ddof=None, *, correction=None, unbiased=None, dim=None,
        keepdim=None):
    """Variance over ``axis`` with ``ddof`` delta degrees of freedom (NumPy's default 0);
    ``correction=`` (PyTorch's name for ddof) and ``unbiased=True`` (ddof 1) are accepted."""
    return _spread(Var, "var", x, axis, keepdims, _ddof("var", ddof, correction, unbiased), dim,
                   keepdim)


def std(x, axis=None, keepdims=False, ddof=None, *, correction=None, unbiased=None, dim=None,
        keepdim=None):
    """Standard deviation over ``axis``, sqrt of ``var`` with the same ddof spellings."""
    return _spread(Std, "std", x, axis, keepdims, _ddof("std", ddof, correction, unbiased), dim,
                   keepdim)


def _spread(cls, name, x, axis, keepdims, ddof, dim, keepdim):
    axis, keepdims = _spellings(name, axis, keepdims, dim, keepdim)
    x = as_float(x)
    n = _count(x.shape, _axes(x, axis, name))
    if n - ddof <= 0:
        raise ValueError(f"{name}: {n} elements per reduction with ddof={ddof} leaves no degrees "
                         f"of freedom (input shape {x.shape}, axis {axis})")
    return _reduce(cls, name, x, axis, keepdims, ddof=ddof)


def logsumexp(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """log(sum(exp(x))) over ``axis``, without overflow; its gradient is softmax(x)."""
    return _reduce(LogSumExp, "logsumexp", as_float(x), axis, keepdims, dim, keepdim)


# ----------------------------------------------------------------------------------------------
# reductions without a gradient: their results are integers or booleans

def argmax(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Index of the maximum along ``axis`` (None: into the flattened tensor); int64, no grad.
    Ties give the first index, as NumPy and PyTorch."""
    return _arg("argmax", x, axis, keepdims, dim, keepdim)


def argmin(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Index of the minimum along ``axis`` (None: into the flattened tensor); int64, no grad."""
    return _arg("argmin", x, axis, keepdims, dim, keepdim)


def _arg(name, x, axis, keepdims, dim, keepdim):
    axis, keepdims = _spellings(name, axis, keepdims, dim, keepdim)
    x = as_tensor(x)
    if isinstance(axis, (tuple, list)):
        raise TypeError(f"{name}: axis must be None or one int, got {axis!r}")
    axes = _axes(x, axis, name)
    _check_not_empty(x, axes, name)
    xp = backend.get_array_module(x.data)
    data = x.data.reshape(1) if x.ndim == 0 else x.data
    out = getattr(xp, name)(data, axis=None if axis is None else axes[0] if axes else 0,
                            keepdims=keepdims)
    if x.ndim == 0:
        out = out.reshape(())
    return Tensor._from_op(out.astype("int64"))


def all(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """True where every element along ``axis`` is nonzero; boolean, no grad."""
    return _logical("all", x, axis, keepdims, dim, keepdim)


def any(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """True where some element along ``axis`` is nonzero; boolean, no grad."""
    return _logical("any", x, axis, keepdims, dim, keepdim)


def _logical(name, x, axis, keepdims, dim, keepdim):
    axis, keepdims = _spellings(name, axis, keepdims, dim, keepdim)
    x = as_tensor(x)
    out = getattr(x.data, name)(axis=_axes(x, axis, name), keepdims=keepdims)
    return Tensor._from_op(backend.get_array_module(x.data).asarray(out))

"""Reductions over axes: sum, mean, max, var.

Each takes NumPy's ``axis`` (None = all, int, or tuple; negatives count from the end) and
``keepdims``. In backward, the gradient of the reduced output is broadcast back over the reduced
axes (``expand_reduced``): every input element that fed an output element gets its share.
"""
from tinyllm.autograd.function import Function
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
        m = x.max(axis=axis, keepdims=True)
        self.mask = x == m
        self.count = self.mask.sum(axis=axis, keepdims=True)
        return m if keepdims else m.reshape([n for i, n in enumerate(x.shape) if i not in axis])

    def backward(self, dout):
        d = expand_reduced(dout, self.shape, self.axes, self.keepdims)
        return d * self.mask / self.count


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


def _count(shape, axes):
    n = 1
    for a in axes:
        n *= shape[a]
    return n


def _reduce(cls, name, x, axis, keepdims, **kwargs):
    x = as_tensor(x)
    axes = normalize_axes(axis, x.ndim, name)
    if x.ndim == 0:
        axes = ()
    return cls.apply(x, axis=axes, keepdims=keepdims, **kwargs)


def sum(x, axis=None, keepdims=False):
    """Sum over ``axis`` (None: all elements)."""
    return _reduce(Sum, "sum", x, axis, keepdims)


def mean(x, axis=None, keepdims=False):
    """Mean over ``axis`` (None: all elements). Integer input gives the default float dtype."""
    return _reduce(Mean, "mean", as_float(x), axis, keepdims)


def max(x, axis=None, keepdims=False):
    """Maximum over ``axis``; ties share the gradient evenly."""
    x = as_tensor(x)
    if x.size == 0:
        raise ValueError(f"max: zero-size tensor of shape {x.shape} has no maximum")
    return _reduce(Max, "max", x, axis, keepdims)


def var(x, axis=None, keepdims=False, ddof=0):
    """Variance over ``axis`` with ``ddof`` delta degrees of freedom (NumPy's default 0)."""
    x = as_float(x)
    n = _count(x.shape, normalize_axes(axis, x.ndim, "var")) if x.ndim else 1
    if n - ddof <= 0:
        raise ValueError(f"var: {n} elements per reduction with ddof={ddof} leaves no degrees "
                         f"of freedom (input shape {x.shape}, axis {axis})")
    return _reduce(Var, "var", x, axis, keepdims, ddof=ddof)


"""Unary math: abs, sign, rsqrt, sin, cos, erf, exp2, log2, log1p, expm1, square, reciprocal;
rounding (floor, ceil, round, trunc); predicates (isnan, isinf, isfinite) and logical ops.

Each op is elementwise, out[i] = f(x[i]), so backward is dout * f'(x). Sign and the rounding
ops are piecewise constant: their gradient is 0 wherever it exists, and PyTorch returns 0
everywhere, so they are Functions whose backward returns zeros (a graph through them still
reaches the inputs, with zero gradient). Predicates and logical ops return boolean tensors that
never require grad, as comparisons do.

Shapes: any; out, dout, dx like x (logical ops broadcast x with y).
"""
import math

from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.autograd.tensor import Tensor
from tinyllm.ops._util import as_float, as_tensor

_LN2 = math.log(2.0)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


class Abs(Function):
    """out = |x|.   dx = dout * sign(x)   (0 at x == 0, as PyTorch)."""

    def forward(self, x):
        xp = backend.get_array_module(x)
        self.sign = xp.sign(x)
        return xp.abs(x)

    def backward(self, dout):
        return dout * self.sign


class Sign(Function):
    """out = sign(x) in {-1, 0, 1} (NaN stays NaN, as NumPy; PyTorch gives 0).

    dx = 0   (piecewise constant; PyTorch's gradient is 0 everywhere, 0 at x == 0 too).
    """

    def forward(self, x):
        return backend.get_array_module(x).sign(x)

    def backward(self, dout):
        return backend.get_array_module(dout).zeros_like(dout)


class Rsqrt(Function):
    """out = 1 / sqrt(x) = x^(-1/2).   dx = dout * (-1/2) x^(-3/2) = -dout * out^3 / 2."""

    def forward(self, x):
        self.out = 1 / backend.get_array_module(x).sqrt(x)
        return self.out

    def backward(self, dout):
        return -0.5 * dout * self.out ** 3


class Sin(Function):
    """out = sin x.   dx = dout * cos x."""

    def forward(self, x):
        self.x = x
        return backend.get_array_module(x).sin(x)

    def backward(self, dout):
        return dout * backend.get_array_module(dout).cos(self.x)


class Cos(Function):
    """out = cos x.   dx = -dout * sin x."""

    def forward(self, x):
        self.x = x
        return backend.get_array_module(x).cos(x)

    def backward(self, dout):
        return -dout * backend.get_array_module(dout).sin(self.x)


class Erf(Function):
    """out = erf x = 2/sqrt(pi) * integral_0^x e^(-t^2) dt.

    dx = dout * 2/sqrt(pi) * e^(-x^2)     (fundamental theorem of calculus).
    """

    def forward(self, x):
        self.x = x
        return backend.erf(x)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        return dout * _TWO_OVER_SQRT_PI * xp.exp(-self.x * self.x)


class Exp2(Function):
    """out = 2^x = e^(x ln 2).   dx = dout * 2^x ln 2 = dout * out * ln 2."""

    def forward(self, x):
        self.out = backend.get_array_module(x).exp2(x)
        return self.out

    def backward(self, dout):
        return dout * self.out * _LN2


class Log2(Function):
    """out = log2 x = ln x / ln 2.   dx = dout / (x ln 2)."""

    def forward(self, x):
        self.x = x
        return backend.get_array_module(x).log2(x)

    def backward(self, dout):
        return dout / (self.x * _LN2)


class Log1p(Function):
    """out = ln(1 + x) (accurate for small x).   dx = dout / (1 + x)."""

    def forward(self, x):
        self.x = x
        return backend.get_array_module(x).log1p(x)

    def backward(self, dout):
        return dout / (1 + self.x)


class Expm1(Function):
    """out = e^x - 1 (accurate for small x).   dx = dout * e^x = dout * (out + 1)."""

    def forward(self, x):
        self.out = backend.get_array_module(x).expm1(x)
        return self.out

    def backward(self, dout):
        return dout * (self.out + 1)


class Square(Function):
    """out = x^2.   dx = dout * 2x."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, dout):
        return dout * 2 * self.x


class Reciprocal(Function):
    """out = 1 / x.   dx = -dout / x^2 = -dout * out^2."""

    def forward(self, x):
        self.out = 1 / x
        return self.out

    def backward(self, dout):
        return -dout * self.out * self.out


# ----------------------------------------------------------------------------------------------
# rounding: piecewise constant, zero gradient (as PyTorch)

class Floor(Function):
    """out = floor x (largest integer <= x).   dx = 0 (piecewise constant)."""

    def forward(self, x):
        return backend.get_array_module(x).floor(x)

    def backward(self, dout):
        return backend.get_array_module(dout).zeros_like(dout)


class Ceil(Function):
    """out = ceil x (smallest integer >= x).   dx = 0 (piecewise constant)."""

    def forward(self, x):
        return backend.get_array_module(x).ceil(x)

    def backward(self, dout):
        return backend.get_array_module(dout).zeros_like(dout)


class Round(Function):
    """out = x rounded to ``decimals`` places, halves to even (as NumPy and PyTorch).

    dx = 0 (piecewise constant).
    """

    def forward(self, x, decimals=0):
        return backend.get_array_module(x).round(x, decimals)

    def backward(self, dout):
        return backend.get_array_module(dout).zeros_like(dout)


class Trunc(Function):
    """out = x rounded toward zero.   dx = 0 (piecewise constant)."""

    def forward(self, x):
        return backend.get_array_module(x).trunc(x)

    def backward(self, dout):
        return backend.get_array_module(dout).zeros_like(dout)


# ----------------------------------------------------------------------------------------------
# functional forms

def abs(x):
    """|x| (integers stay integers)."""
    return Abs.apply(as_tensor(x))


def sign(x):
    """-1, 0 or 1 by the sign of x; zero gradient. Booleans are their own sign (as PyTorch;
    NumPy has no boolean sign)."""
    x = as_tensor(x)
    return x if x.dtype.kind == "b" else Sign.apply(x)


def rsqrt(x):
    return Rsqrt.apply(as_float(x))


def sin(x):
    return Sin.apply(as_float(x))


def cos(x):
    return Cos.apply(as_float(x))


def erf(x):
    return Erf.apply(as_float(x))


def exp2(x):
    return Exp2.apply(as_float(x))


def log2(x):
    return Log2.apply(as_float(x))


def log1p(x):
    return Log1p.apply(as_float(x))


def expm1(x):
    return Expm1.apply(as_float(x))


def square(x):
    """x * x (integers stay integers)."""
    return Square.apply(as_tensor(x))


def reciprocal(x):
    """1 / x (integers give the default float dtype)."""
    return Reciprocal.apply(as_float(x))


def _rounded(cls, x, op, **kwargs):
    x = as_tensor(x)
    if x.dtype.kind != "f":                         # integers are already whole: as PyTorch
        if x.dtype.kind not in "iub":
            raise TypeError(f"{op}: expected a real tensor, got dtype {x.dtype}")
        return x
    return cls.apply(x, **kwargs)


def floor(x):
    """Largest integer <= x, elementwise; zero gradient."""
    return _rounded(Floor, x, "floor")


def ceil(x):
    """Smallest integer >= x, elementwise; zero gradient."""
    return _rounded(Ceil, x, "ceil")


def round(x, decimals=0):
    """x rounded to ``decimals`` places, halves to even; zero gradient."""
    if isinstance(decimals, bool) or not isinstance(decimals, int):
        raise TypeError(f"round: decimals must be an int, got {decimals!r}")
    return _rounded(Round, x, "round", decimals=decimals)


def trunc(x):
    """x rounded toward zero; zero gradient."""
    return _rounded(Trunc, x, "trunc")


# ----------------------------------------------------------------------------------------------
# predicates and logical ops: boolean tensors, no gradient (as comparisons)

def _predicate(x, name):
    x = as_tensor(x)
    return Tensor._from_op(getattr(backend.get_array_module(x.data), name)(x.data))


def isnan(x):
    """True where x is NaN (a boolean tensor, no gradient)."""
    return _predicate(x, "isnan")


def isinf(x):
    """True where x is +inf or -inf (a boolean tensor, no gradient)."""
    return _predicate(x, "isinf")


def isfinite(x):
    """True where x is neither NaN nor infinite (a boolean tensor, no gradient)."""
    return _predicate(x, "isfinite")


def logical_not(x):
    """not x, elementwise (nonzero is true); a boolean tensor, no gradient."""
    return _predicate(x, "logical_not")


def _logical(x, y, name):
    if not isinstance(x, Tensor):
        x = as_tensor(x, y if isinstance(y, Tensor) else None)
    y = as_tensor(y, x)
    xp = backend.get_array_module(x.data)
    try:
        return Tensor._from_op(getattr(xp, name)(x.data, y.data))
    except ValueError as e:
        raise ValueError(f"{name}: cannot broadcast shapes {tuple(x.shape)} and "
                         f"{tuple(y.shape)}") from e


def logical_and(x, y):
    """x and y, elementwise with broadcasting (nonzero is true); no gradient."""
    return _logical(x, y, "logical_and")


def logical_or(x, y):
    """x or y, elementwise with broadcasting (nonzero is true); no gradient."""
    return _logical(x, y, "logical_or")


def logical_xor(x, y):
    """x xor y, elementwise with broadcasting (nonzero is true); no gradient."""
    return _logical(x, y, "logical_xor")

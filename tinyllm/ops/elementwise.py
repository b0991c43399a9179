"""Elementwise ops: arithmetic, exp/log, activations, where, casts.

Binary ops broadcast exactly as NumPy. Their backward first computes the gradient for the
broadcast shape, then ``unbroadcast`` sums it back to each input's own shape: an input element
that was copied k times receives the sum of the k gradients (chain rule over every use).

Shapes: any; x and y broadcastable; dout has the output's shape.
"""
import math

import numpy as np

from tinyllm import backend
from tinyllm.autograd.function import Function, unbroadcast
from tinyllm.autograd.tensor import Tensor
from tinyllm.dispatch import accelerator
from tinyllm.kernels import gelu as gelu_kernels
from tinyllm.ops._util import as_float, as_tensor, operands


# ----------------------------------------------------------------------------------------------
# arithmetic

class Add(Function):
    """out = x + y.   dx = dout,  dy = dout   (d(x+y)/dx = 1), each summed to its shape."""

    def forward(self, x, y):
        self.x_shape, self.y_shape = x.shape, y.shape
        return x + y

    def backward(self, dout):
        dx = unbroadcast(dout, self.x_shape) if self.needs_input_grad[0] else None
        dy = unbroadcast(dout, self.y_shape) if self.needs_input_grad[1] else None
        return dx, dy


class Sub(Function):
    """out = x - y.   dx = dout,  dy = -dout."""

    def forward(self, x, y):
        self.x_shape, self.y_shape = x.shape, y.shape
        return x - y

    def backward(self, dout):
        dx = unbroadcast(dout, self.x_shape) if self.needs_input_grad[0] else None
        dy = unbroadcast(-dout, self.y_shape) if self.needs_input_grad[1] else None
        return dx, dy


class Mul(Function):
    """out = x * y.   dx = dout * y,  dy = dout * x   (product rule)."""

    def forward(self, x, y):
        self.x, self.y = x, y
        return x * y

    def backward(self, dout):
        dx = unbroadcast(dout * self.y, self.x.shape) if self.needs_input_grad[0] else None
        dy = unbroadcast(dout * self.x, self.y.shape) if self.needs_input_grad[1] else None
        return dx, dy


class Div(Function):
    """out = x / y.   dx = dout / y,  dy = -dout * x / y^2   (quotient rule)."""

    def forward(self, x, y):
        self.x, self.y = x, y
        return x / y

    def backward(self, dout):
        dx = unbroadcast(dout / self.y, self.x.shape) if self.needs_input_grad[0] else None
        dy = (unbroadcast(-dout * self.x / (self.y * self.y), self.y.shape)
              if self.needs_input_grad[1] else None)
        return dx, dy


class Pow(Function):
    """out = x ** y.

    dx = dout * y * x^(y-1)      (power rule); 0 where y == 0, for every x (x^0 = 1 is flat in
                                  x, also at x = 0 and x = +-inf), as PyTorch
    dy = dout * x^y * ln(x)      (d a^y/dy = a^y ln a); at x == 0 (PyTorch's values):
                                  0 for y >= 0 (0^y is 0 or 1 there, flat in y), and
                                  -inf for y < 0 (0^y = inf, times ln 0 = -inf)
    Shapes: x, y broadcastable; dx, dy summed back to each one's shape.
    """

    def forward(self, x, y):
        self.x, self.y = x, y
        self.out = x ** y
        return self.out

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        x, y = self.x, self.y
        dx = dy = None
        if self.needs_input_grad[0]:
            # base 1 where y == 0: y * 1^-1 = 0 exactly (0 * 0^-1 and 0 * inf^1 are NaN)
            base = xp.where(y == 0, 1, x)
            dx = unbroadcast(dout * (y * base ** (y - 1)), x.shape)
        if self.needs_input_grad[1]:
            at_zero = x == 0
            log_x = xp.log(xp.where(at_zero, 1, x))                  # 0 at x == 0, set below
            slope = xp.where(at_zero, 0, self.out) * log_x            # x == 0, y >= 0: 0
            slope = xp.where(at_zero & (y < 0), -xp.inf, slope)       # x == 0, y < 0: -inf
            dy = unbroadcast(dout * slope, y.shape)
        return dx, dy


class Neg(Function):
    """out = -x.   dx = -dout."""

    def forward(self, x):
        return -x

    def backward(self, dout):
        return -dout


# ----------------------------------------------------------------------------------------------
# unary math

class Exp(Function):
    """out = e^x.   dx = dout * e^x = dout * out."""

    def forward(self, x):
        self.out = backend.get_array_module(x).exp(x)
        return self.out

    def backward(self, dout):
        return dout * self.out


class Log(Function):
    """out = ln x.   dx = dout / x."""

    def forward(self, x):
        self.x = x
        return backend.get_array_module(x).log(x)

    def backward(self, dout):
        return dout / self.x


class Sqrt(Function):
    """out = sqrt(x).   dx = dout / (2 sqrt(x)) = dout / (2 out)."""

    def forward(self, x):
        self.out = backend.get_array_module(x).sqrt(x)
        return self.out

    def backward(self, dout):
        return dout / (2 * self.out)


class Tanh(Function):
    """out = tanh x.   dx = dout * (1 - tanh^2 x) = dout * (1 - out^2)."""

    def forward(self, x):
        self.out = backend.get_array_module(x).tanh(x)
        return self.out

    def backward(self, dout):
        return dout * (1 - self.out * self.out)


class Sigmoid(Function):
    """out = s(x) = 1 / (1 + e^-x).   dx = dout * s(x) (1 - s(x)).

    Forward is computed from e^-|x| so that no exp overflows: for x >= 0, s = 1/(1+e^-x); for
    x < 0, s = e^x/(1+e^x), the same value with the large exponent avoided.
    """

    def forward(self, x):
        xp = backend.get_array_module(x)
        e = xp.exp(-xp.abs(x))
        self.out = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return self.out

    def backward(self, dout):
        return dout * self.out * (1 - self.out)


class ReLU(Function):
    """out = max(x, 0).   dx = dout * [x > 0]   (the subgradient 0 is used at x == 0)."""

    def forward(self, x):
        self.mask = x > 0
        return backend.get_array_module(x).where(self.mask, x, 0)    # x * mask: -inf * 0 = NaN

    def backward(self, dout):
        return dout * self.mask


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu_kernel_fits(*arrays):
    """The Numba or CuPy kernel takes this call: the switch is on, the arrays float32 or
    float64 of one dtype (and non-empty)."""
    return (accelerator("gelu", *arrays, cupy=True) is not None
            and arrays[0].dtype.char in "fd" and all(a.dtype == arrays[0].dtype for a in arrays))


class GELU(Function):
    """Gaussian error linear unit, out = x * Phi(x), Phi the standard normal CDF.

    approximate="none" (exact, BERT):
        Phi(x) = (1 + erf(x / sqrt 2)) / 2,   phi(x) = e^(-x^2/2) / sqrt(2 pi)
        dx = dout * (Phi(x) + x phi(x))                         (product rule, Phi' = phi)
    approximate="tanh" (GPT-2):
        u = sqrt(2/pi) (x + 0.044715 x^3),   out = x (1 + tanh u) / 2
        du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
        dx = dout * ((1 + tanh u) / 2 + x (1 - tanh^2 u) / 2 * du/dx)
    Backward recomputes tanh u / erf from the saved x.

    Shapes: any; out, dout, dx like x.
    Fast path: a Numba kernel, or a CUDA kernel on CuPy arrays (tinyllm/kernels/gelu.py), one
    pass per element, under the switch.
    """

    def forward(self, x, approximate="none"):
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.x, self.approximate = x, approximate
        if _gelu_kernel_fits(x):
            return gelu_kernels.gelu_forward(x, approximate)
        xp = backend.get_array_module(x)
        if approximate == "tanh":
            return 0.5 * x * (1 + xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
        return x * (0.5 * (1 + backend.erf(x * _INV_SQRT_2)))

    def backward(self, dout):
        x = self.x
        if _gelu_kernel_fits(x, dout):
            return gelu_kernels.gelu_backward(x, dout, self.approximate)
        xp = backend.get_array_module(x)
        if self.approximate == "tanh":
            t = xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))          # tanh u
            du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)                    # du/dx
            return dout * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)
        cdf = 0.5 * (1 + backend.erf(x * _INV_SQRT_2))                           # Phi(x)
        pdf = _INV_SQRT_2PI * xp.exp(-0.5 * x * x)                               # phi(x)
        return dout * (cdf + x * pdf)


# ----------------------------------------------------------------------------------------------
# selection

class Where(Function):
    """out = x where cond else y   (cond: boolean array, broadcast with x and y).

    dx = dout where cond else 0;  dy = dout where not cond else 0; each summed to its shape.
    """

    def forward(self, x, y, cond=None):
        self.cond, self.x_shape, self.y_shape = cond, x.shape, y.shape
        return backend.get_array_module(x).where(cond, x, y)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        zero = xp.zeros((), dtype=dout.dtype)
        dx = dy = None
        if self.needs_input_grad[0]:
            dx = unbroadcast(xp.where(self.cond, dout, zero), self.x_shape)
        if self.needs_input_grad[1]:
            dy = unbroadcast(xp.where(self.cond, zero, dout), self.y_shape)
        return dx, dy


# ----------------------------------------------------------------------------------------------
# dtype and device moves

class Cast(Function):
    """out = x converted to ``dtype``.   dx = dout converted back to x's dtype."""

    def forward(self, x, dtype=None):
        self.in_dtype = x.dtype
        return x.astype(dtype)

    def backward(self, dout):
        return dout.astype(self.in_dtype)


class ToDevice(Function):
    """out = x copied to ``device``.   dx = dout copied back to x's device."""

    def forward(self, x, device=None):
        self.in_device = backend.device_of(x)
        return backend.to_device(x, device)

    def backward(self, dout):
        return backend.to_device(dout, self.in_device)


# ----------------------------------------------------------------------------------------------
# functional forms

def add(x, y):
    """x + y with NumPy broadcasting."""
    return Add.apply(*operands(x, y))


def sub(x, y):
    """x - y with NumPy broadcasting."""
    return Sub.apply(*operands(x, y))


def mul(x, y):
    """x * y with NumPy broadcasting."""
    return Mul.apply(*operands(x, y))


def div(x, y):
    """x / y with NumPy broadcasting (true division: integers give the default float dtype)."""
    x, y = operands(x, y)
    if x.dtype.kind != "f":                       # both integer (operands matched the kinds)
        x, y = as_float(x), as_float(y)
    return Div.apply(x, y)


def pow(x, y):
    """x ** y with NumPy broadcasting; x or y may be a Python number."""
    return Pow.apply(*operands(x, y))


def neg(x):
    return Neg.apply(as_tensor(x))


def exp(x):
    return Exp.apply(as_float(x))


def log(x):
    return Log.apply(as_float(x))


def sqrt(x):
    return Sqrt.apply(as_float(x))


def tanh(x):
    return Tanh.apply(as_float(x))


def sigmoid(x):
    return Sigmoid.apply(as_float(x))


def relu(x):
    return ReLU.apply(as_tensor(x))


def gelu(x, approximate="none"):
    """GELU; ``approximate="tanh"`` for GPT-2's tanh form, "none" for the exact erf form."""
    return GELU.apply(as_float(x), approximate=approximate)


def where(cond, x, y):
    """Elements of x where ``cond`` is true, else of y (cond: bool Tensor or array)."""
    x, y = operands(x, y)
    c = cond.data if isinstance(cond, Tensor) else cond
    c = backend.to_device(np.asarray(c) if backend.get_array_module(c) is np else c, x.device)
    if c.dtype != np.bool_:
        raise TypeError(f"where: cond must be a boolean mask, got dtype {c.dtype}")
    return Where.apply(x, y, cond=c)


def masked_fill(x, mask, value):
    """x with ``value`` written where ``mask`` is true (mask broadcasts to x's shape)."""
    x = as_tensor(x)
    return where(mask, as_tensor(value, x), x)


def astype(x, dtype):
    """x converted to ``dtype`` (differentiable between float dtypes)."""
    x = as_tensor(x)
    dtype = np.dtype(dtype)
    if dtype == x.dtype:
        return x
    return Cast.apply(x, dtype=dtype)


def to_device(x, device):
    """x on ``device`` ('cpu' or 'cuda'); gradients flow back to the original device."""
    x = as_tensor(x)
    if x.device == device:
        return x
    return ToDevice.apply(x, device=device)


_COMPARE = {"lt": "less", "le": "less_equal", "gt": "greater", "ge": "greater_equal",
            "eq": "equal", "ne": "not_equal"}


def compare(x, y, op):
    """Elementwise comparison ('lt', 'le', 'gt', 'ge', 'eq', 'ne'): a boolean Tensor, no grad."""
    x, y = operands(x, y)
    xp = backend.get_array_module(x.data)
    return Tensor._from_op(getattr(xp, _COMPARE[op])(x.data, y.data))

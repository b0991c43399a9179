"""Activation functions beyond ReLU/GELU: SiLU, softplus, leaky ReLU, ELU, Mish, log-sigmoid,
hardtanh (relu6), softsign.

Each is elementwise: out[i] = f(x[i]), so backward is dout * f'(x), with f' written from the
saved input (or output). Where PyTorch picks a value at a kink (leaky_relu, elu, hardtanh at their
corners), we pick the same one, and say so in the docstring.

Shapes: any; out, dout, dx like x.
"""
import numpy as np

from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.ops._util import as_float


def _sigmoid(xp, x):
    """1 / (1 + e^-x) from e^-|x|, so no exponent overflows (as Sigmoid.forward)."""
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _softplus(xp, x):
    """ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|): the large exponent never appears."""
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


class SiLU(Function):
    """SiLU (swish): out = x * s(x), s(x) = 1 / (1 + e^-x).

    dx = dout * (s(x) + x s(x) (1 - s(x))) = dout * s (1 + x (1 - s))
    (product rule, with s' = s (1 - s)).
    Shapes: any; out, dout, dx like x.

    >>> import tinyllm as tl
    >>> round(float(tl.functional.silu(tl.tensor(1.0))), 4)     # 1 / (1 + e^-1)
    0.7311
    """

    def forward(self, x):
        xp = backend.get_array_module(x)
        self.x, self.s = x, _sigmoid(xp, x)
        return x * self.s

    def backward(self, dout):
        x, s = self.x, self.s
        return dout * s * (1 + x * (1 - s))


class Softplus(Function):
    """out = (1/beta) ln(1 + e^(beta x)), and out = x where beta x > threshold (as PyTorch).

    dx = dout * s(beta x)          (d/dx (1/beta) ln(1 + e^(beta x)) = e^(beta x) / (1 + e^(beta x))
                                    = s(beta x), the sigmoid)
    dx = dout                      where beta x > threshold (the linear branch)
    Forward uses ln(1 + e^z) = max(z, 0) + ln(1 + e^-|z|), so no exponent overflows.
    Shapes: any; out, dout, dx like x.
    """

    def forward(self, x, beta=1.0, threshold=20.0):
        xp = backend.get_array_module(x)
        z = beta * x
        self.linear, self.s = z > threshold, _sigmoid(xp, z)
        return xp.where(self.linear, x, _softplus(xp, z) / beta)

    def backward(self, dout):
        return backend.get_array_module(dout).where(self.linear, dout, dout * self.s)


class LeakyReLU(Function):
    """out = x where x > 0, else negative_slope * x.

    dx = dout where x > 0, else dout * negative_slope   (at x == 0: negative_slope, as PyTorch).
    Shapes: any; out, dout, dx like x.
    """

    def forward(self, x, negative_slope=0.01):
        self.pos, self.slope = x > 0, negative_slope
        return backend.get_array_module(x).where(self.pos, x, negative_slope * x)

    def backward(self, dout):
        return backend.get_array_module(dout).where(self.pos, dout, dout * self.slope)


class ELU(Function):
    """out = x where x > 0, else alpha (e^x - 1).

    dx = dout where x > 0, else dout * alpha e^x   (d/dx alpha (e^x - 1) = alpha e^x; at
    x == 0 the left branch, alpha, as PyTorch).
    Forward takes expm1 of min(x, 0), so a large positive x never reaches the exponent.
    Shapes: any; out, dout, dx like x.
    """

    def forward(self, x, alpha=1.0):
        xp = backend.get_array_module(x)
        self.pos, self.alpha = x > 0, alpha
        self.e = xp.exp(xp.minimum(x, 0))                          # e^x on the negative side
        return xp.where(self.pos, x, alpha * xp.expm1(xp.minimum(x, 0)))

    def backward(self, dout):
        return backend.get_array_module(dout).where(self.pos, dout, dout * self.alpha * self.e)


class Mish(Function):
    """out = x tanh(softplus(x)), softplus(x) = ln(1 + e^x).

    With t = tanh(softplus(x)):  dt/dx = (1 - t^2) s(x)   (softplus' = s, the sigmoid)
    dx = dout * (t + x (1 - t^2) s(x))                     (product rule)
    Shapes: any; out, dout, dx like x.
    """

    def forward(self, x):
        xp = backend.get_array_module(x)
        self.x, self.t = x, xp.tanh(_softplus(xp, x))
        return x * self.t

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        x, t = self.x, self.t
        return dout * (t + x * (1 - t * t) * _sigmoid(xp, x))


class LogSigmoid(Function):
    """out = ln s(x) = -ln(1 + e^-x) = min(x, 0) - ln(1 + e^-|x|)   (stable for any x).

    dx = dout * (1 - s(x)) = dout * s(-x)       (d ln s = s' / s = 1 - s)
    Shapes: any; out, dout, dx like x.
    """

    def forward(self, x):
        xp = backend.get_array_module(x)
        self.s_neg = _sigmoid(xp, -x)                              # 1 - s(x), without 1 - 1
        return xp.minimum(x, 0) - xp.log1p(xp.exp(-xp.abs(x)))

    def backward(self, dout):
        return dout * self.s_neg


class Hardtanh(Function):
    """out = min(max(x, min_val), max_val)   (relu6 is hardtanh(x, 0, 6)).

    dx = dout where min_val < x < max_val, else 0   (0 at the bounds themselves, as PyTorch's
    hardtanh; clip passes the gradient there).
    Shapes: any; out, dout, dx like x.
    """

    def forward(self, x, min_val=-1.0, max_val=1.0):
        xp = backend.get_array_module(x)
        self.inside = (x > min_val) & (x < max_val)
        return xp.minimum(xp.maximum(x, min_val), max_val)

    def backward(self, dout):
        return dout * self.inside


class Softsign(Function):
    """out = x / (1 + |x|).

    dx = dout / (1 + |x|)^2     (quotient rule: ((1 + |x|) - x sign(x)) / (1 + |x|)^2)
    Shapes: any; out, dout, dx like x.
    """

    def forward(self, x):
        self.d = 1 + backend.get_array_module(x).abs(x)
        return x / self.d

    def backward(self, dout):
        return dout / (self.d * self.d)


# ----------------------------------------------------------------------------------------------
# functional forms

def silu(x):
    """SiLU / swish, x * sigmoid(x) (``torch.nn.functional.silu``)."""
    return SiLU.apply(as_float(x))


swish = silu


def _number(value, op, name):
    """A float argument of an activation, checked: a real Python/NumPy number."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{op}: {name} must be a real number, got {value!r} of type "
                        f"{type(value).__name__}")
    return float(value)


def softplus(x, beta=1.0, threshold=20.0):
    """(1/beta) ln(1 + e^(beta x)), linear where beta x > threshold (``F.softplus``)."""
    beta = _number(beta, "softplus", "beta")
    if beta == 0:
        raise ValueError("softplus: beta must be nonzero, got 0")
    return Softplus.apply(as_float(x), beta=beta,
                          threshold=_number(threshold, "softplus", "threshold"))


def leaky_relu(x, negative_slope=0.01):
    """x where x > 0, else negative_slope * x (``F.leaky_relu``)."""
    return LeakyReLU.apply(as_float(x),
                           negative_slope=_number(negative_slope, "leaky_relu", "negative_slope"))


def elu(x, alpha=1.0):
    """x where x > 0, else alpha (e^x - 1) (``F.elu``)."""
    return ELU.apply(as_float(x), alpha=_number(alpha, "elu", "alpha"))


def mish(x):
    """x tanh(softplus(x)) (``F.mish``)."""
    return Mish.apply(as_float(x))


def logsigmoid(x):
    """ln sigmoid(x), computed without overflow (``F.logsigmoid``)."""
    return LogSigmoid.apply(as_float(x))


def hardtanh(x, min_val=-1.0, max_val=1.0):
    """x clipped to [min_val, max_val], zero gradient outside and at the bounds."""
    min_val = _number(min_val, "hardtanh", "min_val")
    max_val = _number(max_val, "hardtanh", "max_val")
    if min_val > max_val:
        raise ValueError(f"hardtanh: min_val must not exceed max_val, got min_val={min_val}, "
                         f"max_val={max_val}")
    return Hardtanh.apply(as_float(x), min_val=min_val, max_val=max_val)


def relu6(x):
    """min(max(x, 0), 6) = hardtanh(x, 0, 6) (``F.relu6``)."""
    return hardtanh(x, 0.0, 6.0)


def softsign(x):
    """x / (1 + |x|) (``F.softsign``)."""
    return Softsign.apply(as_float(x))

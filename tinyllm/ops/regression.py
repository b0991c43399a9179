"""Regression losses and a similarity, as ``torch.nn.functional`` defines them: smooth L1,
Huber, and cosine similarity. (The probabilistic losses are in loss.py and losses.py.)

Every reduction is "mean", "sum" or "none"; backward turns dout into each element's share
``dloss`` first (dout / n for "mean").
"""
import numpy as np

from tinyllm import backend
from tinyllm.autograd.function import Function, unbroadcast
from tinyllm.ops._util import as_float, normalize_axes, operands
from tinyllm.ops.losses import _check_reduction, _dloss, _reduce, _same_shape


class SmoothL1Loss(Function):
    """Smooth L1 of d = x - y (beta > 0; beta = 0 is the L1 loss |d|):

        loss = 0.5 d^2 / beta  if |d| < beta,   |d| - 0.5 beta  otherwise
        dx = dloss clip(d / beta, -1, 1)   (sign(d) for beta = 0),   dy = -dx
    Shapes: x, y one shape; out () or x's shape for "none".
    """

    def forward(self, x, y, reduction="mean", beta=1.0):
        xp = backend.get_array_module(x)
        d = self.d = x - y
        self.beta, self.reduction = beta, reduction
        a = xp.abs(d)
        loss = a if beta == 0 else xp.where(a < beta, 0.5 * d * d / beta, a - 0.5 * beta)
        return _reduce(loss, reduction, d.size)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        slope = xp.sign(self.d) if self.beta == 0 else xp.clip(self.d / self.beta, -1, 1)
        dx = _dloss(dout, self.d.shape, self.reduction, self.d.size) * slope
        return dx, -dx


class HuberLoss(Function):
    """Huber loss of d = x - y (delta > 0), delta times smooth L1 with beta = delta:

        loss = 0.5 d^2  if |d| < delta,   delta (|d| - 0.5 delta)  otherwise
        dx = dloss clip(d, -delta, delta),   dy = -dx
    Shapes: x, y one shape; out () or x's shape for "none".
    """

    def forward(self, x, y, reduction="mean", delta=1.0):
        xp = backend.get_array_module(x)
        d = self.d = x - y
        self.delta, self.reduction = delta, reduction
        a = xp.abs(d)
        loss = xp.where(a < delta, 0.5 * d * d, delta * (a - 0.5 * delta))
        return _reduce(loss, reduction, d.size)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        dx = (_dloss(dout, self.d.shape, self.reduction, self.d.size)
              * xp.clip(self.d, -self.delta, self.delta))
        return dx, -dx


class CosineSimilarity(Function):
    """Cosine of the angle between x1 and x2 along ``axis`` (broadcast together), as PyTorch:

        n_i = ||x_i|| (2-norm along axis),   c_i = max(n_i, eps),   u = x1 / c1,  v = x2 / c2
        out = sum_axis u v                     (= x1.x2 / (||x1|| ||x2||) when both norms >= eps)
    Gradient (PyTorch clamps the norm without recording it, so n's own derivative x / n is kept):
        dx1 = dout / c1 (v - out x1 / n1),     dx2 = dout / c2 (u - out x2 / n2)
    from d(x1 / c1) = dx1 / c1 - x1 dc1 / c1^2 and dn1 = x1.dx1 / n1 (x / n taken as 0 at n = 0).
    Shapes: x1, x2 broadcastable to S; out S without ``axis``.
    """

    def forward(self, x1, x2, axis=1, eps=1e-8):
        xp = backend.get_array_module(x1)
        self.shapes, self.axis = (x1.shape, x2.shape), axis
        x1, x2 = xp.broadcast_arrays(x1, x2)
        self.x1, self.x2 = x1, x2
        self.n1 = xp.sqrt((x1 * x1).sum(axis=axis, keepdims=True))           # (S with 1 at axis)
        self.n2 = xp.sqrt((x2 * x2).sum(axis=axis, keepdims=True))
        self.c1, self.c2 = xp.maximum(self.n1, eps), xp.maximum(self.n2, eps)
        self.u, self.v = x1 / self.c1, x2 / self.c2
        self.out = (self.u * self.v).sum(axis=axis, keepdims=True)
        return self.out.squeeze(axis)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        d = xp.expand_dims(dout, self.axis)
        dx1 = dx2 = None
        if self.needs_input_grad[0]:
            n1 = xp.where(self.n1 == 0, 1, self.n1)
            dx1 = unbroadcast(d / self.c1 * (self.v - self.out * self.x1 / n1), self.shapes[0])
        if self.needs_input_grad[1]:
            n2 = xp.where(self.n2 == 0, 1, self.n2)
            dx2 = unbroadcast(d / self.c2 * (self.u - self.out * self.x2 / n2), self.shapes[1])
        return dx1, dx2


def smooth_l1_loss(input, target, reduction="mean", beta=1.0):
    """Smooth L1 loss (quadratic below ``beta``, linear above), as
    ``torch.nn.functional.smooth_l1_loss``."""
    x, y = operands(input, target)
    _same_shape("smooth_l1_loss", x, y)
    _check_reduction("smooth_l1_loss", reduction)
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be >= 0, got {beta}")
    return SmoothL1Loss.apply(x, y, reduction=reduction, beta=float(beta))


def huber_loss(input, target, reduction="mean", delta=1.0):
    """Huber loss (quadratic below ``delta``, then linear with slope ``delta``), as
    ``torch.nn.functional.huber_loss``."""
    x, y = operands(input, target)
    _same_shape("huber_loss", x, y)
    _check_reduction("huber_loss", reduction)
    if not delta > 0:
        raise ValueError(f"huber_loss: delta must be > 0, got {delta}")
    return HuberLoss.apply(x, y, reduction=reduction, delta=float(delta))


def cosine_similarity(x1, x2, axis=1, eps=1e-8, *, dim=None):
    """Cosine similarity of ``x1`` and ``x2`` (broadcast together) along ``axis`` (``dim`` as
    PyTorch; default 1 as ``torch.nn.functional.cosine_similarity``). See ``CosineSimilarity``."""
    if dim is not None:
        if axis not in (1, dim):
            raise TypeError(f"cosine_similarity: got both axis={axis} and dim={dim}; pass one")
        axis = dim
    a, b = operands(as_float(x1), x2)
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"cosine_similarity: shapes {a.shape} and {b.shape} do not "
                         f"broadcast") from None
    if isinstance(axis, (tuple, list)) or len(shape) == 0:
        raise ValueError(f"cosine_similarity: axis must be one int within the broadcast shape "
                         f"{shape}, got {axis!r}")
    (axis,) = normalize_axes(axis, len(shape), "cosine_similarity")
    return CosineSimilarity.apply(a, b, axis=axis, eps=float(eps))

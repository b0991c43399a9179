"""Losses: cross-entropy over class logits (fused with log-softmax), binary cross-entropy over
logits (fused with the sigmoid), mean squared error, and the Gaussian KL divergence of a VAE."""
import numpy as np

from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.autograd.tensor import Tensor
from tinyllm.dispatch import accelerator
from tinyllm.kernels import cross_entropy as cross_entropy_kernels
from tinyllm.ops._util import as_tensor, operands
from tinyllm.ops.losses import class_targets, soft_target_cross_entropy, weighted_cross_entropy

_REDUCTIONS = ("mean", "sum", "none")


def _kernel_fits(z, t):
    """The Numba kernel takes this call: the switch is on, the logits z (N, C) are float and
    non-empty, the targets t integers (N,)."""
    return (accelerator("cross_entropy", z) is not None and t.dtype.kind in "iu"
            and t.shape == z.shape[:1])


class CrossEntropy(Function):
    """Cross-entropy of class logits against integer targets, with log-softmax fused in.

    Per row n with logits z (C classes), target t, p = softmax(z), label smoothing e:
        lse = m + log sum_c e^(z_c - m),   m = max_c z_c     (log-sum-exp, stable; -log p_c =
                                                            lse - z_c)
        q = (1 - e) * onehot(t) + e / C                  (the target distribution)
        loss_n = -sum_c q_c log p_c = (1 - e)(lse - z_t) + e (lse - mean_c z_c)
    Gradient (the famous p - y):
        dloss_n/dz_c = p_c - q_c = e^(z_c - lse) - (1 - e)[c == t] - e / C
    since d(-log p_k)/dz_c = p_c - [c == k] and sum_c q_c = 1. Forward saves only lse (N,);
    backward recomputes p from it.

    Rows whose target is ``ignore_index`` contribute 0 loss and 0 gradient (even when their
    logits hold NaN or inf), and are left out of the count that reduction="mean" divides by. As
    in PyTorch, a batch whose rows are all ignored has a NaN mean loss and a zero gradient.
    Backward first turns dout into dloss (N,), each row's share (dout / n_valid for "mean"), so
    one formula serves every reduction.

    Shapes: logits (..., C) seen as z (N, C); target (N,); out () or (...) for "none".
    Fast path: a Numba kernel per direction (tinyllm/kernels/cross_entropy.py), under the switch.
    """

    def forward(self, z, target=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        xp = backend.get_array_module(z)
        self.in_shape = z.shape
        z = self.z = z.reshape(-1, z.shape[-1])                       # (..., C) -> (N, C)
        t = self.t = target.reshape(-1)                               # (...) -> (N,)
        e = self.eps = label_smoothing
        self.ignore_index, self.reduction = ignore_index, reduction
        if _kernel_fits(z, t):
            loss, self.lse = cross_entropy_kernels.cross_entropy_forward(z, t, ignore_index, e)
        else:
            valid = t != ignore_index
            ts = xp.where(valid, t, 0)                               # any class on ignored rows
            m = z.max(axis=1)                                        # NaN if the row has a NaN
            m = xp.where(m == -xp.inf, 0, m)                         # all -inf row: lse = -inf
            lse = m + xp.log(xp.exp(z - m[:, None]).sum(axis=1))     # (N,)
            loss = lse - z[xp.arange(z.shape[0]), ts]                # -log p_t, (N,)
            if e:
                loss = (1 - e) * loss + e * (lse - z.mean(axis=1))
            loss, self.lse = xp.where(valid, loss, 0).astype(z.dtype), lse.astype(z.dtype)
        if reduction == "none":
            return loss.reshape(self.in_shape[:-1])
        if reduction == "sum":
            return loss.sum()
        n_valid = (t != ignore_index).sum().astype(z.dtype)          # int count would promote
        self.n_valid = xp.maximum(n_valid, 1)     # no ignored-only 0/0 in backward (rows are 0)
        return xp.where(n_valid > 0, loss.sum() / self.n_valid, xp.nan)   # NaN as PyTorch

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        z, t, e = self.z, self.t, self.eps
        N, C = z.shape
        if self.reduction == "none":
            dloss = dout.reshape(-1)                                  # (...) -> (N,)
        elif self.reduction == "sum":
            dloss = xp.broadcast_to(dout, (N,))
        else:
            dloss = xp.broadcast_to(dout / self.n_valid, (N,))
        if _kernel_fits(z, t):
            dz = cross_entropy_kernels.cross_entropy_backward(z, t, self.lse, dloss,
                                                              self.ignore_index, e)
            return dz.reshape(self.in_shape)                          # (N, C) -> (..., C)
        valid = t != self.ignore_index
        ts = xp.where(valid, t, 0)
        dz = xp.exp(z - self.lse[:, None])                           # p (N, C)
        dz[xp.arange(N), ts] -= 1 - e                                # - (1 - e) onehot(t)
        if e:
            dz -= e / C
        dz *= dloss[:, None].astype(z.dtype)
        xp.copyto(dz, 0, where=~valid[:, None])                      # ignored rows: 0, NaN or not
        return dz.reshape(self.in_shape)                              # (N, C) -> (..., C)


class MSELoss(Function):
    """Squared error: loss = reduce((x - y)^2).   dx = 2 (x - y) * dout / n,  dy = -dx.

    n is the number of elements for reduction="mean", 1 for "sum" and "none" (then dout has
    x's shape). Shapes: x, y the same shape; loss () or, with "none", x's shape.
    """

    def forward(self, x, y, reduction="mean"):
        self.diff, self.reduction = x - y, reduction
        sq = self.diff * self.diff
        if reduction == "none":
            return sq
        return sq.sum() if reduction == "sum" else sq.mean()

    def backward(self, dout):
        scale = 1.0 / self.diff.size if self.reduction == "mean" else 1.0
        dx = 2 * scale * self.diff * dout
        return (dx if self.needs_input_grad[0] else None,
                -dx if self.needs_input_grad[1] else None)


class BinaryCrossEntropyWithLogits(Function):
    """Binary cross-entropy of logits z against targets y in [0, 1], the sigmoid fused in.

    With p = s(z) = 1 / (1 + e^-z), per element:
        loss = -(y log p + (1 - y) log(1 - p)) = max(z, 0) - z y + log(1 + e^-|z|)
    (the right-hand form never takes the log of 0 nor overflows e^z). Gradient, as for softmax
    cross-entropy:
        dloss/dz = p - y            since d(-log p)/dz = p - 1 and d(-log(1 - p))/dz = p
        dloss/dy = -z               (for soft targets; usually y is data and gets none)
    Shapes: z, y any one shape; out () for "mean"/"sum" or like z for "none".
    """

    def forward(self, z, y, reduction="mean"):
        xp = backend.get_array_module(z)
        self.z, self.y, self.reduction = z, y, reduction
        loss = xp.maximum(z, 0) - z * y + xp.log1p(xp.exp(-xp.abs(z)))
        if reduction == "none":
            return loss
        return loss.sum() if reduction == "sum" else loss.mean()

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        scale = dout / self.z.size if self.reduction == "mean" else dout
        e = xp.exp(-xp.abs(self.z))
        p = xp.where(self.z >= 0, 1 / (1 + e), e / (1 + e))                # s(z), no overflow
        dz = (p - self.y) * scale
        dy = -self.z * scale if self.needs_input_grad[1] else None
        return dz, dy


class GaussianKL(Function):
    """KL(N(mu, diag(e^logvar)) || N(0, I)), the VAE's regularizer, in closed form.

    For one latent coordinate with q = N(mu, s^2), p = N(0, 1):
        KL(q || p) = E_q[log q - log p] = -log s - 1/2 + (s^2 + mu^2) / 2
                   = 1/2 (mu^2 + e^logvar - 1 - logvar)          with logvar = log s^2
    summed over the latent axis (the last). Gradients:
        dKL/dmu = mu,    dKL/dlogvar = 1/2 (e^logvar - 1)
    Shapes: mu, logvar (..., Z); out (...) for "none" (one KL per row), () for "mean" over the
    rows or "sum".
    """

    def forward(self, mu, logvar, reduction="mean"):
        xp = backend.get_array_module(mu)
        self.mu, self.var, self.reduction = mu, xp.exp(logvar), reduction
        kl = 0.5 * (mu * mu + self.var - 1 - logvar).sum(axis=-1)            # (...)
        self.rows = kl.size
        if reduction == "none":
            return kl
        return kl.sum() if reduction == "sum" else kl.mean()

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        if self.reduction == "none":
            d = dout[..., None]                                               # (...) -> (..., 1)
        else:
            d = dout / self.rows if self.reduction == "mean" else dout
        dmu = self.mu * d
        dlogvar = 0.5 * (self.var - 1) * d
        return xp.broadcast_to(dmu, self.mu.shape), xp.broadcast_to(dlogvar, self.mu.shape)


def cross_entropy(logits, target, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                  weight=None):
    """Cross-entropy between ``logits`` (..., C) and integer class ``target`` (...).

    The class axis is the last one (PyTorch puts it at axis 1 for inputs of rank > 2; for the
    usual LM call, ``cross_entropy(logits.reshape(-1, V), targets.reshape(-1))``, both agree).
    Targets equal to ``ignore_index`` are skipped. ``reduction`` is "mean", "sum" or "none".
    A float ``target`` of the logits' shape holds class probabilities instead (as PyTorch; see
    losses.py's ``SoftTargetCrossEntropy``). ``weight`` (C,) weighs each class as PyTorch does
    (the integer-target mean then divides by the targets' weights; see losses.py).
    """
    logits = as_tensor(logits)
    if logits.ndim == 0:
        raise ValueError("cross_entropy: logits must have a class axis, got a 0-d tensor")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction must be one of {_REDUCTIONS}, got "
                         f"{reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got "
                         f"{label_smoothing}")
    if _is_float(target):                                         # class probabilities
        shape = tuple(target.shape) if hasattr(target, "shape") else np.shape(target)
        if shape != logits.shape:
            raise TypeError(f"cross_entropy: target must hold integers (class indices, shape "
                            f"{logits.shape[:-1]}) or floats of the logits' shape "
                            f"{logits.shape} (class probabilities), got a float target of "
                            f"shape {shape}")
        if ignore_index != -100:
            raise ValueError(f"cross_entropy: ignore_index={ignore_index} is not supported for "
                             f"float (class-probability) targets")
        return soft_target_cross_entropy(logits, target, weight, reduction, label_smoothing)
    if weight is not None:
        return weighted_cross_entropy(logits, target, weight, ignore_index, reduction,
                                      label_smoothing)
    t = class_targets("cross_entropy", target, logits.shape[-1], ignore_index, logits)
    if tuple(t.shape) != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: target shape {tuple(t.shape)} does not match logits "
                         f"shape {logits.shape} (expected target shape {logits.shape[:-1]})")
    return CrossEntropy.apply(logits, target=t, ignore_index=ignore_index, reduction=reduction,
                              label_smoothing=float(label_smoothing))


def _is_float(target):
    """Whether ``target`` (a Tensor, array, list or number) holds floats: class probabilities."""
    data = target.data if isinstance(target, Tensor) else target
    if backend.get_array_module(data) is np:
        data = np.asarray(data)
    return data.dtype.kind == "f"


def mse_loss(input, target, reduction="mean"):
    """Mean squared error between two tensors of the same shape."""
    x, y = operands(input, target)
    if x.shape != y.shape:
        raise ValueError(f"mse_loss: input shape {x.shape} and target shape {y.shape} differ "
                         f"(broadcasting here is almost always a bug)")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"mse_loss: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return MSELoss.apply(x, y, reduction=reduction)


def binary_cross_entropy_with_logits(logits, target, reduction="mean"):
    """Binary cross-entropy of ``logits`` against ``target`` probabilities (same shape), as
    ``torch.nn.functional.binary_cross_entropy_with_logits``."""
    z, y = operands(logits, target)
    if z.shape != y.shape:
        raise ValueError(f"binary_cross_entropy_with_logits: logits shape {z.shape} and target "
                         f"shape {y.shape} differ")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"binary_cross_entropy_with_logits: reduction must be one of "
                         f"{_REDUCTIONS}, got {reduction!r}")
    return BinaryCrossEntropyWithLogits.apply(z, y, reduction=reduction)


def gaussian_kl(mu, logvar, reduction="mean"):
    """KL(N(mu, e^logvar) || N(0, 1)) summed over the last axis: per row ("none"), averaged
    over rows ("mean") or summed ("sum"). See ``GaussianKL``."""
    mu, logvar = operands(mu, logvar)
    if mu.shape != logvar.shape or mu.ndim == 0:
        raise ValueError(f"gaussian_kl: mu and logvar must share one shape (..., Z), got "
                         f"{mu.shape} and {logvar.shape}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"gaussian_kl: reduction must be one of {_REDUCTIONS}, got "
                         f"{reduction!r}")
    return GaussianKL.apply(mu, logvar, reduction=reduction)

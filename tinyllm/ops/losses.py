"""More probabilistic losses, as ``torch.nn.functional`` defines them: nll_loss, cross-entropy
against class probabilities (and with class weights), binary cross-entropy on probabilities, KL
divergence. (loss.py holds the training losses: cross-entropy on integer targets with its Numba
kernel, MSE, BCE on logits, the VAE's Gaussian KL; regression.py smooth L1, Huber, cosine.)

Every reduction is "mean", "sum" or "none". Backward first turns dout into each element's share
``dloss`` (dout / n for "mean"), so that one formula serves every reduction.
"""
import numpy as np

from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.ops._util import as_tensor, int_array, operands
from tinyllm.ops.elementwise import where
from tinyllm.ops.softmax import log_softmax

_REDUCTIONS = ("mean", "sum", "none")
_EPSILON = float(np.float32(1e-12))        # PyTorch's floor under x (1 - x) in BCE's backward


def _reduce(loss, reduction, count):
    """``loss`` summed, or summed and divided by ``count``, or as it is ("none"). The mean of
    nothing is NaN, as PyTorch's (without NumPy's 0 / 0 warning)."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / count if count else loss.sum() * np.nan


def _dloss(dout, shape, reduction, count):
    """dout as each loss element's gradient, of ``shape``: 1 / count of it for "mean"."""
    xp = backend.get_array_module(dout)
    if reduction == "none":
        return dout
    if isinstance(count, (int, np.integer)) and count == 0:           # empty: no elements
        count = 1
    return xp.broadcast_to(dout / count if reduction == "mean" else dout, shape)


def _log_softmax_last(z):
    """log softmax(z) along the last axis, as ops/softmax.py computes it (max subtracted)."""
    xp = backend.get_array_module(z)
    m = z.max(axis=-1, keepdims=True)
    m = xp.where(m == -xp.inf, 0, m)                                  # all -inf row stays -inf
    return z - m - xp.log(xp.exp(z - m).sum(axis=-1, keepdims=True))


class NLLLoss(Function):
    """Negative log-likelihood of log-probabilities ``logp`` at integer class targets t.

    Per target position n (weights w, default 1; ignored targets weigh 0):
        loss_n = -w_(t_n) logp[n, t_n]
        "mean" = sum_n loss_n / sum_n w_(t_n)     (PyTorch: weighted mean; all ignored: NaN)
    Gradient: loss_n reads one entry of its row, so
        dlogp[n, c] = -w_(t_n) dloss_n [c == t_n],   0 elsewhere and on ignored rows
    The weight is a constant (PyTorch gives it no gradient either).

    Shapes: logp (N, C, d...) with the class axis ``axis`` (1, as PyTorch; -1 for
    cross_entropy), t (N, d...), weight (C,); out () or t's shape for "none".
    """

    def forward(self, logp, target=None, weight=None, ignore_index=-100, reduction="mean",
                axis=1):
        xp = backend.get_array_module(logp)
        self.shape, self.axis, self.reduction = logp.shape, axis, reduction
        lp = xp.moveaxis(logp, axis, -1)                              # (N, d..., C)
        self.moved_shape = lp.shape
        lp = lp.reshape(-1, lp.shape[-1])                             # (M, C)
        t = target.reshape(-1)                                        # (M,)
        valid = t != ignore_index
        self.ts = xp.where(valid, t, 0)                               # any class on ignored
        w = xp.ones(lp.shape[1], logp.dtype) if weight is None else weight.astype(logp.dtype)
        self.wt = xp.where(valid, w[self.ts], 0).astype(logp.dtype)   # (M,) w_(t_n), 0 if ignored
        loss = xp.where(valid, -self.wt * lp[xp.arange(lp.shape[0]), self.ts], 0)
        self.total = self.wt.sum()                                    # what "mean" divides by
        if reduction == "none":
            return loss.reshape(target.shape)
        if reduction == "sum":
            return loss.sum()
        return xp.where(self.total != 0, loss.sum() / xp.where(self.total != 0, self.total, 1),
                        xp.nan).astype(logp.dtype)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        M = self.ts.shape[0]
        total = xp.where(self.total != 0, self.total, 1)              # ignored-only: dlogp = 0
        dloss = _dloss(dout, self.wt.shape, self.reduction, total).reshape(-1)   # (M,)
        dlp = xp.zeros((M, self.moved_shape[-1]), dout.dtype)
        dlp[xp.arange(M), self.ts] = -self.wt * dloss
        return xp.moveaxis(dlp.reshape(self.moved_shape), -1, self.axis)


class SoftTargetCrossEntropy(Function):
    """Cross-entropy of logits z against class probabilities q (PyTorch's float targets).

    Per row (C classes), label smoothing e, class weights w (default 1):
        q' = (1 - e) q + e / C,   a_c = w_c q'_c,   logp = z - logsumexp(z)
        loss = -sum_c a_c logp_c                  "mean" divides the sum by the number of rows
    Gradient: d(-logp_c)/dz_j = p_j - [c == j], so
        dz_j = dloss (p_j sum_c a_c - a_j)        (p - q when w = 1 and q sums to 1)
        dq_c = -dloss (1 - e) w_c logp_c
    Shapes: z, q (..., C), the class axis last; w (C,); out () or (...) for "none".
    """

    def forward(self, z, q, weight=None, reduction="mean", label_smoothing=0.0):
        C, e = z.shape[-1], label_smoothing
        self.logp = _log_softmax_last(z)
        self.a = (1 - e) * q + e / C                                  # q' (..., C)
        self.w = weight.astype(z.dtype) if weight is not None else None
        if self.w is not None:
            self.a = self.a * self.w
        self.eps, self.reduction, self.rows = e, reduction, z.size // max(C, 1)
        with np.errstate(invalid="ignore"):                           # 0 * -inf: NaN, as torch
            loss = -(self.a * self.logp).sum(axis=-1)                 # (...)
        return _reduce(loss, reduction, self.rows)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        dloss = _dloss(dout, self.logp.shape[:-1], self.reduction, self.rows)[..., None]
        dz = dq = None
        if self.needs_input_grad[0]:
            dz = dloss * (xp.exp(self.logp) * self.a.sum(axis=-1, keepdims=True) - self.a)
        if self.needs_input_grad[1]:
            dq = -dloss * (1 - self.eps) * self.logp
            dq = dq * self.w if self.w is not None else dq
        return dz, dq


class BinaryCrossEntropy(Function):
    """Binary cross-entropy of probabilities x against targets y, logs clamped at -100 as in
    PyTorch (so x = 0 or 1 gives a finite loss):

        loss = -w (y max(log x, -100) + (1 - y) max(log(1 - x), -100))
    Gradient, with d log x/dx = 1/x and d log(1 - x)/dx = -1/(1 - x):
        dx = dloss w (-y/x + (1 - y)/(1 - x)) = dloss w (x - y) / max(x (1 - x), 1e-12)
        dy = dloss w (log(1 - x) - log x) = -dloss w logit(x)
    (the max is PyTorch's, 1e-12 rounded to float32, to keep dx finite at x = 0 or 1).
    Shapes: x, y one shape; weight (constant) broadcastable to it; out () or x's shape for
    "none".
    """

    def forward(self, x, y, weight=None, reduction="mean"):
        xp = backend.get_array_module(x)
        self.x, self.y, self.reduction = x, y, reduction
        self.w = 1 if weight is None else weight.astype(x.dtype)
        with np.errstate(divide="ignore"):                            # log 0 = -inf, clamped
            log_x = xp.maximum(xp.log(x), -100)
            log_1mx = xp.maximum(xp.log1p(-x), -100)
        loss = -self.w * (y * log_x + (1 - y) * log_1mx)
        return _reduce(loss, reduction, x.size)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        x, y = self.x, self.y
        dloss = self.w * _dloss(dout, x.shape, self.reduction, x.size)
        dx = dy = None
        if self.needs_input_grad[0]:
            dx = dloss * (x - y) / xp.maximum(x * (1 - x), _EPSILON)
        if self.needs_input_grad[1]:
            with np.errstate(divide="ignore"):                        # +-inf at x = 0 or 1
                dy = dloss * (xp.log1p(-x) - xp.log(x))
        return dx, dy


class KLDiv(Function):
    """KL divergence terms of log-probabilities x against a target y (PyTorch's kl_div):

        log_target=False:  out = y (log y - x)      (0 where y = 0: xlogy)
            dx = -dloss y,        dy = dloss (log y + 1 - x)
        log_target=True:   out = e^y (y - x)        (y holds log-probabilities)
            dx = -dloss e^y,      dy = dloss e^y (y - x + 1)
    Summed over every element, KL(q || p) = sum q log(q / p) with x = log p. "batchmean"
    divides the sum by the batch size x.shape[0] (the true KL per sample), "mean" by the
    number of elements. Shapes: x, y one shape; out () or x's shape for "none".
    """

    def forward(self, x, y, reduction="mean", log_target=False):
        xp = backend.get_array_module(x)
        self.x, self.y, self.log_target = x, y, log_target
        if log_target:
            self.q = xp.exp(y)
            out = self.q * (y - x)
        else:
            out = xp.where(y == 0, 0, y * xp.log(xp.where(y == 0, 1, y))) - y * x
        self.reduction = "sum" if reduction == "batchmean" and x.ndim == 0 else reduction
        self.count = x.shape[0] if self.reduction == "batchmean" else x.size
        return _reduce(out, "mean" if self.reduction == "batchmean" else self.reduction,
                       self.count)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        x, y = self.x, self.y
        reduction = "mean" if self.reduction == "batchmean" else self.reduction
        dloss = _dloss(dout, x.shape, reduction, self.count)
        if self.log_target:
            return -dloss * self.q, dloss * self.q * (y - x + 1)
        with np.errstate(divide="ignore"):
            return -dloss * y, dloss * (xp.log(y) + 1 - x)


# ----------------------------------------------------------------------------------------------
# the public functions: check the arguments, then apply the op

def _check_reduction(op, reduction, allowed=_REDUCTIONS):
    if reduction not in allowed:
        raise ValueError(f"{op}: reduction must be one of {allowed}, got {reduction!r}")


def _same_shape(op, x, y, names=("input", "target")):
    if x.shape != y.shape:
        raise ValueError(f"{op}: {names[0]} shape {x.shape} and {names[1]} shape {y.shape} "
                         f"differ (broadcasting here is almost always a bug)")


def _class_weight(op, weight, C, like):
    """``weight`` as a constant float array (C,) on ``like``'s device, or None."""
    if weight is None:
        return None
    w = as_tensor(weight, like).data
    if w.ndim != 1 or w.shape[0] != C:
        raise ValueError(f"{op}: weight must have shape ({C},), one entry per class, got "
                         f"{tuple(w.shape)}")
    return w.astype(like.dtype)


def class_targets(op, target, C, ignore_index, like):
    """The integer targets as an array, every one in [0, C) or equal to ignore_index (else an
    IndexError naming ``op``); ``like``: a Tensor on the targets' device. The classification
    losses (cross_entropy, nll_loss, distillation_loss) all check their targets here."""
    t = int_array(target, op, "target", like.data)
    bad = (t != ignore_index) & ((t < 0) | (t >= C))
    if bad.any():
        value = int(backend.asnumpy(t[bad])[0])
        raise IndexError(f"{op}: target value {value} is out of range for {C} classes "
                         f"(expected 0 <= target < {C}, or ignore_index={ignore_index})")
    return t


def nll_loss(input, target, weight=None, ignore_index=-100, reduction="mean"):
    """Negative log-likelihood of log-probabilities ``input`` at class indices ``target``, as
    ``torch.nn.functional.nll_loss``: input (N, C) or (N, C, d...) (class axis 1) or (C,);
    target (N,) or (N, d...) or (); ``weight`` (C,) per class. See ``NLLLoss``."""
    x = as_tensor(input)
    if x.dtype.kind != "f" or x.ndim == 0:
        raise ValueError(f"nll_loss: input must be float log-probabilities of shape (N, C, ...) "
                         f"or (C,), got dtype {x.dtype} and shape {x.shape}")
    axis = 0 if x.ndim == 1 else 1
    want = x.shape[:axis] + x.shape[axis + 1:]
    t = class_targets("nll_loss", target, x.shape[axis], ignore_index, x)
    if tuple(t.shape) != want:
        raise ValueError(f"nll_loss: target shape {tuple(t.shape)} does not match input shape "
                         f"{x.shape} (expected target shape {want})")
    _check_reduction("nll_loss", reduction)
    w = _class_weight("nll_loss", weight, x.shape[axis], x)
    return NLLLoss.apply(x, target=t, weight=w, ignore_index=ignore_index, reduction=reduction,
                         axis=axis)


def soft_target_cross_entropy(logits, target, weight=None, reduction="mean",
                              label_smoothing=0.0):
    """Cross-entropy of ``logits`` (..., C) against class probabilities ``target`` of the same
    shape (the class axis last). ``cross_entropy`` sends float targets here."""
    z, q = operands(logits, target)
    _same_shape("cross_entropy", z, q, ("logits", "probability target"))
    w = _class_weight("cross_entropy", weight, z.shape[-1], z)
    return SoftTargetCrossEntropy.apply(z, q, weight=w, reduction=reduction,
                                        label_smoothing=float(label_smoothing))


def weighted_cross_entropy(logits, target, weight, ignore_index=-100, reduction="mean",
                           label_smoothing=0.0):
    """Class-index cross-entropy with class weights, composed as PyTorch defines it:
    nll_loss(log_softmax(z), weight) and, with label smoothing e, (1 - e) times that plus e / C
    times the smoothing term -sum_c w_c logp_c, reduced the same way (the mean divided by the
    weights of the targets). ``cross_entropy`` sends a call with ``weight=`` here."""
    z = as_tensor(logits)
    C = z.shape[-1]
    t = class_targets("cross_entropy", target, C, ignore_index, z)
    if tuple(t.shape) != z.shape[:-1]:
        raise ValueError(f"cross_entropy: target shape {tuple(t.shape)} does not match logits "
                         f"shape {z.shape} (expected target shape {z.shape[:-1]})")
    w = _class_weight("cross_entropy", weight, C, z)
    logp = log_softmax(z, axis=-1)                                   # (..., C)
    nll = NLLLoss.apply(logp, target=t, weight=w, ignore_index=ignore_index,
                        reduction=reduction, axis=-1)
    if not label_smoothing:
        return nll
    xp = backend.get_array_module(w)
    valid = t != ignore_index
    # 0 where ignored, selected (not multiplied by 0) so that those rows get no gradient even
    # when the mean divides by 0, as PyTorch's masked_fill
    smooth = where(valid, -(logp * w).sum(axis=-1), 0.0)             # (...)
    if reduction == "sum":
        smooth = smooth.sum()
    elif reduction == "mean":
        total = w[xp.where(valid, t, 0)][valid].sum()                # the weights of the targets
        # all ignored: NaN, as nll, and a zero gradient (PyTorch: 0 / 0 forward, masked back)
        smooth = smooth.sum() / total if total != 0 else smooth.sum() * 0.0 + xp.nan
    e = float(label_smoothing)
    return (1 - e) * nll + e / C * smooth


def binary_cross_entropy(input, target, weight=None, reduction="mean"):
    """Binary cross-entropy of probabilities ``input`` in [0, 1] against ``target`` (same
    shape), as ``torch.nn.functional.binary_cross_entropy`` (logs clamped at -100). Prefer
    ``binary_cross_entropy_with_logits`` on logits: it is exact where this one clamps."""
    x, y = operands(input, target)
    _same_shape("binary_cross_entropy", x, y)
    _check_reduction("binary_cross_entropy", reduction)
    xp = backend.get_array_module(x.data)
    if x.size and not bool(((x.data >= 0) & (x.data <= 1)).all()):
        raise ValueError(f"binary_cross_entropy: every input must be a probability in [0, 1], "
                         f"got values from {float(xp.nanmin(x.data))} to "
                         f"{float(xp.nanmax(x.data))} (use binary_cross_entropy_with_logits on "
                         f"logits)")
    w = None
    if weight is not None:
        w = as_tensor(weight, x).data
        if w.ndim > x.ndim or any(n not in (1, m) for n, m in zip(w.shape[::-1], x.shape[::-1])):
            raise ValueError(f"binary_cross_entropy: weight shape {tuple(w.shape)} does not "
                             f"broadcast to the input shape {x.shape}")
    return BinaryCrossEntropy.apply(x, y, weight=w, reduction=reduction)


def kl_div(input, target, reduction="mean", log_target=False):
    """KL divergence terms of log-probabilities ``input`` against ``target`` probabilities (or
    log-probabilities with ``log_target=True``), as ``torch.nn.functional.kl_div``:
    ``reduction="batchmean"`` gives the mathematical KL per sample. See ``KLDiv``."""
    x, y = operands(input, target)
    _same_shape("kl_div", x, y)
    _check_reduction("kl_div", reduction, _REDUCTIONS + ("batchmean",))
    return KLDiv.apply(x, y, reduction=reduction, log_target=bool(log_target))

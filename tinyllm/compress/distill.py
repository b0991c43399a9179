"""Knowledge distillation (Hinton, Vinyals & Dean 2015, https://arxiv.org/abs/1503.02531): a
student learns from the hard targets and from a teacher's temperature-softened distribution.

    loss = alpha CE(z_s, y) + (1 - alpha) T^2 KL(softmax(z_t / T) || softmax(z_s / T))

One op, ``DistillationLoss``, with its hand-written backward; the derivation is in its
docstring and on the card in docs/compression.md.
"""
import math

import numpy as np

from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.autograd.tensor import Tensor
from tinyllm.ops._util import as_float
from tinyllm.ops.losses import class_targets


def _log_softmax_rows(z):
    """log softmax of each row of z (N, V), the row max subtracted first (no overflow); a row's
    -inf entries (a masked vocabulary) come out -inf, never NaN."""
    xp = backend.get_array_module(z)
    m = z.max(axis=1, keepdims=True)
    m = xp.where(m == -xp.inf, 0, m)                                 # all -inf row: stays -inf
    return z - m - xp.log(xp.exp(z - m).sum(axis=1, keepdims=True))


class DistillationLoss(Function):
    """loss = alpha CE(z_s, y) + (1 - alpha) T^2 KL(p_t || q_s), averaged over the rows.

    Per row n of the student's logits z_s (V,), the teacher's z_t (V,), target y_n:
        p = softmax(z_s)                      the student at temperature 1 (the CE term)
        q_s = softmax(z_s / T),  p_t = softmax(z_t / T)     both softened by T
        CE_n = -log p[y_n]                    (rows with y_n = ignore_index left out)
        KL_n = sum_v p_t,v (log p_t,v - log q_s,v)          (a term with p_t,v = 0 is 0)
        loss = alpha / N_valid sum_valid CE_n + (1 - alpha) T^2 / N sum_n KL_n
    N counts every row, N_valid the rows whose target is not ignored: the CE term is
    ``cross_entropy``'s mean, the KL term PyTorch's
    ``F.kl_div(F.log_softmax(z_s / T), F.softmax(z_t / T), reduction="batchmean") * T**2`` on
    the logits seen as (N, V) (for (B, T, V) logits PyTorch's batchmean would divide by B only).

    Gradient (the teacher is a constant):
        dCE_n/dz_s = p - onehot(y_n)                        (softmax cross-entropy's p - y)
        dKL_n/dz_s = (dKL_n/ds) (ds/dz_s) = (q_s - p_t) / T with s = z_s / T, since
                     KL_n = -sum_v p_t,v log q_s,v + const and d(-log q_s,v)/ds = q_s - e_v,
                     summed against p_t (which sums to 1)
        dz_s = dout [alpha (p - onehot(y)) / N_valid  +  (1 - alpha) T (q_s - p_t) / N]
    The T^2 factor cancels one 1/T of the chain rule and leaves T: the soft gradients keep
    the size of the hard ones as T grows (Hinton et al.: for large T, q_s - p_t ~
    (z_s - z_t) / (V T) for zero-mean logits, so without T^2 the soft gradient would fade as
    1/T^2).

    All-ignored targets: the CE term is NaN (as cross_entropy's) unless alpha = 0, where the
    loss is the KL term alone (targets may then be None). The teacher's logits come in as a
    keyword array, not a graph input: they get no gradient even if their tensor requires one.

    Shapes: z_s, z_t (..., V) seen as (N, V); y (...) as (N,); out (); dz_s (..., V).
    """

    def forward(self, z, teacher=None, target=None, temperature=1.0, alpha=0.5,
                ignore_index=-100):
        xp = backend.get_array_module(z)
        T, a = float(temperature), float(alpha)
        self.shape, self.T, self.alpha = z.shape, T, a
        z = z.reshape(-1, z.shape[-1])                               # (..., V) -> (N, V)
        N = z.shape[0]
        self.N = max(N, 1)
        loss = xp.zeros((), z.dtype)
        with np.errstate(invalid="ignore", divide="ignore"):
            # KL term: teacher and student softened by T
            logq = _log_softmax_rows(z / T)                          # log q_s (N, V)
            logpt = _log_softmax_rows(teacher.reshape(z.shape).astype(z.dtype) / T)
            self.q, self.pt = xp.exp(logq), xp.exp(logpt)            # q_s, p_t (N, V)
            kl = xp.where(self.pt > 0, self.pt * (logpt - logq), 0)  # 0 log 0 = 0
            loss = loss + (1 - a) * T * T * kl.sum() / self.N
            if a > 0:                                                # CE term, temperature 1
                t = target.reshape(-1)
                self.valid = t != ignore_index                       # (N,)
                self.t = xp.where(self.valid, t, 0)
                self.logp = _log_softmax_rows(z)                     # log p (N, V)
                n_valid = int(self.valid.sum())
                self.n_valid = max(n_valid, 1)
                ce = xp.where(self.valid, -self.logp[xp.arange(N), self.t], 0)
                loss = loss + a * (ce.sum() / n_valid if n_valid else xp.nan)
        return xp.asarray(loss, z.dtype)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        T, a = self.T, self.alpha
        dz = (1 - a) * T * (self.q - self.pt) / self.N               # the soft term (N, V)
        if a > 0:
            N = dz.shape[0]
            dce = xp.exp(self.logp)                                  # p (N, V)
            dce[xp.arange(N), self.t] -= 1                           # p - onehot(y)
            dce *= (self.valid / self.n_valid)[:, None]              # ignored rows: 0
            dz = dz + a * dce
        return (dout * dz).astype(dout.dtype).reshape(self.shape)


def distillation_loss(student_logits, teacher_logits, targets, temperature=2.0, alpha=0.5,
                      ignore_index=-100):
    """alpha CE(student, targets) + (1 - alpha) T^2 KL(softmax(teacher / T) ||
    softmax(student / T)), a scalar averaged over the rows (see ``DistillationLoss``).

    student_logits: Tensor (..., V); teacher_logits: Tensor or array of the same shape, a
    constant (run the teacher under ``no_grad``); targets: integers (...), ``ignore_index``
    rows left out of the CE mean (may be None when alpha = 0); temperature T > 0; alpha in
    [0, 1] (1: plain cross-entropy, 0: pure distillation).
    """
    z = as_float(student_logits)
    if z.ndim == 0:
        raise ValueError("distillation_loss: student_logits must have a vocabulary axis, got a "
                         "0-d tensor")
    zt = teacher_logits.data if isinstance(teacher_logits, Tensor) else teacher_logits
    if backend.get_array_module(zt) is np:
        zt = np.asarray(zt)
    if tuple(zt.shape) != z.shape:
        raise ValueError(f"distillation_loss: teacher_logits shape {tuple(zt.shape)} does not "
                         f"match student_logits shape {z.shape}")
    if zt.dtype.kind != "f":
        raise ValueError(f"distillation_loss: teacher_logits must be floats, got {zt.dtype}")
    T, a = _number("temperature", temperature), _number("alpha", alpha)
    if not T > 0:
        raise ValueError(f"distillation_loss: temperature must be > 0, got {temperature}")
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"distillation_loss: alpha must be in [0, 1], got {alpha}")
    t = None
    if a > 0 or targets is not None:
        if targets is None:
            raise ValueError("distillation_loss: targets are needed when alpha > 0")
        t = class_targets("distillation_loss", targets, z.shape[-1], ignore_index, z)
        if tuple(t.shape) != z.shape[:-1]:
            raise ValueError(f"distillation_loss: targets shape {tuple(t.shape)} does not match "
                             f"logits shape {z.shape} (expected {z.shape[:-1]})")
    return DistillationLoss.apply(z, teacher=zt, target=t, temperature=T, alpha=a,
                                  ignore_index=ignore_index)


def _number(name, value):
    """``value`` as a finite float, or a ValueError naming distillation_loss and ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"distillation_loss: {name} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"distillation_loss: {name} must be finite, got {value}")
    return float(value)

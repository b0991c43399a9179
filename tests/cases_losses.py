"""Op cases for tinyllm/ops/losses.py and tinyllm/ops/regression.py (nll_loss, cross-entropy
against class probabilities and with class weights, binary cross-entropy on probabilities,
kl_div, smooth L1, Huber, cosine similarity), run by tests/test_ops.py: forward against NumPy,
float64 gradcheck (targets that are floats are differentiated too), float32 against float64.
Inputs stay off the kinks: |x - y| is never near beta / delta, probabilities stay inside (0, 1).
"""
import numpy as np

from tinyllm import functional as F
from tests.op_cases import C, away_from_zero, const, ints, normal, positive

W5 = np.array([0.5, 1.0, 2.0, 0.3, 1.5])                # class weights, C = 5


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _reduce(loss, reduction, count=None):
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / (count or loss.size)


def _nll(lp, t, weight=None, ignore_index=-100, reduction="mean"):
    """lp (N, C, d...) or (C,), written with loops over the target positions."""
    lp = np.moveaxis(lp, 0 if lp.ndim == 1 else 1, -1)
    w = np.ones(lp.shape[-1]) if weight is None else weight
    loss, total = np.zeros(t.shape), 0.0
    for idx in np.ndindex(t.shape):
        if t[idx] != ignore_index:
            loss[idx] = -w[t[idx]] * lp[idx][t[idx]]
            total += w[t[idx]]
    return loss.sum() / total if reduction == "mean" else _reduce(loss, reduction)


def _soft_ce(z, q, weight=None, reduction="mean", eps=0.0):
    C = z.shape[-1]
    a = ((1 - eps) * q + eps / C) * (1.0 if weight is None else weight)
    return _reduce(-(a * _log_softmax(z)).sum(-1), reduction, z.size // C)


def _weighted_ce(z, t, weight, reduction="mean", eps=0.0, ignore_index=-100):
    """PyTorch's formula: (1 - e) nll_loss(logp, t, weight) + e / C * smoothing term."""
    lp, C = _log_softmax(z), z.shape[-1]
    nll = _nll(np.moveaxis(lp, -1, 1) if lp.ndim > 2 else lp, t, weight, ignore_index, reduction)
    valid = t != ignore_index
    smooth = -(lp * weight).sum(-1) * valid
    if reduction == "mean":
        smooth = smooth.sum() / weight[np.where(valid, t, 0)][valid].sum()
    else:
        smooth = _reduce(smooth, reduction)
    return (1 - eps) * nll + eps / C * smooth


def _bce(p, y, weight=1.0, reduction="mean"):
    loss = -weight * (y * np.maximum(np.log(p), -100) + (1 - y) * np.maximum(np.log1p(-p), -100))
    return _reduce(loss, reduction)


def _kl(x, y, reduction="mean", log_target=False):
    out = np.exp(y) * (y - x) if log_target else y * (np.log(y) - x)
    if reduction == "batchmean":
        return out.sum() / x.shape[0]
    return _reduce(out, reduction)


def _smooth_l1(x, y, reduction="mean", beta=1.0):
    a = np.abs(x - y)
    loss = a if beta == 0 else np.where(a < beta, 0.5 * a ** 2 / beta, a - 0.5 * beta)
    return _reduce(loss, reduction)


def _huber(x, y, reduction="mean", delta=1.0):
    a = np.abs(x - y)
    return _reduce(np.where(a < delta, 0.5 * a ** 2, delta * (a - 0.5 * delta)), reduction)


def _cosine(a, b, axis=1, eps=1e-8):
    na = np.maximum(np.linalg.norm(a, axis=axis, keepdims=True), eps)
    nb = np.maximum(np.linalg.norm(b, axis=axis, keepdims=True), eps)
    return (a / na * (b / nb)).sum(axis)


def probs(*shape):
    """Rows of class probabilities (the last axis sums to 1, every entry > 0)."""
    return lambda rng: rng.dirichlet(np.ones(shape[-1]), shape[:-1])


def inside(*shape):
    """Probabilities in [0.1, 0.9]: away from BCE's clamp at 0 and 1."""
    return lambda rng: rng.uniform(0.1, 0.9, shape)


def log_probs(*shape):
    return lambda rng: _log_softmax(rng.standard_normal(shape))


def with_ignored(high, *shape):
    """Class indices with the first position set to -100 (ignored)."""
    def make(rng):
        t = rng.integers(0, high, shape)
        t.flat[0] = -100
        return t
    return make


def spread(*shape):
    """Values with |v| in [0.2, 0.5] or [1.3, 3]: never near the kinks at 0.7 and 1."""
    def make(rng):
        small, large = rng.uniform(0.2, 0.5, shape), rng.uniform(1.3, 3.0, shape)
        return np.where(rng.random(shape) < 0.5, small, large) * rng.choice([-1.0, 1.0], shape)
    return make


CASES = [
    # ---- nll_loss: (N, C), weights, ignore_index, (N, C, d) with the class axis 1, (C,)
    C("nll_loss", F.nll_loss, _nll, log_probs(6, 5), ints(5, 6)),
    C("nll_loss_weight_ignore", lambda x, t: F.nll_loss(x, t, weight=W5),
      lambda x, t: _nll(x, t, W5), normal(7, 5), with_ignored(5, 7)),
    C("nll_loss_sum_3d", lambda x, t: F.nll_loss(x, t, reduction="sum", ignore_index=2),
      lambda x, t: _nll(x, t, ignore_index=2, reduction="sum"), normal(2, 4, 3), ints(4, 2, 3)),
    C("nll_loss_none_4d_weight", lambda x, t: F.nll_loss(x, t, weight=W5, reduction="none"),
      lambda x, t: _nll(x, t, W5, reduction="none"), normal(2, 5, 3, 2), with_ignored(5, 2, 3, 2)),
    C("nll_loss_vector", F.nll_loss, _nll, log_probs(4), const(3)),
    # ---- cross_entropy with class-probability targets (the target is differentiated too)
    C("cross_entropy_probs", F.cross_entropy, _soft_ce, normal(6, 5), probs(6, 5)),
    C("cross_entropy_probs_smooth_sum", lambda z, q: F.cross_entropy(
        z, q, reduction="sum", label_smoothing=0.2),
      lambda z, q: _soft_ce(z, q, reduction="sum", eps=0.2), normal(4, 3), probs(4, 3)),
    C("cross_entropy_probs_weight_none_3d", lambda z, q: F.cross_entropy(
        z, q, weight=W5, reduction="none", label_smoothing=0.1),
      lambda z, q: _soft_ce(z, q, W5, "none", 0.1), normal(2, 3, 5), probs(2, 3, 5)),
    # ---- cross_entropy with class weights on class-index targets (log_softmax + nll_loss)
    C("cross_entropy_weight", lambda z, t: F.cross_entropy(z, t, weight=W5),
      lambda z, t: _weighted_ce(z, t, W5), normal(6, 5), with_ignored(5, 6)),
    C("cross_entropy_weight_smooth", lambda z, t: F.cross_entropy(
        z, t, weight=W5, label_smoothing=0.2),
      lambda z, t: _weighted_ce(z, t, W5, eps=0.2), normal(6, 5), with_ignored(5, 6)),
    C("cross_entropy_weight_smooth_none_3d", lambda z, t: F.cross_entropy(
        z, t, weight=W5, label_smoothing=0.1, reduction="none"),
      lambda z, t: _weighted_ce(z, t, W5, "none", 0.1), normal(2, 3, 5), ints(5, 2, 3)),
    # ---- binary cross-entropy on probabilities (soft targets, a weight)
    C("binary_cross_entropy", F.binary_cross_entropy, _bce, inside(3, 4), inside(3, 4)),
    C("binary_cross_entropy_weight_sum", lambda p, y: F.binary_cross_entropy(
        p, y, weight=W5[:4], reduction="sum"),
      lambda p, y: _bce(p, y, W5[:4], "sum"), inside(2, 4), inside(2, 4)),
    C("binary_cross_entropy_none", lambda p, y: F.binary_cross_entropy(p, y, reduction="none"),
      lambda p, y: _bce(p, y, reduction="none"), inside(5), inside(5)),
    # ---- kl_div: every reduction, log_target
    C("kl_div", F.kl_div, _kl, log_probs(3, 4), probs(3, 4)),
    C("kl_div_batchmean", lambda x, y: F.kl_div(x, y, reduction="batchmean"),
      lambda x, y: _kl(x, y, "batchmean"), normal(4, 3), positive(4, 3)),
    C("kl_div_sum_log_target", lambda x, y: F.kl_div(x, y, reduction="sum", log_target=True),
      lambda x, y: _kl(x, y, "sum", True), log_probs(2, 5), log_probs(2, 5)),
    C("kl_div_none_log_target", lambda x, y: F.kl_div(x, y, reduction="none", log_target=True),
      lambda x, y: _kl(x, y, "none", True), normal(2, 3), normal(2, 3)),
    # ---- smooth L1 and Huber: both sides of the kink, beta = 0 (L1)
    C("smooth_l1_loss", F.smooth_l1_loss, _smooth_l1, spread(3, 4), const(np.zeros((3, 4)))),
    C("smooth_l1_loss_beta_sum", lambda x, y: F.smooth_l1_loss(x, y, "sum", beta=0.7),
      lambda x, y: _smooth_l1(x, y, "sum", 0.7), spread(6), const(np.zeros(6))),
    C("smooth_l1_loss_l1_none", lambda x, y: F.smooth_l1_loss(x, y, "none", beta=0.0),
      lambda x, y: _smooth_l1(x, y, "none", 0.0), away_from_zero(2, 3), const(np.zeros((2, 3)))),
    C("huber_loss", F.huber_loss, _huber, spread(3, 4), const(np.zeros((3, 4)))),
    C("huber_loss_delta_none", lambda x, y: F.huber_loss(x, y, "none", delta=0.7),
      lambda x, y: _huber(x, y, "none", 0.7), spread(2, 3), const(np.zeros((2, 3)))),
    # ---- cosine similarity: PyTorch's default axis 1, the last axis with broadcasting
    C("cosine_similarity", F.cosine_similarity, _cosine, normal(4, 5), normal(4, 5)),
    C("cosine_similarity_bcast_dim", lambda a, b: F.cosine_similarity(a, b, dim=-1),
      lambda a, b: _cosine(a, b, axis=-1), normal(2, 1, 3), normal(4, 3)),
    C("cosine_similarity_vectors", lambda a, b: F.cosine_similarity(a, b, axis=0),
      lambda a, b: _cosine(a, b, axis=0), normal(6), normal(6)),
]

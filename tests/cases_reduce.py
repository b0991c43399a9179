"""Op cases (tests/test_ops.py runs them): reductions and scans of issue 19 (min, prod, std,
logsumexp, cumsum, cumprod, sort, topk; the dim/keepdim spellings; 0-d and empty inputs)."""
import numpy as np

from tinyllm import functional as F
from tests.op_cases import C, const, distinct, normal, positive


def _logsumexp(a, axis=None, keepdims=False):
    m = a.max(axis=axis, keepdims=True)
    out = m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


def _topk(a, k, axis, largest):
    order = np.argsort(-a if largest else a, axis=axis, kind="stable")
    return np.take_along_axis(a, np.take(order, np.arange(k), axis=axis), axis=axis)


ZEROS_ONE = [[0.0, 1.5, -2.0, 0.5], [1.2, -0.7, 0.9, 2.0], [0.0, 0.0, 3.0, -1.0]]   # 1, 0, 2 zeros
CUMPROD_ZEROS = [[0.0, 2.0, 0.0, 3.0], [1.5, 0.0, 2.0, -3.0], [1.0, 2.0, 0.5, -4.0]]

CASES = [
    # ---- min: Max mirrored (distinct values: no ties)
    C("min_all", lambda a: a.min(), np.min, distinct(3, 4)),
    C("min_axis", lambda a: F.min(a, axis=1), lambda a: a.min(axis=1), distinct(2, 3, 4)),
    C("min_dim_keepdim", lambda a: F.min(a, dim=(0, -1), keepdim=True),
      lambda a: a.min(axis=(0, -1), keepdims=True), distinct(2, 3, 4)),
    # ---- prod, with one and several zeros in a row
    C("prod_all", lambda a: a.prod(), np.prod, positive(2, 3)),
    C("prod_axis", lambda a: F.prod(a, axis=0), lambda a: a.prod(axis=0), normal(3, 4)),
    C("prod_zeros_rows", lambda a: F.prod(a, dim=1, keepdim=True),
      lambda a: a.prod(axis=1, keepdims=True), const(ZEROS_ONE)),
    C("prod_zeros_all", lambda a: F.prod(a), np.prod, const([[0.0, 1.5], [2.0, -0.5]])),
    C("prod_two_zeros_all", lambda a: F.prod(a), np.prod, const([0.0, 1.5, 0.0, -0.5])),
    # ---- std: ddof / correction / unbiased
    C("std_all", lambda a: a.std(), np.std, normal(3, 4)),
    C("std_axis_ddof1", lambda a: F.std(a, axis=0, ddof=1), lambda a: a.std(axis=0, ddof=1),
      normal(4, 3)),
    C("std_correction_keep", lambda a: a.std(dim=-1, correction=1, keepdim=True),
      lambda a: a.std(axis=-1, ddof=1, keepdims=True), normal(2, 5)),
    C("std_unbiased", lambda a: F.std(a, axis=1, unbiased=True), lambda a: a.std(axis=1, ddof=1),
      normal(3, 4)),
    C("var_correction", lambda a: F.var(a, dim=1, correction=1),
      lambda a: a.var(axis=1, ddof=1), normal(3, 4)),
    # ---- logsumexp: stable for large inputs
    C("logsumexp_all", lambda a: F.logsumexp(a), _logsumexp, normal(3, 4)),
    C("logsumexp_axis", lambda a: a.logsumexp(dim=1), lambda a: _logsumexp(a, 1),
      normal(2, 3, 4)),
    C("logsumexp_keep_large", lambda a: F.logsumexp(a * 1e3, axis=-1, keepdims=True),
      lambda a: _logsumexp(a * 1e3, -1, True), normal(3, 5), tol32=1e-4),
    # ---- the dim/keepdim spellings on the old reductions, and sum(axis=-1) of a 0-d tensor
    C("sum_dim_keepdim", lambda a: a.sum(dim=1, keepdim=True),
      lambda a: a.sum(axis=1, keepdims=True), normal(3, 4)),
    C("mean_dim", lambda a: F.mean(a, dim=(0, 2)), lambda a: a.mean(axis=(0, 2)),
      normal(2, 3, 4)),
    C("max_dim_keepdim", lambda a: a.max(dim=0, keepdim=True),
      lambda a: a.max(axis=0, keepdims=True), distinct(3, 4)),
    C("sum_0d_axis_neg1", lambda a: a.sum(axis=-1), lambda a: a, normal()),
    C("max_0d_dim0", lambda a: F.max(a, dim=0), lambda a: a, normal()),
    C("softmax_0d", lambda a: F.softmax(a, axis=0), np.ones_like, normal()),
    C("log_softmax_0d", lambda a: F.log_softmax(a, axis=-1), np.zeros_like, normal()),
    # ---- scans
    C("cumsum_axis1", lambda a: F.cumsum(a, axis=1), lambda a: np.cumsum(a, axis=1),
      normal(3, 4)),
    C("cumsum_flat", lambda a: a.cumsum(), np.cumsum, normal(2, 3)),
    C("cumsum_dim0", lambda a: a.cumsum(dim=0), lambda a: np.cumsum(a, axis=0), normal(3, 2, 2)),
    C("cumprod_axis", lambda a: F.cumprod(a, axis=-1), lambda a: np.cumprod(a, axis=-1),
      normal(3, 4)),
    C("cumprod_zeros", lambda a: F.cumprod(a, dim=1), lambda a: np.cumprod(a, axis=1),
      const(CUMPROD_ZEROS)),
    C("cumprod_zeros_axis0", lambda a: F.cumprod(a, axis=0), lambda a: np.cumprod(a, axis=0),
      const(np.array(CUMPROD_ZEROS).T.copy())),
    # ---- sort and topk: values gathered at argsort's indices
    C("sort_last", lambda a: F.sort(a)[0], lambda a: np.sort(a, axis=-1), distinct(3, 4)),
    C("sort_axis0_descending", lambda a: a.sort(dim=0, descending=True)[0],
      lambda a: -np.sort(-a, axis=0), distinct(4, 3)),
    C("topk_largest", lambda a: F.topk(a, 2)[0], lambda a: _topk(a, 2, -1, True),
      distinct(3, 5)),
    C("topk_smallest_axis0", lambda a: a.topk(3, dim=0, largest=False)[0],
      lambda a: _topk(a, 3, 0, False), distinct(4, 2, 3)),
]

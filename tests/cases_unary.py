"""Op cases for tinyllm/ops/unary.py and tinyllm/ops/minmax.py (abs, sign, clip/clamp, minimum,
maximum, rsqrt, sin, cos, erf, exp2, log2, log1p, expm1, square, reciprocal, floor, ceil, round,
trunc), run by tests/test_ops.py: forward against NumPy, float64 gradcheck, float32 against
float64. Inputs stay off the kinks and ties (ties are checked against PyTorch in
tests/test_ops_unary.py).
"""
import math

import numpy as np

from tinyllm import functional as F
from tests.op_cases import C, away_from_zero, normal, positive


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def uniform(lo, hi, *shape):
    return lambda rng: rng.uniform(lo, hi, shape)


def wide(*shape):
    """Normal values times 3: several integers apart, for the rounding ops."""
    return lambda rng: rng.standard_normal(shape) * 3


CASES = [
    # ---- sign and magnitude
    C("abs", F.abs, np.abs, away_from_zero(3, 4)),
    C("abs_operator", lambda a: abs(a) * a.abs(), lambda a: np.abs(a) ** 2, away_from_zero(5)),
    C("sign", lambda a: F.sign(a) * a, lambda a: np.sign(a) * a, away_from_zero(3, 4)),
    # ---- clip / clamp: scalar bounds, one bound, tensor bounds, crossed bounds
    C("clip_scalar", lambda a: F.clip(a, -0.5, 0.8), lambda a: np.clip(a, -0.5, 0.8),
      normal(4, 5)),
    C("clip_min_only", lambda a: a.clamp(min=-0.3), lambda a: np.maximum(a, -0.3), normal(3, 4)),
    C("clip_max_only", lambda a: a.clip(max=0.4), lambda a: np.minimum(a, 0.4), normal(3, 4)),
    C("clip_tensor_bounds", F.clamp, lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi),
      normal(3, 4), uniform(-1.0, -0.2, 4), uniform(0.2, 1.0, 3, 1)),
    C("clip_tensor_min_only", lambda x, lo: F.clip(x, lo), lambda x, lo: np.maximum(x, lo),
      normal(2, 3), normal(3)),
    C("clip_crossed_bounds", lambda x, lo, hi: F.clip(x, lo, hi),
      lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi), normal(4), uniform(1.0, 2.0, 4),
      uniform(-2.0, -1.0, 4)),
    # ---- minimum / maximum with broadcasting (no ties)
    C("maximum", F.maximum, np.maximum, normal(3, 4), normal(4)),
    C("maximum_scalar", lambda a: a.maximum(0.3), lambda a: np.maximum(a, 0.3), normal(2, 5)),
    C("minimum", F.minimum, np.minimum, normal(2, 1, 3), normal(4, 1)),
    C("minimum_method", lambda a, b: a.minimum(b), np.minimum, normal(3), normal(3)),
    # ---- unary math
    C("rsqrt", F.rsqrt, lambda a: 1 / np.sqrt(a), positive(3, 4)),
    C("sin", F.sin, np.sin, normal(3, 4)),
    C("cos", F.cos, np.cos, normal(3, 4)),
    C("erf", F.erf, _erf, normal(3, 4)),
    C("erf_wide", lambda a: a.erf(), _erf, uniform(-5.0, 5.0, 20)),
    C("exp2", F.exp2, np.exp2, normal(3, 4)),
    C("log2", F.log2, np.log2, positive(3, 4)),
    C("log1p", F.log1p, np.log1p, uniform(-0.5, 2.0, 3, 4)),
    C("log1p_tiny", F.log1p, np.log1p, uniform(-1e-9, 1e-9, 4)),
    C("expm1", F.expm1, np.expm1, normal(3, 4)),
    C("square", F.square, np.square, normal(3, 4)),
    C("reciprocal", F.reciprocal, lambda a: 1 / a, away_from_zero(3, 4)),
    C("unary_method_chain", lambda a: a.sin().square() + a.cos().exp2() + a.expm1().log1p(),
      lambda a: np.sin(a) ** 2 + np.exp2(np.cos(a)) + np.log1p(np.expm1(a)), positive(2, 3)),
    # ---- rounding: zero gradient (as PyTorch); `* a` keeps a graph with a nonzero gradient
    C("floor", lambda a: F.floor(a) * a, lambda a: np.floor(a) * a, wide(3, 4)),
    C("ceil", lambda a: F.ceil(a) * a, lambda a: np.ceil(a) * a, wide(3, 4)),
    C("round", lambda a: F.round(a) * a, lambda a: np.round(a) * a, wide(3, 4)),
    C("round_decimals", lambda a: a.round(decimals=1), lambda a: np.round(a, 1), wide(3, 4)),
    C("trunc", lambda a: a.trunc() * a, lambda a: np.trunc(a) * a, wide(3, 4)),
]

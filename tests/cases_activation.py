"""Op cases for tinyllm/ops/activation.py (SiLU, softplus, leaky ReLU, ELU, Mish, log-sigmoid,
hardtanh, relu6, softsign), run by tests/test_ops.py: forward against NumPy, float64 gradcheck,
float32 against float64. Inputs stay away from the kinks (away_from_zero, bounds off the grid).
"""
import numpy as np

from tinyllm import functional as F
from tests.op_cases import C, away_from_zero, const, normal


def _sig(a):
    return 1 / (1 + np.exp(-a))


WIDE = const([-40.0, -5.0, -0.3, 0.7, 5.0, 40.0])         # saturated tails on both sides

CASES = [
    C("silu", F.silu, lambda a: a * _sig(a), normal(3, 4)),
    C("silu_wide", F.silu, lambda a: a * _sig(a), WIDE),
    C("silu_method", lambda a: a.silu(), lambda a: a * _sig(a), normal(2, 3)),
    C("softplus", F.softplus, lambda a: np.log1p(np.exp(a)), normal(3, 4)),
    C("softplus_beta_threshold", lambda a: F.softplus(a, beta=2.0, threshold=1.5),
      lambda a: np.where(2 * a > 1.5, a, np.log1p(np.exp(2 * a)) / 2), away_from_zero(4, 5)),
    C("softplus_wide", F.softplus, lambda a: np.where(a > 20, a, np.log1p(np.exp(a))), WIDE),
    C("leaky_relu", F.leaky_relu, lambda a: np.where(a > 0, a, 0.01 * a), away_from_zero(3, 4)),
    C("leaky_relu_slope", lambda a: F.leaky_relu(a, negative_slope=0.2),
      lambda a: np.where(a > 0, a, 0.2 * a), away_from_zero(5)),
    C("elu", F.elu, lambda a: np.where(a > 0, a, np.expm1(a)), away_from_zero(3, 4)),
    C("elu_alpha", lambda a: F.elu(a, alpha=0.5), lambda a: np.where(a > 0, a, 0.5 * np.expm1(a)),
      away_from_zero(6)),
    C("mish", F.mish, lambda a: a * np.tanh(np.log1p(np.exp(a))), normal(3, 4)),
    C("mish_wide", F.mish, lambda a: a * np.tanh(np.logaddexp(0, a)), WIDE),
    C("logsigmoid", F.logsigmoid, lambda a: -np.log1p(np.exp(-a)), normal(3, 4)),
    C("logsigmoid_wide", F.logsigmoid, lambda a: -np.logaddexp(0, -a), WIDE),
    C("hardtanh", F.hardtanh, lambda a: np.clip(a, -1, 1),
      const([-2.5, -1.5, -0.7, -0.2, 0.3, 0.9, 1.4, 3.0])),
    C("hardtanh_bounds", lambda a: F.hardtanh(a, min_val=-0.5, max_val=2.0),
      lambda a: np.clip(a, -0.5, 2.0), away_from_zero(3, 4)),
    C("relu6", F.relu6, lambda a: np.clip(a, 0, 6), const([-1.0, 0.5, 3.0, 5.5, 6.5, 9.0])),
    C("softsign", F.softsign, lambda a: a / (1 + np.abs(a)), away_from_zero(3, 4)),
]

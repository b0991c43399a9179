"""Cases of the normalization family added by issue 19: RMSNorm (LLaMA's norm).

LayerNorm's cases stay in tests/test_ops.py; these run through the same harness."""
import numpy as np

from tests.op_cases import C, normal, positive
from tinyllm import functional as F


def _rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w


CASES = [
    C("rms_norm", lambda x, w: F.rms_norm(x, 5, w, eps=1e-6),
      lambda x, w: _rms_norm(x, w, 1e-6), normal(2, 3, 5), normal(5), tol32=1e-4),
    C("rms_norm_no_weight", lambda x: F.rms_norm(x, (4,), eps=1e-5),
      lambda x: _rms_norm(x, 1.0, 1e-5), normal(6, 4), tol32=1e-4),
    C("rms_norm_large_eps_positive", lambda x, w: F.rms_norm(x, 3, w, eps=0.5),
      lambda x, w: _rms_norm(x, w, 0.5), positive(4, 3), normal(3), tol32=1e-4),
]

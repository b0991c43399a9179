"""Helpers the models share."""
import numpy as np

from tinyllm import backend
from tinyllm.autograd.tensor import Tensor


def token_ids(t):
    """Token ids as an array (from a Tensor, a NumPy/CuPy array or nested lists)."""
    t = t.data if isinstance(t, Tensor) else t
    return np.asarray(t) if backend.get_array_module(t) is np else t

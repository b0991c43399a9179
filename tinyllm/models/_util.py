"""Helpers the models share."""
import numpy as np

from tinyllm import backend
from tinyllm.autograd.tensor import Tensor


def token_ids(t):
    """Token ids as an array (from a Tensor, a NumPy/CuPy array or nested lists)."""
    t = t.data if isinstance(t, Tensor) else t
    return np.asarray(t) if backend.get_array_module(t) is np else t


def token_loss(logits, targets, ignore_index=-100):
    """The mean cross-entropy of logits (B, T, V) against target ids (B, T), the positions
    whose target is ``ignore_index`` left out: every sequence model's training loss."""
    from tinyllm import functional as F
    B, T, V = logits.shape
    return F.cross_entropy(logits.reshape(B * T, V), token_ids(targets).reshape(B * T),
                           ignore_index=ignore_index)

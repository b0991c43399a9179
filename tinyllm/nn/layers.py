"""The basic layers: Linear, Embedding, LayerNorm, RMSNorm, Dropout, and activation modules.

Each is a thin Module around one op of ``tinyllm.functional``; the math and its backward live
in the op (tinyllm/ops/). Initialisations follow PyTorch's defaults, drawn from the generator
seeded by ``tinyllm.manual_seed`` so that seeded models are reproducible.
"""
import math

import numpy as np

from tinyllm import backend
from tinyllm import functional as F
from tinyllm.nn.module import Module, Parameter


def _uniform(shape, bound, dtype):
    """U(-bound, bound) from the seeded generator, as an array on the default device."""
    gen = backend.get_generator(backend.default_device())
    return (gen.random(shape) * (2 * bound) - bound).astype(dtype)


def _normal(shape, std, dtype):
    gen = backend.get_generator(backend.default_device())
    return (gen.standard_normal(shape) * std).astype(dtype)


def _dtype(dtype):
    return np.dtype(dtype) if dtype is not None else backend.get_default_dtype()


class Linear(Module):
    """y = x @ W + b, with W stored as (in_features, out_features).

    That is the layout the derivations write (and GPT-2 checkpoints store, as Conv1D), so
    ``weight`` maps one-to-one; PyTorch's nn.Linear stores the transpose (out, in).
    Init as PyTorch: W, b ~ U(-1/sqrt(in), 1/sqrt(in)).

    Shapes: x (..., in_features) -> y (..., out_features).
    """

    def __init__(self, in_features, out_features, bias=True, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        dt = _dtype(dtype)
        self.weight = Parameter(_uniform((in_features, out_features), bound, dt))
        if bias:
            self.bias = Parameter(_uniform((out_features,), bound, dt))
        else:
            self.register_parameter("bias", None)

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear: input's last axis is {x.shape[-1]}, expected "
                             f"in_features={self.in_features} (input shape {x.shape})")
        return F.linear(x, self.weight, self.bias)            # x @ W + b as one op

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Embedding(Module):
    """A lookup table: ids (...) -> rows of ``weight`` (num_embeddings, embedding_dim).

    Init N(0, 1) as PyTorch. With ``padding_idx``, that row starts at zero and receives no
    gradient (padding tokens never move it).
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(f"Embedding: padding_idx {padding_idx} out of range for "
                             f"{num_embeddings} embeddings")
        self.padding_idx = None if padding_idx is None else padding_idx % num_embeddings
        w = _normal((num_embeddings, embedding_dim), 1.0, _dtype(dtype))
        if self.padding_idx is not None:
            w[self.padding_idx] = 0
        self.weight = Parameter(w)

    def forward(self, idx):
        return F.embedding(idx, self.weight, padding_idx=self.padding_idx)

    def extra_repr(self):
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class LayerNorm(Module):
    """Layer normalization over the trailing ``normalized_shape`` axes, with a learned scale
    (init ones) and shift (init zeros)."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else \
            tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        dt = _dtype(dtype)
        xp = backend.xp_for_device(backend.default_device())
        if elementwise_affine:
            self.weight = Parameter(xp.ones(shape, dt))
            if bias:
                self.bias = Parameter(xp.zeros(shape, dt))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class RMSNorm(Module):
    """RMS normalization over the last axis, with a learned scale (init ones) and no shift:
    y = x / sqrt(mean(x^2) + eps) * weight (LLaMA's norm; Hugging Face's LlamaRMSNorm)."""

    def __init__(self, normalized_shape, eps=1e-6, dtype=None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else \
            tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        xp = backend.xp_for_device(backend.default_device())
        self.weight = Parameter(xp.ones(shape, _dtype(dtype)))

    def forward(self, x):
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class Dropout(Module):
    """Zero each element with probability ``p`` while training; identity in eval mode."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: probability p must be in [0, 1], got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, training=self.training)

    def extra_repr(self):
        return f"p={self.p}"


class GELU(Module):
    """GELU activation; ``approximate="tanh"`` for GPT-2's form."""

    def __init__(self, approximate="none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)

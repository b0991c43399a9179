"""Every op in functional form, as ``torch.nn.functional`` / ``tinyllm.functional as F``.

Each function validates its arguments (raising errors that name the op and the shapes it got)
and calls one named ``Function`` from ``tinyllm.ops``, where forward, backward and the
derivation sit together.
"""
from tinyllm.ops.attention import attention, qkv_self_attention
from tinyllm.ops.creation import (arange, full, full_like, ones, ones_like, rand, randn,
                                  randn_like, tensor, zeros, zeros_like)
from tinyllm.ops.dropout import dropout
from tinyllm.ops.elementwise import (add, astype, compare, div, exp, gelu, log, masked_fill, mul,
                                     neg, pow, relu, sigmoid, sqrt, sub, tanh, to_device, where)
from tinyllm.ops.embedding import embedding
from tinyllm.ops.loss import (binary_cross_entropy_with_logits, cross_entropy, gaussian_kl,
                              mse_loss)
from tinyllm.ops.matmul import linear, matmul
from tinyllm.ops.movement import (cat, concatenate, getitem, permute, reshape, split, stack,
                                  swapaxes, transpose)
from tinyllm.ops.norm import layer_norm
from tinyllm.ops.reduce import max, mean, sum, var
# issue 19: reductions, scans, indexing
from tinyllm.ops.indexing import (gather, index_select, masked_select, one_hot, scatter_add,
                                  take_along_axis)
from tinyllm.ops.reduce import all, any, argmax, argmin, logsumexp, min, prod, std
from tinyllm.ops.scan import cumprod, cumsum, sort, topk
from tinyllm.ops.rnn import lstm, lstm_cell
from tinyllm.ops.softmax import log_softmax, softmax
# issue 19: shape and movement, linear algebra, factories
from tinyllm.ops.conv import conv1d
from tinyllm.ops.creation import (empty, eye, linspace, randint, tril_indices,
                                  triu_indices)
from tinyllm.ops.linalg import diagonal, einsum, outer, tril, triu
from tinyllm.ops.shape import (broadcast_to, chunk, expand, expand_dims, flatten, flip, pad,
                               repeat, repeat_interleave, roll, squeeze, tile, unflatten,
                               unsqueeze)
# today's small decoder (issue 19): RMSNorm, RoPE
from tinyllm.ops.norm import rms_norm
from tinyllm.ops.rope import rope, rope_cos_sin
# issue 19: unary math and activations
from tinyllm.ops.activation import (elu, hardtanh, leaky_relu, logsigmoid, mish, relu6,
                                    silu, softplus, softsign, swish)
from tinyllm.ops.minmax import clamp, clip, maximum, minimum
from tinyllm.ops.unary import (abs, ceil, cos, erf, exp2, expm1, floor, isfinite, isinf,
                               isnan, log1p, log2, logical_and, logical_not, logical_or,
                               logical_xor, reciprocal, round, rsqrt, sign, sin, square,
                               trunc)
# issue 19: losses
from tinyllm.ops.losses import binary_cross_entropy, kl_div, nll_loss
from tinyllm.ops.regression import cosine_similarity, huber_loss, smooth_l1_loss

__all__ = [
    "add", "sub", "mul", "div", "pow", "neg", "exp", "log", "sqrt", "tanh", "sigmoid", "relu",
    "gelu", "where", "masked_fill", "astype", "to_device", "compare",
    "sum", "mean", "max", "var",
    "reshape", "permute", "transpose", "swapaxes", "getitem", "concatenate", "cat", "stack",
    "split",
    "matmul", "linear", "softmax", "log_softmax", "cross_entropy", "mse_loss",
    "binary_cross_entropy_with_logits", "gaussian_kl", "layer_norm",
    "dropout", "embedding", "attention", "qkv_self_attention", "lstm", "lstm_cell",
    "tensor", "zeros", "ones", "full", "arange", "randn", "rand", "zeros_like", "ones_like",
    "full_like", "randn_like",
]
__all__ += ["rms_norm", "rope", "rope_cos_sin"]                 # issue 19: the decoder
__all__ += ["squeeze", "unsqueeze", "expand_dims", "expand", "broadcast_to", "repeat",  # 19
            "tile", "repeat_interleave", "flip", "roll", "flatten", "unflatten", "pad", "chunk",
            "triu", "tril", "diagonal", "einsum", "outer", "conv1d", "eye", "linspace", "empty",
            "randint", "tril_indices", "triu_indices"]
__all__ += ["min", "prod", "std", "logsumexp", "argmax", "argmin", "all", "any",  # issue 19
            "cumsum", "cumprod", "sort", "topk", "gather", "take_along_axis",
            "scatter_add", "index_select", "one_hot", "masked_select"]
__all__ += ["silu", "swish", "softplus", "leaky_relu", "elu", "mish", "logsigmoid",  # issue 19
            "hardtanh", "relu6", "softsign"]
__all__ += ["abs", "sign", "clip", "clamp", "minimum", "maximum", "rsqrt", "sin", "cos",  # 19
            "erf", "exp2", "log2", "log1p", "expm1", "square", "reciprocal", "floor", "ceil",
            "round", "trunc", "isnan", "isinf", "isfinite", "logical_and", "logical_or",
            "logical_not", "logical_xor"]
__all__ += ["nll_loss", "binary_cross_entropy", "kl_div", "smooth_l1_loss",  # issue 19
            "huber_loss", "cosine_similarity"]

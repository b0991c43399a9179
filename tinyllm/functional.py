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
from tinyllm.ops.rnn import lstm, lstm_cell
from tinyllm.ops.softmax import log_softmax, softmax

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

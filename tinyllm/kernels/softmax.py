"""Numba kernels for softmax over the last axis, forward and backward.

The formula and its derivation: tinyllm/ops/softmax.py, ``Softmax``, whose forward and backward
call these kernels when the switch is on (``tinyllm.dispatch.accelerator``); tests hold the two
equal (tests/test_kernels.py, tests/test_kernels_nonfinite.py).

Passes per row: forward three (max; exp and sum; scale), backward two (dot; combine). The
formula makes the same passes as whole-array operations, with temporaries the size of x; the
kernels need none. Rows run in parallel (``prange``) above the size where a parallel launch
pays (kernels/_numba.py), each iteration reading and writing only its own row.

The exp is tinyllm.kernels._math.exp: Numba's own is a scalar library call here (no SVML in
PyPI's llvmlite), which kept the loop from vectorizing.

NaN and infinities, as the formula: the max (``_math.row_max``) skips NaNs, but a NaN still
reaches the sum of exps, so its row comes out NaN; a row of -inf and NaN alone has max -inf like
a fully masked row, and ``masked_row_fill`` tells the two apart (zeros for the masked row, NaN
otherwise). A +inf entry makes the row NaN (e^(inf - inf)), as in the formula and PyTorch.

Shapes: x, y, dout, dx (..., C), seen as (N, C) rows, N = prod(...).
"""
import numpy as np

from tinyllm.kernels._math import softmax_row
from tinyllm.kernels._numba import kernel, prange


@kernel
def _softmax_forward_numba(x, y):
    N = x.shape[0]
    for n in prange(N):
        softmax_row(x[n], y[n])                   # 1-D row views: the loops vectorize


@kernel
def _softmax_backward_numba(y, dout, dx):
    N, C = y.shape
    for n in prange(N):
        yr, doutr, dxr = y[n], dout[n], dx[n]
        dot = y.dtype.type(0)
        for c in range(C):
            dot += doutr[c] * yr[c]
        for c in range(C):
            dxr[c] = yr[c] * (doutr[c] - dot)


def softmax_forward(x):
    """softmax of the float array ``x`` (..., C) over its last axis (non-empty)."""
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)                   # (..., C) -> (N, C)
    y2 = np.empty_like(x2)
    _softmax_forward_numba.run(x2.size, x2, y2)
    return y2.reshape(x.shape)


def softmax_backward(y, dout):
    """dx (..., C) from softmax's output ``y`` and the upstream gradient ``dout`` (same shape
    and dtype)."""
    C = y.shape[-1]
    y2 = np.ascontiguousarray(y).reshape(-1, C)                   # (..., C) -> (N, C)
    dout2 = np.ascontiguousarray(dout).reshape(-1, C)
    dx2 = np.empty_like(y2)
    _softmax_backward_numba.run(y2.size, y2, dout2, dx2)
    return dx2.reshape(y.shape)

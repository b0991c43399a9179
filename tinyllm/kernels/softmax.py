"""Softmax over the last axis: NumPy reference, Numba kernel, dispatcher.

    y_i = e^(x_i - m) / sum_j e^(x_j - m),   m = max_j x_j   (forward, per row)
    dx_j = y_j (dy_j - sum_i dy_i y_i)                       (backward: the softmax Jacobian
                                                               dy_i/dx_j = y_i([i==j] - y_j)
                                                               applied to dy)
Subtracting the row max keeps every exponent <= 0, so nothing overflows, even for logits of
1e4. A row whose entries are all -inf (a fully masked query) has no distribution: both versions
return zeros for it (not NaN), and its backward is zero.

NaN and +inf: a row holding a NaN gives NaN everywhere; a row holding +inf gives NaN too
(m = inf, and e^(inf - inf) is NaN), as in NumPy's formula and PyTorch. -inf entries beside
finite ones get exactly 0. Only an all -inf max is replaced (by 0): replacing any non-finite
max, as this file once did, turned a +inf row into [NaN, 0, 0, ...] and let finite entries
overflow. The Numba kernel's max skips NaNs (kernels/_math.py, ``row_max``); a NaN still
reaches the sum of exps, and a row of NaN and -inf alone is told from a masked one by
``masked_row_fill``. tests/test_kernels_nonfinite.py holds both versions equal on NaN and inf.

Shapes: x, y, dy, dx (..., C); the kernels see them as (N, C) rows, N = prod(...).

The Numba kernels run rows in parallel (``prange``): each iteration reads and writes only its
own row. Per row, forward makes three passes (max; exp and sum; scale), backward two (dot;
combine). NumPy makes the same passes but as whole-array operations with temporaries the size
of x; the kernels need none. The exp is tinyllm.kernels._math.exp: Numba's own is a scalar
library call here (no SVML in PyPI's llvmlite), which kept the loop from vectorizing.
"""
import numpy as np

from tinyllm import backend
from tinyllm.kernels._math import exp, masked_row_fill, row_max
from tinyllm.kernels._numba import choose, kernel, prange

AUTO_MIN_ELEMENTS = 1       # serial Numba beat NumPy from (2, 8) up; see benchmarks/RESULTS.md


# ----------------------------------------------------------------------------------------------
# reference (NumPy or CuPy)

def softmax_forward_reference(x, axis=-1):
    """y = softmax(x) along ``axis``, with all -inf rows giving zeros."""
    xp = backend.get_array_module(x)
    if x.size == 0:                               # max of an empty axis has no identity
        return xp.zeros_like(x)
    m = x.max(axis=axis, keepdims=True)           # NaN if the row has a NaN
    m = xp.where(m == -xp.inf, 0, m)              # all -inf row: x - 0 stays -inf, e = 0
    e = xp.exp(x - m)
    s = e.sum(axis=axis, keepdims=True)
    return e / xp.where(s == 0, 1, s)             # all -inf row: 0 / 1 = 0


def softmax_backward_reference(y, dy, axis=-1):
    """dx = y * (dy - sum(dy * y)) along ``axis``."""
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


# ----------------------------------------------------------------------------------------------
# Numba (rows of a C-contiguous (N, C) array)

@kernel
def _softmax_forward_numba(x, y):
    N, C = x.shape
    for n in prange(N):
        xr, yr = x[n], y[n]                       # 1-D row views: the loops vectorize
        m = row_max(xr)                           # NaN entries skipped: they reach s below
        if m == -np.inf:                          # fully masked row (zeros), or -inf and NaN
            fill = masked_row_fill(xr)
            for c in range(C):
                yr[c] = fill
            continue
        s = xr.dtype.type(0)
        for c in range(C):
            e = exp(xr[c] - m)                    # vectorizable exp (kernels/_math.py)
            yr[c] = e
            s += e
        inv = 1 / s
        for c in range(C):
            yr[c] *= inv


@kernel
def _softmax_backward_numba(y, dy, dx):
    N, C = y.shape
    for n in prange(N):
        yr, dyr, dxr = y[n], dy[n], dx[n]
        dot = y.dtype.type(0)
        for c in range(C):
            dot += dyr[c] * yr[c]
        for c in range(C):
            dxr[c] = yr[c] * (dyr[c] - dot)


# ----------------------------------------------------------------------------------------------
# dispatch

def _use_numba(impl, axis, *arrays):
    """Numba needs NumPy float arrays of one dtype, reduced over the last axis."""
    a = arrays[0]
    if backend.get_array_module(*arrays) is not np:
        if impl == "numba":
            raise ValueError("softmax: impl='numba' needs NumPy arrays, got CuPy arrays")
        return False
    eligible = (a.dtype.kind == "f" and a.ndim >= 1 and axis in (-1, a.ndim - 1)
                and all(b.dtype == a.dtype for b in arrays) and a.size > 0)
    if not eligible:
        if impl == "numba":
            raise ValueError(f"softmax: impl='numba' needs float arrays of one dtype reduced "
                             f"over the last axis, got dtype {a.dtype}, axis {axis}, shape "
                             f"{a.shape}")
        return False
    return choose(impl, a.size >= AUTO_MIN_ELEMENTS) == "numba"


def softmax_forward(x, axis=-1, impl=None):
    """softmax of ``x`` along ``axis`` (default last). ``impl``: None, "numpy" or "numba"."""
    if not _use_numba(impl, axis, x):
        return softmax_forward_reference(x, axis)
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)                   # (..., C) -> (N, C)
    y2 = np.empty_like(x2)
    _softmax_forward_numba.run(x2.size, x2, y2)
    return y2.reshape(x.shape)


def softmax_backward(y, dy, axis=-1, impl=None):
    """dx for softmax, from its output ``y`` and upstream gradient ``dy``."""
    if not _use_numba(impl, axis, y, dy):
        return softmax_backward_reference(y, dy, axis)
    C = y.shape[-1]
    y2 = np.ascontiguousarray(y).reshape(-1, C)                   # (..., C) -> (N, C)
    dy2 = np.ascontiguousarray(dy).reshape(-1, C)
    dx2 = np.empty_like(y2)
    _softmax_backward_numba.run(y2.size, y2, dy2, dx2)
    return dx2.reshape(y.shape)

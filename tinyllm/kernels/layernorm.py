"""Layer normalization over the last axis: NumPy reference, Numba kernel, dispatcher.

Forward, per row x (D values):
    mu = mean(x),  var = mean((x - mu)^2),  rstd = 1 / sqrt(var + eps)
    xhat = (x - mu) * rstd,  y = xhat * w + b
Backward, with dxhat = dy * w:
    dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    dw = sum over rows of dy * xhat,   db = sum over rows of dy
(the two means are the chain rule through mu and var; see tinyllm/ops/norm.py for the
derivation).

Forward saves mu and rstd (N,), not xhat (N, D); backward recomputes xhat in its pass.

dw and db sum over rows, which parallel row iterations must not write to at the same time.
The Numba backward splits the rows into chunks; each ``prange`` iteration handles one chunk and
adds into its own row of a (chunks, D) partial buffer; the partial rows are summed afterwards.

Shapes: x, y, dy, dx (N, D); w, b, dw, db (D,); mu, rstd (N,).
"""
import numpy as np

from tinyllm import backend
from tinyllm.kernels._numba import choose, kernel, prange

AUTO_MIN_ELEMENTS = 1       # serial Numba beat NumPy from (2, 8) up; see benchmarks/RESULTS.md
_CHUNKS = 16                      # partial buffers for dw, db: enough to keep 2-16 cores busy


# ----------------------------------------------------------------------------------------------
# reference (NumPy or CuPy)

def layer_norm_forward_reference(x, w, b, eps=1e-5):
    """y, mu, rstd for x (N, D)."""
    xp = backend.get_array_module(x)
    mu = x.mean(axis=1)
    xc = x - mu[:, None]
    rstd = 1 / xp.sqrt((xc * xc).mean(axis=1) + eps)
    return xc * rstd[:, None] * w + b, mu, rstd.astype(x.dtype)


def layer_norm_backward_reference(dy, x, w, mu, rstd):
    """dx, dw, db from the upstream dy (N, D) and the saved mu, rstd."""
    xhat = (x - mu[:, None]) * rstd[:, None]
    dxhat = dy * w
    dx = rstd[:, None] * (dxhat - dxhat.mean(axis=1, keepdims=True)
                          - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
    return dx, (dy * xhat).sum(axis=0), dy.sum(axis=0)


# ----------------------------------------------------------------------------------------------
# Numba

@kernel
def _layer_norm_forward_numba(x, w, b, eps, y, mu, rstd):
    N, D = x.shape
    for n in prange(N):
        xr, yr = x[n], y[n]
        s = x.dtype.type(0)
        for d in range(D):
            s += xr[d]
        m = s / D
        v = x.dtype.type(0)
        for d in range(D):
            v += (xr[d] - m) * (xr[d] - m)
        r = 1 / np.sqrt(v / D + eps)
        for d in range(D):
            yr[d] = (xr[d] - m) * r * w[d] + b[d]
        mu[n] = m
        rstd[n] = r


@kernel
def _layer_norm_backward_numba(dy, x, w, mu, rstd, dx, dw_part, db_part):
    N, D = x.shape
    chunks = dw_part.shape[0]
    rows = (N + chunks - 1) // chunks
    for k in prange(chunks):
        dwk, dbk = dw_part[k], db_part[k]                     # this chunk's own partial rows
        for n in range(k * rows, min(N, (k + 1) * rows)):
            xr, dyr, dxr = x[n], dy[n], dx[n]
            m, r = mu[n], rstd[n]
            mean_dxhat = x.dtype.type(0)
            mean_dxhat_xhat = x.dtype.type(0)
            for d in range(D):
                xhat = (xr[d] - m) * r
                dxhat = dyr[d] * w[d]
                mean_dxhat += dxhat
                mean_dxhat_xhat += dxhat * xhat
                dwk[d] += dyr[d] * xhat
                dbk[d] += dyr[d]
            mean_dxhat /= D
            mean_dxhat_xhat /= D
            for d in range(D):
                xhat = (xr[d] - m) * r
                dxr[d] = r * (dyr[d] * w[d] - mean_dxhat - xhat * mean_dxhat_xhat)


# ----------------------------------------------------------------------------------------------
# dispatch

def _use_numba(impl, x, w):
    if backend.get_array_module(x) is not np:
        if impl == "numba":
            raise ValueError("layer_norm: impl='numba' needs NumPy arrays, got CuPy arrays")
        return False
    if x.dtype.kind != "f" or x.ndim != 2 or x.size == 0 or w.dtype != x.dtype:
        if impl == "numba":
            raise ValueError(f"layer_norm: impl='numba' needs float (N, D) input with weights of "
                             f"the same dtype, got {x.dtype} {x.shape} and {w.dtype}")
        return False
    return choose(impl, x.size >= AUTO_MIN_ELEMENTS) == "numba"


def layer_norm_forward(x, w, b, eps=1e-5, impl=None):
    """y (N, D), mu (N,), rstd (N,) for x (N, D), weight w (D,), bias b (D,)."""
    if not _use_numba(impl, x, w):
        return layer_norm_forward_reference(x, w, b, eps)
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    mu = np.empty(x.shape[0], x.dtype)
    rstd = np.empty(x.shape[0], x.dtype)
    w, b = np.ascontiguousarray(w), np.ascontiguousarray(b, dtype=x.dtype)
    _layer_norm_forward_numba.run(x.size, x, w, b, x.dtype.type(eps), y, mu, rstd)
    return y, mu, rstd


def layer_norm_backward(dy, x, w, mu, rstd, impl=None):
    """dx (N, D), dw (D,), db (D,)."""
    if not _use_numba(impl, x, w):
        return layer_norm_backward_reference(dy, x, w, mu, rstd)
    x = np.ascontiguousarray(x)
    N, D = x.shape
    dx = np.empty_like(x)
    chunks = min(_CHUNKS, N)
    dw_part = np.zeros((chunks, D), x.dtype)
    db_part = np.zeros((chunks, D), x.dtype)
    dy, w = np.ascontiguousarray(dy, dtype=x.dtype), np.ascontiguousarray(w)
    _layer_norm_backward_numba.run(x.size, dy, x, w, mu, rstd, dx, dw_part, db_part)
    return dx, dw_part.sum(axis=0), db_part.sum(axis=0)

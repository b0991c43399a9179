"""Numba and CuPy kernels for layer normalization over the last axis, forward and backward.

The formula and its derivation: tinyllm/ops/norm.py, ``LayerNorm``, whose forward and backward
call these kernels when the switch is on (``tinyllm.dispatch.accelerator``); tests hold the two
equal (tests/test_kernels.py, tests/test_kernels_nonfinite.py).

Forward saves mu and rstd (N,), not xhat (N, D), as the formula does; backward recomputes xhat
in its pass. Forward makes three passes over a row (sum; squared deviations; write y), backward
two (the two means; write dx), where the formula makes about ten whole-array passes.

dw and db sum over rows, which parallel row iterations must not write to at the same time.
The Numba backward splits the rows into chunks; each ``prange`` iteration handles one chunk and
adds into its own row of a (chunks, D) partial buffer; the partial rows are summed afterwards.
On CuPy arrays a CUDA kernel does the same per row (one thread block a row, sums in double),
and dw, db are column reductions: 4 launches per forward + backward where the formula takes
~20.

Shapes: x, y, dout, dx (N, D); w, b, dw, db (D,); mu, rstd (N,).
"""
import numpy as np

from tinyllm import backend
from tinyllm.kernels._numba import kernel, prange

_CHUNKS = 16                      # partial buffers for dw, db: enough to keep 2-16 cores busy


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
def _layer_norm_backward_numba(dout, x, w, mu, rstd, dx, dw_part, db_part):
    N, D = x.shape
    chunks = dw_part.shape[0]
    rows = (N + chunks - 1) // chunks
    for k in prange(chunks):
        dwk, dbk = dw_part[k], db_part[k]                     # this chunk's own partial rows
        for n in range(k * rows, min(N, (k + 1) * rows)):
            xr, doutr, dxr = x[n], dout[n], dx[n]
            m, r = mu[n], rstd[n]
            mean_dxhat = x.dtype.type(0)
            mean_dxhat_xhat = x.dtype.type(0)
            for d in range(D):
                xhat = (xr[d] - m) * r
                dxhat = doutr[d] * w[d]
                mean_dxhat += dxhat
                mean_dxhat_xhat += dxhat * xhat
                dwk[d] += doutr[d] * xhat
                dbk[d] += doutr[d]
            mean_dxhat /= D
            mean_dxhat_xhat /= D
            for d in range(D):
                xhat = (xr[d] - m) * r
                dxr[d] = r * (doutr[d] * w[d] - mean_dxhat - xhat * mean_dxhat_xhat)


# ----------------------------------------------------------------------------------------------
# CuPy (GPU): one thread block per row, the row's sums reduced in double (warp shuffles, then
# across the block's warps through shared memory); dw, db as column reductions

_CUPY_LAYER_NORM_SOURCE = r"""
typedef TYPE T;

__device__ double block_sum(double v, double* sh) {
    // blockDim.x a multiple of 32, at most 1024; every thread gets the block's total
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();                        // sh[32] of the previous call has been read
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? sh[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) sh[32] = v;
    }
    __syncthreads();
    return sh[32];
}

extern "C" __global__ void NAME_forward(const T* x, const T* w, const T* b, const double eps,
                                        T* y, T* mu, T* rstd, const int D) {
    __shared__ double sh[33];
    const long long n = blockIdx.x;
    const T* xr = x + n * D;
    T* yr = y + n * D;
    double s = 0.0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) s += (double)xr[i];
    const double mean = block_sum(s, sh) / D;
    double q = 0.0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        const double d = (double)xr[i] - mean;
        q += d * d;
    }
    const T m = (T)mean, r = (T)(1.0 / sqrt(block_sum(q, sh) / D + eps));
    for (int i = threadIdx.x; i < D; i += blockDim.x) yr[i] = (xr[i] - m) * r * w[i] + b[i];
    if (threadIdx.x == 0) {
        mu[n] = m;
        rstd[n] = r;
    }
}

extern "C" __global__ void NAME_backward(const T* dout, const T* x, const T* w, const T* mu,
                                         const T* rstd, T* dx, const int D) {
    __shared__ double sh[33];
    const long long n = blockIdx.x;
    const T* xr = x + n * D;
    const T* doutr = dout + n * D;
    T* dxr = dx + n * D;
    const T m = mu[n], r = rstd[n];
    double s1 = 0.0, s2 = 0.0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        const T xhat = (xr[i] - m) * r, dxhat = doutr[i] * w[i];
        s1 += (double)dxhat;
        s2 += (double)dxhat * (double)xhat;
    }
    const T mean_dxhat = (T)(block_sum(s1, sh) / D);
    const T mean_dxhat_xhat = (T)(block_sum(s2, sh) / D);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        const T xhat = (xr[i] - m) * r, dxhat = doutr[i] * w[i];
        dxr[i] = r * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
    }
}
"""
_CUPY_THREADS = 128                  # per row: 4 warps


def _cupy_layer_norm_kernel(dtype, direction):
    ctype = {"f": "float", "d": "double"}[dtype.char]
    name = f"tinyllm_layer_norm_{ctype}"
    source = _CUPY_LAYER_NORM_SOURCE.replace("TYPE", ctype).replace("NAME", name)
    # --fmad=false: no contraction into FMAs, which would round differently from the formula
    # (dxhat - mean(dxhat) with dxhat = dout * w fused into one FMA is the product's rounding
    # error, not 0, when D = 1: measured 5.8e-6 where the formula gives 0)
    return backend.cupy_raw_kernel(f"{name}_{direction}", source, options=("--fmad=false",))


def _layer_norm_forward_cupy(x, w, b, eps):
    xp = backend.get_array_module(x)
    N, D = x.shape
    x = xp.ascontiguousarray(x)
    w, b = xp.ascontiguousarray(w), xp.ascontiguousarray(b, dtype=x.dtype)
    y = xp.empty_like(x)
    mu, rstd = xp.empty(N, x.dtype), xp.empty(N, x.dtype)
    _cupy_layer_norm_kernel(x.dtype, "forward")(
        (N,), (_CUPY_THREADS,), (x, w, b, np.float64(eps), y, mu, rstd, np.int32(D)))
    return y, mu, rstd


def _layer_norm_backward_cupy(dout, x, w, mu, rstd):
    xp = backend.get_array_module(x)
    N, D = x.shape
    dout, x = xp.ascontiguousarray(dout, dtype=x.dtype), xp.ascontiguousarray(x)
    w, mu, rstd = (xp.ascontiguousarray(a) for a in (w, mu, rstd))
    dx = xp.empty_like(x)
    _cupy_layer_norm_kernel(x.dtype, "backward")(
        (N,), (_CUPY_THREADS,), (dout, x, w, mu, rstd, dx, np.int32(D)))
    dw = backend.cupy_reduction_kernel(
        "tinyllm_layer_norm_dw", "T dout, T x, T mu, T rstd", "T dw", "dout * ((x - mu) * rstd)",
        "a + b", "dw = a", "0")(dout, x, mu[:, None], rstd[:, None], axis=0)   # (N, D) -> (D,)
    return dx, dw, dout.sum(axis=0)


# ----------------------------------------------------------------------------------------------
# the public wrappers: Numba for NumPy arrays, the CUDA kernel for CuPy arrays

def layer_norm_forward(x, w, b, eps=1e-5):
    """y (N, D), mu (N,), rstd (N,) for x (N, D) (non-empty, float32 or float64), weight w (D,)
    of x's dtype, bias b (D,)."""
    if backend.get_array_module(x) is not np:
        return _layer_norm_forward_cupy(x, w, b, eps)
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    mu = np.empty(x.shape[0], x.dtype)
    rstd = np.empty(x.shape[0], x.dtype)
    w, b = np.ascontiguousarray(w), np.ascontiguousarray(b, dtype=x.dtype)
    _layer_norm_forward_numba.run(x.size, x, w, b, x.dtype.type(eps), y, mu, rstd)
    return y, mu, rstd


def layer_norm_backward(dout, x, w, mu, rstd):
    """dx (N, D), dw (D,), db (D,) from the upstream dout (N, D) and forward's mu, rstd."""
    if backend.get_array_module(x) is not np:
        return _layer_norm_backward_cupy(dout, x, w, mu, rstd)
    x = np.ascontiguousarray(x)
    N, D = x.shape
    dx = np.empty_like(x)
    chunks = min(_CHUNKS, N)
    dw_part = np.zeros((chunks, D), x.dtype)
    db_part = np.zeros((chunks, D), x.dtype)
    dout, w = np.ascontiguousarray(dout, dtype=x.dtype), np.ascontiguousarray(w)
    _layer_norm_backward_numba.run(x.size, dout, x, w, mu, rstd, dx, dw_part, db_part)
    return dx, dw_part.sum(axis=0), db_part.sum(axis=0)

"""A tiled Numba matmul, kept for teaching: C = A @ B, C_ij = sum_k A_ik B_kj.

The op and its backward (dA = dC B^T, dB = A^T dC) live in tinyllm/ops/matmul.py, which calls
BLAS (``xp.matmul``) by default and under "auto": BLAS beat this kernel at every shape measured
(benchmarks/bench_matmul.py, table in benchmarks/RESULTS.md). ``set_impl("numba")`` runs it.

The loop order is i, k, j ("axpy" form): row i of C gathers A_ik times row k of B, so the
inner loop reads B and writes C contiguously and LLVM vectorizes it. Two tiles keep the data
near the core: ``prange`` hands each thread a block of ROWS rows of one batch entry of C (each
iteration writes only its own rows: no races), and K is walked DEPTH rows of B at a time, so
those rows of B (DEPTH x N) stay in cache while every row of the block uses them.
"""
import numpy as np

from tinyllm.kernels._numba import jit, prange

ROWS = 16       # rows of C per prange iteration
DEPTH = 128     # rows of B per K-tile: 128 x N floats stay in L2 for N up to ~1000


@jit(parallel=True)
def _matmul_tiled(a, b, c):
    """c[p] = a[p] @ b[p] for a (P, M, K), b (P, K, N), c (P, M, N)."""
    P, M, K = a.shape
    N = b.shape[2]
    tiles = (M + ROWS - 1) // ROWS                          # row blocks per batch entry
    for t in prange(P * tiles):                             # every block of every entry
        p, i0 = t // tiles, (t % tiles) * ROWS
        i1 = min(M, i0 + ROWS)
        for i in range(i0, i1):
            c[p, i, :] = 0
        for k0 in range(0, K, DEPTH):
            for i in range(i0, i1):
                ci = c[p, i]                                # row views: the j loop vectorizes
                for k in range(k0, min(K, k0 + DEPTH)):
                    aik = a[p, i, k]
                    bk = b[p, k]
                    for j in range(N):
                        ci[j] += aik * bk[j]


def matmul(a, b):
    """a @ b for float arrays of one dtype, a (..., M, K) and b (..., K, N) (batch axes
    broadcast, flattened to one for the kernel)."""
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    a3 = _contiguous(a, batch + (M, K)).reshape(-1, M, K)  # (..., M, K) -> (P, M, K)
    b3 = _contiguous(b, batch + (K, N)).reshape(-1, K, N)
    c = np.empty((a3.shape[0], M, N), a.dtype)
    _matmul_tiled(a3, b3, c)
    return c.reshape(batch + (M, N))


def _contiguous(x, shape):
    """x broadcast to ``shape``, C-contiguous and writeable (Numba compiles read-only arrays,
    such as np.broadcast_to's, as another type)."""
    x = np.ascontiguousarray(np.broadcast_to(x, shape))
    return x if x.flags.writeable else x.copy()

"""Matrix product kernels: the BLAS reference, a teaching triple loop, and two Numba kernels.

The math. For A (M, K) and B (K, N), C = A @ B is (M, N) with

    C_ij = sum_k A_ik B_kj

Each of the M*N outputs is a length-K dot product: 2*M*N*K flops (one multiply, one add per term),
which is how the benchmark counts GFLOP/s. Batched operands (..., M, K) @ (..., K, N) apply this
per batch entry, the batch axes broadcast as in NumPy. The backward pass lives in
``tinyllm/ops/matmul.py`` (dA = dC B^T, dB = A^T dC) and calls these kernels again.

The Numba kernels compute every C_ij as a dot product of a row of A with a row of B^T, so that
both operands are read contiguously and LLVM vectorizes the k loop as a reduction:

1. Pack B^T once (``_pack_bt``): bp[kb, j, :] = B[kb*KC : (kb+1)*KC, j]. A K-block of B^T,
   all N columns of it, is then one contiguous (N, KC) slab: no 4 KiB strides (TLB misses,
   cache-set conflicts) however wide B is.
2. Split C into blocks of MB rows; ``prange`` runs one row block per iteration, which writes
   only its own rows of C (no races).
3. Inside a row block, loop over K-blocks (KC deep) and column blocks (NB wide): the (NB, KC)
   slab of B^T (NB*KC*4 bytes = 96 KiB for float32) stays in L2 while every 4-row strip of A
   (4*KC*4 = 4 KiB) sits in L1.
4. Micro-kernel (``_block_dot``): 4 rows of A times 3 rows of B^T, 12 scalar accumulators
   over the KC-long k loop. LLVM turns each accumulator into vector registers, so every
   7 vector loads (4 of A, 3 of B^T) feed 12 fused multiply-adds: the loop is bound by the
   two FMA ports, not by loads. Rows and columns left over (M % 4, N % 3) go through a 1x1
   dot loop. Every operand is a 1-D row view (``a[i, k0:k1]``); indexing the 2-D arrays
   inside the k loop stopped vectorization (measured ~10x slower).

The batched kernel (``_matmul_batched_numba``) runs ``prange`` over the batch: iteration p
transposes B[p] into its own scratch and writes only C[p]. Small matrices need no K/N blocking.

Measured (2-core Xeon icelake-server, AVX-512, shared with other work; float32; medians of 7
interleaved rounds, ``python benchmarks/bench_matmul.py``). NumPy 2.4.6's scipy-openblas 0.3.31
already selects its AVX-512 "SkylakeX" kernels on this CPU (``OPENBLAS_CORETYPE=SkylakeX``
measures the same). LLVM emits 256-bit (ymm) vectors here: it prefers 256 over 512 bits on
icelake-server, so the Numba kernel has half the vector width of BLAS to begin with.

    shape                              numpy GF/s   numba GF/s   numba / numpy
    (128, 128) @ (128, 128)                  99          15          0.15x
    (256, 256) @ (256, 256)                 151          33          0.22x
    (512, 512) @ (512, 512)                 155          36          0.23x
    (1024, 1024) @ (1024, 1024)             172          37          0.21x
    (1024, 128) @ (128, 384)                154          33          0.21x
    (512, 64, 64) @ (512, 64, 64)            70          34          0.49x
    (64, 128, 64) @ (64, 64, 128)            68          26          0.39x
    (64, 64, 32) @ (64, 32, 64)              71          13          0.18x

Where the time goes: the micro-kernel alone, one core, data in L1/L2, reaches ~50-70 GF/s
(OpenBLAS single-threaded ~60-85 on the same blocks); packing B^T costs ~1 ms at 512; and a
``prange`` call under the workqueue threading layer (the shim's default) costs ~0.1-0.5 ms and
scaled poorly on kernels of a few ms (a test loop: 2 threads no faster than 1 at 6 ms of work,
2x at 50 ms; the omp layer scaled 2x at 0.1 ms).

Crossover rule (``_auto_numba``), what impl="auto" picks: NumPy everywhere. The Numba kernels
lost at every shape measured, 2-D and batched, so "auto" never picks them; impl="numba" still
runs them (for teaching, tests and profiling). Rerun the benchmark on a new machine before
changing the rule: it is the one place that would flip to Numba for batched small matrices.
Mixed or integer dtypes, 1-D operands, empty arrays and CuPy arrays always take the reference.
"""
import math

import numpy as np

from tinyllm.backend import get_array_module
from tinyllm.kernels._numba import choose, jit, prange

# Block sizes (elements). KC: depth of a K-block; NB: columns of B^T per L2 slab; MB: rows of C
# per prange iteration. From a few trials on this machine; not finely tuned (the noise of the
# shared machine was larger than the differences between nearby choices).
KC = 256
NB = 96
MB = 32

# Batched entries up to this many multiply-adds (M*N*K) take the parallel-over-batch kernel;
# larger ones take the blocked 2-D kernel one entry at a time.
_BATCHED_MAX_ENTRY_FLOPS = 256 * 256 * 256


# ----------------------------------------------------------------------------------------------
# References

def matmul_reference(a, b):
    """C = A @ B through BLAS (``xp.matmul``): the reference, and the fallback on CuPy.

    C_ij = sum_k A_ik B_kj. For a scalar loss L with dC = dL/dC, the chain rule gives
        dL/dA_ik = sum_j dC_ij B_kj   ->   dA = dC @ B^T   (M, N) @ (N, K) = (M, K)
        dL/dB_kj = sum_i A_ik dC_ij   ->   dB = A^T @ dC   (K, M) @ (M, N) = (K, N)
    so the backward pass is two more matmuls (see ``tinyllm/ops/matmul.py``).

    Shapes: NumPy's matmul rules (1-D, 2-D, batched with broadcast batch axes).
    """
    xp = get_array_module(a, b)
    return xp.matmul(a, b)


def matmul_naive(a, b):
    """C = A @ B for 2-D A (M, K) and B (K, N) with three Python loops: for teaching only.

    Like llm.c's ``matmul_forward_naive``: one output C_ij at a time, a plain dot product over k.
    Takes anything indexable as ``a[i][k]`` (lists of lists, NumPy arrays) and returns a list of
    M lists of N Python floats. O(M*N*K) interpreted steps: use it on tiny sizes.
    """
    M, K = len(a), len(a[0])
    K_b, N = len(b), len(b[0])
    if K != K_b:
        raise ValueError(f"matmul_naive: shapes ({M}, {K}) and ({K_b}, {N}) are not aligned")
    out = []
    for i in range(M):
        row = []
        for j in range(N):
            acc = 0.0
            for k in range(K):
                acc += float(a[i][k]) * float(b[k][j])
            row.append(acc)
        out.append(row)
    return out


# ----------------------------------------------------------------------------------------------
# Numba kernels

@jit()
def _block_dot(a, ka, bt, kb, kc, c, i0, i1, j0, j1):
    """c[i0:i1, j0:j1] += a[i0:i1, ka:ka+kc] @ bt[j0:j1, kb:kb+kc].T   (bt is B transposed).

    4x3 register block: 12 dot products share each loaded element of A and B^T.
    """
    zero = c.dtype.type(0)
    i = i0
    while i + 4 <= i1:
        a0 = a[i, ka:ka + kc]                             # (kc,) row views: the k loop vectorizes
        a1 = a[i + 1, ka:ka + kc]
        a2 = a[i + 2, ka:ka + kc]
        a3 = a[i + 3, ka:ka + kc]
        j = j0
        while j + 3 <= j1:
            b0 = bt[j, kb:kb + kc]
            b1 = bt[j + 1, kb:kb + kc]
            b2 = bt[j + 2, kb:kb + kc]
            s00 = s01 = s02 = s10 = s11 = s12 = zero
            s20 = s21 = s22 = s30 = s31 = s32 = zero
            for k in range(kc):
                x0 = b0[k]
                x1 = b1[k]
                x2 = b2[k]
                y0 = a0[k]
                y1 = a1[k]
                y2 = a2[k]
                y3 = a3[k]
                s00 += y0 * x0
                s01 += y0 * x1
                s02 += y0 * x2
                s10 += y1 * x0
                s11 += y1 * x1
                s12 += y1 * x2
                s20 += y2 * x0
                s21 += y2 * x1
                s22 += y2 * x2
                s30 += y3 * x0
                s31 += y3 * x1
                s32 += y3 * x2
            c[i, j] += s00
            c[i, j + 1] += s01
            c[i, j + 2] += s02
            c[i + 1, j] += s10
            c[i + 1, j + 1] += s11
            c[i + 1, j + 2] += s12
            c[i + 2, j] += s20
            c[i + 2, j + 1] += s21
            c[i + 2, j + 2] += s22
            c[i + 3, j] += s30
            c[i + 3, j + 1] += s31
            c[i + 3, j + 2] += s32
            j += 3
        for r in range(i, i + 4):                         # columns left over: N % 3
            ar = a[r, ka:ka + kc]
            for jj in range(j, j1):
                bj = bt[jj, kb:kb + kc]
                s = zero
                for k in range(kc):
                    s += ar[k] * bj[k]
                c[r, jj] += s
        i += 4
    for r in range(i, i1):                                # rows left over: M % 4
        ar = a[r, ka:ka + kc]
        for jj in range(j0, j1):
            bj = bt[jj, kb:kb + kc]
            s = zero
            for k in range(kc):
                s += ar[k] * bj[k]
            c[r, jj] += s


@jit(parallel=True)
def _pack_bt(b, kc_block):
    """B (K, N) -> bp (nkb, N, kc_block) with bp[kb, j, kk] = B[kb*kc_block + kk, j].

    Parallel over (K-block, 32-column strip) pairs; each iteration writes its own part of bp.
    The tail of the last K-block is left unset: the kernel reads only k < K.
    """
    K, N = b.shape
    nkb = (K + kc_block - 1) // kc_block
    nstrips = (N + 31) // 32
    bp = np.empty((nkb, N, kc_block), dtype=b.dtype)
    for t in prange(nkb * nstrips):
        kb = t // nstrips
        j0 = (t % nstrips) * 32
        j1 = min(j0 + 32, N)
        k0 = kb * kc_block
        k1 = min(k0 + kc_block, K)
        slab = bp[kb]                                     # (N, kc_block)
        for k in range(k0, k1):
            brow = b[k]                                   # (N,)
            for j in range(j0, j1):
                slab[j, k - k0] = brow[j]
    return bp


@jit(parallel=True)
def _matmul_2d_numba(a, bp, c, kc_block, nb, mb):
    """c = a @ b for C-contiguous a (M, K), c (M, N), with bp = _pack_bt(b, kc_block).

    prange over blocks of mb rows of C; each iteration writes only c[i0:i1].
    """
    M, K = a.shape
    N = c.shape[1]
    for blk in prange((M + mb - 1) // mb):
        i0 = blk * mb
        i1 = min(i0 + mb, M)
        for i in range(i0, i1):
            c[i, :] = 0
        for kb in range(bp.shape[0]):
            k0 = kb * kc_block
            kc = min(kc_block, K - k0)
            slab = bp[kb]                                 # (N, kc_block): this K-block of B^T
            for j0 in range(0, N, nb):
                _block_dot(a, k0, slab, 0, kc, c, i0, i1, j0, min(j0 + nb, N))


@jit(parallel=True)
def _matmul_batched_numba(a, b, c):
    """c[p] = a[p] @ b[p] for C-contiguous a (P, M, K), b (P, K, N), c (P, M, N).

    prange over the batch; iteration p transposes b[p] into its own scratch, writes only c[p].
    Meant for small matrices (no cache blocking inside one entry).
    """
    P, M, K = a.shape
    N = b.shape[2]
    for p in prange(P):
        bt = np.empty((N, K), dtype=b.dtype)              # B[p]^T
        bp_ = b[p]
        for k in range(K):
            brow = bp_[k]
            for j in range(N):
                bt[j, k] = brow[j]
        cp = c[p]
        for i in range(M):
            cp[i, :] = 0
        _block_dot(a[p], 0, bt, 0, K, cp, 0, M, 0, N)


def _matmul_2d(a, b):
    """Numba path for 2-D C-contiguous a (M, K), b (K, N) of one float dtype."""
    c = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    _matmul_2d_numba(a, _pack_bt(b, KC), c, KC, NB, MB)
    return c


def _matmul_batched(a, b):
    """Numba path for C-contiguous a (P, M, K), b (P, K, N) of one float dtype."""
    P, M, K = a.shape
    N = b.shape[2]
    if P < 2 or M * N * K > _BATCHED_MAX_ENTRY_FLOPS:
        # few or large entries: parallelism and cache blocking inside each entry pay more
        return np.stack([_matmul_2d(a[p], b[p]) for p in range(P)]).reshape(P, M, N)
    c = np.empty((P, M, N), dtype=a.dtype)
    _matmul_batched_numba(a, b, c)
    return c


# ----------------------------------------------------------------------------------------------
# Dispatcher

def _contiguous(x, shape):
    """x broadcast to ``shape``, C-contiguous and writeable (read-only arrays, e.g. from
    np.broadcast_to, are a separate Numba type: one more compile of every kernel)."""
    if x.shape != shape:
        x = np.broadcast_to(x, shape)
    x = np.ascontiguousarray(x)
    return x if x.flags.writeable else x.copy()


def _auto_numba(batch, M, K, N):
    """impl="auto": True where the Numba kernel measured faster than NumPy (module docstring).

    Nowhere on the machine measured: BLAS won every 2-D and batched shape, so this is False.
    """
    return False


def check_shapes(a_shape, b_shape):
    """Raise a ValueError naming matmul and both shapes unless a @ b is defined (ignoring
    batch broadcasting, which the caller checks)."""
    if len(a_shape) == 0 or len(b_shape) == 0:
        raise ValueError(f"matmul: both operands need at least 1 dimension, got shapes "
                         f"{tuple(a_shape)} and {tuple(b_shape)} (use * for scalars)")
    k_a = a_shape[-1]
    k_b = b_shape[0] if len(b_shape) == 1 else b_shape[-2]
    if k_a != k_b:
        raise ValueError(f"matmul: shapes {tuple(a_shape)} and {tuple(b_shape)} are not "
                         f"aligned: a's last axis ({k_a}) must equal b's "
                         f"{'only' if len(b_shape) == 1 else 'second-to-last'} axis ({k_b})")


def matmul(a, b, impl=None):
    """C = A @ B with NumPy's matmul rules; the Numba kernels where they apply and win.

    a: (..., M, K) or (K,);  b: (..., K, N) or (K,);  returns (broadcast(...), M, N).
    impl: None (global choice, see tinyllm.kernels), "numpy", "numba" or "auto".

    The Numba kernels take 2-D and batched float32/float64 operands of one dtype; batch axes
    are broadcast with ``np.broadcast_to`` and flattened to one. 1-D operands, mixed or integer
    dtypes, empty arrays and CuPy arrays always take ``matmul_reference``.
    """
    check_shapes(a.shape, b.shape)
    k_a = a.shape[-1]
    if a.ndim == 1 or b.ndim == 1:
        choose(impl, auto_numba=False)                    # still validates impl
        return matmul_reference(a, b)
    if a.ndim == 2 and b.ndim == 2:
        batch_shape = ()                                  # the common case, without NumPy calls
    else:
        try:
            batch_shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except ValueError:
            raise ValueError(f"matmul: batch axes of shapes {a.shape} and {b.shape} do not "
                             f"broadcast") from None
    M, K, N = a.shape[-2], k_a, b.shape[-1]
    P = math.prod(batch_shape)
    shared_b = b.ndim == 2 and P > 0                      # (..., M, K) @ (K, N): one 2-D matmul
    which = choose(impl, auto_numba=False if shared_b else _auto_numba(P, M, K, N))
    numba_ok = (get_array_module(a, b) is np and a.dtype == b.dtype
                and a.dtype in (np.float32, np.float64) and min(P, M, K, N) > 0)
    if which == "numpy" or not numba_ok:
        if shared_b and a.ndim > 2:
            # (..., M, K) @ (K, N) as ONE (P*M, K) @ (K, N) GEMM: NumPy's matmul would loop
            # over the P batch entries with small GEMMs (measured 1.4x slower for a GPT layer,
            # (12, 64, 128) @ (128, 384))
            a2 = a.reshape(P * M, K)                      # a view when a is contiguous
            return matmul_reference(a2, b).reshape(batch_shape + (M, N))
        return matmul_reference(a, b)
    if shared_b:                                          # rows of every batch entry at once
        a2 = _contiguous(a, a.shape).reshape(P * M, K)
        return _matmul_2d(a2, _contiguous(b, b.shape)).reshape(batch_shape + (M, N))
    a3 = _contiguous(a, batch_shape + (M, K)).reshape(P, M, K)
    b3 = _contiguous(b, batch_shape + (K, N)).reshape(P, K, N)
    return _matmul_batched(a3, b3).reshape(batch_shape + (M, N))

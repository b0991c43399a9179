"""int8 weight-only matmul: y = x @ (codes * scales) without forming the float weight matrix.

The op and its formula (dequantize, then one GEMM) live in tinyllm/compress/quantize.py
(``Int8Linear``), which runs them by default; it calls this kernel only when the switch says so
(``accelerator("int8_matmul", ...)``), and tests hold the two equal.

Layout: codes int8 (K, N) (a Linear's (in, out) weight), scales (G, N) with group g covering
input rows g S .. (g + 1) S - 1 (S = group_size; G = 1 and S = K per output channel). Per row
n of x and output j:
    y[n, j] = sum_g scales[g, j] sum_{i in group g} x[n, i] codes[i, j]
The inner sum runs on the integer codes, converted one at a time, into an accumulator of x's
dtype (float32 or float64); the group's scale multiplies the partial sum once. Loop order: for
each input i, row i of codes is read contiguously (the j loop vectorizes), as in the teaching
matmul (kernels/matmul.py). Each ``prange`` iteration writes only its own row of y.
"""
import numpy as np

from tinyllm.kernels._numba import kernel, prange


@kernel
def _int8_matmul_rows(x, codes, scales, group_size, out):
    """out[n] = sum_g scales[g] * (x[n, group g] @ codes[group g]) for x (N, K), codes (K, M)
    int8, scales (G, M), out (N, M) of x's dtype."""
    N, K = x.shape
    M = codes.shape[1]
    G = scales.shape[0]
    for n in prange(N):
        acc = np.empty(M, x.dtype)                          # one group's partial sums
        o = out[n]
        for j in range(M):
            o[j] = 0
        for g in range(G):
            for j in range(M):
                acc[j] = 0
            for i in range(g * group_size, min(K, (g + 1) * group_size)):
                xi = x[n, i]
                ci = codes[i]
                for j in range(M):
                    acc[j] += xi * ci[j]
            sg = scales[g]
            for j in range(M):
                o[j] += sg[j] * acc[j]


def int8_matmul(x, codes, scales, group_size):
    """x (N, K) float @ dequantized codes (K, M) int8 with scales (G, M) of x's dtype ->
    (N, M). ``group_size`` S: rows of codes per scale row (K for one scale per column)."""
    x = np.ascontiguousarray(x)
    codes = np.ascontiguousarray(codes)
    scales = np.ascontiguousarray(scales, dtype=x.dtype)
    out = np.empty((x.shape[0], codes.shape[1]), x.dtype)
    _int8_matmul_rows.run(x.size * codes.shape[1] // max(x.shape[1], 1), x, codes, scales,
                          int(group_size), out)
    return out

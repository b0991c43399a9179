"""Numba kernel for the embedding backward, a scatter-add of rows.

The formula and its derivation: tinyllm/ops/embedding.py, ``Embedding.backward``, which calls
this kernel when the switch is on (``tinyllm.dispatch.accelerator``); tests hold the two equal
(tests/test_kernels.py, tests/test_kernels_nonfinite.py).

The formula's scatter-add is ``backend.scatter_add`` (``np.add.at``), general but slow: it
handles one element at a time. This kernel adds whole rows: for each position, one contiguous
row of dout into one row of dW, vectorized over C. It is serial on purpose: two positions with
the same id write the same row of dW, so rows cannot be split between threads without partial
buffers of size V x C.

Shapes: idx (N,) integers in [0, V); dout (N, C); dW (V, C).
"""
import numpy as np

from tinyllm.kernels._numba import jit


@jit()
def _embedding_backward_numba(idx, dout, dw):
    N, C = dout.shape
    for n in range(N):
        row, d = dw[idx[n]], dout[n]                 # 1-D row views: the c loop vectorizes
        for c in range(C):
            row[c] += d[c]


def embedding_backward(idx, dout, num_embeddings):
    """dW (V, C) from ids idx (N,) and the float upstream gradient dout (N, C), non-empty."""
    dw = np.zeros((num_embeddings, dout.shape[1]), dtype=dout.dtype)
    _embedding_backward_numba(np.ascontiguousarray(idx, dtype=np.int64),
                              np.ascontiguousarray(dout), dw)
    return dw

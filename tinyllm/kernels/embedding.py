"""Embedding backward (scatter-add of rows): NumPy reference, Numba kernel, dispatcher.

Forward is ``out = W[idx]`` (NumPy's fancy indexing is fast). Backward is
    dW[v] = sum of dout[n] over every position n with idx[n] == v
a scatter-add: ids repeat (every "e" in a text), so the additions must accumulate, which
``W[idx] += dout`` does not do (buffered: the last write wins). The reference uses
``backend.scatter_add`` (``np.add.at``), general but slow: it handles one element at a time.
The Numba kernel adds whole rows: for each position, one contiguous row of dout into one row of
dW, vectorized over C. It is serial on purpose: two positions with the same id would write the
same row of dW, so rows cannot be split between threads without partial buffers of size V x C.

Shapes: idx (N,) integers in [0, V); dout (N, C); dW (V, C).
"""
import numpy as np

from tinyllm import backend
from tinyllm.kernels._numba import choose, jit

AUTO_MIN_ELEMENTS = 1       # Numba beat np.add.at at every size measured; see benchmarks/RESULTS.md


def embedding_backward_reference(idx, dout, num_embeddings):
    xp = backend.get_array_module(dout)
    dw = xp.zeros((num_embeddings, dout.shape[1]), dtype=dout.dtype)
    backend.scatter_add(dw, idx, dout)
    return dw


@jit()
def _embedding_backward_numba(idx, dout, dw):
    N, C = dout.shape
    for n in range(N):
        row, d = dw[idx[n]], dout[n]                 # 1-D row views: the c loop vectorizes
        for c in range(C):
            row[c] += d[c]


def embedding_backward(idx, dout, num_embeddings, impl=None):
    """dW (V, C) from ids idx (N,) and upstream gradient dout (N, C)."""
    if backend.get_array_module(dout) is not np:
        if impl == "numba":
            raise ValueError("embedding: impl='numba' needs NumPy arrays, got CuPy arrays")
        return embedding_backward_reference(idx, dout, num_embeddings)
    if dout.dtype.kind != "f" or dout.ndim != 2 or dout.size == 0:
        if impl == "numba":
            raise ValueError(f"embedding: impl='numba' needs float dout (N, C), got "
                             f"{dout.dtype} {dout.shape}")
        return embedding_backward_reference(idx, dout, num_embeddings)
    if choose(impl, dout.size >= AUTO_MIN_ELEMENTS) != "numba":
        return embedding_backward_reference(idx, dout, num_embeddings)
    dw = np.zeros((num_embeddings, dout.shape[1]), dtype=dout.dtype)
    _embedding_backward_numba(np.ascontiguousarray(idx, dtype=np.int64),
                              np.ascontiguousarray(dout), dw)
    return dw

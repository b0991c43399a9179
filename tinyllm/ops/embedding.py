"""Embedding lookup: rows of a weight matrix picked by integer ids."""
from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.dispatch import accelerator
from tinyllm.kernels import embedding as embedding_kernels
from tinyllm.ops._util import as_tensor, int_array


class Embedding(Function):
    """out = W[idx]: row idx[...] of W for every id.

    Equivalent to onehot(idx) @ W, so dW = onehot(idx)^T @ dout: row v of dW is the sum of the
    dout rows of every position whose id is v. That is a scatter-add (ids repeat; each
    occurrence adds its gradient), done without forming the one-hot matrix.

    Shapes: W (V, C); idx (...) integers in [0, V), seen as (N,); out, dout (..., C), seen as
    (N, C); dW (V, C).
    Fast path: a Numba row-add kernel (tinyllm/kernels/embedding.py), under the switch.
    """

    def forward(self, w, idx=None, padding_idx=None):
        self.idx, self.w_shape, self.w_dtype = idx, w.shape, w.dtype
        self.padding_idx = padding_idx
        return w[idx]

    def zero_grad_mask(self, k):
        """The padding row: by convention (PyTorch's) it never receives gradient."""
        if self.padding_idx is None:
            return None
        mask = backend.get_array_module(self.idx).zeros(self.w_shape, dtype=bool)
        mask[self.padding_idx] = True
        return mask

    def backward(self, dout):
        V, C = self.w_shape
        idx, dout2 = self.idx.reshape(-1), dout.reshape(-1, C)     # (...) -> (N,), (N, C)
        if accelerator("embedding", dout2):
            dw = embedding_kernels.embedding_backward(idx, dout2, V)
        else:
            dw = backend.get_array_module(dout).zeros((V, C), dtype=dout.dtype)
            backend.scatter_add(dw, idx, dout2)      # dw[idx[n]] += dout2[n], repeats add up
        if self.padding_idx is not None:
            dw[self.padding_idx] = 0                  # padding rows never receive gradient
        return dw.astype(self.w_dtype, copy=False)


def embedding(idx, weight, padding_idx=None):
    """Look up rows of ``weight`` (V, C) for integer ``idx`` of any shape; out (..., C).

    Argument order as ``torch.nn.functional.embedding(input, weight)``. Row ``padding_idx``
    (if given) receives no gradient.
    """
    weight = as_tensor(weight)
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (num_embeddings, dim), got shape "
                         f"{weight.shape}")
    idx = int_array(idx, "embedding", "idx", weight.data)
    V = weight.shape[0]
    bad = (idx < 0) | (idx >= V)
    if bad.any():
        value = int(backend.asnumpy(idx[bad])[0])
        raise IndexError(f"embedding: index {value} is out of range for {V} embeddings "
                         f"(expected 0 <= idx < {V})")
    return Embedding.apply(weight, idx=idx, padding_idx=padding_idx)

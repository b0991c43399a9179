"""Matrix product with NumPy's ``matmul`` rules: 1-D, 2-D, batched and broadcast.

Backprop through C = A @ B, with L a scalar and dC = dL/dC:
    C_ij = sum_k A_ik B_kj   =>   dL/dA_ik = sum_j dC_ij B_kj,   dL/dB_kj = sum_i A_ik dC_ij
i.e.  dA = dC @ B^T  and  dB = A^T @ dC.
With batch axes the same holds per batch entry; where a batch axis was broadcast, the per-entry
gradients are summed back (``unbroadcast``). A 1-D A is treated as a (1, K) row and a 1-D B as a
(K, 1) column, as NumPy does, and the added axis is removed again from the gradient.
"""
from tinyllm import backend
from tinyllm.autograd.function import Function, unbroadcast
from tinyllm.kernels.matmul import check_shapes
from tinyllm.kernels.matmul import matmul as matmul_kernel
from tinyllm.ops._util import operands


class MatMul(Function):
    """out = a @ b.   da = dout @ b^T,  db = a^T @ dout   (see module docstring).

    Shapes: a (..., M, K) or (K,);  b (..., K, N) or (K,);  out (broadcast(...), M, N) with the
    1-D axes dropped. All three products go through tinyllm/kernels/matmul.py (BLAS, or the
    Numba kernels when selected).
    """

    def forward(self, a, b):
        self.a, self.b = a, b
        if a.ndim == 1 or b.ndim == 1:
            return a @ b                              # vector cases: BLAS directly
        return matmul_kernel(a, b)

    def backward(self, dout):
        xp = backend.get_array_module(dout)
        a, b = self.a, self.b
        a2 = a if a.ndim > 1 else a[None, :]          # (K,) -> (1, K)
        b2 = b if b.ndim > 1 else b[:, None]          # (K,) -> (K, 1)
        d = dout
        if b.ndim == 1:
            d = d[..., None]                          # (..., M) -> (..., M, 1)
        if a.ndim == 1:
            d = d[..., None, :]                       # (..., N) -> (..., 1, N)
        da = db = None
        if self.needs_input_grad[0]:
            da = unbroadcast(matmul_kernel(d, xp.swapaxes(b2, -1, -2)), a2.shape)
            da = da.reshape(a.shape)
        if self.needs_input_grad[1]:
            if b.ndim == 2 and a.ndim > 2:
                # dB = sum over the batch of A_p^T dC_p = (all rows of A)^T (all rows of dC):
                # one (K, P*M) @ (P*M, N) GEMM instead of P small ones and a sum
                K, N = b.shape
                db = matmul_kernel(a.reshape(-1, K).T, d.reshape(-1, N))   # (K, N)
            else:
                db = unbroadcast(matmul_kernel(xp.swapaxes(a2, -1, -2), d), b2.shape)
                db = db.reshape(b.shape)
        return da, db


def matmul(a, b):
    """Matrix product a @ b (NumPy rules: 1-D vectors, batched and broadcast batch axes)."""
    a, b = operands(a, b)
    check_shapes(a.shape, b.shape)       # before recording, so the error names matmul cleanly
    return MatMul.apply(a, b)

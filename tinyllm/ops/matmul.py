"""Matrix product with NumPy's ``matmul`` rules: 1-D, 2-D, batched and broadcast.

Backprop through C = A @ B, with L a scalar and dC = dL/dC:
    C_ij = sum_k A_ik B_kj   =>   dL/dA_ik = sum_j dC_ij B_kj,   dL/dB_kj = sum_i A_ik dC_ij
i.e.  dA = dC @ B^T  and  dB = A^T @ dC.
With batch axes the same holds per batch entry; where a batch axis was broadcast, the per-entry
gradients are summed back (``unbroadcast``). A 1-D A is treated as a (1, K) row and a 1-D B as a
(K, 1) column, as NumPy does, and the added axis is removed again from the gradient.
"""
import numpy as np

from tinyllm import backend
from tinyllm.autograd.function import Function, unbroadcast
from tinyllm.dispatch import accelerator
from tinyllm.kernels import matmul as matmul_kernels
from tinyllm.ops._util import operands


def gemm(a, b):
    """a @ b for 2-D or batched a, b: BLAS (``xp.matmul``), or the teaching Numba kernel under
    ``set_impl("numba")`` ("auto" keeps BLAS, which won at every shape measured).

    (..., M, K) @ (K, N) runs as ONE (P*M, K) @ (K, N) GEMM: NumPy's matmul would loop over
    the P batch entries with small GEMMs (measured 1.4x slower for a GPT layer).
    """
    if accelerator("matmul", a, b, auto=False):
        return matmul_kernels.matmul(a, b)
    xp = backend.get_array_module(a, b)
    if b.ndim == 2 and a.ndim > 2 and a.size:
        K, N = b.shape
        return xp.matmul(a.reshape(-1, K), b).reshape(a.shape[:-1] + (N,))  # (P*M, K) @ (K, N)
    return xp.matmul(a, b)


class MatMul(Function):
    """out = a @ b.   da = dout @ b^T,  db = a^T @ dout   (see module docstring).

    Shapes: a (..., M, K) or (K,);  b (..., K, N) or (K,);  out (broadcast(...), M, N) with the
    1-D axes dropped. All three products go through ``gemm`` (BLAS, or the teaching Numba
    kernel under ``set_impl("numba")``).
    """

    def forward(self, a, b):
        self.a, self.b = a, b
        if a.ndim == 1 or b.ndim == 1:
            return a @ b                              # vector cases: BLAS directly
        return gemm(a, b)

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
            da = unbroadcast(gemm(d, xp.swapaxes(b2, -1, -2)), a2.shape)
            da = da.reshape(a.shape)
        if self.needs_input_grad[1]:
            if b.ndim == 2 and a.ndim > 2:
                # dB = sum over the batch of A_p^T dC_p = (all rows of A)^T (all rows of dC):
                # one (K, P*M) @ (P*M, N) GEMM instead of P small ones and a sum
                K, N = b.shape
                db = gemm(a.reshape(-1, K).T, d.reshape(-1, N))     # (K, N)
            else:
                db = unbroadcast(gemm(xp.swapaxes(a2, -1, -2), d), b2.shape)
                db = db.reshape(b.shape)
        return da, db


class Linear(Function):
    """out = x @ w + b, the affine layer as ONE op (PyTorch's addmm): w is (in, out).

    Forward: one GEMM over all rows, x (..., K) seen as (N, K), N = prod(...), then b added in
    place into the GEMM's output (no temporary the size of out, no separate Add node).
    Backward, with dout (..., N_out) seen as (N, N_out):
        dx = dout @ w^T                 (N, N_out) @ (N_out, K) = (N, K)
        dw = x^T @ dout                 (K, N) @ (N, N_out)     = (K, N_out)
        db = sum over rows of dout      (N_out,)  (b was broadcast to every row)
    the same as MatMul followed by Add (tests hold them equal), with two fewer graph nodes
    and one fewer (N, N_out) array per call.

    Shapes: x (..., K); w (K, N_out); b (N_out,) or absent; out (..., N_out).
    """

    def forward(self, x, w, b=None):
        self.x, self.w, self.has_bias = x, w, b is not None
        K, N_out = w.shape
        x2 = x.reshape(-1, K)                             # (..., K) -> (N, K), a view if possible
        out = gemm(x2, w)                                 # (N, N_out), a fresh array
        if b is not None:
            if out.dtype == b.dtype:
                out += b                                  # in place: out is ours
            else:
                out = out + b                             # mixed dtypes promote, as x @ w + b
        return out.reshape(x.shape[:-1] + (N_out,))       # (N, N_out) -> (..., N_out)

    def backward(self, dout):
        x, w = self.x, self.w
        K, N_out = w.shape
        d2 = dout.reshape(-1, N_out)                      # (..., N_out) -> (N, N_out)
        dx = dw = db = None
        if self.needs_input_grad[0]:
            dx = gemm(d2, w.T).reshape(x.shape)           # (N, K) -> (..., K)
        if self.needs_input_grad[1]:
            dw = gemm(x.reshape(-1, K).T, d2)             # (K, N_out)
        if self.has_bias:
            db = d2.sum(axis=0) if self.needs_input_grad[2] else None      # (N_out,)
            return dx, dw, db
        return dx, dw


def linear(x, weight, bias=None):
    """x @ weight + bias as one op. ``weight`` is (in, out), as tinyllm.nn.Linear stores it
    (the transpose of torch.nn.functional.linear's (out, in)): a wrong layout is a shape error
    unless the matrix is square."""
    x, weight = operands(x, weight)
    if bias is not None:
        weight, bias = operands(weight, bias)
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[0]:
        raise ValueError(f"linear: expected x (..., in) and weight (in, out), got shapes "
                         f"{x.shape} and {weight.shape}")
    if bias is not None and bias.shape != (weight.shape[1],):
        raise ValueError(f"linear: bias must have shape (out,) = ({weight.shape[1]},), got "
                         f"{bias.shape}")
    if bias is None:
        return Linear.apply(x, weight)
    return Linear.apply(x, weight, bias)


def check_shapes(a_shape, b_shape):
    """Raise a ValueError naming matmul and both shapes unless a @ b is defined."""
    if len(a_shape) == 0 or len(b_shape) == 0:
        raise ValueError(f"matmul: both operands need at least 1 dimension, got shapes "
                         f"{tuple(a_shape)} and {tuple(b_shape)} (use * for scalars)")
    k_a = a_shape[-1]
    k_b = b_shape[0] if len(b_shape) == 1 else b_shape[-2]
    if k_a != k_b:
        raise ValueError(f"matmul: shapes {tuple(a_shape)} and {tuple(b_shape)} are not "
                         f"aligned: a's last axis ({k_a}) must equal b's "
                         f"{'only' if len(b_shape) == 1 else 'second-to-last'} axis ({k_b})")
    try:
        np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2]))
    except ValueError:
        raise ValueError(f"matmul: batch axes of shapes {tuple(a_shape)} and {tuple(b_shape)} "
                         f"do not broadcast") from None


def matmul(a, b):
    """Matrix product a @ b (NumPy rules: 1-D vectors, batched and broadcast batch axes)."""
    a, b = operands(a, b)
    check_shapes(a.shape, b.shape)       # before recording, so the error names matmul cleanly
    return MatMul.apply(a, b)

"""The masked Linear that pruning leaves behind: y = x @ (W_orig * M) + b.

As ``torch.nn.utils.prune``: the layer keeps the dense trainable weight ``weight_orig`` (a
Parameter) and a 0/1 ``weight_mask`` buffer, and its forward multiplies them. The effective
weight W_orig * M is exactly 0 wherever M is 0, whatever the optimizer does to W_orig, and the
gradient that reaches W_orig there is exactly 0 (derivation in ``MaskedLinear``, card in
docs/compression.md).
"""
from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.autograd.tensor import Tensor
from tinyllm.nn.layers import Linear
from tinyllm.nn.module import Module
from tinyllm.ops.matmul import gemm


class MaskedLinear(Function):
    """out = x @ (w * m) + b, with m a constant 0/1 mask of w's shape (w is (in, out)).

    With W = w * m (elementwise), the Linear's backward applies to W, and W's gradient flows
    to w through the product: dW/dw = m elementwise, so
        dx = dout @ W^T                      (N, N_out) @ (N_out, K) = (N, K)
        dw = (x^T @ dout) * m                (K, N_out): exactly 0 where m = 0
        db = sum over rows of dout           (N_out,)
    The mask gets no gradient (it is a keyword constant, not a graph input).

    Shapes: x (..., K); w, m (K, N_out); b (N_out,) or absent; out (..., N_out).
    """

    def forward(self, x, w, b=None, mask=None):
        self.x, self.mask, self.has_bias = x, mask, b is not None
        self.W = w * mask                                     # the effective weight (K, N_out)
        K, N_out = w.shape
        out = gemm(x.reshape(-1, K), self.W)                  # (N, K) @ (K, N_out)
        if b is not None:
            out = out + b
        return out.reshape(x.shape[:-1] + (N_out,))

    def backward(self, dout):
        x, W = self.x, self.W
        K, N_out = W.shape
        d2 = dout.reshape(-1, N_out)                          # (..., N_out) -> (N, N_out)
        dx = dw = db = None
        if self.needs_input_grad[0]:
            dx = gemm(d2, W.T).reshape(x.shape)               # (N, K) -> (..., K)
        if self.needs_input_grad[1]:
            dw = gemm(x.reshape(-1, K).T, d2) * self.mask     # pruned entries: exactly 0
        if self.has_bias:
            db = d2.sum(axis=0) if self.needs_input_grad[2] else None
            return dx, dw, db
        return dx, dw


class PrunedLinear(Linear):
    """A Linear whose weight is ``weight_orig * weight_mask``: y = x @ (W_orig * M) + b.

    ``weight_orig`` is the pruned Linear's own ``weight`` Parameter (the same object), so an
    optimizer built before pruning keeps updating it, and one built after sees it in
    ``parameters()``; ``weight_mask`` is a buffer (in the state_dict, not trained) of the
    weight's dtype, 1.0 where the weight is kept and 0.0 where it is pruned. ``weight`` reads
    the effective weight (a copy, no gradient). state_dict keys: ``weight_orig``,
    ``weight_mask``, ``bias``, as PyTorch's pruned modules.
    """

    def __init__(self, linear, mask):
        Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight_orig = linear.weight                      # the same Parameter
        if linear.bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = linear.bias
        w = self.weight_orig.data
        mask = backend.to_device(mask, self.weight_orig.device)
        if mask.shape != w.shape:
            raise ValueError(f"PrunedLinear: mask shape {mask.shape} does not match the weight "
                             f"shape {w.shape}")
        self.register_buffer("weight_mask", Tensor(mask.astype(w.dtype)))

    @property
    def weight(self):
        """The effective weight W_orig * M (a new Tensor, no gradient)."""
        return Tensor(self.weight_orig.data * self.weight_mask.data)

    def forward(self, x):
        if x.shape[-1] != self.in_features:
            raise ValueError(f"PrunedLinear: input's last axis is {x.shape[-1]}, expected "
                             f"in_features={self.in_features} (input shape {x.shape})")
        w, m = self.weight_orig, self.weight_mask.data
        if m.dtype != w.dtype:                                # after model.to(another dtype)
            m = m.astype(w.dtype)
        if self.bias is None:
            return MaskedLinear.apply(x, w, mask=m)
        return MaskedLinear.apply(x, w, self.bias, mask=m)

    def extra_repr(self):
        kept = float(self.weight_mask.data.mean()) if self.weight_mask.size else 1.0
        return super().extra_repr() + f", sparsity={1 - kept:.3f}"


def effective_weight(linear):
    """The weight array a Linear multiplies by: ``weight`` or ``weight_orig * weight_mask``."""
    if isinstance(linear, PrunedLinear):
        return linear.weight_orig.data * linear.weight_mask.data
    return linear.weight.data

"""Layer normalization (Ba, Kiros, Hinton 2016)."""
from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.kernels.layernorm import layer_norm_backward, layer_norm_forward
from tinyllm.ops._util import as_tensor


class LayerNorm(Function):
    """y = (x - mean) / sqrt(var + eps) * w + b, statistics over the last w.ndim axes (the
    normalized shape S; ``layer_norm`` checks that x ends with S).

    With xhat = (x - mu) * rstd, rstd = 1 / sqrt(var + eps), and n the normalized size:
        db = sum of dout over the leading (batch) axes
        dw = sum of dout * xhat over the leading axes
        dxhat = dout * w
        dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    The last line is the chain rule through mu and var: dxhat_j/dx_i = rstd ([i == j] - 1/n
    - xhat_i xhat_j / n); the two means over the normalized axes are those two correction terms.

    Shapes: x (..., *S); w, b S (the normalized shape); y like x. The kernels in
    tinyllm/kernels/layernorm.py (NumPy reference or Numba) see x as (N, D), D = prod(S).
    """

    def forward(self, x, w, b, n_axes=1, eps=1e-5):
        D = w.size
        x2 = x.reshape(-1, D)                                     # (..., *S) -> (N, D)
        y2, self.mu, self.rstd = layer_norm_forward(x2, w.reshape(D), b.reshape(D), eps)
        self.x2, self.w, self.in_shape, self.w_shape = x2, w, x.shape, w.shape
        return y2.reshape(x.shape)                                # (N, D) -> (..., *S)

    def backward(self, dout):
        D = self.w.size
        dx, dw, db = layer_norm_backward(dout.reshape(-1, D), self.x2, self.w.reshape(D),
                                         self.mu, self.rstd)
        return (dx.reshape(self.in_shape) if self.needs_input_grad[0] else None,
                dw.reshape(self.w_shape) if self.needs_input_grad[1] else None,
                db.reshape(self.w_shape) if self.needs_input_grad[2] else None)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalize over the trailing ``normalized_shape`` axes, then scale by weight, add bias.

    As ``torch.nn.functional.layer_norm``: weight and bias default to ones and zeros.
    """
    x = as_tensor(x)
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if x.shape[x.ndim - len(shape):] != shape or len(shape) == 0 or len(shape) > x.ndim:
        raise ValueError(f"layer_norm: normalized_shape {shape} must match the trailing axes of "
                         f"the input, got input shape {x.shape}")
    xp = backend.get_array_module(x.data)
    w = as_tensor(weight, x) if weight is not None else as_tensor(xp.ones(shape, x.dtype), x)
    b = as_tensor(bias, x) if bias is not None else as_tensor(xp.zeros(shape, x.dtype), x)
    for name, p in (("weight", w), ("bias", b)):
        if p.shape != shape:
            raise ValueError(f"layer_norm: {name} shape {p.shape} must equal normalized_shape "
                             f"{shape}")
    return LayerNorm.apply(x, w, b, n_axes=len(shape), eps=eps)

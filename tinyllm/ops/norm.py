"""Layer normalization (Ba, Kiros, Hinton 2016)."""
from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.dispatch import accelerator
from tinyllm.kernels import layernorm as layernorm_kernels
from tinyllm.ops._util import as_tensor


def _kernel_fits(x2, w2):
    """The Numba or CuPy kernel takes this call: the switch is on, and x (N, D) is float32 or
    float64, non-empty, with weights of its dtype."""
    return (accelerator("layer_norm", x2, w2, cupy=True) is not None
            and x2.dtype.char in "fd" and w2.dtype == x2.dtype and x2.size > 0)


class LayerNorm(Function):
    """y = (x - mean) / sqrt(var + eps) * w + b, statistics over the last w.ndim axes (the
    normalized shape S; ``layer_norm`` checks that x ends with S). Per row of n values:

        mu = mean(x),  var = mean((x - mu)^2),  rstd = 1 / sqrt(var + eps)
        xhat = (x - mu) * rstd,   y = xhat * w + b

    Backward, with dxhat = dout * w:
        db = sum of dout over the leading (batch) axes
        dw = sum of dout * xhat over the leading axes
        dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    The last line is the chain rule through mu and var: dmu/dx_j = 1/n, drstd/dx_j =
    -rstd^2 xhat_j / n, so dxhat_i/dx_j = rstd ([i == j] - 1/n - xhat_i xhat_j / n); the two
    means over the normalized axes are those two correction terms.

    Shapes: x (..., *S); w, b S (the normalized shape); y like x; seen as rows x2 (N, D),
    D = prod(S); forward saves mu, rstd (N,) and recomputes xhat in backward.
    Fast path: a Numba kernel, or a CUDA kernel on CuPy arrays (tinyllm/kernels/layernorm.py),
    under the switch.
    """

    def forward(self, x, w, b, n_axes=1, eps=1e-5):
        D = w.size
        x2, w2, b2 = x.reshape(-1, D), w.reshape(D), b.reshape(D)   # (..., *S) -> (N, D)
        self.x2, self.w, self.in_shape, self.w_shape = x2, w, x.shape, w.shape
        if _kernel_fits(x2, w2):
            y2, self.mu, self.rstd = layernorm_kernels.layer_norm_forward(x2, w2, b2, eps)
            return y2.reshape(x.shape)
        xp = backend.get_array_module(x)
        self.mu = x2.mean(axis=1)                                    # (N,)
        xc = x2 - self.mu[:, None]
        rstd = 1 / xp.sqrt((xc * xc).mean(axis=1) + eps)            # (N,)
        self.rstd = rstd.astype(x.dtype)
        y2 = xc * rstd[:, None] * w2 + b2
        return y2.reshape(x.shape)                                   # (N, D) -> (..., *S)

    def backward(self, dout):
        D = self.w.size
        dout2, x2, w2 = dout.reshape(-1, D), self.x2, self.w.reshape(D)
        mu, rstd = self.mu, self.rstd
        if _kernel_fits(x2, w2):
            dx, dw, db = layernorm_kernels.layer_norm_backward(dout2, x2, w2, mu, rstd)
        else:
            xhat = (x2 - mu[:, None]) * rstd[:, None]                # (N, D)
            dxhat = dout2 * w2
            dx = rstd[:, None] * (dxhat - dxhat.mean(axis=1, keepdims=True)
                                  - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
            dw = (dout2 * xhat).sum(axis=0)                          # (D,)
            db = dout2.sum(axis=0)
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

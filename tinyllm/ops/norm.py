"""Layer normalization (Ba, Kiros, Hinton 2016) and RMS normalization (Zhang & Sennrich 2019)."""
import numpy as np

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


class RMSNorm(Function):
    """y = x / sqrt(mean(x^2) + eps) * w, the mean over the last axis (Zhang & Sennrich 2019;
    LLaMA's norm). LayerNorm without the centring and without the shift. Per row of n values:

        rstd = 1 / sqrt(mean(x^2) + eps),   xhat = x * rstd,   y = xhat * w

    Backward, with dxhat = dout * w:
        dw = sum of dout * xhat over the leading (batch) axes
        dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
    from drstd/dx_j = -rstd^3 x_j / n = -rstd^2 xhat_j / n, so dxhat_i/dx_j =
    rstd ([i == j] - xhat_i xhat_j / n): LayerNorm's Jacobian without the -1/n of the mean.

    Shapes: x (..., D); w (D,); y like x; seen as rows x2 (N, D); forward saves rstd (N,).
    """

    def forward(self, x, w, eps=1e-6):
        xp = backend.get_array_module(x)
        D = w.shape[0]
        x2 = x.reshape(-1, D)                                            # (..., D) -> (N, D)
        rstd = 1 / xp.sqrt((x2 * x2).mean(axis=1) + eps)                 # (N,)
        self.x2, self.w, self.rstd, self.in_shape = x2, w, rstd.astype(x.dtype), x.shape
        y2 = x2 * self.rstd[:, None] * w
        return y2.reshape(x.shape)

    def backward(self, dout):
        D = self.w.shape[0]
        dout2, rstd = dout.reshape(-1, D), self.rstd[:, None]            # (N, D), (N, 1)
        xhat = self.x2 * rstd                                            # (N, D)
        dxhat = dout2 * self.w
        dx = rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))
        dw = (dout2 * xhat).sum(axis=0)                                  # (D,)
        return (dx.reshape(self.in_shape) if self.needs_input_grad[0] else None,
                dw if self.needs_input_grad[1] else None)


def rms_norm(x, normalized_shape, weight=None, eps=None):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (``normalized_shape`` = its size).

    As ``torch.nn.functional.rms_norm``: weight defaults to ones, eps to the machine epsilon of
    x's dtype (LLaMA passes 1e-6 or 1e-5). Only the last axis is normalized.
    """
    x = as_tensor(x)
    if x.dtype.kind != "f":
        raise TypeError(f"rms_norm: the input must be a float tensor, got {x.dtype}")
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if len(shape) != 1 or x.ndim == 0 or x.shape[-1] != shape[0]:
        raise ValueError(f"rms_norm: normalized_shape must be the size of the input's last axis "
                         f"(one axis), got {shape} for input shape {x.shape}")
    xp = backend.get_array_module(x.data)
    w = as_tensor(weight, x) if weight is not None else as_tensor(xp.ones(shape, x.dtype), x)
    if w.shape != shape:
        raise ValueError(f"rms_norm: weight shape {w.shape} must equal normalized_shape {shape}")
    if eps is None:
        eps = float(np.finfo(x.dtype).eps)
    if not eps >= 0:
        raise ValueError(f"rms_norm: eps must be >= 0, got {eps}")
    return RMSNorm.apply(x, w, eps=eps)

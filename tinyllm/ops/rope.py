"""Rotary position embedding, RoPE (Su et al. 2021, "RoFormer"; LLaMA's positions).

Each pair of channels (x_i, x_{i + D/2}) of a query or key at position p is rotated by the
angle p * theta_i, theta_i = base^(-2i/D) (i < D/2), the frequencies of the sinusoidal encoding:

    y_i       = x_i cos(p theta_i) - x_{i+D/2} sin(p theta_i)
    y_{i+D/2} = x_{i+D/2} cos(p theta_i) + x_i sin(p theta_i)

Rotations compose, so q_m . k_n = (R_m q) . (R_n k) = q . R_{n-m} k depends on the positions
only through n - m: attention scores see relative positions. The pairing (i, i + D/2), not
(2i, 2i+1), is Hugging Face's ``rotate_half`` convention, so LLaMA checkpoints work unchanged.
"""
from tinyllm import backend
from tinyllm.autograd.function import Function
from tinyllm.ops._util import as_tensor


def rotate_half(x):
    """[x1, x2] -> [-x2, x1] on the last axis (halves of size D/2): the 90-degree rotation R of
    every channel pair. R is orthogonal and R^T = -R. Raw arrays (NumPy or CuPy)."""
    xp = backend.get_array_module(x)
    half = x.shape[-1] // 2
    return xp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope_cos_sin(positions, head_size, base=10000.0, dtype=None):
    """The tables cos, sin (T, D) for integer ``positions`` (T,): angle[p, i] = positions[p] *
    base^(-2i/D), repeated for both halves (Hugging Face's ``cat(freqs, freqs)``). Raw arrays
    on the positions' device, computed in float64, cast to ``dtype``."""
    xp = backend.get_array_module(positions)
    inv_freq = 1.0 / base ** (xp.arange(0, head_size, 2, dtype=xp.float64) / head_size)  # (D/2,)
    angles = positions.astype(xp.float64)[:, None] * inv_freq[None, :]                  # (T, D/2)
    angles = xp.concatenate([angles, angles], axis=-1)                                    # (T, D)
    dtype = dtype or backend.get_default_dtype()
    return xp.cos(angles).astype(dtype), xp.sin(angles).astype(dtype)


class RoPE(Function):
    """y = x * cos + rotate_half(x) * sin, with rotate_half([x1, x2]) = [-x2, x1]: each channel
    pair (i, i + D/2) rotated by its angle (the tables cos, sin are constants).

    y = (cos + sin R) x elementwise-per-pair, a rotation; its transpose is the inverse rotation:
        dx = dout * cos + R^T (dout * sin) = dout * cos - rotate_half(dout * sin)
    (R^T = -R: rotate_half of [g1, g2] is [-g2, g1], and R^T g = [g2, -g1]).

    Shapes: x (B, H, T, D); cos, sin broadcastable to x, usually (T, D); y like x.
    """

    def forward(self, x, cos, sin):
        self.cos, self.sin = cos, sin
        return x * cos + rotate_half(x) * sin

    def backward(self, dout):
        dx = dout * self.cos - rotate_half(dout * self.sin)
        return dx, None, None                                  # the tables are constants


def rope(x, cos, sin):
    """Rotary position embedding of x (..., T, D) with tables cos, sin (T, D) (from
    ``rope_cos_sin``; arrays or Tensors): x * cos + rotate_half(x) * sin. The tables are
    constants: no gradient flows to them."""
    x = as_tensor(x)
    cos, sin = as_tensor(cos, x), as_tensor(sin, x)
    if x.ndim < 2 or x.shape[-1] % 2:
        raise ValueError(f"rope: the input must be (..., T, D) with an even D, got shape "
                         f"{x.shape}")
    if cos.shape != x.shape[-2:] or sin.shape != x.shape[-2:]:
        raise ValueError(f"rope: cos and sin must both have shape (T, D) = {x.shape[-2:]}, got "
                         f"{cos.shape} and {sin.shape}")
    if cos.requires_grad or sin.requires_grad:
        raise ValueError("rope: cos and sin are constant tables; they cannot require grad")
    return RoPE.apply(x, cos.astype(x.dtype), sin.astype(x.dtype))

"""Op cases for tinyllm/ops/shape.py (squeeze, unsqueeze, flatten, unflatten, expand /
broadcast_to, tile / repeat, repeat_interleave, flip, roll, pad, chunk) and ``where`` with
Python scalars, run by tests/test_ops.py: forward against NumPy, float64 gradcheck, float32
against float64. Every case ends in an op whose gradient is not all ones (a product with a
fixed weight) where the op copies an element several times, so the summing is checked.
"""
import numpy as np

from tinyllm import functional as F
from tests.op_cases import C, normal

W = np.random.default_rng(3).standard_normal((4, 6))                # a fixed weight
MASK = np.array([[True, False, True], [False, False, True]])


def _w(t, w):
    """t times the fixed weight w, in t's dtype (a float64 array would promote float32)."""
    return t * w.astype(t.dtype)


def _pad_torch(x, pad, value=0.0):
    """torch.nn.functional.pad's flat last-axis-first form, in NumPy."""
    pairs = [pad[i:i + 2] for i in range(0, len(pad), 2)][::-1]
    return np.pad(x, [(0, 0)] * (x.ndim - len(pairs)) + pairs, constant_values=value)


def _chunk(a, chunks, axis):
    size = -(-a.shape[axis] // chunks)
    return np.split(a, list(range(size, a.shape[axis], size)), axis=axis)


CASES = [
    # ---- reshapes
    C("squeeze_all", F.squeeze, np.squeeze, normal(1, 3, 1, 2)),
    C("squeeze_axes", lambda a: F.squeeze(a, axis=(0, -2)), lambda a: a.squeeze((0, 2)),
      normal(1, 3, 1, 2)),
    C("squeeze_dim_torch", lambda a: a.squeeze(dim=1), lambda a: a, normal(2, 3)),
    C("unsqueeze", lambda a: a.unsqueeze(1), lambda a: a[:, None], normal(2, 3)),
    C("unsqueeze_tuple_neg", lambda a: F.unsqueeze(a, (0, -1)), lambda a: a[None, ..., None],
      normal(2, 3)),
    C("flatten_all", F.flatten, lambda a: a.reshape(-1), normal(2, 3, 4)),
    C("flatten_middle", lambda a: a.flatten(1, 2), lambda a: a.reshape(2, 12, 5),
      normal(2, 3, 4, 5)),
    C("flatten_0d", F.flatten, lambda a: a.reshape(1), normal()),
    C("unflatten", lambda a: a.unflatten(1, (2, -1)), lambda a: a.reshape(3, 2, 3),
      normal(3, 6)),
    # ---- copies: their gradients add up
    C("expand_torch", lambda a: _w(a.expand(2, -1, 4), W[:3, :4]),
      lambda a: np.broadcast_to(a, (2, 3, 4)) * W[:3, :4], normal(3, 1)),
    C("broadcast_to", lambda a: _w(F.broadcast_to(a, (3, 2, 4)), W[:2, :4]),
      lambda a: np.broadcast_to(a, (3, 2, 4)) * W[:2, :4], normal(4)),
    C("expand_as", lambda a, b: a.expand_as(b) * b, lambda a, b: a * b, normal(1, 6),
      normal(4, 6)),
    C("tile", lambda a: _w(F.tile(a, (2, 3)), W), lambda a: np.tile(a, (2, 3)) * W, normal(2, 2)),
    C("tile_more_reps", lambda a: F.tile(a, (2, 1, 2)), lambda a: np.tile(a, (2, 1, 2)),
      normal(3, 2)),
    C("repeat_torch", lambda a: _w(a.repeat(2, 2), W), lambda a: np.tile(a, (2, 2)) * W,
      normal(2, 3)),
    C("repeat_interleave_int", lambda a: _w(F.repeat_interleave(a, 2, axis=1), W),
      lambda a: np.repeat(a, 2, axis=1) * W, normal(4, 3)),
    C("repeat_interleave_counts", lambda a: a.repeat_interleave(np.array([0, 3, 1]), dim=0),
      lambda a: np.repeat(a, [0, 3, 1], axis=0), normal(3, 2)),
    C("repeat_interleave_flat", lambda a: _w(F.repeat_interleave(a, 3), W.reshape(-1)[:18]),
      lambda a: np.repeat(a, 3) * W.reshape(-1)[:18], normal(2, 3)),
    # ---- reorderings
    C("flip_axis", lambda a: F.flip(a, axis=1), lambda a: np.flip(a, 1), normal(2, 3, 4)),
    C("flip_all", F.flip, np.flip, normal(2, 3)),
    C("flip_dims_torch", lambda a: a.flip(0, -1), lambda a: np.flip(a, (0, 2)), normal(2, 3, 4)),
    C("roll", lambda a: F.roll(a, 2, axis=1), lambda a: np.roll(a, 2, axis=1), normal(3, 5)),
    C("roll_flat", lambda a: F.roll(a, -4), lambda a: np.roll(a, -4), normal(3, 5)),
    C("roll_tuple", lambda a: a.roll((1, -2), dims=(0, 2)),
      lambda a: np.roll(a, (1, -2), axis=(0, 2)), normal(2, 3, 4)),
    # ---- padding: NumPy's pad_width (default) and PyTorch's flat pad=
    C("pad_constant", lambda a: F.pad(a, ((1, 0), (2, 3)), value=0.5),
      lambda a: np.pad(a, ((1, 0), (2, 3)), constant_values=0.5), normal(3, 4)),
    C("pad_int", lambda a: F.pad(a, 1), lambda a: np.pad(a, 1), normal(2, 3)),
    C("pad_torch_form", lambda a: F.pad(a, pad=(2, 1, 0, 1), value=-1.0),
      lambda a: _pad_torch(a, (2, 1, 0, 1), -1.0), normal(2, 3, 4)),
    C("pad_reflect", lambda a: F.pad(a, pad=(2, 3), mode="reflect"),
      lambda a: np.pad(a, ((0, 0), (0, 0), (2, 3)), mode="reflect"), normal(2, 3, 5)),
    C("pad_reflect_2d", lambda a: _w(F.pad(a, ((1, 1), (2, 0)), mode="reflect"), W),
      lambda a: np.pad(a, ((1, 1), (2, 0)), mode="reflect") * W, normal(2, 4)),
    C("pad_reflect_wider_than_axis", lambda a: F.pad(a, 3, mode="reflect"),
      lambda a: np.pad(a, 3, mode="reflect"), normal(2)),
    C("pad_symmetric", lambda a: F.pad(a, (2, 1), mode="symmetric"),
      lambda a: np.pad(a, (2, 1), mode="symmetric"), normal(2, 3)),
    C("pad_replicate", lambda a: F.pad(a, pad=(1, 2), mode="replicate"),
      lambda a: np.pad(a, ((0, 0), (1, 2)), mode="edge"), normal(3, 2)),
    C("pad_circular", lambda a: F.pad(a, ((0, 0), (2, 2)), mode="circular"),
      lambda a: np.pad(a, ((0, 0), (2, 2)), mode="wrap"), normal(2, 3)),
    # ---- chunk (torch.chunk: pieces of ceil(n / chunks), the last smaller)
    C("chunk", lambda a: F.chunk(a, 3, axis=1)[0] * 2 + F.chunk(a, 3, axis=1)[2].sum(),
      lambda a: _chunk(a, 3, 1)[0] * 2 + _chunk(a, 3, 1)[2].sum(), normal(2, 7)),
    C("chunk_method_dim", lambda a: a.chunk(2, dim=0)[1], lambda a: _chunk(a, 2, 0)[1],
      normal(5, 2)),
    # ---- where with Python scalars on either side
    C("where_scalar_left", lambda a: F.where(MASK, 2.5, a), lambda a: np.where(MASK, 2.5, a),
      normal(2, 3)),
    C("where_scalar_right_int", lambda a: F.where(MASK, a, 3), lambda a: np.where(MASK, a, 3),
      normal(2, 3)),
    C("where_bcast_scalar", lambda a: F.where(MASK, a, -1.0), lambda a: np.where(MASK, a, -1.0),
      normal(3)),
]

"""Shape and movement, linear algebra, factories (issue 19): every op against PyTorch (forward
and backward, float64), the edge cases, and the error messages. The NumPy references and the
gradchecks are the cases in tests/cases_shape.py and tests/cases_linalg.py (run by test_ops).
"""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm import functional as F


def _torch_matches(tl_fn, torch_fn, *arrays):
    """tl_fn and torch_fn give the same output and the same input gradients (float64)."""
    torch = pytest.importorskip("torch")
    xs = [tl.tensor(a, requires_grad=True) for a in arrays]
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, ref = tl_fn(*xs), torch_fn(*ts)
    assert out.shape == tuple(ref.shape)
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    dout = np.random.default_rng(1).standard_normal(out.shape)
    out.backward(tl.tensor(dout))
    ref.backward(torch.tensor(dout))
    for x, t in zip(xs, ts):
        np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-12, atol=1e-12)


def _randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ----------------------------------------------------------------------------------------------
# shape and movement against PyTorch

SHAPE_OPS = {
    "squeeze_all": (lambda x: x.squeeze(), lambda t: t.squeeze(), (1, 3, 1, 2)),
    "squeeze_dim_skips": (lambda x: x.squeeze(dim=(0, 1)), lambda t: t.squeeze((0, 1)),
                          (1, 3, 2)),
    "unsqueeze": (lambda x: x.unsqueeze(-1), lambda t: t.unsqueeze(-1), (2, 3)),
    "flatten": (lambda x: x.flatten(1, 2), lambda t: t.flatten(1, 2), (2, 3, 4, 2)),
    "unflatten": (lambda x: x.unflatten(1, (3, -1)), lambda t: t.unflatten(1, (3, -1)), (2, 6)),
    "expand": (lambda x: x.expand(4, -1, 3), lambda t: t.expand(4, -1, 3), (2, 1)),
    "repeat": (lambda x: x.repeat(2, 1, 3), lambda t: t.repeat(2, 1, 3), (2, 3)),
    "tile": (lambda x: F.tile(x, (2,)), lambda t: t.tile((2,)), (2, 3)),
    "repeat_interleave": (lambda x: x.repeat_interleave(3, dim=1),
                          lambda t: t.repeat_interleave(3, dim=1), (2, 3)),
    "repeat_interleave_counts": (lambda x: x.repeat_interleave(np.array([2, 0, 1]), dim=0),
                                 lambda t: t.repeat_interleave(_torch().tensor([2, 0, 1]),
                                                               dim=0), (3, 2)),
    "repeat_interleave_flat": (lambda x: x.repeat_interleave(2), lambda t:
                               t.repeat_interleave(2), (2, 3)),
    "flip": (lambda x: x.flip(0, 2), lambda t: t.flip(0, 2), (2, 3, 4)),
    "roll": (lambda x: x.roll((1, -1), dims=(0, 1)), lambda t: t.roll((1, -1), (0, 1)), (3, 4)),
    "roll_flat": (lambda x: x.roll(5), lambda t: t.roll(5), (3, 4)),
    "pad_constant": (lambda x: F.pad(x, pad=(1, 2, 0, 1), value=0.5),
                     lambda t: _torch().nn.functional.pad(t, (1, 2, 0, 1), value=0.5),
                     (2, 3, 4)),
    "pad_reflect": (lambda x: F.pad(x, pad=(2, 3), mode="reflect"),
                    lambda t: _torch().nn.functional.pad(t, (2, 3), mode="reflect"), (2, 3, 5)),
    "pad_reflect_2d": (lambda x: F.pad(x, pad=(1, 2, 2, 1), mode="reflect"),
                       lambda t: _torch().nn.functional.pad(t, (1, 2, 2, 1), mode="reflect"),
                       (1, 2, 4, 3)),
    "pad_replicate": (lambda x: F.pad(x, pad=(3, 1), mode="replicate"),
                      lambda t: _torch().nn.functional.pad(t, (3, 1), mode="replicate"),
                      (2, 2, 3)),
    "pad_circular": (lambda x: F.pad(x, pad=(2, 1), mode="circular"),
                     lambda t: _torch().nn.functional.pad(t, (2, 1), mode="circular"),
                     (2, 2, 4)),
    "triu": (lambda x: x.triu(1), lambda t: t.triu(1), (2, 4, 5)),
    "tril": (lambda x: x.tril(diagonal=-1), lambda t: t.tril(diagonal=-1), (4, 3)),
    "diagonal": (lambda x: x.diagonal(1, dim1=1, dim2=2), lambda t: t.diagonal(1, 1, 2),
                 (2, 3, 4)),
    "chunk": (lambda x: F.cat(x.chunk(3, dim=1)[::-1], axis=1),
              lambda t: _torch().cat(t.chunk(3, dim=1)[::-1], dim=1), (2, 7)),
    "outer": (lambda x: F.outer(x, x * 2.0), lambda t: _torch().outer(t, t * 2.0), (4,)),
}


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("name", list(SHAPE_OPS))
def test_shape_op_matches_torch(name):
    fn, torch_fn, shape = SHAPE_OPS[name]
    _torch_matches(fn, torch_fn, _randn(*shape))


def test_where_takes_python_scalars_on_either_side():
    torch = _torch()
    mask = np.array([[True, False, True], [False, True, False]])
    cond = torch.tensor(mask)
    _torch_matches(lambda x: F.where(mask, 2.0, x), lambda t: torch.where(cond, 2.0, t),
                   _randn(2, 3))
    _torch_matches(lambda x: F.where(mask, x, -1), lambda t: torch.where(cond, t, -1.0),
                   _randn(2, 3))
    both = F.where(mask, 1.0, 0.0)
    assert both.dtype == tl.get_default_dtype() and not both.requires_grad
    np.testing.assert_array_equal(both.numpy(), mask.astype(float))


# ----------------------------------------------------------------------------------------------
# einsum, conv1d against PyTorch

EINSUM_SPECS = [
    ("ij,jk->ik", (3, 4), (4, 5)),
    ("bij,bjk->bik", (2, 3, 4), (2, 4, 5)),
    ("ii->", (3, 3)),
    ("ii->i", (3, 3)),
    ("ij->ji", (2, 3)),
    ("ij->", (2, 3)),
    ("ij,k->ik", (2, 3), (4,)),
    ("iij,jk->ik", (3, 3, 2), (2, 4)),
    ("...ij,...jk->...ik", (2, 3, 4), (4, 5)),
    ("ij,jk", (3, 4), (4, 2)),
    ("ij,jk,kl->il", (2, 3), (3, 4), (4, 2)),
    ("bhqd,bhkd->bhqk", (1, 2, 3, 4), (1, 2, 5, 4)),
]


@pytest.mark.parametrize("spec", EINSUM_SPECS, ids=[s[0] for s in EINSUM_SPECS])
def test_einsum_matches_torch(spec):
    torch = _torch()
    subscripts, *shapes = spec
    arrays = [_randn(*s, seed=i) for i, s in enumerate(shapes)]
    _torch_matches(lambda *xs: F.einsum(subscripts, *xs),
                   lambda *ts: torch.einsum(subscripts, *ts), *arrays)


@pytest.mark.parametrize("stride, padding, dilation, groups, bias", [
    (1, 0, 1, 1, True), (2, 1, 1, 1, True), (1, 2, 2, 1, False), (3, 0, 1, 2, True),
    (1, "same", 3, 1, True), (1, "valid", 1, 4, False)])
def test_conv1d_matches_torch(stride, padding, dilation, groups, bias):
    torch = _torch()
    arrays = [_randn(2, 4, 13), _randn(8, 4 // groups, 3, seed=1)] + (
        [_randn(8, seed=2)] if bias else [])

    def ours(x, w, b=None):
        return F.conv1d(x, w, b, stride=stride, padding=padding, dilation=dilation,
                        groups=groups)

    def theirs(x, w, b=None):
        return torch.nn.functional.conv1d(x, w, b, stride=stride, padding=padding,
                                          dilation=dilation, groups=groups)
    _torch_matches(ours, theirs, *arrays)


def test_conv1d_unbatched_and_float32():
    x, w = _randn(3, 8), _randn(2, 3, 4, seed=1)
    out = F.conv1d(tl.tensor(x), tl.tensor(w))
    assert out.shape == (2, 5)
    out32 = F.conv1d(tl.tensor(x.astype(np.float32)), tl.tensor(w.astype(np.float32)))
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32.numpy(), out.numpy(), rtol=1e-5, atol=1e-5)


def test_conv1d_causal_output_depends_only_on_the_past():
    """Left padding by K - 1: output t sees inputs <= t, so dx of output t is 0 after t."""
    x = tl.tensor(_randn(1, 2, 6), requires_grad=True)
    w = tl.tensor(_randn(3, 2, 3, seed=1))
    out = F.conv1d(F.pad(x, pad=(2, 0)), w)
    assert out.shape == (1, 3, 6)
    out[0, :, 2].sum().backward()
    assert np.all(x.grad[..., 3:] == 0) and np.all(x.grad[..., :3] != 0)


# ----------------------------------------------------------------------------------------------
# factories

def test_factories_match_torch():
    torch = _torch()
    np.testing.assert_array_equal(tl.eye(3, 4, 1).numpy(), np.eye(3, 4, 1))
    np.testing.assert_array_equal(tl.eye(3, 5).numpy(), torch.eye(3, 5).numpy())
    assert tl.eye(3).dtype == tl.get_default_dtype() and tl.eye(2, dtype=np.int64).dtype == \
        np.int64
    np.testing.assert_allclose(tl.linspace(-1.0, 2.0, steps=7, dtype=np.float64).numpy(),
                               torch.linspace(-1.0, 2.0, 7, dtype=torch.float64).numpy())
    np.testing.assert_allclose(tl.linspace(0, 1, 4, endpoint=False).numpy(), [0, .25, .5, .75])
    rows, cols = tl.tril_indices(4, -1, 5)
    np.testing.assert_array_equal(np.stack([rows.numpy(), cols.numpy()]),
                                  torch.tril_indices(4, 5, -1).numpy())
    rows, cols = tl.triu_indices(3, 1)
    np.testing.assert_array_equal(np.stack([rows.numpy(), cols.numpy()]),
                                  torch.triu_indices(3, 3, 1).numpy())


def test_tril_indices_read_the_lower_triangle():
    x = tl.tensor(np.arange(9.0).reshape(3, 3), requires_grad=True)
    x[tl.tril_indices(3)].sum().backward()
    np.testing.assert_array_equal(x.grad, np.tril(np.ones((3, 3))))


def test_empty_zeros_ones_take_a_dtype():
    assert tl.empty(2, 3).shape == (2, 3) and tl.empty((2,), dtype=np.int32).dtype == np.int32
    assert tl.zeros(2, dtype=np.int64).dtype == np.int64
    assert tl.ones((2, 2), dtype=bool).numpy().all()
    assert tl.zeros(3, dtype="float64").dtype == np.float64


def test_randint_is_seeded_in_range_and_takes_both_signatures():
    tl.manual_seed(7)
    a = tl.randint(3, 9, size=(50,))
    tl.manual_seed(7)
    b = tl.randint(3, 9, (50,))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert a.dtype == np.int64 and a.numpy().min() >= 3 and a.numpy().max() < 9
    assert len(np.unique(a.numpy())) == 6                            # all six values appear
    torch_form = tl.randint(5, (2, 3))                                # torch.randint(high, size)
    assert torch_form.shape == (2, 3) and torch_form.numpy().max() < 5
    assert tl.randint(4).shape == () and not tl.randint(4, size=3).requires_grad
    gen = np.random.default_rng(0)
    np.testing.assert_array_equal(tl.randint(0, 100, 4, generator=gen).numpy(),
                                  np.random.default_rng(0).integers(0, 100, 4))


# ----------------------------------------------------------------------------------------------
# edge cases

def test_squeeze_axis_is_numpy_dim_is_torch():
    x = tl.zeros(1, 3)
    with pytest.raises(ValueError, match=r"squeeze: axis 1 has size 3, not 1"):
        F.squeeze(x, axis=1)
    assert F.squeeze(x, dim=1).shape == (1, 3)
    assert tl.zeros(()).squeeze().shape == ()
    with pytest.raises(TypeError, match="squeeze: got both axis= and dim="):
        F.squeeze(x, 0, dim=0)


def test_zero_size_and_0d_inputs():
    assert F.flatten(tl.zeros(())).shape == (1,)
    assert F.tile(tl.zeros(2, 0), (2, 3)).shape == (4, 0)
    assert F.repeat_interleave(tl.zeros(3), 0).shape == (0,)
    assert F.unsqueeze(tl.zeros(()), 0).shape == (1,)
    assert [c.shape for c in F.chunk(tl.zeros(5), 3)] == [(2,), (2,), (1,)]
    assert [c.shape for c in F.chunk(tl.zeros(2), 4)] == [(1,), (1,)]       # fewer than asked
    assert F.einsum("i,i->", tl.zeros(0), tl.zeros(0)).shape == ()
    x = tl.tensor(np.ones((2, 0)), requires_grad=True)
    F.expand(x, 3, 2, 0).sum().backward()
    assert x.grad.shape == (2, 0)


def test_expand_returns_a_view_without_copying():
    x = tl.tensor(np.ones((3, 1)))
    y = x.expand(3, 1000)
    assert y.shape == (3, 1000) and y.data.base is not None


@pytest.mark.parametrize("call, error, message", [
    (lambda: F.unsqueeze(tl.zeros(2)), TypeError, r"unsqueeze: missing the axis"),
    (lambda: F.flatten(tl.zeros(2, 3), 1, 0), ValueError, r"flatten: start axis 1 comes after"),
    (lambda: F.unflatten(tl.zeros(2, 6), 1, (4, -1)), ValueError,
     r"unflatten: sizes \(4, -1\) do not multiply to the length 6"),
    (lambda: F.expand(tl.zeros(2, 3), 3), ValueError, r"expand: 1 sizes"),
    (lambda: F.expand(tl.zeros(3), -1, 3), ValueError, r"expand: -1 is not allowed"),
    (lambda: F.broadcast_to(tl.zeros(2, 3), (4, 3)), ValueError,
     r"broadcast_to: cannot broadcast shape \(2, 3\) to \(4, 3\)"),
    (lambda: F.tile(tl.zeros(2), (-1,)), ValueError, r"tile: repetitions must be >= 0"),
    (lambda: F.repeat_interleave(tl.zeros(3), [1, 2]), ValueError,
     r"repeat_interleave: repeats must be an int >= 0 or one count"),
    (lambda: F.flip(tl.zeros(2), 1), ValueError, r"flip: axis 1 is out of range"),
    (lambda: F.roll(tl.zeros(2, 2), (1, 2), axis=0), ValueError,
     r"roll: shifts \(1, 2\) and axes \(0,\) must have the same length"),
    (lambda: F.roll(tl.zeros(2, 2), (1, 2)), ValueError, r"roll: 2 shifts"),
    (lambda: F.pad(tl.zeros(2)), TypeError, r"pad: give pad_width .* exactly one"),
    (lambda: F.pad(tl.zeros(2, 2), (1, 2, 3, 4)), ValueError,
     r"pad: pad_width \(1, 2, 3, 4\) is not .*use pad="),
    (lambda: F.pad(tl.zeros(2), pad=(1,)), ValueError, r"pad: pad= needs an even number"),
    (lambda: F.pad(tl.zeros(2), 1, mode="mirror"), ValueError, r"pad: mode must be one of"),
    (lambda: F.pad(tl.zeros(2), -1), ValueError, r"pad: widths must be >= 0"),
    (lambda: F.chunk(tl.zeros(2), 0), ValueError, r"chunk: chunks must be an int >= 1"),
    (lambda: F.triu(tl.zeros(3)), ValueError, r"triu: needs at least 2 axes"),
    (lambda: F.diagonal(tl.zeros(2, 2), axis1=1, axis2=-1), ValueError,
     r"diagonal: axis1 and axis2 must differ"),
    (lambda: F.einsum("ij,jk->ik", tl.zeros(2, 3)), ValueError,
     r"einsum: 'ij,jk->ik' names 2 operands, got 1"),
    (lambda: F.einsum("ij,jk->ik", tl.zeros(2, 3), tl.zeros(4, 5)), ValueError,
     r"einsum: index 'j' has sizes 3 and 4"),
    (lambda: F.einsum("ijk->i", tl.zeros(2, 3)), ValueError,
     r"einsum: operand 0 has shape \(2, 3\) \(2 axes\) but subscripts 'ijk'"),
    (lambda: F.einsum("ii->i", tl.zeros(2, 3)), ValueError,
     r"einsum: operand 0 repeats index 'i' over axes of different sizes"),
    (lambda: F.einsum("ij->ii", tl.zeros(2, 2)), ValueError, r"einsum: output 'ii'"),
    (lambda: F.einsum("ij->k", tl.zeros(2, 2)), ValueError, r"einsum: output 'k'"),
    (lambda: F.einsum("i1->i", tl.zeros(2, 2)), ValueError, r"einsum: .* letters a-z"),
    (lambda: F.einsum(3, tl.zeros(2)), TypeError, r"einsum: subscripts must be a string"),
    (lambda: F.conv1d(tl.zeros(2, 3, 5), tl.zeros(4, 2, 3)), ValueError,
     r"conv1d: x has 3 channels and weight shape \(4, 2, 3\) with groups=1"),
    (lambda: F.conv1d(tl.zeros(3, 5), tl.zeros(4, 3)), ValueError,
     r"conv1d: expected x \(B, C_in, T\)"),
    (lambda: F.conv1d(tl.zeros(1, 3, 2), tl.zeros(4, 3, 3)), ValueError,
     r"conv1d: input length 2 .* shorter than the kernel's reach 3"),
    (lambda: F.conv1d(tl.zeros(1, 3, 5), tl.zeros(4, 3, 3), tl.zeros(3)), ValueError,
     r"conv1d: bias must have shape \(C_out,\) = \(4,\)"),
    (lambda: F.conv1d(tl.zeros(1, 3, 5), tl.zeros(4, 3, 3), stride=0), ValueError,
     r"conv1d: stride must be an int >= 1"),
    (lambda: F.conv1d(tl.zeros(1, 3, 5), tl.zeros(4, 3, 3), padding="same", stride=2),
     ValueError, r"conv1d: padding='same' needs stride 1"),
    (lambda: tl.randint(5, 5), ValueError, r"randint: needs low < high"),
    (lambda: tl.linspace(0, 1, -1), ValueError, r"linspace: num \(steps\) must be"),
    (lambda: tl.eye(-1), ValueError, r"eye: sizes must be >= 0"),
])
def test_errors_name_the_op_and_what_it_got(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ----------------------------------------------------------------------------------------------
# review against PyTorch: the spellings and edge cases that used to disagree

def test_torch_spellings_and_0d_edges_match_torch():
    torch = pytest.importorskip("torch")
    x = _randn(2, 1, 4)
    _torch_matches(lambda a: a.unflatten(dim=2, sizes=(2, 2)),       # dim= as torch
                   lambda t: t.unflatten(dim=2, sizes=(2, 2)), x)
    _torch_matches(lambda a: F.unflatten(a, dim=-1, sizes=(2, -1)),
                   lambda t: torch.unflatten(t, dim=-1, sizes=(2, -1)), x)
    _torch_matches(lambda a: F.tile(a, dims=(2, 1)), lambda t: torch.tile(t, dims=(2, 1)), x)
    _torch_matches(lambda a: a.tile(dims=(2,)), lambda t: t.tile(dims=(2,)), x)
    _torch_matches(lambda a: a.expand(size=(3, 2, 5, 4)), lambda t: t.expand(size=(3, 2, 5, 4)),
                   x)
    _torch_matches(lambda a: a.repeat(repeats=(1, 2, 1)), lambda t: t.repeat(repeats=(1, 2, 1)),
                   x)
    # torch.broadcast_to takes -1 for "keep this axis", as expand (not for a new leading axis)
    _torch_matches(lambda a: F.broadcast_to(a, (3, -1, 5, -1)),
                   lambda t: torch.broadcast_to(t, (3, -1, 5, -1)), x)
    _torch_matches(lambda a: a.broadcast_to((-1, 3, -1)), lambda t: t.broadcast_to((-1, 3, -1)),
                   x)
    with pytest.raises(ValueError, match="-1 is not allowed for a new leading axis"):
        F.broadcast_to(tl.zeros(2), (-1, 2))
    # a 0-d tensor takes dim 0 and -1 (squeeze) and flips to itself, as in torch
    s = np.array(1.5)
    _torch_matches(lambda a: a.squeeze(dim=-1), lambda t: t.squeeze(dim=-1), s)
    _torch_matches(lambda a: a.flip(0), lambda t: t.flip(0), s)
    _torch_matches(lambda a: F.flip(a, dims=(-1,)), lambda t: torch.flip(t, dims=(-1,)), s)


def test_triu_tril_keep_the_dtype_as_torch():
    torch = pytest.importorskip("torch")
    for dtype in (np.bool_, np.int32, np.int64, np.float32):
        m = (_randn(3, 4) > 0).astype(dtype) if dtype is np.bool_ else (
            _randn(3, 4) * 3).astype(dtype)
        for ours, theirs in ((F.triu, torch.triu), (F.tril, torch.tril)):
            out, ref = ours(tl.tensor(m), 1), theirs(torch.tensor(m), 1).numpy()
            assert out.dtype == ref.dtype
            np.testing.assert_array_equal(out.numpy(), ref)

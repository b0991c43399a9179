"""Property-based tests: random broadcastable shapes for the binary ops and matmul.

For every generated shape pair: the forward equals NumPy (same broadcast shape and values) and
the backward passes float64 gradcheck, so the sum over broadcast axes is right for shapes
nobody thought to write down (size-1 axes, 0-d, different ranks).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import tinyllm as tl

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
    "pow": (lambda a, b: a ** b, np.power),
    "where": (lambda a, b: tl.where(MASK_FN(a, b), a, b), None),
}


def MASK_FN(a, b):
    shape = np.broadcast_shapes(a.shape, b.shape)
    return np.random.default_rng(0).random(shape) < 0.5


def _inputs(shapes, seed, op):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shapes[0])
    b = rng.standard_normal(shapes[1])
    if op in ("div", "pow"):
        b = rng.uniform(0.5, 1.5, shapes[1])
        if op == "div":
            b = b * rng.choice([-1, 1], shapes[1])
    if op == "pow":
        a = rng.uniform(0.5, 2.0, shapes[0])
    # shape () draws come back as Python floats, which tl.tensor would make float32
    return np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)


@pytest.mark.parametrize("op", sorted(BINARY))
@SETTINGS
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=3),
       seed=st.integers(0, 2 ** 16))
def test_binary_broadcasting(op, shapes, seed):
    fn, ref = BINARY[op]
    a, b = _inputs(shapes.input_shapes, seed, op)
    ta, tb = tl.tensor(a, requires_grad=True), tl.tensor(b, requires_grad=True)
    out = fn(ta, tb)
    assert out.shape == shapes.result_shape
    expected = ref(a, b) if ref is not None else np.where(MASK_FN(a, b), a, b)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert tl.gradcheck(fn, [ta, tb])


@st.composite
def matmul_shapes(draw):
    """Shapes a, b valid for a @ b, including 1-D operands and broadcast batch axes."""
    m, k, n = (draw(st.integers(1, 4)) for _ in range(3))
    batch = draw(mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3))
    a_vec, b_vec = draw(st.booleans()), draw(st.booleans())
    a = (k,) if a_vec else batch.input_shapes[0] + (m, k)
    b = (k,) if b_vec else batch.input_shapes[1] + (k, n)
    return a, b


@SETTINGS
@given(shapes=matmul_shapes(), seed=st.integers(0, 2 ** 16))
def test_matmul_shapes(shapes, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    ta, tb = tl.tensor(a, requires_grad=True), tl.tensor(b, requires_grad=True)
    out = ta @ tb
    np.testing.assert_allclose(out.numpy(), a @ b, rtol=1e-12, atol=1e-12)
    assert tl.gradcheck(lambda x, y: x @ y, [ta, tb])


@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       data=st.data())
def test_reductions_over_random_axes(shape, data):
    ndim = len(shape)
    axes = data.draw(st.lists(st.integers(-ndim, ndim - 1), max_size=ndim, unique_by=lambda a:
                              a % ndim))
    axis = tuple(axes) if axes else None
    keepdims = data.draw(st.booleans())
    x = np.random.default_rng(len(shape)).standard_normal(shape)
    t = tl.tensor(x, requires_grad=True)
    for name in ("sum", "mean"):
        out = getattr(t, name)(axis=axis, keepdims=keepdims)
        np.testing.assert_allclose(out.numpy(), getattr(x, name)(axis=axis, keepdims=keepdims),
                                   rtol=1e-12)
        assert tl.gradcheck(lambda t: getattr(t, name)(axis=axis, keepdims=keepdims), [t])

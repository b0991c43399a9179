"""Bugs found by review of the core engine, each pinned by a test (reproducer first)."""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm import backend


class SquareZeroGrad(tl.Function):
    """out = x^2 with a backward that returns 0: any gradcheck must reject it."""

    def forward(self, x):
        return x * x

    def backward(self, dout):
        return dout * 0


@pytest.mark.parametrize("layout", ["fortran", "transposed"])
def test_gradcheck_perturbs_non_c_contiguous_inputs(layout):
    a = np.random.default_rng(0).standard_normal((3, 4))
    data = np.asfortranarray(a) if layout == "fortran" else a.T
    x = tl.Tensor(data, requires_grad=True)
    with pytest.raises(tl.GradcheckError):
        tl.gradcheck(lambda x: SquareZeroGrad.apply(x), [x])
    assert tl.gradcheck(lambda x: (x * x).sum(), [x])
    (g,) = tl.numerical_grad(lambda x: (x * x).sum(), [x])
    np.testing.assert_allclose(g, 2 * data, rtol=1e-6)


def test_gradcheck_fails_when_the_numeric_gradient_is_nan():
    class SqrtWrong(tl.Function):
        def forward(self, x):
            return backend.get_array_module(x).sqrt(x)

        def backward(self, dout):
            return dout * 123.0

    x = tl.tensor([1e-7], dtype=np.float64, requires_grad=True)   # x - eps < 0: sqrt is NaN
    with np.errstate(invalid="ignore"):
        with pytest.raises(tl.GradcheckError):
            tl.gradcheck(lambda x: SqrtWrong.apply(x), [x])


def test_cross_entropy_ignored_row_with_minus_inf_logit_is_not_nan():
    z = tl.tensor([[-np.inf, 1.0, 2.0], [0.0, 1.0, 2.0]], dtype=np.float64, requires_grad=True)
    loss = tl.cross_entropy(z, [-100, 1])
    expected = -(1.0 - np.log(np.exp(0.0) + np.exp(1.0) + np.exp(2.0)))
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert np.isfinite(backend.asnumpy(z.grad)).all()
    np.testing.assert_array_equal(backend.asnumpy(z.grad)[0], [0.0, 0.0, 0.0])


def test_cross_entropy_all_ignored_gives_nan_loss_and_zero_grad():
    z = tl.tensor(np.zeros((2, 3)), requires_grad=True)
    loss = tl.cross_entropy(z, [-100, -100])
    assert np.isnan(loss.item())                                   # as PyTorch
    loss.backward()
    np.testing.assert_array_equal(backend.asnumpy(z.grad), np.zeros((2, 3)))


def test_relu_of_minus_inf_is_zero():
    x = tl.tensor([-np.inf, -1.0, 2.0, np.inf])
    np.testing.assert_array_equal(tl.relu(x).numpy(), [0.0, 0.0, 2.0, np.inf])


def test_pow_zero_to_the_zero_has_zero_gradient():
    x = tl.tensor([0.0, 2.0], requires_grad=True)
    (x ** 0).sum().backward()
    np.testing.assert_array_equal(backend.asnumpy(x.grad), [0.0, 0.0])
    y = tl.tensor([0.0, 3.0], requires_grad=True)
    (y ** 2).sum().backward()
    np.testing.assert_array_equal(backend.asnumpy(y.grad), [0.0, 6.0])


@pytest.mark.parametrize("bad", [None, [None], 1j, 10 ** 20, "a"])
def test_invalid_operands_are_refused(bad):
    with pytest.raises(TypeError, match="unsupported operand"):
        tl.tensor([1.0]) + bad


def test_zero_d_leaf_grad_is_an_array_and_accumulates_in_place():
    s = tl.tensor(2.0, requires_grad=True)
    (s * 3).backward()
    (s * 3).backward()
    xp = backend.get_array_module(s.data)
    assert isinstance(s.grad, xp.ndarray) and s.grad.shape == ()
    g = s.grad
    g *= 0.5                                     # in-place clipping must reach .grad
    assert float(s.grad) == 3.0


def test_hook_returning_wrong_shape_is_refused():
    x = tl.tensor([1.0, 2.0], requires_grad=True)
    x.register_hook(lambda g: g.sum())
    with pytest.raises(RuntimeError, match=r"returned a gradient of shape \(\), expected .*\(2,\)"):
        (x * 2).sum().backward()


def test_hook_dtype_is_matched():
    x = tl.tensor([1.0, 2.0], requires_grad=True)                  # float32
    x.register_hook(lambda g: np.asarray(backend.asnumpy(g), dtype=np.float64) * 2
                    if backend.get_array_module(g) is np else g * 2)
    (x * 1).sum().backward()
    assert x.grad.dtype == np.float32


def test_one_no_grad_instance_can_be_reentered():
    ctx = tl.no_grad()
    with ctx:
        with ctx:
            pass
        assert not tl.is_grad_enabled()
    assert tl.is_grad_enabled()


def test_int_inputs_give_default_float_for_real_valued_ops():
    i = tl.tensor([1, 4])
    for y in (tl.exp(i), tl.sqrt(i), tl.log(i), tl.tanh(i), tl.sigmoid(i), tl.gelu(i), i / i,
              i / 2, tl.softmax(i), tl.log_softmax(i), tl.dropout(i, 0.5)):
        assert y.dtype == np.float32, y
    assert (i * 2).dtype == np.int64 and (i + i).dtype == np.int64


def test_numpy_scalar_keeps_its_dtype():
    assert tl.tensor(np.float64(3.0)).dtype == np.float64
    assert tl.tensor(np.float32(3.0)).dtype == np.float32


def test_iteration_and_numpy_conversion():
    t = tl.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert [row.tolist() for row in t] == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(TypeError, match="0-d"):
        iter(tl.tensor(1.0))
    if tl.get_backend() == "numpy":
        np.testing.assert_array_equal(np.asarray(t), [[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(RuntimeError, match="requires grad"):
        np.asarray(tl.tensor([1.0], requires_grad=True))


def test_bool_axis_is_refused():
    with pytest.raises(TypeError, match="axis must be an int"):
        tl.randn(2, 3).sum(axis=True)

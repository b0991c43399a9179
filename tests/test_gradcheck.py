"""gradcheck must fail on wrong backward passes and pass on right ones."""
import re
import warnings

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import Function, backend
from tests.conftest import t64


class Cube(Function):
    """out = x^3, dx = 3 x^2 dout (correct)."""

    def forward(self, x):
        self.x = x
        return x ** 3

    def backward(self, dout):
        return 3 * self.x ** 2 * dout


class CubeWrongFactor(Cube):
    """A classic slip: the power rule without the exponent factor."""

    def backward(self, dout):
        return self.x ** 2 * dout


class ScaleWrongAtOneElement(Function):
    """out = 2x, with the gradient of one element (index 4) wrong."""

    def forward(self, x):
        return 2 * x

    def backward(self, dout):
        dx = 2 * dout
        dx.reshape(-1)[4] += 0.1
        return dx


class SwapsPositions(Function):
    """out = x * w (elementwise, w fixed), backward returns dout * w reversed.

    With a cotangent of ones this looks right whenever w is symmetric; only a non-uniform
    cotangent exposes it.
    """

    def forward(self, x):
        self.w = backend.get_array_module(x).asarray([1.0, 2.0, 2.0, 1.0])
        return x * self.w

    def backward(self, dout):
        return (dout * self.w)[::-1].copy()


def test_accepts_correct_backward():
    assert tl.gradcheck(lambda x: Cube.apply(x), [t64(np.linspace(-1, 1, 5))])


def test_rejects_wrong_backward_and_names_input_element_and_values():
    x = t64([0.5, -1.0, 2.0])
    with pytest.raises(tl.GradcheckError) as info:
        tl.gradcheck(lambda x: CubeWrongFactor.apply(x).sum(), [x])   # scalar: cotangent 1
    msg = str(info.value)
    assert "input 0" in msg and "shape (3,)" in msg
    # worst element is x = 2: analytic 4, numeric 12
    assert "index (2,)" in msg
    m = re.search(r"analytic ([-\d.e]+) vs numeric ([-\d.e]+)", msg)
    assert float(m.group(1)) == pytest.approx(4.0) and float(m.group(2)) == pytest.approx(12.0)


def test_finds_a_single_wrong_element():
    x = t64(np.arange(12.0).reshape(3, 4))
    with pytest.raises(tl.GradcheckError, match=r"index \(1, 0\)"):
        tl.gradcheck(lambda x: ScaleWrongAtOneElement.apply(x), [x])


def test_names_the_second_input_when_it_is_the_wrong_one():
    class MulWrongDy(Function):
        def forward(self, x, y):
            self.x, self.y = x, y
            return x * y

        def backward(self, dout):
            return dout * self.y, dout * self.y       # dy should be dout * x

    with pytest.raises(tl.GradcheckError, match="input 1"):
        tl.gradcheck(lambda a, b: MulWrongDy.apply(a, b), [t64([1.0, 2.0]), t64([3.0, 5.0])])


def test_non_uniform_cotangent_catches_swapped_positions():
    x = t64([0.3, -0.7, 1.1, 0.2])
    with pytest.raises(tl.GradcheckError):
        tl.gradcheck(lambda x: SwapsPositions.apply(x), [x])


def test_directional_mode_accepts_and_rejects():
    x = t64(np.linspace(-2, 2, 7))
    assert tl.gradcheck(lambda x: Cube.apply(x), [x], mode="directional")
    with pytest.raises(tl.GradcheckError, match="directional"):
        tl.gradcheck(lambda x: CubeWrongFactor.apply(x), [x], mode="directional")


def test_raise_exception_false_returns_false():
    x = t64([1.0, 2.0])
    assert tl.gradcheck(lambda x: CubeWrongFactor.apply(x), [x], raise_exception=False) is False


def test_warns_on_float32_and_still_checks_in_float64():
    x = tl.tensor([0.5, 1.5], requires_grad=True)          # float32
    with pytest.warns(UserWarning, match="input 0 is float32"):
        assert tl.gradcheck(lambda x: (x * x * x).sum(), [x])
    assert x.dtype == np.float32 and x.grad is None        # the caller's tensor is untouched


def test_no_warning_for_float64():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tl.gradcheck(lambda x: x.tanh(), [t64([0.1, 0.2])])


def test_multiple_outputs_and_non_grad_inputs():
    a, b = t64([1.0, 2.0]), t64([3.0, 4.0], requires_grad=False)
    assert tl.gradcheck(lambda a, b: (a * b, a.exp()), [a, b])


def test_input_that_does_not_affect_the_output_has_zero_gradient():
    a, b = t64([1.0, 2.0]), t64([3.0])
    assert tl.gradcheck(lambda a, b: a * 2.0, [a, b])


def test_requires_some_input_with_grad():
    with pytest.raises(ValueError, match="no input requires grad"):
        tl.gradcheck(lambda a: a * 2.0, [t64([1.0], requires_grad=False)])


def test_numerical_grad_values():
    x = t64([1.0, 2.0, 3.0])
    (g,) = tl.numerical_grad(lambda x: (x ** 2).sum(), [x])
    np.testing.assert_allclose(g, [2.0, 4.0, 6.0], rtol=1e-8)

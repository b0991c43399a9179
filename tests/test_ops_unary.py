"""Edge cases of the unary ops, activations, clip/minimum/maximum and Pow (issue 19), and a
comparison of each with PyTorch (forward and backward, float64) at the points the gradcheck
cases stay away from: kinks, bounds, ties, zeros, infinities.

The declarative cases (forward vs NumPy, gradcheck) are in tests/cases_unary.py and
tests/cases_activation.py; tests/test_ops.py runs them.
"""
import warnings

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import functional as F

INF, NAN = float("inf"), float("nan")
HALVES = [-2.5, -1.5, -1.0, -0.5, -0.3, 0.0, 0.3, 0.5, 1.5, 2.5, 3.7]


def _run_tl(fn, arrays, dout):
    xs = [tl.tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in arrays]
    with warnings.catch_warnings(), np.errstate(all="ignore"):   # inf/NaN at edges on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        out = fn(*xs)
        out.backward(tl.tensor(dout))
    return out.numpy(), [x.grad for x in xs]


def _run_torch(torch, fn, arrays, dout):
    ts = [torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True) for a in arrays]
    out = fn(*ts)
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), [t.grad.numpy() for t in ts]


def _same(a, b, what):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=what)


def check_vs_torch(fn, torch_fn, *arrays):
    """fn and torch_fn agree in float64: the output and the gradient of every input."""
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle of these tests")
    shape = np.broadcast_shapes(*[np.shape(a) for a in arrays])
    dout = np.random.default_rng(0).standard_normal(shape) + 0.5
    out, grads = _run_tl(fn, arrays, dout)
    t_out, t_grads = _run_torch(torch, torch_fn, arrays, dout)
    _same(out, t_out, "forward")
    for i, (g, tg) in enumerate(zip(grads, t_grads)):
        _same(g, tg, f"gradient of input {i}")


def _torch():
    return pytest.importorskip("torch", reason="PyTorch is the oracle of these tests")


# ----------------------------------------------------------------------------------------------
# unary math vs PyTorch, kinks and zeros included

UNARY = {
    "abs": (F.abs, "abs", HALVES),
    "sign": (F.sign, "sign", HALVES),
    "rsqrt": (F.rsqrt, "rsqrt", [0.0, 0.25, 1.0, 4.0, INF]),
    "sin": (F.sin, "sin", HALVES),
    "cos": (F.cos, "cos", HALVES),
    "erf": (F.erf, "erf", HALVES + [-6.0, 6.0]),
    "exp2": (F.exp2, "exp2", HALVES),
    "log2": (F.log2, "log2", [0.0, 0.5, 1.0, 8.0, INF]),
    "log1p": (F.log1p, "log1p", [-1.0, -0.5, 1e-12, 0.0, 3.0]),
    "expm1": (F.expm1, "expm1", HALVES + [1e-12]),
    "square": (F.square, "square", HALVES),
    "reciprocal": (F.reciprocal, "reciprocal", [-2.0, -0.5, 0.0, 0.5, 4.0]),
    "floor": (F.floor, "floor", HALVES),
    "ceil": (F.ceil, "ceil", HALVES),
    "round": (F.round, "round", HALVES),
    "trunc": (F.trunc, "trunc", HALVES),
}


@pytest.mark.parametrize("name", list(UNARY))
def test_unary_op_matches_torch(name):
    fn, torch_name, values = UNARY[name]
    torch = _torch()
    check_vs_torch(fn, getattr(torch, torch_name), values)


def test_round_decimals_matches_torch():
    torch = _torch()
    check_vs_torch(lambda x: x.round(decimals=1), lambda x: torch.round(x, decimals=1),
                   [1.26, -0.34, 2.0, 7.77])


def test_rounding_gives_zero_gradient_and_keeps_integers():
    x = tl.tensor([-1.5, 0.5, 2.7], requires_grad=True)
    (F.floor(x) + F.ceil(x) + F.round(x) + F.trunc(x) + F.sign(x)).sum().backward()
    np.testing.assert_array_equal(x.grad, np.zeros(3))
    i = tl.tensor([-3, 0, 4])
    for fn in (F.floor, F.ceil, F.round, F.trunc):
        out = fn(i)
        assert out.dtype == i.dtype and out.numpy().tolist() == [-3, 0, 4]
    assert F.abs(i).numpy().tolist() == [3, 0, 4] and F.abs(i).dtype == i.dtype
    assert F.square(i).numpy().tolist() == [9, 0, 16]


def test_round_is_half_to_even():
    np.testing.assert_array_equal(F.round(tl.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])).numpy(),
                                  [-2.0, -2.0, -0.0, 0.0, 2.0, 2.0])


def test_sign_keeps_nan_as_numpy():
    """NumPy semantics: sign(NaN) = NaN (PyTorch returns 0 there)."""
    out = F.sign(tl.tensor([NAN, -2.0, 0.0]))
    assert np.isnan(out.numpy()[0]) and out.numpy()[1:].tolist() == [-1.0, 0.0]


# ----------------------------------------------------------------------------------------------
# activations vs PyTorch, at the kinks

def _nnf(name, **kw):
    torch = _torch()
    fn = getattr(torch.nn.functional, name)
    return lambda x: fn(x, **kw)


KINKS = [-1000.0, -40.0, -6.0, -1.0, -0.5, 0.0, 0.5, 1.0, 6.0, 19.9, 20.0, 20.1, 40.0, 1000.0]

ACTIVATIONS = {
    "silu": (F.silu, "silu", {}, KINKS),
    "softplus": (F.softplus, "softplus", {}, KINKS),
    "softplus_beta_threshold": (lambda x: F.softplus(x, beta=2.0, threshold=1.0), "softplus",
                                {"beta": 2.0, "threshold": 1.0}, KINKS + [0.49, 0.5, 0.51]),
    "softplus_negative_beta": (lambda x: F.softplus(x, beta=-0.5), "softplus", {"beta": -0.5},
                               KINKS),
    "leaky_relu": (F.leaky_relu, "leaky_relu", {}, KINKS),
    "leaky_relu_slope": (lambda x: F.leaky_relu(x, negative_slope=0.2), "leaky_relu",
                         {"negative_slope": 0.2}, KINKS),
    "elu": (F.elu, "elu", {}, KINKS),
    "elu_alpha": (lambda x: F.elu(x, alpha=0.7), "elu", {"alpha": 0.7}, KINKS),
    "mish": (F.mish, "mish", {}, KINKS),
    "logsigmoid": (F.logsigmoid, "logsigmoid", {}, KINKS),
    "hardtanh": (F.hardtanh, "hardtanh", {}, KINKS),
    "hardtanh_bounds": (lambda x: F.hardtanh(x, min_val=-0.5, max_val=6.0), "hardtanh",
                        {"min_val": -0.5, "max_val": 6.0}, KINKS),
    "relu6": (F.relu6, "relu6", {}, KINKS),
    "softsign": (F.softsign, "softsign", {}, KINKS),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_matches_torch(name):
    fn, torch_name, kw, values = ACTIVATIONS[name]
    check_vs_torch(fn, _nnf(torch_name, **kw), values)


@pytest.mark.parametrize("name", ["silu", "softplus", "mish", "logsigmoid", "elu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_activations_stay_finite_without_warnings(name, dtype):
    """No overflow in e^x at large |x|: finite values and gradients, and no RuntimeWarning."""
    x = tl.tensor(np.array([-1e4, -100.0, 0.0, 100.0, 1e4], dtype=dtype), requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = getattr(F, name)(x)
        out.sum().backward()
    assert out.dtype == dtype and np.isfinite(out.numpy()).all() and np.isfinite(x.grad).all()


def test_swish_is_silu_and_the_method_form():
    x = tl.tensor([-1.0, 0.5])
    assert F.swish is F.silu
    np.testing.assert_array_equal(x.silu().numpy(), F.silu(x).numpy())


# ----------------------------------------------------------------------------------------------
# clip / clamp, minimum / maximum vs PyTorch: bounds, ties, NaN, broadcasting

BOUNDS = [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, NAN]


def test_clip_scalar_bounds_pass_the_gradient_at_the_bounds_as_torch():
    torch = _torch()
    check_vs_torch(lambda x: F.clip(x, -1.0, 1.0), lambda x: torch.clamp(x, -1.0, 1.0), BOUNDS)
    check_vs_torch(lambda x: x.clamp(min=0.0), lambda x: torch.clamp(x, min=0.0), BOUNDS)
    check_vs_torch(lambda x: x.clip(max=0.5), lambda x: torch.clamp(x, max=0.5), BOUNDS)
    check_vs_torch(lambda x: F.clip(x, 1.0, -1.0), lambda x: torch.clamp(x, 1.0, -1.0), BOUNDS)


@pytest.mark.parametrize("lo, hi", [(-1.0, 1.0), (1.0, -1.0), (0.5, 0.5), (NAN, 1.0),
                                    (-1.0, NAN)], ids=["ordered", "crossed", "equal", "nan_lo",
                                                       "nan_hi"])
def test_clip_tensor_bounds_receive_gradient_where_they_clip_as_torch(lo, hi):
    torch = _torch()
    n = len(BOUNDS)
    check_vs_torch(F.clamp, torch.clamp, BOUNDS, [lo] * n, [hi] * n)


def test_clip_tensor_bounds_broadcast_and_one_sided_as_torch():
    torch = _torch()
    x = np.arange(-3.0, 3.0).reshape(2, 3)
    check_vs_torch(F.clip, torch.clamp, x, [[-1.0], [0.0]], [1.0, 2.0, 0.0])
    check_vs_torch(lambda x, lo: F.clip(x, lo), lambda x, lo: torch.clamp(x, min=lo), x,
                   [-1.0, 0.0, 1.0])
    check_vs_torch(lambda x, hi: F.clip(x, max=hi), lambda x, hi: torch.clamp(x, max=hi), x,
                   [[-1.0], [2.0]])


def test_clip_integers_stay_integers_and_float_bounds_promote():
    i = tl.tensor([-3, 0, 4])
    out = F.clip(i, -1, 2)
    assert out.dtype == i.dtype and out.numpy().tolist() == [-1, 0, 2]
    out = F.clip(i, -0.5, None)
    assert out.dtype == np.float32 and out.numpy().tolist() == [-0.5, 0.0, 4.0]


@pytest.mark.parametrize("op", ["maximum", "minimum"])
def test_maximum_minimum_split_ties_as_torch(op):
    torch = _torch()
    x = [1.0, 2.0, 3.0, -1.0, NAN, 0.5, NAN]
    y = [1.0, 0.0, 3.0, 4.0, 1.0, NAN, NAN]
    check_vs_torch(getattr(F, op), getattr(torch, op), x, y)
    check_vs_torch(getattr(F, op), getattr(torch, op), [[1.0, 2.0, 3.0], [0.0, 2.0, 5.0]],
                   [2.0, 2.0, 2.0])                            # broadcast, ties in a column


def test_maximum_tie_gives_each_side_half():
    x, y = tl.tensor(1.0, requires_grad=True), tl.tensor(1.0, requires_grad=True)
    F.maximum(x, y).backward()
    assert float(x.grad) == 0.5 and float(y.grad) == 0.5


# ----------------------------------------------------------------------------------------------
# Pow at x = +-inf and x = 0 (issue 19's edge cases)

def test_pow_x_gradient_is_zero_where_y_is_zero_even_at_infinity():
    """d x^0 / dx = 0 for every x, +-inf included (was NaN: 0 * inf)."""
    x = tl.tensor([INF, -INF, 0.0, 2.0], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (x ** 0.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 0.0, 0.0])


def test_pow_y_gradient_at_zero_base_follows_torch():
    """d 0^y / dy: -inf for y < 0 (was NaN: inf * 0), 0 for y = 0 and y > 0."""
    x = tl.tensor([0.0, 0.0, 0.0, 0.0], requires_grad=True)
    y = tl.tensor([-1.5, -1.0, 0.0, 2.0], requires_grad=True)
    with np.errstate(divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # 0 ** -1.5 = inf in the forward
        (x ** y).sum().backward()
    np.testing.assert_array_equal(y.grad, [-INF, -INF, 0.0, 0.0])
    np.testing.assert_array_equal(x.grad, [-INF, -INF, 0.0, 0.0])    # y x^(y-1), 0 at y = 0


def test_pow_edges_match_torch():
    torch = _torch()
    x = [INF, -INF, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, -2.0, 0.5, INF]
    y = [0.0, 0.0, -1.5, -1.0, 0.0, 0.5, 2.0, 0.0, 2.0, -INF, 1.0]
    check_vs_torch(lambda a, b: a ** b, torch.pow, x, y)
    check_vs_torch(lambda a: a ** 0.0, lambda a: a ** 0.0, [INF, -INF, 0.0, 3.0])
    check_vs_torch(lambda b: 0.0 ** b, lambda b: torch.pow(0.0, b), [-2.0, 0.0, 3.0])


# ----------------------------------------------------------------------------------------------
# predicates and logical ops: boolean, never require grad

def test_predicates_match_numpy_and_do_not_require_grad():
    data = np.array([0.0, -1.5, INF, -INF, NAN])
    x = tl.tensor(data, requires_grad=True)
    for name in ("isnan", "isinf", "isfinite"):
        for out in (getattr(F, name)(x), getattr(x, name)()):
            assert out.dtype == np.bool_ and not out.requires_grad
            np.testing.assert_array_equal(out.numpy(), getattr(np, name)(data))


def test_logical_ops_match_numpy_with_broadcasting():
    a = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, -3.0]])
    b = np.array([True, False, True])
    x = tl.tensor(a, requires_grad=True)
    for name in ("logical_and", "logical_or", "logical_xor"):
        for out in (getattr(F, name)(x, b), getattr(x, name)(tl.tensor(b))):
            assert out.dtype == np.bool_ and not out.requires_grad
            np.testing.assert_array_equal(out.numpy(), getattr(np, name)(a, b))
    np.testing.assert_array_equal(x.logical_not().numpy(), np.logical_not(a))
    np.testing.assert_array_equal(F.logical_and(1, tl.tensor([0, 3])).numpy(), [False, True])


# ----------------------------------------------------------------------------------------------
# errors name the op, what it got and what it expected

@pytest.mark.parametrize("call, exc, match", [
    (lambda: F.clip(tl.tensor([1.0])), ValueError, r"clip: at least one of min and max"),
    (lambda: F.clamp(tl.tensor([1.0]), "a"), TypeError, r"clip: min must be a number.*'a'"),
    (lambda: F.clip(tl.tensor([1.0, 2.0]), tl.tensor([0.0, 1.0, 2.0])), ValueError,
     r"Clip: .*\(2,\), \(3,\)"),
    (lambda: F.softplus(tl.tensor([1.0]), beta=0), ValueError, r"softplus: beta must be nonzero"),
    (lambda: F.softplus(tl.tensor([1.0]), threshold="x"), TypeError,
     r"softplus: threshold must be a real number, got 'x'"),
    (lambda: F.leaky_relu(tl.tensor([1.0]), None), TypeError,
     r"leaky_relu: negative_slope must be a real number, got None"),
    (lambda: F.elu(tl.tensor([1.0]), alpha=[1.0]), TypeError, r"elu: alpha must be a real"),
    (lambda: F.hardtanh(tl.tensor([1.0]), 2.0, 1.0), ValueError,
     r"hardtanh: min_val must not exceed max_val, got min_val=2.0, max_val=1.0"),
    (lambda: F.round(tl.tensor([1.0]), decimals=1.5), TypeError, r"round: decimals must be"),
    (lambda: F.logical_and(tl.tensor([1.0, 0.0]), tl.tensor([1.0, 0.0, 1.0])), ValueError,
     r"logical_and: cannot broadcast shapes \(2,\) and \(3,\)"),
    (lambda: F.maximum(tl.tensor([1.0, 2.0]), tl.tensor([1.0, 2.0, 3.0])), ValueError,
     r"Maximum: .*\(2,\), \(3,\)"),
])
def test_errors_name_the_op_and_what_it_got(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_sign_of_booleans_is_the_boolean_itself_as_torch():
    torch = _torch()
    a = np.array([[True, False], [False, True]])
    ours = F.sign(tl.tensor(a))
    theirs = torch.sign(torch.tensor(a))
    assert ours.dtype == bool
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    np.testing.assert_array_equal(tl.tensor(a).sign().numpy(), theirs.numpy())

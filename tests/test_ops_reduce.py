"""Reductions, scans and indexing of issue 19 against PyTorch (forward and backward, float64) and
NumPy, their edge cases (0-d tensors, empty axes, zeros in prod/cumprod, all -inf rows), the ops
without a gradient, and the error messages. The gradchecks are cases in tests/cases_reduce.py
and tests/cases_indexing.py, run by tests/test_ops.py."""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm import functional as F

RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 4))
ZEROS = np.array([[0.0, 1.5, -2.0, 0.5], [1.2, -0.7, 0.9, 2.0], [0.0, 0.0, 3.0, -1.0]])
CUMPROD_ZEROS = np.array([[0.0, 2.0, 0.0, 3.0], [1.5, 0.0, 2.0, -3.0], [1.0, 2.0, 0.5, -4.0]])
INF_ROW = np.array([[-np.inf, -np.inf, -np.inf], [1.0, 2.0, 3.0]])


def _torch():
    return pytest.importorskip("torch", reason="PyTorch is the oracle for these comparisons")


def _both(ours, theirs, *arrays, pick=None):
    """Run ``ours`` on tinyllm tensors and ``theirs`` on torch tensors (float64, requiring grad),
    compare the outputs, then backward a random cotangent through both and compare the grads.
    ``pick`` selects the differentiable output of a tuple-returning op (values of sort/topk)."""
    torch = _torch()
    xs = [tl.tensor(a, requires_grad=True) for a in arrays]
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    out, ref = ours(*xs), theirs(*ts)
    if pick is not None:
        out, ref = out[pick], ref[pick]
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-12, atol=1e-12)
    v = np.random.default_rng(1).standard_normal(out.shape)
    out.backward(tl.tensor(v))
    ref.backward(torch.tensor(v))
    for x, t in zip(xs, ts):
        np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# reductions against PyTorch

@pytest.mark.parametrize("name, ours, theirs, data", [
    ("min_dim", lambda x: F.min(x, dim=1), lambda x: x.amin(dim=1), X),
    ("min_ties", lambda x: x.min(), lambda x: x.min(), np.array([3.0, 1.0, 1.0, 2.0])),
    ("min_ties_axis", lambda x: x.min(axis=0), lambda x: x.amin(0), np.array([[1.0, 2], [1, 3]])),
    ("max_ties_keepdim", lambda x: x.max(dim=1, keepdim=True), lambda x: x.amax(1, True),
     np.array([[1.0, 3, 3], [0, 2, 4]])),
    ("prod_one_and_two_zeros", lambda x: x.prod(dim=1), lambda x: x.prod(1), ZEROS),
    ("prod_all_one_zero", lambda x: x.prod(), lambda x: x.prod(), ZEROS[:2]),
    ("prod_all_two_zeros", lambda x: x.prod(), lambda x: x.prod(), ZEROS),
    ("prod_no_zeros", lambda x: F.prod(x, axis=0, keepdims=True), lambda x: x.prod(0, True), X),
    ("std_unbiased", lambda x: x.std(unbiased=True), lambda x: x.std(), X),
    ("std_correction0", lambda x: F.std(x, dim=1, correction=0), lambda x: x.std(1, correction=0),
     X),
    ("std_constant_row", lambda x: x.std(dim=1, ddof=1), lambda x: x.std(1),
     np.array([[2.0, 2.0, 2.0], [1.0, 2.0, 4.0]])),
    ("var_unbiased", lambda x: x.var(dim=0, unbiased=True), lambda x: x.var(0), X),
    ("logsumexp", lambda x: F.logsumexp(x, dim=1), lambda x: x.logsumexp(1), X),
    ("logsumexp_large", lambda x: (x * 1e3).logsumexp(dim=0, keepdim=True),
     lambda x: (x * 1e3).logsumexp(0, True), X),
    ("sum_0d_dim_neg1", lambda x: x.sum(dim=-1), lambda x: x.sum(-1), np.array(1.5)),
    ("mean_dim_keepdim", lambda x: x.mean(dim=(0, 1), keepdim=True),
     lambda x: x.mean((0, 1), keepdim=True), X),
])
def test_reduction_matches_torch(name, ours, theirs, data):
    _both(ours, theirs, data)


def test_prod_gradient_with_zeros_is_the_product_of_the_others():
    x = tl.tensor(ZEROS, requires_grad=True)
    x.prod(axis=1).sum().backward()
    expected = [[1.5 * -2.0 * 0.5, 0, 0, 0], list(np.prod(ZEROS[1]) / ZEROS[1]), [0, 0, 0, 0]]
    np.testing.assert_allclose(x.grad, expected)


def test_logsumexp_of_all_minus_inf_rows_is_minus_inf_with_zero_gradient():
    """PyTorch gives -inf too, but a NaN gradient; tinyllm gives 0, as its softmax does for a
    fully masked row (the function is constant there)."""
    torch = _torch()
    x = tl.tensor(INF_ROW, requires_grad=True)
    out = F.logsumexp(x, axis=1)
    np.testing.assert_allclose(out.numpy(), torch.tensor(INF_ROW).logsumexp(1).numpy())
    out.sum().backward()
    np.testing.assert_allclose(x.grad[0], [0.0, 0.0, 0.0])
    e = np.exp(INF_ROW[1] - INF_ROW[1].max())
    np.testing.assert_allclose(x.grad[1], e / e.sum())
    assert F.logsumexp(tl.tensor([np.inf, 1.0])).item() == np.inf


def test_sum_and_mean_dtype_cast_first_and_stay_differentiable():
    torch = _torch()
    x = tl.tensor(X.astype(np.float32), requires_grad=True)
    s = x.sum(dtype=np.float64)
    assert s.dtype == np.float64
    assert s.item() == pytest.approx(torch.tensor(X.astype(np.float32)).sum(
        dtype=torch.float64).item(), rel=1e-12)
    s.backward()
    assert x.grad.dtype == np.float32 and np.all(x.grad == 1)
    m = F.mean(tl.tensor(np.arange(6).reshape(2, 3)), dim=1, dtype="float64")
    assert m.dtype == np.float64
    np.testing.assert_allclose(m.numpy(), [1.0, 4.0])
    assert F.sum(tl.tensor(np.arange(4, dtype=np.int32)), dtype=np.int64).dtype == np.int64


# ----------------------------------------------------------------------------------------------
# scans, sort and topk against PyTorch

@pytest.mark.parametrize("name, ours, theirs, data", [
    ("cumsum", lambda x: x.cumsum(dim=1), lambda x: x.cumsum(1), X),
    ("cumsum_0d", lambda x: x.cumsum(0), lambda x: x.cumsum(0), np.array(2.0)),
    ("cumprod", lambda x: F.cumprod(x, axis=0), lambda x: x.cumprod(0), X),
    ("cumprod_zeros", lambda x: x.cumprod(dim=1), lambda x: x.cumprod(1), CUMPROD_ZEROS),
    ("cumprod_zeros_axis0", lambda x: x.cumprod(dim=0), lambda x: x.cumprod(0),
     CUMPROD_ZEROS.T.copy()),
])
def test_scan_matches_torch(name, ours, theirs, data):
    _both(ours, theirs, data)


def test_cumsum_without_axis_flattens_as_numpy():
    np.testing.assert_allclose(F.cumsum(tl.tensor(X)).numpy(), np.cumsum(X))


@pytest.mark.parametrize("kwargs", [{}, {"dim": 0}, {"dim": 0, "descending": True},
                                    {"dim": -1, "descending": True}])
def test_sort_matches_torch(kwargs):
    torch = _torch()
    _both(lambda x: x.sort(**kwargs), lambda x: x.sort(**kwargs), X, pick=0)
    _, ours = F.sort(tl.tensor(X), **kwargs)
    assert ours.dtype == np.int64 and not ours.requires_grad
    np.testing.assert_array_equal(ours.numpy(), torch.tensor(X).sort(**kwargs)[1].numpy())


@pytest.mark.parametrize("k, kwargs", [(2, {}), (3, {"dim": 0}), (1, {"dim": 1, "largest": False}),
                                       (4, {"dim": -1, "largest": False})])
def test_topk_matches_torch(k, kwargs):
    torch = _torch()
    _both(lambda x: x.topk(k, **kwargs), lambda x: x.topk(k, **kwargs), X, pick=0)
    values, index = F.topk(tl.tensor(X), k, **kwargs)
    t_values, t_index = torch.tensor(X).topk(k, **kwargs)
    np.testing.assert_array_equal(index.numpy(), t_index.numpy())
    assert values.shape == tuple(t_values.shape) and index.dtype == np.int64


def test_sort_descending_of_integers_does_not_overflow_at_the_int64_minimum():
    torch = _torch()
    a = np.array([[np.iinfo(np.int64).min, 0, 5, -3, 5], [1, np.iinfo(np.int64).max, 1, 0, 2]])
    for kwargs in ({"descending": True}, {"dim": 0, "descending": True}):
        values, index = F.sort(tl.tensor(a), **kwargs)
        t_values, t_index = torch.tensor(a).sort(stable=True, **kwargs)
        np.testing.assert_array_equal(values.numpy(), t_values.numpy())
        np.testing.assert_array_equal(index.numpy(), t_index.numpy())
    u = np.array([3, 0, 255, 7], dtype=np.uint8)
    np.testing.assert_array_equal(F.sort(tl.tensor(u), descending=True)[1].numpy(),
                                  torch.tensor(u).sort(descending=True, stable=True)[1].numpy())


def test_sort_accepts_torch_stable_and_cumsum_cumprod_accept_dtype():
    torch = _torch()
    _both(lambda x: x.sort(dim=0, stable=True), lambda x: x.sort(dim=0, stable=True), X, pick=0)
    _both(lambda x: F.sort(x, stable=False, descending=True),
          lambda x: torch.sort(x, stable=True, descending=True), X, pick=0)
    a = np.arange(1, 7).reshape(2, 3)
    for name in ("cumsum", "cumprod"):
        ours = getattr(tl.tensor(a), name)(dim=1, dtype=np.float64)
        theirs = getattr(torch.tensor(a), name)(dim=1, dtype=torch.float64)
        assert ours.dtype == np.float64
        np.testing.assert_allclose(ours.numpy(), theirs.numpy())
    _both(lambda x: F.cumsum(x, dim=0, dtype=np.float64),
          lambda x: torch.cumsum(x, dim=0, dtype=torch.float64), X)


def test_topk_with_repeated_values_sends_each_gradient_to_its_own_position():
    x = tl.tensor([1.0, 5.0, 5.0, 2.0], requires_grad=True)
    values, index = x.topk(2)
    (values * tl.tensor([10.0, 1.0])).sum().backward()
    assert index.numpy().tolist() == [1, 2]
    assert x.grad.tolist() == [0.0, 10.0, 1.0, 0.0]


# ----------------------------------------------------------------------------------------------
# ops without a gradient: argmax, argmin, all, any, one_hot

@pytest.mark.parametrize("kwargs", [{}, {"dim": 1}, {"dim": 0, "keepdim": True},
                                    {"axis": -1, "keepdims": True}])
def test_argmax_argmin_match_torch_and_numpy(kwargs):
    torch = _torch()
    x = tl.tensor(X, requires_grad=True)
    t = torch.tensor(X)
    for name in ("argmax", "argmin"):
        out = getattr(x, name)(**kwargs)
        t_kwargs = {"dim" if k in ("dim", "axis") else "keepdim": v for k, v in kwargs.items()}
        np.testing.assert_array_equal(out.numpy(), getattr(t, name)(**t_kwargs).numpy())
        assert out.dtype == np.int64 and not out.requires_grad
    assert F.argmax(tl.tensor([3.0, 7.0, 7.0])).item() == 1        # ties: the first index
    assert F.argmax(tl.tensor(2.0)).shape == ()


def test_all_and_any_match_numpy_and_have_no_gradient():
    a = np.array([[1.0, 0.0, 2.0], [3.0, 1.0, 1.0]])
    x = tl.tensor(a, requires_grad=True)
    for name in ("all", "any"):
        for kwargs in ({}, {"axis": 1}, {"dim": 0, "keepdim": True}):
            out = getattr(F, name)(x, **kwargs)
            np_kwargs = {"axis" if k in ("dim", "axis") else "keepdims": v
                         for k, v in kwargs.items()}
            np.testing.assert_array_equal(out.numpy(), getattr(a, name)(**np_kwargs))
            assert out.dtype == bool and not out.requires_grad


def test_one_hot_matches_torch():
    torch = _torch()
    index = np.array([[0, 3], [2, 2]])
    ours = F.one_hot(tl.tensor(index))
    theirs = torch.nn.functional.one_hot(torch.tensor(index))
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    ours5 = F.one_hot(index, num_classes=5, dtype=np.float32)
    assert ours5.dtype == np.float32 and ours5.shape == (2, 2, 5)
    np.testing.assert_array_equal(ours5.numpy(), torch.nn.functional.one_hot(
        torch.tensor(index), 5).numpy())


# ----------------------------------------------------------------------------------------------
# indexing against PyTorch

IDX = np.array([[0, 0, 3], [2, 1, 2], [3, 3, 3]])


@pytest.mark.parametrize("name, ours, theirs", [
    ("gather", lambda x: F.gather(x, 1, IDX), lambda x: x.gather(1, _t(IDX))),
    ("gather_dim0_smaller", lambda x: x.gather(dim=0, index=IDX[:2, :2] % 3),
     lambda x: x.gather(0, _t(IDX[:2, :2] % 3))),
    ("take_along_axis", lambda x: F.take_along_axis(x, IDX, axis=1),
     lambda x: _torch().take_along_dim(x, _t(IDX), dim=1)),
    ("index_select", lambda x: x.index_select(1, [3, 0, 3]),
     lambda x: x.index_select(1, _t(np.array([3, 0, 3])))),
    ("masked_select", lambda x: x.masked_select(X > 0), lambda x: x.masked_select(_t(X > 0))),
    ("masked_select_bcast", lambda x: F.masked_select(x, np.array([True, False, False, True])),
     lambda x: x.masked_select(_t(np.array([True, False, False, True])))),
])
def test_indexing_matches_torch(name, ours, theirs):
    _both(ours, theirs, X)


def _t(a):
    return _torch().tensor(a)


def test_scatter_add_matches_torch_in_both_inputs():
    src = RNG.standard_normal((3, 5))
    _both(lambda x, s: x.scatter_add(1, IDX, s), lambda x, s: x.scatter_add(1, _t(IDX), s),
          X, src[:, :3])
    _both(lambda x, s: F.scatter_add(x, dim=0, index=IDX[:2] % 3, src=s),
          lambda x, s: x.scatter_add(0, _t(IDX[:2] % 3), s), X, src[:2, :3])
    # src larger than index: only its index-shaped corner is added (PyTorch's own backward
    # fails on this shape, so the gradient is checked by gradcheck in tests/cases_indexing.py)
    torch = _torch()
    np.testing.assert_allclose(F.scatter_add(tl.tensor(X), 1, IDX, src).numpy(),
                               torch.tensor(X).scatter_add(1, _t(IDX), _t(src)).numpy())


@pytest.mark.parametrize("index", [np.array(0), np.array([0]), np.array([0, 0])])
def test_gather_scatter_add_index_select_of_a_0d_tensor_match_torch(index):
    """A 0-d x is one element along its one implicit axis, as PyTorch (it used to raise
    IndexError)."""
    x0 = np.array(1.5)
    _both(lambda x: F.gather(x, 0, index), lambda x: x.gather(0, _t(index)), x0)
    _both(lambda x, s: F.scatter_add(x, 0, index, s),
          lambda x, s: x.scatter_add(0, _t(index), s), x0, np.full(index.shape, 2.0))
    if index.size == 1:
        _both(lambda x: x.index_select(0, index), lambda x: x.index_select(0, _t(index)), x0)


# ----------------------------------------------------------------------------------------------
# edge cases of the issue: 0-d softmax / sum(axis=-1), max over an empty tensor

@pytest.mark.parametrize("dim", [0, -1])
def test_softmax_and_log_softmax_of_a_0d_tensor_match_torch(dim):
    torch = _torch()
    for name in ("softmax", "log_softmax"):
        x = tl.tensor(2.5, requires_grad=True)
        t = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
        out, ref = getattr(F, name)(x, axis=dim), getattr(torch, name)(t, dim)
        assert out.shape == () and out.item() == ref.item()
        out.backward()
        ref.backward()
        assert x.grad.shape == () and float(x.grad) == t.grad.item() == 0.0
    with pytest.raises(ValueError, match="softmax: axis 1 is out of range for shape"):
        F.softmax(tl.tensor(1.0), axis=1)


def test_reductions_of_a_0d_tensor_accept_axis_0_and_minus_1():
    x = tl.tensor(1.5)
    for name in ("sum", "mean", "max", "min", "prod", "logsumexp"):
        for axis in (0, -1, (0,)):
            out = getattr(F, name)(x, axis=axis)
            assert out.shape == () and out.item() == pytest.approx(1.5), (name, axis)
        assert getattr(F, name)(x, axis=0, keepdims=True).shape == ()
    with pytest.raises(ValueError, match="sum: axis 1 is out of range for a 0-d tensor"):
        F.sum(x, axis=1)


def test_max_over_a_non_empty_axis_of_an_empty_tensor_is_empty_as_numpy():
    empty = np.zeros((0, 3))
    for name in ("max", "min", "argmax", "argmin"):
        out = getattr(F, name)(tl.tensor(empty), axis=1)
        assert out.shape == getattr(empty, name)(axis=1).shape == (0,)
    x = tl.tensor(empty, requires_grad=True)
    x.max(axis=1).sum().backward()
    assert x.grad.shape == (0, 3)


@pytest.mark.parametrize("name", ["max", "min", "argmax", "argmin"])
def test_reducing_an_empty_axis_without_identity_raises_naming_the_op(name):
    with pytest.raises(ValueError, match=f"{name}: cannot reduce over axis 0 of length 0"):
        getattr(F, name)(tl.tensor(np.zeros((0, 3))), axis=0)
    with pytest.raises(ValueError, match=f"{name}: cannot reduce"):
        getattr(F, name)(tl.tensor(np.zeros((0, 3))))


def test_reducing_an_empty_axis_with_identity_gives_the_identity_as_torch():
    torch = _torch()
    empty, t = tl.tensor(np.zeros((0, 3))), torch.zeros(0, 3, dtype=torch.float64)
    for ours, theirs in ((F.sum(empty, axis=0), t.sum(0)), (F.prod(empty, axis=0), t.prod(0)),
                         (F.logsumexp(empty, axis=0), t.logsumexp(0))):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


# ----------------------------------------------------------------------------------------------
# error messages

@pytest.mark.parametrize("call, error, message", [
    (lambda: F.sum(tl.tensor(X), axis=0, dim=1), TypeError, "sum: got both axis=0 and dim=1"),
    (lambda: F.std(tl.tensor(X), ddof=1, correction=1), TypeError,
     "std: got ddof, correction; pass only one"),
    (lambda: F.std(tl.tensor([1.0]), unbiased=True), ValueError, "std: 1 elements per reduction"),
    (lambda: F.argmax(tl.tensor(X), axis=(0, 1)), TypeError, "argmax: axis must be None or one"),
    (lambda: F.max(tl.tensor(X), axis=2), ValueError, "max: axis 2 is out of range"),
    (lambda: F.topk(tl.tensor(X), 5), ValueError, "topk: k=5 is out of range for axis 1 of "
     "length 4"),
    (lambda: F.topk(tl.tensor(X), 1.5), TypeError, "topk: k must be an int"),
    (lambda: F.cumsum(tl.tensor(X), axis=2), ValueError, "cumsum: axis 2 is out of range"),
    (lambda: F.gather(tl.tensor(X), 1, IDX[0]), ValueError, "gather: index of shape"),
    (lambda: F.gather(tl.tensor(X), 1, IDX + 2), IndexError,
     "gather: index out of range for axis 1 of length 4"),
    (lambda: F.gather(tl.tensor(X), 1, IDX * 0.5), TypeError, "gather: index must hold integers"),
    (lambda: F.take_along_axis(tl.tensor(X), np.zeros((2, 2), int), 0), ValueError,
     "take_along_axis: indices of shape"),
    (lambda: F.index_select(tl.tensor(X), 0, IDX), ValueError, "index_select: index must be"),
    (lambda: F.index_select(tl.tensor(X), 0, [3]), IndexError, "index_select: index out of"),
    (lambda: F.scatter_add(tl.tensor(X), 1, IDX, tl.tensor(np.ones((2, 3)))), ValueError,
     "scatter_add: index"),
    (lambda: F.masked_select(tl.tensor(X), X), TypeError, "masked_select: mask must be boolean"),
    (lambda: F.masked_select(tl.tensor(X), np.ones(3, bool)), ValueError,
     "masked_select: mask of shape"),
    (lambda: F.one_hot(np.array([-1, 2])), ValueError, "one_hot: class values must be non-neg"),
    (lambda: F.one_hot(np.array([1, 4]), 3), ValueError, "one_hot: class value 4 is not below"),
    (lambda: F.one_hot(np.array([1.0])), TypeError, "one_hot: index must hold integers"),
])
def test_errors_name_the_op_and_what_it_got(call, error, message):
    with pytest.raises(error, match=message):
        call()

"""The Tensor API: factories, attributes, dtypes, scalars on either side, conversions."""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm import backend


def test_tensor_from_python_floats_is_float32_by_default():
    t = tl.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert t.dtype == np.float32 and t.shape == (2, 2) and t.ndim == 2 and t.size == 4
    assert t.device == "cpu" or tl.get_backend() == "cupy"
    assert t.grad is None and not t.requires_grad and t.is_leaf


def test_tensor_keeps_array_dtype_and_copies():
    a = np.arange(3.0)                                   # float64
    t = tl.tensor(a)
    a[0] = 100.0
    assert t.dtype == np.float64 and t.numpy()[0] == 0.0


def test_tensor_ints_and_bools_keep_their_kind():
    assert tl.tensor([1, 2, 3]).dtype == np.int64
    assert tl.tensor([True, False]).dtype == np.bool_
    assert tl.tensor([1, 2], dtype=np.float64).dtype == np.float64


def test_default_dtype_float64():
    tl.set_default_dtype(np.float64)
    assert tl.tensor([1.0]).dtype == np.float64
    assert tl.randn(2).dtype == np.float64
    with pytest.raises(TypeError, match="floating dtype"):
        tl.set_default_dtype(np.int32)


def test_factories():
    assert tl.zeros(2, 3).numpy().tolist() == [[0.0] * 3] * 2
    assert tl.ones((2,)).numpy().tolist() == [1.0, 1.0]
    assert tl.full((2, 2), 7.0).numpy().sum() == 28.0
    assert tl.arange(4).numpy().tolist() == [0, 1, 2, 3] and tl.arange(4).dtype == np.int64
    assert tl.arange(0.0, 1.0, 0.5).dtype == np.float32
    r = tl.randn(1000, requires_grad=True)
    assert r.requires_grad and r.dtype == np.float32 and abs(float(r.numpy().mean())) < 0.15
    u = tl.rand(1000)
    assert 0.0 <= float(u.numpy().min()) and float(u.numpy().max()) < 1.0
    x = tl.randn(2, 3, dtype=np.float64)
    for like in (tl.zeros_like(x), tl.ones_like(x), tl.full_like(x, 2.0), tl.randn_like(x)):
        assert like.shape == (2, 3) and like.dtype == np.float64


def test_manual_seed_makes_randn_repeat():
    tl.manual_seed(42)
    a = tl.randn(5).numpy()
    tl.manual_seed(42)
    b = tl.randn(5).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, tl.randn(5).numpy())


def test_item_numpy_tolist_len_repr():
    t = tl.tensor([[1.5]])
    assert t.item() == 1.5 and float(t) == 1.5 and len(t) == 1
    assert t.tolist() == [[1.5]]
    assert "tensor([[1.5]]" in repr(t)
    with pytest.raises(ValueError, match="only one-element"):
        tl.tensor([1.0, 2.0]).item()
    assert "grad_fn=Mul" in repr(tl.tensor([1.0], requires_grad=True) * 2)


def test_python_and_numpy_scalars_on_either_side_keep_float32():
    x = tl.tensor([1.0, 2.0])
    for y in (x + 1, 1 + x, x * 2.5, 2.5 * x, x - np.float64(1.0), np.float64(1.0) - x,
              x / 2, 2 / x, x ** 2, 2 ** x, x + np.array(1.0), x + [1.0, 2.0], [3, 4] * x):
        assert y.dtype == np.float32


def test_int_tensor_with_float_scalar_becomes_default_float():
    y = tl.tensor([1, 2]) * 0.5
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.numpy(), [0.5, 1.0])


def test_mean_and_var_of_ints_give_the_default_float_dtype():
    assert tl.tensor([1, 2]).mean().dtype == np.float32
    assert tl.tensor([1, 2]).mean().item() == 1.5
    assert tl.tensor([[1, 2], [3, 5]]).var(axis=1).tolist() == [0.25, 1.0]
    assert tl.tensor([1, 2]).sum().dtype == np.int64          # sums of ints stay ints


def test_int_tensor_with_float_tensor_takes_the_float_dtype():
    f = tl.tensor([1.0, 2.0], requires_grad=True)
    i = tl.tensor([3, 4])
    y = f * i
    assert y.dtype == np.float32
    y.sum().backward()
    np.testing.assert_array_equal(backend.asnumpy(f.grad), [3.0, 4.0])


def test_mixed_float32_float64_promotes_and_grads_keep_input_dtypes():
    a = tl.tensor([1.0, 2.0], requires_grad=True)                   # float32
    b = tl.tensor([3.0, 4.0], requires_grad=True, dtype=np.float64)
    y = a * b
    assert y.dtype == np.float64
    y.sum().backward()
    assert a.grad.dtype == np.float32 and b.grad.dtype == np.float64


def test_numpy_array_on_the_left_defers_to_tensor():
    x = tl.tensor([1.0, 2.0], requires_grad=True)
    y = np.array([3.0, 4.0], dtype=np.float32) * x
    assert isinstance(y, tl.Tensor)
    y.sum().backward()
    np.testing.assert_array_equal(backend.asnumpy(x.grad), [3.0, 4.0])


def test_comparisons_give_bool_tensors_without_grad():
    x = tl.tensor([1.0, 2.0, 3.0], requires_grad=True)
    m = x > 1.5
    assert m.dtype == np.bool_ and not m.requires_grad
    assert m.tolist() == [False, True, True]
    assert (x == 2.0).tolist() == [False, True, False]
    assert (x <= 2.0).tolist() == [True, True, False]
    assert (x != 2.0).tolist() == [True, False, True]
    assert {x: 1}[x] == 1                         # hashable by identity


def test_transpose_semantics():
    x = tl.randn(2, 3, 4)
    assert x.transpose(0, 2).shape == (4, 3, 2)   # PyTorch: swap two axes
    assert x.transpose().shape == (4, 3, 2)       # no args: reverse (NumPy)
    assert x.T.shape == (4, 3, 2)
    assert x.permute(1, 2, 0).shape == (3, 4, 2)
    assert x.permute((1, 2, 0)).shape == (3, 4, 2)
    assert tl.transpose(x, (1, 0, 2)).shape == (3, 2, 4)    # functional: NumPy's axes form
    with pytest.raises(TypeError, match="permute"):
        x.transpose(1, 2, 0)


def test_setitem_is_refused():
    x = tl.tensor([1.0, 2.0])
    with pytest.raises(TypeError, match="item assignment"):
        x[0] = 5.0


def test_requires_grad_only_for_floats():
    with pytest.raises(TypeError, match="only floating-point tensors can require grad.*int64"):
        tl.tensor([1, 2], requires_grad=True)
    with pytest.raises(TypeError, match="bool"):
        tl.tensor([True]).requires_grad_()
    t = tl.tensor([1.0]).requires_grad_()
    assert t.requires_grad


def test_astype_is_differentiable():
    x = tl.tensor([1.0, 2.0], requires_grad=True)               # float32
    y = x.double() * 3.0
    assert y.dtype == np.float64
    y.sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(backend.asnumpy(x.grad), [3.0, 3.0])
    assert x.to(np.float32) is x
    assert x.float() is x


def test_cast_to_int_is_not_differentiable():
    x = tl.tensor([1.5, 2.5], requires_grad=True)
    i = x.astype(np.int64)
    assert i.dtype == np.int64 and not i.requires_grad and i.grad_fn is None
    assert i.tolist() == [1, 2]


def test_unsupported_dtype():
    with pytest.raises(TypeError, match="unsupported dtype"):
        tl.tensor(np.array(["a", "b"]))


def test_iteration_free_indexing_with_numpy_scalars():
    x = tl.tensor(np.arange(6.0).reshape(2, 3))
    assert x[np.int64(1), 2].item() == 5.0


def test_softmax_fully_masked_row_is_zero_not_nan():
    x = tl.tensor([[0.0, 1.0], [0.0, 0.0]], requires_grad=True)
    mask = np.array([[False, True], [True, True]])
    y = tl.softmax(x.masked_fill(mask, float("-inf")))
    np.testing.assert_array_equal(y.numpy(), [[1.0, 0.0], [0.0, 0.0]])
    y.sum().backward()
    assert np.isfinite(backend.asnumpy(x.grad)).all()
    lp = tl.log_softmax(tl.tensor([[float("-inf"), 0.0]]))
    assert lp.numpy()[0, 0] == -np.inf and lp.numpy()[0, 1] == 0.0


def test_max_ties_share_the_gradient():
    x = tl.tensor([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]], requires_grad=True, dtype=np.float64)
    x.max(axis=1).sum().backward()
    np.testing.assert_array_equal(backend.asnumpy(x.grad), [[0.0, 0.5, 0.5], [0.5, 0.0, 0.5]])


def test_dropout_statistics_and_seeding():
    x = tl.ones(20000)
    tl.manual_seed(3)
    y1 = tl.dropout(x, 0.25).numpy()
    tl.manual_seed(3)
    y2 = tl.dropout(x, 0.25).numpy()
    np.testing.assert_array_equal(y1, y2)                   # seeded: identical masks
    assert set(np.unique(y1).tolist()) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y1 == 0).mean() - 0.25) < 0.02
    assert abs(y1.mean() - 1.0) < 0.03                      # inverted dropout keeps the mean
    assert tl.dropout(x, 0.5, training=False) is x
    assert (tl.dropout(x, 1.0).numpy() == 0).all()


def test_split_shapes():
    parts = tl.split(tl.randn(2, 7), [2, 5], axis=1)
    assert [p.shape for p in parts] == [(2, 2), (2, 3), (2, 2)]

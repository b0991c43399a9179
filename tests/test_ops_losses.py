"""The losses of tinyllm/ops/losses.py and regression.py against PyTorch (float64, forward and
backward, every reduction), their edge cases (ignored targets, probabilities at 0 and 1, zero
norms) and their error messages. The NumPy-reference and gradcheck cases are in
tests/cases_losses.py."""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm import functional as F
from tinyllm.ops.loss import CrossEntropy
from tinyllm.ops.losses import NLLLoss, SoftTargetCrossEntropy

REDUCTIONS = ("mean", "sum", "none")
W5 = np.array([0.5, 1.0, 2.0, 0.3, 1.5])


def _compare(ours, theirs, arrays, atol=1e-12):
    """Run ``ours`` on tinyllm tensors and ``theirs`` on torch tensors of the same float64
    arrays (floats require grad), backpropagate one random dout, compare values and grads."""
    torch = pytest.importorskip("torch")
    xs = [tl.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    ts = [torch.tensor(a, requires_grad=a.dtype.kind == "f") for a in arrays]
    out, expected = ours(*xs), theirs(*ts)
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-10, atol=atol)
    dout = np.random.default_rng(3).standard_normal(tuple(expected.shape))
    out.backward(tl.tensor(dout))
    expected.backward(torch.tensor(dout))
    for x, t in zip(xs, ts):
        if t.grad is not None:
            np.testing.assert_allclose(x.grad, t.grad.numpy(), rtol=1e-9, atol=atol)


def _rng():
    return np.random.default_rng(0)


def _log_probs(rng, *shape):
    z = rng.standard_normal(shape)
    return z - np.log(np.exp(z).sum(axis=1 if len(shape) > 1 else 0, keepdims=True))


# ----------------------------------------------------------------------------------------------
# against PyTorch

@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    rng = _rng()
    t = rng.integers(0, 5, 6)
    t[2] = -100
    _compare(lambda x, t: F.nll_loss(x, t, weight=W5, reduction=reduction),
             lambda x, t: torch.nn.functional.nll_loss(x, t, weight=torch.tensor(W5),
                                                       reduction=reduction),
             [_log_probs(rng, 6, 5), t])
    t4 = rng.integers(0, 4, (2, 3, 2))
    _compare(lambda x, t: F.nll_loss(x, t, ignore_index=1, reduction=reduction),
             lambda x, t: torch.nn.functional.nll_loss(x, t, ignore_index=1,
                                                       reduction=reduction),
             [rng.standard_normal((2, 4, 3, 2)), t4])
    _compare(lambda x, t: F.nll_loss(x, t, reduction=reduction),
             lambda x, t: torch.nn.functional.nll_loss(x, t, reduction=reduction),
             [_log_probs(rng, 4), np.array(2)])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_with_probability_targets_matches_torch(reduction, smoothing, weighted):
    torch = pytest.importorskip("torch")
    rng = _rng()
    w = W5 if weighted else None
    tw = torch.tensor(W5) if weighted else None
    _compare(lambda z, q: F.cross_entropy(z, q, reduction=reduction, label_smoothing=smoothing,
                                          weight=w),
             lambda z, q: torch.nn.functional.cross_entropy(
                 z, q, reduction=reduction, label_smoothing=smoothing, weight=tw),
             [rng.standard_normal((6, 5)), rng.dirichlet(np.ones(5), 6)])
    # rank 3: tinyllm's class axis is the last, PyTorch's axis 1
    _compare(lambda z, q: F.cross_entropy(z, q, reduction=reduction, label_smoothing=smoothing,
                                          weight=w),
             lambda z, q: torch.nn.functional.cross_entropy(
                 z.permute(0, 2, 1), q.permute(0, 2, 1), reduction=reduction,
                 label_smoothing=smoothing, weight=tw),
             [rng.standard_normal((2, 3, 5)), rng.dirichlet(np.ones(5), (2, 3))])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_with_class_weights_matches_torch(reduction, smoothing):
    torch = pytest.importorskip("torch")
    rng = _rng()
    t = rng.integers(0, 5, 7)
    t[[1, 4]] = -100
    _compare(lambda z, t: F.cross_entropy(z, t, weight=W5, reduction=reduction,
                                          label_smoothing=smoothing),
             lambda z, t: torch.nn.functional.cross_entropy(
                 z, t, weight=torch.tensor(W5), reduction=reduction,
                 label_smoothing=smoothing),
             [rng.standard_normal((7, 5)), t])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_matches_torch(reduction):
    torch = pytest.importorskip("torch")
    rng = _rng()
    p, y = rng.uniform(0.05, 0.95, (3, 4)), rng.uniform(0, 1, (3, 4))
    w = rng.uniform(0.5, 2, 4)
    _compare(lambda p, y: F.binary_cross_entropy(p, y, weight=w, reduction=reduction),
             lambda p, y: torch.nn.functional.binary_cross_entropy(
                 p, y, weight=torch.tensor(w), reduction=reduction), [p, y])


@pytest.mark.filterwarnings("ignore::UserWarning")          # torch's note on kl_div "mean"
@pytest.mark.parametrize("reduction", REDUCTIONS + ("batchmean",))
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_matches_torch(reduction, log_target):
    torch = pytest.importorskip("torch")
    rng = _rng()
    x, q = _log_probs(rng, 3, 4), rng.dirichlet(np.ones(4), 3)
    y = np.log(q) if log_target else q
    _compare(lambda x, y: F.kl_div(x, y, reduction=reduction, log_target=log_target),
             lambda x, y: torch.nn.functional.kl_div(x, y, reduction=reduction,
                                                     log_target=log_target), [x, y])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_smooth_l1_and_huber_match_torch(reduction, beta):
    torch = pytest.importorskip("torch")
    rng = _rng()
    x, y = rng.standard_normal((4, 5)) * 2, rng.standard_normal((4, 5))
    _compare(lambda x, y: F.smooth_l1_loss(x, y, reduction, beta=beta),
             lambda x, y: torch.nn.functional.smooth_l1_loss(x, y, reduction=reduction,
                                                             beta=beta), [x, y])
    delta = beta or 2.0
    _compare(lambda x, y: F.huber_loss(x, y, reduction, delta=delta),
             lambda x, y: torch.nn.functional.huber_loss(x, y, reduction=reduction,
                                                         delta=delta), [x, y])


def test_cosine_similarity_matches_torch():
    torch = pytest.importorskip("torch")
    cos = torch.nn.functional.cosine_similarity
    rng = _rng()
    _compare(F.cosine_similarity, cos, [rng.standard_normal((4, 5)), rng.standard_normal((4, 5))])
    _compare(lambda a, b: F.cosine_similarity(a, b, dim=-1), lambda a, b: cos(a, b, dim=-1),
             [rng.standard_normal((2, 1, 3)), rng.standard_normal((4, 3))])
    _compare(lambda a, b: F.cosine_similarity(a, b, axis=0), lambda a, b: cos(a, b, dim=0),
             [rng.standard_normal(6), rng.standard_normal(6)])


def test_cosine_similarity_below_eps_matches_torch():
    """A norm under eps is clamped to eps in the value; PyTorch keeps the unclamped norm's
    derivative, and so do we (a zero vector gets dout / eps * v)."""
    torch = pytest.importorskip("torch")
    a = np.array([[1e-9, 2e-9], [0.0, 0.0], [3.0, -1.0]])
    b = np.random.default_rng(1).standard_normal((3, 2))
    _compare(F.cosine_similarity, torch.nn.functional.cosine_similarity, [a, b], atol=1e-6)


# ----------------------------------------------------------------------------------------------
# edge cases

def test_nll_loss_all_ignored_mean_is_nan_with_zero_gradient():
    torch = pytest.importorskip("torch")
    x = tl.tensor(np.random.default_rng(0).standard_normal((2, 3)), requires_grad=True)
    t = np.array([-100, -100])
    loss = F.nll_loss(x, t)
    loss.backward()
    tx = torch.tensor(x.numpy(), requires_grad=True)
    expected = torch.nn.functional.nll_loss(tx, torch.tensor(t))
    expected.backward()
    assert np.isnan(loss.item()) and torch.isnan(expected)
    np.testing.assert_array_equal(x.grad, tx.grad.numpy())


def test_nll_loss_ignored_rows_are_zero_even_with_nan_inputs():
    x = tl.tensor(np.array([[np.nan, 0.0], [-0.5, -1.0]]), requires_grad=True)
    loss = F.nll_loss(x, [-100, 1], reduction="sum")
    loss.backward()
    assert loss.item() == 1.0
    np.testing.assert_array_equal(x.grad, [[0.0, 0.0], [0.0, -1.0]])


def test_binary_cross_entropy_at_zero_and_one_is_clamped_as_torch():
    torch = pytest.importorskip("torch")
    p, y = np.array([0.0, 0.3, 1.0, 1.0]), np.array([0.5, 0.2, 0.1, 1.0])
    x = tl.tensor(p, requires_grad=True)
    loss = F.binary_cross_entropy(x, y, reduction="sum")
    loss.backward()
    tp = torch.tensor(p, requires_grad=True)
    expected = torch.nn.functional.binary_cross_entropy(tp, torch.tensor(y), reduction="sum")
    expected.backward()
    np.testing.assert_allclose(loss.item(), expected.item(), rtol=1e-12)    # 50 + ... + 90
    np.testing.assert_allclose(x.grad, tp.grad.numpy(), rtol=1e-9)          # +-(x - y) / 1e-12


def test_kl_div_zero_target_contributes_nothing():
    x = tl.tensor(np.array([-1.0, -2.0, -0.5]), requires_grad=True)
    loss = F.kl_div(x, np.array([0.0, 0.5, 0.5]), reduction="sum")
    loss.backward()
    expected = 0.5 * (np.log(0.5) + 2.0) + 0.5 * (np.log(0.5) + 0.5)
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-12)
    np.testing.assert_array_equal(x.grad, [0.0, -0.5, -0.5])


def test_integer_targets_still_take_the_fused_cross_entropy():
    z = tl.tensor(np.zeros((2, 3)), requires_grad=True)
    assert type(F.cross_entropy(z, [0, 2])._ctx) is CrossEntropy
    assert type(F.cross_entropy(z, np.eye(3)[[0, 2]])._ctx) is SoftTargetCrossEntropy
    assert type(F.cross_entropy(z, [0, 2], weight=[1.0, 2.0, 3.0])._ctx) is NLLLoss


def test_one_hot_probability_targets_equal_class_targets():
    rng = _rng()
    z, t = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    for smoothing in (0.0, 0.1):
        hard = F.cross_entropy(tl.tensor(z), t, label_smoothing=smoothing)
        soft = F.cross_entropy(tl.tensor(z), np.eye(4)[t], label_smoothing=smoothing)
        np.testing.assert_allclose(soft.item(), hard.item(), rtol=1e-12)


def test_float32_stays_float32():
    z = tl.tensor(np.zeros((2, 3), np.float32), requires_grad=True)
    q = np.full((2, 3), 1 / 3, np.float32)
    for out in (F.cross_entropy(z, q), F.cross_entropy(z, [0, 1], weight=[1.0, 2.0, 3.0]),
                F.nll_loss(z, [0, 1], weight=[1.0, 2.0, 3.0]), F.kl_div(z, q),
                F.binary_cross_entropy(z.sigmoid(), q), F.smooth_l1_loss(z, q),
                F.huber_loss(z, q), F.cosine_similarity(z, q)):
        assert out.dtype == np.float32
        out.sum().backward()
        assert z.grad.dtype == np.float32
        z.grad = None


# ----------------------------------------------------------------------------------------------
# errors name the op, what it got and what it expected

@pytest.mark.parametrize("call, error, message", [
    (lambda: F.nll_loss(np.zeros((2, 3)), [0, 3]), IndexError,
     r"nll_loss: target value 3 is out of range for 3 classes"),
    (lambda: F.nll_loss(np.zeros((2, 3)), [0, 1, 2]), ValueError,
     r"nll_loss: target shape \(3,\) does not match input shape \(2, 3\)"),
    (lambda: F.nll_loss(np.zeros((2, 3)), [0.0, 1.0]), TypeError,
     r"nll_loss: target must hold integers"),
    (lambda: F.nll_loss(np.zeros((2, 3)), [0, 1], weight=[1.0, 2.0]), ValueError,
     r"nll_loss: weight must have shape \(3,\)"),
    (lambda: F.nll_loss(np.zeros((2, 3)), [0, 1], reduction="avg"), ValueError,
     r"nll_loss: reduction must be one of"),
    (lambda: F.cross_entropy(np.zeros((2, 3)), np.zeros((2, 4))), TypeError,
     r"cross_entropy: target must hold integers \(class indices, shape \(2,\)\) or floats of "
     r"the logits' shape \(2, 3\) \(class probabilities\), got a float target of shape "
     r"\(2, 4\)"),
    (lambda: F.cross_entropy(np.zeros((2, 3)), np.zeros((2, 3)), ignore_index=0), ValueError,
     r"cross_entropy: ignore_index=0 is not supported for float"),
    (lambda: F.cross_entropy(np.zeros((2, 3)), [0, 1], weight=[1.0]), ValueError,
     r"cross_entropy: weight must have shape \(3,\)"),
    (lambda: F.cross_entropy(np.zeros((2, 3)), [0, 5], weight=np.ones(3)), IndexError,
     r"cross_entropy: target value 5 is out of range"),
    (lambda: F.binary_cross_entropy(np.array([0.5, 1.5]), np.array([0.0, 1.0])), ValueError,
     r"binary_cross_entropy: every input must be a probability in \[0, 1\], got values from "
     r"0.5 to 1.5"),
    (lambda: F.binary_cross_entropy(np.full(3, 0.5), np.zeros(2)), ValueError,
     r"binary_cross_entropy: input shape \(3,\) and target shape \(2,\) differ"),
    (lambda: F.binary_cross_entropy(np.full(3, 0.5), np.zeros(3), weight=np.ones(2)),
     ValueError, r"binary_cross_entropy: weight shape \(2,\) does not broadcast"),
    (lambda: F.kl_div(np.zeros(3), np.zeros(3), reduction="batch"), ValueError,
     r"kl_div: reduction must be one of \('mean', 'sum', 'none', 'batchmean'\)"),
    (lambda: F.smooth_l1_loss(np.zeros(3), np.zeros(3), beta=-1.0), ValueError,
     r"smooth_l1_loss: beta must be >= 0, got -1.0"),
    (lambda: F.huber_loss(np.zeros(3), np.zeros(3), delta=0.0), ValueError,
     r"huber_loss: delta must be > 0, got 0.0"),
    (lambda: F.huber_loss(np.zeros(3), np.zeros((3, 1))), ValueError,
     r"huber_loss: input shape \(3,\) and target shape \(3, 1\) differ"),
    (lambda: F.cosine_similarity(np.ones(3), np.ones(3)), ValueError,
     r"cosine_similarity: axis 1 is out of range for a tensor with 1 dims"),
    (lambda: F.cosine_similarity(np.ones((2, 3)), np.ones((2, 3)), axis=0, dim=1), TypeError,
     r"cosine_similarity: got both axis=0 and dim=1"),
    (lambda: F.cosine_similarity(np.ones((2, 3)), np.ones((4, 3))), ValueError,
     r"cosine_similarity: shapes \(2, 3\) and \(4, 3\) do not broadcast"),
])
def test_errors_name_the_op_and_the_arguments(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ----------------------------------------------------------------------------------------------
# review against PyTorch: the edge cases that used to disagree

def test_weighted_smoothed_cross_entropy_all_ignored_has_zero_gradient():
    torch = pytest.importorskip("torch")
    z = np.random.default_rng(0).standard_normal((3, 4))
    t = np.array([-100, -100, -100])
    w = np.array([0.5, 1.0, 2.0, 0.3])
    x = tl.tensor(z, requires_grad=True)
    loss = F.cross_entropy(x, t, weight=w, label_smoothing=0.2)
    loss.backward()
    tz = torch.tensor(z, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(tz, torch.tensor(t), weight=torch.tensor(w),
                                                 label_smoothing=0.2)
    expected.backward()
    assert np.isnan(loss.item()) and torch.isnan(expected)
    np.testing.assert_array_equal(x.grad, tz.grad.numpy())                    # zeros, not NaN


@pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")    # torch's kl_div
@pytest.mark.parametrize("name", ["smooth_l1_loss", "huber_loss", "binary_cross_entropy",
                                  "kl_div", "cross_entropy"])
def test_mean_of_an_empty_batch_is_nan_as_torch(name):
    torch = pytest.importorskip("torch")
    e = np.zeros((0, 3))
    x = tl.tensor(e, requires_grad=True)
    loss = getattr(F, name)(x, tl.tensor(e))                 # no 0 / 0 RuntimeWarning (an error)
    loss.backward()
    expected = getattr(torch.nn.functional, name)(torch.tensor(e), torch.tensor(e))
    assert np.isnan(loss.item()) and torch.isnan(expected)
    assert x.grad.shape == (0, 3)


def test_probability_cross_entropy_at_minus_inf_logits_is_nan_as_torch():
    torch = pytest.importorskip("torch")
    z = np.array([[0.0, -np.inf, 1.0], [2.0, 1.0, 0.5]])
    q = np.array([[0.5, 0.0, 0.5], [0.2, 0.3, 0.5]])
    loss = F.cross_entropy(tl.tensor(z), tl.tensor(q), reduction="none")     # 0 * -inf, no warning
    expected = torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(q),
                                                 reduction="none")
    np.testing.assert_allclose(loss.numpy(), expected.numpy(), rtol=1e-12)

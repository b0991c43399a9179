"""tinyllm.compress.distillation_loss: the DistillationLoss op against PyTorch's composition,
its backward against finite differences, the alpha edge cases, masked vocabularies, bad input."""
import io

import numpy as np
import pytest

import tinyllm as tl
from tinyllm.compress import DistillationLoss, distillation_loss

torch = pytest.importorskip("torch", reason="torch is the oracle for the loss values")
TF = torch.nn.functional


def _inputs(seed=0, shape=(6,), V=7, ignore=(2,)):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape + (V,)) * 2
    zt = rng.standard_normal(shape + (V,)) * 2
    t = rng.integers(0, V, shape)
    for i in ignore:
        t.reshape(-1)[i] = -100
    return z, zt, t


def _torch_loss(z, zt, t, T, alpha):
    """alpha CE + (1 - alpha) T^2 KL(batchmean) on the logits seen as (N, V), and dz."""
    V = z.shape[-1]
    zs = torch.tensor(z.reshape(-1, V), requires_grad=True)
    kl = TF.kl_div(TF.log_softmax(zs / T, -1), TF.softmax(torch.tensor(zt.reshape(-1, V)) / T, -1),
                   reduction="batchmean") * T ** 2
    ce = TF.cross_entropy(zs, torch.tensor(t.reshape(-1)), ignore_index=-100)
    loss = alpha * ce + (1 - alpha) * kl
    loss.backward()
    return loss.item(), zs.grad.numpy().reshape(z.shape)


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (2.0, 0.3), (4.0, 0.9), (0.5, 0.0), (3.0, 1.0)])
@pytest.mark.parametrize("shape", [(6,), (2, 3)])
def test_equals_pytorch_composition_float64(T, alpha, shape):
    z, zt, t = _inputs(shape=shape)
    x = tl.tensor(z, requires_grad=True)
    loss = distillation_loss(x, zt, t, temperature=T, alpha=alpha)
    loss.backward()
    ref, dref = _torch_loss(z, zt, t, T, alpha)
    assert loss.dtype == np.float64
    assert abs(float(loss.data) - ref) <= 1e-10
    np.testing.assert_allclose(x.grad, dref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (2.5, 0.3), (0.7, 0.0), (2.0, 1.0)])
def test_gradcheck_float64(T, alpha):
    z, zt, t = _inputs(seed=1, shape=(2, 3))
    tl.gradcheck(lambda s: distillation_loss(s, zt, t, temperature=T, alpha=alpha),
                 [tl.tensor(z, requires_grad=True)])


def test_kl_gradient_is_T_times_q_minus_p_over_N():
    z, zt, t = _inputs(seed=2)
    T, N = 3.0, z.shape[0]
    x = tl.tensor(z, requires_grad=True)
    distillation_loss(x, zt, t, temperature=T, alpha=0.0).backward()
    q = torch.softmax(torch.tensor(z) / T, -1).numpy()
    p = torch.softmax(torch.tensor(zt) / T, -1).numpy()
    np.testing.assert_allclose(x.grad, T * (q - p) / N, atol=1e-14)


def test_alpha_edges_are_the_plain_losses():
    z, zt, t = _inputs(seed=3)
    hard = distillation_loss(tl.tensor(z), zt, t, temperature=2.0, alpha=1.0)
    assert abs(float(hard.data) - float(tl.functional.cross_entropy(tl.tensor(z), t).data)) < 1e-12
    soft = distillation_loss(tl.tensor(z), zt, None, temperature=2.0, alpha=0.0)
    kl = tl.functional.kl_div(tl.functional.log_softmax(tl.tensor(z / 2.0)),
                              tl.functional.softmax(tl.tensor(zt / 2.0)), reduction="batchmean")
    assert abs(float(soft.data) - 4.0 * float(kl.data)) < 1e-12
    same = distillation_loss(tl.tensor(z), z, None, temperature=2.0, alpha=0.0)  # teacher = student
    assert abs(float(same.data)) < 1e-14


def test_teacher_gets_no_gradient():
    z, zt, t = _inputs(seed=4)
    x, teacher = tl.tensor(z, requires_grad=True), tl.tensor(zt, requires_grad=True)
    distillation_loss(x, teacher, t, temperature=2.0, alpha=0.5).backward()
    assert x.grad is not None and teacher.grad is None


def test_masked_vocabulary_gives_no_nan():
    """-inf logits (a masked vocabulary entry, p_t = q_s = 0 there) contribute nothing: the loss
    and gradient equal those of the vocabulary without that entry."""
    z, zt, t = _inputs(seed=5, ignore=())
    t[t == 3] = 0
    z[:, 3] = zt[:, 3] = -np.inf
    x = tl.tensor(z, requires_grad=True)
    loss = distillation_loss(x, zt, t, temperature=2.0, alpha=0.4)
    loss.backward()
    keep = [0, 1, 2, 4, 5, 6]
    x2 = tl.tensor(z[:, keep], requires_grad=True)
    t2 = np.where(t > 3, t - 1, t)
    loss2 = distillation_loss(x2, zt[:, keep], t2, temperature=2.0, alpha=0.4)
    loss2.backward()
    assert np.isfinite(float(loss.data)) and np.all(np.isfinite(x.grad))
    assert abs(float(loss.data) - float(loss2.data)) < 1e-12
    assert np.all(x.grad[:, 3] == 0)
    np.testing.assert_allclose(x.grad[:, keep], x2.grad, atol=1e-14)


def test_float32_stays_float32_and_close():
    z, zt, t = _inputs(seed=6)
    x = tl.tensor(z.astype(np.float32), requires_grad=True)
    loss = distillation_loss(x, zt.astype(np.float32), t, temperature=2.0, alpha=0.5)
    loss.backward()
    ref, dref = _torch_loss(z, zt, t, 2.0, 0.5)
    assert loss.dtype == np.float32 and x.grad.dtype == np.float32
    assert abs(float(loss.data) - ref) < 1e-5
    np.testing.assert_allclose(x.grad, dref, atol=1e-6)


def test_all_targets_ignored_is_nan_unless_alpha_is_zero():
    z, zt, t = _inputs(seed=7, ignore=range(6))
    assert np.isnan(float(distillation_loss(tl.tensor(z), zt, t, 2.0, 0.5).data))
    assert np.isfinite(float(distillation_loss(tl.tensor(z), zt, t, 2.0, 0.0).data))


@pytest.mark.parametrize("kwargs,match", [
    (dict(teacher=np.zeros((6, 6))), "teacher_logits shape"),
    (dict(targets=np.zeros(5, int)), "targets shape"),
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(temperature=-1.0), "temperature must be > 0"),
    (dict(temperature=float("nan")), "temperature must be finite"),
    (dict(alpha=1.5), r"alpha must be in \[0, 1\]"),
    (dict(alpha=-0.1), r"alpha must be in \[0, 1\]"),
    (dict(targets=None), "targets are needed"),
])
def test_bad_input_raises_naming_the_op(kwargs, match):
    z, zt, t = _inputs()
    args = dict(teacher=zt, targets=t, temperature=2.0, alpha=0.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match="distillation_loss: " + match):
        distillation_loss(tl.tensor(z), args["teacher"], args["targets"],
                          temperature=args["temperature"], alpha=args["alpha"])


def test_op_has_its_card():
    text = DistillationLoss.explain(file=io.StringIO())
    assert "T (q_s - p_t) / N" in text


def test_out_of_range_target_is_an_index_error_as_in_cross_entropy():
    z, zt, _ = _inputs()
    with pytest.raises(IndexError, match="distillation_loss: target value 9 is out of range"):
        distillation_loss(tl.tensor(z), zt, np.full(6, 9), temperature=2.0, alpha=0.5)

"""Optimizers, schedules and clipping: hand-computed steps, then equality with torch.optim.

Hand-computed cases use tiny parameters and write the arithmetic out, so a failure shows which
term of the update is wrong. The torch cases run 10 steps on the same random gradients in
float64 and demand agreement to rtol 1e-12: the update rules must be the same, term by term.
"""
import copy
import math
import re

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import backend, optim
from tinyllm.optim import lr_scheduler
from tests.conftest import t64

G1, G2, G3 = [0.5, 0.25], [-1.0, 0.5], [0.2, -0.4]


def set_grad(p, values):
    """Give ``p`` a gradient by hand, on the test backend's device, in p's dtype."""
    p.grad = tl.tensor(np.asarray(values, dtype=p.data.dtype)).data


def run_steps(opt, p, grads):
    for g in grads:
        set_grad(p, g)
        opt.step()
    return p.numpy()


# ----------------------------------------------------------------------------------------------
# SGD by hand: p = [1, -2], lr = 0.1

def test_sgd_plain():
    p = t64([1.0, -2.0])
    opt = optim.SGD([p], lr=0.1)
    np.testing.assert_allclose(run_steps(opt, p, [G1]), [0.95, -2.025], rtol=1e-15)
    np.testing.assert_allclose(run_steps(opt, p, [G2]), [1.05, -2.075], rtol=1e-15)
    assert len(opt.state) == 0                     # no momentum, no state


def test_sgd_momentum():
    p = t64([1.0, -2.0])
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    # step 1: buf = g1 = [0.5, 0.25]                   p = [1 - 0.05, -2 - 0.025]
    np.testing.assert_allclose(run_steps(opt, p, [G1]), [0.95, -2.025], rtol=1e-15)
    # step 2: buf = 0.9 * [0.5, 0.25] + [-1, 0.5] = [-0.55, 0.725]
    np.testing.assert_allclose(run_steps(opt, p, [G2]), [1.005, -2.0975], rtol=1e-15)
    # step 3: buf = 0.9 * [-0.55, 0.725] + [0.2, -0.4] = [-0.295, 0.2525]
    np.testing.assert_allclose(run_steps(opt, p, [G3]), [1.0345, -2.12275], rtol=1e-14)
    np.testing.assert_allclose(backend.asnumpy(opt.state[p]["momentum_buffer"]),
                               [-0.295, 0.2525], rtol=1e-14)


def test_sgd_momentum_dampening():
    p = t64([1.0, -2.0])
    opt = optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.5)
    # step 1: buf = g1 (no dampening on the first step, as torch)
    # step 2: buf = 0.9 * [0.5, 0.25] + 0.5 * [-1, 0.5] = [-0.05, 0.475]
    np.testing.assert_allclose(run_steps(opt, p, [G1, G2]), [0.955, -2.0725], rtol=1e-15)


def test_sgd_nesterov():
    p = t64([1.0, -2.0])
    opt = optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True)
    # step 1: buf = g1, d = g1 + 0.9 * buf = [0.95, 0.475]
    np.testing.assert_allclose(run_steps(opt, p, [G1]), [0.905, -2.0475], rtol=1e-15)
    # step 2: buf = [-0.55, 0.725], d = [-1, 0.5] + 0.9 * buf = [-1.495, 1.1525]
    np.testing.assert_allclose(run_steps(opt, p, [G2]), [1.0545, -2.16275], rtol=1e-14)


def test_sgd_weight_decay():
    p = t64([1.0, -2.0])
    opt = optim.SGD([p], lr=0.1, weight_decay=0.1)
    # step 1: g = [0.5, 0.25] + 0.1 * [1, -2] = [0.6, 0.05]
    np.testing.assert_allclose(run_steps(opt, p, [G1]), [0.94, -2.005], rtol=1e-15)
    # step 2: g = [-1, 0.5] + 0.1 * [0.94, -2.005] = [-0.906, 0.2995]
    np.testing.assert_allclose(run_steps(opt, p, [G2]), [1.0306, -2.03495], rtol=1e-14)
    np.testing.assert_array_equal(backend.asnumpy(p.grad), G2)    # the grad itself is untouched


# ----------------------------------------------------------------------------------------------
# Adam / AdamW by hand: a one-element parameter, every term written out

def adam_by_hand(p, grads, lr, beta1, beta2, eps, weight_decay=0.0, decoupled=False):
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1 ** t)
        v_hat = v / (1 - beta2 ** t)
        p = p - lr * m_hat / (math.sqrt(v_hat) + eps)
    return p


def test_adam_by_hand():
    p = t64([1.0])
    opt = optim.Adam([p], lr=0.1)
    # step 1: m = 0.05, v = 0.00025; m_hat = 0.5, v_hat = 0.25: p = 1 - 0.1 * 0.5 / (0.5 + 1e-8)
    run_steps(opt, p, [[0.5]])
    assert p.numpy()[0] == pytest.approx(1 - 0.1 * 0.5 / (0.5 + 1e-8), rel=1e-15)
    assert opt.state[p]["step"] == 1
    np.testing.assert_allclose(backend.asnumpy(opt.state[p]["exp_avg"]), [0.05], rtol=1e-15)
    np.testing.assert_allclose(backend.asnumpy(opt.state[p]["exp_avg_sq"]), [0.00025],
                               rtol=1e-15)
    # step 2: m = 0.9 * 0.05 - 0.1 = -0.055, v = 0.999 * 0.00025 + 0.001 = 0.00124975,
    #         m_hat = -0.055 / (1 - 0.9^2), v_hat = 0.00124975 / (1 - 0.999^2)
    p1 = 1 - 0.1 * 0.5 / (0.5 + 1e-8)
    m_hat, v_hat = -0.055 / 0.19, 0.00124975 / (1 - 0.999 ** 2)
    p2 = p1 - 0.1 * m_hat / (math.sqrt(v_hat) + 1e-8)
    run_steps(opt, p, [[-1.0]])
    assert p.numpy()[0] == pytest.approx(p2, rel=1e-14)
    assert p2 == pytest.approx(0.936610, abs=1e-6)              # a number, not only a formula
    # step 3 against the loop above
    run_steps(opt, p, [[0.2]])
    expected = adam_by_hand(1.0, [0.5, -1.0, 0.2], 0.1, 0.9, 0.999, 1e-8)
    assert p.numpy()[0] == pytest.approx(expected, rel=1e-14)


def test_adam_bias_correction_makes_first_step_lr_sized():
    # Without bias correction the first step would be lr * 0.1 g / sqrt(0.001 g^2) ~ 3.16 lr.
    for g in (1e-3, 1.0, 1e3):
        p = t64([0.0])
        opt = optim.Adam([p], lr=0.01, eps=0.0)
        run_steps(opt, p, [[g]])
        assert p.numpy()[0] == pytest.approx(-0.01, rel=1e-12)


def test_adam_l2_weight_decay_by_hand():
    p = t64([1.0])
    opt = optim.Adam([p], lr=0.1, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.5)
    run_steps(opt, p, [[0.5], [-1.0], [0.2]])
    expected = adam_by_hand(1.0, [0.5, -1.0, 0.2], 0.1, 0.8, 0.99, 1e-6, weight_decay=0.5)
    assert p.numpy()[0] == pytest.approx(expected, rel=1e-14)


def test_adamw_by_hand():
    p = t64([1.0])
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.1)
    # step 1: decay first, p = 1 * (1 - 0.1 * 0.1) = 0.99, then the Adam step of ~0.1
    run_steps(opt, p, [[0.5]])
    assert p.numpy()[0] == pytest.approx(0.99 - 0.1 * 0.5 / (0.5 + 1e-8), rel=1e-15)
    run_steps(opt, p, [[-1.0], [0.2]])
    expected = adam_by_hand(1.0, [0.5, -1.0, 0.2], 0.1, 0.9, 0.999, 1e-8, weight_decay=0.1,
                            decoupled=True)
    assert p.numpy()[0] == pytest.approx(expected, rel=1e-14)
    assert optim.AdamW([t64([1.0])]).param_groups[0]["weight_decay"] == 0.01


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_keeps_dtype_and_array(cls, dtype):
    p = tl.tensor(np.array([1.0, -2.0], dtype=dtype), requires_grad=True)
    before = p.data
    opt = cls([p], lr=0.1, **({"momentum": 0.9} if cls is optim.SGD else {}))
    run_steps(opt, p, [G1, G2])
    assert p.data is before                       # updated in place
    assert p.data.dtype == dtype
    for value in opt.state[p].values():
        if hasattr(value, "dtype"):
            assert value.dtype == dtype


# ----------------------------------------------------------------------------------------------
# equality with torch.optim: 10 steps, parameter groups, float64

TORCH_CASES = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.02)),
    ("Adam", dict()),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)),
    ("AdamW", dict()),
    ("AdamW", dict(lr=0.02, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)),
]


def _torch_and_ours(rng, torch, name, kwargs, group_wd=(0.1, 0.0)):
    shapes = [(3, 4), (4,), (2, 2, 2)]
    inits = [rng.standard_normal(s) for s in shapes]
    ours = [t64(a) for a in inits]
    theirs = [torch.tensor(a, requires_grad=True) for a in inits]

    def groups(ps):
        # two groups with different weight decay (and lr), like decay / no-decay in nanoGPT
        return [{"params": ps[:2], "weight_decay": group_wd[0]},
                {"params": ps[2:], "weight_decay": group_wd[1], "lr": 0.03}]

    kwargs = dict(kwargs)
    if "weight_decay" not in kwargs:                  # single group: use the kwargs as given
        return (getattr(optim, name)(ours, **kwargs), ours,
                getattr(torch.optim, name)(theirs, **kwargs), theirs, shapes)
    return (getattr(optim, name)(groups(ours), **kwargs), ours,
            getattr(torch.optim, name)(groups(theirs), **kwargs), theirs, shapes)


@pytest.mark.parametrize("name,kwargs", TORCH_CASES)
def test_matches_torch_optim(rng, name, kwargs):
    torch = pytest.importorskip("torch")
    opt, ours, topt, theirs, shapes = _torch_and_ours(rng, torch, name, kwargs)
    for step in range(10):
        for i, (p, tp, shape) in enumerate(zip(ours, theirs, shapes)):
            if step == 4 and i == 1:                   # a step without a grad: both skip it
                p.grad, tp.grad = None, None
                continue
            g = rng.standard_normal(shape)
            set_grad(p, g)
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
        for p, tp in zip(ours, theirs):
            np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-12, atol=1e-15)
    # the state holds the same numbers too
    for p, tp in zip(ours, theirs):
        ours_state, their_state = opt.state[p], topt.state[tp]
        assert set(ours_state) == set(their_state)
        for key, value in ours_state.items():
            np.testing.assert_allclose(np.asarray(backend.asnumpy(value), dtype=np.float64),
                                       their_state[key].numpy(), rtol=1e-12)


def test_lr_change_matches_torch(rng):
    torch = pytest.importorskip("torch")
    opt, ours, topt, theirs, shapes = _torch_and_ours(rng, torch, "AdamW", dict(lr=0.01))
    for step in range(6):
        for o in (opt, topt):
            for group in o.param_groups:
                group["lr"] = 0.01 * (step + 1)
        for p, tp, shape in zip(ours, theirs, shapes):
            g = rng.standard_normal(shape)
            set_grad(p, g)
            tp.grad = torch.tensor(g)
        opt.step()
        topt.step()
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# Optimizer bookkeeping

def test_zero_grad():
    p, q = t64([1.0, 2.0]), t64([3.0])
    opt = optim.SGD([p, q], lr=0.1)
    set_grad(p, [1.0, 1.0])
    opt.zero_grad()
    assert p.grad is None and q.grad is None
    set_grad(p, [1.0, 1.0])
    g = p.grad
    opt.zero_grad(set_to_none=False)
    assert p.grad is g                              # the same array, filled with zeros
    np.testing.assert_array_equal(backend.asnumpy(p.grad), [0.0, 0.0])
    assert q.grad is None


def test_skips_params_without_grad():
    p, q = t64([1.0, 2.0]), t64([3.0])
    opt = optim.Adam([p, q], lr=0.1)
    set_grad(p, [1.0, 1.0])
    opt.step()
    np.testing.assert_array_equal(q.numpy(), [3.0])
    assert q not in opt.state                        # no state made for a param never stepped
    assert opt.state[p]["step"] == 1


def test_lr_change_via_param_groups_takes_effect():
    p = t64([1.0])
    opt = optim.SGD([p], lr=0.1)
    run_steps(opt, p, [[1.0]])
    opt.param_groups[0]["lr"] = 0.5
    np.testing.assert_allclose(run_steps(opt, p, [[1.0]]), [1.0 - 0.1 - 0.5], rtol=1e-15)


def test_param_groups_defaults_and_add_param_group():
    a, b, c = t64([1.0]), t64([2.0]), t64([3.0])
    opt = optim.AdamW([{"params": [a], "weight_decay": 0.0}, {"params": b}], lr=0.1)
    assert opt.param_groups[0]["weight_decay"] == 0.0 and opt.param_groups[0]["lr"] == 0.1
    assert opt.param_groups[1]["weight_decay"] == 0.01
    assert len(opt.param_groups[1]["params"]) == 1 and opt.param_groups[1]["params"][0] is b
    opt.add_param_group({"params": [c], "lr": 0.5})
    assert opt.param_groups[2]["lr"] == 0.5 and opt.param_groups[2]["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})
    with pytest.raises(ValueError, match="required optimization parameter lr"):
        optim.SGD([{"params": [a]}])
    assert optim.SGD([{"params": [a]}], lr=0.1).param_groups[0]["lr"] == 0.1


def test_bad_params():
    a = t64([1.0])
    with pytest.raises(ValueError, match="appears more than once"):
        optim.SGD([a, t64([2.0]), a], lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="iterable of Tensors"):
        optim.SGD(a, lr=0.1)
    with pytest.raises(TypeError, match="ordered collection"):
        optim.SGD([{"params": {a}}], lr=0.1)
    with pytest.raises(TypeError, match="can only optimize Tensors"):
        optim.SGD([a, 3.0], lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([a * 2.0], lr=0.1)


@pytest.mark.parametrize("make,match", [
    (lambda ps: optim.SGD(ps, lr=-0.1), r"^SGD: lr must be a finite number >= 0, got -0.1$"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=-0.5), "SGD: momentum must be"),
    (lambda ps: optim.SGD(ps, lr=0.1, weight_decay=-1), "SGD: weight_decay must be"),
    (lambda ps: optim.SGD(ps, lr=0.1, nesterov=True), "SGD: Nesterov momentum requires"),
    (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
     "zero dampening"),
    (lambda ps: optim.Adam(ps, lr=-1e-3), "Adam: lr must be a finite number >= 0, got -0.001"),
    (lambda ps: optim.Adam(ps, betas=(1.0, 0.999)),
     r"Adam: betas\[0\] must be a number in \[0, 1\), got 1.0"),
    (lambda ps: optim.Adam(ps, betas=(0.9, -0.1)), r"Adam: betas\[1\] must be"),
    (lambda ps: optim.AdamW(ps, eps=-1e-8), "AdamW: eps must be a finite number >= 0"),
    (lambda ps: optim.AdamW(ps, weight_decay=-0.1), "AdamW: weight_decay must be"),
    (lambda ps: optim.Adam(ps, lr=float("nan")), "Adam: lr must be .*, got nan"),
])
def test_hyperparameter_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make([t64([1.0])])


# ----------------------------------------------------------------------------------------------
# issue 17: every hyperparameter out of its range is refused, at construction, in a parameter
# group given to the constructor, in add_param_group and in load_state_dict

BAD_NUMBERS = [-1.0, float("nan"), float("inf"), "0.1", True, None]
HYPER = [   # (optimizer, valid keyword arguments, argument, what the message says it expects)
    ("SGD", dict(lr=0.1, momentum=0.9), "lr", "a finite number >= 0"),
    ("SGD", dict(lr=0.1, momentum=0.9), "momentum", "a finite number >= 0"),
    ("SGD", dict(lr=0.1, momentum=0.9), "dampening", r"a number in \[0, 1\]"),
    ("SGD", dict(lr=0.1, momentum=0.9), "weight_decay", "a finite number >= 0"),
    ("Adam", dict(), "lr", "a finite number >= 0"),
    ("Adam", dict(), "eps", "a finite number >= 0"),
    ("Adam", dict(), "weight_decay", "a finite number >= 0"),
    ("AdamW", dict(), "lr", "a finite number >= 0"),
    ("AdamW", dict(), "eps", "a finite number >= 0"),
    ("AdamW", dict(), "weight_decay", "a finite number >= 0"),
]


def _shown(value):
    return repr(value) if isinstance(value, str) else str(value)


@pytest.mark.parametrize("bad", BAD_NUMBERS, ids=repr)
@pytest.mark.parametrize("name,kwargs,arg,expected", HYPER, ids=lambda v: str(v))
def test_optimizers_refuse_out_of_range_hyperparameters(name, kwargs, arg, expected, bad):
    cls = getattr(optim, name)
    message = rf"^{name}: {arg} must be {expected}, got {re.escape(_shown(bad))}"
    a, b = t64([1.0]), t64([2.0])
    with pytest.raises(ValueError, match=message + "$"):
        cls([a], **{**kwargs, arg: bad})                              # the constructor
    with pytest.raises(ValueError, match=message + r" \(parameter group 1\)$"):
        cls([{"params": [a]}, {"params": [b], arg: bad}], **kwargs)   # a group of its own
    opt = cls([a], **kwargs)
    with pytest.raises(ValueError, match=message + r" \(parameter group 1\)$"):
        opt.add_param_group({"params": [b], arg: bad})
    assert len(opt.param_groups) == 1                                 # nothing half-added
    state = copy.deepcopy(opt.state_dict())
    state["param_groups"][0][arg] = bad
    with pytest.raises(ValueError, match=message + " \\(parameter group 0 of the loaded"):
        opt.load_state_dict(state)
    assert opt.param_groups[0][arg] == cls([a], **kwargs).param_groups[0][arg]


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
@pytest.mark.parametrize("betas,match", [
    ((1.0, 0.999), r"betas\[0\] must be a number in \[0, 1\), got 1.0"),
    ((float("nan"), 0.999), r"betas\[0\] must be .*, got nan"),
    ((0.9, -0.1), r"betas\[1\] must be .*, got -0.1"),
    ((0.9, float("inf")), r"betas\[1\] must be .*, got inf"),
    ((0.9,), r"betas must be a pair \(beta1, beta2\), got \(0.9,\)"),
    (0.9, r"betas must be a pair"),
    ("ab", r"betas must be a pair"),
])
def test_adam_refuses_bad_betas(name, betas, match):
    cls = getattr(optim, name)
    with pytest.raises(ValueError, match=f"^{name}: {match}"):
        cls([t64([1.0])], betas=betas)
    opt = cls([t64([1.0])])
    with pytest.raises(ValueError, match=f"^{name}: {match}.* \\(parameter group 1\\)$"):
        opt.add_param_group({"params": [t64([2.0])], "betas": betas})


def test_sgd_required_lr_is_checked_in_each_group():
    a, b = t64([1.0]), t64([2.0])
    opt = optim.SGD([{"params": [a], "lr": 0.1}])                   # lr only in the group
    assert opt.param_groups[0]["lr"] == 0.1
    with pytest.raises(ValueError, match=r"^SGD: lr must be .*, got nan \(parameter group 1\)"):
        opt.add_param_group({"params": [b], "lr": float("nan")})
    with pytest.raises(ValueError, match="SGD: Nesterov momentum requires .* group 1"):
        opt.add_param_group({"params": [b], "lr": 0.1, "nesterov": True})
    assert optim.SGD([a], lr=0, dampening=1.0).param_groups[0]["dampening"] == 1.0   # edges ok


@pytest.mark.parametrize("max_norm", [-1, -0.5, float("nan"), float("-inf"), "abc", None, True])
def test_clip_grad_norm_refuses_bad_max_norm(max_norm):
    """A negative max_norm once scaled every gradient by a negative factor: uphill."""
    p = t64([0.0, 0.0])
    set_grad(p, [3.0, 4.0])
    with pytest.raises(ValueError, match=r"^clip_grad_norm_: max_norm must be a number > 0 "
                                         rf"\(inf allowed\), got {re.escape(_shown(max_norm))}$"):
        optim.clip_grad_norm_([p], max_norm)
    np.testing.assert_array_equal(backend.asnumpy(p.grad), [3.0, 4.0])           # untouched


def test_clip_grad_norm_zero_and_inf():
    p = t64([0.0, 0.0])
    set_grad(p, [3.0, 4.0])
    for zero in (0, 0.0):
        with pytest.raises(ValueError, match="max_norm=0 would set every gradient to zero.*"
                                             "skip the call or pass max_norm=float\\('inf'\\)"):
            optim.clip_grad_norm_([p], zero)
    np.testing.assert_array_equal(backend.asnumpy(p.grad), [3.0, 4.0])
    assert optim.clip_grad_norm_([p], float("inf")) == 5.0                       # as torch: a
    np.testing.assert_array_equal(backend.asnumpy(p.grad), [3.0, 4.0])           # no-op
    with pytest.raises(ValueError, match="max_norm must be"):                    # even without
        optim.clip_grad_norm_([t64([1.0])], -1.0)                               # gradients


@pytest.mark.parametrize("norm_type", [-1, 0, float("nan"), "fro", None])
def test_clip_grad_norm_refuses_bad_norm_type(norm_type):
    p = t64([0.0, 0.0])
    set_grad(p, [3.0, 4.0])
    with pytest.raises(ValueError, match=r"^clip_grad_norm_: norm_type must be a number > 0 "
                                         rf"\(inf allowed\), got {re.escape(_shown(norm_type))}"):
        optim.clip_grad_norm_([p], 1.0, norm_type=norm_type)
    np.testing.assert_array_equal(backend.asnumpy(p.grad), [3.0, 4.0])


@pytest.mark.parametrize("clip_value", [-0.3, 0, float("nan"), "x"])
def test_clip_grad_value_refuses_bad_clip_value(clip_value):
    """A negative clip_value once set every gradient element to it (clip's bounds swapped)."""
    p = t64([0.0, 0.0])
    set_grad(p, [3.0, -4.0])
    with pytest.raises(ValueError, match=r"^clip_grad_value_: clip_value must be a number > 0"):
        optim.clip_grad_value_([p], clip_value)
    np.testing.assert_array_equal(backend.asnumpy(p.grad), [3.0, -4.0])
    optim.clip_grad_value_([p], float("inf"))
    np.testing.assert_array_equal(backend.asnumpy(p.grad), [3.0, -4.0])


@pytest.mark.parametrize("call,match", [
    (lambda: lr_scheduler.warmup_cosine(-1, 10),
     r"^warmup_cosine: warmup_steps must be a finite number >= 0, got -1$"),
    (lambda: lr_scheduler.warmup_cosine(float("nan"), 10), "warmup_steps must be .*got nan"),
    (lambda: lr_scheduler.warmup_cosine(1, float("nan")), "total_steps must be .*got nan"),
    (lambda: lr_scheduler.warmup_cosine(10, 5), r"^warmup_cosine: total_steps \(5\) must be"),
    (lambda: lr_scheduler.warmup_cosine(1, 5, min_lr_ratio=-0.1),
     r"^warmup_cosine: min_lr_ratio must be a number in \[0, 1\], got -0.1$"),
    (lambda: lr_scheduler.warmup_cosine(1, 5, min_lr_ratio=float("nan")), "min_lr_ratio"),
    (lambda: lr_scheduler.linear(-1, 5), r"^linear: warmup_steps must be"),
    (lambda: lr_scheduler.linear(2, float("inf")), r"^linear: total_steps must be .*got inf"),
    (lambda: lr_scheduler.constant(-3), r"^constant: warmup_steps must be .*got -3$"),
    (lambda: lr_scheduler.cosine_with_warmup_lr(-5, 1e-3, 10, 100, 1e-4),
     r"^cosine_with_warmup_lr: step must be a finite number >= 0, got -5$"),
    (lambda: lr_scheduler.cosine_with_warmup_lr(0, -1e-3, 10, 100, 0.0),
     r"^cosine_with_warmup_lr: base_lr must be .*got -0.001$"),
    (lambda: lr_scheduler.cosine_with_warmup_lr(0, float("nan"), 10, 100, 0.0), "base_lr"),
    (lambda: lr_scheduler.cosine_with_warmup_lr(0, 1e-3, -1, 100, 1e-4), "warmup_steps"),
    (lambda: lr_scheduler.cosine_with_warmup_lr(0, 1e-3, 10, float("nan"), 1e-4),
     "total_steps"),
    (lambda: lr_scheduler.cosine_with_warmup_lr(50, 1e-3, 10, 100, 1e-2),
     r"^cosine_with_warmup_lr: min_lr must be a number in \[0, 0.001\], got 0.01 \(the floor"),
    (lambda: lr_scheduler.cosine_with_warmup_lr(50, 1e-3, 10, 100, -1e-4), "min_lr must be"),
])
def test_schedules_refuse_out_of_range_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cosine_with_warmup_lr_edges_stay_valid():
    assert lr_scheduler.cosine_with_warmup_lr(0, 1e-3, 0, 0, 1e-4) == 1e-4     # no warmup, N=0
    assert lr_scheduler.cosine_with_warmup_lr(3, 1e-3, 10, 5, 1e-3) > 0          # N < W allowed
    assert lr_scheduler.cosine_with_warmup_lr(7, 0.0, 2, 10, 0.0) == 0.0         # lr 0 is fine


def test_lambda_lr_checks_its_arguments_and_every_lr_it_writes():
    a = t64([1.0])
    opt = optim.SGD([a], lr=0.1)
    with pytest.raises(TypeError, match="LambdaLR: lr_lambda must be a function"):
        lr_scheduler.LambdaLR(opt, 0.5)
    with pytest.raises(ValueError, match=r"LambdaLR: last_epoch must be an integer >= -1"):
        lr_scheduler.LambdaLR(opt, lambda s: 1.0, last_epoch=-2)
    with pytest.raises(TypeError, match="LambdaLR: optimizer must be an Optimizer"):
        lr_scheduler.LambdaLR([a], lambda s: 1.0)
    sched = lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s)          # a sign slip: < 0 from s=2
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.0
    with pytest.raises(ValueError, match=r"^LambdaLR: the learning rate must be a finite number "
                                         r">= 0, got -0.1 \(group 0 at step 2: base lr 0.1 "
                                         r"times lr_lambda\(2\)\)$"):
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.0                         # not written
    with pytest.raises(ValueError, match="got nan"):
        lr_scheduler.LambdaLR(optim.SGD([t64([1.0])], lr=0.1), lambda s: float("nan"))


@pytest.mark.parametrize("name,kwargs", [
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("Adam", dict(lr=0.05, weight_decay=0.1)),
    ("AdamW", dict(lr=0.05, betas=(0.8, 0.9))),
])
def test_state_dict_round_trip(rng, name, kwargs):
    shapes = [(3, 2), (2,)]
    inits = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(6)]

    def make(ps):
        return getattr(optim, name)([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.01}],
                                    **kwargs)

    ours = [t64(a) for a in inits]
    opt = make(ours)
    for gs in grads[:3]:
        for p, g in zip(ours, gs):
            set_grad(p, g)
        opt.step()
    opt.param_groups[1]["lr"] = 0.02                 # the hyperparameters are saved too
    sd = copy.deepcopy(opt.state_dict())
    assert sorted(sd["state"]) == [0, 1]
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]

    clones = [t64(p.numpy()) for p in ours]
    opt2 = make(clones)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[1]["lr"] == 0.02
    assert opt2.param_groups[0]["params"][0] is clones[0]
    for gs in grads[3:]:
        for p, c, g in zip(ours, clones, gs):
            set_grad(p, g)
            set_grad(c, g)
        opt.step()
        opt2.step()
    for p, c in zip(ours, clones):
        np.testing.assert_array_equal(p.numpy(), c.numpy())   # continues identically
    # the loaded state is a copy: stepping opt2 did not touch the saved dictionary
    for key, value in sd["state"][0].items():
        if hasattr(value, "shape"):
            assert value is not opt2.state[clones[0]][key]


def test_state_dict_is_live_like_torch_and_loads_cast():
    p = t64([1.0, 2.0])
    opt = optim.Adam([p], lr=0.1)
    run_steps(opt, p, [G1])
    sd = opt.state_dict()
    assert sd["state"][0]["exp_avg"] is opt.state[p]["exp_avg"]
    q = tl.tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    opt32 = optim.Adam([q], lr=0.1)
    opt32.load_state_dict(sd)
    assert opt32.state[q]["exp_avg"].dtype == np.float32
    assert opt32.state[q]["step"] == 1


def test_load_state_dict_mismatch():
    a, b, c = t64([1.0]), t64([2.0]), t64([3.0])
    sd = optim.SGD([{"params": [a, b]}, {"params": [c]}], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="different number of parameter groups: 2 in the "
                                         "state dict, 1 in the optimizer"):
        optim.SGD([a, b, c], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="group 0 has 2 parameters in the state dict, 1 in"):
        optim.SGD([{"params": [a]}, {"params": [b, c]}], lr=0.1).load_state_dict(sd)


def test_closure_runs_with_grad_enabled():
    p = t64([1.0, 2.0])
    opt = optim.SGD([p], lr=0.1)

    def closure():
        opt.zero_grad()
        assert tl.is_grad_enabled()
        loss = (p * p).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss.item()) == 5.0
    np.testing.assert_allclose(p.numpy(), [0.8, 1.6], rtol=1e-15)     # p - 0.1 * 2p


def test_step_runs_under_no_grad_and_grows_no_graph():
    p = t64([1.0, 2.0])
    opt = optim.AdamW([p], lr=0.1)
    (p * p).sum().backward()
    opt.step()
    assert p.is_leaf and p.grad_fn is None and p.requires_grad


# ----------------------------------------------------------------------------------------------
# schedules

def nanogpt_get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    """nanoGPT train.py's get_lr (karpathy/nanoGPT 3adf61e, train.py:231-242)."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def test_warmup_cosine_values():
    W, N, r, lr = 100, 1100, 0.1, 6e-4
    f = lr_scheduler.warmup_cosine(W, N, min_lr_ratio=r)
    expected = {0: 1 / 101, 50: 51 / 101, 99: 100 / 101, 100: 1.0, 600: r + (1 - r) * 0.5,
                1100: r, 5000: r}
    for step, value in expected.items():                          # the shape, by hand
        assert f(step) == pytest.approx(value, rel=1e-12, abs=1e-15), step
    for step in [0, 1, 37, 50, 99, 100, 101, 350, 600, 1000, 1099, 1100, 1101, 5000]:
        assert lr * f(step) == pytest.approx(nanogpt_get_lr(step, lr, W, N, r * lr),
                                             rel=1e-12, abs=1e-18), step
        assert lr_scheduler.cosine_with_warmup_lr(step, lr, W, N, r * lr) == pytest.approx(
            nanogpt_get_lr(step, lr, W, N, r * lr), rel=1e-15, abs=1e-18), step


def test_linear_and_constant():
    f = lr_scheduler.linear(10, 110)
    assert [f(s) for s in (0, 5, 10, 60, 110, 200)] == pytest.approx([0, 0.5, 1, 0.5, 0, 0])
    assert lr_scheduler.constant()(0) == 1.0 and lr_scheduler.constant()(10 ** 6) == 1.0
    assert lr_scheduler.constant(4)(1) == 0.25 and lr_scheduler.constant(4)(4) == 1.0
    with pytest.raises(ValueError, match="total_steps"):
        lr_scheduler.warmup_cosine(10, 5)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        lr_scheduler.warmup_cosine(1, 5, min_lr_ratio=2.0)


def test_lambda_lr_drives_the_optimizer():
    a, b = t64([1.0]), t64([2.0])
    opt = optim.SGD([{"params": [a]}, {"params": [b], "lr": 1.0}], lr=0.1)
    sched = lr_scheduler.LambdaLR(opt, [lambda s: 0.5 ** s, lambda s: s])
    assert sched.get_last_lr() == [0.1, 0.0]          # lambda(0) applied at construction
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.0]
    sched.step()
    sched.step()
    assert sched.get_last_lr() == pytest.approx([0.025, 2.0])
    assert sched.base_lrs == [0.1, 1.0] and sched.last_epoch == 2
    set_grad(a, [1.0])
    opt.step()
    np.testing.assert_allclose(a.numpy(), [0.975], rtol=1e-15)
    with pytest.raises(ValueError, match="Expected 2 lr_lambdas"):
        lr_scheduler.LambdaLR(opt, [lambda s: 1.0])


def test_lambda_lr_state_round_trip():
    f = lr_scheduler.warmup_cosine(3, 10)
    opt = optim.AdamW([t64([1.0])], lr=0.1)
    sched = lr_scheduler.LambdaLR(opt, f)
    for _ in range(5):
        opt.step()
        sched.step()
    sd = copy.deepcopy(sched.state_dict())
    assert sd["last_epoch"] == 5 and sd["lr_lambdas"] == [None]

    opt2 = optim.AdamW([t64([1.0])], lr=0.1)
    opt2.load_state_dict(opt.state_dict())
    sched2 = lr_scheduler.LambdaLR(opt2, f)
    sched2.load_state_dict(sd)
    for _ in range(7):
        sched.step()
        sched2.step()
        assert sched2.get_last_lr() == sched.get_last_lr()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert sched.get_last_lr() == pytest.approx([0.1 * 0.1])      # past the end: the floor


def test_lambda_lr_saves_callable_objects():
    class Scale:
        def __init__(self, k):
            self.k = k

        def __call__(self, step):
            return self.k * step

    opt = optim.SGD([t64([1.0])], lr=1.0)
    sd = lr_scheduler.LambdaLR(opt, Scale(3.0)).state_dict()
    assert sd["lr_lambdas"] == [{"k": 3.0}]
    s2 = lr_scheduler.LambdaLR(optim.SGD([t64([1.0])], lr=1.0), Scale(1.0))
    s2.load_state_dict(sd)
    assert s2.lr_lambdas[0].k == 3.0


def test_lambda_lr_matches_torch():
    torch = pytest.importorskip("torch")
    f = lr_scheduler.warmup_cosine(5, 30, min_lr_ratio=0.1)
    opt = optim.AdamW([t64([1.0])], lr=6e-4)
    sched = lr_scheduler.LambdaLR(opt, f)
    topt = torch.optim.AdamW([torch.zeros(1, dtype=torch.float64, requires_grad=True)], lr=6e-4)
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, f)
    assert sched.get_last_lr() == tsched.get_last_lr()
    for _ in range(40):
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
        assert sched.get_last_lr() == tsched.get_last_lr()
        assert opt.param_groups[0]["lr"] == topt.param_groups[0]["lr"]
    assert opt.param_groups[0]["initial_lr"] == topt.param_groups[0]["initial_lr"]


# ----------------------------------------------------------------------------------------------
# clipping

def _clip_pair(rng, torch, scale=1.0):
    shapes = [(3, 4), (5,), (2, 2)]
    grads = [scale * rng.standard_normal(s) for s in shapes]
    ours = [t64(np.zeros(s)) for s in shapes]
    theirs = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    for p, tp, g in zip(ours, theirs, grads):
        set_grad(p, g)
        tp.grad = torch.tensor(g)
    return ours, theirs


@pytest.mark.parametrize("norm_type", [2.0, float("inf"), 1.0, 3.0])
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_matches_torch(rng, norm_type, max_norm):
    torch = pytest.importorskip("torch")
    ours, theirs = _clip_pair(rng, torch)
    before = [backend.asnumpy(p.grad).copy() for p in ours]
    total = optim.clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    assert isinstance(total, float)
    assert total == pytest.approx(ttotal.item(), rel=1e-12)
    for p, tp, g in zip(ours, theirs, before):
        np.testing.assert_allclose(backend.asnumpy(p.grad), tp.grad.numpy(), rtol=1e-12)
        if max_norm > total:
            np.testing.assert_array_equal(backend.asnumpy(p.grad), g)     # no-op below


def test_clip_grad_norm_by_hand():
    p, q = t64([0.0, 0.0]), t64([0.0])
    set_grad(p, [3.0, 0.0])
    set_grad(q, [4.0])
    assert optim.clip_grad_norm_([p, q, t64([1.0])], max_norm=1.0) == 5.0   # None grad skipped
    np.testing.assert_allclose(backend.asnumpy(p.grad), [3.0 / (5 + 1e-6), 0.0], rtol=1e-15)
    np.testing.assert_allclose(backend.asnumpy(q.grad), [4.0 / (5 + 1e-6)], rtol=1e-15)
    set_grad(p, [3.0, -4.0])
    assert optim.clip_grad_norm_(p, max_norm=10.0, norm_type="inf") == 4.0   # a single tensor
    np.testing.assert_array_equal(backend.asnumpy(p.grad), [3.0, -4.0])
    assert optim.clip_grad_norm_([t64([1.0])], 1.0) == 0.0                    # no grads at all
    # at total == max_norm torch still scales, by max_norm / (total + 1e-6) < 1
    set_grad(p, [3.0, 4.0])
    assert optim.clip_grad_norm_([p], max_norm=5.0) == 5.0
    np.testing.assert_allclose(backend.asnumpy(p.grad), [3 * 5 / (5 + 1e-6), 4 * 5 / (5 + 1e-6)],
                               rtol=1e-15)
    assert backend.asnumpy(p.grad)[1] < 4.0


def test_clip_grad_norm_float32_keeps_dtype():
    p = tl.tensor(np.zeros(3, dtype=np.float32), requires_grad=True)
    set_grad(p, [3.0, 4.0, 0.0])
    g = p.grad
    assert optim.clip_grad_norm_([p], 1.0) == pytest.approx(5.0)
    assert p.grad is g and p.grad.dtype == np.float32
    np.testing.assert_allclose(backend.asnumpy(p.grad), [0.6, 0.8, 0.0], rtol=1e-5)


def test_clip_grad_norm_nonfinite():
    p = t64([0.0, 0.0])
    set_grad(p, [np.nan, 1.0])
    with pytest.raises(RuntimeError, match="total norm of order 2.0 .* is non-finite"):
        optim.clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(backend.asnumpy(p.grad), [np.nan, 1.0])      # untouched
    set_grad(p, [np.inf, 1.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        optim.clip_grad_norm_([p], 1.0, norm_type=float("inf"), error_if_nonfinite=True)
    set_grad(p, [np.nan, 1.0])
    assert math.isnan(optim.clip_grad_norm_([p], 1.0))     # as torch: scaled by nan
    assert np.isnan(backend.asnumpy(p.grad)).all()


def test_clip_grad_value_matches_torch(rng):
    torch = pytest.importorskip("torch")
    ours, theirs = _clip_pair(rng, torch)
    optim.clip_grad_value_(ours + [t64([1.0])], 0.3)
    torch.nn.utils.clip_grad_value_(theirs, 0.3)
    for p, tp in zip(ours, theirs):
        np.testing.assert_array_equal(backend.asnumpy(p.grad), tp.grad.numpy())
    assert max(np.abs(backend.asnumpy(p.grad)).max() for p in ours) == 0.3


def test_weight_decay_groups_split_by_rank_and_skip_frozen():
    from tinyllm.optim import weight_decay_groups
    model = tl.nn.Sequential(tl.nn.Linear(3, 4), tl.nn.LayerNorm(4), tl.nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    decay, no_decay = weight_decay_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [(3, 4)]
    assert [p.shape for p in no_decay["params"]] == [(4,), (4,), (4,), (2,)]

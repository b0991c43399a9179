"""tinyllm.parallel.DataParallel: the training step split into micro-batches over ranks gives
the whole batch's loss and gradient (float64, against one process and against central
differences); N ranks equal one process accumulating the same N micro-batches bit for bit
(shared memory sums in rank order), dropout included; frozen and unreached parameters are
handled as one process handles them; bad arguments are named."""
import os

import numpy as np
import pytest

import tinyllm as tl
from tinyllm.distributed import SingleCommunicator, launch
from tinyllm.models import GPT, GPTConfig
from tinyllm.nn import Parameter
from tinyllm.optim import AdamW
from tinyllm.parallel import (DataParallel, auto_workers, available_cores,
                              broadcast_optimizer_state, broadcast_parameters)

from tests.conftest import TEST_BACKEND

CFG = GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
                bias=True)
pytestmark = pytest.mark.skipif(TEST_BACKEND != "numpy", reason="the ranks share host memory: "
                                "NumPy backend only")


def _batch(seed, rows=4, cfg=CFG):
    idx = np.random.default_rng(seed).integers(0, cfg.vocab_size, (rows, cfg.block_size + 1))
    return idx[:, :-1], idx[:, 1:]


def _grads(model):
    return {name: p.grad.copy() for name, p in model.named_parameters() if p.grad is not None}


def _model(seed=3, cfg=CFG, dtype=np.float64, cls=GPT):
    tl.set_default_dtype(dtype)
    try:
        tl.manual_seed(seed)
        return cls(cfg)
    finally:
        tl.set_default_dtype(np.float32)


@pytest.mark.parametrize("files, cap", [
    ({"cpu.max": "200000 100000\n"}, 2),                       # cgroup v2, --cpus 2
    ({"cpu.max": "150000 100000\n"}, 2),                       # 1.5 CPUs: rounded up
    ({"cpu.max": "50000 100000\n"}, 1),                        # half a CPU: still 1
    ({"cpu.max": "max 100000\n"}, None),                       # no quota
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),   # v1
    ({"cpu,cpuacct/cpu.cfs_quota_us": "400000\n",
      "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 4),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu.max": "100000 0\n"}, None),                         # a zero period: ignored
    ({"cpu.max": "garbage\n"}, None),
    ({}, None),                                                 # no cgroup files at all
])
def test_available_cores_follows_a_containers_cpu_quota(tmp_path, monkeypatch, files, cap):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert available_cores(cgroup_root=str(tmp_path)) == (64 if cap is None else cap)


def test_auto_workers_is_the_largest_divisor_within_the_cores():
    assert auto_workers(12, cores=2) == 2
    assert auto_workers(12, cores=4) == 4
    assert auto_workers(12, cores=5) == 4
    assert auto_workers(9, cores=4) == 3
    assert auto_workers(7, cores=2) == 1
    assert auto_workers(1, cores=8) == 1
    assert auto_workers(8, cores=1) == 1


@pytest.mark.parametrize("micro_batches", [2, 4])
def test_micro_batches_give_the_whole_batchs_loss_and_gradient(micro_batches):
    whole, split = _model(), _model()
    dp = DataParallel(split, micro_batches=micro_batches)
    x, y = _batch(0)
    _, loss = whole(x, y)
    loss.backward()
    assert dp.forward_backward(x, y) == pytest.approx(loss.item(), rel=1e-14)
    want, got = _grads(whole), _grads(split)
    assert want.keys() == got.keys() and len(want) == len(list(whole.parameters()))
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-11, atol=1e-13, err_msg=name)
    whole.eval()
    split.eval()
    with tl.no_grad():
        assert dp.loss(x, y) == pytest.approx(whole(x, y)[1].item(), rel=1e-14)


def test_gradient_against_central_differences():
    """d/dt L(w + t v) at t=0, by central differences of the split loss, against <grad, v>."""
    split = _model(seed=4)
    dp = DataParallel(split, micro_batches=2)
    x, y = _batch(1)
    dp.forward_backward(x, y)
    params = list(split.parameters())
    rng = np.random.default_rng(0)
    direction = [rng.standard_normal(p.data.shape) for p in params]
    analytic = sum(float(np.sum(p.grad * v)) for p, v in zip(params, direction))
    base = [p.data.copy() for p in params]
    eps, f = 1e-6, []
    for sign in (1, -1):
        for p, b, v in zip(params, base, direction):
            p.data[...] = b + sign * eps * v
        f.append(dp.loss(x, y))
    for p, b in zip(params, base):
        p.data[...] = b
    numeric = (f[0] - f[1]) / (2 * eps)
    assert numeric == pytest.approx(analytic, rel=1e-7)


def _train_steps(comm, micro_batches, dropout, steps=3):
    """``steps`` AdamW steps of a float32 GPT, rank 1's weights first scrambled (the broadcast
    must fix them); returns (losses, weights) as this rank ends."""
    cfg = GPTConfig(**{**CFG.__dict__, "dropout": dropout})
    model = _model(seed=5, cfg=cfg, dtype=np.float32)
    if comm.rank:
        for p in model.parameters():
            p.data[...] = 7.0
    broadcast_parameters(model, comm)
    opt = AdamW(model.parameters(), lr=1e-2)
    dp = DataParallel(model, comm, micro_batches, seed=9)
    losses = []
    for step in range(steps):
        x, y = _batch(10 + step, rows=6)
        opt.zero_grad()
        losses.append(dp.forward_backward(x, y))
        tl.optim.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
    return losses, {n: p.data.copy() for n, p in model.named_parameters()}


def _train_and_gather(comm, micro_batches, dropout):
    return comm.gather_object(_train_steps(comm, micro_batches, dropout))


@pytest.mark.parametrize("ranks, dropout", [(2, 0.0), (2, 0.2), (3, 0.2)])
def test_ranks_equal_one_process_accumulating_the_same_micro_batches(ranks, dropout):
    """The same losses and weights to the bit, on every rank: the micro-batch gradients are
    added in rank order, and micro-batch m draws its dropout masks from its own stream."""
    one_losses, one_weights = _train_steps(SingleCommunicator(), ranks, dropout)
    seen = launch(_train_and_gather, ranks, ranks, dropout, timeout=120)
    for losses, weights in seen:
        assert losses == one_losses
        for name, w in one_weights.items():
            np.testing.assert_array_equal(weights[name], w, err_msg=name)
    whole_losses, _ = _train_steps(SingleCommunicator(), 1, dropout)
    assert whole_losses[0] == pytest.approx(one_losses[0], rel=1e-5 if not dropout else 0.05)


def _resume_optimizer(comm):
    model = _model(seed=6, dtype=np.float32)
    opt = AdamW(model.parameters(), lr=1e-2)
    if comm.rank == 0:                      # rank 0 "loaded a checkpoint": a stepped optimizer
        x, y = _batch(2)
        model(x, y)[1].backward()
        opt.step()
    broadcast_parameters(model, comm)
    broadcast_optimizer_state(opt, comm)
    state = opt.state_dict()
    return comm.gather_object(({n: p.data.copy() for n, p in model.named_parameters()},
                               {k: {kk: np.array(vv) for kk, vv in v.items()}
                                for k, v in state["state"].items()}))


def test_the_weights_and_optimizer_state_are_broadcast_from_rank_0():
    (w0, s0), (w1, s1) = launch(_resume_optimizer, 2, timeout=60)
    assert s0.keys() == s1.keys() and len(s0) == len(w0)
    for name in w0:
        np.testing.assert_array_equal(w1[name], w0[name])
    for k in s0:
        for kk in s0[k]:
            np.testing.assert_array_equal(s1[k][kk], s0[k][kk])


class _GPTWithUnused(GPT):
    """A GPT with one parameter the loss never reaches."""

    def __init__(self, config):
        super().__init__(config)
        self.unused = Parameter(np.zeros(3))


def test_frozen_unreached_and_accumulated_gradients_are_one_processs():
    """A frozen parameter, one no loss reaches, and two calls without zero_grad (4
    micro-batches): the gradients are one process's, the frozen and unreached ones stay
    None."""
    whole, split = _model(cls=_GPTWithUnused), _model(cls=_GPTWithUnused)
    for m in (whole, split):
        m.transformer.wpe.weight.requires_grad = False
    dp = DataParallel(split, micro_batches=4)
    for seed in (5, 6):                                 # accumulate over two batches
        x, y = _batch(seed)
        whole(x, y)[1].backward()
        dp.forward_backward(x, y)
    for (name, p), q in zip(whole.named_parameters(), split.parameters()):
        if name in ("unused", "transformer.wpe.weight"):
            assert p.grad is None and q.grad is None, name
        else:
            np.testing.assert_allclose(q.grad, p.grad, rtol=1e-11, atol=1e-13, err_msg=name)


def _reached_on_rank_1_only(comm):
    """A parameter only rank 1's loss reaches: rank 0 gets the average with its zeros."""
    model = _model(seed=7, cls=_GPTWithUnused)

    def loss_fn(m, x, y):
        loss = m(x, y)[1]
        return loss + (m.unused * m.unused).sum() if comm.rank == 1 else loss

    model.unused.data[...] = [1.0, 2.0, 3.0]
    dp = DataParallel(model, comm, loss_fn=loss_fn)
    dp.forward_backward(*_batch(8))
    return comm.gather_object(model.unused.grad.copy())


def test_a_parameter_reached_on_one_rank_gets_the_average():
    g0, g1 = launch(_reached_on_rank_1_only, 2, timeout=60)
    np.testing.assert_allclose(g0, [1.0, 2.0, 3.0])     # (0 + 2 w) / 2
    np.testing.assert_array_equal(g0, g1)


def test_dropout_streams_are_saved_and_restored():
    cfg = GPTConfig(**{**CFG.__dict__, "dropout": 0.3})
    model = _model(seed=0, cfg=cfg, dtype=np.float32)
    dp = DataParallel(model, micro_batches=2, seed=1)
    x, y = _batch(3, cfg=cfg)
    process = tl.backend.generator_states()
    states = dp.rng_states()
    assert len(states) == 1 and states[0] != process.get("cpu")
    first = dp.forward_backward(x, y)
    assert dp.forward_backward(x, y) != first               # fresh masks each step
    tl.backend.set_generator_states(process)
    dp.set_rng_states(states)
    assert dp.forward_backward(x, y) == first               # the same masks again


def test_bad_batches_and_arguments_are_named():
    dp = DataParallel(_model(), micro_batches=2)
    x, y = _batch(0, rows=3)
    with pytest.raises(ValueError, match=r"forward_backward: got arrays of shapes \(3, 8\), "
                                         r"\(3, 8\); expected .* divisible by the 2 "
                                         r"micro-batches"):
        dp.forward_backward(x, y)
    with pytest.raises(ValueError, match="no arrays given"):
        dp.loss()
    with pytest.raises(ValueError, match="micro_batches must be a multiple of the 1 ranks, "
                                         "got 0"):
        DataParallel(_model(), micro_batches=0)


def _three_micro_batches_on_two_ranks(comm):
    try:
        DataParallel(_model(), comm, micro_batches=3)
    except ValueError as e:
        return str(e)


def test_micro_batches_must_split_over_the_ranks():
    msg = launch(_three_micro_batches_on_two_ranks, 2, timeout=60)
    assert msg == "DataParallel: micro_batches must be a multiple of the 2 ranks, got 3"

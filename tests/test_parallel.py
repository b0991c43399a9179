"""tinyllm.parallel.DataParallel: the batch split over processes gives the whole batch's loss and
gradient (float64, against one process and against central differences), deterministically,
with the workers always reading rank 0's current weights; its errors name what went wrong."""
import functools
import os

import numpy as np
import pytest

import tinyllm as tl
from tinyllm.models import GPT, GPTConfig
from tinyllm.nn import Parameter
from tinyllm.optim import SGD, AdamW
from tinyllm.parallel import DataParallel, auto_workers, available_cores

from tests.conftest import TEST_BACKEND

CFG = GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
                bias=True)
pytestmark = pytest.mark.skipif(TEST_BACKEND != "numpy", reason="the workers share host memory: "
                                "NumPy backend only")


def _batch(seed, rows=4, cfg=CFG):
    idx = np.random.default_rng(seed).integers(0, cfg.vocab_size, (rows, cfg.block_size + 1))
    return idx[:, :-1], idx[:, 1:]


def _grads(model):
    return {name: p.grad.copy() for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def pair():
    """A float64 GPT in one process and its copy split over 2 processes (one spawn per module:
    starting a worker costs an interpreter and tinyllm's imports)."""
    tl.set_default_dtype(np.float64)
    try:
        tl.manual_seed(3)
        single = GPT(CFG)
        split = GPT(CFG)
        split.load_state_dict(single.state_dict())
        dp = DataParallel(split, build=functools.partial(GPT, CFG), workers=2, seed=5)
    finally:
        tl.set_default_dtype(np.float32)
    yield single, split, dp
    dp.close()


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


def test_loss_and_gradient_equal_one_process(pair):
    single, split, dp = pair
    x, y = _batch(0)
    single.zero_grad()
    split.zero_grad()
    _, loss = single(x, y)
    loss.backward()
    value = dp.forward_backward(x, y)
    assert value == pytest.approx(loss.item(), rel=1e-14)
    want, got = _grads(single), _grads(split)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-11, atol=1e-13, err_msg=name)
    # and the eval path
    single.eval()
    split.eval()
    with tl.no_grad():
        want_eval = single(x, y)[1].item()
    assert dp.loss(x, y) == pytest.approx(want_eval, rel=1e-14)
    single.train()
    split.train()


def test_gradient_against_central_differences(pair):
    """d/dt L(w + t v) at t=0, by central differences of the split loss, against <grad, v>."""
    _, split, dp = pair
    x, y = _batch(1)
    split.zero_grad()
    dp.forward_backward(x, y)
    params = list(split.parameters())
    rng = np.random.default_rng(0)
    direction = [rng.standard_normal(p.data.shape) for p in params]
    analytic = sum(float(np.sum(p.grad * v)) for p, v in zip(params, direction))
    base = [p.data.copy() for p in params]
    eps, f = 1e-6, []
    for sign in (1, -1):
        for p, b, v in zip(params, base, direction):
            p.data[...] = b + sign * eps * v            # in place: the shared block itself
        f.append(dp.loss(x, y))
    for p, b in zip(params, base):
        p.data[...] = b
    numeric = (f[0] - f[1]) / (2 * eps)
    assert numeric == pytest.approx(analytic, rel=1e-7)


def test_training_follows_one_process_and_workers_see_each_update(pair):
    """Three AdamW steps and one SGD step, where SGD *replaces* nothing but a hand-made
    ``p.data = ...`` does: the workers must read every new weight."""
    single, split, dp = pair
    split.load_state_dict(single.state_dict())
    opts = [AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for m in (single, split)]
    for step in range(3):
        x, y = _batch(10 + step)
        for opt in opts:
            opt.zero_grad()
        _, loss = single(x, y)
        loss.backward()
        value = dp.forward_backward(x, y)
        assert value == pytest.approx(loss.item(), rel=1e-12)
        for opt in opts:
            opt.step()
    for m in (single, split):                           # not in place: a new array per weight
        for p in m.parameters():
            p.data = p.data * 0.5
    x, y = _batch(20)
    with tl.no_grad():
        single.eval()
        split.eval()
        want = single(x, y)[1].item()
        assert dp.loss(x, y) == pytest.approx(want, rel=1e-12)
        single.train()
        split.train()
    sgd = SGD(split.parameters(), lr=0.1)
    sgd.zero_grad()
    dp.forward_backward(x, y)
    sgd.step()
    for p, view in zip(split.parameters(), dp._pviews):                 # still the shared block
        assert p.data is view
    single.load_state_dict(split.state_dict())
    x, y = _batch(21)
    single.eval()
    split.eval()
    with tl.no_grad():
        want = single(x, y)[1].item()
    assert dp.loss(x, y) == pytest.approx(want, rel=1e-12)    # the workers read SGD's update
    single.train()
    split.train()


def test_same_inputs_give_the_same_bits(pair):
    _, split, dp = pair
    x, y = _batch(2)
    runs = []
    for _ in range(2):
        split.zero_grad()
        value = dp.forward_backward(x, y)
        runs.append((value, _grads(split)))
    assert runs[0][0] == runs[1][0]
    for name, g in runs[0][1].items():
        assert np.array_equal(g, runs[1][1][name]), name


def test_dropout_streams_are_saved_and_restored():
    tl.manual_seed(0)
    cfg = GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=16, dropout=0.3)
    model = GPT(cfg)
    with DataParallel(model, build=functools.partial(GPT, cfg), workers=2, seed=1) as dp:
        x, y = _batch(3, cfg=cfg)
        rank0 = tl.backend.generator_states()
        states = dp.rng_states()
        assert len(states) == 1 and states[0] != rank0.get("cpu")
        first = dp.forward_backward(x, y)
        second = dp.forward_backward(x, y)
        assert first != second                              # fresh masks each step
        tl.backend.set_generator_states(rank0)
        dp.set_rng_states(states)
        assert dp.forward_backward(x, y) == first           # the same masks again
        with pytest.raises(ValueError, match="got 2 states for 1 workers"):
            dp.set_rng_states(states * 2)


def test_bad_batches_and_arguments_are_named(pair):
    _, _, dp = pair
    x, y = _batch(0, rows=3)
    with pytest.raises(ValueError, match=r"forward_backward: got arrays of shapes \(3, 8\), "
                                         r"\(3, 8\); expected .* divisible by workers=2"):
        dp.forward_backward(x, y)
    with pytest.raises(ValueError, match="workers must be an int >= 1, got 0"):
        DataParallel(GPT(CFG), workers=0)
    with pytest.raises(ValueError, match="needs build="):
        DataParallel(GPT(CFG), workers=2)


def test_a_worker_error_reaches_rank_0_with_its_traceback(pair):
    _, _, dp = pair
    x, y = _batch(0)
    x = x.copy()
    x[3, 0] = CFG.vocab_size + 4                        # only in worker 1's rows
    with pytest.raises(RuntimeError,
                       match=r"worker 1 failed:(.|\n)*embedding: index 15 is out of range"):
        dp.forward_backward(x, y)
    x, y = _batch(0)                                     # the worker lives on
    assert np.isfinite(dp.loss(x, y))


def test_a_replica_with_other_parameters_is_refused():
    model = GPT(CFG)
    other = GPTConfig(**{**CFG.__dict__, "n_embd": 8})
    with pytest.raises(RuntimeError, match="parameters differ from rank 0's"):
        with DataParallel(model, build=functools.partial(GPT, other), workers=2) as dp:
            dp.loss(*_batch(0))


class _GPTWithUnused(GPT):
    """A GPT with one parameter the loss never reaches."""

    def __init__(self, config):
        super().__init__(config)
        self.unused = Parameter(np.zeros(3))


def test_frozen_and_unreached_parameters_three_processes_and_accumulation():
    """W = 3 (more processes than this machine may have cores), a parameter frozen in rank 0
    after the workers were built, one no loss reaches, and two backwards without zero_grad:
    the gradients are one process's, and the frozen and unreached ones stay None."""
    tl.set_default_dtype(np.float64)
    try:
        tl.manual_seed(4)
        single, split = _GPTWithUnused(CFG), _GPTWithUnused(CFG)
        split.load_state_dict(single.state_dict())
        dp = DataParallel(split, build=functools.partial(_GPTWithUnused, CFG), workers=3)
    finally:
        tl.set_default_dtype(np.float32)
    with dp:
        for m in (single, split):
            m.transformer.wpe.weight.requires_grad = False
        for seed in (5, 6):                                 # accumulate over two batches
            x, y = _batch(seed, rows=6)
            single(x, y)[1].backward()
            dp.forward_backward(x, y)
        for (name, p), q in zip(single.named_parameters(), split.parameters()):
            if name in ("unused", "transformer.wpe.weight"):
                assert p.grad is None and q.grad is None, name
            else:
                np.testing.assert_allclose(q.grad, p.grad, rtol=1e-11, atol=1e-13,
                                           err_msg=name)


def test_close_is_idempotent_and_gives_the_blas_threads_back():
    from threadpoolctl import threadpool_info
    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    model = GPT(CFG)
    dp = DataParallel(model, build=functools.partial(GPT, CFG), workers=2, blas_threads=1)
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == \
        [1] * len(before)
    procs = list(dp._procs)
    dp.close()
    dp.close()
    assert not any(p.is_alive() for p in procs)
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before
    with pytest.raises(RuntimeError, match="used after close"):
        dp.loss(*_batch(0))


def test_a_replaced_or_reshaped_parameter_is_refused(pair):
    _, split, dp = pair
    p = split.transformer.wte.weight
    keep = p.data
    p.data = np.zeros((3, 3))
    try:
        with pytest.raises(RuntimeError, match=r"parameter 'transformer.wte.weight' is now "
                                               r"ndarray \(3, 3\) float64, expected a NumPy "
                                               r"array of shape \(11, 16\)"):
            dp.loss(*_batch(0))
    finally:
        p.data = keep
    ln = split.transformer.h[0].ln_1
    table = dict(ln._parameters)                        # (reassigning would reorder them)
    ln.weight = Parameter(ln.weight.data.copy())
    try:
        with pytest.raises(RuntimeError, match="parameters changed after DataParallel"):
            dp.loss(*_batch(0))
    finally:
        ln._parameters.clear()
        ln._parameters.update(table)
    assert np.isfinite(dp.loss(*_batch(0)))


def test_in_exchange_says_whether_a_call_was_cut_short(pair, monkeypatch):
    """A KeyboardInterrupt between a call's first message and its last reply leaves
    ``in_exchange`` set (a pipe may be mid-message: ``tinyllm train`` writes no checkpoint
    then); the next call reads the replies left behind first, and clears it."""
    _, _, dp = pair
    x, y = _batch(1)
    value = dp.loss(x, y)
    assert not dp.in_exchange

    def cut_short(self):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(DataParallel, "_gather", cut_short)
        dp.loss(x, y)
    assert dp.in_exchange
    assert dp.loss(x, y) == value and not dp.in_exchange
    assert len(dp.rng_states()) == 1 and not dp.in_exchange

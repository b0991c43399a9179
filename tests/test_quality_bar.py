"""benchmarks/quality_bar.py: both engines train on the real corpus (a 20-iteration smoke run),
and the nanoGPT twin's learning-rate schedule is tinyllm's."""
import math

import numpy as np
import pytest

from tests.conftest import load_script
from tinyllm.optim.lr_scheduler import cosine_with_warmup_lr

ITERS, EVAL_ITERS = 20, 4
LN_VOCAB = math.log(65)                  # the loss of a uniform guess over 65 characters


@pytest.fixture(scope="module")
def qb():
    return load_script("benchmarks/quality_bar.py")


@pytest.fixture(scope="module")
def corpus():
    from tinyllm.data.corpora import corpus_path
    try:
        return str(corpus_path("tinyshakespeare", download=False))
    except FileNotFoundError as e:
        pytest.skip(f"tinyshakespeare not found (set TINYLLM_DATA): {e}")


def _tinyllm_lr(it, cfg):
    return cosine_with_warmup_lr(it, cfg["learning_rate"], cfg["warmup_iters"],
                                 cfg["lr_decay_iters"], cfg["min_lr"])


def test_run_config_is_the_preset_and_scales(qb):
    full = qb.run_config()
    assert full == qb.PRESET
    assert (full["max_iters"], full["eval_interval"], full["eval_iters"]) == (2000, 250, 20)
    small = qb.run_config(ITERS, EVAL_ITERS)
    assert (small["max_iters"], small["lr_decay_iters"], small["warmup_iters"],
            small["eval_interval"], small["eval_iters"]) == (20, 20, 1, 2, 4)


@pytest.mark.parametrize("max_iters", [2000, ITERS])
def test_lr_schedule_matches_tinyllm(qb, max_iters):
    cfg = qb.run_config(max_iters)
    its = sorted({0, 1, 2, cfg["warmup_iters"] // 2, cfg["warmup_iters"] - 1,
                  cfg["warmup_iters"], cfg["warmup_iters"] + 1, max_iters // 2,
                  max_iters - 1, max_iters, max_iters + 1} - {-1})
    for it in its:
        assert qb.get_lr(it, cfg) == pytest.approx(_tinyllm_lr(it, cfg), rel=1e-12, abs=0), it
    # nanoGPT's current warmup differs below warmup_iters only
    W = cfg["warmup_iters"]
    assert qb.get_lr(0, cfg, "current") == pytest.approx(cfg["learning_rate"] / (W + 1))
    for it in its:
        if it >= W:
            assert qb.get_lr(it, cfg, "current") == qb.get_lr(it, cfg), it
    assert qb.get_lr(max_iters, cfg) == pytest.approx(cfg["min_lr"])


def _check_losses(res, cfg):
    evals = res["evals"]
    assert [e["step"] for e in evals] == list(range(0, cfg["max_iters"] + 1,
                                                    cfg["eval_interval"]))
    losses = [v for e in evals for v in (e["train"], e["val"])]
    assert all(math.isfinite(v) for v in losses)
    first, last = evals[0], evals[-1]
    assert abs(first["val"] - LN_VOCAB) < 0.15                  # untrained: ~ln 65 = 4.17
    assert last["val"] < first["val"] - 0.3 and last["train"] < first["train"] - 0.3
    assert (res["val"], res["train"]) == (last["val"], last["train"])
    assert 0 < res["wall_s"] < res["total_s"] and res["startup_s"] > 0
    assert res["tok_s"] == pytest.approx(cfg["max_iters"] * 12 * 64 / res["wall_s"])


def test_score_model_reads_consecutive_windows_and_redraws(qb):
    """With loss_of = the mean of the targets, the full-split score is the mean of val[1:n*T+1]
    (each position once, rows weighted by count across SCORE_ROWS chunks), and each redraw the
    mean over eval_iters * batch_size random windows."""
    cfg = dict(block_size=8, batch_size=3, eval_iters=5)
    val = np.arange(1000, dtype=np.int64) % 97
    seen = []

    def loss_of(x, y):
        assert x.shape == y.shape and x.shape[1] == 8 and len(x) <= qb.SCORE_ROWS
        np.testing.assert_array_equal(y[:, :-1], x[:, 1:])        # y = x shifted by one
        seen.append(len(x))
        return float(y.mean())

    out = qb.score_model(loss_of, val, cfg, redraws=4)
    n = (len(val) - 1) // 8
    assert out["predictions"] == n * 8
    assert out["full_val"] == pytest.approx(val[1:n * 8 + 1].mean(), rel=1e-12)
    assert len(out["estimates"]) == 4 and len(set(out["estimates"])) == 4
    assert seen[:3] == [qb.SCORE_ROWS, qb.SCORE_ROWS, n - 2 * qb.SCORE_ROWS]
    assert seen[3:] == [15] * 4                       # 5 batches of 3 windows, stacked
    assert all(0 < e < 96 for e in out["estimates"])


def _check_score(qb, res):
    sc = res["score"]
    assert sc["predictions"] == 111_488                 # tiny Shakespeare's validation split
    assert len(sc["estimates"]) == qb.REDRAWS
    # the log's last estimate and the whole split score the same model
    assert abs(sc["full_val"] - res["val"]) < 0.15
    assert abs(np.mean(sc["estimates"]) - sc["full_val"]) < 0.1


def test_tinyllm_cli_smoke(qb, corpus):
    cfg = qb.run_config(ITERS, EVAL_ITERS)
    res = qb.run_engine("tinyllm", cfg, corpus, seed=7, score=True)
    _check_losses(res, cfg)
    _check_score(qb, res)
    assert res["seed"] == 7 and "--seed" in res["argv"]
    assert res["steps"] == ITERS                           # tinyllm: steps 0..max_iters-1
    assert res["config_mismatch"] == {}
    assert res["argv"][:3] == ["tinyllm", "train", "--preset"]


def test_torch_twin_smoke(qb, corpus):
    pytest.importorskip("torch")
    cfg = qb.run_config(ITERS, EVAL_ITERS)
    res = qb.run_engine("torch", cfg, corpus, seed=7, score=True)
    _check_losses(res, cfg)
    _check_score(qb, res)
    assert res["seed"] == 7
    assert res["steps"] == ITERS + 1                       # nanoGPT: iterations 0..max_iters
    assert res["final_step"] == ITERS
    assert res["bias"] is False and res["threads"] >= 1
    # the learning rate the loop actually set, iteration by iteration, is tinyllm's
    assert len(res["lrs"]) == ITERS + 1
    for it, lr in enumerate(res["lrs"]):
        assert lr == pytest.approx(_tinyllm_lr(it, cfg), rel=1e-12, abs=0), it
    assert len(res["train_losses"]) == ITERS + 1           # log_interval 1: every iteration


def test_torch_twin_scores_the_model_after_max_iters_between_evaluations(qb, corpus):
    """At 30 iterations the scaled eval_interval (4) does not divide max_iters: the last
    evaluation is at 28, and the scored model is still the one after 30 steps."""
    pytest.importorskip("torch")
    cfg = qb.run_config(30, 2)
    assert cfg["max_iters"] % cfg["eval_interval"]
    res = qb.run_engine("torch", cfg, corpus, score=True)
    assert res["final_step"] == 28 and res["steps"] == 31
    _check_score(qb, res)

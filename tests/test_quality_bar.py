"""benchmarks/quality_bar.py: both engines train on the real corpus (a 20-iteration smoke run),
and the nanoGPT twin's learning-rate schedule is tinyllm's. The nanogpt engine (nanoGPT's own
train.py): its seed patch, argument list, log parsing and work directory without nanoGPT, and a
smoke run when NANOGPT_DIR names a checkout of karpathy/nanoGPT."""
import math
import os
import runpy

import numpy as np
import pytest

from tests.conftest import load_script
from tinyllm.optim.lr_scheduler import cosine_with_warmup_lr

ITERS, EVAL_ITERS = 20, 4
LN_VOCAB = math.log(65)                  # the loss of a uniform guess over 65 characters


@pytest.fixture(scope="module")
def qb():
    return load_script("benchmarks/quality_bar.py")


@pytest.fixture
def corpus(shared_data):
    """tinyshakespeare.txt: $TINYLLM_DATA or ../shared/data (conftest's shared_data)."""
    return str(shared_data / "tinyshakespeare.txt")


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


# ----------------------------------------------------------------------------------------------
# nanogpt: nanoGPT's own train.py

TRAIN_PY = """torch.manual_seed(1234)
if master_process:
    os.makedirs(out_dir, exist_ok=True)
torch.manual_seed(1337 + seed_offset)
torch.backends.cuda.matmul.allow_tf32 = True # allow tf32 on matmul
"""


def test_patch_nanogpt_seed_changes_exactly_that_line(qb):
    out = qb.patch_nanogpt_seed(TRAIN_PY, 5)
    before, after = TRAIN_PY.splitlines(), out.splitlines()
    assert len(before) == len(after)
    assert [i for i, (a, b) in enumerate(zip(before, after)) if a != b] == [3]
    assert after[3] == "torch.manual_seed(5 + seed_offset)"
    assert qb.patch_nanogpt_seed(TRAIN_PY, 1337) == TRAIN_PY            # the default: no-op
    indented = TRAIN_PY.replace("\ntorch.manual_seed(1337", "\n    torch.manual_seed(1337")
    assert "\n    torch.manual_seed(42 + seed_offset)\n" in qb.patch_nanogpt_seed(indented, 42)


@pytest.mark.parametrize("source, found", [
    (TRAIN_PY.replace("1337 + seed_offset", "1337"), 0),
    ("", 0),
    (TRAIN_PY + "torch.manual_seed(1337 + seed_offset)\n", 2),
])
def test_patch_nanogpt_seed_fails_unless_the_line_is_there_once(qb, source, found):
    with pytest.raises(ValueError, match=f"found it {found} times"):
        qb.patch_nanogpt_seed(source, 1)


def test_patch_nanogpt_seed_fails_on_a_line_with_more_on_it(qb):
    source = TRAIN_PY.replace("torch.manual_seed(1337 + seed_offset)",
                              "# torch.manual_seed(1337 + seed_offset)")
    with pytest.raises(ValueError, match="alone"):
        qb.patch_nanogpt_seed(source, 1)


def test_nanogpt_args_are_the_readme_cpu_command_and_scale(qb):
    readme = ("config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 "
              "--log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 "
              "--n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0")
    assert qb.nanogpt_args(qb.run_config()) == readme.split()
    small = qb.nanogpt_args(qb.run_config(ITERS, EVAL_ITERS))
    assert small == (readme.replace("eval_iters=20", "eval_iters=4")
                     .replace("max_iters=2000", "max_iters=20")
                     .replace("decay_iters=2000", "decay_iters=20").split()
                     + ["--warmup_iters=1", "--eval_interval=2"])
    with pytest.raises(ValueError, match="README"):
        qb.nanogpt_args(dict(qb.run_config(), n_layer=6))


def _log(lines, t0=100.0):
    """(arrival time, line) pairs, one second apart."""
    return [(t0 + i, line + "\n") for i, line in enumerate(lines)]


NANOGPT_LOG = [
    "Overriding config with config/train_shakespeare_char.py:",
    "eval_iters = 200",
    "Overriding: max_iters = 4",
    "tokens per iteration will be: 768",
    "number of parameters: 0.80M",
    "/x/train.py:196: FutureWarning: `torch.cuda.amp.GradScaler(args...)` is deprecated.",
    "num decayed parameter tensors: 18, with 802,944 parameters",
    "using fused AdamW: False",                                            # t = 107
    "step 0: train loss 4.1650, val loss 4.1697",                         # 108
    "iter 0: loss 4.1828, time 4932.37ms, mfu -100.00%",
    "iter 1: loss 3.8314, time 1808.49ms, mfu -100.00%",                  # 110
    "step 2: train loss 3.6830, val loss 3.6820",
    "saving checkpoint to out-shakespeare-char",
    "iter 2: loss 3.6647, time 1120.73ms, mfu -100.00%",
    "iter 3: loss 3.5677, time 468.66ms, mfu -100.00%",                   # 114
    "step 4: train loss 3.5747, val loss 3.6999",                         # 115: no save
    "iter 4: loss 3.5550, time 1112.03ms, mfu 0.00%",                     # 116
]


def test_parse_nanogpt_log(qb):
    res = qb.parse_nanogpt_log(_log(NANOGPT_LOG))
    assert res["evals"] == [{"step": 0, "train": 4.1650, "val": 4.1697},
                            {"step": 2, "train": 3.6830, "val": 3.6820},
                            {"step": 4, "train": 3.5747, "val": 3.6999}]
    assert res["saves"] == [{"step": 2, "out_dir": "out-shakespeare-char"}]
    assert res["train_losses"] == [4.1828, 3.8314, 3.6647, 3.5677, 3.5550]
    assert res["iter_ms"][0] == 4932.37 and res["steps"] == 5
    assert (res["t_imported"], res["t_loop_start"], res["t_eval_end"],
            res["t_loop_end"]) == (100, 107, 115, 116)
    assert res["eval_s"] == 3.0           # each "step" line 1 s after the line before it


def test_parse_nanogpt_log_fails_without_its_loop(qb):
    with pytest.raises(ValueError, match="using fused AdamW"):
        qb.parse_nanogpt_log(_log(NANOGPT_LOG[:7]))
    with pytest.raises(ValueError, match="using fused AdamW"):
        qb.parse_nanogpt_log(_log(NANOGPT_LOG[:8]))


NANOGPT_COPIED = ["train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py",
                  "data/shakespeare_char/prepare.py"]


def _fake_checkout(root):
    """A directory shaped like a nanoGPT checkout, train.py = TRAIN_PY."""
    for rel in NANOGPT_COPIED:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(TRAIN_PY if rel == "train.py" else f"# {rel}\n")
    (root / "config" / "eval_gpt2.py").write_text("# another config\n")
    return root


def test_make_nanogpt_workdir(qb, tmp_path):
    src = _fake_checkout(tmp_path / "nanoGPT")
    assert sorted(qb.NANOGPT_FILES) == sorted(NANOGPT_COPIED)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("First Citizen:\n")
    dst = tmp_path / "work"
    line = qb.make_nanogpt_workdir(src, dst, corpus, 3)
    assert line == "torch.manual_seed(3 + seed_offset)"
    assert (dst / "train.py").read_text() == qb.patch_nanogpt_seed(TRAIN_PY, 3)
    for rel in NANOGPT_COPIED[1:]:
        assert (dst / rel).read_text() == (src / rel).read_text(), rel
    assert (dst / "config" / "eval_gpt2.py").is_file()                   # config/: all of it
    data = dst / "data" / "shakespeare_char"
    assert (data / "input.txt").read_text() == "First Citizen:\n"
    stub = runpy.run_path(str(data / "requests.py"))        # prepare.py's requests: unused
    with pytest.raises(RuntimeError, match="input.txt"):
        stub["get"]("https://example.invalid")
    assert qb.nanogpt_changed_files(src) == NANOGPT_COPIED  # not nanoGPT at 3adf61e
    assert qb.nanogpt_dir(str(src)) == src.resolve()


def test_nanogpt_dir_needs_a_checkout(qb, tmp_path, monkeypatch):
    monkeypatch.delenv("NANOGPT_DIR", raising=False)
    with pytest.raises(SystemExit, match="--nanogpt-dir"):
        qb.nanogpt_dir(None)
    (tmp_path / "train.py").write_text(TRAIN_PY)
    with pytest.raises(SystemExit, match="not a nanoGPT checkout: no model.py"):
        qb.nanogpt_dir(str(tmp_path))
    monkeypatch.setenv("NANOGPT_DIR", str(_fake_checkout(tmp_path / "n")))
    assert qb.nanogpt_dir(None) == (tmp_path / "n").resolve()


def test_parse_engines(qb, monkeypatch):
    monkeypatch.delenv("NANOGPT_DIR", raising=False)
    assert qb._parse([]).engines == ("tinyllm", "torch")
    assert qb._parse(["--skip-torch"]).engines == ("tinyllm",)
    args = qb._parse(["--engines", "tinyllm,nanogpt", "--nanogpt-dir", "/n",
                      "--seeds", "1337,1,2,3,4,5", "--score"])
    assert args.engines == ("tinyllm", "nanogpt") and args.nanogpt_dir == "/n"
    assert args.seeds == [1337, 1, 2, 3, 4, 5] and args.score
    monkeypatch.setenv("NANOGPT_DIR", "/from/env")
    assert qb._parse(["--engines", "nanogpt"]).nanogpt_dir == "/from/env"
    for bad in ("tinyllm,nanoGPT", "torch,torch"):
        with pytest.raises(SystemExit):
            qb._parse(["--engines", bad])


def test_paired_difference(qb):
    mean, se, n = qb.paired_difference([(1.0, 0.5), (2.0, 1.0), (3.0, 2.5)])
    # differences 0.5, 1.0, 0.5: mean 2/3, sample SD sqrt(1/12), SE sqrt(1/12) / sqrt(3) = 1/6
    assert n == 3
    assert mean == pytest.approx(2 / 3, rel=1e-12) and se == pytest.approx(1 / 6, rel=1e-12)
    mean, se, n = qb.paired_difference([(2.0, 1.5)])
    assert (mean, n) == (0.5, 1) and math.isnan(se)


def test_compare_pairs_rounds(qb):
    def run(engine, r, full, wall):
        return {"engine": engine, "round": r, "wall_s": wall, "score": {"full_val": full}}
    results = [run("tinyllm", 1, 1.90, 60.0), run("nanogpt", 1, 1.88, 80.0),
               run("nanogpt", 2, 1.91, 100.0), run("tinyllm", 2, 1.92, 75.0),
               run("nanogpt", 3, 1.70, 10.0)]                   # round 3: no pair, left out
    c = qb.compare(results, "nanogpt")
    assert c["rounds"] == 2
    assert c["full_diff"] == pytest.approx(0.015, rel=1e-9)        # (0.02 + 0.01) / 2
    assert c["full_diff_se"] == pytest.approx(0.005, rel=1e-9)     # SD 0.00707 / sqrt(2)
    assert c["wall"] == {"tinyllm": 67.5, "nanogpt": 90.0}
    assert c["wall_ratio"] == pytest.approx(0.75) and c["wall_ratios"] == [0.75, 0.75]
    assert qb.compare(results, "torch")["rounds"] == 0


@pytest.fixture(scope="module")
def nanogpt_checkout():
    path = os.environ.get("NANOGPT_DIR")
    if not path:
        pytest.skip("NANOGPT_DIR is not set: point it at a checkout of karpathy/nanoGPT "
                    "(3adf61e) to run nanoGPT's own train.py")
    if not os.path.isfile(os.path.join(path, "train.py")):
        pytest.skip(f"NANOGPT_DIR={path} has no train.py")
    return path


def test_nanogpt_smoke(qb, corpus, nanogpt_checkout):
    """nanoGPT's own train.py for 20 iterations, seeded 7, its ckpt.pt scored; its evaluation at
    step 0 (seeded init, one training batch drawn, then the eval batches) is the twin's."""
    pytest.importorskip("torch")
    cfg = qb.run_config(ITERS, EVAL_ITERS)
    res = qb.run_engine("nanogpt", cfg, corpus, seed=7, score=True, nanogpt=nanogpt_checkout)
    _check_losses(res, cfg)
    assert res["seed"] == 7 and res["seed_line"] == "torch.manual_seed(7 + seed_offset)"
    assert res["argv"][:2] == ["python", "train.py"] and "--max_iters=20" in res["argv"]
    assert res["steps"] == ITERS + 1 and len(res["train_losses"]) == ITERS + 1
    assert res["final_step"] == ITERS and res["config_mismatch"] == {}
    assert res["bias"] is False and res["threads"] >= 1
    assert 0 < res["eval_s"] < res["wall_s"] and res["prepare_s"] > 0
    # the scored model is ckpt.pt: the last save, at the best val estimate after step 0
    evals = {e["step"]: e["val"] for e in res["evals"]}
    assert res["saved_steps"] and res["scored_step"] == res["saved_steps"][-1]
    assert evals[res["scored_step"]] == min(v for s, v in evals.items() if s > 0)
    assert res["best_val"] == pytest.approx(evals[res["scored_step"]], abs=1e-4)
    sc = res["score"]
    assert sc["predictions"] == 111_488 and len(sc["estimates"]) == qb.REDRAWS
    assert abs(sc["full_val"] - evals[res["scored_step"]]) < 0.15
    assert abs(np.mean(sc["estimates"]) - sc["full_val"]) < 0.1
    twin = qb.run_engine("torch", qb.run_config(1, EVAL_ITERS), corpus, seed=7)
    for key in ("train", "val"):
        assert res["evals"][0][key] == pytest.approx(twin["evals"][0][key], abs=2e-4), key

"""The tinyllm command: train, resume (bitwise), Ctrl-C, non-finite stop, sample, eval."""
import argparse
import dataclasses
import inspect
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import cli, decoding, inference, loop, parallel, trainer
from tinyllm.config import PRESETS
from tinyllm.parallel import available_cores


@pytest.fixture(autouse=True)
def data(shared_data):
    return shared_data


def _train(out, *extra):
    return cli.main(["train", "--preset", "tiny", "--out-dir", str(out), "--quiet", *extra])


def test_train_writes_a_run_and_learns(tmp_path):
    log = _train(tmp_path / "run")
    run = tmp_path / "run"
    assert (run / "checkpoint" / "meta.json").is_file() and (run / "tokenizer.json").is_file()
    saved = json.loads((run / "log.json").read_text())
    assert len(saved["train_loss"]) == 20 and [e["step"] for e in saved["eval"]] == [0, 10, 20]
    assert saved["eval"][-1]["val"] < saved["eval"][0]["val"] - 0.2       # it learns
    assert log["eval"][0]["val"] == pytest.approx(np.log(65), abs=0.1)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (run / "loss.png").stat().st_size > 1000


def test_the_loop_reads_like_nanogpts_and_one_process_runs_no_data_parallel_code(
        tmp_path, monkeypatch):
    """tinyllm.loop.train_loop is one screen; with --workers 1 the step is model(x, y) and a
    plain loss.backward(), and nothing of DataParallel runs (training, evaluation, checkpoints,
    resume)."""
    source = inspect.getsource(loop.train_loop)
    assert len(source.splitlines()) <= 60
    for step in ("get_batch(", "model(x, y)", "loss.backward()", "clip_grad_norm_(",
                 "opt.step()", "opt.zero_grad()", "estimate_loss(", "run.save("):
        assert step in source, step

    def refuse(*args, **kwargs):
        raise AssertionError("a one-process run called into DataParallel")

    for name, attr in vars(parallel.DataParallel).items():
        if callable(attr) and name != "__del__":
            monkeypatch.setattr(parallel.DataParallel, name, refuse)
    backward, seeds = tl.Tensor.backward, []

    def plain_backward(self, *args, **kwargs):
        seeds.append((args, kwargs))
        return backward(self, *args, **kwargs)

    monkeypatch.setattr(tl.Tensor, "backward", plain_backward)
    _train(tmp_path / "run", "--workers", "1", "--max-iters", "10")
    log = _train(tmp_path / "run", "--resume", "--max-iters", "12")
    assert log["workers"] == 1 and len(log["train_loss"]) == 12
    assert seeds == [((), {})] * 12                     # loss.backward(), once per step


def test_resume_continues_the_same_run_bitwise(tmp_path):
    straight = _train(tmp_path / "a", "--dropout", "0.1")
    _train(tmp_path / "b", "--dropout", "0.1", "--max-iters", "10")      # stops at step 10
    resumed = _train(tmp_path / "b", "--dropout", "0.1", "--resume")
    assert resumed["train_loss"] == straight["train_loss"]
    assert resumed["eval"] == straight["eval"]


def _ctrl_c():
    """What the terminal does on Ctrl-C: SIGINT to this process (the workers ignore it)."""
    os.kill(os.getpid(), signal.SIGINT)


class StraySigint(Exception):
    pass


@pytest.fixture
def sigint_guard():
    """A SIGINT that reaches no handler of the code under test fails the test (instead of
    stopping the whole pytest session as a KeyboardInterrupt); the handler is checked to be
    this one again after the test, i.e. restored by the code."""
    def stray(signum, frame):
        raise StraySigint("SIGINT reached the test's guard: the CLI's handler was not in place")

    previous = signal.signal(signal.SIGINT, stray)
    try:
        yield
        assert signal.getsignal(signal.SIGINT) is stray
    finally:
        signal.signal(signal.SIGINT, previous)


def _after(fn, at_call, times=1):
    """``fn`` wrapped: its ``at_call``-th call (1-based) runs, then Ctrl-C is pressed ``times``
    times."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == at_call:
            for _ in range(times):
                _ctrl_c()
        return out
    return wrapped


def _stopped_at_and_resumes(info, run, step, straight, *flags):
    """The run exited with 130 leaving a checkpoint (and a log) at ``step``, and resuming it
    gives the uninterrupted run's losses and evaluations, bit for bit."""
    assert info.value.code == 130
    assert json.loads((run / "checkpoint" / "meta.json").read_text())["step"] == step
    assert len(json.loads((run / "log.json").read_text())["train_loss"]) >= step
    resumed = _train(run, *flags, "--resume")
    assert resumed["train_loss"] == straight["train_loss"]
    assert resumed["eval"] == straight["eval"]


# where the Ctrl-C lands (the n-th call of a function the loop makes) -> the step it saves at.
# Each point is after some state of the step under way has changed: the batch generator
# (get_batch), the dropout generators and gradients (forward_backward), the weights (AdamW).
CTRL_C_POINTS = {
    "after the batch draw": ("get_batch", 12, 8),      # 4 calls by the evaluation at 0
    "after forward and backward": ("forward_backward", 8, 8),
    "inside the optimizer step": ("adam", 8, 8),
    "right after an evaluation": ("estimate_loss", 2, 10),   # evaluations at 0, 10, 20
}


@pytest.mark.parametrize("where", sorted(CTRL_C_POINTS))
def test_ctrl_c_finishes_the_step_and_resume_is_the_uninterrupted_run(
        tmp_path, monkeypatch, sigint_guard, where):
    flags = ("--dropout", "0.1", "--workers", "2")          # every generator in play
    straight = _train(tmp_path / "a", *flags)
    name, at_call, saved_at = CTRL_C_POINTS[where]
    with monkeypatch.context() as mp:       # only these patches end with the block
        if name == "forward_backward":
            mp.setattr(trainer.DataParallel, name,
                       _after(trainer.DataParallel.forward_backward, at_call))
        elif name == "adam":     # between two parameters' updates of the at_call-th step
            import tinyllm.optim.adam as adam_module
            real_step, real_xp = adam_module.Adam.step, adam_module.get_array_module
            seen = {"step": 0, "param": 0}

            def step(self, *args, **kwargs):
                seen["step"], seen["param"] = seen["step"] + 1, 0
                return real_step(self, *args, **kwargs)

            def get_array_module(array):             # called once per parameter it updates
                seen["param"] += 1
                if seen["step"] == at_call and seen["param"] == 3:
                    _ctrl_c()
                return real_xp(array)
            mp.setattr(adam_module.Adam, "step", step)
            mp.setattr(adam_module, "get_array_module", get_array_module)
        else:
            mp.setattr(loop, name, _after(getattr(loop, name), at_call))
        with pytest.raises(SystemExit) as info:
            _train(tmp_path / "b", *flags)
    _stopped_at_and_resumes(info, tmp_path / "b", saved_at, straight, *flags)


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(
        tmp_path, monkeypatch, capsys, sigint_guard):
    straight = _train(tmp_path / "a")
    with monkeypatch.context() as mp, pytest.raises(SystemExit) as info:
        mp.setattr(loop, "clip_grad_norm_", _after(loop.clip_grad_norm_, 8, times=2))
        cli.main(["train", "--preset", "tiny", "--out-dir", str(tmp_path / "b"),
                  "--checkpoint-interval", "5"])
    out = capsys.readouterr().out
    assert "interrupted in the middle of step 7: no checkpoint written" in out
    assert "(step 5) is kept" in out
    _stopped_at_and_resumes(info, tmp_path / "b", 5, straight)     # not step 7's half state


@pytest.mark.parametrize("workers, saved_at", [("1", 10), ("2", 8)])
def test_keyboard_interrupt_during_an_evaluation(tmp_path, monkeypatch, capsys, workers,
                                                 saved_at):
    """A KeyboardInterrupt the handler did not defer (a second Ctrl-C, one raised by code, or
    one in a thread where signals cannot be caught) in the evaluation at step 10. One process:
    evaluating changes no state, so the run is at a step boundary and is saved there. Two: the
    other rank may be inside a collective with this one (here: waiting in the evaluation's),
    so no step boundary is shared, nothing is written and the periodic checkpoint (step 8)
    stays; the other rank stops too."""
    flags = ("--workers", workers, "--checkpoint-interval", "4")
    straight = _train(tmp_path / "a", *flags)
    real, calls = loop.estimate_loss, {"n": 0}

    def interrupt_second_evaluation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:                             # the evaluation at step 10
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with monkeypatch.context() as mp, pytest.raises(SystemExit) as info:
        mp.setattr(loop, "estimate_loss", interrupt_second_evaluation)
        cli.main(["train", "--preset", "tiny", "--out-dir", str(tmp_path / "b"), *flags])
    if workers == "2":
        assert "interrupted at step 10 with 2 processes: no checkpoint written from there; " \
               "the last checkpoint" in capsys.readouterr().out
    _stopped_at_and_resumes(info, tmp_path / "b", saved_at, straight, *flags)


@pytest.mark.parametrize("when", ["periodic", "stop"])
def test_ctrl_c_during_a_checkpoint_write_waits_for_it(tmp_path, monkeypatch, capsys,
                                                       sigint_guard, when):
    """periodic: two Ctrl-Cs while the step-4 checkpoint is written; the write completes
    (weights, log and every generator of step 4), then the run stops there. stop: a first
    Ctrl-C in step 6, and another while the stop's checkpoint (step 7) is written, which it
    does not cut short. Either way the run resumes exactly."""
    straight = _train(tmp_path / "a", "--checkpoint-interval", "4")
    real, calls = trainer.save_checkpoint, {"n": 0}

    def save_checkpoint(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:                      # the checkpoint at step 4, then the stop's
            _ctrl_c()
            _ctrl_c()
        return real(*args, **kwargs)

    with monkeypatch.context() as mp, pytest.raises(SystemExit) as info:
        if when == "periodic":
            mp.setattr(trainer, "save_checkpoint", save_checkpoint)
        else:
            mp.setattr(loop, "clip_grad_norm_", _after(loop.clip_grad_norm_, 7))
            calls["n"] = -1                      # skip the checkpoint at step 4
            mp.setattr(trainer, "save_checkpoint", save_checkpoint)
        cli.main(["train", "--preset", "tiny", "--out-dir", str(tmp_path / "b"),
                  "--checkpoint-interval", "4"])
    step = 4 if when == "periodic" else 7
    assert f"interrupted: checkpoint at step {step}" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "b" / "log.json").read_text())["train_loss"]) == step
    _stopped_at_and_resumes(info, tmp_path / "b", step, straight, "--checkpoint-interval", "4")


def test_ctrl_c_in_the_last_step_lets_the_run_finish(tmp_path, monkeypatch, sigint_guard):
    with monkeypatch.context() as mp:
        # step 19 of 20
        mp.setattr(loop, "clip_grad_norm_", _after(loop.clip_grad_norm_, 20))
        log = _train(tmp_path / "run")
    assert len(log["train_loss"]) == 20 and log["eval"][-1]["step"] == 20
    assert json.loads((tmp_path / "run" / "checkpoint" / "meta.json").read_text())["step"] == 20


def test_resume_refuses_a_log_older_than_the_checkpoint(tmp_path):
    _train(tmp_path / "run", "--max-iters", "10")
    path = tmp_path / "run" / "log.json"
    log = json.loads(path.read_text())
    log["train_loss"] = log["train_loss"][:6]
    path.write_text(json.dumps(log))
    with pytest.raises(trainer.TrainError,
                       match="log.json has 6 steps, the checkpoint is at step 10"):
        _train(tmp_path / "run", "--resume")


def test_ctrl_c_handler_is_restored_after_training(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    _train(tmp_path / "run", "--max-iters", "2")
    assert signal.getsignal(signal.SIGINT) is before


def test_workers_split_the_batch_and_resume_keeps_their_number(tmp_path):
    one = _train(tmp_path / "one", "--workers", "1")
    two = _train(tmp_path / "two", "--workers", "2")
    assert (one["workers"], two["workers"]) == (1, 2)
    # the same run up to float32 rounding of the gradient sums
    np.testing.assert_allclose(two["train_loss"], one["train_loss"], rtol=1e-4)
    _train(tmp_path / "b", "--workers", "2", "--max-iters", "10")
    resumed = _train(tmp_path / "b", "--resume")          # the saved 2 micro-batches
    assert resumed["micro_batches"] == 2 and resumed["train_loss"] == two["train_loss"]
    assert resumed["workers"] == min(2, available_cores())


def test_resume_with_another_worker_count_goes_on(tmp_path, capsys):
    straight = _train(tmp_path / "a", "--workers", "2")
    _train(tmp_path / "b", "--workers", "2", "--max-iters", "10")
    resumed = cli.main(["train", "--preset", "tiny", "--out-dir", str(tmp_path / "b"),
                        "--resume", "--workers", "1"])
    assert "resuming with 1 processes, the run was saved with 2: the same micro-batches" in \
        capsys.readouterr().out
    # one process accumulates the run's 2 micro-batches: the same sums, the same run
    assert resumed["workers"] == 1 and resumed["micro_batches"] == 2
    assert resumed["train_loss"] == straight["train_loss"]
    assert resumed["eval"] == straight["eval"]


def test_resume_with_another_micro_batch_split_goes_on(tmp_path, capsys):
    """A one-process run resumed over 2 processes must split its batch in 2: the sums run in
    another order, so the run goes on within float32 rounding (and says so)."""
    straight = _train(tmp_path / "a", "--workers", "1")
    _train(tmp_path / "b", "--workers", "1", "--max-iters", "10")
    resumed = cli.main(["train", "--preset", "tiny", "--out-dir", str(tmp_path / "b"),
                        "--resume", "--workers", "2"])
    assert "2 micro-batches instead of 1" in capsys.readouterr().out
    assert resumed["workers"] == 2 and len(resumed["train_loss"]) == 20
    assert resumed["train_loss"][:10] == straight["train_loss"][:10]
    np.testing.assert_allclose(resumed["train_loss"], straight["train_loss"], rtol=1e-4)


def test_two_processes_are_one_process_accumulating_two_micro_batches(tmp_path):
    """--workers 2 sums its 2 micro-batch gradients in rank order, as one process with
    --grad-accum 2 adds them: the same losses and evaluations, bit for bit (dropout too: a
    micro-batch draws from its own stream whichever process runs it)."""
    flags = ("--dropout", "0.1", "--max-iters", "12")
    one = _train(tmp_path / "one", "--workers", "1", "--grad-accum", "2", *flags)
    two = _train(tmp_path / "two", "--workers", "2", *flags)
    whole = _train(tmp_path / "whole", "--workers", "1", *flags)
    assert (one["micro_batches"], two["micro_batches"], whole["micro_batches"]) == (2, 2, 1)
    assert one["train_loss"] == two["train_loss"] and one["eval"] == two["eval"]
    assert one["train_loss"] != whole["train_loss"]       # other dropout masks, other sums
    # step 0's evaluation (no dropout, the same weights): the mean of two half-batch means
    np.testing.assert_allclose(one["eval"][0]["val"], whole["eval"][0]["val"], rtol=1e-6)


@pytest.mark.parametrize("flags, message", [
    (["--workers", "3"], "batch_size 8 does not split evenly over workers 3"),
    (["--workers", "2", "--backend", "cupy"], "workers 2 needs backend 'numpy'"),
])
def test_bad_workers_are_refused(tmp_path, flags, message):
    with pytest.raises(ValueError, match=message):
        _train(tmp_path / "run", *flags)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                  workers):
    """With 2 processes only rank 0's forward is poisoned here: the agreed loss is NaN on
    both, rank 0 reports it, the other stops quietly."""
    real = trainer.GPT.forward
    seen = {"n": 0}

    def poisoned(self, idx, targets=None, cache=None):
        out = real(self, idx, targets, cache)
        if targets is not None and self.training:
            seen["n"] += 1
            if seen["n"] > 5:
                return out[0], out[1] * float("nan")
        return out

    monkeypatch.setattr(trainer.GPT, "forward", poisoned)
    with pytest.raises(trainer.TrainError, match="loss became nan at step 5; stopped"):
        _train(tmp_path / "run", "--checkpoint-interval", "2", "--workers", workers)
    meta = json.loads((tmp_path / "run" / "checkpoint" / "meta.json").read_text())
    assert meta["step"] == 4                                            # the last good one


def test_sample_and_eval(tmp_path, monkeypatch):
    _train(tmp_path / "run")
    steps = []                                 # the compiled decode step (the switch is on)
    real_step = decoding.CompiledDecoder.step
    monkeypatch.setattr(decoding.CompiledDecoder, "step",
                        lambda self, ids, cache: steps.append(1) or real_step(self, ids, cache))
    text = cli.main(["sample", "--out-dir", str(tmp_path / "run"), "--prompt", "ROMEO:",
                     "--num-tokens", "40", "--seed", "3"])
    assert text.startswith("ROMEO:") and len(text) == 46
    jit = tl.kernels.NUMBA_AVAILABLE and not tl.kernels.jit_disabled()
    assert len(steps) == 16 - 6 if jit else not steps      # block_size 16, prompt of 6 tokens
    again = inference.sample(tmp_path / "run", "ROMEO:", 40, seed=3)
    assert again == text                                                 # seeded
    result = cli.main(["eval", "--out-dir", str(tmp_path / "run"), "--batches", "3"])
    assert np.isfinite(result["loss"]) and result["perplexity"] == pytest.approx(
        np.exp(result["loss"]))


def test_llama_trains_resumes_bitwise_samples_and_evaluates(tmp_path):
    """--model llama: the same run directory contract as the GPT (resume continues the same
    run, sample and eval read it back), with grouped-query attention."""
    flags = ("--model", "llama", "--n-kv-head", "1", "--dropout", "0.1")
    straight = _train(tmp_path / "a", *flags)
    assert straight["eval"][-1]["val"] < straight["eval"][0]["val"] - 0.2          # it learns
    _train(tmp_path / "b", *flags, "--max-iters", "10")
    resumed = _train(tmp_path / "b", *flags, "--resume")
    assert resumed["train_loss"] == straight["train_loss"] and resumed["eval"] == straight["eval"]
    cfg, _, model = inference.load_run(tmp_path / "a")
    assert type(model).__name__ == "Llama" and model.config.n_kv_head == 1
    assert model.config.intermediate_size == 88                  # 8/3 * 32 rounded up to 8
    assert "model.layers.0.self_attn.k_proj.weight" in model.state_dict()
    text = inference.sample(tmp_path / "a", "ROMEO:", 20, seed=0)
    assert text.startswith("ROMEO:") and len(text) == 26
    result = cli.main(["eval", "--out-dir", str(tmp_path / "a"), "--batches", "2"])
    assert np.isfinite(result["loss"])
    with pytest.raises(ValueError, match=r"--model gpt \(the run has --model llama\)"):
        _train(tmp_path / "b", "--resume", "--model", "gpt", "--max-iters", "30")


@pytest.mark.parametrize("flags, message", [
    (("--n-head", "4", "--n-kv-head", "3"), "n_head 4 is not a multiple of n_kv_head 3"),
    (("--n-head", "2", "--n-embd", "6"), "needs an even head size"),
])
def test_llama_settings_are_checked(flags, message):
    with pytest.raises(ValueError, match=message):
        cli.TrainConfig(**dict(PRESETS["tiny"], model="llama",
                               **{f[2:].replace("-", "_"): int(v)
                                  for f, v in zip(flags[::2], flags[1::2])}))


def test_config_flags_override_presets(monkeypatch):
    captured = []
    monkeypatch.setattr(cli, "train", lambda cfg, **kwargs: captured.append(cfg))
    cli.main(["train", "--preset", "tiny", "--n-embd", "48", "--no-bias",
              "--learning-rate", "3e-4"])
    cfg = captured[-1]
    assert cfg.n_embd == 48 and cfg.bias is False and cfg.learning_rate == 3e-4
    assert cfg.n_layer == 1 and cfg.max_iters == 20                     # from the preset
    cli.main(["train"])
    assert captured[-1] == cli.TrainConfig()                            # the defaults
    with pytest.raises(SystemExit):
        cli.main(["train", "--preset", "huge"])


def test_bpe_tokenizer_run(tmp_path):
    log = _train(tmp_path / "bpe", "--tokenizer", "bpe", "--bpe-vocab-size", "300")
    saved = json.loads((tmp_path / "bpe" / "tokenizer.json").read_text())
    assert saved["type"] == "ByteBPETokenizer"
    assert log["eval"][0]["val"] == pytest.approx(np.log(300), abs=0.15)    # 300-way uniform
    text = inference.sample(tmp_path / "bpe", "ROMEO:", 20, seed=0)
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")
    with pytest.raises(SystemExit):                     # argparse: invalid choice, exit 2
        _train(tmp_path / "x", "--tokenizer", "words")
    assert not (tmp_path / "x").exists()


def test_shakespeare_char_preset_is_nanogpts_cpu_configuration():
    """The preset is nanoGPT's config/train_shakespeare_char.py with the README's CPU overrides
    and train.py's bias=False."""
    args = argparse.Namespace(preset="shakespeare-char", resume=False,
                              **{f.name: None for f in dataclasses.fields(cli.TrainConfig)})
    cfg = cli._config_from_args(args)
    expected = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12,
                    max_iters=2000, lr_decay_iters=2000, dropout=0.0, bias=False,
                    learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, beta1=0.9, beta2=0.99,
                    weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=20)
    assert {k: getattr(cfg, k) for k in expected} == expected


def test_readme_commands_and_ci_agree():
    """The README opens with the two commands; .ci/run runs the test command verbatim, and the
    main command trains the preset and samples from it."""
    repo = Path(__file__).resolve().parent.parent
    readme = (repo / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    main, test = commands
    assert "tinyllm train --preset shakespeare-char" in main and "tinyllm sample" in main
    assert test in (repo / ".ci" / "run").read_text().splitlines()


def test_batches_and_initial_weights_use_independent_streams():
    """The batch generator is seeded by the run's seed but is not the weights' stream."""
    seed = 1337
    init_stream = np.random.default_rng(seed)            # what tl.manual_seed(seed) draws from
    data = trainer.data_generator(seed)
    assert data.bit_generator.state != init_stream.bit_generator.state
    a = trainer.data_generator(seed).integers(0, 2**62, 8)
    b = trainer.data_generator(seed).integers(0, 2**62, 8)
    assert (a == b).all()                                 # still seeded: the same every run
    assert not (a == np.random.default_rng(seed).integers(0, 2**62, 8)).any()

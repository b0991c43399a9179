"""A run directory is a contract (issue 17): resume from the saved config, no silent overwrite,
one writer, the corpus found again by its sha256, checkpoints verified, crash leftovers cleaned,
and every bad input a clean error that changes nothing."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tinyllm import cli, inference, rundir
from tinyllm.checkpoint import CheckpointError

REPO = Path(__file__).resolve().parent.parent
TINY = ("--preset", "tiny", "--workers", "1", "--quiet")


@pytest.fixture(autouse=True)
def data(shared_data):
    return shared_data


def _train(out, *extra):
    return cli.main(["train", *TINY, "--out-dir", str(out), *map(str, extra)])


def _run(argv, capsys):
    """``tinyllm ARGV`` in this process: (exit status, stdout, stderr)."""
    try:
        code = cli.run([str(a) for a in argv])
    except SystemExit as e:                         # argparse's exit 2
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _snapshot(run):
    """{relative path: sha256} of everything in a run directory but its lock."""
    run = Path(run)
    if not run.exists():
        return None
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != rundir.LOCK_NAME}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data_dir):
    """One finished tiny run (20 steps, checkpoints at 10 and 20), copied by tests that need
    their own."""
    out = tmp_path_factory.mktemp("trained") / "run"
    env = os.environ.copy()
    os.environ["TINYLLM_DATA"] = str(shared_data_dir)
    try:
        _train(out)
    finally:
        os.environ.clear()
        os.environ.update(env)
    return out


@pytest.fixture(scope="module")
def shared_data_dir():
    for d in ([os.environ["TINYLLM_DATA"]] if os.environ.get("TINYLLM_DATA") else []) + \
            [str(REPO.parent / "shared" / "data")]:
        if os.path.isfile(os.path.join(d, "tinyshakespeare.txt")):
            return Path(d).resolve()
    pytest.skip("tinyshakespeare.txt not found; set TINYLLM_DATA")


@pytest.fixture
def run_copy(trained, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


def _prose(tmp_path, name="prose.txt", n=4000):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"]
    path = tmp_path / name
    path.write_text(" ".join(rng.choice(words, n)) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# 1. --resume takes every setting from the saved config

def test_resume_of_the_preset_needs_no_flags(tmp_path):
    """The preset's bias=False used to meet a default bias=True model on resume."""
    _train(tmp_path / "r", "--no-bias", "--max-iters", "10", "--lr-decay-iters", "20")
    log = cli.main(["train", "--resume", "--out-dir", str(tmp_path / "r"), "--quiet",
                    "--max-iters", "20"])
    assert log["config"]["bias"] is False and len(log["train_loss"]) == 20


def test_resume_of_a_run_on_its_own_corpus_continues_it(tmp_path, monkeypatch):
    prose = _prose(tmp_path)
    straight = _train(tmp_path / "a", "--data", prose)
    _train(tmp_path / "b", "--data", prose, "--max-iters", "10", "--lr-decay-iters", "20")
    monkeypatch.chdir(tmp_path / "b")          # another working directory, no --data
    monkeypatch.delenv("TINYLLM_DATA")
    resumed = cli.main(["train", "--resume", "--out-dir", str(tmp_path / "b"), "--quiet",
                        "--max-iters", "20"])
    assert resumed["train_loss"] == straight["train_loss"]
    assert resumed["corpus"]["sha256"] == hashlib.sha256(prose.read_bytes()).hexdigest()


@pytest.mark.parametrize("flag, value, saved", [
    ("--learning-rate", "0.01", "--learning-rate 0.001"),
    ("--batch-size", "4", "--batch-size 8"),
    ("--n-embd", "64", "--n-embd 32"),
    ("--seed", "7", "--seed 1337"),
])
def test_resume_refuses_a_changed_setting_by_name(run_copy, capsys, flag, value, saved):
    before = _snapshot(run_copy)
    code, _, err = _run(["train", "--resume", "--out-dir", run_copy, flag, value], capsys)
    assert code == 1 and f"{flag} {value} (the run has {saved})" in err
    assert _snapshot(run_copy) == before


def test_resume_applies_records_and_prints_a_mutable_change(run_copy, capsys):
    code, out, _ = _run(["train", "--resume", "--out-dir", run_copy, "--max-iters", "24",
                         "--eval-interval", "4"], capsys)
    assert code == 0
    assert "resume at step 20: max_iters 20 -> 24" in out
    assert "resume at step 20: eval_interval 10 -> 4" in out
    log = json.loads((run_copy / "log.json").read_text())
    assert log["config"]["max_iters"] == 24 and len(log["train_loss"]) == 24
    assert log["resumes"] == [{"step": 20, "changed": {"max_iters": [20, 24],
                                                       "eval_interval": [10, 4]}}]


def test_resume_of_a_finished_run_changes_nothing(run_copy, capsys):
    before = _snapshot(run_copy)
    code, out, _ = _run(["train", "--resume", "--out-dir", run_copy], capsys)
    assert code == 0 and "is complete: step 20" in out
    assert _snapshot(run_copy) == before


def test_resume_accepts_a_moved_copy_of_the_corpus_and_refuses_another(tmp_path, capsys):
    prose = _prose(tmp_path)
    _train(tmp_path / "r", "--data", prose, "--max-iters", "10", "--lr-decay-iters", "20")
    moved = tmp_path / "moved.txt"
    prose.rename(moved)
    code, _, err = _run(["train", "--resume", "--out-dir", tmp_path / "r", "--max-iters", "20"],
                        capsys)
    assert code == 1 and "the run's corpus is missing" in err and str(prose) in err
    other = _prose(tmp_path, "other.txt", n=3000)
    code, _, err = _run(["train", "--resume", "--out-dir", tmp_path / "r", "--data", other,
                         "--max-iters", "20"], capsys)
    assert code == 1 and "is not the run's corpus" in err
    code, out, _ = _run(["train", "--resume", "--out-dir", tmp_path / "r", "--data", moved,
                         "--max-iters", "20"], capsys)
    assert code == 0 and f"data {prose} -> {moved}" in out
    assert json.loads((tmp_path / "r" / "log.json").read_text())["corpus"]["path"] == str(moved)


def test_resume_refuses_a_corpus_changed_in_place(tmp_path, capsys):
    prose = _prose(tmp_path)
    _train(tmp_path / "r", "--data", prose, "--max-iters", "10", "--lr-decay-iters", "20")
    prose.write_text(prose.read_text() + "more words\n")
    code, _, err = _run(["train", "--resume", "--out-dir", tmp_path / "r",
                         "--max-iters", "20"], capsys)
    assert code == 1 and "changed since the run recorded it" in err


# ----------------------------------------------------------------------------------------------
# 2. a new run never overwrites silently

def test_a_new_run_refuses_a_run_directory(run_copy, capsys):
    before = _snapshot(run_copy)
    code, _, err = _run(["train", *TINY, "--out-dir", run_copy], capsys)
    assert code == 1 and "already holds a run" in err
    assert "--resume" in err and "--overwrite" in err
    assert _snapshot(run_copy) == before


def test_a_failed_overwrite_leaves_the_old_run_intact(run_copy, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("too short\n")
    before = _snapshot(run_copy)
    code, _, err = _run(["train", *TINY, "--out-dir", run_copy, "--overwrite", "--data", short],
                        capsys)
    assert code == 1 and "too short for --block-size 16" in err
    assert _snapshot(run_copy) == before
    assert inference.sample(run_copy, "ROMEO:", 5).startswith("ROMEO:")   # still sampleable


def test_overwrite_starts_over(run_copy, capsys):
    old = json.loads((run_copy / "log.json").read_text())
    code, _, _ = _run(["train", *TINY, "--out-dir", run_copy, "--overwrite", "--max-iters", "6",
                       "--lr-decay-iters", "6", "--checkpoint-interval", "3"], capsys)
    assert code == 0
    new = json.loads((run_copy / "log.json").read_text())
    assert len(old["train_loss"]) == 20 and len(new["train_loss"]) == 6
    assert "resumes" not in new


def test_overwrite_refuses_a_directory_with_foreign_files(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "thesis.tex").write_text("months of work")
    code, _, err = _run(["train", *TINY, "--out-dir", tmp_path / "d", "--overwrite"], capsys)
    assert code == 1 and "thesis.tex" in err
    assert (tmp_path / "d" / "thesis.tex").read_text() == "months of work"


def test_a_second_run_on_a_locked_directory_refuses(run_copy, capsys):
    before = _snapshot(run_copy)
    with rundir.locked(run_copy):
        code, _, err = _run(["train", "--resume", "--out-dir", run_copy, "--max-iters", "30"],
                            capsys)
    assert code == 1 and "is in use by another tinyllm train" in err
    assert _snapshot(run_copy) == before


def test_a_refused_start_in_a_new_directory_leaves_nothing(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("x" * 20)
    code, _, _ = _run(["train", *TINY, "--out-dir", tmp_path / "new", "--data", short], capsys)
    assert code == 1 and not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------------------------
# 3. a resumed run never goes back

def test_resume_refuses_max_iters_below_the_checkpoint(run_copy, capsys):
    before = _snapshot(run_copy)
    code, _, err = _run(["train", "--resume", "--out-dir", run_copy, "--max-iters", "5"],
                        capsys)
    assert code == 1 and "--max-iters 5 is below the checkpoint's step 20" in err
    assert _snapshot(run_copy) == before


# ----------------------------------------------------------------------------------------------
# 6. checkpoints carry checksums

def _corrupt(run, kind="model", n=100):
    ckpt = run / "checkpoint"
    name = json.loads((ckpt / "meta.json").read_text())["files"][kind]
    data = bytearray((ckpt / name).read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.integers(len(data) // 2, len(data), n):      # inside the arrays
        data[i] ^= 0xFF
    (ckpt / name).write_bytes(bytes(data))
    return ckpt / name


@pytest.mark.parametrize("command", [["eval"], ["sample", "--num-tokens", "5"],
                                     ["train", "--resume", "--max-iters", "30"],
                                     ["explain-backward"]])
def test_corrupted_weights_fail_loudly(run_copy, capsys, command):
    path = _corrupt(run_copy)
    code, out, err = _run([command[0], "--out-dir", run_copy, *command[1:]], capsys)
    assert code == 1 and f"{path} is corrupted" in err and "sha256" in err
    assert "nan" not in out.lower()


def test_corrupted_optimizer_state_fails_loudly_on_resume(run_copy, capsys):
    path = _corrupt(run_copy, "optim")
    code, _, err = _run(["train", "--resume", "--out-dir", run_copy, "--max-iters", "30"],
                        capsys)
    assert code == 1 and f"{path} is corrupted" in err


def test_truncated_and_missing_weights_name_the_file(run_copy):
    ckpt = run_copy / "checkpoint"
    name = json.loads((ckpt / "meta.json").read_text())["files"]["model"]
    (ckpt / name).write_bytes((ckpt / name).read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="is corrupted"):
        inference.load_run(run_copy)
    (ckpt / name).unlink()
    with pytest.raises(CheckpointError, match=f"{name} is missing"):
        inference.load_run(run_copy)


def test_meta_json_garbage_is_a_checkpoint_error(run_copy):
    (run_copy / "checkpoint" / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        inference.load_run(run_copy)


# ----------------------------------------------------------------------------------------------
# 8. kill -9 during a save: no orphan survives the next resume, which is the uninterrupted run

KILL_DRIVER = textwrap.dedent("""
    import os, signal, sys
    from tinyllm import checkpoint, cli
    moment, calls = sys.argv[1], {"save_file": 0, "text": 0}
    real_save, real_text = checkpoint.save_file, checkpoint._write_text

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def save_file(arrays, path, *a, **k):
        calls["save_file"] += 1              # 1, 2: the step-5 save; 3, 4: step 10's
        if moment == "model half written" and calls["save_file"] == 3:
            open(path, "wb").write(b"half")
            die()
        if moment == "optimizer half written" and calls["save_file"] == 4:
            real_save(arrays, path, *a, **k)
            open(path, "r+b").truncate(100)
            die()
        return real_save(arrays, path, *a, **k)

    def write_text(path, text):
        calls["text"] += 1
        if moment == "before meta.json" and calls["text"] == 2:
            die()
        real_text(path, text)
        if moment == "meta.json written, not renamed" and calls["text"] == 2:
            die()

    checkpoint.save_file, checkpoint._write_text = save_file, write_text
    cli.main(sys.argv[2:])
""")


@pytest.mark.parametrize("moment", ["model half written", "optimizer half written",
                                    "before meta.json", "meta.json written, not renamed"])
def test_kill_9_during_a_save_leaves_nothing_after_resume(tmp_path, moment):
    flags = ["--checkpoint-interval", "5", "--dropout", "0.1"]
    straight = _train(tmp_path / "a", *flags)
    run = tmp_path / "b"
    proc = subprocess.run([sys.executable, "-c", KILL_DRIVER, moment, "train", *TINY,
                           "--out-dir", str(run), *flags], cwd=tmp_path, env=os.environ.copy(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    ckpt = run / "checkpoint"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 5                                    # the previous good one
    leftovers = set(os.listdir(ckpt)) - {"meta.json", *meta["files"].values()}
    assert leftovers                                            # the crash left some
    resumed = _train(run, *flags, "--resume")
    assert resumed["train_loss"] == straight["train_loss"]
    assert resumed["eval"] == straight["eval"]
    meta = json.loads((ckpt / "meta.json").read_text())
    assert set(os.listdir(ckpt)) == {"meta.json", *meta["files"].values()}
    assert not [n for n in os.listdir(run) if n.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------
# 9. the run finds its corpus from anywhere, without environment variables

@pytest.mark.parametrize("command", [["eval"], ["eval", "--batches", "2"],
                                     ["explain-backward"], ["sample", "--num-tokens", "3"],
                                     ["train", "--resume", "--max-iters", "22"]])
def test_a_run_works_from_another_directory_without_tinyllm_data(run_copy, tmp_path,
                                                                 monkeypatch, capsys, command):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("TINYLLM_DATA")
    monkeypatch.setenv("HOME", str(elsewhere))                 # no ~/.cache copy either
    code, out, err = _run([command[0], "--out-dir", run_copy, *command[1:]], capsys)
    assert code == 0, err
    if command[0] == "eval":
        assert "tinyshakespeare.txt" in out


def test_eval_scores_the_whole_split_by_default(run_copy, shared_data_dir):
    whole = inference.evaluate(run_copy)
    again = inference.evaluate(run_copy)
    assert whole == again                                       # deterministic
    val_tokens = len((shared_data_dir / "tinyshakespeare.txt").read_text()) - 1_003_854
    assert whole["tokens"] == (val_tokens - 1) // 16 * 16
    quick = inference.evaluate(run_copy, batches=2, seed=1)
    assert quick["tokens"] == 2 * 8 * 16 and quick["loss"] != whole["loss"]
    assert abs(quick["loss"] - whole["loss"]) < 0.3


def test_eval_on_a_copy_of_the_corpus_splits_it_and_on_other_text_scores_all(
        run_copy, shared_data_dir, tmp_path):
    copy = tmp_path / "copy.txt"
    shutil.copy(shared_data_dir / "tinyshakespeare.txt", copy)
    assert inference.evaluate(run_copy, data=copy)["loss"] == inference.evaluate(run_copy)["loss"]
    other = tmp_path / "other.txt"
    other.write_text("ROMEO:\nWhat light through yonder window breaks?\n" * 20)
    result = inference.evaluate(run_copy, data=other)
    assert result["what"] == str(other) and np.isfinite(result["loss"])


# ----------------------------------------------------------------------------------------------
# 10. user errors are one line, no traceback

def test_non_utf8_corpus_names_the_file_and_offset(tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 10)
    code, _, err = _run(["train", *TINY, "--out-dir", tmp_path / "r", "--data", bad], capsys)
    assert code == 1
    assert f"{bad}" in err and "not UTF-8" in err and "byte 0xe9 at offset 3" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_directory_as_data_says_so(tmp_path, capsys):
    code, _, err = _run(["train", *TINY, "--out-dir", tmp_path / "r", "--data", tmp_path],
                        capsys)
    assert code == 1 and "is a directory; expected a text file" in err


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    with pytest.raises(FileNotFoundError):
        cli.run(["train", *TINY, "--out-dir", str(tmp_path / "r"), "--data", "nope.txt",
                 "--debug"])
    monkeypatch.setenv("TINYLLM_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        cli.run(["train", *TINY, "--out-dir", str(tmp_path / "r"), "--data", "nope.txt"])


def test_console_script_prints_one_line_and_exits_1(tmp_path):
    """The installed entry point, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "tinyllm.cli", "eval", "--out-dir",
                           str(tmp_path / "nothing")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"tinyllm eval: error: {tmp_path / 'nothing'} holds no run (no log.json): train one "
        f"with tinyllm train --out-dir {tmp_path / 'nothing'}"]


def test_sample_streams_and_beam_search_from_the_command_line(run_copy, capsys):
    code, out, _ = _run(["sample", "--out-dir", run_copy, "--prompt", "ROMEO:",
                         "--num-tokens", "12", "--seed", "1"], capsys)
    assert code == 0
    assert out == inference.sample(run_copy, "ROMEO:", 12, seed=1) + "\n"
    streamed = []
    inference.sample(run_copy, "ROMEO:", 12, seed=1, stream=streamed.append)
    assert len(streamed) > 1 and "".join(streamed) == out[:-1]     # piece by piece
    code, out, _ = _run(["sample", "--out-dir", run_copy, "--prompt", "ROMEO:",
                         "--num-tokens", "8", "--num-beams", "3", "--no-repeat-ngram-size",
                         "2", "--repetition-penalty", "1.3", "--length-penalty", "0.6"], capsys)
    assert code == 0 and out.startswith("ROMEO:") and len(out) == len("ROMEO:") + 8 + 1
    again = inference.sample(run_copy, "ROMEO:", 8, num_beams=3, no_repeat_ngram_size=2,
                             repetition_penalty=1.3, length_penalty=0.6)
    assert out == again + "\n"                                  # beam search: deterministic


def test_every_flag_has_a_help_line_with_its_default():
    parser = cli._parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    checked = 0
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"tinyllm {name} {action.option_strings[0]} has no help line"
            switch = action.nargs == 0 and not isinstance(action,
                                                          cli.argparse.BooleanOptionalAction)
            if not switch and not action.required:
                assert "(default: " in action.help, f"tinyllm {name} {action.option_strings}"
                checked += 1
    assert checked >= 45


# ----------------------------------------------------------------------------------------------
# the bad-input table: no raw traceback, no hang, no NaN or empty output with exit 0, no
# changed run directory

BAD_CLI = [
    # (argv after the command, expected exit, a piece of the message)
    (["train", "--batch-size", "0"], 2, "--batch-size: expected an integer >= 1, got '0'"),
    (["train", "--batch-size", "-3"], 2, "--batch-size"),
    (["train", "--batch-size", "two"], 2, "--batch-size"),
    (["train", "--block-size", "0"], 2, "--block-size"),
    (["train", "--n-embd", "0"], 2, "--n-embd"),
    (["train", "--n-embd", "-8"], 2, "--n-embd"),
    (["train", "--n-layer", "0"], 2, "--n-layer"),
    (["train", "--n-head", "0"], 2, "--n-head"),
    (["train", "--n-head", "3"], 1, "n_embd 32 does not split into n_head 3"),
    (["train", "--eval-interval", "0"], 2, "--eval-interval"),
    (["train", "--checkpoint-interval", "0"], 2, "--checkpoint-interval"),
    (["train", "--max-iters", "0"], 2, "--max-iters"),
    (["train", "--max-iters", "-1"], 2, "--max-iters"),
    (["train", "--seed", "-1"], 2, "--seed"),
    (["train", "--seed", "1.5"], 2, "--seed"),
    (["train", "--eval-iters", "-3"], 2, "--eval-iters"),
    (["train", "--health-every", "-1"], 2, "--health-every"),
    (["train", "--workers", "-1"], 2, "--workers"),
    (["train", "--workers", "3"], 1, "does not split evenly over workers 3"),
    (["train", "--grad-clip", "-1"], 2, "--grad-clip: expected a finite number >= 0"),
    (["train", "--grad-clip", "nan"], 2, "--grad-clip"),
    (["train", "--learning-rate", "0"], 2, "--learning-rate"),
    (["train", "--learning-rate", "-1e-3"], 2, "--learning-rate"),
    (["train", "--learning-rate", "inf"], 2, "--learning-rate"),
    (["train", "--learning-rate", "nan"], 2, "--learning-rate"),
    (["train", "--learning-rate", "1e-5"], 1, "min_lr 0.0001 is above learning_rate 1e-05"),
    (["train", "--min-lr", "-1"], 2, "--min-lr"),
    (["train", "--dropout", "1"], 2, "--dropout"),
    (["train", "--dropout", "-0.1"], 2, "--dropout"),
    (["train", "--beta1", "1"], 2, "--beta1"),
    (["train", "--beta2", "1.5"], 2, "--beta2"),
    (["train", "--weight-decay", "-0.1"], 2, "--weight-decay"),
    (["train", "--warmup-iters", "-1"], 2, "--warmup-iters"),
    (["train", "--warmup-iters", "50"], 1, "warmup_iters 50 is longer than lr_decay_iters 20"),
    (["train", "--lr-decay-iters", "0"], 2, "--lr-decay-iters"),
    (["train", "--bpe-vocab-size", "100", "--tokenizer", "bpe"], 2, "--bpe-vocab-size"),
    (["train", "--tokenizer", "words"], 2, "invalid choice: 'words'"),
    (["train", "--backend", "tpu"], 2, "invalid choice: 'tpu'"),
    (["train", "--preset", "huge"], 2, "invalid choice: 'huge'"),
    (["train", "--data", "no/such/file.txt"], 1, "no such file"),
    (["train", "--data", ""], 2, "--data"),
    (["train", "--resume", "--overwrite"], 1, "give one of them"),
    (["train", "--backend", "cupy", "--workers", "2"], 1, "needs backend 'numpy'"),
    (["train", "--nonsense"], 2, "unrecognized arguments"),
    (["sample", "--num-tokens", "-5"], 2, "--num-tokens"),
    (["sample", "--num-tokens", "0"], 2, "--num-tokens"),
    (["sample", "--temperature", "nan"], 2, "--temperature"),
    (["sample", "--temperature", "0"], 2, "--temperature"),
    (["sample", "--temperature", "-1"], 2, "--temperature"),
    (["sample", "--top-k", "0"], 2, "--top-k"),
    (["sample", "--top-p", "0"], 2, "--top-p"),
    (["sample", "--top-p", "1.5"], 2, "--top-p"),
    (["sample", "--seed", "-2"], 2, "--seed"),
    (["sample", "--num-beams", "0"], 2, "--num-beams"),
    (["sample", "--num-beams", "2", "--top-k", "5"], 1, "beam search (deterministic)"),
    (["sample", "--repetition-penalty", "0"], 2, "--repetition-penalty"),
    (["sample", "--repetition-penalty", "nan"], 2, "--repetition-penalty"),
    (["sample", "--length-penalty", "inf"], 2, "--length-penalty"),
    (["sample", "--no-repeat-ngram-size", "-1"], 2, "--no-repeat-ngram-size"),
    (["sample", "--prompt", "\u00e9t\u00e9"], 1, "not in the vocabulary"),
    (["eval", "--batches", "0"], 2, "--batches"),
    (["eval", "--batches", "-2"], 2, "--batches"),
    (["eval", "--split", "test"], 2, "invalid choice: 'test'"),
    (["eval", "--data", "no/such.txt"], 1, "no such file"),
    (["explain-backward", "--n-embd", "0"], 2, "--n-embd"),
    (["explain-backward", "--n-embd", "15"], 1, "does not split into --n-head 2"),
    (["explain-backward", "--batch-size", "0"], 2, "--batch-size"),
]


def _bad_case_id(case):
    return " ".join(case[0])


@pytest.mark.parametrize("argv, code, message", BAD_CLI, ids=[_bad_case_id(c) for c in BAD_CLI])
def test_bad_command_lines_fail_cleanly(trained, tmp_path, capsys, argv, code, message):
    command, rest = argv[0], argv[1:]
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = _snapshot(run)
    if command == "train":
        resume = "--resume" in rest
        target = run if resume else tmp_path / "new"
        full = ["train", *([] if "--preset" in rest else ["--preset", "tiny"]), "--workers"
                if "--workers" not in rest else "", "1" if "--workers" not in rest else "",
                "--quiet", "--out-dir", target, *rest]
        full = [a for a in full if a != ""]
    elif command == "explain-backward":
        full = [command, *rest]
    else:
        full = [command, "--out-dir", run, *rest]
    got, out, err = _run(full, capsys)
    assert got == code, (out, err)
    assert "Traceback" not in err and message in err, err
    lines = err.strip().splitlines()
    if code == 1:
        assert len(lines) == 1 and lines[0].startswith(f"tinyllm {command}: error: ")
    else:                                            # argparse: the usage, then the error
        assert lines[-1].startswith(f"tinyllm {command}: error: ") or \
            lines[-1].startswith("tinyllm: error: ")
    assert _snapshot(run) == before
    if command == "train" and "--resume" not in rest:
        assert not (tmp_path / "new").exists()


def test_the_table_has_sixty_command_line_cases():
    assert len(BAD_CLI) >= 60


def _api_cases(run):
    from tinyllm.config import TrainConfig
    from tinyllm.data import corpora
    from tinyllm.generate import generate
    return [
        (lambda: TrainConfig(batch_size=0), ValueError, "batch_size expected an integer >= 1"),
        (lambda: TrainConfig(learning_rate=float("nan")), ValueError, "learning_rate"),
        (lambda: TrainConfig(grad_clip=-1), ValueError, "grad_clip expected a finite number"),
        (lambda: TrainConfig(dropout=1.0), ValueError, "dropout"),
        (lambda: TrainConfig(seed=-1), ValueError, "seed"),
        (lambda: TrainConfig(bias="yes"), ValueError, "bias expected True or False"),
        (lambda: TrainConfig(n_layer=2.5), ValueError, "n_layer expected an integer"),
        (lambda: TrainConfig(tokenizer="words"), ValueError, "tokenizer expected one of"),
        (lambda: inference.sample(run, num_tokens=-5), ValueError, "num_tokens"),
        (lambda: inference.sample(run, temperature=float("nan")), ValueError, "temperature"),
        (lambda: inference.sample(run, top_p=0.0), ValueError, "top_p"),
        (lambda: inference.sample(run, num_beams=0), ValueError, "num_beams"),
        (lambda: inference.evaluate(run, batches=0), ValueError, "expected an integer >= 1"),
        (lambda: inference.evaluate(run, split="test"), ValueError, "split must be"),
        (lambda: inference.evaluate(run.parent / "none"), rundir.RunDirError, "holds no run"),
        (lambda: generate(None, np.zeros((1, 1), np.int64), -1), ValueError, "max_new_tokens"),
        (lambda: corpora.corpus_path(str(run)), IsADirectoryError, "is a directory"),
        (lambda: corpora.read_text(run / "checkpoint" / "meta.json.bin"), FileNotFoundError,
         "meta.json.bin"),
    ]


def test_bad_api_calls_raise_typed_errors_naming_the_argument(run_copy):
    before = _snapshot(run_copy)
    cases = _api_cases(run_copy)
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    assert _snapshot(run_copy) == before
    assert len(cases) + len(BAD_CLI) >= 80


@pytest.mark.parametrize("meta, message", [(None, "holds no checkpoint (no meta.json)"),
                                           ('{"step": "ten"}', "is corrupted (step 'ten')"),
                                           ("[1, 2]", "does not hold a JSON object")])
def test_resume_of_a_run_without_a_usable_checkpoint_says_so(run_copy, capsys, meta, message):
    path = run_copy / "checkpoint" / "meta.json"
    if meta is None:
        path.unlink()
    else:
        path.write_text(meta)
    before = _snapshot(run_copy)
    code, _, err = _run(["train", "--resume", "--out-dir", run_copy, "--max-iters", "30"],
                        capsys)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert _snapshot(run_copy) == before


def test_resume_with_the_preset_keeps_the_flags_the_run_began_with(tmp_path):
    """Rerunning the command with --resume but without a flag the run began with: the preset
    used to be applied over the saved config, undoing that flag (here --n-layer 2)."""
    _train(tmp_path / "r", "--n-layer", "2", "--max-iters", "10", "--lr-decay-iters", "20")
    log = cli.main(["train", "--preset", "tiny", "--resume", "--out-dir", str(tmp_path / "r"),
                    "--quiet", "--max-iters", "20"])
    assert log["config"]["n_layer"] == 2 and len(log["train_loss"]) == 20

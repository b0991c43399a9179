"""``mpiexec -n 2 tinyllm train`` on localhost: every logged loss equals the one-process run of
the same global batch (bit for bit with the deterministic allreduce, within 1e-5 with MPI's
own), a 2-rank checkpoint resumes in 1 process and the reverse, Ctrl-C stops every rank at one
step boundary, and a rank that dies or stops answering ends the job instead of hanging it.

Needs mpi4py and an ``mpiexec`` (``pip install 'tinyllm[mpi]'``: the mpich wheel brings one);
skipped with a reason otherwise. Each launch has a timeout, so a hang fails the test."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TEST_BACKEND

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "mpi_script.py"


def _mpiexec():
    here = Path(sys.executable).parent          # the venv's bin: the mpich wheel's mpiexec
    return shutil.which("mpiexec", path=f"{here}{os.pathsep}{os.environ.get('PATH', '')}")


def _data_dir():
    """What tests/conftest.py's ``shared_data`` finds: $TINYLLM_DATA, else ../shared/data."""
    for d in ([os.environ["TINYLLM_DATA"]] if os.environ.get("TINYLLM_DATA") else []) + \
            [str(ROOT.parent / "shared" / "data")]:
        if os.path.isfile(os.path.join(d, "tinyshakespeare.txt")):
            return str(Path(d).resolve())
    return None


def _why_skip():
    if _data_dir() is None:
        return "tinyshakespeare.txt not found; set TINYLLM_DATA to the directory that holds it"
    if TEST_BACKEND != "numpy":
        return "the MPI tests run on the numpy backend"
    try:
        import importlib.util
        if importlib.util.find_spec("mpi4py") is None:
            return "mpi4py is not installed (pip install 'tinyllm[mpi]')"
    except ImportError:
        return "mpi4py is not installed (pip install 'tinyllm[mpi]')"
    if _mpiexec() is None:
        return "no mpiexec on PATH or beside the interpreter (pip install 'tinyllm[mpi]')"
    return None


pytestmark = pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or "")


def _env():
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "OMPI_", "MPI_LOCAL", "HYDRA_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["TINYLLM_DIST_TIMEOUT"] = "60"
    env["TINYLLM_DATA"] = _data_dir()
    return env


def _run(cmd, timeout=180):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(),
                          cwd=ROOT)
    return proc


def _mpi_train(n, out, *flags, rc=0):
    proc = _run([_mpiexec(), "-n", str(n), sys.executable, "-m", "tinyllm.cli", "train",
                 "--preset", "tiny", "--out-dir", str(out), "--quiet", *flags])
    assert proc.returncode == rc, proc.stderr
    return json.loads((Path(out) / "log.json").read_text()), proc


def _one_train(out, *flags):
    proc = _run([sys.executable, "-m", "tinyllm.cli", "train", "--preset", "tiny",
                 "--out-dir", str(out), "--quiet", "--workers", "1", *flags])
    assert proc.returncode == 0, proc.stderr
    return json.loads((Path(out) / "log.json").read_text())


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    """The one-process run of the same global batch: 2 micro-batches of 4 rows, accumulated."""
    return _one_train(tmp_path_factory.mktemp("one") / "run", "--grad-accum", "2")


def test_communicator_collectives_under_mpiexec():
    proc = _run([_mpiexec(), "-n", "2", sys.executable, str(SCRIPT), "collectives"])
    assert proc.returncode == 0, proc.stderr
    assert "collectives ok" in proc.stdout


def test_deterministic_two_ranks_equal_one_process_bit_for_bit(tmp_path, one):
    log, proc = _mpi_train(2, tmp_path / "run", "--allreduce", "deterministic")
    assert (log["workers"], log["micro_batches"]) == (2, 2)
    assert log["train_loss"] == one["train_loss"] and len(one["train_loss"]) == 20
    assert log["eval"] == one["eval"]
    assert proc.stdout == ""                           # --quiet: nothing, from any rank


def test_fast_allreduce_agrees_with_one_process(tmp_path, one):
    log, _ = _mpi_train(2, tmp_path / "run", "--allreduce", "fast")
    np.testing.assert_allclose(log["train_loss"], one["train_loss"], rtol=1e-5)


def test_resume_two_ranks_in_one_process_and_the_reverse(tmp_path, one):
    """Both ways continue the same run: the 2 micro-batches keep their rows, their dropout
    streams and their order of addition whichever processes run them."""
    _mpi_train(2, tmp_path / "a", "--allreduce", "deterministic", "--max-iters", "10")
    resumed = _one_train(tmp_path / "a", "--resume", "--max-iters", "20")
    assert resumed["workers"] == 1 and resumed["micro_batches"] == 2
    assert resumed["train_loss"] == one["train_loss"] and resumed["eval"] == one["eval"]

    _one_train(tmp_path / "b", "--grad-accum", "2", "--max-iters", "10")
    log, _ = _mpi_train(2, tmp_path / "b", "--resume", "--max-iters", "20", "--grad-accum", "0",
                        "--allreduce", "deterministic")
    assert log["workers"] == 2 and log["micro_batches"] == 2
    assert log["train_loss"] == one["train_loss"] and log["eval"] == one["eval"]


def test_an_error_in_rank_0s_setup_is_printed_once_and_every_rank_exits(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    proc = _run([_mpiexec(), "-n", "2", sys.executable, "-m", "tinyllm.cli", "train",
                 "--preset", "tiny", "--out-dir", str(tmp_path / "run"), "--quiet"],
                timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.count("tinyllm train: error:") == 1, proc.stderr
    assert "already holds" in proc.stderr
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_ctrl_c_stops_every_rank_at_one_step_boundary(tmp_path, one):
    cmd = [_mpiexec(), "-n", "2", sys.executable, "-m", "tinyllm.cli", "train", "--preset",
           "tiny", "--out-dir", str(tmp_path / "run"), "--quiet", "--max-iters", "100000",
           "--checkpoint-interval", "30", "--eval-interval", "100000", "--allreduce",
           "deterministic"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=ROOT)
    log = tmp_path / "run" / "log.json"
    deadline = time.monotonic() + 120
    meta = tmp_path / "run" / "checkpoint" / "meta.json"
    while not meta.exists() and time.monotonic() < deadline:   # in the loop: step 30 saved
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)                     # what the terminal sends mpiexec
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    saved = json.loads(meta.read_text())["step"]
    losses = json.loads(log.read_text())["train_loss"]
    assert 30 <= saved == len(losses)
    k = min(saved, 20)                  # the preset's schedule: the same first 20 steps
    assert losses[:k] == one["train_loss"][:k]
    resumed, _ = _mpi_train(2, tmp_path / "run", "--resume", "--max-iters", str(saved + 2))
    assert resumed["train_loss"][:saved] == losses and len(resumed["train_loss"]) == saved + 2


def test_a_dying_rank_ends_the_job(tmp_path):
    start = time.monotonic()
    proc = _run([_mpiexec(), "-n", "2", sys.executable, str(SCRIPT), "dying-rank",
                 str(tmp_path / "run")], timeout=120)
    assert proc.returncode == 9, proc.stderr            # mpiexec ends the job with its code
    assert time.monotonic() - start < 100
    # the checkpoint of step 4 was written before rank 1 died in step 5, and is whole
    meta = json.loads((tmp_path / "run" / "checkpoint" / "meta.json").read_text())
    assert meta["step"] == 4


def test_a_rank_that_stops_answering_is_named(tmp_path):
    start = time.monotonic()
    proc = _run([_mpiexec(), "-n", "2", sys.executable, str(SCRIPT), "late-rank"], timeout=120)
    assert proc.returncode != 0
    assert "rank 0: agree in a collective did not complete within 1 s: rank 1 did not answer" \
        in proc.stderr
    assert time.monotonic() - start < 50                # not rank 1's 60 s sleep


def test_workers_other_than_the_ranks_are_refused_before_anything_is_written(tmp_path):
    proc = _run([_mpiexec(), "-n", "2", sys.executable, "-m", "tinyllm.cli", "train",
                 "--preset", "tiny", "--out-dir", str(tmp_path / "run"), "--workers", "4"])
    assert proc.returncode == 1
    assert proc.stderr.count("--workers 4, but this run has 2 processes (mpi)") == 1
    assert not (tmp_path / "run").exists()


def test_a_non_finite_loss_on_one_rank_stops_every_rank_with_one_message(tmp_path):
    proc = _run([_mpiexec(), "-n", "2", sys.executable, str(SCRIPT), "nan-on-rank-1",
                 str(tmp_path / "run")], timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("error:") == 1, proc.stderr
    assert "tinyllm train: error: loss became nan at step 5; stopped" in proc.stderr
    assert json.loads((tmp_path / "run" / "checkpoint" / "meta.json").read_text())["step"] == 4


def test_setup_errors_of_rank_0_reach_the_others_and_print_once(tmp_path):
    """--resume of a run that is not there: rank 0 reads the saved config (the others need not
    see the directory) and alone reports it."""
    proc = _run([_mpiexec(), "-n", "2", sys.executable, "-m", "tinyllm.cli", "train",
                 "--out-dir", str(tmp_path / "none"), "--resume"], timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.count("error:") == 1, proc.stderr

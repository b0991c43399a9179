"""benchmarks/train_step.py: the worker runs, the profile adds up, and the PyTorch twin is the
same model as tinyllm's GPT (same weights, same batch -> the same losses). Also the
data-parallel benchmarks: benchmarks/gpt_step.py on local and MPI ranks, and
benchmarks/data_parallel.py's computed volumes and measured allreduces."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TEST_BACKEND, load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/train_step.py")


def test_tinyllm_worker_runs(bench):
    out = bench.run_worker("tinyllm", "tiny", steps=2, warmup=1)
    assert len(out["ms"]) == 2 and len(out["losses"]) == 3
    assert out["ms_per_step"] > 0 and math.isfinite(out["ms_per_step"])
    assert all(math.isfinite(loss) for loss in out["losses"])
    assert out["peak_rss_mb"] > 0


def test_data_parallel_worker_computes_the_same_steps(bench):
    """"tinyllm-dp" (the batch split over one process per core) gives the one-process losses."""
    from tinyllm.parallel import auto_workers, available_cores
    if available_cores() < 2:
        pytest.skip("one core: no split to test")
    one = bench.run_worker("tinyllm", "small", steps=0, warmup=3)["losses"]
    dp = bench.run_worker("tinyllm-dp", "small", steps=1, warmup=2)
    assert dp["workers"] == auto_workers(8) > 1 and len(dp["losses"]) == 3
    for a, b in zip(dp["losses"], one):
        assert a == pytest.approx(b, rel=1e-5)
    assert dp["steps"] == 1 and dp["ms_per_step"] > 0


def test_data_parallel_worker_stops_every_rank_at_the_time_cap(bench):
    """Rank 0's time cap (max_time) is agreed by every rank: one timed step, no hang."""
    from tinyllm.parallel import available_cores
    if available_cores() < 2:
        pytest.skip("one core: no split to test")
    out = bench.run_worker("tinyllm-dp", "tiny", steps=5, warmup=1, max_time=0.0)
    assert out["workers"] == 2 and out["steps"] == 1 and len(out["losses"]) == 2


def test_unknown_backend_is_refused(bench):
    with pytest.raises(ValueError, match="backend must be 'numpy' or 'cupy'"):
        bench.run_worker("tinyllm", "tiny", steps=1, warmup=0, backend="torch")


@pytest.mark.gpu
def test_cupy_worker_gives_the_cpu_losses(bench):
    """--backend cupy: the same weights and batches on the GPU, the same losses (float32)."""
    import tinyllm as tl
    cpu = bench.run_worker("tinyllm", "tiny", steps=2, warmup=1)
    try:
        gpu = bench.run_worker("tinyllm", "tiny", steps=2, warmup=1, backend="cupy")
    finally:
        tl.set_backend("numpy")
    assert gpu["backend"] == "cupy" and gpu["peak_gpu_mb"] > 0 and gpu["host_ms"] > 0
    for a, b in zip(gpu["losses"], cpu["losses"]):
        assert a == pytest.approx(b, rel=1e-5)


def test_profile_parts_add_up_and_patches_are_undone(bench):
    from tinyllm.autograd.function import Function
    from tinyllm.ops import matmul as ops_matmul
    before = (ops_matmul.MatMul.forward, ops_matmul.gemm)
    prof = bench.run_worker("tinyllm", "tiny", steps=2, warmup=1, profile=True)["profile"]
    assert (ops_matmul.MatMul.forward, ops_matmul.gemm) == before
    assert all(not hasattr(c.__dict__.get("forward"), "__wrapped__")
               for c in bench._subclasses(Function))
    parts = prof["parts"]
    assert parts["matmul forward"] > 0 and parts["matmul backward"] > 0
    assert parts["op forward"] > 0 and parts["op backward"] > 0
    assert sum(parts.values()) == pytest.approx(prof["total_ms"], rel=1e-6)
    assert "MatMul" in prof["ops"]


@pytest.mark.parametrize("sdpa", [True, False])
def test_torch_twin_matches_tinyllm(bench, sdpa):
    """First-step loss to 1e-4 relative (the benchmark's check), and the losses after two
    AdamW steps too: the optimizer and its weight-decay groups are the same as well."""
    pytest.importorskip("torch")
    tl = bench.run_worker("tinyllm", "small", steps=0, warmup=3)["losses"]
    pt = bench.run_worker("torch", "small", steps=0, warmup=3, sdpa=sdpa)["losses"]
    assert len(tl) == len(pt) == 3
    for a, b in zip(tl, pt):
        assert a == pytest.approx(b, rel=1e-4)
    assert tl[0] != tl[2]                                  # the steps did change the weights


def test_paired_run_engines_agree_over_a_short_run(tmp_path, shared_data):
    """benchmarks/paired_run.py: tinyllm and PyTorch from the same weights and batches, with
    the CLI's lr schedule, clipping and AdamW groups, give the same losses."""
    pytest.importorskip("torch")
    results = load_script("benchmarks/paired_run.py").main(steps=6)
    for step, r in results["tinyllm"].items():
        for key, value in r.items():
            assert math.isfinite(value)
            assert value == pytest.approx(results["torch"][step][key], rel=1e-5)
    assert results["tinyllm"]["6"]["train"] < 4.2                       # it learns a little


# ----------------------------------------------------------------------------------------------
# benchmarks/gpt_step.py and benchmarks/data_parallel.py

@pytest.fixture(scope="module")
def dp_bench():
    return load_script("benchmarks/data_parallel.py")


def test_parameter_formula_and_volumes(dp_bench):
    from tinyllm.models import GPTConfig
    counted, formula = dp_bench.preset_params()
    assert counted == formula == 804_096
    assert dp_bench.gpt_params(GPTConfig(**dp_bench.GPT2_SMALL)) == 124_439_808
    rows = {r["scheme"].split()[0]: r for r in dp_bench.volume(1000, 8)}
    assert rows["ring"]["other_sent"] == 2 * 7 / 8 * 4000
    assert rows["deterministic"]["rank0_recv"] == rows["deterministic"]["rank0_sent"] == 28000
    assert rows["deterministic"]["other_recv"] == 4000
    assert rows["shm"]["other_recv"] == 8 * 4000 and rows["shm"]["seconds"]["1 Gb/s"] is None
    assert rows["ring"]["seconds"]["1 Gb/s"] == pytest.approx(7000 / 125e6)
    assert rows["deterministic"]["seconds"]["100 Gb/s"] == pytest.approx(56000 / 12.5e9)


def test_shm_allreduce_is_timed_on_two_ranks(dp_bench):
    """The per-rank function reaches the spawned rank although this copy of the script was
    loaded under a name no child can import."""
    (r,) = dp_bench.measure_shm(1000, ranks=2, reps=3, warmup=1)
    assert r["transport"] == "shm" and r["ranks"] == 2 and r["reps"] == 3
    assert 0 < r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]


def test_gpt_step_on_two_local_ranks():
    ms = load_script("benchmarks/gpt_step.py").main(rounds=1, steps=1, warmup=1, workers=2,
                                                    batch_size=2, quiet=True)
    assert ms > 0 and math.isfinite(ms)


def _mpiexec():
    here = Path(sys.executable).parent          # the venv's bin: the mpich wheel's mpiexec
    return shutil.which("mpiexec", path=f"{here}{os.pathsep}{os.environ.get('PATH', '')}")


def _mpi_run(*args):
    import importlib.util
    if TEST_BACKEND != "numpy" or importlib.util.find_spec("mpi4py") is None or \
            _mpiexec() is None:
        pytest.skip("needs the numpy backend, mpi4py and mpiexec (pip install 'tinyllm[mpi]')")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "OMPI_", "MPI_LOCAL", "HYDRA_"))}
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")])
    env["TINYLLM_DIST_TIMEOUT"] = "60"
    proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, *args], capture_output=True,
                          text=True, timeout=180, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_mpi_allreduce_figures_under_mpiexec(tmp_path):
    out = tmp_path / "dp.json"
    _mpi_run("benchmarks/data_parallel.py", "--reps", "3", "--warmup", "1", "--json", str(out))
    got = json.loads(out.read_text())
    assert [r["transport"] for r in got["allreduce"]] == ["mpi fast", "mpi deterministic"]
    assert all(r["ranks"] == 2 and r["params"] == 804_096 and r["median_ms"] > 0
               for r in got["allreduce"])


def test_gpt_step_under_mpiexec():
    text = _mpi_run("benchmarks/gpt_step.py", "--rounds", "1", "--steps", "1", "--warmup", "1",
                    "--batch-size", "2", "--allreduce", "deterministic")
    assert text.count("GPT step") == 1 and "ranks=2, MPI deterministic" in text

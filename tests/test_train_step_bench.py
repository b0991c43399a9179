"""benchmarks/train_step.py: the worker runs, the profile adds up, and the PyTorch twin is the
same model as tinyllm's GPT (same weights, same batch -> the same losses)."""
import math

import pytest

from tests.conftest import load_script


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

"""Run by tests/test_mpi.py under ``mpiexec -n N`` (not collected by pytest): one check per
invocation, named by the first argument; exits 0 when the check holds.

    mpiexec -n 2 python tests/mpi_script.py collectives
    mpiexec -n 2 python tests/mpi_script.py late-rank         # rank 0 names rank 1, aborts
    mpiexec -n 2 python tests/mpi_script.py dying-rank OUT    # rank 1 dies in step 5
    mpiexec -n 2 python tests/mpi_script.py nan-on-rank-1 OUT # rank 1's loss turns NaN
"""
import os
import sys
import time

import numpy as np


def collectives():
    from tinyllm.distributed import create_communicator
    fast = create_communicator("mpi", mode="fast", timeout=60)
    det = create_communicator("mpi", mode="deterministic", timeout=60)
    rank, size = fast.rank, fast.size
    for n in (5, 300_000):
        parts = [np.random.default_rng([n, r]).standard_normal(n).astype(np.float32)
                 for r in range(size)]
        want = parts[0].copy()
        for p in parts[1:]:
            want += p                                   # rank order
        got = parts[rank].copy()
        det.allreduce_(got)
        np.testing.assert_array_equal(got, want)        # deterministic: the bits of rank order
        got = parts[rank].copy()
        fast.allreduce_(got)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        check = got.copy()
        fast.bcast_(check, root=0)                      # every rank holds rank 0's bits
        np.testing.assert_array_equal(check, got)
    b = np.full(4, float(rank))
    det.bcast_(b, root=size - 1)
    np.testing.assert_array_equal(b, np.full(4, size - 1.0))
    agreed = fast.agree([rank + 0.25, 1.0])
    np.testing.assert_array_equal(agreed, [sum(r + 0.25 for r in range(size)), float(size)])
    assert det.bcast_object({"x": [1, 2]} if rank == 0 else None) == {"x": [1, 2]}
    got = det.gather_object(("rank", rank, "x" * rank * 1000))
    if rank == 0:
        assert got == [("rank", r, "x" * r * 1000) for r in range(size)]
    else:
        assert got is None
    fast.barrier()
    if rank == 0:
        print("collectives ok")


def late_rank():
    from tinyllm.distributed import DistributedError, create_communicator
    comm = create_communicator("mpi", timeout=1)
    if comm.rank == 1:
        time.sleep(60)
    try:
        comm.agree([1.0])
    except DistributedError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        comm.abort(3)


def dying_rank(out):
    """Train the tiny preset; rank 1 dies (os._exit) in its sixth forward."""
    from tinyllm import cli, parallel
    real = parallel.DataParallel.forward_backward
    calls = {"n": 0}

    def forward_backward(self, *args, **kwargs):
        calls["n"] += 1
        if self.rank == 1 and calls["n"] == 6:
            os._exit(9)
        return real(self, *args, **kwargs)

    parallel.DataParallel.forward_backward = forward_backward
    sys.exit(cli.run(["train", "--preset", "tiny", "--out-dir", out, "--quiet",
                      "--checkpoint-interval", "4"]))


def nan_on_rank_1(out):
    """Train the tiny preset; rank 1's loss turns NaN at step 5 (so the agreed loss does)."""
    from tinyllm import cli, trainer
    from tinyllm.distributed import launched_rank
    real = trainer.GPT.forward
    seen = {"n": 0}

    def poisoned(self, idx, targets=None, cache=None):
        out = real(self, idx, targets, cache)
        if targets is not None and self.training and launched_rank() == 1:
            seen["n"] += 1
            if seen["n"] > 5:
                return out[0], out[1] * float("nan")
        return out

    trainer.GPT.forward = poisoned
    sys.exit(cli.run(["train", "--preset", "tiny", "--out-dir", out, "--quiet",
                      "--checkpoint-interval", "2"]))


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "collectives":
        collectives()
    elif what == "late-rank":
        late_rank()
    elif what == "dying-rank":
        dying_rank(sys.argv[2])
    elif what == "nan-on-rank-1":
        nan_on_rank_1(sys.argv[2])
    else:
        raise SystemExit(f"unknown check {what!r}")

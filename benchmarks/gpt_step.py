"""Time one GPT training step (forward + backward + AdamW) at the shakespeare-char preset.

    python benchmarks/gpt_step.py                                 # this process
    python benchmarks/gpt_step.py --workers 2                     # 2 local ranks, shared memory
    mpiexec -n 2 python benchmarks/gpt_step.py                    # 2 MPI ranks (mpi4py)
    mpiexec -n 2 python benchmarks/gpt_step.py --allreduce deterministic
    OPENBLAS_NUM_THREADS=1 python benchmarks/gpt_step.py --batch-size 6      # half, one core

4 layers, 4 heads, 128 dims, context 64, batch 12, vocab 65, float32, no dropout, no biases
(the preset's bias=False, as nanoGPT's run; ``--bias`` for biases in Linear and LayerNorm). Three
warm-up steps, then 5 rounds of 10 steps (``--warmup``, ``--rounds``, ``--steps``); rank 0
prints the median ms/step and the transport.

Data parallel as ``tinyllm train`` runs it (``tinyllm.parallel.DataParallel``): every rank
builds the same seeded model and draws the same batches, takes its rows of each global batch,
and the ranks average their gradients (one allreduce of a flat buffer per step); each rank then
steps its own AdamW on that same gradient. ``--workers N`` starts N ranks on this machine
(``tinyllm.distributed.launch``: this process is rank 0, the transport shared memory, summing
in rank order); under ``mpiexec -n N`` the ranks are mpiexec's (``tinyllm.distributed.world``)
and ``--allreduce`` picks MPI's sum: ``fast`` (MPI's Iallreduce) or ``deterministic`` (gather
to rank 0, add in rank order, broadcast). One process (default) takes the batch whole with a
plain ``loss.backward()``, as the CLI does. The batch size must divide by the rank count.
benchmarks/train_step.py compares with PyTorch; benchmarks/data_parallel.py times the allreduce
alone.
"""
import argparse
import statistics
import time

import numpy as np

import tinyllm as tl
from tinyllm import distributed
from tinyllm.models import GPT, GPTConfig
from tinyllm.optim import AdamW
from tinyllm.parallel import DataParallel, broadcast_parameters


def run_rank(comm, rounds=5, steps=10, bias=False, batch_size=12, warmup=3):
    """The benchmark on one rank (``comm``: a communicator, or None for one process). Returns
    the per-round ms/step (rank 0; None on the others)."""
    tl.kernels.prefer_impl("auto")      # the accelerators; TINYLLM_KERNELS=numpy: the references
    tl.backend.keep_freed_memory()              # as the CLI does (see tinyllm/backend.py)
    tl.manual_seed(0)
    config = GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128,
                       dropout=0.0, bias=bias)
    model = GPT(config)
    opt = AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    dp = None
    if comm is not None and comm.size > 1:
        broadcast_parameters(model, comm)
        dp = DataParallel(model, comm)
    rng = np.random.default_rng(0)          # the same batches on every rank

    def step():
        idx = rng.integers(0, 65, (batch_size, 65))
        x, y = idx[:, :-1], idx[:, 1:]
        opt.zero_grad()
        if dp is None:
            _, loss = model(x, y)
            loss.backward()
        else:
            dp.forward_backward(x, y)           # this rank's rows, then the averaged gradient
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - t0) / steps * 1e3)
    return times if comm is None or comm.rank == 0 else None


def main(rounds=5, steps=10, bias=False, batch_size=12, workers=1, allreduce="fast",
         warmup=3, quiet=False):
    """Run the benchmark; returns rank 0's median ms/step (None on other MPI ranks). Under
    mpiexec the ranks are MPI's; else ``workers`` local ranks (1: this process only)."""
    comm = distributed.world(mode=allreduce)
    if comm is not None:
        how = "gather, rank-order sum, broadcast" if comm.deterministic else "Iallreduce"
        transport = f"MPI {allreduce} ({how})"
        with distributed.blas_threads():      # this rank's share, as the CLI's ranks
            times = run_rank(comm, rounds, steps, bias, batch_size, warmup)
        ranks = comm.size
    elif workers > 1:
        transport = "local ranks, shared memory"
        times = distributed.launch(run_rank, workers, rounds, steps, bias,
                                   batch_size, warmup)
        ranks = workers
    else:
        transport, ranks = "one process", 1
        times = run_rank(None, rounds, steps, bias, batch_size, warmup)
    if times is None:
        return None
    ms = statistics.median(times)
    if not quiet:
        print(f"GPT step (shakespeare-char preset, bias={bias}, B={batch_size}, ranks={ranks}, "
              f"{transport}): {ms:.1f} ms  ->  2000 steps {2 * ms:.0f} s")
    return ms


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bias", action="store_true", help="biases in Linear and LayerNorm")
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--workers", type=int, default=1,
                   help="ranks on this machine, over shared memory (default 1: this process "
                   "only); under mpiexec the ranks are mpiexec's -n")
    p.add_argument("--allreduce", choices=["fast", "deterministic"], default=None,
                   help="MPI's gradient sum under mpiexec (default: fast)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--steps", type=int, default=10, help="steps per round (default 10)")
    args = p.parse_args(argv)
    mpi_ranks = distributed.launched_by_mpi()

    def error(message):                 # under mpiexec every rank parsed the same argv
        if distributed.launched_rank() > 0:
            raise SystemExit(2)
        p.error(message)

    if args.workers < 1 or args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        error("--workers, --rounds and --steps must be >= 1, --warmup >= 0")
    if mpi_ranks > 1 and args.workers != 1:
        error(f"under mpiexec the ranks are mpiexec's ({mpi_ranks}); leave out --workers")
    if mpi_ranks <= 1 and args.allreduce is not None:
        error("--allreduce picks MPI's sum and applies under mpiexec -n N (N > 1) only; "
              "--workers ranks (shared memory) always add in rank order")
    ranks = mpi_ranks if mpi_ranks > 1 else args.workers
    if args.batch_size % ranks:
        error(f"--batch-size {args.batch_size} does not split over {ranks} ranks")
    return args


if __name__ == "__main__":
    args = _parse()
    main(args.rounds, args.steps, args.bias, args.batch_size, args.workers,
         args.allreduce or "fast", args.warmup)

"""Data parallelism's communication at the shakespeare-char preset: the time of one gradient
allreduce per transport (measured), and the bytes a step moves (computed).

    python benchmarks/data_parallel.py                    # shared memory, 2 local ranks
    mpiexec -n 2 python benchmarks/data_parallel.py       # MPI, fast and deterministic
    python benchmarks/data_parallel.py --reps 50 --json out.json
    python benchmarks/data_parallel.py --no-measure       # the computed table only

Measured: the gradient exchange of one step as ``tinyllm.parallel.DataParallel`` runs it, for a
float32 gradient the size of the preset's (GPT: 4 layers, 4 heads, 128 dims, context 64, vocab 65,
no biases; P counted from the built model): the pack (one copy of the gradient into the buffer the
transport reads: for shared memory this rank's slot, ``comm.staging``, so the sum reads it where it
was packed; for MPI a private buffer) and ``comm.allreduce_(packed, out=buf)``. Each rep meets the
other ranks at a barrier, then times the exchange on every rank; a rep's time is its slowest rank's.
``--warmup`` reps first (the shared-memory arenas are made in the first), then the median (and 10th
/ 90th percentiles) of ``--reps``. GB/s is the buffer's bytes over that time. Without mpiexec the
transport is shared memory (``tinyllm.distributed.launch``, ``--ranks`` ranks, summing in rank
order); under ``mpiexec -n N`` it is MPI through mpi4py in both modes: "fast" (MPI's Iallreduce) and
"deterministic" (gather to rank 0, add in rank order, broadcast). MPI ranks on one host talk through
MPI's shared-memory channel, not a network.

Computed: bytes per rank per step for the preset and GPT-2 small (124M; its parameter count
from the GPT formula applied to its GPTConfig, without allocating it; the formula is checked
against the preset's built model), for N = 2 and 8 ranks, with each scheme:
- ring allreduce (reduce-scatter, then allgather): every rank sends and receives
  2 (N - 1) / N x 4P bytes;
- deterministic (MPI's "deterministic" mode): rank 0 receives (N - 1) x 4P (the gather) and
  sends (N - 1) x 4P (the broadcast, counted as one copy to each rank: MPI's Ibcast may use a
  tree that sends less from rank 0); every other rank sends 4P and receives 4P;
- shared memory (``--workers``, one machine): every rank writes 4P into its slot and reads
  N x 4P (every slot, its own included); memory traffic, no link.
The time on a 1 Gb/s and a 100 Gb/s link is the bandwidth term only (no latency, no
summation, full-duplex links, one per rank): ring, the bytes a rank sends (its receives run at
the same time); deterministic, rank 0's bytes in and then out (the gather before the
broadcast, both through its link).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

PRESET = dict(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
              bias=False)
GPT2_SMALL = dict(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768,
                  dropout=0.0, bias=True)
RANKS = (2, 8)
LINKS = {"1 Gb/s": 1e9 / 8, "100 Gb/s": 100e9 / 8}          # bytes per second
BYTES = 4                                                   # float32


# ----------------------------------------------------------------------------------------------
# parameter counts

def gpt_params(config):
    """Parameters of ``tinyllm.models.GPT(config)`` (the LM head tied to wte, counted once),
    from the config's fields alone: wte V C + wpe T C + L (12 C^2 + per-block vectors) + ln_f,
    the vectors 13 C with biases (LayerNorm gains and biases, the four Linear biases), 2 C
    without (the LayerNorm gains)."""
    C, L, V, T = config.n_embd, config.n_layer, config.vocab_size, config.block_size
    per_block = 12 * C * C + (13 * C if config.bias else 2 * C)
    return V * C + T * C + L * per_block + (2 * C if config.bias else C)


def preset_params():
    """(P counted from the built preset model, the formula's P); they must agree."""
    import tinyllm as tl
    from tinyllm.models import GPT, GPTConfig
    tl.manual_seed(0)
    config = GPTConfig(**PRESET)
    model = GPT(config)
    counted = sum(p.data.size for p in model.parameters() if p.requires_grad)
    return counted, gpt_params(config)


# ----------------------------------------------------------------------------------------------
# volume (computed)

def volume(params, n):
    """Bytes per rank per step for ``params`` float32 gradients on ``n`` ranks, per scheme,
    with the bandwidth-term time per link (see the module docstring)."""
    b = params * BYTES
    ring = 2 * (n - 1) / n * b
    rows = [
        {"scheme": "ring allreduce", "rank0_sent": ring, "rank0_recv": ring,
         "other_sent": ring, "other_recv": ring, "link_bytes": ring},
        {"scheme": "deterministic (gather + bcast)", "rank0_sent": (n - 1) * b,
         "rank0_recv": (n - 1) * b, "other_sent": b, "other_recv": b,
         "link_bytes": 2 * (n - 1) * b},
        {"scheme": "shm (write / read memory)", "rank0_sent": b, "rank0_recv": n * b,
         "other_sent": b, "other_recv": n * b, "link_bytes": None},
    ]
    for row in rows:
        row.update(ranks=n, params=params, buffer_bytes=b)
        row["seconds"] = {name: (None if row["link_bytes"] is None else row["link_bytes"] / bw)
                          for name, bw in LINKS.items()}
    return rows


def volume_table(models):
    return [dict(row, model=name) for name, params in models.items()
            for n in RANKS for row in volume(params, n)]


def _mb(x):
    return f"{x / 1e6:,.2f}"


def _dur(seconds):
    if seconds is None:
        return "-"
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1e3:.2f} ms"


def print_volume(models, rows, sources):
    print("\ncommunication per step (computed): float32 gradients, B = 4 P bytes")
    for name, params in models.items():
        print(f"  {name:<12}P = {params:>12,}  B = {_mb(params * BYTES):>8} MB  "
              f"({sources[name]})")
    links = list(LINKS)
    print(f"\n{'model':<12}{'N':>3}  {'scheme':<31}{'rank 0 out/in MB':>22}"
          f"{'others out/in MB':>22}" + "".join(f"{k:>12}" for k in links))
    for r in rows:
        r0 = f"{_mb(r['rank0_sent'])} / {_mb(r['rank0_recv'])}"
        ot = f"{_mb(r['other_sent'])} / {_mb(r['other_recv'])}"
        print(f"{r['model']:<12}{r['ranks']:>3}  {r['scheme']:<31}{r0:>22}{ot:>22}" +
              "".join(f"{_dur(r['seconds'][k]):>12}" for k in links))
    print("time: bandwidth term only (bytes / link rate; no latency, no summation), one "
          "full-duplex link per rank:\n  ring, the bytes a rank sends; deterministic, rank 0's "
          "in then out; shm: memory, no link (out = written, in = read)")


# ----------------------------------------------------------------------------------------------
# the allreduce (measured)

def time_allreduce(comm, n, reps, warmup):
    """Every rank: time the gradient exchange of n float32 as ``DataParallel`` runs it, the
    pack (one copy of the gradient into the buffer the transport reads: its shared-memory slot
    with ``staging``, else a private buffer) and ``comm.allreduce_(packed, out=buf)``,
    ``warmup`` + ``reps`` times. Returns, at rank 0, the seconds of each timed rep (its slowest
    rank's); None elsewhere."""
    fresh = np.random.default_rng([7, comm.rank]).standard_normal(n).astype(np.float32)
    buf = np.empty_like(fresh)
    times = []
    for i in range(warmup + reps):
        comm.barrier()
        t0 = time.perf_counter()
        staged = comm.staging(n, np.float32)
        packed = buf if staged is None else staged
        np.copyto(packed, fresh)                    # the pack
        comm.allreduce_(packed, out=buf)
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    every = comm.gather_object(times)
    if every is None:
        return None
    return [max(ts) for ts in zip(*every)]


def summarize(times, n, ranks, transport):
    q = np.percentile(times, [10, 50, 90])
    med = statistics.median(times)
    return {"transport": transport, "ranks": ranks, "params": n, "buffer_bytes": n * BYTES,
            "reps": len(times), "median_ms": med * 1e3, "p10_ms": q[0] * 1e3,
            "p90_ms": q[2] * 1e3, "gb_per_s": n * BYTES / med / 1e9}


def _shm_rank(comm, n, reps, warmup):
    times = time_allreduce(comm, n, reps, warmup)
    return None if times is None else summarize(times, n, comm.size, "shm")


def measure_shm(n, ranks=2, reps=200, warmup=20):
    """The shared-memory transport: ``ranks`` local ranks (this process is rank 0)."""
    from tinyllm.distributed import launch
    return [launch(_shm_rank, ranks, n, reps, warmup)]


def measure_mpi(n, reps=200, warmup=20):
    """Under mpiexec: MPI fast, then deterministic, on every rank; the results at rank 0."""
    from tinyllm.distributed.mpi import MPICommunicator
    out = []
    for mode in ("fast", "deterministic"):
        comm = MPICommunicator(mode=mode)
        times = time_allreduce(comm, n, reps, warmup)
        if times is not None:
            out.append(summarize(times, n, comm.size, f"mpi {mode}"))
    return out


def print_allreduce(results):
    print("\none step's gradient exchange, pack + allreduce (measured; per rep the slowest "
          "rank's time, after a barrier)")
    print(f"{'transport':<20}{'ranks':>6}{'MB':>8}{'reps':>6}{'median ms':>11}"
          f"{'p10 ms':>9}{'p90 ms':>9}{'GB/s':>8}")
    for r in results:
        print(f"{r['transport']:<20}{r['ranks']:>6}{_mb(r['buffer_bytes']):>8}{r['reps']:>6}"
              f"{r['median_ms']:11.3f}{r['p10_ms']:9.3f}{r['p90_ms']:9.3f}{r['gb_per_s']:8.2f}")


# ----------------------------------------------------------------------------------------------

def machine():
    info = {"python": platform.python_version(), "numpy": np.__version__,
            "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f
                                if line.startswith("model name")), platform.processor())
    except OSError:
        info["cpu"] = platform.processor() or platform.machine()
    return info


def main(reps=200, warmup=20, ranks=2, measure=True, json_path=None):
    """Measure (shm, or MPI under mpiexec), compute the volumes, print at rank 0; returns the
    results (None on other MPI ranks)."""
    from tinyllm import distributed
    from tinyllm.models import GPTConfig
    counted, formula = preset_params()
    if counted != formula:
        raise AssertionError(f"the GPT parameter formula gives {formula:,}, the built preset "
                             f"has {counted:,}: update gpt_params")
    mpi = distributed.launched_by_mpi() > 1
    results = []
    if measure:
        results = measure_mpi(counted, reps, warmup) if mpi else \
            measure_shm(counted, ranks, reps, warmup)
    if mpi and distributed.launched_rank() != 0:
        return None
    models = {"preset": counted, "GPT-2 small": gpt_params(GPTConfig(**GPT2_SMALL))}
    sources = {"preset": "counted from the built model; the formula agrees",
               "GPT-2 small": "the formula from its GPTConfig, not allocated"}
    rows = volume_table(models)
    info = machine()
    print("data-parallel communication, shakespeare-char preset gradient (float32)")
    print(f"machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}, numpy "
          f"{info['numpy']}")
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    if results:
        print_allreduce(results)
    if measure and not mpi:
        print("MPI fast and deterministic: mpiexec -n 2 python benchmarks/data_parallel.py")
    print_volume(models, rows, sources)
    out = {"machine": info, "allreduce": results, "params": models,
           "param_sources": sources, "volume": rows}
    if json_path:
        with open(json_path, "w") as f:
            json.dump(out, f, indent=1)
    return out


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=200, help="timed allreduces (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed ones first (default 20)")
    p.add_argument("--ranks", type=int, default=2,
                   help="shared-memory ranks without mpiexec (default 2)")
    p.add_argument("--no-measure", dest="measure", action="store_false",
                   help="only the computed volume table; start no ranks")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.reps < 1 or args.warmup < 1 or args.ranks < 2:
        from tinyllm.distributed import launched_rank
        if launched_rank() > 0:         # under mpiexec rank 0 says it
            raise SystemExit(2)
        p.error("--reps and --warmup must be >= 1, --ranks >= 2")
    return args


if __name__ == "__main__":
    args = _parse()
    main(args.reps, args.warmup, args.ranks, args.measure, args.json)

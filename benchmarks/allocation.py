"""The allocation policy: what keeping freed pages buys in a plain ``import tinyllm`` process.

    python benchmarks/allocation.py [--rounds 3] [--configs base,large]

glibc's malloc hands arrays above its mmap threshold back to the OS when they are freed, and a
new array then page-faults on every 4 KiB page it touches. ``tinyllm.backend.keep_freed_memory``
raises the thresholds (``mallopt``) so freed pages are reused. It changes malloc for the whole
process, so tinyllm never calls it on import; the first ``Tensor.backward`` of a process does
(the memory policy "keep", the default; ``TINYLLM_MALLOC=system`` leaves malloc alone). This
measures both policies, each in its own plain process (``import tinyllm`` and nothing else, the
default kernel switch), alternating, with the minor page faults per step (``ru_minflt``):

- ``(a * b).sum()`` forward + backward at 1M float32 elements (``a.grad = b.grad = None`` first);
- one GPT training step (forward, backward, AdamW) at benchmarks/train_step.py's configs.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(policy, job, steps):
    import tinyllm as tl
    tl.backend.set_memory_policy(policy)
    if job == "mul-sum":
        a, b = tl.randn(1_000_000, requires_grad=True), tl.randn(1_000_000, requires_grad=True)

        def step():
            a.grad = b.grad = None
            (a * b).sum().backward()
        warmup = 10
    else:
        sys.path.insert(0, HERE)
        from train_step import CONFIGS, _batches, _tinyllm_setup, _tinyllm_step
        cfg = CONFIGS[job]
        model, opt = _tinyllm_setup(cfg)
        batches = _batches(cfg)

        def step():
            _tinyllm_step(model, opt, *next(batches)).item()
        warmup = 2
    for _ in range(warmup):
        step()
    times, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(json.dumps({"ms": statistics.median(times) * 1e3, "faults": faults / steps}))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--configs", default="base,large")
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker[0], args.worker[1], int(args.worker[2]))
    jobs = [("mul-sum", 200)] + [(c, 3 if c == "large" else 15) for c in args.configs.split(",")]
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, {os.cpu_count()} cores")
    print(f"{'job':>8} {'system ms':>9} {'keep ms':>8} {'system/keep':>11} "
          f"{'system faults/step':>18} {'keep faults/step':>17}")
    for job, steps in jobs:
        res = {"system": [], "keep": []}
        for r in range(args.rounds):
            for policy in (("system", "keep") if r % 2 == 0 else ("keep", "system")):
                out = subprocess.run([sys.executable, __file__, "--worker", policy, job,
                                      str(steps)], capture_output=True, text=True, check=True)
                res[policy].append(json.loads(out.stdout.strip().splitlines()[-1]))
        med = {k: (statistics.median(x["ms"] for x in v), statistics.median(x["faults"] for x in v))
               for k, v in res.items()}
        print(f"{job:>8} {med['system'][0]:>9.2f} {med['keep'][0]:>8.2f} "
              f"{med['system'][0] / med['keep'][0]:>11.2f} {med['system'][1]:>18.0f} "
              f"{med['keep'][1]:>17.0f}")


if __name__ == "__main__":
    main()

"""What the autograd layer costs on top of the NumPy it calls, and against PyTorch.

    python benchmarks/op_overhead.py [--json benchmarks/op_overhead.json] [--quick]

1. Per-op overhead: ``a * b`` through tinyllm (forward, and forward + backward) against the same
   NumPy expression, at sizes from one element (pure Python overhead) to 1M elements (memory
   bound), in the same process.
2. ``(a * b).sum()`` forward + backward (``a.grad = b.grad = None`` first, as a fresh step),
   tinyllm against PyTorch, each engine in its own plain process: ``import tinyllm`` and nothing
   else (what a user's own script or gradient check gets), PyTorch at its default thread count
   and at 1 thread, and "numpy": the NumPy calls the formulas make, without autograd (the
   floor for tinyllm, whose ufuncs run on one core). Engines alternate, 3 rounds, medians.
3. A 2-layer MLP with cross-entropy, forward + backward, float32, against PyTorch CPU on the same
   weights and batch when torch is installed (after checking both give the same loss).

Each timing is the median of several rounds, the engines interleaved round by round so that
machine noise hits both. Ratios are tinyllm time / reference time: lower is better.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

import tinyllm as tl


def _median_time(fn, repeat, number):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def _interleaved(fns, rounds, number):
    """Median seconds per call of each fn, alternating between them every round."""
    samples = {name: [] for name in fns}
    for fn in fns.values():
        fn()                                                   # warm-up
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(_median_time(fn, 1, number))
    return {name: statistics.median(s) for name, s in samples.items()}


def bench_op_overhead(quick):
    rows = []
    rng = np.random.default_rng(0)
    for n in (1, 10_000, 1_000_000):
        a_np = rng.standard_normal(n).astype(np.float32)
        b_np = rng.standard_normal(n).astype(np.float32)
        a = tl.tensor(a_np, requires_grad=True)
        b = tl.tensor(b_np, requires_grad=True)
        dout = np.ones(n, np.float32)

        def numpy_fwd():
            return a_np * b_np

        def numpy_fwd_bwd():
            a_np * b_np
            return dout * b_np, dout * a_np                     # the hand-written backward

        def tl_fwd():
            with tl.no_grad():
                return a * b

        def tl_fwd_bwd():
            a.grad = b.grad = None
            (a * b).backward(dout)

        number = 2000 if n == 1 else (200 if n == 10_000 else 10)
        if quick:
            number = max(1, number // 10)
        t = _interleaved({"numpy_fwd": numpy_fwd, "tl_fwd": tl_fwd,
                          "numpy_fwd_bwd": numpy_fwd_bwd, "tl_fwd_bwd": tl_fwd_bwd},
                         rounds=5, number=number)
        rows.append({"n": n, **{k: v * 1e6 for k, v in t.items()},
                     "ratio_fwd": t["tl_fwd"] / t["numpy_fwd"],
                     "ratio_fwd_bwd": t["tl_fwd_bwd"] / t["numpy_fwd_bwd"]})
    return rows


def plain_worker(engine, n, number):
    """One engine in this (fresh) process: median seconds of ``(a * b).sum()`` forward +
    backward over 15 repeats of ``number`` calls, printed as JSON."""
    if engine == "numpy":                  # the NumPy the formulas run, without autograd
        a, b = np.random.randn(n).astype(np.float32), np.random.randn(n).astype(np.float32)

        def step():
            (a * b).sum()
            dout = np.broadcast_to(np.ones((), np.float32), a.shape)    # Sum's backward
            return dout * b, dout * a                                    # Mul's backward
    else:
        if engine.startswith("torch"):
            import torch
            if engine == "torch-1":
                torch.set_num_threads(1)
            a, b = torch.randn(n, requires_grad=True), torch.randn(n, requires_grad=True)
        else:
            a, b = tl.randn(n, requires_grad=True), tl.randn(n, requires_grad=True)

        def step():
            a.grad = b.grad = None
            (a * b).sum().backward()

    for _ in range(max(5, number // 10)):
        step()
    print(json.dumps({"seconds": _median_time(step, 15, number)}))


def bench_plain_processes(quick):
    """Section 2: each engine in its own process, alternating which goes first."""
    try:
        import torch  # noqa: F401
        engines = ["tinyllm", "numpy", "torch", "torch-1"]
    except ImportError:
        engines = ["tinyllm", "numpy"]
    rows = []
    for n in (1, 1_000_000):
        number = (200 if quick else 2000) if n == 1 else (10 if quick else 50)
        samples = {e: [] for e in engines}
        for r in range(3):
            for e in (engines if r % 2 == 0 else engines[::-1]):
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", e,
                                      "--n", str(n), "--number", str(number)],
                                     capture_output=True, text=True, check=True)
                samples[e].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
        row = {"n": n, **{e: statistics.median(v) * 1e6 for e, v in samples.items()}}
        for e in engines[1:]:
            row[f"ratio_{e}"] = row["tinyllm"] / row[e]
        rows.append(row)
    return rows


def bench_mlp_vs_torch(quick):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    B, D, H, C = 256, 128, 512, 65
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, D)).astype(np.float32)
    y = rng.integers(0, C, B)
    w1 = (rng.standard_normal((D, H)) / np.sqrt(D)).astype(np.float32)
    w2 = (rng.standard_normal((H, C)) / np.sqrt(H)).astype(np.float32)

    tw1, tw2 = tl.tensor(w1, requires_grad=True), tl.tensor(w2, requires_grad=True)
    tx = tl.tensor(x)
    pw1 = torch.tensor(w1, requires_grad=True)
    pw2 = torch.tensor(w2, requires_grad=True)
    px, py = torch.tensor(x), torch.tensor(y)

    def tl_step():
        tw1.grad = tw2.grad = None
        loss = tl.cross_entropy(tl.gelu(tx @ tw1, approximate="tanh") @ tw2, y)
        loss.backward()
        return loss.item()

    def torch_step():
        pw1.grad = pw2.grad = None
        loss = torch.nn.functional.cross_entropy(
            torch.nn.functional.gelu(px @ pw1, approximate="tanh") @ pw2, py)
        loss.backward()
        return loss.item()

    l1, l2 = tl_step(), torch_step()
    grads_agree = np.allclose(tw1.grad, pw1.grad.numpy(), rtol=1e-3, atol=1e-5)
    if abs(l1 - l2) > 1e-4 * max(1.0, abs(l2)) or not grads_agree:
        raise SystemExit(f"MLP check failed before timing: loss {l1} vs torch {l2}")
    t = _interleaved({"tinyllm": tl_step, "torch": torch_step}, rounds=5,
                     number=5 if quick else 20)
    return {"shape": f"B={B} D={D} H={H} C={C}", "tinyllm_ms": t["tinyllm"] * 1e3,
            "torch_ms": t["torch"] * 1e3, "ratio": t["tinyllm"] / t["torch"],
            "torch_version": torch.__version__}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="benchmarks/op_overhead.json")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--number", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return plain_worker(args.worker, args.n, args.number)     # a plain import: no switch
    tl.kernels.prefer_impl("auto")      # the accelerators; TINYLLM_KERNELS=numpy: the formulas

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"numpy {np.__version__}, python {platform.python_version()}")
    rows = bench_op_overhead(args.quick)
    print("\nper-op cost of a * b (float32), microseconds per call, median of 5 interleaved "
          "rounds")
    print(f"{'elements':>10} {'numpy fwd':>10} {'tl fwd':>10} {'ratio':>7} "
          f"{'numpy f+b':>10} {'tl f+b':>10} {'ratio':>7}")
    for r in rows:
        print(f"{r['n']:>10} {r['numpy_fwd']:>10.2f} {r['tl_fwd']:>10.2f} {r['ratio_fwd']:>7.2f} "
              f"{r['numpy_fwd_bwd']:>10.2f} {r['tl_fwd_bwd']:>10.2f} {r['ratio_fwd_bwd']:>7.2f}")
    plain = bench_plain_processes(args.quick)
    print("\n(a * b).sum() forward + backward, each engine in its own plain process, "
          "microseconds per step, median of 3 rounds")
    for r in plain:
        cols = "  ".join(f"{k} {v:.2f}" for k, v in r.items() if k != "n")
        print(f"{r['n']:>10}  {cols}")
    mlp = bench_mlp_vs_torch(args.quick)
    if mlp is None:
        print("\nMLP vs PyTorch: skipped (torch not installed)")
    else:
        print(f"\nMLP forward+backward ({mlp['shape']}, gelu-tanh, cross-entropy, float32): "
              f"tinyllm {mlp['tinyllm_ms']:.2f} ms, torch {mlp['torch_ms']:.2f} ms "
              f"(torch {mlp['torch_version']}), ratio {mlp['ratio']:.2f}")
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"op_overhead": rows, "plain_processes": plain, "mlp_vs_torch": mlp}, f,
                      indent=2)
        os.replace(args.json + ".tmp", args.json)
    return {"op_overhead": rows, "plain_processes": plain, "mlp_vs_torch": mlp}


if __name__ == "__main__":
    main()

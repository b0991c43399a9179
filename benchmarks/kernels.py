"""Numba kernels against their NumPy references: validate, then time.

    python benchmarks/kernels.py [--quick] [--cold] [--json benchmarks/kernels.json]

For each kernel and shape: run the reference and the Numba kernel once and check they agree
(abort otherwise), then time forward + backward of each, interleaved round by round (so machine
noise hits both), and report medians, the speed-up, the issue's target and the first call's
time (which includes compilation when no Numba cache exists: ``--cold`` points NUMBA_CACHE_DIR
at an empty directory to measure that). The matmul rows come from benchmarks/bench_matmul.py
when it exists.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np


def _timed(fn, number):
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def compare(name, shape, make, target, rounds, number, tol):
    """make(impl) -> (callable running forward + backward, callable returning outputs)."""
    run_ref, out_ref = make("numpy")
    t0 = time.perf_counter()
    run_nb, out_nb = make("numba")
    run_nb()
    first_call = time.perf_counter() - t0
    for a, b in zip(out_ref(), out_nb()):
        scale = max(1.0, float(np.abs(a).max()))
        err = float(np.abs(a - b).max())
        if not err <= tol * scale:
            raise SystemExit(f"{name} {shape}: Numba differs from the reference by {err:g}")
    run_ref()
    ref_t, nb_t = [], []
    for _ in range(rounds):
        ref_t.append(_timed(run_ref, number))
        nb_t.append(_timed(run_nb, number))
    ref_ms, nb_ms = statistics.median(ref_t) * 1e3, statistics.median(nb_t) * 1e3
    return {"kernel": name, "shape": str(shape), "numpy_ms": ref_ms, "numba_ms": nb_ms,
            "speedup": ref_ms / nb_ms, "target": target, "first_call_s": first_call}


def cases(quick):
    from tinyllm.kernels import adam as AD
    from tinyllm.kernels import attention as A
    from tinyllm.kernels import cross_entropy as CE
    from tinyllm.kernels import embedding as E
    from tinyllm.kernels import gelu as G
    from tinyllm.kernels import layernorm as LN
    from tinyllm.kernels import softmax as S

    rng = np.random.default_rng(0)
    f32 = np.float32

    def softmax(shape):
        x = rng.standard_normal(shape).astype(f32)
        dy = rng.standard_normal(shape).astype(f32)

        def make(impl):
            res = {}

            def run():
                res["y"] = S.softmax_forward(x, impl=impl)
                res["dx"] = S.softmax_backward(res["y"], dy, impl=impl)
            run()
            return run, lambda: (res["y"], res["dx"])
        return make

    def cross_entropy(shape):
        N, C = shape
        z = rng.standard_normal(shape).astype(f32)
        t = rng.integers(0, C, N)
        dloss = np.full(N, 1.0 / N, f32)

        def make(impl):
            res = {}

            def run():
                res["loss"], lse = CE.cross_entropy_forward(z, t, impl=impl)
                res["dz"] = CE.cross_entropy_backward(z, t, lse, dloss, impl=impl)
            run()
            return run, lambda: (res["loss"], res["dz"])
        return make

    def layer_norm(shape):
        x = rng.standard_normal(shape).astype(f32)
        w, b = rng.standard_normal(shape[1]).astype(f32), rng.standard_normal(shape[1]).astype(f32)
        dy = rng.standard_normal(shape).astype(f32)

        def make(impl):
            res = {}

            def run():
                res["y"], mu, rstd = LN.layer_norm_forward(x, w, b, impl=impl)
                res["g"] = LN.layer_norm_backward(dy, x, w, mu, rstd, impl=impl)
            run()
            return run, lambda: (res["y"],) + tuple(res["g"])
        return make

    def gelu(shape, approximate):
        x = rng.standard_normal(shape).astype(f32)
        dy = rng.standard_normal(shape).astype(f32)

        def make(impl):
            res = {}

            def run():
                res["y"] = G.gelu_forward(x, approximate, impl=impl)
                res["dx"] = G.gelu_backward(x, dy, approximate, impl=impl)
            run()
            return run, lambda: (res["y"], res["dx"])
        return make

    def embedding(N, C, V):
        idx = rng.integers(0, V, N)
        dout = rng.standard_normal((N, C)).astype(f32)

        def make(impl):
            res = {}

            def run():
                res["dw"] = E.embedding_backward(idx, dout, V, impl=impl)
            run()
            return run, lambda: (res["dw"],)
        return make

    def attention(B, H, T, D):
        """Causal attention on the thirds of a packed qkv (B, T, 3, H, D), as GPT's layer."""
        qkv = rng.standard_normal((B, T, 3, H, D)).astype(f32)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))   # (B, H, T, D)
        dout = rng.standard_normal((B, H, T, D)).astype(f32)
        scale = 1 / np.sqrt(D)

        def make(impl):
            res = {}

            def run():
                res["o"], p = A.attention_forward(q, k, v, scale, True, impl=impl)
                res["g"] = A.attention_backward(dout, q, k, v, p, scale, impl=impl)
            run()
            return run, lambda: (res["o"],) + tuple(res["g"])
        return make

    def adamw(n):
        p0, g = rng.standard_normal(n).astype(f32), rng.standard_normal(n).astype(f32)

        def make(impl):
            p, m, v = p0.copy(), np.zeros(n, f32), np.zeros(n, f32)

            def run():
                AD.adam_step(p, g, m, v, 1e-3, 0.9, 0.99, 1e-8, 0.1, 1, True, impl=impl)
            run()
            first = (p.copy(), m.copy(), v.copy())       # compared: the same first step
            return run, lambda: first
        return make

    # (name, shape, maker, target speed-up from the issue or None, calls per round, tolerance)
    return [
        ("softmax fwd+bwd", (16384, 256), softmax((16384, 256)), 3.0, 3, 1e-5),
        ("softmax fwd+bwd", (1024, 64), softmax((1024, 64)), None, 50, 1e-5),
        ("softmax fwd+bwd", (64, 64, 64), softmax((64, 64, 64)), None, 20, 1e-5),
        ("cross_entropy fwd+bwd", (8192, 65), cross_entropy((8192, 65)), 2.0, 20, 1e-5),
        ("cross_entropy fwd+bwd", (2048, 50257 // 8), cross_entropy((2048, 50257 // 8)), 2.0,
         2, 1e-5),
        ("layer_norm fwd+bwd", (1024, 128), layer_norm((1024, 128)), None, 50, 1e-4),
        ("layer_norm fwd+bwd", (4096, 384), layer_norm((4096, 384)), None, 5, 1e-4),
        ("gelu tanh fwd+bwd", (1024, 512), gelu((1024, 512), "tanh"), None, 10, 1e-5),
        ("gelu tanh fwd+bwd", (4096, 1536), gelu((4096, 1536), "tanh"), None, 2, 1e-5),
        ("gelu erf fwd+bwd", (1024, 512), gelu((1024, 512), "none"), None, 10, 1e-5),
        ("embedding bwd (V=65)", (1024, 128), embedding(1024, 128, 65), None, 20, 1e-5),
        ("embedding bwd (V=6282)", (8192, 384), embedding(8192, 384, 6282), None, 2, 1e-5),
        ("attention causal fwd+bwd", (12, 4, 64, 32), attention(12, 4, 64, 32), None, 10, 1e-5),
        ("attention causal fwd+bwd", (16, 6, 256, 64), attention(16, 6, 256, 64), None, 1,
         1e-5),
        ("adamw step", (1 << 20,), adamw(1 << 20), None, 5, 1e-5),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--cold", action="store_true",
                        help="compile from scratch (empty NUMBA_CACHE_DIR) to time compilation")
    parser.add_argument("--json", default="benchmarks/kernels.json")
    args = parser.parse_args(argv)
    if args.cold:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="tinyllm-numba-")
    import numba

    from tinyllm.kernels import _numba

    rounds = 3 if args.quick else 7
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
          f"threads {numba.get_num_threads()}, OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(default)')}")
    rows = []
    for name, shape, make, target, number, tol in cases(args.quick):
        rows.append(compare(name, shape, make, target, rounds,
                            max(1, number // 3) if args.quick else number, tol))
        r = rows[-1]
        print(f"  measured {r['kernel']} {r['shape']}", file=sys.stderr)
    print(f"threading layer: {numba.threading_layer()}, fastmath {sorted(_numba.FASTMATH)}")
    print(f"\n{'kernel':<24}{'shape':>16}{'numpy ms':>10}{'numba ms':>10}{'speedup':>9}"
          f"{'target':>8}{'1st call s':>11}")
    for r in rows:
        target = f"{r['target']:.1f}x" if r["target"] else "-"
        print(f"{r['kernel']:<24}{r['shape']:>16}{r['numpy_ms']:>10.3f}{r['numba_ms']:>10.3f}"
              f"{r['speedup']:>8.2f}x{target:>8}{r['first_call_s']:>11.2f}")
    result = {"kernels": rows}
    try:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import bench_matmul
    except ImportError:
        bench_matmul = None
    if bench_matmul is not None:
        print("\nmatmul (benchmarks/bench_matmul.py):")
        result["matmul"] = bench_matmul.main(["--quick"] if args.quick else [])
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(result, f, indent=2, default=str)
        os.replace(args.json + ".tmp", args.json)
    return result


if __name__ == "__main__":
    main()

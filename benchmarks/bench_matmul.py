"""The teaching Numba matmul (tinyllm/kernels/matmul.py) against NumPy's BLAS (OpenBLAS), float32.

    python benchmarks/bench_matmul.py [--quick] [--no-coretype]

For every shape: check the Numba result against NumPy first (raise if they differ), then time
both, interleaved round by round so that noise from other work on the machine hits both, and
report medians. GFLOP/s counts 2*M*N*K per product. "compile s" is the first call of the
Numba path in this process (compilation, or loading from Numba's on-disk cache).

OpenBLAS picks its kernels at load time; on an AVX-512 CPU this build may pick its AVX2
("Haswell") kernels. ``OPENBLAS_CORETYPE=SkylakeX`` forces the AVX-512 ones; it must be set
before NumPy is imported, so main() reruns this script in a subprocess with it set and prints
that second NumPy baseline too.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

# ---------------------------------------------------------------------------------------------
# shapes: (name, a shape, b shape)

SHAPES = [
    ("square 128", (128, 128), (128, 128)),
    ("square 256", (256, 256), (256, 256)),
    ("square 512", (512, 512), (512, 512)),
    ("square 1024", (1024, 1024), (1024, 1024)),
    ("batched 512x64x64", (512, 64, 64), (512, 64, 64)),
    ("batched 64x128x64", (64, 128, 64), (64, 64, 128)),
    ("attention (64,64,32)", (16 * 4, 64, 32), (16 * 4, 32, 64)),
    ("GPT qkv (1024,128)@(128,384)", (16 * 64, 128), (128, 384)),
]


def _flops(sa, sb):
    batch = int(np.prod(np.broadcast_shapes(sa[:-2], sb[:-2]), dtype=np.int64))
    return 2.0 * batch * sa[-2] * sa[-1] * sb[-1]


def _time_call(fn, min_seconds):
    """Seconds per call: repeat fn until min_seconds have passed, return the mean."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return dt / n


def bench_shape(name, sa, sb, dtype, rounds, min_seconds):
    from tinyllm.kernels.matmul import matmul
    rng = np.random.default_rng(0)
    a = rng.standard_normal(sa).astype(dtype)
    b = rng.standard_normal(sb).astype(dtype)

    t0 = time.perf_counter()
    out = matmul(a, b)                                   # first call: compile or cache load
    compile_s = time.perf_counter() - t0
    ref = np.matmul(a, b)
    scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    tol = (1e-5 if dtype == np.float32 else 1e-12) * scale
    if out.shape != ref.shape or not (np.abs(out - ref) <= tol).all():
        raise AssertionError(f"bench_matmul: numba result wrong for {name} {sa} @ {sb}")

    fns = {"numpy": lambda: np.matmul(a, b), "numba": lambda: matmul(a, b)}
    for fn in fns.values():                              # warm-up
        fn()
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            samples[k].append(_time_call(fn, min_seconds))
    t_np = statistics.median(samples["numpy"])
    t_nb = statistics.median(samples["numba"])
    flops = _flops(sa, sb)
    return {
        "shape": name, "a": sa, "b": sb, "dtype": np.dtype(dtype).name,
        "ms_numpy": t_np * 1e3, "ms_numba": t_nb * 1e3, "speedup": t_np / t_nb,
        "gflops_numpy": flops / t_np / 1e9, "gflops_numba": flops / t_nb / 1e9,
        "numba_pct_of_blas": 100.0 * t_np / t_nb, "compile_s": compile_s,
    }


def run(quick=False):
    """Benchmark every shape; a list of dicts (see bench_shape)."""
    rounds, min_seconds = (3, 0.02) if quick else (7, 0.05)
    return [bench_shape(name, sa, sb, np.float32, rounds, min_seconds)
            for name, sa, sb in SHAPES]


def openblas_corename():
    """The kernel family OpenBLAS chose at load time ("Haswell", "SkylakeX", ...), or "?"."""
    import ctypes
    try:
        libs = [w for w in open("/proc/self/maps").read().split() if "openblas" in w]
        lib = ctypes.CDLL(libs[0])
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                     "openblas_get_corename64_", "openblas_get_corename"):
            if hasattr(lib, name):
                fn = getattr(lib, name)
                fn.restype = ctypes.c_char_p
                return fn().decode()
    except (OSError, IndexError):
        pass
    return "?"


def format_table(rows, title):
    head = (f"{'shape':<30} {'dtype':<8} {'ms numpy':>9} {'ms numba':>9} {'speedup':>8} "
            f"{'GF/s np':>8} {'GF/s nb':>8} {'nb % BLAS':>9} {'compile s':>9}")
    lines = [title, head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['shape']:<30} {r['dtype']:<8} {r['ms_numpy']:>9.3f} "
                     f"{r['ms_numba']:>9.3f} "
                     f"{r['speedup']:>7.2f}x {r['gflops_numpy']:>8.1f} {r['gflops_numba']:>8.1f} "
                     f"{r['numba_pct_of_blas']:>8.0f}% {r['compile_s']:>9.2f}")
    return "\n".join(lines)


def _coretype_baseline(quick):
    """NumPy GF/s per shape in a subprocess with OPENBLAS_CORETYPE=SkylakeX."""
    code = ("import sys, json; sys.path[:0] = [%r, %r]\n"
            "import numpy as np, bench_matmul as bm\n"
            "rounds, ms = (3, 0.02) if %r else (7, 0.05)\n"
            "out = []\n"
            "for name, sa, sb in bm.SHAPES:\n"
            "    rng = np.random.default_rng(0)\n"
            "    a = rng.standard_normal(sa).astype(np.float32)\n"
            "    b = rng.standard_normal(sb).astype(np.float32)\n"
            "    np.matmul(a, b)\n"
            "    t = sorted(bm._time_call(lambda: np.matmul(a, b), ms) for _ in range(rounds))\n"
            "    out.append(bm._flops(sa, sb) / t[len(t) // 2] / 1e9)\n"
            "print(json.dumps([bm.openblas_corename(), out]))\n")
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, OPENBLAS_CORETYPE="SkylakeX")
    res = subprocess.run([sys.executable, "-c", code % (here, os.path.dirname(here), quick)],
                         env=env, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        return None, res.stderr.strip().splitlines()[-1:]
    import json
    core, gf = json.loads(res.stdout.strip().splitlines()[-1])
    return gf, core


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    p.add_argument("--no-coretype", action="store_true",
                   help="skip the OPENBLAS_CORETYPE=SkylakeX baseline")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    coretype = os.environ.get("OPENBLAS_CORETYPE", "(auto)")
    rows = run(quick=args.quick)
    print(format_table(rows, f"float32 matmul, NumPy {np.__version__} "
                             f"(OPENBLAS_CORETYPE={coretype}, kernels "
                             f"{openblas_corename()}) vs Numba"))
    if not args.no_coretype:
        gf, info = _coretype_baseline(args.quick)
        print()
        if gf is None:
            print("OPENBLAS_CORETYPE=SkylakeX run failed:", info)
        else:
            print(f"NumPy BLAS baselines, GF/s (numba as % of each); OpenBLAS kernels: "
                  f"default {openblas_corename()}, with OPENBLAS_CORETYPE=SkylakeX {info}")
            print(f"{'shape':<30} {'default':>8} {'SkylakeX':>9} {'numba':>8} "
                  f"{'% dflt':>7} {'% SkX':>7}")
            for r, g in zip(rows, gf):
                print(f"{r['shape']:<30} {r['gflops_numpy']:>8.1f} {g:>9.1f} "
                      f"{r['gflops_numba']:>8.1f} {r['numba_pct_of_blas']:>6.0f}% "
                      f"{100 * r['gflops_numba'] / g:>6.0f}%")
    print(f"\n(total {time.perf_counter() - t0:.1f} s)")
    return rows


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()

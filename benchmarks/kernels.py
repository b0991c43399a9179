"""Numba kernels against their ops' formulas: validate, then time.

    python benchmarks/kernels.py [--quick] [--cold] [--fresh-pages] [--json FILE]

For each op with an accelerator and each shape: run the op's forward + backward on raw arrays
with the switch off (``using("numpy")``: the formula in the op) and on (``using("numba")``: the
Numba kernel beside it) once and check they agree (abort otherwise), then time both,
interleaved round by round (so machine noise hits both), and report medians, the speed-up, the
issue's target and the first call's time (which includes compilation when no Numba cache
exists: ``--cold`` points NUMBA_CACHE_DIR at an empty directory to measure that). The matmul
rows come from benchmarks/bench_matmul.py when it exists.

As the ``tinyllm`` command does, the process first calls ``tinyllm.backend.keep_freed_memory()``
so that freed arrays' pages are reused; ``--fresh-pages`` leaves glibc's default, under which
most large arrays land on new pages that the OS zero-fills on first touch (at (16384, 256)
float32 that costs both sides several ms, more than the Numba softmax's own work).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np


def _timed(fn, number):
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def compare(name, shape, make, target, rounds, number, tol):
    """make(impl) -> (callable running forward + backward, callable returning outputs); impl
    "numpy" runs the op's formula, "numba" its kernel."""
    run_ref, out_ref = make("numpy")
    t0 = time.perf_counter()
    run_nb, out_nb = make("numba")
    run_nb()
    first_call = time.perf_counter() - t0
    for a, b in zip(out_ref(), out_nb()):
        scale = max(1.0, float(np.abs(a).max()))
        err = float(np.abs(a - b).max())
        if not err <= tol * scale:
            raise SystemExit(f"{name} {shape}: Numba differs from the formula by {err:g}")
    run_ref()
    ref_t, nb_t = [], []
    for _ in range(rounds):
        ref_t.append(_timed(run_ref, number))
        nb_t.append(_timed(run_nb, number))
    ref_ms, nb_ms = statistics.median(ref_t) * 1e3, statistics.median(nb_t) * 1e3
    return {"kernel": name, "shape": str(shape), "numpy_ms": ref_ms, "numba_ms": nb_ms,
            "speedup": ref_ms / nb_ms, "target": target, "first_call_s": first_call}


def _op(cls, n_inputs=1):
    """A Function instance to call forward and backward on raw arrays."""
    return cls(*[SimpleNamespace(requires_grad=True)] * n_inputs)


def cases(quick):
    from tinyllm import kernels, optim
    from tinyllm import tensor as make_tensor
    from tinyllm.ops.attention import ScaledDotProductAttention
    from tinyllm.ops.elementwise import GELU
    from tinyllm.ops.embedding import Embedding
    from tinyllm.ops.loss import CrossEntropy
    from tinyllm.ops.norm import LayerNorm
    from tinyllm.ops.softmax import Softmax

    rng = np.random.default_rng(0)
    f32 = np.float32

    def maker(forward_backward):
        """make(impl) for a callable (res: dict) -> None that runs the op and fills res."""
        def make(impl):
            res = {}

            def run():
                with kernels.using(impl):
                    forward_backward(res)
            run()
            return run, lambda: res["out"]
        return make

    def softmax(shape):
        x = rng.standard_normal(shape).astype(f32)
        dout = rng.standard_normal(shape).astype(f32)

        def run(res):
            op = _op(Softmax)
            y = op.forward(x)
            res["out"] = (y, op.backward(dout))
        return maker(run)

    def cross_entropy(shape):
        N, C = shape
        z = rng.standard_normal(shape).astype(f32)
        t = rng.integers(0, C, N)
        dout = np.ones((), f32)

        def run(res):
            op = _op(CrossEntropy)
            loss = op.forward(z, target=t)                      # reduction="mean"
            res["out"] = (loss, op.backward(dout))
        return maker(run)

    def layer_norm(shape):
        x = rng.standard_normal(shape).astype(f32)
        w, b = rng.standard_normal(shape[1]).astype(f32), rng.standard_normal(shape[1]).astype(f32)
        dout = rng.standard_normal(shape).astype(f32)

        def run(res):
            op = _op(LayerNorm, 3)
            y = op.forward(x, w, b)
            res["out"] = (y,) + tuple(op.backward(dout))
        return maker(run)

    def gelu(shape, approximate):
        x = rng.standard_normal(shape).astype(f32)
        dout = rng.standard_normal(shape).astype(f32)

        def run(res):
            op = _op(GELU)
            y = op.forward(x, approximate)
            res["out"] = (y, op.backward(dout))
        return maker(run)

    def embedding(N, C, V):
        idx = rng.integers(0, V, N)
        w = np.zeros((V, C), f32)
        dout = rng.standard_normal((N, C)).astype(f32)

        def run(res):
            op = _op(Embedding)
            op.forward(w, idx=idx)
            res["out"] = (op.backward(dout),)
        return maker(run)

    def attention(B, H, T, D):
        """Causal attention on the thirds of a packed qkv (B, T, 3, H, D), as GPT's layer."""
        qkv = rng.standard_normal((B, T, 3, H, D)).astype(f32)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))   # (B, H, T, D)
        dout = rng.standard_normal((B, H, T, D)).astype(f32)

        def run(res):
            op = _op(ScaledDotProductAttention, 3)
            out = op.forward(q, k, v, causal=True)
            res["out"] = (out,) + tuple(op.backward(dout))
        return maker(run)

    def adamw(n):
        p0, g = rng.standard_normal(n).astype(f32), rng.standard_normal(n).astype(f32)

        def make(impl):
            param = make_tensor(p0, requires_grad=True)
            param.grad = g
            opt = optim.AdamW([param], lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)

            def run():
                with kernels.using(impl):
                    opt.step()
            run()
            state = opt.state[param]
            first = (param.data.copy(), state["exp_avg"].copy(), state["exp_avg_sq"].copy())
            return run, lambda: first                    # compared: the same first step
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
    parser.add_argument("--fresh-pages", action="store_true",
                        help="do not call tinyllm.backend.keep_freed_memory() (glibc's default)")
    parser.add_argument("--json", default="benchmarks/kernels.json")
    args = parser.parse_args(argv)
    if args.cold:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="tinyllm-numba-")
    import numba

    from tinyllm import backend
    from tinyllm.kernels import _numba

    kept = False if args.fresh_pages else backend.keep_freed_memory()

    rounds = 3 if args.quick else 7
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
          f"threads {numba.get_num_threads()}, OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(default)')}, keep_freed_memory {kept}")
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
    result = {"kernels": rows, "keep_freed_memory": kept}
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

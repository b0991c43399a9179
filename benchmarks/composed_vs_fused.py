"""Composed vs fused backward: softmax + cross-entropy, LayerNorm and attention, each through
primitive ops (the chain rule op by op) and through one fused op with a hand-derived backward.

    python benchmarks/composed_vs_fused.py [--repeat 100] [--dtype float32|float64]
        [--ce N,V] [--ln B,T,C] [--attn B,H,T,D] [--kernels auto|numpy|numba]

For each case:
1. validate, in float64: the two paths' outputs and every input gradient agree (max |diff|);
2. count the graph's nodes and the bytes its nodes saved for backward
   (``tinyllm.autograd.graph.nodes`` / ``saved_bytes``, taken before backward frees them), and
   the peak of the memory NumPy allocates during forward + backward (tracemalloc);
3. time forward + backward in --dtype: the median of --repeat runs after a warm-up, the two
   paths interleaved run by run so that machine noise hits both.

The paths (the builders are imported by tests/test_composed_vs_fused.py):
- cross-entropy, composed: z = logits - rowmax (a constant: softmax does not change when a row
  is shifted), logp = z - log(sum(exp(z))), loss = -mean(logp[n, target_n]); fused:
  ``F.cross_entropy`` (``CrossEntropy``, backward p - y, tinyllm/ops/loss.py);
- LayerNorm, composed: mean, subtract, mean of squares, add eps, sqrt, divide, times weight,
  plus bias; fused: ``F.layer_norm`` (``LayerNorm``, tinyllm/ops/norm.py);
- attention, causal, composed: ``nn.attention.scaled_dot_product_attention`` (transpose,
  matmul, scale, masked_fill, softmax, matmul); fused: ``F.attention``
  (``ScaledDotProductAttention``, tinyllm/ops/attention.py).
"""
import argparse
import os
import platform
import statistics
import time
import tracemalloc

import numpy as np

import tinyllm
import tinyllm.functional as F
from tinyllm import kernels
from tinyllm.autograd import graph
from tinyllm.nn.attention import causal_mask, scaled_dot_product_attention

DEFAULT_SHAPES = {"cross_entropy": (768, 65),          # (B*T, V): 12 x 64 characters, 65 of them
                  "layer_norm": (12, 64, 128),         # (B, T, C)
                  "attention": (12, 4, 64, 32)}        # (B, H, T, D)


# ----------------------------------------------------------------------------------------------
# the two paths of each case

def cross_entropy_composed(logits, target):
    """Mean cross-entropy from primitive ops. logits (N, V), target (N,) ints -> ()."""
    N = logits.shape[0]
    m = logits.data.max(axis=-1, keepdims=True)                  # (N, 1) raw array: a constant
    z = logits - m                                               # (N, V) every exponent <= 0
    logp = z - z.exp().sum(axis=-1, keepdims=True).log()        # (N, V) log softmax
    return -logp[np.arange(N), target].mean()                    # () pick the targets, average


def cross_entropy_fused(logits, target):
    return F.cross_entropy(logits, target)


def layer_norm_composed(x, w, b, eps=1e-5):
    """LayerNorm over the last axis from primitive ops. x (..., C), w, b (C,) -> like x."""
    xc = x - x.mean(axis=-1, keepdims=True)                      # (..., C)
    var = (xc * xc).mean(axis=-1, keepdims=True)                 # (..., 1)
    xhat = xc / (var + eps).sqrt()                               # (..., C)
    return xhat * w + b


def layer_norm_fused(x, w, b, eps=1e-5):
    return F.layer_norm(x, x.shape[-1], w, b, eps)


def attention_composed(q, k, v):
    """Causal attention op by op. q, k, v (B, H, T, D) -> (B, H, T, D)."""
    T = q.shape[2]
    return scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, T))[0]


def attention_fused(q, k, v):
    return F.attention(q, k, v, causal=True)


PATHS = {"cross_entropy": (cross_entropy_composed, cross_entropy_fused),
         "layer_norm": (layer_norm_composed, layer_norm_fused),
         "attention": (attention_composed, attention_fused)}
COMPARED = {"cross_entropy": ("loss", "dlogits"),        # the output, then each input's gradient
            "layer_norm": ("y", "dx", "dw", "db"),
            "attention": ("out", "dq", "dk", "dv")}


def make_inputs(case, shape, dtype=np.float64, seed=0):
    """The arguments of both paths of ``case``: leaf Tensors that require grad (and, for
    cross-entropy, the integer targets), drawn from a seeded generator."""
    rng = np.random.default_rng(seed)

    def leaf(a):
        return tinyllm.tensor(np.asarray(a, dtype=dtype), requires_grad=True)

    if case == "cross_entropy":
        N, V = shape
        return [leaf(rng.standard_normal((N, V)) * 2), rng.integers(0, V, N)]
    if case == "layer_norm":
        C = shape[-1]
        return [leaf(rng.standard_normal(shape) * 3 + 1), leaf(1 + 0.1 * rng.standard_normal(C)),
                leaf(0.1 * rng.standard_normal(C))]
    if case == "attention":
        return [leaf(rng.standard_normal(shape)) for _ in range(3)]
    raise ValueError(f"composed_vs_fused: unknown case {case!r}; expected one of {list(PATHS)}")


def upstream(out, seed=1):
    """dL/dout for ``out.backward``: None (= 1) for a scalar, else a fixed random array."""
    if out.size == 1:
        return None
    rng = np.random.default_rng(seed)
    return rng.standard_normal(out.shape).astype(out.dtype)


def leaves(args):
    return [a for a in args if isinstance(a, tinyllm.Tensor)]


def run(fn, args, dout=None):
    """Forward + backward of ``fn(*args)``: (output array, [input gradients], graph info)."""
    for t in leaves(args):
        t.grad = None
    out = fn(*args)
    info = {"nodes": len(graph.nodes(out)), "saved_bytes": graph.saved_bytes(out),
            "ops": [type(n).__name__ for n in graph.nodes(out)]}
    out.backward(upstream(out) if dout is None else dout)
    return out.data, [t.grad for t in leaves(args)], info


# ----------------------------------------------------------------------------------------------
# measuring

def validate(case, shape):
    """Both paths in float64 on the same inputs: {name: max |composed - fused|} for the output
    and every input gradient (names from COMPARED)."""
    args = make_inputs(case, shape, np.float64)
    composed, fused = PATHS[case]
    out_c, grads_c, _ = run(composed, args)
    out_f, grads_f, _ = run(fused, args)
    pairs = [(out_c, out_f)] + list(zip(grads_c, grads_f))
    return {name: float(np.max(np.abs(c - f))) for name, (c, f) in zip(COMPARED[case], pairs)}


def peak_bytes(fn, args):
    """Peak of the memory traced during one forward + backward, above what was live before
    (NumPy reports its array buffers to tracemalloc)."""
    out = fn(*args)
    dout = upstream(out)
    del out
    for t in leaves(args):
        t.grad = None
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn(*args).backward(dout)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak - base


def time_both(case, shape, dtype, repeat):
    """Median ms of forward + backward of each path, interleaved, after a warm-up."""
    args = make_inputs(case, shape, dtype)
    fns = dict(zip(("composed", "fused"), PATHS[case]))
    douts = {name: upstream(fn(*args)) for name, fn in fns.items()}
    samples = {name: [] for name in fns}

    def once(name):
        for t in leaves(args):
            t.grad = None
        t0 = time.perf_counter()
        fns[name](*args).backward(douts[name])
        return time.perf_counter() - t0

    for name in fns:                                      # warm-up (Numba compiles, caches)
        for _ in range(3):
            once(name)
    for _ in range(repeat):
        for name in fns:
            samples[name].append(once(name))
    peaks = {name: peak_bytes(fn, args) for name, fn in fns.items()}
    return {name: 1e3 * statistics.median(s) for name, s in samples.items()}, peaks


def measure(shapes, dtype=np.float32, repeat=100):
    """One row per (case, path): nodes, saved bytes, peak bytes, ms, max |diff|."""
    rows = []
    for case, shape in shapes.items():
        diffs = validate(case, shape)
        ms, peaks = time_both(case, shape, dtype, repeat)
        for path, fn in zip(("composed", "fused"), PATHS[case]):
            _, _, info = run(fn, make_inputs(case, shape, dtype))     # bytes in the timed dtype
            rows.append({"case": case, "shape": shape, "path": path, "nodes": info["nodes"],
                         "ops": info["ops"], "saved_bytes": info["saved_bytes"],
                         "peak_bytes": peaks[path], "ms": ms[path], "diffs": diffs,
                         "max_diff": max(diffs.values())})
    return rows


def format_table(rows):
    """A Markdown table; the ratios (composed / fused) on each case's composed row."""
    lines = ["| case | shape | path | nodes | saved KiB | peak KiB | ms fwd+bwd | max diff "
             "(float64) | composed/fused time | composed/fused saved |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    by_case = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["path"]] = r
    for case, pair in by_case.items():
        c, f = pair["composed"], pair["fused"]
        for r in (c, f):
            ratio_t = f"{c['ms'] / f['ms']:.2f}x" if r is c else ""
            ratio_s = f"{c['saved_bytes'] / f['saved_bytes']:.2f}x" if r is c else ""
            shape = "x".join(str(n) for n in r["shape"]) if r is c else ""
            lines.append(f"| {case if r is c else ''} | {shape} | {r['path']} | {r['nodes']} | "
                         f"{r['saved_bytes'] / 1024:,.1f} | {r['peak_bytes'] / 1024:,.1f} | "
                         f"{r['ms']:.3f} | {r['max_diff']:.1e} | {ratio_t} | {ratio_s} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# main

def _shape(text):
    return tuple(int(n) for n in text.split(","))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ce", type=_shape, default=DEFAULT_SHAPES["cross_entropy"],
                   help="cross-entropy logits N,V")
    p.add_argument("--ln", type=_shape, default=DEFAULT_SHAPES["layer_norm"],
                   help="LayerNorm input B,T,C")
    p.add_argument("--attn", type=_shape, default=DEFAULT_SHAPES["attention"],
                   help="attention q, k, v B,H,T,D")
    p.add_argument("--repeat", type=int, default=100, help="timed runs per path (median)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="dtype of the timed runs (validation always runs in float64)")
    p.add_argument("--kernels", choices=("auto", "numpy", "numba"), default="auto",
                   help="tinyllm.kernels.set_impl for both paths")
    args = p.parse_args(argv)
    if len(args.ce) != 2 or len(args.ln) < 2 or len(args.attn) != 4 or args.repeat < 1:
        p.error("--ce needs N,V, --ln at least two sizes, --attn B,H,T,D; --repeat >= 1")
    shapes = {"cross_entropy": args.ce, "layer_norm": args.ln, "attention": args.attn}

    kernels.set_impl(args.kernels)
    try:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, "
              f"python {platform.python_version()}, kernels {args.kernels}, timed in "
              f"{args.dtype}, median of {args.repeat}")
        rows = measure(shapes, np.dtype(args.dtype), args.repeat)
    finally:
        kernels.set_impl(None)
    for case in shapes:
        pair = {r["path"]: r for r in rows if r["case"] == case}
        diffs = ", ".join(f"{n} {d:.1e}" for n, d in pair["fused"]["diffs"].items())
        print(f"{case}: composed = {' -> '.join(pair['composed']['ops'])}; fused = "
              f"{' -> '.join(pair['fused']['ops'])}")
        print(f"    max |composed - fused| in float64: {diffs}")
    worst = max(r["max_diff"] for r in rows)
    if not worst < 1e-10:
        raise SystemExit(f"composed_vs_fused: the paths disagree by {worst:.3g} in float64")
    print()
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()

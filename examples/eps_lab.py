"""The finite-difference step-size lab: why gradchecks run in float64 with eps ~ 1e-6.

    python examples/eps_lab.py                       # tanh, prints the table, draws eps_lab.png
    python examples/eps_lab.py --op softmax --plot softmax_eps.png
    python examples/eps_lab.py --op layer_norm --size 8

A gradcheck compares the backward pass with the central difference

    (f(x + eps) - f(x - eps)) / (2 eps)  =  f'(x) + f'''(x) eps^2 / 6 + ...

Two errors pull eps in opposite directions:
- truncation: the Taylor terms the difference leaves out, ~ |f'''| eps^2 / 6. It shrinks with
  eps: on a log-log plot a line of slope +2 (one decade of eps, two decades of error);
- rounding: f(x +- eps) are only known to the dtype's unit roundoff u (1.1e-16 in float64,
  6e-8 in float32), and the difference divides that error by eps: ~ u |f| / eps, slope -1.
  In float32 a still smaller eps stops moving x at all (x + eps == x): the difference is 0
  and the relative error 1.
Their sum is a V whose bottom sits near eps ~ u^(1/3) with error ~ u^(2/3): about 1e-5 and
1e-10 in float64, but about 4e-3 and 1e-5 in float32. A float32 gradcheck cannot tell a
correct backward from one that is off by 1e-4; float64 with eps = 1e-6 resolves 1e-9.

This script sweeps eps for one op, prints the relative error of the numeric gradient against
the exact (float64 backward) one per dtype, marks each dtype's best eps, and draws the V.
"""
import argparse

import numpy as np

import tinyllm as tl
import tinyllm.functional as F
from tinyllm._files import atomic_write
from tinyllm.autograd.gradcheck import eps_sweep, format_eps_sweep

# name -> (function of one tensor, the shape of x)
OPS = {
    "tanh": (lambda x: x.tanh(), (8,)),
    "gelu": (lambda x: F.gelu(x, approximate="tanh"), (8,)),
    "softmax": (lambda x: F.softmax(x, axis=-1), (2, 4)),
    "layer_norm": (lambda x: F.layer_norm(x, (x.shape[-1],)), (2, 4)),
    "cross_entropy": (lambda x: F.cross_entropy(x, np.array([1, 3])), (2, 4)),
    "exp": (lambda x: x.exp(), (8,)),
}


def make_plot(result, op, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, style in (("float64", "o-"), ("float32", "s-")):
        if name not in result:
            continue
        eps, err = np.array(result[name]).T
        err = np.maximum(err, 1e-18)
        ax.loglog(eps, err, style, ms=3, label=name)
        u = np.finfo(name).eps / 2
        ax.axvline(u ** (1 / 3), color="grey", lw=0.6, ls=":")
        ax.annotate(f"u^(1/3), {name}", (u ** (1 / 3), 1e-12), rotation=90, fontsize=7,
                    color="grey", va="bottom", ha="right")
    e = np.logspace(-3, 0, 10)
    ax.loglog(e, 0.2 * e ** 2, "k--", lw=0.7, label="slope 2: truncation ~ eps^2")
    e = np.logspace(-14, -9, 10)
    ax.loglog(e, 2e-16 / e, "k:", lw=0.9, label="slope -1: rounding ~ u / eps")
    ax.axvline(1e-6, color="tab:green", lw=0.8)
    ax.annotate("tinyllm's gradcheck eps", (1e-6, 1e-2), rotation=90, fontsize=7,
                color="tab:green", va="top", ha="right")
    ax.set_xlabel("eps")
    ax.set_ylabel("max |numeric - exact| / max |exact|")
    ax.set_title(f"central differences of {op}: error against step size")
    ax.set_ylim(1e-13, 10)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))   # never half
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--op", choices=sorted(OPS), default="tanh")
    parser.add_argument("--size", type=int, default=None,
                        help="length of the last axis of x (default: the op's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="eps_lab.png", help="PNG path ('' for none)")
    args = parser.parse_args(argv)

    fn, shape = OPS[args.op]
    if args.size:
        shape = shape[:-1] + (args.size,)
    x = np.random.default_rng(args.seed).standard_normal(shape)
    result = eps_sweep(fn, x)

    print(f"central-difference error for {args.op} at x of shape {shape}, against the float64 "
          f"backward (* = best eps per dtype)\n")
    print(format_eps_sweep(result))
    best = {}
    for name, rows in result.items():
        eps, err = min(rows, key=lambda r: r[1])
        u = np.finfo(name).eps / 2
        best[name] = (eps, err)
        print(f"\n{name}: best eps {eps:.1e} (u^(1/3) = {u ** (1 / 3):.1e}), error {err:.1e}"
              f" (u^(2/3) = {u ** (2 / 3):.1e})")
    err_at_1e6 = {name: dict(rows)[1e-6] for name, rows in result.items()
                  if 1e-6 in dict(rows)}
    if err_at_1e6:
        print("at eps = 1e-6 (tinyllm's default): "
              + ", ".join(f"{k} {v:.1e}" for k, v in err_at_1e6.items()))
    if args.plot:
        print(f"plot: {make_plot(result, args.op, args.plot)}")
    return {"result": result, "best": best}


if __name__ == "__main__":
    tl.manual_seed(0)
    main()

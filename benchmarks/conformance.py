"""Conformance: how far each kernel implementation is from the float64 NumPy reference.

    python benchmarks/conformance.py

For every kernel (forward and backward) and every implementation (NumPy float64, NumPy float32,
Numba float64, Numba float32, and CuPy float32/float64 when a GPU is present) this prints the
largest error against the NumPy float64 result on the same inputs, relative to the largest
magnitude of that result: max |got - ref| / max(1, max |ref|). tests/test_kernels.py asserts
the same table stays under TOLERANCE.
"""
import numpy as np

from tinyllm import backend
from tinyllm.kernels import cross_entropy as CE
from tinyllm.kernels import embedding as E
from tinyllm.kernels import gelu as G
from tinyllm.kernels import layernorm as LN
from tinyllm.kernels import softmax as S

# bound on the error per dtype (float32 results carry ~1e-7 relative rounding per operation)
TOLERANCE = {"float64": 1e-12, "float32": 2e-5}


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((257, 129)) * 4
    x[3, :] = -np.inf                                # a fully masked row
    x[5, ::3] = -np.inf                              # a partly masked row
    return {
        "x": x,
        "dy": rng.standard_normal((257, 129)),
        "z": rng.standard_normal((300, 65)) * 3,
        "t": np.where(rng.random(300) < 0.1, -100, rng.integers(0, 65, 300)),
        "dl": rng.standard_normal(300),
        "h": rng.standard_normal((200, 96)) * 2 + 1,
        "w": rng.standard_normal(96),
        "b": rng.standard_normal(96),
        "dh": rng.standard_normal((200, 96)),
        "a": rng.standard_normal((4, 33, 47)),
        "m": rng.standard_normal((4, 47, 29)),
    }


def _kernels():
    """name -> fn(inputs cast to a dtype, impl) -> tuple of output arrays."""
    def softmax(v, impl):
        y = S.softmax_forward(v["x"], impl=impl)
        return y, S.softmax_backward(y, v["dy"], impl=impl)

    def cross_entropy(v, impl):
        loss, lse = CE.cross_entropy_forward(v["z"], v["t"], label_smoothing=0.1, impl=impl)
        return loss, CE.cross_entropy_backward(v["z"], v["t"], lse, v["dl"], label_smoothing=0.1,
                                               impl=impl)

    def layer_norm(v, impl):
        y, mu, rstd = LN.layer_norm_forward(v["h"], v["w"], v["b"], impl=impl)
        return (y,) + tuple(LN.layer_norm_backward(v["dh"], v["h"], v["w"], mu, rstd, impl=impl))

    def gelu(approximate):
        def run(v, impl):
            return (G.gelu_forward(v["h"], approximate, impl=impl),
                    G.gelu_backward(v["h"], v["dh"], approximate, impl=impl))
        return run

    def embedding_backward(v, impl):
        return (E.embedding_backward(v["t"] % 65, v["z"], 65, impl=impl),)

    table = {"softmax": softmax, "cross_entropy": cross_entropy, "layer_norm": layer_norm,
             "gelu_tanh": gelu("tanh"), "gelu_erf": gelu("none"),
             "embedding_bwd": embedding_backward}
    try:
        from tinyllm.kernels import matmul as MM
    except ImportError:
        MM = None
    if MM is not None:
        def matmul(v, impl):
            return (MM.matmul(v["a"], v["m"], impl=impl),)
        table["matmul"] = matmul
    return table


def _cast(v, dtype, to_device):
    return {k: to_device(a.astype(dtype) if a.dtype.kind == "f" else a) for k, a in v.items()}


def report():
    """Rows of (kernel, implementation, max relative error over all outputs)."""
    v = _inputs()
    impls = [("numpy", np.float64, "numpy"), ("numpy", np.float32, "numpy")]
    from tinyllm.kernels import NUMBA_AVAILABLE
    if NUMBA_AVAILABLE:
        impls += [("numba", np.float64, "numba"), ("numba", np.float32, "numba")]
    devices = [("cpu", lambda a: a)]
    if backend.cuda_is_available():
        devices.append(("cuda", lambda a: backend.to_device(a, "cuda")))
    rows = []
    for name, fn in _kernels().items():
        ref = fn(_cast(v, np.float64, lambda a: a), "numpy")
        for device, move in devices:
            for label, dtype, impl in impls:
                if device == "cuda" and impl == "numba":
                    continue
                out = fn(_cast(v, dtype, move), impl)
                err = 0.0
                for o, r in zip(out, ref):
                    o = backend.asnumpy(o).astype(np.float64)
                    finite = np.isfinite(r)
                    assert (np.isfinite(o) == finite).all(), f"{name} {label}: inf/nan mismatch"
                    scale = max(1.0, float(np.abs(r[finite]).max(initial=0)))
                    err = max(err, float(np.abs(o[finite] - r[finite]).max(initial=0)) / scale)
                tag = ("cupy" if device == "cuda" else label) + "-" + np.dtype(dtype).name
                rows.append((name, tag, err))
    return rows


def main():
    rows = report()
    print(f"{'kernel':<15}{'implementation':<18}{'max error vs numpy-float64':>28}")
    for name, tag, err in rows:
        print(f"{name:<15}{tag:<18}{err:>28.2e}")
    return rows


if __name__ == "__main__":
    main()

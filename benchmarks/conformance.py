"""Conformance: how far each op's formula and each kernel are from the float64 formula.

    python benchmarks/conformance.py

For every op with an accelerator (forward and backward) and every implementation (the op's
formula in float64 and float32, with the switch off; the Numba kernels in float64 and float32,
with the switch on "numba"; on a GPU, the formula on CuPy arrays and, switch on, the compiled
CuPy kernels) this prints the largest error against the float64 formula on the same inputs,
relative to the largest magnitude of that result: max |got - ref| / max(1, max |ref|).
tests/test_kernels.py asserts the same table stays under TOLERANCE.
"""
from types import SimpleNamespace

import numpy as np

from tinyllm import backend, kernels
from tinyllm.ops.elementwise import GELU
from tinyllm.ops.embedding import Embedding
from tinyllm.ops.loss import CrossEntropy
from tinyllm.ops.matmul import MatMul
from tinyllm.ops.norm import LayerNorm
from tinyllm.ops.softmax import Softmax

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


def _op(cls, n_inputs=1):
    """A Function instance to call forward and backward on raw arrays."""
    return cls(*[SimpleNamespace(requires_grad=True)] * n_inputs)


def _kernels():
    """name -> fn(inputs cast to a dtype) -> tuple of output arrays (forward, then backward),
    through the op; the switch in force picks the formula or the kernel."""
    def softmax(v):
        op = _op(Softmax)
        return op.forward(v["x"]), op.backward(v["dy"])

    def cross_entropy(v):
        op = _op(CrossEntropy)
        loss = op.forward(v["z"], target=v["t"], reduction="none", label_smoothing=0.1)
        return loss, op.backward(v["dl"])

    def layer_norm(v):
        op = _op(LayerNorm, 3)
        return (op.forward(v["h"], v["w"], v["b"]),) + tuple(op.backward(v["dh"]))

    def gelu(approximate):
        def run(v):
            op = _op(GELU)
            return op.forward(v["h"], approximate), op.backward(v["dh"])
        return run

    def embedding_backward(v):
        op = _op(Embedding)
        z = v["z"]
        op.forward(z[:65] * 0, idx=v["t"] % 65)
        return (op.backward(z),)

    def matmul(v):
        op = _op(MatMul, 2)
        return (op.forward(v["a"], v["m"]),)

    return {"softmax": softmax, "cross_entropy": cross_entropy, "layer_norm": layer_norm,
            "gelu_tanh": gelu("tanh"), "gelu_erf": gelu("none"),
            "embedding_bwd": embedding_backward, "matmul": matmul}


def _cast(v, dtype, to_device):
    return {k: to_device(a.astype(dtype) if a.dtype.kind == "f" else a) for k, a in v.items()}


def report():
    """Rows of (kernel, implementation, max relative error over all outputs)."""
    v = _inputs()
    impls = [("numpy", np.float64, "numpy"), ("numpy", np.float32, "numpy")]
    if kernels.NUMBA_AVAILABLE:
        impls += [("numba", np.float64, "numba"), ("numba", np.float32, "numba")]
    devices = [("cpu", lambda a: a)]
    if backend.cuda_is_available():
        devices.append(("cuda", lambda a: backend.to_device(a, "cuda")))
    rows = []
    for name, fn in _kernels().items():
        with kernels.using("numpy"):
            ref = fn(_cast(v, np.float64, lambda a: a))
        for device, move in devices:
            for label, dtype, impl in impls:
                if device == "cuda":             # the formula, and the compiled CuPy kernels
                    label = "cupy" if impl == "numpy" else "cupykernel"
                with kernels.using(impl):
                    out = fn(_cast(v, dtype, move))
                err = 0.0
                for o, r in zip(out, ref):
                    o = backend.asnumpy(o).astype(np.float64)
                    finite = np.isfinite(r)
                    assert (np.isfinite(o) == finite).all(), f"{name} {label}: inf/nan mismatch"
                    scale = max(1.0, float(np.abs(r[finite]).max(initial=0)))
                    err = max(err, float(np.abs(o[finite] - r[finite]).max(initial=0)) / scale)
                tag = label + "-" + np.dtype(dtype).name
                rows.append((name, tag, err))
    return rows


def main():
    rows = report()
    print(f"{'op':<15}{'implementation':<18}{'max error vs numpy-float64':>28}")
    for name, tag, err in rows:
        print(f"{name:<15}{tag:<18}{err:>28.2e}")
    return rows


if __name__ == "__main__":
    main()

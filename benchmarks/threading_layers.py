"""Numba threads vs OpenBLAS threads when they take turns, per Numba threading layer.

    python benchmarks/threading_layers.py

A training step alternates Numba kernels and BLAS matmuls. If the pool that just finished keeps
its threads spinning (OpenMP's default active wait), the other pool runs on fewer cores. Each
configuration runs in its own process (the layer is fixed at Numba's first parallel launch):
a loop of softmax (Numba, 4M elements, the parallel variant forced) -> matmul (OpenBLAS) -> softmax
backward (Numba), against the same loop with the op's NumPy formula (the switch off), so the
ratio isolates the cost of alternating.
"""
import json
import os
import subprocess
import sys

CHILD = r"""
import time, statistics, numpy as np
from types import SimpleNamespace
from tinyllm import kernels
from tinyllm.kernels import _numba
from tinyllm.ops.softmax import Softmax
import numba
# the parallel variant at every size (by default workqueue runs 4M elements serially)
_numba.PARALLEL_MIN_ELEMENTS = dict.fromkeys(_numba.PARALLEL_MIN_ELEMENTS, 0)
rng = np.random.default_rng(0)
x = rng.standard_normal((16384, 256)).astype(np.float32)
w = rng.standard_normal((256, 256)).astype(np.float32)
def loop(impl, n=10):
    t0 = time.perf_counter()
    with kernels.using(impl):
        for _ in range(n):
            op = Softmax(SimpleNamespace(requires_grad=True))
            y = op.forward(x)
            h = y @ w
            op.backward(h)
    return (time.perf_counter() - t0) / n * 1e3
loop("numba", 3); loop("numpy", 3)
nb, ref = [], []
for _ in range(7):
    nb.append(loop("numba")); ref.append(loop("numpy"))
print(statistics.median(nb), statistics.median(ref), numba.threading_layer())
"""

CONFIGS = [
    ("workqueue (tinyllm default)", {}),
    ("omp, active wait", {"NUMBA_THREADING_LAYER": "omp"}),
    ("omp, OMP_WAIT_POLICY=passive", {"NUMBA_THREADING_LAYER": "omp",
                                      "OMP_WAIT_POLICY": "passive"}),
]


def main():
    rows = []
    print(f"{'configuration':<32}{'numba+BLAS ms':>14}{'numpy+BLAS ms':>14}{'layer':>11}")
    for name, env in CONFIGS:
        out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                             env={**os.environ, **env}, check=True)
        nb, ref, layer = out.stdout.split()
        rows.append({"config": name, "numba_blas_ms": float(nb), "numpy_blas_ms": float(ref),
                     "layer": layer})
        print(f"{name:<32}{float(nb):>14.2f}{float(ref):>14.2f}{layer:>11}")
    return rows


if __name__ == "__main__":
    print(json.dumps(main()))

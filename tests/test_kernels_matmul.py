"""The teaching Numba matmul (tinyllm/kernels/matmul.py) held equal to the op's BLAS formula.

Tolerances. Each C_ij sums K products, and the Numba kernel adds them in a different order from
BLAS, so the error grows with K and with the size of the terms: we compare
|numba - ref| <= rtol * (|A| @ |B|) + atol, i.e. relative to the K-term sum of magnitudes, with
rtol 1e-5 in float32 (eps 1.2e-7 times K up to ~130 and some slack) and 1e-12 in float64.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import kernels
from tinyllm.kernels.matmul import matmul
from tinyllm.ops.matmul import check_shapes, gemm

RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def _check(a, b, dtype):
    ref = np.matmul(a, b)
    out = matmul(a, b)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)   # sum_k |A_ik B_kj|
    err = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    bad = err > RTOL[dtype] * scale + 1e-30
    assert not bad.any(), f"max error {err.max()} at {np.argwhere(bad)[0]} (scale {scale.max()})"


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (1, 17, 1), (3, 1, 5), (17, 3, 65), (65, 129, 3),
                                   (129, 65, 17), (1, 300, 129), (129, 300, 1), (5, 517, 7)])
def test_2d_matches_reference(rng, dtype, M, K, N):
    _check(_rand(rng, (M, K), dtype), _rand(rng, (K, N), dtype), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_2d_several_k_blocks(rng, dtype):
    # K spans more than one K-block and N more than one column block
    _check(_rand(rng, (37, 600), dtype), _rand(rng, (600, 200), dtype), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_contiguous_inputs(rng, dtype):
    a = _rand(rng, (40, 30), dtype)
    b = _rand(rng, (30, 50), dtype)
    _check(a.T, _rand(rng, (25, 40), dtype).T, dtype)      # (30, 40) @ (40, 25): transposed views
    _check(a[::3, ::2], b[::2, 1::3], dtype)                  # strided slices: (14, 15) @ (15, 17)
    _check(a[::-1], b[::-1, ::-1], dtype)                     # negative strides
    big = _rand(rng, (6, 20, 9), dtype)
    _check(big[::2, ::3], np.swapaxes(big[1::2], -1, -2)[:, :, ::3], dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sa,sb", [((2, 1, 3, 4), (5, 4, 2)), ((3, 4), (2, 4, 6)),
                                   ((7, 3, 4), (4, 6)), ((2, 3, 5, 4), (3, 4, 1)),
                                   ((1, 4), (9, 4, 3)), ((20, 9, 16), (20, 16, 9)),
                                   ((3, 65, 17), (3, 17, 129))])
def test_batched_broadcast(rng, dtype, sa, sb):
    _check(_rand(rng, sa, dtype), _rand(rng, sb, dtype), dtype)


def test_batched_broadcast_view(rng):
    a = _rand(rng, (3, 4), np.float32)
    b = np.broadcast_to(_rand(rng, (4, 5), np.float32), (6, 4, 5))   # zero-stride batch axis
    _check(a, b, np.float32)


def test_switch_picks_the_kernel_only_under_numba(rng, monkeypatch):
    """gemm (the op's product) is BLAS by default and under "auto"; "numba" runs the kernel,
    and both give the same numbers."""
    a = _rand(rng, (16, 33, 20), np.float32)
    b = _rand(rng, (16, 20, 12), np.float32)
    calls = []
    real = matmul
    monkeypatch.setattr("tinyllm.kernels.matmul.matmul",
                        lambda x, y: calls.append(1) or real(x, y))
    for impl, n_calls in (("numpy", 0), ("auto", 0), ("numba", 1)):
        calls.clear()
        with kernels.using(impl):
            out = gemm(a, b)
        assert len(calls) == n_calls, impl
        np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-5, atol=1e-5)


def test_ineligible_operands_take_blas_under_numba(rng):
    a = _rand(rng, (4, 5), np.float32)
    b = _rand(rng, (5, 3), np.float64)
    with kernels.using("numba"):
        out = gemm(a, b)                                     # mixed dtypes -> BLAS
        assert out.dtype == np.float64
        np.testing.assert_array_equal(out, a @ b)
        ai = np.arange(12).reshape(3, 4)
        np.testing.assert_array_equal(gemm(ai, ai.T), ai @ ai.T)              # integers
        assert gemm(np.zeros((2, 0), np.float32), np.zeros((0, 3), np.float32)).shape == (2, 3)


def test_op_gradients_agree_across_the_switch(rng):
    """MatMul and Linear's backward through the kernel equal their BLAS formula (float64)."""
    a0, b0 = rng.standard_normal((3, 5, 4)), rng.standard_normal((4, 6))
    grads = {}
    for mode in ("numpy", "numba"):
        with kernels.using(mode):
            a, b = tl.tensor(a0, requires_grad=True), tl.tensor(b0, requires_grad=True)
            (a @ b).sum().backward()
            grads[mode] = (np.asarray(a.grad), np.asarray(b.grad))
    for g0, g1 in zip(grads["numpy"], grads["numba"]):
        np.testing.assert_allclose(g1, g0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sa,sb", [((2, 3), (4, 5)), ((2, 3, 4), (2, 5, 6)), ((3,), (4,)),
                                   ((2, 3, 4), (3, 4, 5))])
def test_misaligned_shapes_raise(sa, sb):
    with pytest.raises(ValueError, match="matmul") as info:
        check_shapes(sa, sb)
    assert str(sa) in str(info.value) and str(sb) in str(info.value)
    with pytest.raises(ValueError, match="matmul"):
        tl.matmul(tl.ones(sa), tl.ones(sb))


def test_numba_disabled_runs_python_source():
    """With NUMBA_DISABLE_JIT=1 the kernel runs as Python (to step through) and still agrees."""
    code = (
        "import numpy as np\n"
        "from tinyllm.kernels.matmul import matmul\n"
        "rng = np.random.default_rng(0)\n"
        "a = rng.standard_normal((2, 5, 6)); b = rng.standard_normal((2, 6, 7))\n"
        "np.testing.assert_allclose(matmul(a, b), np.matmul(a, b),"
        " rtol=1e-12, atol=1e-12)\n"
        "np.testing.assert_allclose(matmul(a[0], b[1]), a[0] @ b[1],"
        " rtol=1e-12, atol=1e-12)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"

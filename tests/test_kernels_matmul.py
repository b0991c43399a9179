"""The matmul kernels held equal: Numba vs the BLAS reference, the naive loop vs the reference.

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

from tinyllm.kernels.matmul import matmul, matmul_naive, matmul_reference

RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def _check(a, b, dtype):
    ref = matmul_reference(a, b)
    out = matmul(a, b, impl="numba")
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


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (2, 3, 4), (5, 1, 3), (3, 7, 1)])
def test_naive_matches_reference(rng, M, K, N):
    a = _rand(rng, (M, K), np.float64)
    b = _rand(rng, (K, N), np.float64)
    np.testing.assert_allclose(np.array(matmul_naive(a, b)), matmul_reference(a, b),
                               rtol=1e-12, atol=1e-14)
    assert matmul_naive([[1.0, 2.0]], [[3.0], [4.0]]) == [[11.0]]


def test_impl_numpy_and_numba_agree(rng):
    a = _rand(rng, (16, 33, 20), np.float32)
    b = _rand(rng, (16, 20, 12), np.float32)
    np.testing.assert_allclose(matmul(a, b, impl="numpy"), matmul(a, b, impl="numba"),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(matmul(a, b), matmul_reference(a, b), rtol=1e-5, atol=1e-5)


def test_fallbacks_give_reference(rng):
    a = _rand(rng, (4, 5), np.float32)
    b = _rand(rng, (5, 3), np.float64)
    out = matmul(a, b, impl="numba")                         # mixed dtypes -> reference
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, a @ b)
    ai = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(matmul(ai, ai.T, impl="numba"), ai @ ai.T)   # integers
    v = _rand(rng, (5,), np.float32)
    np.testing.assert_array_equal(matmul(a, v, impl="numba"), a @ v)          # 1-D
    assert matmul(np.zeros((2, 0), np.float32), np.zeros((0, 3), np.float32),
                  impl="numba").shape == (2, 3)


def test_bad_impl_raises(rng):
    a = _rand(rng, (2, 2), np.float32)
    with pytest.raises(ValueError):
        matmul(a, a, impl="fortran")


@pytest.mark.parametrize("sa,sb", [((2, 3), (4, 5)), ((2, 3, 4), (2, 5, 6)), ((3,), (4,)),
                                   ((2, 3, 4), (3, 4, 5))])
def test_misaligned_shapes_raise(sa, sb):
    a = np.ones(sa, np.float32)
    b = np.ones(sb, np.float32)
    with pytest.raises(ValueError, match="matmul") as info:
        matmul(a, b, impl="numba")
    assert str(sa) in str(info.value) and str(sb) in str(info.value)


def test_numba_disabled_runs_python_source():
    """With NUMBA_DISABLE_JIT=1, impl="numba" runs the kernels as Python and still agrees."""
    code = (
        "import numpy as np\n"
        "from tinyllm.kernels.matmul import matmul, matmul_reference\n"
        "rng = np.random.default_rng(0)\n"
        "a = rng.standard_normal((2, 5, 6)); b = rng.standard_normal((2, 6, 7))\n"
        "np.testing.assert_allclose(matmul(a, b, impl='numba'), matmul_reference(a, b),"
        " rtol=1e-12, atol=1e-12)\n"
        "np.testing.assert_allclose(matmul(a[0], b[1], impl='numba'), a[0] @ b[1],"
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

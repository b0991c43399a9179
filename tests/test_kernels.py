"""The kernel layer: each Numba kernel equals its NumPy reference, each backward kernel equals
central finite differences of its forward, and the switches do what they say.

(test_ops.py also runs every op case with the Numba kernels on, through autograd.)
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tinyllm import kernels
from tinyllm.kernels import cross_entropy as CE
from tinyllm.kernels import embedding as E
from tinyllm.kernels import gelu as G
from tinyllm.kernels import layernorm as LN
from tinyllm.kernels import softmax as S

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
DTYPES = [np.float32, np.float64]
# rows x columns: odd sizes, one row, one column, a big row
SHAPES = [(1, 1), (1, 7), (3, 1), (17, 65), (130, 33), (2, 1000)]


def _x(shape, dtype, scale=1.0, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _close(a, b, dtype, scale=1.0):
    tol = TOL[dtype]
    np.testing.assert_allclose(a, b, rtol=tol["rtol"], atol=tol["atol"] * scale)


def _fd(forward, x, v, eps=1e-6):
    """Central differences of sum(forward(x) * v) w.r.t. x (float64 NumPy)."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + eps
        fp = (forward(x) * v).sum()
        flat[i] = orig - eps
        fm = (forward(x) * v).sum()
        flat[i] = orig
        gflat[i] = (fp - fm) / (2 * eps)
    return g


# ----------------------------------------------------------------------------------------------
# softmax

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_numba_equals_reference(shape, dtype):
    x, dy = _x(shape, dtype), _x(shape, dtype, seed=1)
    y_ref, y = S.softmax_forward(x, impl="numpy"), S.softmax_forward(x, impl="numba")
    _close(y, y_ref, dtype)
    _close(S.softmax_backward(y_ref, dy, impl="numba"),
           S.softmax_backward(y_ref, dy, impl="numpy"), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_masks_large_logits_and_layouts(dtype):
    x = _x((6, 3, 9), dtype, scale=1e4)                  # large logits: no overflow
    x[0, 0, :] = -np.inf                                 # fully masked row -> zeros
    x[1, 2, ::2] = -np.inf                               # partly masked row
    y = S.softmax_forward(x, impl="numba")
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[0, 0], np.zeros(9))
    _close(y, S.softmax_forward(x, impl="numpy"), dtype)
    xt = _x((9, 40), dtype).T                            # non-contiguous input
    _close(S.softmax_forward(xt, impl="numba"), S.softmax_forward(xt, impl="numpy"), dtype)
    xs = _x((40, 18), dtype)[::3, 1::2]                  # strided slice
    _close(S.softmax_forward(xs, impl="numba"), S.softmax_forward(xs, impl="numpy"), dtype)


def test_softmax_backward_kernel_equals_finite_differences():
    x, v = _x((4, 6), np.float64), _x((4, 6), np.float64, seed=2)
    y = S.softmax_forward(x, impl="numba")
    dx = S.softmax_backward(y, v, impl="numba")
    np.testing.assert_allclose(dx, _fd(lambda a: S.softmax_forward(a, impl="numba"), x, v),
                               rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# cross-entropy

CE_CASES = [(0.0, -100), (0.1, -100), (0.0, 2), (0.2, 0)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (17, 65), (64, 1001)])
@pytest.mark.parametrize("eps,ignore", CE_CASES)
def test_cross_entropy_numba_equals_reference(shape, dtype, eps, ignore):
    N, C = shape
    z = _x(shape, dtype, scale=3)
    t = np.random.default_rng(3).integers(0, C, N)
    if N > 2:
        t[::4] = ignore if ignore < 0 else t[::4]
    d = _x((N,), dtype, seed=4)
    loss_ref, lse_ref = CE.cross_entropy_forward(z, t, ignore, eps, impl="numpy")
    loss, lse = CE.cross_entropy_forward(z, t, ignore, eps, impl="numba")
    _close(loss, loss_ref, dtype, scale=10)
    _close(lse, lse_ref, dtype, scale=10)
    _close(CE.cross_entropy_backward(z, t, lse_ref, d, ignore, eps, impl="numba"),
           CE.cross_entropy_backward(z, t, lse_ref, d, ignore, eps, impl="numpy"), dtype)


def test_cross_entropy_large_logits_and_ignored_rows():
    z = _x((5, 4), np.float32, scale=1e4)
    t = np.array([0, 3, -100, 1, 2])
    loss, lse = CE.cross_entropy_forward(z, t, impl="numba")
    assert np.isfinite(loss).all() and loss[2] == 0
    dz = CE.cross_entropy_backward(z, t, lse, np.ones(5, np.float32), impl="numba")
    assert np.isfinite(dz).all() and (dz[2] == 0).all()
    np.testing.assert_allclose(loss, CE.cross_entropy_forward(z, t, impl="numpy")[0], rtol=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.15])
def test_cross_entropy_backward_kernel_equals_finite_differences(eps):
    z = _x((5, 7), np.float64, scale=2)
    t = np.array([0, 6, -100, 3, 3])
    v = _x((5,), np.float64, seed=5)
    _, lse = CE.cross_entropy_forward(z, t, -100, eps, impl="numba")
    dz = CE.cross_entropy_backward(z, t, lse, v, -100, eps, impl="numba")
    numeric = _fd(lambda a: CE.cross_entropy_forward(a, t, -100, eps, impl="numba")[0], z, v)
    np.testing.assert_allclose(dz, numeric, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# layer norm

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 8), (3, 5), (37, 64), (300, 33)])
def test_layer_norm_numba_equals_reference(shape, dtype):
    x = _x(shape, dtype, scale=3) + 2
    w, b = _x(shape[1:], dtype, seed=1), _x(shape[1:], dtype, seed=2)
    dy = _x(shape, dtype, seed=3)
    ref = LN.layer_norm_forward(x, w, b, 1e-5, impl="numpy")
    got = LN.layer_norm_forward(x, w, b, 1e-5, impl="numba")
    for a, r in zip(got, ref):
        _close(a, r, dtype, scale=10)
    gref = LN.layer_norm_backward(dy, x, w, ref[1], ref[2], impl="numpy")
    ggot = LN.layer_norm_backward(dy, x, w, ref[1], ref[2], impl="numba")
    for a, r in zip(ggot, gref):
        _close(a, r, dtype, scale=shape[0])
    xt = np.ascontiguousarray(x.T).T                       # non-contiguous
    _close(LN.layer_norm_forward(xt, w, b, impl="numba")[0],
           LN.layer_norm_forward(xt, w, b, impl="numpy")[0], dtype, scale=10)


def test_layer_norm_backward_kernel_equals_finite_differences():
    x, w, b = _x((4, 6), np.float64), _x((6,), np.float64, seed=1), _x((6,), np.float64, seed=2)
    v = _x((4, 6), np.float64, seed=3)
    y, mu, rstd = LN.layer_norm_forward(x, w, b, impl="numba")
    dx, dw, db = LN.layer_norm_backward(v, x, w, mu, rstd, impl="numba")
    fwd = LN.layer_norm_forward
    np.testing.assert_allclose(dx, _fd(lambda a: fwd(a, w, b, impl="numba")[0], x, v),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, _fd(lambda a: fwd(x, a, b, impl="numba")[0], w.copy(), v),
                               rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(db, _fd(lambda a: fwd(x, w, a, impl="numba")[0], b.copy(), v),
                               rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# GELU

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(1,), (7, 3), (4, 5, 129)])
def test_gelu_numba_equals_reference(shape, dtype, approximate):
    x, dy = _x(shape, dtype, scale=3), _x(shape, dtype, seed=1)
    _close(G.gelu_forward(x, approximate, impl="numba"),
           G.gelu_forward(x, approximate, impl="numpy"), dtype, scale=10)
    _close(G.gelu_backward(x, dy, approximate, impl="numba"),
           G.gelu_backward(x, dy, approximate, impl="numpy"), dtype, scale=10)
    xs = _x((10, 12), dtype)[:, ::3]                      # non-contiguous
    _close(G.gelu_forward(xs, approximate, impl="numba"),
           G.gelu_forward(xs, approximate, impl="numpy"), dtype, scale=10)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_backward_kernel_equals_finite_differences(approximate):
    x, v = _x((3, 7), np.float64, scale=2), _x((3, 7), np.float64, seed=1)
    dx = G.gelu_backward(x, v, approximate, impl="numba")
    np.testing.assert_allclose(dx, _fd(lambda a: G.gelu_forward(a, approximate, impl="numba"),
                                       x, v), rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# CuPy kernels (GPU): equal to the reference run on CuPy and to the NumPy reference

def _gpu(*arrays):
    from tinyllm import backend
    return [backend.to_device(a, "cuda") for a in arrays]


def _cpu(*arrays):
    from tinyllm import backend
    return [backend.asnumpy(a) for a in arrays]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 8), (3, 5), (37, 64), (300, 33), (5, 130),
                                   (64, 768), (2, 4100)])
def test_layer_norm_cupy_kernel_equals_reference(shape, dtype, monkeypatch):
    x = _x(shape, dtype, scale=3) + 2
    w, b = _x(shape[1:], dtype, seed=1), _x(shape[1:], dtype, seed=2)
    dy = _x(shape, dtype, seed=3)
    calls = []
    for name in ("_layer_norm_forward_cupy", "_layer_norm_backward_cupy"):
        fn = getattr(LN, name)
        monkeypatch.setattr(LN, name, lambda *a, fn=fn: calls.append(fn) or fn(*a))
    cpu = LN.layer_norm_forward(x, w, b, 1e-5, impl="numpy")
    ref = LN.layer_norm_forward(*_gpu(x, w, b), 1e-5, impl="numpy")
    got = LN.layer_norm_forward(*_gpu(x, w, b), 1e-5)
    for a, r, c in zip(_cpu(*got), _cpu(*ref), cpu):
        _close(a, r, dtype, scale=10)
        _close(a, c, dtype, scale=10)
    gcpu = LN.layer_norm_backward(dy, x, w, cpu[1], cpu[2], impl="numpy")
    gref = LN.layer_norm_backward(*_gpu(dy, x, w), ref[1], ref[2], impl="numpy")
    ggot = LN.layer_norm_backward(*_gpu(dy, x, w), got[1], got[2])
    for a, r, c in zip(_cpu(*ggot), _cpu(*gref), gcpu):
        _close(a, r, dtype, scale=shape[0])
        _close(a, c, dtype, scale=shape[0])
    assert len(calls) == 2                                  # the kernels ran, not the reference
    xt = _gpu(np.ascontiguousarray(x.T).T)[0][:, ::1]       # strided input
    _close(_cpu(LN.layer_norm_forward(xt, *_gpu(w, b))[0])[0], cpu[0], dtype, scale=10)


@pytest.mark.gpu
def test_layer_norm_cupy_kernel_equals_finite_differences():
    x, w, b = _x((4, 6), np.float64), _x((6,), np.float64, seed=1), _x((6,), np.float64, seed=2)
    v = _x((4, 6), np.float64, seed=3)
    y, mu, rstd = LN.layer_norm_forward(*_gpu(x, w, b))
    dx, dw, db = _cpu(*LN.layer_norm_backward(*_gpu(v, x, w), mu, rstd))

    def fwd(a, b_, c):
        return _cpu(LN.layer_norm_forward(*_gpu(a, b_, c))[0])[0]
    np.testing.assert_allclose(dx, _fd(lambda a: fwd(a, w, b), x, v), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, _fd(lambda a: fwd(x, a, b), w.copy(), v), rtol=1e-6,
                               atol=1e-8)
    np.testing.assert_allclose(db, _fd(lambda a: fwd(x, w, a), b.copy(), v), rtol=1e-6,
                               atol=1e-8)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(1,), (7, 3), (4, 5, 129)])
def test_gelu_cupy_kernel_equals_reference(shape, dtype, approximate):
    x, dy = _x(shape, dtype, scale=3), _x(shape, dtype, seed=1)
    gx, gdy = _gpu(x, dy)
    fwd = G.gelu_forward(gx, approximate)
    bwd = G.gelu_backward(gx, gdy, approximate)
    assert fwd.dtype == dtype and bwd.dtype == dtype
    for got, ref_gpu, ref_cpu in [
            (fwd, G.gelu_forward(gx, approximate, impl="numpy"),
             G.gelu_forward(x, approximate, impl="numpy")),
            (bwd, G.gelu_backward(gx, gdy, approximate, impl="numpy"),
             G.gelu_backward(x, dy, approximate, impl="numpy"))]:
        _close(_cpu(got)[0], _cpu(ref_gpu)[0], dtype, scale=10)
        _close(_cpu(got)[0], ref_cpu, dtype, scale=10)
    xs = _gpu(_x((10, 12), dtype))[0][:, ::3]              # non-contiguous
    _close(_cpu(G.gelu_forward(xs, approximate))[0],
           G.gelu_forward(_cpu(xs)[0], approximate, impl="numpy"), dtype, scale=10)


# ----------------------------------------------------------------------------------------------
# embedding backward (scatter-add)

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,V", [(1, 1, 1), (7, 3, 2), (300, 33, 17), (64, 5, 1000)])
def test_embedding_backward_numba_equals_reference(N, C, V, dtype):
    rng = np.random.default_rng(0)
    idx = rng.integers(0, V, N)
    idx[: N // 2] = idx[0]                                 # many repeats of one id
    dout = _x((N, C), dtype)
    ref = E.embedding_backward(idx, dout, V, impl="numpy")
    _close(E.embedding_backward(idx, dout, V, impl="numba"), ref, dtype, scale=N)
    strided = _x((N, 2 * C), dtype)[:, ::2]                # non-contiguous dout
    _close(E.embedding_backward(idx, strided, V, impl="numba"),
           E.embedding_backward(idx, strided, V, impl="numpy"), dtype, scale=N)


def test_embedding_backward_kernel_equals_finite_differences():
    idx = np.array([2, 0, 2, 2, 1])
    w, v = _x((4, 3), np.float64), _x((5, 3), np.float64, seed=1)
    dw = E.embedding_backward(idx, v, 4, impl="numba")
    np.testing.assert_allclose(dw, _fd(lambda a: a[idx], w, v), rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# the switches

def test_set_impl_validates_and_resets():
    with pytest.raises(ValueError, match="set_impl: expected one of"):
        kernels.set_impl("fast")
    kernels.set_impl("numpy")
    assert kernels.get_impl() == "numpy"
    kernels.set_impl(None)
    assert kernels.get_impl() == (os.environ.get("TINYLLM_KERNELS") or "numpy")


def test_readable_by_default_and_entry_points_prefer_the_accelerators():
    """A fresh process runs the references; prefer_impl("auto") (what the tinyllm command, the
    training examples and the benchmarks call) turns the accelerators on unless the user chose
    with TINYLLM_KERNELS or set_impl; set_impl(None) drops the preference again."""
    env = {k: v for k, v in os.environ.items() if k != "TINYLLM_KERNELS"}
    code = ("import tinyllm as tl, tinyllm.kernels as k; tl.softmax(tl.randn(2, 3)); "
            "print(k.get_impl(), k.prefer_impl('auto'), k.get_impl())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["numpy", "auto", "auto"]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={**env, "TINYLLM_KERNELS": "numpy"}, timeout=300)
    assert out.stdout.split() == ["numpy", "numpy", "numpy"]          # the user's choice wins
    kernels.set_impl("numba")
    assert kernels.prefer_impl("auto") == "numba"
    kernels.set_impl(None)
    with pytest.raises(ValueError, match="prefer_impl: expected one of"):
        kernels.prefer_impl("fast")


def test_explicit_numba_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="softmax: impl='numba' needs float arrays"):
        S.softmax_forward(_x((3, 4), np.float32), axis=0, impl="numba")
    with pytest.raises(ValueError, match="kernel impl must be one of"):
        S.softmax_forward(_x((300, 40), np.float32), impl="jax")


def test_global_numba_falls_back_where_no_kernel_applies():
    kernels.set_impl("numba")
    x = _x((3, 4), np.float64)
    np.testing.assert_allclose(S.softmax_forward(x, axis=0), S.softmax_forward(x, axis=0,
                                                                               impl="numpy"))


def _run(code, **env):
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, cwd=REPO, env={**os.environ, **env}, timeout=300)
    assert out.returncode == 0, out.stderr
    return out


def test_tinyllm_kernels_environment_variable():
    out = _run("import tinyllm.kernels as k; print(k.get_impl())", TINYLLM_KERNELS="numpy")
    assert out.stdout.strip() == "numpy"
    bad = subprocess.run([sys.executable, "-c", "import tinyllm.kernels as k; k.get_impl()"],
                         capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "TINYLLM_KERNELS": "gpu"})
    assert bad.returncode != 0 and "TINYLLM_KERNELS must be one of" in bad.stderr


def test_numba_disable_jit_runs_the_python_kernels_with_the_same_results():
    """With NUMBA_DISABLE_JIT=1 the kernels are plain Python (steppable in a debugger)."""
    out = _run("""
        import numpy as np, numba
        from tinyllm.kernels import softmax as S, cross_entropy as CE, layernorm as LN
        from tinyllm.kernels import gelu as G, attention as A, _numba
        import types
        k = S._softmax_forward_numba
        assert _numba.jit_disabled() and k.parallel is k.py_func
        assert isinstance(k.serial, types.FunctionType)        # plain Python, steppable
        rng = np.random.default_rng(0)
        x = rng.standard_normal((5, 6)); dy = rng.standard_normal((5, 6))
        t = np.array([0, 5, -100, 2, 1]); w = rng.standard_normal(6); b = rng.standard_normal(6)
        q4 = rng.standard_normal((2, 2, 3, 4))
        err = 0.0
        for a, r in [
            (S.softmax_forward(x, impl="numba"), S.softmax_forward(x, impl="numpy")),
            (CE.cross_entropy_forward(x, t, impl="numba")[0],
             CE.cross_entropy_forward(x, t, impl="numpy")[0]),
            (LN.layer_norm_forward(x, w, b, impl="numba")[0],
             LN.layer_norm_forward(x, w, b, impl="numpy")[0]),
            (G.gelu_backward(x, dy, "tanh", impl="numba"),
             G.gelu_backward(x, dy, "tanh", impl="numpy")),
            (A.attention_forward(q4, q4, q4, 0.5, True, impl="numba")[0],
             A.attention_forward(q4, q4, q4, 0.5, True, impl="numpy")[0]),
        ]:
            err = max(err, float(np.abs(a - r).max()))
        print(err, _numba.choose(None, True))
    """, NUMBA_DISABLE_JIT="1")
    err, auto_choice = out.stdout.split()
    assert float(err) < 1e-12
    assert auto_choice == "numpy"                        # "auto" takes the references


def test_missing_numba_falls_back_with_one_warning():
    out = _run("""
        import sys, warnings
        sys.modules["numba"] = None                      # makes `import numba` fail
        import numpy as np, tinyllm as tl
        from tinyllm import kernels
        assert not kernels.NUMBA_AVAILABLE
        x = tl.tensor(np.random.default_rng(0).standard_normal((100, 100)), requires_grad=True)
        counts = []
        for impl in ("numpy", "auto"):              # the default asks for no Numba: no warning
            kernels.set_impl(impl)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                tl.softmax(x).sum().backward()
                tl.softmax(x).sum().backward()
            counts.append(sum("numba is not installed" in str(w.message) for w in caught))
        print(*counts)
    """)
    assert out.stdout.split() == ["0", "1"]


# ----------------------------------------------------------------------------------------------
# the kernels' own exp and tanh (tinyllm/kernels/_math.py)

@pytest.mark.skipif(not kernels.NUMBA_AVAILABLE, reason="numba not installed")
def test_fast_exp_and_tanh_accuracy():
    from tinyllm.kernels._math import exp, tanh
    from tinyllm.kernels._numba import jit

    @jit()
    def apply(x, e, t):
        for i in range(x.shape[0]):
            e[i] = exp(x[i])
            t[i] = tanh(x[i])

    x = np.concatenate([np.linspace(-87.3, 88.3, 400001), [-np.inf, -1e4, -88.0, 0.0]])
    x32 = x.astype(np.float32)
    e, t = np.empty_like(x32), np.empty_like(x32)
    apply(x32, e, t)
    ref = np.exp(x32.astype(np.float64))
    normal = ref > np.finfo(np.float32).tiny
    assert (np.abs(e[normal] - ref[normal]) / ref[normal]).max() < 5e-7     # ~4 ulp
    assert (e[~normal] == 0).all() and e[-4] == 0.0                          # exp(-inf) == 0
    assert np.abs(t - np.tanh(x32.astype(np.float64))).max() < 2e-7
    e64, t64 = np.empty_like(x), np.empty_like(x)
    apply(x, e64, t64)                              # float64: the C library's exp and tanh
    np.testing.assert_allclose(e64, np.exp(x), rtol=4e-16, atol=0)
    np.testing.assert_allclose(t64, np.tanh(x), rtol=4e-16, atol=1e-300)


@pytest.mark.skipif(not kernels.NUMBA_AVAILABLE, reason="numba not installed")
def test_fast_erf_accuracy():
    import math

    from tinyllm.kernels._math import erf
    from tinyllm.kernels._numba import jit

    @jit()
    def apply(x, out):
        for i in range(x.shape[0]):
            out[i] = erf(x[i])

    x = np.concatenate([np.linspace(-7, 7, 700001), [-np.inf, np.inf, 0.0, -1e-30, 1e30]])
    ref = np.vectorize(math.erf)(x)
    out32 = np.empty(len(x), np.float32)
    apply(x.astype(np.float32), out32)
    assert np.abs(out32 - ref).max() < 5e-7                                 # ~4 ulp at 1
    assert out32[-5] == -1 and out32[-4] == 1 and out32[-3] == 0             # ends, and odd
    np.testing.assert_array_equal(out32[:350000], -out32[-6:350000:-1])
    out64 = np.empty_like(x)
    apply(x, out64)                                            # float64: math.erf itself
    np.testing.assert_array_equal(out64, ref)


def test_conformance_report_stays_within_tolerance():
    """benchmarks/conformance.py: every kernel, every implementation, against NumPy float64."""
    from tests.conftest import load_script
    conformance = load_script("benchmarks/conformance.py")
    rows = conformance.report()
    assert {name for name, _, _ in rows} >= {"softmax", "cross_entropy", "layer_norm",
                                             "gelu_tanh", "gelu_erf"}
    for name, tag, err in rows:
        assert err <= conformance.TOLERANCE[tag.split("-")[1]], (name, tag, err)


@pytest.mark.skipif(not kernels.NUMBA_AVAILABLE, reason="numba not installed")
def test_parallel_and_serial_variants_are_distinct_compilations():
    """Regression: both variants once shared one Numba cache entry, so 'parallel' ran serial
    code. The parallel variant must start Numba's thread pool; both must agree."""
    code = """
        import numpy as np, numba
        from tinyllm.kernels import softmax as S
        x = np.random.default_rng(0).standard_normal((300, 40)).astype(np.float32)
        y1, y2 = np.empty_like(x), np.empty_like(x)
        S._softmax_forward_numba.serial(x, y1)
        S._softmax_forward_numba.parallel(x, y2)
        assert np.allclose(y1, y2, rtol=1e-6, atol=1e-7)
        print(numba.threading_layer())
    """
    for _ in range(2):                 # the second run loads both variants from the cache
        assert _run(code).stdout.strip() in ("workqueue", "omp", "tbb")

"""The accelerators: each Numba (and CuPy) kernel equals the formula in its op's forward and
backward, each backward kernel equals central finite differences of its forward, every op
passes the float64 gradcheck with the switch off and on, and the switches do what they say.

"The formula" is the op run on raw arrays with the switch off (``using("numpy")``); the kernel
is the kernel module's wrapper called directly, or the op with the switch on.
(tests/test_kernels_nonfinite.py does the same with NaN and infinities.)
"""
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import kernels
from tinyllm.autograd.gradcheck import gradcheck
from tinyllm.kernels import cross_entropy as CE
from tinyllm.kernels import embedding as E
from tinyllm.kernels import gelu as G
from tinyllm.kernels import layernorm as LN
from tinyllm.kernels import lstm as L
from tinyllm.kernels import softmax as S
from tinyllm.ops import rnn
from tinyllm.ops.elementwise import GELU
from tinyllm.ops.embedding import Embedding
from tinyllm.ops.loss import CrossEntropy
from tinyllm.ops.norm import LayerNorm
from tinyllm.ops.softmax import Softmax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
DTYPES = [np.float32, np.float64]
# rows x columns: odd sizes, one row, one column, a big row
SHAPES = [(1, 1), (1, 7), (3, 1), (17, 65), (130, 33), (2, 1000)]

needs_numba = pytest.mark.skipif(not kernels.NUMBA_AVAILABLE, reason="numba not installed")


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


def _op(cls, n_inputs=1):
    """A Function instance to call forward/backward on raw arrays, every input wanting grad."""
    return cls(*[SimpleNamespace(requires_grad=True)] * n_inputs)


# the ops' formulas, run on raw arrays with the switch off (or on, with impl=...)

def softmax_formula(x, dout=None, y=None, impl="numpy"):
    """(y, dx): Softmax.forward(x), then Softmax.backward(dout) from ``y`` (default: its own)."""
    with kernels.using(impl):
        op = _op(Softmax)
        out = op.forward(x)
        if y is not None:
            op.y = y
        return out, (op.backward(dout) if dout is not None else None)


def cross_entropy_formula(z, t, ignore_index=-100, eps=0.0, dloss=None, lse=None,
                          impl="numpy"):
    """(loss (N,), lse (N,), dz): CrossEntropy with reduction="none", whose backward gets the
    per-row dloss; ``lse``: the saved log-sum-exps backward uses (default: its own)."""
    with kernels.using(impl):
        op = _op(CrossEntropy)
        loss = op.forward(z, target=t, ignore_index=ignore_index, reduction="none",
                          label_smoothing=eps)
        own = op.lse
        if lse is not None:
            op.lse = lse
        return loss, own, (op.backward(dloss) if dloss is not None else None)


def layer_norm_formula(x, w, b, eps=1e-5, dout=None, saved=None, impl="numpy"):
    """((y, mu, rstd), (dx, dw, db)): LayerNorm over the last axis of x (N, D); ``saved``:
    the (mu, rstd) backward uses (default: its own)."""
    with kernels.using(impl):
        op = _op(LayerNorm, 3)
        y = op.forward(x, w, b, eps=eps)
        fwd = (y, op.mu, op.rstd)
        if saved is not None:
            op.mu, op.rstd = saved
        return fwd, (op.backward(dout) if dout is not None else None)


def gelu_formula(x, approximate, dout=None, impl="numpy"):
    with kernels.using(impl):
        op = _op(GELU)
        y = op.forward(x, approximate)
        return y, (op.backward(dout) if dout is not None else None)


def embedding_formula(idx, dout, V, impl="numpy"):
    """dW (V, C): Embedding.backward for ids idx and upstream dout (N, C)."""
    with kernels.using(impl):
        op = _op(Embedding)
        op.forward(np.zeros((V, dout.shape[1]), dout.dtype), idx=idx)
        return op.backward(dout)


class Spy:
    """Counts the calls of a kernel module's function (patched for the test's duration)."""

    def __init__(self, monkeypatch, module, name):
        self.calls = 0
        real = getattr(module, name)

        def spy(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)


# ----------------------------------------------------------------------------------------------
# softmax

@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_kernel_equals_formula(shape, dtype):
    x, dout = _x(shape, dtype), _x(shape, dtype, seed=1)
    y_ref, dx_ref = softmax_formula(x, dout)
    _close(S.softmax_forward(x), y_ref, dtype)
    _close(S.softmax_backward(y_ref, dout), dx_ref, dtype)
    y, dx = softmax_formula(x, dout, y=y_ref, impl="numba")     # the op takes the kernel
    np.testing.assert_array_equal(y, S.softmax_forward(x))
    np.testing.assert_array_equal(dx, S.softmax_backward(y_ref, dout))


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_masks_large_logits_and_layouts(dtype):
    x = _x((6, 3, 9), dtype, scale=1e4)                  # large logits: no overflow
    x[0, 0, :] = -np.inf                                 # fully masked row -> zeros
    x[1, 2, ::2] = -np.inf                               # partly masked row
    y = S.softmax_forward(x)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[0, 0], np.zeros(9))
    _close(y, softmax_formula(x)[0], dtype)
    xt = _x((9, 40), dtype).T                            # non-contiguous input
    _close(S.softmax_forward(xt), softmax_formula(xt)[0], dtype)
    xs = _x((40, 18), dtype)[::3, 1::2]                  # strided slice
    _close(S.softmax_forward(xs), softmax_formula(xs)[0], dtype)


@needs_numba
def test_softmax_backward_kernel_equals_finite_differences():
    x, v = _x((4, 6), np.float64), _x((4, 6), np.float64, seed=2)
    y = S.softmax_forward(x)
    dx = S.softmax_backward(y, v)
    np.testing.assert_allclose(dx, _fd(S.softmax_forward, x, v), rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# cross-entropy

CE_CASES = [(0.0, -100), (0.1, -100), (0.0, 2), (0.2, 0)]


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (17, 65), (64, 1001)])
@pytest.mark.parametrize("eps,ignore", CE_CASES)
def test_cross_entropy_kernel_equals_formula(shape, dtype, eps, ignore):
    N, C = shape
    z = _x(shape, dtype, scale=3)
    t = np.random.default_rng(3).integers(0, C, N)
    if N > 2:
        t[::4] = ignore if ignore < 0 else t[::4]
    d = _x((N,), dtype, seed=4)
    loss_ref, lse_ref, dz_ref = cross_entropy_formula(z, t, ignore, eps, dloss=d)
    loss, lse = CE.cross_entropy_forward(z, t, ignore, eps)
    _close(loss, loss_ref, dtype, scale=10)
    _close(lse, lse_ref, dtype, scale=10)
    _close(CE.cross_entropy_backward(z, t, lse_ref, d, ignore, eps), dz_ref, dtype)
    got = cross_entropy_formula(z, t, ignore, eps, dloss=d, lse=lse_ref, impl="numba")
    for a, b in zip(got, (loss, lse, CE.cross_entropy_backward(z, t, lse_ref, d, ignore, eps))):
        np.testing.assert_array_equal(a, b)                      # the op takes the kernel


@needs_numba
def test_cross_entropy_large_logits_and_ignored_rows():
    z = _x((5, 4), np.float32, scale=1e4)
    t = np.array([0, 3, -100, 1, 2])
    loss, lse = CE.cross_entropy_forward(z, t)
    assert np.isfinite(loss).all() and loss[2] == 0
    dz = CE.cross_entropy_backward(z, t, lse, np.ones(5, np.float32))
    assert np.isfinite(dz).all() and (dz[2] == 0).all()
    np.testing.assert_allclose(loss, cross_entropy_formula(z, t)[0], rtol=1e-6)


@needs_numba
@pytest.mark.parametrize("eps", [0.0, 0.15])
def test_cross_entropy_backward_kernel_equals_finite_differences(eps):
    z = _x((5, 7), np.float64, scale=2)
    t = np.array([0, 6, -100, 3, 3])
    v = _x((5,), np.float64, seed=5)
    _, lse = CE.cross_entropy_forward(z, t, -100, eps)
    dz = CE.cross_entropy_backward(z, t, lse, v, -100, eps)
    numeric = _fd(lambda a: CE.cross_entropy_forward(a, t, -100, eps)[0], z, v)
    np.testing.assert_allclose(dz, numeric, rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# layer norm

@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 8), (3, 5), (37, 64), (300, 33)])
def test_layer_norm_kernel_equals_formula(shape, dtype):
    x = _x(shape, dtype, scale=3) + 2
    w, b = _x(shape[1:], dtype, seed=1), _x(shape[1:], dtype, seed=2)
    dout = _x(shape, dtype, seed=3)
    ref, gref = layer_norm_formula(x, w, b, 1e-5, dout)
    for a, r in zip(LN.layer_norm_forward(x, w, b, 1e-5), ref):
        _close(a, r, dtype, scale=10)
    got = LN.layer_norm_backward(dout, x, w, ref[1], ref[2])
    for a, r in zip(got, gref):
        _close(a, r, dtype, scale=shape[0])
    _, gop = layer_norm_formula(x, w, b, 1e-5, dout, saved=ref[1:], impl="numba")
    for a, r in zip(gop, got):
        np.testing.assert_array_equal(a, r)                      # the op takes the kernel
    xt = np.ascontiguousarray(x.T).T                       # non-contiguous
    _close(LN.layer_norm_forward(xt, w, b)[0], layer_norm_formula(xt, w, b)[0][0], dtype,
           scale=10)


@needs_numba
def test_layer_norm_backward_kernel_equals_finite_differences():
    x, w, b = _x((4, 6), np.float64), _x((6,), np.float64, seed=1), _x((6,), np.float64, seed=2)
    v = _x((4, 6), np.float64, seed=3)
    y, mu, rstd = LN.layer_norm_forward(x, w, b)
    dx, dw, db = LN.layer_norm_backward(v, x, w, mu, rstd)
    fwd = LN.layer_norm_forward
    np.testing.assert_allclose(dx, _fd(lambda a: fwd(a, w, b)[0], x, v), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, _fd(lambda a: fwd(x, a, b)[0], w.copy(), v), rtol=1e-6,
                               atol=1e-8)
    np.testing.assert_allclose(db, _fd(lambda a: fwd(x, w, a)[0], b.copy(), v), rtol=1e-6,
                               atol=1e-8)


# ----------------------------------------------------------------------------------------------
# GELU

@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(1,), (7, 3), (4, 5, 129)])
def test_gelu_kernel_equals_formula(shape, dtype, approximate):
    x, dout = _x(shape, dtype, scale=3), _x(shape, dtype, seed=1)
    y_ref, dx_ref = gelu_formula(x, approximate, dout)
    _close(G.gelu_forward(x, approximate), y_ref, dtype, scale=10)
    _close(G.gelu_backward(x, dout, approximate), dx_ref, dtype, scale=10)
    y, dx = gelu_formula(x, approximate, dout, impl="numba")    # the op takes the kernel
    np.testing.assert_array_equal(y, G.gelu_forward(x, approximate))
    np.testing.assert_array_equal(dx, G.gelu_backward(x, dout, approximate))
    xs = _x((10, 12), dtype)[:, ::3]                      # non-contiguous
    _close(G.gelu_forward(xs, approximate), gelu_formula(xs, approximate)[0], dtype, scale=10)


@needs_numba
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_backward_kernel_equals_finite_differences(approximate):
    x, v = _x((3, 7), np.float64, scale=2), _x((3, 7), np.float64, seed=1)
    dx = G.gelu_backward(x, v, approximate)
    np.testing.assert_allclose(dx, _fd(lambda a: G.gelu_forward(a, approximate), x, v),
                               rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# embedding backward (scatter-add)

@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,V", [(1, 1, 1), (7, 3, 2), (300, 33, 17), (64, 5, 1000)])
def test_embedding_backward_kernel_equals_formula(N, C, V, dtype):
    rng = np.random.default_rng(0)
    idx = rng.integers(0, V, N)
    idx[: N // 2] = idx[0]                                 # many repeats of one id
    dout = _x((N, C), dtype)
    ref = embedding_formula(idx, dout, V)
    _close(E.embedding_backward(idx, dout, V), ref, dtype, scale=N)
    np.testing.assert_array_equal(embedding_formula(idx, dout, V, impl="numba"),
                                  E.embedding_backward(idx, dout, V))
    strided = _x((N, 2 * C), dtype)[:, ::2]                # non-contiguous dout
    _close(E.embedding_backward(idx, strided, V), embedding_formula(idx, strided, V), dtype,
           scale=N)


@needs_numba
def test_embedding_backward_kernel_equals_finite_differences():
    idx = np.array([2, 0, 2, 2, 1])
    w, v = _x((4, 3), np.float64), _x((5, 3), np.float64, seed=1)
    dw = E.embedding_backward(idx, v, 4)
    np.testing.assert_allclose(dw, _fd(lambda a: a[idx], w, v), rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# the LSTM cell's pointwise step (tinyllm/ops/rnn.py cell_forward / cell_backward)

@needs_numba
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 2e-6)])
def test_lstm_cell_kernel_equals_formula(dtype, tol):
    rng = np.random.default_rng(0)
    B, H = 5, 7
    a = (rng.standard_normal((B, 4 * H)) * 4).astype(dtype)
    a[0, :4] = [60, -60, 30, -30]                          # saturated gates stay finite
    c = rng.standard_normal((B, H)).astype(dtype)
    strided = np.zeros((B, 3, 4 * H), dtype)               # a time step of a (B, T, 4H) array
    strided[:, 1] = a
    with kernels.using("numpy"):
        ref = rnn.cell_forward(a, c)
    for a_in in (a, strided[:, 1]):
        got = L.lstm_cell_forward(a_in, c)
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, rtol=tol, atol=tol)
    with kernels.using("numba"):                           # the step takes the kernel
        for g, r in zip(rnn.cell_forward(a, c), L.lstm_cell_forward(a, c)):
            np.testing.assert_array_equal(g, r)
    for impl in ("numpy", "numba"):                        # writing into caller's strided views
        store = np.zeros((B, 2, 7 * H), dtype)
        views = (store[:, 0, :H], store[:, 0, H:2 * H], store[:, 1, :4 * H],
                 store[:, 1, 4 * H:5 * H])
        with kernels.using(impl):
            got = rnn.cell_forward(a, c, out=views)
        assert all(g is v for g, v in zip(got, views))
        for g, r in zip(got, ref):
            np.testing.assert_allclose(g, r, rtol=tol, atol=tol)
    dh, dc = rng.standard_normal((B, H)).astype(dtype), rng.standard_normal((B, H)).astype(dtype)
    _, _, gates, tanh_c = ref
    with kernels.using("numpy"):
        dref = rnn.cell_backward(dh, dc, gates, tanh_c, c)
    for g, r in zip(L.lstm_cell_backward(dh, dc, gates, tanh_c, c), dref):
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol)
    store = np.zeros((B, 2, 5 * H), dtype)
    out = (store[:, 0, :4 * H], store[:, 1, :H])           # strided da, dc_prev
    with kernels.using("numba"):
        got = rnn.cell_backward(dh, dc, gates, tanh_c, c, out=out)
    assert got[0] is out[0] and got[1] is out[1]
    for g, r in zip(got, dref):
        np.testing.assert_allclose(g, r, rtol=tol, atol=tol)


@needs_numba
def test_lstm_cell_backward_kernel_equals_finite_differences():
    rng = np.random.default_rng(1)
    B, H = 3, 4
    a, c = rng.standard_normal((B, 4 * H)) * 2, rng.standard_normal((B, H))
    dh, dc = rng.standard_normal((B, H)), rng.standard_normal((B, H))
    _, _, gates, tanh_c = L.lstm_cell_forward(a, c)
    da, dc_prev = L.lstm_cell_backward(dh, dc, gates, tanh_c, c)

    def h_and_c(a_, c_):
        h2, c2, _, _ = L.lstm_cell_forward(a_, c_)
        return np.concatenate([h2, c2], axis=1)
    v = np.concatenate([dh, dc], axis=1)
    np.testing.assert_allclose(da, _fd(lambda x: h_and_c(x, c), a, v), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dc_prev, _fd(lambda x: h_and_c(a, x), c, v), rtol=1e-6,
                               atol=1e-8)


# ----------------------------------------------------------------------------------------------
# every op with an accelerator: float64 gradcheck (tinyllm.autograd.gradcheck) against central
# finite differences, with the switch off (the formulas) and on (the kernels, which must run)

def _t(shape, seed, scale=1.0):
    return tl.tensor(_x(shape, np.float64, scale, seed), requires_grad=True)


GRADCHECK_CASES = {
    "softmax": (lambda x: tl.softmax(x), lambda: [_t((3, 7), 0, 2.0)], S, "softmax_backward"),
    "cross_entropy": (lambda z: tl.cross_entropy(z, np.array([0, 6, -100, 3]),
                                                 label_smoothing=0.1),
                      lambda: [_t((4, 7), 1, 2.0)], CE, "cross_entropy_backward"),
    "layer_norm": (lambda x, w, b: tl.layer_norm(x, 5, w, b),
                   lambda: [_t((2, 3, 5), 2, 2.0), _t((5,), 3), _t((5,), 4)], LN,
                   "layer_norm_backward"),
    "gelu": (lambda x: tl.gelu(x), lambda: [_t((3, 5), 5, 2.0)], G, "gelu_backward"),
    "gelu_tanh": (lambda x: tl.gelu(x, approximate="tanh"), lambda: [_t((3, 5), 6, 2.0)], G,
                  "gelu_backward"),
    "embedding": (lambda w: tl.embedding(np.array([[2, 0], [2, 3]]), w),
                  lambda: [_t((5, 3), 7)], E, "embedding_backward"),
    "lstm_cell": (lambda x, h, c, wi, wh, b: tl.lstm_cell(x, h, c, wi, wh, b),
                  lambda: [_t((2, 3), 8), _t((2, 4), 9), _t((2, 4), 10), _t((3, 16), 11, 0.5),
                           _t((4, 16), 12, 0.5), _t((16,), 13)], L, "lstm_cell_backward"),
    "lstm": (lambda x, h, c, wi, wh, b: tl.lstm(x, h, c, wi, wh, b)[0],
             lambda: [_t((2, 3, 3), 14), _t((2, 4), 15), _t((2, 4), 16), _t((3, 16), 17, 0.5),
                      _t((4, 16), 18, 0.5), _t((16,), 19)], L, "lstm_cell_backward"),
}


@pytest.mark.parametrize("impl", ["numpy", pytest.param("numba", marks=needs_numba)])
@pytest.mark.parametrize("name", list(GRADCHECK_CASES))
def test_op_gradcheck_float64_with_the_switch_off_and_on(name, impl, monkeypatch):
    fn, make_inputs, module, backward_kernel = GRADCHECK_CASES[name]
    spy = Spy(monkeypatch, module, backward_kernel)
    with kernels.using(impl):
        assert gradcheck(fn, make_inputs(), eps=1e-6, atol=1e-7, rtol=1e-5) is True
    assert (spy.calls > 0) == (impl == "numba"), spy.calls     # which of the two ran


# ----------------------------------------------------------------------------------------------
# CuPy kernels (GPU): equal to the formula run on CuPy and to the formula on NumPy

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
def test_layer_norm_cupy_kernel_equals_formula(shape, dtype, monkeypatch):
    x = _x(shape, dtype, scale=3) + 2
    w, b = _x(shape[1:], dtype, seed=1), _x(shape[1:], dtype, seed=2)
    dout = _x(shape, dtype, seed=3)
    fwd_calls = Spy(monkeypatch, LN, "_layer_norm_forward_cupy")
    bwd_calls = Spy(monkeypatch, LN, "_layer_norm_backward_cupy")
    cpu, gcpu = layer_norm_formula(x, w, b, 1e-5, dout)
    ref, gref = layer_norm_formula(*_gpu(x, w, b), 1e-5, *_gpu(dout))
    assert fwd_calls.calls == bwd_calls.calls == 0                # "numpy": the formula
    got, ggot = layer_norm_formula(*_gpu(x, w, b), 1e-5, *_gpu(dout), saved=ref[1:],
                                   impl="auto")
    assert fwd_calls.calls == bwd_calls.calls == 1                # "auto": the kernels ran
    for a, r, c in zip(_cpu(*got), _cpu(*ref), cpu):
        _close(a, r, dtype, scale=10)
        _close(a, c, dtype, scale=10)
    for a, r, c in zip(_cpu(*ggot), _cpu(*gref), gcpu):
        _close(a, r, dtype, scale=shape[0])
        _close(a, c, dtype, scale=shape[0])
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
def test_gelu_cupy_kernel_equals_formula(shape, dtype, approximate, monkeypatch):
    x, dout = _x(shape, dtype, scale=3), _x(shape, dtype, seed=1)
    gx, gdout = _gpu(x, dout)
    calls = Spy(monkeypatch, G, "_gelu_cupy")
    fwd, bwd = gelu_formula(gx, approximate, gdout, impl="auto")
    assert calls.calls == 2 and fwd.dtype == dtype and bwd.dtype == dtype
    ref_gpu = gelu_formula(gx, approximate, gdout)
    ref_cpu = gelu_formula(x, approximate, dout)
    for got, r_gpu, r_cpu in zip((fwd, bwd), ref_gpu, ref_cpu):
        _close(_cpu(got)[0], _cpu(r_gpu)[0], dtype, scale=10)
        _close(_cpu(got)[0], r_cpu, dtype, scale=10)
    xs = _gpu(_x((10, 12), dtype))[0][:, ::3]              # non-contiguous
    _close(_cpu(G.gelu_forward(xs, approximate))[0],
           gelu_formula(_cpu(xs)[0], approximate)[0], dtype, scale=10)


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
    """A fresh process runs the formulas; prefer_impl("auto") (what the tinyllm command, the
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


def test_an_unknown_switch_value_is_refused():
    with pytest.raises(ValueError, match="set_impl: expected one of"):
        kernels.set_impl("jax")
    with pytest.raises(ValueError, match="set_impl: expected one of"):
        with kernels.using("numba-fast"):
            pass


@needs_numba
def test_the_op_takes_its_formula_where_no_kernel_applies(monkeypatch):
    """With the switch on "numba", an op whose call the kernel cannot run (softmax over another
    axis, a dout of another dtype, float16) runs its formula, with the formula's numbers."""
    fwd = Spy(monkeypatch, S, "softmax_forward")
    bwd = Spy(monkeypatch, S, "softmax_backward")
    x, dout32 = _x((3, 4), np.float64), _x((3, 4), np.float32, seed=1)
    with kernels.using("numpy"):
        want_axis0 = _op(Softmax).forward(x, axis=0)
        want_y = softmax_formula(x)[0]
    with kernels.using("numba"):
        np.testing.assert_array_equal(_op(Softmax).forward(x, axis=0), want_axis0)
        assert fwd.calls == 0
        op = _op(Softmax)
        y = op.forward(x)                                           # the last axis: the kernel
        assert fwd.calls == 1
        np.testing.assert_array_equal(op.backward(dout32),          # mixed dtypes: the formula
                                      y * (dout32 - (dout32 * y).sum(-1, keepdims=True)))
        assert bwd.calls == 0
    _close(y, want_y, np.float64)
    gelu = Spy(monkeypatch, G, "gelu_forward")
    lnorm = Spy(monkeypatch, LN, "layer_norm_forward")
    x16 = _x((3, 4), np.float16)
    with kernels.using("numba"):
        y16 = _op(GELU).forward(x16, "tanh")
        ln16 = _op(LayerNorm, 3).forward(x16, np.ones(4, np.float16), np.zeros(4, np.float16))
    assert gelu.calls == lnorm.calls == 0 and y16.dtype == ln16.dtype == np.float16
    np.testing.assert_array_equal(y16, gelu_formula(x16, "tanh")[0])
    ce = Spy(monkeypatch, CE, "cross_entropy_forward")
    with kernels.using("numba"):                                    # int32 targets: the kernel
        _op(CrossEntropy).forward(x, target=np.array([0, 1, 2], np.int32), reduction="none")
    assert ce.calls == 1


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


@needs_numba
def test_numba_disable_jit_runs_the_python_kernels_with_the_same_results():
    """With NUMBA_DISABLE_JIT=1 the kernels are plain Python (steppable in a debugger): the
    switch on "numba" runs them, with the formulas' numbers; "auto" takes the formulas."""
    out = _run("""
        import types
        import numpy as np, numba
        import tinyllm as tl
        from tinyllm import dispatch, kernels
        from tinyllm.kernels import softmax as S, _numba
        k = S._softmax_forward_numba
        assert _numba.jit_disabled() and k.parallel is k.py_func
        assert isinstance(k.serial, types.FunctionType)        # plain Python, steppable
        rng = np.random.default_rng(0)
        x = rng.standard_normal((5, 6)); dout = rng.standard_normal((5, 6))
        t = np.array([0, 5, -100, 2, 1]); w = rng.standard_normal(6); b = rng.standard_normal(6)
        q4 = rng.standard_normal((2, 2, 3, 4))

        def run():
            xs = [tl.tensor(a, requires_grad=True) for a in (x, x, x, x, q4)]
            outs = [tl.softmax(xs[0]), tl.cross_entropy(xs[1], t, reduction="none"),
                    tl.layer_norm(xs[2], 6, tl.tensor(w), tl.tensor(b)),
                    tl.gelu(xs[3], approximate="tanh"), tl.attention(xs[4], xs[4], xs[4],
                                                                     causal=True)]
            for o in outs:
                o.backward(tl.tensor(np.ones(o.shape)))
            return [o.numpy() for o in outs] + [a.grad for a in xs]

        with kernels.using("numba"):
            got = run()
        with kernels.using("numpy"):
            want = run()
        err = max(float(np.abs(a - r).max()) for a, r in zip(got, want))
        with kernels.using("auto"):
            auto_choice = dispatch.accelerator("softmax", x, axis=-1)
        print(err, auto_choice)
    """, NUMBA_DISABLE_JIT="1")
    err, auto_choice = out.stdout.split()
    assert float(err) < 1e-12
    assert auto_choice == "None"                         # "auto" takes the formulas


def test_missing_numba_falls_back_with_one_warning():
    out = _run("""
        import sys, warnings
        sys.modules["numba"] = None                      # makes `import numba` fail
        import numpy as np, tinyllm as tl
        from tinyllm import kernels
        assert not kernels.NUMBA_AVAILABLE
        x = tl.tensor(np.random.default_rng(0).standard_normal((100, 100)), requires_grad=True)
        counts, grads = [], []
        for impl in ("numpy", "auto"):              # the default asks for no Numba: no warning
            kernels.set_impl(impl)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                tl.softmax(x).sum().backward()
                tl.softmax(x).sum().backward()
            counts.append(sum("numba is not installed" in str(w.message) for w in caught))
            grads.append(x.grad.copy())
            x.grad = None
        print(*counts, np.array_equal(*grads))
    """)
    assert out.stdout.split() == ["0", "1", "True"]      # and "auto" ran the formula


# ----------------------------------------------------------------------------------------------
# the kernels' own exp and tanh (tinyllm/kernels/_math.py)

@needs_numba
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


@needs_numba
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
    """benchmarks/conformance.py: every kernel and every op's formula against NumPy float64."""
    from tests.conftest import load_script
    conformance = load_script("benchmarks/conformance.py")
    rows = conformance.report()
    assert {name for name, _, _ in rows} >= {"softmax", "cross_entropy", "layer_norm",
                                             "gelu_tanh", "gelu_erf"}
    for name, tag, err in rows:
        assert err <= conformance.TOLERANCE[tag.split("-")[1]], (name, tag, err)


@needs_numba
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

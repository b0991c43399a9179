"""The fused Adam/AdamW update (tinyllm/kernels/adam.py): the Numba kernel gives the numbers
of the formula in ``Adam.step`` (tinyllm/optim/adam.py) bit for bit, both match a scalar loop
written out and torch.optim, the update is in place, and the optimizer runs its formula where
the kernel cannot take the arrays.

Exact equality, not a tolerance, between kernel and formula: both round the same float32 (or
float64) operations in the same order (the kernel is compiled without fastmath for that). Any
drift, an FMA contraction or a reordered product, makes these tests fail.
"""
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import kernels, optim
from tinyllm.kernels import adam as A
from tests.conftest import TEST_BACKEND

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = [np.float32, np.float64]
SHAPES = [(), (0,), (1,), (7,), (3, 0), (65, 128), (2, 3, 17)]
# (weight_decay, decoupled): plain Adam, Adam with L2, AdamW
MODES = [(0.0, False), (0.1, False), (0.1, True)]
HYPER = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-8)

needs_numba = pytest.mark.skipif(not kernels.NUMBA_AVAILABLE, reason="numba not installed")
numpy_backend = pytest.mark.skipif(TEST_BACKEND != "numpy",
                                   reason="checks the NumPy kernel path, not the CuPy backend")


def _arrays(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(shape).astype(dtype)
    m = (0.1 * rng.standard_normal(shape)).astype(dtype)
    v = (0.01 * rng.random(shape)).astype(dtype)
    return p, m, v


def _grads(shape, dtype, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(steps)]


def optimizer_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step, decoupled,
                   impl=None):
    """``Adam.step`` (``AdamW.step`` if decoupled) at step ``step`` on the raw arrays p, m, v, in
    place, with gradient g, under the switch ``impl`` (None: the switch in force)."""
    param = tl.tensor(np.zeros((), np.float32), requires_grad=True)
    param.data, param.grad = p, g                       # the optimizer updates p itself
    cls = optim.AdamW if decoupled else optim.Adam
    opt = cls([param], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    opt.state[param] = {"step": step - 1, "exp_avg": m, "exp_avg_sq": v}
    if impl is None:
        opt.step()
    else:
        with kernels.using(impl):
            opt.step()
    assert opt.state[param]["step"] == step and param.data is p


def _run(impl, shape, dtype, weight_decay, decoupled, steps=5, **hyper):
    """p, m, v after ``steps`` updates: ``impl`` "numpy" (the optimizer's formula), "numba" (the
    optimizer with the switch on) or "kernel" (tinyllm.kernels.adam.adam_step itself)."""
    hyper = {**HYPER, **hyper}
    p, m, v = _arrays(shape, dtype)
    for t, g in enumerate(_grads(shape, dtype, steps), start=1):
        args = (p, g, m, v, hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["eps"],
                weight_decay, t, decoupled)
        if impl == "kernel":
            A.adam_step(*args)
        else:
            optimizer_step(*args, impl=impl)
    return p, m, v


# ----------------------------------------------------------------------------------------------
# kernel == formula, and both == a scalar loop

@needs_numba
@pytest.mark.parametrize("weight_decay,decoupled", MODES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_equals_formula_bit_for_bit(dtype, shape, weight_decay, decoupled):
    ref = _run("numpy", shape, dtype, weight_decay, decoupled)
    for impl in ("kernel", "numba"):
        out = _run(impl, shape, dtype, weight_decay, decoupled)
        for a, r in zip(out, ref):
            assert a.shape == shape and a.dtype == dtype
            np.testing.assert_array_equal(a, r)
    if ref[0].size:                                 # and the step did something
        assert not np.array_equal(ref[0], _arrays(shape, dtype)[0])


@needs_numba
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernel_equals_formula_over_many_steps_and_hyperparameters(dtype):
    # 50 steps, where bias corrections are far from 1 at first and near 1 at the end; a large
    # eps and a zero eps; beta2 = 0.999 (the torch default)
    for hyper in (dict(), dict(eps=1e-3, beta2=0.999), dict(eps=0.0, lr=0.3, beta1=0.5)):
        ref = _run("numpy", (33, 31), dtype, 0.05, True, steps=50, **hyper)
        out = _run("kernel", (33, 31), dtype, 0.05, True, steps=50, **hyper)
        for a, r in zip(out, ref):
            np.testing.assert_array_equal(a, r)


def _by_hand(p, m, v, grads, lr, beta1, beta2, eps, weight_decay, decoupled):
    """Scalar float64 loop, one element at a time, every term written out."""
    p, m, v = (a.astype(np.float64).ravel() for a in (p, m, v))
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64).ravel()
        for i in range(p.size):
            gi = g[i]
            if weight_decay and decoupled:
                p[i] = p[i] * (1 - lr * weight_decay)
            elif weight_decay:
                gi = gi + weight_decay * p[i]
            m[i] = beta1 * m[i] + (1 - beta1) * gi
            v[i] = beta2 * v[i] + (1 - beta2) * gi * gi
            m_hat = m[i] / (1 - beta1 ** t)
            v_hat = v[i] / (1 - beta2 ** t)
            p[i] = p[i] - lr * m_hat / (math.sqrt(v_hat) + eps)
    return p, m, v


@pytest.mark.parametrize("impl", ["numpy", "numba", "kernel"])
@pytest.mark.parametrize("weight_decay,decoupled", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_both_equal_a_scalar_loop(impl, dtype, weight_decay, decoupled):
    shape = (5, 7)
    out = _run(impl, shape, dtype, weight_decay, decoupled, steps=4)
    want = _by_hand(*_arrays(shape, dtype), _grads(shape, dtype, 4), **HYPER,
                    weight_decay=weight_decay, decoupled=decoupled)
    # float64: the same operations, rounded the same way, up to a few ulp (the loop computes
    # the L2 and decay terms in Python floats). float32: the arrays are rounded to float32
    # after every operation, the loop is not; m is a difference of nearly equal terms where g
    # changes sign, hence the absolute part, relative to the array's largest value
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for a, w in zip(out, want):
        np.testing.assert_allclose(a.ravel(), w, rtol=rtol, atol=rtol * np.abs(w).max())


def test_first_step_is_lr_sized():
    # m = v = 0, t = 1: m_hat = g, v_hat = g^2, so p moves by exactly -lr * g / (|g| + eps)
    for impl in ("numpy", "numba"):
        g = np.array([1e-3, -1.0, 1e3, 0.0])
        p, m, v = np.zeros(4), np.zeros(4), np.zeros(4)
        optimizer_step(p, g, m, v, 0.01, 0.9, 0.999, 1e-8, 0.0, 1, False, impl=impl)
        np.testing.assert_allclose(p, -0.01 * g / (np.abs(g) + 1e-8), rtol=1e-15, atol=0)
        np.testing.assert_allclose(m, 0.1 * g, rtol=1e-15)
        np.testing.assert_allclose(v, 0.001 * g * g, rtol=1e-15)


# ----------------------------------------------------------------------------------------------
# in place

@pytest.mark.parametrize("impl", ["numpy", "numba", "kernel"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_update_is_in_place(impl, dtype):
    p, m, v = _arrays((4, 6), dtype)
    p0, m0, v0 = p.copy(), m.copy(), v.copy()
    g = _grads((4, 6), dtype, 1)[0]
    g0 = g.copy()
    ids = [id(p), id(m), id(v)]
    if impl == "kernel":
        assert A.adam_step(p, g, m, v, 0.1, 0.9, 0.99, 1e-8, 0.1, 1, False) is None
    else:
        optimizer_step(p, g, m, v, 0.1, 0.9, 0.99, 1e-8, 0.1, 1, False, impl=impl)
    assert [id(p), id(m), id(v)] == ids
    for new, old in [(p, p0), (m, m0), (v, v0)]:
        assert (new != old).all()                   # every element written through
    np.testing.assert_array_equal(g, g0)           # the gradient is only read (even with L2)
    want = _by_hand(p0, m0, v0, [g0], 0.1, 0.9, 0.99, 1e-8, 0.1, False)
    np.testing.assert_allclose(p.ravel(), want[0], rtol=1e-5 if dtype == np.float32 else 1e-13)


@needs_numba
def test_views_are_updated_in_their_base():
    # C-contiguous views (rows of a bigger array, a 0-d element) take the kernel; a strided
    # view takes the formula; all must land in the base array
    for make in (lambda a: a[2:5], lambda a: a[3, 1:4], lambda a: a[1, 2, ...]):
        base_k = _arrays((6, 5), np.float32)[0]
        base_r = base_k.copy()
        for base, impl in ((base_k, "numba"), (base_r, "numpy")):
            p = make(base)
            assert p.flags.c_contiguous and np.shares_memory(p, base)
            g = np.ones_like(p)
            optimizer_step(p, g, np.zeros_like(p), np.zeros_like(p), 0.1, 0.9, 0.99, 1e-8, 0.0,
                           1, True, impl=impl)
        np.testing.assert_array_equal(base_k, base_r)
        assert not np.array_equal(base_k, _arrays((6, 5), np.float32)[0])
    base = _arrays((6, 5), np.float32)[0]
    strided = base[:, ::2]                          # not contiguous: the formula, in place
    before = strided.copy()
    optimizer_step(strided, np.ones_like(strided), np.zeros_like(strided),
                   np.zeros_like(strided), 0.1, 0.9, 0.99, 0.0, 0.0, 1, True, impl="numba")
    np.testing.assert_allclose(base[:, ::2], before - 0.1, rtol=1e-6)
    np.testing.assert_array_equal(base[:, 1::2], _arrays((6, 5), np.float32)[0][:, 1::2])


@needs_numba
def test_zero_d_parameter():
    p, m, v = np.array(1.5, np.float32), np.array(0.0, np.float32), np.array(0.0, np.float32)
    A.adam_step(p, np.array(2.0, np.float32), m, v, 0.1, 0.9, 0.99, 0.0, 0.0, 1, True)
    assert p.shape == () and float(p) == pytest.approx(1.4, rel=1e-6)
    assert float(m) == pytest.approx(0.2, rel=1e-6) and float(v) == pytest.approx(0.04, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# dispatch

class _Spy:
    """Counts calls to the Numba kernel (tinyllm.kernels.adam._adam_step_numba)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = A._adam_step_numba

        def spy(*args):
            self.calls += 1
            return real(*args)

        monkeypatch.setattr(A, "_adam_step_numba", spy)


@needs_numba
def test_dispatch_auto_takes_the_kernel_and_falls_back(monkeypatch):
    spy = _Spy(monkeypatch)
    hyper = (0.1, 0.9, 0.99, 1e-8, 0.1, 1, True)
    p, m, v = _arrays((4, 4), np.float32)
    optimizer_step(p, np.ones_like(p), m, v, *hyper, impl="auto")     # auto: the kernel
    assert spy.calls == (0 if kernels.jit_disabled() else 1)
    calls = spy.calls
    for g in (np.ones((4, 4), np.float64),                            # another dtype
              np.ones((4, 8), np.float32)[:, ::2],                    # not contiguous
              np.ones((4,), np.float32)):                             # broadcast
        for impl in ("auto", "numba"):
            p, m, v = _arrays((4, 4), np.float32)
            pr, mr, vr = p.copy(), m.copy(), v.copy()
            optimizer_step(p, g, m, v, *hyper, impl=impl)
            optimizer_step(pr, g, mr, vr, *hyper, impl="numpy")
            assert spy.calls == calls                                 # the formula ran
            np.testing.assert_array_equal(p, pr)
            np.testing.assert_array_equal(m, mr)
            assert p.dtype == np.float32
    p16, m16, v16 = (a.astype(np.float16) for a in _arrays((4, 4), np.float32))
    pr, mr, vr = p16.copy(), m16.copy(), v16.copy()
    optimizer_step(p16, np.ones_like(p16), m16, v16, *hyper, impl="auto")   # float16: formula
    optimizer_step(pr, np.ones_like(pr), mr, vr, *hyper, impl="numpy")
    assert spy.calls == calls and p16.dtype == np.float16
    np.testing.assert_array_equal(p16, pr)
    optimizer_step(p, np.ones_like(p), m, v, *hyper, impl="numpy")
    assert spy.calls == calls                                         # numpy means numpy
    with pytest.raises(ValueError, match="set_impl: expected one of"):
        optimizer_step(p, np.ones_like(p), m, v, *hyper, impl="cuda")


@needs_numba
@numpy_backend
@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW])
def test_optimizer_uses_the_kernel_and_matches_the_formula(monkeypatch, cls):
    spy = _Spy(monkeypatch)
    rng = np.random.default_rng(0)
    shapes = [(8, 5), (5,), (), (3, 2, 4)]
    inits = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(6)]
    results = {}
    for impl in ("numpy", "numba"):
        kernels.set_impl(impl)
        ps = [tl.tensor(a.copy(), requires_grad=True) for a in inits]
        opt = cls([{"params": ps[:2], "weight_decay": 0.1}, {"params": ps[2:]}], lr=0.05,
                  weight_decay=0.0)
        for step, gs in enumerate(grads):
            for i, (p, g) in enumerate(zip(ps, gs)):
                p.grad = None if (i == 1 and step == 2) else g.copy()   # a step with no grad
            opt.step()
        results[impl] = (ps, opt)
    assert spy.calls == 4 * 6 - 1                                     # numba run, no None
    (ps_r, opt_r), (ps_k, opt_k) = results["numpy"], results["numba"]
    for pr, pk in zip(ps_r, ps_k):
        np.testing.assert_array_equal(pk.numpy(), pr.numpy())
        assert sorted(opt_k.state[pk]) == ["exp_avg", "exp_avg_sq", "step"]
        assert opt_k.state[pk]["step"] == opt_r.state[pr]["step"]
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(opt_k.state[pk][key], opt_r.state[pr][key])
    assert opt_k.state[ps_k[1]]["step"] == 5                          # the skipped step


@numpy_backend
def test_optimizer_takes_a_float64_grad_on_a_float32_parameter():
    p = tl.tensor(np.array([1.0, -2.0], np.float32), requires_grad=True)
    opt = optim.AdamW([p], lr=0.1)
    p.grad = np.array([0.5, 0.25])                                    # float64
    opt.step()
    assert p.data.dtype == np.float32 and opt.state[p]["exp_avg"].dtype == np.float32
    np.testing.assert_allclose(p.numpy(), [0.999 - 0.1, -1.998 - 0.1], rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# NUMBA_DISABLE_JIT: the kernel as plain Python gives the same numbers

@needs_numba
def test_numba_disable_jit_runs_the_python_kernel_with_the_same_results():
    code = """
        import types
        import numpy as np
        from tinyllm import dispatch
        from tinyllm.kernels import adam as A, _numba
        from tests.test_adam_kernel import optimizer_step
        assert _numba.jit_disabled()
        assert isinstance(A._adam_step_numba, types.FunctionType)     # plain Python
        calls = []
        real = A._adam_step_numba
        A._adam_step_numba = lambda *a: calls.append(1) or real(*a)
        rng = np.random.default_rng(0)
        worst = 0.0
        for dtype in (np.float32, np.float64):
            for wd, dec in ((0.0, False), (0.1, False), (0.1, True)):
                p0 = rng.standard_normal((6, 7)).astype(dtype)
                out = {}
                for impl in ("numba", "numpy"):
                    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
                    for t in range(1, 4):
                        g = np.random.default_rng(t).standard_normal((6, 7)).astype(dtype)
                        optimizer_step(p, g, m, v, 0.01, 0.9, 0.95, 1e-8, wd, t, dec, impl=impl)
                    out[impl] = (p, m, v)
                for a, b in zip(out["numba"], out["numpy"]):
                    worst = max(worst, float(np.abs(a - b).max()))
                moved = float(np.abs(out["numba"][0] - p0).max())
        p = np.ones(3)
        auto = dispatch.accelerator("adam", p, p, p, p, cupy=True)   # TINYLLM_KERNELS=auto
        print(worst, moved, len(calls), auto)
    """
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "TINYLLM_KERNELS": "auto"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    worst, moved, calls, auto_choice = out.stdout.split()
    assert float(worst) == 0.0
    assert float(moved) > 1e-3                      # the Python kernel really stepped
    assert int(calls) == 2 * 3 * 3                  # under "numba", every step took it
    assert auto_choice == "None"                    # "auto" takes the formula


# ----------------------------------------------------------------------------------------------
# torch.optim as the oracle: 10 steps, both impls, both dtypes

@pytest.mark.parametrize("impl", ["numpy", "numba", "kernel"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,weight_decay", [("Adam", 0.0), ("Adam", 0.1), ("AdamW", 0.1)])
def test_matches_torch_over_10_steps(impl, dtype, name, weight_decay):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    shape = (33, 65)
    p0 = rng.standard_normal(shape).astype(dtype)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    topt = getattr(torch.optim, name)([tp], lr=1e-2, betas=(0.9, 0.95), eps=1e-8,
                                      weight_decay=weight_decay)
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t in range(1, 11):
        g = rng.standard_normal(shape).astype(dtype)
        tp.grad = torch.tensor(g.copy())
        topt.step()
        args = (p, g, m, v, 1e-2, 0.9, 0.95, 1e-8, weight_decay, t, name == "AdamW")
        if impl == "kernel":
            A.adam_step(*args)
        else:
            optimizer_step(*args, impl=impl)
    state = topt.state[tp]
    # torch orders the operations differently (m by lerp, sqrt(v) / sqrt(1 - beta2^t)), so
    # elements where m or p pass near zero differ by a few ulp of the array's scale: the
    # absolute part is 8 ulp of the largest value (float32), 50 ulp (float64)
    rtol, ulps = (1e-6, 8) if dtype == np.float32 else (1e-12, 50)
    for ours, theirs in [(p, tp.detach().numpy()), (m, state["exp_avg"].numpy()),
                         (v, state["exp_avg_sq"].numpy())]:
        assert ours.dtype == theirs.dtype == dtype
        atol = ulps * np.finfo(dtype).eps * np.abs(theirs).max()
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol)
    assert np.abs(p - p0).max() > 0.05                # 10 steps of ~lr moved p


# ----------------------------------------------------------------------------------------------
# CuPy: the elementwise kernel == the formula run on CuPy, bit for bit

def _run_cupy(impl, shape, dtype, weight_decay, decoupled, steps=5):
    from tinyllm import backend
    p, m, v = (backend.to_device(a, "cuda") for a in _arrays(shape, dtype))
    for t, g in enumerate(_grads(shape, dtype, steps), start=1):
        optimizer_step(p, backend.to_device(g, "cuda"), m, v, HYPER["lr"], HYPER["beta1"],
                       HYPER["beta2"], HYPER["eps"], weight_decay, t, decoupled, impl=impl)
    return [backend.asnumpy(a) for a in (p, m, v)]


@pytest.mark.gpu
@pytest.mark.parametrize("weight_decay,decoupled", MODES)
@pytest.mark.parametrize("shape", [(0,), (7,), (65, 128), (2, 3, 17)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cupy_kernel_equals_formula_bit_for_bit(dtype, shape, weight_decay, decoupled,
                                                monkeypatch):
    launched = []
    original = A._adam_step_cupy
    monkeypatch.setattr(A, "_adam_step_cupy", lambda *a: launched.append(1) or original(*a))
    ref = _run_cupy("numpy", shape, dtype, weight_decay, decoupled)
    assert not launched
    out = _run_cupy("auto", shape, dtype, weight_decay, decoupled)
    assert len(launched) == (5 if np.prod(shape) else 0)
    for a, r in zip(out, ref):
        np.testing.assert_array_equal(a, r)
    cpu = _run("numpy", shape, dtype, weight_decay, decoupled)        # and the CPU's numbers
    for a, r in zip(out, cpu):
        np.testing.assert_allclose(a, r, rtol=1e-6 if dtype == np.float32 else 1e-14,
                                   atol=1e-7 if dtype == np.float32 else 1e-16)

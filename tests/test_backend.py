"""The backend module: array-module dispatch, lazy CuPy, devices, erf, scatter-add."""
import math
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import backend


def test_import_has_no_side_effects_and_does_not_import_cupy():
    code = ("import sys, tinyllm, tinyllm.functional; "
            "x = tinyllm.randn(2, 2, requires_grad=True); (x @ x).sum().backward(); "
            "print('cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False" and out.stderr == ""


def test_get_array_module_on_numpy_and_scalars():
    assert backend.get_array_module(np.zeros(2)) is np
    assert backend.get_array_module(1.0, None) is np
    assert backend.device_of(np.zeros(2)) == "cpu"


def test_asnumpy_and_to_device_cpu():
    a = np.arange(3.0)
    assert backend.asnumpy(a) is a
    assert backend.to_device(a, "cpu") is a
    with pytest.raises(ValueError, match="device must be one of"):
        backend.to_device(a, "tpu")


def test_set_backend_validates():
    with pytest.raises(ValueError, match="set_backend: expected one of"):
        tl.set_backend("jax")
    tl.set_backend("numpy")
    assert tl.get_backend() == "numpy" and tl.randn(2).device == "cpu"


@pytest.mark.skipif(backend.cuda_is_available(), reason="this machine has a GPU")
def test_cupy_backend_without_gpu_fails_clearly():
    with pytest.raises(RuntimeError, match="CuPy|CUDA"):
        tl.set_backend("cupy")
    with pytest.raises(RuntimeError, match="CuPy|CUDA"):
        tl.tensor([1.0]).to("cuda")
    assert not tl.cuda_is_available()


def test_erf_matches_math_erf():
    x = np.concatenate([np.linspace(-7, 7, 20001), [0.0, 2.5, -2.5, 30.0, -np.inf, np.inf]])
    ref = np.array([math.erf(v) for v in x])
    np.testing.assert_allclose(backend.erf(x), ref, rtol=0, atol=2e-15)
    assert backend.erf(np.float32([0.5])).dtype == np.float32


def test_scatter_add_adds_repeated_indices():
    target = np.zeros(4)
    backend.scatter_add(target, np.array([1, 1, 3, 1]), np.array([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(target, [0.0, 7.0, 0.0, 3.0])


def test_generator_is_per_seed():
    tl.manual_seed(5)
    a = backend.get_generator().random(3)
    tl.manual_seed(5)
    b = backend.get_generator().random(3)
    np.testing.assert_array_equal(backend.asnumpy(a), backend.asnumpy(b))


# ----------------------------------------------------------------------------------------------
# on a GPU: the same ops on CuPy agree with NumPy

@pytest.mark.gpu
def test_tensor_to_cuda_and_back_is_differentiable():
    x = tl.tensor([1.0, 2.0], requires_grad=True, device="cpu")
    y = x.to("cuda")
    assert y.device == "cuda"
    (y * y).sum().backward()
    assert x.grad.__class__ is np.ndarray
    np.testing.assert_allclose(x.grad, [2.0, 4.0])


@pytest.mark.gpu
def test_ops_on_cupy_match_numpy():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((6, 5))
    t = rng.integers(0, 5, 6)
    results = {}
    for device in ("cpu", "cuda"):
        x = tl.tensor(z, requires_grad=True, device=device)
        w = tl.tensor(np.ones(5), requires_grad=True, device=device)
        h = tl.layer_norm(tl.gelu(x), 5, w, None)
        loss = tl.cross_entropy(h @ tl.tensor(np.eye(5), device=device), tl.tensor(t,
                                device=device), label_smoothing=0.1)
        loss.backward()
        results[device] = (loss.item(), backend.asnumpy(x.grad), backend.asnumpy(w.grad))
    for a, b in zip(results["cpu"], results["cuda"]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.gpu
def test_gradcheck_on_cupy():
    x = tl.tensor(np.random.default_rng(0).standard_normal((3, 4)), requires_grad=True,
                  device="cuda")
    assert tl.gradcheck(lambda x: tl.softmax(x) @ x.T, [x])


def test_keep_freed_memory_applies_on_glibc_linux():
    """mallopt succeeds on glibc Linux (the CI machine); elsewhere it reports that it did
    nothing."""
    applied = backend.keep_freed_memory()
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert applied is True
    else:
        assert applied is False


def test_memory_policy_applies_at_the_first_backward_not_on_import(monkeypatch):
    calls = []
    monkeypatch.setattr(backend, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setitem(backend._memory, "applied", None)
    monkeypatch.setitem(backend._memory, "policy", None)
    monkeypatch.delenv("TINYLLM_MALLOC", raising=False)
    x = tl.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    assert calls == []                                   # forward alone: malloc untouched
    y.backward()
    (x * x).sum().backward()
    assert calls == [1] and backend.apply_memory_policy() is True


@pytest.mark.parametrize("how", ["env", "call"])
def test_memory_policy_system_leaves_malloc_alone(monkeypatch, how):
    calls = []
    monkeypatch.setattr(backend, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setitem(backend._memory, "applied", None)
    monkeypatch.setitem(backend._memory, "policy", None)
    if how == "env":
        monkeypatch.setenv("TINYLLM_MALLOC", "system")
    else:
        backend.set_memory_policy("system")
    assert backend.memory_policy() == "system"
    x = tl.tensor([1.0, 2.0], requires_grad=True)
    (x * x).sum().backward()
    assert calls == [] and backend.apply_memory_policy() is False
    with pytest.raises(ValueError, match="set_memory_policy"):
        backend.set_memory_policy("sometimes")
    monkeypatch.setitem(backend._memory, "policy", None)
    monkeypatch.setenv("TINYLLM_MALLOC", "bogus")
    with pytest.raises(ValueError, match="TINYLLM_MALLOC"):
        backend.memory_policy()


def test_import_alone_does_not_apply_the_memory_policy():
    code = ("import tinyllm, tinyllm.backend as b; assert b._memory['applied'] is None; "
            "x = tinyllm.tensor([1.0], requires_grad=True); (x * x).sum().backward(); "
            "print(b._memory['applied'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "TINYLLM_MALLOC": "keep"})
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert out.stdout.strip() == str(glibc)

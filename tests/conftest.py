"""Shared test setup.

Backend: the suite runs on NumPy by default. ``TINYLLM_TEST_BACKEND=cupy`` runs it with CuPy as
the default backend (factories create GPU arrays); tests compare through ``.numpy()`` so the same
assertions hold on both. Tests that need a GPU whatever the backend are marked ``gpu`` and are
skipped, with the reason, when CuPy sees no CUDA device.
"""
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyllm
from tinyllm import backend, kernels

TEST_BACKEND = os.environ.get("TINYLLM_TEST_BACKEND", "numpy")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relpath):
    """Import a script of the repo that is not in a package (``benchmarks/train_step.py``) as
    the top-level module its file names (``train_step``), its folder appended to ``sys.path``:
    a process it spawns (``tinyllm.distributed.launch``) unpickles its functions by that name,
    and inherits the path."""
    path = os.path.join(REPO, relpath)
    folder, name = os.path.dirname(path), os.path.splitext(os.path.basename(path))[0]
    module = sys.modules.get(name)
    if module is not None and os.path.abspath(getattr(module, "__file__", "")) == path:
        return module
    if module is not None:
        raise ImportError(f"load_script: a module {name!r} from {module.__file__} is already "
                          f"imported; {relpath} would shadow it")
    if folder not in sys.path:
        sys.path.append(folder)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@pytest.fixture
def shared_data(monkeypatch):
    """The directory holding the corpora (tinyshakespeare.txt, ...): $TINYLLM_DATA, else
    ../shared/data beside the repository. Exported, resolved, as TINYLLM_DATA (a relative path
    would break tests that symlink to it); the test is skipped, with the reason, without it."""
    candidates = [os.environ["TINYLLM_DATA"]] if os.environ.get("TINYLLM_DATA") else []
    candidates.append(os.path.join(os.path.dirname(REPO), "shared", "data"))
    for d in candidates:
        if os.path.isfile(os.path.join(d, "tinyshakespeare.txt")):
            d = Path(d).resolve()
            monkeypatch.setenv("TINYLLM_DATA", str(d))
            return d
    pytest.skip(f"tinyshakespeare.txt not found in {candidates}; set TINYLLM_DATA to the "
                f"directory that holds it")


def pytest_collection_modifyitems(config, items):
    if backend.cuda_is_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA device (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_state():
    """Every test starts on the chosen backend, float32 default, grad mode on, seed 0."""
    tinyllm.set_backend(TEST_BACKEND)
    tinyllm.set_default_dtype(np.float32)
    tinyllm.manual_seed(0)
    kernels.set_impl(None)
    yield
    tinyllm.set_backend(TEST_BACKEND)
    tinyllm.set_default_dtype(np.float32)
    kernels.set_impl(None)


@pytest.fixture
def default_switch(monkeypatch):
    """The kernel switch as a fresh ``import tinyllm`` has it (no TINYLLM_KERNELS, no set_impl,
    no entry point's preference), even in a suite run with TINYLLM_KERNELS=auto; restored
    after the test."""
    from tinyllm import dispatch
    saved = dict(dispatch._state)
    monkeypatch.delenv("TINYLLM_KERNELS", raising=False)
    dispatch._state.update(impl=None, env=None, preferred=None)
    yield
    dispatch._state.update(saved)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def t64(array, requires_grad=True):
    """A float64 tensor from a NumPy array, on the test backend's device."""
    return tinyllm.tensor(np.asarray(array, dtype=np.float64), requires_grad=requires_grad)

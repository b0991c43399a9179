"""The kernel switch and the one dispatcher: readable by default, fast by one switch.

Every op holds its formula in its own ``forward`` and ``backward`` (tinyllm/ops): that is what
runs by default, so stepping into a backward lands on the line of the derivation. Some ops
have an accelerator beside the formula, a Numba kernel for NumPy arrays or a compiled CuPy
kernel (tinyllm/kernels), held equal to the formula by tests. The op asks this module, once
per call, whether to take it::

    if accelerator("softmax", x, axis=axis):        # None by default
        return softmax_kernels.softmax_forward(x)    # the fast path, an ``if`` beside
    m = x.max(axis=axis, keepdims=True)              # the formula

The switch, from strongest to weakest:
- ``tinyllm.kernels.set_impl("numpy" | "numba" | "auto")`` (or ``with using("auto"):``);
- the environment variable ``TINYLLM_KERNELS=numpy|numba|auto`` (read on first use);
- an entry point's preference, ``prefer_impl("auto")``: the ``tinyllm`` command, the examples
  that train and the benchmarks call it, and the two above override it;
- else "numpy": the ops' own formulas, with no kernel module entered.

"auto" takes each accelerator where benchmarks/kernels.py measured it faster than the formula
(every row kernel; not the Numba matmul, which NumPy's BLAS beats), the compiled decode step
of a GPT or Llama (tinyllm/kernels/decode.py; benchmarks/generation.py measures it) and the
int8 matmul for up to 16 rows (decoding; tinyllm/kernels/int8.py). "numba" takes every Numba
kernel that can run, the teaching matmul included. On CuPy arrays "auto" and "numba" take the
ops' compiled CuPy kernels where they have one (AdamW, GELU, LayerNorm).

This module sits below the kernels and the ops (it imports NumPy and the backend only), so
that asking costs no frame inside tinyllm/kernels or Numba when the answer is "no".
"""
import contextlib
import os
import warnings

import numpy as np

from tinyllm import backend

IMPLS = ("numpy", "numba", "auto")

# impl: set_impl's choice; env: TINYLLM_KERNELS, read on first use ("" when unset);
# preferred: an entry point's prefer_impl; numba: whether Numba imports (None: not asked yet)
_state = {"impl": None, "env": None, "preferred": None, "numba": None, "warned": False}


def set_impl(impl):
    """Choose the implementations globally: "numpy" (the ops' formulas, the default), "numba"
    (every Numba kernel that can run) or "auto" (the accelerators where they win).

    ``None`` goes back to the environment's choice (TINYLLM_KERNELS, else "numpy"), dropping an
    entry point's preference too.
    """
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"set_impl: expected one of {IMPLS}, got {impl!r}")
    _state["impl"] = impl
    if impl is None:
        _state["preferred"] = None


def prefer_impl(impl):
    """An entry point's default (``prefer_impl("auto")`` in ``tinyllm train``): used unless the
    user chose with ``set_impl`` or TINYLLM_KERNELS (so ``TINYLLM_KERNELS=numpy tinyllm train``
    runs the formulas). Returns the choice in force."""
    if impl not in IMPLS:
        raise ValueError(f"prefer_impl: expected one of {IMPLS}, got {impl!r}")
    _state["preferred"] = impl
    return get_impl()


def get_impl():
    """The choice in force: set_impl's, else TINYLLM_KERNELS, else an entry point's
    preference, else "numpy"."""
    if _state["impl"] is not None:
        return _state["impl"]
    if _state["env"] is None:
        env = os.environ.get("TINYLLM_KERNELS", "").strip().lower()
        if env and env not in IMPLS:
            raise ValueError(f"TINYLLM_KERNELS must be one of {IMPLS}, got {env!r}")
        _state["env"] = env
    return _state["env"] or _state["preferred"] or "numpy"


def choices():
    """What this process chose (``set_impl``'s choice and an entry point's preference, either
    None), for another process to follow (``follow``): ``tinyllm.distributed.launch``'s
    ranks choose as their parent did."""
    return {"impl": _state["impl"], "preferred": _state["preferred"]}


def follow(chosen):
    """Choose what ``choices()`` returned in another process (the environment's
    TINYLLM_KERNELS is read here as there)."""
    set_impl(chosen["impl"])
    _state["preferred"] = chosen["preferred"]


@contextlib.contextmanager
def using(impl):
    """``with using("numba"): ...`` runs the block under ``set_impl(impl)``, then restores."""
    saved = _state["impl"]
    set_impl(impl)
    try:
        yield
    finally:
        _state["impl"] = saved


def accelerator(op, *arrays, axis=None, cupy=False, auto=True):
    """Which implementation runs this call of ``op``: "numba", "cupy", or None for the op's
    own formula (always None with the default switch).

    arrays:  the floating-point arrays the kernel reads; a kernel needs one dtype (float32 or
             float64), no empty array, and (with ``axis``) the reduction over the last axis.
    cupy:    the op has a compiled CuPy kernel (else CuPy arrays take the formula).
    auto:    "auto" takes the Numba kernel (False where the formula measured faster: matmul).
    """
    impl = get_impl()
    if impl == "numpy":
        return None
    if backend.get_array_module(*arrays) is not np:
        return "cupy" if cupy else None
    a = arrays[0]
    if a.size == 0 or a.dtype.char not in "fd" or any(b.dtype != a.dtype for b in arrays):
        return None                     # Numba compiles float32 and float64 (not float16)
    if axis is not None and axis not in (-1, a.ndim - 1):
        return None
    if not numba_available():
        return None
    if impl == "auto" and (not auto or jit_disabled()):
        # without the JIT a kernel is a Python loop over every element: only an explicit
        # "numba" runs it (that is how a learner steps through a kernel's source)
        return None
    return "numba"


def numba_available():
    """True when Numba imports; the first call that wanted it and cannot have it warns once."""
    if _state["numba"] is None:
        try:
            import numba  # noqa: F401
            _state["numba"] = True
        except ImportError:
            _state["numba"] = False
    if not _state["numba"] and not _state["warned"]:
        _state["warned"] = True
        warnings.warn("tinyllm: numba is not installed; the ops run their NumPy formulas "
                      "(pip install numba for the JIT kernels)", UserWarning, stacklevel=3)
    return _state["numba"]


def jit_disabled():
    """True when NUMBA_DISABLE_JIT=1 (Numba hands back the plain Python functions)."""
    if not numba_available():
        return False
    import numba
    return bool(numba.config.DISABLE_JIT)

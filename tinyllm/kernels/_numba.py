"""Numba, optional: the ``jit`` decorator the kernels use, and the kernel switch.

Every kernel module keeps a readable NumPy reference next to its Numba version; this module
decides which one runs.

The switch, from strongest to weakest:
- the ``impl=`` argument of a kernel call: "numpy" or "numba";
- ``tinyllm.kernels.set_impl("numpy" | "numba" | "auto")``;
- the environment variable ``TINYLLM_KERNELS=numpy|numba|auto`` (read on first use);
- "auto": each dispatcher uses the Numba kernel where benchmarks/kernels.py measured it faster
  than NumPy on this kind of machine, and the reference elsewhere.

``NUMBA_DISABLE_JIT=1`` makes Numba hand back the plain Python functions. "auto" then takes the
NumPy references (a Python loop over every element would be very slow), while an explicit
``impl="numba"`` (or TINYLLM_KERNELS=numba) runs the kernel's Python source line by line: that
is how a learner steps through a kernel in a debugger. Both give the same numbers.

If Numba cannot be imported, every dispatcher uses the references, and the first kernel call
warns once.

Compilation choices (measured on this project's 2-core AVX-512 machine):
- ``cache=True``: compiled kernels are stored beside the source (or in NUMBA_CACHE_DIR), so
  only the first run on a machine pays the 1-2 s compile per signature.
- fastmath as the flag set {'nsz', 'arcp', 'contract', 'afn', 'reassoc'} and never the full
  set: full fastmath also assumes no NaN and no infinity (``nnan``, ``ninf``), and causal or
  padding masks put -inf into softmax, whose max and exp then come out wrong.
- threading layer "workqueue" unless NUMBA_THREADING_LAYER is set: when Numba's parallel
  threads and OpenBLAS's threads take turns (a kernel, then a matmul), OpenMP threads that spin
  while waiting steal the cores from the other pool; workqueue threads do not spin.
- ``parallel=True`` kernels split over rows, and each ``prange`` iteration writes only its own
  rows (reductions across rows go through per-chunk partial buffers), so there are no races.
"""
import os
import warnings

try:
    import numba
    from numba import prange
    NUMBA_AVAILABLE = True
except ImportError:              # pragma: no cover - exercised in a subprocess test
    numba = None
    prange = range
    NUMBA_AVAILABLE = False

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})
IMPLS = ("numpy", "numba", "auto")

_state = {"impl": None, "warned": False}


def jit(parallel=False):
    """``numba.njit`` with the project's settings, or the plain function without Numba."""
    def decorate(fn):
        if not NUMBA_AVAILABLE:
            return fn
        if "NUMBA_THREADING_LAYER" not in os.environ and parallel:
            numba.config.THREADING_LAYER = "workqueue"
        return numba.njit(cache=True, fastmath=set(FASTMATH), parallel=parallel)(fn)
    return decorate


def jit_disabled():
    """True when NUMBA_DISABLE_JIT=1 (Numba returns plain Python functions)."""
    return NUMBA_AVAILABLE and bool(numba.config.DISABLE_JIT)


def set_impl(impl):
    """Choose the kernels globally: "numpy" (references), "numba" or "auto" (the default).

    ``None`` goes back to the environment's choice (TINYLLM_KERNELS, else "auto"). A global
    "numba" applies where a Numba kernel can run (NumPy float arrays, last axis); elsewhere the
    reference runs. Only a per-call ``impl="numba"`` insists, and raises when it cannot.
    """
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"set_impl: expected one of {IMPLS}, got {impl!r}")
    _state["impl"] = impl


def get_impl():
    """The global choice: set_impl's, else TINYLLM_KERNELS, else "auto"."""
    if _state["impl"] is None:
        env = os.environ.get("TINYLLM_KERNELS", "auto").strip().lower() or "auto"
        if env not in IMPLS:
            raise ValueError(f"TINYLLM_KERNELS must be one of {IMPLS}, got {env!r}")
        _state["impl"] = env
    return _state["impl"]


def choose(impl, auto_numba):
    """Resolve a kernel call to "numpy" or "numba" (for NumPy arrays).

    impl:        the call's ``impl=`` argument (None: the global choice).
    auto_numba:  what "auto" picks for this call: True where the Numba kernel is measured to win.
    """
    impl = impl or get_impl()
    if impl not in IMPLS:
        raise ValueError(f"kernel impl must be one of {IMPLS}, got {impl!r}")
    if impl == "numpy":
        return "numpy"
    if not NUMBA_AVAILABLE:
        if not _state["warned"]:
            _state["warned"] = True
            warnings.warn("tinyllm: numba is not installed; using the NumPy reference kernels "
                          "(pip install numba for the JIT kernels)", UserWarning,
                          stacklevel=3)
        return "numpy"
    if impl == "numba":
        return "numba"
    return "numba" if auto_numba and not jit_disabled() else "numpy"

"""Numba, optional: the ``jit`` decorator and the ``Kernel`` (serial + parallel) the kernels use.

Which implementation runs (the ops' formulas or these kernels) is the switch in
tinyllm/dispatch.py, not this module: a kernel here only ever runs because an op asked
``dispatch.accelerator`` and got "numba".

``NUMBA_DISABLE_JIT=1`` makes Numba hand back the plain Python functions: "auto" then keeps the
ops' formulas (a Python loop over every element would be very slow), while
``set_impl("numba")`` (or TINYLLM_KERNELS=numba) runs the kernel's Python source line by line:
that is how a learner steps through a kernel in a debugger. Both give the same numbers.

Compilation choices (measured on this project's 2-core AVX-512 machine):
- ``cache=True``: compiled kernels are stored beside the source (or in NUMBA_CACHE_DIR), so
  only the first run on a machine pays the 1-2 s compile per signature.
- fastmath as the flag set {'nsz', 'arcp', 'contract', 'afn', 'reassoc'} and never the full
  set: full fastmath also assumes no NaN and no infinity (``nnan``, ``ninf``), and causal or
  padding masks put -inf into softmax, whose max and exp then come out wrong.
- ``error_model="numpy"``: a float division by zero gives inf/NaN as in NumPy, instead of
  Python's ZeroDivisionError. The check behind that exception is a branch in every division,
  and it kept loops with a division (tanh, GELU) from vectorizing: 8.7 ms -> 3.3 ms for a
  float32 tanh over 1M elements.
- Each row kernel is compiled twice (``Kernel``): serial, and parallel over rows. A parallel
  launch has a fixed cost (measured per call: ~30 us with OpenMP spinning, ~100 us with OpenMP
  passive waiting, ~450 us with the workqueue layer), so inputs below PARALLEL_MIN_ELEMENTS
  run serially, with no thread launch at all.
- threading layer "workqueue" unless NUMBA_THREADING_LAYER is set: when Numba's parallel
  threads and OpenBLAS's threads take turns (a kernel, then a matmul), OpenMP threads that keep
  spinning after a kernel steal the cores from BLAS (a loop alternating them ran 2.35x slower,
  benchmarks/threading_layers.py); workqueue threads do not spin. OpenMP with
  OMP_WAIT_POLICY=passive avoids both the spinning and most of workqueue's launch cost, but
  it is an environment setting of the whole process (it changes PyTorch's OpenMP too), so
  tinyllm never sets it: an entry point that owns the process may export it before Python
  starts, together with NUMBA_THREADING_LAYER=omp.
- parallel kernels split over rows, and each ``prange`` iteration writes only its own rows
  (reductions across rows go through per-chunk partial buffers), so there are no races.
"""
import os
import types


try:
    import numba
    from numba import prange
    NUMBA_AVAILABLE = True
except ImportError:              # pragma: no cover - exercised in a subprocess test
    numba = None
    prange = range
    NUMBA_AVAILABLE = False

FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})
# Row kernels run in parallel from this many elements on, serially below, per threading layer
# (measured on the 2-core machine; see benchmarks/RESULTS.md). Under workqueue two threads
# were never faster than one on these memory-bound kernels up to 16M elements (a launch costs
# ~450 us and the work did not scale). OpenMP scaled 2.3x at 1M elements with its default
# spinning wait (which slows BLAS when they alternate) and not at all with a passive wait.
PARALLEL_MIN_ELEMENTS = {"workqueue": 1 << 24, "omp": 1 << 20, "tbb": 1 << 20}


def jit(parallel=False, fastmath=True):
    """``numba.njit`` with the project's settings, or the plain function without Numba.

    ``fastmath=False`` compiles without the FASTMATH flags, for scalar formulas that must keep
    IEEE semantics with infinities: ``reassoc`` with ``nsz`` lets LLVM distribute a product
    over a sum, and (1 - e) inf + e inf then came out NaN instead of inf (see
    kernels/cross_entropy.py). A call from a fastmath kernel keeps the callee's own flags.
    """
    def decorate(fn):
        if not NUMBA_AVAILABLE:
            return fn
        if "NUMBA_THREADING_LAYER" not in os.environ and parallel:
            numba.config.THREADING_LAYER = "workqueue"
        return numba.njit(cache=True, fastmath=set(FASTMATH) if fastmath else False,
                          parallel=parallel, error_model="numpy")(fn)
    return decorate


class Kernel:
    """A kernel compiled twice from one Python function: ``parallel`` and ``serial``.

    ``kernel.run(n, *args)`` launches the parallel version when the work covers at least
    ``parallel_min_elements()`` elements, else the serial one (where ``prange`` is ``range``).
    ``kernel.py_func`` is the Python source, for reading and stepping through.
    """

    def __init__(self, fn):
        self.py_func = fn
        self.parallel = jit(parallel=True)(fn)
        # Numba's on-disk cache keys a function by its qualified name and signature, not by
        # the ``parallel`` flag: compiling ``fn`` itself twice would let one variant load the
        # other's machine code. The serial variant is compiled from a renamed copy instead.
        self.serial = jit(parallel=False)(_renamed(fn, "_serial"))

    def run(self, n_elements, *args):
        kernel = self.parallel if n_elements >= parallel_min_elements() else self.serial
        return kernel(*args)


def parallel_min_elements():
    """The serial/parallel crossover for the threading layer Numba is configured to use."""
    layer = str(numba.config.THREADING_LAYER).lower() if NUMBA_AVAILABLE else "workqueue"
    return PARALLEL_MIN_ELEMENTS.get(layer, PARALLEL_MIN_ELEMENTS["workqueue"])


def _renamed(fn, suffix):
    """A copy of function ``fn`` (same code, globals, defaults) under another name."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix,
                              fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__module__ = fn.__module__
    copy.__doc__ = fn.__doc__
    return copy


def kernel(fn):
    """Decorator: ``@kernel`` makes a ``Kernel`` (serial + parallel) of a row-loop function."""
    return Kernel(fn)


def jit_disabled():
    """True when NUMBA_DISABLE_JIT=1 (Numba returns plain Python functions)."""
    return NUMBA_AVAILABLE and bool(numba.config.DISABLE_JIT)

"""The one place that knows about array libraries.

Every op receives raw arrays and asks this module which library they belong to::

    xp = get_array_module(x)       # numpy or cupy
    y = xp.exp(x)

so one implementation serves NumPy (CPU) and CuPy (GPU), as in Chainer. CuPy is imported
lazily, here and nowhere else: ``import tinyllm`` never touches it, and a machine without a GPU
never needs it installed.

Also here: the default dtype (float32), the default backend for new tensors, the seeded random
generators, and the few array operations whose spelling differs between the two libraries
(scatter-add, erf).
"""
import os
import sys

import numpy as np

_DEVICES = ("cpu", "cuda")
_BACKENDS = {"numpy": "cpu", "cupy": "cuda"}

_state = {
    "default_dtype": np.dtype(np.float32),
    "device": "cpu",          # where factories (tensor, zeros, randn, ...) put new arrays
    "seed": None,             # last value given to manual_seed, None = OS entropy
    "generators": {},         # device -> random generator, created on first use
}


# ----------------------------------------------------------------------------------------------
# CuPy, imported on demand

def _import_cupy():
    """Import and return cupy, or raise a RuntimeError that says how to get it."""
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(
            "the cupy backend needs CuPy: pip install 'tinyllm[cuda]' (CuPy for CUDA 12)") from e
    return cupy


def _import_cupy_module(name):
    """Import and return ``cupy.<name>`` (e.g. "cuda.nccl", which ``import cupy`` does not
    load), after ``_import_cupy``; its ImportError propagates."""
    import importlib
    _import_cupy()
    return importlib.import_module(f"cupy.{name}")


def cuda_is_available():
    """True when CuPy imports and sees at least one CUDA device.

    On a machine without a GPU ``import cupy`` can succeed while every array creation fails,
    so this asks ``cupy.cuda.is_available()`` rather than trusting the import.
    """
    try:
        cupy = _import_cupy()
        return bool(cupy.cuda.is_available())
    except Exception:
        return False


def get_array_module(*arrays):
    """Return the array library (numpy or cupy) that owns ``arrays``.

    Anything that is not a CuPy array (NumPy arrays, Python scalars, None) counts as NumPy. If
    CuPy has never been imported, no argument can be a CuPy array, so this never imports it.
    """
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        for a in arrays:
            if isinstance(a, cupy.ndarray):
                return cupy
    return np


def device_of(array):
    """'cuda' for a CuPy array, 'cpu' for anything else."""
    return "cpu" if get_array_module(array) is np else "cuda"


def asnumpy(array):
    """A NumPy array with the same values (copies from the GPU when needed)."""
    xp = get_array_module(array)
    if xp is np:
        return np.asarray(array)
    return xp.asnumpy(array)


def to_device(array, device):
    """Move ``array`` to ``device`` ('cpu' or 'cuda'); returns the same object when it is there."""
    device = _check_device(device)
    if device_of(array) == device:
        return array
    if device == "cpu":
        return asnumpy(array)
    return _import_cupy().asarray(array)


def _check_device(device):
    if device not in _DEVICES:
        raise ValueError(f"device must be one of {_DEVICES}, got {device!r}")
    if device == "cuda" and not cuda_is_available():
        raise RuntimeError("device 'cuda' requested but CuPy sees no CUDA device "
                           "(pip install 'tinyllm[cuda]' on a machine with an NVIDIA GPU)")
    return device


def xp_for_device(device):
    """The array library for ``device``."""
    return np if device == "cpu" else _import_cupy()


# ----------------------------------------------------------------------------------------------
# Defaults: backend for new tensors, dtype

def set_backend(name):
    """Choose where new tensors are created: "numpy" (CPU) or "cupy" (GPU).

    Existing tensors stay where they are; use ``Tensor.to(device)`` to move them.
    """
    if name not in _BACKENDS:
        raise ValueError(f"set_backend: expected one of {sorted(_BACKENDS)}, got {name!r}")
    _state["device"] = _check_device(_BACKENDS[name])


def get_backend():
    """"numpy" or "cupy": the library new tensors are created with."""
    return "numpy" if _state["device"] == "cpu" else "cupy"


def default_device():
    return _state["device"]


def set_default_dtype(dtype):
    """Set the dtype given to floating-point data by tensor factories (float32 or float64)."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float16, np.float32, np.float64):
        raise TypeError(f"set_default_dtype: expected a floating dtype, got {dtype}")
    _state["default_dtype"] = dtype


def get_default_dtype():
    return _state["default_dtype"]


# ----------------------------------------------------------------------------------------------
# Random numbers: one seeded generator per device

def manual_seed(seed):
    """Seed every random draw tinyllm makes (randn, dropout masks, ...) on every device."""
    _state["seed"] = int(seed)
    _state["generators"].clear()


def get_generator(device=None):
    """The random generator for ``device``, created on first use: a NumPy ``Generator`` for
    'cpu', a ``CupyGenerator`` for 'cuda'."""
    device = device or _state["device"]
    gen = _state["generators"].get(device)
    if gen is None:
        if device == "cpu":
            gen = np.random.default_rng(_state["seed"])
        else:
            gen = CupyGenerator(_state["seed"])
        _state["generators"][_check_device(device)] = gen
    return gen


def generator_states():
    """{device: state} of the generators created so far (JSON-ready dicts), for checkpoints."""
    return {device: gen.bit_generator.state for device, gen in _state["generators"].items()}


def set_generator_states(states):
    """Put generators back in the states ``generator_states`` returned. The GPU's needs no GPU
    to be restored (its state is on the host): a checkpoint from a GPU run loads anywhere."""
    for device, state in states.items():
        if device not in _DEVICES:
            raise ValueError(f"set_generator_states: unknown device {device!r}")
        gen = _state["generators"].get(device)
        if gen is None:
            gen = np.random.default_rng() if device == "cpu" else CupyGenerator()
            _state["generators"][device] = gen
        gen.bit_generator.state = state


class CupyGenerator:
    """Random draws on the GPU whose whole state lives on the host, so it can be saved.

    CuPy's generators keep their state in GPU memory with no API to read or set it, so a
    checkpoint could not continue their stream. Here each draw takes one 63-bit key from a NumPy
    generator (``bit_generator``, PCG64) and fills the array on the GPU with CuPy's
    counter-based Philox4x32-10 keyed by it. Philox's state is just (key, counter), so a fresh
    one per draw costs one small initialisation kernel, and the sequence of draws is a function
    of the host generator's state: checkpoints save and restore that (``generator_states``),
    and a resumed GPU run draws the same dropout masks as an uninterrupted one. The key stream
    is seeded apart from the CPU generator's (spawn key 1), so the two are not the same numbers.

    It offers the draws tinyllm makes: ``random`` (uniform [0, 1)) and ``standard_normal``.
    """

    def __init__(self, seed=None):
        self._keys = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))

    @property
    def bit_generator(self):
        """The host generator's bit generator: its ``.state`` is this generator's state."""
        return self._keys.bit_generator

    def _philox(self):
        cupy = _import_cupy()
        key = int(self._keys.integers(0, 2**63))
        return cupy.random.Generator(cupy.random.Philox4x3210(key))

    def random(self, size=None, dtype=np.float64):
        return self._philox().random(size, dtype=dtype)

    def standard_normal(self, size=None, dtype=np.float64):
        return self._philox().standard_normal(size, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Operations spelled differently by NumPy and CuPy

def scatter_add(target, index, values):
    """``target[index] += values`` where repeated indices add up (unbuffered), in place.

    Plain ``target[index] += values`` is buffered: with a repeated index only the last write
    survives. NumPy spells the unbuffered version ``np.add.at``, and so does CuPy from version 13
    (before it, only ``cupyx.scatter_add``, which CuPy 14 deprecates).
    """
    xp = get_array_module(target)
    add_at = getattr(xp.add, "at", None)
    if add_at is not None:
        add_at(target, index, values)
    else:                                       # CuPy < 13
        import cupyx
        cupyx.scatter_add(target, index, values)
    return target


def erf(x):
    """The error function erf(x) = 2/sqrt(pi) * integral_0^x exp(-t^2) dt, elementwise.

    NumPy has no erf, and the engine's math stays NumPy/CuPy-only, so we evaluate it with two
    classical expansions, each used where it converges fast (both checked against ``math.erf``
    to ~1e-15 in tests/test_backend.py):

    - |x| < 2.5, the series with all-positive terms (no cancellation):
          erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n  2^n x^(2n+1) / (1*3*...*(2n+1))
      consecutive terms have ratio 2 x^2 / (2n+3).
    - |x| >= 2.5, the continued fraction of the complement, evaluated from the tail:
          erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...)))))
    """
    xp = get_array_module(x)
    x = xp.asarray(x)
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float64)
    a = xp.abs(x).astype(np.float64)
    out = xp.empty_like(a)

    small = a < 2.5
    s = a[small]
    term = s.copy()
    total = s.copy()
    s2 = s * s
    for n in range(40):                       # 40 terms: within 1.3e-15 of math.erf on [0, 2.5)
        term = term * (2.0 * s2 / (2 * n + 3))
        total = total + term
    out[small] = 2.0 / np.sqrt(np.pi) * xp.exp(-s2) * total

    big = ~small
    b = a[big]
    frac = xp.zeros_like(b)
    for k in range(40, 0, -1):                 # partial numerators k/2: ..., 3/2, 1, 1/2
        frac = (k / 2.0) / (b + frac)
    out[big] = 1.0 - xp.exp(-b * b) / np.sqrt(np.pi) / (b + frac)

    return (xp.sign(x) * out).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Compiled CuPy kernels (the GPU's counterpart of the Numba kernels), built on first use

_cupy_kernels = {}


def cupy_elementwise_kernel(name, in_params, out_params, operation, options=()):
    """``cupy.ElementwiseKernel(in_params, out_params, operation, name)``, built once and kept.

    The kernel modules describe their GPU kernels through this and ``cupy_raw_kernel``, so that
    CuPy stays imported here only. A kernel is compiled (NVRTC, cached on disk by CuPy) the
    first time it runs on a dtype.
    """
    key = ("elementwise", name, options)
    kern = _cupy_kernels.get(key)
    if kern is None:
        cupy = _import_cupy()
        kern = cupy.ElementwiseKernel(in_params, out_params, operation, name,
                                      options=tuple(options))
        _cupy_kernels[key] = kern
    return kern


def cupy_reduction_kernel(name, in_params, out_params, map_expr, reduce_expr, post_map_expr,
                          identity):
    """``cupy.ReductionKernel(...)``, built once and kept (see cupy_elementwise_kernel)."""
    key = ("reduction", name)
    kern = _cupy_kernels.get(key)
    if kern is None:
        cupy = _import_cupy()
        kern = cupy.ReductionKernel(in_params, out_params, map_expr, reduce_expr,
                                    post_map_expr, identity, name)
        _cupy_kernels[key] = kern
    return kern


def cupy_raw_kernel(name, source, options=()):
    """``cupy.RawKernel(source, name)`` (CUDA C), built once and kept."""
    key = ("raw", name, source, options)
    kern = _cupy_kernels.get(key)
    if kern is None:
        cupy = _import_cupy()
        kern = cupy.RawKernel(source, name, options=tuple(options))
        _cupy_kernels[key] = kern
    return kern


# ----------------------------------------------------------------------------------------------
# The CPU allocator

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3          # mallopt parameters, from glibc's malloc.h


def keep_freed_memory(mmap_threshold=32 << 20, trim_threshold=512 << 20):
    """Make glibc keep freed array memory for reuse instead of returning it to the OS.

    A training step allocates and frees the same few hundred arrays every step. glibc serves
    blocks above its mmap threshold (128 KiB at start; it adapts, but only up to the sizes it
    has seen freed) with a fresh ``mmap`` each time and unmaps them on free, and it returns the
    top of the heap to the OS beyond its trim threshold. Either way the next step's arrays
    land on new pages, and the kernel zero-fills every 4 KiB page on first touch. Raising both
    thresholds keeps those pages mapped: on the shakespeare-char GPT training step, page faults
    fell from ~7,100 to ~4 per step and system time from 11 ms to 0.5 ms per step. The cost:
    the process's resident memory stays at its peak.

    Process-wide, so tinyllm never does it on import. The first ``Tensor.backward`` of a
    process calls it (the memory policy below, "keep" unless ``TINYLLM_MALLOC=system``), and
    the CLI's commands and the benchmarks call it at start. Returns True where it applied
    (glibc), False elsewhere (macOS, musl, Windows), where it does nothing. 32 MiB is the
    largest mmap threshold glibc accepts.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
    ok_trim = mallopt(_M_TRIM_THRESHOLD, int(trim_threshold))
    return bool(ok_mmap and ok_trim)


MEMORY_POLICIES = ("keep", "system")
_memory = {"policy": None, "applied": None}     # policy: set_memory_policy's; applied: done?


def set_memory_policy(policy):
    """How the first backward treats the CPU allocator: "keep" (``keep_freed_memory()``, the
    default) or "system" (leave glibc's malloc as it is). ``None`` goes back to the
    environment's choice, ``TINYLLM_MALLOC=keep|system``. Only a policy chosen before the
    first backward takes effect: "keep" cannot be undone in a running process."""
    if policy is not None and policy not in MEMORY_POLICIES:
        raise ValueError(f"set_memory_policy: expected one of {MEMORY_POLICIES}, got {policy!r}")
    _memory["policy"] = policy


def memory_policy():
    """The policy in force: set_memory_policy's, else TINYLLM_MALLOC, else "keep"."""
    if _memory["policy"] is not None:
        return _memory["policy"]
    env = os.environ.get("TINYLLM_MALLOC", "").strip().lower() or "keep"
    if env not in MEMORY_POLICIES:
        raise ValueError(f"TINYLLM_MALLOC: expected one of {MEMORY_POLICIES}, got {env!r}")
    return env


def apply_memory_policy():
    """Called by every ``Tensor.backward``; acts once per process, on the first. Returns
    whether freed memory is kept (False under "system" or where mallopt does not exist).

    Why at the first backward and not on import: importing a library should not change the
    process's malloc, and a process that never trains does not need it. Why at all: in a plain
    ``import tinyllm`` process a GPT training step otherwise page-faults on every activation
    and gradient array it allocates (benchmarks/allocation.py measures it)."""
    if _memory["applied"] is None:
        _memory["applied"] = memory_policy() == "keep" and keep_freed_memory()
    return _memory["applied"]

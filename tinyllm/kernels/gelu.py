"""GELU forward and backward: NumPy reference, Numba kernel, dispatcher.

    exact:  y = x Phi(x),  Phi(x) = (1 + erf(x / sqrt 2)) / 2,  dy/dx = Phi(x) + x phi(x)
    tanh:   u = sqrt(2/pi) (x + 0.044715 x^3),  y = x (1 + tanh u) / 2
            dy/dx = (1 + tanh u) / 2 + x (1 - tanh^2 u) / 2 * sqrt(2/pi) (1 + 3 * 0.044715 x^2)
(phi = e^(-x^2/2) / sqrt(2 pi), the standard normal density; see tinyllm/ops/elementwise.py.)

The NumPy reference evaluates these as whole-array expressions, about eight temporaries of
x's size per pass; the Numba kernel computes each element in registers in one pass over x (and
dy), in parallel over the flattened array. Backward recomputes tanh u / erf from x instead of
saving them, so forward saves only x. On CuPy arrays the same element formulas run as one
``ElementwiseKernel`` launch (CUDA's tanh, erf, exp) instead of the reference's ~8-12.

NaN and +-inf give what the reference gives, element by element (NaN stays NaN through the
fast tanh and erf of kernels/_math.py; GELU(-inf) is -inf * 0 = NaN in both, and so is the
derivative at +-inf); tests/test_kernels_nonfinite.py holds every version to that.

Shapes: x, y, dy, dx any shape (treated as flat).
"""
import math

import numpy as np

from tinyllm import backend
from tinyllm.kernels._math import erf, exp, tanh
from tinyllm.kernels._numba import choose, kernel, prange, use_gpu_kernel

AUTO_MIN_ELEMENTS = 1       # serial Numba beat NumPy from (2, 8) up; see benchmarks/RESULTS.md

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_APPROXIMATIONS = ("none", "tanh")


# ----------------------------------------------------------------------------------------------
# reference (NumPy or CuPy)

def gelu_forward_reference(x, approximate="none"):
    xp = backend.get_array_module(x)
    if approximate == "tanh":
        return 0.5 * x * (1 + xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
    return x * (0.5 * (1 + backend.erf(x * _INV_SQRT_2)))


def gelu_backward_reference(x, dy, approximate="none"):
    xp = backend.get_array_module(x)
    if approximate == "tanh":
        t = xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
        du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
        return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)
    cdf = 0.5 * (1 + backend.erf(x * _INV_SQRT_2))
    pdf = _INV_SQRT_2PI * xp.exp(-0.5 * x * x)
    return dy * (cdf + x * pdf)


# ----------------------------------------------------------------------------------------------
# Numba (flat arrays; iteration i writes only y[i] / dx[i])

@kernel
def _gelu_tanh_forward_numba(x, y):
    k, a = x.dtype.type(_SQRT_2_OVER_PI), x.dtype.type(0.044715)    # constants in x's dtype
    half, one = x.dtype.type(0.5), x.dtype.type(1)
    for i in prange(x.shape[0]):
        v = x[i]
        t = tanh(k * (v + a * v * v * v))
        y[i] = half * v * (one + t)


@kernel
def _gelu_tanh_backward_numba(x, dy, dx):
    k, a = x.dtype.type(_SQRT_2_OVER_PI), x.dtype.type(0.044715)
    a3, half, one = x.dtype.type(3 * 0.044715), x.dtype.type(0.5), x.dtype.type(1)
    for i in prange(x.shape[0]):
        v = x[i]
        t = tanh(k * (v + a * v * v * v))
        du = k * (one + a3 * v * v)
        dx[i] = dy[i] * (half * (one + t) + half * v * (one - t * t) * du)


@kernel
def _gelu_erf_forward_numba(x, y):
    r2, half, one = x.dtype.type(_INV_SQRT_2), x.dtype.type(0.5), x.dtype.type(1)
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = v * half * (one + erf(v * r2))


@kernel
def _gelu_erf_backward_numba(x, dy, dx):
    r2, half, one = x.dtype.type(_INV_SQRT_2), x.dtype.type(0.5), x.dtype.type(1)
    r2pi = x.dtype.type(_INV_SQRT_2PI)
    for i in prange(x.shape[0]):
        v = x[i]
        cdf = half * (one + erf(v * r2))
        dx[i] = dy[i] * (cdf + v * r2pi * exp(-half * v * v))


# ----------------------------------------------------------------------------------------------
# CuPy (GPU): the Numba loops' bodies as elementwise kernels, constants in x's dtype T

_K = f"const T k = {_SQRT_2_OVER_PI!r}, a = 0.044715, a3 = {3 * 0.044715!r};"
_CUPY_GELU = {
    ("tanh", "forward"): ("T x", "T y", _K + """
        T t = tanh(k * (x + a * x * x * x));
        y = (T)0.5 * x * ((T)1 + t);"""),
    ("tanh", "backward"): ("T x, T dy", "T dx", _K + """
        T t = tanh(k * (x + a * x * x * x));
        T du = k * ((T)1 + a3 * x * x);
        dx = dy * ((T)0.5 * ((T)1 + t) + (T)0.5 * x * ((T)1 - t * t) * du);"""),
    ("none", "forward"): ("T x", "T y", f"""
        y = x * (T)0.5 * ((T)1 + erf(x * (T){_INV_SQRT_2!r}));"""),
    ("none", "backward"): ("T x, T dy", "T dx", f"""
        T cdf = (T)0.5 * ((T)1 + erf(x * (T){_INV_SQRT_2!r}));
        dx = dy * (cdf + x * (T){_INV_SQRT_2PI!r} * exp((T)-0.5 * x * x));"""),
}


def _gelu_cupy(approximate, direction):
    in_params, out_params, operation = _CUPY_GELU[(approximate, direction)]
    return backend.cupy_elementwise_kernel(
        f"tinyllm_gelu_{approximate}_{direction}", in_params, out_params, operation)


def _use_cupy(impl, approximate, *arrays):
    """CuPy float32/float64 arrays of one dtype, and the switch not on "numpy"."""
    if approximate not in _APPROXIMATIONS:
        raise ValueError(f"gelu: approximate must be one of {_APPROXIMATIONS}, got "
                         f"{approximate!r}")
    a = arrays[0]
    return (impl != "numba" and backend.get_array_module(*arrays) is not np
            and a.dtype.char in "fd" and all(b.dtype == a.dtype for b in arrays)
            and use_gpu_kernel(impl))


# ----------------------------------------------------------------------------------------------
# dispatch

def _use_numba(impl, approximate, *arrays):
    if approximate not in _APPROXIMATIONS:
        raise ValueError(f"gelu: approximate must be one of {_APPROXIMATIONS}, got "
                         f"{approximate!r}")
    a = arrays[0]
    if backend.get_array_module(*arrays) is not np:
        if impl == "numba":
            raise ValueError("gelu: impl='numba' needs NumPy arrays, got CuPy arrays")
        return False
    if a.dtype.kind != "f" or any(b.dtype != a.dtype for b in arrays) or a.size == 0:
        if impl == "numba":
            raise ValueError(f"gelu: impl='numba' needs float arrays of one dtype, got "
                             f"{[b.dtype for b in arrays]}")
        return False
    return choose(impl, a.size >= AUTO_MIN_ELEMENTS) == "numba"


def gelu_forward(x, approximate="none", impl=None):
    """GELU of x; ``approximate`` "none" (erf) or "tanh"."""
    if _use_cupy(impl, approximate, x):
        return _gelu_cupy(approximate, "forward")(x)
    if not _use_numba(impl, approximate, x):
        return gelu_forward_reference(x, approximate)
    x1 = np.ascontiguousarray(x).reshape(-1)                      # any shape -> (n,)
    y1 = np.empty_like(x1)
    launch = _gelu_tanh_forward_numba if approximate == "tanh" else _gelu_erf_forward_numba
    launch.run(x1.size, x1, y1)
    return y1.reshape(x.shape)


def gelu_backward(x, dy, approximate="none", impl=None):
    """dx of GELU, from the input x and the upstream gradient dy."""
    if _use_cupy(impl, approximate, x, dy):
        return _gelu_cupy(approximate, "backward")(x, dy)
    if not _use_numba(impl, approximate, x, dy):
        return gelu_backward_reference(x, dy, approximate)
    x1 = np.ascontiguousarray(x).reshape(-1)                      # any shape -> (n,)
    dy1 = np.ascontiguousarray(dy).reshape(-1)
    dx1 = np.empty_like(x1)
    launch = _gelu_tanh_backward_numba if approximate == "tanh" else _gelu_erf_backward_numba
    launch.run(x1.size, x1, dy1, dx1)
    return dx1.reshape(x.shape)

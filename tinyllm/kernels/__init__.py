"""Kernels: the array-level hot paths, each a readable NumPy reference plus a Numba version.

Kernels take and return raw arrays (never Tensors); the autograd ops in ``tinyllm.ops`` call
them. Every public kernel takes ``impl=None | "numpy" | "numba"`` and dispatches through
``_numba.choose``; CuPy arrays always take the reference path, written with ``xp`` so that it
runs on CuPy unchanged.
"""
from tinyllm.kernels._numba import NUMBA_AVAILABLE, get_impl, jit_disabled, set_impl

__all__ = ["NUMBA_AVAILABLE", "get_impl", "set_impl", "jit_disabled"]

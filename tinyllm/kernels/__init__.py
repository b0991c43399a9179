"""Kernels: accelerators for the hot ops, Numba for NumPy arrays and compiled CuPy kernels.

Kernels take and return raw arrays (never Tensors). The formula each one accelerates lives in
its op (tinyllm/ops), which runs it by default; an op calls its kernel only when the switch in
tinyllm/dispatch.py says so: ``tinyllm.kernels.set_impl("auto")`` or ``TINYLLM_KERNELS=auto``
(the ``tinyllm`` command, the training examples and the benchmarks turn it on themselves with
``prefer_impl("auto")`` unless TINYLLM_KERNELS says otherwise). Tests hold every kernel equal
to its op's formula.

CuPy arrays take the ops' formulas, except in AdamW, GELU and LayerNorm: these have compiled
CuPy kernels beside their Numba versions. On a GPU a small model's step is bound by kernel
launches, and each of those kernels replaces 10-20 launches of the formula.
"""
from tinyllm.dispatch import get_impl, prefer_impl, set_impl, using
from tinyllm.kernels._numba import NUMBA_AVAILABLE, jit_disabled

__all__ = ["NUMBA_AVAILABLE", "get_impl", "set_impl", "prefer_impl", "using", "jit_disabled"]

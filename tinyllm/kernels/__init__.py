"""Kernels: the array-level hot paths, each a readable NumPy reference plus a Numba version.

Kernels take and return raw arrays (never Tensors); the autograd ops in ``tinyllm.ops`` call
them. Readable by default, fast by one switch: a plain ``import tinyllm`` runs the NumPy
references; ``tinyllm.kernels.set_impl("auto")`` or ``TINYLLM_KERNELS=auto`` turns the
accelerators on, and the ``tinyllm`` command, the training examples and the benchmarks do so
themselves (``prefer_impl("auto")``) unless TINYLLM_KERNELS says otherwise.

Every public kernel takes ``impl=None | "numpy" | "numba"`` and dispatches through
``_numba.choose``. The references are written with ``xp`` so that they run on CuPy unchanged.
CuPy arrays take the reference, except in AdamW, GELU and LayerNorm: these have compiled CuPy
kernels beside their Numba versions (``_numba.use_gpu_kernel``; "numpy" picks the reference
on both devices). On a GPU a small model's step is bound by kernel launches, and each of
those kernels replaces 10-20 launches of the reference.
"""
from tinyllm.dispatch import get_impl, prefer_impl, set_impl, using
from tinyllm.kernels._numba import NUMBA_AVAILABLE, jit_disabled

__all__ = ["NUMBA_AVAILABLE", "get_impl", "set_impl", "prefer_impl", "using", "jit_disabled"]

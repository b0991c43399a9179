"""Tensor factories: tensor, zeros, ones, full, arange, randn, rand and the *_like forms.

Floating-point results get the default dtype (float32; see ``tinyllm.set_default_dtype``) unless
``dtype`` is given, and land on the default device (``tinyllm.set_backend``) unless ``device``
is given. Random factories draw from the generator seeded by ``tinyllm.manual_seed``.
"""
import numpy as np

from tinyllm import backend
from tinyllm.autograd.tensor import Tensor


def _shape(shape):
    if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
        shape = tuple(shape[0])
    return tuple(int(n) for n in shape)


def _make(fill, dtype, device, requires_grad):
    """A leaf tensor holding ``fill(xp, dtype)`` on ``device``."""
    device = device or backend.default_device()
    xp = backend.xp_for_device(device)
    dtype = np.dtype(dtype) if dtype is not None else backend.get_default_dtype()
    return Tensor(fill(xp, dtype), requires_grad=requires_grad, device=device)


def tensor(data, requires_grad=False, dtype=None, device=None):
    """A new leaf tensor holding a copy of ``data`` (list, scalar, NumPy/CuPy array, Tensor).

    Python floats become the default dtype (float32); arrays keep their dtype; Python ints
    become int64 and bools bool. The copy means later changes to ``data`` do not show through.
    """
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, np.ndarray) or backend.get_array_module(data) is not np:
        data = data.copy()
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


def zeros(*shape, dtype=None, device=None, requires_grad=False):
    shape = _shape(shape)
    return _make(lambda xp, dt: xp.zeros(shape, dt), dtype, device, requires_grad)


def ones(*shape, dtype=None, device=None, requires_grad=False):
    shape = _shape(shape)
    return _make(lambda xp, dt: xp.ones(shape, dt), dtype, device, requires_grad)


def full(shape, fill_value, dtype=None, device=None, requires_grad=False):
    shape = _shape((shape,))
    return _make(lambda xp, dt: xp.full(shape, fill_value, dt), dtype, device, requires_grad)


def _random(draw, shape, dtype, device, requires_grad, generator):
    """Fill ``shape`` with ``generator.<draw>(shape)`` (default: the seeded global generator)."""
    device = device or backend.default_device()

    def fill(xp, dt):
        gen = generator or backend.get_generator(device)
        return getattr(gen, draw)(shape).astype(dt)
    return _make(fill, dtype, device, requires_grad)


def randn(*shape, dtype=None, device=None, requires_grad=False, generator=None):
    """Samples from the standard normal distribution N(0, 1)."""
    return _random("standard_normal", _shape(shape), dtype, device, requires_grad, generator)


def rand(*shape, dtype=None, device=None, requires_grad=False, generator=None):
    """Samples from the uniform distribution on [0, 1)."""
    return _random("random", _shape(shape), dtype, device, requires_grad, generator)


def arange(start, stop=None, step=1, dtype=None, device=None, requires_grad=False):
    """Evenly spaced values in [start, stop), as ``numpy.arange``.

    Integer arguments give int64 values (for indices), any float argument gives the default
    floating dtype.
    """
    if stop is None:
        start, stop = 0, start
    if dtype is None and all(isinstance(v, (int, np.integer)) for v in (start, stop, step)):
        dtype = np.int64
    return _make(lambda xp, dt: xp.arange(start, stop, step, dtype=dt), dtype, device,
                 requires_grad)


def zeros_like(t, dtype=None, requires_grad=False):
    return zeros(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    return ones(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad)


def full_like(t, fill_value, dtype=None, requires_grad=False):
    return full(t.shape, fill_value, dtype=dtype or t.dtype, device=t.device,
                requires_grad=requires_grad)


def randn_like(t, dtype=None, requires_grad=False, generator=None):
    return randn(t.shape, dtype=dtype or t.dtype, device=t.device, requires_grad=requires_grad,
                 generator=generator)

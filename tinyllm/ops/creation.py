"""Tensor factories: tensor, zeros, ones, full, empty, eye, arange, linspace, randn, rand,
randint, tril_indices / triu_indices and the *_like forms.

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


def empty(*shape, dtype=None, device=None, requires_grad=False):
    """An uninitialized tensor (its values are whatever the memory held), as np.empty."""
    shape = _shape(shape)
    return _make(lambda xp, dt: xp.empty(shape, dt), dtype, device, requires_grad)


def eye(n, m=None, k=0, dtype=None, device=None, requires_grad=False):
    """An (n, m) matrix (m defaults to n) with ones on diagonal ``k`` and zeros elsewhere."""
    if n < 0 or (m is not None and m < 0):
        raise ValueError(f"eye: sizes must be >= 0, got n={n}, m={m}")
    return _make(lambda xp, dt: xp.eye(int(n), None if m is None else int(m), int(k), dtype=dt),
                 dtype, device, requires_grad)


def linspace(start, stop, num=50, endpoint=True, dtype=None, device=None, requires_grad=False,
             *, steps=None):
    """``num`` evenly spaced values from start to stop (inclusive unless ``endpoint=False``),
    as np.linspace; torch.linspace's ``steps=`` is accepted for ``num``."""
    num = steps if steps is not None else num
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 0:
        raise ValueError(f"linspace: num (steps) must be an int >= 0, got {num!r}")
    return _make(lambda xp, dt: xp.linspace(start, stop, int(num), endpoint=endpoint, dtype=dt),
                 dtype, device, requires_grad)


def randint(low, high=None, size=None, dtype=np.int64, device=None, generator=None):
    """Random integers in [low, high), as np.random.Generator.integers; ``high=None`` draws from
    [0, low). PyTorch's forms ``randint(high, size)`` and ``randint(low, high, size)`` work
    too: a tuple in the ``high`` position is read as the size. Seeded by tinyllm.manual_seed."""
    if isinstance(high, (tuple, list)):                  # torch.randint(high, size)
        low, high, size = 0, low, high
    if high is None:
        low, high = 0, low
    if high <= low:
        raise ValueError(f"randint: needs low < high, got low={low}, high={high}")
    shape = () if size is None else _shape((size,))
    device = device or backend.default_device()

    def fill(xp, dt):
        gen = generator or backend.get_generator(device)
        if hasattr(gen, "integers"):                      # NumPy's Generator
            return xp.asarray(gen.integers(low, high, shape)).astype(dt)
        return (low + xp.floor(gen.random(shape) * (high - low))).astype(dt)   # the GPU's
    return _make(fill, dtype, device, False)


def _tri_indices(op, select, n, k, m, device):
    """(rows, cols) of the True entries of select(ones(n, m), k), as two int64 tensors."""
    if n < 0 or (m is not None and m < 0):
        raise ValueError(f"{op}: sizes must be >= 0, got n={n}, m={m}")
    mask = select(np.ones((int(n), int(n if m is None else m)), dtype=bool), int(k))
    return tuple(_make(lambda xp, dt: xp.asarray(i, dtype=dt), np.int64, device, False)
                 for i in np.nonzero(mask))


def tril_indices(n, k=0, m=None, device=None):
    """The (row, col) indices of the lower triangle (diagonal ``k`` and below) of an (n, m)
    matrix, as np.tril_indices: two int64 tensors, so ``x[tril_indices(3)]`` reads them.
    (torch.tril_indices(row, col, offset) orders its arguments differently and stacks the two.)
    """
    return _tri_indices("tril_indices", np.tril, n, k, m, device)


def triu_indices(n, k=0, m=None, device=None):
    """The (row, col) indices of the upper triangle (diagonal ``k`` and above), as
    np.triu_indices."""
    return _tri_indices("triu_indices", np.triu, n, k, m, device)


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

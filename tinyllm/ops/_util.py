"""Turning op arguments into Tensors, and axis bookkeeping shared by the ops."""
import numpy as np

from tinyllm import backend
from tinyllm.autograd.tensor import Tensor


def as_tensor(value, like=None):
    """``value`` as a Tensor on ``like``'s device; Tensors pass through unchanged.

    Python and NumPy scalars (and 0-d arrays) and Python lists of numbers are *weak*, as in
    PyTorch: ``x * 0.5`` and ``x + [1.0, 2.0]`` keep x's float dtype. Arrays keep their own dtype.
    """
    if isinstance(value, Tensor):
        return value
    if like is None:
        return Tensor(value)
    _check_number_kind(value)
    xp = backend.get_array_module(like.data)
    if isinstance(value, (bool, int, float, np.generic)) or getattr(value, "ndim", 1) == 0:
        kind = np.asarray(value).dtype.kind if not isinstance(value, float) else "f"
        if like.dtype.kind == "f":
            dtype = like.dtype
        elif kind == "f":
            dtype = backend.get_default_dtype()
        else:
            dtype = np.asarray(value).dtype
        return Tensor._from_op(xp.asarray(value, dtype=dtype))
    if isinstance(value, (list, tuple)):
        arr = np.asarray(value)
        if like.dtype.kind == "f" and arr.dtype.kind in "fiub":
            arr = arr.astype(like.dtype)
        elif arr.dtype.kind == "f":
            arr = arr.astype(backend.get_default_dtype())
    else:
        arr = np.asarray(value) if backend.get_array_module(value) is np else value
    return Tensor._from_op(backend.to_device(arr, like.device))


def _check_number_kind(value):
    if type(value) is float:                                 # the common case, no array needed
        return
    kind = np.asarray(value).dtype.kind if backend.get_array_module(value) is np else "f"
    if kind not in "fiub":
        raise TypeError(f"unsupported operand {value!r} of type {type(value).__name__}: expected "
                        f"a Tensor, an array or a real number")


def as_float(x):
    """``x`` as a Tensor, integer/bool data converted to the default float dtype.

    For ops whose result is real-valued whatever the input (exp, sqrt, division, softmax, ...):
    NumPy would give float64 for integers; we keep the engine's float32 default, as PyTorch.
    """
    x = as_tensor(x)
    if x.dtype.kind == "f":
        return x
    return Tensor._from_op(x.data.astype(backend.get_default_dtype()))


def operands(x, y):
    """Both operands of a binary op as Tensors, integer/bool ones cast to the other's float dtype.

    NumPy would turn int64 + float32 into float64; PyTorch keeps float32. We follow PyTorch so
    that adding an integer mask or index tensor never silently doubles precision and memory.
    """
    if not isinstance(x, Tensor):
        x = as_tensor(x, y if isinstance(y, Tensor) else None)
    if not isinstance(y, Tensor):
        y = as_tensor(y, x)
    xf, yf = x.dtype.kind == "f", y.dtype.kind == "f"
    if xf and not yf:
        y = Tensor._from_op(y.data.astype(x.dtype))
    elif yf and not xf:
        x = Tensor._from_op(x.data.astype(y.dtype))
    return x, y


def normalize_axes(axis, ndim, op):
    """``axis`` (None, int or tuple, negatives allowed) as a sorted tuple of non-negative ints."""
    if axis is None:
        return tuple(range(ndim))
    bools = isinstance(axis, tuple) and any(isinstance(a, bool) for a in axis)
    if isinstance(axis, bool) or bools:
        raise TypeError(f"{op}: axis must be an int or a tuple of ints, got {axis!r}")
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"{op}: axis {a} is out of range for a tensor with {ndim} dims")
        out.append(int(a) % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: repeated axis in {axis}")
    return tuple(sorted(out))


def expand_reduced(dout, shape, axes, keepdims):
    """Broadcast a reduction's gradient ``dout`` back to the input ``shape`` (a read-only view).

    The reduced axes were dropped unless ``keepdims``; put them back as size 1, then broadcast.
    """
    xp = backend.get_array_module(dout)
    if not keepdims:
        dout = dout.reshape([1 if i in axes else n for i, n in enumerate(shape)])
    return xp.broadcast_to(dout, shape)


def int_array(value, op, name, like):
    """An integer index array (from a Tensor, array or list) on ``like``'s device."""
    arr = value.data if isinstance(value, Tensor) else value
    if backend.get_array_module(arr) is np:
        arr = np.asarray(arr)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{op}: {name} must hold integers, got dtype {arr.dtype}")
    return backend.to_device(arr, backend.device_of(like))

"""``Tensor``: an array plus the record of how it was computed, and reverse-mode autograd.

A Tensor holds
- ``data``: the NumPy or CuPy array with its values;
- ``grad``: after ``backward()``, dL/d(this tensor) as a plain array of the same shape, or None;
- ``requires_grad``: whether gradients flow to it;
- ``_ctx``: the ``Function`` instance that produced it (None for leaves, the tensors you make).

``loss.backward()`` walks the graph behind ``loss`` back to the leaves (walk.py), calling each
op's ``backward`` with the total upstream gradient of its output.

Gradients of leaves accumulate across ``backward`` calls, as in PyTorch: call ``zero_grad()``
(or the optimizer's) between steps. The graph is freed as it is walked unless
``retain_graph=True``; a second backward through a freed graph raises.

The operators and method forms of the ops (``a + b``, ``t.sum()``) are in tensor_methods.py.
"""
import collections

import numpy as np

from tinyllm import backend
from tinyllm.autograd.tensor_methods import TensorMethods
from tinyllm.autograd.walk import _topological_order, backward_walk  # noqa: F401 (re-export)


class Tensor(TensorMethods):
    """An n-dimensional array that can record operations for reverse-mode autograd.

    Create tensors with ``tinyllm.tensor``, ``zeros``, ``randn``, ... . Operators and methods
    follow NumPy semantics (broadcasting, ``axis``/``keepdims``) with PyTorch's names where
    PyTorch users expect them (``transpose(dim0, dim1)``, ``permute``, ``backward``).
    """

    __slots__ = ("data", "grad", "_requires_grad", "_ctx", "_hooks", "_retains_grad", "name",
                 "__weakref__")

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        self.data = _to_array(data, dtype, device)
        self.grad = None
        self._ctx = None
        self._hooks = None
        self._retains_grad = False
        self.name = None
        self._requires_grad = False
        self.requires_grad = requires_grad

    @classmethod
    def _from_op(cls, array):
        """Wrap an op's output array without the checks of ``__init__`` (the op made it)."""
        if isinstance(array, (np.generic, int, float, bool)):
            array = np.asarray(array)        # NumPy reductions return scalars; keep 0-d arrays
        t = cls.__new__(cls)
        t.data = array
        t.grad = None
        t._requires_grad = False
        t._ctx = None
        t._hooks = None
        t._retains_grad = False
        t.name = None
        return t

    # ------------------------------------------------------------------------------------------
    # attributes

    @property
    def requires_grad(self):
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, flag):
        flag = bool(flag)
        if flag and self.data.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require grad, got dtype "
                            f"{self.data.dtype} (shape {tuple(self.data.shape)})")
        if not flag and self._ctx is not None:
            raise RuntimeError("requires_grad can only be switched off on a leaf tensor; "
                               "use .detach() for a non-leaf")
        self._requires_grad = flag

    def requires_grad_(self, flag=True):
        """Set ``requires_grad`` in place and return self (as ``torch.Tensor.requires_grad_``)."""
        self.requires_grad = flag
        return self

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        """Number of elements (NumPy's ``size``)."""
        return int(self.data.size)

    def numel(self):
        return int(self.data.size)

    @property
    def device(self):
        """'cpu' (NumPy) or 'cuda' (CuPy)."""
        return backend.device_of(self.data)

    @property
    def is_leaf(self):
        """True for tensors not produced by a recorded op (the ones whose ``.grad`` fills)."""
        return self._ctx is None

    @property
    def grad_fn(self):
        """The ``Function`` that produced this tensor, or None for a leaf."""
        return self._ctx

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.data.shape[0]

    def __iter__(self):
        """Iterate over the first axis (each item is a differentiable slice)."""
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.data.shape[0]))

    def __array__(self, dtype=None, copy=None):
        """``np.asarray(t)``: the values, refused while the tensor is in a graph (as PyTorch),
        because NumPy functions on them would silently drop the gradient."""
        if self.requires_grad:
            raise RuntimeError("cannot convert a tensor that requires grad to a NumPy array; "
                               "use t.detach().numpy() (or t.numpy()) if dropping the gradient "
                               "is intended")
        arr = backend.asnumpy(self.data)
        return arr if dtype is None else arr.astype(dtype)

    def __repr__(self):
        body = np.array2string(backend.asnumpy(self.data), separator=", ", prefix="tensor(")
        extra = ""
        if self.dtype != backend.get_default_dtype() and self.dtype.kind == "f":
            extra += f", dtype={self.dtype}"
        if self.device != "cpu":
            extra += f", device='{self.device}'"
        if self._ctx is not None:
            extra += f", grad_fn={type(self._ctx).__name__}"
        elif self.requires_grad:
            extra += ", requires_grad=True"
        return f"tensor({body}{extra})"

    def __bool__(self):
        if self.data.size != 1:
            raise ValueError(f"the truth value of a tensor with {self.data.size} elements is "
                             f"ambiguous; use .any() / .all() on .data")
        return bool(self.data)

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    # ------------------------------------------------------------------------------------------
    # leaving the graph

    def numpy(self):
        """The values as a NumPy array (copied from the GPU if needed; shares memory on CPU)."""
        return backend.asnumpy(self.data)

    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item(): only one-element tensors convert to a Python number, "
                             f"got shape {self.shape}")
        return self.data.item()

    def tolist(self):
        return backend.asnumpy(self.data).tolist()

    def detach(self):
        """A new leaf tensor sharing ``data``, cut off from the graph."""
        return Tensor._from_op(self.data)

    # ------------------------------------------------------------------------------------------
    # autograd

    def zero_grad(self):
        """Forget the accumulated gradient (sets ``grad`` to None, as PyTorch's default)."""
        self.grad = None

    def retain_grad(self):
        """Also fill ``.grad`` of this non-leaf tensor during backward (leaves always get it)."""
        if not self.requires_grad:
            raise RuntimeError("retain_grad() on a tensor that does not require grad")
        self._retains_grad = True
        return self

    def register_hook(self, fn):
        """Call ``fn(grad)`` with dL/d(this tensor) (a raw array) during backward.

        If ``fn`` returns an array (of this tensor's shape), it replaces the gradient: what
        flows on and what a leaf accumulates. Do not modify ``grad`` in place (it may be
        shared, or a read-only broadcast view): return a new array. Returns a handle whose
        ``remove()`` unregisters the hook.
        """
        if not self.requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that does not require grad")
        if self._hooks is None:
            self._hooks = []
        self._hooks.append(fn)
        return _HookHandle(self._hooks, fn)

    def backward(self, grad=None, retain_graph=False):
        """Compute dself/dleaf for every leaf that requires grad, accumulating into ``.grad``.

        ``grad`` is dL/dself: required when self is not a scalar (then this computes the
        vector-Jacobian product), default 1 for a scalar. The graph is freed as it is walked,
        unless ``retain_graph=True``. The first backward of a process applies the memory
        policy (``backend.apply_memory_policy``: freed pages are kept for reuse unless
        ``TINYLLM_MALLOC=system``).
        """
        if not self.requires_grad:
            raise RuntimeError("backward(): this tensor does not require grad and has no graph "
                               "(did you create it under no_grad, or from leaves without "
                               "requires_grad=True?)")
        xp = backend.get_array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward(): grad can be implicitly created only for a "
                                   f"scalar output, got shape {self.shape}; pass grad= with "
                                   f"that shape")
            dout = xp.ones_like(self.data)
        else:
            dout = grad.data if isinstance(grad, Tensor) else xp.asarray(grad)
            if tuple(dout.shape) != self.shape:
                raise ValueError(f"backward(): grad has shape {tuple(dout.shape)}, expected "
                                 f"the tensor's shape {self.shape}")
            dout = dout.astype(self.dtype, copy=False)
        backend.apply_memory_policy()    # once per process: keep freed pages (backend.py)
        # drain the walk keeping nothing it yields (tinyllm.trace stops at each step instead)
        collections.deque(backward_walk(self, dout, retain_graph, steal=True), maxlen=0)


class _HookHandle:
    def __init__(self, hooks, fn):
        self._hooks, self._fn = hooks, fn

    def remove(self):
        if self._fn in self._hooks:
            self._hooks.remove(self._fn)


def _to_array(data, dtype, device):
    """Turn ``data`` (Tensor, array, list, scalar) into a backend array.

    Python numbers and lists of floats get the default dtype (float32), as in PyTorch; arrays
    keep their dtype unless ``dtype`` is given. Integers stay integers, booleans booleans.
    """
    if isinstance(data, Tensor):
        data = data.data
    xp_in = backend.get_array_module(data)
    is_array = isinstance(data, (np.ndarray, np.generic)) or xp_in is not np
    arr = data if is_array else np.asarray(data)
    if dtype is not None:
        arr = arr.astype(np.dtype(dtype), copy=False)
    elif not is_array and arr.dtype.kind == "f":
        arr = arr.astype(backend.get_default_dtype(), copy=False)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"tensor: unsupported dtype {arr.dtype}; tinyllm tensors hold floating, "
                        f"integer or boolean numbers")
    target = device or ("cuda" if xp_in is not np else backend.default_device())
    return backend.to_device(arr, target)

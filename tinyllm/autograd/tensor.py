"""``Tensor``: an array plus the record of how it was computed, and reverse-mode autograd.

A Tensor holds
- ``data``: the NumPy or CuPy array with its values;
- ``grad``: after ``backward()``, dL/d(this tensor) as a plain array of the same shape, or None;
- ``requires_grad``: whether gradients flow to it;
- ``_ctx``: the ``Function`` instance that produced it (None for leaves, the tensors you make).

``loss.backward()`` orders the graph behind ``loss`` so that every tensor comes after all the
tensors computed from it (a topological order, found with an explicit stack, so a chain of
100,000 ops needs no recursion), then walks it from ``loss`` back to the leaves. At each node the
chain rule needs the *total* upstream gradient dL/dnode: the sum over every op that consumed the
node. The walk order guarantees all those contributions have arrived before the node's own
``Function.backward`` turns it into gradients for the node's inputs.

Gradients of leaves accumulate across ``backward`` calls, as in PyTorch: call ``zero_grad()``
(or the optimizer's) between steps. The graph is freed as it is walked unless
``retain_graph=True``; a second backward through a freed graph raises.

The operators and method forms of the ops (``a + b``, ``t.sum()``) are in tensor_methods.py.
"""
import numpy as np

from tinyllm import backend
from tinyllm.autograd import observe
from tinyllm.autograd.observe import OBSERVERS
from tinyllm.autograd.tensor_methods import TensorMethods


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
        unless ``retain_graph=True``.
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
        for _ in backward_walk(self, dout, retain_graph):
            pass                     # one step per node; tinyllm.trace stops at each


class _HookHandle:
    def __init__(self, hooks, fn):
        self._hooks, self._fn = hooks, fn

    def remove(self):
        if self._fn in self._hooks:
            self._hooks.remove(self._fn)


# ----------------------------------------------------------------------------------------------
# the backward walk

def _topological_order(root):
    """Tensors reachable from ``root`` that require grad, each after all of its inputs.

    Depth-first with an explicit stack of (tensor, children_done) pairs instead of recursion:
    a tensor is appended once every input below it has been appended.
    """
    order, seen = [], set()
    stack = [(root, False)]
    while stack:
        t, children_done = stack.pop()
        if children_done:
            order.append(t)
            continue
        if id(t) in seen:
            continue
        seen.add(id(t))
        stack.append((t, True))
        ctx = t._ctx
        if ctx is not None:
            for p in getattr(ctx, "parents", ()):
                if p.requires_grad and id(p) not in seen:
                    stack.append((p, False))
    return order


def backward_walk(root, dout, retain_graph=False):
    """The backward pass as a generator: one node per step, the engine's only backward walk.

    ``Tensor.backward`` drains it; ``tinyllm.trace`` stops at each step to show it. Each step
    yields ``(t, ctx, dout, dparents)``: the tensor reached, the Function that made it (None for
    a leaf), dL/dt summed over all its consumers (after hooks), and what ``ctx.backward``
    returned (one gradient per input; None for a leaf). A leaf's step comes after its ``.grad``
    was accumulated; an op's step comes before its saved arrays are freed.
    """
    grads = {id(root): dout}                  # id(tensor) -> dL/dtensor summed so far
    for t in reversed(_topological_order(root)):
        dout = grads.pop(id(t), None)
        if dout is None:                      # reachable, but no gradient flowed to it
            continue
        if t._hooks:
            dout = _run_hooks(t, dout)
        ctx = t._ctx
        if ctx is None or t._retains_grad:
            # .grad is owned by this tensor (a private copy), so later += never touches an
            # array that an op's backward handed to someone else too
            if t.grad is None:
                xp = backend.get_array_module(dout)
                t.grad = xp.array(dout, dtype=t.dtype, copy=True)   # ops on 0-d give scalars
            else:
                t.grad += dout
        if ctx is None:
            yield t, None, dout, None
            continue
        if hasattr(ctx, "_released"):
            raise RuntimeError(
                f"backward through {ctx._released} a second time: its saved arrays were freed "
                f"by the first backward. Call backward(retain_graph=True) the first time if you "
                f"need to backward through the same graph again")
        if OBSERVERS:                         # study tools wrap the call (observe.py)
            dparents = observe.wrap(ctx, "backward")(dout)
        else:
            dparents = ctx.backward(dout)
        if not isinstance(dparents, tuple):
            dparents = (dparents,)
        parents = ctx.parents
        if len(dparents) != len(parents):
            raise RuntimeError(f"{type(ctx).__name__}.backward returned {len(dparents)} "
                               f"gradients for {len(parents)} inputs")
        for p, dp, needed in zip(parents, dparents, ctx.needs_input_grad):
            if not needed or dp is None:
                continue
            if tuple(dp.shape) != p.shape:
                raise RuntimeError(f"{type(ctx).__name__}.backward returned a gradient of shape "
                                   f"{tuple(dp.shape)} for an input of shape {p.shape}")
            if dp.dtype != p.dtype:
                dp = dp.astype(p.dtype)
            key = id(p)
            prev = grads.get(key)
            grads[key] = dp if prev is None else prev + dp   # not +=: dp may be shared
        yield t, ctx, dout, dparents
        if not retain_graph:
            ctx.release()


def _run_hooks(t, dout):
    for hook in list(t._hooks):
        replaced = hook(dout)
        if replaced is None:
            continue
        if tuple(getattr(replaced, "shape", ())) != t.shape:
            raise RuntimeError(f"hook {getattr(hook, '__name__', hook)!r} returned a gradient of "
                               f"shape {tuple(getattr(replaced, 'shape', ()))}, expected the "
                               f"tensor's shape {t.shape}")
        dout = backend.get_array_module(dout).asarray(replaced, dtype=t.dtype)
    return dout


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

"""The ``Function`` base class: one differentiable op = one subclass.

A subclass writes two methods on raw arrays (NumPy or CuPy), side by side::

    class Mul(Function):
        def forward(self, x, y):            # arrays in, array out
            self.x, self.y = x, y           # save what backward needs
            return x * y

        def backward(self, dout):           # dL/dout in, (dL/dx, dL/dy) out
            return dout * self.y, dout * self.x

``Mul.apply(a, b)`` runs it on Tensors: it unwraps their arrays, calls ``forward``, wraps the
result in a new Tensor and, when grad mode is on and some input requires grad, records this
Function instance as the output's ``_ctx`` (its creator), with the input Tensors as ``parents``.
``Tensor.backward`` later walks those records and calls ``backward``. Study tools (module
scopes, anomaly mode, the step-through) wrap both calls through observe.py; with none attached
(the default outside any Module) the calls are direct.

Rules for ``backward``:
- return one gradient per Tensor argument of ``forward``, in order (a single array when there is
  one input), each with the shape of that input; ``None`` is allowed where
  ``self.needs_input_grad[i]`` is False;
- never modify ``dout`` in place: it may be shared with another consumer of the same tensor.

Keyword arguments of ``apply`` are passed to ``forward`` unchanged (axis, shape, p, ...); they are
not differentiated.
"""
import sys

import numpy as np

from tinyllm import backend
from tinyllm.autograd import grad_mode, observe
from tinyllm.autograd.observe import OBSERVERS
from tinyllm.autograd.tensor import Tensor


class Function:
    """Base class of every differentiable op. See the module docstring."""

    deterministic = True        # False if forward draws random numbers (Dropout): bisect skips it
    bookkeeping = False         # True: an identity that feeds a hook; bisect leaves it alone
    module = None               # the Module whose forward made this node (set by its scope)

    def zero_grad_mask(self, k):
        """Elements of input ``k`` whose gradient this op defines as 0 although the output
        depends on them (Embedding's padding row, as PyTorch), or None. bisect_backward
        leaves them out of its finite differences."""
        return None

    def __init__(self, *parents):
        self.parents = parents                                   # the input Tensors
        self.needs_input_grad = tuple(t.requires_grad for t in parents)
        self.requires_grad = any(self.needs_input_grad)

    def forward(self, *arrays, **kwargs):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dout):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    @classmethod
    def apply(cls, *tensors, **kwargs):
        """Run ``forward`` on the tensors' arrays; record the op if a gradient is needed."""
        ctx = cls(*tensors) if grad_mode.is_grad_enabled() else cls._unrecorded(len(tensors))
        arrays = [t.data for t in tensors]
        _check_same_device(cls.__name__, tensors, arrays)
        forward = observe.wrap(ctx, "forward") if OBSERVERS else ctx.forward  # study tools
        try:
            out = Tensor._from_op(forward(*arrays, **kwargs))
        except ValueError as e:                      # e.g. NumPy's broadcasting message
            _reraise_naming_the_op(cls.__name__, e, arrays)
        if ctx.requires_grad and out.data.dtype.kind == "f":
            out._requires_grad, out._ctx = True, ctx     # out -> ctx -> ctx.parents: the graph
            ctx.forward_kwargs = kwargs                  # to rerun the node (bisect_backward)
        return out       # not recorded (no_grad, constants, an integer result): ctx dies

    @classmethod
    def _unrecorded(cls, n):
        """The node of a call under ``no_grad``: never recorded, it keeps no reference to its
        inputs, and ``needs_input_grad`` all False tells ``forward`` it need not save anything
        for backward."""
        ctx = cls.__new__(cls)
        ctx.parents, ctx.needs_input_grad, ctx.requires_grad = (), (False,) * n, False
        return ctx

    @classmethod
    def explain(cls, file=None):
        """Print this op's card: the math and derivation (the docstring), and where its forward
        and backward are (file:line), to step into them. Returns the text."""
        import inspect

        from tinyllm.autograd.anomaly import format_site
        doc = inspect.cleandoc(cls.__doc__ or "(no docstring)")
        lines = [f"{cls.__name__}  ({cls.__module__})", "", doc, ""]
        for meth in ("forward", "backward"):
            fn = getattr(cls, meth)
            try:
                src, line = inspect.getsourcefile(fn), inspect.getsourcelines(fn)[1]
                lines.append(f"{meth:9s}{format_site(((src, line, fn.__qualname__),))}")
            except (OSError, TypeError):
                lines.append(f"{meth:9s}(source not available)")
        text = "\n".join(lines)
        print(text, file=file if file is not None else sys.stdout)
        return text

    def release(self):
        """Free what forward saved (called after backward unless retain_graph=True)."""
        name, needs, module = type(self).__name__, self.needs_input_grad, self.module
        self.__dict__.clear()
        self.needs_input_grad, self.module, self._released = needs, module, name

    def __repr__(self):
        return f"<{type(self).__name__}>"


def _reraise_naming_the_op(op, e, arrays):
    """Raise the ValueError ``e`` from ``op``'s forward again, prefixed with the op's name and
    the input shapes unless its message already starts with the op's name."""
    if str(e).startswith(op):
        raise e
    shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
    raise ValueError(f"{op}: {e} (input shapes {shapes})") from e


def _check_same_device(op, tensors, arrays):
    if len(arrays) < 2 or "cupy" not in sys.modules:     # without CuPy everything is NumPy
        return
    first = backend.get_array_module(arrays[0])
    for t, a in zip(tensors[1:], arrays[1:]):
        if backend.get_array_module(a) is not first:
            described = ", ".join(f"{t.device} {tuple(t.shape)}" for t in tensors)
            raise RuntimeError(f"{op}: expected all tensors on the same device, got {described}; "
                               "move them with .to(device)")


def unbroadcast(dx, shape):
    """Sum ``dx`` down to ``shape``, undoing NumPy broadcasting.

    If y = f(broadcast(x)), every copy of an element of x receives gradient, and the chain rule
    adds them: sum over the leading axes broadcasting added, and over the axes where x had size
    1. Returns ``dx`` itself when no reduction is needed.
    """
    if dx.shape == tuple(shape):
        return dx
    lead = dx.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(i + lead for i, n in enumerate(shape)
                                      if n == 1 and dx.shape[i + lead] != 1)
    dx = dx.sum(axis=axes, keepdims=True)
    return dx.reshape(shape)                     # (1,)*lead + shape -> shape


def float_dtype_of(*arrays):
    """The floating dtype a result of these arrays has (ints alone give the default dtype)."""
    floats = [a.dtype for a in arrays if a.dtype.kind == "f"]
    if not floats:
        return backend.get_default_dtype()
    return np.result_type(*floats)

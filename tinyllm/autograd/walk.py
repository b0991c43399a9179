"""The backward walk: from ``loss`` back to the leaves, one node at a time.

``loss.backward()`` orders the graph behind ``loss`` so that every tensor comes after all the
tensors computed from it (a topological order, found with an explicit stack, so a chain of
100,000 ops needs no recursion), then walks it from ``loss`` back to the leaves. At each node the
chain rule needs the *total* upstream gradient dL/dnode: the sum over every op that consumed the
node. The walk order guarantees all those contributions have arrived before the node's own
``Function.backward`` turns it into gradients for the node's inputs.

``backward_walk`` is a generator, the engine's only backward walk: ``Tensor.backward`` drains
it, ``tinyllm.trace`` stops at each step to show it.

Memory: a leaf's ``.grad`` takes the array its consumer's backward made when nothing else holds
it (PyTorch's AccumulateGrad does the same), and contributions from several consumers are added
into an array the walk alone holds; everything else is copied. So ``(a * b).sum().backward()``
allocates what the formulas allocate (``dout * b``, ``dout * a``) and nothing more.
"""
import sys

import numpy as np

from tinyllm import backend
from tinyllm.autograd import observe
from tinyllm.autograd.observe import OBSERVERS


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


def backward_walk(root, dout, retain_graph=False, steal=False):
    """The backward pass as a generator: one node per step, the engine's only backward walk.

    ``Tensor.backward`` drains it; ``tinyllm.trace`` stops at each step to show it. Each step
    yields ``(t, ctx, dout, dparents)``: the tensor reached, the Function that made it (None for
    a leaf), dL/dt summed over all its consumers (after hooks), and what ``ctx.backward``
    returned (one gradient per input; None for a leaf). A leaf's step comes after its ``.grad``
    was accumulated; an op's step comes before its saved arrays are freed.

    ``steal=True`` (``Tensor.backward``, which keeps nothing it yields) lets a leaf whose
    ``.grad`` is None take the gradient array itself when nothing else holds it, as PyTorch's
    AccumulateGrad does, instead of copying it (see ``_accumulate``).
    """
    grads = {id(root): dout}                  # id(tensor) -> dL/dtensor summed so far
    del dout                                  # the dict is the only holder (see _accumulate)
    order = _topological_order(root)
    while order:
        t = order.pop()                       # dropped once walked: its output can be freed
        key = id(t)
        if key not in grads:                  # reachable, but no gradient flowed to it
            continue
        if t._hooks:
            grads[key] = _run_hooks(t, grads[key])
        ctx = t._ctx
        if ctx is None or t._retains_grad:
            _accumulate(t, grads, steal and not retain_graph)
        dout = grads.pop(key)
        if ctx is None:
            yield t, None, dout, None
            dout = None
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
            if key not in grads:
                grads[key] = dp
            elif steal and _sole(grads, key):       # an array only the walk holds: add into it
                grads[key] += dp
            else:
                grads[key] = grads[key] + dp        # not +=: the array may be shared
        yield t, ctx, dout, dparents
        dout = dparents = dp = None           # the dict stays the only holder of what it holds
        if not retain_graph:
            ctx.release()


def _refs(grads, key):
    return sys.getrefcount(grads[key])


def _sole(grads, key):
    """True when the walk may write into the gradient array ``grads[key]``: nothing but the
    walk's dict holds it, it owns its memory (not a view) and is writable. NumPy's temporary
    elision (which reuses ``a + b``'s result in ``a + b + c``) asks the same of a reference
    count in C; here the count is compared with the one ``_refs`` sees for an array that only
    a dict holds (``_SOLE``, measured once), so it does not depend on the interpreter."""
    g = grads[key]
    if isinstance(g, np.generic) or g.base is not None or not getattr(g.flags, "writeable", 1):
        return False
    del g
    return _refs(grads, key) <= _SOLE


_SOLE = _refs({0: np.empty(0)}, 0)


def _accumulate(t, grads, steal):
    """Add dL/dt (``grads[id(t)]``) into ``t.grad``.

    The first gradient of a step: ``.grad`` must be an array this tensor owns, because later
    backward calls add into it in place. When the walk alone holds the array (``_sole``) it is
    taken as it is, as PyTorch's AccumulateGrad steals a gradient nobody else references;
    otherwise (a view, the caller's ``grad=``, an array a hook or study tool keeps) it is
    copied.
    """
    key = id(t)
    if t.grad is not None:
        t.grad += grads[key]
    elif steal and grads[key].dtype == t.dtype and _sole(grads, key):
        t.grad = grads[key]
    else:
        xp = backend.get_array_module(grads[key])
        t.grad = xp.array(grads[key], dtype=t.dtype, copy=True)   # ops on 0-d give scalars


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

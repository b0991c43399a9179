"""Observers: how the study tools watch every op without living in the engine.

``Function.apply`` and the backward walk know one thing about the study tools: the list
``OBSERVERS``. While it is empty (the default outside any Module) an op's forward and backward
are called directly. While it holds observers, each wraps the call, outermost first::

    class Observer:
        def annotate(self, ctx):                # before each forward: mark the node
            ...

        def forward(self, ctx, call, *arrays, **kwargs):
            return call(*arrays, **kwargs)      # call: the next observer, finally ctx.forward

        def backward(self, ctx, call, dout):
            return call(dout)                   # call: the next observer, finally ctx.backward

An observer can look at ``ctx`` (the Function instance, the node), the arrays and keyword
arguments before the call, the result after it, or run the call in a context. Who attaches:
- ``Module.__call__`` (tinyllm/nn/module.py): the module scope, ``ctx.module``, while a
  module's forward runs;
- ``detect_anomaly`` (anomaly.py): NaN/inf checks naming the op, its module and creation site;
- ``tinyllm.trace.backward_steps(debug=...)``: a breakpoint right before an op's backward.
"""
import functools

OBSERVERS = []          # attached observers, outermost first (mutated in place, never rebound)


class Observer:
    """Base class: every method passes through; override what you need. ``annotate`` runs
    before each forward and only marks the node (no wrapping: cheapest); an observer whose
    class keeps the base ``forward`` or ``backward`` is not wrapped around that call."""

    def annotate(self, ctx):
        pass

    def forward(self, ctx, call, *arrays, **kwargs):
        return call(*arrays, **kwargs)

    def backward(self, ctx, call, dout):
        return call(dout)


def attach(observer, outermost=False):
    """Start observing every op (innermost unless ``outermost``)."""
    OBSERVERS.insert(0 if outermost else len(OBSERVERS), observer)


def detach(observer):
    """Stop; detaching an observer that is not attached does nothing."""
    if observer in OBSERVERS:
        OBSERVERS.remove(observer)


def wrap(ctx, name):
    """``ctx.forward`` or ``ctx.backward`` (``name``) wrapped by every observer, outermost first.

    functools.partial adds no Python frame: ``s`` in the debugger goes from one observer
    straight into the next, and from the innermost into the op. Observers that only annotate
    (the module scope, inside every model) cost one method call per op, no wrapper."""
    call = getattr(ctx, name)
    for observer in reversed(OBSERVERS):
        if name == "forward":
            observer.annotate(ctx)
        if getattr(type(observer), name) is not getattr(Observer, name):
            call = functools.partial(getattr(observer, name), ctx, call)
    return call

"""Anomaly mode and the creation sites it names: an observer (observe.py) on every op.

**Anomaly mode** (as ``torch.autograd.detect_anomaly``, Chainer's debug mode)::

    with tinyllm.detect_anomaly():        # or TINYLLM_DETECT_ANOMALY=1 when tinyllm is imported
        loss = model(x, y)
        loss.backward()

checks every op's forward output and every gradient its backward returns for NaN and infinity,
and raises ``AnomalyError`` at the first bad one, naming the op, its module, the shapes, and the
line of code that created it (the engine's own frames skipped). Rules:
- forward: NaN in an output always raises ("produced" when no input had NaN, "propagated"
  otherwise, which points at data or a parameter that was already bad). An infinity raises only
  when no input held one: masking scores with -inf before a softmax is legitimate, log(0) is not;
- backward: any non-finite gradient raises. The walk goes from the loss to the leaves and every
  earlier gradient was checked, so the op named is the one whose backward made it. The gradient
  flowing into each backward is checked too (the one passed to ``backward()``, a hook's, or a
  sum of finite gradients that overflowed).
NumPy's floating-point warnings are off inside the ops meanwhile (the check says more). Each
check is a full pass over the array: use it to find a problem, not to train.
"""
import contextlib
import linecache
import os
import sys

import numpy as np

from tinyllm import backend
from tinyllm.autograd import observe

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))       # .../tinyllm
# frames in these files are the engine's plumbing, never "where the op was created"
_PLUMBING = tuple(os.path.join(_PKG, p) for p in ("autograd", "ops", "kernels", "functional.py",
                                                  os.path.join("nn", "module.py")))


class AnomalyError(FloatingPointError):
    """A NaN or infinity appeared in anomaly mode (see ``detect_anomaly``)."""


class AnomalyChecks(observe.Observer):
    """The observer of anomaly mode: runs each op quietly, then checks what it returned."""

    def forward(self, ctx, call, *arrays, **kwargs):
        with np.errstate(all="ignore"):
            out = call(*arrays, **kwargs)
        ctx.created_at = creation_site()
        check_forward(ctx, arrays, kwargs, out)
        return out

    def backward(self, ctx, call, dout):
        check_gradient(ctx, dout)
        with np.errstate(all="ignore"):
            dparents = call(dout)
        check_backward(ctx, dparents if isinstance(dparents, tuple) else (dparents,))
        return dparents


CHECKS = AnomalyChecks()


def anomaly_enabled():
    """True inside ``detect_anomaly()`` or when TINYLLM_DETECT_ANOMALY was set (1/true/yes)."""
    return CHECKS in observe.OBSERVERS


def _set(on):
    if on and not anomaly_enabled():
        observe.attach(CHECKS)
    elif not on:
        observe.detach(CHECKS)


@contextlib.contextmanager
def detect_anomaly(enabled=True):
    """Check every forward output and gradient for NaN/inf inside the block (see module doc)."""
    prev = anomaly_enabled()
    _set(enabled)
    try:
        yield
    finally:
        _set(prev)


def from_environment():
    """Anomaly mode on or off as TINYLLM_DETECT_ANOMALY says (importing tinyllm calls this)."""
    _set(os.environ.get("TINYLLM_DETECT_ANOMALY", "").lower() in ("1", "true", "yes", "on"))


# ----------------------------------------------------------------------------------------------
# creation sites

def creation_site(depth=2):
    """Where an op is being created: a tuple of (file, line, function) frames, innermost first,
    from the first frame outside the engine's plumbing (autograd, ops, kernels, functional,
    Module.__call__) out to the first frame outside the tinyllm package (the user's line). For
    a model defined in tinyllm this is e.g. (gpt.py: Block.forward, ..., train.py: main)."""
    f = sys._getframe(depth)
    while f is not None and f.f_code.co_filename.startswith(_PLUMBING):
        f = f.f_back
    frames = []
    while f is not None:
        name = f.f_code.co_filename
        if not name.startswith(_PLUMBING):
            frames.append((name, f.f_lineno, getattr(f.f_code, "co_qualname", f.f_code.co_name)))
            if not name.startswith(_PKG):
                break                       # the first line of user code: stop here
        f = f.f_back
    return tuple(frames)


def format_site(site):
    """'layers.py:97 in forward  <-  train.py:33 in main: loss = model(x, y)'."""
    if not site:
        return "unknown (recorded outside anomaly mode)"
    parts = [f"{_short(name)}:{line} in {func}" for name, line, func in site]
    name, line, _ = site[-1]
    code = linecache.getline(name, line).strip()
    return "  <-  ".join(parts) + (f": {code}" if code else "")


def _short(path):
    if path.startswith(_PKG):
        return "tinyllm" + path[len(_PKG):]
    try:
        rel = os.path.relpath(path)
    except ValueError:                      # another drive on Windows
        return path
    return path if rel.startswith("..") else rel


def describe_node(ctx):
    """'GELU (module h.0.mlp: FeedForward)': the op's class and the module it ran in."""
    mod = getattr(ctx, "module", None)
    where = ""
    if mod is not None:
        name = getattr(mod, "_trace_name", None)
        where = f" (module {name}: {type(mod).__name__})" if name else \
            f" (module {type(mod).__name__})"
    return type(ctx).__name__ + where


# ----------------------------------------------------------------------------------------------
# the checks

def _nonfinite(a):
    """(has NaN, has inf) for a floating array; (False, False) otherwise."""
    if getattr(a, "dtype", None) is None or a.dtype.kind not in "fc":
        return False, False
    xp = backend.get_array_module(a)
    if bool(xp.isfinite(a).all()):
        return False, False
    return bool(xp.isnan(a).any()), bool(xp.isinf(a).any())


def _count(a, what):
    xp = backend.get_array_module(a)
    bad = xp.isnan(a) if what == "NaN" else xp.isinf(a)
    return int(bad.sum()), int(a.size)


def check_forward(ctx, arrays, kwargs, out):
    """Raise AnomalyError if ``out`` holds a NaN, or an infinity no input held."""
    outs = out if isinstance(out, tuple) else (out,)
    flags = [_nonfinite(o) for o in outs]
    if not any(n or i for n, i in flags):
        return
    inputs = list(arrays) + [v for v in kwargs.values() if hasattr(v, "dtype")]
    in_flags = [_nonfinite(a) for a in inputs]
    in_nan = [k for k, (n, _) in enumerate(in_flags) if n]
    in_inf = [k for k, (_, i) in enumerate(in_flags) if i]
    for o, (has_nan, has_inf) in zip(outs, flags):
        if has_nan:
            what = "NaN"
        elif has_inf and not in_inf:
            what = "inf"
        else:
            continue
        n, size = _count(o, what)
        shapes = ", ".join(f"{tuple(a.shape)} {a.dtype}" for a in arrays)
        if what == "NaN" and in_nan:
            how = (f"propagated NaN from its input {in_nan[0]}, which already held NaN (a leaf: "
                   f"data or a parameter, or an op run before anomaly mode was on)")
        else:
            how = f"produced {what} from finite inputs"
        raise AnomalyError(
            f"anomaly in forward: {describe_node(ctx)}.forward {how}: {n} of {size} output "
            f"elements, output shape {tuple(o.shape)}; inputs {shapes}. Created at "
            f"{format_site(getattr(ctx, 'created_at', None))}")


def check_backward(ctx, dparents):
    """Raise AnomalyError if a gradient returned by ``ctx.backward`` is not finite."""
    for k, dp in enumerate(dparents):
        if dp is None:
            continue
        has_nan, has_inf = _nonfinite(dp)
        if has_nan or has_inf:
            what = "NaN" if has_nan else "inf"
            n, size = _count(dp, what)
            raise AnomalyError(
                f"anomaly in backward: {describe_node(ctx)}.backward returned {what} in the "
                f"gradient for its input {k} ({n} of {size} elements, shape "
                f"{tuple(dp.shape)}); the gradient flowing into it was finite. The op was "
                f"created at {format_site(getattr(ctx, 'created_at', None))}")


def check_gradient(ctx, dout):
    """Raise AnomalyError if the gradient flowing into ``ctx.backward`` is not finite."""
    has_nan, has_inf = _nonfinite(dout)
    if has_nan or has_inf:
        raise AnomalyError(
            f"anomaly in backward: the gradient flowing into {describe_node(ctx)}.backward is "
            f"not finite ({'NaN' if has_nan else 'inf'}, shape {tuple(dout.shape)}); every "
            f"gradient before it was finite, so it is the gradient passed to backward(), a "
            f"hook's result, or a sum of gradients that overflowed")


from_environment()

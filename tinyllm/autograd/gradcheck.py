"""Gradient checking: compare backward passes with central finite differences.

For f: R^n -> R the central difference
    df/dx_j ~ (f(x + eps e_j) - f(x - eps e_j)) / (2 eps)
has truncation error O(eps^2) (the eps^1 terms of the two Taylor expansions cancel) and rounding
error O(u / eps), u the unit roundoff. In float64 (u ~ 1e-16) eps = 1e-6 balances them at about
1e-10 relative error; in float32 (u ~ 6e-8) the best achievable is ~1e-3, too coarse to catch
real mistakes. So checks always run on float64 copies of the inputs.

A non-scalar output y is reduced to the scalar L = sum(y * v) with a random, non-uniform
cotangent v: then dL/dx = v^T J is a vector-Jacobian product, exactly what ``backward(grad=v)``
computes. (With v = ones, a backward that swapped two output positions would still pass.)

``mode="full"`` perturbs every element of every input (2 n evaluations of f). ``mode=
"directional"`` checks one random direction u per input, comparing grad . u with
(f(x + eps u) - f(x - eps u)) / (2 eps): two evaluations per input, for large models (as
Chainer's ``check_backward``).
"""
import warnings

import numpy as np

from tinyllm import backend
from tinyllm.autograd.grad_mode import no_grad
from tinyllm.autograd.tensor import Tensor


class GradcheckError(AssertionError):
    """Raised by ``gradcheck`` when analytic and numerical gradients disagree."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, mode="full", seed=0,
              raise_exception=True):
    """Check ``fn``'s backward against central finite differences, in float64.

    fn:      callable taking ``*inputs`` and returning a Tensor (or a tuple of Tensors). It must
             be deterministic: seed any randomness (dropout) inside it.
    inputs:  a Tensor or a sequence of Tensors and other arguments. Every floating Tensor with
             ``requires_grad=True`` is checked; floating Tensors are checked on float64 copies.
    Passes when |analytic - numeric| <= atol + rtol * |numeric| for every element (full mode) or
    for every input's directional derivative (directional mode).

    Returns True; on failure raises ``GradcheckError`` (or returns False when
    ``raise_exception=False``) with a message naming the input, the worst element, both values.
    """
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    xs = _float64_copies(inputs)
    targets = [(f"input {i}", x) for i, x in enumerate(xs)
               if isinstance(x, Tensor) and x.requires_grad]
    if not targets:
        raise ValueError("gradcheck: no input requires grad, nothing to check")
    return _check(lambda: fn(*xs), targets, eps, atol, rtol, mode, seed, raise_exception)


def gradcheck_module(module, *inputs, eps=1e-6, atol=1e-5, rtol=1e-3, mode="full", seed=0,
                     raise_exception=True):
    """Check the gradients of every trainable parameter of ``module`` (and of every input
    Tensor that requires grad) for ``module(*inputs)``, perturbing them in place.

    The module must already be float64 (``module.double()``): its parameters are the
    tensors being checked, so they cannot be silently copied. Failures name the parameter
    ("parameter 'h.0.attn.c_attn.weight'"). Use ``mode="directional"`` for whole models,
    and ``module.eval()`` (or seeded dropout) for determinism.
    """
    targets = [(f"parameter {name!r}", p) for name, p in module.named_parameters()
               if p.requires_grad]
    targets += [(f"input {i}", x) for i, x in enumerate(inputs)
                if isinstance(x, Tensor) and x.requires_grad]
    for name, t in targets:
        if t.dtype != np.float64:
            raise TypeError(f"gradcheck_module: {name} is {t.dtype}; call module.double() and "
                            f"pass float64 inputs (finite differences need float64)")
        if not t.data.flags.c_contiguous:
            raise ValueError(f"gradcheck_module: {name} is not C-contiguous")
    if not targets:
        raise ValueError("gradcheck_module: nothing requires grad, nothing to check")
    return _check(lambda: module(*inputs), targets, eps, atol, rtol, mode, seed,
                  raise_exception)


def _check(run, targets, eps, atol, rtol, mode, seed, raise_exception):
    """Compare analytic and numeric gradients of L = sum_k sum(y_k * v_k), y = run(), with
    respect to each (name, tensor) in ``targets`` (float64 leaves that ``run`` uses)."""
    if mode not in ("full", "directional"):
        raise ValueError(f"gradcheck: mode must be 'full' or 'directional', got {mode!r}")
    rng = np.random.default_rng(seed)
    outputs = _as_tuple(run())
    cotangents = []
    for y in outputs:
        xp = backend.get_array_module(y.data)
        v = np.ones(y.shape) if y.size == 1 else rng.standard_normal(y.shape) + 0.5
        cotangents.append(xp.asarray(v, dtype=np.float64))

    def objective():
        """L as a Python float, without recording a graph."""
        with no_grad():
            ys = _as_tuple(run())
        return float(sum(float((y.data.astype(np.float64) * v).sum())
                         for y, v in zip(ys, cotangents)))

    analytic = _analytic(outputs, cotangents, [t for _, t in targets])

    for (name, x), a in zip(targets, analytic):
        if mode == "full":
            n = _numeric_full(objective, x, eps)
            err = np.abs(a - n) - (atol + rtol * np.abs(n))
            if not (err <= 0).all():                       # a NaN on either side fails too
                j = np.unravel_index(int(np.argmax(np.where(np.isfinite(err), err, np.inf))),
                                     a.shape)
                msg = (f"gradcheck failed for {name} (shape {x.shape}) at index "
                       f"{tuple(int(k) for k in j)}: analytic {a[j]:.10g} vs numeric "
                       f"{n[j]:.10g} (|diff| {abs(a[j] - n[j]):.3g} > atol {atol:g} + rtol "
                       f"{rtol:g} * |numeric|); max |diff| over this input "
                       f"{np.max(np.abs(a - n)):.3g}")
                return _fail(msg, raise_exception)
        else:
            u = rng.standard_normal(x.shape)
            u /= max(np.linalg.norm(u), 1e-300)
            n = _numeric_directional(objective, x, u, eps)
            d = float((a * u).sum())
            if not abs(d - n) <= atol + rtol * abs(n):
                msg = (f"gradcheck (directional) failed for {name} (shape {x.shape}): "
                       f"analytic grad . u = {d:.10g} vs numeric {n:.10g} "
                       f"(|diff| {abs(d - n):.3g} > atol {atol:g} + rtol {rtol:g} * |numeric|)")
                return _fail(msg, raise_exception)
    return True


def numerical_grad(fn, inputs, eps=1e-6, cotangent=None):
    """Central-difference gradients of sum(fn(*inputs) * cotangent) w.r.t. each grad input.

    Returns a list with a NumPy float64 array per input (None for inputs not requiring grad).
    ``cotangent`` defaults to ones (i.e. the gradient of the sum of the output).
    """
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    xs = _float64_copies(inputs, warn=False)

    def objective():
        with no_grad():
            y = fn(*xs)
        v = 1.0 if cotangent is None else backend.asnumpy(getattr(cotangent, "data", cotangent))
        return float((backend.asnumpy(y.data).astype(np.float64) * v).sum())

    return [_numeric_full(objective, x, eps) if isinstance(x, Tensor) and x.requires_grad
            else None for x in xs]


# ----------------------------------------------------------------------------------------------

def _float64_copies(inputs, warn=True):
    out = []
    for i, t in enumerate(inputs):
        if isinstance(t, Tensor) and t.dtype.kind == "f":
            if warn and t.requires_grad and t.dtype != np.float64:
                warnings.warn(f"gradcheck: input {i} is {t.dtype}; checking on a float64 copy "
                              f"(finite differences in {t.dtype} are dominated by rounding)",
                              stacklevel=3)
            # C order, so that reshape(-1) in _numeric_full is a view that perturbs x itself
            xp = backend.get_array_module(t.data)
            t = Tensor(xp.array(t.data, dtype=np.float64, order="C", copy=True),
                       requires_grad=t.requires_grad)
        out.append(t)
    return out


def _as_tuple(y):
    ys = tuple(y) if isinstance(y, (tuple, list)) else (y,)
    for k, t in enumerate(ys):
        if not isinstance(t, Tensor):
            raise TypeError(f"gradcheck: fn must return Tensors, output {k} is {type(t).__name__}")
    return ys


def _analytic(outputs, cotangents, tensors):
    """Backward with the cotangents; returns each tensor's .grad as float64 NumPy, and leaves
    the tensors' .grad as it found it."""
    saved = [t.grad for t in tensors]
    for t in tensors:
        t.grad = None
    live = [(y, v) for y, v in zip(outputs, cotangents) if y.requires_grad]
    for k, (y, v) in enumerate(live):
        y.backward(grad=v, retain_graph=k < len(live) - 1)
    grads = []
    for t, g0 in zip(tensors, saved):
        g = t.grad
        grads.append(np.zeros(t.shape) if g is None else backend.asnumpy(g).astype(np.float64))
        t.grad = g0
    return grads


def _numeric_full(objective, x, eps):
    flat = x.data.reshape(-1)                      # a view (x is C-contiguous): writes perturb x
    assert flat.base is x.data or flat is x.data, "gradcheck: perturbation would miss the input"
    grad = np.zeros(flat.shape[0])
    for j in range(flat.shape[0]):
        orig = float(flat[j])
        flat[j] = orig + eps
        f_plus = objective()
        flat[j] = orig - eps
        f_minus = objective()
        flat[j] = orig
        grad[j] = (f_plus - f_minus) / (2 * eps)
    return grad.reshape(x.shape)


def _numeric_directional(objective, x, u, eps):
    orig = x.data.copy()
    step = backend.to_device(eps * u, x.device)
    x.data[...] = orig + step
    f_plus = objective()
    x.data[...] = orig - step
    f_minus = objective()
    x.data[...] = orig
    return (f_plus - f_minus) / (2 * eps)


def _fail(msg, raise_exception):
    if raise_exception:
        raise GradcheckError(msg)
    return False

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


# ----------------------------------------------------------------------------------------------
# finding the wrong backward

class NodeCheck:
    """The check of one node's backward against finite differences of that node alone."""

    __slots__ = ("index", "op", "module", "input", "shape", "analytic", "numeric", "error",
                 "ok", "skipped")

    def __init__(self, index, op, module, input=None, shape=None, analytic=None, numeric=None,
                 error=0.0, ok=True, skipped=None):
        self.index, self.op, self.module, self.input, self.shape = index, op, module, input, shape
        self.analytic, self.numeric, self.error = analytic, numeric, error
        self.ok, self.skipped = ok, skipped

    def __repr__(self):
        where = f" [{self.module}]" if self.module else ""
        if self.skipped:
            return f"node {self.index} {self.op}{where}: skipped ({self.skipped})"
        verdict = "ok" if self.ok else "WRONG"
        return (f"node {self.index} {self.op}{where} input {self.input} {self.shape}: "
                f"{verdict}, max |analytic - numeric| {self.error:.3g}")


class BisectReport:
    """What ``bisect_backward`` found: ``ok``, ``first_failure`` (a NodeCheck or None), and
    ``checks`` (every check made, in topological order)."""

    def __init__(self, checks, n_nodes):
        self.checks, self.n_nodes = checks, n_nodes
        bad = [c for c in checks if not c.ok]
        self.first_failure = bad[0] if bad else None
        self.ok = not bad

    def __bool__(self):
        return self.ok

    def __str__(self):
        if self.ok:
            done = sum(1 for c in self.checks if c.skipped is None)
            return (f"bisect_backward: all {self.n_nodes} nodes agree with finite differences "
                    f"({done} input gradients checked)")
        c = self.first_failure
        where = f" in module {c.module}" if c.module else ""
        return (f"bisect_backward: the first wrong backward is {c.op}{where} (node {c.index} "
                f"of {self.n_nodes}, inputs before outputs): gradient of its input {c.input}, "
                f"shape {c.shape}: analytic {c.analytic} vs numeric {c.numeric} (max |diff| "
                f"{c.error:.3g}). The {c.index - 1} nodes before it agree.")

    __repr__ = __str__


def bisect_backward(output, model=None, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0, max_full=64,
                    stop_at_first=True):
    """Find the op whose backward is wrong: check every node of the graph behind ``output`` on
    its own, inputs first, and report the first one that disagrees with finite differences.

    A whole-model gradcheck says *that* a gradient is wrong; the chain rule then carries the
    error into everything below it, so the leaves cannot tell *where*. Here each node is a
    small function y = f(x_1, ..., x_n) of its recorded inputs: the node's Function class is
    run again on them (a fresh instance, the same keyword arguments), its backward gives the
    vector-Jacobian product for a random cotangent v, and central differences of sum(f(x) * v)
    check it. Inputs with at most ``max_full`` elements are checked element by element, larger
    ones along a random direction. Random ops (``deterministic = False``: Dropout) and hook
    bookkeeping are skipped; elements an op defines to get no gradient (``zero_grad_mask``:
    Embedding's padding row) are left out.

    output:  a float64 Tensor with its graph (call before ``backward``, which frees it); build
             it from a float64 model (``model.double()``) and float64 inputs.
    model:   names the modules in the report (``graph.label_modules``).
    Returns a ``BisectReport``; ``print(report)`` names the first wrong op, its module, the
    input and the error; ``report.checks`` lists every check.
    """
    from tinyllm.autograd import graph
    if model is not None:
        graph.label_modules(model)
    rng = np.random.default_rng(seed)
    ns = graph.nodes(output)
    checks = []
    for index, ctx in enumerate(ns, 1):
        cls, name = type(ctx), type(ctx).__name__
        module = graph.module_name(ctx)
        if hasattr(ctx, "_released"):
            raise RuntimeError("bisect_backward: the graph was freed by backward(); build the "
                               "output again and call bisect_backward before backward")
        if not cls.deterministic or cls.bookkeeping:
            why = "random forward" if not cls.deterministic else "hook bookkeeping"
            checks.append(NodeCheck(index, name, module, skipped=why))
            continue
        parents = ctx.parents
        for k, p in enumerate(parents):
            if ctx.needs_input_grad[k] and p.dtype != np.float64:
                raise TypeError(f"bisect_backward: node {index} ({name}) has a {p.dtype} input "
                                f"{k} of shape {p.shape}; finite differences need float64 "
                                f"(model.double() and float64 inputs)")
        kwargs = getattr(ctx, "forward_kwargs", {})
        arrays = [p.data for p in parents]

        def run(arrs, cls=cls, ctx=ctx, kwargs=kwargs):
            fresh = cls(*ctx.parents)
            fresh.module = getattr(ctx, "module", None)
            return fresh, fresh.forward(*arrs, **kwargs)

        fresh, y = run(arrays)
        xp = backend.get_array_module(y)
        # entries that are +-inf at x (masked scores) are constants there: leave them out
        finite = xp.isfinite(y)
        v = xp.where(finite, xp.asarray(rng.standard_normal(y.shape) + 0.5), 0.0)
        dxs = fresh.backward(v)
        dxs = dxs if isinstance(dxs, tuple) else (dxs,)

        for k, p in enumerate(parents):
            if not ctx.needs_input_grad[k]:
                continue
            a = (np.zeros(p.shape) if dxs[k] is None
                 else backend.asnumpy(dxs[k]).astype(np.float64))
            # a private C-ordered copy of input k: the finite differences perturb it in place
            xk = Tensor(xp.array(arrays[k], dtype=np.float64, order="C", copy=True))

            def objective(k=k, xk=xk, run=run, arrays=arrays, v=v, finite=finite):
                arrs = list(arrays)
                arrs[k] = xk.data
                return float(backend.asnumpy(xp.where(finite, run(arrs)[1], 0.0) * v).sum())

            zero = fresh.zero_grad_mask(k)             # gradient 0 by definition: skip those
            keep = np.ones(p.shape) if zero is None else 1.0 - backend.asnumpy(zero)
            if p.size <= max_full:
                n = _numeric_full(objective, xk, eps) * keep
                diff = np.abs(a - n)
                bad = not (diff <= atol + rtol * np.abs(n)).all()
                j = np.unravel_index(int(np.argmax(np.nan_to_num(diff, nan=np.inf))), p.shape) \
                    if p.size else ()
                an, nu = (float(a[j]), float(n[j])) if p.size else (0.0, 0.0)
                check = NodeCheck(index, name, module, k, p.shape, f"{an:.10g} at {j}",
                                  f"{nu:.10g}", float(diff.max()) if p.size else 0.0, not bad)
            else:
                u = rng.standard_normal(p.shape) * keep
                u /= max(np.linalg.norm(u), 1e-300)
                nu = _numeric_directional(objective, xk, u, eps)
                an = float((a * u).sum())
                bad = not abs(an - nu) <= atol + rtol * abs(nu)
                check = NodeCheck(index, name, module, k, p.shape, f"grad . u = {an:.10g}",
                                  f"{nu:.10g}", abs(an - nu), not bad)
            checks.append(check)
            if bad and stop_at_first:
                return BisectReport(checks, len(ns))
    return BisectReport(checks, len(ns))


# ----------------------------------------------------------------------------------------------
# the finite-difference step-size lab

def eps_sweep(fn, x, eps_values=None, dtypes=("float32", "float64"), seed=0):
    """How the central-difference error depends on eps, for ``fn`` at ``x``, in each dtype.

    The error of (f(x + eps) - f(x - eps)) / (2 eps) has two parts:
      truncation  ~ f''' eps^2 / 6     (the Taylor terms the difference leaves out: falls as eps
                                        shrinks, slope 2 on a log-log plot)
      rounding    ~ u |f| / eps        (f is only known to the dtype's unit roundoff u, and the
                                        difference divides that error by eps: slope -1)
    so the error-vs-eps curve is a V with its bottom near eps ~ u^(1/3): about 1e-5 in float64
    (u = 1.1e-16, error ~1e-10) and 5e-3 in float32 (u = 6e-8, error ~1e-4 at best). This is
    why gradchecks run in float64 with eps ~1e-6.

    fn: Tensor -> Tensor (any shape). x: a Tensor or array (kept small: every element is
    perturbed, twice per eps). The exact gradient is the float64 backward of sum(fn(x) * v)
    with a fixed random v; the numeric one is computed with x and fn in each dtype. Returns
    {dtype name: [(eps, max |numeric - exact| / max |exact|), ...]}.
    """
    eps_values = (10.0 ** np.arange(-14, 0.01, 0.5)) if eps_values is None else eps_values
    x64 = np.array(backend.asnumpy(getattr(x, "data", x)), dtype=np.float64)
    rng = np.random.default_rng(seed)
    t = Tensor(x64.copy(), requires_grad=True)
    y = fn(t)
    v = rng.standard_normal(y.shape) + 0.5
    y.backward(grad=v)
    exact = backend.asnumpy(t.grad).astype(np.float64)
    scale = max(float(np.abs(exact).max()), 1e-300)
    out = {}
    for dt in dtypes:
        dt = np.dtype(dt)
        x_d = x64.astype(dt)
        rows = []

        def f(arr, dt=dt):
            with no_grad():
                yd = fn(Tensor(arr))
            return float((yd.data.astype(np.float64) * v).sum())

        for eps in eps_values:
            num = np.zeros(x64.shape)
            for j in np.ndindex(x64.shape):
                xp_, xm_ = x_d.copy(), x_d.copy()
                xp_[j] = xp_[j] + dt.type(eps)
                xm_[j] = xm_[j] - dt.type(eps)
                num[j] = (f(xp_) - f(xm_)) / (2 * float(eps))
            rows.append((float(eps), float(np.abs(num - exact).max()) / scale))
        out[dt.name] = rows
    return out


def format_eps_sweep(result):
    """The sweep as a text table, one row per eps, the best eps of each dtype marked *."""
    names = list(result)
    best = {n: min(range(len(result[n])), key=lambda i: result[n][i][1]) for n in names}
    lines = ["eps        " + "  ".join(f"{n + ' rel. error':>22s}" for n in names)]
    for i, (eps, _) in enumerate(result[names[0]]):
        cells = [f"{result[n][i][1]:20.2e}{' *' if best[n] == i else '  '}" for n in names]
        lines.append(f"{eps:9.1e}  " + "  ".join(cells))
    return "\n".join(lines)

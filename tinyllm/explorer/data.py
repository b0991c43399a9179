"""What the backward explorer page shows, collected from one backward pass: the graph's nodes
and edges, each node's numbers in the engine's order, each op's derivation and source, and each
node's own finite-difference check.

    data = page_data(loss, model)       # a JSON-ready dict; runs loss's backward

Nodes are the tensors of the graph behind ``loss`` that require grad: an op's output (its
``Function``) or a leaf (a parameter, or an input that requires grad). ``index`` is a node's
place in the backward walk (``tinyllm.trace.backward_steps``: the engine's order, 1 first);
``forward`` its place in the forward (inputs before outputs). An edge runs from an input to
the node that consumed it (data flow). A node's record holds its shapes, its upstream gradient
``dout`` and each local gradient ``grads[k]`` (statistics and a small heatmap of one 2-D
slice), what its forward saved and its bytes, and, for an op, the bisecting gradcheck's verdict
on that node alone (``tinyllm.autograd.gradcheck.bisect_backward``: float64 graphs only).
Ops' docstrings and their forward/backward source (file:line) are stored once per class.
"""
import inspect
import os

import numpy as np

from tinyllm import backend, trace
from tinyllm.autograd import graph
from tinyllm.autograd.gradcheck import bisect_backward

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def page_data(loss, model=None, check=True, heat=16):
    """The page's data for ``loss`` (a scalar Tensor with its graph), running its backward.

    model:  names modules and parameters.
    check:  run the bisecting gradcheck first (float64 graphs; skipped, and said so, for
            float32 ones).
    heat:   the largest side of a heatmap (a 2-D slice of a gradient, strided down to it).
    """
    if model is not None:
        graph.label_modules(model)
    order = graph.tensors(loss)                             # inputs before outputs
    forward = {id(t): i for i, t in enumerate(order)}
    ctxs = [t._ctx for t in order if t._ctx is not None]
    checks, check_note = _checks(loss, model, ctxs, check)
    edges = [[forward[id(p)], forward[id(t)]] for t in order if t._ctx is not None
             for p in t._ctx.parents if id(p) in forward]
    nodes, ops, leaves = [None] * len(order), {}, []
    for step in trace.backward_steps(loss, model=model):
        i = forward[id(step.tensor)]
        node = {"index": step.index, "forward": i, "op": step.op, "module": step.module,
                "out_shape": list(step.out_shape), "dout": _stats(step.dout, heat)}
        if step.op == "leaf":
            node["name"] = step.name
            leaves.append((node, step.tensor))
        else:
            cls = type(step.ctx)
            if step.op not in ops:
                ops[step.op] = _op_info(cls)
            node["in_shapes"] = [list(s) for s in step.in_shapes]
            node["grads"] = [None if g is None else _stats(g, heat) for g in step.grads]
            node["saved"] = [{"name": n, "shape": list(s), "dtype": d, "bytes": b}
                             for n, s, d, b in step.saved]
            node["saved_bytes"] = step.saved_bytes
            node["check"] = checks.get(id(step.ctx))
        nodes[i] = node
    for node, t in leaves:                          # a leaf's .grad, complete after the walk
        node["grad"] = _stats(t.grad, heat) if t.grad is not None else None
    failed = [n for n in sorted(nodes, key=lambda n: n["forward"])
              if n.get("check") and not n["check"]["ok"]]
    return {"nodes": sorted(nodes, key=lambda n: n["index"]), "edges": edges, "ops": ops,
            "loss": float(np.asarray(backend.asnumpy(loss.data)).reshape(-1)[0]),
            "dtype": str(loss.dtype), "check_note": check_note,
            "first_failure": None if not failed else {
                "index": failed[0]["index"], "op": failed[0]["op"],
                "module": failed[0]["module"], "error": failed[0]["check"]["error"]}}


def _checks(loss, model, ctxs, check):
    """id(ctx) -> the bisecting gradcheck's verdict on that node: worst error over its
    inputs, ok, skipped (why), and per-input numbers."""
    if not check:
        return {}, "finite-difference checks were not asked for (check=False)"
    if loss.dtype != np.float64:
        return {}, (f"finite-difference checks need float64 (this graph is {loss.dtype}): "
                    f"build the model with model.double() and float64 inputs")
    report = bisect_backward(loss, model=model, stop_at_first=False)
    out = {}
    for c in report.checks:
        ctx = ctxs[c.index - 1]
        rec = out.setdefault(id(ctx), {"ok": True, "error": 0.0, "skipped": None,
                                       "inputs": []})
        if c.skipped:
            rec["skipped"] = c.skipped
            continue
        rec["ok"] = rec["ok"] and bool(c.ok)
        rec["error"] = max(rec["error"], float(c.error))
        rec["inputs"].append({"input": c.input, "shape": list(c.shape or ()),
                              "error": float(c.error), "ok": bool(c.ok)})
    done = sum(1 for c in report.checks if not c.skipped)
    return out, (f"every node's backward checked alone against central differences "
                 f"({done} input gradients)")


def _op_info(cls):
    """An op class's derivation (its docstring) and its forward and backward source."""
    return {"doc": inspect.getdoc(cls) or "", "forward": _source(cls.forward),
            "backward": _source(cls.backward), "class": cls.__name__,
            "module": cls.__module__, "planted": getattr(cls.backward, "planted", None)}


def _source(fn):
    fn = inspect.unwrap(fn)                     # a planted bug's wrapper: the op's own code
    try:
        lines, start = inspect.getsourcelines(fn)
        path = inspect.getsourcefile(fn)
    except (OSError, TypeError):
        return {"where": "?", "code": ""}
    rel = os.path.relpath(path, _ROOT) if path.startswith(_ROOT) else path
    return {"where": f"{rel}:{start}", "code": "".join(lines)}


def _stats(a, heat):
    """Shape, min, max, mean and norm of an array, and a heatmap: one 2-D slice (the last two
    axes at index 0 of the others), strided down to at most ``heat`` x ``heat``."""
    a = np.asarray(backend.asnumpy(a))
    out = {"shape": list(a.shape)}
    if a.size == 0:
        return out
    f = a.astype(np.float64)
    out.update({"min": _num(f.min()), "max": _num(f.max()), "mean": _num(f.mean()),
                "norm": _num(np.sqrt(np.sum(f * f)))})
    s = f.reshape(1, -1) if f.ndim < 2 else f[(0,) * (f.ndim - 2)]
    rows, cols = s.shape
    r = max(1, -(-rows // heat))
    c = max(1, -(-cols // heat))
    out["heat"] = [[_num(v) for v in row] for row in s[::r, ::c]]
    out["heat_of"] = [rows, cols, r, c]         # the slice's size and the stride taken
    return out


def _num(v):
    """A float with 4 significant digits (keeps the page small); non-finite as a string."""
    v = float(v)
    if not np.isfinite(v):
        return str(v)
    return float(f"{v:.4g}")

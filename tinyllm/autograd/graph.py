"""Looking at a recorded graph: its nodes, what each saved for backward, and a Graphviz drawing.

After ``loss = model(x, y)`` and before ``loss.backward()`` (which frees the graph), the graph
behind ``loss`` is a set of ``Function`` instances (``tensor._ctx``), each holding its input
tensors (``ctx.parents``), the arrays its forward saved for backward (its attributes), the
module it ran in (``ctx.module``) and its forward's keyword arguments (``ctx.forward_kwargs``).

    nodes(loss)               the Functions, inputs before outputs (a topological order)
    saved_arrays(ctx)         [(attribute name, array)] that ``ctx`` keeps for backward
    saved_bytes(loss)         their total over the graph (arrays shared between nodes once)
    label_modules(model)      name every module ("h.0.attn") for messages, tables and drawings
    to_dot(loss, model)       Graphviz DOT text, nodes grouped by module; ``render`` draws it
"""
import os
import shutil
import subprocess

import numpy as np

from tinyllm import backend
from tinyllm._files import atomic_write, atomic_write_text
from tinyllm.autograd.tensor import Tensor
from tinyllm.autograd.walk import _topological_order


def tensors(root):
    """Tensors behind ``root`` that require grad, each after all its inputs (root last)."""
    if not isinstance(root, Tensor):
        raise TypeError(f"graph: expected a Tensor, got {type(root).__name__}")
    if not root.requires_grad:
        raise ValueError("graph: this tensor does not require grad, so it has no graph")
    return _topological_order(root)


def nodes(root):
    """The ``Function`` nodes behind ``root``, inputs before outputs."""
    return [t._ctx for t in tensors(root) if t._ctx is not None]


def _is_array(a):
    """NumPy arrays and scalars (a saved count is 8 bytes too), CuPy arrays."""
    return isinstance(a, (np.ndarray, np.generic)) or (
        hasattr(a, "__cuda_array_interface__") and hasattr(a, "nbytes"))


def saved_arrays(ctx):
    """[(name, array)] that ``ctx`` saved in forward for its backward, in attribute order.

    Arrays inside tuples/lists are named ``name[i]``. Input arrays saved by reference (as Mul
    saves x and y) count: they stay alive because of this node."""
    out = []
    for name, value in vars(ctx).items():
        if name in ("parents", "needs_input_grad", "requires_grad", "module",
                    "forward_kwargs", "created_at"):
            continue
        if _is_array(value):
            out.append((name, value))
        elif isinstance(value, (tuple, list)):
            out.extend((f"{name}[{i}]", v) for i, v in enumerate(value) if _is_array(v))
    return out


def _owner(a):
    """The array that owns ``a``'s memory (views count once, with their base)."""
    while isinstance(getattr(a, "base", None), (np.ndarray,)) or (
            getattr(a, "base", None) is not None and not isinstance(a, np.generic)):
        a = a.base
    return a


def saved_bytes(root_or_nodes):
    """Bytes of the distinct arrays saved for backward across the graph (a view and its base,
    or one array saved by two nodes, counted once)."""
    ns = nodes(root_or_nodes) if isinstance(root_or_nodes, Tensor) else list(root_or_nodes)
    seen, total = set(), 0
    for ctx in ns:
        for _, a in saved_arrays(ctx):
            base = _owner(a)
            if id(base) not in seen:
                seen.add(id(base))
                total += int(base.nbytes)
    return total


def label_modules(model):
    """Give every module of ``model`` its dotted name (``module._trace_name``), so nodes can say
    which layer they ran in ("h.1.mlp"). The root is called by its class name. Returns model."""
    for name, m in model.named_modules():
        object.__setattr__(m, "_trace_name", name or type(m).__name__)
    return model


def module_name(ctx):
    """The dotted name of the module ``ctx`` ran in ("" outside any module), or its class name
    when the model was not labelled with ``label_modules``."""
    m = getattr(ctx, "module", None)
    if m is None:
        return ""
    return getattr(m, "_trace_name", None) or type(m).__name__


def owner_module(param_name):
    """The dotted name of the module a parameter belongs to ("h.0.ln_1.weight" -> "h.0.ln_1";
    "" for a parameter of the root or an unnamed tensor)."""
    return param_name.rsplit(".", 1)[0] if param_name and "." in param_name else ""


def parameter_names(model):
    """id(parameter) -> dotted name, for every trainable parameter of ``model``."""
    return {id(p): name for name, p in model.named_parameters()} if model is not None else {}


# ----------------------------------------------------------------------------------------------
# Graphviz

def to_dot(root, model=None, grad_norms=False, group_modules=True, max_nodes=2000):
    """The graph behind ``root`` as Graphviz DOT text.

    Boxes are ops ("LayerNorm 2x8x16": the op and its output shape), ellipses are leaves
    (parameters by name, other inputs as "input"). With ``model``, ops and parameters are
    grouped in nested clusters by the module they belong to (h.0 > h.0.attn), which keeps a
    small model's graph readable at a glance. ``grad_norms=True`` runs the backward pass
    (``retain_graph=True``; leaves' ``.grad`` accumulate as after ``root.backward()``) and
    labels each node with the norm of dL/d(its output).
    """
    order = tensors(root)
    if len(order) > max_nodes:
        raise ValueError(f"to_dot: the graph has {len(order)} tensors (max_nodes={max_nodes}); "
                         f"draw a smaller model or raise max_nodes")
    if model is not None:
        label_modules(model)
    pnames = parameter_names(model)
    norms = {}
    if grad_norms:
        from tinyllm.autograd.walk import backward_walk
        xp = backend.get_array_module(root.data)
        for t, _, dout, _ in backward_walk(root, xp.ones_like(root.data), retain_graph=True):
            norms[id(t)] = float(backend.asnumpy(xp.sqrt((dout.astype(np.float64) ** 2).sum())))
    ids = {id(t): f"n{k}" for k, t in enumerate(order)}
    clusters = {}                                   # module name -> [node lines]
    edges = []
    for t in order:
        nid = ids[id(t)]
        shape = "x".join(str(n) for n in t.shape) or "scalar"
        norm = f"\\n|grad| {norms[id(t)]:.3g}" if id(t) in norms else ""
        if t._ctx is None:
            name = pnames.get(id(t)) or t.name or "input"
            line = (f'{nid} [label="{name}\\n{shape}{norm}", shape=ellipse, '
                    f'style=filled, fillcolor="#dbe9f6"];')
            owner = owner_module(pnames.get(id(t)))
            clusters.setdefault(owner if group_modules else "", []).append(line)
            continue
        ctx = t._ctx
        label = f"{type(ctx).__name__}\\n{shape}{norm}"
        fill = "#fde2c8" if t is root else "#f2f2f2"
        line = f'{nid} [label="{label}", shape=box, style="rounded,filled", fillcolor="{fill}"];'
        clusters.setdefault(module_name(ctx) if group_modules else "", []).append(line)
        for p in ctx.parents:
            if id(p) in ids:
                edges.append(f"{ids[id(p)]} -> {nid};")
    lines = ["digraph tinyllm {", '  rankdir=BT; node [fontname="Helvetica", fontsize=10];']
    lines += ["  " + x for x in clusters.pop("", [])]
    lines += _nested_clusters(clusters)
    lines += ["  " + e for e in edges]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _nested_clusters(clusters):
    """DOT subgraphs for dotted module names, nested by prefix (h.0 contains h.0.attn)."""
    names = sorted(clusters)
    tree = {}
    for name in names:                        # ensure every prefix exists as a cluster
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            tree.setdefault(".".join(parts[:k]), [])
    out, stack = [], []
    for k, name in enumerate(sorted(tree, key=lambda s: s.split("."))):
        while stack and not name.startswith(stack[-1] + "."):
            stack.pop()
            out.append("  " * (len(stack) + 1) + "}")
        pad = "  " * (len(stack) + 1)
        out.append(f'{pad}subgraph cluster_{k} {{ label="{name}"; style=rounded; '
                   f'color="#999999";')
        out += [pad + "  " + x for x in clusters.get(name, [])]
        stack.append(name)
    while stack:
        stack.pop()
        out.append("  " * (len(stack) + 1) + "}")
    return out


def render(dot_text, path):
    """Write ``dot_text`` to ``path``: .dot/.gv as text, .svg/.png/.pdf through Graphviz's
    ``dot`` program (written to a temporary file, then renamed: never half a file)."""
    ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if ext in ("", "dot", "gv"):
        return atomic_write_text(path, dot_text)
    exe = shutil.which("dot")
    if exe is None:
        raise RuntimeError(f"render: writing .{ext} needs Graphviz's `dot` program, which is "
                           f"not on PATH (install graphviz, or write a .dot file and view it "
                           f"elsewhere)")
    return atomic_write(path, lambda tmp: subprocess.run([exe, f"-T{ext}", "-o", tmp],
                                                         input=dot_text.encode(), check=True))

"""Step through a backward pass one node at a time.

``loss.backward()`` walks the graph from the loss to the leaves in one go. ``backward_steps``
runs the same walk (``tinyllm.autograd.walk.backward_walk``, the engine's only one) and stops
after each node, so you can look at what the chain rule did there::

    steps = tinyllm.trace.backward_steps(loss, model=model)
    step = next(steps)          # the first node: the loss's own op
    print(step)                 # op, module, shapes, upstream gradient, local gradients, saved
    step.dout, step.grads       # dL/d(output) and the gradients it sent to each input (arrays)
    for step in steps: ...      # the rest; leaves' .grad fill as their steps pass

At each step:
- ``op``: the Function's class ("LayerNorm"), or "leaf" where a leaf's ``.grad`` accumulates;
- ``module``: the layer it ran in ("transformer.h.0.ln_1"; pass ``model=`` for dotted names);
- ``out_shape`` / ``in_shapes``: the shapes of its output and inputs;
- ``dout``: the upstream gradient dL/d(output), summed over every consumer of the output;
- ``grads``: the local result, one gradient per input (None where not needed);
- ``saved``: (name, shape, dtype, bytes) of each array its forward kept for backward;
- for a leaf: ``name`` (the parameter's name) and ``grad``, its accumulated ``.grad``.

Filters (``ops=``, ``modules=``) choose which steps are shown; the walk itself always visits
every node, so the gradients are the same as ``loss.backward()``'s. Stopping the loop early
leaves the backward unfinished (some leaves without ``.grad``). ``debug=True`` (or a list of op
names) stops in the debugger right before each shown op's backward: press ``s`` to step into it.

``explain_backward`` prints the whole walk as a table (the ``tinyllm explain-backward``
command runs it on a tiny GPT).
"""
import sys

import numpy as np

from tinyllm import backend
from tinyllm.autograd import graph, observe
from tinyllm.autograd.tensor import Tensor
from tinyllm.autograd.walk import backward_walk


class BackwardStep:
    """One node of a backward pass, as seen right after its backward ran (see module doc)."""

    __slots__ = ("index", "total", "op", "module", "out_shape", "in_shapes", "dout", "grads",
                 "saved", "name", "grad", "tensor", "ctx")

    def __init__(self, index, total, t, ctx, dout, dparents, pnames):
        self.index, self.total, self.tensor, self.ctx = index, total, t, ctx
        self.out_shape, self.dout = t.shape, dout
        if ctx is None:
            self.op, self.module = "leaf", graph.owner_module(pnames.get(id(t)))
            self.in_shapes, self.grads, self.saved = (), (), ()
            self.name = pnames.get(id(t)) or t.name or "input"
            self.grad = t.grad
        else:
            self.op, self.module = type(ctx).__name__, graph.module_name(ctx)
            self.in_shapes = tuple(p.shape for p in ctx.parents)
            self.grads = tuple(dparents)
            self.saved = tuple((n, tuple(a.shape), str(a.dtype), int(a.nbytes))
                               for n, a in graph.saved_arrays(ctx))
            self.name, self.grad = None, None

    @property
    def saved_bytes(self):
        return sum(s[3] for s in self.saved)

    def __repr__(self):
        where = f" in {self.module}" if self.module else ""
        return f"<BackwardStep {self.index}/{self.total}: {self.op}{where} {self.out_shape}>"

    def __str__(self):
        head = f"step {self.index}/{self.total}  {self.op}"
        if self.module:
            head += f"  [{self.module}]"
        lines = [head]
        if self.op == "leaf":
            lines.append(f"  leaf       {self.name} {_shape(self.out_shape)}")
            lines.append(f"  dout       {_summary(self.dout)}")
            lines.append(f"  .grad      {_summary(self.grad)}  (accumulated)")
            return "\n".join(lines)
        lines.append(f"  output     {_shape(self.out_shape)}   inputs "
                     + ", ".join(_shape(s) for s in self.in_shapes))
        lines.append(f"  dout       {_summary(self.dout)}")
        for k, g in enumerate(self.grads):
            label = f"d input {k}" if len(self.grads) > 1 else "d input"
            lines.append(f"  {label:10s} {_summary(g) if g is not None else '(not needed)'}")
        if self.saved:
            lines.append(f"  saved      {_bytes(self.saved_bytes)}: "
                         + ", ".join(f"{n} {_shape(s)} {dt}" for n, s, dt, _ in self.saved))
        else:
            lines.append("  saved      nothing")
        return "\n".join(lines)

    def row(self):
        """The step as a table row (see ``explain_backward``)."""
        if self.op == "leaf":
            local = f".grad {_norm(self.grad):.3g}"
        else:
            local = " ".join(f"{_norm(g):.3g}" if g is not None else "-" for g in self.grads)
        return (str(self.index), self.op if self.op != "leaf" else f"leaf {self.name}",
                self.module, _shape(self.out_shape),
                " ".join(_shape(s) for s in self.in_shapes), f"{_norm(self.dout):.3g}", local,
                _bytes(self.saved_bytes) if self.saved else "")


def backward_steps(loss, model=None, ops=None, modules=None, grad=None, retain_graph=False,
                   debug=False):
    """Run ``loss.backward(grad)`` one node at a time, yielding a ``BackwardStep`` per node.

    model:    names the modules and parameters (``graph.label_modules``)
    ops:      show only these op names ("Softmax", "LayerNorm"; "leaf" for leaves)
    modules:  show only nodes in these modules or below them ("transformer.h.0")
    debug:    True, or op names: call ``breakpoint()`` right before each shown (or named) op's
              backward; in pdb, ``s`` steps into it.
    """
    if model is not None:
        graph.label_modules(model)
    pnames = graph.parameter_names(model)
    order = graph.tensors(loss)
    xp = backend.get_array_module(loss.data)
    if grad is None:
        if loss.data.size != 1:
            raise RuntimeError(f"backward_steps: grad can be omitted only for a scalar output, "
                               f"got shape {loss.shape}")
        dout = xp.ones_like(loss.data)
    else:
        dout = xp.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=loss.dtype)
    want_ops = None if ops is None else {o.lower() for o in _names(ops)}
    want_mods = None if modules is None else tuple(_names(modules))
    stop_on = None
    if debug:
        stop_on = want_ops if debug is True else {o.lower() for o in _names(debug)}

    def shown(op, module):
        if want_ops is not None and op.lower() not in want_ops:
            return False
        if want_mods is not None and not any(module == m or module.startswith(m + ".")
                                             for m in want_mods):
            return False
        return True

    total = len(order)
    debugger = _Debugger({id(t._ctx) for t in order}, shown, stop_on) if debug else None
    if debugger is not None:
        observe.attach(debugger)               # innermost: next to the op's backward
    try:
        for k, (t, ctx, d, dparents) in enumerate(backward_walk(loss, dout, retain_graph), 1):
            step = BackwardStep(k, total, t, ctx, d, dparents, pnames)
            if shown(step.op, step.module):
                yield step
    finally:
        if debugger is not None:
            observe.detach(debugger)


class _Debugger(observe.Observer):
    """Stops in the debugger right before the backward of each chosen op of one graph."""

    def __init__(self, nodes, shown, stop_on):
        self.nodes, self.shown, self.stop_on = nodes, shown, stop_on

    def backward(self, ctx, call, dout):
        op = type(ctx).__name__
        if id(ctx) in self.nodes and self.shown(op, graph.module_name(ctx)) and (
                self.stop_on is None or op.lower() in self.stop_on):
            return _backward_in_debugger(ctx, call, dout)
        return call(dout)


def _backward_in_debugger(ctx, call, dout):
    breakpoint()   # tinyllm.trace: the next line runs this op's backward; press s to step in
    return call(dout)         # call is ctx.backward (or the next observer's wrapper)


def explain_backward(loss, model=None, ops=None, modules=None, file=None, max_rows=None):
    """Run the backward pass and print one row per node (filtered as ``backward_steps``):
    step, op, module, output shape, input shapes, |dout|, the norms of the local gradients
    it produced (or a leaf's accumulated .grad), and the bytes its forward saved. Returns the
    list of shown steps."""
    file = sys.stdout if file is None else file
    steps = list(backward_steps(loss, model=model, ops=ops, modules=modules))
    header = ("step", "op", "module", "output", "inputs", "|dout|", "|d inputs|", "saved")
    rows = [s.row() for s in steps]
    cut = max_rows is not None and len(rows) > max_rows
    if cut:
        rows = rows[:max_rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:{'>' if i in (0, 5, 7) else '<'}{w}}}" for i, w in enumerate(widths))
    print(fmt.format(*header), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for r in rows:
        print(fmt.format(*r).rstrip(), file=file)
    if cut:
        print(f"... {len(steps) - max_rows} more steps", file=file)
    total_saved = sum(s.saved_bytes for s in steps if s.op != "leaf")
    print(f"{len(steps)} steps shown; saved for backward by these ops: {_bytes(total_saved)}",
          file=file)
    return steps


# ----------------------------------------------------------------------------------------------
# formatting

def _names(x):
    return [x] if isinstance(x, str) else list(x)


def _shape(s):
    return "(" + ", ".join(str(n) for n in s) + ("," if len(s) == 1 else "") + ")"


def _norm(a):
    if a is None:
        return float("nan")
    a = backend.asnumpy(a).astype(np.float64)
    return float(np.sqrt((a * a).sum()))


def _summary(a):
    """'(2, 8) norm 0.41 mean -0.0012 [0.013, -0.2, ...]': shape, norm, mean, first values."""
    if a is None:
        return "None"
    h = backend.asnumpy(a)
    flat = h.reshape(-1)
    head = ", ".join(f"{v:.4g}" for v in flat[:4]) + (", ..." if flat.size > 4 else "")
    mean = float(flat.mean()) if flat.size else 0.0
    return f"{_shape(h.shape)} norm {_norm(h):.4g} mean {mean:.4g}  [{head}]"


def _bytes(n):
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} B"


# ----------------------------------------------------------------------------------------------
# a model small enough to read every step of

SAMPLE_TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n"
               "Speak, speak.\n")          # the first lines of tiny Shakespeare


def tiny_gpt_example(n_layer=1, n_head=2, n_embd=16, block_size=8, batch_size=2, seed=0,
                     dtype="float32", text=SAMPLE_TEXT):
    """A character-level GPT small enough to read its whole backward pass, and one batch of
    (inputs, targets) windows from ``text``: returns (model, idx, targets, tokenizer)."""
    from tinyllm.data.tokenizers import CharTokenizer
    from tinyllm.models.gpt import GPT, GPTConfig
    tok = CharTokenizer.from_text(text)
    data = np.array(tok.encode(text), dtype=np.int64)
    if len(data) <= block_size:
        raise ValueError(f"tiny_gpt_example: the text has {len(data)} characters, need more "
                         f"than block_size={block_size}")
    backend.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=n_layer,
                          n_head=n_head, n_embd=n_embd, dropout=0.0))
    model.to(np.dtype(dtype))
    starts = np.random.default_rng(seed).integers(0, len(data) - block_size, batch_size)
    idx = np.stack([data[s:s + block_size] for s in starts])               # (B, T)
    targets = np.stack([data[s + 1:s + block_size + 1] for s in starts])   # (B, T)
    return model, idx, targets, tok


def to_html(loss, model=None, path="backward.html", title=None, check=True):
    """Write the backward explorer page of ``loss`` (one self-contained HTML file: the graph,
    each node's card, step-through) to ``path``; see ``tinyllm.explorer``. Runs the
    backward."""
    from tinyllm.explorer import to_html as write
    return write(loss, model, path, title=title, check=check)

"""See the backward pass: one self-contained HTML page of a training step's graph.

    from tinyllm import trace
    _, loss = model(idx, targets)
    trace.to_html(loss, model, "step.html")     # then open step.html in a browser

or ``tinyllm explain-backward --html step.html`` (a tiny GPT, or ``--out-dir`` a trained run).

The page draws the graph behind ``loss`` top to bottom in data-flow order, ops grouped by the
module they ran in (click a module's name to fold it), leaves and parameters in green. Click a
node for its card: the op and its module, shapes, its derivation (the Function's docstring),
its backward and forward source with file:line, the upstream gradient ``dout`` and each local
gradient (min, max, mean, norm, and a heatmap of one 2-D slice), what its forward saved and the
bytes, and the node's own finite-difference check (``bisect_backward``; float64 graphs). The
step buttons (and the arrow keys) walk the backward in the engine's order, lighting the nodes
done so far; a parameter's card shows its ``.grad`` once its last contribution has arrived.

Everything is inline (the data as JSON, the script, the style): no network when viewing, one
file to share. ``plant_bug(op)`` makes one op's backward wrong for teaching: the page then shows
where the finite-difference check first disagrees.

The page's DOM, for tests and scripts: one element per node with ``data-op`` (the Function's
class name, "leaf" for leaves), ``data-module`` and ``data-node`` (its place in the backward
order, 1 first); the card is ``#card``; ``#step-next`` / ``#step-prev`` step; the current node
has the class ``current``; a node whose check failed has ``check-failed`` and ``#first-failure``
names it; ``document.body.dataset.ready`` is "1" once the page is drawn; the data is the JSON in
``script#explorer-data``.
"""
import contextlib
import html
import json
from pathlib import Path

from tinyllm._files import atomic_write_text
from tinyllm.autograd.function import Function
from tinyllm.explorer.data import page_data
from tinyllm.explorer import layout as layout_module
from tinyllm.explorer.layout import layout

__all__ = ["page_data", "plant_bug", "to_html", "layout", "layout_module"]

_HERE = Path(__file__).resolve().parent


def to_html(loss, model=None, path="backward.html", title=None, check=True):
    """Write the explorer page of ``loss``'s backward to ``path`` (runs the backward; see the
    module docstring) and return the path. ``check``: each node's finite-difference check
    (float64 graphs only; the page says so otherwise)."""
    data = page_data(loss, model, check=check)
    data["xy"] = {str(k): list(v) for k, v in layout(data["nodes"], data["edges"]).items()}
    data["root"] = type(model).__name__ if model is not None else None
    title = title or (f"Backward of {type(model).__name__} " if model is not None
                      else "Backward ") + f"(loss {data['loss']:.4f})"
    page = render(data, title)
    path = Path(path)
    atomic_write_text(path, page)
    return path


def render(data, title):
    """The page's text: the template with the style, script and data inlined."""
    text = (_HERE / "page.html").read_text(encoding="utf-8")
    blob = json.dumps(data, separators=(",", ":"), allow_nan=False)
    blob = blob.replace("</", "<\\/")          # no "</script>" inside the data block
    parts = {"__STYLE__": (_HERE / "page.css").read_text(encoding="utf-8"),
             "__SCRIPT__": (_HERE / "page.js").read_text(encoding="utf-8"),
             "__TITLE__": html.escape(title), "__DATA__": blob}
    for key in ("__STYLE__", "__SCRIPT__", "__DATA__", "__TITLE__"):
        text = text.replace(key, parts[key])
    return text


def function_class(name):
    """The ``Function`` subclass called ``name`` ("Softmax"), or a ValueError listing them."""
    seen, todo = {}, list(Function.__subclasses__())
    while todo:
        cls = todo.pop()
        seen.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    if name not in seen:
        raise ValueError(f"plant_bug: no op called {name!r}; ops: "
                         f"{', '.join(sorted(seen))}")
    return seen[name]


@contextlib.contextmanager
def plant_bug(op, scale=1.5):
    """Inside the block, ``op``'s backward returns ``scale`` times its first input gradient
    (a classic slip: a factor lost or doubled in a derivation). For teaching: the explorer's
    finite-difference checks then point at that op."""
    cls = function_class(op)
    real = cls.__dict__.get("backward")
    base = cls.backward

    def backward(self, dout):
        grads = base(self, dout)
        single = not isinstance(grads, tuple)
        grads = (grads,) if single else grads
        k = next((i for i, g in enumerate(grads) if g is not None), None)
        if k is not None:
            grads = grads[:k] + (grads[k] * scale,) + grads[k + 1:]
        return grads[0] if single else grads

    backward.__wrapped__ = base
    backward.planted = (f"planted by plant_bug: this op's backward returns {scale} x the "
                        f"first input gradient of the code below")
    cls.backward = backward
    try:
        yield cls
    finally:
        if real is None:
            del cls.backward
        else:
            cls.backward = real

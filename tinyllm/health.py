"""Training-health numbers to log and plot: gradient norm per layer, update-to-weight ratio,
attention entropy per head.

One training step, measured (``tinyllm train --health-every N`` does exactly this)::

    _, loss = model(x, y)
    attn = health.attention_stats(loss, model)     # before backward: it frees the weights P
    loss.backward()
    norms = health.grad_norms(model)               # {layer: ||dL/dw||}
    before = health.snapshot(model)                # a copy of every weight
    optimizer.step()
    ratios = health.update_ratios(model, before)   # {layer: ||w_new - w_old|| / ||w_old||}
    records.append(health.record(step, norms, ratios, attn, lr=lr))
    ...
    health.plot_health(records, "health.png")

What the numbers say:

* gradient norm per layer: which layers learn, and whether gradients vanish towards the input
  or explode (a spike in the total comes before a loss spike; ``clip_grad_norm_`` caps it).
* update-to-weight ratio ||delta w|| / ||w|| for one optimizer step (Karpathy's "update:data
  ratio", cs231n / "Building makemore" part 3): about 1e-3 is healthy; 1e-2 and up moves the
  weights too fast, 1e-5 and below barely moves them (learning rate too low, or a dead layer).
* attention entropy of a query's weights over the keys, H = -sum_k p_k log p_k in nats
  (0 log 0 = 0), averaged over batch and query positions, per head: 0 when every query looks
  at one key, log(n) when it spreads uniformly over its n visible keys. The maximum, the
  same average of log(number of visible keys), is reported beside it; for causal attention
  over T positions that is mean_i log(i + 1), not log(T). At initialisation the heads sit near
  the maximum; heads that learn to look somewhere drop below it.

Layers (``by="layer"``): a parameter belongs to the prefix of its dotted name up to and
including the first numeric index (``transformer.h.3.attn.c_attn.weight`` -> ``transformer.h.3``,
``bert.encoder.layer.0...`` -> ``bert.encoder.layer.0``, seq2seq ``decoder.1...`` ->
``decoder.1``); a name with no numeric index belongs to its module (``transformer.wte.weight``
-> ``transformer.wte``); PyTorch-style RNN parameters (``lstm.weight_hh_l1``) belong to their
layer (``lstm.l1``). ``by="module"`` groups by owning module, ``by="parameter"`` not at all.

Everything runs on the arrays' own backend (NumPy or CuPy), summing in float64; only the small
results (one number per group or head) come to the host. Nothing here draws random numbers or writes
to a parameter, gradient or optimizer state, so measuring never changes the training numbers.
"""
import math
import re

import numpy as np

from tinyllm import backend
from tinyllm._files import atomic_write
from tinyllm.autograd.graph import label_modules, module_name, nodes
from tinyllm.nn.attention import causal_mask
from tinyllm.ops.attention import QKVSelfAttention, ScaledDotProductAttention
from tinyllm.ops.softmax import Softmax

# ----------------------------------------------------------------------------------------------
# grouping parameters

_RNN_LAYER = re.compile(r".*_l(\d+)(_reverse)?$")     # weight_ih_l0, bias_hh_l1_reverse


def layer_name(param_name):
    """The layer a parameter belongs to (see the module docstring):

    >>> layer_name("transformer.h.3.attn.c_attn.weight"), layer_name("transformer.wte.weight")
    ('transformer.h.3', 'transformer.wte')
    >>> layer_name("lstm.weight_hh_l1"), layer_name("bias")
    ('lstm.l1', 'bias')
    """
    parts = param_name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[:i + 1])
    m = _RNN_LAYER.match(parts[-1])
    if m:
        return ".".join(parts[:-1] + [f"l{m.group(1)}"])
    return ".".join(parts[:-1]) or param_name


def _group_of(param_name, by):
    if by == "layer":
        return layer_name(param_name)
    if by == "module":
        return param_name.rsplit(".", 1)[0] if "." in param_name else param_name
    if by == "parameter":
        return param_name
    raise ValueError(f"health: by must be 'layer', 'module' or 'parameter', got {by!r}")


def _sumsq(a):
    """sum of squares of an array, in float64, as a 0-d array on its device."""
    xp = backend.get_array_module(a)
    a = a.astype(np.float64, copy=False).ravel()
    return xp.dot(a, a)


def _to_host(sums):
    """{key: [0-d device arrays]} -> {key: float sum}, with one device-to-host copy."""
    if not sums:
        return {}
    xp = backend.get_array_module(next(iter(sums.values()))[0])
    totals = backend.asnumpy(xp.stack([sum(v) for v in sums.values()]))
    return {k: float(t) for k, t in zip(sums, totals)}


# ----------------------------------------------------------------------------------------------
# gradient norms and update ratios

def grad_norms(model, by="layer"):
    """{group: 2-norm of the gradients of its parameters} after ``backward()`` (before any
    clipping, if called before ``clip_grad_norm_``). Parameters without a gradient are left
    out; a shared parameter counts once. ``by``: "layer", "module" or "parameter"."""
    sums = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            sums.setdefault(_group_of(name, by), []).append(_sumsq(p.grad))
    return {k: math.sqrt(v) for k, v in _to_host(sums).items()}


def snapshot(model):
    """{parameter name: a copy of its values}, taken just before ``optimizer.step()``."""
    return {name: p.data.copy() for name, p in model.named_parameters() if p.requires_grad}


def update_ratios(model, before, by="layer"):
    """{group: ||w - w_before|| / ||w_before||} per group (norms over all its parameters), for
    the step taken since ``before = snapshot(model)``; NaN for a group whose weights were all
    zero. About 1e-3 is healthy (see the module docstring)."""
    num, den = {}, {}
    for name, p in model.named_parameters():
        if name not in before:
            continue
        group, w0 = _group_of(name, by), before[name]
        num.setdefault(group, []).append(_sumsq(p.data - w0))
        den.setdefault(group, []).append(_sumsq(w0))
    num, den = _to_host(num), _to_host(den)
    return {k: math.sqrt(num[k]) / math.sqrt(den[k]) if den[k] > 0 else float("nan")
            for k in num}


# ----------------------------------------------------------------------------------------------
# attention entropy

def _attention_weights(ctx):
    """(P (B, H, Tq, Tk), visible-key counts broadcastable to (B, H, Tq)) for an attention node,
    or None. Fused ops: counts from their causal flag and mask (exact). A composed-path Softmax
    over the last axis of a 4-D tensor: counts are the keys with nonzero weight (masked keys get
    exactly 0; a visible key whose weight underflowed to 0 is not counted)."""
    if isinstance(ctx, (ScaledDotProductAttention, QKVSelfAttention)):
        p = getattr(ctx, "p", None)
        kwargs = getattr(ctx, "forward_kwargs", None)
        if p is None or kwargs is None:
            return None if p is None else (p, (p > 0).sum(axis=-1))
        xp = backend.get_array_module(p)
        Tq, Tk = p.shape[-2:]
        if kwargs.get("causal", isinstance(ctx, QKVSelfAttention)):
            visible = ~causal_mask(Tq, Tk, backend.device_of(p))  # key j <= i + (Tk - Tq)
        else:
            visible = xp.ones((Tq, Tk), dtype=bool)
        visible = visible[None, None]                           # (1, 1, Tq, Tk)
        mask = kwargs.get("mask")
        if mask is not None:
            visible = visible & ~mask                           # (Bm, Hm, Tq, Tk)
        return p, visible.sum(axis=-1)
    if isinstance(ctx, Softmax):
        y = getattr(ctx, "y", None)
        if y is not None and y.ndim == 4 and ctx.axis == 3:
            return y, (y > 0).sum(axis=-1)
    return None


def attention_stats(loss, model=None):
    """{attention module name: {"entropy": [H floats], "max": [H floats]}} for the forward pass
    behind ``loss``. Call it before ``loss.backward()``, which frees the saved weights.

    "entropy" is the mean over batch and query positions of -sum_k p log p (nats) per head;
    "max" the same mean of log(number of visible keys), the entropy of uniform attention.
    Query rows with no visible key are left out of both. A module run more than once in the
    graph is averaged over its calls.

    Covers the fused ops (``ScaledDotProductAttention``, ``QKVSelfAttention``: GPT training,
    MultiHeadAttention without weight dropout) and the composed path's ``Softmax`` over the key
    axis of (B, H, Tq, Tk) scores (attention-weight dropout, ``need_weights``, BERT). With
    ``model``, modules are named by their dotted path (``transformer.h.0.attn``); without it,
    by their class name (numbered when several modules share one).
    """
    if model is not None:
        label_modules(model)
    acc = {}                                    # id(module) -> [name, (3, H) sums on device]
    for ctx in nodes(loss):
        found = _attention_weights(ctx)
        if found is None:
            continue
        p, n = found
        xp = backend.get_array_module(p)
        B, H, Tq, _ = p.shape
        one = xp.ones((), dtype=p.dtype)
        ent = -(p * xp.log(xp.where(p > 0, p, one))).sum(axis=-1, dtype=np.float64)  # (B,H,Tq)
        n = xp.broadcast_to(n.reshape((1,) * (3 - n.ndim) + n.shape), (B, H, Tq))
        rows = n > 0
        log_n = xp.log(xp.maximum(n, 1).astype(np.float64))
        sums = xp.stack([(ent * rows).sum(axis=(0, 2)), (log_n * rows).sum(axis=(0, 2)),
                         rows.sum(axis=(0, 2)).astype(np.float64)])         # (3, H)
        key = id(ctx.module) if getattr(ctx, "module", None) is not None else type(ctx).__name__
        name = module_name(ctx) or type(ctx).__name__
        if key in acc:
            acc[key][1] = acc[key][1] + sums
        else:
            acc[key] = [name, sums]
    out, seen = {}, {}
    for name, sums in acc.values():
        ent, mx, rows = backend.asnumpy(sums)
        rows = np.maximum(rows, 1)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}#{seen[name]}"
        out[name] = {"entropy": (ent / rows).tolist(), "max": (mx / rows).tolist()}
    return out


def attention_entropy(loss, model=None):
    """{attention module name: per-head mean entropy (list of H floats, nats)}; see
    ``attention_stats`` (which also gives the maximum). Call before ``loss.backward()``."""
    return {k: v["entropy"] for k, v in attention_stats(loss, model).items()}


# ----------------------------------------------------------------------------------------------
# records and the plot

def record(step, grad_norms=None, update_ratios=None, attention=None, **scalars):
    """One flat, JSON-ready dict for a logged step: one key per series, so
    ``pandas.DataFrame(records)`` has one column per curve::

        step, <scalars, e.g. lr>,
        grad_norm/<layer>, grad_norm/total (the global norm clip_grad_norm_ sees),
        update_ratio/<layer>,
        attn_entropy/<module>/head<h>, attn_entropy_max/<module> (mean over heads)

    Non-finite numbers become None (JSON null)."""
    def num(v):
        v = float(v)
        return v if math.isfinite(v) else None

    out = {"step": int(step)}
    out.update({k: num(v) for k, v in scalars.items()})
    if grad_norms:
        out.update({f"grad_norm/{k}": num(v) for k, v in grad_norms.items()})
        out["grad_norm/total"] = num(math.sqrt(sum(v * v for v in grad_norms.values())))
    if update_ratios:
        out.update({f"update_ratio/{k}": num(v) for k, v in update_ratios.items()})
    for name, stats in (attention or {}).items():
        for h, e in enumerate(stats["entropy"]):
            out[f"attn_entropy/{name}/head{h}"] = num(e)
        out[f"attn_entropy_max/{name}"] = num(np.mean(stats["max"]))
    return out


def _series(records, prefix, positive=False):
    """{name: (steps, values)} for the keys starting with ``prefix`` (None -> NaN; with
    ``positive``, values <= 0 too, which a log axis cannot show: lr 0 at the first step)."""
    names = []
    for r in records:
        names += [k[len(prefix):] for k in r if k.startswith(prefix) and
                  k[len(prefix):] not in names]

    def value(r, key):
        v = r.get(key)
        return np.nan if v is None or (positive and v <= 0) else v

    return {n: ([r["step"] for r in records], [value(r, prefix + n) for r in records])
            for n in names}


def plot_health(records, path):
    """Draw ``records`` (from ``record``) as a PNG with three panels: gradient norm per layer,
    update-to-weight ratio per layer (log scale, 1e-3 marked), attention entropy per head per
    layer (dashed: the uniform-attention maximum). Written to a temporary file, then renamed.
    Returns ``path``. Needs matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 10))
    FigureCanvasAgg(fig)
    ax_g, ax_u, ax_a = fig.subplots(3, 1, sharex=True)

    def colors(n):
        import matplotlib
        cmap = matplotlib.colormaps["viridis"]
        return [cmap(k / max(n - 1, 1) * 0.9) for k in range(n)]

    grads = _series(records, "grad_norm/", positive=True)
    total = grads.pop("total", None)
    for (name, (s, v)), c in zip(grads.items(), colors(len(grads))):
        ax_g.plot(s, v, ".-", color=c, label=name)
    if total is not None:
        ax_g.plot(*total, "k--", label="total")
    ax_g.set_yscale("log")
    ax_g.set_ylabel("gradient norm")
    ax_g.set_title("gradient 2-norm per layer")

    ratios = _series(records, "update_ratio/", positive=True)
    for (name, (s, v)), c in zip(ratios.items(), colors(len(ratios))):
        ax_u.plot(s, v, ".-", color=c, label=name)
    ax_u.axhline(1e-3, color="gray", ls=":", label="1e-3")
    ax_u.set_yscale("log")
    ax_u.set_ylabel("||dw|| / ||w||")
    ax_u.set_title("update-to-weight ratio per layer (one optimizer step)")

    heads = _series(records, "attn_entropy/")
    modules = list(dict.fromkeys(k.rsplit("/", 1)[0] for k in heads))
    maxima = _series(records, "attn_entropy_max/")
    for name, c in zip(modules, colors(len(modules))):
        first = True
        for key, (s, v) in heads.items():
            if key.rsplit("/", 1)[0] == name:
                ax_a.plot(s, v, ".-", color=c, alpha=0.7, lw=1, label=name if first else None)
                first = False
        if name in maxima:
            ax_a.plot(*maxima[name], "--", color=c, lw=1)
    ax_a.set_ylabel("entropy (nats)")
    ax_a.set_title("attention entropy per head (dashed: uniform over visible keys)")
    ax_a.set_xlabel("step")

    for ax in (ax_g, ax_u, ax_a):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))

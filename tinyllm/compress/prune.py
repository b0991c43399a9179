"""Magnitude pruning of a model's Linear layers, with masks that training respects.

    tl.compress.prune(model, 0.5)                         # half of all Linear weights -> 0
    opt = tl.optim.AdamW(model.parameters(), ...)         # sees each weight_orig
    ...train: pruned weights stay exactly 0.0...
    tl.compress.remove_pruning(model)                     # bake W_orig * M into plain Linears
    print(tl.compress.format_sparsity_report(tl.compress.sparsity_report(model)))

The design is torch.nn.utils.prune's: each pruned Linear becomes a PrunedLinear (masked.py)
that keeps ``weight_orig`` (the Linear's own Parameter object) and a ``weight_mask`` buffer,
and multiplies them in its forward. Why that keeps pruned weights at 0 through AdamW, decay
included: the card "Pruning with masks" in docs/compression.md.

What is pruned: the weight matrix of every Linear (GPT's c_attn, c_proj, c_fc, an untied
lm_head, ...). Not pruned: biases, embedding tables (GPT's tied lm_head is the token embedding,
a TiedLMHead, not a Linear), LayerNorm/RMSNorm gains.

Optimizers: ``weight_orig`` is the Parameter the Linear had, so an optimizer built before
pruning keeps working on it (its moments at pruned entries may still move W_orig there, which
the mask hides) and one built after sees it in ``parameters()``. Masks are cumulative: pruning
again never revives an entry. Checkpoints: the state_dict holds ``weight_orig`` and
``weight_mask``; to load one into a fresh model call ``restore_pruning(model, state_dict)``
first, then ``model.load_state_dict(state_dict)``.
"""
import numpy as np

from tinyllm import backend
from tinyllm.compress._modules import linear_layers, replace_modules
from tinyllm.compress.masked import PrunedLinear, effective_weight
from tinyllm.compress.structured import attention_heads, mlp_units
from tinyllm.nn.layers import Linear
from tinyllm.nn.module import Module

SCOPES = ("global", "layer")
STRUCTURES = (None, "heads", "rows")


def prune(model, sparsity, scope="global", structured=None):
    """Zero the smallest-magnitude weights of every Linear under ``model``, in place; returns
    ``model``.

    sparsity:   the fraction to remove, in [0, 1]: round(sparsity n) weights (unstructured) or
                units (structured) are pruned, exactly (ties broken by position).
    scope:      "global": rank |w| across all Linear weights at once (layers with smaller
                weights lose more); "layer": remove the fraction from each layer separately.
    structured: None (single weights), "heads" (whole attention heads, scored by the L2 norm
                of their rows of the output projection) or "rows" (whole MLP hidden units:
                a row of the down projection and the matching column(s) of the up projection,
                scored by the row's L2 norm); see structured.py. Only those Linears are masked.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.number)) \
            or not 0.0 <= float(sparsity) <= 1.0:
        raise ValueError(f"prune: sparsity must be a number in [0, 1], got {sparsity!r}")
    if scope not in SCOPES:
        raise ValueError(f"prune: scope must be one of {SCOPES}, got {scope!r}")
    if structured not in STRUCTURES:
        raise ValueError(f"prune: structured must be one of {STRUCTURES}, got {structured!r}")
    if isinstance(model, Linear):
        raise TypeError("prune: pass the model that holds the Linear layers, not a Linear")
    if structured is None:
        masks = _weight_masks(linear_layers(model), float(sparsity), scope)
    else:
        layers = attention_heads(model) if structured == "heads" else mlp_units(model)
        masks = _unit_masks(layers, float(sparsity), scope)
    _install(model, masks)
    return model


def _current_mask(linear):
    if isinstance(linear, PrunedLinear):
        return backend.asnumpy(linear.weight_mask.data).astype(bool)
    return np.ones(linear.weight.shape, bool)


def _weight_masks(layers, sparsity, scope):
    """{id(linear): (linear, mask)} removing the smallest |w| (effective weights, so entries
    pruned before rank first)."""
    mags = [np.abs(backend.asnumpy(effective_weight(m))).ravel() for _, m in layers]
    drop = []                                            # per layer: flat indices to zero
    if scope == "layer":
        for a in mags:
            drop.append(np.argsort(a, kind="stable")[:int(round(sparsity * a.size))])
    else:
        flat = np.concatenate(mags) if mags else np.zeros(0)
        chosen = np.sort(np.argsort(flat, kind="stable")[:int(round(sparsity * flat.size))])
        bounds = np.cumsum([0] + [a.size for a in mags])
        drop = [chosen[(chosen >= lo) & (chosen < hi)] - lo
                for lo, hi in zip(bounds[:-1], bounds[1:])]
    masks = {}
    for (_, m), idx in zip(layers, drop):
        mask = _current_mask(m)
        mask.reshape(-1)[idx] = False
        masks[id(m)] = (m, mask)
    return masks


def _unit_masks(layers, sparsity, scope):
    """{id(linear): (linear, mask)} zeroing every slice of the lowest-scoring units."""
    groups = [units for _, units in layers] if scope == "layer" else \
        [[u for _, units in layers for u in units]]
    masks = {}
    for units in groups:
        scores = np.array([u.score for u in units])
        for i in np.argsort(scores, kind="stable")[:int(round(sparsity * len(units)))]:
            for linear, axis, start, stop in units[i].slices:
                if id(linear) not in masks:
                    masks[id(linear)] = (linear, _current_mask(linear))
                mask = masks[id(linear)][1]
                if axis == 0:
                    mask[start:stop, :] = False
                else:
                    mask[:, start:stop] = False
    return masks


def _install(model, masks):
    """Put each mask on its Linear: a new PrunedLinear, or the old one's mask replaced."""
    def make(name, linear):
        if id(linear) not in masks:
            return None
        mask = masks[id(linear)][1]
        if isinstance(linear, PrunedLinear):
            linear.weight_mask.data[...] = backend.to_device(mask, linear.weight_mask.device)
            return linear
        return PrunedLinear(linear, mask)
    replace_modules(model, make, op="prune")


def remove_pruning(model):
    """Make the pruning permanent: every PrunedLinear becomes a plain Linear whose ``weight`` is
    its ``weight_orig`` Parameter (the same object, so optimizers keep it) multiplied by the
    mask in place. Its zeros may then train away from 0. Returns ``model``."""
    def make(name, pruned):
        w = pruned.weight_orig
        w.data *= pruned.weight_mask.data.astype(w.dtype)
        linear = Linear.__new__(Linear)                  # no __init__: no new random weights
        Module.__init__(linear)
        linear.in_features, linear.out_features = pruned.in_features, pruned.out_features
        linear.weight = w
        if pruned.bias is None:
            linear.register_parameter("bias", None)
        else:
            linear.bias = pruned.bias
        return linear
    replace_modules(model, make, kind=PrunedLinear, op="remove_pruning")
    return model


def restore_pruning(model, state_dict):
    """Give ``model`` the pruning masks a pruned model's ``state_dict`` holds (its
    ``<name>.weight_mask`` entries), so that ``model.load_state_dict(state_dict)`` fits it.
    Returns ``model``."""
    suffix = ".weight_mask"
    wanted = {k[:-len(suffix)]: v for k, v in state_dict.items() if k.endswith(suffix)}
    masks = {}
    for name, m in linear_layers(model):
        if name in wanted:
            value = wanted.pop(name)
            masks[id(m)] = (m, backend.asnumpy(getattr(value, "data", value)) != 0)
    if wanted:
        raise ValueError(f"restore_pruning: no Linear named {sorted(wanted)} in "
                         f"{type(model).__name__}")
    _install(model, masks)
    return model


def sparsity_report(model):
    """The fraction of exactly-zero weights, per Linear and over all of them::

        {"layers": {name: {"zeros": z, "total": n, "sparsity": z / n}, ...},
         "zeros": Z, "total": N, "sparsity": Z / N}

    Counted on the effective weights (W_orig * M for a PrunedLinear), over Linear weights only
    (biases, embeddings and norms are never pruned)."""
    layers, Z, N = {}, 0, 0
    for name, m in linear_layers(model):
        w = effective_weight(m)
        z = int((w == 0).sum())
        layers[name] = {"zeros": z, "total": int(w.size), "sparsity": z / max(w.size, 1)}
        Z, N = Z + z, N + int(w.size)
    return {"layers": layers, "zeros": Z, "total": N, "sparsity": Z / max(N, 1)}


def format_sparsity_report(report):
    """The report as a table: one line per Linear, then the total."""
    width = max([len(n) for n in report["layers"]] + [5])
    lines = [f"{'layer':<{width}}  {'zeros':>10}  {'total':>10}  sparsity"]
    for name, r in report["layers"].items():
        lines.append(f"{name:<{width}}  {r['zeros']:>10}  {r['total']:>10}  "
                     f"{r['sparsity']:8.2%}")
    lines.append(f"{'all':<{width}}  {report['zeros']:>10}  {report['total']:>10}  "
                 f"{report['sparsity']:8.2%}")
    return "\n".join(lines)

"""Walking a model's Linear layers and swapping them for compressed ones, in place.

Both compressions replace a child module in its parent's table: ``prune`` puts a PrunedLinear
where a Linear was, ``quantize_int8`` a QuantizedLinear. A Linear shared by two parents (held
under two names) is replaced by one new module under both names.
"""
from tinyllm.nn.layers import Linear


def linear_layers(model, kind=Linear):
    """[(dotted name, module)] of every ``kind`` module under ``model`` (the model itself
    included), each shared module once, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kind)]


def replace_modules(model, make, kind=Linear, op="compress"):
    """Replace every ``kind`` child under ``model`` by ``make(name, module)`` (skipped where
    that returns None). Returns {name: new module}. The root cannot be replaced in place."""
    if isinstance(model, kind):
        raise TypeError(f"{op}: pass the model that holds the {kind.__name__} layers, not a "
                        f"{type(model).__name__} itself")
    new, done = {}, {}                                   # id(old) -> replacement
    stack = [("", model)]
    while stack:
        prefix, parent = stack.pop()
        for key, child in list(parent._modules.items()):
            if child is None:
                continue
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(child, kind):
                if id(child) not in done:
                    done[id(child)] = make(name, child)
                    if done[id(child)] is not None:
                        new[name] = done[id(child)]
                if done[id(child)] is not None:
                    parent._modules[key] = done[id(child)]
            else:
                stack.append((name, child))
    return new

"""``Module``, ``Parameter`` and the containers: how models hold their weights.

A Module owns Parameters (leaf tensors that require grad), buffers (tensors that are state but
not trained, e.g. a causal mask) and child Modules, registered simply by assigning them as
attributes, as in PyTorch::

    class MLP(Module):
        def __init__(self):
            super().__init__()
            self.fc = Linear(4, 8)          # a child module: its parameters become "fc.weight"...
            self.scale = Parameter(ones(8))

        def forward(self, x):
            return self.fc(x).tanh() * self.scale

Walks over the module tree (``named_modules``, ``named_parameters``, ``state_dict``) use an
explicit stack, so very deep models need no recursion, and visit children in the order they
were assigned. A parameter shared by two modules (tied weights) appears once in
``parameters()`` (so an optimizer updates it once) but under every name in ``state_dict()``.
"""
from collections import OrderedDict, namedtuple

import numpy as np

from tinyllm import backend
from tinyllm.autograd import observe
from tinyllm.autograd.function import Function
from tinyllm.autograd.grad_mode import is_grad_enabled, no_grad
from tinyllm.autograd.tensor import Tensor


class Parameter(Tensor):
    """A Tensor that is a trainable weight of a Module: requires grad by default."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True):
        super().__init__(data.data if isinstance(data, Tensor) else data,
                         requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class of every layer and model. Subclasses define ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------------------------------------
    # registration by attribute assignment

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"cannot assign {name!r} before Module.__init__() is called "
                                 f"(call super().__init__() first in {type(self).__name__})")
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        # only called when normal lookup fails: parameters, buffers and modules live in tables
        d = self.__dict__
        for table in ("_parameters", "_buffers", "_modules"):
            if table in d and name in d[table]:
                return d[table][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name, param):
        """Register ``param`` (a Parameter, or None for an absent one such as a missing bias)."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: {name!r} must be a Parameter or None, got "
                            f"{type(param).__name__}")
        self.__dict__.pop(name, None)
        self._parameters[name] = param

    def register_buffer(self, name, tensor, persistent=True):
        """Register a non-trained tensor (saved in state_dict unless ``persistent=False``)."""
        if tensor is not None and not isinstance(tensor, Tensor):
            tensor = Tensor(tensor)
        self.__dict__.pop(name, None)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    # ------------------------------------------------------------------------------------------
    # calling

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        hooks = self.__dict__.get("_hooks")
        if hooks is not None:
            return self._call_with_hooks(hooks, args, kwargs)
        SCOPE.enter(self)                   # ops made inside record this module (study tools)
        try:
            return self.forward(*args, **kwargs)
        finally:
            SCOPE.exit()

    # ------------------------------------------------------------------------------------------
    # hooks (PyTorch's signatures)

    def register_forward_pre_hook(self, hook):
        """``hook(module, args)`` before ``forward``; returning a tuple replaces the args.
        Returns a handle whose ``remove()`` unregisters it."""
        return self._add_hook("forward_pre", hook)

    def register_forward_hook(self, hook):
        """``hook(module, args, output)`` after ``forward``; returning a value replaces the
        output. Returns a handle whose ``remove()`` unregisters it."""
        return self._add_hook("forward", hook)

    def register_full_backward_hook(self, hook):
        """``hook(module, grad_input, grad_output)`` once the gradients of this call's inputs
        are computed, as ``torch.nn.Module.register_full_backward_hook``.

        grad_output: a tuple with dL/d(output) for each Tensor output (raw arrays; None for
        an output no gradient reached). grad_input: a tuple with dL/d(input) for each
        positional Tensor argument (None where the input does not require grad, e.g. token
        ids). Returning a tuple replaces grad_input (for a module with one input that requires
        grad). When no input requires grad the hook runs as soon as the output gradients are
        known.
        """
        return self._add_hook("backward", hook)

    def _add_hook(self, kind, hook):
        hooks = self.__dict__.get("_hooks")
        if hooks is None:
            hooks = {"forward_pre": [], "forward": [], "backward": []}
            object.__setattr__(self, "_hooks", hooks)
        hooks[kind].append(hook)
        return _ModuleHookHandle(self, kind, hook)

    def _call_with_hooks(self, hooks, args, kwargs):
        for hook in list(hooks["forward_pre"]):
            replaced = hook(self, args)
            if replaced is not None:
                args = replaced if isinstance(replaced, tuple) else (replaced,)
        state = None
        if hooks["backward"] and is_grad_enabled():
            state = _BackwardHookState(self, hooks["backward"])
            args = state.wrap_inputs(args)
        SCOPE.enter(self)
        try:
            out = self.forward(*args, **kwargs)
        finally:
            SCOPE.exit()
        for hook in list(hooks["forward"]):
            replaced = hook(self, args, out)
            if replaced is not None:
                out = replaced
        if state is not None:
            state.watch_outputs(out)
        return out

    # ------------------------------------------------------------------------------------------
    # walking the tree (explicit stacks, children in assignment order)

    def named_modules(self, prefix=""):
        """(name, module) for this module and every descendant, each module once, preorder."""
        seen, stack = set(), [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [(f"{name}.{k}" if name else k, m) for k, m in module._modules.items()
                        if m is not None]
            stack.extend(reversed(children))

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        for name, m in self._modules.items():
            if m is not None:
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def _named_tensors(self, table, dedupe):
        seen = set()
        for mod_name, module in self.named_modules():
            for name, t in getattr(module, table).items():
                if t is None or (table == "_buffers" and name in module._non_persistent
                                 and not dedupe):
                    continue
                if dedupe and id(t) in seen:
                    continue
                seen.add(id(t))
                yield (f"{mod_name}.{name}" if mod_name else name), t

    def named_parameters(self):
        """(dotted name, Parameter) for every parameter, each shared parameter once."""
        return self._named_tensors("_parameters", dedupe=True)

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self):
        return self._named_tensors("_buffers", dedupe=True)

    def buffers(self):
        for _, b in self.named_buffers():
            yield b

    def num_parameters(self, trainable_only=False):
        """Number of parameter elements (shared ones counted once)."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only)

    def apply(self, fn):
        """Call ``fn(module)`` on every module (children before parents, as PyTorch)."""
        for m in reversed(list(self.modules())):
            fn(m)
        return self

    # ------------------------------------------------------------------------------------------
    # modes, freezing, gradients

    def train(self, mode=True):
        """Set training mode (dropout active) on this module and all descendants."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def requires_grad_(self, requires_grad=True):
        """Freeze (False) or unfreeze (True) every parameter: fine-tuning a new head on a frozen
        base is ``base.requires_grad_(False)``."""
        for p in self.parameters():
            p.requires_grad = requires_grad
        return self

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad[...] = 0

    # ------------------------------------------------------------------------------------------
    # state

    def _all_named_modules(self):
        """Like named_modules, but a module registered under several names (a shared
        embedding) is visited under each of them, as the state_dict needs."""
        stack = [("", self)]
        while stack:
            name, module = stack.pop()
            yield name, module
            stack.extend(reversed([(f"{name}.{k}" if name else k, m)
                                   for k, m in module._modules.items() if m is not None]))

    def state_dict(self):
        """OrderedDict of dotted name -> Tensor (parameters and persistent buffers), sharing
        memory with the module. Tied parameters and shared modules appear under each of their
        names (as in PyTorch)."""
        out = OrderedDict()
        for mod_name, module in self._all_named_modules():
            for table in ("_parameters", "_buffers"):
                for name, t in getattr(module, table).items():
                    if t is None or (table == "_buffers" and name in module._non_persistent):
                        continue
                    out[f"{mod_name}.{name}" if mod_name else name] = t.detach()
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy values from ``state_dict`` (name -> Tensor or array) into this module, in place.

        With ``strict=True`` (the default) any missing key, unexpected key or shape mismatch
        raises a RuntimeError that lists them all; nothing is copied then. Values are cast to
        each parameter's dtype and moved to its device. Returns (missing_keys, unexpected_keys).
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        mismatched = []
        for k, target in own.items():
            if k in state_dict:
                shape = tuple(np.shape(_array(state_dict[k])))
                if shape != target.shape:
                    mismatched.append(f"{k}: checkpoint {shape}, model {target.shape}")
        problems = []
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if mismatched:
            problems.append("shape mismatches: " + "; ".join(mismatched))
        if problems:
            raise RuntimeError(f"load_state_dict into {type(self).__name__} failed: "
                               + " | ".join(problems))
        with no_grad():
            for k, target in own.items():          # target shares memory with the module
                if k not in state_dict:
                    continue
                value = _array(state_dict[k])
                if backend.get_array_module(value) is np:
                    value = np.asarray(value)
                value = backend.to_device(value, target.device)
                target.data[...] = value.astype(target.dtype, copy=False)
        return IncompatibleKeys(missing, unexpected)

    def to(self, target):
        """Move every parameter and buffer to a device ('cpu'/'cuda') or cast floating ones to
        a dtype, in place: Parameter objects keep their identity (optimizers keep working)."""
        is_device = isinstance(target, str) and target in ("cpu", "cuda")
        for t in list(self.parameters()) + list(self.buffers()):
            if is_device:
                t.data = backend.to_device(t.data, target)
                if t.grad is not None:
                    t.grad = backend.to_device(t.grad, target)
            elif t.dtype.kind == "f":
                t.data = t.data.astype(np.dtype(target))
                t.grad = None if t.grad is None else t.grad.astype(np.dtype(target))
        return self

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    # ------------------------------------------------------------------------------------------
    # printing

    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in
                 self.named_children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


class _ModuleScope(observe.Observer):
    """Gives every op run inside a module's forward that module as ``ctx.module``, so errors,
    the step-through, graph drawings and health numbers can name the layer ("h.1.attn").

    An observer (tinyllm/autograd/observe.py), attached while any module's forward runs: ops
    outside every module run without it."""

    def __init__(self):
        self.stack = []                 # the modules whose forward is running, outermost first

    def enter(self, module):
        if not self.stack:
            observe.attach(self, outermost=True)
        self.stack.append(module)

    def exit(self):
        self.stack.pop()
        if not self.stack:
            observe.detach(self)

    def annotate(self, ctx):
        ctx.module = self.stack[-1]


SCOPE = _ModuleScope()


class _ModuleHookHandle:
    def __init__(self, module, kind, hook):
        self._module, self._kind, self._hook = module, kind, hook

    def remove(self):
        hooks = self._module.__dict__.get("_hooks")
        if hooks is not None and self._hook in hooks[self._kind]:
            hooks[self._kind].remove(self._hook)


class _HookIdentity(Function):
    """out = x; dx = dout, after handing dout to a module's backward hook as its grad_input.

    Inserted in front of each input of a module that has full backward hooks, so that the
    gradient reaching the input is seen where the module's call began."""

    bookkeeping = True

    def forward(self, x, state=None, index=0):
        self.state, self.index = state, index
        return x

    def backward(self, dout):
        return self.state.input_grad(self.index, dout)


class _BackwardHookState:
    """Gathers one call's grad_output (tensor hooks on the outputs) and grad_input (identity
    ops on the inputs) and runs the module's backward hooks once both are complete."""

    def __init__(self, module, hooks):
        self.module, self.hooks = module, list(hooks)
        self.grad_input, self.grad_output = [], []
        self.pending_in = self.pending_out = 0
        self._wrapped, self._n_out = [], 0          # for resetting the counts after firing

    def wrap_inputs(self, args):
        wrapped = []
        for a in args:
            if isinstance(a, Tensor) and a.requires_grad:
                a = _HookIdentity.apply(a, state=self, index=len(self.grad_input))
                self.pending_in += 1
                self._wrapped.append(len(self.grad_input))
            self.grad_input.append(None)
            wrapped.append(a)
        return tuple(wrapped)

    def watch_outputs(self, out):
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for t in outs:
            if isinstance(t, Tensor) and t.requires_grad:
                index = len(self.grad_output)
                self.grad_output.append(None)
                self.pending_out += 1
                self._n_out += 1
                t.register_hook(lambda g, k=index: self._output_grad(k, g))

    def _output_grad(self, index, grad):
        self.grad_output[index] = grad
        self.pending_out -= 1
        if self.pending_out == 0 and self.pending_in == 0:
            self._fire()

    def input_grad(self, index, grad):
        self.grad_input[index] = grad
        self.pending_in -= 1
        if self.pending_in == 0:
            self._fire()
        return self.grad_input[index]

    def _fire(self):
        # ready for another backward through the same graph (retain_graph=True)
        self.pending_in = len(self._wrapped)
        self.pending_out = self._n_out
        for hook in self.hooks:
            replaced = hook(self.module, tuple(self.grad_input), tuple(self.grad_output))
            if replaced is not None:
                replaced = tuple(replaced)
                if sum(g is not None for g in self.grad_input) > 1:
                    raise RuntimeError(f"backward hook {getattr(hook, '__name__', hook)!r} of "
                                       f"{type(self.module).__name__}: replacing grad_input is "
                                       f"supported for modules with one input that requires "
                                       f"grad (the others' gradients have already flowed on)")
                if len(replaced) != len(self.grad_input):
                    raise RuntimeError(f"backward hook {getattr(hook, '__name__', hook)!r} of "
                                       f"{type(self.module).__name__} returned {len(replaced)} "
                                       f"gradients for {len(self.grad_input)} inputs")
                self.grad_input = list(replaced)


def _array(value):
    return value.data if isinstance(value, Tensor) else value


class ModuleList(Module):
    """A list of modules registered as children "0", "1", ... (e.g. the blocks of a GPT)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList holds Modules, got {type(module).__name__}")
        setattr(self, str(len(self._modules)), module)
        return self

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Modules applied in order: ``Sequential(Linear(4, 8), GELU(), Linear(8, 2))``."""

    def __init__(self, *modules):
        super().__init__(modules)

    def forward(self, x):
        for m in self:
            x = m(x)
        return x


class ModuleDict(Module):
    """A dict of modules registered under their keys (e.g. GPT-2's ``transformer``)."""

    def __init__(self, modules=None):
        super().__init__()
        for k, m in (modules or {}).items():
            self[k] = m

    def __setitem__(self, key, module):
        setattr(self, key, module)

    def __getitem__(self, key):
        return self._modules[key]

    def __contains__(self, key):
        return key in self._modules

    def __len__(self):
        return len(self._modules)

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()

"""``Optimizer``: the bookkeeping every optimizer shares, as in ``torch.optim.Optimizer``.

An optimizer owns
- ``param_groups``: a list of dicts. Each holds ``"params"`` (a list of tensors) and that group's
  hyperparameters (``lr``, ``weight_decay``, ...). Groups let one model use, say, weight decay on
  matrices but not on biases and LayerNorm gains. Anything missing from a group is filled in from
  ``defaults``. Editing ``group["lr"]`` between steps takes effect at the next step; learning-rate
  schedulers work exactly this way.
- ``state``: a dict from parameter to that parameter's running quantities (Adam's ``exp_avg``,
  SGD's ``momentum_buffer``, ...), created lazily at the first step that sees a gradient.

Subclasses implement ``step()``. Updates work on raw arrays (``p.data``, ``p.grad``) in place, so
the autograd graph never sees them, and run under ``no_grad`` as a second guard.

``state_dict()`` has PyTorch's layout: parameters are replaced by their index, counted through
the groups in order, so a checkpoint does not depend on object identity::

    {"state": {0: {"step": 3, "exp_avg": array, ...}, 1: {...}},
     "param_groups": [{"lr": 1e-3, ..., "params": [0, 1]}, {"lr": 1e-3, ..., "params": [2]}]}
"""
import copy
import math
from collections import defaultdict

import numpy as np

from tinyllm import backend
from tinyllm.autograd.grad_mode import enable_grad


class _RequiredParameter:
    """Marks a hyperparameter with no default (``SGD``'s ``lr`` here): each group must give it."""

    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()


class Optimizer:
    """Base class: parameter groups, per-parameter state, ``zero_grad`` and checkpointing.

    Args:
        params: an iterable of tensors, or of dicts (parameter groups) each with a ``"params"``
            entry and optional per-group hyperparameters.
        defaults: hyperparameter values for groups that do not set them.
    """

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = defaultdict(dict)
        self.param_groups = []

        if _is_tensor(params):
            raise TypeError("params should be an iterable of Tensors or dicts, but got a "
                            f"{type(params).__name__}; wrap a single tensor in a list")
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for group in param_groups:
            self.add_param_group(group)

    def add_param_group(self, param_group):
        """Add a group of parameters, for example layers unfrozen during fine-tuning.

        Hyperparameters the group does not set are taken from ``defaults``. A parameter may
        belong to only one group and appear there once.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        group = dict(param_group)
        params = group["params"]
        if _is_tensor(params):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError("optimizer parameters need to be an ordered collection (a list), "
                            "not a set: the order of a set changes between runs, and "
                            "state_dict() refers to parameters by position")
        else:
            params = list(params)
        group["params"] = params

        seen = set()
        for i, p in enumerate(params):
            if not _is_tensor(p):
                raise TypeError(f"optimizer can only optimize Tensors, but parameter {i} of the "
                                f"group is a {type(p).__name__}")
            if not getattr(p, "is_leaf", True):
                raise ValueError(f"can't optimize a non-leaf Tensor (parameter {i} of the group, "
                                 f"shape {tuple(p.data.shape)}); optimize the leaf it came from")
            if id(p) in seen:
                raise ValueError(f"parameter {i} of the group (shape {tuple(p.data.shape)}) "
                                 f"appears more than once in the group")
            seen.add(id(p))

        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(f"parameter group didn't specify a value of required "
                                 f"optimization parameter {name}")
            group.setdefault(name, default)

        for other in self.param_groups:
            if any(id(p) in seen for p in other["params"]):
                raise ValueError("some parameters appear in more than one parameter group")

        self.check_hyperparameters(group, where=f" (parameter group {len(self.param_groups)})")
        self.param_groups.append(group)

    def check_hyperparameters(self, group, where=""):
        """Raise a ValueError naming the class, the argument, its value and the valid range
        for any hyperparameter of ``group`` (a parameter group, or the constructor's defaults)
        out of its range. Subclasses check their own; the base class has none.

        Run by the constructor (on its arguments), by ``add_param_group`` (so a group's own
        ``lr`` is checked too) and by ``load_state_dict``. A learning rate of -1 or NaN would
        otherwise train silently uphill or into NaN. ``where`` ends the message (which group).
        """

    # ------------------------------------------------------------------------------------------
    # the training-loop calls

    def zero_grad(self, set_to_none=True):
        """Reset the gradient of every parameter before the next ``backward``.

        ``set_to_none=True`` (the default, as in PyTorch) drops the gradient array: the next
        backward allocates a fresh one, and ``step`` skips parameters that got no gradient.
        ``set_to_none=False`` fills the existing arrays with zeros in place.
        """
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.fill(0)

    def step(self, closure=None):
        """Update every parameter that has a gradient. Subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement step()")

    @staticmethod
    def _evaluate_closure(closure):
        """``loss = closure()`` with grad mode on (``step`` itself runs under ``no_grad``)."""
        if closure is None:
            return None
        with enable_grad():
            return closure()

    # ------------------------------------------------------------------------------------------
    # checkpointing

    def state_dict(self):
        """The optimizer's state and hyperparameters, parameters replaced by their index.

        As in PyTorch, the arrays in ``"state"`` are the live ones, not copies: the next
        ``step`` changes them. Take ``copy.deepcopy(opt.state_dict())`` for a snapshot.
        """
        index_of = {}                       # id(param) -> position, counted across groups
        packed_groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                index_of.setdefault(id(p), len(index_of))
            packed["params"] = [index_of[id(p)] for p in group["params"]]
            packed_groups.append(packed)

        packed_state = {}
        for p, s in self.state.items():
            key = index_of[id(p)] if _is_tensor(p) and id(p) in index_of else p
            packed_state[key] = s
        return {"state": packed_state, "param_groups": packed_groups}

    def load_state_dict(self, state_dict):
        """Restore what ``state_dict()`` returned, into an optimizer over the same parameters.

        The groups must match in number and in size; hyperparameters (``lr`` included) are taken
        from ``state_dict``. State arrays are copied, cast to each parameter's dtype and moved to
        its device, so the loaded optimizer shares no memory with the dictionary.
        """
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        groups = self.param_groups
        if len(groups) != len(saved_groups):
            raise ValueError(f"loaded state dict has a different number of parameter groups: "
                             f"{len(saved_groups)} in the state dict, {len(groups)} in the "
                             f"optimizer")
        for i, (group, saved) in enumerate(zip(groups, saved_groups)):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError(f"loaded state dict contains a parameter group that doesn't "
                                 f"match the size of optimizer's group: group {i} has "
                                 f"{len(saved['params'])} parameters in the state dict, "
                                 f"{len(group['params'])} in the optimizer")

        param_of = {}                       # saved index -> parameter object
        for group, saved in zip(groups, saved_groups):
            for index, p in zip(saved["params"], group["params"]):
                param_of[index] = p

        state = defaultdict(dict)
        for key, value in state_dict["state"].items():
            if key in param_of:
                p = param_of[key]
                state[p] = {k: _cast_like(k, v, p) for k, v in value.items()}
            else:
                state[key] = copy.deepcopy(value)

        for i, saved in enumerate(saved_groups):
            self.check_hyperparameters(saved, where=f" (parameter group {i} of the loaded "
                                                    f"state dict)")
        for group, saved in zip(groups, saved_groups):
            saved["params"] = group["params"]
        self.state = state
        self.param_groups = saved_groups

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)


def weight_decay_groups(model, weight_decay):
    """Two parameter groups for AdamW, as nanoGPT and BERT configure them: ``weight_decay`` on
    the matrices and embedding tables (>= 2-D), none on biases and LayerNorm gains (1-D), whose
    shrinking toward 0 would not regularize anything useful. Frozen parameters (requires_grad
    False) are left out. ``model``: a Module, or an iterable of parameters."""
    params = model.parameters() if hasattr(model, "parameters") else model
    params = [p for p in params if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def check_number(owner, name, value, low=0.0, high=None, low_open=False, high_open=False,
                 allow_inf=False, where=""):
    """``value`` as a float if it is a real number in the range; else a ValueError in
    tinyllm's style, naming ``owner`` (the class or function), the argument, what it got and
    what it expected::

        Adam: lr must be a finite number >= 0, got -1

    The range is [low, high] (``low_open``/``high_open`` make an end open; ``high=None``: no
    upper end). NaN is never in range; +-inf only with ``allow_inf``. Booleans and strings are
    refused (``lr=True`` or ``lr="1e-3"`` is a mistake, not a number).
    """
    if high is None:
        bound = f"{'>' if low_open else '>='} {low:g}"
        expected = f"a number {bound} (inf allowed)" if allow_inf else \
            f"a finite number {bound}"
    else:
        expected = (f"a number in {'(' if low_open else '['}{low:g}, {high:g}"
                    f"{')' if high_open else ']'}")
    shown = repr(value) if isinstance(value, (str, bytes)) else str(value)   # np.float64: -1.0
    message = f"{owner}: {name} must be {expected}, got {shown}{where}"
    try:
        if isinstance(value, (bool, str, bytes)):
            raise TypeError(message)
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    ok = (not math.isnan(number) and (allow_inf or math.isfinite(number))
          and (number > low if low_open else number >= low)
          and (high is None or (number < high if high_open else number <= high)))
    if not ok:
        raise ValueError(message)
    return number


def _is_tensor(x):
    """Duck-typed: anything with ``.data`` and ``.grad`` (tinyllm Tensor, nn.Parameter)."""
    return hasattr(x, "data") and hasattr(x, "grad") and not isinstance(x, dict)


def _cast_like(key, value, param):
    """A copy of one saved state entry for ``param``.

    Arrays take the parameter's dtype and device (a float64 checkpoint loads into float32
    parameters, a CPU checkpoint onto the GPU); ``"step"`` and other non-arrays are copied as is.
    """
    is_array = isinstance(value, np.ndarray) or backend.get_array_module(value) is not np
    if key == "step" or not is_array:
        return copy.deepcopy(value)
    value = backend.to_device(value, backend.device_of(param.data))
    return value.astype(param.data.dtype, copy=True)

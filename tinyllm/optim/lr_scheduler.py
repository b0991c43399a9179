"""Learning-rate schedules: ``LambdaLR`` and the multipliers language models are trained with.

A schedule multiplies each group's starting learning rate by ``lr_lambda(step)``. ``LambdaLR``
writes the product into ``optimizer.param_groups[i]["lr"]``, which the optimizer reads at its
next ``step``. The training loop, as with PyTorch::

    opt = AdamW(model.parameters(), lr=6e-4)
    sched = LambdaLR(opt, warmup_cosine(warmup_steps=2000, total_steps=600000))
    for it in range(max_iters):       # the lr for iteration it is base_lr * lr_lambda(it)
        loss = model(x, y); loss.backward()
        opt.step(); opt.zero_grad()
        sched.step()                  # after opt.step(): moves to lr_lambda(it + 1)

Constructing the scheduler already applies ``lr_lambda(0)``, so the first ``opt.step()`` uses
it: with warmup, that first step has learning rate 0.

Why warm up at all: Adam's first steps have size ~lr in every coordinate whatever the gradient,
while its second-moment estimate v is still built from a handful of samples, and a freshly
initialized transformer's gradients are large and change fast. A ramp from 0 keeps those early
steps small. Cosine decay afterwards lowers the noise of late steps, to ``min_lr_ratio * lr``
(nanoGPT and Chinchilla use a floor of about a tenth).
"""
import math
import numbers
import types

from tinyllm.optim.optimizer import check_number


class LambdaLR:
    """Set each group's learning rate to ``base_lr * lr_lambda(step)``, as PyTorch's LambdaLR.

    Args:
        optimizer: the optimizer whose ``param_groups[i]["lr"]`` this scheduler writes.
        lr_lambda: a function of the step count (int, from 0) returning a multiplier, or a list
            with one such function per parameter group.
        last_epoch: the index of the last step taken; -1 (the default) starts from scratch and
            records each group's current ``lr`` as its ``initial_lr``.

    Attributes: ``base_lrs`` (each group's ``initial_lr``), ``last_epoch`` (the step count that
    the current learning rates belong to; PyTorch's name, though one "epoch" is usually one
    optimizer step here).

    Every learning rate written is checked: a multiplier that makes it negative or NaN (a sign
    slip in a hand-written lambda) raises a ValueError naming the step and the group, instead
    of training uphill.
    """

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"LambdaLR: optimizer must be an Optimizer (with param_groups), got "
                            f"{type(optimizer).__name__}")
        if isinstance(last_epoch, bool) or not isinstance(last_epoch, numbers.Integral) \
                or last_epoch < -1:
            raise ValueError(f"LambdaLR: last_epoch must be an integer >= -1 (-1: a fresh "
                             f"start), got {last_epoch!r}")
        self.optimizer = optimizer
        n_groups = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n_groups:
                raise ValueError(f"Expected {n_groups} lr_lambdas (one per parameter group), "
                                 f"but got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * n_groups
        for i, fn in enumerate(self.lr_lambdas):
            if not callable(fn):
                raise TypeError(f"LambdaLR: lr_lambda must be a function of the step (or one "
                                f"per parameter group), got {type(fn).__name__} for group {i}")

        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(f"param 'initial_lr' is not specified in param_groups[{i}] "
                                   f"when resuming an optimizer (last_epoch={last_epoch})")
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        self.step()                         # apply lr_lambda(last_epoch + 1) right away

    def get_lr(self):
        """The learning rates for the current ``last_epoch``, one per group."""
        return [base_lr * fn(self.last_epoch)
                for fn, base_lr in zip(self.lr_lambdas, self.base_lrs)]

    def step(self):
        """Advance one step and write the new learning rates into the optimizer."""
        self._step_count += 1
        self.last_epoch += 1
        lrs = self.get_lr()
        for i, lr in enumerate(lrs):                    # all checked before any is written
            try:
                check_number("LambdaLR", "the learning rate", lr)
            except ValueError as e:
                raise ValueError(f"{e} (group {i} at step {self.last_epoch}: base lr "
                                 f"{self.base_lrs[i]} times lr_lambda({self.last_epoch}))") \
                    from None
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        """The learning rates last written, one per group (a list of floats)."""
        return self._last_lr

    def state_dict(self):
        """Everything but the optimizer, as PyTorch: plain functions are not saved (None in
        ``"lr_lambdas"``), callable objects save their ``__dict__``."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        state["base_lrs"] = list(self.base_lrs)
        state["_last_lr"] = list(self._last_lr)
        state["lr_lambdas"] = [None if isinstance(fn, types.FunctionType) else dict(fn.__dict__)
                               for fn in self.lr_lambdas]
        return state

    def load_state_dict(self, state_dict):
        """Restore a ``state_dict()``; the lambdas themselves come from the constructor."""
        state = dict(state_dict)
        lr_lambdas = state.pop("lr_lambdas")
        self.__dict__.update(state)
        for fn, saved in zip(self.lr_lambdas, lr_lambdas):
            if saved is not None:
                fn.__dict__.update(saved)


# ----------------------------------------------------------------------------------------------
# ready-made multipliers for LambdaLR

def warmup_cosine(warmup_steps, total_steps, min_lr_ratio=0.1):
    """Linear warmup, then cosine decay to ``min_lr_ratio``: nanoGPT's ``get_lr`` as a multiplier.

    With s the step, W = warmup_steps, N = total_steps, r = min_lr_ratio::

        s < W:        (s + 1) / (W + 1)                          1/(W+1) -> 1, linearly
        W <= s <= N:  r + (1 - r) * 0.5 * (1 + cos(pi * (s - W) / (N - W)))     1 -> r
        s > N:        r

    ``base_lr * warmup_cosine(W, N, r)(s)`` equals ``cosine_with_warmup_lr(s, base_lr, W, N,
    r * base_lr)``.
    """
    _check_steps("warmup_cosine", warmup_steps, total_steps)
    check_number("warmup_cosine", "min_lr_ratio", min_lr_ratio, high=1.0)

    def lr_lambda(step):
        return cosine_with_warmup_lr(step, 1.0, warmup_steps, total_steps, min_lr_ratio)
    return lr_lambda


def linear(warmup_steps, total_steps):
    """Linear warmup from 0 to 1, then linear decay to 0 at ``total_steps`` (BERT's schedule).

    Multiplier ``s / W`` for s < W, then ``(N - s) / (N - W)``, and 0 from s = N on (the formula
    of Hugging Face's ``get_linear_schedule_with_warmup``).
    """
    _check_steps("linear", warmup_steps, total_steps)

    def lr_lambda(step):
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return lr_lambda


def constant(warmup_steps=0):
    """Multiplier 1 (after an optional linear warmup ``s / W`` over ``warmup_steps``)."""
    _check_steps("constant", warmup_steps, warmup_steps)

    def lr_lambda(step):
        if step < warmup_steps:
            return step / warmup_steps
        return 1.0
    return lr_lambda


def cosine_with_warmup_lr(step, base_lr, warmup_steps, total_steps, min_lr):
    """The learning rate at ``step``: nanoGPT's ``get_lr`` (linear warmup, cosine decay, floor).

    As nanoGPT's train.py has it since December 2024 (its first form, ``base_lr * step /
    warmup_steps``, gave step 0 a learning rate of 0: a step that moves nothing but Adam's
    moments)::

        step < warmup_steps:   base_lr * (step + 1) / (warmup_steps + 1)
        step > total_steps:    min_lr
        otherwise:             decay_ratio = (step - warmup_steps) / (total_steps - warmup_steps)
                               coeff = 0.5 * (1 + cos(pi * decay_ratio))        # 1 -> 0
                               min_lr + coeff * (base_lr - min_lr)

    Checked on every call (a few comparisons): step, warmup_steps, total_steps >= 0 and
    0 <= min_lr <= base_lr, all finite. A negative step gives a negative learning rate in the
    warmup branch, and NaN anywhere gives a NaN one. total_steps may be below warmup_steps
    (warmup, then min_lr at once).
    """
    name = "cosine_with_warmup_lr"
    for arg, value in (("step", step), ("warmup_steps", warmup_steps),
                       ("total_steps", total_steps), ("base_lr", base_lr)):
        check_number(name, arg, value)
    check_number(name, "min_lr", min_lr, high=float(base_lr),
                 where=" (the floor of the decay, at most base_lr)")
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    if step >= total_steps:               # nanoGPT has >; at == both give min_lr, and >= also
        return min_lr                     # avoids 0/0 when warmup_steps == total_steps
    decay_ratio = (step - warmup_steps) / (total_steps - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (base_lr - min_lr)


def _check_steps(owner, warmup_steps, total_steps):
    check_number(owner, "warmup_steps", warmup_steps)
    check_number(owner, "total_steps", total_steps)
    if total_steps < warmup_steps:
        raise ValueError(f"{owner}: total_steps ({total_steps}) must be >= warmup_steps "
                         f"({warmup_steps})")

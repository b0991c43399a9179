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
import types


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
    """

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        self.optimizer = optimizer
        n_groups = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n_groups:
                raise ValueError(f"Expected {n_groups} lr_lambdas (one per parameter group), "
                                 f"but got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * n_groups

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
        for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
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
    _check_steps(warmup_steps, total_steps)
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")

    def lr_lambda(step):
        return cosine_with_warmup_lr(step, 1.0, warmup_steps, total_steps, min_lr_ratio)
    return lr_lambda


def linear(warmup_steps, total_steps):
    """Linear warmup from 0 to 1, then linear decay to 0 at ``total_steps`` (BERT's schedule).

    Multiplier ``s / W`` for s < W, then ``(N - s) / (N - W)``, and 0 from s = N on (the formula
    of Hugging Face's ``get_linear_schedule_with_warmup``).
    """
    _check_steps(warmup_steps, total_steps)

    def lr_lambda(step):
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return lr_lambda


def constant(warmup_steps=0):
    """Multiplier 1 (after an optional linear warmup ``s / W`` over ``warmup_steps``)."""
    _check_steps(warmup_steps, warmup_steps)

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
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    if step >= total_steps:               # nanoGPT has >; at == both give min_lr, and >= also
        return min_lr                     # avoids 0/0 when warmup_steps == total_steps
    decay_ratio = (step - warmup_steps) / (total_steps - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (base_lr - min_lr)


def _check_steps(warmup_steps, total_steps):
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps < warmup_steps:
        raise ValueError(f"total_steps ({total_steps}) must be >= warmup_steps ({warmup_steps})")

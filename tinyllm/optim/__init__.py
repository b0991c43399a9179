"""Optimizers, learning-rate schedules and gradient clipping, with ``torch.optim``'s API.

    from tinyllm import optim
    opt = optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
    sched = optim.lr_scheduler.LambdaLR(opt, optim.lr_scheduler.warmup_cosine(2000, 600000))
    ...
    loss.backward()
    norm = optim.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    sched.step()

Updates run on raw arrays (``p.data``, ``p.grad``) in place, under ``no_grad``: the autograd
graph never sees the optimizer, and one implementation serves NumPy and CuPy.
"""
from tinyllm.optim import lr_scheduler
from tinyllm.optim.adam import Adam, AdamW
from tinyllm.optim.clip import clip_grad_norm_, clip_grad_value_
from tinyllm.optim.optimizer import Optimizer, weight_decay_groups
from tinyllm.optim.sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm_", "clip_grad_value_",
           "lr_scheduler", "weight_decay_groups"]

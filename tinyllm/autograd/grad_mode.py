"""Switching graph recording off and on: ``no_grad`` and ``enable_grad``.

Inside ``with tinyllm.no_grad():`` ops compute values only: outputs have ``requires_grad=False``
and keep no reference to their inputs, so nothing is saved for a backward pass. Optimizers update
parameters this way, and evaluation loops should run this way.
"""
import functools
import threading

_local = threading.local()


def is_grad_enabled():
    """True unless inside ``no_grad``."""
    return getattr(_local, "enabled", True)


class _GradMode:
    """Context manager and decorator that sets grad mode to ``self.enabled`` and restores it."""
    enabled = True

    def __init__(self):
        self._prev = []             # a stack, so one instance can be entered re-entrantly

    def __enter__(self):
        self._prev.append(is_grad_enabled())
        _local.enabled = self.enabled
        return self

    def __exit__(self, *exc):
        _local.enabled = self._prev.pop()
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.__class__():
                return fn(*args, **kwargs)
        return wrapper


class no_grad(_GradMode):
    """Do not record operations for backward (as ``torch.no_grad``); usable as a decorator."""
    enabled = False


class enable_grad(_GradMode):
    """Record operations again inside a ``no_grad`` block."""
    enabled = True

"""Reverse-mode autograd: Function, Tensor, grad mode and gradient checking."""
from tinyllm.autograd.function import Function
from tinyllm.autograd.grad_mode import enable_grad, is_grad_enabled, no_grad
from tinyllm.autograd.tensor import Tensor

__all__ = ["Function", "Tensor", "no_grad", "enable_grad", "is_grad_enabled"]

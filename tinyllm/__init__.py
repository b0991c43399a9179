"""tinyllm: a readable reference engine for backprop in language models.

    import tinyllm
    x = tinyllm.randn(3, 4, requires_grad=True)
    loss = (x @ x.T).tanh().sum()
    loss.backward()          # x.grad now holds dloss/dx, a NumPy array

Importing tinyllm has no side effects: no printing, no backend probing, no CuPy import.
"""
from tinyllm import functional
from tinyllm.autograd.anomaly import AnomalyError, detect_anomaly
from tinyllm.autograd.function import Function
from tinyllm.autograd.grad_mode import enable_grad, is_grad_enabled, no_grad
from tinyllm.autograd.gradcheck import (GradcheckError, bisect_backward, eps_sweep, gradcheck,
                                        gradcheck_module, numerical_grad)
from tinyllm.autograd.tensor import Tensor
from tinyllm.backend import (cuda_is_available, get_backend, get_default_dtype, manual_seed,
                             set_backend, set_default_dtype)
from tinyllm.functional import *  # noqa: F401,F403  (tinyllm.exp, tinyllm.matmul, ... as torch.*)
from tinyllm.functional import __all__ as _functional_all
from tinyllm import nn, optim, trace  # noqa: E402,I001  (tinyllm.nn / .optim, as torch.nn)
from tinyllm import compress  # noqa: E402,F401,I001  (distillation, pruning, int8)

__version__ = "0.1.0"

__all__ = ["Tensor", "Function", "functional", "no_grad", "enable_grad", "is_grad_enabled",
           "gradcheck", "gradcheck_module", "numerical_grad", "GradcheckError", "bisect_backward",
           "eps_sweep", "detect_anomaly", "AnomalyError", "trace", "set_backend",
           "get_backend", "set_default_dtype", "get_default_dtype", "manual_seed",
           "cuda_is_available", "nn", "optim"]
__all__ += list(_functional_all)

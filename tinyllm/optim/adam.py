"""Adam and AdamW: per-coordinate step sizes from running moments of the gradient.

Adam (Kingma & Ba, 2015, https://arxiv.org/abs/1412.6980) keeps two exponential moving averages
per parameter coordinate: m, of the gradient, and v, of its square. It steps along m / sqrt(v):
roughly the sign of the recent gradient, with a size near ``lr`` in every coordinate, whatever
that coordinate's gradient scale. That is why one learning rate serves embeddings, attention
matrices and LayerNorm gains at once.

AdamW (Loshchilov & Hutter, 2019, https://arxiv.org/abs/1711.05101) differs only in weight decay.
Adam adds lambda * p to the gradient, which then passes through the 1/sqrt(v) rescaling: weights
with large gradients are barely decayed. AdamW shrinks p directly, the same fraction for every
weight, outside the adaptive step. GPT-2-style training uses AdamW.
"""
import numpy as np

from tinyllm.autograd.grad_mode import no_grad
from tinyllm.backend import get_array_module
from tinyllm.dispatch import accelerator
from tinyllm.kernels import adam as adam_kernels
from tinyllm.optim.optimizer import Optimizer, check_number


def _kernel_fits(p, g, m, v):
    """The Numba or CuPy kernel takes this update: the switch is on, and p, g, m, v are float32
    or float64 arrays of one dtype and shape; on the CPU also C-contiguous NumPy arrays (the
    kernel writes through flat views of them)."""
    how = accelerator("adam", p, g, m, v, cupy=True)
    if how is None or isinstance(p, np.ndarray) != (how == "numba"):
        return False
    fits = (p.dtype.char in "fd" and p.dtype == g.dtype == m.dtype == v.dtype
            and p.shape == g.shape == m.shape == v.shape)
    if how == "numba":
        fits = fits and all(isinstance(a, np.ndarray) and a.flags.c_contiguous
                            for a in (p, g, m, v))
    return fits


class Adam(Optimizer):
    r"""Adam with bias correction, exactly ``torch.optim.Adam`` (no amsgrad).

    For each parameter p with gradient g, at step t = 1, 2, ... (eta = lr, lambda = weight_decay)::

        g     = g + lambda * p                        # L2 penalty, as torch.optim.Adam
        m_t   = beta1 * m_{t-1} + (1 - beta1) * g     # first moment,  m_0 = 0
        v_t   = beta2 * v_{t-1} + (1 - beta2) * g^2   # second moment, v_0 = 0
        m_hat = m_t / (1 - beta1^t)                   # bias correction
        v_hat = v_t / (1 - beta2^t)
        p     = p - eta * m_hat / (sqrt(v_hat) + eps)

    Why bias correction: m and v start at zero, so early on they are averages that still
    include that zero start. Unrolled, m_t = (1 - beta1) * sum_{i<=t} beta1^(t-i) g_i, whose
    weights add up to 1 - beta1^t, not 1. If the gradient were constant, g, then m_t would be
    (1 - beta1^t) g: only 0.1 g at t = 1 with beta1 = 0.9. Dividing by 1 - beta1^t turns the
    sum into a true weighted average. The correction matters most for v: with beta2 = 0.999, v_1
    is 0.001 g^2, and without the correction the first steps would be sqrt(1000) ~ 32 times too
    large. With it, the first step is exactly -eta * g / (|g| + eps), about eta in size.

    Args:
        params: tensors or parameter groups (see ``Optimizer``).
        lr: learning rate eta >= 0.
        betas: (beta1, beta2), the decay rates of m and v, each in [0, 1).
        eps: >= 0, added to sqrt(v_hat) so coordinates with tiny gradients do not divide by ~0.
        weight_decay: lambda >= 0, added to the gradient (L2). For decoupled decay use AdamW.
    All are checked, at construction and for every parameter group: a ValueError names the
    class, the argument, the value and the valid range (NaN and inf are refused).

    State per parameter: ``step`` (int), ``exp_avg`` (m), ``exp_avg_sq`` (v).

    ``step`` runs the formula above on each parameter's arrays, in place. Fast path: with the
    switch on (``tinyllm.kernels.set_impl("auto")`` or TINYLLM_KERNELS), a Numba kernel, or a
    CUDA kernel on CuPy arrays (tinyllm/kernels/adam.py), that does the same in one pass over
    memory and gives the same numbers bit for bit.
    """

    _decoupled_weight_decay = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.check_hyperparameters(defaults)
        defaults["betas"] = tuple(betas)
        super().__init__(params, defaults)

    def check_hyperparameters(self, group, where=""):
        """lr, eps, weight_decay finite and >= 0; betas a pair, each in [0, 1)."""
        owner = type(self).__name__
        check_number(owner, "lr", group["lr"], where=where)
        check_number(owner, "eps", group["eps"], where=where)
        check_number(owner, "weight_decay", group["weight_decay"], where=where)
        betas = group["betas"]
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}"
                             f"{where}")
        for i, beta in enumerate(betas):
            check_number(owner, f"betas[{i}]", beta, high=1.0, high_open=True, where=where)

    @no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = self._evaluate_closure(closure)
        for group in self.param_groups:
            lr = group["lr"]
            beta1, beta2 = group["betas"]
            eps = group["eps"]
            weight_decay = group["weight_decay"]

            for param in group["params"]:
                if param.grad is None:
                    continue
                xp = get_array_module(param.data)
                state = self.state[param]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = xp.zeros_like(param.data)
                    state["exp_avg_sq"] = xp.zeros_like(param.data)
                state["step"] += 1
                t = state["step"]
                # the update above, in place on the raw arrays
                p, g, m, v = param.data, param.grad, state["exp_avg"], state["exp_avg_sq"]
                if _kernel_fits(p, g, m, v):
                    adam_kernels.adam_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, t,
                                           self._decoupled_weight_decay)
                    continue
                if weight_decay != 0:
                    if self._decoupled_weight_decay:
                        p *= 1 - lr * weight_decay            # AdamW: shrink p directly
                    else:
                        g = g + weight_decay * p              # Adam: L2 through the gradient
                m *= beta1
                m += (1 - beta1) * g                          # m_t
                v *= beta2
                v += (1 - beta2) * (g * g)                    # v_t
                m_hat = m / (1 - beta1 ** t)                  # bias corrections
                v_hat = v / (1 - beta2 ** t)
                p -= lr * m_hat / (xp.sqrt(v_hat) + eps)
        return loss


class AdamW(Adam):
    r"""Adam with decoupled weight decay, exactly ``torch.optim.AdamW`` (no amsgrad).

    The same moments and bias correction as ``Adam``, with the decay taken out of the gradient
    and applied to the weights first (eta = lr, lambda = weight_decay)::

        p     = p * (1 - eta * lambda)                # decoupled weight decay
        m_t   = beta1 * m_{t-1} + (1 - beta1) * g
        v_t   = beta2 * v_{t-1} + (1 - beta2) * g^2
        m_hat = m_t / (1 - beta1^t)
        v_hat = v_t / (1 - beta2^t)
        p     = p - eta * m_hat / (sqrt(v_hat) + eps)

    The decay is scaled by the learning rate, so a schedule that lowers ``lr`` lowers it too
    (PyTorch's convention; the paper uses a separate schedule multiplier). Put biases and
    LayerNorm gains in a group with ``weight_decay=0.0``, as nanoGPT does.

    Args: as ``Adam``, with ``weight_decay`` defaulting to 1e-2.
    """

    _decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

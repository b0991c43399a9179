"""Stochastic gradient descent, with optional momentum, Nesterov momentum and weight decay."""
from tinyllm.autograd.grad_mode import no_grad
from tinyllm.optim.optimizer import Optimizer, check_number, required


class SGD(Optimizer):
    r"""Stochastic gradient descent, exactly ``torch.optim.SGD``'s update.

    For each parameter p with gradient g, at step t (mu = momentum, tau = dampening,
    lambda = weight_decay, eta = lr)::

        g   = g + lambda * p                       # L2 penalty (lambda/2)|p|^2, as a gradient
        b_1 = g                                    # first step: the buffer starts at g
        b_t = mu * b_{t-1} + (1 - tau) * g         # later steps
        d   = g + mu * b_t   if nesterov  else  b_t
        p   = p - eta * d

    Without momentum (mu = 0) this is plain ``p -= lr * (g + lambda * p)``. The buffer is a running
    sum of past gradients, so a direction that keeps appearing gets a step up to 1/(1 - mu) times
    larger, while directions that flip sign cancel. Nesterov's variant steps with the gradient
    plus the *next* buffer contribution, a look-ahead that damps overshooting.

    Starting the buffer at g (not at 0) and stepping with ``g + mu * b`` for Nesterov are PyTorch's
    conventions; Sutskever et al. (2013) write the same method with the learning rate inside the
    buffer, which differs once the learning rate changes.

    Args:
        params: tensors or parameter groups (see ``Optimizer``).
        lr: learning rate eta >= 0 (no default here: plain SGD has no sensible one).
        momentum: mu >= 0; 0 turns momentum off and keeps no state.
        dampening: tau in [0, 1], the fraction of each new gradient left out of the buffer.
        weight_decay: lambda >= 0, added to the gradient as lambda * p (L2 regularization).
        nesterov: use Nesterov momentum; needs momentum > 0 and dampening 0.

    Each of these is checked, at construction and for every parameter group (a ValueError
    names the argument): a negative lr or dampening > 1 would step uphill without a sign of it.
    PyTorch checks lr, momentum and weight_decay; dampening outside [0, 1] it lets through.
    """

    def __init__(self, params, lr=required, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov)
        self.check_hyperparameters(defaults)
        super().__init__(params, defaults)

    def check_hyperparameters(self, group, where=""):
        """lr, momentum, weight_decay finite and >= 0; dampening in [0, 1]; Nesterov's needs."""
        owner = type(self).__name__
        if group["lr"] is not required:
            check_number(owner, "lr", group["lr"], where=where)
        momentum = check_number(owner, "momentum", group["momentum"], where=where)
        dampening = check_number(owner, "dampening", group["dampening"], high=1.0, where=where)
        check_number(owner, "weight_decay", group["weight_decay"], where=where)
        if group["nesterov"] and (momentum <= 0 or dampening != 0):
            raise ValueError(f"{owner}: Nesterov momentum requires a momentum > 0 and zero "
                             f"dampening, got momentum={group['momentum']}, "
                             f"dampening={group['dampening']}{where}")

    @no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = self._evaluate_closure(closure)
        for group in self.param_groups:
            lr = group["lr"]
            momentum = group["momentum"]
            dampening = group["dampening"]
            weight_decay = group["weight_decay"]
            nesterov = group["nesterov"]

            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if weight_decay != 0:
                    g = g + weight_decay * p.data          # a new array: p.grad is left as is

                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = g.copy()
                        state["momentum_buffer"] = buf
                    else:
                        buf *= momentum
                        buf += (1 - dampening) * g
                    if nesterov:
                        g = g + momentum * buf
                    else:
                        g = buf

                p.data -= lr * g
        return loss

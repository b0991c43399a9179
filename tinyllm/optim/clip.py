"""Gradient clipping, as ``torch.nn.utils.clip_grad_norm_`` and ``clip_grad_value_``.

Language models see the occasional batch with a huge gradient (a rare token, a loss spike); one
such step can throw the weights far from where training was going. Clipping the *global* norm
(all gradients seen as one long vector) rescales that step to length ``max_norm`` while keeping
its direction; ordinary steps pass untouched. nanoGPT clips at 1.0.
"""
import math

from tinyllm.autograd.grad_mode import no_grad
from tinyllm.backend import get_array_module
from tinyllm.optim.optimizer import check_number


@no_grad()
def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    r"""Scale all gradients in place so that their total norm is at most ``max_norm``.

    With g_i the gradient arrays and p = norm_type::

        total = || (||g_1||_p, ||g_2||_p, ...) ||_p        # = ||concat(g_1, g_2, ...)||_p
        coef  = max_norm / (total + 1e-6)
        g_i   = g_i * coef          for every i, if coef < 1  (that is, total > max_norm - 1e-6)

    ``norm_type=inf`` uses max |g|. The 1e-6 keeps the division finite when every gradient is
    zero; it also makes the clipped norm land just below ``max_norm``.

    Args:
        parameters: a tensor or an iterable of tensors; those with ``grad is None`` are skipped.
        max_norm: the largest allowed total norm, > 0; ``float("inf")`` clips nothing (and
            only measures the norm). A negative max_norm would flip every gradient (training
            uphill) and 0 would zero them all, so both are refused with a ValueError, as are
            NaN and non-numbers. To turn clipping off, skip the call or pass inf.
        norm_type: p of the p-norm (> 0), or ``float("inf")`` (the string "inf" too).
        error_if_nonfinite: raise a RuntimeError if the total norm is nan or inf, instead of
            scaling by it (which turns every gradient to nan, or the infinite ones to nan and the
            rest to 0).

    Returns:
        The total norm of the gradients *before* clipping, as a Python float (log it: spikes in
        this number are the first sign of an unstable run).
    """
    if isinstance(max_norm, (int, float)) and not isinstance(max_norm, bool) and max_norm == 0:
        raise ValueError("clip_grad_norm_: max_norm=0 would set every gradient to zero, so no "
                         "step would change anything; to turn clipping off, skip the call or "
                         "pass max_norm=float('inf')")
    max_norm = check_number("clip_grad_norm_", "max_norm", max_norm, low_open=True,
                            allow_inf=True)
    if isinstance(norm_type, str) and norm_type.strip().lower() in ("inf", "+inf"):
        norm_type = math.inf                        # torch's float(norm_type) accepts "inf"
    norm_type = check_number("clip_grad_norm_", "norm_type", norm_type, low_open=True,
                             allow_inf=True)
    grads = [p.grad for p in _as_list(parameters) if p.grad is not None]
    if len(grads) == 0:
        return 0.0

    xp = get_array_module(grads[0])
    norms = xp.stack([_vector_norm(g, norm_type) for g in grads])      # (number of grads,)
    total_norm = float(_vector_norm(norms, norm_type))

    if error_if_nonfinite and not math.isfinite(total_norm):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is "
            f"non-finite ({total_norm}), so it cannot be clipped. To disable this error and "
            f"scale the gradients by the non-finite norm anyway, set `error_if_nonfinite=False`")

    clip_coef = max_norm / (total_norm + 1e-6)
    if clip_coef < 1.0 or math.isnan(clip_coef):     # torch.clamp(coef, max=1) keeps nan
        for g in grads:
            g *= clip_coef
    return total_norm


@no_grad()
def clip_grad_value_(parameters, clip_value):
    """Clamp every gradient element into [-clip_value, clip_value], in place.

    Unlike ``clip_grad_norm_`` this changes the gradient's direction; it exists mostly for
    parity with PyTorch. ``clip_value`` must be > 0 (inf: no clipping): a negative one would
    set every gradient to -|clip_value| (``clip`` with its bounds swapped), 0 would zero them
    all, so both raise a ValueError (PyTorch lets them through).
    """
    clip_value = check_number("clip_grad_value_", "clip_value", clip_value, low_open=True,
                              allow_inf=True)
    for p in _as_list(parameters):
        if p.grad is not None:
            xp = get_array_module(p.grad)
            xp.clip(p.grad, -clip_value, clip_value, out=p.grad)


def _vector_norm(x, norm_type):
    """||x||_p over all elements of the array ``x``, as a 0-d array of x's dtype."""
    xp = get_array_module(x)
    if norm_type == 2.0:
        # sqrt(x . x): one BLAS dot over the flattened array, no (x * x) temporary
        flat = x.reshape(-1)                               # a view when x is contiguous
        return xp.sqrt(xp.dot(flat, flat))
    a = xp.abs(x)
    if math.isinf(norm_type):
        return xp.max(a)
    if norm_type == 1.0:
        return xp.sum(a)
    return xp.sum(a ** norm_type) ** (1.0 / norm_type)


def _as_list(parameters):
    if hasattr(parameters, "data") and hasattr(parameters, "grad"):
        return [parameters]
    return list(parameters)

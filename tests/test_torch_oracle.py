"""An independent oracle: PyTorch's forward and backward for the ops with subtle semantics.

Skipped (with the reason) when torch is not installed; install it with the ``torch`` extra, or
offline on this project's machines with ``pip install torch==2.13.0``.
"""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm import backend

torch = pytest.importorskip("torch", reason="PyTorch not installed (optional test oracle)")


def _both(fn_tl, fn_torch, *arrays, int_args=()):
    """Run both engines on the same float64 inputs; return (out, grads) of each."""
    v = None
    res = []
    for engine in ("tl", "torch"):
        if engine == "tl":
            xs = [tl.tensor(a, requires_grad=True) for a in arrays]
            out = fn_tl(*xs, *int_args)
        else:
            xs = [torch.tensor(a, requires_grad=True) for a in arrays]
            out = fn_torch(*xs, *[torch.tensor(i) for i in int_args])
        if v is None:
            v = np.random.default_rng(0).standard_normal(tuple(out.shape))
        if engine == "tl":
            out.backward(v)
            res.append((out.numpy(), [backend.asnumpy(x.grad) for x in xs]))
        else:
            out.backward(torch.tensor(v))
            res.append((out.detach().numpy(), [x.grad.numpy() for x in xs]))
    return res


def _assert_same(res, tol=1e-10):
    (o1, g1), (o2, g2) = res
    np.testing.assert_allclose(o1, o2, rtol=tol, atol=tol)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


RNG = np.random.default_rng(7)
Z = RNG.standard_normal((6, 5))
T = np.array([0, 4, 2, -100, 1, 4])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.15])
def test_cross_entropy(reduction, smoothing):
    _assert_same(_both(
        lambda z, t: tl.cross_entropy(z, t, reduction=reduction, label_smoothing=smoothing),
        lambda z, t: torch.nn.functional.cross_entropy(z, t, reduction=reduction,
                                                       label_smoothing=smoothing),
        Z, int_args=(T,)))


def test_layer_norm():
    x, w, b = RNG.standard_normal((2, 3, 8)), RNG.standard_normal(8), RNG.standard_normal(8)
    _assert_same(_both(lambda x, w, b: tl.layer_norm(x, 8, w, b, eps=1e-5),
                       lambda x, w, b: torch.nn.functional.layer_norm(x, (8,), w, b, eps=1e-5),
                       x, w, b))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    x = RNG.standard_normal((4, 7)) * 3
    _assert_same(_both(lambda x: tl.gelu(x, approximate=approximate),
                       lambda x: torch.nn.functional.gelu(x, approximate=approximate), x),
                 tol=1e-12)


def test_log_softmax_and_softmax():
    x = RNG.standard_normal((3, 4, 5))
    _assert_same(_both(lambda x: tl.log_softmax(x, axis=1),
                       lambda x: torch.log_softmax(x, dim=1), x))
    _assert_same(_both(lambda x: tl.softmax(x, axis=-1), lambda x: torch.softmax(x, dim=-1), x))


def test_batched_broadcast_matmul():
    a, b = RNG.standard_normal((2, 1, 3, 4)), RNG.standard_normal((5, 4, 2))
    _assert_same(_both(lambda a, b: a @ b, lambda a, b: a @ b, a, b))


def test_var_unbiased_and_max():
    x = RNG.standard_normal((4, 5))
    _assert_same(_both(lambda x: x.var(axis=0, ddof=1), lambda x: x.var(dim=0, correction=1), x))
    _assert_same(_both(lambda x: x.max(axis=1), lambda x: x.amax(dim=1), x))


def test_embedding_with_repeats():
    w = RNG.standard_normal((5, 3))
    idx = np.array([[0, 1, 1], [4, 1, 0]])
    _assert_same(_both(lambda w, i: tl.embedding(i, w),
                       lambda w, i: torch.nn.functional.embedding(i, w), w, int_args=(idx,)))

"""Gradient buffers: what ``backward`` allocates, and that taking arrays instead of copying them
never lets two owners share one.

``Tensor.backward`` lets a leaf take the gradient array its consumer's backward made (as
PyTorch's AccumulateGrad does) when the walk alone holds it, and adds fan-in contributions into
an array the walk alone holds; everything else is copied. These tests pin down both halves:
the arrays are taken when they can be, and never when someone else can see them.
"""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm.autograd.function import Function

KEPT = []                  # arrays a Function keeps after returning them (module level)


class Fresh(Function):
    """out = 2 x; backward returns a new array and remembers only its id."""
    made = []

    def forward(self, x):
        return 2 * x

    def backward(self, dout):
        dx = 2 * dout
        Fresh.made.append(id(dx))
        return dx


class Keeps(Function):
    """out = 2 x; backward returns an array it also keeps (KEPT)."""

    def forward(self, x):
        return 2 * x

    def backward(self, dout):
        dx = 2 * dout
        KEPT.append(dx)
        return dx


def test_leaf_takes_a_gradient_nobody_else_holds():
    x = tl.tensor(np.arange(4.0), requires_grad=True)
    Fresh.made.clear()
    Fresh.apply(x).backward(np.ones(4))
    assert id(x.grad) == Fresh.made[0]                     # taken, not copied
    np.testing.assert_array_equal(x.grad, [2.0, 2.0, 2.0, 2.0])
    Fresh.apply(x).backward(np.ones(4))                    # accumulates into the same array
    np.testing.assert_array_equal(x.grad, [4.0, 4.0, 4.0, 4.0])


def test_leaf_copies_a_gradient_someone_else_holds():
    KEPT.clear()
    x = tl.tensor(np.arange(4.0), requires_grad=True)
    Keeps.apply(x).backward(np.ones(4))
    assert x.grad is not KEPT[0] and not np.shares_memory(x.grad, KEPT[0])
    Keeps.apply(x).backward(np.ones(4))
    np.testing.assert_array_equal(x.grad, [4.0, 4.0, 4.0, 4.0])
    np.testing.assert_array_equal(KEPT[0], [2.0, 2.0, 2.0, 2.0])   # not added into


def test_the_callers_grad_array_is_never_taken():
    x = tl.tensor(np.arange(3.0), requires_grad=True)
    g = np.array([1.0, 2.0, 3.0])
    x.backward(g)                                          # the root is the leaf itself
    x.backward(g)
    np.testing.assert_array_equal(g, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(x.grad, [2.0, 4.0, 6.0])


def test_one_array_sent_to_two_leaves_gives_two_buffers():
    a = tl.tensor(np.ones(3), requires_grad=True)
    b = tl.tensor(np.ones(3), requires_grad=True)
    (Fresh.apply(a + b)).backward(np.ones(3))              # Add sends its dout to both
    assert not np.shares_memory(a.grad, b.grad)
    a.grad += 1.0
    np.testing.assert_array_equal(b.grad, [2.0, 2.0, 2.0])


def test_a_gradient_a_hook_keeps_is_not_changed_by_the_next_backward():
    x = tl.tensor(np.arange(3.0), requires_grad=True)
    seen = []
    x.register_hook(lambda g: seen.append(g))
    (x * 3.0).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [6.0, 6.0, 6.0])
    np.testing.assert_array_equal(seen[0], [3.0, 3.0, 3.0])
    assert not np.shares_memory(seen[0], x.grad)


def test_retained_non_leaf_and_fan_in_sums():
    x = tl.tensor(np.array([1.0, 2.0]), requires_grad=True)
    h = Fresh.apply(x)                                     # h = 2x
    h.retain_grad()
    y = (h * h + h * 3.0 + Fresh.apply(h)).sum()           # dy/dh = 2h + 3 + 2 (three consumers)
    y.backward()
    np.testing.assert_allclose(h.grad, 2 * np.array([2.0, 4.0]) + 5.0)
    np.testing.assert_allclose(x.grad, 2 * h.grad)
    assert not np.shares_memory(h.grad, x.grad)


def test_retain_graph_twice_gives_twice_the_gradient():
    x = tl.tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    y = (x * x + x).sum()
    y.backward(retain_graph=True)
    first = x.grad.copy()
    y.backward()
    np.testing.assert_allclose(first, 2 * x.data + 1)
    np.testing.assert_allclose(x.grad, 2 * first)


def test_trace_keeps_what_it_showed():
    x = tl.tensor(np.array([1.0, 2.0]), requires_grad=True)
    steps = list(tl.trace.backward_steps((x * x).sum()))
    shown = [np.array(s.dout, copy=True) for s in steps]
    (x * x).sum().backward()                               # adds into x.grad
    for s, d in zip(steps, shown):
        np.testing.assert_array_equal(s.dout, d)


def test_zero_grad_in_place_keeps_the_buffer():
    model = tl.nn.Linear(3, 2)
    opt = tl.optim.AdamW(model.parameters(), lr=1e-3)
    x = tl.randn(4, 3)
    model(x).sum().backward()
    before = {id(p): p.grad for p in model.parameters()}
    opt.zero_grad(set_to_none=False)
    model(x).sum().backward()
    for p in model.parameters():
        assert p.grad is before[id(p)]                      # the same storage, refilled
    expected = x.data.sum(axis=0)[:, None] * np.ones((1, 2), np.float32)
    np.testing.assert_allclose(model.weight.grad, expected, rtol=1e-6)


@pytest.mark.parametrize("grad_on", [False, True])
def test_no_grad_builds_no_node(grad_on):
    seen = {}

    class Spy(Function):
        def forward(self, x):
            seen["needs"], seen["parents"] = self.needs_input_grad, self.parents
            return x + 1

        def backward(self, dout):
            return dout

    x = tl.tensor(np.ones(2), requires_grad=True)
    if grad_on:
        out = Spy.apply(x)
        assert seen["needs"] == (True,) and seen["parents"] == (x,) and out._ctx is not None
    else:
        with tl.no_grad():
            out = Spy.apply(x)
        assert seen["needs"] == (False,) and seen["parents"] == () and out._ctx is None
    assert out.requires_grad is grad_on

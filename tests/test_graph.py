"""The backward walk itself: graph shapes, accumulation, freeing, hooks, grad mode."""
import gc
import weakref

import numpy as np
import pytest

import tinyllm as tl
from tests.conftest import t64


def test_reused_node_gets_both_contributions():
    a = t64([1.0, -2.0, 3.0])
    b = a + a                                  # db/da = 2
    (b * b).sum().backward()                   # d/da sum((2a)^2) = 8a
    np.testing.assert_array_equal(tl.tensor(a.grad).numpy(), 8 * np.array([1.0, -2.0, 3.0]))


def test_diamond():
    a, b = t64([1.0, 2.0, 3.0]), t64([2.0, 1.0, 1.0])
    x = a + b
    y = x * a                                  # dy/da = x + a = 2a + b,  dy/db = a
    y.sum().backward()
    np.testing.assert_array_equal(tl.tensor(a.grad).numpy(), [4.0, 5.0, 7.0])
    np.testing.assert_array_equal(tl.tensor(b.grad).numpy(), [1.0, 2.0, 3.0])


def test_deep_chain_of_100000_ops_needs_no_recursion():
    x = t64(1.0)
    y = x
    for _ in range(100_000):
        y = y * 1.0 + 0.0                       # 200,000 nodes
    y.backward()
    assert float(x.grad) == 1.0
    del y
    gc.collect()                               # freeing the chain must not overflow the stack


def test_deep_chain_is_freed_without_backward():
    x = t64(1.0)
    y = x
    for _ in range(100_000):
        y = y + 1.0
    ref = weakref.ref(y)
    del y
    assert ref() is None


def test_wide_fan_in_sums_every_use():
    x = t64([0.5, 1.5])
    total = x * 0.0
    for k in range(1, 51):
        total = total + x * float(k)
    total.sum().backward()
    np.testing.assert_allclose(tl.tensor(x.grad).numpy(), [1275.0, 1275.0])


def test_gradients_accumulate_across_backward_calls():
    x = t64([1.0, 2.0])
    (x * 3.0).sum().backward()
    (x * x).sum().backward()                   # 3 + 2x
    np.testing.assert_array_equal(tl.tensor(x.grad).numpy(), [5.0, 7.0])
    x.zero_grad()
    assert x.grad is None


def test_leaf_grad_is_a_private_copy():
    """Two leaves fed by the same Add receive the same upstream array; scaling one in place
    (as grad clipping does) must not change the other."""
    a, b = t64([1.0, 1.0]), t64([2.0, 2.0])
    (a + b).sum().backward()
    a.grad *= 10
    np.testing.assert_array_equal(tl.tensor(b.grad).numpy(), [1.0, 1.0])


def test_graph_is_freed_after_backward_and_second_backward_raises():
    x = t64([1.0, 2.0])
    y = (x.exp() * 2.0).sum()
    y.backward()
    assert y.grad_fn is not None and not hasattr(y.grad_fn, "parents")
    with pytest.raises(RuntimeError, match="second time.*retain_graph=True"):
        y.backward()


def test_retain_graph_allows_second_backward():
    x = t64([1.0, 2.0])
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(tl.tensor(x.grad).numpy(), [4.0, 8.0])


def test_freed_graph_releases_saved_arrays():
    x = t64(np.ones(1000))
    big = x.exp()                      # Exp saves its output
    loss = big.sum()
    saved = weakref.ref(big.grad_fn)
    loss.backward()
    assert saved() is not None and not hasattr(saved(), "out")


def test_non_scalar_backward_needs_grad_argument():
    x = t64([1.0, 2.0])
    with pytest.raises(RuntimeError, match=r"scalar output, got shape \(2,\)"):
        (x * 2.0).backward()


def test_backward_with_grad_argument_is_a_vector_jacobian_product():
    x = t64([1.0, 2.0, 3.0])
    (x * x).backward(np.array([1.0, 0.0, -1.0]))
    np.testing.assert_array_equal(tl.tensor(x.grad).numpy(), [2.0, 0.0, -6.0])


def test_backward_grad_argument_shape_is_checked():
    x = t64([1.0, 2.0])
    with pytest.raises(ValueError, match=r"grad has shape \(3,\), expected .*\(2,\)"):
        (x * 2.0).backward(np.ones(3))


def test_backward_on_tensor_without_graph_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        tl.tensor([1.0]).sum().backward()


def test_only_inputs_requiring_grad_receive_grad():
    a, b = t64([1.0, 2.0]), t64([3.0, 4.0], requires_grad=False)
    (a * b).sum().backward()
    np.testing.assert_array_equal(tl.tensor(a.grad).numpy(), [3.0, 4.0])
    assert b.grad is None


def test_non_leaf_grad_only_with_retain_grad():
    x = t64([1.0, 2.0])
    h = x * 3.0
    h2 = (x * 2.0).retain_grad()
    (h * h2).sum().backward()
    assert h.grad is None
    np.testing.assert_array_equal(tl.tensor(h2.grad).numpy(), [3.0, 6.0])   # = h


# ----------------------------------------------------------------------------------------------
# hooks

def test_hook_sees_total_gradient_and_can_replace_it():
    x = t64([1.0, 2.0])
    h = x * 2.0
    seen = []

    def hook(g):
        seen.append(tl.tensor(g).numpy().copy())
        return g * 0.5

    h.register_hook(hook)
    (h * 3.0 + h).sum().backward()             # dL/dh = 3 + 1 = 4, halved by the hook
    np.testing.assert_array_equal(seen[0], [4.0, 4.0])
    np.testing.assert_array_equal(tl.tensor(x.grad).numpy(), [4.0, 4.0])  # 2 * 2


def test_hook_on_leaf_changes_accumulated_grad_and_can_be_removed():
    x = t64([1.0, 2.0])
    handle = x.register_hook(lambda g: g * 0)
    (x * 5.0).sum().backward()
    np.testing.assert_array_equal(tl.tensor(x.grad).numpy(), [0.0, 0.0])
    handle.remove()
    x.zero_grad()
    (x * 5.0).sum().backward()
    np.testing.assert_array_equal(tl.tensor(x.grad).numpy(), [5.0, 5.0])


def test_hook_returning_none_keeps_gradient():
    x = t64([1.0])
    calls = []
    x.register_hook(lambda g: calls.append(1))
    (x * 2.0).sum().backward()
    assert calls == [1] and float(x.grad[0]) == 2.0


# ----------------------------------------------------------------------------------------------
# grad mode

def test_no_grad_records_nothing():
    x = t64([1.0, 2.0])
    with tl.no_grad():
        y = x * 2.0
        assert not tl.is_grad_enabled()
    assert tl.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None


def test_no_grad_as_decorator_and_enable_grad_inside():
    x = t64([1.0])

    @tl.no_grad()
    def f():
        a = x * 2.0
        with tl.enable_grad():
            b = x * 2.0
        return a, b

    a, b = f()
    assert not a.requires_grad and b.requires_grad


def test_no_grad_restores_mode_after_exception():
    with pytest.raises(ZeroDivisionError):
        with tl.no_grad():
            raise ZeroDivisionError
    assert tl.is_grad_enabled()


def test_detach_cuts_the_graph():
    x = t64([1.0, 2.0])
    y = (x * 2.0).detach()
    z = (y * x).sum()
    z.backward()
    np.testing.assert_array_equal(tl.tensor(x.grad).numpy(), [2.0, 4.0])   # y treated as constant
    assert y.is_leaf and not y.requires_grad


def test_constants_do_not_keep_inputs_alive():
    x = tl.tensor(np.ones(10))
    y = x * 2.0
    assert y.grad_fn is None and not y.requires_grad


# ----------------------------------------------------------------------------------------------
# a small core: the study tools attach through observers (tinyllm/autograd/observe.py)

def test_function_apply_is_at_most_15_lines():
    import inspect
    lines, _ = inspect.getsourcelines(tl.Function.apply)      # decorator and docstring included
    assert len(lines) <= 15, "".join(lines)


def _frames_up_to_tensor_backward(frame):
    """Function names from ``frame`` out to Tensor.backward, or None if it is not below it."""
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        if frame.f_code is tl.Tensor.backward.__code__:
            return names
        frame = frame.f_back
    return None


def test_op_backward_is_at_most_3_frames_below_tensor_backward():
    """With default settings, ``b Tensor.backward`` then ``s`` reaches the op's formula through
    at most one helper (the walk): no observer, no wrapper in between."""
    import sys
    from tinyllm.autograd.observe import OBSERVERS
    assert OBSERVERS == []

    class Double(tl.Function):
        def forward(self, x):
            return 2 * x

        def backward(self, dout):
            Double.frames = _frames_up_to_tensor_backward(sys._getframe())
            return 2 * dout

    x = t64([1.0, 2.0])
    Double.apply(x).sum().backward()
    assert Double.frames == ["backward", "backward_walk", "backward"]   # Double, walk, Tensor
    # a built-in op (Mul), seen by a tracer: the same depth
    from tinyllm.ops.elementwise import Mul
    seen = []

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code is Mul.backward.__code__:
            seen.append(_frames_up_to_tensor_backward(frame))

    y = (x * x).sum()
    sys.settrace(tracer)
    try:
        y.backward()
    finally:
        sys.settrace(None)
    assert seen == [["backward", "backward_walk", "backward"]]


def test_an_observer_wraps_forward_and_backward_and_detaches():
    from tinyllm.autograd import observe

    class Log(observe.Observer):
        def __init__(self):
            self.calls = []

        def forward(self, ctx, call, *arrays, **kwargs):
            out = call(*arrays, **kwargs)
            self.calls.append(("forward", type(ctx).__name__, out.shape))
            return out

        def backward(self, ctx, call, dout):
            self.calls.append(("backward", type(ctx).__name__, dout.shape))
            return call(dout)

    log = Log()
    x = t64(np.ones((2, 3)))
    observe.attach(log)
    try:
        y = x.sum(axis=1)
        y.backward(np.ones(2))
    finally:
        observe.detach(log)
    assert log.calls == [("forward", "Sum", (2,)), ("backward", "Sum", (2,))]
    assert observe.OBSERVERS == []
    np.testing.assert_array_equal(x.grad, np.ones((2, 3)))


def test_module_scope_is_an_observer_only_while_a_module_runs():
    from tinyllm.autograd.observe import OBSERVERS

    class Boom(tl.nn.Module):
        def forward(self, x):
            seen.append(list(OBSERVERS))
            y = x.tanh()
            assert y.grad_fn.module is self
            raise ZeroDivisionError

    seen = []
    with pytest.raises(ZeroDivisionError):
        Boom()(t64([1.0]))
    assert len(seen[0]) == 1 and OBSERVERS == []
    assert (t64([1.0]) * 2.0).grad_fn.module is None     # outside every module

"""Bad input gets a clear exception naming the op, what it got and what it expected."""
import sys

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import backend


def test_matmul_shape_mismatch_names_op_and_both_shapes():
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(4, 5\) are not aligned"):
        tl.randn(2, 3) @ tl.randn(4, 5)
    with pytest.raises(ValueError, match=r"matmul: .*\(3,\) and \(4,\)"):
        tl.randn(3) @ tl.randn(4)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        tl.matmul(tl.randn(3), tl.tensor(2.0))


def test_matmul_batch_mismatch_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"matmul: batch axes of shapes \(2, 3, 4\) and "
                                         r"\(3, 4, 5\) do not broadcast"):
        tl.randn(2, 3, 4) @ tl.randn(3, 4, 5)


def test_linear_shape_errors_name_op_and_shapes():
    with pytest.raises(ValueError, match=r"linear: expected x \(\.\.\., in\) and weight "
                                         r"\(in, out\), got shapes \(2, 3\) and \(5, 3\)"):
        tl.linear(tl.randn(2, 3), tl.randn(5, 3))          # a (out, in) weight, torch's layout
    with pytest.raises(ValueError, match=r"linear: bias must have shape \(out,\) = \(5,\), "
                                         r"got \(3,\)"):
        tl.linear(tl.randn(2, 3), tl.randn(3, 5), tl.randn(3))
    with pytest.raises(ValueError, match=r"Linear: input's last axis is 4, expected "
                                         r"in_features=3"):
        tl.nn.Linear(3, 5)(tl.randn(2, 4))


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "pow"])
def test_broadcast_mismatch_names_op_and_shapes(op):
    with pytest.raises(ValueError, match=r"(?i)" + op + r".*\(2, 3\).*\(4,\)"):
        getattr(tl, op)(tl.rand(2, 3) + 1, tl.rand(4) + 1)


def test_reshape_mismatch_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"Reshape: .*size 6.*\(4,\).*\(2, 3\)"):
        tl.randn(2, 3).reshape(4)


def test_permute_and_axis_errors():
    with pytest.raises(ValueError, match=r"permute: axes \(0, 0\)"):
        tl.randn(2, 3).permute(0, 0)
    with pytest.raises(ValueError, match="sum: axis 2 is out of range"):
        tl.randn(2, 3).sum(axis=2)
    with pytest.raises(ValueError, match="softmax: axis 3"):
        tl.softmax(tl.randn(2, 3), axis=3)
    with pytest.raises(ValueError, match=r"Concatenate: .*\(input shapes \(2, 3\), \(3, 3\)\)"):
        tl.concatenate([tl.randn(2, 3), tl.randn(3, 3)], axis=1)
    with pytest.raises(ValueError, match="stack: all tensors must have the same shape"):
        tl.stack([tl.randn(2), tl.randn(3)])
    with pytest.raises(ValueError, match="split: axis 1 of length 5 does not divide into 2"):
        tl.split(tl.randn(2, 5), 2, axis=1)


def test_int_and_bool_tensors_cannot_require_grad():
    with pytest.raises(TypeError):
        tl.tensor([1, 2, 3], requires_grad=True)
    with pytest.raises(TypeError):
        tl.zeros(3, dtype=np.int32, requires_grad=True)


def test_cross_entropy_target_out_of_range_names_value_and_classes():
    logits = tl.randn(3, 5, requires_grad=True)
    with pytest.raises(IndexError, match=r"target value 7 is out of range for 5 classes"):
        tl.cross_entropy(logits, np.array([0, 7, 1]))
    with pytest.raises(IndexError, match=r"target value -1 .* 5 classes"):
        tl.cross_entropy(logits, np.array([0, -1, 1]))
    # ignore_index itself is allowed, even though it is outside [0, C)
    tl.cross_entropy(logits, np.array([0, -100, 1]))


def test_cross_entropy_other_bad_input():
    logits = tl.randn(3, 5)
    with pytest.raises(ValueError, match=r"target shape \(4,\) does not match logits shape "
                                         r"\(3, 5\)"):
        tl.cross_entropy(logits, np.array([0, 1, 2, 3]))
    with pytest.raises(TypeError, match="cross_entropy: target must hold integers.*float"):
        tl.cross_entropy(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="reduction"):
        tl.cross_entropy(logits, np.array([0, 1, 2]), reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        tl.cross_entropy(logits, np.array([0, 1, 2]), label_smoothing=1.5)


def test_embedding_index_out_of_range():
    w = tl.randn(4, 2, requires_grad=True)
    with pytest.raises(IndexError, match=r"embedding: index 4 is out of range for 4 embeddings"):
        tl.embedding(np.array([0, 4]), w)
    with pytest.raises(IndexError, match="index -1"):
        tl.embedding(np.array([-1]), w)
    with pytest.raises(TypeError, match="embedding: idx must hold integers"):
        tl.embedding(np.array([0.0]), w)


def test_other_op_argument_errors():
    with pytest.raises(ValueError, match="mse_loss: input shape"):
        tl.mse_loss(tl.randn(3), tl.randn(3, 1))
    with pytest.raises(ValueError, match="layer_norm: normalized_shape"):
        tl.layer_norm(tl.randn(2, 3), 4)
    with pytest.raises(ValueError, match="dropout: probability"):
        tl.dropout(tl.randn(3), 1.5)
    with pytest.raises(ValueError, match="GELU: approximate"):
        tl.gelu(tl.randn(3), approximate="fast")
    with pytest.raises(TypeError, match="where: cond must be a boolean"):
        tl.where(np.array([1, 0]), tl.randn(2), tl.randn(2))
    with pytest.raises(ValueError, match="var: .*degrees of freedom"):
        tl.randn(1).var(ddof=1)
    with pytest.raises(IndexError, match=r"getitem: .*shape \(2, 3\)"):
        tl.randn(2, 3)[5]
    with pytest.raises(IndexError, match="integers or booleans"):
        tl.randn(2, 3)[np.array([0.5])]


def test_mixed_devices_are_refused(monkeypatch):
    """The check in Function.apply, exercised without a GPU by letting one array claim to
    belong to another array library."""
    a, b = tl.randn(2, 3), tl.randn(3, 2)
    real = backend.get_array_module

    class FakeXP:
        class ndarray:
            pass

    monkeypatch.setitem(sys.modules, "cupy", FakeXP)       # as if CuPy had been imported
    monkeypatch.setattr(backend, "get_array_module",
                        lambda *arrs: FakeXP if arrs and arrs[0] is b.data else real(*arrs))
    with pytest.raises(RuntimeError, match=r"MatMul: expected all tensors on the same device"):
        a @ b


@pytest.mark.gpu
def test_mixed_devices_are_refused_on_a_real_gpu():
    a = tl.randn(2, 3, device="cpu")
    b = tl.randn(3, 2, device="cuda")
    with pytest.raises(RuntimeError, match="same device.*cpu.*cuda"):
        a @ b


def test_errors_from_backward_implementation_are_clear():
    class BadShape(tl.Function):
        def forward(self, x):
            return x * 2

        def backward(self, dout):
            return dout.sum(axis=0)

    x = tl.randn(3, 2, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"BadShape.backward returned a gradient of shape "
                                           r"\(2,\) for an input of shape \(3, 2\)"):
        BadShape.apply(x).sum().backward()

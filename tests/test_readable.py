"""Readable by default, fast by one switch: what a learner meets stepping into backward.

A 2-layer GPT's and a BERT's backward run under ``sys.settrace``. With default settings the
backward of every op the derivation cards describe runs from tinyllm/ops, no frame of Numba or
of tinyllm/kernels is entered, and the first op's backward sits at most 3 frames below
``Tensor.backward`` (where ``b Tensor.backward`` then ``s`` takes a learner). With the switch on
the kernels run and the numbers agree.
"""
import os
import sys

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import kernels
from tinyllm.models import BertConfig, BertForPreTraining, GPT, GPTConfig

OPS_DIR = os.path.join("tinyllm", "ops") + os.sep
KERNELS_DIR = os.path.join("tinyllm", "kernels") + os.sep
# the backward of each op a derivation card describes, and the class that runs it
CARD_OPS = {"Softmax", "LayerNorm", "CrossEntropy", "GELU", "Embedding"}
PRODUCT_OPS = {"MatMul", "Linear"}


class BackwardTrace:
    """Every Python frame entered during ``loss.backward()``: (file, qualified name, depth
    below Tensor.backward)."""

    def __init__(self):
        self.calls = []

    def __call__(self, frame, event, arg):
        if event == "call":
            depth, f = 0, frame
            while f is not None and f.f_code.co_qualname != "Tensor.backward":
                depth, f = depth + 1, f.f_back
            self.calls.append((frame.f_code.co_filename, frame.f_code.co_qualname,
                               depth if f is not None else None))
        return None

    def run(self, loss):
        sys.settrace(self)
        try:
            loss.backward()
        finally:
            sys.settrace(None)
        return self

    def op_backwards(self):
        """{op class name: file} for every Function.backward that ran."""
        return {q.split(".")[0]: f for f, q, _ in self.calls if q.endswith(".backward")
                and q != "Tensor.backward"}

    def entered(self, part):
        return sorted({(f, q) for f, q, _ in self.calls if part in f})


def _gpt():
    tl.manual_seed(0)
    cfg = GPTConfig(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=16, dropout=0.0,
                    bias=True)
    model = GPT(cfg)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 37, (2, 12))
    targets = rng.integers(0, 37, (2, 12))
    return model, lambda: model(idx, targets)[1]


def _bert():
    tl.manual_seed(0)
    cfg = BertConfig(vocab_size=41, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForPreTraining(cfg)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 41, (2, 10))
    mask = np.ones((2, 10), np.int64)
    mask[1, 7:] = 0
    labels = np.where(rng.random((2, 10)) < 0.3, ids, -100)
    nsp = np.array([0, 1])
    return model, lambda: model(ids, attention_mask=mask, labels=labels,
                                next_sentence_label=nsp)[2]


MODELS = {"gpt": _gpt, "bert": _bert}


def _loss_value(out):
    return out if not isinstance(out, tuple) else out[0]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_default_backward_runs_the_ops_own_formulas(name, default_switch):
    model, loss_fn = MODELS[name]()
    trace = BackwardTrace().run(loss_fn())
    ops = trace.op_backwards()
    for op in CARD_OPS:
        assert op in ops, f"{op}.backward did not run in the {name} backward: {sorted(ops)}"
        assert OPS_DIR in ops[op], (op, ops[op])
    assert PRODUCT_OPS & set(ops), sorted(ops)
    assert not trace.entered(KERNELS_DIR), trace.entered(KERNELS_DIR)[:5]
    assert not trace.entered(os.sep + "numba" + os.sep), trace.entered(os.sep + "numba")[:5]
    first = next((d for f, q, d in trace.calls if OPS_DIR in f and q.endswith(".backward")))
    assert first is not None and first <= 3, f"first op backward {first} frames below"


@pytest.mark.skipif(not kernels.NUMBA_AVAILABLE, reason="needs numba")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_switch_on_runs_the_kernels_and_agrees(name):
    grads = {}
    for impl in ("numpy", "auto"):
        with kernels.using(impl):
            model, loss_fn = MODELS[name]()
            model.zero_grad()
            loss = loss_fn()
            trace = BackwardTrace().run(loss)
            grads[impl] = (float(loss.item()),
                           {n: np.asarray(p.grad).copy() for n, p in model.named_parameters()})
            if impl == "auto":
                assert trace.entered(KERNELS_DIR), "no kernel ran with the switch on"
            else:
                assert not trace.entered(KERNELS_DIR)
    assert grads["auto"][0] == pytest.approx(grads["numpy"][0], rel=1e-5)
    for n, g in grads["numpy"][1].items():
        np.testing.assert_allclose(grads["auto"][1][n], g, rtol=2e-3, atol=2e-5, err_msg=n)

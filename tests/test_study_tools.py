"""The study tools: anomaly mode, module hooks and scopes, the step-through backward, the graph
drawing, the bisecting gradcheck and the eps lab (issue 7)."""
import io
import os
import re

import numpy as np
import pytest

import tinyllm as tl
from tests.conftest import t64
from tinyllm import _files, kernels, nn, trace
from tinyllm.autograd import graph
from tinyllm.autograd.anomaly import AnomalyError, detect_anomaly
from tinyllm.autograd.gradcheck import (GradcheckError, bisect_backward, eps_sweep,
                                        format_eps_sweep)
from tinyllm.models.gpt import GPT, GPTConfig

HERE = os.path.basename(__file__)


def tiny_gpt(n_layer=2, dtype=np.float64, dropout=0.0, seed=0):
    tl.manual_seed(seed)
    m = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=n_layer, n_head=2, n_embd=8,
                      dropout=dropout))
    if dtype == np.float64:
        m.double()
    idx = np.random.default_rng(seed).integers(0, 11, (2, 5))
    return m, idx


def plain_grads(m, idx):
    """Every parameter's gradient from an ordinary backward (then zeroed again)."""
    _, loss = m(idx, idx)
    loss.backward()
    grads = {n: p.grad.copy() for n, p in m.named_parameters()}
    m.zero_grad()
    return loss, grads


# ----------------------------------------------------------------------------------------------
# anomaly mode

def test_anomaly_names_the_op_and_the_user_line_for_a_forward_nan():
    x = t64([1.0, -1.0, 4.0])
    with detect_anomaly():
        with pytest.raises(AnomalyError) as e:
            y = (x * 2.0).sqrt()  # the line the message must quote
    msg = str(e.value)
    assert "Sqrt.forward produced NaN from finite inputs" in msg
    assert "1 of 3 output elements" in msg
    assert HERE in msg and "y = (x * 2.0).sqrt()  # the line the message must quote" in msg
    # outside the block the same op quietly gives NaN, as NumPy does
    with np.errstate(invalid="ignore"):
        y = (x * 2.0).sqrt()
    assert np.isnan(y.data[1])


def test_anomaly_infinity_from_finite_inputs_raises_but_masking_with_minus_inf_does_not():
    x = t64([[0.5, 2.0], [1.0, 3.0]])
    mask = np.array([[False, True], [False, False]])
    with detect_anomaly():
        p = x.masked_fill(mask, float("-inf")).softmax(axis=-1)     # -inf came in: allowed
        np.testing.assert_allclose(p.data[0], [1.0, 0.0])
        with pytest.raises(AnomalyError, match=r"Log\.forward produced inf"):
            with np.errstate(divide="ignore"):
                p.log()                                               # log(0): not allowed


def test_anomaly_says_when_nan_came_in_from_data():
    x = t64([1.0, np.nan])
    with detect_anomaly(), pytest.raises(AnomalyError, match=r"Tanh\.forward propagated NaN "
                                                             r"from its input 0"):
        x.tanh()


def test_anomaly_in_backward_names_the_op_whose_backward_made_it():
    x = t64([0.0, 1.0])                     # sqrt is finite at 0, its derivative is not
    with detect_anomaly():
        y = (x * 1.0).sqrt()
        with pytest.raises(AnomalyError) as e:
            with np.errstate(divide="ignore"):
                y.sum().backward()
    msg = str(e.value)
    assert "Sqrt.backward returned inf in the gradient for its input 0" in msg
    assert "1 of 2 elements" in msg
    assert HERE in msg and "y = (x * 1.0).sqrt()" in msg


def test_anomaly_checks_the_gradient_flowing_into_each_backward():
    x = t64([1.0, 2.0])
    with detect_anomaly():
        y = x * 3.0
        with pytest.raises(AnomalyError, match=r"the gradient flowing into Mul\.backward is not "
                                               r"finite \(NaN, shape \(2,\)\).*passed to "
                                               r"backward\(\)"):
            y.backward(np.array([np.nan, 1.0]))


def test_anomaly_names_the_module(monkeypatch):
    m, idx = tiny_gpt(n_layer=1)
    graph.label_modules(m)
    from tinyllm.ops.elementwise import GELU
    real = GELU.forward

    def nan_forward(self, x, **kw):
        out = real(self, x, **kw).copy()
        out[0, 0, 0] = np.nan
        return out

    monkeypatch.setattr(GELU, "forward", nan_forward)
    with detect_anomaly(), pytest.raises(AnomalyError) as e:
        m(idx, idx)
    assert "GELU (module transformer.h.0.mlp: MLP).forward produced NaN" in str(e.value)
    assert "tinyllm/models/gpt.py" in str(e.value)          # the model's line


def test_anomaly_from_the_environment(monkeypatch):
    from tinyllm.autograd import anomaly
    try:
        monkeypatch.setenv("TINYLLM_DETECT_ANOMALY", "1")
        anomaly.from_environment()                   # what importing tinyllm does
        with pytest.raises(AnomalyError):
            t64([-1.0]).log()
        monkeypatch.setenv("TINYLLM_DETECT_ANOMALY", "0")
        anomaly.from_environment()
        with np.errstate(invalid="ignore"):
            assert np.isnan(t64([-1.0]).log().data[0])
    finally:
        monkeypatch.undo()
        anomaly.from_environment()


def test_anomaly_mode_does_not_change_a_finite_training_step():
    m, idx = tiny_gpt()
    loss, plain = plain_grads(m, idx)
    with detect_anomaly():
        _, loss2 = m(idx, idx)
        loss2.backward()
    assert float(loss.data) == float(loss2.data)
    for n, p in m.named_parameters():
        np.testing.assert_array_equal(p.grad, plain[n], err_msg=n)


# ----------------------------------------------------------------------------------------------
# module scopes and hooks

@pytest.mark.parametrize("impl,attention_op", [("numpy", "Softmax"),
                                               ("auto", "QKVSelfAttention")])
def test_every_op_records_the_module_it_ran_in(impl, attention_op):
    m, idx = tiny_gpt(n_layer=1)
    graph.label_modules(m)
    with kernels.using(impl):                  # the composed attention, or the fused op
        _, loss = m(idx, idx)
    names = {type(c).__name__: graph.module_name(c) for c in graph.nodes(loss)}
    assert names[attention_op] == "transformer.h.0.attn"
    assert names["GELU"] == "transformer.h.0.mlp"
    assert names["CrossEntropy"] == "GPT"
    assert graph.module_name(type("F", (), {})()) == ""


def test_forward_hooks_see_and_can_replace():
    lin = nn.Linear(3, 2, dtype=np.float64)
    seen = []
    h1 = lin.register_forward_pre_hook(lambda mod, args: (args[0] * 2.0,))
    h2 = lin.register_forward_hook(lambda mod, args, out: seen.append(out.shape) or out + 1.0)
    x = t64(np.ones((4, 3)))
    y = lin(x)
    expected = (2.0 * np.ones((4, 3))) @ lin.weight.data + lin.bias.data + 1.0
    np.testing.assert_allclose(y.data, expected)
    assert seen == [(4, 2)]
    h1.remove()
    h2.remove()
    np.testing.assert_allclose(lin(x).data, np.ones((4, 3)) @ lin.weight.data + lin.bias.data)
    assert seen == [(4, 2)]


def test_full_backward_hook_gets_grad_input_and_grad_output():
    lin = nn.Linear(3, 2, dtype=np.float64)
    got = []
    lin.register_full_backward_hook(lambda mod, gi, go: got.append((mod, gi, go)))
    x = t64(np.random.default_rng(0).standard_normal((4, 3)))
    v = np.random.default_rng(1).standard_normal((4, 2))
    lin(x).backward(grad=v)
    (mod, gi, go), = got
    assert mod is lin
    np.testing.assert_allclose(go[0], v)
    np.testing.assert_allclose(gi[0], v @ lin.weight.data.T)          # dx = dout W^T
    np.testing.assert_allclose(x.grad, gi[0])


def test_backward_hook_can_replace_grad_input_and_runs_for_token_inputs():
    lin = nn.Linear(3, 2, dtype=np.float64)
    lin.register_full_backward_hook(lambda mod, gi, go: (gi[0] * 0.0,))
    x = t64(np.ones((2, 3)))
    lin(x).sum().backward()
    np.testing.assert_array_equal(x.grad, np.zeros((2, 3)))
    assert lin.weight.grad is not None and np.abs(lin.weight.grad).sum() > 0

    emb = nn.Embedding(5, 4)
    got = []
    emb.register_full_backward_hook(lambda mod, gi, go: got.append((gi, go[0].shape)))
    emb(np.array([1, 2, 2])).sum().backward()
    assert got == [((None,), (3, 4))]


def test_backward_hook_fires_on_every_backward_through_a_retained_graph():
    lin = nn.Linear(3, 2, dtype=np.float64)
    got = []
    lin.register_full_backward_hook(lambda mod, gi, go: got.append(gi[0].copy()))
    x = t64(np.ones((2, 3)))
    y = lin(x).sum()
    y.backward(retain_graph=True)
    y.backward()
    assert len(got) == 2
    np.testing.assert_allclose(got[0], np.ones((2, 2)) @ lin.weight.data.T)
    np.testing.assert_allclose(got[1], got[0])
    np.testing.assert_allclose(x.grad, 2 * got[0])


def test_bisect_leaves_module_hooks_alone():
    m, idx = tiny_gpt(n_layer=1)
    got = []
    m.transformer.h[0].register_full_backward_hook(lambda mod, gi, go: got.append(gi[0]))
    _, loss = m(idx, idx)
    report = bisect_backward(loss, model=m)
    assert report.ok and got == []
    assert any(c.skipped == "hook bookkeeping" for c in report.checks)
    loss.backward()
    assert len(got) == 1 and got[0].shape == (2, 5, 8)


# ----------------------------------------------------------------------------------------------
# step-through backward

def test_backward_steps_gives_the_same_gradients_as_backward():
    m, idx = tiny_gpt()
    _, ref = plain_grads(m, idx)
    _, loss = m(idx, idx)
    n_tensors = len(graph.tensors(loss))
    steps = list(trace.backward_steps(loss, model=m))
    assert len(steps) == n_tensors
    assert [s.index for s in steps] == list(range(1, n_tensors + 1))
    for n, p in m.named_parameters():
        np.testing.assert_array_equal(p.grad, ref[n], err_msg=n)
    first = steps[0]
    assert first.op == "CrossEntropy" and first.dout.shape == () and float(first.dout) == 1.0
    leaves = [s for s in steps if s.op == "leaf"]
    assert {s.name for s in leaves} == {n for n, _ in m.named_parameters()}
    for s in leaves:
        np.testing.assert_array_equal(s.grad, ref[s.name])


def test_step_shows_upstream_local_gradients_and_saved_arrays():
    x = t64([[1.0, 2.0, 0.5]])
    w = t64([[0.5], [-1.0], [2.0]])
    h = x @ w                                   # (1, 1)
    y = (h * 3.0).tanh().sum()
    steps = list(trace.backward_steps(y))
    tanh = next(s for s in steps if s.op == "Tanh")
    mm = next(s for s in steps if s.op == "MatMul")
    t = np.tanh(3.0 * (1.0 * 0.5 - 2.0 + 1.0))
    np.testing.assert_allclose(tanh.dout, [[1.0]])
    np.testing.assert_allclose(tanh.grads[0], [[1 - t * t]])          # dx = dout (1 - y^2)
    assert [n for n, *_ in tanh.saved] == ["out"] and tanh.saved_bytes == 8
    np.testing.assert_allclose(mm.dout, [[3 * (1 - t * t)]])
    np.testing.assert_allclose(mm.grads[1], x.data.T * 3 * (1 - t * t))   # dw = x^T dout
    assert mm.in_shapes == ((1, 3), (3, 1)) and mm.out_shape == (1, 1)
    text = str(tanh)
    assert "Tanh" in text and "saved      8 B: out (1, 1) float64" in text


def test_filters_choose_steps_but_the_walk_stays_complete():
    m, idx = tiny_gpt()
    _, loss = m(idx, idx)
    shown = list(trace.backward_steps(loss, model=m, ops=["LayerNorm"],
                                      modules="transformer.h.1"))
    assert [s.module for s in shown] == ["transformer.h.1.ln_2", "transformer.h.1.ln_1"]
    assert all(p.grad is not None for p in m.parameters())
    _, loss = m(idx, idx)
    only_leaves = list(trace.backward_steps(loss, model=m, ops="leaf", modules="transformer.wte"))
    assert [s.name for s in only_leaves] == ["transformer.wte.weight"]


def test_debug_stops_in_the_debugger_before_the_chosen_backward(monkeypatch):
    import sys
    calls = []

    def hook(*a, **k):
        frame = sys._getframe(1)
        calls.append((frame.f_code.co_name, type(frame.f_locals["ctx"]).__name__))

    monkeypatch.setattr(sys, "breakpointhook", hook)
    x = t64([0.3, -0.2])
    y = (x.tanh() * x).sum()
    steps = list(trace.backward_steps(y, debug=["Tanh"]))
    assert calls == [("_backward_in_debugger", "Tanh")]
    assert [s.op for s in steps] == ["Sum", "Mul", "Tanh", "leaf"]
    np.testing.assert_allclose(x.grad, np.tanh(x.data) + x.data * (1 - np.tanh(x.data) ** 2))


@pytest.mark.parametrize("impl,attention_op,shape", [("numpy", "Softmax", "(2, 2, 5, 5)"),
                                                     ("auto", "QKVSelfAttention", "(2, 5, 24)")])
def test_explain_backward_prints_a_row_per_step(impl, attention_op, shape):
    m, idx = tiny_gpt(n_layer=1)
    with kernels.using(impl):
        _, loss = m(idx, idx)
    buf = io.StringIO()
    steps = trace.explain_backward(loss, model=m, file=buf)
    out = buf.getvalue().splitlines()
    assert out[0].split()[:4] == ["step", "op", "module", "output"]
    assert len(out) == 2 + len(steps) + 1
    row = next(r for r in out if attention_op in r)
    assert "transformer.h.0.attn" in row and shape in row
    saved = sum(s.saved_bytes for s in steps if s.op != "leaf")
    assert out[-1].endswith(f"{saved / 1024:.1f} KiB") or out[-1].endswith(f"{saved} B")


# ----------------------------------------------------------------------------------------------
# graph export

def test_to_dot_groups_nodes_by_module_and_labels_grad_norms():
    m, idx = tiny_gpt(n_layer=1)
    with kernels.using("auto"):                # the fused attention: one node, one label
        _, loss = m(idx, idx)
    order = graph.tensors(loss)
    n_nodes = len(order)
    expected_edges = sum(sum(p.requires_grad for p in t._ctx.parents)
                         for t in order if t._ctx is not None)
    dot = graph.to_dot(loss, model=m, grad_norms=True)
    assert dot.startswith("digraph tinyllm {") and dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    assert len(re.findall(r"^\s*n\d+ \[label=", dot, re.M)) == n_nodes
    assert 'label="transformer.h.0.attn"' in dot
    assert re.search(r'label="QKVSelfAttention\\n2x5x8\\n\|grad\| [0-9.e-]+"', dot)
    # the labels' norms are the leaves' gradients
    wte = m.transformer.wte.weight
    norm = np.linalg.norm(wte.grad)
    assert f'label="transformer.wte.weight\\n11x8\\n|grad| {norm:.3g}"' in dot
    n_edges = len(re.findall(r"^\s*n\d+ -> n\d+;", dot, re.M))
    assert n_edges == expected_edges


def test_render_writes_dot_atomically(tmp_path):
    m, idx = tiny_gpt(n_layer=1)
    _, loss = m(idx, idx)
    path = tmp_path / "g.dot"
    graph.render(graph.to_dot(loss, m), str(path))
    assert path.read_text().startswith("digraph")
    assert os.listdir(tmp_path) == ["g.dot"]
    import shutil
    if shutil.which("dot") is None:
        with pytest.raises(RuntimeError, match="needs Graphviz's `dot` program"):
            graph.render("digraph {}", str(tmp_path / "g.svg"))
        assert os.listdir(tmp_path) == ["g.dot"]          # nothing half-written left


def test_saved_bytes_counts_shared_arrays_once():
    x = t64(np.ones((10, 10)))
    y = x * x                    # Mul saves x twice (the same array)
    assert graph.saved_bytes(y) == 800
    z = (x.exp() * 2.0).sum()    # Exp saves its output (800 B); Mul saves it and the scalar
    assert graph.saved_bytes(z) == 800 + 8


# ----------------------------------------------------------------------------------------------
# the bisecting gradcheck

def test_bisect_passes_on_a_correct_model():
    m, idx = tiny_gpt(n_layer=1)
    _, loss = m(idx, idx)
    report = bisect_backward(loss, model=m)
    assert report.ok and report.first_failure is None
    checked = [c for c in report.checks if c.skipped is None]
    assert len(checked) >= 25 and max(c.error for c in checked) < 1e-6
    assert "all" in str(report) and "agree" in str(report)


@pytest.mark.parametrize("op_path,op_name,impl", [
    ("tinyllm.ops.elementwise.GELU", "GELU", "numpy"),
    ("tinyllm.ops.norm.LayerNorm", "LayerNorm", "numpy"),
    ("tinyllm.ops.attention.QKVSelfAttention", "QKVSelfAttention", "auto"),
])
def test_bisect_finds_a_wrong_backward_planted_in_one_block(monkeypatch, op_path, op_name,
                                                            impl):
    kernels.set_impl(impl)
    import importlib
    mod_name, cls_name = op_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(mod_name), cls_name)
    real = cls.backward

    def wrong(self, dout):
        grads = real(self, dout)
        grads = grads if isinstance(grads, tuple) else (grads,)
        name = graph.module_name(self)
        if name.startswith("transformer.h.1"):                  # only in the second block
            grads = (grads[0] * 1.01,) + grads[1:]
        return grads if len(grads) > 1 else grads[0]

    m, idx = tiny_gpt(n_layer=2)
    graph.label_modules(m)
    monkeypatch.setattr(cls, "backward", wrong)
    # the whole-model check sees that something is wrong ...
    with pytest.raises(GradcheckError):
        tl.gradcheck_module(m, idx, idx, mode="directional")
    # ... the bisection says where
    _, loss = m(idx, idx)
    report = bisect_backward(loss, model=m)
    bad = report.first_failure
    assert not report.ok and bad.op == op_name and bad.input == 0
    assert bad.module.startswith("transformer.h.1")
    assert f"the first wrong backward is {op_name} in module transformer.h.1" in str(report)
    # every node before it was checked and agreed
    assert all(c.ok for c in report.checks[:-1])
    assert any(c.op == op_name and c.module.startswith("transformer.h.0")
               for c in report.checks)


def test_bisect_passes_on_the_other_models_padding_rows_included():
    from tinyllm.models.lstm_lm import LSTMLM, LSTMLMConfig
    from tinyllm.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer
    rng = np.random.default_rng(0)
    tl.manual_seed(0)
    s2s = Seq2SeqTransformer(Seq2SeqConfig(src_vocab_size=12, n_embd=8, n_head=2,
                                           num_encoder_layers=1, num_decoder_layers=1, d_ff=16,
                                           dropout=0.0, max_len=16)).double()
    src = rng.integers(1, 12, (2, 7))
    src[0, 4:] = 0                                          # padding (pad id 0)
    tgt = rng.integers(1, 12, (2, 6))
    tgt[1, 3:] = 0
    _, loss = s2s(src, tgt[:, :-1], tgt[:, 1:])
    report = bisect_backward(loss, model=s2s, stop_at_first=False)
    assert report.ok, str(report)
    assert sum(c.op == "Embedding" and c.skipped is None for c in report.checks) >= 2
    lstm = LSTMLM(LSTMLMConfig(vocab_size=9, n_embd=6, n_hidden=5, n_layer=2)).double()
    idx = rng.integers(0, 9, (2, 4))
    out = lstm(idx, idx)
    loss = out[1] if isinstance(out, tuple) else out
    assert bisect_backward(loss, model=lstm).ok


def test_bisect_skips_random_ops_and_refuses_float32():
    m, idx = tiny_gpt(n_layer=1, dropout=0.2)
    _, loss = m(idx, idx)
    report = bisect_backward(loss, model=m)
    assert report.ok
    assert any(c.skipped == "random forward" and c.op == "Dropout" for c in report.checks)
    m32, idx = tiny_gpt(n_layer=1, dtype=np.float32)
    _, loss = m32(idx, idx)
    with pytest.raises(TypeError, match="finite differences need float64"):
        bisect_backward(loss)


# ----------------------------------------------------------------------------------------------
# the eps lab

def test_eps_sweep_draws_the_v_curve():
    x = np.random.default_rng(0).standard_normal(6)
    res = eps_sweep(lambda t: t.tanh(), x)
    e64 = dict(res["float64"])
    e32 = dict(res["float32"])
    best64 = min(e64, key=e64.get)
    best32 = min(e32, key=e32.get)
    # float64: the bottom of the V sits near eps ~ u^(1/3) ~ 1e-5, errors ~1e-10 or better
    assert 1e-7 <= best64 <= 1e-3 and e64[best64] < 1e-9
    # both arms: rounding error left, truncation error right
    assert e64[1e-12] > 1e3 * e64[best64] and e64[1e-1] > 1e3 * e64[best64]
    # truncation is O(eps^2): a decade of eps is two decades of error
    assert 50 < e64[1e-2] / e64[1e-3] < 200
    # float32 is at best ~1e-5..1e-3, at a much larger eps; at 1e-6 it is useless
    assert best32 >= 1e-4 and e32[best32] > 1e3 * e64[best64]
    assert e32[1e-6] > 1e-3
    table = format_eps_sweep(res)
    assert table.splitlines()[0].split()[:3] == ["eps", "float32", "rel."]
    assert table.count("*") == 2


def test_explain_prints_the_ops_card(capsys):
    from tinyllm.ops.softmax import Softmax
    text = Softmax.explain()
    assert capsys.readouterr().out.strip() == text.strip()
    assert Softmax.__doc__.strip().splitlines()[0] in text
    assert re.search(r"forward  tinyllm/ops/softmax\.py:\d+ in Softmax\.forward", text)
    assert re.search(r"backward tinyllm/ops/softmax\.py:\d+ in Softmax\.backward", text)


# ----------------------------------------------------------------------------------------------
# the command line

def test_cli_explain_backward_table_steps_dot_and_bisect(tmp_path, capsys, default_switch):
    from tinyllm import cli
    steps = cli.main(["explain-backward", "--ops", "LayerNorm", "CrossEntropy"])
    out = capsys.readouterr().out
    assert "backward pass of a tiny GPT (1 layer, 2 heads, 16 dims" in out
    assert [s.op for s in steps] == ["CrossEntropy", "LayerNorm", "LayerNorm", "LayerNorm"]
    assert [s.module for s in steps[1:]] == ["transformer.ln_f", "transformer.h.0.ln_2",
                                             "transformer.h.0.ln_1"]
    assert out.count("LayerNorm ") == 3 and "4 steps shown" in out

    steps = cli.main(["explain-backward", "--steps", "--modules", "transformer.h.0.attn",
                      "--dot", str(tmp_path / "g.dot")])
    out = capsys.readouterr().out
    assert "step 15/50  Softmax  [transformer.h.0.attn]" in out
    assert "saved      1.0 KiB: y (2, 2, 8, 8) float32" in out
    assert (tmp_path / "g.dot").read_text().startswith("digraph tinyllm")
    assert oct((tmp_path / "g.dot").stat().st_mode & 0o777) == oct(0o666 & ~_files._umask())

    report = cli.main(["explain-backward", "--bisect", "--n-layer", "2"])
    assert report.ok and "agree with finite differences" in capsys.readouterr().out


def test_cli_explain_backward_on_a_trained_run(tmp_path, capsys, shared_data):
    from tinyllm import cli
    run = tmp_path / "run"
    cli.main(["train", "--preset", "tiny", "--out-dir", str(run), "--quiet", "--max-iters", "2",
              "--eval-iters", "0"])
    capsys.readouterr()
    steps = cli.main(["explain-backward", "--out-dir", str(run), "--ops", "CrossEntropy"])
    out = capsys.readouterr().out
    assert f"backward pass of the run in {run} on a batch of shape (2, 16)" in out
    assert [s.op for s in steps] == ["CrossEntropy"] and steps[0].in_shapes[0][0] == 32
    report = cli.main(["explain-backward", "--out-dir", str(run), "--bisect"])
    assert report.ok

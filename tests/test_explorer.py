"""tinyllm.explorer (``trace.to_html``, ``explain-backward --html``): the page holds every node of
the graph in the engine's backward order with the numbers ``loss.backward()`` produces, each
op's derivation and source, each node's own finite-difference check, a top-to-bottom layout,
and nothing fetched from the network; a planted bug is found where it was planted. (The page
in a real browser: tests/test_explorer_browser.py.)"""
import inspect
import json
import os
import re

import numpy as np
import pytest

from tinyllm import cli, explorer, trace
from tinyllm.autograd import graph
from tinyllm.explorer import layout, page_data, plant_bug
from tinyllm.ops.norm import LayerNorm
from tinyllm.ops.softmax import Softmax

from tests.conftest import TEST_BACKEND

pytestmark = pytest.mark.skipif(TEST_BACKEND != "numpy", reason="the page's numbers are read "
                                "on the host; one backend is enough")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _step(n_layer=2, dtype="float64", seed=0):
    model, idx, targets, _ = trace.tiny_gpt_example(n_layer, 2, 16, 8, 2, seed, dtype=dtype)
    _, loss = model(idx, targets)
    return model, idx, targets, loss


def _data(path):
    text = open(path, encoding="utf-8").read()
    blob = re.search(r'<script id="explorer-data" type="application/json">(.*?)</script>', text,
                     re.S).group(1)
    return text, json.loads(blob)


def test_every_node_in_the_engines_order_with_the_backwards_numbers():
    model, idx, targets, loss = _step()
    order = graph.tensors(loss)
    ids = {id(t) for t in order}                    # inputs that need no gradient: no node
    n_edges = sum(1 for t in order if t._ctx is not None for p in t._ctx.parents
                  if id(p) in ids)
    twin, _, _, twin_loss = _step()                 # the same step, backward run plainly
    twin_loss.backward()
    want = {name: p.grad for name, p in twin.named_parameters()}
    third, _, _, third_loss = _step()
    steps = [(s.op, s.module) for s in trace.backward_steps(third_loss, model=third)]
    data = page_data(loss, model)
    assert [n["index"] for n in data["nodes"]] == list(range(1, len(order) + 1))
    assert sorted(n["forward"] for n in data["nodes"]) == list(range(len(order)))
    assert [(n["op"], n["module"]) for n in data["nodes"]] == steps
    assert len(data["edges"]) == n_edges
    leaves = {n["name"]: n for n in data["nodes"] if n["op"] == "leaf"}
    assert set(want) <= set(leaves)
    for name, g in want.items():                    # the page's .grad is backward()'s
        s = leaves[name]["grad"]
        assert s["shape"] == list(g.shape)
        assert s["norm"] == pytest.approx(float(np.linalg.norm(g)), rel=1e-3)
        assert s["max"] == pytest.approx(float(g.max()), rel=1e-3, abs=1e-12)
    assert data["nodes"][0]["op"] == "CrossEntropy" and data["nodes"][0]["dout"]["max"] == 1.0


def test_each_op_has_its_derivation_source_and_check():
    model, _, _, loss = _step()
    data = page_data(loss, model)
    ln = data["ops"]["LayerNorm"]
    assert ln["doc"] == inspect.getdoc(LayerNorm)
    line = inspect.getsourcelines(LayerNorm.backward)[1]
    assert ln["backward"]["where"] == f"tinyllm/ops/norm.py:{line}"
    assert ln["backward"]["code"].lstrip().startswith("def backward(self, dout):")
    ops = [n for n in data["nodes"] if n["op"] != "leaf"]
    assert all(n["check"] is not None for n in ops)
    checked = [n for n in ops if not n["check"]["skipped"]]
    assert checked and all(n["check"]["ok"] for n in checked)
    assert max(n["check"]["error"] for n in checked) < 1e-6
    assert data["first_failure"] is None
    lnode = next(n for n in ops if n["op"] == "LayerNorm")
    assert [g["shape"] for g in lnode["grads"]] == lnode["in_shapes"]
    assert lnode["saved_bytes"] == sum(s["bytes"] for s in lnode["saved"]) > 0


def test_float32_graphs_are_drawn_without_checks_and_say_why():
    model, _, _, loss = _step(dtype="float32")
    data = page_data(loss, model)
    assert "need float64" in data["check_note"]
    assert all(n.get("check") is None for n in data["nodes"])


def test_a_planted_bug_is_found_where_it_was_planted():
    real = Softmax.backward
    model, _, _, loss = _step()
    with plant_bug("Softmax", scale=1.5):
        data = page_data(loss, model)
    assert Softmax.backward is real                     # put back
    first = data["first_failure"]
    assert first["op"] == "Softmax" and first["module"] == "transformer.h.0.attn"
    bad = {n["op"] for n in data["nodes"] if n.get("check") and not n["check"]["ok"]}
    assert bad == {"Softmax"}
    line = inspect.getsourcelines(Softmax.backward)[1]       # the op's own code, and a note
    assert data["ops"]["Softmax"]["backward"]["where"] == f"tinyllm/ops/softmax.py:{line}"
    assert "1.5 x the first input gradient" in data["ops"]["Softmax"]["planted"]
    assert data["ops"]["LayerNorm"]["planted"] is None
    with pytest.raises(ValueError, match="plant_bug: no op called 'Softmx'; ops: .*Softmax"):
        with plant_bug("Softmx"):
            pass


def test_the_layout_reads_top_to_bottom_without_overlaps():
    model, _, _, loss = _step()
    data = page_data(loss, model)
    xy = layout(data["nodes"], data["edges"])
    assert len(xy) == len(data["nodes"]) and len(set(xy.values())) == len(xy)
    for a, b in data["edges"]:
        assert xy[a][1] < xy[b][1]                      # an input above its consumer
    leaves = [n["forward"] for n in data["nodes"] if n["op"] == "leaf"]
    for f in leaves:                                    # a weight sits just above its reader
        below = min(xy[b][1] for a, b in data["edges"] if a == f)
        assert below - xy[f][1] == explorer.layout_module.DY


def test_the_page_is_one_small_self_contained_file(tmp_path):
    model, _, _, loss = _step()
    path = trace.to_html(loss, model, tmp_path / "step.html")
    text, data = _data(path)
    assert os.path.getsize(path) < 2_000_000
    assert not re.search(r'<(script|link|img|iframe)[^>]*(src|href)=', text)
    assert not re.search(r"(fetch|XMLHttpRequest|import\()", text)
    assert "https://" not in text and "http://" not in text.replace(
        "http://www.w3.org/2000/svg", "")               # the SVG namespace is a name, not a URL
    assert len(data["nodes"]) == len(data["xy"]) == 88
    assert data["root"] == "GPT"


def test_data_cannot_close_the_script_block(tmp_path):
    text = explorer.render({"nodes": [], "note": "</script><script>alert(1)</script>"}, "t")
    block = text.split('<script id="explorer-data" type="application/json">')[1]
    assert block.index("</script>") > block.index("alert(1)")    # still inside the data


def test_explain_backward_writes_the_page(tmp_path, capsys):
    page = tmp_path / "bug.html"
    cli.main(["explain-backward", "--html", str(page), "--plant-bug", "LayerNorm",
              "--n-layer", "2"])
    assert "wrote" in capsys.readouterr().out
    _, data = _data(page)
    assert data["first_failure"]["op"] == "LayerNorm" and data["dtype"] == "float64"
    assert LayerNorm.backward is LayerNorm.__dict__["backward"]
    assert cli.run(["explain-backward", "--html", str(page), "--plant-bug", "Nope"]) == 1
    assert "no op called 'Nope'" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--html", "/no/such/folder/p.html"], "the folder /no/such/folder does not exist"),
    (["--html", "{tmp}/p.html", "--steps"], "give --steps or --bisect in a run of their own"),
    (["--plant-bug", "Softmax"], "give it with --html or --bisect"),
])
def test_explain_backward_refuses_what_it_cannot_do_in_one_line(tmp_path, capsys, flags,
                                                                message):
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    assert cli.run(["explain-backward", *flags]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())

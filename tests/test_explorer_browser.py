"""The backward-graph explorer (``tinyllm.trace.to_html``) in a real browser: headless
Chromium opens the page, clicks a node, steps through the backward order, reads the console.

The page's DOM contract (tests/browser.py): one ``[data-op][data-module][data-node]`` element
per node, ``#card`` filled by a click, ``#step-next``/``#step-prev`` (and ArrowRight/ArrowLeft)
moving the class ``current``, ``body[data-ready="1"]`` once built, and the nodes embedded as
JSON in ``<script id="explorer-data">``. The first tests check the harness itself on mock
pages written here; the others need the real page and skip until ``to_html`` exists. All skip,
with what to install, where Chromium, ChromeDriver or selenium is missing.

TINYLLM_SCREENSHOT=path.png also saves a screenshot of the tiny GPT's page (a node's card
open); ``examples/explorer_screenshot.py`` makes the README's with the same code.
"""
import importlib
import importlib.util
import inspect
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyllm as tl
from tests.browser import (EXPLORER_DATA, browser, click, console_errors, console_logs,
                           current_nodes, embedded_json, explorer_nodes, missing, node,
                           open_page, pose_explorer, press, screenshot, step)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def driver():
    with browser() as d:
        yield d


@pytest.fixture
def to_html():
    trace = importlib.import_module("tinyllm.trace")
    if not hasattr(trace, "to_html"):
        pytest.skip("the explorer is not built yet (tinyllm.trace.to_html)")
    return trace.to_html


# ----------------------------------------------------------------------------------------------
# what the page must show, from the engine itself

def function_class(name):
    """The ``Function`` subclass called ``name`` defined in a module of ``tinyllm.ops``."""
    import tinyllm.ops
    from tinyllm.autograd.function import Function
    for info in pkgutil.iter_modules(tinyllm.ops.__path__):
        mod = importlib.import_module(f"tinyllm.ops.{info.name}")
        cls = getattr(mod, name, None)
        if (inspect.isclass(cls) and issubclass(cls, Function)
                and cls.__module__ == mod.__name__):
            return cls
    raise LookupError(f"no Function {name} in tinyllm.ops")


def derivation_phrase(cls):
    """The first non-empty line of the op's docstring."""
    return next(line.strip() for line in cls.__doc__.splitlines() if line.strip())


def backward_location(cls):
    """'tinyllm/ops/norm.py:LINE': where the op's backward is defined, from the repo root."""
    path = os.path.relpath(inspect.getsourcefile(cls.backward), REPO)
    return f"{Path(path).as_posix()}:{inspect.getsourcelines(cls.backward)[1]}"


def _squash(text):
    return " ".join(text.split())


def _tiny_gpt(n_layer=2, dtype="float64"):
    """The tiny GPT's step; float64, so that the page's finite-difference checks run."""
    model, idx, targets, _ = tl.trace.tiny_gpt_example(n_layer=n_layer, dtype=dtype)
    _, loss = model(idx, targets)
    return model, loss


def engine_order(model, loss):
    """(op, module) of every node in the engine's backward order (tinyllm.trace)."""
    return [(s.op, s.module) for s in tl.trace.backward_steps(loss, model=model)]


# ----------------------------------------------------------------------------------------------
# the checks, shared by the mock pages and the real one

def check_nodes(driver, page):
    """One [data-op] element per embedded node, data-node 1..N, ops and modules as the JSON."""
    nodes = embedded_json(page, EXPLORER_DATA)["nodes"]
    assert [n["index"] for n in nodes] == list(range(1, len(nodes) + 1))
    shown = explorer_nodes(driver)
    assert len(shown) == len(nodes), f"{len(shown)} [data-op] elements, {len(nodes)} nodes"
    by_index = {int(k): (op, module or "") for k, op, module in shown}
    assert sorted(by_index) == list(range(1, len(nodes) + 1)), "data-node must be 1..N, once each"
    assert by_index == {n["index"]: (n["op"], n["module"] or "") for n in nodes}
    return nodes


def check_card(driver, op="LayerNorm"):
    """Clicking the first ``op`` node (backward order) puts the op's derivation (its
    docstring's first line) and its backward's file:line in #card."""
    from selenium.webdriver.common.by import By
    cls = function_class(op)
    ks = [int(k) for k, o, _ in explorer_nodes(driver) if o == op]
    assert ks, f"no [data-op=\"{op}\"] node"
    click(driver, node(driver, min(ks)))
    card = driver.find_element(By.CSS_SELECTOR, "#card")
    text = _squash(card.text)
    assert _squash(derivation_phrase(cls)) in text, \
        f"#card lacks {derivation_phrase(cls)!r}; it shows {text[:500]!r}"
    assert backward_location(cls) in text, \
        f"#card lacks {backward_location(cls)!r}; it shows {text[:500]!r}"


def check_steps(driver, page, n):
    """From the start, k presses of #step-next make node k (alone) ``current``; #step-prev and
    the arrow keys move one back or forward."""
    from selenium.webdriver.common.keys import Keys
    open_page(driver, page)                                 # from the start
    done = 0
    for k in sorted({1, min(5, n), n}):
        step(driver, k - done)
        done = k
        assert current_nodes(driver) == [str(k)], f"after {k} x #step-next"
    step(driver, back=True)
    assert current_nodes(driver) == [str(n - 1)], "after #step-prev"
    press(driver, Keys.ARROW_RIGHT)
    assert current_nodes(driver) == [str(n)], "after ArrowRight"
    press(driver, Keys.ARROW_LEFT, times=2)
    assert current_nodes(driver) == [str(n - 2)], "after ArrowLeft x 2"


def check_no_failed_checks(driver):
    failed = driver.execute_script(
        "return Array.from(document.querySelectorAll('.check-failed')).map(e => "
        "e.getAttribute('data-op') + ' ' + e.getAttribute('data-node'))")
    assert failed == [], f"finite-difference checks of a correct backward failed: {failed}"


def check_no_console_errors(driver):
    errors = console_errors(driver)
    assert not errors, "console errors:\n" + "\n".join(e["message"] for e in errors)


# ----------------------------------------------------------------------------------------------
# the harness, on mock pages that follow the contract

MOCK = """<!doctype html>
<html><head><meta charset="utf-8"><title>mock explorer</title>
<style>
.node {{ display: inline-block; margin: 2px; padding: 2px 4px; border: 1px solid #888;
        font: 12px sans-serif; cursor: pointer }}
.current {{ background: #fc0 }}
#card {{ white-space: pre-wrap; font: 12px monospace; border: 1px solid #444; padding: 4px }}
</style></head>
<body>
<div><button id="step-prev">prev</button> <button id="step-next">next</button></div>
<div id="graph"></div>
<div id="card">click a node</div>
<script id="explorer-data" type="application/json">{data}</script>
<script>
{extra}
const data = JSON.parse(document.getElementById("explorer-data").textContent);
const graph = document.getElementById("graph"), card = document.getElementById("card");
const els = [];
let at = 0;
for (const n of data.nodes) {{
  const el = document.createElement("span");
  el.className = "node";
  el.dataset.op = n.op; el.dataset.module = n.module; el.dataset.node = n.index;
  el.textContent = n.index + " " + n.op;
  el.addEventListener("click", () => {{ card.textContent = n.doc + "\\n" + n.source; }});
  graph.appendChild(el);
  els.push(el);
}}
function show(k) {{
  at = Math.max(0, Math.min(els.length, k));
  els.forEach((el, i) => el.classList.toggle("current", i + 1 === at));
}}
document.getElementById("step-next").addEventListener("click", () => show(at + 1));
document.getElementById("step-prev").addEventListener("click", () => show(at - 1));
document.addEventListener("keydown", e => {{
  if (e.key === "ArrowRight") show(at + 1);
  if (e.key === "ArrowLeft") show(at - 1);
}});
{ready}
</script>
</body></html>
"""


def write_mock(path, nodes, extra="", ready=True):
    """A page that follows the explorer's contract (what the harness is checked on)."""
    data = json.dumps({"nodes": nodes}).replace("</", "<\\/")
    ready_js = 'document.body.dataset.ready = "1";' if ready else ""
    Path(path).write_text(MOCK.format(data=data, extra=extra, ready=ready_js), encoding="utf-8")
    return path


def mock_nodes(model, loss):
    """The tiny GPT's nodes as the real page embeds them, plus each op's derivation and
    backward location (what the mock's card shows)."""
    nodes = []
    for k, (op, module) in enumerate(engine_order(model, loss), 1):
        doc = source = ""
        if op != "leaf":
            cls = function_class(op)
            doc, source = cls.__doc__ or "", backward_location(cls)
        nodes.append({"index": k, "op": op, "module": module, "doc": doc, "source": source})
    return nodes


def test_harness_on_a_mock_page(driver, tmp_path):
    model, loss = _tiny_gpt()
    page = write_mock(tmp_path / "mock.html", mock_nodes(model, loss))
    seconds = open_page(driver, page)
    assert seconds < 20
    nodes = check_nodes(driver, page)
    assert len(nodes) == len(engine_order(*_tiny_gpt()))
    check_card(driver, "LayerNorm")
    check_steps(driver, page, len(nodes))
    check_no_console_errors(driver)
    out = screenshot(driver, tmp_path / "shots" / "mock.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000
    k = pose_explorer(driver, page)
    assert nodes[k - 1]["op"] == "LayerNorm" and current_nodes(driver) == [str(k)]


def test_harness_reads_the_console_and_waits_for_ready(driver, tmp_path):
    nodes = [{"index": 1, "op": "leaf", "module": "", "doc": "", "source": ""}]
    noisy = write_mock(tmp_path / "noisy.html", nodes, extra=(
        'console.log("hello from the page");\n'
        'console.error("planted: the graph is wrong");\n'
        'setTimeout(() => { throw new Error("planted: uncaught"); }, 0);'))
    open_page(driver, noisy)
    driver.execute_script("return new Promise(r => setTimeout(r, 100))")   # the throw runs
    messages = [e["message"] for e in console_errors(driver)]
    assert any("planted: the graph is wrong" in m for m in messages), messages
    assert any("planted: uncaught" in m for m in messages), messages
    assert any("hello from the page" in e["message"] and e["level"] == "INFO"
               for e in console_logs(driver))
    assert not any("hello" in m for m in messages)                 # only SEVERE ones

    quiet = write_mock(tmp_path / "quiet.html", nodes)              # the log starts afresh
    open_page(driver, quiet)
    assert console_errors(driver) == []

    never = write_mock(tmp_path / "never.html", nodes, extra='console.error("stuck");',
                       ready=False)
    with pytest.raises(AssertionError, match=r'data-ready="1"\] not set within 1 s.*stuck'):
        open_page(driver, never, timeout=1)


def test_embedded_json_reads_the_script_element(tmp_path):
    page = tmp_path / "p.html"
    page.write_text('<script>var x = "</scr" + "ipt>";</script>\n<script type="application/json"'
                    ' id="explorer-data-2">{"nodes": []}</script>\n'
                    '<script type="application/json" id="explorer-data">'
                    '{"nodes": [{"index": 1, "doc": "a <\\/script> b"}]}</script>')
    assert embedded_json(page, EXPLORER_DATA) == {"nodes": [{"index": 1,
                                                             "doc": "a </script> b"}]}
    with pytest.raises(AssertionError, match="no <script id=\"nothing\">"):
        embedded_json(page, "nothing")


def test_function_lookup_and_backward_location():
    cls = function_class("LayerNorm")
    assert cls.__module__ == "tinyllm.ops.norm"
    assert derivation_phrase(cls).startswith("y = (x - mean)")
    path, line = backward_location(cls).rsplit(":", 1)
    assert path == "tinyllm/ops/norm.py"
    assert (REPO / path).read_text().splitlines()[int(line) - 1].strip().startswith(
        "def backward(")


# ----------------------------------------------------------------------------------------------
# the real page (tinyllm.trace.to_html)

def test_tiny_gpt_page_nodes_card_steps(to_html, driver, tmp_path):
    model, loss = _tiny_gpt(n_layer=2)
    page = tmp_path / "explorer.html"
    to_html(loss, model=model, path=str(page))
    open_page(driver, page)
    nodes = check_nodes(driver, page)
    model2, loss2 = _tiny_gpt(n_layer=2)                    # the same step, by the engine
    assert [(n["op"], n["module"] or "") for n in nodes] == \
        [(op, module or "") for op, module in engine_order(model2, loss2)]
    check_no_failed_checks(driver)
    check_card(driver, "LayerNorm")
    check_steps(driver, page, len(nodes))
    check_no_console_errors(driver)
    shot = os.environ.get("TINYLLM_SCREENSHOT")
    if shot:
        pose_explorer(driver, page)
        screenshot(driver, shot)


def _preset_shaped_gpt():
    """shakespeare-char's architecture (untrained), on a batch of 2 sequences of 64."""
    from tinyllm.config import PRESETS, TrainConfig
    from tinyllm.models.gpt import GPT, GPTConfig
    cfg = TrainConfig(**PRESETS["shakespeare-char"])
    tl.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=cfg.block_size, n_layer=cfg.n_layer,
                          n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=0.0, bias=cfg.bias,
                          gelu=cfg.gelu))
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.bias) == \
        (4, 4, 128, 64, False)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 65, (2, 64))
    targets = rng.integers(0, 65, (2, 64))
    _, loss = model(idx, targets)
    return model, loss, False                      # no float64 checks of a model this size


def _bert():
    """A tiny BERT's pretraining step: MLM + NSP (as tests/test_bert.py)."""
    from tinyllm.models.bert import BertConfig, BertForPreTraining
    tl.manual_seed(0)
    model = BertForPreTraining(BertConfig(
        vocab_size=13, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=8, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0))
    ids = np.array([[1, 5, 6, 7, 2, 8, 9, 2], [1, 4, 11, 2, 12, 0, 0, 0]])
    types = np.array([[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 0, 0, 0]])
    mask = np.array([[1] * 8, [1] * 5 + [0] * 3])
    labels = np.full_like(ids, -100)
    labels[0, 2], labels[0, 6], labels[1, 2] = 6, 9, 11
    model.double()                                 # float64: the page's checks run
    *_, loss = model(ids, types, mask, labels=labels, next_sentence_label=np.array([0, 1]))
    return model, loss, True


def _seq2seq():
    """A tiny encoder-decoder's step (as tests/test_seq2seq.py)."""
    from tinyllm.models import Seq2SeqConfig, Seq2SeqTransformer
    tl.manual_seed(0)
    model = Seq2SeqTransformer(Seq2SeqConfig(
        src_vocab_size=12, n_embd=8, n_head=2, num_encoder_layers=1, num_decoder_layers=1,
        d_ff=16, dropout=0.0, max_len=16, pad_id=0))
    src = np.array([[3, 4, 5, 0, 0], [6, 7, 8, 9, 2]])
    tgt_in = np.array([[1, 5, 4, 3, 0], [1, 2, 9, 8, 7]])
    tgt_out = np.array([[5, 4, 3, 2, 0], [2, 9, 8, 7, 6]])
    model.double()                                 # float64: the page's checks run
    _, loss = model(src, tgt_in, tgt_out)
    return model, loss, True


@pytest.mark.parametrize("build", [_preset_shaped_gpt, _bert, _seq2seq],
                         ids=["gpt-shakespeare-char-shape", "bert-mlm-nsp", "seq2seq"])
def test_other_models_pages_open_cleanly(to_html, driver, tmp_path, build):
    model, loss, check = build()
    page = tmp_path / "explorer.html"
    to_html(loss, model=model, path=str(page), check=check)
    open_page(driver, page)
    check_nodes(driver, page)
    check_no_failed_checks(driver)
    check_no_console_errors(driver)


def test_planted_bug_is_marked_on_the_page(to_html, driver, tmp_path):
    from selenium.webdriver.common.by import By
    page = tmp_path / "planted.html"
    cmd = [sys.executable, "-c", "import sys; from tinyllm.cli import run; sys.exit(run())",
           "explain-backward", "--html", str(page), "--plant-bug", "Softmax"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    open_page(driver, page)
    check_nodes(driver, page)
    failed = driver.execute_script(
        "return Array.from(document.querySelectorAll('[data-op]')).map(e => "
        "[e.getAttribute('data-op'), e.classList.contains('check-failed')])")
    softmax = [bad for op, bad in failed if op == "Softmax"]
    assert softmax and all(softmax), "every Softmax node must carry check-failed"
    assert {op for op, bad in failed if bad} == {"Softmax"}, "only the planted op fails"
    assert "Softmax" in driver.find_element(By.CSS_SELECTOR, "#first-failure").text
    check_no_console_errors(driver)


def test_screenshot_example_writes_a_png(to_html, tmp_path):
    if missing():
        pytest.skip(f"no headless browser: {', '.join(missing())} missing")
    spec = importlib.util.spec_from_file_location(
        "examples_explorer_screenshot", REPO / "examples" / "explorer_screenshot.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(["--out", str(tmp_path / "explorer.png")])
    assert Path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_preset_runs_page_opens_cleanly(to_html, driver, tmp_path, shared_data):
    """The shakespeare-char preset's run (trained 2 steps: the page is the same whatever the
    weights), drawn by `tinyllm explain-backward --out-dir RUN --html` in float64 with every
    node's check."""
    from tinyllm import cli
    run, page = tmp_path / "run", tmp_path / "run.html"
    cli.main(["train", "--preset", "shakespeare-char", "--max-iters", "2", "--eval-iters", "1",
              "--out-dir", str(run), "--quiet", "--workers", "1"])
    cli.main(["explain-backward", "--out-dir", str(run), "--html", str(page)])
    assert page.stat().st_size < 2_000_000
    open_page(driver, page)
    check_nodes(driver, page)
    check_no_failed_checks(driver)
    check_no_console_errors(driver)

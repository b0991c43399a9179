"""Models in and out: Hugging Face model directories (``save_pretrained`` / ``from_pretrained``),
``tinyllm export`` and ``tinyllm train --init-from``, held against transformers.

A tinyllm model written by ``save_pretrained`` loads in transformers with no missing keys and
the same float64 logits (1e-9), and a transformers model written by its ``save_pretrained``
loads in tinyllm with the same logits; tinyllm -> directory -> tinyllm is exact. For Llama,
HF's RMSNorm and RoPE tables are patched to float64 as in tests/test_llama.py (its fixture).
"""
import json
import os

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import backend, cli, hf, run_setup, trainer
from tinyllm.config import PRESETS, TrainConfig, model_config
from tinyllm.data.corpora import get_batch, read_text, train_val_split
from tinyllm.data.tokenizers import ByteBPETokenizer, CharTokenizer
from tinyllm.models import GPT, GPTConfig, Llama, LlamaConfig, hf_dir

from tests.golden import assert_close
from tests.test_llama import _hf_float64  # noqa: F401  (fixture: HF's norm and RoPE in float64)

V, T_MAX, C = 37, 16, 16
RTOL = 1e-9


def _oracle():
    torch = pytest.importorskip("torch", reason="transformers' models need PyTorch")
    transformers = pytest.importorskip("transformers", reason="the oracle is transformers")
    return torch, transformers


def _hf_load(transformers, cls, path):
    """``cls.from_pretrained(path)`` in float64 (transformers 5 names the argument dtype, 4
    torch_dtype), with its loading report."""
    import torch
    major = int(transformers.__version__.split(".")[0])
    kw = {"dtype" if major >= 5 else "torch_dtype": torch.float64}
    return getattr(transformers, cls).from_pretrained(str(path), output_loading_info=True, **kw)


def _perturb(params, seed=1):
    """Norm weights start at 1 and biases at 0: move everything off its init."""
    rng = np.random.default_rng(seed)
    for p in params:
        p.data += (0.05 * rng.standard_normal(p.shape)).astype(p.dtype)


def _gpt(bias=True, gelu="tanh", vocab=V):
    tl.manual_seed(0)
    model = GPT(GPTConfig(block_size=T_MAX, vocab_size=vocab, n_layer=2, n_head=2, n_embd=C,
                          bias=bias, gelu=gelu)).double()
    _perturb(model.parameters())
    return model


def _llama(tie=False, bias=False):
    tl.manual_seed(0)
    model = Llama(LlamaConfig(block_size=T_MAX, vocab_size=V, n_layer=2, n_head=4, n_kv_head=2,
                              n_embd=C, intermediate_size=24, rope_theta=100.0,
                              tie_word_embeddings=tie, bias=bias)).double()
    _perturb(model.parameters())
    return model


def _idx(vocab=V, T=9):
    return np.random.default_rng(0).integers(0, vocab, (2, T))


def _hf_logits(torch, model, idx):
    with torch.no_grad():
        return model(torch.from_numpy(idx)).logits.numpy()


def _same_parameters(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        np.testing.assert_array_equal(backend.asnumpy(sa[k].data), backend.asnumpy(sb[k].data),
                                      err_msg=k)


# ----------------------------------------------------------------------------------------------
# tinyllm -> transformers

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("gelu", ["tanh", "exact"])
def test_gpt_saved_loads_in_transformers_with_equal_logits(tmp_path, bias, gelu):
    torch, transformers = _oracle()
    model = _gpt(bias, gelu)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["activation_function"] == {"tanh": "gelu_new", "exact": "gelu"}[gelu]
    assert config["torch_dtype"] == "float64" and config["tie_word_embeddings"] is True
    stored = hf_dir.read_weights(tmp_path)
    assert "lm_head.weight" not in stored                                    # tied: once
    if not bias:
        assert not np.any(stored["transformer.h.0.attn.c_attn.bias"])         # explicit zeros
    hf_model, info = _hf_load(transformers, "GPT2LMHeadModel", tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    idx = _idx()
    assert_close(model(idx).data, _hf_logits(torch, hf_model, idx), RTOL, "GPT-2 logits")


@pytest.mark.usefixtures("_hf_float64")
@pytest.mark.parametrize("tie,bias", [(False, False), (True, False), (False, True)])
def test_llama_saved_loads_in_transformers_with_equal_logits(tmp_path, tie, bias):
    torch, transformers = _oracle()
    model = _llama(tie, bias)
    model.save_pretrained(tmp_path)
    stored = hf_dir.read_weights(tmp_path)
    assert ("lm_head.weight" in stored) == (not tie)
    assert stored["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 4, C)   # (out, in)
    hf_model, info = _hf_load(transformers, "LlamaForCausalLM", tmp_path)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert hf_model.config.num_key_value_heads == 2
    idx = _idx()
    assert_close(model(idx).data, _hf_logits(torch, hf_model, idx), RTOL, "Llama logits")


# ----------------------------------------------------------------------------------------------
# transformers -> tinyllm

@pytest.mark.parametrize("act", ["gelu_new", "gelu"])
def test_a_transformers_gpt2_directory_loads_with_equal_logits(tmp_path, act):
    torch, transformers = _oracle()
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=V, n_positions=T_MAX, n_layer=2, n_head=2,
                                     n_embd=C, activation_function=act, bos_token_id=None,
                                     eos_token_id=None)
    hf_model = transformers.GPT2LMHeadModel(config).double().eval()
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf_model.save_pretrained(tmp_path)
    model = GPT.from_pretrained(tmp_path)
    assert model.transformer.wte.weight.dtype == np.float64            # the weights' own dtype
    assert model.config.gelu == {"gelu_new": "tanh", "gelu": "exact"}[act]
    idx = _idx()
    assert_close(model(idx).data, _hf_logits(torch, hf_model, idx), RTOL, "GPT-2 logits")
    assert GPT.from_pretrained(tmp_path, dtype=np.float32).lm_head.weight.dtype == np.float32


@pytest.mark.usefixtures("_hf_float64")
@pytest.mark.parametrize("tie", [False, True])
def test_a_transformers_llama_directory_loads_with_equal_logits(tmp_path, tie):
    torch, transformers = _oracle()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=V, hidden_size=C, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=T_MAX,
        rms_norm_eps=1e-5, rope_theta=100.0, tie_word_embeddings=tie, bos_token_id=None,
        eos_token_id=None, attn_implementation="sdpa")
    hf_model = transformers.LlamaForCausalLM(config).double().eval()
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf_model.save_pretrained(tmp_path)
    model = Llama.from_pretrained(tmp_path)
    assert (model.config.n_kv_head, model.config.tie_word_embeddings) == (2, tie)
    idx = _idx()
    assert_close(model(idx).data, _hf_logits(torch, hf_model, idx), RTOL, "Llama logits")


def test_bfloat16_weights_widen_to_float32(tmp_path):
    torch, _ = _oracle()
    from safetensors.torch import save_file
    a = torch.randn(3, 4).to(torch.bfloat16)
    save_file({"a": a, "b": torch.arange(5)}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    got = hf_dir.read_weights(tmp_path)
    assert got["a"].dtype == np.float32 and np.array_equal(got["a"], a.float().numpy())
    assert got["b"].tolist() == list(range(5))


# ----------------------------------------------------------------------------------------------
# tinyllm -> tinyllm, tokenizers, what is refused

@pytest.mark.parametrize("make", [lambda: _gpt(True), lambda: _gpt(False, "exact"),
                                  lambda: _llama(False), lambda: _llama(True, True)])
def test_round_trip_keeps_every_parameter_and_the_config(tmp_path, make):
    model = make()
    model.save_pretrained(tmp_path / "m")
    back = type(model).from_pretrained(tmp_path / "m")
    assert back.config == model.config
    _same_parameters(model, back)
    model.float().save_pretrained(tmp_path / "f32")                       # the dtype is kept
    assert type(model).from_pretrained(tmp_path / "f32").config == model.config
    assert json.loads((tmp_path / "f32" / "config.json").read_text())["dtype"] == "float32"
    _same_parameters(model, type(model).from_pretrained(tmp_path / "f32"))


def test_a_bias_free_gpt_trained_to_nonzero_biases_in_hf_comes_back_with_biases(tmp_path):
    model = _gpt(bias=False)
    config, weights = model.to_hf()
    weights["transformer.ln_f.bias"] = np.full(C, 0.5)
    back = GPT.from_hf(config, weights)
    assert back.config.bias is True
    assert np.all(back.transformer.ln_f.bias.data == 0.5)


@pytest.mark.parametrize("tok", [CharTokenizer.from_text("hello world\n"),
                                 ByteBPETokenizer.train("low lower lowest " * 20, 270)])
def test_the_tokenizer_travels_with_the_model(tmp_path, tok):
    with pytest.raises(ValueError, match="more than the model's vocab_size"):
        _gpt(vocab=8).save_pretrained(tmp_path, tokenizer=tok)
    model = _gpt(vocab=tok.vocab_size)
    model.save_pretrained(tmp_path, tokenizer=tok)
    assert (tmp_path / hf_dir.TOKENIZER).is_file()
    back, back_tok = hf.load_pretrained(tmp_path)
    _same_parameters(model, back)
    assert type(back_tok) is type(tok)
    text = "hello low world" if isinstance(tok, ByteBPETokenizer) else "hello world"
    assert back_tok.encode(text) == tok.encode(text)
    assert back_tok.decode(tok.encode(text)) == text
    model.save_pretrained(tmp_path)                      # saved again without: no stale file
    assert hf.load_pretrained(tmp_path)[1] is None


def test_bad_directories_are_typed_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no directory"):
        GPT.from_pretrained(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        GPT.from_pretrained(tmp_path)
    _llama().save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="model_type 'llama' model, expected 'gpt2'"):
        GPT.from_pretrained(tmp_path / "llama")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="model_type 'bert'"):
        hf.load_pretrained(tmp_path / "bert")
    config, weights = _gpt().to_hf()
    with pytest.raises(ValueError, match="ties its output layer"):
        GPT.from_hf({**config, "tie_word_embeddings": False},
                    {**weights, "lm_head.weight": weights["transformer.wte.weight"] + 1})
    with pytest.raises(ValueError, match="n_inner 20"):
        GPT.from_hf({**config, "n_inner": 20}, weights)


# ----------------------------------------------------------------------------------------------
# the command line: export, train --init-from

@pytest.fixture
def data(shared_data):
    return shared_data


def _train(out, *extra):
    return cli.main(["train", "--preset", "tiny", "--out-dir", str(out), "--quiet",
                     "--workers", "1", "--max-iters", "3", *extra])


@pytest.mark.usefixtures("_hf_float64")
@pytest.mark.parametrize("arch", ["gpt", "llama"])
def test_cli_export_loads_in_transformers_with_equal_logits(tmp_path, data, arch):
    torch, transformers = _oracle()
    _train(tmp_path / "run", "--model", arch)
    assert cli.main(["export", "--out-dir", str(tmp_path / "run"), "--to",
                     str(tmp_path / "hf")]) == tmp_path / "hf"
    assert sorted(os.listdir(tmp_path)) == ["hf", "run"]                 # no temporary left
    hf_model, info = _hf_load(transformers, "AutoModelForCausalLM", tmp_path / "hf")
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model, tok = hf.load_pretrained(tmp_path / "run", dtype=np.float64)  # float32 weights
    assert tok.vocab_size == hf_model.config.vocab_size
    idx = np.array([tok.encode("ROMEO:\nWhat, ho!")])                   # 14 <= block_size
    assert_close(model(idx).data, _hf_logits(torch, hf_model, idx), RTOL, "exported logits")


def test_train_init_from_starts_from_the_exported_weights(tmp_path, data):
    _train(tmp_path / "run", "--no-bias", "--gelu", "exact")
    cli.main(["export", "--out-dir", str(tmp_path / "run"), "--to", str(tmp_path / "hf")])
    log = _train(tmp_path / "tuned", "--init-from", str(tmp_path / "hf"))
    cfg = log["config"]
    assert (cfg["bias"], cfg["gelu"]) == (False, "exact")
    assert cfg["init_from"] == str(tmp_path / "hf")
    model, tok = hf.load_pretrained(tmp_path / "hf")
    ids = np.array(tok.encode(read_text(log["corpus"]["path"])), dtype=np.int64)
    x, y = get_batch(train_val_split(ids)[0], cfg["batch_size"], cfg["block_size"],
                     trainer.data_generator(cfg["seed"]))
    assert log["train_loss"][0] == pytest.approx(model(x, y)[1].item(), rel=1e-5)
    # from the run directory itself: the same weights, so the same run
    again = _train(tmp_path / "tuned2", "--init-from", str(tmp_path / "run"))
    assert again["train_loss"] == log["train_loss"]
    resumed = _train(tmp_path / "tuned", "--resume", "--max-iters", "4")   # an ordinary run
    assert resumed["train_loss"][:3] == log["train_loss"]


def test_cli_bad_input_is_one_line(tmp_path, data, capsys):
    _train(tmp_path / "run")
    run = str(tmp_path / "run")

    def error(*argv):
        assert cli.run(list(argv)) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        return err

    assert "no directory" in error("train", "--preset", "tiny", "--out-dir",
                                   str(tmp_path / "x"), "--init-from", str(tmp_path / "none"))
    assert "--n-layer 1; --n-layer 2" in error("train", "--preset", "tiny", "--out-dir",
                                               str(tmp_path / "x"), "--init-from", run,
                                               "--n-layer", "2")
    assert not (tmp_path / "x").exists()
    (tmp_path / "to").mkdir()
    (tmp_path / "to" / "notes.txt").write_text("mine")
    assert "already holds files" in error("export", "--out-dir", run, "--to",
                                          str(tmp_path / "to"))
    assert "does not" in error("export", "--out-dir", run, "--to", str(tmp_path / "to"),
                               "--force")
    assert (tmp_path / "to" / "notes.txt").read_text() == "mine"
    cli.main(["export", "--out-dir", run, "--to", str(tmp_path / "hf")])
    before = hf_dir.read_weights(tmp_path / "hf")
    assert cli.run(["export", "--out-dir", run, "--to", str(tmp_path / "hf"), "--force"]) == 0
    assert list(hf_dir.read_weights(tmp_path / "hf")) == list(before)
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "bert"}')
    assert "model_type 'bert'" in error("train", "--preset", "tiny", "--out-dir",
                                        str(tmp_path / "x"), "--init-from", str(tmp_path / "hf"))


def test_a_failed_export_leaves_nothing(tmp_path, data, monkeypatch):
    _train(tmp_path / "run")

    def fail(self, path, tokenizer=None):
        (path / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(GPT, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        hf.export_run(tmp_path / "run", tmp_path / "hf")
    assert sorted(os.listdir(tmp_path)) == ["run"]


# ----------------------------------------------------------------------------------------------
# fine-tuning: --freeze-layers, --new-head

def _exported(tmp_path, *extra):
    """A 2-block tiny run exported as a model directory (the --init-from source)."""
    _train(tmp_path / "src", "--n-layer", "2", *extra)
    cli.main(["export", "--out-dir", str(tmp_path / "src"), "--to", str(tmp_path / "hf")])
    return tmp_path / "hf"


def _weights(path):
    return {k: backend.asnumpy(v.data).copy()
            for k, v in hf.load_pretrained(path)[0].state_dict().items()}


def _assert_frozen(loaded, trained, frozen_prefixes):
    """Parameters under ``frozen_prefixes`` bit-identical to ``loaded``, every other changed."""
    assert list(loaded) == list(trained)
    for k in loaded:
        if k.startswith(frozen_prefixes):
            np.testing.assert_array_equal(trained[k], loaded[k], err_msg=k)
        else:
            assert not np.array_equal(trained[k], loaded[k]), f"{k} did not train"


GPT_FROZEN = ("transformer.wte.", "transformer.wpe.", "transformer.h.0.", "lm_head.")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_freeze_layers_keeps_the_embeddings_and_first_blocks_as_loaded(tmp_path, data,
                                                                       workers):
    hf_path = _exported(tmp_path)
    loaded = _weights(hf_path)
    log = _train(tmp_path / "tuned", "--init-from", str(hf_path), "--freeze-layers", "1",
                 "--workers", workers)
    assert log["config"]["freeze_layers"] == 1 and log["workers"] == int(workers)
    _assert_frozen(loaded, _weights(tmp_path / "tuned"), GPT_FROZEN)   # the head is wte


def test_freeze_layers_holds_on_resume(tmp_path, data):
    hf_path = _exported(tmp_path)
    loaded = _weights(hf_path)
    _train(tmp_path / "tuned", "--init-from", str(hf_path), "--freeze-layers", "1")

    def resume(*extra):         # no --preset: the tiny preset's --n-layer 1 is not the run's
        return cli.main(["train", "--resume", "--out-dir", str(tmp_path / "tuned"), "--quiet",
                         "--max-iters", "5", *extra])

    assert len(resume()["train_loss"]) == 5
    _assert_frozen(loaded, _weights(tmp_path / "tuned"), GPT_FROZEN)
    with pytest.raises(ValueError, match="--freeze-layers 0 .the run has --freeze-layers 1"):
        resume("--max-iters", "6", "--freeze-layers", "0")


def test_freeze_every_block_of_an_untied_llama_trains_the_norm_and_head(tmp_path, data):
    hf_path = _exported(tmp_path, "--model", "llama", "--no-tie-embeddings")
    loaded = _weights(hf_path)
    _train(tmp_path / "tuned", "--init-from", str(hf_path), "--freeze-layers", "2")
    _assert_frozen(loaded, _weights(tmp_path / "tuned"), ("model.embed_tokens.", "model.layers."))


def test_new_head_reinitialises_an_untied_llama_head_only(tmp_path, data):
    hf_path = _exported(tmp_path, "--model", "llama", "--no-tie-embeddings")
    loaded = _weights(hf_path)
    cfg = TrainConfig(**{**PRESETS["tiny"], **hf.train_settings(hf_path)},
                      out_dir=str(tmp_path / "tuned"), init_from=str(hf_path), new_head=True,
                      workers=1, seed=7)
    with run_setup.setup_run(cfg, quiet=True) as run:
        start = {k: backend.asnumpy(v.data) for k, v in run.model.state_dict().items()}
        trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}
    for k in loaded:
        if k != "lm_head.weight":
            np.testing.assert_array_equal(start[k], loaded[k], err_msg=k)
    assert not np.array_equal(start["lm_head.weight"], loaded["lm_head.weight"])
    tl.manual_seed(7)                                   # a fresh model's head, from --seed
    fresh = Llama(model_config(cfg, run.model.config.vocab_size))
    np.testing.assert_array_equal(start["lm_head.weight"],
                                  backend.asnumpy(fresh.lm_head.weight.data))
    assert trainable == set(start)                      # nothing frozen without --freeze-layers


def test_fine_tuning_flags_refused_are_one_line(tmp_path, data, capsys):
    hf_path = _exported(tmp_path)                       # a GPT: tied head

    def error(*argv):
        assert cli.run(["train", "--preset", "tiny", "--out-dir", str(tmp_path / "x"),
                        *argv]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        return err

    assert "is the token embedding matrix" in error("--init-from", str(hf_path), "--new-head")
    assert "--freeze-layers 1 needs --init-from" in error("--freeze-layers", "1")
    assert "--new-head needs --init-from" in error("--model", "llama", "--no-tie-embeddings",
                                                   "--new-head")
    assert "more than the model's 2 blocks" in error("--init-from", str(hf_path),
                                                     "--freeze-layers", "3")
    assert not (tmp_path / "x").exists()
    with pytest.raises(TypeError, match="a GPT or a Llama, got object"):
        hf.freeze_layers(object(), 1)

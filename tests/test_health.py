"""Training-health numbers (tinyllm.health) against hand computations, and in the train CLI."""
import json
import math

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import backend, cli, health, kernels
from tinyllm import functional as F
from tinyllm.autograd.graph import nodes
from tinyllm.models import (GPT, LSTMLM, BertConfig, BertForPreTraining, GPTConfig, LSTMLMConfig,
                            Seq2SeqConfig, Seq2SeqTransformer)
from tinyllm.nn import MultiHeadAttention
from tinyllm.ops.attention import QKVSelfAttention
from tinyllm.ops.softmax import Softmax
from tinyllm.optim import SGD


def _gpt(**kw):
    cfg = {"block_size": 8, "vocab_size": 11, "n_layer": 2, "n_head": 2, "n_embd": 8, **kw}
    return GPT(GPTConfig(**cfg))


def _batch(B=3, T=8, V=11, seed=0):
    return np.random.default_rng(seed).integers(0, V, (B, T))


def _host(a):
    return backend.asnumpy(a).astype(np.float64)


# ----------------------------------------------------------------------------------------------
# attention entropy

@pytest.mark.parametrize("dropout,impl", [(0.0, "auto"),      # fused QKVSelfAttention
                                          (0.2, "auto"),      # weight dropout: composed
                                          (0.0, "numpy")])    # readable: composed Softmax
def test_uniform_causal_attention_has_the_mean_of_log_visible_keys(dropout, impl):
    """Zero query/key weights: every score is 0, so query i spreads evenly over its i + 1
    visible keys and the mean entropy over positions is mean_i log(i + 1) = the maximum."""
    model = _gpt(dropout=dropout)
    C = model.config.n_embd
    for block in model.transformer.h:
        block.attn.c_attn.weight.data[:, :2 * C] = 0               # q and k columns
        block.attn.c_attn.bias.data[...] = 0
    x = _batch()
    with kernels.using(impl):
        _, loss = model(x, x)
    stats = health.attention_stats(loss, model)
    expected = np.mean(np.log(np.arange(1, 9)))
    assert list(stats) == ["transformer.h.0.attn", "transformer.h.1.attn"]
    for s in stats.values():
        np.testing.assert_allclose(s["entropy"], [expected] * 2, rtol=1e-6)
        np.testing.assert_allclose(s["max"], [expected] * 2, rtol=1e-12)
    assert health.attention_entropy(loss, model) == {k: v["entropy"] for k, v in stats.items()}


@pytest.mark.parametrize("dropout,impl", [(0.0, "auto"),      # fused op with a mask
                                          (0.5, "auto"),      # weight dropout: composed
                                          (0.0, "numpy")])    # readable: composed Softmax
def test_uniform_attention_over_unpadded_keys(dropout, impl):
    """Key padding: batch row b sees its n_b real keys; uniform entropy is log(n_b)."""
    mha = MultiHeadAttention(8, 2, dropout=dropout)
    for proj in (mha.q_proj, mha.k_proj):
        proj.weight.data[...] = 0
        proj.bias.data[...] = 0
    x = tl.tensor(np.random.default_rng(1).standard_normal((3, 5, 8)).astype(np.float32),
                  requires_grad=True)
    pad = np.zeros((3, 5), dtype=bool)
    pad[1, 3:] = True                                               # row 1: 3 real keys
    pad[2, 1:] = True                                               # row 2: 1 real key
    with kernels.using(impl):
        loss = mha(x, key_padding_mask=pad).sum()
    (s,) = health.attention_stats(loss, mha).values()
    expected = np.mean(np.log([5, 3, 1]))
    np.testing.assert_allclose(s["entropy"], [expected] * 2, rtol=1e-6)
    np.testing.assert_allclose(s["max"], [expected] * 2, rtol=1e-12)


def test_one_hot_attention_has_zero_entropy():
    # q = k = 50 I: scores 1250 on the diagonal, 0 elsewhere, so e^-1250 underflows to exactly
    # 0 and every query puts all its weight on its own key; non-causal, 4 visible keys each
    eye = (50 * np.eye(4, dtype=np.float32))[None, None]            # (1, 1, 4, 4)
    q = tl.tensor(eye, requires_grad=True)
    k = tl.tensor(eye.copy(), requires_grad=True)
    v = tl.tensor(np.ones_like(eye), requires_grad=True)
    stats = health.attention_stats(F.attention(q, k, v).sum())
    assert stats == {"ScaledDotProductAttention": {"entropy": [0.0], "max": [math.log(4)]}}
    # a mask that leaves one key per query: one-hot, and the maximum is log 1 = 0 too
    q2 = tl.tensor(np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float32),
                   requires_grad=True)
    mask = ~np.eye(4, dtype=bool)
    stats = health.attention_stats(F.attention(q2, k, v, mask=mask).sum())
    assert stats == {"ScaledDotProductAttention": {"entropy": [0.0], "max": [0.0]}}


@pytest.mark.parametrize("impl", ["numpy", "auto"])     # composed Softmax / fused op
def test_random_gpt_entropy_matches_numpy(impl):
    model = _gpt(n_head=4, n_embd=16)
    x = _batch(B=2, T=7, seed=3)
    with kernels.using(impl):
        _, loss = model(x, x)
    got = health.attention_entropy(loss, model)

    def entropy(p):                                                 # (B, H, T, T) -> (H,)
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.nansum(p * np.log(p), axis=-1).mean(axis=(0, 2))

    # every layer, from the weights the attention saved (the fused op's P, Softmax's y)
    saved = [_host(ctx.p) for ctx in nodes(loss) if isinstance(ctx, QKVSelfAttention)]
    saved += [_host(ctx.y) for ctx in nodes(loss) if isinstance(ctx, Softmax)]
    assert len(saved) == 2
    for p, name in zip(saved, ["transformer.h.0.attn", "transformer.h.1.attn"]):
        np.testing.assert_allclose(got[name], entropy(p), rtol=1e-6)
        assert 0 < min(got[name]) and max(got[name]) < np.mean(np.log(np.arange(1, 8)))
    # layer 0 recomputed from the parameters in float64 NumPy, independently of the op
    sd = {k: _host(v.data) for k, v in model.named_parameters()}
    h = sd["transformer.wte.weight"][x] + sd["transformer.wpe.weight"][:7]
    mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    h = (h - mu) / np.sqrt(var + 1e-5) * sd["transformer.h.0.ln_1.weight"] \
        + sd["transformer.h.0.ln_1.bias"]
    qkv = h @ sd["transformer.h.0.attn.c_attn.weight"] + sd["transformer.h.0.attn.c_attn.bias"]
    q, k = (qkv[..., i * 16:(i + 1) * 16].reshape(2, 7, 4, 4).transpose(0, 2, 1, 3)
            for i in range(2))
    s = q @ k.transpose(0, 1, 3, 2) / 2.0 + np.triu(np.full((7, 7), -np.inf), 1)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(got["transformer.h.0.attn"], entropy(p), rtol=1e-4)


def test_attention_stats_needs_the_graph_before_backward():
    model = _gpt()
    x = _batch()
    _, loss = model(x, x)
    loss.backward()                                      # frees the saved weights
    assert health.attention_stats(loss, model) == {}


# ----------------------------------------------------------------------------------------------
# gradient norms, update ratios

def test_grad_norms_are_root_sums_of_squares():
    model = _gpt()
    x = _batch()
    model(x, x)[1].backward()
    sq = {}
    for name, p in model.named_parameters():
        group = ".".join(name.split(".")[:3]) if name.startswith("transformer.h.") \
            else name.rsplit(".", 1)[0]
        sq[group] = sq.get(group, 0.0) + float((_host(p.grad) ** 2).sum())
    got = health.grad_norms(model)
    assert list(got) == ["transformer.wte", "transformer.wpe", "transformer.h.0",
                         "transformer.h.1", "transformer.ln_f"]
    np.testing.assert_allclose([got[k] for k in sq], np.sqrt(list(sq.values())), rtol=1e-12)
    per_param = health.grad_norms(model, by="parameter")
    assert list(per_param) == [n for n, _ in model.named_parameters()]   # lm_head tied: once
    for name, p in model.named_parameters():
        assert per_param[name] == pytest.approx(np.sqrt((_host(p.grad) ** 2).sum()), rel=1e-12)
    by_module = health.grad_norms(model, by="module")
    assert "transformer.h.1.attn.c_attn" in by_module
    with pytest.raises(ValueError, match="by must be"):
        health.grad_norms(model, by="block")


def test_layer_grouping_for_other_models():
    def groups(model):
        return list(dict.fromkeys(health.layer_name(n) for n, _ in model.named_parameters()))

    bert = BertForPreTraining(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=16,
                                         max_position_embeddings=8))
    assert {"bert.encoder.layer.0", "bert.encoder.layer.1",
            "bert.embeddings.word_embeddings"} <= set(groups(bert))
    s2s = Seq2SeqTransformer(Seq2SeqConfig(src_vocab_size=10, n_embd=8, n_head=2, d_ff=16,
                                           num_encoder_layers=2, num_decoder_layers=1))
    assert groups(s2s)[:4] == ["src_embed", "encoder.0", "encoder.1", "decoder.0"]
    lstm = LSTMLM(LSTMLMConfig(vocab_size=10, n_embd=8, n_hidden=8, n_layer=2))
    assert groups(lstm) == ["wte", "lstm.l0", "lstm.l1", "lm_head"]
    assert health.layer_name("bias") == "bias"
    assert health.layer_name("rnn.weight_hh_l2_reverse") == "rnn.l2"


def test_sgd_update_ratio_is_lr_times_grad_norm_over_weight_norm():
    tl.set_default_dtype(np.float64)
    model = _gpt(bias=False)
    x = _batch()
    model(x, x)[1].backward()
    before = health.snapshot(model)
    lr = 0.1
    SGD(model.parameters(), lr=lr).step()
    for by in ("layer", "parameter"):
        g = health.grad_norms(model, by=by)
        w = {}
        for name, _ in model.named_parameters():
            k = health.layer_name(name) if by == "layer" else name
            w[k] = w.get(k, 0.0) + float((_host(before[name]) ** 2).sum())
        got = health.update_ratios(model, before, by=by)
        assert list(got) == list(g)
        for k in got:
            assert got[k] == pytest.approx(lr * g[k] / math.sqrt(w[k]), rel=1e-12)


def test_zero_weights_give_nan_ratio_and_null_in_the_record():
    model = _gpt()                                       # biases start at 0
    x = _batch()
    model(x, x)[1].backward()
    before = health.snapshot(model)
    SGD(model.parameters(), lr=0.1).step()
    ratios = health.update_ratios(model, before, by="parameter")
    assert math.isnan(ratios["transformer.h.0.attn.c_attn.bias"])
    rec = health.record(3, update_ratios=ratios)
    assert rec["update_ratio/transformer.h.0.attn.c_attn.bias"] is None
    json.dumps(rec, allow_nan=False)


def test_record_keys_and_plot(tmp_path):
    model = _gpt()
    x = _batch()
    records = []
    for step in range(3):
        _, loss = model(x, x)
        attn = health.attention_stats(loss, model)
        loss.backward()
        norms, before = health.grad_norms(model), health.snapshot(model)
        SGD(model.parameters(), lr=0.05).step()
        model.zero_grad()
        records.append(health.record(step, norms, health.update_ratios(model, before), attn,
                                     lr=0.05))
    rec = records[-1]
    assert rec["step"] == 2 and rec["lr"] == 0.05
    assert rec["grad_norm/total"] == pytest.approx(
        math.sqrt(sum(v * v for k, v in rec.items() if k.startswith("grad_norm/transformer"))))
    assert {"update_ratio/transformer.h.1", "attn_entropy/transformer.h.1.attn/head1",
            "attn_entropy_max/transformer.h.0.attn"} <= set(rec)
    path = tmp_path / "health.png"
    pytest.importorskip("matplotlib")
    assert health.plot_health(records, path) == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert [p.name for p in tmp_path.iterdir()] == ["health.png"]       # no temp file left


# ----------------------------------------------------------------------------------------------
# the train command

def _train(out, *extra):
    return cli.main(["train", "--preset", "tiny", "--out-dir", str(out), "--quiet", *extra])


def test_train_logs_health_and_draws_it(tmp_path, shared_data):
    log = _train(tmp_path / "run", "--health-every", "5")
    saved = json.loads((tmp_path / "run" / "log.json").read_text())
    assert saved["health"] == log["health"]
    assert [h["step"] for h in saved["health"]] == [0, 5, 10, 15]
    assert {"train_loss", "eval", "config"} <= set(saved)
    for h in saved["health"]:
        assert {"lr", "grad_norm/transformer.wte", "grad_norm/transformer.h.0",
                "grad_norm/total", "update_ratio/transformer.h.0",
                "attn_entropy/transformer.h.0.attn/head0",
                "attn_entropy/transformer.h.0.attn/head1",
                "attn_entropy_max/transformer.h.0.attn"} <= set(h)
        assert 0 < h["attn_entropy/transformer.h.0.attn/head0"] \
            <= h["attn_entropy_max/transformer.h.0.attn"] + 1e-9
        if h["step"] == 0:                     # warmup (tiny: 2 steps): lr 1e-3 * 1 / 3
            assert h["lr"] == pytest.approx(1e-3 / 3, rel=1e-12)
        assert 0 < h["update_ratio/transformer.h.0"] < 1
    assert saved["health"][0]["attn_entropy_max/transformer.h.0.attn"] == pytest.approx(
        np.mean(np.log(np.arange(1, 17))))                                # block_size 16
    pytest.importorskip("matplotlib")
    assert (tmp_path / "run" / "health.png").stat().st_size > 5000


def test_health_changes_no_training_number(tmp_path, shared_data):
    """Measuring every step (dropout on: the composed attention path, random masks) gives
    bit-identical losses to not measuring; a resumed run records the same health numbers."""
    off = _train(tmp_path / "off", "--dropout", "0.1", "--health-every", "0")
    on = _train(tmp_path / "on", "--dropout", "0.1", "--health-every", "1")
    assert on["train_loss"] == off["train_loss"] and on["eval"] == off["eval"]
    assert off["health"] == [] and not (tmp_path / "off" / "health.png").exists()
    assert len(on["health"]) == 20
    _train(tmp_path / "b", "--dropout", "0.1", "--health-every", "1", "--max-iters", "10")
    resumed = _train(tmp_path / "b", "--dropout", "0.1", "--health-every", "1", "--resume")
    assert resumed["train_loss"] == on["train_loss"]
    assert resumed["health"] == on["health"]

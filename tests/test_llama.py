"""Today's small decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention and the Llama model.

The golden test mirrors tests/test_gpt_golden.py: Hugging Face's ``LlamaForCausalLM`` (PyTorch,
an independent implementation) and tinyllm's ``Llama`` built from the same random weights, in
float64, must agree on the logits, the loss, every parameter gradient and 10 AdamW steps. The
config has grouped-query attention (2 key/value heads for 4 query heads).

HF computes two things in float32 whatever the model's dtype: LlamaRMSNorm (``.to(float32)``)
and the RoPE tables (``LlamaRotaryEmbedding.forward``, from a float32 ``inv_freq``). That caps
the agreement near 1e-7, so the golden fixture patches those two forwards with the same
formulas in float64 (``_hf_float64``); ``test_unpatched_hf_agrees_to_float32_precision`` checks
HF as shipped at float32 precision. Attention is HF's "sdpa" path (float64 throughout; "eager"
casts its softmax to float32 too).
"""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm import backend, kernels, nn
from tinyllm import functional as F
from tinyllm.autograd.gradcheck import gradcheck, gradcheck_module
from tinyllm.generate import beam_search, generate
from tinyllm.models import GPT, GPTConfig, Llama, LlamaConfig
from tinyllm.optim import AdamW

from tests.golden import adamw_steps, assert_close, hf_loss, tl_loss

V, T_MAX, L, H, H_KV, C, D_FF = 37, 16, 2, 4, 2, 16, 24   # vocab, positions, layers, heads, ...
B, T = 3, 12
THETA, EPS_RMS = 100.0, 1e-5
RTOL = 1e-9                                   # forward and gradients, float64
RTOL_STEPS = 1e-8                             # losses and parameters after AdamW steps
LR, BETAS, EPS, WEIGHT_DECAY = 1e-3, (0.9, 0.99), 1e-8, 0.1


def _np(a):
    return backend.asnumpy(a.data if isinstance(a, tl.Tensor) else a)


def _x(*shape, seed=0):
    return tl.tensor(np.random.default_rng(seed).standard_normal(shape), dtype=np.float64,
                     requires_grad=True)


# ----------------------------------------------------------------------------------------------
# the golden test against Hugging Face's LlamaForCausalLM

def _hf_config(transformers, tie=False):
    return transformers.LlamaConfig(
        vocab_size=V, hidden_size=C, intermediate_size=D_FF, num_hidden_layers=L,
        num_attention_heads=H, num_key_value_heads=H_KV, max_position_embeddings=T_MAX,
        rms_norm_eps=EPS_RMS, rope_theta=THETA, tie_word_embeddings=tie, hidden_act="silu",
        attention_dropout=0.0, attn_implementation="sdpa", bos_token_id=V - 1,
        eos_token_id=V - 1, pad_token_id=None)


def _hf_model(torch, transformers, tie=False):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(_hf_config(transformers, tie)).double()
    with torch.no_grad():                     # RMSNorm weights start at 1: perturb everything
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture
def _hf_float64(monkeypatch):
    """HF's LlamaRMSNorm and RoPE tables, computed in the model's dtype (float64) instead of
    float32: the same formulas, without the casts."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.llama import modeling_llama as ml

    def rms_forward(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True)
                                              + self.variance_epsilon))

    def rope_forward(self, x, position_ids):
        dim = self.inv_freq.shape[0] * 2
        base = self.config.rope_parameters["rope_theta"]
        inv_freq = 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        freqs = position_ids[..., None].to(torch.float64) * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    monkeypatch.setattr(ml.LlamaRMSNorm, "forward", rms_forward)
    monkeypatch.setattr(ml.LlamaRotaryEmbedding, "forward", rope_forward)


def _tinyllm_copy(hf):
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    return Llama.from_hf(hf.config.to_dict(), sd, dtype=np.float64)


@pytest.fixture
def models(_hf_float64):
    import torch
    import transformers
    hf = _hf_model(torch, transformers)
    return torch, hf, _tinyllm_copy(hf)


@pytest.fixture
def idx():
    return np.random.default_rng(0).integers(0, V, (B, T))


def test_hf_names_and_layouts_map_one_to_one(models):
    torch, hf, model = models
    hf_sd, sd = hf.state_dict(), model.state_dict()
    assert sd.keys() == hf_sd.keys() and len(sd) == 3 + 9 * L
    for k, v in sd.items():
        want = tuple(hf_sd[k].shape)
        assert v.shape == (want[::-1] if k.endswith("_proj.weight") or k == "lm_head.weight"
                           else want), k
    assert sd["model.layers.0.self_attn.k_proj.weight"].shape == (C, H_KV * C // H)   # GQA


def test_logits_and_loss_match_hf_llama(models, idx):
    torch, hf, model = models
    with torch.no_grad():
        hf_logits = hf(torch.from_numpy(idx)).logits
        want = hf_loss(torch, hf, torch.from_numpy(idx))
    logits = model(idx)
    assert logits.dtype == np.float64 and hf_logits.dtype == torch.float64
    assert_close(logits.data, hf_logits.numpy(), RTOL, "logits (B, T, V)")
    loss = tl_loss(model, idx)
    assert loss.item() == pytest.approx(want.item(), rel=RTOL)
    assert 3.0 < loss.item() < 4.5                       # near log(37) = 3.61: not degenerate


def test_every_parameter_gradient_matches_hf_llama(models, idx):
    torch, hf, model = models
    hf_loss(torch, hf, torch.from_numpy(idx)).backward()
    tl_loss(model, idx).backward()
    hf_grads = {n: p.grad.numpy() for n, p in hf.named_parameters()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads.keys() == hf_grads.keys() and len(grads) == 3 + 9 * L
    for name, g in grads.items():
        want = hf_grads[name]
        want = want.T if name.endswith("_proj.weight") or name == "lm_head.weight" else want
        assert np.abs(want).max() > 0, name
        assert_close(g, want, RTOL, f"d{name}")


def test_loss_after_10_adamw_steps_matches_torch(models):
    torch, hf, model = models
    batches = np.random.default_rng(1).integers(0, V, (10, B, T))
    hf_losses, losses = adamw_steps(torch, hf, model, batches, LR, BETAS, EPS, WEIGHT_DECAY)
    np.testing.assert_allclose(losses, hf_losses, rtol=RTOL_STEPS)
    after = tl_loss(model, batches[0]).item()
    assert after < hf_losses[0]                            # it trains: batch 0 got easier
    hf_params = dict(hf.named_parameters())
    for name, p in model.named_parameters():
        want = hf_params[name].detach().numpy()
        want = want.T if name.endswith("_proj.weight") or name == "lm_head.weight" else want
        assert_close(p.data, want, RTOL_STEPS, name)


def test_tied_embeddings_and_greedy_decoding_match_hf(_hf_float64):
    """tie_word_embeddings: lm_head is embed_tokens (one parameter); HF's greedy generate
    (its own KV cache) and tinyllm's give the same tokens."""
    import torch
    import transformers
    hf = _hf_model(torch, transformers, tie=True)
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    model = Llama.from_hf(hf.config.to_dict(), sd, dtype=np.float64)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    prompt = np.random.default_rng(5).integers(0, V, (2, 4))
    with torch.no_grad():
        assert_close(model(prompt).data, hf(torch.from_numpy(prompt)).logits.numpy(), RTOL,
                     "tied logits")
        want = hf.generate(torch.from_numpy(prompt), max_new_tokens=8, do_sample=False,
                           attention_mask=torch.ones(2, 4, dtype=torch.long)).numpy()
    got = generate(model, prompt, 8, greedy=True)
    np.testing.assert_array_equal(got, want)


def test_unpatched_hf_agrees_to_float32_precision(idx):
    """HF as shipped (float32 RMSNorm and RoPE tables) is within float32 rounding."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf = _hf_model(torch, transformers)
    model = _tinyllm_copy(hf)
    with torch.no_grad():
        hf_logits = hf(torch.from_numpy(idx)).logits.numpy()
    assert_close(model(idx).data, hf_logits, 1e-5, "logits vs float32-cast HF")


def test_from_hf_rejects_what_it_does_not_implement():
    base = dict(vocab_size=V, hidden_size=C, intermediate_size=D_FF, num_hidden_layers=1,
                num_attention_heads=H, num_key_value_heads=H_KV)
    with pytest.raises(ValueError, match="rope type 'linear'"):
        LlamaConfig.from_hf({**base, "rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        LlamaConfig.from_hf({**base, "hidden_act": "gelu"})
    with pytest.raises(ValueError, match="must be a multiple of n_kv_head"):
        LlamaConfig.from_hf({**base, "num_key_value_heads": 3})
    cfg = LlamaConfig.from_hf({**base, "rope_theta": 500.0})
    assert (cfg.n_kv_head, cfg.rope_theta, cfg.hidden_size) == (H_KV, 500.0, C)


def test_gpt_from_hf_matches_gpt2():
    """GPT.from_hf: GPT2LMHeadModel's config dict and state dict (buffers and all) in, the same
    logits out."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=V, n_positions=T_MAX, n_layer=L, n_head=2,
                                     n_embd=C, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     attn_implementation="eager")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).double().eval()
    model = GPT.from_hf(config.to_dict(), hf.state_dict(), dtype=np.float64)
    assert model.config == GPTConfig(block_size=T_MAX, vocab_size=V, n_layer=L, n_head=2,
                                     n_embd=C, dropout=0.0, bias=True, gelu="tanh")
    idx = np.random.default_rng(0).integers(0, V, (2, 7))
    with torch.no_grad():
        want = hf(torch.from_numpy(idx)).logits.numpy()
    assert_close(model(idx).data, want, RTOL, "GPT-2 logits")
    with pytest.raises(ValueError, match="activation_function 'relu'"):
        GPT.from_hf({**config.to_dict(), "activation_function": "relu"}, hf.state_dict())


# ----------------------------------------------------------------------------------------------
# the model with the KV cache, generate() and beam search

def _small(**kw):
    cfg = dict(block_size=T_MAX, vocab_size=11, n_layer=2, n_head=4, n_kv_head=2, n_embd=16,
               intermediate_size=24, rope_theta=THETA)
    tl.manual_seed(0)
    return Llama(LlamaConfig(**{**cfg, **kw})).double().eval()


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
@pytest.mark.parametrize("impl", ["numpy", "auto"])
def test_kv_cache_equals_recompute(impl, n_kv_head):
    """A prompt, then one token at a time through the cache (RoPE offset by the cached length):
    the logits of the full forward. The cache holds n_kv_head heads."""
    m = _small(n_kv_head=n_kv_head)
    idx = np.random.default_rng(2).integers(0, 11, (2, 9))
    with kernels.using(impl):
        full = _np(m(idx))
        cache = m.new_cache()
        parts = [_np(m(idx[:, :3], cache=cache))]
        parts += [_np(m(idx[:, t:t + 2], cache=cache)) for t in (3, 5)]
        parts += [_np(m(idx[:, t:t + 1], cache=cache)) for t in range(7, 9)]
    assert cache.length == 9 and cache[0].view()[0].shape == (2, n_kv_head, 9, 4)  # (B,Hkv,T,D)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-12, atol=1e-12)


def test_generate_greedy_and_beam_search_run_on_llama():
    m = _small()
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    with_cache = generate(m, prompt, 6, greedy=True)
    without = generate(m, prompt, 6, greedy=True, use_cache=False)
    assert with_cache.shape == (2, 9)
    np.testing.assert_array_equal(with_cache, without)
    longer = generate(m, prompt, T_MAX + 4, greedy=True)          # past block_size: windowed
    assert longer.shape == (2, T_MAX + 7)
    sampled = generate(m, prompt, 5, rng=np.random.default_rng(0), top_k=3)
    assert sampled.shape == (2, 8) and sampled.max() < 11

    def next_logits(seqs):
        return m(seqs[:, -T_MAX:]).numpy()[:, -1]

    (greedy, _), = beam_search(next_logits, prompt[:1], beam_width=1, max_new_tokens=6)
    np.testing.assert_array_equal(greedy, with_cache[0])          # width 1 is greedy
    results = beam_search(next_logits, prompt, beam_width=3, max_new_tokens=5, eos_id=0)
    assert len(results) == 2 and all(len(tokens) >= 4 for tokens, _ in results)


def test_llama_trains_and_counts_parameters():
    m = _small(n_layer=1, tie_word_embeddings=True)
    m.train()
    assert m.num_params() == m.num_parameters()                 # tied: embeddings are the head
    assert m.num_params(non_embedding=False) == (11 * 16 + 16 * (16 + 8 + 8 + 16)
                                                 + 3 * 16 * 24 + 3 * 16)
    opt = AdamW(m.parameters(), lr=1e-2)
    idx = np.random.default_rng(0).integers(0, 11, (4, 8))
    losses = []
    for _ in range(20):
        opt.zero_grad()
        _, loss = m(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ----------------------------------------------------------------------------------------------
# the layers: gradchecks in float64, and PyTorch as the oracle

def test_rms_norm_module_gradcheck_and_torch():
    norm = nn.RMSNorm(5, eps=1e-5).double()
    norm.weight.data[...] = np.random.default_rng(1).standard_normal(5)
    x = _x(2, 3, 5)
    assert gradcheck_module(norm, x)
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x.numpy(), requires_grad=True)
    tw = torch.tensor(norm.weight.numpy(), requires_grad=True)
    ty = torch.nn.functional.rms_norm(tx, (5,), tw, eps=1e-5)
    dout = np.random.default_rng(2).standard_normal((2, 3, 5))
    ty.backward(torch.from_numpy(dout))
    y = norm(x)
    y.backward(dout)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(norm.weight.grad, tw.grad.numpy(), rtol=1e-12, atol=1e-12)
    # torch's default eps is the machine epsilon of the dtype: so is ours
    ty0 = torch.nn.functional.rms_norm(tx, (5,))
    np.testing.assert_allclose(F.rms_norm(x, 5).numpy(), ty0.detach().numpy(), rtol=1e-12)


def test_rms_norm_errors():
    with pytest.raises(ValueError, match="rms_norm: normalized_shape must be the size"):
        F.rms_norm(_x(2, 4), 3)
    with pytest.raises(ValueError, match=r"rms_norm: weight shape \(3,\)"):
        F.rms_norm(_x(2, 4), 4, weight=np.ones(3))
    with pytest.raises(TypeError, match="rms_norm: the input must be a float tensor"):
        F.rms_norm(tl.tensor(np.ones((2, 4), np.int64)), 4)


def test_rope_gradcheck_rotation_and_relative_positions():
    rot = nn.RotaryEmbedding(8, max_positions=4, base=THETA)
    x = _x(2, 3, 6, 8)                                   # past max_positions: tables extend
    assert gradcheck(lambda t: rot(t, offset=5), [x])
    y = rot(x, offset=5).numpy()
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x.numpy(), axis=-1))
    # a query at position m and a key at n: the score depends on n - m only
    q, k = np.random.default_rng(3).standard_normal((2, 1, 1, 1, 8))

    def score(m, n):
        return float((rot(tl.tensor(q), offset=m).numpy() * rot(tl.tensor(k), offset=n).numpy()
                      ).sum())
    assert score(2, 5) == pytest.approx(score(9, 12), rel=1e-12)
    assert score(2, 5) != pytest.approx(score(2, 6), rel=1e-3)


def test_rope_matches_hf_apply_rotary_pos_emb():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    q, k = _x(2, 4, 5, 8, seed=1), _x(2, 2, 5, 8, seed=2)
    cos, sin = F.rope_cos_sin(np.arange(3, 8), 8, THETA, dtype=np.float64)
    tq, tk = apply_rotary_pos_emb(torch.from_numpy(q.numpy()), torch.from_numpy(k.numpy()),
                                  torch.from_numpy(cos)[None], torch.from_numpy(sin)[None])
    np.testing.assert_allclose(F.rope(q, cos, sin).numpy(), tq.numpy(), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(F.rope(k, cos, sin).numpy(), tk.numpy(), rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match=r"rope: cos and sin must both have shape \(T, D\)"):
        F.rope(q, cos[:4], sin[:4])
    with pytest.raises(ValueError, match="rope: cos and sin are constant tables"):
        F.rope(q, tl.tensor(cos, requires_grad=True), sin)


def test_swiglu_gradcheck_and_formula():
    ff = nn.SwiGLU(6, 10).double()
    x = _x(2, 3, 6)
    assert gradcheck_module(ff, x)
    g, u = x.numpy() @ ff.gate_proj.weight.numpy(), x.numpy() @ ff.up_proj.weight.numpy()
    want = (g / (1 + np.exp(-g)) * u) @ ff.down_proj.weight.numpy()
    np.testing.assert_allclose(ff(x).numpy(), want, rtol=1e-12, atol=1e-12)
    assert sorted(n for n, _ in ff.named_parameters()) == [
        "down_proj.weight", "gate_proj.weight", "up_proj.weight"]


@pytest.mark.parametrize("n_kv_head", [1, 2])
def test_gqa_attention_gradcheck_and_torch_sdpa(n_kv_head):
    """Grouped-query attention: every parameter and the input by finite differences; the
    output equals PyTorch's sdpa with enable_gqa on the same projections."""
    tl.manual_seed(0)
    att = nn.MultiHeadAttention(8, 4, bias=False, causal=True, n_kv_head=n_kv_head).double()
    x = _x(2, 5, 8)
    assert att.k_proj.weight.shape == (8, n_kv_head * 2)
    assert gradcheck_module(att, x)
    torch = pytest.importorskip("torch")

    def heads(w, n):
        return torch.from_numpy(x.numpy() @ w.numpy()).reshape(2, 5, n, 2).transpose(1, 2)

    q, k, v = (heads(att.q_proj.weight, 4), heads(att.k_proj.weight, n_kv_head),
               heads(att.v_proj.weight, n_kv_head))
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                         enable_gqa=True)
    want = y.transpose(1, 2).reshape(2, 5, 8).numpy() @ att.out_proj.weight.numpy()
    np.testing.assert_allclose(att(x).numpy(), want, rtol=1e-12, atol=1e-12)


def test_additive_float_mask():
    """A float attn_mask is added to the scores: 0 / -inf equals the boolean mask, a finite
    bias equals PyTorch's float mask, and a bias Tensor gets its gradient."""
    tl.manual_seed(1)
    att = nn.MultiHeadAttention(8, 2, bias=False, n_kv_head=1).double()
    x = _x(2, 4, 8)
    hidden = np.triu(np.ones((4, 4), bool), 1)
    np.testing.assert_allclose(att(x, attn_mask=np.where(hidden, -np.inf, 0.0)).numpy(),
                               att(x, attn_mask=hidden).numpy(), rtol=1e-13, atol=1e-13)
    bias = tl.tensor(np.random.default_rng(4).standard_normal((2, 4, 4)), requires_grad=True)
    assert gradcheck(lambda b: att(x, attn_mask=b), [bias])
    # with a boolean causal mask on top (causal=True) and need_weights
    att.causal = True
    y, w = att(x, attn_mask=bias, need_weights=True)
    assert (w.numpy()[..., hidden] == 0).all()
    np.testing.assert_allclose(w.numpy().sum(-1), 1.0)
    torch = pytest.importorskip("torch")
    q = torch.from_numpy(x.numpy() @ att.q_proj.weight.numpy()).reshape(2, 4, 2, 4)
    kv = [torch.from_numpy(x.numpy() @ p.weight.numpy()).reshape(2, 4, 1, 4)
          for p in (att.k_proj, att.v_proj)]
    tmask = torch.from_numpy(np.where(hidden, -np.inf, bias.numpy()))[:, None]
    ty = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), kv[0].transpose(1, 2), kv[1].transpose(1, 2), attn_mask=tmask,
        enable_gqa=True)
    want = ty.transpose(1, 2).reshape(2, 4, 8).numpy() @ att.out_proj.weight.numpy()
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-12, atol=1e-12)


def test_gqa_errors_and_gpt_unchanged():
    with pytest.raises(ValueError, match="n_head 4 must be a multiple of n_kv_head, got "
                                         "n_kv_head 3"):
        nn.MultiHeadAttention(8, 4, n_kv_head=3)
    with pytest.raises(TypeError, match="masks must be boolean"):
        nn.MultiHeadAttention(4, 2)(tl.randn(2, 3, 4), attn_mask=np.zeros((3, 3), np.int64))
    assert nn.MultiHeadAttention(8, 4).n_kv_head == 4          # default: one kv head per head

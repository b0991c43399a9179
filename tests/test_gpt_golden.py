"""Golden test, in the style of llm.c's test_gpt2: tinyllm's GPT against Hugging Face's GPT-2.

An independent implementation (transformers' ``GPT2LMHeadModel``, in PyTorch) and tinyllm's
``GPT`` are built from the same weights. In float64 they must agree on the logits, the loss,
every parameter gradient, and the losses of 10 AdamW steps. GPT-2's names and (in, out) Conv1D
layouts are tinyllm's, so the weights copy over with a plain ``load_state_dict``.

The loss: HF's ``model(idx, labels=idx)`` shifts internally (logits[:, t] predicts
idx[:, t + 1], the last position has no target), but casts the logits to float32 first
(``logits.float()`` in ForCausalLMLoss), which would cap the agreement near 1e-7. So the
golden loss applies that same shift in float64 by hand; the float32 ``labels=`` loss is
checked at float32 precision. tinyllm computes the same quantity as ``model(idx[:, :-1],
idx[:, 1:])``: by causality, the first T - 1 logits do not depend on the last token.
"""
import numpy as np
import pytest

from tinyllm import backend
from tinyllm.models import GPT, GPTConfig
from tinyllm.models.gpt import convert_hf_gpt2_state_dict
from tests.golden import adamw_steps, assert_close, hf_loss, tl_loss

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V, T_MAX, L, H, C = 37, 16, 2, 2, 16          # vocab, positions, layers, heads, channels
B, T = 3, 12
RTOL = 1e-9                                   # forward and gradients, float64
RTOL_STEPS = 1e-8                             # losses after AdamW steps
LR, BETAS, EPS, WEIGHT_DECAY = 1e-3, (0.9, 0.99), 1e-8, 0.1


def _hf_model():
    config = transformers.GPT2Config(
        vocab_size=V, n_positions=T_MAX, n_layer=L, n_head=H, n_embd=C,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new",
        layer_norm_epsilon=1e-5, bos_token_id=V - 1, eos_token_id=V - 1)
    config._attn_implementation = "eager"     # the plain softmax(q k^T / sqrt(D)) v path
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).double()
    model.loss_type = "ForCausalLM"           # what labels= uses anyway, without a warning
    with torch.no_grad():                     # GPT-2's init leaves biases 0 and gains 1:
        for p in model.parameters():          # perturb everything so every term is exercised
            p.add_(0.05 * torch.randn_like(p))
    return model


def _tinyllm_copy(hf):
    model = GPT(GPTConfig(block_size=T_MAX, vocab_size=V, n_layer=L, n_head=H, n_embd=C,
                          dropout=0.0, bias=True)).double()
    # the same names and layouts, less HF's causal-mask buffers; strict: every name matches
    model.load_state_dict(convert_hf_gpt2_state_dict(hf.state_dict()))
    return model


@pytest.fixture
def models():
    hf = _hf_model()
    return hf, _tinyllm_copy(hf)


@pytest.fixture
def idx():
    return np.random.default_rng(0).integers(0, V, (B, T))


def test_logits_and_loss_match_hf_gpt2(models, idx):
    hf, model = models
    with torch.no_grad():
        hf_logits = hf(torch.from_numpy(idx)).logits
        want = hf_loss(torch, hf, torch.from_numpy(idx))
        hf_labels_loss = hf(torch.from_numpy(idx), labels=torch.from_numpy(idx)).loss
    logits = model(idx)
    assert logits.dtype == np.float64 and hf_logits.dtype == torch.float64
    assert_close(logits.data, hf_logits.numpy(), RTOL, "logits (B, T, V)")

    loss = tl_loss(model, idx)
    assert loss.item() == pytest.approx(want.item(), rel=RTOL)
    assert 3.0 < loss.item() < 4.5                       # near log(37) = 3.61: not degenerate
    assert hf_labels_loss.dtype == torch.float32         # HF's float32 cast, see the docstring
    assert loss.item() == pytest.approx(hf_labels_loss.item(), rel=1e-6)


def test_every_parameter_gradient_matches_hf_gpt2(models, idx):
    hf, model = models
    hf_loss(torch, hf, torch.from_numpy(idx)).backward()
    tl_loss(model, idx).backward()

    hf_grads = {n: p.grad.numpy() for n, p in hf.named_parameters()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    # both list a tied parameter once: lm_head.weight is transformer.wte.weight, and its
    # gradient is the sum of the embedding's and the output layer's contributions
    assert "lm_head.weight" not in hf_grads and "lm_head.weight" not in grads
    assert grads.keys() == hf_grads.keys() and len(grads) == 4 + 12 * L
    for name, g in grads.items():
        assert np.abs(hf_grads[name]).max() > 0 or name.endswith("wpe.weight"), name
        assert_close(g, hf_grads[name], RTOL, f"d{name}")
    assert (backend.asnumpy(grads["transformer.wpe.weight"])[T - 1:] == 0).all()  # unused rows


def test_loss_after_10_adamw_steps_matches_torch(models):
    hf, model = models
    batches = np.random.default_rng(1).integers(0, V, (10, B, T))
    hf_losses, losses = adamw_steps(torch, hf, model, batches, LR, BETAS, EPS, WEIGHT_DECAY)
    np.testing.assert_allclose(losses, hf_losses, rtol=RTOL_STEPS)
    with torch.no_grad():
        hf_after = hf_loss(torch, hf, torch.from_numpy(batches[0])).item()
    after = tl_loss(model, batches[0]).item()
    assert after == pytest.approx(hf_after, rel=RTOL_STEPS)
    assert after < hf_losses[0]                            # it trains: batch 0 got easier
    hf_params = dict(hf.named_parameters())
    for name, p in model.named_parameters():
        assert_close(p.data, hf_params[name].detach().numpy(), RTOL_STEPS, name)

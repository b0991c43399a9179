"""The GPT model: GPT-2 names and layouts, tying, causality, gradients, learning."""
import math

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import backend, kernels
from tinyllm.models import GPT, GPTConfig

TINY = dict(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8)


def _np(a):
    return backend.asnumpy(a)


def _model(**kw):
    tl.manual_seed(0)
    return GPT(GPTConfig(**{**TINY, **kw}))


def test_state_dict_uses_gpt2_names_and_layouts():
    m = _model(n_layer=1)
    sd = m.state_dict()
    C, V = 8, 11
    expected = {
        "transformer.wte.weight": (V, C), "transformer.wpe.weight": (8, C),
        "transformer.h.0.ln_1.weight": (C,), "transformer.h.0.ln_1.bias": (C,),
        "transformer.h.0.attn.c_attn.weight": (C, 3 * C), "transformer.h.0.attn.c_attn.bias":
        (3 * C,), "transformer.h.0.attn.c_proj.weight": (C, C),
        "transformer.h.0.attn.c_proj.bias": (C,),
        "transformer.h.0.ln_2.weight": (C,), "transformer.h.0.ln_2.bias": (C,),
        "transformer.h.0.mlp.c_fc.weight": (C, 4 * C), "transformer.h.0.mlp.c_fc.bias": (4 * C,),
        "transformer.h.0.mlp.c_proj.weight": (4 * C, C), "transformer.h.0.mlp.c_proj.bias": (C,),
        "transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,),
        "lm_head.weight": (V, C),
    }
    assert {k: v.shape for k, v in sd.items()} == expected
    assert m.lm_head.weight is m.transformer.wte.weight                  # tied
    assert sum(1 for _ in m.parameters()) == len(expected) - 1            # counted once


def test_parameter_count_matches_the_gpt2_formula():
    m = _model(n_layer=3, n_embd=16, n_head=4, vocab_size=50, block_size=12)
    L, C, V, T = 3, 16, 50, 12
    per_block = (2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C)
                 + (4 * C * C + C))
    assert m.num_parameters() == V * C + T * C + L * per_block + 2 * C
    assert m.num_params() == m.num_parameters() - T * C


def test_init_scales_and_initial_loss():
    m = _model(n_layer=4, n_embd=64, n_head=4, vocab_size=65, block_size=32)
    w = _np(m.transformer.h[0].mlp.c_fc.weight.data)
    p = _np(m.transformer.h[0].mlp.c_proj.weight.data)
    assert abs(w.std() - 0.02) < 0.002
    assert abs(p.std() - 0.02 / math.sqrt(8)) < 0.001
    assert (_np(m.transformer.h[0].attn.c_attn.bias.data) == 0).all()
    idx = np.random.default_rng(0).integers(0, 65, (4, 32))
    _, loss = m(idx[:, :-1], idx[:, 1:])
    assert abs(loss.item() - math.log(65)) < 0.05                        # near-uniform start


def test_logits_shape_and_errors():
    m = _model()
    assert m(np.zeros((3, 5), dtype=np.int64)).shape == (3, 5, 11)
    with pytest.raises(ValueError, match="sequence length 9 exceeds block_size 8"):
        m(np.zeros((1, 9), dtype=np.int64))
    with pytest.raises(ValueError, match=r"idx must be \(B, T\)"):
        m(np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match="not divisible by n_head"):
        GPTConfig(n_embd=10, n_head=3)


def test_causality_output_t_has_zero_gradient_from_later_tokens():
    m = _model().double().eval()
    idx = np.arange(1, 9)[None, :]                  # every position a different token
    for t in range(8):
        m.zero_grad()
        m(idx)[0, t].sum().backward()
        g_tok = _np(m.transformer.wte.weight.grad)
        g_pos = _np(m.transformer.wpe.weight.grad)
        # tokens at positions > t appear only there: their embedding rows get nothing
        # through the input (the tied output layer touches every row, so use positions)
        assert (g_pos[t + 1:] == 0).all(), t
        assert (np.abs(g_pos[: t + 1]).sum(-1) > 0).all(), t
        assert g_tok.shape == (11, 8)


def test_ignore_index_in_targets():
    m = _model().double()
    idx = np.array([[1, 2, 3, 4]])
    targets = np.array([[2, 3, -100, -100]])
    logits, loss = m(idx, targets)
    lp = _np(tl.log_softmax(logits).data)[0]
    expected = -(lp[0, 2] + lp[1, 3]) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_whole_model_gradcheck_float64():
    m = _model(n_layer=1, n_embd=4, n_head=2, vocab_size=5, block_size=4).double().eval()
    idx = np.array([[0, 3, 4, 1], [2, 2, 0, 4]])
    assert tl.gradcheck_module(m, idx)                                   # every parameter


def test_whole_model_gradcheck_directional_with_dropout_and_loss():
    m = _model(dropout=0.1).double()
    idx = np.random.default_rng(0).integers(0, 11, (2, 8))

    class Loss(tl.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, idx):
            tl.manual_seed(5)                                          # same dropout masks
            return self.m(idx[:, :-1], idx[:, 1:])[1]

    assert tl.gradcheck_module(Loss(), idx, mode="directional")


def test_overfits_one_batch():
    from tinyllm.optim import AdamW
    m = _model(n_layer=2, n_embd=32, n_head=4, vocab_size=11, block_size=8)
    idx = np.random.default_rng(0).integers(0, 11, (4, 9))
    opt = AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(150):
        _, loss = m(idx[:, :-1], idx[:, 1:])
        if step == 0:
            first = loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 2.0 and loss.item() < 0.05


def test_seeded_training_is_deterministic():
    from tinyllm.optim import AdamW

    def run():
        m = _model(dropout=0.1)
        opt = AdamW(m.parameters(), lr=1e-2)
        idx = np.random.default_rng(1).integers(0, 11, (2, 9))
        tl.manual_seed(3)
        losses = []
        for _ in range(5):
            _, loss = m(idx[:, :-1], idx[:, 1:])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    assert run() == run()


@pytest.mark.parametrize("impl", ["numpy", "auto"])
def test_kv_cache_gives_the_full_forward_logits(impl):
    """A prompt, then one token at a time through the cache: the logits of the full forward,
    with the switch off (composed attention) and on (the fused op)."""
    m = _model().double().eval()
    idx = np.random.default_rng(2).integers(0, 11, (2, 8))
    with kernels.using(impl):
        full = _np(m(idx).data)
        cache = m.new_cache()
        parts = [_np(m(idx[:, :3], cache=cache).data)]
        parts += [_np(m(idx[:, t:t + 1], cache=cache).data) for t in range(3, 8)]
    assert cache.length == 8 and cache[0].view()[0].shape == (2, 2, 8, 4)   # (B, H, T, D)
    assert cache[0].k.shape == (2, 2, m.config.block_size, 4)   # preallocated, written in place
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-12, atol=1e-12)

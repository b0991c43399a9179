"""The encoder-decoder Transformer: shapes, sharing, padding, causality, gradients, learning."""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm import backend
from tinyllm.models import Seq2SeqConfig, Seq2SeqTransformer

TINY = dict(src_vocab_size=12, n_embd=8, n_head=2, num_encoder_layers=1,
            num_decoder_layers=1, d_ff=16, dropout=0.0, max_len=16, pad_id=0)


def _model(**kw):
    tl.manual_seed(0)
    return Seq2SeqTransformer(Seq2SeqConfig(**{**TINY, **kw}))


def _np(a):
    return backend.asnumpy(a.data if isinstance(a, tl.Tensor) else a)


SRC = np.array([[3, 4, 5, 0, 0], [6, 7, 8, 9, 2]])
TGT_IN = np.array([[1, 5, 4, 3, 0], [1, 2, 9, 8, 7]])
TGT_OUT = np.array([[5, 4, 3, 2, 0], [2, 9, 8, 7, 6]])


def test_shapes_and_vocabularies():
    shared = _model()
    assert shared(SRC, TGT_IN).shape == (2, 5, 12)
    assert shared.tgt_embed is shared.src_embed
    names = list(shared.state_dict())
    assert "src_embed.weight" in names and "tgt_embed.weight" in names
    sep = _model(tgt_vocab_size=7, tie_output=False)
    assert sep.tgt_embed is not sep.src_embed
    assert sep(SRC, TGT_IN % 7).shape == (2, 5, 7)
    assert sep.generator.weight.shape == (8, 7)
    assert (_np(shared.src_embed.weight)[0] == 0).all()               # the pad row
    with pytest.raises(ValueError, match=r"token ids must be \(B, T\)"):
        shared(SRC[0], TGT_IN)
    with pytest.raises(ValueError, match="n_embd 10 is not divisible by n_head 4"):
        Seq2SeqConfig(n_embd=10, n_head=4)


@pytest.mark.parametrize("norm_first", [False, True])
def test_padding_tokens_do_not_change_real_outputs(norm_first):
    m = _model(norm_first=norm_first).double().eval()
    base = _np(m(SRC, TGT_IN))
    src2 = SRC.copy()
    src2[0, 3:] = 0                       # already pad: change nothing else
    tgt2 = TGT_IN.copy()
    out = _np(m(src2, tgt2))
    np.testing.assert_array_equal(out, base)
    # appending more source padding leaves every real output unchanged
    src3 = np.concatenate([SRC, np.zeros((2, 3), dtype=SRC.dtype)], axis=1)
    np.testing.assert_allclose(_np(m(src3, TGT_IN)), base, rtol=1e-12, atol=1e-12)


def test_decoder_is_causal():
    m = _model().double().eval()
    base = _np(m(SRC, TGT_IN))
    for t in range(4):
        changed = TGT_IN.copy()
        changed[:, t + 1:] = 11                                         # rewrite the future
        out = _np(m(SRC, changed))
        np.testing.assert_array_equal(out[:, : t + 1], base[:, : t + 1])
        assert not np.allclose(out[:, t + 1:], base[:, t + 1:])


def test_loss_ignores_padding():
    m = _model().double().eval()
    logits, loss = m(SRC, TGT_IN, TGT_OUT)
    lp = _np(tl.log_softmax(logits))
    picks = [lp[b, t, TGT_OUT[b, t]] for b in range(2) for t in range(5) if TGT_OUT[b, t]]
    assert loss.item() == pytest.approx(-np.mean(picks), rel=1e-12)


@pytest.mark.parametrize("kw", [{}, {"norm_first": True, "tgt_vocab_size": 10,
                                     "tie_output": False, "activation": "gelu"}])
def test_gradcheck_float64(kw):
    m = _model(**kw).double().eval()

    class Loss(tl.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, src, tgt_in, tgt_out):
            return self.m(src, tgt_in, tgt_out)[1]

    V = 10 if kw else 12
    assert tl.gradcheck_module(Loss(), SRC % V, TGT_IN % V, TGT_OUT % V, mode="directional")
    small = _model(**{**kw, "n_embd": 4, "d_ff": 4}).double().eval()
    assert tl.gradcheck_module(small, SRC[:, :3] % V, TGT_IN[:, :3] % V)


def test_learns_to_reverse_sequences():
    from tinyllm.optim import AdamW
    tl.manual_seed(0)
    m = Seq2SeqTransformer(Seq2SeqConfig(src_vocab_size=10, n_embd=32, n_head=4,
                                         num_encoder_layers=1, num_decoder_layers=1, d_ff=64,
                                         dropout=0.0, max_len=8, pad_id=0))
    rng = np.random.default_rng(0)
    src = rng.integers(3, 10, (16, 5))                  # 0 pad, 1 BOS, 2 EOS
    tgt = src[:, ::-1]
    tgt_in = np.concatenate([np.ones((16, 1), int), tgt], axis=1)
    tgt_out = np.concatenate([tgt, np.full((16, 1), 2)], axis=1)
    opt = AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(200):
        _, loss = m(src, tgt_in, tgt_out)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    pred = _np(m.eval()(src, tgt_in)).argmax(-1)
    assert (pred == tgt_out).mean() == 1.0


@pytest.mark.parametrize("norm_first", [False, True])
def test_cached_decoding_equals_recomputing(norm_first):
    m = _model(norm_first=norm_first).double().eval()
    memory, src_mask = m.encode(SRC)
    tgt = TGT_IN[:, :4]
    full = _np(m.decode(tgt, memory, src_mask))
    cache = m.new_cache()
    steps = [_np(m.decode(tgt[:, t:t + 1], memory, src_mask, cache=cache)) for t in range(4)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-12, atol=1e-13)
    assert cache.length == 4 and cache[0]["self"].view()[0].shape == (2, 2, 4, 4)
    assert cache[0]["cross"].view()[0].shape == (2, 2, 5, 4)        # the memory, computed once


def test_config_accepts_the_old_names():
    """d_model / n_heads (configs saved before the rename, old scripts) still build the same
    config, with a DeprecationWarning; asdict holds only the new names."""
    import dataclasses
    with pytest.warns(DeprecationWarning, match="d_model is now called n_embd"):
        old = Seq2SeqConfig(**{**TINY, "n_embd": 128, "n_head": 4, "d_model": 8, "n_heads": 2})
    assert old == Seq2SeqConfig(**TINY)
    fields = dataclasses.asdict(old)
    assert fields["n_embd"] == 8 and fields["n_head"] == 2
    assert "d_model" not in fields and "n_heads" not in fields
    saved = {**{k: v for k, v in fields.items() if k not in ("n_embd", "n_head")},
             "d_model": 8, "n_heads": 2}                       # a config.json of before
    with pytest.warns(DeprecationWarning):
        assert Seq2SeqConfig(**saved) == old
    assert dataclasses.replace(old, dropout=0.5).n_embd == 8
    with pytest.raises(ValueError, match="d_model=16 and n_embd=8 disagree"):
        Seq2SeqConfig(n_embd=8, d_model=16)
    # the old names read as the new fields, and dataclasses.replace keeps working
    cfg = Seq2SeqConfig(**TINY)
    assert (cfg.d_model, cfg.n_heads) == (cfg.n_embd, cfg.n_head)
    assert dataclasses.replace(cfg, n_embd=16).n_embd == 16
    assert dataclasses.replace(cfg, dropout=0.5) == Seq2SeqConfig(**{**TINY, "dropout": 0.5})

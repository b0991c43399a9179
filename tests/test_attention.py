"""Attention, positional encodings, encoder/decoder layers: values, masks, causality, grads."""
import math

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import backend, nn


def _np(a):
    return backend.asnumpy(a.data if isinstance(a, tl.Tensor) else a)


def _x(*shape, seed=0, grad=True):
    return tl.tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=grad)


def _attention_np(q, k, v, mask=None):
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = np.where(mask, -np.inf, s)
    w = np.exp(s - s.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    return w @ v, w


def test_scaled_dot_product_attention_values():
    q, k, v = _x(2, 3, 4, seed=1), _x(2, 5, 4, seed=2), _x(2, 5, 4, seed=3)
    mask = np.zeros((3, 5), bool)
    mask[:, -1] = True
    y, w = nn.scaled_dot_product_attention(q, k, v, mask)
    ey, ew = _attention_np(_np(q), _np(k), _np(v), mask)
    np.testing.assert_allclose(_np(y), ey, rtol=1e-12)
    np.testing.assert_allclose(_np(w), ew, rtol=1e-12)
    np.testing.assert_allclose(_np(w).sum(-1), 1.0, rtol=1e-12)
    assert (_np(w)[..., -1] == 0).all()


def test_causal_mask_shapes():
    np.testing.assert_array_equal(nn.causal_mask(3, 3), np.triu(np.ones((3, 3), bool), 1))
    m = nn.causal_mask(2, 4)          # the last 2 of 4 positions, as when decoding with a cache
    np.testing.assert_array_equal(m, [[False, False, False, True], [False] * 4])


@pytest.mark.parametrize("causal", [False, True])
def test_mha_gradcheck(causal):
    tl.manual_seed(0)
    mha = nn.MultiHeadAttention(6, 2, causal=causal).double()
    assert tl.gradcheck_module(mha, _x(2, 4, 6))


def test_cross_attention_gradcheck_with_padding():
    tl.manual_seed(0)
    mha = nn.MultiHeadAttention(4, 2).double()
    kpm = np.array([[False, False, True], [False, True, True]])
    assert tl.gradcheck_module(lambda_module(mha, kpm), _x(2, 2, 4, seed=1), _x(2, 3, 4, seed=2))


def lambda_module(mha, kpm):
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x, mem):
            return self.mha(x, mem, key_padding_mask=kpm)
    return Cross()


def test_padded_keys_get_zero_weight_and_zero_gradient():
    tl.manual_seed(0)
    mha = nn.MultiHeadAttention(4, 2).double()
    x, mem = _x(2, 3, 4, seed=1), _x(2, 5, 4, seed=2)
    kpm = np.array([[False, False, False, True, True], [False] * 4 + [True]])
    y, w = mha(x, mem, key_padding_mask=kpm, need_weights=True)
    assert (_np(w)[0, :, :, 3:] == 0).all() and (_np(w)[1, :, :, 4] == 0).all()
    y.sum().backward()
    g = _np(mem.grad)
    assert (g[0, 3:] == 0).all() and (g[1, 4] == 0).all()
    assert (np.abs(g[0, :3]) > 0).all()


def test_causal_self_attention_gradient_to_future_positions_is_exactly_zero():
    tl.manual_seed(0)
    mha = nn.MultiHeadAttention(4, 2, causal=True).double()
    for t in range(5):
        x = _x(2, 5, 4)
        mha(x)[:, t].sum().backward()
        g = _np(x.grad)
        assert (g[:, t + 1:] == 0).all()
        assert (np.abs(g[:, : t + 1]).sum(-1) > 0).all()


def test_fully_masked_query_gives_zero_output_not_nan():
    q = k = v = _x(1, 2, 4)
    mask = np.array([[True, True], [False, True]])
    y, w = nn.scaled_dot_product_attention(q, k, v, mask)
    assert np.isfinite(_np(y)).all()
    np.testing.assert_array_equal(_np(w)[0, 0], [0.0, 0.0])
    y.sum().backward()
    assert np.isfinite(_np(q.grad)).all()


def test_mha_errors():
    with pytest.raises(ValueError, match="d_model 6 is not divisible by n_heads 4"):
        nn.MultiHeadAttention(6, 4)
    mha = nn.MultiHeadAttention(4, 2)
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, Tk\)"):
        mha(tl.randn(2, 3, 4), key_padding_mask=np.zeros((2, 4), bool))
    with pytest.raises(TypeError, match="masks must be boolean"):
        mha(tl.randn(2, 3, 4), attn_mask=np.zeros((3, 3)))


def test_sinusoidal_positions_formula():
    pe = nn.sinusoidal_positions(50, 8, np.float64)
    pos, i = 17, 3
    assert pe[pos, 2 * i] == pytest.approx(math.sin(pos / 10000 ** (2 * i / 8)), abs=1e-15)
    assert pe[pos, 2 * i + 1] == pytest.approx(math.cos(pos / 10000 ** (2 * i / 8)), abs=1e-15)
    odd = nn.sinusoidal_positions(5, 7, np.float64)             # odd width works too
    assert odd.shape == (5, 7) and odd[0, 0::2].tolist() == [0.0] * 4
    enc = nn.SinusoidalPositionalEncoding(8, max_len=10)
    x = tl.zeros(2, 4, 8)
    np.testing.assert_allclose(enc(x).numpy()[1], pe[:4].astype(np.float32))
    np.testing.assert_allclose(enc(x, offset=3).numpy()[0], pe[3:7].astype(np.float32))
    assert "pe" not in enc.state_dict()                          # fixed, not saved
    with pytest.raises(ValueError, match="exceed max_len 10"):
        enc(tl.zeros(1, 11, 8))


def test_learned_positions_gradcheck():
    tl.manual_seed(0)
    assert tl.gradcheck_module(nn.LearnedPositionalEmbedding(6, 3).double(), _x(2, 4, 3))


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_and_decoder_layers(norm_first):
    tl.manual_seed(0)
    enc = nn.TransformerEncoderLayer(4, 2, 8, norm_first=norm_first).double()
    dec = nn.TransformerDecoderLayer(4, 2, 8, activation="gelu", norm_first=norm_first).double()
    src, tgt = _x(2, 3, 4, seed=1), _x(2, 4, 4, seed=2)
    kpm = np.array([[False, False, True], [False] * 3])
    assert tl.gradcheck_module(enc, src)

    class EncDec(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec = enc, dec

        def forward(self, s, t):
            return self.dec(t, self.enc(s, key_padding_mask=kpm), memory_key_padding_mask=kpm)

    assert tl.gradcheck_module(EncDec(), src, tgt, mode="directional")
    # the decoder is causal in its own positions
    tgt2 = _x(2, 4, 4, seed=2)
    dec(tgt2, enc(src))[:, 1].sum().backward()
    assert (_np(tgt2.grad)[:, 2:] == 0).all()


def test_post_ln_output_is_normalized():
    tl.manual_seed(0)
    enc = nn.TransformerEncoderLayer(8, 2, 16).double()        # post-LN: LayerNorm last
    y = _np(enc(_x(2, 3, 8)))
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), 1, rtol=1e-4)


def test_attention_matches_torch_when_available():
    torch = pytest.importorskip("torch", reason="PyTorch not installed (optional oracle)")
    q, k, v = _x(2, 2, 3, 4, seed=1), _x(2, 2, 5, 4, seed=2), _x(2, 2, 5, 4, seed=3)
    mask = np.random.default_rng(0).random((3, 5)) < 0.3
    mask[:, 0] = False
    y, _ = nn.scaled_dot_product_attention(q, k, v, mask)
    y.sum().backward()
    tq, tk, tv = (torch.tensor(_np(t), requires_grad=True) for t in (q, k, v))
    ty = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv,
                                                          attn_mask=torch.tensor(~mask))
    ty.sum().backward()
    np.testing.assert_allclose(_np(y), ty.detach().numpy(), rtol=1e-10)
    for a, b in ((q, tq), (k, tk), (v, tv)):
        np.testing.assert_allclose(_np(a.grad), b.grad.numpy(), rtol=1e-9, atol=1e-12)

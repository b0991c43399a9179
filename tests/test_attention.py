"""Attention, positional encodings, encoder/decoder layers: values, masks, causality, grads."""
import math

import numpy as np
import pytest

import tinyllm as tl
from tinyllm import backend, kernels, nn
from tinyllm.autograd.graph import nodes
from tinyllm.ops.softmax import Softmax


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
    with pytest.raises(ValueError, match="n_embd 6 is not divisible by n_head 4"):
        nn.MultiHeadAttention(6, 4)
    mha = nn.MultiHeadAttention(4, 2)
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(B, Tk\)"):
        mha(tl.randn(2, 3, 4), key_padding_mask=np.zeros((2, 4), bool))
    with pytest.raises(TypeError, match="masks must be boolean"):        # float: added
        mha(tl.randn(2, 3, 4), attn_mask=np.zeros((3, 3), np.int64))


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


# ----------------------------------------------------------------------------------------------
# the fused attention op against the composed one

def _composed_grads(fn, tensors, seed=9):
    for t in tensors:
        t.grad = None
    out = fn(*tensors)
    g = np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)
    out.backward(tl.tensor(g))
    return _np(out), [_np(t.grad).copy() for t in tensors]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("impl", ["numpy", "numba"])
@pytest.mark.parametrize("Tq, Tk, causal, padded", [
    (5, 5, True, False), (2, 7, True, False), (4, 6, False, True), (6, 6, True, True)])
def test_fused_attention_equals_composed(dtype, impl, Tq, Tk, causal, padded):
    """F.attention (one op, hand-derived backward) gives the composed op-by-op numbers."""
    rng = np.random.default_rng(3)
    q, k, v = (tl.tensor(rng.standard_normal(s).astype(dtype), requires_grad=True)
               for s in [(2, 3, Tq, 4), (2, 3, Tk, 4), (2, 3, Tk, 4)])
    pad = np.zeros((2, 1, 1, Tk), bool)
    if padded:
        pad[0, ..., -2:] = True
        pad[1, ..., :] = True                              # batch entry 1: every key hidden
    mask = nn.attention._combine_masks(2, Tq, Tk, pad[:, 0, 0] if padded else None, None,
                                       causal, "cpu")
    with kernels.using(impl):
        fused = _composed_grads(lambda a, b, c: tl.attention(
            a, b, c, mask=pad if padded else None, causal=causal), [q, k, v])
    composed = _composed_grads(
        lambda a, b, c: nn.scaled_dot_product_attention(a, b, c, mask)[0], [q, k, v])
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(fused[0], composed[0], rtol=tol, atol=tol)
    for gf, gc in zip(fused[1], composed[1]):
        np.testing.assert_allclose(gf, gc, rtol=tol, atol=tol)
    if padded:
        assert (fused[0][1] == 0).all()                    # no visible key: output 0


@pytest.mark.parametrize("impl", ["numpy", "numba"])
def test_qkv_self_attention_equals_split_and_composed(impl):
    """The packed op equals split -> heads -> causal composed attention -> merge, in values
    and in the gradient of qkv."""
    B, T, H, D = 2, 6, 3, 4
    qkv = _x(B, T, 3 * H * D, seed=4)

    def composed(x):
        q, k, v = (t.reshape(B, T, H, D).transpose(1, 2) for t in tl.split(x, 3, axis=2))
        y, _ = nn.scaled_dot_product_attention(q, k, v, nn.attention.causal_mask(T, T))
        return y.transpose(1, 2).reshape(B, T, H * D)

    with kernels.using(impl):
        fused = _composed_grads(lambda x: tl.qkv_self_attention(x, H), [qkv])
    ref = _composed_grads(composed, [qkv])
    np.testing.assert_allclose(fused[0], ref[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fused[1][0], ref[1][0], rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not kernels.NUMBA_AVAILABLE, reason="needs numba")
def test_attention_kernel_equals_the_ops_formula_on_strided_views():
    """The Numba wrappers read strided q, k, v (thirds of a packed qkv) and write into given
    views, and give the numbers of ScaledDotProductAttention's own formula."""
    from tinyllm.kernels import attention as A
    from tinyllm.ops.attention import ScaledDotProductAttention
    rng = np.random.default_rng(5)
    B, T, H, D = 3, 7, 2, 4
    qkv = rng.standard_normal((B, T, 3, H, D)).astype(np.float32)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    dout = rng.standard_normal((B, H, T, D)).astype(np.float32)
    out = np.empty((B, T, H, D), np.float32)
    o, p = A.attention_forward(q, k, v, 0.5, True, out=out.transpose(0, 2, 1, 3))
    assert np.shares_memory(o, out)
    dqkv = np.empty_like(qkv)
    views = [dqkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3)]
    A.attention_backward(dout, q, k, v, p, 0.5, *views)
    with kernels.using("numpy"):                           # the op's formula
        op = ScaledDotProductAttention()
        ref_out = op.forward(q, k, v, causal=True, scale=0.5)
        ref_grads = op.backward(dout)
    np.testing.assert_allclose(out.transpose(0, 2, 1, 3), ref_out, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(p, op.p, rtol=2e-6, atol=2e-6)
    for view, g in zip(views, ref_grads):
        np.testing.assert_allclose(view, g, rtol=2e-5, atol=2e-6)
    assert np.abs(p[:, :, 0, 1:]).max() == 0                  # query 0 sees only key 0


def test_attention_errors_name_op_and_shapes():
    q = tl.randn(2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"attention: q \(2, 3, 4, 5\) needs k and v of shape "
                                         r"\(B, H, Tk, D\) = \(2, 3, Tk, 5\)"):
        tl.attention(q, tl.randn(2, 3, 6, 4), tl.randn(2, 3, 6, 4))
    with pytest.raises(ValueError, match=r"attention: expected q, k, v of shape \(B, H, T, D\)"):
        tl.attention(tl.randn(3, 4, 5), tl.randn(3, 4, 5), tl.randn(3, 4, 5))
    with pytest.raises(ValueError, match=r"mask of shape \(3, 6\) does not broadcast to "
                                         r"\(B, H, Tq, Tk\) = \(2, 3, 4, 6\)"):
        tl.attention(q, tl.randn(2, 3, 6, 5), tl.randn(2, 3, 6, 5), mask=np.ones((3, 6), bool))
    with pytest.raises(TypeError, match="attention: mask must be boolean"):
        tl.attention(q, q, q, mask=np.ones((4, 4)))
    with pytest.raises(ValueError, match=r"qkv_self_attention: expected qkv \(B, T, 3C\) with C "
                                         r"divisible by n_head=4, got shape \(2, 3, 18\)"):
        tl.qkv_self_attention(tl.randn(2, 3, 18), 4)


@pytest.mark.parametrize("shape_q, shape_kv", [((0, 2, 3, 4), (0, 2, 3, 4)),
                                               ((2, 2, 0, 4), (2, 2, 3, 4)),
                                               ((2, 2, 3, 4), (2, 2, 0, 4))])
@pytest.mark.parametrize("impl", ["numpy", "numba"])
def test_fused_attention_empty_axes(shape_q, shape_kv, impl):
    """Empty batch, query or key axes give empty outputs (or zeros: no keys, no weights) and
    gradients of the right shapes, as the composed path does, on both kernel paths (the
    reference's softmax once failed on an empty key axis: a max over nothing)."""
    q = tl.zeros(*shape_q, requires_grad=True)
    k, v = tl.zeros(*shape_kv, requires_grad=True), tl.zeros(*shape_kv, requires_grad=True)
    with kernels.using(impl):
        y = tl.attention(q, k, v)
        assert y.shape == shape_q
        assert np.all(_np(y) == 0)
        y.sum().backward()
    assert q.grad.shape == shape_q and k.grad.shape == shape_kv and v.grad.shape == shape_kv


# ----------------------------------------------------------------------------------------------
# one attention: the composed path by default, the fused ops with the kernel switch on

needs_jit = pytest.mark.skipif(not kernels.NUMBA_AVAILABLE or kernels.jit_disabled(),
                               reason="the switch takes the fused ops only with Numba's JIT")


def _gpt(dtype):
    from tinyllm.models import GPT, GPTConfig
    tl.manual_seed(0)
    m = GPT(GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8, dropout=0.0))
    m = m.double() if dtype == np.float64 else m
    idx = np.random.default_rng(0).integers(0, 11, (3, 9))
    return m, lambda: m(idx[:, :-1], idx[:, 1:])


def _bert(dtype):
    from tinyllm.models import BertConfig, BertForPreTraining
    tl.manual_seed(0)
    m = BertForPreTraining(BertConfig(vocab_size=13, hidden_size=8, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=16,
                                      max_position_embeddings=8, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0))
    m = m.double() if dtype == np.float64 else m
    rng = np.random.default_rng(1)
    ids = rng.integers(4, 13, (2, 8))
    mask = np.array([[1] * 8, [1] * 5 + [0] * 3])              # padded keys in entry 1
    labels = np.where(rng.random((2, 8)) < 0.4, ids, -100)
    return m, lambda: m(ids, attention_mask=mask, labels=labels, next_sentence_label=[0, 1])


def _seq2seq(dtype):
    from tinyllm.models import Seq2SeqConfig, Seq2SeqTransformer
    tl.manual_seed(0)
    m = Seq2SeqTransformer(Seq2SeqConfig(src_vocab_size=12, n_embd=8, n_head=2,
                                         num_encoder_layers=1, num_decoder_layers=1, d_ff=16,
                                         dropout=0.0, max_len=16, pad_id=0))
    m = m.double() if dtype == np.float64 else m
    src = np.array([[3, 4, 5, 0, 0], [6, 7, 8, 9, 2]])
    tgt_in = np.array([[1, 5, 4, 3, 0], [1, 2, 9, 8, 7]])
    tgt_out = np.array([[5, 4, 3, 2, 0], [2, 9, 8, 7, 6]])
    return m, lambda: m(src, tgt_in, tgt_out)


MODELS = {"gpt": (_gpt, "QKVSelfAttention"), "bert": (_bert, "ScaledDotProductAttention"),
          "seq2seq": (_seq2seq, "ScaledDotProductAttention")}
N_ATTENTION = {"gpt": 2, "bert": 2, "seq2seq": 3}         # attention layers in each model


def _run(name, dtype, impl, monkeypatch):
    """(outputs, {param: grad}, op names in the graph, Softmax.backward calls) with ``impl``."""
    calls = []
    original = Softmax.backward

    def spy(self, dout):
        calls.append(dout.shape)
        return original(self, dout)

    monkeypatch.setattr(Softmax, "backward", spy)
    with kernels.using(impl):
        model, run = MODELS[name][0](dtype)
        out = run()
        loss = out[-1]
        ops = [type(ctx).__name__ for ctx in nodes(loss)]
        loss.backward()
    monkeypatch.setattr(Softmax, "backward", original)
    grads = {n: _np(p.grad).copy() for n, p in model.named_parameters()}
    return [_np(o).copy() for o in out], grads, ops, calls


@pytest.mark.parametrize("name", sorted(MODELS))
def test_default_attention_is_composed_and_runs_softmax_backward(name, monkeypatch):
    """Switch off (the default): every attention layer is matmul -> scale -> mask -> Softmax ->
    matmul, so Softmax.backward runs once per layer, and no fused attention op is built."""
    _, _, ops, calls = _run(name, np.float64, "numpy", monkeypatch)
    assert "ScaledDotProductAttention" not in ops and "QKVSelfAttention" not in ops
    assert ops.count("Softmax") == N_ATTENTION[name]
    assert len(calls) == N_ATTENTION[name]
    assert all(len(shape) == 4 for shape in calls)             # (B, H, Tq, Tk) weights


@needs_jit
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_switch_on_takes_the_fused_op_with_the_same_numbers(name, dtype, monkeypatch):
    """Switch on: the fused op replaces the composed attention (no Softmax node left), and the
    outputs, the loss and every parameter gradient equal the switch-off ones."""
    off = _run(name, dtype, "numpy", monkeypatch)
    on = _run(name, dtype, "auto", monkeypatch)
    fused = MODELS[name][1]
    assert on[2].count(fused) == N_ATTENTION[name] and "Softmax" not in on[2]
    assert on[3] == []                                          # Softmax.backward never ran
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=1e-4, atol=2e-6)
    for a, b in zip(on[0], off[0]):
        np.testing.assert_allclose(a, b, **tol)
    assert set(on[1]) == set(off[1])
    for n in off[1]:
        np.testing.assert_allclose(on[1][n], off[1][n], err_msg=n, **tol)


class _Run(nn.Module):
    """A module calling ``fn(mha, *inputs)``, for gradcheck_module."""

    def __init__(self, mha, fn):
        super().__init__()
        self.mha, self.fn = mha, fn

    def forward(self, *inputs):
        return self.fn(self.mha, *inputs)


KPM4 = np.array([[False, False, False, True], [False] * 4])
ATTN_MASK = np.array([[False, True, False, False], [False, False, True, False],
                      [True, False, False, False], [False, False, False, False]])


def _self_masked(mha, x):
    return mha(x, key_padding_mask=KPM4, attn_mask=ATTN_MASK)


def _cross(mha, x, mem):
    return mha(x, mem, key_padding_mask=np.array([[False, False, True], [False, True, True]]))


def _self_cached(mha, x):
    cache = nn.KVCache()
    return tl.cat([mha(x[:, :1], cache=cache), mha(x[:, 1:3], cache=cache),
                   mha(x[:, 3:], cache=cache)], axis=1)


def _cross_cached(mha, x, mem):
    cache = nn.KVCache()
    return tl.cat([mha(x[:, :2], mem, cache=cache), mha(x[:, 2:], mem, cache=cache)], axis=1)


GRADCHECKS = {"self_masked": (False, _self_masked, [(2, 4, 6)]),
              "self_causal_masked": (True, _self_masked, [(2, 4, 6)]),
              "cross_padded": (False, _cross, [(2, 4, 6), (2, 3, 6)]),
              "self_causal_cache": (True, _self_cached, [(2, 4, 6)]),
              "cross_cache": (False, _cross_cached, [(2, 4, 6), (2, 3, 6)])}


@pytest.mark.parametrize("impl", ["numpy", pytest.param("auto", marks=needs_jit)])
@pytest.mark.parametrize("case", sorted(GRADCHECKS))
def test_attention_module_gradcheck(case, impl):
    """float64 gradcheck of the one attention, composed (switch off) and fused (on): masks,
    causal, cross-attention and the KV cache, every input and parameter."""
    causal, fn, shapes = GRADCHECKS[case]
    tl.manual_seed(0)
    mha = nn.MultiHeadAttention(6, 2, causal=causal).double()
    inputs = [_x(*s, seed=i + 1) for i, s in enumerate(shapes)]
    with kernels.using(impl):
        ops = {type(c).__name__ for c in nodes(fn(mha, *inputs))}
        assert ("ScaledDotProductAttention" in ops) == (impl == "auto")
        assert ("Softmax" in ops) == (impl == "numpy")
        assert tl.gradcheck_module(_Run(mha, fn), *inputs)


@pytest.mark.parametrize("impl", ["numpy", pytest.param("auto", marks=needs_jit)])
def test_fused_ops_gradcheck_with_the_switch_on_and_off(impl):
    """The fused ops' own backward (the formula, or the Numba kernels), float64."""
    q, k, v = _x(2, 2, 3, 4, seed=1), _x(2, 2, 5, 4, seed=2), _x(2, 2, 5, 4, seed=3)
    mask = np.random.default_rng(0).random((2, 1, 3, 5)) < 0.3
    mask[1, 0, 2] = True                                       # one query with no visible key
    with kernels.using(impl):
        assert tl.gradcheck(lambda a, b, c: tl.attention(a, b, c, mask=mask, causal=True),
                            [q, k, v])
        assert tl.gradcheck(lambda a, b, c: tl.attention(a, b, c), [q, k, v])
        assert tl.gradcheck(lambda x: tl.qkv_self_attention(x, 2), [_x(2, 5, 12, seed=4)])


@pytest.mark.parametrize("impl", ["numpy", pytest.param("auto", marks=needs_jit)])
@pytest.mark.parametrize("causal", [False, True])
def test_kv_cache_gives_the_full_forward(impl, causal):
    """Feeding positions one chunk at a time through the cache equals the full forward (for
    causal attention; without the causal mask, the last chunk sees every key)."""
    tl.manual_seed(0)
    mha = nn.MultiHeadAttention(6, 2, causal=causal).double().eval()
    x = _x(2, 5, 6, grad=False)
    with kernels.using(impl):
        full = _np(mha(x))
        cache = nn.KVCache()
        steps = [_np(mha(x[:, t:t + 1], cache=cache)) for t in range(5)]
    assert cache.length == 5 and cache.view()[0].shape == (2, 2, 5, 3)
    if causal:
        np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-12,
                                   atol=1e-13)
    else:
        np.testing.assert_allclose(steps[-1], full[:, -1:], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("impl", ["numpy", pytest.param("auto", marks=needs_jit)])
def test_weights_and_weight_dropout_take_the_composed_path(impl):
    """need_weights and attention-weight dropout need the weights: the composed path runs
    whatever the switch says."""
    tl.manual_seed(0)
    mha = nn.MultiHeadAttention(4, 2, dropout=0.5)
    x = _x(2, 3, 4)
    with kernels.using(impl):
        y, w = mha.eval()(x, need_weights=True)
        assert w.shape == (2, 2, 3, 3) and "Softmax" in {type(c).__name__ for c in nodes(y)}
        y = mha.train()(x)
        assert "Softmax" in {type(c).__name__ for c in nodes(y)}
        assert "Dropout" in {type(c).__name__ for c in nodes(y)}

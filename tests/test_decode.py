"""The preallocated KV cache and the compiled decode step (tinyllm/nn/kv_cache.py,
tinyllm/decoding.py, tinyllm/kernels/decode.py): equal to the readable forward, token for
token and logit for logit; taken only with the switch on.

Every model here has 2 layers, so the Numba step compiles once per (model kind, dtype).
"""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm import decoding, kernels, nn
from tinyllm.generate import NextLogits, beam_search, compiled_decoder, generate
from tinyllm.kernels import decode as decode_kernels
from tinyllm.models import GPT, GPTConfig, Seq2SeqConfig, Seq2SeqTransformer
from tinyllm.models.llama import Llama, LlamaConfig
from tinyllm.models.lstm_lm import LSTMLM, LSTMLMConfig

needs_jit = pytest.mark.skipif(not kernels.NUMBA_AVAILABLE or kernels.jit_disabled(),
                               reason="needs Numba's JIT")
V = 29
TOL = {"float64": dict(rtol=1e-10, atol=1e-10), "float32": dict(rtol=2e-4, atol=2e-5)}


def _gpt(dtype, bias=True, gelu="tanh", tied=True):
    tl.manual_seed(1)
    m = GPT(GPTConfig(block_size=24, vocab_size=V, n_layer=2, n_head=2, n_embd=16, bias=bias,
                      gelu=gelu))
    if not tied:                      # an untied output layer (C, V), as a fine-tune may add
        m.lm_head = nn.Linear(16, V, bias=False)
        m.lm_head.weight.data[...] = np.random.default_rng(5).normal(0, 0.3, (16, V))
    for p in m.parameters():          # larger than GPT-2's init, so logits spread out
        p.data[...] += np.random.default_rng(p.size).normal(0, 0.1, p.shape)
    return m.to(dtype).eval()


def _llama(dtype, tied=False, n_kv_head=2):
    tl.manual_seed(2)
    m = Llama(LlamaConfig(block_size=24, vocab_size=V, n_layer=2, n_head=4, n_kv_head=n_kv_head,
                          n_embd=16, intermediate_size=24, rope_theta=500.0,
                          rms_norm_eps=1e-5, tie_word_embeddings=tied))
    for p in m.parameters():
        p.data[...] += np.random.default_rng(p.size).normal(0, 0.1, p.shape)
    return m.to(dtype).eval()


MODELS = {
    "gpt": lambda dt: _gpt(dt),
    "gpt-exact-nobias": lambda dt: _gpt(dt, bias=False, gelu="exact"),
    "gpt-untied": lambda dt: _gpt(dt, tied=False),
    "llama-gqa": lambda dt: _llama(dt),
    "llama-tied-mqa": lambda dt: _llama(dt, tied=True, n_kv_head=1),
}


def _prompt(B, T=3, seed=0):
    return np.random.default_rng(seed).integers(0, V, (B, T))


# ----------------------------------------------------------------------------------------------
# the preallocated cache

def test_kv_cache_writes_in_place_grows_and_reorders():
    rng = np.random.default_rng(0)
    k, v = (tl.tensor(rng.standard_normal((3, 2, 5, 4))) for _ in range(2))
    c = nn.KVCache(max_length=6)
    keys, _ = c.append(k[:, :, :2], v[:, :, :2])
    assert c.length == 2 and c.k.shape == (3, 2, 6, 4) and keys.shape == (3, 2, 2, 4)
    assert np.shares_memory(keys.data, c.k)                       # a view, no copy
    buf = c.k
    c.append(k[:, :, 2:], v[:, :, 2:])                            # 5 of 6: still the same array
    assert c.k is buf
    c.append(k[:, :, :3], v[:, :, :3])                            # 8 > 6: the room doubles
    assert c.k.shape[2] == max(2 * 6, 16) and c.length == 8       # (16 at least)
    np.testing.assert_array_equal(c.view()[0][:, :, :5], k.data)
    np.testing.assert_array_equal(c.view()[1][:, :, 5:], v.data[:, :, :3])
    c.reorder([2, 2, 0])                                          # same batch: in place
    np.testing.assert_array_equal(c.view()[0][:, :, :5], k.data[[2, 2, 0]])
    c.reorder([1])                                                # fewer rows: new arrays
    np.testing.assert_array_equal(c.view()[0][:, :, :5], k.data[[2]])
    with pytest.raises(ValueError, match="do not match the cached"):
        c.append(k[:, :, :1], v[:, :, :1])                        # 3 rows onto a 1-row cache
    huge = nn.KVCache(max_length=1 << 30)                         # a checkpoint's max positions
    huge.append(k, v)
    assert huge.k.shape[2] == 16                                  # not 2^30: doubles as it fills


def test_cache_gradient_reaches_every_position():
    """Under grad the cache keeps the graph: a loss on the last step's output reaches the keys
    of the first step."""
    tl.manual_seed(0)
    mha = nn.MultiHeadAttention(6, 2, causal=True).double()
    x = tl.tensor(np.random.default_rng(1).standard_normal((1, 3, 6)), requires_grad=True)
    cache = nn.KVCache()
    mha(x[:, :2], cache=cache)
    mha(x[:, 2:], cache=cache).sum().backward()
    full = tl.tensor(x.data, requires_grad=True)
    mha(full)[:, 2:].sum().backward()
    np.testing.assert_allclose(x.grad, full.grad, rtol=1e-12, atol=1e-14)


def test_seq2seq_cache_reorders_self_and_cross_attention_rows():
    """Beam-style: after 2 cached steps, rows [1, 1, 0] of the cache (self and the encoder's
    keys, computed once) decode as the recomputed rows [1, 1, 0] do."""
    tl.manual_seed(0)
    m = Seq2SeqTransformer(Seq2SeqConfig(src_vocab_size=12, n_embd=8, n_head=2, d_ff=16,
                                         num_encoder_layers=1, num_decoder_layers=2,
                                         max_len=16)).double().eval()
    src = np.array([[3, 4, 5, 0, 0], [6, 7, 8, 9, 2]])
    tgt = np.array([[1, 5, 4], [1, 2, 9]])
    memory, mask = m.encode(src)
    cache = m.new_cache()
    m.decode(tgt[:, :2], memory, mask, cache=cache)
    cache.reorder([1, 1, 0])
    rows = np.array([1, 1, 0])
    step = m.decode(tgt[rows, 2:], memory[rows], mask[rows], cache=cache).numpy()[:, -1]
    full = m.decode(tgt[rows], memory[rows], mask[rows]).numpy()[:, -1]
    assert cache.length == 3 and cache[1]["cross"].view()[0].shape[0] == 3
    np.testing.assert_allclose(step, full, rtol=1e-12, atol=1e-13)


# ----------------------------------------------------------------------------------------------
# compiled step == readable forward

@needs_jit
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(MODELS))
def test_compiled_step_logits_equal_the_readable_forward(name, dtype):
    """Per step, batch 8: logits of the compiled step equal the readable forward's (which the
    model tests hold equal to the full forward); prompt through the readable forward, then
    compiled steps on the same cache; and a cache begun by the compiled step."""
    m = MODELS[name](dtype)
    seq = _prompt(8, 12, seed=3)
    with kernels.using("auto"):
        compiled = compiled_decoder(m)
    assert compiled is not None
    with kernels.using("numpy"):
        full = m(seq).numpy()                                          # (B, T, V)
    for start in (3, 1):                   # a 3-token prompt (readable), or compiled from 0
        step = NextLogits(m, m.config.block_size, True, compiled)
        got = [step(seq[:, :t]) for t in range(start, 13)]
        assert step.cache.length == 12
        np.testing.assert_allclose(np.stack(got, 1), full[:, start - 1:], **TOL[dtype])


@needs_jit
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("B", [1, 8])
@pytest.mark.parametrize("name", list(MODELS))
def test_generate_compiled_equals_readable_greedy_and_sampled(name, B, dtype):
    m = MODELS[name](dtype)
    prompt = _prompt(B)
    for kw in ({"greedy": True}, {"temperature": 1.0, "top_k": 20}):
        out = {}
        for impl in ("numpy", "auto"):
            with kernels.using(impl):
                out[impl] = generate(m, prompt, 12, rng=np.random.default_rng(7), **kw)
        np.testing.assert_array_equal(out["auto"], out["numpy"])
        assert out["auto"].shape == (B, 15)


@needs_jit
def test_generation_past_block_size_slides_the_window_in_both_paths():
    m = _gpt("float64")
    prompt = _prompt(2)
    out = {}
    for impl in ("numpy", "auto"):
        with kernels.using(impl):
            out[impl] = generate(m, prompt, 30, greedy=True)              # 33 > block_size 24
    np.testing.assert_array_equal(out["auto"], out["numpy"])
    with kernels.using("numpy"):
        np.testing.assert_array_equal(generate(m, prompt, 30, greedy=True, use_cache=False),
                                      out["numpy"])


@needs_jit
@pytest.mark.parametrize("name", ["gpt", "llama-gqa"])
def test_beam_search_with_the_cache_and_the_compiled_step_equals_recomputing(name):
    m = MODELS[name]("float64")
    prompts = _prompt(2)

    def recompute(seqs):
        return m(seqs[:, -m.config.block_size:]).numpy()[:, -1]
    with kernels.using("numpy"):
        plain = beam_search(recompute, prompts, beam_width=4, max_new_tokens=25, eos_id=3)
        cached = beam_search(m, prompts, beam_width=4, max_new_tokens=25, eos_id=3)
    with kernels.using("auto"):
        compiled = beam_search(m, prompts, beam_width=4, max_new_tokens=25, eos_id=3)
    for (a, sa), (b, sb), (c, sc) in zip(plain, cached, compiled):
        np.testing.assert_array_equal(b, a)
        np.testing.assert_array_equal(c, a)
        assert sb == pytest.approx(sa, rel=1e-10) and sc == pytest.approx(sa, rel=1e-10)


# ----------------------------------------------------------------------------------------------
# the switch

def _forbid_kernels(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("tinyllm/kernels/decode.py entered with the switch off")
    for name in ("gpt_decode_step", "llama_decode_step"):
        monkeypatch.setattr(decode_kernels, name, boom)
    monkeypatch.setattr(decoding, "compile_decoder", boom)


@pytest.mark.parametrize("name", ["gpt", "llama-gqa"])
def test_switch_off_never_enters_the_decode_kernel(name, monkeypatch, default_switch):
    m = MODELS[name]("float32")
    _forbid_kernels(monkeypatch)
    out = generate(m, _prompt(2), 5, greedy=True)                       # default: "numpy"
    assert out.shape == (2, 8)
    with kernels.using("numpy"):
        beam_search(m, _prompt(1), beam_width=2, max_new_tokens=4)
        generate(m, _prompt(2), 5, rng=np.random.default_rng(0))


@needs_jit
def test_switch_on_takes_the_compiled_step(monkeypatch):
    calls = []
    real = decoding.CompiledDecoder.step
    monkeypatch.setattr(decoding.CompiledDecoder, "step",
                        lambda self, ids, cache: calls.append(ids.shape) or real(self, ids, cache))
    with kernels.using("auto"):
        generate(_gpt("float32"), _prompt(2), 5, greedy=True)
    assert calls == [(2,)] * 4                      # the prompt goes readable, then 4 steps


def test_models_the_kernel_does_not_cover_take_the_readable_path():
    tl.manual_seed(0)
    lstm = LSTMLM(LSTMLMConfig(vocab_size=V, n_embd=8, n_hidden=8, n_layer=1)).eval()

    class MyGPT(GPT):                      # a subclass may change forward: not packed
        pass
    sub = MyGPT(GPTConfig(block_size=8, vocab_size=V, n_layer=1, n_head=2, n_embd=8))
    with kernels.using("auto"):
        assert compiled_decoder(lstm) is None and compiled_decoder(sub) is None
        a = generate(lstm, _prompt(2), 4, greedy=True)
        res = beam_search(lstm, _prompt(1), beam_width=2, max_new_tokens=3)  # no reorder: recompute
    with kernels.using("numpy"):
        np.testing.assert_array_equal(generate(lstm, _prompt(2), 4, greedy=True), a)
        assert np.array_equal(beam_search(lstm, _prompt(1), beam_width=2, max_new_tokens=3)[0][0],
                              res[0][0])

"""Decoding: top-k / top-p filtering, sampling statistics, the generation loop."""
import numpy as np
import pytest

import tinyllm as tl
from tinyllm.generate import filter_logits, generate, sample_next

PROBS = np.array([[0.5, 0.3, 0.15, 0.05]])
LOGITS = np.log(PROBS)


def test_top_k_keeps_exactly_k():
    out = filter_logits(LOGITS, top_k=2)
    assert np.isfinite(out).tolist() == [[True, True, False, False]]
    assert np.isfinite(filter_logits(LOGITS, top_k=10)).all()
    with pytest.raises(ValueError, match="top_k"):
        filter_logits(LOGITS, top_k=0)


@pytest.mark.parametrize("p,kept", [(0.49, 1), (0.51, 2), (0.79, 2), (0.81, 3), (0.96, 4),
                                    (1.0, 4), (0.1, 1)])
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    out = filter_logits(LOGITS[:, ::-1], top_p=p)          # order in the row must not matter
    assert np.isfinite(out).sum() == kept
    assert np.isfinite(out[0, ::-1][:kept]).all()           # and it keeps the most likely


def test_sampling_frequencies_match_the_distribution():
    rng = np.random.default_rng(0)
    logits = np.repeat(LOGITS, 20000, axis=0)
    draws = sample_next(logits, rng)
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, PROBS[0], atol=0.01)
    hot = np.bincount(sample_next(logits, rng, temperature=0.5), minlength=4) / len(draws)
    sharp = PROBS[0] ** 2 / (PROBS[0] ** 2).sum()                     # softmax(logits / 0.5)
    np.testing.assert_allclose(hot, sharp, atol=0.01)
    top2 = np.bincount(sample_next(logits, rng, top_k=2), minlength=4) / len(draws)
    np.testing.assert_allclose(top2, [0.625, 0.375, 0, 0], atol=0.01)
    assert (sample_next(logits[:5], rng, greedy=True) == 0).all()
    assert (sample_next(logits[:5], rng, temperature=0) == 0).all()


class Counter(tl.nn.Module):
    """A fake LM: the next token is (last + 1) mod V with probability e^4 / (e^4 + V - 1),
    0.90 for V = 7."""

    def __init__(self, V=7):
        super().__init__()
        self.V, self.calls = V, []

    def forward(self, ids):
        ids = np.asarray(ids)
        self.calls.append(ids.shape)
        logits = np.zeros(ids.shape + (self.V,))
        np.put_along_axis(logits, ((ids + 1) % self.V)[..., None], 4.0, axis=-1)
        return tl.tensor(logits)


def test_generate_greedy_eos_block_and_mode():
    m = Counter()
    m.train()
    out = generate(m, np.array([[0], [3]]), 5, greedy=True, block_size=3)
    np.testing.assert_array_equal(out, [[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 0, 1]])
    assert max(t for _, t in m.calls) == 3 and m.training          # cropped; mode restored
    out = generate(m, np.array([[3], [0]]), 10, greedy=True, eos_id=5)
    np.testing.assert_array_equal(out[0], [3, 4, 5, 5, 5, 5])        # stops once all finished
    np.testing.assert_array_equal(out[1], [0, 1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match=r"prompts must be \(B, T\)"):
        generate(m, np.array([1, 2]), 3)


def test_generate_sampling_is_seeded():
    m = Counter()
    a = generate(m, np.zeros((8, 1), int), 50, rng=np.random.default_rng(1))
    b = generate(m, np.zeros((8, 1), int), 50, rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    steps = (a[:, 1:] - a[:, :-1]) % 7
    assert 0.85 < (steps == 1).mean() < 0.95                          # p(+1) = 0.90


def test_generate_from_a_trained_gpt():
    from tinyllm.models import GPT, GPTConfig
    from tinyllm.optim import AdamW
    tl.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=2, n_embd=32))
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    rng = np.random.default_rng(0)
    for _ in range(150):
        seq = (rng.integers(0, 10, (16, 1)) + np.arange(9)) % 10
        _, loss = model(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = generate(model, np.array([[3, 4]]), 12, greedy=True)      # past block_size: cropped
    np.testing.assert_array_equal(out[0], (3 + np.arange(14)) % 10)


def test_kv_cache_gives_the_same_logits_and_tokens_as_recomputing():
    from tinyllm.models import GPT, GPTConfig
    tl.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=20, n_layer=2, n_head=2, n_embd=16)).double()
    m.eval()
    idx = np.random.default_rng(0).integers(0, 20, (3, 6))
    full = m(idx).numpy()
    cache = m.new_cache()
    parts = [m(idx[:, :2], cache=cache).numpy()]                       # a prompt, then 1 by 1
    parts += [m(idx[:, t:t + 1], cache=cache).numpy() for t in range(2, 6)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-12, atol=1e-13)
    assert cache[0]["k"].shape == (3, 2, 6, 8)
    with pytest.raises(ValueError, match="sequence length 17 exceeds block_size 16"):
        m(np.zeros((3, 11), dtype=np.int64), cache=cache)
    for kwargs in ({"greedy": True}, {"top_k": 5}):                    # runs past block_size
        a = generate(m, idx, 20, rng=np.random.default_rng(2), **kwargs)
        b = generate(m, idx, 20, rng=np.random.default_rng(2), use_cache=False, **kwargs)
        np.testing.assert_array_equal(a, b)

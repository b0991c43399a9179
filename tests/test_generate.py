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
    assert cache.length == 6 and cache[0].view()[0].shape == (3, 2, 6, 8)
    with pytest.raises(ValueError, match="sequence length 17 exceeds block_size 16"):
        m(np.zeros((3, 11), dtype=np.int64), cache=cache)
    for kwargs in ({"greedy": True}, {"top_k": 5}):                    # runs past block_size
        a = generate(m, idx, 20, rng=np.random.default_rng(2), **kwargs)
        b = generate(m, idx, 20, rng=np.random.default_rng(2), use_cache=False, **kwargs)
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------
# beam search

from tinyllm.generate import (apply_repetition_penalty, beam_search,  # noqa: E402
                              block_repeated_ngrams, length_penalty)


def table_model(table, V):
    """next_logits from a dict: last token -> probabilities over V (log taken); default uniform."""
    def next_logits(seqs):
        out = np.full((len(seqs), V), np.log(1.0 / V))
        for k, s in enumerate(seqs):
            if int(s[-1]) in table:
                out[k] = np.log(np.maximum(table[int(s[-1])], 1e-12))
        return out
    return next_logits


# greedy's trap: from 0, token 1 (p 0.6) leads to a flat distribution; token 2 (p 0.4) leads to
# EOS=9 with certainty. Best whole sequence: 0 2 9 (0.4) beats 0 1 x 9 (0.6 * 0.1 * ...).
V = 10
TRAP = {0: [0, 0.6, 0.4] + [0] * 7, 2: [0] * 9 + [1.0],
        1: [0.1] * 10}


def test_beam_width_one_is_greedy_and_wider_beams_escape_the_trap():
    nl = table_model(TRAP, V)
    greedy_like, = beam_search(nl, [[0]], beam_width=1, max_new_tokens=3, eos_id=9)
    assert greedy_like[0].tolist()[:2] == [0, 1]
    best, = beam_search(nl, [[0]], beam_width=2, max_new_tokens=3, eos_id=9)
    assert best[0].tolist() == [0, 2, 9]
    assert best[1] == pytest.approx(np.log(0.4), abs=1e-9)
    scores = [beam_search(nl, [[0]], beam_width=k, max_new_tokens=3, eos_id=9)[0][1]
              for k in (1, 2, 3, 4)]
    assert all(a <= b + 1e-12 for a, b in zip(scores, scores[1:]))    # monotone in the width


def test_length_penalty_prefers_longer_hypotheses_with_larger_alpha():
    # every longer path is less likely: P(0 9) = 0.3, P(0 1 9) = 0.7 * 0.4 = 0.28,
    # P(0 1 2 9) = 0.7 * 0.6 * 0.5 = 0.21, P(0 1 2 3 9) = 0.21
    table = {0: [0, 0.7] + [0] * 7 + [0.3], 1: [0, 0, 0.6] + [0] * 6 + [0.4],
             2: [0, 0, 0, 0.5] + [0] * 5 + [0.5], 3: [0] * 9 + [1.0]}
    nl = table_model(table, V)
    short, = beam_search(nl, [[0]], beam_width=3, max_new_tokens=4, eos_id=9, alpha=0.0)
    long_, = beam_search(nl, [[0]], beam_width=3, max_new_tokens=4, eos_id=9, alpha=5.0)
    assert short[0].tolist() == [0, 9]                                # alpha 0: most likely
    assert len(long_[0]) > 2
    assert length_penalty(1, 0.6) == pytest.approx((6 / 6) ** 0.6)
    assert length_penalty(10, 0.6) == pytest.approx((15 / 6) ** 0.6)


def test_repetition_penalty_and_no_repeat_ngrams():
    logits = np.array([[2.0, -1.0, 0.5]])
    out = apply_repetition_penalty(logits, np.array([[0, 1]]), 2.0)
    np.testing.assert_array_equal(out, [[1.0, -2.0, 0.5]])             # / if > 0, * if < 0
    blocked = block_repeated_ngrams(np.zeros((1, 5)), np.array([[1, 2, 3, 1]]), 2)
    assert np.isinf(blocked[0, 2]) and np.isfinite(blocked[0, [0, 1, 3, 4]]).all()
    loop = {t: np.eye(V)[t % 3 + 1] * 0.9 + 0.01 for t in range(V)}    # 1 2 3 1 2 3 ...
    nl = table_model(loop, V)
    plain, = beam_search(nl, [[0]], beam_width=2, max_new_tokens=8)
    assert plain[0].tolist()[1:7] == [1, 2, 3, 1, 2, 3]
    nr, = beam_search(nl, [[0]], beam_width=2, max_new_tokens=8, no_repeat_ngram_size=2)
    bigrams = list(zip(nr[0][:-1].tolist(), nr[0][1:].tolist()))
    assert len(bigrams) == len(set(bigrams))


def test_beam_search_batched_prompts_and_a_real_gpt():
    from tinyllm.models import GPT, GPTConfig
    tl.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=12, n_layer=1, n_head=2, n_embd=16)).eval()
    nl = lambda s: m(s[:, -16:]).numpy()[:, -1]                        # noqa: E731
    res = beam_search(nl, [[1, 2], [3, 4]], beam_width=3, max_new_tokens=5)
    assert len(res) == 2 and all(len(t) == 7 for t, _ in res)
    greedy = generate(m, np.array([[1, 2]]), 5, greedy=True)[0]
    assert res[0][1] >= beam_search(nl, [[1, 2]], beam_width=1, max_new_tokens=5)[0][1] - 1e-9
    assert beam_search(nl, [[1, 2]], beam_width=1, max_new_tokens=5)[0][0].tolist() == \
        greedy.tolist()
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(nl, [[1]], beam_width=0)

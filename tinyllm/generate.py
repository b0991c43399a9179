"""Decoding: turning a language model's next-token distribution into text.

A language model gives p(x_t | x_<t). Generation picks x_t, appends it, and asks again:

- greedy: x_t = argmax p (deterministic; tends to repeat itself);
- sampling with temperature tau: draw from softmax(logits / tau); tau < 1 sharpens the
  distribution towards greedy, tau > 1 flattens it;
- top-k: keep only the k most likely tokens, renormalize, draw;
- top-p (nucleus, Holtzman et al. 2020): keep the smallest set of most likely tokens whose
  probabilities sum to at least p, renormalize, draw.

Everything here runs under ``no_grad`` on NumPy arrays of logits. Models with a KV cache
(``model.new_cache()``, as GPT; tinyllm/nn/kv_cache.py) process the prompt once and then one
new token per step; once the sequence outgrows ``block_size`` (learned positions end there)
each step recomputes the last ``block_size`` tokens, as nanoGPT does.

A step is ``model(new_tokens, cache=cache)``, the readable forward, by default. With the
kernel switch on (``tinyllm.kernels.set_impl("auto")``; ``tinyllm sample`` sets it), a GPT or
Llama takes its accelerator beside it: the compiled decode step (tinyllm/decoding.py,
tinyllm/kernels/decode.py), one call per token through every layer, writing the same cache.
The prompt still goes through the readable forward; tests hold the two equal token for token.
"""
import numpy as np

from tinyllm import backend, decoding
from tinyllm.autograd.grad_mode import no_grad
from tinyllm.dispatch import accelerator


class NextLogits:
    """Logits (B, V) of the token after each row of ``seqs`` (B, t), through a language
    model's KV cache: called with the whole sequences each time, it feeds the model only what
    the cache has not seen (the prompt, then one token). Past ``block_size`` it recomputes the
    last block_size tokens instead (the cache's positions have run out).

    compiled: a CompiledDecoder (``compiled_decoder(model)``) for the single-token steps, or
    None for the readable forward. ``reorder(index)`` follows beam search (a cache without
    ``reorder``, like the LSTM's, is not used then: every step recomputes).
    """

    def __init__(self, model, block_size=None, use_cache=True, compiled=None, reorder=False):
        self.model, self.block_size, self.compiled = model, block_size, compiled
        cache = model.new_cache() if use_cache and hasattr(model, "new_cache") else None
        if reorder and not hasattr(cache, "reorder"):
            cache = None
        self.cache, self.primed = cache, False        # primed: has the cache seen the prompt?

    def __call__(self, seqs):
        cache, T = self.cache, seqs.shape[1]
        if cache is None or (self.block_size is not None and T > self.block_size):
            window = seqs if self.block_size is None else seqs[:, -self.block_size:]
            return self.model(window).data[:, -1]                         # (B, T, V) -> (B, V)
        fresh = seqs[:, -1:] if self.primed else seqs                     # prompt, then 1 token
        self.primed = True
        if self.compiled is not None and fresh.shape[1] == 1 and \
                self.compiled.fits(cache, fresh.shape[0]):
            return self.compiled.step(fresh[:, 0], cache)                 # accelerator: (B, V)
        return self.model(fresh, cache=cache).data[:, -1]                 # (B, T, V) -> (B, V)

    def reorder(self, index):
        if self.cache is not None:
            self.cache.reorder(index)


def compiled_decoder(model):
    """The compiled decode step for ``model`` when the switch takes the "decode" accelerator
    and the kernel covers the model (GPT, Llama on NumPy arrays), else None."""
    weight = decoding.first_weight(model)
    if weight is None or accelerator("decode", weight) != "numba":
        return None
    return decoding.compile_decoder(model)


def filter_logits(logits, top_k=None, top_p=None):
    """Logits (B, V) with everything outside the top-k / top-p set set to -inf (a copy)."""
    logits = np.array(logits, dtype=np.float64, copy=True)
    V = logits.shape[-1]
    if top_k is not None:
        if not 1 <= top_k:
            raise ValueError(f"filter_logits: top_k must be >= 1, got {top_k}")
        k = min(int(top_k), V)
        kth = np.sort(logits, axis=-1)[:, V - k][:, None]          # the k-th largest per row
        logits[logits < kth] = -np.inf
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"filter_logits: top_p must be in (0, 1], got {top_p}")
        order = np.argsort(-logits, axis=-1)                          # most likely first
        sorted_logits = np.take_along_axis(logits, order, axis=-1)
        p = np.exp(sorted_logits - sorted_logits[:, :1])
        p /= p.sum(axis=-1, keepdims=True)
        before = np.cumsum(p, axis=-1) - p                            # mass of the better ones
        drop_sorted = before >= top_p                                 # keeps at least the top 1
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        logits[drop] = -np.inf
    return logits


def sample_next(logits, rng, temperature=1.0, top_k=None, top_p=None, greedy=False):
    """Next token ids (B,) from logits (B, V)."""
    logits = np.asarray(backend.asnumpy(logits), dtype=np.float64)
    if greedy or temperature == 0:
        return logits.argmax(axis=-1)
    if not temperature >= 0:                                          # NaN too
        raise ValueError(f"sample_next: temperature must be >= 0, got {temperature}")
    z = filter_logits(logits / temperature, top_k, top_p)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    u = rng.random((p.shape[0], 1))                                   # one draw per row
    return np.minimum((np.cumsum(p, axis=-1) < u).sum(axis=-1), p.shape[1] - 1)


@no_grad()
def generate(model, idx, max_new_tokens, rng=None, temperature=1.0, top_k=None, top_p=None,
             greedy=False, eos_id=None, block_size=None, use_cache=True, repetition_penalty=1.0,
             no_repeat_ngram_size=0, on_token=None):
    """Extend prompts ``idx`` (B, T0) by ``max_new_tokens`` tokens; returns (B, T0 + n).

    ``model(ids)`` must return logits (B, T, V) (GPT does). After a row emits ``eos_id`` it
    keeps emitting eos_id, and generation stops early once every row has. ``rng`` (a NumPy
    Generator) makes sampling repeatable. ``repetition_penalty`` and ``no_repeat_ngram_size``
    reshape the logits first (as in ``beam_search``); ``on_token(ids)`` is called with each
    step's new tokens (B,), e.g. to print text as it is generated.
    """
    if max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
    if not repetition_penalty > 0:
        raise ValueError(f"generate: repetition_penalty must be > 0, got {repetition_penalty}")
    rng = rng if rng is not None else np.random.default_rng()
    block_size = block_size or getattr(getattr(model, "config", None), "block_size", None)
    out = np.asarray(backend.asnumpy(getattr(idx, "data", idx)), dtype=np.int64)
    if out.ndim != 2:
        raise ValueError(f"generate: prompts must be (B, T) token ids, got shape {out.shape}")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    finished = np.zeros(out.shape[0], dtype=bool)
    try:
        compiled = compiled_decoder(model) if use_cache else None
        next_logits = NextLogits(model, block_size, use_cache, compiled)
        for _ in range(max_new_tokens):
            last = next_logits(out)                                       # (B, V)
            if repetition_penalty != 1.0 or no_repeat_ngram_size:
                last = np.asarray(backend.asnumpy(last), dtype=np.float64)
                last = apply_repetition_penalty(last, out, repetition_penalty)
                last = block_repeated_ngrams(last, out, no_repeat_ngram_size)
            nxt = sample_next(last, rng, temperature, top_k, top_p, greedy)
            if eos_id is not None:
                nxt = np.where(finished, eos_id, nxt)
                finished |= nxt == eos_id
            out = np.concatenate([out, nxt[:, None].astype(np.int64)], axis=1)
            if on_token is not None:
                on_token(out[:, -1])
            if eos_id is not None and finished.all():
                break
    finally:
        if was_training:
            model.train()
    return out


# ----------------------------------------------------------------------------------------------
# beam search

def length_penalty(length, alpha):
    """GNMT's length normalization (Wu et al. 2016): lp(Y) = ((5 + |Y|) / 6)^alpha.

    A hypothesis is ranked by log P(Y) / lp(Y). Log-probabilities only fall as tokens are
    added, so unnormalized beam search prefers short outputs; alpha > 0 compensates
    (alpha = 0: no normalization; GNMT used 0.6-0.7).
    """
    return ((5.0 + length) / 6.0) ** alpha


def apply_repetition_penalty(logits, seqs, penalty):
    """CTRL's repetition penalty (Keskar et al. 2019), as Hugging Face applies it: for every
    token already in a row's sequence, divide its logit by ``penalty`` if positive, multiply
    if negative (both make it less likely for penalty > 1). logits (K, V), seqs (K, t)."""
    if penalty == 1.0:
        return logits
    logits = logits.copy()
    for k in range(logits.shape[0]):
        seen = np.unique(seqs[k])
        vals = logits[k, seen]
        logits[k, seen] = np.where(vals > 0, vals / penalty, vals * penalty)
    return logits


def block_repeated_ngrams(logits, seqs, n):
    """Set to -inf every token that would complete an n-gram already present in the row's
    sequence (no_repeat_ngram_size). logits (K, V), seqs (K, t)."""
    if n <= 0 or seqs.shape[1] < n - 1:
        return logits
    logits = logits.copy()
    for k in range(seqs.shape[0]):
        s = seqs[k].tolist()
        prefix = tuple(s[len(s) - (n - 1):]) if n > 1 else ()
        for i in range(len(s) - n + 1):
            if tuple(s[i:i + n - 1]) == prefix:
                logits[k, s[i + n - 1]] = -np.inf
    return logits


@no_grad()
def beam_search(next_logits, prompts, beam_width=4, max_new_tokens=20, eos_id=None, alpha=0.0,
                repetition_penalty=1.0, no_repeat_ngram_size=0):
    """Beam search over continuations of each prompt.

    next_logits: a language model (GPT, Llama: ``model(ids, cache=...)`` -> logits (K, t, V)
                 with ``new_cache()``), decoded through its KV cache, whose rows follow the
                 beams (``reorder``) and which takes the compiled step as ``generate`` does;
                 or a callable, sequences (K, t) int64 -> logits (K, V) of the token after
                 each (e.g. ``lambda s: model(s[:, -block_size:]).numpy()[:, -1]``).
    prompts:     (B, T0) token ids.
    Keeps the ``beam_width`` best partial hypotheses by total log-probability; a hypothesis
    ending in ``eos_id`` is finished. Stops when ``beam_width`` hypotheses have finished or
    after ``max_new_tokens``; then returns, per prompt, the best hypothesis by
    log P / length_penalty(new tokens, alpha): a list of (tokens (T0 + n,), score) pairs.
    """
    prompts = np.asarray(prompts, dtype=np.int64)
    if prompts.ndim != 2:
        raise ValueError(f"beam_search: prompts must be (B, T) token ids, got {prompts.shape}")
    if beam_width < 1:
        raise ValueError(f"beam_search: beam_width must be >= 1, got {beam_width}")
    model = next_logits if hasattr(next_logits, "new_cache") else None
    if model is not None:
        was_training = getattr(model, "training", False)
        model.eval()
        compiled = compiled_decoder(model)                        # packed once for all prompts
        block_size = getattr(getattr(model, "config", None), "block_size", None)
    try:
        results = [_beam_search_one(
            NextLogits(model, block_size, True, compiled, reorder=True) if model is not None
            else next_logits, prompt, beam_width, max_new_tokens, eos_id, alpha,
            repetition_penalty, no_repeat_ngram_size) for prompt in prompts]
    finally:
        if model is not None and was_training:
            model.train()
    return results


def _beam_search_one(next_logits, prompt, beam_width, max_new_tokens, eos_id, alpha,
                     repetition_penalty, no_repeat_ngram_size):
    """beam_search for one prompt (T0,): (tokens, score) of the best hypothesis.
    ``next_logits`` may have ``reorder(index)`` (NextLogits): called with the beam each new
    hypothesis extends, so that its cache rows follow."""
    T0 = len(prompt)
    seqs, scores = prompt[None, :], np.zeros(1)                       # (K, t), (K,)
    finished = []                                                      # (tokens, log P)
    out_of_steps = True
    for _ in range(max_new_tokens):
        logits = np.asarray(backend.asnumpy(next_logits(seqs)), dtype=np.float64)
        logits = apply_repetition_penalty(logits, seqs, repetition_penalty)
        logits = block_repeated_ngrams(logits, seqs, no_repeat_ngram_size)
        m = logits.max(axis=1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
        cand = (scores[:, None] + logp).reshape(-1)                   # (K * V,)
        V = logp.shape[1]
        order = np.argsort(-cand, kind="stable")[: 2 * beam_width]
        new_seqs, new_scores, parents = [], [], []
        for c in order:
            if not np.isfinite(cand[c]):
                break
            k, tok = divmod(int(c), V)
            seq = np.append(seqs[k], tok)
            if eos_id is not None and tok == eos_id:
                finished.append((seq, cand[c]))
            else:
                new_seqs.append(seq)
                new_scores.append(cand[c])
                parents.append(k)
            if len(new_seqs) == beam_width:
                break
        if len(finished) >= beam_width or not new_seqs:
            out_of_steps = False                                       # done early
            break
        seqs, scores = np.stack(new_seqs), np.array(new_scores)
        if hasattr(next_logits, "reorder"):
            next_logits.reorder(np.array(parents))                    # cache row k -> beam k
    if out_of_steps or not finished:
        finished += list(zip(seqs, scores))                            # unfinished, at the limit
    best = max(finished, key=lambda f: f[1] / length_penalty(len(f[0]) - T0, alpha))
    return best[0], float(best[1] / length_penalty(len(best[0]) - T0, alpha))

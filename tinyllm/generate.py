"""Decoding: turning a language model's next-token distribution into text.

A language model gives p(x_t | x_<t). Generation picks x_t, appends it, and asks again:

- greedy: x_t = argmax p (deterministic; tends to repeat itself);
- sampling with temperature tau: draw from softmax(logits / tau); tau < 1 sharpens the
  distribution towards greedy, tau > 1 flattens it;
- top-k: keep only the k most likely tokens, renormalize, draw;
- top-p (nucleus, Holtzman et al. 2020): keep the smallest set of most likely tokens whose
  probabilities sum to at least p, renormalize, draw.

Everything here runs under ``no_grad`` on NumPy arrays of logits. Models with a KV cache
(``model.new_cache()``, as GPT) process the prompt once and then one new token per step; once
the sequence outgrows ``block_size`` (learned positions end there) each step recomputes the
last ``block_size`` tokens, as nanoGPT does.
"""
import numpy as np

from tinyllm import backend
from tinyllm.autograd.grad_mode import no_grad


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
    if temperature < 0:
        raise ValueError(f"sample_next: temperature must be >= 0, got {temperature}")
    z = filter_logits(logits / temperature, top_k, top_p)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    u = rng.random((p.shape[0], 1))                                   # one draw per row
    return np.minimum((np.cumsum(p, axis=-1) < u).sum(axis=-1), p.shape[1] - 1)


@no_grad()
def generate(model, idx, max_new_tokens, rng=None, temperature=1.0, top_k=None, top_p=None,
             greedy=False, eos_id=None, block_size=None, use_cache=True):
    """Extend prompts ``idx`` (B, T0) by ``max_new_tokens`` tokens; returns (B, T0 + n).

    ``model(ids)`` must return logits (B, T, V) (GPT does). After a row emits ``eos_id`` it
    keeps emitting eos_id, and generation stops early once every row has. ``rng`` (a NumPy
    Generator) makes sampling repeatable.
    """
    rng = rng if rng is not None else np.random.default_rng()
    block_size = block_size or getattr(getattr(model, "config", None), "block_size", None)
    out = np.asarray(backend.asnumpy(getattr(idx, "data", idx)), dtype=np.int64)
    if out.ndim != 2:
        raise ValueError(f"generate: prompts must be (B, T) token ids, got shape {out.shape}")
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    finished = np.zeros(out.shape[0], dtype=bool)
    cache = model.new_cache() if use_cache and hasattr(model, "new_cache") else None
    try:
        for _ in range(max_new_tokens):
            if cache is not None and (block_size is None or out.shape[1] <= block_size):
                fresh = out if "k" not in cache[0] else out[:, -1:]       # prompt, then 1 token
                logits = model(fresh, cache=cache)                        # (B, T, V)
            else:
                window = out if block_size is None else out[:, -block_size:]
                logits = model(window)                                    # (B, T, V)
            nxt = sample_next(logits.data[:, -1], rng, temperature, top_k, top_p, greedy)
            if eos_id is not None:
                nxt = np.where(finished, eos_id, nxt)
                finished |= nxt == eos_id
            out = np.concatenate([out, nxt[:, None].astype(np.int64)], axis=1)
            if eos_id is not None and finished.all():
                break
    finally:
        if was_training:
            model.train()
    return out

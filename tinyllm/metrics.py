"""Evaluation metrics: a language model's loss over a whole split, perplexity, corpus BLEU.

``windows(ids, T)`` cuts a split into consecutive windows of T tokens, every token predicted
once from the earlier tokens of its window; ``mean_loss(model, x, y)`` is the model's mean
cross-entropy over them, a few rows per forward. ``tinyllm eval`` and the examples score a
whole split this way.

Perplexity is e^(mean cross-entropy in nats): the effective number of equally likely choices
the model hesitates between per token (a uniform guess over V tokens has perplexity V).

BLEU (Papineni et al. 2002), corpus level:
    p_n = sum over sentences of clipped n-gram matches / sum of hypothesis n-grams, n = 1..4
          (a hypothesis n-gram counts at most as often as it occurs in the reference)
    BP  = 1 if c > r else exp(1 - r / c)      c, r: total hypothesis / reference lengths
    BLEU = 100 * BP * exp(mean_n log p_n)
``corpus_bleu`` tokenizes like sacreBLEU's default "13a" tokenizer (for plain text without
markup), so its scores equal ``sacrebleu.corpus_bleu`` on the same strings (tested when sacreBLEU
is installed).
"""
import math
import re
from collections import Counter

from tinyllm.autograd.grad_mode import no_grad


def windows(ids, block_size):
    """A split ``ids`` (N,) as consecutive windows: x (M, T) and the next tokens y (M, T),
    M = (N - 1) // T (the last tokens that fill no window are left out)."""
    M = (len(ids) - 1) // block_size
    x = ids[:M * block_size].reshape(M, block_size)                  # (M, T)
    y = ids[1:M * block_size + 1].reshape(M, block_size)
    return x, y


@no_grad()
def mean_loss(model, x, y, rows=64):
    """Mean cross-entropy of ``model`` (``model(x, y)`` -> (logits, loss)) over every row of
    x, y (M, T), ``rows`` rows per forward, in eval mode (the model's mode is restored)."""
    was_training = getattr(model, "training", False)
    model.eval()
    total = 0.0
    try:
        for i in range(0, len(x), rows):
            total += model(x[i:i + rows], y[i:i + rows])[1].item() * len(x[i:i + rows])
    finally:
        if was_training:
            model.train()
    return total / len(x)


def perplexity(mean_loss):
    """e^loss for a mean cross-entropy in nats."""
    return math.exp(mean_loss)


def tokenize_13a(line):
    """sacreBLEU's default tokenization (mteval-v13a), for text without SGML markup."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = (line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                .replace("&gt;", ">"))
    line = f" {line} "
    line = re.sub(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 ", line)   # punctuation
    line = re.sub(r"([^0-9])([\.,])", r"\1 \2 ", line)                # period/comma not in numbers
    line = re.sub(r"([\.,])([^0-9])", r" \1 \2", line)
    line = re.sub(r"([0-9])(-)", r"\1 \2 ", line)                     # dash after a digit
    return line.split()


def _ngrams(tokens, n):
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses, references, max_n=4, tokenize=tokenize_13a):
    """Corpus BLEU (0-100) of hypothesis strings against one reference string each."""
    if len(hypotheses) != len(references):
        raise ValueError(f"corpus_bleu: {len(hypotheses)} hypotheses but {len(references)} "
                         f"references")
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        h, r = tokenize(hyp), tokenize(ref)
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_n + 1):
            hc, rc = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100.0 * bp * math.exp(log_p)

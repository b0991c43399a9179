"""Perplexity and corpus BLEU (checked against sacreBLEU when it is installed)."""
import math

import pytest

from tinyllm.metrics import corpus_bleu, perplexity, tokenize_13a

HYP = ["the cat sat on the mat.", "There is a cat on the mat, isn't there?",
       "It costs 3,000 dollars - no more.", "a b c d e f", "I like green eggs and ham!"]
REF = ["the cat is on the mat.", "There is a cat on the mat, is it not?",
       "It costs 3,000 dollars, no more.", "a b c d e f", "I do not like green eggs."]


def test_perplexity():
    assert perplexity(math.log(65)) == pytest.approx(65)


def test_bleu_by_hand():
    # one sentence: hyp "a b c d" vs ref "a b c e": p1 3/4, p2 2/3, p3 1/2, p4 0/1 -> 0
    assert corpus_bleu(["a b c d"], ["a b c e"]) == 0.0
    # identical corpora -> 100; a shorter hypothesis pays the brevity penalty exp(1 - r/c)
    assert corpus_bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(100.0)
    short = corpus_bleu(["a b c d"], ["a b c d e"])
    assert short == pytest.approx(100 * math.exp(1 - 5 / 4))
    assert tokenize_13a("Hello, world! 3,000 dollars-5") == [
        "Hello", ",", "world", "!", "3,000", "dollars-5"]
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        corpus_bleu(["a", "b"], ["a"])


def test_bleu_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu", reason="sacreBLEU not installed")
    for k in range(1, len(HYP) + 1):
        ours = corpus_bleu(HYP[:k], REF[:k])
        theirs = sacrebleu.corpus_bleu(HYP[:k], [REF[:k]]).score
        assert ours == pytest.approx(theirs, abs=1e-9), k

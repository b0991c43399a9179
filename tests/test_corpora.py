"""Corpora: resolution, download (without network), splits, batches, TSV loaders."""
import hashlib
import io
import os
import urllib.request

import numpy as np
import pytest

from tinyllm.data import corpora


def test_registry_matches_the_shared_files(shared_data):
    for name in corpora.CORPORA:
        assert corpora.verify(name), name
    text = corpora.load_text("tinyshakespeare")
    assert len(text) == 1115394 and len(set(text)) == 65


def test_missing_corpus_without_network_names_the_place(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYLLM_DATA", str(tmp_path))

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError) as info:
        corpora.corpus_path("tinyshakespeare")
    msg = str(info.value)
    assert str(tmp_path / "tinyshakespeare.txt") in msg and "TINYLLM_DATA" in msg
    assert "network is unreachable" in msg and "karpathy/char-rnn" in msg
    with pytest.raises(FileNotFoundError, match="no public download"):
        corpora.corpus_path("sentiment_train")
    with pytest.raises(FileNotFoundError, match="not a registered corpus"):
        corpora.corpus_path("no_such_corpus.txt")


def _fake_urlopen(data):
    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    return lambda url, timeout=None: Response(data)


def test_download_checks_sha256_and_writes_atomically(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYLLM_DATA", str(tmp_path / "cache"))
    good = b"To be, or not to be\n"
    entry = corpora.Corpus("t.txt", hashlib.sha256(good).hexdigest(), "http://example/t.txt")
    monkeypatch.setitem(corpora.CORPORA, "toy", entry)
    monkeypatch.setattr(urllib.request, "urlopen", _fake_urlopen(b"corrupted"))
    with pytest.raises(FileNotFoundError, match="sha256 mismatch"):
        corpora.corpus_path("toy")
    assert not (tmp_path / "cache" / "t.txt").exists()
    monkeypatch.setattr(urllib.request, "urlopen", _fake_urlopen(good))
    path = corpora.corpus_path("toy")
    assert path.read_bytes() == good and os.listdir(path.parent) == ["t.txt"]   # no temp left


def test_local_file_works_as_a_corpus(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("hello\n", encoding="utf-8")
    assert corpora.load_text(str(f)) == "hello\n"


def test_split_and_batches_are_deterministic():
    data = np.arange(1000)
    train, val = corpora.train_val_split(data)
    assert len(train) == 900 and val[0] == 900
    x1, y1 = corpora.get_batch(train, 4, 8, np.random.default_rng(0))
    x2, y2 = corpora.get_batch(train, 4, 8, np.random.default_rng(0))
    np.testing.assert_array_equal(x1, x2)
    assert x1.shape == (4, 8) and x1.dtype == np.int64
    np.testing.assert_array_equal(y1, x1 + 1)                  # next tokens
    assert x1.max() < 900 and y1.max() < 900                   # never crosses into val
    with pytest.raises(ValueError, match="cannot fill a window"):
        corpora.get_batch(np.arange(5), 2, 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="val_fraction"):
        corpora.train_val_split(data, 1.5)


def test_tsv_loaders(shared_data):
    train = corpora.load_labelled_sentences("sentiment_train")
    test = corpora.load_labelled_sentences("sentiment_test")
    assert len(train) == 2400 and len(test) == 600
    assert {label for _, label in train} == {0, 1}
    assert sum(label for _, label in test) == 300
    pairs = corpora.load_sentence_pairs("eng_fra")
    assert len(pairs) == 20000 and all(src and tgt for src, tgt in pairs[:100])

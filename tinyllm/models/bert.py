"""BERT: a bidirectional Transformer encoder pretrained by masked-LM and next-sentence prediction
(Devlin et al. 2018), with Hugging Face's module and parameter names.

    input_ids, token_type_ids (B, T) -> word + position + token_type embeddings -> LayerNorm
      -> dropout -> num_hidden_layers x BertLayer -> sequence_output (B, T, C)
    pooler: tanh(dense(sequence_output[:, 0]))  -> pooled_output (B, C)   (the [CLS] summary)
    BertLayer (post-LN, as the original Transformer):
      h = LayerNorm(x + dropout(dense(SelfAttention(x))))            attention.output
      y = LayerNorm(h + dropout(dense(gelu(intermediate(h)))))       intermediate, output

No causal mask: every position attends to every real (non-padding) position, which is why BERT
cannot be trained as a next-token LM and is trained instead to fill in masked tokens (MLM) and
to tell whether sentence B follows sentence A (NSP).

Parameter names follow HF ``transformers`` (``bert-base-uncased``,
``sentence-transformers/all-MiniLM-L6-v2``) one-to-one: ``embeddings.word_embeddings``,
``embeddings.position_embeddings``, ``embeddings.token_type_embeddings``,
``embeddings.LayerNorm``, ``encoder.layer.{i}.attention.self.{query,key,value}``,
``encoder.layer.{i}.attention.output.{dense,LayerNorm}``, ``encoder.layer.{i}.intermediate.dense``,
``encoder.layer.{i}.output.{dense,LayerNorm}``, ``pooler.dense``; heads ``cls.predictions.*``,
``cls.seq_relationship``, ``classifier``, with the encoder under ``bert.``.

LAYOUT: tinyllm's Linear computes y = x @ W + b with W stored (in, out); PyTorch's nn.Linear
(hence every HF checkpoint) stores W as (out, in). ``convert_hf_bert_state_dict`` transposes
every 2-D Linear weight (query/key/value/dense/seq_relationship/classifier) but not the
embedding tables (V, C), which are (rows, C) in both; ``BertModel.from_hf_state_dict`` and the
heads' ``from_hf_state_dict`` build a model and load a converted checkpoint in one call.

Attention masks follow HF: ``attention_mask`` (B, T) is 1 at real tokens and 0 at padding; it
becomes tinyllm's ``key_padding_mask`` (True = ignored key), so padded keys get weight exactly
0 (score -inf) where HF adds the most negative float (weight 0 as well, in float32 and 64).

Data transforms (pure NumPy, on integer ids; the tokenizer stays out): ``mask_tokens`` (MLM
inputs and labels, the 80/10/10 rule) and ``make_nsp_pairs`` (sentence pairs for NSP). They take
the special ids as arguments; BERT's uncased WordPiece vocabulary has them at
``BERT_UNCASED_SPECIAL_IDS``: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103.
"""
from dataclasses import dataclass

import numpy as np

from tinyllm import backend
from tinyllm import functional as F
from tinyllm.autograd.tensor import Tensor
from tinyllm.models._util import token_ids as _ids
from tinyllm.nn import Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, Parameter
from tinyllm.nn.attention import Attention, ResidualBlock

BERT_UNCASED_SPECIAL_IDS = {"pad": 0, "unk": 100, "cls": 101, "sep": 102, "mask": 103}


@dataclass
class BertConfig:
    vocab_size: int = 30522             # bert-base-uncased WordPiece vocabulary
    hidden_size: int = 768              # width C (n_embd) of every position (bert-base)
    num_hidden_layers: int = 12         # encoder layers (bert-base: 12, bert-large: 24)
    num_attention_heads: int = 12       # heads per layer; hidden_size must divide by it
    intermediate_size: int = 3072       # feed-forward width, 4 C as in the Transformer
    hidden_act: str = "gelu"            # "gelu" is the exact erf form (HF's name for it)
    hidden_dropout_prob: float = 0.1    # dropout on embeddings and both residual branches
    attention_probs_dropout_prob: float = 0.1   # dropout on the attention weights
    max_position_embeddings: int = 512  # learned positions, the longest input
    type_vocab_size: int = 2            # segment ids: 0 = sentence A, 1 = sentence B
    initializer_range: float = 0.02     # std of the N(0, std) init of weights
    layer_norm_eps: float = 1e-12       # BERT's LayerNorm epsilon (TF's original value)
    pad_token_id: int = 0               # [PAD]; its word-embedding row starts at 0, gets no grad
    classifier_dropout: float | None = None    # before `classifier`; None: hidden_dropout_prob

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"BertConfig: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"BertConfig: hidden_act must be one of {sorted(_ACTIVATIONS)}, "
                             f"got {self.hidden_act!r}")


_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),                                   # exact: x Phi(x)
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),           # HF's names for the tanh form
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": lambda x: F.relu(x),
}


def attention_mask_to_key_padding_mask(attention_mask, device="cpu"):
    """HF's ``attention_mask`` (B, T), 1 = real token / 0 = padding, to a boolean mask
    (B, 1, 1, T) that broadcasts over heads and queries, True = ignored key. None stays None."""
    if attention_mask is None:
        return None
    m = _ids(attention_mask)
    if m.ndim != 2:
        raise ValueError(f"Bert: attention_mask must be (B, T), got shape {m.shape}")
    return backend.to_device(m == 0, device)[:, None, None, :]


# ----------------------------------------------------------------------------------------------
# the encoder


class BertEmbeddings(Module):
    """word_embeddings[ids] + position_embeddings[:T] + token_type_embeddings[types], then
    LayerNorm and dropout: (B, T) ids -> (B, T, C)."""

    def __init__(self, config):
        super().__init__()
        C = config.hidden_size
        self.word_embeddings = Embedding(config.vocab_size, C, padding_idx=config.pad_token_id)
        self.position_embeddings = Embedding(config.max_position_embeddings, C)
        self.token_type_embeddings = Embedding(config.type_vocab_size, C)
        self.LayerNorm = LayerNorm(C, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids):
        T = input_ids.shape[1]
        pos = backend.xp_for_device(self.word_embeddings.weight.device).arange(T)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(pos)
             + self.token_type_embeddings(token_type_ids))                # (B, T, C)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(Attention):
    """HF's ``attention.self``: multi-head self-attention with separate ``query``, ``key``,
    ``value`` projections (C, C), no causal mask, and dropout on the attention weights. The
    forward is tinyllm.nn.attention.Attention's, and it stops at the merged heads (B, T, C):
    the output projection, dropout and LayerNorm live in ``attention.output`` (HF's names).

    ``attention.self(x, attn_mask=mask, need_weights=True)`` -> (y, weights (B, H, T, T)),
    with ``mask`` (B, 1, 1, T) True = ignored key (``attention_mask_to_key_padding_mask``)."""

    def __init__(self, config):
        super().__init__(config.hidden_size, config.num_attention_heads,
                         config.attention_probs_dropout_prob)
        C = self.n_embd
        self.query = Linear(C, C)
        self.key = Linear(C, C)
        self.value = Linear(C, C)

    def project(self, x, kv):
        q = self.query(x)
        if kv is None:
            return q, None, None
        return q, self.key(kv), self.value(kv)


class BertOutput(Module):
    """dropout(dense(branch)): a sub-layer's branch back to the residual width, (B, T, in) ->
    (B, T, C), with the ``LayerNorm`` that closes its residual in BertLayer (HF keeps it
    here). HF's ``attention.output`` (BertSelfOutput, in = hidden_size) and ``output``
    (BertOutput, in = intermediate_size)."""

    def __init__(self, config, in_features):
        super().__init__()
        self.dense = Linear(in_features, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, branch):
        return self.dropout(self.dense(branch))


class BertAttention(Module):
    """``self`` (the attention itself) and ``output`` (projection and dropout; the LayerNorm of
    the residual): x (B, T, C) -> the attention sub-layer's branch (B, T, C)."""

    def __init__(self, config):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertOutput(config, config.hidden_size)

    def forward(self, x, mask=None):
        return self.output(self.self(x, attn_mask=mask))


class BertIntermediate(Module):
    """act(dense(h)): (B, T, C) -> (B, T, intermediate_size)."""

    def __init__(self, config):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size)
        self.act = _ACTIVATIONS[config.hidden_act]

    def forward(self, h):
        return self.act(self.dense(h))


class BertLayer(ResidualBlock):
    """One post-LN encoder layer (tinyllm.nn.attention.ResidualBlock), with HF's names:

        h = attention.output.LayerNorm(x + attention(x))              attention sub-layer
        y = output.LayerNorm(h + output(intermediate(h)))              feed-forward sub-layer
    """

    def __init__(self, config):
        super().__init__(norm_first=False)
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config, config.intermediate_size)

    def feed_forward(self, h):
        return self.output(self.intermediate(h))       # (B, T, C) -> (B, T, I) -> (B, T, C)

    def forward(self, x, mask=None):
        h = self.residual(x, self.attention.output.LayerNorm, self.attention, mask)
        return self.residual(h, self.output.LayerNorm, self.feed_forward)


class BertEncoder(Module):
    def __init__(self, config):
        super().__init__()
        self.layer = ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, x, mask=None):
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertPooler(Module):
    """tanh(dense(x[:, 0])): the [CLS] position's vector, (B, T, C) -> (B, C). Pretrained by
    NSP, it is the input of sentence-level heads."""

    def __init__(self, config):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)

    def forward(self, x):
        return F.tanh(self.dense(x[:, 0]))


class BertModel(Module):
    """The BERT encoder. ``model(input_ids, token_type_ids=None, attention_mask=None)`` ->
    (sequence_output (B, T, C), pooled_output (B, C), or None without a pooler).

    token_type_ids default to 0 (all sentence A); attention_mask (B, T) 1 = real, 0 = padding,
    default all real. Outputs at padded positions are computed but meaningless.
    """

    def __init__(self, config, add_pooling_layer=True):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        _init_weights(self, config)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None):
        input_ids = _ids(input_ids)
        if input_ids.ndim != 2:
            raise ValueError(f"Bert: input_ids must be (B, T) token ids, got shape "
                             f"{input_ids.shape}")
        B, T = input_ids.shape
        if T > self.config.max_position_embeddings:
            raise ValueError(f"Bert: sequence length {T} exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        xp = backend.get_array_module(input_ids)
        token_type_ids = xp.zeros_like(input_ids) if token_type_ids is None else \
            _ids(token_type_ids)
        device = self.embeddings.word_embeddings.weight.device
        mask = attention_mask_to_key_padding_mask(attention_mask, device)    # (B, 1, 1, T)
        if mask is not None and (mask.shape[0], mask.shape[-1]) != (B, T):
            raise ValueError(f"Bert: attention_mask must have shape {(B, T)} like input_ids, "
                             f"got {(mask.shape[0], mask.shape[-1])}")
        x = self.encoder(self.embeddings(input_ids, token_type_ids), mask)   # (B, T, C)
        return x, (self.pooler(x) if self.pooler is not None else None)

    @classmethod
    def from_hf_state_dict(cls, state_dict, config, add_pooling_layer=None):
        """A BertModel holding an HF checkpoint's weights (name -> array, e.g. from
        ``safetensors.numpy.load_file`` or ``{k: v.numpy() for k, v in sd.items()}``).

        Keys may carry the ``bert.`` prefix of a checkpoint with heads (the heads are then
        dropped). ``add_pooling_layer=None`` adds the pooler when the checkpoint has one."""
        sd = convert_hf_bert_state_dict(state_dict)
        if any(k.startswith("bert.") for k in sd):
            sd = {k[len("bert."):]: v for k, v in sd.items() if k.startswith("bert.")}
        if add_pooling_layer is None:
            add_pooling_layer = "pooler.dense.weight" in sd
        model = cls(config, add_pooling_layer=add_pooling_layer)
        model.load_state_dict(sd, strict=True)
        return model


# ----------------------------------------------------------------------------------------------
# heads


class TiedDecoder(Module):
    """logits = x @ W^T + b with W the word embeddings (V, C) and b (V,) the head's bias, both
    shared: registered here so the state_dict carries HF's ``cls.predictions.decoder.weight``
    and ``.bias``, while ``parameters()`` holds each once."""

    def __init__(self, weight, bias):
        super().__init__()
        self.weight = weight
        self.bias = bias

    def forward(self, x):
        return x @ self.weight.T + self.bias                            # (B, T, C) -> (B, T, V)


class BertPredictionHeadTransform(Module):
    """LayerNorm(act(dense(x))): (B, T, C) -> (B, T, C), before the tied decoder."""

    def __init__(self, config):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.act = _ACTIVATIONS[config.hidden_act]
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(Module):
    """The MLM head: transform, then scores against every word embedding plus ``bias`` (V,)."""

    def __init__(self, config, word_embeddings):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.bias = _zeros_parameter(config.vocab_size, word_embeddings)
        self.decoder = TiedDecoder(word_embeddings, self.bias)

    def forward(self, x):
        return self.decoder(self.transform(x))                          # (B, T, V)


class BertPreTrainingHeads(Module):
    """``predictions`` (MLM, per position) and ``seq_relationship`` (NSP, Linear(C, 2) on the
    pooled output; class 0 = B follows A, 1 = B is random)."""

    def __init__(self, config, word_embeddings):
        super().__init__()
        self.predictions = BertLMPredictionHead(config, word_embeddings)
        self.seq_relationship = Linear(config.hidden_size, 2)

    def forward(self, sequence_output, pooled_output):
        return self.predictions(sequence_output), self.seq_relationship(pooled_output)


class BertForPreTraining(Module):
    """BERT with its two pretraining heads.

    ``model(input_ids, token_type_ids, attention_mask)`` -> (mlm_logits (B, T, V), nsp_logits
    (B, 2)); with ``labels`` (B, T) (the original id at masked positions, -100 elsewhere, as
    ``mask_tokens`` makes) and/or ``next_sentence_label`` (B,) -> (mlm_logits, nsp_logits,
    loss), loss = mean MLM cross-entropy over predicted positions + mean NSP cross-entropy
    (HF's total loss; a term whose labels are not given is left out).
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=True)
        self.cls = BertPreTrainingHeads(config, self.bert.embeddings.word_embeddings.weight)
        _init_weights(self.cls, config)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                next_sentence_label=None):
        sequence_output, pooled_output = self.bert(input_ids, token_type_ids, attention_mask)
        mlm_logits, nsp_logits = self.cls(sequence_output, pooled_output)
        if labels is None and next_sentence_label is None:
            return mlm_logits, nsp_logits
        loss = 0.0
        if labels is not None:
            B, T, V = mlm_logits.shape
            loss = loss + F.cross_entropy(mlm_logits.reshape(B * T, V),
                                          _ids(labels).reshape(B * T), ignore_index=-100)
        if next_sentence_label is not None:
            loss = loss + F.cross_entropy(nsp_logits, _ids(next_sentence_label).reshape(-1))
        return mlm_logits, nsp_logits, loss

    @classmethod
    def from_hf_state_dict(cls, state_dict, config):
        """A BertForPreTraining holding an HF ``BertForPreTraining`` checkpoint's weights."""
        model = cls(config)
        model.load_state_dict(convert_hf_bert_state_dict(state_dict), strict=True)
        return model


class BertForSequenceClassification(Module):
    """BERT + dropout + ``classifier`` Linear(C, num_labels) on the pooled output.

    ``model(input_ids, token_type_ids, attention_mask)`` -> logits (B, num_labels); with
    ``labels`` -> (logits, loss): cross-entropy for integer class labels, or, when
    ``num_labels == 1``, mean squared error against float targets (regression, as HF).

    Fine-tuning trains everything by default; ``freeze_base()`` freezes ``bert`` so that only
    the new head learns (the base then records no graph, and an optimizer skips its
    parameters, which get no gradient).
    """

    def __init__(self, config, num_labels=2):
        super().__init__()
        self.config, self.num_labels = config, num_labels
        self.bert = BertModel(config, add_pooling_layer=True)
        p = config.classifier_dropout
        self.dropout = Dropout(config.hidden_dropout_prob if p is None else p)
        self.classifier = Linear(config.hidden_size, num_labels)
        _init_weights(self.classifier, config)

    def freeze_base(self):
        """Train only the head: ``bert`` parameters stop requiring grad."""
        self.bert.requires_grad_(False)
        return self

    def unfreeze_base(self):
        self.bert.requires_grad_(True)
        return self

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None):
        _, pooled_output = self.bert(input_ids, token_type_ids, attention_mask)
        logits = self.classifier(self.dropout(pooled_output))          # (B, num_labels)
        if labels is None:
            return logits
        if self.num_labels == 1:
            target = labels.data if isinstance(labels, Tensor) else np.asarray(labels)
            loss = F.mse_loss(logits.reshape(-1), target.reshape(-1).astype(logits.dtype))
        else:
            loss = F.cross_entropy(logits, _ids(labels).reshape(-1))
        return logits, loss

    @classmethod
    def from_hf_state_dict(cls, state_dict, config, num_labels=2):
        """A BertForSequenceClassification holding an HF checkpoint's weights."""
        model = cls(config, num_labels)
        model.load_state_dict(convert_hf_bert_state_dict(state_dict), strict=True)
        return model


def _init_weights(root, config):
    """HF BERT's init: Linear and Embedding weights N(0, initializer_range), the [PAD] row of
    the word embeddings zero, biases zero (the MLM ``bias`` too), LayerNorm ones and zeros."""
    gen = backend.get_generator(backend.default_device())
    std = config.initializer_range
    for _, m in root.named_modules():
        if isinstance(m, (Linear, Embedding)):
            m.weight.data[...] = (gen.standard_normal(m.weight.shape) * std).astype(m.weight.dtype)
            if isinstance(m, Embedding) and m.padding_idx is not None:
                m.weight.data[m.padding_idx] = 0
        if isinstance(m, (Linear, BertLMPredictionHead)) and m.bias is not None:
            m.bias.data[...] = 0
        if isinstance(m, LayerNorm):
            m.weight.data[...] = 1
            m.bias.data[...] = 0


def _zeros_parameter(n, like):
    xp = backend.get_array_module(like.data)
    return Parameter(xp.zeros((n,), like.dtype))


# ----------------------------------------------------------------------------------------------
# HF checkpoints


_HF_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def convert_hf_bert_state_dict(state_dict):
    """HF BERT state_dict (name -> array or CPU torch tensor) -> tinyllm names and layouts.

    - every 2-D ``*.weight`` of a Linear (query, key, value, dense, seq_relationship,
      classifier: anything but an embedding table) is transposed (out, in) -> (in, out);
      embedding tables (``*_embeddings.weight``) and the tied MLM decoder (V, C) are kept;
    - the position_ids / token_type_ids buffers are dropped;
    - TF-era names ``LayerNorm.gamma`` / ``.beta`` become ``.weight`` / ``.bias``;
    - tied copies that ``save_pretrained`` leaves out (``cls.predictions.decoder.weight`` =
      the word embeddings, ``.decoder.bias`` = ``cls.predictions.bias``) are filled back in.
    Returns a new dict of NumPy arrays; the input is not modified.
    """
    out = {}
    for k, v in state_dict.items():
        if any(k == b or k.endswith("." + b) for b in _HF_BUFFERS):
            continue
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight")
        k = k.replace("LayerNorm.beta", "LayerNorm.bias")
        a = np.asarray(v.data if isinstance(v, Tensor) else v)
        if k.endswith(".weight") and a.ndim == 2 and not _is_embedding_table(k):
            a = np.ascontiguousarray(a.T)
        out[k] = a
    for k in list(out):
        if k.endswith("cls.predictions.bias"):
            prefix = k[: -len("cls.predictions.bias")]
            out.setdefault(prefix + "cls.predictions.decoder.bias", out[k])
            word = prefix + "bert.embeddings.word_embeddings.weight"
            if word in out:
                out.setdefault(prefix + "cls.predictions.decoder.weight", out[word])
    return out


def _is_embedding_table(key):
    return key.endswith("_embeddings.weight") or key.endswith("cls.predictions.decoder.weight")


# ----------------------------------------------------------------------------------------------
# data transforms: MLM masking and NSP sentence pairs (NumPy, integer ids)


def mask_tokens(input_ids, rng, vocab_size, mask_token_id, special_ids, mlm_probability=0.15):
    """BERT's masked-LM corruption: returns (masked_ids, labels), both int64 of input's shape.

    Each token that is not special (``special_ids``: [CLS], [SEP], [PAD], [MASK], ... ; so
    padding is never selected) is selected independently with probability ``mlm_probability``.
    A selected token is replaced by [MASK] with probability 0.8, by a uniformly random
    non-special id with 0.1, and left unchanged with 0.1 (so the model must keep a good
    representation of every token, not only of [MASK]s it never sees at fine-tuning time).
    ``labels`` is the original id at selected positions and -100 (ignored) elsewhere.

    rng: a ``np.random.Generator`` (seed it for reproducible masks). HF's
    DataCollatorForLanguageModeling applies the same rule (its random ids may be special).
    """
    ids = np.asarray(input_ids, dtype=np.int64)
    special = np.isin(ids, np.asarray(list(special_ids), dtype=np.int64))
    selected = (rng.random(ids.shape) < mlm_probability) & ~special
    labels = np.where(selected, ids, -100)
    u = rng.random(ids.shape)
    to_mask = selected & (u < 0.8)
    to_random = selected & (u >= 0.8) & (u < 0.9)
    candidates = np.setdiff1d(np.arange(vocab_size), np.asarray(list(special_ids)))
    masked = ids.copy()
    masked[to_mask] = mask_token_id
    masked[to_random] = rng.choice(candidates, size=int(to_random.sum()))
    return masked, labels


def make_nsp_pairs(documents, rng, max_len, cls_token_id, sep_token_id, pad_token_id=0):
    """Sentence-pair examples for next-sentence prediction, as a dict of NumPy int64 arrays.

    documents: list of documents, each a list of sentences, each a list of token ids (no
    special tokens). Every sentence that has a successor in its document becomes sentence A
    of one example, N examples in all; half of them (N // 2, chosen at random) get a
    sentence B drawn uniformly from another document (label 1 = NotNext), the others the true
    next sentence (label 0 = IsNext, HF's convention). Needs at least two documents.

    Each example is ``[CLS] A [SEP] B [SEP]`` followed by [PAD] up to ``max_len``; when too
    long, the longer of A and B loses tokens from its end until it fits. Returns
      input_ids (N, max_len), token_type_ids (N, max_len): 0 for [CLS] A [SEP], 1 for B [SEP],
      0 on padding; attention_mask (N, max_len): 1 real, 0 padding; next_sentence_label (N,).
    """
    if len(documents) < 2:
        raise ValueError("make_nsp_pairs: needs at least two documents (random sentences "
                         "come from a different document)")
    if max_len < 5:
        raise ValueError(f"make_nsp_pairs: max_len {max_len} leaves no room for two sentences "
                         f"and three special tokens")
    anchors = [(d, i) for d, doc in enumerate(documents) for i in range(len(doc) - 1)]
    N = len(anchors)
    if N == 0:
        raise ValueError("make_nsp_pairs: no document has two sentences")
    labels = rng.permutation(np.arange(N) < N // 2).astype(np.int64)     # exactly N // 2 ones
    input_ids = np.full((N, max_len), pad_token_id, dtype=np.int64)
    token_type_ids = np.zeros((N, max_len), dtype=np.int64)
    attention_mask = np.zeros((N, max_len), dtype=np.int64)
    for n, (d, i) in enumerate(anchors):
        a = list(documents[d][i])
        if labels[n] == 0:
            b = list(documents[d][i + 1])
        else:
            other = int(rng.integers(len(documents) - 1))
            other += other >= d                                             # skip document d
            doc = documents[other]
            b = list(doc[int(rng.integers(len(doc)))])
        while len(a) + len(b) + 3 > max_len:
            (a if len(a) >= len(b) else b).pop()
        row = [cls_token_id] + a + [sep_token_id] + b + [sep_token_id]
        input_ids[n, :len(row)] = row
        token_type_ids[n, len(a) + 2:len(row)] = 1
        attention_mask[n, :len(row)] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids,
            "attention_mask": attention_mask, "next_sentence_label": labels}


__all__ = ["BertConfig", "BertModel", "BertForPreTraining", "BertForSequenceClassification",
           "convert_hf_bert_state_dict", "mask_tokens", "make_nsp_pairs",
           "attention_mask_to_key_padding_mask", "BERT_UNCASED_SPECIAL_IDS"]

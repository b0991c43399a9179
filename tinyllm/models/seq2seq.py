"""Encoder-decoder Transformer for sequence-to-sequence tasks (translation), Vaswani et al.

    src (B, S) -> embed * sqrt(C) + PE -> N x EncoderLayer            -> memory (B, S, C)
    tgt_in (B, T) -> embed * sqrt(C) + PE -> N x DecoderLayer(memory) -> Linear -> logits (B, T, V)

The decoder's self-attention is causal, and it cross-attends to the encoder output. Padding
(``pad_id``) is masked on both sides: padded source tokens are never attended to (by the encoder
or by cross-attention), padded target tokens never attended to by the decoder. Training uses
teacher forcing: ``tgt_in`` is the target shifted right (starting with BOS), ``tgt_out`` the
target itself, and the loss is the mean cross-entropy over non-pad positions.

Embeddings are multiplied by sqrt(C) (the paper's sqrt(d_model)) so that they are on the scale
of the sinusoidal positions added to them.

Names as in GPT: ``n_embd`` (C, the paper's d_model), ``n_head`` (H); the encoder and decoder
layers are tinyllm.nn's ``TransformerEncoderLayer``/``TransformerDecoderLayer``, built on the one
attention (``MultiHeadAttention``) and the one residual block (``ResidualBlock``).
"""
import math
import warnings
from dataclasses import InitVar, dataclass

from tinyllm import backend
from tinyllm.models._util import token_ids, token_loss
from tinyllm.nn import (Dropout, Embedding, LayerNorm, Linear, Module, ModuleList,
                        SinusoidalPositionalEncoding, TransformerDecoderLayer,
                        TransformerEncoderLayer)
from tinyllm.nn.kv_cache import DecoderCache, KVCache


@dataclass
class Seq2SeqConfig:
    src_vocab_size: int = 1000          # source vocabulary (all of it when shared)
    tgt_vocab_size: int = 0             # target vocabulary; 0 = share the source vocabulary
    n_embd: int = 128                   # width C of both stacks (the paper's d_model: 512)
    n_head: int = 4                     # attention heads; n_embd must divide by it
    num_encoder_layers: int = 2         # encoder depth (paper: 6)
    num_decoder_layers: int = 2         # decoder depth (paper: 6)
    d_ff: int = 512                     # feed-forward inner width (paper: 4 x n_embd)
    dropout: float = 0.1                # on embeddings, attention weights, sublayer outputs
    max_len: int = 256                  # longest sequence the positional table covers
    pad_id: int = 0                     # padding token id, masked everywhere, ignored by loss
    norm_first: bool = False            # False: post-LN as in the paper; True: pre-LN
    activation: str = "relu"            # feed-forward activation: "relu", "gelu", "gelu_tanh"
    tie_output: bool = True             # output layer = transposed target embedding
    # the names before n_embd / n_head, still accepted (saved configs, old scripts); not stored
    d_model: InitVar[int | None] = None
    n_heads: InitVar[int | None] = None

    def __post_init__(self, d_model, n_heads):
        renamed = []
        for old, new, value in (("d_model", "n_embd", d_model), ("n_heads", "n_head", n_heads)):
            if value is None or isinstance(value, _OldName):   # dataclasses.replace passes
                continue                                       # the old names' reads back
            if getattr(self, new) not in (self.__dataclass_fields__[new].default, value):
                raise ValueError(f"Seq2SeqConfig: {old}={value} and {new}={getattr(self, new)} "
                                 f"disagree; {old} is the old name of {new}: give {new} only")
            setattr(self, new, value)
            renamed.append(f"{old} is now called {new}")
        if renamed:
            warnings.warn(f"Seq2SeqConfig: {', '.join(renamed)}", DeprecationWarning,
                          stacklevel=3)
        if self.n_embd % self.n_head:
            raise ValueError(f"Seq2SeqConfig: n_embd {self.n_embd} is not divisible by "
                             f"n_head {self.n_head}")

    @property
    def shared_vocab(self):
        return self.tgt_vocab_size in (0, self.src_vocab_size)


class _OldName(int):
    """The value of a renamed field read under its old name (``config.d_model``): an int equal
    to the new field, marked so that ``dataclasses.replace``, which passes it back, is not taken
    for a caller giving the old name."""


# Reading the old names gives the new fields (an InitVar would otherwise leave them None on
# the class, a silent wrong answer for ``config.d_model``).
Seq2SeqConfig.d_model = property(lambda self: _OldName(self.n_embd), doc="old name of n_embd")
Seq2SeqConfig.n_heads = property(lambda self: _OldName(self.n_head), doc="old name of n_head")


class Seq2SeqTransformer(Module):
    """``model(src, tgt_in)`` -> logits (B, T, V_tgt); ``model(src, tgt_in, tgt_out)`` ->
    (logits, loss). ``encode``/``decode`` run the two halves separately (for decoding)."""

    def __init__(self, config):
        super().__init__()
        self.config = c = config
        V_tgt = c.src_vocab_size if c.shared_vocab else c.tgt_vocab_size
        self.src_embed = Embedding(c.src_vocab_size, c.n_embd, padding_idx=c.pad_id)
        self.tgt_embed = self.src_embed if c.shared_vocab else \
            Embedding(V_tgt, c.n_embd, padding_idx=c.pad_id)
        self.pos = SinusoidalPositionalEncoding(c.n_embd, c.max_len)
        self.drop = Dropout(c.dropout)
        self.encoder = ModuleList([TransformerEncoderLayer(c.n_embd, c.n_head, c.d_ff,
                                                           c.dropout, c.activation, c.norm_first)
                                   for _ in range(c.num_encoder_layers)])
        self.decoder = ModuleList([TransformerDecoderLayer(c.n_embd, c.n_head, c.d_ff,
                                                           c.dropout, c.activation, c.norm_first)
                                   for _ in range(c.num_decoder_layers)])
        if c.norm_first:                     # pre-LN stacks end un-normalized: add a final LN
            self.encoder_norm = LayerNorm(c.n_embd)
            self.decoder_norm = LayerNorm(c.n_embd)
        if not c.tie_output:
            self.generator = Linear(c.n_embd, V_tgt)
        self._init_weights()

    def _init_weights(self):
        """Embeddings N(0, 1/C) (so that embed * sqrt(C) has unit scale, C = n_embd); Linear
        layers keep their default (PyTorch's) uniform init."""
        gen = backend.get_generator(backend.default_device())
        for emb in {id(e): e for e in (self.src_embed, self.tgt_embed)}.values():
            w = gen.standard_normal(emb.weight.shape) / math.sqrt(self.config.n_embd)
            w[self.config.pad_id] = 0
            emb.weight.data[...] = w.astype(emb.weight.dtype)

    def _embed(self, embed, ids):
        x = embed(ids) * math.sqrt(self.config.n_embd)                # (B, T, C)
        return self.drop(self.pos(x))

    def pad_mask(self, ids):
        """(B, T) boolean, True at padding: the key_padding_mask for these ids."""
        return _ids(ids) == self.config.pad_id

    def encode(self, src):
        """memory (B, S, C) and the source padding mask (B, S)."""
        src = _ids(src)
        src_mask = self.pad_mask(src)
        x = self._embed(self.src_embed, src)
        for layer in self.encoder:
            x = layer(x, key_padding_mask=src_mask)
        if self.config.norm_first:
            x = self.encoder_norm(x)
        return x, src_mask

    def new_cache(self):
        """An empty decoder KV cache for ``decode(..., cache=...)``: per layer, the
        self-attention keys/values so far and the cross-attention keys/values of the memory,
        {"self": KVCache, "cross": KVCache} (tinyllm/nn/kv_cache.py)."""
        return DecoderCache({"self": KVCache(self.config.max_len), "cross": KVCache()}
                            for _ in self.decoder)

    def decode(self, tgt_in, memory, src_mask, cache=None):
        """logits (B, T, V) for decoder inputs ``tgt_in`` (B, T) given the encoder output.

        With ``cache`` (from ``new_cache()``), ``tgt_in`` holds only the new positions; earlier
        ones come from the cache. Cached decoding assumes no padding inside the target prefix
        (true when generating: BOS, then the model's own tokens).
        """
        tgt_in = _ids(tgt_in)
        offset = 0 if cache is None else cache.length
        x = self.drop(self.pos(self.tgt_embed(tgt_in) * math.sqrt(self.config.n_embd),
                               offset=offset))
        tgt_mask = None if cache is not None else self.pad_mask(tgt_in)
        for i, layer in enumerate(self.decoder):
            x = layer(x, memory, tgt_key_padding_mask=tgt_mask,
                      memory_key_padding_mask=src_mask,
                      cache=None if cache is None else cache[i])
        if self.config.norm_first:
            x = self.decoder_norm(x)
        if self.config.tie_output:
            return x @ self.tgt_embed.weight.T                         # (B, T, C) -> (B, T, V)
        return self.generator(x)

    def forward(self, src, tgt_in, tgt_out=None):
        memory, src_mask = self.encode(src)
        logits = self.decode(tgt_in, memory, src_mask)
        if tgt_out is None:
            return logits
        return logits, token_loss(logits, tgt_out, ignore_index=self.config.pad_id)


def _ids(t):
    """Token ids as an integer array (from a Tensor, array or nested list)."""
    t = token_ids(t)
    if t.ndim != 2:
        raise ValueError(f"Seq2SeqTransformer: token ids must be (B, T), got shape {t.shape}")
    return t

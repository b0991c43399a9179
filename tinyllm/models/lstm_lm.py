"""An LSTM language model: the neural LM of the documents' Keras snippet, built on tinyllm.

    idx (B, T) -> wte[idx] -> dropout -> LSTM (n_layer layers) -> dropout -> lm_head -> logits

The same objective as the GPT: the mean cross-entropy of logits[:, t] against the next token
idx[:, t + 1]. Where the GPT sees a fixed window of block_size positions through attention,
the LSTM carries everything it has read in its state (h, c), so it has no context limit and
decodes one token at a time with O(1) work per token: its "cache" is just that state.

With ``tie_weights`` (needs n_embd == n_hidden) the output layer is the transposed input
embedding, as in Press & Wolf (2017) and the GPT.
"""
from dataclasses import dataclass


from tinyllm.models._util import token_ids as _ids
from tinyllm.models._util import token_loss
from tinyllm.nn import LSTM, Dropout, Embedding, Linear, Module


@dataclass
class LSTMLMConfig:
    vocab_size: int = 65        # tokens (65 characters for tiny Shakespeare)
    n_embd: int = 128           # input embedding width
    n_hidden: int = 256         # LSTM state size H
    n_layer: int = 2            # stacked LSTM layers
    dropout: float = 0.0        # on the embeddings, between layers and before the head
    tie_weights: bool = False   # output layer = wte^T (requires n_embd == n_hidden)

    def __post_init__(self):
        if self.tie_weights and self.n_embd != self.n_hidden:
            raise ValueError(f"LSTMLMConfig: tie_weights needs n_embd == n_hidden, got "
                             f"{self.n_embd} and {self.n_hidden}")


class LSTMLM(Module):
    """``model(idx)`` -> logits (B, T, V); ``model(idx, targets)`` -> (logits, loss);
    ``model(idx, state=s)`` continues from the state ``s`` = (h, c) of an earlier call (each
    (n_layer, B, n_hidden)), and ``model(idx, cache=c)`` (c from ``new_cache()``) keeps the state
    in ``c`` between calls, as tinyllm.generate uses a GPT's KV cache."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = Embedding(config.vocab_size, config.n_embd)
        self.drop = Dropout(config.dropout)
        self.lstm = LSTM(config.n_embd, config.n_hidden, config.n_layer, dropout=config.dropout)
        if config.tie_weights:
            self.lm_head = None
        else:
            self.lm_head = Linear(config.n_hidden, config.vocab_size)
        self.wte.weight.data[...] *= 0.1        # std 0.1, not N(0, 1): as Zaremba et al.'s +-0.1

    def new_cache(self):
        """An empty decoding cache: ``forward(idx, cache=c)`` stores the LSTM state in it."""
        return {"state": None}

    def forward(self, idx, targets=None, state=None, cache=None):
        idx = _ids(idx)
        if idx.ndim != 2:
            raise ValueError(f"LSTMLM: idx must be (B, T) token ids, got shape {idx.shape}")
        B, T = idx.shape
        if cache is not None:
            state = cache["state"]
        x = self.drop(self.wte(idx))                                    # (B, T, n_embd)
        out, new_state = self.lstm(x, state)                            # (B, T, H)
        out = self.drop(out)
        if self.lm_head is None:
            logits = out @ self.wte.weight.T                            # (B, T, V)
        else:
            logits = self.lm_head(out)
        if cache is not None:
            cache["state"] = tuple(s.detach() for s in new_state)
        if targets is None:
            return logits
        return logits, token_loss(logits, targets)

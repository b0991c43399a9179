"""GPT: a decoder-only Transformer language model in GPT-2's architecture (as nanoGPT).

    idx (B, T) -> wte[idx] + wpe[:T] -> dropout -> n_layer x Block -> ln_f -> lm_head -> logits
    Block: x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))            (pre-LN residual stream)

Parameter names and layouts are GPT-2's, so a GPT-2 checkpoint maps one-to-one:
``transformer.wte.weight`` (V, C), ``transformer.wpe.weight`` (block_size, C),
``transformer.h.{i}.ln_1``, ``.attn.c_attn`` (C, 3C), ``.attn.c_proj`` (C, C), ``.ln_2``,
``.mlp.c_fc`` (C, 4C), ``.mlp.c_proj`` (4C, C), ``transformer.ln_f``, and ``lm_head.weight``
(V, C), the same Parameter as wte (weight tying: the output projection is the transposed input
embedding). Linear weights are (in, out), as GPT-2's Conv1D stores them.

The language-model objective (the chain rule of probability): log p(x_1..x_T) =
sum_t log p(x_t | x_<t). The causal mask makes position t see only x_<=t, so one forward pass
gives all T next-token predictions, and the loss is the mean cross-entropy of logits[:, t]
against targets[:, t], which the batcher takes as idx shifted by one (targets[:, t] =
x_{t+1}: ``tinyllm.data.corpora.get_batch``).
"""
import math
from dataclasses import dataclass


from tinyllm import backend
from tinyllm import functional as F
from tinyllm.models._util import token_ids as _ids
from tinyllm.nn import Dropout, Embedding, LayerNorm, Linear, Module, ModuleDict, ModuleList
from tinyllm.nn.attention import causal_mask, scaled_dot_product_attention


@dataclass
class GPTConfig:
    block_size: int = 1024      # longest context, the number of learned positions (GPT-2: 1024)
    vocab_size: int = 50304     # GPT-2's 50257 rounded up to a multiple of 64 (nanoGPT)
    n_layer: int = 12           # Transformer blocks (GPT-2 small: 12)
    n_head: int = 12            # attention heads per block; n_embd must divide by it
    n_embd: int = 768           # width of the residual stream C
    dropout: float = 0.0        # dropout on embeddings, attention weights and residuals
    bias: bool = True           # biases in Linear and LayerNorm (GPT-2: True)
    gelu: str = "tanh"          # the MLP's GELU: "tanh" (GPT-2's form) or "exact" (erf, nanoGPT)

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd {self.n_embd} is not divisible by n_head "
                             f"{self.n_head}")
        if self.gelu not in ("tanh", "exact"):
            raise ValueError(f"GPTConfig: gelu must be 'tanh' or 'exact', got {self.gelu!r}")


class CausalSelfAttention(Module):
    """Multi-head causal self-attention with GPT-2's fused projection c_attn (C, 3C)."""

    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        self.n_head, self.dropout = config.n_head, config.dropout
        self.c_attn = Linear(C, 3 * C, bias=config.bias)
        self.c_proj = Linear(C, C, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)

    def forward(self, x, cache=None):
        """x (B, T, C) -> (B, T, C). With ``cache`` (a dict, for decoding) the keys and values
        of earlier positions are read from it and this call's are appended: the T new queries
        attend to all T_past + T keys, each only to positions up to its own."""
        B, T, C = x.shape
        H = self.n_head
        qkv = self.c_attn(x)                                           # (B, T, 3C)
        weight_dropout = self.dropout > 0 and self.training
        if cache is None and not weight_dropout:
            # training and scoring: one fused op from the packed projection to merged heads
            y = F.qkv_self_attention(qkv, H, causal=True)              # (B, T, C)
            return self.resid_dropout(self.c_proj(y))
        q, k, v = F.split(qkv, 3, axis=2)                              # 3 x (B, T, C)
        q = q.reshape(B, T, H, C // H).transpose(1, 2)                 # (B, H, T, D)
        k = k.reshape(B, T, H, C // H).transpose(1, 2)
        v = v.reshape(B, T, H, C // H).transpose(1, 2)
        if cache is not None:
            if "k" in cache:
                k = F.concatenate([cache["k"], k], axis=2)             # (B, H, T_past + T, D)
                v = F.concatenate([cache["v"], v], axis=2)
            cache["k"], cache["v"] = k, v
        if weight_dropout:
            # dropout on the attention weights: the composed path, op by op
            T_k = k.shape[2]
            y, _ = scaled_dot_product_attention(q, k, v, causal_mask(T, T_k, x.device),
                                                self.dropout, self.training)
        else:
            y = F.attention(q, k, v, causal=True)                      # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)                         # (B, H, T, D) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(Module):
    """c_fc (C, 4C) -> GELU -> c_proj (4C, C) -> dropout. GELU's tanh form by default, as GPT-2
    (its checkpoints need it); ``gelu="exact"`` is the erf form, as nanoGPT's ``nn.GELU()``."""

    def __init__(self, config):
        super().__init__()
        self.approximate = "tanh" if config.gelu == "tanh" else "none"
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate)))


class Block(Module):
    """Pre-LN Transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class TiedLMHead(Module):
    """logits = x @ W^T with W the token embedding (V, C): registered as ``lm_head.weight`` so
    the state_dict carries GPT-2's key, while ``parameters()`` holds W once."""

    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        return x @ self.weight.T                                       # (B, T, C) -> (B, T, V)


class GPT(Module):
    """GPT-2 style language model. ``model(idx)`` -> logits (B, T, vocab_size);
    ``model(idx, targets)`` -> (logits, loss) with loss the mean next-token cross-entropy
    (targets equal to -100 are ignored)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = ModuleDict({
            "wte": Embedding(config.vocab_size, config.n_embd),
            "wpe": Embedding(config.block_size, config.n_embd),
            "drop": Dropout(config.dropout),
            "h": ModuleList([Block(config) for _ in range(config.n_layer)]),
            "ln_f": LayerNorm(config.n_embd, bias=config.bias),
        })
        self.lm_head = TiedLMHead(self.transformer.wte.weight)
        self._init_weights()

    def _init_weights(self):
        """GPT-2's init: N(0, 0.02) for Linear and Embedding weights, zero biases, and the
        projections into the residual stream (c_proj) scaled by 1/sqrt(2 n_layer), since each
        block adds two of them to the stream."""
        gen = backend.get_generator(backend.default_device())
        proj_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                std = proj_std
            elif name.endswith(".weight") and p.ndim == 2:
                std = 0.02
            else:
                continue                                # LayerNorm ones/zeros, biases below
            p.data[...] = (gen.standard_normal(p.shape) * std).astype(p.dtype)
        for name, p in self.named_parameters():
            if name.endswith(".bias") and ".ln_" not in name and "ln_f" not in name:
                p.data[...] = 0

    def new_cache(self):
        """An empty KV cache for ``forward(idx, cache=...)``: one dict per block, filled with
        each block's keys and values (B, H, T, D) as positions are processed."""
        return [{} for _ in self.transformer.h]

    def forward(self, idx, targets=None, cache=None):
        """Logits (B, T, V) for ids (B, T). With ``cache`` (from ``new_cache()``), ``idx`` holds
        only the new positions: earlier ones are read from the cache, which is extended
        (decoding one token at a time costs one position's work instead of the window's)."""
        idx = _ids(idx)
        if idx.ndim != 2:
            raise ValueError(f"GPT: idx must be (B, T) token ids, got shape {idx.shape}")
        B, T = idx.shape
        past = cache[0]["k"].shape[2] if cache and "k" in cache[0] else 0
        if past + T > self.config.block_size:
            raise ValueError(f"GPT: sequence length {past + T} exceeds block_size "
                             f"{self.config.block_size}")
        tr = self.transformer
        pos = backend.xp_for_device(tr.wte.weight.device).arange(past, past + T)
        x = tr.drop(tr.wte(idx) + tr.wpe(pos))                         # (B, T, C)
        for i, block in enumerate(tr.h):
            x = block(x, None if cache is None else cache[i])
        logits = self.lm_head(tr.ln_f(x))                              # (B, T, V)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.reshape(B * T, -1),
                               _ids(targets).reshape(B * T), ignore_index=-100)
        return logits, loss

    def num_params(self, non_embedding=True):
        """Parameter count; by default without the position embeddings (nanoGPT's convention;
        the token embeddings count, since they are also the output layer)."""
        n = self.num_parameters()
        return n - self.transformer.wpe.weight.size if non_embedding else n

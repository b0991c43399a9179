"""GPT: a decoder-only Transformer language model in GPT-2's architecture (as nanoGPT).

    idx (B, T) -> wte[idx] + wpe[:T] -> dropout -> n_layer x Block -> ln_f -> lm_head -> logits
    Block: x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))            (pre-LN residual stream)

Parameter names and layouts are GPT-2's, so a GPT-2 checkpoint maps one-to-one:
``transformer.wte.weight`` (V, C), ``transformer.wpe.weight`` (block_size, C),
``transformer.h.{i}.ln_1``, ``.attn.c_attn`` (C, 3C), ``.attn.c_proj`` (C, C), ``.ln_2``,
``.mlp.c_fc`` (C, 4C), ``.mlp.c_proj`` (4C, C), ``transformer.ln_f``, and ``lm_head.weight``
(V, C), the same Parameter as wte (weight tying: the output projection is the transposed input
embedding). Linear weights are (in, out), as GPT-2's Conv1D stores them. ``GPT.from_hf`` /
``to_hf`` convert to and from HF's GPT2LMHeadModel; ``save_pretrained(path)`` /
``GPT.from_pretrained(path)`` write and read a Hugging Face model directory
(tinyllm/models/hf_dir.py).

The language-model objective (the chain rule of probability): log p(x_1..x_T) =
sum_t log p(x_t | x_<t). The causal mask makes position t see only x_<=t, so one forward pass
gives all T next-token predictions, and the loss is the mean cross-entropy of logits[:, t]
against targets[:, t], which the batcher takes as idx shifted by one (targets[:, t] =
x_{t+1}: ``tinyllm.data.corpora.get_batch``).
"""
import math
from dataclasses import dataclass

import numpy as np

from tinyllm import backend
from tinyllm import functional as F
from tinyllm.autograd.tensor import Tensor
from tinyllm.models import hf_dir
from tinyllm.models._util import token_ids as _ids
from tinyllm.models._util import token_loss
from tinyllm.nn import Dropout, Embedding, LayerNorm, Linear, Module, ModuleDict, ModuleList
from tinyllm.nn.attention import Attention, ResidualBlock
from tinyllm.nn.kv_cache import DecoderCache, KVCache


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


class CausalSelfAttention(Attention):
    """GPT-2's attention: causal self-attention with one packed projection ``c_attn`` (C, 3C)
    = [W_q | W_k | W_v] and the output projection ``c_proj`` (C, C), then residual dropout.
    The forward is tinyllm.nn.attention.Attention's: ``attn(x, cache=None)``, x (B, T, C) ->
    (B, T, C); with ``cache`` (a KVCache, for decoding) the keys and values of earlier
    positions are read from it and this call's are written after them, so the T new queries
    attend to all T_past + T keys, each only to positions up to its own."""

    def __init__(self, config):
        super().__init__(config.n_embd, config.n_head, config.dropout, causal=True)
        C = config.n_embd
        self.c_attn = Linear(C, 3 * C, bias=config.bias)
        self.c_proj = Linear(C, C, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)

    def project_packed(self, x):
        return self.c_attn(x)                                          # (B, T, C) -> (B, T, 3C)

    def project(self, x, kv):
        # self-attention only: keys and values come from x too (kv is x)
        return F.split(self.project_packed(x), 3, axis=2)              # 3 x (B, T, C)

    def output(self, y):
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


class Block(ResidualBlock):
    """Pre-LN Transformer block: x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x))."""

    def __init__(self, config):
        super().__init__(norm_first=True)
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = self.residual(x, self.ln_1, self.attn, cache=cache)       # x + attn(ln_1(x))
        return self.residual(x, self.ln_2, self.mlp)                   # x + mlp(ln_2(x))


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
        """An empty KV cache for ``forward(idx, cache=...)``: one KVCache per block, room for
        block_size positions of its keys and values (B, H, T, D), filled as they are
        processed (tinyllm/nn/kv_cache.py)."""
        return DecoderCache(KVCache(self.config.block_size) for _ in self.transformer.h)

    def forward(self, idx, targets=None, cache=None):
        """Logits (B, T, V) for ids (B, T). With ``cache`` (from ``new_cache()``), ``idx`` holds
        only the new positions: earlier ones are read from the cache, which is extended
        (decoding one token at a time costs one position's work instead of the window's)."""
        idx = _ids(idx)
        if idx.ndim != 2:
            raise ValueError(f"GPT: idx must be (B, T) token ids, got shape {idx.shape}")
        B, T = idx.shape
        past = 0 if cache is None else cache.length
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
        return logits, token_loss(logits, targets)

    def num_params(self, non_embedding=True):
        """Parameter count; by default without the position embeddings (nanoGPT's convention;
        the token embeddings count, since they are also the output layer)."""
        n = self.num_parameters()
        return n - self.transformer.wpe.weight.size if non_embedding else n

    # ------------------------------------------------------------------------------------------
    # Hugging Face: GPT2LMHeadModel's config and weights, a model directory

    @classmethod
    def from_hf(cls, config_dict, state_dict, dtype=None):
        """A GPT holding a Hugging Face GPT2LMHeadModel checkpoint: ``config_dict`` its config
        (``config.json``), ``state_dict`` name -> array (NumPy, or CPU torch tensors). GPT-2's
        names and (in, out) Conv1D layouts are tinyllm's, so the weights load as they are
        (``convert_hf_gpt2_state_dict``); ``dtype`` that of the parameters (default: the
        default dtype). A checkpoint ``to_hf`` made of a bias-free model (``tinyllm_bias:
        false`` in the config, every bias zero) loads bias-free again. Raises ValueError for
        what this model does not implement (another activation or LayerNorm eps, an MLP width
        other than 4 n_embd, an output layer not tied to the token embeddings, ...)."""
        hf = config_dict
        gelu = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}
        act = hf.get("activation_function", "gelu_new")
        problems = []
        if act not in gelu:
            problems.append(f"activation_function {act!r} is not one of {sorted(gelu)}")
        if hf.get("layer_norm_epsilon", 1e-5) != 1e-5:
            problems.append(f"layer_norm_epsilon {hf['layer_norm_epsilon']} (tinyllm's "
                            f"LayerNorm uses 1e-5)")
        if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
            problems.append(f"n_inner {hf['n_inner']} (tinyllm's MLP is 4 n_embd = "
                            f"{4 * hf['n_embd']} wide)")
        if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx"):
            problems.append("attention scores scaled otherwise than by 1/sqrt(head size)")
        if hf.get("add_cross_attention"):
            problems.append("add_cross_attention (tinyllm's GPT is decoder-only)")
        if problems:
            raise ValueError("GPT.from_hf: unsupported " + "; ".join(problems))
        weights = convert_hf_gpt2_state_dict(state_dict)
        head, wte = weights.get("lm_head.weight"), weights.get("transformer.wte.weight")
        if head is not wte and not np.array_equal(head, wte):
            raise ValueError("GPT.from_hf: the checkpoint's lm_head.weight differs from "
                             "transformer.wte.weight (tie_word_embeddings false); tinyllm's GPT "
                             "ties its output layer to the token embeddings")
        biases = [k for k in weights if k.endswith(".bias")]
        bias = not (hf.get("tinyllm_bias") is False and not any(np.any(weights[k])
                                                                for k in biases))
        if not bias:
            weights = {k: v for k, v in weights.items() if k not in biases}
        config = GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"],
                           n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
                           dropout=0.0, bias=bias, gelu=gelu[act])
        model = cls(config)
        if dtype is not None:
            model.to(dtype)
        model.load_state_dict(weights, strict=True)
        return model

    def to_hf(self):
        """(config_dict, state_dict) of the Hugging Face GPT2LMHeadModel holding this model:
        GPT2Config's keys, and the weights as NumPy arrays under the same names and layouts
        ((in, out), GPT-2's Conv1D), ``lm_head.weight`` left out (tied: HF stores it once, as
        wte). A bias-free model gets explicit zero biases where GPT-2 has them (every Linear
        and LayerNorm), so HF loads it with no missing keys; ``tinyllm_bias: false`` in the
        config lets ``from_hf`` drop them again."""
        c = self.config
        weights = {k: backend.asnumpy(t.data) for k, t in self.state_dict().items()
                   if k != "lm_head.weight"}
        for k, w in list(weights.items()):
            if k.endswith(".weight") and not k.startswith(("transformer.wte", "transformer.wpe")):
                weights.setdefault(k[:-len("weight")] + "bias", np.zeros(w.shape[-1], w.dtype))
        config = {
            "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
            "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_embd": c.n_embd,
            "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": 4 * c.n_embd,
            "activation_function": "gelu_new" if c.gelu == "tanh" else "gelu",
            "layer_norm_epsilon": self.transformer.ln_f.eps, "resid_pdrop": c.dropout,
            "embd_pdrop": c.dropout, "attn_pdrop": c.dropout, "initializer_range": 0.02,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "add_cross_attention": False,
            "tie_word_embeddings": True, "use_cache": True,
            "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
        }
        if not c.bias:
            config["tinyllm_bias"] = False
        return config, weights

    def save_pretrained(self, path, tokenizer=None):
        """Write this model into the directory ``path`` as Hugging Face does (config.json,
        model.safetensors; ``tokenizer``'s file beside them): ``transformers``'
        ``GPT2LMHeadModel.from_pretrained(path)`` loads it (tinyllm/models/hf_dir.py)."""
        return hf_dir.save_pretrained(self, path, tokenizer)

    @classmethod
    def from_pretrained(cls, path, dtype=None):
        """The GPT in the Hugging Face GPT-2 directory ``path`` (``save_pretrained``'s, or
        ``transformers``'); ``dtype`` that of the parameters (default: the weights' own when
        float32 or float64, else the default dtype)."""
        return hf_dir.from_pretrained(cls, path, "gpt2", dtype)


def convert_hf_gpt2_state_dict(state_dict):
    """HF GPT-2 state_dict -> tinyllm's: the same names and layouts, less the causal-mask buffers
    (``.attn.bias``, ``.attn.masked_bias``); keys of a bare GPT2Model get the ``transformer.``
    prefix, and ``lm_head.weight`` (tied: the token embeddings) is filled in when absent."""
    out = {}
    for k, v in state_dict.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        a = v.data if isinstance(v, Tensor) else v
        a = a.detach().cpu().numpy() if hasattr(a, "detach") else a      # a torch tensor
        k = k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k
        out[k] = a
    if "lm_head.weight" not in out and "transformer.wte.weight" in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out

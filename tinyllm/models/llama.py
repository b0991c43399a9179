"""Llama: a LLaMA-style decoder-only language model (Touvron et al. 2023), today's small decoder.

    idx (B, T) -> embed_tokens[idx] -> n_layer x LlamaDecoderLayer -> norm -> lm_head -> logits
    LlamaDecoderLayer: x = x + self_attn(input_layernorm(x))          (pre-norm, as GPT-2)
                       x = x + mlp(post_attention_layernorm(x))

What differs from GPT (tinyllm/models/gpt.py), each a layer of its own:
- RMSNorm instead of LayerNorm: no centring, no shift (``F.rms_norm``);
- no learned positions: RoPE rotates each head's queries and keys by their positions
  (``nn.RotaryEmbedding``), so scores depend on relative positions only;
- grouped-query attention: k and v have n_kv_head heads, each shared by n_head // n_kv_head
  query heads (``n_kv_head`` of nn.Attention); the KV cache holds only those;
- SwiGLU feed-forward: down(silu(gate(x)) * up(x)) (``nn.SwiGLU``);
- no biases; an untied output layer by default.

Parameter names are Hugging Face's LlamaForCausalLM's (``model.embed_tokens.weight`` (V, C),
``model.layers.{i}.self_attn.{q,k,v,o}_proj.weight``, ``model.layers.{i}.mlp.{gate,up,down}
_proj.weight``, ``model.layers.{i}.input_layernorm.weight``,
``model.layers.{i}.post_attention_layernorm.weight``, ``model.norm.weight``,
``lm_head.weight``), with Linear weights (in, out) as everywhere in tinyllm: the transpose of
HF's (out, in). ``Llama.from_hf(config_dict, state_dict)`` converts an HF checkpoint, ``to_hf``
the other way; ``save_pretrained(path)`` / ``Llama.from_pretrained(path)`` write and read a
Hugging Face model directory (tinyllm/models/hf_dir.py).
"""
from dataclasses import dataclass

from tinyllm import backend
from tinyllm.autograd.tensor import Tensor
from tinyllm.models import hf_dir
from tinyllm.models._util import token_ids as _ids
from tinyllm.models._util import token_loss
from tinyllm.models.gpt import TiedLMHead
from tinyllm.nn import (Embedding, Linear, Module, ModuleDict, ModuleList, RMSNorm,
                        RotaryEmbedding, SwiGLU)
from tinyllm.nn.attention import Attention, ResidualBlock
from tinyllm.nn.kv_cache import DecoderCache, KVCache


@dataclass
class LlamaConfig:
    block_size: int = 2048      # longest context: RoPE tables cached this long, generate()'s window
    vocab_size: int = 32000     # LLaMA's SentencePiece vocabulary
    n_layer: int = 12           # decoder layers (HF: num_hidden_layers)
    n_head: int = 12            # query heads (HF: num_attention_heads); n_embd must divide by it
    n_kv_head: int = 4          # key/value heads (HF: num_key_value_heads), divides n_head
    n_embd: int = 768           # width of the residual stream C (HF: hidden_size)
    intermediate_size: int = 2048   # SwiGLU width d_ff (about 8/3 C, keeping 3 matrices ~ 8 C^2)
    rms_norm_eps: float = 1e-5  # RMSNorm's eps (LLaMA 2: 1e-5; HF's default 1e-6)
    rope_theta: float = 10000.0     # RoPE base: channel pair i turns by p * theta^(-2i/D)
    tie_word_embeddings: bool = False   # lm_head = embed_tokens^T (small models often tie)
    bias: bool = False          # biases in the attention and MLP Linears (LLaMA: none)
    dropout: float = 0.0        # on the attention weights while training (HF: attention_dropout)

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"LlamaConfig: n_embd {self.n_embd} is not divisible by n_head "
                             f"{self.n_head}")
        if not 1 <= self.n_kv_head <= self.n_head or self.n_head % self.n_kv_head:
            raise ValueError(f"LlamaConfig: n_head {self.n_head} must be a multiple of "
                             f"n_kv_head, got n_kv_head {self.n_kv_head}")
        if (self.n_embd // self.n_head) % 2:
            raise ValueError(f"LlamaConfig: the head size n_embd / n_head = "
                             f"{self.n_embd // self.n_head} must be even (RoPE rotates pairs)")

    @property
    def hidden_size(self):
        return self.n_embd

    @property
    def max_position_embeddings(self):
        return self.block_size

    @classmethod
    def from_hf(cls, hf):
        """A LlamaConfig from a Hugging Face LlamaConfig dict (``config.json``, or
        ``config.to_dict()``); raises on what this model does not implement."""
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        C, H = hf["hidden_size"], hf["num_attention_heads"]
        problems = []
        if hf.get("hidden_act", "silu") != "silu":
            problems.append(f"hidden_act {hf['hidden_act']!r} (only 'silu')")
        if rope_type != "default":
            problems.append(f"rope type {rope_type!r} (only 'default')")
        if hf.get("head_dim") not in (None, C // H):
            problems.append(f"head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
        if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
            problems.append("attention_bias != mlp_bias")
        if problems:
            raise ValueError("LlamaConfig.from_hf: unsupported " + "; ".join(problems))
        return cls(block_size=hf.get("max_position_embeddings", 2048),
                   vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=H,
                   n_kv_head=hf.get("num_key_value_heads") or H, n_embd=C,
                   intermediate_size=hf["intermediate_size"],
                   rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
                   rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
                   tie_word_embeddings=hf.get("tie_word_embeddings", False),
                   bias=hf.get("attention_bias", False),
                   dropout=hf.get("attention_dropout", 0.0))


class LlamaAttention(Attention):
    """Causal grouped-query self-attention with RoPE: q_proj (C, H D), k_proj and v_proj
    (C, Hkv D), o_proj (H D, C). The forward is nn.Attention's (``attn(x, cache=None)``);
    ``position`` rotates q and k by their positions, past + 0 .. past + T - 1, before k enters
    the cache (cached keys are already rotated)."""

    def __init__(self, config):
        super().__init__(config.n_embd, config.n_head, config.dropout, causal=True,
                         n_kv_head=config.n_kv_head)
        C, D = config.n_embd, self.head_size
        self.q_proj = Linear(C, config.n_head * D, bias=config.bias)
        self.k_proj = Linear(C, config.n_kv_head * D, bias=config.bias)
        self.v_proj = Linear(C, config.n_kv_head * D, bias=config.bias)
        self.o_proj = Linear(config.n_head * D, C, bias=config.bias)
        self.rotary_emb = RotaryEmbedding(D, config.block_size, config.rope_theta)

    def project(self, x, kv):
        # self-attention only: keys and values come from x too (kv is x)
        return self.q_proj(x), self.k_proj(kv), self.v_proj(kv)

    def position(self, q, k, offset):
        return self.rotary_emb(q, offset), self.rotary_emb(k, offset)     # (B, H or Hkv, T, D)

    def output(self, y):
        return self.o_proj(y)


class LlamaDecoderLayer(ResidualBlock):
    """Pre-norm block: x = x + self_attn(input_layernorm(x)),
    then x = x + mlp(post_attention_layernorm(x))."""

    def __init__(self, config):
        super().__init__(norm_first=True)
        self.input_layernorm = RMSNorm(config.n_embd, eps=config.rms_norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = RMSNorm(config.n_embd, eps=config.rms_norm_eps)
        self.mlp = SwiGLU(config.n_embd, config.intermediate_size, bias=config.bias)

    def forward(self, x, cache=None):
        x = self.residual(x, self.input_layernorm, self.self_attn, cache=cache)
        return self.residual(x, self.post_attention_layernorm, self.mlp)


class Llama(Module):
    """LLaMA-style language model. ``model(idx)`` -> logits (B, T, vocab_size);
    ``model(idx, targets)`` -> (logits, loss), the mean next-token cross-entropy (targets equal
    to -100 are ignored); ``cache=model.new_cache()`` decodes incrementally (as GPT)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = ModuleDict({
            "embed_tokens": Embedding(config.vocab_size, config.n_embd),
            "layers": ModuleList([LlamaDecoderLayer(config) for _ in range(config.n_layer)]),
            "norm": RMSNorm(config.n_embd, eps=config.rms_norm_eps),
        })
        if config.tie_word_embeddings:
            self.lm_head = TiedLMHead(self.model.embed_tokens.weight)        # (V, C), shared
        else:
            self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)   # (C, V)
        self._init_weights()

    def _init_weights(self):
        """Hugging Face's LlamaPreTrainedModel init: N(0, 0.02) for every Linear and Embedding
        weight, zero biases; RMSNorm weights stay ones."""
        gen = backend.get_generator(backend.default_device())
        for name, p in self.named_parameters():
            if name.endswith(".weight") and p.ndim == 2:
                p.data[...] = (gen.standard_normal(p.shape) * 0.02).astype(p.dtype)
            elif name.endswith(".bias"):
                p.data[...] = 0

    def new_cache(self):
        """An empty KV cache for ``forward(idx, cache=...)``: one KVCache per layer, room for
        block_size positions of its keys (rotated) and values (B, Hkv, T, D), filled as they
        are processed (tinyllm/nn/kv_cache.py)."""
        return DecoderCache(KVCache(self.config.block_size) for _ in self.model.layers)

    def forward(self, idx, targets=None, cache=None):
        """Logits (B, T, V) for ids (B, T). With ``cache`` (from ``new_cache()``), ``idx`` holds
        only the new positions; they are placed after the cached ones (RoPE's offset)."""
        idx = _ids(idx)
        if idx.ndim != 2:
            raise ValueError(f"Llama: idx must be (B, T) token ids, got shape {idx.shape}")
        B, T = idx.shape
        x = self.model.embed_tokens(idx)                                   # (B, T, C)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, None if cache is None else cache[i])
        logits = self.lm_head(self.model.norm(x))                          # (B, T, V)
        if targets is None:
            return logits
        return logits, token_loss(logits, targets)

    def num_params(self, non_embedding=True):
        """Parameter count; by default without the token embeddings unless they are tied (then
        they are also the output layer), as GPT.num_params counts."""
        n = self.num_parameters()
        if non_embedding and not self.config.tie_word_embeddings:
            n -= self.model.embed_tokens.weight.size
        return n

    @classmethod
    def from_hf(cls, config_dict, state_dict, dtype=None):
        """A Llama holding a Hugging Face LlamaForCausalLM checkpoint: ``config_dict`` its
        config (``config.json``), ``state_dict`` name -> array (NumPy, or CPU torch tensors)
        with HF's names and (out, in) layouts; ``dtype`` that of the parameters (default: the
        default dtype)."""
        config = LlamaConfig.from_hf(config_dict)
        model = cls(config)
        if dtype is not None:
            model.to(dtype)
        model.load_state_dict(convert_hf_llama_state_dict(state_dict, config), strict=True)
        return model

    def to_hf(self):
        """(config_dict, state_dict) of the Hugging Face LlamaForCausalLM holding this model:
        LlamaConfig's keys, and the weights as NumPy arrays under the same names, every Linear
        weight transposed (in, out) -> (out, in) (``convert_hf_llama_state_dict`` undone); a
        tied ``lm_head.weight`` left out (HF stores it once, as embed_tokens)."""
        c = self.config
        weights = {}
        for k, t in self.state_dict().items():
            if k == "lm_head.weight" and c.tie_word_embeddings:
                continue
            a = backend.asnumpy(t.data)
            linear = k.endswith("_proj.weight") or k == "lm_head.weight"
            weights[k] = a.T.copy() if linear else a
        config = {
            "model_type": "llama", "architectures": ["LlamaForCausalLM"],
            "vocab_size": c.vocab_size, "hidden_size": c.n_embd,
            "intermediate_size": c.intermediate_size, "num_hidden_layers": c.n_layer,
            "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head,
            "head_dim": c.n_embd // c.n_head, "max_position_embeddings": c.block_size,
            "rms_norm_eps": c.rms_norm_eps, "hidden_act": "silu",
            "rope_theta": c.rope_theta,         # transformers 4; 5 reads rope_parameters
            "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
            "attention_bias": c.bias, "mlp_bias": c.bias, "attention_dropout": c.dropout,
            "tie_word_embeddings": c.tie_word_embeddings, "initializer_range": 0.02,
            "pretraining_tp": 1, "use_cache": True,
            "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
        }
        return config, weights

    def save_pretrained(self, path, tokenizer=None):
        """Write this model into the directory ``path`` as Hugging Face does (config.json,
        model.safetensors; ``tokenizer``'s file beside them): ``transformers``'
        ``LlamaForCausalLM.from_pretrained(path)`` loads it (tinyllm/models/hf_dir.py)."""
        return hf_dir.save_pretrained(self, path, tokenizer)

    @classmethod
    def from_pretrained(cls, path, dtype=None):
        """The Llama in the Hugging Face directory ``path`` (``save_pretrained``'s, or
        ``transformers``'); ``dtype`` that of the parameters (default: the weights' own when
        float32 or float64, else the default dtype)."""
        return hf_dir.from_pretrained(cls, path, "llama", dtype)


def convert_hf_llama_state_dict(state_dict, config):
    """HF LlamaForCausalLM state_dict -> tinyllm's: the same names, every Linear weight
    (``*_proj.weight``, an untied ``lm_head.weight``) transposed (out, in) -> (in, out); the
    RoPE buffers (``rotary_emb.inv_freq``) dropped, computed here; with tied embeddings,
    ``lm_head.weight`` is ``model.embed_tokens.weight`` (added if the checkpoint omits it)."""
    out = {}
    for k, v in state_dict.items():
        if k.endswith("rotary_emb.inv_freq"):
            continue
        a = v.data if isinstance(v, Tensor) else v
        a = a.detach().cpu().numpy() if hasattr(a, "detach") else a      # a torch tensor
        linear = k.endswith("_proj.weight") or (k == "lm_head.weight"
                                                and not config.tie_word_embeddings)
        out[k] = a.T.copy() if linear else a                 # (out, in) -> (in, out)
    if config.tie_word_embeddings and "model.embed_tokens.weight" in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out

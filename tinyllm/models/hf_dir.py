"""A Hugging Face model directory: what ``save_pretrained`` writes and ``from_pretrained`` reads.

    path/
      config.json               HF's config keys (GPT2Config, LlamaConfig), model_type, dtype
      model.safetensors         the weights under HF's names and in HF's layouts, each once
      tinyllm_tokenizer.json    the run's tokenizer, in tinyllm's format (optional)

``transformers``' ``GPT2LMHeadModel.from_pretrained(path)`` / ``LlamaForCausalLM`` load it with
no missing keys; tinyllm's ``GPT.from_pretrained(path)`` / ``Llama.from_pretrained`` read it, or
a directory ``transformers`` wrote (one ``model.safetensors``, shards named by
``model.safetensors.index.json``, or ``pytorch_model.bin`` when torch is importable).

This module knows the files, not the models: each model class converts its own names and
layouts (``GPT.to_hf`` / ``GPT.from_hf``, ``Llama.to_hf`` / ``Llama.from_hf``). The tokenizer file
is named so that it never shadows HF's own ``tokenizer.json``; ``tinyllm.hf`` reads it back.

Each file is written atomically (temp file, then rename), config.json last: a directory whose
config.json names the weights' dtype holds complete weights.
"""
import json
import os
import struct

import numpy as np
from safetensors.numpy import load_file, save_file

from tinyllm import backend
from tinyllm._files import atomic_write, atomic_write_text

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TOKENIZER = "tinyllm_tokenizer.json"
DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64}


# ----------------------------------------------------------------------------------------------
# the two directions, for any model with to_hf() and from_hf() (GPT, Llama)

def save_pretrained(model, path, tokenizer=None):
    """``model.to_hf()`` (HF's config dict and weights) written into the directory ``path``."""
    config, weights = model.to_hf()
    if tokenizer is not None and tokenizer.vocab_size > config["vocab_size"]:
        raise ValueError(f"save_pretrained: the tokenizer has {tokenizer.vocab_size} tokens, "
                         f"more than the model's vocab_size {config['vocab_size']}")
    return write(path, config, weights, tokenizer)


def from_pretrained(cls, path, model_type, dtype=None):
    """``cls.from_hf`` of the HF directory ``path`` (a ``model_type`` model); ``dtype``: that
    of the parameters (default: the weights' own when float32 or float64, else the default)."""
    config = read_config(path, model_type)
    weights = read_weights(path)
    return cls.from_hf(config, weights, dtype=dtype if dtype is not None
                       else weights_dtype(weights))


# ----------------------------------------------------------------------------------------------
# writing

def write(path, config, weights, tokenizer=None):
    """Write ``config`` (a dict) and ``weights`` (name -> array, HF's names) into the directory
    ``path`` (created if needed), with ``tokenizer`` (anything with ``save(path)``) beside them.
    A tokenizer file left from an earlier save is removed when none is given. Returns path."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"save_pretrained: {path!r} exists and is not a directory")
    os.makedirs(path, exist_ok=True)
    arrays = {k: np.ascontiguousarray(backend.asnumpy(v)) for k, v in weights.items()}
    dtypes = {a.dtype.name for a in arrays.values() if a.dtype.kind == "f"}
    config = dict(config)
    if len(dtypes) == 1:             # transformers 4 reads torch_dtype, 5 reads dtype
        config["torch_dtype"] = config["dtype"] = dtypes.pop()
    if tokenizer is not None:
        config.update({k: getattr(tokenizer, f"{k[:3]}_id", None)
                       for k in ("bos_token_id", "eos_token_id", "pad_token_id")})
    # metadata "pt": transformers refuses safetensors files without a format it knows
    atomic_write(os.path.join(path, WEIGHTS),
                 lambda tmp: save_file(arrays, tmp, metadata={"format": "pt"}))
    stale = [WEIGHTS_INDEX, TORCH_WEIGHTS] + ([TOKENIZER] if tokenizer is None else [])
    for name in stale:              # would be read instead of (or beside) what was just written
        if os.path.isfile(os.path.join(path, name)):
            os.remove(os.path.join(path, name))
    if tokenizer is not None:
        tokenizer.save(os.path.join(path, TOKENIZER))
    atomic_write_text(os.path.join(path, CONFIG), json.dumps(config, indent=2) + "\n")
    return path


# ----------------------------------------------------------------------------------------------
# reading

def read_config(path, model_type):
    """config.json of the HF directory ``path`` as a dict, checked to be a ``model_type``
    model ('gpt2', 'llama'). FileNotFoundError for a missing directory or config.json,
    ValueError for another model type or a file that is not a JSON object."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"from_pretrained: no directory {path!r} (expected a Hugging "
                                f"Face model directory: {CONFIG} and {WEIGHTS})")
    file = os.path.join(path, CONFIG)
    if not os.path.isfile(file):
        raise FileNotFoundError(f"from_pretrained: {path!r} has no {CONFIG}; it is not a "
                                f"Hugging Face model directory")
    try:
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"from_pretrained: {file} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"from_pretrained: {file} does not hold a JSON object")
    if model_type is not None and config.get("model_type") != model_type:
        raise ValueError(f"from_pretrained: {path!r} holds a model_type "
                         f"{config.get('model_type')!r} model, expected {model_type!r}")
    return config


def read_weights(path):
    """name -> NumPy array of the HF directory ``path``: model.safetensors, its shards
    (model.safetensors.index.json), or pytorch_model.bin (needs torch). bfloat16 arrays come
    back as float32 (NumPy has no bfloat16)."""
    path = os.fspath(path)
    single, index = os.path.join(path, WEIGHTS), os.path.join(path, WEIGHTS_INDEX)
    if os.path.isfile(single):
        return _load_safetensors(single)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        out = {}
        for shard in shards:
            out.update(_load_safetensors(os.path.join(path, shard)))
        return out
    if os.path.isfile(os.path.join(path, TORCH_WEIGHTS)):
        try:
            import torch
        except ImportError:
            raise ImportError(f"from_pretrained: {path!r} holds only {TORCH_WEIGHTS}, which "
                              f"needs torch to read; install torch or convert it to "
                              f"safetensors") from None
        state = torch.load(os.path.join(path, TORCH_WEIGHTS), map_location="cpu",
                           weights_only=True)
        return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
                for k, v in state.items()}
    raise FileNotFoundError(f"from_pretrained: {path!r} has no weights ({WEIGHTS}, "
                            f"{WEIGHTS_INDEX} or {TORCH_WEIGHTS})")


def weights_dtype(weights):
    """The floating dtype of ``weights`` when it is float32 or float64 throughout, else None
    (from_pretrained then uses the default dtype)."""
    kinds = {np.dtype(a.dtype) for a in weights.values() if np.dtype(a.dtype).kind == "f"}
    if len(kinds) == 1 and kinds <= {np.dtype(np.float32), np.dtype(np.float64)}:
        return kinds.pop()
    return None


def _load_safetensors(file):
    try:
        return load_file(file)
    except TypeError as e:          # bfloat16: NumPy does not know the dtype
        if "bfloat16" not in str(e):
            raise
    return _load_bfloat16(file)


def _load_bfloat16(file):
    """A safetensors file holding bfloat16 arrays, read by hand: an 8-byte header length, a JSON
    header {name: {dtype, shape, data_offsets}}, then the bytes. A bfloat16 is the top half of a
    float32, so it widens exactly: shift its 16 bits up."""
    with open(file, "rb") as f:
        n, = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    codes = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "u1",
             "BOOL": "?"}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[begin:end]
        if info["dtype"] == "BF16":
            a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] in codes:
            a = np.frombuffer(raw, codes[info["dtype"]])
        else:
            raise ValueError(f"from_pretrained: {file}: tensor {name!r} has dtype "
                             f"{info['dtype']}, which tinyllm cannot read")
        out[name] = a.reshape(info["shape"]).copy()
    return out

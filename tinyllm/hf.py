"""Models in and out of tinyllm: Hugging Face model directories, with the tokenizer beside them.

    model, tok = load_pretrained("exported")         # an HF directory, or a tinyllm run directory
    export_run("runs/shakespeare-char", "exported")  # ``tinyllm export --out-dir ... --to ...``
    # ``tinyllm train --init-from exported``: train on from those weights (``load_init``),
    # with --freeze-layers N (``freeze_layers``) and --new-head (``load_init_weights``)

The directory format and the model conversions are the models' own (``GPT.save_pretrained`` /
``GPT.from_pretrained``, the same for ``Llama``; tinyllm/models/hf_dir.py). This module adds
what sits above the models: the run's tokenizer (``tinyllm_tokenizer.json``, tinyllm's format),
exporting a trained run atomically, and starting a run from a model directory.
"""
import dataclasses
import os
import re
import shutil
import tempfile
from pathlib import Path

from tinyllm._files import _umask
from tinyllm.config import model_config
from tinyllm.data.tokenizers import ByteBPETokenizer, CharTokenizer, load_tokenizer
from tinyllm.inference import open_run
from tinyllm.models import GPT, Llama, LlamaConfig, hf_dir
from tinyllm.models.gpt import TiedLMHead

MODEL_TYPES = {"gpt2": GPT, "llama": Llama}             # config.json's model_type -> class
TOKENIZER_KINDS = {CharTokenizer: "char", ByteBPETokenizer: "bpe"}   # TrainConfig.tokenizer
# what a Hugging Face model directory holds: ``export --force`` replaces only such a directory
_MODEL_FILES = re.compile(r"config\.json|generation_config\.json|model\.safetensors"
                          r"|model-\d+-of-\d+\.safetensors|model\.safetensors\.index\.json"
                          r"|pytorch_model\.bin|tinyllm_tokenizer\.json|tokenizer\.json"
                          r"|tokenizer_config\.json|special_tokens_map\.json|vocab\.json"
                          r"|merges\.txt|README\.md|\..+\.tmp")


def load_pretrained(path, dtype=None):
    """(model, tokenizer) of ``path``: a Hugging Face model directory (config.json's
    model_type 'gpt2' or 'llama'; the tokenizer is its ``tinyllm_tokenizer.json``, None without
    one) or a tinyllm run directory (log.json; the model in eval mode). ``dtype``: that of the
    parameters (default: the weights' own, see ``GPT.from_pretrained``)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no directory {str(path)!r} (expected a Hugging Face model "
                                f"directory or a tinyllm run directory)")
    if (path / "log.json").is_file():
        _, tok, model, _ = open_run(path)
        return (model if dtype is None else model.to(dtype)), tok
    if not (path / hf_dir.CONFIG).is_file():
        raise FileNotFoundError(f"{path} is neither a Hugging Face model directory (no "
                                f"{hf_dir.CONFIG}) nor a tinyllm run (no log.json)")
    model_type = hf_dir.read_config(path, None).get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{path} holds a model_type {model_type!r} model; tinyllm reads "
                         f"{sorted(MODEL_TYPES)}")
    model = MODEL_TYPES[model_type].from_pretrained(path, dtype)
    tok_file = path / hf_dir.TOKENIZER
    tok = load_tokenizer(tok_file) if tok_file.is_file() else None
    if tok is not None and tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"{tok_file} has {tok.vocab_size} tokens, more than the model's "
                         f"vocab_size {model.config.vocab_size}")
    return model, tok


# ----------------------------------------------------------------------------------------------
# export: a run -> a Hugging Face model directory

def export_run(run, to, force=False):
    """Write the trained run in ``run`` as a Hugging Face model directory ``to`` (config.json,
    model.safetensors, tinyllm_tokenizer.json). The files go into a temporary directory beside
    ``to``, renamed to ``to`` once complete: a failed export leaves nothing. ``to`` must not
    exist or be empty; ``force`` replaces a model directory there (never one holding other
    files). Returns ``to`` as a Path; FileExistsError when it cannot be written."""
    to = Path(to)
    _check_target(to, force)
    _, tok, model, _ = open_run(run)
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=to.parent, prefix=f".{to.name}.", suffix=".tmp"))
    aside = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())     # mkdtemp's is owner-only; give mkdir's
        model.save_pretrained(tmp, tokenizer=tok)
        if to.exists():                      # empty, or a model directory with force
            aside = Path(tempfile.mkdtemp(dir=to.parent, prefix=f".{to.name}.old.",
                                          suffix=".tmp"))
            os.replace(to, aside / "old")
        os.replace(tmp, to)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None and (aside / "old").exists() and not to.exists():
            os.replace(aside / "old", to)    # put the old directory back
        raise
    finally:
        if aside is not None and to.exists():
            shutil.rmtree(aside, ignore_errors=True)
    return to


def _check_target(to, force):
    if to.exists() and not to.is_dir():
        raise FileExistsError(f"{to} exists and is not a directory (--to names a directory)")
    entries = sorted(os.listdir(to)) if to.is_dir() else []
    if not entries:
        return
    if not force:
        raise FileExistsError(f"{to} already holds files ({', '.join(entries[:5])}); "
                              f"choose another --to, or replace it with --force")
    foreign = [e for e in entries if not _MODEL_FILES.fullmatch(e)]
    if foreign:
        raise FileExistsError(f"--force: {to} holds files a model directory does not "
                              f"({', '.join(foreign[:5])}); choose another --to")


# ----------------------------------------------------------------------------------------------
# init-from: a new run starting from a model directory's weights

def train_settings(path):
    """The TrainConfig settings the model in ``path`` fixes (``tinyllm train --init-from``):
    the architecture and the tokenizer kind, named as TrainConfig names them."""
    model, tok = _load_with_tokenizer(path)
    c = model.config
    out = dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size,
               bias=c.bias, tokenizer=_tokenizer_kind(tok, path))
    if out["tokenizer"] == "bpe":
        out["bpe_vocab_size"] = tok.vocab_size
    if isinstance(c, LlamaConfig):
        out.update(model="llama", n_kv_head=c.n_kv_head, intermediate_size=c.intermediate_size,
                   rope_theta=c.rope_theta, tie_embeddings=c.tie_word_embeddings)
    else:
        out.update(model="gpt", gelu=c.gelu)
    return out


def load_init(cfg):
    """(model, tokenizer) of ``cfg.init_from`` for a new run with the TrainConfig ``cfg``,
    whose settings must build that very model (``train_settings`` gives them): ValueError
    naming each difference otherwise."""
    model, tok = _load_with_tokenizer(cfg.init_from)
    want = model_config(cfg, tok.vocab_size, dropout=0.0)
    have = dataclasses.replace(model.config, dropout=0.0)
    diffs = []
    if type(want) is not type(have):
        diffs.append(f"model: {type(have).__name__} there, {type(want).__name__} in the "
                     f"settings")
    else:
        diffs += [f"{k}: {v} there, {getattr(want, k)} in the settings"
                  for k, v in dataclasses.asdict(have).items() if getattr(want, k) != v]
    kind = _tokenizer_kind(tok, cfg.init_from)
    if kind != cfg.tokenizer:
        diffs.append(f"tokenizer: {kind} there, {cfg.tokenizer} in the settings")
    if diffs:
        raise ValueError(f"--init-from {cfg.init_from}: the model there is not the one the "
                         f"run's settings build ({'; '.join(diffs)}); take the settings from "
                         f"it (tinyllm train --init-from sets them; drop the flags that differ)")
    return model, tok


def load_init_weights(model, init, new_head=False):
    """Copy the weights of ``init`` (``load_init``'s model) into ``model``, a model built from
    the same settings. ``new_head``: keep ``model``'s own output layer (the random one it was
    built with) instead of loading the head; only for a head of its own (an untied Llama),
    ValueError for a tied one, which is the token embedding."""
    state = init.state_dict()
    if new_head:
        if isinstance(model.lm_head, TiedLMHead):
            raise ValueError(f"--new-head: this {type(model).__name__}'s output layer is tied "
                             f"to its token embedding (lm_head.weight is the embedding "
                             f"matrix); a new head would be new embeddings")
        del state["lm_head.weight"]
    model.load_state_dict(state, strict=not new_head)


def freeze_layers(model, n):
    """Freeze (``requires_grad = False``) the token and position embeddings and the first ``n``
    Transformer blocks of a GPT or Llama: the optimizer (``weight_decay_groups``) leaves them
    out, so they keep their values. A tied output layer is the token embedding: frozen with
    it. ``n = 0`` freezes nothing. Returns the names of the frozen parameters."""
    if isinstance(model, GPT):
        embeddings, blocks = [model.transformer.wte, model.transformer.wpe], model.transformer.h
    elif isinstance(model, Llama):
        embeddings, blocks = [model.model.embed_tokens], model.model.layers
    else:
        raise TypeError(f"freeze_layers: expected a GPT or a Llama, got {type(model).__name__}")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(blocks):
        raise ValueError(f"freeze_layers: expected an integer from 0 to the model's "
                         f"{len(blocks)} blocks, got {n!r}")
    if n == 0:
        return []
    frozen = {id(p) for m in embeddings + [blocks[i] for i in range(n)]
              for p in m.parameters()}
    names = []
    for name, p in model.named_parameters():
        if id(p) in frozen:
            p.requires_grad = False
            names.append(name)
    return names


def _load_with_tokenizer(path):
    model, tok = load_pretrained(path)
    if tok is None:
        raise ValueError(f"--init-from {path}: no tinyllm tokenizer there "
                         f"({hf_dir.TOKENIZER}); training needs the tokenizer the model was "
                         f"trained with (tinyllm export writes it)")
    return model, tok


def _tokenizer_kind(tok, path):
    kind = TOKENIZER_KINDS.get(type(tok))
    if kind is None:
        raise ValueError(f"--init-from {path}: its tokenizer is a {type(tok).__name__}; "
                         f"tinyllm train uses {sorted(TOKENIZER_KINDS.values())}")
    return kind

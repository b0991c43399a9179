"""Checkpoints: save a model (and its optimizer, step and random state) and resume training
bit for bit.

    save_checkpoint("runs/shakespeare", model, optimizer, step=step, extra={"data_rng": rng})
    ...
    meta = load_checkpoint("runs/shakespeare", model, optimizer)
    step, rng = meta["step"], meta["extra"]["data_rng"]

A checkpoint is a directory::

    path/
      meta.json                     the commit record: format and tinyllm versions, the step,
                                    the config, the optimizer's scalars, the random states, the
                                    names of the two files below and the tied-weight aliases
      model-<token>.safetensors     the weights, each array once (on the CPU)
      optim-<token>.safetensors     the optimizer's arrays (exp_avg, ...), only with an optimizer

Weights use safetensors (https://github.com/huggingface/safetensors): a JSON header and raw
little-endian arrays, readable by any framework and, unlike pickle, unable to run code on load.
Names are the model's ``state_dict`` names, GPT-2's for ``GPT``.

Tied weights. ``GPT.lm_head.weight`` is the same Parameter as ``transformer.wte.weight``, so
``state_dict`` lists one array under two names. safetensors refuses arrays that share memory,
so the array is stored once, under its first name, and meta.json maps every other name to it
(``"aliases": {"lm_head.weight": "transformer.wte.weight"}``). Loading copies the array to all
of its names; a model built by its own ``__init__`` (as ``GPT`` ties its head) keeps its ties.

Atomic saves. Every file is written to a temporary name in the same directory and then renamed
with ``os.replace``, which is atomic on POSIX and Windows: a reader sees the old file or the new
one, never half of one. Two renames are not atomic together, though, so the data files get a
fresh ``<token>`` in their names each save and never overwrite the files the current meta.json
names. meta.json is replaced last: that one rename is the commit. A save that fails (disk full,
Ctrl-C, an exception) before it leaves the previous checkpoint intact and removes what it wrote;
a successful save then deletes the data files the old meta.json named. One writer per directory.

Integrity. meta.json records the sha256 of each data file as written to disk; loading checks it
before reading the arrays, so a corrupted or truncated file is an error naming the file
(``CheckpointError``), never weights that evaluate to NaN. Checkpoints from before checksums
load without the check.

Crashes. A process killed during a save (kill -9, power loss) cannot remove what it wrote:
temporary files (``.model-<token>.safetensors.<random>.tmp``) or complete data files that no
meta.json names yet. ``clean_checkpoint`` removes them, and ``save_checkpoint`` calls it before
writing; the data files the committed meta.json names are never touched by it.

Resuming exactly. Training is deterministic given the weights, the optimizer state and every
random state in play: tinyllm's generators (dropout masks, ``randn``; the CPU's, and the GPU's
when one was used, whose state lives on the host: ``backend.CupyGenerator``) are saved and
restored here, and a data-sampling ``numpy.random.Generator`` passed in ``extra`` comes back as a
Generator in the same state. Then steps after a resume equal those of an uninterrupted run, bit
for bit, on the CPU (tests/test_checkpoint.py), and draw the same random numbers on the GPU.
"""
import dataclasses
import json
import os
import re
import secrets

import numpy as np
from safetensors.numpy import load_file, save_file

from tinyllm import __version__, backend
from tinyllm._files import atomic_write, sha256_file

FORMAT_VERSION = 1              # bump when the layout changes; loading refuses newer formats
META_NAME = "meta.json"
_GENERATOR_TAG = "__numpy_generator__"      # how a numpy Generator in ``extra`` is stored
# what a save writes besides meta.json: data files and atomic_write's temporary files
_DATA_FILE = re.compile(r"(model|optim)-[0-9a-f]+\.safetensors")
_TEMP_FILE = re.compile(r"\..+\.tmp")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as it is: corrupted, truncated or missing files."""


# ----------------------------------------------------------------------------------------------
# saving

def save_checkpoint(path, model, optimizer=None, step=None, config=None, extra=None):
    """Write a checkpoint directory at ``path`` (created if needed; a previous one is replaced).

    Args:
        path: the checkpoint directory.
        model: a Module; its ``state_dict()`` is saved (arrays copied to the CPU first).
        optimizer: an Optimizer whose ``state_dict()`` is saved too, or None.
        step: the training step (an int), or None.
        config: a dataclass (e.g. GPTConfig) saved with its class name; by default
            ``model.config`` when that is a dataclass.
        extra: a dict of JSON-serializable values, saved as is, except that a
            ``numpy.random.Generator`` value (e.g. the data sampler's) is saved as its state and
            loaded back as a Generator.
    Returns ``path``.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise FileExistsError(f"save_checkpoint: {path!r} exists and is not a directory "
                              f"(a checkpoint is a directory)")
    os.makedirs(path, exist_ok=True)
    if config is None and dataclasses.is_dataclass(getattr(model, "config", None)):
        config = model.config

    weights, aliases = _split_ties(model.state_dict())
    meta = {
        "format_version": FORMAT_VERSION,
        "tinyllm_version": __version__,
        "step": step,
        "config": _config_to_json(config),
        "aliases": aliases,
        "rng": {"seed": backend._state["seed"],
                "cpu": backend.get_generator("cpu").bit_generator.state,
                **backend.generator_states()},
        "extra": _extra_to_json(extra or {}),
        "files": {},
        "optimizer": None,
    }
    optim_arrays = None
    if optimizer is not None:
        meta["optimizer"], optim_arrays = _split_optimizer_state(optimizer.state_dict())

    clean_checkpoint(path)          # what an earlier save killed mid-way left behind
    old_files = _referenced_files(path)
    token = secrets.token_hex(4)
    written = []                    # data files of this save, removed again if it fails
    meta["sha256"] = {}
    try:
        for kind, arrays in (("model", weights), ("optim", optim_arrays)):
            if arrays is None:
                continue
            name = f"{kind}-{token}.safetensors"
            meta["sha256"][name] = _write_safetensors(os.path.join(path, name), arrays)
            written.append(name)
            meta["files"][kind] = name
        text = json.dumps(meta, indent=1)
        atomic_write(os.path.join(path, META_NAME), lambda tmp: _write_text(tmp, text))
    except BaseException:
        for name in written:
            _remove(os.path.join(path, name))
        raise
    for name in old_files - set(written):       # committed: the old data files are unreferenced
        _remove(os.path.join(path, name))
    return path


def _write_safetensors(path, arrays):
    """Write ``arrays`` atomically; returns the sha256 of the bytes as they are on disk."""
    digest = {}

    def write(tmp):
        save_file(arrays, tmp)
        digest["sha256"] = sha256_file(tmp)
    atomic_write(path, write)
    return digest["sha256"]


def clean_checkpoint(path):
    """Remove from checkpoint directory ``path`` what a save killed mid-way left: temporary
    files and data files the committed meta.json does not name. Returns the names removed.
    Call it only where no other process is saving into ``path`` (one writer per directory)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return []
    keep = _referenced_files(path)
    removed = []
    for name in sorted(os.listdir(path)):
        if name in keep or not (_DATA_FILE.fullmatch(name) or _TEMP_FILE.fullmatch(name)):
            continue
        _remove(os.path.join(path, name))
        removed.append(name)
    return removed


def _split_ties(state_dict):
    """({name: CPU array}, {alias: name}): each shared array once, under its first name."""
    first_name = {}                 # id(array) -> first name it appeared under
    weights, aliases = {}, {}
    for name, t in state_dict.items():
        key = id(t.data)            # state_dict's tensors share their arrays with the module
        if key in first_name:
            aliases[name] = first_name[key]
            continue
        first_name[key] = name
        weights[name] = np.ascontiguousarray(backend.asnumpy(t.data))
    return weights, aliases


def _split_optimizer_state(state_dict):
    """Optimizer.state_dict() -> (JSON part, {"state.<index>.<key>": array})."""
    arrays, state = {}, {}
    for index, entry in state_dict["state"].items():
        state[str(index)] = {}
        for k, v in entry.items():
            if _is_array(v):
                arrays[f"state.{index}.{k}"] = np.ascontiguousarray(backend.asnumpy(v))
            else:
                state[str(index)][k] = _scalar(v, f"optimizer state {index}.{k}")
    groups = [{k: (v if k == "params" else _scalar(v, f"param group {i} {k!r}"))
               for k, v in g.items()} for i, g in enumerate(state_dict["param_groups"])]
    return {"state": state, "param_groups": groups}, arrays


def _config_to_json(config):
    if config is None:
        return None
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"save_checkpoint: config must be a dataclass instance (e.g. GPTConfig), "
                        f"got {type(config).__name__}")
    return {"class": type(config).__name__, "fields": dataclasses.asdict(config)}


def _extra_to_json(extra):
    out = {}
    for k, v in extra.items():
        if isinstance(v, np.random.Generator):
            out[k] = {_GENERATOR_TAG: v.bit_generator.state}
            continue
        try:
            json.dumps(v)
        except TypeError as e:
            raise TypeError(f"save_checkpoint: extra[{k!r}] is not JSON-serializable ({e}); "
                            f"extra holds JSON values and numpy Generators") from None
        out[k] = v
    return out


def _scalar(v, what):
    """A JSON value for an optimizer hyperparameter or counter (tuples become lists)."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (tuple, list)):
        return [_scalar(x, what) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"save_checkpoint: {what} is a {type(v).__name__}, which a checkpoint "
                    f"cannot store (arrays, numbers, strings, lists only)")


def _is_array(v):
    return isinstance(v, np.ndarray) or backend.get_array_module(v) is not np


# ----------------------------------------------------------------------------------------------
# files

def _write_text(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _referenced_files(path):
    """The data files the current meta.json in ``path`` names (empty without one)."""
    try:
        with open(os.path.join(path, META_NAME), encoding="utf-8") as f:
            return set(json.load(f).get("files", {}).values())
    except (FileNotFoundError, ValueError):
        return set()


# ----------------------------------------------------------------------------------------------
# loading

def load_checkpoint(path, model, optimizer=None, strict=True):
    """Load a checkpoint written by ``save_checkpoint`` into ``model`` (and ``optimizer``).

    Weights are copied in place with ``model.load_state_dict(..., strict)``, so a model of
    another shape fails with its error, which names each mismatched tensor and both shapes; when
    the saved config differs from ``model.config`` the error lists the differing fields too.
    Also restores tinyllm's random generators (and the seed), so dropout masks continue as in
    the saved run.

    Returns a dict: ``step``, ``config`` (the saved ``{"class", "fields"}`` or None), ``extra``
    (numpy Generators rebuilt), ``format_version``, ``tinyllm_version``, ``missing_keys`` and
    ``unexpected_keys`` (non-empty only with ``strict=False``).
    """
    path = os.fspath(path)
    meta_path = os.path.join(path, META_NAME)
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"load_checkpoint: no checkpoint at {path!r} (missing "
                                f"{META_NAME}; save_checkpoint writes a directory)")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"load_checkpoint: {meta_path} is not valid JSON ({e}); the "
                              f"checkpoint is corrupted") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict) \
            or "model" not in meta["files"]:
        raise CheckpointError(f"load_checkpoint: {meta_path} does not describe a checkpoint "
                              f"(no 'files' entry naming the weights)")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"load_checkpoint: {path!r} has checkpoint format "
                         f"{meta['format_version']}, newer than this tinyllm "
                         f"({__version__}) reads (format {FORMAT_VERSION})")

    weights = _load_verified(path, meta, "model")
    for alias, name in meta["aliases"].items():
        weights[alias] = weights[name]
    _check_ties(model, meta["aliases"], strict)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=strict)
    except RuntimeError as e:
        differences = _config_differences(meta["config"], getattr(model, "config", None))
        if differences:
            raise RuntimeError(f"{e}\nThe checkpoint was saved from a model with another "
                               f"config: {differences}") from e
        raise

    if optimizer is not None:
        if meta["optimizer"] is None:
            raise ValueError(f"load_checkpoint: {path!r} holds no optimizer state (it was saved "
                             f"without an optimizer)")
        arrays = _load_verified(path, meta, "optim")
        optimizer.load_state_dict(_join_optimizer_state(meta["optimizer"], arrays))

    rng = meta["rng"]
    if rng["seed"] is not None:
        backend.manual_seed(rng["seed"])
    backend.set_generator_states({d: rng[d] for d in ("cpu", "cuda") if d in rng})

    return {
        "step": meta["step"],
        "config": meta["config"],
        "extra": {k: _extra_from_json(v) for k, v in meta["extra"].items()},
        "format_version": meta["format_version"],
        "tinyllm_version": meta["tinyllm_version"],
        "missing_keys": missing,
        "unexpected_keys": unexpected,
    }


def _verified_file(path, meta, kind):
    name = meta["files"][kind]
    file = os.path.join(path, name)
    if not os.path.isfile(file):
        raise CheckpointError(f"load_checkpoint: {file} is missing (named by {META_NAME})")
    expected = meta.get("sha256", {}).get(name)          # None: saved before checksums
    if expected is not None:
        got = sha256_file(file)
        if got != expected:
            raise CheckpointError(f"load_checkpoint: {file} is corrupted: its sha256 is "
                                  f"{got[:16]}..., {META_NAME} recorded {expected[:16]}... "
                                  f"when it was saved")
    return file


def _load_verified(path, meta, kind):
    file = _verified_file(path, meta, kind)
    try:
        return load_file(file)
    except Exception as e:          # safetensors raises its own SafetensorError
        raise CheckpointError(f"load_checkpoint: {file} cannot be read as safetensors "
                              f"({e})") from None


def _check_ties(model, aliases, strict):
    """With ``strict``, refuse a model that keeps separate what the checkpoint tied (or ties
    what it kept separate): training it would diverge from the saved run."""
    if not strict:
        return
    _, own_aliases = _split_ties(model.state_dict())
    if own_aliases != aliases:
        raise RuntimeError(f"load_checkpoint: tied weights differ: the checkpoint ties "
                           f"{_describe(aliases)}, the model ties {_describe(own_aliases)}")


def _describe(aliases):
    return ", ".join(f"{a} to {n}" for a, n in aliases.items()) or "nothing"


def _config_differences(saved, config):
    """'n_embd: checkpoint 8, model 16; ...' or '' when the configs agree (or are unknown)."""
    if saved is None or not dataclasses.is_dataclass(config):
        return ""
    own = dataclasses.asdict(config)
    out = []
    if saved["class"] != type(config).__name__:
        out.append(f"class: checkpoint {saved['class']}, model {type(config).__name__}")
    for k in sorted(set(saved["fields"]) | set(own)):
        a, b = saved["fields"].get(k, "<absent>"), own.get(k, "<absent>")
        if a != b:
            out.append(f"{k}: checkpoint {a}, model {b}")
    return "; ".join(out)


def _join_optimizer_state(packed, arrays):
    """Inverse of ``_split_optimizer_state``: Optimizer.state_dict()'s layout again."""
    state = {}
    for index, entry in packed["state"].items():
        state[_key(index)] = dict(entry)
    for name, array in arrays.items():
        _, index, k = name.split(".", 2)
        state.setdefault(_key(index), {})[k] = array
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v)
               for k, v in g.items()} for g in packed["param_groups"]]
    return {"state": state, "param_groups": groups}


def _key(index):
    """JSON object keys are strings; parameter indices were ints."""
    return int(index) if index.lstrip("-").isdigit() else index


def _extra_from_json(value):
    if isinstance(value, dict) and set(value) == {_GENERATOR_TAG}:
        state = value[_GENERATOR_TAG]
        gen = np.random.Generator(getattr(np.random, state["bit_generator"])())
        gen.bit_generator.state = state
        return gen
    return value

"""Using a trained run: open it, sample from it, evaluate it (``tinyllm sample``, ``eval``).

    from tinyllm.inference import sample, evaluate
    print(sample("runs/shakespeare-char", prompt="ROMEO:", num_tokens=200))
    evaluate("runs/shakespeare-char")      # {'loss': ..., 'perplexity': ..., 'tokens': ...}

Everything is read from the run directory: the settings and the corpus record from log.json,
the tokenizer, the weights (checked against their sha256). No environment variable and no
working directory is needed: the corpus is found by its recorded absolute path and sha256.

``quantize_run`` (``tinyllm quantize``) writes the run's model with every Linear in int8
(``tinyllm.compress.quantize_int8``) beside its checkpoint: ``model-int8.safetensors`` and
``model-int8.json`` (its sha256, the group size, and the sha256 of the checkpoint it was made
from). ``sample``/``evaluate`` with ``int8=True`` load it, after checking both: a run trained
further since is refused until it is quantized again.
"""
import json
import math
from pathlib import Path

import numpy as np

from tinyllm import compress, rundir
from tinyllm._files import atomic_write_text, sha256_file
from tinyllm.checkpoint import load_checkpoint
from tinyllm.config import Check, build_model, model_config, saved_config
from tinyllm.data.corpora import (corpus_path, find_recorded_corpus, read_text,
                                  train_val_split)
from tinyllm.data.tokenizers import load_tokenizer
from tinyllm.generate import beam_search, generate
from tinyllm.metrics import mean_loss, windows


INT8_FILE, INT8_RECORD = "model-int8.safetensors", "model-int8.json"


def load_run(out_dir, int8=False):
    """(config, tokenizer, model in eval mode) of the run in ``out_dir``; ``int8``: the model
    ``quantize_run`` wrote."""
    cfg, tok, model, _ = open_run(out_dir, int8)
    return cfg, tok, model


def open_run(out_dir, int8=False):
    run = Path(out_dir)
    log = rundir.read_log(run)
    cfg = saved_config(log["config"])
    tok = load_tokenizer(run / "tokenizer.json")
    model = build_model(model_config(cfg, tok.vocab_size, dropout=0.0))
    load_checkpoint(run / "checkpoint", model)
    if int8:
        compress.load_quantized(_verified_int8(run), model)
    return cfg, tok, model.eval(), log


def quantize_run(out_dir, group_size=64, force=False):
    """Quantize the run's model to int8 (every Linear, weight-only, symmetric; ``group_size``
    inputs per scale, None: one scale per output channel) and write it beside the checkpoint.
    Returns the file's path and the sizes (bytes) of the float and int8 weights."""
    run = Path(out_dir)
    path, record = run / INT8_FILE, run / INT8_RECORD
    if (path.exists() or record.exists()) and not force:
        raise FileExistsError(f"quantize: {path} exists; pass force=True (--force) to replace it")
    _, _, model, _ = open_run(run)
    float_bytes = sum(int(p.data.nbytes) for p in model.parameters())
    compress.quantize_int8(model, group_size=group_size)
    if record.exists():
        record.unlink()                 # never a record that names another file's sha256
    compress.save_quantized(model, path)
    atomic_write_text(record, json.dumps({
        "file": INT8_FILE, "sha256": sha256_file(path), "group_size": group_size,
        "checkpoint_sha256": sha256_file(run / "checkpoint" / "meta.json")}, indent=1) + "\n")
    return {"path": str(path), "float_bytes": float_bytes,
            "int8_bytes": compress.quantized_size_bytes(model), "file_bytes": path.stat().st_size}


def _verified_int8(run):
    """The run's int8 file, checked against its record and the run's current checkpoint."""
    path, record = run / INT8_FILE, run / INT8_RECORD
    if not path.exists() or not record.exists():
        raise FileNotFoundError(f"{run} has no int8 model: run `tinyllm quantize --out-dir "
                                f"{run}` first")
    rec = json.loads(record.read_text())
    if sha256_file(path) != rec.get("sha256"):
        raise ValueError(f"{path}: sha256 does not match {record} (a damaged or replaced file); "
                         f"quantize the run again")
    if sha256_file(run / "checkpoint" / "meta.json") != rec.get("checkpoint_sha256"):
        raise ValueError(f"{path} was made from an earlier checkpoint of this run (it has been "
                         f"trained since); quantize it again (tinyllm quantize --force)")
    return path


def run_corpus(cfg, log):
    """The path of the run's own corpus: the recorded file, checked by its sha256."""
    if "corpus" in log:
        return find_recorded_corpus(log["corpus"])
    return corpus_path(cfg.data)                    # a run from before the corpus record


SAMPLE_CHECKS = {
    "num_tokens": Check(int, lo=1), "temperature": Check(float, lo=0, lo_open=True),
    "top_k": Check(int, lo=1), "top_p": Check(float, lo=0, hi=1, lo_open=True),
    "seed": Check(int, lo=0, hi=2**63 - 1), "num_beams": Check(int, lo=1),
    "length_penalty": Check(float), "repetition_penalty": Check(float, lo=0, lo_open=True),
    "no_repeat_ngram_size": Check(int, lo=0),
}


def sample(out_dir, prompt="\n", num_tokens=300, temperature=0.8, top_k=None, top_p=None,
           seed=0, greedy=False, num_beams=1, length_penalty=0.0, repetition_penalty=1.0,
           no_repeat_ngram_size=0, stream=None, int8=False):
    """Text from the run in ``out_dir``: the prompt and ``num_tokens`` generated tokens.

    Sampling (temperature, top-k, top-p; ``greedy``: argmax) draws from a generator seeded by
    ``seed``; ``num_beams`` > 1 runs beam search (deterministic; GNMT's ``length_penalty``
    alpha). ``repetition_penalty`` (CTRL's, > 1 discourages repeats) and
    ``no_repeat_ngram_size`` apply to both. ``stream(text)``, when given, receives the text as
    it is generated (beam search: once, at the end). ``int8``: the run's int8 model
    (``quantize_run``)."""
    args = dict(num_tokens=num_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                seed=seed, num_beams=num_beams, length_penalty=length_penalty,
                repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size)
    for name, value in args.items():
        if value is not None:
            try:
                SAMPLE_CHECKS[name](value)
            except ValueError as e:
                raise ValueError(f"sample: {name} {e}") from None
    if num_beams > 1 and (greedy or top_k is not None or top_p is not None):
        raise ValueError("sample: num_beams > 1 is beam search (deterministic); it takes no "
                         "greedy, top_k or top_p")
    cfg, tok, model = load_run(out_dir, int8)
    idx = np.array([tok.encode(prompt or "\n")], dtype=np.int64)
    if num_beams > 1:                               # the model's KV cache follows the beams
        (best, _), = beam_search(model, idx, beam_width=num_beams,
                                 max_new_tokens=num_tokens, alpha=length_penalty,
                                 repetition_penalty=repetition_penalty,
                                 no_repeat_ngram_size=no_repeat_ngram_size)
        text = tok.decode(best.tolist())
        if stream is not None:
            stream(text)
        return text
    printer = _Streamer(tok, idx[0].tolist(), stream) if stream is not None else None
    out = generate(model, idx, num_tokens, rng=np.random.default_rng(seed),
                   temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy,
                   repetition_penalty=repetition_penalty,
                   no_repeat_ngram_size=no_repeat_ngram_size,
                   on_token=printer.add if printer else None)
    text = tok.decode(out[0].tolist())
    if printer is not None:
        printer.finish(text)
    return text


class _Streamer:
    """Passes generated text on as it grows. A token may end inside a multi-byte character
    (byte-level BPE): text ending in U+FFFD is held back until the character completes."""

    def __init__(self, tok, ids, write):
        self.tok, self.ids, self.write, self.shown = tok, list(ids), write, 0

    def add(self, new_ids):                         # (B,) with B = 1
        self.ids.append(int(new_ids[0]))
        text = self.tok.decode(self.ids)
        if not text.endswith("\ufffd"):
            self._show(text)

    def finish(self, text):
        self._show(text)

    def _show(self, text):
        if len(text) > self.shown:
            self.write(text[self.shown:])
            self.shown = len(text)


def evaluate(out_dir, data=None, split="val", batches=None, seed=0, int8=False):
    """Mean loss and perplexity (e^loss) of the run in ``out_dir``.

    By default on the whole ``split`` of the run's corpus: consecutive block_size windows, every
    token predicted once (but the last few that fill no window), deterministic. ``batches``: a
    quick estimate from that many random batches instead (seeded by ``seed``). ``data``: a text
    file to score instead; a copy of the run's own corpus (same sha256) is split as in
    training. ``int8``: the run's int8 model (``quantize_run``). Returns loss, perplexity,
    tokens scored and what was scored."""
    if batches is not None:
        batches = Check(int, lo=1)(batches)
    if split not in ("train", "val"):
        raise ValueError(f"evaluate: split must be 'train' or 'val', got {split!r}")
    cfg, tok, model, log = open_run(out_dir, int8)
    if data is None:
        source, own = run_corpus(cfg, log), True
    else:                                   # a copy of the run's corpus, or another text
        source = corpus_path(data).resolve()
        own = "corpus" in log and sha256_file(source) == log["corpus"]["sha256"]
    ids = np.array(tok.encode(read_text(source)), dtype=np.int64)
    if own:
        ids = dict(zip(("train", "val"), train_val_split(ids)))[split]
        what = f"the {split} split of {source}"
    else:
        what = str(source)
    T = cfg.block_size
    if len(ids) <= T:
        raise ValueError(f"evaluate: {what} has {len(ids)} tokens; a window needs block_size "
                         f"+ 1 = {T + 1}")
    if batches is None:
        x, y = windows(ids, T)                                          # consecutive windows
    else:
        starts = np.random.default_rng(seed).integers(0, len(ids) - T, batches * cfg.batch_size)
        s = starts[:, None] + np.arange(T)                              # (rows, T)
        x, y = ids[s], ids[s + 1]
    loss = mean_loss(model, x, y, EVAL_ROWS)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": int(x.size), "what": what}


EVAL_ROWS = 64                  # windows per forward in evaluate

"""The training run's settings: ``TrainConfig``, its presets, and the range of every setting.

    cfg = TrainConfig(**PRESETS["shakespeare-char"], out_dir="runs/shakespeare-char")

Each field carries its help line and its check (``field(metadata=...)``): the command line is
built from them (``tinyllm train --help``; a value out of range is argparse's one-line error,
exit 2), and ``TrainConfig(...)`` runs the same checks, so the Python API refuses what the CLI
refuses. A check names the setting, the value it got and what it expects.

A run that is resumed keeps its settings (``resume_changes``): only those that do not change the
trajectory of the weights may differ (``MUTABLE_ON_RESUME``); the training loop prints and logs
those changes.
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import Optional


class Check:
    """The valid range of a setting: ``check(value)`` returns it (parsed from a string on the
    command line) or raises ValueError saying what is expected."""

    def __init__(self, kind, lo=None, hi=None, lo_open=False, hi_open=False, choices=None,
                 optional=False):
        self.kind, self.lo, self.hi = kind, lo, hi
        self.lo_open, self.hi_open, self.choices = lo_open, hi_open, choices
        self.optional = optional            # None is a value too (the setting is off)

    def describe(self):
        if self.choices:
            return "one of " + ", ".join(map(repr, self.choices))
        what = {int: "an integer", float: "a finite number", str: "a non-empty string"}[self.kind]
        bounds = []
        if self.lo is not None:
            bounds.append(f"{'>' if self.lo_open else '>='} {self.lo}")
        if self.hi is not None:
            bounds.append(f"{'<' if self.hi_open else '<='} {self.hi}")
        return what + (" " + " and ".join(bounds) if bounds else "")

    def __call__(self, value):
        if value is None and self.optional:
            return None
        v = self._parse(value)
        if v is None:
            raise ValueError(f"expected {self.describe()}, got {value!r}")
        if self.choices and v not in self.choices:
            raise ValueError(f"expected {self.describe()}, got {value!r}")
        below = self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)
        above = self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi)
        if below or above:
            raise ValueError(f"expected {self.describe()}, got {value!r}")
        return v

    def _parse(self, value):
        if self.kind is str:
            return value if isinstance(value, str) and value else None
        if isinstance(value, bool):
            return None
        if isinstance(value, str):
            try:
                value = self.kind(value.strip())
            except ValueError:
                return None
        if self.kind is int:
            return int(value) if isinstance(value, int) or (
                hasattr(value, "dtype") and value.dtype.kind in "iu") else None
        if isinstance(value, (int, float)) or hasattr(value, "dtype"):
            value = float(value)
            return value if math.isfinite(value) else None
        return None


POSITIVE = Check(int, lo=1)
NON_NEGATIVE = Check(int, lo=0)
RATE = Check(float, lo=0, lo_open=True)           # learning rates
NON_NEGATIVE_FLOAT = Check(float, lo=0)
FRACTION = Check(float, lo=0, hi=1, hi_open=True)  # dropout, Adam's betas
TEXT = Check(str)


def option(default, help, check):
    """A TrainConfig field: its default, its help line and its valid range."""
    return dataclasses.field(default=default, metadata={"help": help, "check": check})


@dataclass
class TrainConfig:
    data: str = option("tinyshakespeare", "registered corpus name or path to a UTF-8 text file",
                       TEXT)
    out_dir: str = option("runs/default", "run directory: tokenizer, checkpoints, log, plots",
                          TEXT)
    tokenizer: str = option("char", "'char' (one id per character) or 'bpe' (byte-level BPE)",
                            Check(str, choices=("char", "bpe")))
    bpe_vocab_size: int = option(512, "with --tokenizer bpe: 256 bytes + learned merges",
                                 Check(int, lo=256))
    n_layer: int = option(4, "Transformer blocks", POSITIVE)
    n_head: int = option(4, "attention heads (must divide --n-embd)", POSITIVE)
    n_embd: int = option(128, "width of the residual stream", POSITIVE)
    block_size: int = option(64, "context length in tokens", POSITIVE)
    dropout: float = option(0.0, "dropout probability (0 for small CPU runs)", FRACTION)
    bias: bool = option(True, "biases in Linear and LayerNorm", None)
    gelu: str = option("tanh", "the MLP's GELU: 'tanh' (GPT-2's form) or 'exact' (erf, as "
                               "nanoGPT's nn.GELU())", Check(str, choices=("tanh", "exact")))
    model: str = option("gpt", "'gpt' (GPT-2: LayerNorm, learned positions, GELU MLP) or 'llama' "
                               "(RMSNorm, RoPE, SwiGLU, grouped-query attention)",
                        Check(str, choices=("gpt", "llama")))
    n_kv_head: int = option(0, "llama: key/value heads, dividing --n-head (0: --n-head, no "
                               "grouping)", NON_NEGATIVE)
    intermediate_size: int = option(0, "llama: SwiGLU width (0: 8/3 --n-embd rounded up to a "
                                       "multiple of 8, the GELU MLP's parameter count)",
                                    NON_NEGATIVE)
    rope_theta: float = option(10000.0, "llama: RoPE base", RATE)
    tie_embeddings: bool = option(True, "llama: the output layer is the transposed token "
                                        "embedding (as GPT-2)", None)
    init_from: Optional[str] = option(None, "start from the weights and tokenizer of a Hugging "
                                            "Face model directory (tinyllm export) or a run "
                                            "directory, which also fix the model's settings "
                                            "(none: random weights)",
                                      Check(str, optional=True))
    freeze_layers: int = option(0, "with --init-from: keep the token (and position) embeddings "
                                   "and the first N blocks as loaded (up to --n-layer; the "
                                   "GPT's output layer is its token embedding, so it is frozen "
                                   "too; 0: train everything)", NON_NEGATIVE)
    new_head: bool = option(False, "with --init-from: a new random output layer (seeded by "
                                   "--seed) instead of the loaded one; only for an untied llama "
                                   "(the GPT's, and a tied llama's, is the token embedding)",
                            None)
    batch_size: int = option(12, "sequences per step", POSITIVE)
    max_iters: int = option(2000, "optimizer steps", POSITIVE)
    learning_rate: float = option(1e-3, "peak learning rate", RATE)
    min_lr: float = option(1e-4, "floor of the cosine decay", NON_NEGATIVE_FLOAT)
    warmup_iters: int = option(100, "linear warmup steps", NON_NEGATIVE)
    lr_decay_iters: int = option(2000, "steps over which the cosine decays to --min-lr",
                                 POSITIVE)
    weight_decay: float = option(0.1, "AdamW decay for 2-D weights (none for biases, norms)",
                                 NON_NEGATIVE_FLOAT)
    beta1: float = option(0.9, "AdamW beta1", FRACTION)
    beta2: float = option(0.99, "AdamW beta2 (0.99 for small batches, as nanoGPT)", FRACTION)
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0 = off)",
                              NON_NEGATIVE_FLOAT)
    eval_interval: int = option(250, "steps between train/val evaluations", POSITIVE)
    eval_iters: int = option(20, "batches per evaluation (0: no evaluation)", NON_NEGATIVE)
    checkpoint_interval: int = option(500, "steps between checkpoints (and one at the end)",
                                      POSITIVE)
    health_every: int = option(250, "steps between training-health records (0 = off)",
                               NON_NEGATIVE)
    seed: int = option(1337, "seeds init, batches, dropout", Check(int, lo=0, hi=2**63 - 1))
    backend: str = option("numpy", "'numpy' (CPU) or 'cupy' (GPU)",
                          Check(str, choices=("numpy", "cupy")))
    workers: int = option(0, "processes sharing each batch on this machine (tinyllm.parallel); "
                             "0: one per core that divides --batch-size (numpy), 1: this "
                             "process only; under mpiexec the ranks are the processes",
                          NON_NEGATIVE)
    grad_accum: int = option(0, "micro-batches each batch is split into, over all processes "
                                "together (nanoGPT's gradient_accumulation_steps); 0: one per "
                                "process", NON_NEGATIVE)
    allreduce: str = option("fast", "how ranks under mpiexec sum gradients: 'fast' (MPI's "
                                    "Allreduce) or 'deterministic' (in rank order: bit for bit "
                                    "the one-process run)",
                            Check(str, choices=("fast", "deterministic")))

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            check = f.metadata["check"]
            if check is None:
                if not isinstance(value, bool):
                    raise ValueError(f"TrainConfig: {f.name} expected True or False, got "
                                     f"{value!r}")
                continue
            try:
                setattr(self, f.name, check(value))
            except ValueError as e:
                raise ValueError(f"TrainConfig: {f.name} {e}") from None
        if self.n_embd % self.n_head:
            raise ValueError(f"TrainConfig: n_embd {self.n_embd} does not split into n_head "
                             f"{self.n_head} heads (n_embd must be a multiple of n_head)")
        if self.model == "llama":
            if self.n_kv_head and self.n_head % self.n_kv_head:
                raise ValueError(f"TrainConfig: n_head {self.n_head} is not a multiple of "
                                 f"n_kv_head {self.n_kv_head} (each key/value head serves "
                                 f"n_head / n_kv_head query heads)")
            if (self.n_embd // self.n_head) % 2:
                raise ValueError(f"TrainConfig: --model llama needs an even head size, got "
                                 f"n_embd / n_head = {self.n_embd // self.n_head} (RoPE "
                                 f"rotates pairs of channels)")
        if self.min_lr > self.learning_rate:
            raise ValueError(f"TrainConfig: min_lr {self.min_lr} is above learning_rate "
                             f"{self.learning_rate} (the cosine decays from learning_rate to "
                             f"min_lr)")
        if self.warmup_iters > self.lr_decay_iters:
            raise ValueError(f"TrainConfig: warmup_iters {self.warmup_iters} is longer than "
                             f"lr_decay_iters {self.lr_decay_iters}")
        for name, on in (("freeze_layers", self.freeze_layers), ("new_head", self.new_head)):
            if on and not self.init_from:
                raise ValueError(f"TrainConfig: {flag_text(name, on)} needs --init-from DIR "
                                 f"(it fine-tunes loaded weights; a run from random weights "
                                 f"has nothing to keep)")
        if self.freeze_layers > self.n_layer:
            raise ValueError(f"TrainConfig: --freeze-layers {self.freeze_layers} is more than "
                             f"the model's {self.n_layer} blocks (n_layer {self.n_layer})")
        if self.new_head and (self.model == "gpt" or self.tie_embeddings):
            raise ValueError(f"TrainConfig: --new-head needs an output layer of its own, and "
                             f"this {self.model}'s is tied: it is the token embedding matrix "
                             f"(logits = x @ W_embedding^T), which a new head would replace; "
                             f"drop --new-head (only a llama saved with tie_word_embeddings "
                             f"false has a separate head)")
        if self.workers > 1 and self.backend != "numpy":
            raise ValueError(f"TrainConfig: workers {self.workers} needs backend 'numpy' (data "
                             f"parallelism splits the batch over CPU processes)")
        if self.workers and self.batch_size % self.workers:
            raise ValueError(f"TrainConfig: batch_size {self.batch_size} does not split evenly "
                             f"over workers {self.workers}")
        if self.grad_accum and self.batch_size % self.grad_accum:
            raise ValueError(f"TrainConfig: batch_size {self.batch_size} does not split evenly "
                             f"into grad_accum {self.grad_accum} micro-batches")
        if self.grad_accum and self.workers and self.grad_accum % self.workers:
            raise ValueError(f"TrainConfig: grad_accum {self.grad_accum} micro-batches do not "
                             f"split evenly over workers {self.workers} (give each process "
                             f"the same number)")


PRESETS = {
    # nanoGPT's config/train_shakespeare_char.py with its README's CPU settings (the defaults
    # above), train.py's default bias=False (no biases in Linear and LayerNorm) and model.py's
    # exact GELU
    "shakespeare-char": dict(bias=False, gelu="exact"),
    # the same data, size and budget with a LLaMA-style decoder (RMSNorm, RoPE, SwiGLU of the
    # GELU MLP's parameter count, tied embeddings): the comparison row in benchmarks/RESULTS.md
    "shakespeare-char-llama": dict(model="llama", bias=False),
    # a few seconds: for smoke tests
    "tiny": dict(n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=8, max_iters=20,
                 warmup_iters=2, lr_decay_iters=20, eval_interval=10, eval_iters=2,
                 checkpoint_interval=10, health_every=10),
}

# Settings a resumed run may change: none of them changes the weights' trajectory. The data may
# point at a moved copy of the same corpus (checked by its sha256), the run directory may have
# moved; evaluation, checkpoint and health records only read the model; the process count, the
# micro-batch split, the allreduce's order and the backend change float rounding only (a note
# says so; with dropout another split draws other masks).
MUTABLE_ON_RESUME = ("max_iters", "eval_interval", "eval_iters", "checkpoint_interval",
                     "health_every", "workers", "grad_accum", "allreduce", "backend", "data",
                     "out_dir")


# settings added since runs were first saved: the value those runs used
_BEFORE_THE_FIELD = {"gelu": "tanh", "model": "gpt"}


def saved_config(values):
    """The TrainConfig of a run's log.json ``config`` (fields added since: what those runs
    used)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{**_BEFORE_THE_FIELD,
                          **{k: v for k, v in values.items() if k in known}})


def model_config(cfg, vocab_size, dropout=None):
    """The model's config dataclass for a TrainConfig: a GPTConfig or a LlamaConfig.
    ``dropout``: None for the run's own (training), 0.0 for inference."""
    from tinyllm.models import GPTConfig, LlamaConfig
    dropout = cfg.dropout if dropout is None else dropout
    if cfg.model == "llama":
        d_ff = cfg.intermediate_size or -(-8 * cfg.n_embd // 3 // 8) * 8   # ceil to 8
        return LlamaConfig(block_size=cfg.block_size, vocab_size=vocab_size,
                           n_layer=cfg.n_layer, n_head=cfg.n_head,
                           n_kv_head=cfg.n_kv_head or cfg.n_head, n_embd=cfg.n_embd,
                           intermediate_size=d_ff, rope_theta=cfg.rope_theta,
                           tie_word_embeddings=cfg.tie_embeddings, bias=cfg.bias,
                           dropout=dropout)
    return GPTConfig(block_size=cfg.block_size, vocab_size=vocab_size, n_layer=cfg.n_layer,
                     n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=dropout, bias=cfg.bias,
                     gelu=cfg.gelu)


def build_model(model_cfg):
    """GPT(model_cfg) or Llama(model_cfg), by the config's class."""
    from tinyllm.models import GPT, Llama, LlamaConfig
    return (Llama if isinstance(model_cfg, LlamaConfig) else GPT)(model_cfg)


def resume_changes(saved, cfg, step):
    """{setting: (saved value, new value)} for the settings ``cfg`` changes in a run saved with
    ``saved`` whose checkpoint is at ``step``. Raises ValueError naming every setting that a
    resumed run cannot change (it would be another run) and a --max-iters below ``step``."""
    refused, changes = [], {}
    for f in dataclasses.fields(TrainConfig):
        old, new = getattr(saved, f.name), getattr(cfg, f.name)
        if old == new:
            continue
        if f.name in MUTABLE_ON_RESUME:
            changes[f.name] = (old, new)
        else:
            refused.append(f"{flag_text(f.name, new)} (the run has "
                           f"{flag_text(f.name, old)})")
    if refused:
        raise ValueError(f"--resume continues the run with its own settings; these differ: "
                         f"{'; '.join(refused)}. Drop them, or start another run (a new "
                         f"--out-dir, or --overwrite)")
    if step is not None and cfg.max_iters < step:
        raise ValueError(f"--max-iters {cfg.max_iters} is below the checkpoint's step {step}: "
                         f"a resumed run cannot go back (raise --max-iters, or start another "
                         f"run)")
    return changes


def flag_text(name, value):
    """How the command line says ``name = value``: '--learning-rate 0.01', '--no-bias'."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"

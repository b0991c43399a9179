"""What the training loop of ``tinyllm train`` stands on: the run set up in its directory (corpus,
tokenizer, model, optimizer, resume), checkpoints, Ctrl-C, health records, data parallelism and
the plot. The loop itself is ``tinyllm.loop``, to be read top to bottom like nanoGPT's train.py.

    with setup_run(TrainConfig(**PRESETS["tiny"], out_dir="runs/tiny")) as run:
        run.model, run.opt, run.train_ids, ...    # what the loop trains
        run.save(step)                            # log.json, then the checkpoint

The run directory's contract (one writer, no silent overwrite, resume from the saved settings,
the corpus recorded by path and sha256, crash leftovers cleaned) is ``tinyllm.rundir``'s; the
settings and their ranges are ``tinyllm.config``'s. A run directory holds the tokenizer,
checkpoints (``tinyllm.checkpoint``), ``log.json``, ``loss.png`` and ``health.png``: every
``health_every`` steps the log records the gradient norm and update-to-weight ratio per layer
and the attention entropy per head (``HealthMeter``, ``tinyllm.health``).

Training is resumable: ``resume=True`` reloads the weights, optimizer, step and every random
generator, and continues with exactly the losses an uninterrupted run would have printed (on
CPU). Ctrl-C finishes the step under way, saves a checkpoint at that step boundary and exits
(resuming from it is the uninterrupted run; in the last step the run simply finishes); a second
Ctrl-C stops at once, keeping the last checkpoint (``StopRequest``). A non-finite loss stops the
run, keeping the last good checkpoint (``check_finite``).
"""
import contextlib
import dataclasses
import functools
import math
import signal
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

import tinyllm as tl
from tinyllm import health, hf, rundir
from tinyllm._files import atomic_write
from tinyllm.checkpoint import load_checkpoint, save_checkpoint
from tinyllm.config import (TrainConfig, build_model, model_config, resume_changes,
                            saved_config)
from tinyllm.data.corpora import (corpus_record, find_recorded_corpus, read_text,
                                  train_val_split)
from tinyllm.data.tokenizers import ByteBPETokenizer, CharTokenizer, load_tokenizer
from tinyllm.models import GPT, Llama
from tinyllm.optim import AdamW, weight_decay_groups
from tinyllm.parallel import DataParallel, auto_workers


class TrainError(RuntimeError):
    """A run that cannot go on: a non-finite loss, a corpus too short, a log behind its
    checkpoint. The CLI prints it as one line (exit 1)."""


# ----------------------------------------------------------------------------------------------
# Ctrl-C

class StopRequest:
    """Ctrl-C during training, deferred to the next step boundary (see ``stop_on_ctrl_c``).

    ``requested``: a first Ctrl-C came. While ``hold()`` runs (a checkpoint being written) a
    second one is kept until the block ends and raised there, so it never splits the weights
    from the log or lands in a worker exchange. ``stopping``: the run is saving its last
    checkpoint on the way out; further Ctrl-Cs change nothing. ``mid_step``: inside
    ``step()``, the block of one training step, which a KeyboardInterrupt leaves half done."""

    def __init__(self):
        self.requested = False
        self.stopping = False
        self.mid_step = False
        self._held = 0
        self._forced = False

    def on_sigint(self, signum=None, frame=None):
        if self.stopping:
            return
        if not self.requested:
            self.requested = True
        elif self._held:
            self._forced = True
        else:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def hold(self):
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
        if self._forced and not self._held and not self.stopping:
            self._forced = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def step(self):
        """One training step: from the batch draw to the loss in the log. An exception out of
        the block leaves ``mid_step`` set: the state is between two step boundaries."""
        self.mid_step = True
        yield
        self.mid_step = False


@contextlib.contextmanager
def stop_on_ctrl_c(stop):
    """While training, SIGINT goes to ``stop.on_sigint``: the first Ctrl-C only sets
    ``stop.requested``, which the loop reads between steps; a second raises
    ``KeyboardInterrupt`` at once (at the end of a checkpoint write, if one is under way).

    Why not let the first one raise: a KeyboardInterrupt lands anywhere, after ``get_batch``
    has advanced the data generator, between two parameters of ``opt.step()``, inside the
    dropout draws. A checkpoint saved there holds a state no step boundary ever had (half the
    weights updated, a batch drawn but never trained on), and resuming from it is not the
    uninterrupted run. Waiting for the step to finish costs one step's time. Signals reach
    only the main thread; elsewhere this does nothing (a KeyboardInterrupt raised there is
    handled by the loop as a second Ctrl-C)."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGINT, stop.on_sigint)
    try:
        yield stop
    finally:        # None: the old handler was not installed from Python; use Python's default
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None
                      else previous)


# ----------------------------------------------------------------------------------------------
# the run: what the loop reads, and the helpers it calls

@dataclasses.dataclass
class Run:
    """A run set up to train (``setup_run``)."""
    cfg: TrainConfig
    dir: Path
    log: dict                       # log.json: config, corpus, train_loss, eval, health
    model: GPT | Llama               # by --model
    opt: AdamW
    train_ids: np.ndarray           # (N_train,) token ids: the first 90% of the corpus
    val_ids: np.ndarray             # (N_val,) the last 10%
    data_rng: np.random.Generator   # the training batches' stream (checkpointed)
    start: int                      # the first step to run: 0, or the checkpoint's
    workers: int                    # processes sharing each batch
    dp: Optional[DataParallel]      # those processes when workers > 1, else None
    quiet: bool = False
    saved_step: Optional[int] = None    # the last checkpoint written (or resumed from)
    ctrl_c: StopRequest = dataclasses.field(default_factory=StopRequest)
    bar: object = None              # the progress bar (tqdm), once ``progress`` made it
    _t_last: float = dataclasses.field(default=0.0, repr=False)    # when the last step ended

    @property
    def splits(self):
        return {"train": self.train_ids, "val": self.val_ids}

    def progress(self, steps):
        """``steps`` with a progress bar (tqdm, when installed and not ``quiet``)."""
        self.bar = _progress(steps, self.quiet, initial=self.start, total=self.cfg.max_iters)
        self._t_last = time.perf_counter()
        return self.bar

    def show(self, lossf, lr):
        """The step's loss, learning rate and tokens/s on the progress bar."""
        now = time.perf_counter()
        if hasattr(self.bar, "set_postfix"):
            tokens = self.cfg.batch_size * self.cfg.block_size
            self.bar.set_postfix(loss=f"{lossf:.3f}", lr=f"{lr:.2e}",
                                 tok_s=f"{tokens / max(now - self._t_last, 1e-9):,.0f}")
        self._t_last = now

    def say(self, msg):
        _say(self.bar, self.quiet, msg)

    def save(self, step):
        """log.json, then the checkpoint at ``step``: weights, optimizer and every generator
        (the batches', and the workers' dropout streams). The log goes first: a crash between
        the two leaves a log ahead of the checkpoint, which --resume cuts back. A Ctrl-C during
        the save waits for its end (``StopRequest.hold``)."""
        with self.ctrl_c.hold():
            rundir.write_log(self.dir, self.log)
            save_checkpoint(self.dir / "checkpoint", self.model, self.opt, step=step,
                            extra={"data_rng": self.data_rng, "workers": self.workers,
                                   "worker_rngs": self.dp.rng_states() if self.dp else []})
            self.saved_step = step

    def stop(self, step):
        """After Ctrl-C, with the steps before ``step`` done: the checkpoint at ``step``, exit
        130."""
        self.ctrl_c.stopping = True                 # further Ctrl-Cs: the save goes on
        self.save(step)
        self.say(f"interrupted: checkpoint at step {step} in {self.dir / 'checkpoint'}; "
                 f"continue with --resume")
        raise SystemExit(130)

    def boundary(self):
        """After a KeyboardInterrupt (a second Ctrl-C, or one raised where none is deferred):
        the step boundary the run is at, to checkpoint there. Inside a step, or inside an
        exchange with the workers (which can leave a pipe mid-message), the state is no step
        boundary: nothing is written, the last checkpoint is kept, exit 130."""
        done = len(self.log["train_loss"])
        if self.ctrl_c.mid_step or (self.dp is not None and self.dp.in_exchange):
            kept = "no checkpoint was saved before"
            if self.saved_step is not None:
                kept = (f"the last checkpoint in {self.dir / 'checkpoint'} (step "
                        f"{self.saved_step}) is kept")
            self.say(f"interrupted in the middle of step {done}: no checkpoint written from "
                     f"there; {kept}")
            raise SystemExit(130) from None
        return done


def check_finite(lossf, step, run):
    """Stop the run at a non-finite loss, before the optimizer spreads it into the weights: the
    log is written, the last good checkpoint is kept."""
    if not math.isfinite(lossf):
        rundir.write_log(run.dir, run.log)
        raise TrainError(f"loss became {lossf} at step {step}; stopped. The last good "
                         f"checkpoint is in {run.dir / 'checkpoint'} (try a lower "
                         f"--learning-rate or --grad-clip)")


class HealthMeter:
    """The training-health record of one step (``tinyllm.health``), taken at three points of
    it when ``step % every == 0``; at other steps each call does nothing. It reads the graph,
    the gradients and the weights, and changes none of them, nor any random generator."""

    def __init__(self, model, step, every):
        self.model, self.step, self.on = model, step, every > 0 and step % every == 0
        self.attn = {}

    def forward(self, loss):
        """Attention entropy per head, from the forward's graph (before backward frees P)."""
        if self.on:
            self.attn = health.attention_stats(loss, self.model)

    def backward(self):
        """Gradient norms per layer (before clipping), and the weights before the update."""
        if self.on:
            self.norms, self.before = health.grad_norms(self.model), health.snapshot(self.model)

    def record(self, log, lr):
        """After the update: the update-to-weight ratios, and the step's record into the log."""
        if self.on:
            ratios = health.update_ratios(self.model, self.before)
            log["health"].append(health.record(self.step, self.norms, ratios, self.attn, lr=lr))


# ----------------------------------------------------------------------------------------------
# setting a run up: the directory, the corpus, the tokenizer, the model, resume

def data_generator(seed):
    """The generator of the training batches: seeded by ``seed``, but a stream of its own.
    ``tl.manual_seed(seed)`` draws the initial weights from ``default_rng(seed)``; drawing the
    batches from a second ``default_rng(seed)`` would replay the very same random words, so
    the first batches' window positions would be functions of the first weights' values."""
    return np.random.default_rng([seed, 1])


def resolve_workers(cfg, saved=None):
    """The number of processes a run uses: ``--workers`` when given; on resume the saved run's
    (so it continues bit for bit); else one per core that divides the batch (numpy backend)."""
    if cfg.workers:
        return cfg.workers
    if cfg.backend != "numpy":
        return 1
    if saved is not None:                    # resume: the saved split, where it still applies
        return saved if cfg.batch_size % saved == 0 else auto_workers(cfg.batch_size)
    return auto_workers(cfg.batch_size)


@contextlib.contextmanager
def setup_run(cfg, resume=False, quiet=False, overwrite=False):
    """The run in ``cfg.out_dir``, set up to train: yields a ``Run`` while holding the
    directory's lock and, with workers > 1, the worker processes (stopped however the block
    ends); yields None when ``resume`` finds the run complete (nothing to do).

    A new run refuses a directory that holds anything, unless ``overwrite`` (then the old run
    is deleted once the new one has its corpus and tokenizer). ``resume`` continues the run
    there: ``cfg`` must be its saved config, changed only in ``MUTABLE_ON_RESUME`` settings
    (the changes are printed and recorded in the log). A new run with ``cfg.init_from`` starts
    from that model's weights and tokenizer instead of random ones (``tinyllm.hf.load_init``),
    with a new output layer (``cfg.new_head``) and its embeddings and first
    ``cfg.freeze_layers`` blocks frozen (also on resume: before the optimizer is built).
    Raises RunDirError when the directory is in use or cannot be used as asked
    (``tinyllm.rundir``)."""
    if resume and overwrite:
        raise TrainError("--resume continues the run, --overwrite deletes it: give one of them")
    tl.set_backend(cfg.backend)
    path = Path(cfg.out_dir)
    if resume:
        rundir.read_log(path)                           # before the lock: nothing to resume
    with rundir.locked(path):
        run = _setup(cfg, path, resume, quiet, overwrite)
        if run is None or run.dp is None:
            yield run
        else:
            with run.dp:
                yield run


def _setup(cfg, path, resume, quiet, overwrite):
    say = functools.partial(_say, None, quiet)
    log, changes, stale, step = {}, {}, [], None
    if resume:
        log, step = rundir.read_log(path), rundir.checkpoint_step(path)
        changes = resume_changes(saved_config(log["config"]), cfg, step)
        changes.pop("out_dir", None)                    # the directory moved: nothing to say
        if step >= cfg.max_iters and not changes:
            say(f"the run in {path} is complete: step {step} of --max-iters {cfg.max_iters} "
                f"(raise --max-iters to train further)")
            return None
        removed = rundir.clean(path)
        if removed:
            say(f"removed what an interrupted save left: {', '.join(removed)}")
    else:
        stale = rundir.check_new(path, overwrite)
    init = hf.load_init(cfg) if cfg.init_from and not resume else None   # (model, tokenizer)
    source, record = _corpus(cfg, log, resume, changes)
    text = read_text(source)
    tok = init[1] if init else _tokenizer(cfg, text, path / "tokenizer.json" if resume else None)
    train_ids, val_ids = _split_ids(tok, text, cfg, source)
    if not resume:                                      # everything checked: now write
        rundir.delete(path, stale)
        tok.save(path / "tokenizer.json")

    tl.manual_seed(cfg.seed)
    model_cfg = model_config(cfg, tok.vocab_size)                  # GPTConfig or LlamaConfig
    model = build_model(model_cfg)
    if init:                                    # --init-from: its weights, not random ones
        hf.load_init_weights(model, init[0], new_head=cfg.new_head)
    frozen = hf.freeze_layers(model, cfg.freeze_layers)    # before the optimizer: left out
    if frozen and not resume:
        n, train = model.num_parameters(), model.num_parameters(trainable_only=True)
        say(f"frozen: the embeddings and the first {cfg.freeze_layers} of {cfg.n_layer} "
            f"blocks, {n - train:,} of {n:,} parameters ({train:,} train)")
    opt = AdamW(weight_decay_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                betas=(cfg.beta1, cfg.beta2))
    data_rng, start, meta = data_generator(cfg.seed), 0, None
    if resume:
        meta = load_checkpoint(path / "checkpoint", model, opt)
        start, data_rng = meta["step"], meta["extra"]["data_rng"]
        log = _resumed_log(log, start, changes, path, say)
    else:
        log = {"config": None, "train_loss": [], "eval": [], "health": []}
    log["config"] = dataclasses.asdict(cfg)
    log["corpus"] = record
    # a checkpoint from before data parallelism was one process
    saved_workers = meta["extra"].get("workers", 1) if meta else None
    workers = log["workers"] = resolve_workers(cfg, saved_workers)
    if meta is not None and saved_workers != workers:
        say(f"note: resuming with {workers} processes, the run was saved with "
            f"{saved_workers}: the gradients are summed in another order, so the losses "
            f"differ from an uninterrupted run in the last digits")
    dp = None
    if workers > 1:                 # data parallelism (tinyllm.parallel): B / W rows each
        dp = DataParallel(model, build=functools.partial(build_model, model_cfg), workers=workers,
                          seed=cfg.seed)
        if meta is not None and saved_workers == workers:
            try:
                dp.set_rng_states(meta["extra"]["worker_rngs"])
            except BaseException:
                dp.close()
                raise
        say(f"data parallel: {workers} processes x {cfg.batch_size // workers} sequences "
            f"(--workers 1: one process)")
    return Run(cfg=cfg, dir=path, log=log, model=model, opt=opt, train_ids=train_ids,
               val_ids=val_ids, data_rng=data_rng, start=start, workers=workers, dp=dp,
               quiet=quiet, saved_step=start if resume else None)


def _resumed_log(log, start, changes, path, say):
    """The saved log cut back to the checkpoint's step, with the changed settings recorded."""
    if len(log["train_loss"]) < start:
        raise TrainError(f"{path / 'log.json'} has {len(log['train_loss'])} steps, the "
                         f"checkpoint is at step {start}: the log is older than the "
                         f"checkpoint")
    log["train_loss"] = log["train_loss"][:start]
    log["eval"] = [e for e in log["eval"] if e["step"] < start]
    log["health"] = [h for h in log.get("health", []) if h["step"] < start]
    for name, (old, new) in changes.items():
        say(f"resume at step {start}: {name} {old} -> {new}")
    if changes:
        log.setdefault("resumes", []).append(
            {"step": start, "changed": {k: list(v) for k, v in changes.items()}})
    return log


def _corpus(cfg, log, resume, changes):
    """(path, record) of the run's corpus. A new run records the file it resolved (absolute
    path, size, sha256); a resumed one finds that very file again (a changed ``data`` must be a
    copy with the same sha256). Runs from before the record resolve ``data`` as they did."""
    if not resume or "corpus" not in log:
        record = corpus_record(cfg.data)
        return Path(record["path"]), record
    path = find_recorded_corpus(log["corpus"], cfg.data if "data" in changes else None)
    return path, {**log["corpus"], "path": str(path)}


def _tokenizer(cfg, text, saved):
    """The run's saved tokenizer (``saved``, on resume), or one trained on ``text``."""
    if saved is not None:
        return load_tokenizer(saved)
    if cfg.tokenizer == "bpe":
        return ByteBPETokenizer.train(text, vocab_size=cfg.bpe_vocab_size)
    return CharTokenizer.from_text(text)


def _split_ids(tok, text, cfg, source):
    ids = np.array(tok.encode(text), dtype=np.int64)
    train_ids, val_ids = train_val_split(ids)
    if len(val_ids) <= cfg.block_size:
        raise TrainError(f"corpus {str(source)!r} is too short for --block-size "
                         f"{cfg.block_size}: {len(ids):,} tokens, so the validation split (the "
                         f"last 10%) has {len(val_ids):,}, and a window needs block_size + 1 = "
                         f"{cfg.block_size + 1}")
    return train_ids, val_ids


# ----------------------------------------------------------------------------------------------
# output: the progress bar, messages, the plot

def _progress(it, quiet, **kw):
    if quiet:
        return it
    try:
        from tqdm import tqdm
    except ImportError:
        return it
    return tqdm(it, **kw)


def _say(bar, quiet, msg):
    if quiet:
        return
    (bar.write if hasattr(bar, "write") else print)(msg)


def plot(path, log):
    """loss.png (and health.png, with health records) in the run directory ``path``; None
    without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(log["train_loss"], alpha=0.4, label="train (per step)")
    ev = log["eval"]
    ax.plot([e["step"] for e in ev], [e["train"] for e in ev], "o-", label="train (eval)")
    ax.plot([e["step"] for e in ev], [e["val"] for e in ev], "o-", label="val (eval)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.legend()
    fig.tight_layout()
    png = Path(path) / "loss.png"
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    if log.get("health"):
        health.plot_health(log["health"], Path(path) / "health.png")
    return png

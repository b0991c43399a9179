"""The training loop behind ``tinyllm train``: a GPT on a corpus, in a run directory.

    from tinyllm.trainer import train
    from tinyllm.config import TrainConfig, PRESETS
    log = train(TrainConfig(**PRESETS["tiny"], out_dir="runs/tiny"))

The run directory's contract (one writer, no silent overwrite, resume from the saved settings,
the corpus recorded by path and sha256, crash leftovers cleaned) is ``tinyllm.rundir``'s; the
settings and their ranges are ``tinyllm.config``'s. A run directory holds the tokenizer,
checkpoints (``tinyllm.checkpoint``), ``log.json``, ``loss.png`` and ``health.png``: every
``health_every`` steps the log records the gradient norm and update-to-weight ratio per layer
and the attention entropy per head (``tinyllm.health``).

Training is resumable: ``resume=True`` reloads the weights, optimizer, step and every random
generator, and continues with exactly the losses an uninterrupted run would have printed (on
CPU). Ctrl-C finishes the step under way, saves a checkpoint at that step boundary and exits
(resuming from it is the uninterrupted run; in the last step the run simply finishes); a second
Ctrl-C stops at once, keeping the last checkpoint. A non-finite loss stops the run, keeping the
last good checkpoint.
"""
import contextlib
import dataclasses
import functools
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np

import tinyllm as tl
from tinyllm import health, rundir
from tinyllm._files import atomic_write
from tinyllm.checkpoint import load_checkpoint, save_checkpoint
from tinyllm.config import resume_changes, saved_config
from tinyllm.data.corpora import (corpus_record, find_recorded_corpus, get_batch, read_text,
                                  train_val_split)
from tinyllm.data.tokenizers import ByteBPETokenizer, CharTokenizer, load_tokenizer
from tinyllm.models import GPT, GPTConfig
from tinyllm.optim import AdamW, clip_grad_norm_, weight_decay_groups
from tinyllm.optim.lr_scheduler import cosine_with_warmup_lr
from tinyllm.parallel import DataParallel, auto_workers


class TrainError(RuntimeError):
    """A run that cannot go on: a non-finite loss, a corpus too short, a log behind its
    checkpoint. The CLI prints it as one line (exit 1)."""


def data_generator(seed):
    """The generator of the training batches: seeded by ``seed``, but a stream of its own.
    ``tl.manual_seed(seed)`` draws the initial weights from ``default_rng(seed)``; drawing the
    batches from a second ``default_rng(seed)`` would replay the very same random words, so
    the first batches' window positions would be functions of the first weights' values."""
    return np.random.default_rng([seed, 1])


def estimate_loss(dp, splits, cfg, step):
    """Mean loss over ``eval_iters`` batches per split, from a generator seeded by the step
    (so evaluation never disturbs the training batches, and resumed runs match). ``dp`` is the
    run's ``DataParallel``: each batch is split over its workers as in training."""
    dp.model.eval()
    out = {}
    for name, data in splits.items():
        rng = np.random.default_rng([cfg.seed, step, len(name)])
        losses = [dp.loss(*get_batch(data, cfg.batch_size, cfg.block_size, rng))
                  for _ in range(cfg.eval_iters)]
        out[name] = float(np.mean(losses))
    dp.model.train()
    return out


class StopRequest:
    """Ctrl-C during training, deferred to the next step boundary (see ``stop_on_ctrl_c``).

    ``requested``: a first Ctrl-C came. While ``hold()`` runs (a checkpoint being written) a
    second one is kept until the block ends and raised there, so it never splits the weights
    from the log or lands in a worker exchange. ``stopping``: the run is saving its last
    checkpoint on the way out; further Ctrl-Cs change nothing."""

    def __init__(self):
        self.requested = False
        self.stopping = False
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


def _corpus(cfg, log, resume, changes):
    """(path, record) of the run's corpus. A new run records the file it resolved (absolute
    path, size, sha256); a resumed one finds that very file again (a changed ``data`` must be a
    copy with the same sha256). Runs from before the record resolve ``data`` as they did."""
    if not resume or "corpus" not in log:
        record = corpus_record(cfg.data)
        return Path(record["path"]), record
    path = find_recorded_corpus(log["corpus"], cfg.data if "data" in changes else None)
    return path, {**log["corpus"], "path": str(path)}


def _split_ids(tok, text, cfg, source):
    ids = np.array(tok.encode(text), dtype=np.int64)
    train_ids, val_ids = train_val_split(ids)
    if len(val_ids) <= cfg.block_size:
        raise TrainError(f"corpus {str(source)!r} is too short for --block-size "
                         f"{cfg.block_size}: {len(ids):,} tokens, so the validation split (the "
                         f"last 10%) has {len(val_ids):,}, and a window needs block_size + 1 = "
                         f"{cfg.block_size + 1}")
    return train_ids, val_ids


def train(cfg, resume=False, quiet=False, overwrite=False):
    """Train per ``cfg`` in the run directory ``cfg.out_dir``; returns the log (a dict).

    A new run refuses a directory that holds anything, unless ``overwrite`` (then the old run
    is deleted once the new one has its corpus and tokenizer). ``resume`` continues the run
    there: ``cfg`` must be its saved config, changed only in ``MUTABLE_ON_RESUME`` settings
    (the changes are printed and recorded in the log). Raises TrainError on a non-finite loss,
    RunDirError when the directory is in use or cannot be used as asked (``tinyllm.rundir``),
    SystemExit(130) after Ctrl-C."""
    if resume and overwrite:
        raise TrainError("--resume continues the run, --overwrite deletes it: give one of them")
    tl.set_backend(cfg.backend)
    run = Path(cfg.out_dir)
    if resume:
        rundir.read_log(run)                            # before the lock: nothing to resume
    with rundir.locked(run):
        return _train_locked(cfg, run, resume, quiet, overwrite)


def _train_locked(cfg, run, resume, quiet, overwrite):
    ckpt = run / "checkpoint"
    tok_path = run / "tokenizer.json"
    changes, stale = {}, []
    if resume:
        log = rundir.read_log(run)
        step = rundir.checkpoint_step(run)
        changes = resume_changes(saved_config(log["config"]), cfg, step)
        changes.pop("out_dir", None)                    # the directory moved: nothing to say
        if step is not None and step >= cfg.max_iters and not changes:
            _say(None, quiet, f"the run in {run} is complete: step {step} of --max-iters "
                              f"{cfg.max_iters} (raise --max-iters to train further)")
            return log
        removed = rundir.clean(run)
        if removed:
            _say(None, quiet, f"removed what an interrupted save left: {', '.join(removed)}")
    else:
        log = {}
        stale = rundir.check_new(run, overwrite)
    source, record = _corpus(cfg, log, resume, changes)
    text = read_text(source)
    if resume:
        tok = load_tokenizer(tok_path)
    elif cfg.tokenizer == "bpe":
        tok = ByteBPETokenizer.train(text, vocab_size=cfg.bpe_vocab_size)
    else:
        tok = CharTokenizer.from_text(text)
    train_ids, val_ids = _split_ids(tok, text, cfg, source)
    if not resume:                                      # everything checked: now write
        rundir.delete(run, stale)
        tok.save(tok_path)

    tl.manual_seed(cfg.seed)
    gpt_config = GPTConfig(block_size=cfg.block_size, vocab_size=tok.vocab_size,
                           n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                           dropout=cfg.dropout, bias=cfg.bias, gelu=cfg.gelu)
    model = GPT(gpt_config)
    opt = AdamW(weight_decay_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                betas=(cfg.beta1, cfg.beta2))
    data_rng = data_generator(cfg.seed)
    start, meta = 0, None
    if resume:
        meta = load_checkpoint(ckpt, model, opt)
        start, data_rng = meta["step"], meta["extra"]["data_rng"]
        if len(log["train_loss"]) < start:
            raise TrainError(f"{run / 'log.json'} has {len(log['train_loss'])} steps, the "
                             f"checkpoint is at step {start}: the log is older than the "
                             f"checkpoint")
        log["train_loss"] = log["train_loss"][:start]
        log["eval"] = [e for e in log["eval"] if e["step"] < start]
        log["health"] = [h for h in log.get("health", []) if h["step"] < start]
        for name, (old, new) in changes.items():
            _say(None, quiet, f"resume at step {start}: {name} {old} -> {new}")
        if changes:
            log.setdefault("resumes", []).append(
                {"step": start, "changed": {k: list(v) for k, v in changes.items()}})
    else:
        log = {"config": None, "train_loss": [], "eval": [], "health": []}
    log["config"] = dataclasses.asdict(cfg)
    log["corpus"] = record
    # a checkpoint from before data parallelism was one process
    saved_workers = meta["extra"].get("workers", 1) if meta else None
    workers = resolve_workers(cfg, saved_workers)
    log["workers"] = workers
    dp = DataParallel(model, build=functools.partial(GPT, gpt_config), workers=workers,
                      seed=cfg.seed)
    with dp:                                    # stops the workers however the run ends
        if meta is not None and saved_workers == dp.workers > 1:
            dp.set_rng_states(meta["extra"]["worker_rngs"])
        elif meta is not None and saved_workers != dp.workers:
            _say(None, quiet, f"note: resuming with {dp.workers} processes, the run was saved with "
                              f"{saved_workers}: the gradients are summed in another order, so the "
                              f"losses differ from an uninterrupted run in the last digits")

        saved = {"step": start if resume else None}
        ctrl_c = StopRequest()

        def save(step):
            # the log first: a crash between the two leaves a log ahead of the checkpoint,
            # which --resume cuts back to the checkpoint's step
            with ctrl_c.hold():
                rundir.write_log(run, log)
                save_checkpoint(ckpt, model, opt, step=step,
                                extra={"data_rng": data_rng, "workers": dp.workers,
                                       "worker_rngs": dp.rng_states()})
                saved["step"] = step

        bar = _progress(range(start, cfg.max_iters), quiet, initial=start, total=cfg.max_iters)
        tokens = cfg.batch_size * cfg.block_size
        if dp.workers > 1:
            _say(bar, quiet, f"data parallel: {dp.workers} processes x "
                             f"{cfg.batch_size // dp.workers} sequences (--workers 1: one process)")
        t_last = time.perf_counter()
        done, clean = start, True       # steps fully done; whether the state is at a boundary
        stopped_at = None               # the boundary a Ctrl-C stopped at
        with stop_on_ctrl_c(ctrl_c):
            try:
                for step in bar:
                    if ctrl_c.requested:
                        stopped_at = step
                        break
                    if cfg.eval_iters and step % cfg.eval_interval == 0:
                        # a KeyboardInterrupt inside a worker exchange can leave a pipe
                        # mid-message: with workers, no checkpoint is written from there
                        clean = dp.workers == 1
                        losses = estimate_loss(dp, {"train": train_ids, "val": val_ids}, cfg,
                                               step)
                        clean = True
                        log["eval"].append({"step": step, **losses})
                        _say(bar, quiet, f"step {step}: train loss {losses['train']:.4f}, "
                                         f"val loss {losses['val']:.4f}")
                        if ctrl_c.requested:                # evaluating changed no state
                            stopped_at = step
                            break
                    lr = cosine_with_warmup_lr(step, cfg.learning_rate, cfg.warmup_iters,
                                               cfg.lr_decay_iters, cfg.min_lr)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    clean = False           # from here the step changes state: the batch stream
                    x, y = get_batch(train_ids, cfg.batch_size, cfg.block_size, data_rng)
                    # training health (tinyllm.health): reads the graph, gradients and weights,
                    # and changes none of them, nor any random generator
                    measure = cfg.health_every > 0 and step % cfg.health_every == 0
                    attn = {}

                    def before_backward(loss):      # rank 0's slice, before backward frees P
                        attn.update(health.attention_stats(loss, model))

                    opt.zero_grad()
                    value = dp.forward_backward(x, y, before_backward=before_backward if measure
                                                else None)     # the batch's loss and gradient
                    if not math.isfinite(value):
                        rundir.write_log(run, log)
                        raise TrainError(f"loss became {value} at step {step}; stopped. The "
                                         f"last good checkpoint is in {ckpt} (try a lower "
                                         f"--learning-rate or --grad-clip)")
                    if measure:
                        norms, before = health.grad_norms(model), health.snapshot(model)
                    if cfg.grad_clip:
                        clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                    log["train_loss"].append(value)
                    if measure:
                        ratios = health.update_ratios(model, before)
                        log["health"].append(health.record(step, norms, ratios, attn, lr=lr))
                    done, clean = step + 1, True
                    now = time.perf_counter()
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(loss=f"{value:.3f}", lr=f"{lr:.2e}",
                                        tok_s=f"{tokens / max(now - t_last, 1e-9):,.0f}")
                    t_last = now
                    if done % cfg.checkpoint_interval == 0:
                        save(done)
                if stopped_at is None:   # a first Ctrl-C from the last step on: the run ends
                    if cfg.eval_iters:
                        clean = dp.workers == 1
                        final = estimate_loss(dp, {"train": train_ids, "val": val_ids}, cfg,
                                              cfg.max_iters)
                        clean = True
                        log["eval"].append({"step": cfg.max_iters, **final})
                        _say(bar, quiet, f"done: train loss {final['train']:.4f}, "
                                         f"val loss {final['val']:.4f}")
                    ctrl_c.stopping = True
                    save(cfg.max_iters)
                    _plot(run, log)
                    return log
            except KeyboardInterrupt:   # a second Ctrl-C, or one raised where none is deferred
                if not clean:
                    kept = (f"the last checkpoint in {ckpt} (step {saved['step']}) is kept"
                            if saved["step"] is not None else "no checkpoint was saved before")
                    _say(bar, quiet, f"interrupted in the middle of step {done}: no "
                                     f"checkpoint written from there; {kept}")
                    raise SystemExit(130) from None
                stopped_at = done
            ctrl_c.stopping = True                  # further Ctrl-Cs: the save goes on
            save(stopped_at)
            _say(bar, quiet, f"interrupted: checkpoint at step {stopped_at} in {ckpt}; "
                             f"continue with --resume")
            raise SystemExit(130)


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


def _plot(run, log):
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
    path = run / "loss.png"
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    if log.get("health"):
        health.plot_health(log["health"], run / "health.png")
    return path

"""What the training loop of ``tinyllm train`` stands on: the ``Run`` (what the loop trains, and
its checkpoints), Ctrl-C, health records, the non-finite loss check and the plot. The loop
itself is ``tinyllm.loop``, to be read top to bottom like nanoGPT's train.py; setting the run up
(directory, corpus, tokenizer, model, optimizer, resume, processes) is ``tinyllm.run_setup``.

    with setup_run(TrainConfig(**PRESETS["tiny"], out_dir="runs/tiny")) as run:
        run.model, run.opt, run.train_ids, ...    # what the loop trains
        run.save(step)                            # log.json, then the checkpoint

A run directory holds the tokenizer, checkpoints (``tinyllm.checkpoint``), ``log.json``,
``loss.png`` and ``health.png``: every ``health_every`` steps the log records the gradient norm
and update-to-weight ratio per layer and the attention entropy per head (``HealthMeter``,
``tinyllm.health``).

Training is resumable: ``resume=True`` reloads the weights, optimizer, step and every random
generator, and continues with exactly the losses an uninterrupted run would have printed (on
CPU). Ctrl-C finishes the step under way, saves a checkpoint at that step boundary and exits
(resuming from it is the uninterrupted run; in the last step the run simply finishes); a second
Ctrl-C stops at once, keeping the last checkpoint (``StopRequest``). A non-finite loss stops the
run, keeping the last good checkpoint (``check_finite``).
"""
import contextlib
import dataclasses
import math
import signal
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

from tinyllm import health, rundir
from tinyllm._files import atomic_write
from tinyllm.checkpoint import save_checkpoint
from tinyllm.config import TrainConfig
from tinyllm.distributed import PeerStopped
from tinyllm.models import GPT, Llama
from tinyllm.optim import AdamW
from tinyllm.parallel import DataParallel


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
    handled by the loop as a second Ctrl-C). A process that ignores Ctrl-C keeps ignoring it
    (the ranks ``--workers`` starts: rank 0 decides for them, through ``stop_requested``)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is signal.SIG_IGN:   # (--workers' other ranks)
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
    """A run set up to train (``setup_run``), as one rank sees it: rank 0 owns the directory,
    the log, the messages and the progress bar; the other ranks (``--workers``, ``mpiexec``)
    train the same steps on their rows and write nothing."""
    cfg: TrainConfig
    dir: Optional[Path]             # the run directory (rank 0; None on the others)
    log: dict                       # log.json: config, corpus, train_loss, eval, health
    model: GPT | Llama               # by --model
    opt: AdamW
    train_ids: np.ndarray           # (N_train,) token ids: the first 90% of the corpus
    val_ids: np.ndarray             # (N_val,) the last 10%
    data_rng: np.random.Generator   # the training batches' stream (checkpointed)
    start: int                      # the first step to run: 0, or the checkpoint's
    workers: int                    # processes (ranks) sharing each batch
    dp: Optional[DataParallel]      # the data-parallel step, unless one process takes it whole
    comm: object = None             # tinyllm.distributed communicator (single, shm, mpi)
    streams: list = dataclasses.field(default_factory=list)     # the dropout streams resumed
    quiet: bool = False
    saved_step: Optional[int] = None    # the last checkpoint written (or resumed from)
    ctrl_c: StopRequest = dataclasses.field(default_factory=StopRequest)
    bar: object = None              # the progress bar (tqdm), once ``progress`` made it
    _t_last: float = dataclasses.field(default=0.0, repr=False)    # when the last step ended

    @property
    def splits(self):
        return {"train": self.train_ids, "val": self.val_ids}

    @property
    def lead(self):
        """Rank 0, the one that writes."""
        return self.comm is None or self.comm.rank == 0

    def stop_requested(self):
        """Ctrl-C came. On one process its own flag; over several ranks, whether it came to
        any of them, agreed at this point (a small collective), so all stop at the same step
        boundary."""
        if self.workers > 1:
            self.comm.what = f"the Ctrl-C check at step {self.dp.step}"
            return bool(self.comm.agree([float(self.ctrl_c.requested)])[0] > 0)
        return self.ctrl_c.requested

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
        (the batches', and the micro-batches' dropout streams, gathered from every rank). The
        log goes first: a crash between the two leaves a log ahead of the checkpoint, which
        --resume cuts back. A Ctrl-C during the save waits for its end
        (``StopRequest.hold``). Every rank calls it; rank 0 writes."""
        with self.ctrl_c.hold():
            streams = self.dp.rng_states() if self.dp else []
            if self.lead:
                rundir.write_log(self.dir, self.log)
                save_checkpoint(self.dir / "checkpoint", self.model, self.opt, step=step,
                                extra={"data_rng": self.data_rng, "workers": self.workers,
                                       "micro_batches": self.dp.micro_batches if self.dp
                                       else 1, "worker_rngs": streams})
            self.saved_step = step

    def stop(self, step):
        """After Ctrl-C, with the steps before ``step`` done: the checkpoint at ``step``, exit
        130."""
        self.ctrl_c.stopping = True                 # further Ctrl-Cs: the save goes on
        self.save(step)
        if self.lead:
            self.say(f"interrupted: checkpoint at step {step} in {self.dir / 'checkpoint'}; "
                     f"continue with --resume")
        raise SystemExit(130)

    def boundary(self):
        """After a KeyboardInterrupt (a second Ctrl-C, or one raised where none is deferred):
        the step boundary the run is at, to checkpoint there. Inside a step, or with other
        ranks (which may be inside a collective, or stopped), the state is no step boundary
        every rank shares: nothing is written, the last checkpoint is kept, exit 130."""
        done = len(self.log["train_loss"])
        if self.ctrl_c.mid_step or self.workers > 1:
            kept = "no checkpoint was saved before"
            if not self.lead:
                raise SystemExit(130) from None
            if not self.ctrl_c.mid_step and self.saved_step == done:   # just saved, here
                self.say(f"interrupted: checkpoint at step {done} in "
                         f"{self.dir / 'checkpoint'}; continue with --resume")
                raise SystemExit(130) from None
            if self.saved_step is not None:
                kept = (f"the last checkpoint in {self.dir / 'checkpoint'} (step "
                        f"{self.saved_step}) is kept")
            where = f"in the middle of step {done}" if self.ctrl_c.mid_step else \
                f"at step {done} with {self.workers} processes"
            self.say(f"interrupted {where}: no checkpoint written from there; {kept}")
            raise SystemExit(130) from None
        return done


def check_finite(lossf, step, run):
    """Stop the run at a non-finite loss, before the optimizer spreads it into the weights: the
    log is written, the last good checkpoint is kept."""
    if not math.isfinite(lossf):                    # the same loss on every rank
        if not run.lead:                            # rank 0 writes and says it
            raise PeerStopped(f"rank {run.comm.rank}: the loss became {lossf} at step {step}")
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

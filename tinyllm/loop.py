"""The training loop of ``tinyllm train``: read it top to bottom, like nanoGPT's train.py.

    from tinyllm.config import PRESETS, TrainConfig
    from tinyllm.loop import train
    log = train(TrainConfig(**PRESETS["tiny"], out_dir="runs/tiny"))

``train`` sets the run up (``tinyllm.run_setup.setup_run``: the run directory, corpus, tokenizer,
model, optimizer, resume, processes), runs ``train_loop`` and ends with ``finish`` (the final
evaluation, checkpoint and plot). ``train_loop`` is one step after another: the learning rate from
the schedule, a batch, forward, loss, backward, gradient clipping, the optimizer step, and every so
often an evaluation and a checkpoint. The helpers it calls at clear points live in
``tinyllm.trainer``: Ctrl-C (``run.ctrl_c``: a first Ctrl-C stops the loop at the next step
boundary), health records (``HealthMeter``), the non-finite loss check (``check_finite``),
checkpoints (``run.save``), and data parallelism (``run.dp``, ``tinyllm.parallel``: when
``--workers`` or ``mpiexec`` runs the step on several processes, or ``--grad-accum`` splits the
batch; one process taking the batch whole runs a plain ``loss.backward()``). With several processes
every one runs this loop on its own rows; rank 0 alone writes.

Shapes: B batch, T context (block_size), V vocabulary.
"""
import numpy as np

from tinyllm import distributed, rundir
from tinyllm.autograd.grad_mode import no_grad
from tinyllm.data.corpora import get_batch
from tinyllm.optim import clip_grad_norm_
from tinyllm.optim.lr_scheduler import cosine_with_warmup_lr
from tinyllm.run_setup import plan_workers, setup_run
from tinyllm.trainer import HealthMeter, check_finite, plot, stop_on_ctrl_c


# ----------------------------------------------------------------------------------------------
# the run: set up, train, finish

def train(cfg, resume=False, quiet=False, overwrite=False, comm=None):
    """Train per ``cfg`` (a ``TrainConfig``) in the run directory ``cfg.out_dir``; returns the
    log (a dict: the config, every step's loss, the evaluations, the health records).

    ``resume`` continues the run there, ``overwrite`` deletes it and starts over
    (``tinyllm.run_setup.setup_run``). Raises TrainError on a non-finite loss, RunDirError when
    the directory is in use or cannot be used as asked, SystemExit(130) after Ctrl-C.

    Processes: ``comm``, a ``tinyllm.distributed`` communicator this rank trains in (every
    rank calls ``train``; rank 0 writes and returns the log). Without one, the MPI world when
    ``mpiexec`` started this process, else ``cfg.workers`` processes on this machine
    (``tinyllm.distributed.launch``: this one is rank 0), else this process alone."""
    if comm is None:
        comm = distributed.world(mode=cfg.allreduce, backend=cfg.backend)
    if comm is None:
        workers = plan_workers(cfg, resume)
        if workers > 1:                             # ranks 1.. run train_rank in new processes
            return distributed.launch(train_rank, workers, cfg, resume, quiet, overwrite)
    return train_rank(comm, cfg, resume, quiet, overwrite)


def train_rank(comm, cfg, resume=False, quiet=False, overwrite=False):
    """One rank's run (``train``)."""
    with setup_run(cfg, resume, quiet, overwrite, comm) as run:
        if run is None:                             # resumed a run that is complete
            return rundir.read_log(cfg.out_dir) if comm is None or comm.rank == 0 else None
        with stop_on_ctrl_c(run.ctrl_c):
            try:
                stopped_at = train_loop(run)
                if stopped_at is None:              # every step ran
                    return finish(run)
            except KeyboardInterrupt:   # a second Ctrl-C, or one raised where none is deferred
                stopped_at = run.boundary()         # inside a step: nothing saved, exit 130
            run.stop(stopped_at)                    # the checkpoint there, exit 130


# ----------------------------------------------------------------------------------------------
# evaluation

@no_grad()
def estimate_loss(model, splits, cfg, step, dp=None):
    """Mean loss over ``eval_iters`` batches per split, from a generator seeded by the step
    (so evaluation never disturbs the training batches, and resumed runs match). With ``dp``
    each batch is split into micro-batches over the ranks as in training."""
    model.eval()
    out = {}
    for name, data in splits.items():
        rng = np.random.default_rng([cfg.seed, step, len(name)])
        losses = []
        for _ in range(cfg.eval_iters):
            x, y = get_batch(data, cfg.batch_size, cfg.block_size, rng)       # (B, T) each
            if dp is None:
                _, loss = model(x, y)
                losses.append(loss.item())
            else:
                losses.append(dp.loss(x, y))        # split as in training
        out[name] = float(np.mean(losses))
    model.train()
    return out


# ----------------------------------------------------------------------------------------------
# the loop

def train_loop(run):
    """Train from step ``run.start`` to ``max_iters``; returns the step at whose start a Ctrl-C
    stopped the loop, or None when every step ran."""
    cfg, model, opt, dp, log = run.cfg, run.model, run.opt, run.dp, run.log
    for step in run.progress(range(run.start, cfg.max_iters)):
        if run.stop_requested():                    # Ctrl-C: stop at this step boundary
            return step
        # determine and set the learning rate for this step
        lr = cosine_with_warmup_lr(step, cfg.learning_rate, cfg.warmup_iters,
                                   cfg.lr_decay_iters, cfg.min_lr)
        for group in opt.param_groups:
            group["lr"] = lr

        # evaluate the loss on train/val sets
        if cfg.eval_iters and step % cfg.eval_interval == 0:
            losses = estimate_loss(model, run.splits, cfg, step, dp)
            log["eval"].append({"step": step, **losses})
            run.say(f"step {step}: train loss {losses['train']:.4f}, "
                    f"val loss {losses['val']:.4f}")
            if run.stop_requested():                # evaluating changed no state
                return step

        # forward backward update; a KeyboardInterrupt in here leaves the step half done
        with run.ctrl_c.step():
            # x, y: (B, T) token ids, y the next token after each of x's
            x, y = get_batch(run.train_ids, cfg.batch_size, cfg.block_size, run.data_rng)
            meter = HealthMeter(model, step, cfg.health_every if run.lead else 0)
            if dp is None:
                logits, loss = model(x, y)          # (B, T, V) and the mean cross-entropy
                meter.forward(loss)                 # attention entropy, before backward frees P
                loss.backward()                     # p.grad of every parameter
                lossf = loss.item()
            else:       # this rank's micro-batches, then the gradients averaged over ranks
                lossf = dp.forward_backward(x, y, before_backward=meter.forward)
            check_finite(lossf, step, run)          # a NaN stops the run before the update
            meter.backward()                        # gradient norms, before clipping
            if cfg.grad_clip:
                clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad()
            meter.record(log, lr)                   # update-to-weight ratios
            log["train_loss"].append(lossf)

        # timing and logging; a checkpoint every checkpoint_interval steps
        run.show(lossf, lr)
        if (step + 1) % cfg.checkpoint_interval == 0:
            run.save(step + 1)
    return None


def finish(run):
    """After the last step: the final evaluation, the last checkpoint, the plot; the log."""
    cfg = run.cfg
    if cfg.eval_iters:
        losses = estimate_loss(run.model, run.splits, cfg, cfg.max_iters, run.dp)
        run.log["eval"].append({"step": cfg.max_iters, **losses})
        run.say(f"done: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    run.ctrl_c.stopping = True                      # a Ctrl-C now changes nothing
    run.save(cfg.max_iters)
    if not run.lead:
        return None
    plot(run.dir, run.log)
    return run.log

"""Setting a training run up: the run directory, the corpus, the tokenizer, the model, the
optimizer, resume, and the processes that share each batch.

    with setup_run(TrainConfig(**PRESETS["tiny"], out_dir="runs/tiny")) as run:
        run.model, run.opt, run.train_ids, ...    # what the loop trains (tinyllm.loop)

The run directory's contract (one writer, no silent overwrite, resume from the saved settings,
the corpus recorded by path and sha256, crash leftovers cleaned) is ``tinyllm.rundir``'s; the
settings and their ranges are ``tinyllm.config``'s; the ``Run`` it yields and the helpers the
loop calls are ``tinyllm.trainer``'s.

With several processes (``--workers N``: ``tinyllm.distributed.launch``; ``mpiexec -n N``:
MPI) every rank calls ``setup_run``: rank 0 opens the directory and sets the run up as one
process would, then sends the others what they train on (``_share``, ``_follow``).
"""
import contextlib
import dataclasses
import functools
import json
from pathlib import Path

import numpy as np

import tinyllm as tl
from tinyllm import hf, rundir
from tinyllm.checkpoint import load_checkpoint
from tinyllm.config import build_model, model_config, resume_changes, saved_config
from tinyllm.data.corpora import (corpus_record, find_recorded_corpus, read_text,
                                  train_val_split)
from tinyllm.data.tokenizers import ByteBPETokenizer, CharTokenizer, load_tokenizer
from tinyllm.distributed import PeerStopped, SingleCommunicator
from tinyllm.optim import AdamW, weight_decay_groups
from tinyllm.parallel import (DataParallel, auto_workers, broadcast_optimizer_state,
                              broadcast_parameters)
from tinyllm.trainer import Run, TrainError, _say, data_generator

SETUP_TIMEOUT = 6 * 3600.0      # seconds the other ranks wait for rank 0's setup, at least


def plan_workers(cfg, resume):
    """The processes a run uses on this machine, decided before the run is opened (they must
    exist before setup): ``--workers`` when given; else, on the numpy backend, as many as
    there are cores that divide the micro-batches: ``--grad-accum``, on resume the saved
    run's M (which ``resolve_micro_batches`` keeps), else the batch. A run whose checkpoint
    cannot be read gets one process here and its error from ``setup_run``."""
    if cfg.workers:
        return cfg.workers
    if cfg.backend != "numpy":
        return 1
    split = cfg.grad_accum or cfg.batch_size
    if resume and not cfg.grad_accum:
        try:
            meta = json.loads((Path(cfg.out_dir) / "checkpoint" / "meta.json").read_text())
            extra = meta.get("extra", {})
            split = int(extra.get("micro_batches", extra.get("workers", 1)))
        except (OSError, ValueError, TypeError, AttributeError):
            return 1
        if split < 1 or cfg.batch_size % split:
            split = cfg.batch_size
    return auto_workers(split)


def same_sums(m, ranks_before, ranks_now):
    """Whether M micro-batch gradients are added in the same order by ``ranks_before`` and
    ``ranks_now`` processes (each adding its own in turn, then the ranks in rank order):
    with the same count, or with one process or one micro-batch per rank on both sides,
    (((g_0 + g_1) + g_2) + ...) either way. 2 ranks of 2 add (g_0 + g_1) + (g_2 + g_3)."""
    return ranks_before == ranks_now or {ranks_before, ranks_now} <= {1, m}


def resolve_micro_batches(cfg, ranks, saved=None):
    """M, the micro-batches of each batch: ``--grad-accum`` when given; on resume the saved M
    where it still splits over ``ranks`` (a run resumed with another rank count keeps its
    micro-batches: their rows and dropout streams; ``same_sums`` says when their sums too);
    else one per rank."""
    if cfg.grad_accum:
        m = cfg.grad_accum
    elif saved and saved % ranks == 0 and cfg.batch_size % saved == 0:
        m = saved
    else:
        m = ranks
    if m % ranks or cfg.batch_size % m:
        raise TrainError(f"--grad-accum {m} micro-batches do not split over {ranks} "
                         f"processes, each of batch_size {cfg.batch_size} / {m} rows (give "
                         f"each process the same number of micro-batches of equal rows)")
    return m


@contextlib.contextmanager
def setup_run(cfg, resume=False, quiet=False, overwrite=False, comm=None):
    """The run in ``cfg.out_dir``, set up to train: yields a ``Run`` while holding the
    directory's lock; yields None when ``resume`` finds the run complete (nothing to do).

    A new run refuses a directory that holds anything, unless ``overwrite`` (then the old run
    is deleted once the new one has its corpus and tokenizer). ``resume`` continues the run
    there: ``cfg`` must be its saved config, changed only in ``MUTABLE_ON_RESUME`` settings
    (the changes are printed and recorded in the log). A new run with ``cfg.init_from`` starts
    from that model's weights and tokenizer instead of random ones (``tinyllm.hf.load_init``),
    with a new output layer (``cfg.new_head``) and its embeddings and first
    ``cfg.freeze_layers`` blocks frozen (also on resume: before the optimizer is built).
    Raises RunDirError when the directory is in use or cannot be used as asked
    (``tinyllm.rundir``).

    With ``comm`` (``tinyllm.distributed``, size > 1) every rank calls it: rank 0 does all of
    the above and sends the others what they train on (config, token ids, step, generators,
    then the weights and, on resume, the optimizer state); they never touch the directory,
    which need not exist on their host. An error in rank 0's setup reaches them as
    ``PeerStopped``."""
    comm = SingleCommunicator() if comm is None else comm
    tl.set_backend(cfg.backend)
    if comm.rank != 0:
        yield _follow(cfg, comm)
        return
    shared = False
    try:
        if resume and overwrite:
            raise TrainError("--resume continues the run, --overwrite deletes it: give one "
                             "of them")
        path = Path(cfg.out_dir)
        if resume:
            rundir.read_log(path)                       # before the lock: nothing to resume
        with rundir.locked(path):
            run = _setup(cfg, path, resume, quiet, overwrite, comm)
            shared = True
            _share(run, comm)
            yield run
    except BaseException as e:
        if not shared and comm.size > 1:        # the others wait for the setup: tell them
            comm.bcast_object(("error", f"{type(e).__name__}: {e}"))
            e.relayed = True
        raise


def _share(run, comm):
    """Rank 0's half of the setup's collectives (``_follow`` is the other ranks')."""
    if comm.size == 1:
        return
    if run is None:
        comm.bcast_object(("complete", None))
        return
    comm.bcast_object(("run", {
        "cfg": run.cfg, "model_cfg": run.model.config, "train_ids": run.train_ids,
        "val_ids": run.val_ids, "start": run.start, "data_rng": run.data_rng,
        "micro_batches": run.dp.micro_batches, "streams": run.streams,
        "resume": run.saved_step is not None}))
    broadcast_parameters(run.model, comm)
    if run.saved_step is not None:
        broadcast_optimizer_state(run.opt, comm)


def _follow(cfg, comm):
    """A rank other than 0: what rank 0 sends (``_share``), the same model and optimizer.
    Rank 0's setup may take long (a BPE tokenizer trained on a big corpus, an --init-from
    load), so the wait for it has a longer limit than a step's collectives."""
    limit, comm.timeout = comm.timeout, max(comm.timeout, SETUP_TIMEOUT)
    try:
        kind, got = comm.bcast_object(None)
    finally:
        comm.timeout = limit
    if kind == "error":
        raise PeerStopped(f"rank {comm.rank}: stopped: rank 0's setup failed ({got})")
    if kind == "complete":
        return None
    cfg = got["cfg"]
    tl.manual_seed(cfg.seed)
    model = build_model(got["model_cfg"])
    hf.freeze_layers(model, cfg.freeze_layers)
    opt = AdamW(weight_decay_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                betas=(cfg.beta1, cfg.beta2))
    broadcast_parameters(model, comm)
    if got["resume"]:
        broadcast_optimizer_state(opt, comm)
    dp = DataParallel(model, comm, got["micro_batches"], seed=cfg.seed,
                      first_step=got["start"])
    dp.set_rng_states(got["streams"])
    return Run(cfg=cfg, dir=None, log={"train_loss": [], "eval": [], "health": []},
               model=model, opt=opt, train_ids=got["train_ids"], val_ids=got["val_ids"],
               data_rng=got["data_rng"], start=got["start"], workers=comm.size, dp=dp,
               comm=comm, quiet=True, saved_step=got["start"] if got["resume"] else None)


def _setup(cfg, path, resume, quiet, overwrite, comm):
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
    if comm.size > 1 and cfg.workers not in (0, comm.size) and (
            not resume or "workers" in changes):       # (a resumed run's saved count: moot)
        raise TrainError(f"--workers {cfg.workers}, but this run has {comm.size} processes "
                         f"({comm.name}): under mpiexec the ranks are the processes (drop "
                         f"--workers, or give mpiexec -n {cfg.workers})")
    if not resume:
        resolve_micro_batches(cfg, comm.size)           # its error before anything is written
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
    # the processes: the ranks of comm when it has several (mpiexec, --workers), else one
    saved = meta["extra"] if meta else {}
    saved_workers = saved.get("workers", 1)         # a checkpoint from before: one process
    saved_m = saved.get("micro_batches", saved_workers)
    workers = log["workers"] = comm.size
    m = log["micro_batches"] = resolve_micro_batches(cfg, comm.size, saved_m if meta else None)
    if meta is not None and (saved_workers, saved_m) != (workers, m):
        if saved_m != m:
            same = (f"{m} micro-batches instead of {saved_m}: the gradients are summed in "
                    f"another order, so the losses differ from an uninterrupted run in the "
                    f"last digits")
        elif same_sums(m, saved_workers, workers):
            same = ("the same micro-batches, added in the same order (bit for bit where "
                    "the ranks sum in rank order: --workers, --allreduce deterministic)")
        else:
            same = (f"the same {m} micro-batches, grouped {m // workers} per process instead "
                    f"of {m // saved_workers}: the sums round differently, so the losses "
                    f"differ from an uninterrupted run in the last digits")
        say(f"note: resuming with {workers} processes, the run was saved with "
            f"{saved_workers}: {same}")
    dp, streams = None, []
    if workers > 1 or m > 1:                # data parallelism (tinyllm.parallel): B / M rows
        dp = DataParallel(model, comm, m, seed=cfg.seed, first_step=start)
        streams = saved.get("worker_rngs", []) if meta is not None else []
        dp.set_rng_states(streams)
        what = {"shm": "processes", "mpi": "MPI ranks", "nccl": "GPUs (NCCL)"}.get(
            comm.name, "processes")
        if workers > 1:
            say(f"data parallel: {workers} {what} x {cfg.batch_size // workers} sequences"
                + (f" in {m // workers} micro-batches" if m > workers else "")
                + (" (--workers 1: one process)" if comm.name == "shm" else
                   f" ({'deterministic' if comm.deterministic else 'fast'} allreduce)"))
        else:
            say(f"gradient accumulation: {m} micro-batches of {cfg.batch_size // m} sequences")
    return Run(cfg=cfg, dir=path, log=log, model=model, opt=opt, train_ids=train_ids,
               val_ids=val_ids, data_rng=data_rng, start=start, workers=workers, dp=dp,
               comm=comm, quiet=quiet, saved_step=start if resume else None, streams=streams)


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

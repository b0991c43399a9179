"""The ``tinyllm`` command: train, sample and evaluate a GPT on a text corpus.

    tinyllm train --preset shakespeare-char --out-dir runs/shakespeare
    tinyllm sample --out-dir runs/shakespeare --prompt "ROMEO:" --num-tokens 300
    tinyllm eval --out-dir runs/shakespeare

The options of ``train`` are the fields of ``TrainConfig`` (built from the dataclass, never
``exec``-ed from a config file); a preset fills them, and flags override it. A run directory
holds the tokenizer, checkpoints (``tinyllm.checkpoint``), ``log.json``, ``loss.png`` and
``health.png``: every ``--health-every`` steps the log records the gradient norm and
update-to-weight ratio per layer and the attention entropy per head (``tinyllm.health``).

Training is resumable: ``--resume`` reloads the weights, optimizer, step and every random
generator, and continues with exactly the losses an uninterrupted run would have printed (on
CPU). Ctrl-C finishes the step under way, saves a checkpoint at that step boundary and exits
(resuming from it is the uninterrupted run; in the last step the run simply finishes); a second
Ctrl-C stops at once, keeping the last checkpoint. A non-finite loss stops the run, keeping the
last good checkpoint.
"""
import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import tinyllm as tl
from tinyllm import health
from tinyllm._files import atomic_write
from tinyllm.checkpoint import load_checkpoint, save_checkpoint
from tinyllm.data.corpora import get_batch, load_text, train_val_split
from tinyllm.data.tokenizers import ByteBPETokenizer, CharTokenizer, load_tokenizer
from tinyllm.generate import generate
from tinyllm.models import GPT, GPTConfig
from tinyllm.optim import AdamW, clip_grad_norm_, weight_decay_groups
from tinyllm.optim.lr_scheduler import cosine_with_warmup_lr
from tinyllm.parallel import DataParallel, auto_workers


@dataclass
class TrainConfig:
    data: str = "tinyshakespeare"     # registered corpus name or path to a text file
    out_dir: str = "runs/default"     # run directory: tokenizer, checkpoints, log, plot
    tokenizer: str = "char"           # "char" (one id per character) or "bpe" (byte-level BPE)
    bpe_vocab_size: int = 512         # with --tokenizer bpe: 256 bytes + learned merges
    n_layer: int = 4                  # Transformer blocks
    n_head: int = 4                   # attention heads
    n_embd: int = 128                 # width of the residual stream
    block_size: int = 64              # context length
    dropout: float = 0.0              # dropout probability (0 for small CPU runs)
    bias: bool = True                 # biases in Linear and LayerNorm
    batch_size: int = 12              # sequences per step
    max_iters: int = 2000             # optimizer steps
    learning_rate: float = 1e-3       # peak learning rate
    min_lr: float = 1e-4              # floor of the cosine decay
    warmup_iters: int = 100           # linear warmup steps
    lr_decay_iters: int = 2000        # steps over which the cosine decays to min_lr
    weight_decay: float = 0.1         # AdamW decay for 2-D weights (none for biases, norms)
    beta1: float = 0.9                # AdamW beta1
    beta2: float = 0.99               # AdamW beta2 (0.99 for small batches, as nanoGPT)
    grad_clip: float = 1.0            # clip the global gradient norm (0 = off)
    eval_interval: int = 250          # steps between train/val evaluations
    eval_iters: int = 20              # batches per evaluation (0: no evaluation)
    checkpoint_interval: int = 500    # steps between checkpoints (and one at the end)
    health_every: int = 250           # steps between training-health records (0 = off)
    seed: int = 1337                  # seeds init, batches, dropout
    backend: str = "numpy"            # "numpy" (CPU) or "cupy" (GPU)
    workers: int = 0                  # processes sharing each batch (tinyllm.parallel); 0: one
    #                                   per core that divides batch_size (numpy), 1: this only


PRESETS = {
    # nanoGPT's config/train_shakespeare_char.py with its README's CPU settings (the defaults
    # above), and train.py's default bias=False: no biases in Linear and LayerNorm
    "shakespeare-char": dict(bias=False),
    # a few seconds: for smoke tests
    "tiny": dict(n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=8, max_iters=20,
                 warmup_iters=2, lr_decay_iters=20, eval_interval=10, eval_iters=2,
                 checkpoint_interval=10, health_every=10),
}


# ----------------------------------------------------------------------------------------------
# command line built from the dataclass

def _add_config_args(parser, cls):
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(flag, type=kind, default=None)


def _config_from_args(args):
    values = dict(PRESETS[args.preset]) if args.preset else {}
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name)
        if v is not None:
            values[f.name] = v
    return TrainConfig(**values)


# ----------------------------------------------------------------------------------------------
# train

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
    _check_workers(cfg)
    if cfg.workers:
        return cfg.workers
    if cfg.backend != "numpy":
        return 1
    if saved is not None:                    # resume: the saved split, where it still applies
        return saved if cfg.batch_size % saved == 0 else auto_workers(cfg.batch_size)
    return auto_workers(cfg.batch_size)


def _check_workers(cfg):
    if cfg.workers < 0:
        raise SystemExit(f"tinyllm train: --workers must be >= 0, got {cfg.workers}")
    if cfg.workers > 1 and cfg.backend != "numpy":
        raise SystemExit(f"tinyllm train: --workers {cfg.workers} needs --backend numpy "
                         f"(data parallelism splits the batch over CPU processes)")
    if cfg.workers and cfg.batch_size % cfg.workers:
        raise SystemExit(f"tinyllm train: --batch-size {cfg.batch_size} does not split "
                         f"evenly over --workers {cfg.workers}")


def train(cfg, resume=False, quiet=False):
    """Train per ``cfg``; returns the log (a dict). Raises SystemExit on a non-finite loss."""
    _check_workers(cfg)
    tl.set_backend(cfg.backend)
    run = Path(cfg.out_dir)
    run.mkdir(parents=True, exist_ok=True)
    text = load_text(cfg.data)
    tok_path = run / "tokenizer.json"
    if resume and tok_path.exists():
        tok = load_tokenizer(tok_path)
    elif cfg.tokenizer == "bpe":
        tok = ByteBPETokenizer.train(text, vocab_size=cfg.bpe_vocab_size)
    elif cfg.tokenizer == "char":
        tok = CharTokenizer.from_text(text)
    else:
        raise SystemExit(f"tinyllm train: --tokenizer must be 'char' or 'bpe', got "
                         f"{cfg.tokenizer!r}")
    tok.save(tok_path)
    ids = np.array(tok.encode(text), dtype=np.int64)
    train_ids, val_ids = train_val_split(ids)

    tl.manual_seed(cfg.seed)
    gpt_config = GPTConfig(block_size=cfg.block_size, vocab_size=tok.vocab_size,
                           n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                           dropout=cfg.dropout, bias=cfg.bias)
    model = GPT(gpt_config)
    opt = AdamW(weight_decay_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                betas=(cfg.beta1, cfg.beta2))
    data_rng = data_generator(cfg.seed)
    log = {"config": dataclasses.asdict(cfg), "train_loss": [], "eval": [], "health": []}
    start, meta = 0, None
    ckpt = run / "checkpoint"
    if resume:
        meta = load_checkpoint(ckpt, model, opt)
        start, data_rng = meta["step"], meta["extra"]["data_rng"]
        log = json.loads((run / "log.json").read_text())
        if len(log["train_loss"]) < start:
            raise SystemExit(f"tinyllm train --resume: {run / 'log.json'} has "
                             f"{len(log['train_loss'])} steps, the checkpoint is at step "
                             f"{start}: the log is older than the checkpoint")
        log["train_loss"] = log["train_loss"][:start]
        log["eval"] = [e for e in log["eval"] if e["step"] < start]
        log["health"] = [h for h in log.get("health", []) if h["step"] < start]
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
                _write_log(run, log)
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
                        _write_log(run, log)
                        raise SystemExit(f"tinyllm train: loss became {value} at step {step}; "
                                         f"stopped. The last good checkpoint is in {ckpt} (try "
                                         f"a lower --learning-rate or --grad-clip)")
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


def _write_log(run, log):
    tmp = run / "log.json.tmp"
    tmp.write_text(json.dumps(log))
    os.replace(tmp, run / "log.json")


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


# ----------------------------------------------------------------------------------------------
# sample, eval

def _load_run(out_dir):
    run = Path(out_dir)
    tok = load_tokenizer(run / "tokenizer.json")
    cfg = TrainConfig(**json.loads((run / "log.json").read_text())["config"])
    model = GPT(GPTConfig(block_size=cfg.block_size, vocab_size=tok.vocab_size,
                          n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                          dropout=0.0, bias=cfg.bias))
    load_checkpoint(run / "checkpoint", model)
    return cfg, tok, model.eval()


def sample(out_dir, prompt="\n", num_tokens=300, temperature=0.8, top_k=None, top_p=None,
           seed=0, greedy=False):
    _, tok, model = _load_run(out_dir)
    idx = np.array([tok.encode(prompt or "\n")], dtype=np.int64)
    out = generate(model, idx, num_tokens, rng=np.random.default_rng(seed),
                   temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy)
    return tok.decode(out[0].tolist())


def evaluate(out_dir, data=None, split="val", batches=50, seed=0):
    """Mean loss and perplexity (e^loss) on a split of the run's corpus or on a text file."""
    cfg, tok, model = _load_run(out_dir)
    ids = np.array(tok.encode(load_text(data or cfg.data)), dtype=np.int64)
    if data is None:
        ids = dict(zip(("train", "val"), train_val_split(ids)))[split]
    rng = np.random.default_rng(seed)
    with tl.no_grad():
        losses = [model(*get_batch(ids, cfg.batch_size, cfg.block_size, rng))[1].item()
                  for _ in range(batches)]
    loss = float(np.mean(losses))
    return {"loss": loss, "perplexity": math.exp(loss)}


# ----------------------------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(prog="tinyllm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train a GPT on a corpus")
    p_train.add_argument("--preset", choices=sorted(PRESETS), default=None)
    p_train.add_argument("--resume", action="store_true", help="continue the run in --out-dir")
    p_train.add_argument("--quiet", action="store_true")
    _add_config_args(p_train, TrainConfig)
    p_sample = sub.add_parser("sample", help="generate text from a trained run")
    p_sample.add_argument("--out-dir", required=True)
    p_sample.add_argument("--prompt", default="\n")
    p_sample.add_argument("--num-tokens", type=int, default=300)
    p_sample.add_argument("--temperature", type=float, default=0.8)
    p_sample.add_argument("--top-k", type=int, default=None)
    p_sample.add_argument("--top-p", type=float, default=None)
    p_sample.add_argument("--greedy", action="store_true")
    p_sample.add_argument("--seed", type=int, default=0)
    p_eval = sub.add_parser("eval", help="loss and perplexity of a trained run")
    p_eval.add_argument("--out-dir", required=True)
    p_eval.add_argument("--data", default=None, help="a text file (default: the run's corpus)")
    p_eval.add_argument("--split", choices=("train", "val"), default="val")
    p_eval.add_argument("--batches", type=int, default=50)
    p_explain = sub.add_parser("explain-backward",
                               help="step through the backward pass of a tiny GPT (or a run)")
    p_explain.add_argument("--out-dir", default=None,
                           help="a trained run to explain (default: a tiny fresh GPT)")
    p_explain.add_argument("--n-layer", type=int, default=1)
    p_explain.add_argument("--n-head", type=int, default=2)
    p_explain.add_argument("--n-embd", type=int, default=16)
    p_explain.add_argument("--block-size", type=int, default=8)
    p_explain.add_argument("--batch-size", type=int, default=2)
    p_explain.add_argument("--seed", type=int, default=0)
    p_explain.add_argument("--ops", nargs="*", default=None,
                           help="show only these ops (Softmax LayerNorm ...; 'leaf' for leaves)")
    p_explain.add_argument("--modules", nargs="*", default=None,
                           help="show only nodes in these modules (transformer.h.0.attn ...)")
    p_explain.add_argument("--steps", action="store_true",
                           help="print each step in full (upstream and local gradients, saved "
                                "arrays) instead of the table")
    p_explain.add_argument("--dot", default=None,
                           help="also write the graph (.dot; .svg/.png need Graphviz's dot)")
    p_explain.add_argument("--bisect", action="store_true",
                           help="check every node's backward against finite differences "
                                "(float64) and name the first that disagrees")
    args = parser.parse_args(argv)
    tl.backend.keep_freed_memory()       # the command owns the process: reuse freed pages

    if args.command == "train":
        return train(_config_from_args(args), resume=args.resume, quiet=args.quiet)
    if args.command == "sample":
        text = sample(args.out_dir, args.prompt, args.num_tokens, args.temperature, args.top_k,
                      args.top_p, args.seed, args.greedy)
        print(text)
        return text
    if args.command == "explain-backward":
        return explain_backward(args)
    result = evaluate(args.out_dir, args.data, args.split, args.batches)
    print(f"loss {result['loss']:.4f} | perplexity {result['perplexity']:.2f}")
    return result


def explain_backward(args):
    """``tinyllm explain-backward``: one forward of a tiny GPT (or of a trained run, on a batch
    of its corpus), then its backward pass step by step (``tinyllm.trace``)."""
    from tinyllm import trace
    from tinyllm.autograd import graph
    dtype = "float64" if args.bisect else "float32"
    if args.out_dir:
        cfg, tok, model = _load_run(args.out_dir)
        model.to(np.dtype(dtype))
        text = load_text(cfg.data)
        data = np.array(tok.encode(text[:100_000]), dtype=np.int64)
        idx, targets = get_batch(data, args.batch_size, cfg.block_size,
                                 np.random.default_rng(args.seed))
        what = f"the run in {args.out_dir}"
    else:
        model, idx, targets, _ = trace.tiny_gpt_example(
            args.n_layer, args.n_head, args.n_embd, args.block_size, args.batch_size,
            args.seed, dtype=dtype)
        what = (f"a tiny GPT ({args.n_layer} layer, {args.n_head} heads, {args.n_embd} dims, "
                f"{model.num_parameters():,} parameters)")
    _, loss = model(idx, targets)
    print(f"backward pass of {what} on a batch of shape {tuple(idx.shape)}; "
          f"loss {float(loss.data):.4f}\n")
    if args.bisect:
        report = tl.bisect_backward(loss, model=model)
        print(report)
        return report
    if args.dot:
        path = graph.render(graph.to_dot(loss, model=model), args.dot)
        print(f"graph written to {path}\n")
    if args.steps:
        steps = []
        for step in trace.backward_steps(loss, model=model, ops=args.ops, modules=args.modules):
            print(step, end="\n\n")
            steps.append(step)
        return steps
    return trace.explain_backward(loss, model=model, ops=args.ops, modules=args.modules)


def run():
    """Console-script entry point (``tinyllm ...``): exit status 0 on success."""
    main()
    return 0


if __name__ == "__main__":
    sys.exit(run())

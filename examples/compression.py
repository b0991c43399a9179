"""Compressing the shakespeare-char GPT: distillation, pruning and int8 (tinyllm.compress).

    TINYLLM_DATA=../shared/data python examples/compression.py all --json out.json   # ~40 min
    python examples/compression.py distill --seeds 0,1,2 --temperatures 1,2,4
    python examples/compression.py prune --sparsities 0,0.5,0.9 --plot pruning.png
    python examples/compression.py int8

The data and the test are the preset's: tiny Shakespeare, one id per character, nanoGPT's split
(the first 90% to train, the last 10% to validate); every loss below is the mean cross-entropy
over the WHOLE validation split, cut into consecutive windows of 64 characters.

- distill: a teacher bigger than the preset (6 layers, 6 heads, 192 dims; ``--teacher-steps``)
  is trained first. Then students at the preset's size and budget (4 layers, 4 heads, 128 dims,
  no biases, exact GELU; 2000 AdamW steps of 12 x 64 characters, lr 1e-3, 100 warmup steps,
  cosine to 1e-4, weight decay 0.1, clipping at 1) are trained from scratch (cross-entropy) and
  distilled (``distillation_loss``: alpha * CE + (1 - alpha) * T^2 * KL(teacher || student)),
  with the same seeds, so that each distilled run has a from-scratch twin with the same
  initial weights and batches. Reported: mean and standard error over seeds; and a sweep of the
  temperature at the first seed.
- prune: the first from-scratch student, magnitude-pruned at each sparsity (every Linear weight;
  global and per-layer), evaluated as it is and after ``--finetune-steps`` steps of fine-tuning
  with the masks on (pruned weights stay exactly zero). A table and a plot.
- int8: the same student with every Linear quantized to int8 (per output channel, and per group
  of 64 inputs): the size of the weights on disk, the whole-split perplexity change, the mean
  KL divergence of the quantized model's next-token distribution from the float32 model's, and
  greedy generation ms/token against float32 (readable path, no compiled decode step, so that
  the two forwards compare).

Intermediate models are cached in ``--cache`` (safetensors), so a phase can be rerun alone.
"""
import argparse
import json
import math
import os
import statistics
import tempfile
import time

import numpy as np

import tinyllm as tl
from tinyllm import compress
from tinyllm._files import atomic_write_text
from tinyllm.data.corpora import get_batch, load_text, train_val_split
from tinyllm.data.tokenizers import CharTokenizer
from tinyllm.generate import generate
from tinyllm.metrics import mean_loss, windows
from tinyllm.models import GPT, GPTConfig
from tinyllm.optim import AdamW, clip_grad_norm_, weight_decay_groups
from tinyllm.optim.lr_scheduler import cosine_with_warmup_lr


# ----------------------------------------------------------------------------------------------
# data, models, the whole-split test

def load_data(corpus, max_chars=None):
    text = load_text(corpus)
    if max_chars:
        text = text[:max_chars]
    tok = CharTokenizer.from_text(text)
    train, val = train_val_split(np.array(tok.encode(text), dtype=np.int64))
    return tok, train, val


@tl.no_grad()
def logits_of(model, x, batch=64):
    model.eval()
    out = np.concatenate([model(x[i:i + batch]).data for i in range(0, len(x), batch)])
    model.train()
    return out                                                     # (M, T, V)


def student(V, args, seed):
    tl.manual_seed(seed)
    return GPT(GPTConfig(block_size=args.block_size, vocab_size=V, n_layer=args.n_layer,
                         n_head=args.n_head, n_embd=args.n_embd, bias=False, gelu="exact",
                         dropout=0.0))


def teacher_model(V, args):
    tl.manual_seed(args.teacher_seed)
    return GPT(GPTConfig(block_size=args.block_size, vocab_size=V, n_layer=args.teacher_layers,
                         n_head=args.teacher_heads, n_embd=args.teacher_embd, bias=False,
                         gelu="exact", dropout=0.0))


def train(model, train_ids, args, steps, seed, teacher=None, temperature=2.0, alpha=0.5,
          lr=None):
    """The preset's loop (AdamW, warmup + cosine to lr/10, clipping) at peak ``lr`` (default
    ``args.lr``); with ``teacher``, the loss is distillation_loss against its logits on the
    same batch. Returns seconds."""
    lr = lr or args.lr
    opt = AdamW(weight_decay_groups(model, 0.1), lr=lr, betas=(0.9, 0.99))
    rng = np.random.default_rng([seed, 1])
    warmup = min(100, steps // 10)
    t0 = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = cosine_with_warmup_lr(step, lr, warmup, steps, lr / 10)
        x, y = get_batch(train_ids, args.batch_size, args.block_size, rng)
        if teacher is None:
            _, loss = model(x, y)
        else:
            with tl.no_grad():
                t_logits = teacher(x)                                # (B, T, V), a constant
            loss = compress.distillation_loss(model(x), t_logits, y, temperature, alpha)
        opt.zero_grad()
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return time.perf_counter() - t0


def cached(path, build, model):
    """Load ``model``'s weights from ``path`` if it exists, else run ``build()`` (which trains
    ``model``) and save them there."""
    if os.path.exists(path):
        from safetensors.numpy import load_file
        state = load_file(path)
        state.setdefault("lm_head.weight", state["transformer.wte.weight"])      # tied
        model.load_state_dict(state)
        return model, None
    secs = build()
    save_weights(model, path)
    return model, secs


def save_weights(model, path):
    """The float weights as safetensors (the tied head once), written atomically."""
    from safetensors.numpy import save_file
    state = {k: np.ascontiguousarray(v.data) for k, v in model.state_dict().items()
             if not k.endswith("lm_head.weight")}
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    os.close(fd)
    save_file(state, tmp)
    os.replace(tmp, path)


def mean_se(values):
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return m, se


# ----------------------------------------------------------------------------------------------
# the three studies

def run_distill(ctx, args):
    V, (vx, vy) = ctx["V"], ctx["val"]
    teacher = teacher_model(V, args)
    name = (f"teacher-{args.teacher_layers}x{args.teacher_embd}-{args.teacher_steps}"
            f"-seed{args.teacher_seed}.safetensors")
    _, secs = cached(os.path.join(args.cache, name),
                     lambda: train(teacher, ctx["train"], args, args.teacher_steps,
                                   args.teacher_seed), teacher)
    t_loss = mean_loss(teacher, vx, vy)
    print(f"teacher {args.teacher_layers}x{args.teacher_embd} ({teacher.num_parameters():,} "
          f"parameters): val loss {t_loss:.4f}" + (f" ({secs:.0f} s)" if secs else ""))
    rows = []
    seeds = [int(s) for s in args.seeds.split(",")]
    sweep = sorted({float(t) for t in args.temperatures.split(",")} | {args.T})
    for seed in seeds:
        temps = sweep if seed == seeds[0] else [args.T]
        runs = [("scratch", None)] + [(f"distilled T={t:g}", t) for t in temps]
        for name, T in runs:
            path = student_path(args, seed, T)
            model = student(V, args, seed)
            _, secs = cached(path, lambda: train(model, ctx["train"], args, args.steps, seed,
                                                 None if T is None else teacher, T or 1.0,
                                                 args.alpha), model)
            loss = mean_loss(model, vx, vy)
            rows.append({"seed": seed, "run": name, "T": T, "val_loss": loss,
                         "train_s": secs})
            print(f"  seed {seed} {name}: val loss {loss:.4f}"
                  + (f" ({secs:.0f} s)" if secs else ""))
            if seed == seeds[0] and T is None:
                ctx["student"] = model
    scratch = [r["val_loss"] for r in rows if r["T"] is None]
    distilled = [r["val_loss"] for r in rows if r["T"] == args.T]
    paired = [d - s for s, d in zip(scratch, distilled)]
    return {"teacher_val_loss": t_loss, "teacher_params": teacher.num_parameters(),
            "student_params": student(V, args, 0).num_parameters(), "alpha": args.alpha,
            "T": args.T, "runs": rows, "scratch": mean_se(scratch),
            "distilled": mean_se(distilled), "paired_difference": mean_se(paired)}


def student_path(args, seed, T):
    how = "scratch" if T is None else f"T{T:g}-a{args.alpha:g}"
    size = f"{args.n_layer}x{args.n_embd}"
    return os.path.join(args.cache, f"student-{size}-{args.steps}-seed{seed}-{how}.safetensors")


def trained_student(ctx, args):
    if "student" not in ctx:
        seed = int(args.seeds.split(",")[0])
        m = student(ctx["V"], args, seed)
        cached(student_path(args, seed, None),
               lambda: train(m, ctx["train"], args, args.steps, seed), m)
        ctx["student"] = m
    return ctx["student"]


def copy_of(model, ctx, args):
    m = student(ctx["V"], args, 0)
    m.load_state_dict({k: v.data.copy() for k, v in model.state_dict().items()})
    return m


def run_prune(ctx, args):
    base = trained_student(ctx, args)
    vx, vy = ctx["val"]
    rows = []
    runs = [(scope, None, float(x)) for scope in args.scopes.split(",") if scope
            for x in args.sparsities.split(",")]
    runs += [("layer", kind, float(x)) for kind in args.structured.split(",") if kind
             for x in args.structured_sparsities.split(",")]
    for scope, structured, s in runs:
        m = copy_of(base, ctx, args)
        compress.prune(m, s, scope=scope, structured=structured)
        pruned = mean_loss(m, vx, vy)
        train(m, ctx["train"], args, args.finetune_steps, 7, lr=args.lr / 10)
        tuned = mean_loss(m, vx, vy)
        report = compress.sparsity_report(m)
        rows.append({"scope": scope, "structured": structured, "sparsity": s,
                     "val_loss": pruned, "val_loss_finetuned": tuned, "report": report})
        print(f"  {structured or scope} sparsity {s:.2f}: val loss {pruned:.4f}, after "
              f"{args.finetune_steps} fine-tuning steps {tuned:.4f} (Linear weights at "
              f"zero: {report['sparsity']:.3f})")
    if args.plot:
        plot_pruning(rows, args.plot)
    return {"finetune_steps": args.finetune_steps, "rows": rows}


def plot_pruning(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for scope, style in (("global", "-"), ("layer", "--")):
        r = [x for x in rows if x["scope"] == scope and not x.get("structured")]
        if not r:
            continue
        s = [x["sparsity"] for x in r]
        ax.plot(s, [x["val_loss"] for x in r], "o" + style, label=f"{scope}, pruned")
        ax.plot(s, [x["val_loss_finetuned"] for x in r], "s" + style,
                label=f"{scope}, then fine-tuned")
    ax.set_xlabel("sparsity of the Linear weights")
    ax.set_ylabel("validation loss (whole split, nats/char)")
    ax.set_title("Magnitude pruning of the shakespeare-char GPT")
    ax.legend()
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def run_int8(ctx, args):
    base = trained_student(ctx, args)
    vx, vy = ctx["val"]
    n = min(len(vx), args.kl_windows or len(vx))
    ref_loss = mean_loss(base, vx, vy)
    ref_logits = logits_of(base, vx[:n])
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "float.safetensors")
        save_weights(base, path)
        size = os.path.getsize(path)
    rows = [{"model": "float32", "val_loss": ref_loss, "ppl": math.exp(ref_loss),
             "bytes": size, "kl": 0.0, **gen_ms(base, ctx, args)}]
    for group in (None, 64):
        m = copy_of(base, ctx, args)
        compress.quantize_int8(m, group_size=group)
        loss = mean_loss(m, vx, vy)
        kl = mean_kl(ref_logits, logits_of(m, vx[:n]))
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "q.safetensors")
            compress.save_quantized(m, path)
            size = os.path.getsize(path)
        name = "int8, per channel" if group is None else f"int8, groups of {group}"
        rows.append({"model": name,
                     "val_loss": loss, "ppl": math.exp(loss), "bytes": size, "kl": kl,
                     **gen_ms(m, ctx, args)})
    for r in rows:
        print(f"  {r['model']}: ppl {r['ppl']:.4f} (delta {r['ppl'] - rows[0]['ppl']:+.4f}), "
              f"KL {r['kl']:.5f}, {r['bytes']:,} bytes, ms/token {r['ms_readable']:.2f} "
              f"readable, {r['ms_auto']:.2f} with the switch on")
    return {"kl_windows": n, "rows": rows}


def mean_kl(p_logits, q_logits):
    """Mean over positions of KL(p || q) for logits (..., V), in float64."""
    def logsm(z):
        z = z.astype(np.float64)
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    lp, lq = logsm(p_logits), logsm(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum(axis=-1).mean())


def gen_ms(model, ctx, args):
    """Greedy decoding ms/token (median of 5 runs), readable (the formulas; the int8 model
    dequantizes its weights in every call) and with the switch on (float32: the compiled
    decode step; int8: the readable forward with the Numba int8 matmul, which the compiled
    step cannot take)."""
    prompt = np.array([ctx["tok"].encode("ROMEO:\n")])
    out = {}
    for key, impl in (("ms_readable", "numpy"), ("ms_auto", "auto")):
        with tl.kernels.using(impl):
            generate(model, prompt, 8, greedy=True)
            times = []
            for _ in range(5):                      # the median of 5 runs
                t0 = time.perf_counter()
                generate(model, prompt, args.gen_tokens, greedy=True)
                times.append(time.perf_counter() - t0)
        out[key] = statistics.median(times) / args.gen_tokens * 1e3
    return out


# ----------------------------------------------------------------------------------------------

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("phase", choices=["distill", "prune", "int8", "all"])
    p.add_argument("--data", default="tinyshakespeare")
    p.add_argument("--max-chars", type=int, default=None, help="use only the corpus' start")
    p.add_argument("--steps", type=int, default=2000, help="the students' training steps")
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-layer", type=int, default=4, help="the student's (the preset's) size")
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--teacher-steps", type=int, default=3000)
    p.add_argument("--teacher-layers", type=int, default=6)
    p.add_argument("--teacher-heads", type=int, default=6)
    p.add_argument("--teacher-embd", type=int, default=192)
    p.add_argument("--teacher-seed", type=int, default=1000)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--T", type=float, default=2.0, help="the temperature compared over seeds")
    p.add_argument("--temperatures", default="1,2,4", help="the sweep, at the first seed")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--sparsities", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    p.add_argument("--scopes", default="global,layer", help="unstructured pruning scopes")
    p.add_argument("--structured", default="heads,rows",
                   help="structured pruning: whole attention heads, whole MLP hidden units")
    p.add_argument("--structured-sparsities", default="0.25,0.5,0.75")
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--plot", default=None, help="write the pruning plot (PNG) here")
    p.add_argument("--kl-windows", type=int, default=0, help="windows for the KL (0: all)")
    p.add_argument("--gen-tokens", type=int, default=50,
                   help="greedy tokens timed after a 7-character prompt (within the context)")
    p.add_argument("--cache", default=os.path.join(".cache", "compression"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    tl.kernels.prefer_impl("auto")
    os.makedirs(args.cache, exist_ok=True)

    tok, train_ids, val = load_data(args.data, args.max_chars)
    ctx = {"tok": tok, "V": tok.vocab_size, "train": train_ids,
           "val": windows(val, args.block_size)}
    out = {"args": vars(args)}
    for phase, run in (("distill", run_distill), ("prune", run_prune), ("int8", run_int8)):
        if args.phase in (phase, "all"):
            print(f"{phase}:")
            out[phase] = run(ctx, args)
    if args.json:
        atomic_write_text(args.json, json.dumps(out, indent=2, default=float) + "\n")
    return out


if __name__ == "__main__":
    main()

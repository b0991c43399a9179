"""Train a tiny character-level language model on tiny Shakespeare, then sample from it.

The model is the multilayer perceptron of Bengio et al. 2003, "A Neural Probabilistic Language
Model", as rebuilt in Karpathy's makemore (part 2): to predict the next character, look up an
embedding for each of the previous ``block_size`` characters, concatenate them, and feed the
result through one hidden layer to logits over the vocabulary:

    idx (B, T) -> wte[idx] (B, T, C) -> concat (B, T*C) -> @ w1 (B, H) -> layer_norm -> tanh
               -> @ w2 + b2 (B, V) -> cross_entropy against the next character (B,)

Everything runs on the tinyllm engine: the forward pass builds a graph of named Functions,
``loss.backward()`` fills ``p.grad`` for every parameter, and a small Adam written here on raw
arrays updates them. The file is meant to be read top to bottom, and stepped through with a
debugger from ``loss.backward()`` into the backward of any op. ``tinyllm train`` runs the same
loop for a GPT (``tinyllm/loop.py``), with checkpoints, resume and Ctrl-C around it.

Run it (from the repository root, with the corpus in ../shared/data/tinyshakespeare.txt):

    TINYLLM_DATA=../shared/data python examples/train_tiny.py
    TINYLLM_DATA=../shared/data python examples/train_tiny.py --steps 500 --prompt "ROMEO:"

The corpus is looked up in the directory named by TINYLLM_DATA, then in ~/.cache/tinyllm/; the
script never downloads it. With the defaults (about a minute on a 2-core CPU) the validation
loss falls from ln(65) = 4.17 (a uniform guess over the 65 characters) to about 1.76, and the
sample looks like a play: names in capitals, short lines, mostly English-shaped words.
"""
import argparse
import math
import os
import time
from pathlib import Path

import numpy as np

import tinyllm
import tinyllm.functional as F

DATA_FILE = "tinyshakespeare.txt"
DATA_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"
            "input.txt")
DTYPE = np.float32


# ----------------------------------------------------------------------------------------------
# command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=18000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=128, help="context windows per step")
    p.add_argument("--lr", type=float, default=3e-3,
                   help="peak Adam learning rate (cosine-decayed to lr/10 over the run)")
    p.add_argument("--block-size", type=int, default=8,
                   help="characters of context the model sees")
    p.add_argument("--n-embd", type=int, default=24, help="embedding size per character")
    p.add_argument("--n-hidden", type=int, default=256, help="hidden layer width")
    p.add_argument("--activation", choices=("tanh", "gelu"), default="tanh",
                   help="hidden nonlinearity")
    p.add_argument("--seed", type=int, default=1337, help="seeds init, batches and sampling")
    p.add_argument("--eval-interval", type=int, default=2000,
                   help="steps between loss estimates (and the last step)")
    p.add_argument("--eval-windows", type=int, default=8192,
                   help="fixed context windows per split used to estimate the loss")
    p.add_argument("--sample-chars", type=int, default=300, help="characters to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    p.add_argument("--prompt", type=str, default="", help="text the sample continues")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "block_size", "n_embd", "n_hidden", "eval_interval",
                 "eval_windows"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.sample_chars < 0 or args.temperature <= 0:
        p.error("--sample-chars must be >= 0 and --temperature > 0")
    return args


# ----------------------------------------------------------------------------------------------
# data: the corpus, a character vocabulary, context windows

def find_corpus():
    """Path of tinyshakespeare.txt: in $TINYLLM_DATA, else in ~/.cache/tinyllm/."""
    searched = []
    if os.environ.get("TINYLLM_DATA"):
        searched.append(Path(os.environ["TINYLLM_DATA"]).expanduser() / DATA_FILE)
    searched.append(Path.home() / ".cache" / "tinyllm" / DATA_FILE)
    for path in searched:
        if path.is_file():
            return path
    where = "\n".join(f"  {p}" for p in searched)
    raise SystemExit(
        f"train_tiny: cannot find {DATA_FILE}; looked in\n{where}\n"
        f"Put the file in a directory and set TINYLLM_DATA to that directory "
        f"(e.g. TINYLLM_DATA=../shared/data), or save it as ~/.cache/tinyllm/{DATA_FILE}.\n"
        f"It is Karpathy's tiny Shakespeare: {DATA_URL}\n"
        f"(this script never downloads anything)")


def load_corpus(path):
    """The text as int64 ids (N,), plus the vocabulary (sorted characters)."""
    text = path.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    ids = np.fromiter((stoi[ch] for ch in text), dtype=np.int64, count=len(text))
    return ids, chars


def windows(split, starts, block_size):
    """Contexts and targets for window ends ``starts``: x (N, T) ids, y (N,) the next id.

    Window i predicts split[starts[i]] from the block_size ids just before it.
    """
    offsets = np.arange(-block_size, 0)                                  # (T,)
    return split[starts[:, None] + offsets], split[starts]               # (N, T), (N,)


def random_starts(rng, split, block_size, n):
    """n window ends drawn uniformly from the positions that have a full context."""
    return rng.integers(block_size, len(split), size=n)


# ----------------------------------------------------------------------------------------------
# model: embeddings -> linear -> layer norm -> tanh/gelu -> linear, as plain tensors

def init_params(vocab_size, block_size, n_embd, n_hidden):
    """Parameters as leaf tensors with requires_grad=True, drawn from tinyllm's seeded generator.

    Scales: w1 ~ N(0, 1/fan_in) keeps the pre-activation at unit variance (layer norm fixes it
    anyway); w2 is scaled down by 0.1 so the first logits are nearly equal and the initial loss
    is close to ln(V), the loss of a uniform guess, instead of a confident wrong one.
    The first linear layer has no bias: layer norm subtracts the mean right after, which would
    cancel it.
    """
    fan_in = block_size * n_embd
    V, C, H = vocab_size, n_embd, n_hidden
    return {
        "wte": tinyllm.randn(V, C, dtype=DTYPE).requires_grad_(),                   # (V, C)
        "w1": (tinyllm.randn(fan_in, H, dtype=DTYPE) / math.sqrt(fan_in)).requires_grad_(),
        "ln_w": tinyllm.ones(H, dtype=DTYPE, requires_grad=True),                  # (H,)
        "ln_b": tinyllm.zeros(H, dtype=DTYPE, requires_grad=True),                 # (H,)
        "w2": (tinyllm.randn(H, V, dtype=DTYPE) * (0.1 / math.sqrt(H))).requires_grad_(),
        "b2": tinyllm.zeros(V, dtype=DTYPE, requires_grad=True),                   # (V,)
    }


def forward(params, idx, activation="tanh"):
    """Logits (B, V) for the next character after each context in idx (B, T)."""
    B, T = idx.shape
    emb = F.embedding(idx, params["wte"])                    # (B, T, C)
    x = emb.reshape(B, -1)                                   # (B, T*C): the concatenation
    h = x @ params["w1"]                                     # (B, H)
    h = F.layer_norm(h, h.shape[-1], params["ln_w"], params["ln_b"])
    h = h.tanh() if activation == "tanh" else F.gelu(h)
    return h @ params["w2"] + params["b2"]                   # (B, V)


@tinyllm.no_grad()
def estimate_loss(params, x, y, activation, chunk=4096):
    """Mean cross-entropy over fixed windows x (N, T), y (N,), in chunks, without a graph."""
    total = 0.0
    for i in range(0, len(y), chunk):
        logits = forward(params, x[i:i + chunk], activation)
        total += F.cross_entropy(logits, y[i:i + chunk], reduction="sum").item()
    return total / len(y)


# ----------------------------------------------------------------------------------------------
# optimizer: Adam on raw arrays, written out here to be read (the library's: tinyllm.optim)

class Adam:
    """Adam (Kingma & Ba 2015), updating p.data in place from p.grad.

        m = b1 m + (1 - b1) g            running mean of gradients
        v = b2 v + (1 - b2) g^2          running mean of squared gradients
        p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    The divisions by 1 - b^t (bias correction) undo the pull of the zero-initialised m and v
    towards 0 in the first steps.
    """

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.eps = list(params), lr, eps
        self.b1, self.b2 = betas
        self.m = [np.zeros_like(p.data) for p in self.params]
        self.v = [np.zeros_like(p.data) for p in self.params]
        self.t = 0

    @tinyllm.no_grad()
    def step(self):
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            g = p.grad
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * (g * g)
            p.data -= self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)

    def zero_grad(self):
        for p in self.params:
            p.zero_grad()


def lr_at(step, steps, lr):
    """Cosine decay from lr at step 0 to lr/10 at the last step."""
    progress = step / max(steps - 1, 1)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------------------------
# sampling

@tinyllm.no_grad()
def sample(params, rng, n_chars, block_size, context, temperature, activation):
    """Generate n_chars ids, each drawn from softmax(logits / temperature) of the last
    block_size ids of ``context`` (a list of ids, already padded to at least block_size)."""
    context = list(context)
    out = []
    for _ in range(n_chars):
        idx = np.array([context[-block_size:]], dtype=np.int64)              # (1, T)
        probs = F.softmax(forward(params, idx, activation) / temperature).data[0]   # (V,)
        p = probs.astype(np.float64)
        nxt = int(rng.choice(len(p), p=p / p.sum()))
        context.append(nxt)
        out.append(nxt)
    return out


# ----------------------------------------------------------------------------------------------
# main

def main(argv=None):
    args = parse_args(argv)
    tinyllm.manual_seed(args.seed)
    batch_rng = np.random.default_rng(args.seed)          # training batches
    eval_rng = np.random.default_rng(args.seed + 1)       # the fixed evaluation windows
    sample_rng = np.random.default_rng(args.seed + 2)     # sampling

    # data: first 90% of the text to train on, the last 10% to validate on
    ids, chars = load_corpus(find_corpus())
    stoi = {ch: i for i, ch in enumerate(chars)}
    V, T = len(chars), args.block_size
    n_train = int(0.9 * len(ids))
    train, val = ids[:n_train], ids[n_train:]
    unknown = sorted(set(args.prompt) - set(chars))
    if unknown:
        raise SystemExit(f"train_tiny: --prompt has characters outside the vocabulary: "
                         f"{''.join(unknown)!r}")
    if len(val) <= T:
        raise SystemExit(f"train_tiny: the validation split ({len(val)} characters) is shorter "
                         f"than --block-size {T}")
    eval_sets = {}
    for name, split in (("train", train), ("val", val)):
        starts = random_starts(eval_rng, split, T, min(args.eval_windows, len(split) - T))
        eval_sets[name] = windows(split, starts, T)

    params = init_params(V, T, args.n_embd, args.n_hidden)
    n_params = sum(p.numel() for p in params.values())
    print(f"vocab size {V} | parameters {n_params:,} | train tokens {len(train):,} | "
          f"val tokens {len(val):,}")
    print(f"block size {T} | n_embd {args.n_embd} | n_hidden {args.n_hidden} | "
          f"batch size {args.batch_size} | steps {args.steps} | lr {args.lr}")

    # training; the loss is estimated before the first step, every eval_interval steps, and
    # after the last one ("step N" = after N updates)
    opt = Adam(params.values(), lr=args.lr)
    losses = []
    t_train, n_timed = 0.0, 0
    for step in range(args.steps + 1):
        if step % args.eval_interval == 0 or step == args.steps:
            train_loss = estimate_loss(params, *eval_sets["train"], args.activation)
            val_loss = estimate_loss(params, *eval_sets["val"], args.activation)
            timing = f" | {1000 * t_train / n_timed:.2f} ms/step" if n_timed else ""
            print(f"step {step:5d} | train loss {train_loss:.4f} | val loss {val_loss:.4f}"
                  f"{timing}")
            t_train, n_timed = 0.0, 0
        if step == args.steps:
            break

        t0 = time.perf_counter()
        opt.lr = lr_at(step, args.steps, args.lr)
        x, y = windows(train, random_starts(batch_rng, train, T, args.batch_size), T)
        logits = forward(params, x, args.activation)                 # (B, V)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        t_train += time.perf_counter() - t0
        n_timed += 1

    # sampling: pad the context with newlines (or id 0), as if starting a new paragraph
    pad = stoi.get("\n", 0)
    context = [pad] * T + [stoi[ch] for ch in args.prompt]
    out = sample(params, sample_rng, args.sample_chars, T, context, args.temperature,
                 args.activation)
    text = "".join(chars[i] for i in out)
    print(f"---- sample (temperature {args.temperature}) ----")
    print(args.prompt + text)

    return {"train_loss": train_loss, "val_loss": val_loss, "losses": losses, "sample": text,
            "vocab": chars, "n_params": n_params}


if __name__ == "__main__":
    main()

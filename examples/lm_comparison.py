"""Three language models on tiny Shakespeare: a Kneser-Ney n-gram, an LSTM and a GPT.

    TINYLLM_DATA=../shared/data python examples/lm_comparison.py             # ~5 minutes
    python examples/lm_comparison.py --steps 200 --orders 3,5 --json out.json  # quicker

The same data for all three: tiny Shakespeare, one id per character (65), nanoGPT's split
(the first 90% to train, the last 10% to validate). The same test: the whole validation split
cut into consecutive windows of ``block_size`` characters, each target predicted from the
window's earlier characters only (so position j of a window has j + 1 characters of context,
whatever the model; an n-gram model reads the last order - 1 of them).

- n-gram: interpolated Kneser-Ney (tinyllm.models.KneserNeyLM), counted on the training split,
  one row per order. Counting is the whole of its training.
- LSTM: tinyllm.models.LSTMLM, 2 layers of 256 units on 128-wide embeddings (~0.93M
  parameters, the GPT's size), trained with the GPT's loop below.
- GPT: the shakespeare-char preset's model (4 layers, 4 heads, 128 wide, context 64, no
  biases; ~0.80M parameters).

Both neural models: ``steps`` AdamW steps (betas 0.9/0.99, weight decay 0.1 on matrices) on
batches of 12 random windows of 64 characters from one seeded stream, nanoGPT's schedule
(warmup 100 steps, cosine to lr/10) and gradient clipping at 1.0; peak lr 1e-3 for the GPT (the
preset's), 2e-3 for the LSTM (char-rnn's). The table: validation loss (nats per character),
perplexity e^loss, bits per character, parameters, training time and tokens/s; then a sample
from each model.
"""
import argparse
import json
import math
import time

import numpy as np

import tinyllm as tl
from tinyllm._files import atomic_write_text
from tinyllm.data.corpora import get_batch, load_text, train_val_split
from tinyllm.data.tokenizers import CharTokenizer
from tinyllm.generate import generate
from tinyllm.metrics import mean_loss, windows
from tinyllm.models import GPT, KneserNeyLM, LSTMLM, GPTConfig, LSTMLMConfig
from tinyllm.optim import AdamW, clip_grad_norm_, weight_decay_groups
from tinyllm.optim.lr_scheduler import cosine_with_warmup_lr


# ----------------------------------------------------------------------------------------------
# data and the common test

def load_data(corpus, max_chars=None):
    text = load_text(corpus)
    if max_chars:
        text = text[:max_chars]
    tok = CharTokenizer.from_text(text)
    ids = np.array(tok.encode(text), dtype=np.int64)
    train, val = train_val_split(ids)
    return tok, train, val


# ----------------------------------------------------------------------------------------------
# training loop shared by the two neural models

def train_neural(model, train, args, lr, seed):
    opt = AdamW(weight_decay_groups(model, 0.1), lr=lr, betas=(0.9, 0.99))
    rng = np.random.default_rng([seed, 1])
    warmup = min(100, args.steps // 10)
    losses = []
    t0 = time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = cosine_with_warmup_lr(step, lr, warmup, args.steps, lr / 10)
        x, y = get_batch(train, args.batch_size, args.block_size, rng)
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    return losses, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# the three models

def run_ngrams(train, val_x, val_y, orders, V):
    rows = []
    for order in orders:
        t0 = time.perf_counter()
        model = KneserNeyLM(order, vocab_size=V).fit(train)
        fit_s = time.perf_counter() - t0
        rows.append({"model": f"{order}-gram Kneser-Ney", "val_loss": model.loss(val_x, val_y),
                     "params": None, "train_s": fit_s, "tok_s": len(train) / fit_s,
                     "ngram": model})
    return rows


def run_lstm(train, val_x, val_y, args, V):
    tl.manual_seed(args.seed)
    model = LSTMLM(LSTMLMConfig(vocab_size=V, n_embd=args.n_embd, n_hidden=args.lstm_hidden,
                                n_layer=args.lstm_layers))
    losses, secs = train_neural(model, train, args, args.lstm_lr, args.seed)
    return {"model": f"LSTM {args.lstm_layers}x{args.lstm_hidden}",
            "val_loss": mean_loss(model, val_x, val_y), "params": model.num_parameters(),
            "train_s": secs, "tok_s": args.steps * args.batch_size * args.block_size / secs,
            "first_loss": losses[0], "last_loss": float(np.mean(losses[-50:])), "net": model}


def run_gpt(train, val_x, val_y, args, V):
    tl.manual_seed(args.seed)
    model = GPT(GPTConfig(block_size=args.block_size, vocab_size=V, n_layer=args.gpt_layers,
                          n_head=args.gpt_heads, n_embd=args.n_embd, dropout=0.0, bias=False))
    losses, secs = train_neural(model, train, args, args.gpt_lr, args.seed)
    return {"model": f"GPT {args.gpt_layers}x{args.n_embd}",
            "val_loss": mean_loss(model, val_x, val_y), "params": model.num_parameters(),
            "train_s": secs, "tok_s": args.steps * args.batch_size * args.block_size / secs,
            "first_loss": losses[0], "last_loss": float(np.mean(losses[-50:])), "net": model}


# ----------------------------------------------------------------------------------------------
# report

def table(rows):
    lines = ["| model | val loss (nats/char) | perplexity | bits/char | parameters | "
             "training s | tokens/s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        params = f"{r['params']:,}" if r["params"] else "counts"
        lines.append(f"| {r['model']} | {r['val_loss']:.4f} | {math.exp(r['val_loss']):.2f} | "
                     f"{r['val_loss'] / math.log(2):.3f} | {params} | {r['train_s']:.1f} | "
                     f"{r['tok_s']:,.0f} |")
    return "\n".join(lines)


def samples(rows, tok, args):
    prompt = tok.encode("ROMEO:\n")
    out = {}
    for r in rows:
        rng = np.random.default_rng(args.seed)
        if "ngram" in r:
            ids = r["ngram"].generate(prompt, args.sample_chars, rng)
        else:
            ids = generate(r["net"], np.array([prompt]), args.sample_chars, rng=rng)[0]
        out[r["model"]] = tok.decode([int(i) for i in ids])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="tinyshakespeare")
    p.add_argument("--max-chars", type=int, default=None, help="use only the corpus' start")
    p.add_argument("--orders", default="1,2,3,4,5,6,7", help="n-gram orders, comma-separated")
    p.add_argument("--steps", type=int, default=2000, help="training steps of each network")
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--lstm-hidden", type=int, default=256)
    p.add_argument("--lstm-layers", type=int, default=2)
    p.add_argument("--lstm-lr", type=float, default=2e-3)
    p.add_argument("--gpt-layers", type=int, default=4)
    p.add_argument("--gpt-heads", type=int, default=4)
    p.add_argument("--gpt-lr", type=float, default=1e-3)
    p.add_argument("--models", default="ngram,lstm,gpt")
    p.add_argument("--sample-chars", type=int, default=200)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    tl.kernels.prefer_impl("auto")      # the accelerators; TINYLLM_KERNELS=numpy: the references
    tl.backend.keep_freed_memory()

    tok, train, val = load_data(args.data, args.max_chars)
    V = tok.vocab_size
    val_x, val_y = windows(val, args.block_size)
    print(f"{len(train):,} training and {len(val):,} validation characters, vocabulary {V}; "
          f"test: {val_x.size:,} predictions in {len(val_x)} windows of {args.block_size}")
    models = args.models.split(",")
    rows = []
    if "ngram" in models:
        rows += run_ngrams(train, val_x, val_y, [int(o) for o in args.orders.split(",")], V)
    if "lstm" in models:
        rows.append(run_lstm(train, val_x, val_y, args, V))
        print(f"LSTM: {rows[-1]['train_s']:.0f} s")
    if "gpt" in models:
        rows.append(run_gpt(train, val_x, val_y, args, V))
        print(f"GPT: {rows[-1]['train_s']:.0f} s")
    print()
    print(table(rows))
    texts = samples(rows, tok, args)
    for name, text in texts.items():
        print(f"\n--- {name} ---\n{text}")
    result = [{**{k: v for k, v in r.items() if k not in ("ngram", "net")}, "vocab": V}
              for r in rows]
    if args.json:
        record = {"args": vars(args), "rows": result, "samples": texts}
        atomic_write_text(args.json, json.dumps(record, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()

"""Train each model of the Transformer family on a toy task it can master in seconds.

    python examples/train_toy_models.py                 # all of them
    python examples/train_toy_models.py --model gpt     # one: gpt | seq2seq | bert

- GPT (decoder-only LM): sequences that count up modulo V from a random start
  ("3 4 5 6 ..."). The next token is always the previous one plus one, so a model that has
  learned it predicts every position after the first with near certainty.
- Seq2SeqTransformer (encoder-decoder): reverse a sequence of tokens; teacher forcing in
  training, greedy decoding (one token at a time, feeding back its own output) to evaluate.
- BERT (encoder): masked-LM pretraining on the same counting sequences (predict the masked
  tokens from both sides), then sequence classification ("is this sequence counting or
  shuffled?") fine-tuned two ways from the pretrained weights: the encoder frozen with a new
  head on top, and everything trained. (Only MLM is pretrained here, so the pooler that feeds
  the head is untrained, and the frozen variant is clearly weaker.)

Each task reports its first and last loss and an accuracy on fresh examples. Everything is
seeded: the same command prints the same numbers.
"""
import argparse
import time

import numpy as np

import tinyllm as tl
from tinyllm.models import (GPT, BertConfig, BertForPreTraining, BertForSequenceClassification,
                            GPTConfig, Seq2SeqConfig, Seq2SeqTransformer, mask_tokens)
from tinyllm.optim import AdamW


# ----------------------------------------------------------------------------------------------
# GPT: counting modulo V

def counting_batch(rng, B, T, V):
    start = rng.integers(0, V, (B, 1))
    return (start + np.arange(T + 1)) % V                                # (B, T + 1)


def train_gpt(steps, seed):
    tl.manual_seed(seed)
    rng = np.random.default_rng(seed)
    V, T = 16, 12
    model = GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=2, n_head=2, n_embd=32,
                          dropout=0.0))
    opt = AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        seq = counting_batch(rng, 16, T, V)
        _, loss = model(seq[:, :-1], seq[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    seq = counting_batch(np.random.default_rng(seed + 1), 64, T, V)
    with tl.no_grad():
        pred = model(seq[:, :-1]).numpy().argmax(-1)
    accuracy = float((pred[:, 1:] == seq[:, 2:]).mean())        # position 0 has no context
    return {"model": "gpt", "params": model.num_parameters(), "first_loss": losses[0],
            "last_loss": losses[-1], "accuracy": accuracy, "losses": losses}


# ----------------------------------------------------------------------------------------------
# Seq2seq: reversal, with greedy decoding

PAD, BOS, EOS = 0, 1, 2


def reversal_batch(rng, B, S, V):
    src = rng.integers(3, V, (B, S))
    tgt = src[:, ::-1]
    tgt_in = np.concatenate([np.full((B, 1), BOS), tgt], axis=1)
    tgt_out = np.concatenate([tgt, np.full((B, 1), EOS)], axis=1)
    return src, tgt_in, tgt_out


@tl.no_grad()
def greedy_decode(model, src, max_len):
    """Start from BOS, append the argmax token each step. The decoder's KV cache holds the
    earlier positions, so each step feeds only the newest token."""
    memory, src_mask = model.encode(src)
    out = np.full((src.shape[0], 1), BOS)
    cache = model.new_cache()
    for _ in range(max_len):
        logits = model.decode(out[:, -1:], memory, src_mask, cache=cache)   # (B, 1, V)
        out = np.concatenate([out, logits.numpy()[:, -1].argmax(-1)[:, None]], axis=1)
    return out[:, 1:]


def train_seq2seq(steps, seed):
    tl.manual_seed(seed)
    rng = np.random.default_rng(seed)
    V, S = 12, 6
    model = Seq2SeqTransformer(Seq2SeqConfig(src_vocab_size=V, n_embd=32, n_head=4,
                                             num_encoder_layers=1, num_decoder_layers=1,
                                             d_ff=64, dropout=0.0, max_len=S + 2, pad_id=PAD))
    opt = AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        src, tgt_in, tgt_out = reversal_batch(rng, 32, S, V)
        _, loss = model(src, tgt_in, tgt_out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    src, _, tgt_out = reversal_batch(np.random.default_rng(seed + 1), 64, S, V)
    decoded = greedy_decode(model, src, S + 1)
    accuracy = float((decoded == tgt_out).all(axis=1).mean())          # whole sequences right
    return {"model": "seq2seq", "params": model.num_parameters(), "first_loss": losses[0],
            "last_loss": losses[-1], "accuracy": accuracy, "losses": losses}


# ----------------------------------------------------------------------------------------------
# BERT: masked-LM pretraining, then classification with the base frozen

B_PAD, B_CLS, B_SEP, B_MASK, B_FIRST = 0, 1, 2, 3, 4        # special ids, then 16 content ids


def bert_sequences(rng, B, T, shuffled=False):
    """[CLS] followed by T content tokens counting up modulo 16 (or the same, shuffled)."""
    seq = B_FIRST + (rng.integers(0, 16, (B, 1)) + np.arange(T)) % 16      # (B, T)
    if shuffled:
        seq = np.stack([rng.permutation(row) for row in seq])
    return np.concatenate([np.full((B, 1), B_CLS), seq], axis=1)           # (B, T + 1)


def train_bert(steps, seed):
    tl.manual_seed(seed)
    rng = np.random.default_rng(seed)
    T = 10
    config = BertConfig(vocab_size=B_FIRST + 16, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, max_position_embeddings=T + 1)
    # 1. pretraining: predict masked tokens from their context on both sides
    pre = BertForPreTraining(config)
    opt = AdamW(pre.parameters(), lr=3e-3, weight_decay=0.0)
    specials = (B_PAD, B_CLS, B_SEP, B_MASK)
    losses = []
    for _ in range(steps):
        masked, labels = mask_tokens(bert_sequences(rng, 32, T), rng, config.vocab_size, B_MASK,
                                     specials, mlm_probability=0.3)
        _, _, loss = pre(masked, labels=labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # 2. fine-tuning: counting (1) or shuffled (0)? Two ways, from the same pretrained weights:
    #    the encoder frozen and only a new classifier head trained, or everything trained.

    def labelled_batch(r, B):
        ids = np.concatenate([bert_sequences(r, B // 2, T),
                              bert_sequences(r, B // 2, T, shuffled=True)])
        return ids, np.repeat([1, 0], B // 2)

    results = {}
    for mode, lr in (("frozen", 1e-2), ("full", 1e-3)):
        clf = BertForSequenceClassification(config, num_labels=2)
        clf.bert.load_state_dict(pre.bert.state_dict())
        if mode == "frozen":
            clf.freeze_base()
        ft_opt = AdamW([p for p in clf.parameters() if p.requires_grad], lr=lr,
                       weight_decay=0.0)
        for _ in range(steps // 3):
            ids, y = labelled_batch(rng, 32)
            _, loss = clf(ids, labels=y)
            ft_opt.zero_grad()
            loss.backward()
            ft_opt.step()
        clf.eval()
        ids, y = labelled_batch(np.random.default_rng(seed + 1), 128)
        with tl.no_grad():
            results[mode] = float((clf(ids).numpy().argmax(-1) == y).mean())
        results[mode + "_trainable"] = clf.num_parameters(trainable_only=True)
    return {"model": "bert", "params": pre.num_parameters(), "first_loss": losses[0],
            "last_loss": losses[-1], "accuracy": results["full"],
            "frozen_accuracy": results["frozen"], "losses": losses,
            "frozen_trainable": results["frozen_trainable"]}


# ----------------------------------------------------------------------------------------------

TASKS = {"gpt": (train_gpt, 300), "seq2seq": (train_seq2seq, 300), "bert": (train_bert, 600)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(TASKS) + ["all"], default="all")
    p.add_argument("--steps", type=int, default=None, help="override each task's step count")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    tl.kernels.prefer_impl("auto")      # the accelerators; TINYLLM_KERNELS=numpy: the references
    names = sorted(TASKS) if args.model == "all" else [args.model]
    results = {}
    for name in names:
        fn, default_steps = TASKS[name]
        t0 = time.perf_counter()
        r = fn(args.steps or default_steps, args.seed)
        r["seconds"] = time.perf_counter() - t0
        results[name] = r
        extra = (f" (classifier: full fine-tune; frozen base + new head "
                 f"{r['frozen_accuracy']:.3f} training {r['frozen_trainable']} params)"
                 if name == "bert" else "")
        print(f"{name:<8} {r['params']:>7,} params | loss {r['first_loss']:.3f} -> "
              f"{r['last_loss']:.4f} | accuracy {r['accuracy']:.3f}{extra} | "
              f"{r['seconds']:.1f} s")
    return results


if __name__ == "__main__":
    main()

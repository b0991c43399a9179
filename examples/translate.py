"""English -> French with an encoder-decoder Transformer on the Tatoeba pairs; BLEU, greedy vs beam.

    TINYLLM_DATA=../shared/data python examples/translate.py                # ~5 minutes
    python examples/translate.py --steps 300 --test-size 100                 # quicker

Data: the 20,000 Tatoeba English-French pairs (short sentences), shuffled with a fixed seed;
``test_size`` pairs held out for BLEU, the rest to train. One byte-level BPE vocabulary for
both languages (``ByteBPETokenizer.train`` on the training pairs), with <pad>, <bos>, <eos>.
Source: the English tokens + <eos>; target: <bos> + the French tokens + <eos>.

Model: ``Seq2SeqTransformer`` (post-LN as in the paper, sinusoidal positions, shared and tied
embeddings), trained with teacher forcing: AdamW, warmup + cosine, batches of ``batch_size``
pairs padded to their longest, padding masked in every attention and ignored by the loss.

Decoding the held-out sources: greedy (batched, with the decoder's KV cache) and beam search
(``tinyllm.generate.beam_search``, GNMT length penalty ``alpha``), stopping at <eos>. BLEU:
``tinyllm.metrics.corpus_bleu`` (sacreBLEU's 13a tokenization, checked against sacreBLEU in
tests/test_metrics.py) of the detokenized outputs against the one reference each.
"""
import argparse
import json
import time

import numpy as np

import tinyllm as tl
from tinyllm._files import atomic_write_text
from tinyllm.data.corpora import load_sentence_pairs
from tinyllm.data.tokenizers import ByteBPETokenizer
from tinyllm.generate import beam_search
from tinyllm.metrics import corpus_bleu
from tinyllm.models import Seq2SeqConfig, Seq2SeqTransformer
from tinyllm.optim import AdamW, clip_grad_norm_, weight_decay_groups
from tinyllm.optim.lr_scheduler import cosine_with_warmup_lr

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"


# ----------------------------------------------------------------------------------------------
# data

def load_data(args):
    pairs = load_sentence_pairs("eng_fra")
    if args.limit:
        pairs = pairs[:args.limit]
    order = np.random.default_rng(args.seed).permutation(len(pairs))
    test = [pairs[i] for i in order[:args.test_size]]
    train = [pairs[i] for i in order[args.test_size:]]
    text = "\n".join(f"{en}\n{fr}" for en, fr in train)
    tok = ByteBPETokenizer.train(text, args.vocab_size, specials=(PAD, BOS, EOS))
    return tok, train, test


def encode_pairs(tok, pairs):
    eos, bos = tok.special_tokens[EOS], tok.special_tokens[BOS]
    src = [tok.encode(en) + [eos] for en, _ in pairs]
    tgt = [[bos] + tok.encode(fr) + [eos] for _, fr in pairs]
    return src, tgt


def pad(seqs, pad_id):
    out = np.full((len(seqs), max(len(s) for s in seqs)), pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out


# ----------------------------------------------------------------------------------------------
# training

def train_model(tok, src, tgt, args):
    pad_id = tok.special_tokens[PAD]
    tl.manual_seed(args.seed)
    model = Seq2SeqTransformer(Seq2SeqConfig(
        src_vocab_size=tok.vocab_size, n_embd=args.n_embd, n_head=args.n_head,
        num_encoder_layers=args.layers, num_decoder_layers=args.layers,
        d_ff=4 * args.n_embd, dropout=args.dropout, pad_id=pad_id))
    opt = AdamW(weight_decay_groups(model, 0.01), lr=args.lr, betas=(0.9, 0.98))
    rng = np.random.default_rng([args.seed, 1])
    warmup = max(1, args.steps // 10)
    losses, t0 = [], time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = cosine_with_warmup_lr(step, args.lr, warmup, args.steps, args.lr / 10)
        pick = rng.integers(0, len(src), args.batch_size)
        s = pad([src[i] for i in pick], pad_id)                      # (B, S)
        t = pad([tgt[i] for i in pick], pad_id)                      # (B, T + 1)
        _, loss = model(s, t[:, :-1], t[:, 1:])                     # teacher forcing
        opt.zero_grad()
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % max(1, args.steps // 10) == 0:
            print(f"step {step + 1}: loss {np.mean(losses[-max(1, args.steps // 10):]):.3f}",
                  flush=True)
    return model, losses, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------
# decoding

@tl.no_grad()
def greedy(model, tok, src, max_len, batch_size=100):
    """Batched greedy decoding with the decoder's KV cache; the ids after <bos>, up to <eos>."""
    model.eval()
    pad_id, bos, eos = (tok.special_tokens[k] for k in (PAD, BOS, EOS))
    out = []
    for i in range(0, len(src), batch_size):
        s = pad(src[i:i + batch_size], pad_id)
        memory, mask = model.encode(s)
        cache = model.new_cache()
        last = np.full((len(s), 1), bos, dtype=np.int64)
        seqs, done = [], np.zeros(len(s), dtype=bool)
        for _ in range(max_len):
            nxt = model.decode(last, memory, mask, cache=cache).numpy()[:, -1].argmax(-1)
            nxt = np.where(done, eos, nxt)
            seqs.append(nxt)
            done |= nxt == eos
            last = nxt[:, None]
            if done.all():
                break
        for row in np.stack(seqs, axis=1):
            ids = list(row)
            out.append(ids[:ids.index(eos)] if eos in ids else ids)
    return out


@tl.no_grad()
def beam(model, tok, src, max_len, width, alpha):
    """Beam search per sentence (the decoder re-run over each hypothesis' prefix)."""
    model.eval()
    bos, eos = tok.special_tokens[BOS], tok.special_tokens[EOS]
    out = []
    for s in src:
        memory, mask = model.encode(np.array([s]))

        def next_logits(seqs, memory=memory, mask=mask):
            K = len(seqs)
            rows = np.zeros(K, dtype=np.int64)
            return model.decode(seqs, memory[rows], mask[rows]).numpy()[:, -1]
        best, _ = beam_search(next_logits, [[bos]], beam_width=width, max_new_tokens=max_len,
                              eos_id=eos, alpha=alpha)[0]
        ids = [int(i) for i in best[1:]]
        out.append(ids[:ids.index(eos)] if eos in ids else ids)
    return out


def bleu(tok, hyps, refs):
    return corpus_bleu([tok.decode(h) for h in hyps], refs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vocab-size", type=int, default=2000)
    p.add_argument("--n-embd", "--d-model", type=int, default=128, help="model width C")
    p.add_argument("--n-head", "--heads", type=int, default=4, help="attention heads")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--beam-width", type=int, default=4)
    p.add_argument("--alpha", type=float, default=0.6, help="GNMT length penalty")
    p.add_argument("--max-len", type=int, default=40, help="longest output, in tokens")
    p.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    tl.kernels.prefer_impl("auto")      # the accelerators; TINYLLM_KERNELS=numpy: the references
    tl.backend.keep_freed_memory()

    tok, train, test = load_data(args)
    src, tgt = encode_pairs(tok, train)
    test_src, _ = encode_pairs(tok, test)
    refs = [fr for _, fr in test]
    print(f"{len(train)} training / {len(test)} test pairs; BPE vocabulary {tok.vocab_size}")
    model, losses, secs = train_model(tok, src, tgt, args)
    print(f"training: {secs:.0f} s, {model.num_parameters():,} parameters")
    t0 = time.perf_counter()
    g = greedy(model, tok, test_src, args.max_len)
    g_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = beam(model, tok, test_src, args.max_len, args.beam_width, args.alpha)
    b_s = time.perf_counter() - t0
    result = {"train_s": secs, "params": model.num_parameters(), "first_loss": losses[0],
              "last_loss": float(np.mean(losses[-100:])),
              "bleu_greedy": bleu(tok, g, refs), "bleu_beam": bleu(tok, b, refs),
              "greedy_s": g_s, "beam_s": b_s,
              "examples": [{"en": en, "ref": fr, "greedy": tok.decode(gh), "beam": tok.decode(bh)}
                           for (en, fr), gh, bh in list(zip(test, g, b))[:8]]}
    print(f"\nBLEU on {len(test)} held-out pairs: greedy {result['bleu_greedy']:.2f} "
          f"({g_s:.0f} s), beam {args.beam_width} alpha {args.alpha} {result['bleu_beam']:.2f} "
          f"({b_s:.0f} s)")
    for e in result["examples"]:
        print(f"  {e['en']}\n    ref:    {e['ref']}\n    greedy: {e['greedy']}\n"
              f"    beam:   {e['beam']}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"args": vars(args), **result}, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()

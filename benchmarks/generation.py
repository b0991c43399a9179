"""Generation speed: ms per token of the compiled decode step, the readable forward, no
cache, and PyTorch eager; batch 1 and 8, and beam search.

    python benchmarks/generation.py [--rounds 5] [--tokens 127]

GPT at 4 layers / 4 heads / 128 dims / context 128 / vocab 65 (float32, greedy): prompt of 1
token per row, 127 new tokens, so every step fits the context. Rows:
- compiled: the switch on ("auto"): generate() runs one Numba call per token through the
  whole model (tinyllm/kernels/decode.py), writing tinyllm's preallocated KV cache in place;
- readable: the switch off ("numpy", ``tl.kernels.using``): ``model(token, cache=cache)``, ~100
  ops through the autograd layer per token, writing the same preallocated cache;
- no cache: the window recomputed every step (under "auto": the ops' accelerators);
- torch: the same weights in a PyTorch twin (benchmarks/train_step.py's nanoGPT-style
  modules) decoding with a KV cache of its own, keys and values concatenated per token
  (``torch.cat``), ``scaled_dot_product_attention``, ``torch.no_grad``, 2 threads;
- beam: ``beam_search(model, ...)`` with 4 beams (its cache rows reordered each step),
  readable vs compiled, ms per step.
Before timing, the compiled and readable paths must give the same tokens (batch 1 and 8, and
the same beam), and cached must equal uncached; the twin's tokens are compared with tinyllm's
(a float32 near tie may flip one). Interleaved rounds, medians; ratios printed at the end.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

import tinyllm as tl
from tinyllm.generate import beam_search, generate
from tinyllm.models import GPT, GPTConfig


def torch_generate(model, cfg, prompt, n):
    """Greedy decoding of ``n`` tokens after ``prompt`` (B, T0) with the PyTorch twin ``model``
    and a per-layer KV cache grown by concatenation: one position's work per new token."""
    import torch
    import torch.nn.functional as F

    tr, C, H = model.transformer, cfg.n_embd, cfg.n_head
    ids, out, caches, pos = torch.from_numpy(prompt), [], [None] * cfg.n_layer, 0
    with torch.no_grad():
        for _ in range(n):
            B, T = ids.shape
            x = tr.wte(ids) + tr.wpe(torch.arange(pos, pos + T))             # (B, T, C)
            for i, block in enumerate(tr.h):
                q, k, v = block.attn.c_attn(block.ln_1(x)).split(C, dim=2)
                q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
                if caches[i] is not None:
                    k = torch.cat([caches[i][0], k], dim=2)                  # (B, H, past+T, D)
                    v = torch.cat([caches[i][1], v], dim=2)
                caches[i] = (k, v)
                y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
                x = x + block.attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
                x = x + block.mlp(block.ln_2(x))
            logits = model.lm_head(tr.ln_f(x[:, -1]))                         # (B, V)
            ids = logits.argmax(dim=-1, keepdim=True)
            out.append(ids)
            pos += T
    return np.concatenate([prompt, torch.cat(out, dim=1).numpy()], axis=1)


def _torch_twin(model, cfg):
    """The PyTorch twin with ``model``'s weights, or None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_step import TORCH_THREADS, build_torch_model
    torch.set_num_threads(TORCH_THREADS)
    state = {k: np.asarray(v.data) for k, v in model.state_dict().items()}
    return build_torch_model(cfg, state).eval()


def main(rounds=5, n=127):
    tl.kernels.prefer_impl("auto")      # the accelerators; TINYLLM_KERNELS=numpy: the formulas
    tl.manual_seed(0)
    cfg = GPTConfig(block_size=128, vocab_size=65, n_layer=4, n_head=4, n_embd=128)
    model = GPT(cfg)
    prompts = {1: np.zeros((1, 1), dtype=np.int64),
               8: np.arange(8, dtype=np.int64)[:, None]}                # (B, 1) per batch

    def gen(impl, B, **kw):
        with tl.kernels.using(impl):
            return generate(model, prompts[B], n, greedy=True, **kw)

    def beam(impl):
        with tl.kernels.using(impl):
            return beam_search(model, prompts[1], beam_width=4, max_new_tokens=n)[0]

    tokens = {B: gen("numpy", B) for B in prompts}
    for B in prompts:
        if not np.array_equal(gen("auto", B), tokens[B]):
            raise SystemExit(f"compiled and readable generation differ at batch {B}")
    if not np.array_equal(gen("auto", 1, use_cache=False), tokens[1]):
        raise SystemExit("cached and uncached generation differ")
    b_read, b_comp = beam("numpy"), beam("auto")
    if not np.array_equal(b_read[0], b_comp[0]) or not np.isclose(b_read[1], b_comp[1]):
        raise SystemExit("compiled and readable beam search differ")

    runs = {}
    for B in prompts:
        runs[f"b{B} compiled"] = lambda B=B: gen("auto", B)
        runs[f"b{B} readable"] = lambda B=B: gen("numpy", B)
    runs["b1 no cache"] = lambda: gen("auto", 1, use_cache=False)
    twin = _torch_twin(model, cfg)
    if twin is not None:
        for B in prompts:
            same = torch_generate(twin, cfg, prompts[B], n)
            print(f"PyTorch twin, batch {B}: {float((same == tokens[B]).mean()):.1%} of the "
                  f"tokens equal tinyllm's (float32; a near tie can flip one and the rest "
                  f"follow)")
            runs[f"b{B} torch"] = lambda B=B: torch_generate(twin, cfg, prompts[B], n)
    runs["beam4 compiled"] = lambda: beam("auto")
    runs["beam4 readable"] = lambda: beam("numpy")
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / n * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"ms per step ({n} steps; batch 8: per step of 8 tokens), medians of {rounds}:")
    for name, ms in med.items():
        print(f"{name:>15}: {ms:.3f}")
    for B in prompts:
        c, r = med[f"b{B} compiled"], med[f"b{B} readable"]
        line = f"batch {B}: readable / compiled {r / c:.2f}x"
        if f"b{B} torch" in med:
            t = med[f"b{B} torch"]
            line += f"; compiled / PyTorch {c / t:.2f}x; readable / PyTorch {r / t:.2f}x"
        print(line)
    print(f"beam 4: readable / compiled {med['beam4 readable'] / med['beam4 compiled']:.2f}x")
    return med


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tokens", type=int, default=127, help="new tokens (prompt of 1)")
    args = p.parse_args()
    main(args.rounds, args.tokens)

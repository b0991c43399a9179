"""Generation speed: ms per token with and without the KV cache, beside PyTorch eager.

    python benchmarks/generation.py [--rounds 5] [--tokens 127]

GPT at 4 layers / 4 heads / 128 dims / context 128 / vocab 65 (float32, greedy, batch 1):
prompt of 1 token, 127 new tokens, so every step fits the context. tinyllm with and without
its KV cache must produce the same tokens first. With PyTorch installed, the same weights run
in a PyTorch twin (benchmarks/train_step.py's, nanoGPT-style modules) decoding with a KV cache
of its own (keys and values concatenated per token, as tinyllm's cache does today,
``scaled_dot_product_attention``, ``torch.no_grad``, 2 threads); its tokens are compared with
tinyllm's and the ratio printed. Interleaved rounds, medians.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

import tinyllm as tl
from tinyllm.generate import generate
from tinyllm.models import GPT, GPTConfig


def torch_generate(model, cfg, prompt, n):
    """Greedy decoding of ``n`` tokens after ``prompt`` (1, T0) with the PyTorch twin ``model``
    and a per-layer KV cache: one position's work per new token."""
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
    prompt = np.zeros((1, 1), dtype=np.int64)
    a = generate(model, prompt, n, greedy=True)
    b = generate(model, prompt, n, greedy=True, use_cache=False)
    if not np.array_equal(a, b):
        raise SystemExit("cached and uncached generation differ")
    runs = {"cache": lambda: generate(model, prompt, n, greedy=True),
            "no cache": lambda: generate(model, prompt, n, greedy=True, use_cache=False)}
    twin = _torch_twin(model, cfg)
    if twin is not None:
        same = torch_generate(twin, cfg, prompt, n)
        agree = float((same == a).mean())
        print(f"PyTorch twin: {agree:.1%} of the tokens equal tinyllm's (float32; a near tie "
              f"can flip one and the rest follow)")
        runs["torch cache"] = lambda: torch_generate(twin, cfg, prompt, n)
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) / n * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, ms in med.items():
        print(f"{name:>12}: {ms:.3f} ms/token")
    if "torch cache" in med:
        print(f"tinyllm (cache) / PyTorch eager (cache): {med['cache'] / med['torch cache']:.2f}x")
    return med


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--tokens", type=int, default=127, help="new tokens (prompt of 1)")
    args = p.parse_args()
    main(args.rounds, args.tokens)

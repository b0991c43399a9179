"""Generation speed: ms per token with and without the KV cache.

    python benchmarks/generation.py

GPT at 4 layers / 4 heads / 128 dims / context 128 / vocab 65 (float32, greedy, batch 1):
prompt of 1 token, 127 new tokens, so every step fits the context. Both modes are checked to
produce the same tokens first. Interleaved rounds, medians.
"""
import statistics
import time

import numpy as np

import tinyllm as tl
from tinyllm.generate import generate
from tinyllm.models import GPT, GPTConfig


def main(rounds=5):
    tl.kernels.prefer_impl("auto")      # the accelerators; TINYLLM_KERNELS=numpy: the references
    tl.manual_seed(0)
    model = GPT(GPTConfig(block_size=128, vocab_size=65, n_layer=4, n_head=4, n_embd=128))
    prompt = np.zeros((1, 1), dtype=np.int64)
    n = 127
    a = generate(model, prompt, n, greedy=True)
    b = generate(model, prompt, n, greedy=True, use_cache=False)
    if not np.array_equal(a, b):
        raise SystemExit("cached and uncached generation differ")
    times = {"cache": [], "no cache": []}
    for _ in range(rounds):
        for name, use_cache in (("cache", True), ("no cache", False)):
            t0 = time.perf_counter()
            generate(model, prompt, n, greedy=True, use_cache=use_cache)
            times[name].append((time.perf_counter() - t0) / n * 1e3)
    for name, ts in times.items():
        print(f"{name:>9}: {statistics.median(ts):.3f} ms/token")
    return {k: statistics.median(v) for k, v in times.items()}


if __name__ == "__main__":
    main()

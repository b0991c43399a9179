"""Time one GPT training step (forward + backward + AdamW) at the shakespeare-char preset.

    python benchmarks/gpt_step.py

4 layers, 4 heads, 128 dims, context 64, batch 12, vocab 65, float32, no dropout, no biases
(the preset's bias=False, as nanoGPT's run; ``--bias`` for biases in Linear and LayerNorm). Three
warm-up steps, then 5 rounds of 10 steps; prints the median ms/step. (Issue 8 adds the
side-by-side comparison with PyTorch.)
"""
import statistics
import time

import numpy as np

import tinyllm as tl
from tinyllm.models import GPT, GPTConfig
from tinyllm.optim import AdamW


def main(rounds=5, steps=10, bias=False):
    tl.backend.keep_freed_memory()              # as the CLI does (see tinyllm/backend.py)
    tl.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128,
                          dropout=0.0, bias=bias))
    opt = AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    rng = np.random.default_rng(0)

    def step():
        idx = rng.integers(0, 65, (12, 65))
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - t0) / steps * 1e3)
    ms = statistics.median(times)
    print(f"GPT step (shakespeare-char preset, bias={bias}): {ms:.1f} ms  ->  2000 steps "
          f"{2 * ms:.0f} s")
    return ms


if __name__ == "__main__":
    import sys
    main(bias="--bias" in sys.argv[1:])

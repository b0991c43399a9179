"""Time one GPT training step (forward + backward + AdamW) at the shakespeare-char preset.

    python benchmarks/gpt_step.py
    python benchmarks/gpt_step.py --workers 2                     # the batch over 2 processes
    OPENBLAS_NUM_THREADS=1 python benchmarks/gpt_step.py --batch-size 6      # half, one core

4 layers, 4 heads, 128 dims, context 64, batch 12, vocab 65, float32, no dropout, no biases
(the preset's bias=False, as nanoGPT's run; ``--bias`` for biases in Linear and LayerNorm). Three
warm-up steps, then 5 rounds of 10 steps; prints the median ms/step. ``--workers N`` splits each
batch over N processes (``tinyllm.parallel.DataParallel``, as ``tinyllm train`` does; default 1:
this process only). ``--batch-size`` changes B. benchmarks/train_step.py compares with PyTorch.
"""
import argparse
import functools
import statistics
import time

import numpy as np

import tinyllm as tl
from tinyllm.models import GPT, GPTConfig
from tinyllm.optim import AdamW
from tinyllm.parallel import DataParallel


def main(rounds=5, steps=10, bias=False, batch_size=12, workers=1):
    tl.kernels.prefer_impl("auto")      # the accelerators; TINYLLM_KERNELS=numpy: the references
    tl.backend.keep_freed_memory()              # as the CLI does (see tinyllm/backend.py)
    tl.manual_seed(0)
    config = GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128,
                       dropout=0.0, bias=bias)
    model = GPT(config)
    opt = AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    dp = DataParallel(model, build=functools.partial(GPT, config), workers=workers)
    rng = np.random.default_rng(0)

    def step():
        idx = rng.integers(0, 65, (batch_size, 65))
        opt.zero_grad()
        dp.forward_backward(idx[:, :-1], idx[:, 1:])
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        times.append((time.perf_counter() - t0) / steps * 1e3)
    dp.close()
    ms = statistics.median(times)
    print(f"GPT step (shakespeare-char preset, bias={bias}, B={batch_size}, workers={workers}): "
          f"{ms:.1f} ms  ->  2000 steps {2 * ms:.0f} s")
    return ms


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bias", action="store_true", help="biases in Linear and LayerNorm")
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--workers", type=int, default=1, help="processes sharing each batch")
    args = p.parse_args()
    main(bias=args.bias, batch_size=args.batch_size, workers=args.workers)

"""What a learner meets stepping into a backward: a 2-layer GPT's ``loss.backward()`` under
``sys.settrace``.

    python benchmarks/backward_frames.py                 # the default switch (the formulas)
    TINYLLM_KERNELS=auto python benchmarks/backward_frames.py

Prints how deep below ``Tensor.backward`` the first op's backward runs, which op backwards ran,
how many frames were entered in tinyllm/kernels and in Numba, and whether ``Softmax.backward``
ran. (tests/test_readable.py asserts the same facts.) Run it with ``PYTHONPATH`` at another
checkout to compare two versions.
"""
import sys

import numpy as np

import tinyllm as tl
from tinyllm.models import GPT, GPTConfig


def trace_backward():
    tl.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=16,
                          dropout=0.0))
    rng = np.random.default_rng(0)
    _, loss = model(rng.integers(0, 37, (2, 12)), rng.integers(0, 37, (2, 12)))
    calls = []                                      # (file, qualified name, depth)

    def tracer(frame, event, arg):
        if event == "call":
            depth, f = 0, frame
            while f is not None and not (f.f_code.co_name == "backward"
                                         and "autograd/tensor.py" in f.f_code.co_filename):
                depth, f = depth + 1, f.f_back
            calls.append((frame.f_code.co_filename, frame.f_code.co_qualname, depth))

    sys.settrace(tracer)
    try:
        loss.backward()
    finally:
        sys.settrace(None)
    return calls


def main():
    calls = trace_backward()
    ops = [(q, d) for f, q, d in calls if "tinyllm/ops/" in f and q.endswith(".backward")]
    print(f"kernel switch: {tl.kernels.get_impl()}")
    print(f"first op backward: {ops[0][0]}, {ops[0][1]} frames below Tensor.backward")
    print(f"op backwards run: {len(ops)} ({', '.join(sorted({q.split('.')[0] for q, _ in ops}))})")
    print(f"frames in tinyllm/kernels: {sum('tinyllm/kernels/' in f for f, _, _ in calls)}")
    print(f"frames in numba: {sum('/numba/' in f for f, _, _ in calls)}")
    print(f"Softmax.backward ran: {any(q == 'Softmax.backward' for q, _ in ops)}")


if __name__ == "__main__":
    main()

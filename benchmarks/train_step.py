"""One GPT training step (forward + backward + AdamW), tinyllm against PyTorch CPU.

    python benchmarks/train_step.py                     # all configs, 5 rounds (< 10 min, 2 cores)
    python benchmarks/train_step.py --configs base --rounds 3 --json out.json
    python benchmarks/train_step.py --check             # only the loss check, then exit
    python benchmarks/train_step.py --profile           # + where tinyllm's step time goes
    python benchmarks/train_step.py --backend cupy      # tinyllm on CuPy vs PyTorch CUDA

What is timed: one optimisation step of tinyllm's GPT (tinyllm/models/gpt.py) and of a
nanoGPT-style twin written here in PyTorch, the same model in every detail: float32, no dropout,
pre-LN blocks, GELU (tanh form), LayerNorm with bias (eps 1e-5), causal attention, the output
head tied to the token embedding (lm_head = wte transposed), mean cross-entropy, and AdamW
(lr 1e-3, betas 0.9/0.99, eps 1e-8, weight decay 0.1 on the 2-D matrices, 0 on biases and
LayerNorm gains). The twin is built from tinyllm's initial weights (GPT-2 names; tinyllm stores
Linear weights (in, out) as GPT-2's Conv1D, torch.nn.Linear (out, in)), and both engines draw
the same batches from np.random.default_rng(0), so the same computation is timed. That is
checked first: the first step's loss of both engines must agree to 1e-4 relative (on the base
config, and in ``--check`` mode).

Configs (layers/heads/dims/context/batch, vocab 65) and the targets for tinyllm / PyTorch:

    small   2/4/64/32/8       <= 1.5x
    base    4/4/128/64/16     <= 1.0x
    large   6/6/384/256/16    <= 1.0x
    preset  4/4/128/64/12     -        (the shakespeare-char preset, as benchmarks/gpt_step.py)

and with ``--backend cupy`` (tinyllm on CuPy / PyTorch CUDA): large <= 1.5x.

On a machine with more than one core (and the numpy backend) tinyllm is timed twice: in one
process ("tinyllm", OpenBLAS on all cores for the GEMMs, everything else on one), and
data-parallel over one rank per core ("tinyllm-dp": what ``tinyllm train`` runs by default,
``tinyllm.parallel.DataParallel`` on ranks started by ``tinyllm.distributed.launch``). Every rank
builds the same seeded model and draws the same batch stream; each runs forward and backward on
its rows of the global batch, the ranks sum their gradients in rank order through shared memory
and scale by 1 / ranks, and every rank then steps its own AdamW on that same averaged gradient,
so it computes the one-process step (to float rounding: the loss is the ranks' mean losses' mean).
Rank 0's time cap (below) is agreed by every rank (``comm.agree``): all stop at one step. The
table gives both ratios; "met" takes the better one. PyTorch runs as the issue specifies, one
process with ``torch.set_num_threads(2)``.

How: the engines never share a process (their thread pools, OpenBLAS/Numba against
PyTorch's OpenMP, slow each other down). The parent spawns
``python benchmarks/train_step.py --worker ENGINE --config NAME --steps N`` one after
the other, alternating which engine goes first, for ``--rounds`` rounds. Each worker builds the
model, runs a few warm-up steps (Numba compilation, first allocations, PyTorch's lazy init),
then times N steps one by one and prints one JSON line: the median ms/step, the losses, and its
peak RSS (``resource.getrusage``; "step delta" is that peak minus the RSS just before the first
step: activations, gradients and the AdamW moments). The parent reports the median over rounds
and the ratio. Steps scale with the config (large: 1 warm-up + 3 timed), and a worker stops
timing early once its timed steps took a few seconds (``STEPS``); if another round would take
the run past ``--budget`` (540 s), the remaining rounds are skipped, with a note. tinyllm
workers call ``tinyllm.backend.keep_freed_memory()`` first where it exists, as the CLI does.
PyTorch runs with ``torch.set_num_threads(2)`` and attention through
``F.scaled_dot_product_attention(is_causal=True)`` as nanoGPT does (``--no-torch-sdpa``: an
explicit masked softmax, the same ops as tinyllm). Without torch installed, only tinyllm is
timed.

``--backend cupy`` times tinyllm on CuPy against the twin on CUDA (no TF32 on either side): the
same weights (built on the CPU, then moved), the same batches (copied to the GPU inside the
timed step, for both), and a step ends with ``loss.item()``, which waits for the GPU, so every
timed step is the GPU's work done. Each worker also reports ``host_ms``: the time until the
step's last op was enqueued, before that wait. When host_ms is close to ms_per_step, the step is
bound by Python and kernel launches, not by the GPU. Peak memory is the GPU's (CuPy's memory
pool, torch.cuda.max_memory_reserved) rather than RSS.

``--profile`` runs one more tinyllm worker per config after the rounds, whose steps after the
first are instrumented (the timed steps never are), and splits a step into: matmul (time
inside tinyllm.ops.matmul.gemm), the forward and backward of every other op (each ``Function``
subclass's methods wrapped with timers), the optimizer (zero_grad + AdamW step), and the rest:
Python and autograd overhead (module calls, graph recording, the backward walk, gradient
accumulation). Times are exclusive: a matmul inside ``MatMul.backward`` counts as matmul, not
as the op.

The header lists the machine and library versions, so the output can be pasted into
benchmarks/RESULTS.md. Generation speed (ms/token, with and without the KV cache) is measured
separately by benchmarks/generation.py.
"""
import argparse
import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import types
from collections import defaultdict, namedtuple

import numpy as np

Config = namedtuple("Config", "n_layer n_head n_embd block_size batch_size")
VOCAB = 65
CONFIGS = {
    "small": Config(2, 4, 64, 32, 8),
    "base": Config(4, 4, 128, 64, 16),
    "large": Config(6, 6, 384, 256, 16),
    "preset": Config(4, 4, 128, 64, 12),
    "tiny": Config(1, 2, 16, 8, 2),                # tests and quick trials; not in the default run
}
DEFAULT_CONFIGS = ("small", "base", "preset", "large")
TARGETS = {"small": 1.5, "base": 1.0, "large": 1.0}
GPU_TARGETS = {"large": 1.5}                    # tinyllm on CuPy / PyTorch CUDA
# (warm-up steps, timed steps, seconds) per worker: a worker stops timing early once its timed
# steps took that long, so a slow engine (or a busy machine) cannot stretch the run unboundedly
STEPS = {"small": (5, 30, 3.0), "base": (3, 20, 4.0), "preset": (3, 20, 4.0),
         "large": (1, 3, 8.0), "tiny": (1, 5, 1.0)}
BUDGET_S = 540                  # the default run skips its last rounds rather than pass 9 minutes
LR, BETAS, EPS, WEIGHT_DECAY = 1e-3, (0.9, 0.99), 1e-8, 0.1
CHECK_CONFIG, CHECK_STEPS, CHECK_RTOL = "base", 3, 1e-4
TORCH_THREADS = 2
ENGINES = ("tinyllm", "tinyllm-dp", "torch")
VERBOSE = False                  # --verbose: one line per worker on stderr


def _cupy_pool_mb():
    import cupy
    return cupy.get_default_memory_pool().total_bytes() / 2**20


def _torch_cuda_mb():
    import torch
    return torch.cuda.max_memory_reserved() / 2**20


def _config(config):
    return CONFIGS[config] if isinstance(config, str) else Config(*config)


def _shape(cfg):
    return f"{cfg.n_layer}/{cfg.n_head}/{cfg.n_embd}/{cfg.block_size}/{cfg.batch_size}"


def _batches(cfg):
    """The batch stream both engines train on: (x, y) int64 (B, T), y shifted by one."""
    rng = np.random.default_rng(0)
    while True:
        idx = rng.integers(0, VOCAB, (cfg.batch_size, cfg.block_size + 1))
        yield np.ascontiguousarray(idx[:, :-1]), np.ascontiguousarray(idx[:, 1:])


def _tinyllm_model(cfg):
    """tinyllm's GPT at ``cfg`` with seed 0: the initial weights of both engines."""
    import tinyllm as tl
    from tinyllm.models import GPT, GPTConfig
    tl.set_default_dtype(np.float32)
    tl.manual_seed(0)
    return GPT(GPTConfig(block_size=cfg.block_size, vocab_size=VOCAB, n_layer=cfg.n_layer,
                         n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=0.0, bias=True))


def _param_groups(named_parameters):
    """AdamW groups as nanoGPT and tinyllm's CLI: decay on 2-D matrices only."""
    named = list(named_parameters)
    return [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
            {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]


def _rss_mb():
    """Current resident set size in MB (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return _peak_rss_mb()


def _peak_rss_mb():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10    # bytes / KiB


# ----------------------------------------------------------------------------------------------
# tinyllm

def _tinyllm_setup(cfg, backend="numpy"):
    import tinyllm as tl
    from tinyllm.optim import AdamW
    model = _tinyllm_model(cfg)                  # on the CPU: the same weights as the twin's
    if backend == "cupy":
        model.to("cuda")
        tl.set_backend("cupy")
    opt = AdamW(_param_groups(model.named_parameters()), lr=LR, betas=BETAS, eps=EPS,
                weight_decay=WEIGHT_DECAY)
    return model, opt


def _tinyllm_dp_rank(comm, config, steps, warmup, max_time):
    """One rank of "tinyllm-dp" (``tinyllm.distributed.launch`` runs it on every rank): the
    same seeded model, the same batch stream, the whole global batch to
    ``DataParallel.forward_backward`` (this rank's rows, then the gradients averaged over the
    ranks), then this rank's own AdamW step. Rank 0 decides the time cap; the ranks agree on
    it (``comm.agree``), so all stop after the same step. Returns rank 0's result (None on
    the others)."""
    import tinyllm as tl
    from tinyllm.parallel import DataParallel, broadcast_parameters
    freed = bool(tl.backend.keep_freed_memory())        # as tinyllm's CLI does, on every rank
    cfg = _config(config)
    model, opt = _tinyllm_setup(cfg)
    broadcast_parameters(model, comm)                   # already equal (seed 0): as the CLI
    dp = DataParallel(model, comm)

    def step(model, opt, x, y, to_device=None):
        opt.zero_grad()
        value = dp.forward_backward(x, y)               # the global batch's mean loss
        opt.step()
        return np.float64(value)                        # has .item()

    def stop(flag):
        return bool(comm.agree([float(flag) if comm.rank == 0 else 0.0])[0] > 0)

    batches = _batches(cfg)
    rss_before = _rss_mb()
    losses, times, _ = _run_steps(step, model, opt, batches, warmup, steps, max_time,
                                  stop=stop)
    if comm.rank != 0:
        return None
    out = _summary("tinyllm-dp", config, cfg, warmup, freed, times, losses, rss_before)
    out["workers"] = comm.size
    return out


def _tinyllm_step(model, opt, x, y, to_device=None):
    """One step; returns the loss as a Tensor (not yet read back: the caller times both)."""
    if to_device is not None:
        x, y = to_device(x), to_device(y)
    _, loss = model(x, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


# ----------------------------------------------------------------------------------------------
# PyTorch: a nanoGPT-style twin, loaded from tinyllm's initial weights

def build_torch_model(cfg, state, sdpa=True):
    """The PyTorch GPT for ``cfg`` with the weights of ``state`` (tinyllm's state_dict as
    NumPy arrays, GPT-2 names, Linear weights (in, out))."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    C, H, T_max = cfg.n_embd, cfg.n_head, cfg.block_size

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(C, 3 * C)
            self.c_proj = nn.Linear(C, C)
            mask = torch.triu(torch.ones(T_max, T_max, dtype=torch.bool), diagonal=1)
            self.register_buffer("mask", mask, persistent=False)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.c_attn(x).split(C, dim=2)
            q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
            if sdpa:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // H))
                att = att.masked_fill(self.mask[:T, :T], float("-inf"))
                y = F.softmax(att, dim=-1) @ v
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = nn.Linear(C, 4 * C)
            self.gelu = nn.GELU(approximate="tanh")
            self.c_proj = nn.Linear(4 * C, C)

        def forward(self, x):
            return self.c_proj(self.gelu(self.c_fc(x)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(C, eps=1e-5)
            self.attn = Attention()
            self.ln_2 = nn.LayerNorm(C, eps=1e-5)
            self.mlp = MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class TorchGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(VOCAB, C), wpe=nn.Embedding(T_max, C),
                h=nn.ModuleList([Block() for _ in range(cfg.n_layer)]),
                ln_f=nn.LayerNorm(C, eps=1e-5)))
            self.lm_head = nn.Linear(C, VOCAB, bias=False)
            self.lm_head.weight = self.transformer.wte.weight            # tied

        def forward(self, idx, targets):
            T = idx.shape[1]
            tr = self.transformer
            x = tr.wte(idx) + tr.wpe(torch.arange(T, device=idx.device))
            for block in tr.h:
                x = block(x)
            logits = self.lm_head(tr.ln_f(x))
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
            return logits, loss

    model = TorchGPT()
    own = model.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            if name == "lm_head.weight":
                continue                                                  # = wte, copied once
            value = np.asarray(value, dtype=np.float32)
            if value.ndim == 2 and name.endswith("weight") and ".c_" in name:
                value = value.T                                           # (in, out) -> (out, in)
            if own[name].shape != value.shape:
                raise ValueError(f"torch twin: {name} is {tuple(own[name].shape)}, tinyllm's "
                                 f"{value.shape}")
            own[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    missing = set(own) - set(state)
    if missing:
        raise ValueError(f"torch twin: no tinyllm weights for {sorted(missing)}")
    return model


def _torch_setup(cfg, sdpa, backend="numpy"):
    import torch
    torch.set_num_threads(TORCH_THREADS)
    tl_model = _tinyllm_model(cfg)
    state = {k: v.numpy().copy() for k, v in tl_model.state_dict().items()}
    del tl_model
    model = build_torch_model(cfg, state, sdpa)
    if backend == "cupy":
        torch.backends.cuda.matmul.allow_tf32 = False          # float32 products, as CuPy's
        torch.backends.cudnn.allow_tf32 = False
        model.to("cuda")
    model.train()
    opt = torch.optim.AdamW(_param_groups(model.named_parameters()), lr=LR, betas=BETAS,
                            eps=EPS, weight_decay=WEIGHT_DECAY)
    return model, opt


def _torch_step(model, opt, x, y, to_device=None):
    import torch
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    if to_device is not None:
        x, y = to_device(x), to_device(y)
    _, loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


# ----------------------------------------------------------------------------------------------
# tinyllm profile: exclusive time per matmul, per op method, optimizer and the rest

class _Profiler:
    """Exclusive timers: a wrapped call's time minus the wrapped calls made inside it."""

    def __init__(self):
        self.times = defaultdict(float)        # (phase, category, name) -> seconds
        self.calls = defaultdict(int)
        self.stack = []
        self.phase = "forward"

    def wrap(self, fn, category, name):
        prof = self

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            prof.stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                key = (prof.phase, category, name)
                prof.times[key] += elapsed - prof.stack.pop()
                prof.calls[key] += 1
                if prof.stack:
                    prof.stack[-1] += elapsed
        return timed


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@contextlib.contextmanager
def _instrumented(prof):
    """Wrap tinyllm's matmul kernels (wherever a tinyllm module holds them) and every
    Function subclass's own forward/backward; restore them on exit."""
    import tinyllm.ops.matmul as om
    from tinyllm.autograd.function import Function

    originals = {}
    for attr in ("gemm",):
        fn = getattr(om, attr, None)
        if callable(fn):
            originals[id(fn)] = (fn, prof.wrap(fn, "matmul", attr))
    patches = []
    for mod in list(sys.modules.values()):
        if not getattr(mod, "__name__", "").startswith("tinyllm"):
            continue
        for name, value in list(vars(mod).items()):
            hit = originals.get(id(value))
            if hit is not None and hit[0] is value:
                patches.append((mod, name, value, hit[1]))
    for cls in set(_subclasses(Function)):
        for meth in ("forward", "backward"):
            fn = cls.__dict__.get(meth)
            if isinstance(fn, types.FunctionType):
                patches.append((cls, meth, fn, prof.wrap(fn, "op", f"{cls.__name__}.{meth}")))
    try:
        for obj, name, _, wrapped in patches:
            setattr(obj, name, wrapped)
        yield
    finally:
        for obj, name, fn, _ in patches:
            setattr(obj, name, fn)


def _profile_tinyllm(model, opt, batches, steps):
    """ms/step per part, averaged over ``steps`` instrumented steps."""
    prof = _Profiler()
    phase_time = defaultdict(float)

    def phase(name, fn, *args):
        prof.phase = name
        t0 = time.perf_counter()
        out = fn(*args)
        phase_time[name] += time.perf_counter() - t0
        return out

    with _instrumented(prof):
        for _ in range(steps):
            x, y = next(batches)
            _, loss = phase("forward", model, x, y)
            phase("optimizer", opt.zero_grad)
            phase("backward", loss.backward)
            phase("optimizer", opt.step)
    ms = 1e3 / steps
    parts = defaultdict(float)
    ops = defaultdict(lambda: [0.0, 0.0, 0.0])          # op -> [forward ms, backward ms, calls]
    for (ph, category, name), sec in prof.times.items():
        parts[f"{category} {ph}"] += sec * ms
        if category == "op":
            op, meth = name.rsplit(".", 1)
            ops[op][meth == "backward"] += sec * ms
            ops[op][2] += prof.calls[(ph, category, name)] / steps
    for ph, sec in phase_time.items():
        inside = sum(v for k, v in parts.items() if k.endswith(" " + ph))
        parts[f"rest {ph}"] = sec * ms - inside
    return {"total_ms": sum(phase_time.values()) * ms, "parts": dict(parts),
            "ops": {k: v for k, v in ops.items()}}


# ----------------------------------------------------------------------------------------------
# worker

def run_worker(engine, config, steps, warmup=None, sdpa=True, profile=False, max_time=None,
               backend="numpy"):
    """Build ``engine``'s model at ``config``, run warm-up steps, then time ``steps`` steps
    (fewer once the timed ones took ``max_time`` seconds; at least one).

    Returns a dict: ms_per_step (median of the timed steps), ms (each step), losses (every
    step, warm-up included: the first is the loss at the shared initial weights), peak_rss_mb,
    step_delta_mb, and with ``profile`` (tinyllm only) the time split of extra steps. With
    ``backend="cupy"`` tinyllm runs on CuPy and torch on CUDA; host_ms (the time before the
    step's closing ``loss.item()``) and peak_gpu_mb are added. "tinyllm-dp" runs on
    ``auto_workers(batch_size)`` ranks (this process is rank 0) and adds workers, the rank
    count; its times and peak RSS are rank 0's.
    """
    if engine.startswith("tinyllm"):
        from tinyllm import kernels
        kernels.prefer_impl("auto")     # the accelerators; TINYLLM_KERNELS=numpy: the references
    if backend not in ("numpy", "cupy"):
        raise ValueError(f"backend must be 'numpy' or 'cupy', got {backend!r}")
    cfg = _config(config)
    if warmup is None:
        warmup = STEPS.get(config, (1, 0))[0] if isinstance(config, str) else 1
    freed = False
    to_device = gpu_peak_mb = None
    if engine == "tinyllm-dp":
        if backend != "numpy":
            raise ValueError("tinyllm-dp runs on the numpy backend only")
        from tinyllm.distributed import launch
        from tinyllm.parallel import auto_workers
        return launch(_tinyllm_dp_rank, auto_workers(cfg.batch_size),
                      config if isinstance(config, str) else tuple(cfg), steps, warmup,
                      max_time)
    if engine == "tinyllm":
        import tinyllm as tl
        keep = getattr(tl.backend, "keep_freed_memory", None)
        freed = bool(keep()) if keep else False          # as tinyllm's CLI does, where it can
        model, opt = _tinyllm_setup(cfg, backend)
        step = _tinyllm_step
        if backend == "cupy":
            import cupy
            to_device = cupy.asarray
            gpu_peak_mb = _cupy_pool_mb
    elif engine == "torch":
        model, opt = _torch_setup(cfg, sdpa, backend)
        step = _torch_step
        if backend == "cupy":
            def to_device(t):
                return t.to("cuda")
            gpu_peak_mb = _torch_cuda_mb
    else:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    batches = _batches(cfg)
    rss_before = _rss_mb()
    losses, times, host = _run_steps(step, model, opt, batches, warmup, steps, max_time,
                                     to_device)
    out = _summary(engine, config, cfg, warmup, freed, times, losses, rss_before, backend)
    if gpu_peak_mb is not None:
        out["host_ms"] = statistics.median(host) if host else float("nan")
        out["peak_gpu_mb"] = gpu_peak_mb()
    if profile and engine == "tinyllm":
        out["profile"] = _profile_tinyllm(model, opt, batches, max(3, min(steps, 10)))
    return out


def _run_steps(step, model, opt, batches, warmup, steps, max_time, to_device=None, stop=None):
    """``warmup`` steps, then up to ``steps`` timed ones, stopping once they took ``max_time``
    seconds; ``stop(flag)`` turns that decision into the one every rank takes (data
    parallel). Returns (losses of every step, ms of each timed step, host ms of each)."""
    losses, times, host = [], [], []
    for i in range(warmup + steps):
        x, y = next(batches)
        t0 = time.perf_counter()
        loss = step(model, opt, x, y, to_device)
        t1 = time.perf_counter()
        losses.append(loss.item())                       # waits for the GPU on cupy/CUDA
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
            host.append((t1 - t0) * 1e3)
            if max_time is not None:
                done = sum(times) >= max_time * 1e3
                if stop(done) if stop is not None else done:
                    break
    return losses, times, host


def _summary(engine, config, cfg, warmup, freed, times, losses, rss_before, backend="numpy"):
    return {"engine": engine, "config": config if isinstance(config, str) else list(cfg),
            "steps": len(times), "warmup": warmup, "keep_freed_memory": freed,
            "ms_per_step": statistics.median(times) if times else float("nan"),
            "ms": times, "losses": losses, "peak_rss_mb": _peak_rss_mb(),
            "step_delta_mb": _peak_rss_mb() - rss_before, "backend": backend}


# ----------------------------------------------------------------------------------------------
# parent

def machine_info(gpu=False):
    """CPU, core count, Python and library versions, BLAS; torch's version without importing
    it (the parent stays light). With ``gpu``: the device's name and CuPy's and torch's CUDA
    versions (this imports cupy)."""
    info = {"python": platform.python_version(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f
                                if line.startswith("model name")), platform.processor())
    except OSError:
        info["cpu"] = platform.processor() or platform.machine()
    for pkg in ("numpy", "numba", "torch"):
        try:
            info[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            info[pkg] = None
    info["blas"] = _blas_info()
    if gpu:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        info["cupy"] = cupy.__version__
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
        try:
            import torch
            info["torch_cuda"] = torch.version.cuda
        except ImportError:
            info["torch_cuda"] = None
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=repo)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "tinyllm"],
                               capture_output=True, text=True, cwd=repo)
        if rev.returncode == 0:
            info["commit"] = rev.stdout.strip() + (" + uncommitted changes in tinyllm/"
                                                   if dirty.stdout.strip() else "")
    except OSError:
        pass
    return info


def _blas_info():
    if importlib.util.find_spec("threadpoolctl") is not None:
        import threadpoolctl
        libs = [f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture')}, "
                f"{p.get('num_threads')} threads)"
                for p in threadpoolctl.threadpool_info() if p.get("user_api") == "blas"]
        if libs:
            return "; ".join(libs)
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:                  # older NumPy: no mode="dicts"
        return "unknown"


def _spawn(engine, config, steps, warmup, sdpa, profile, max_time=None, backend="numpy"):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, "--config", config,
           "--steps", str(steps), "--warmup", str(warmup), "--backend", backend]
    if max_time is not None:
        cmd += ["--max-time", str(max_time)]
    if not sdpa:
        cmd.append("--no-torch-sdpa")
    if profile:
        cmd.append("--profile")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed: {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if VERBOSE:
        print(f"    {engine:<8}{config:<8}{out['ms_per_step']:9.2f} ms/step, {out['steps']} "
              f"steps, worker {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return out


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-30)


def check(sdpa=True, config=CHECK_CONFIG, steps=CHECK_STEPS, backend="numpy"):
    """First-step losses of both engines (same weights, same batch) agree to CHECK_RTOL."""
    tl = _spawn("tinyllm", config, steps, 0, sdpa, False, backend=backend)["losses"]
    pt = _spawn("torch", config, steps, 0, sdpa, False, backend=backend)["losses"]
    rels = [_rel(a, b) for a, b in zip(tl, pt)]
    print(f"check ({config}, {backend}): loss step 1 tinyllm {tl[0]:.6f}  torch {pt[0]:.6f}  "
          f"rel {rels[0]:.1e} (<= {CHECK_RTOL:.0e}); after AdamW steps 2..{len(rels)}: "
          f"max rel {max(rels[1:], default=0.0):.1e}")
    if not rels[0] <= CHECK_RTOL:
        raise SystemExit(f"check failed: first-step losses differ by {rels[0]:.2e} relative")
    return {"config": config, "tinyllm_losses": tl, "torch_losses": pt, "rel": rels}


def _print_profile(name, timed_ms, prof):
    total = prof["total_ms"]
    parts = prof["parts"]
    print(f"\ntinyllm profile, {name} ({_shape(_config(name))}): {total:.1f} ms/step "
          f"instrumented ({timed_ms:.1f} without)")
    rows = [("matmul, forward", "matmul forward"), ("matmul, backward", "matmul backward"),
            ("other ops, forward (Function.forward)", "op forward"),
            ("other ops, backward (Function.backward)", "op backward"),
            ("optimizer (zero_grad + AdamW step)", "rest optimizer"),
            ("rest, forward (modules, graph recording)", "rest forward"),
            ("rest, backward (graph walk, grad accumulation)", "rest backward")]
    print(f"  {'part':<48}{'ms/step':>9}{'share':>7}")
    for label, key in rows:
        v = parts.get(key, 0.0)
        print(f"  {label:<48}{v:9.1f}{v / total:7.0%}")
    print(f"  {'op (exclusive of matmul)':<28}{'fwd ms':>8}{'bwd ms':>8}{'total':>8}"
          f"{'share':>7}{'calls/step':>11}")
    ops = sorted(prof["ops"].items(), key=lambda kv: -(kv[1][0] + kv[1][1]))
    for op, (f, b, n) in ops[:10]:
        print(f"  {op:<28}{f:8.2f}{b:8.2f}{f + b:8.2f}{(f + b) / total:7.0%}{n:11.0f}")
    print("  (matmul = calls of tinyllm.ops.matmul.gemm; BLAS calls an op makes itself, such as "
          "np.matmul\n   inside a fused kernel, count as that op; calls/step: forward + backward)")


def main(configs=DEFAULT_CONFIGS, rounds=5, steps=None, sdpa=True, profile=False,
         json_path=None, budget=BUDGET_S, backend="numpy"):
    t_start = time.perf_counter()
    have_torch = importlib.util.find_spec("torch") is not None
    gpu = backend == "cupy"
    info = machine_info(gpu)
    data_parallel = not gpu and os.cpu_count() and os.cpu_count() > 1
    print("GPT training step (forward + backward + AdamW), tinyllm vs PyTorch "
          f"{'CUDA' if gpu else 'CPU'}, float32")
    print(f"machine: {info['cpu']}, {info['cores']} cores; Python {info['python']}")
    if gpu:
        print(f"GPU: {info.get('gpu')}; cupy {info.get('cupy')}, torch CUDA "
              f"{info.get('torch_cuda')} (TF32 off)")
    print(f"numpy {info['numpy']} (BLAS: {info['blas']}), numba {info['numba']}, torch "
          f"{info['torch'] or 'not installed'} ({TORCH_THREADS} threads, "
          f"{'sdpa' if sdpa else 'masked softmax'} attention)")
    if "commit" in info:
        print(f"tinyllm commit {info['commit']}")
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    print(f"{rounds} rounds, engines alternating in separate processes; medians\n")
    result = {"machine": info, "rounds": rounds, "sdpa": sdpa, "backend": backend,
              "configs": {}}
    if have_torch:
        result["check"] = check(sdpa, backend=backend)
    else:
        print("torch not installed: timing tinyllm only, no loss check")
    engines = ["tinyllm"] + (["tinyllm-dp"] if data_parallel else []) + (
        ["torch"] if have_torch else [])
    runs = {(c, e): [] for c in configs for e in engines}
    done = 0
    for r in range(rounds):
        t_round = time.perf_counter()
        last = r == rounds - 1
        for c in configs:
            warm, n, max_time = STEPS[c]
            if steps:                                     # explicit --steps: no time cap
                n, max_time = steps, None
            for e in (engines if r % 2 == 0 else engines[::-1]):
                runs[(c, e)].append(_spawn(e, c, n, warm, sdpa, False, max_time, backend))
        done += 1
        now = time.perf_counter()
        print(f"  round {r + 1}/{rounds} done ({now - t_start:.0f} s)", flush=True)
        if not last and budget and now - t_start + (now - t_round) > budget:
            print(f"  stopping after {done} rounds: another would pass the {budget:.0f} s "
                  "budget (--budget)")
            break
    result["rounds_done"] = done
    profiles = {}
    if profile:                 # one more tinyllm worker per config: 1 timed step, then profiled
        for c in configs:
            warm, n, _ = STEPS[c]
            profiles[c] = _spawn("tinyllm", c, steps or n, warm, sdpa, True, 0.0,
                                 backend)["profile"]
        print(f"  profiles done ({time.perf_counter() - t_start:.0f} s)")

    mem_cols = (("host ms tl/pt", "host_ms", ".1f"), ("peak GPU MB tl/pt", "peak_gpu_mb", ".0f")) \
        if gpu else (("peak RSS MB tl/pt", "peak_rss_mb", ".0f"),
                     ("step delta MB", "step_delta_mb", ".0f"))
    dp_cols = f"{'dp ms':>8}{'ratio dp':>9}" if data_parallel else ""
    print(f"\n{'config':<8}{'L/H/C/T/B':<16}{'tinyllm ms':>11}{'torch ms':>10}{'ratio':>7}"
          f"{dp_cols}{'target':>8}{'met':>5}{'spread tl/pt':>16}{mem_cols[0][0]:>19}"
          f"{mem_cols[1][0]:>19}")
    for c in configs:
        entry = {}
        for e in engines:
            ms = [w["ms_per_step"] for w in runs[(c, e)]]
            entry[e] = {"ms_per_step": statistics.median(ms), "rounds_ms": ms,
                        "first_loss": runs[(c, e)][0]["losses"][0]}
            for key in ("peak_rss_mb", "step_delta_mb", "peak_gpu_mb"):
                if key in runs[(c, e)][0]:
                    entry[e][key] = max(w[key] for w in runs[(c, e)])
            if "host_ms" in runs[(c, e)][0]:
                entry[e]["host_ms"] = statistics.median(w["host_ms"] for w in runs[(c, e)])
        tl_ms = entry["tinyllm"]["ms_per_step"]
        pt_ms = entry["torch"]["ms_per_step"] if have_torch else float("nan")
        ratio = tl_ms / pt_ms
        target = (GPU_TARGETS if gpu else TARGETS).get(c)
        best = ratio
        dp_txt = ""
        if data_parallel:
            dp_ms = entry["tinyllm-dp"]["ms_per_step"]
            entry["ratio_dp"] = dp_ms / pt_ms
            entry["workers"] = runs[(c, "tinyllm-dp")][0].get("workers")
            if entry["workers"] and entry["workers"] > 1:     # else: the same engine again
                best = min(ratio, entry["ratio_dp"])
            ratio_dp = entry["ratio_dp"]
            dp_txt = f"{dp_ms:8.1f}{f'{ratio_dp:.2f}x':>9}"
        met = "-" if target is None or not have_torch else ("yes" if best <= target else "no")

        def spread(e):
            ms = entry[e]["rounds_ms"] if e in entry else [float("nan")]
            return (max(ms) - min(ms)) / statistics.median(ms)

        def mem(key, fmt):
            return "/".join(format(entry[e][key], fmt) if e in entry else "-"
                            for e in ("tinyllm", "torch"))

        print(f"{c:<8}{_shape(_config(c)):<16}{tl_ms:11.1f}{pt_ms:10.1f}{f'{ratio:.2f}x':>7}"
              f"{dp_txt}{f'{target:.1f}x' if target else '(none)':>8}{met:>5}"
              f"{f'{spread(engines[0]):.0%}/{spread(engines[-1]):.0%}':>16}"
              f"{mem(*mem_cols[0][1:]):>19}{mem(*mem_cols[1][1:]):>19}")
        entry.update(ratio=ratio, target=target, shape=_shape(_config(c)))
        result["configs"][c] = entry
    print("spread: (max - min) / median of the per-round medians; " + (
        "host ms: the step's time before its closing loss.item() waits for the GPU (close to "
        "the step time: bound by Python and launches); peak GPU MB: CuPy's pool / torch's "
        "reserved" if gpu else "step delta: peak RSS minus the RSS before the first step"))
    if data_parallel:
        print("dp: tinyllm data-parallel over " + ", ".join(
            f"{c} {result['configs'][c].get('workers')}" for c in configs) +
            " ranks (tinyllm.parallel, shared memory; 1: no split, left out of 'met'); "
            "peak RSS is rank 0's")
    steps_done = {c: [w["steps"] for e in engines for w in runs[(c, e)]] for c in configs}
    print("timed steps per worker: " + ", ".join(
        f"{c} {min(v)}-{max(v)}" if min(v) != max(v) else f"{c} {v[0]}"
        for c, v in steps_done.items()))
    if any(w.get("keep_freed_memory") for w in runs[(configs[0], "tinyllm")]):
        print("tinyllm workers call tinyllm.backend.keep_freed_memory() first, as its CLI does")
    for c, prof in profiles.items():
        _print_profile(c, result["configs"][c]["tinyllm"]["ms_per_step"], prof)
        result["configs"][c]["profile"] = prof
    wall = time.perf_counter() - t_start
    print(f"\ntotal wall time {wall:.0f} s")
    result["wall_s"] = wall
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
    return result


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help=f"comma-separated, from {', '.join(CONFIGS)} (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per worker (default: per config, " +
                   ", ".join(f"{k} {v[1]}" for k, v in STEPS.items()) +
                   ", each stopping early after " +
                   ", ".join(f"{v[2]:g}" for v in STEPS.values()) + " s)")
    p.add_argument("--backend", choices=["numpy", "cupy"], default="numpy",
                   help="numpy: tinyllm on the CPU vs PyTorch CPU; cupy: tinyllm on CuPy vs "
                   "PyTorch CUDA (default: %(default)s)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--verbose", action="store_true",
                   help="print each worker's result and wall time as it finishes (stderr)")
    p.add_argument("--budget", type=float, default=BUDGET_S,
                   help="seconds: skip the remaining rounds once another would pass this "
                   "(default: %(default)s; 0: no limit)")
    p.add_argument("--profile", action="store_true",
                   help="split tinyllm's step into matmul / ops / optimizer / overhead")
    p.add_argument("--check", action="store_true",
                   help="only compare the first-step losses of both engines, then exit")
    p.add_argument("--torch-sdpa", dest="sdpa", action="store_true", default=True,
                   help="PyTorch attention via F.scaled_dot_product_attention (default)")
    p.add_argument("--no-torch-sdpa", dest="sdpa", action="store_false",
                   help="PyTorch attention as an explicit masked softmax")
    p.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--config", default="base", help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--max-time", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs + [args.config] if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    args.configs = configs
    return args


if __name__ == "__main__":
    args = _parse()
    VERBOSE = args.verbose
    if args.worker:
        steps = args.steps if args.steps is not None else STEPS[args.config][1]
        out = run_worker(args.worker, args.config, steps, args.warmup, args.sdpa, args.profile,
                         args.max_time, args.backend)
        print(json.dumps(out))
    elif args.check:
        if importlib.util.find_spec("torch") is None:
            raise SystemExit("--check needs torch")
        check(args.sdpa, backend=args.backend)
    else:
        main(args.configs, args.rounds, args.steps, args.sdpa, args.profile, args.json,
             args.budget, args.backend)

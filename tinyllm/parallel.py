"""Data parallelism on one machine: the batch split across worker processes, gradients averaged.

    dp = DataParallel(model, build=partial(GPT, config), workers=2)
    for step in range(max_iters):
        x, y = get_batch(...)                       # the whole batch, (B, T)
        opt.zero_grad()
        loss = dp.forward_backward(x, y)            # a float: the batch's mean loss
        clip_grad_norm_(model.parameters(), 1.0)    # model.grad: the whole batch's gradient
        opt.step()
    dp.close()

What PyTorch's ``DistributedDataParallel`` does for a CPU run started by ``torchrun
--nproc_per_node=2`` (and Chainer's ``MultiprocessParallelUpdater``), inside one call. Why it is
here: on a small CPU the cores sit half idle during a training step. OpenBLAS spreads a GEMM over
its threads, but every op between two GEMMs (GELU, LayerNorm, the softmax rows, the residual
adds, the graph walk) runs on one core, and at the shakespeare-char preset (B=12, T=64, C=128)
a step with two BLAS threads takes 79-81 ms, and two processes that each take half the batch on
one core keep both cores busy for every op: 58-59 ms (benchmarks/gpt_step.py --workers 2, on the
2-core machine of benchmarks/RESULTS.md; 0.94x PyTorch's step in benchmarks/train_step.py).

How it works:
- ``workers`` = W processes in all: this one (rank 0, which owns the model and the optimizer) and
  W - 1 spawned workers, each holding a replica built by ``build()``.
- Every parameter lives in one block of shared memory. Rank 0's parameters and every replica's
  are views of it, so the optimizer's in-place update in rank 0 is at once the weights every
  worker reads next step: no broadcast. (A parameter whose ``.data`` was replaced by a new array
  is copied back into the block before the next step.)
- A step: rank 0 sends worker r rows [r*b, (r+1)*b) of each batch array (b = B / W), runs rows
  [0, b) itself, then waits for the workers, which leave their gradients in shared blocks. With
  L_r slice r's mean loss, the batch's mean loss is L = (L_0 + ... + L_{W-1}) / W (equal
  slices), so its gradient is

      g = g_0 / W + g_1 / W + ... + g_{W-1} / W        g_r = dL_r/dw

  Each rank seeds its backward with dL/dL_r = 1/W (instead of 1), and rank 0 adds the workers'
  g_r / W into its ``.grad`` in that fixed order: the same W gives the same bits on every run.
  (W = 2 scales by an exact power of two.) A different W rounds differently (the sums run in
  another order), so runs with 1 and 2 workers agree to float32 rounding at the first step and
  drift apart slowly after (the preset's evaluations after 2000 steps agree to 4 decimals).
- Dropout: each worker draws from its own generator, seeded from (seed, rank), and its state
  travels with checkpoints (``rng_states``), so a resumed run continues the same masks.
- BLAS threads: with W processes on ``available_cores()`` cores each gets cores // W BLAS threads
  (threadpoolctl in this process, OPENBLAS_NUM_THREADS and friends in the workers).

What the workers follow, and what not:
- They follow rank 0's weights (every step), which parameters are frozen (``requires_grad``,
  sent with every step) and the top-level ``model.training`` flag (a submodule that rank 0 keeps
  in another mode is not followed). A parameter that no rank's loss reaches keeps ``grad=None``.
- They do not follow: buffers (built by ``build()``; loading other buffers into rank 0 does not
  reach them), hooks, anomaly mode, or a model whose parameters were replaced, added or
  reshaped after ``DataParallel`` was built (that raises, naming the parameter).
- Slices are weighted equally: ``loss_fn`` must return the mean over its rows, each row
  counting the same. Targets masked with an ``ignore_index`` that vary per row break that (the
  batch's mean is then not the mean of the slice means).
- A worker's error reaches rank 0 with its traceback, after rank 0's own backward: rank 0's
  ``.grad`` then holds its slice's share only (``zero_grad`` before retrying).
- Rank 0 limits its BLAS threads (threadpoolctl), not Numba's: tinyllm's kernels run serially
  below ``parallel_min_elements()``, far above the sizes of a step. The core count is the CPU
  affinity capped by a cgroup CPU quota (``available_cores``).
- A Ctrl-C during a step is handled by rank 0; the workers finish their slice, and their
  replies are read and dropped before the next command. (A Ctrl-C that lands inside a pipe
  read itself, a window of microseconds, can leave the pipe mid-message: start a new one.
  ``in_exchange`` says whether a call was cut short between its first message and its last
  reply. ``tinyllm train`` defers the first Ctrl-C to the end of the step, so only a second
  one can, and it writes no checkpoint from there.)

Workers are started with the 'spawn' method: a script that creates a ``DataParallel`` needs the
usual ``if __name__ == "__main__":`` guard (the CLI has one). They ignore Ctrl-C (rank 0 handles
it, saves a checkpoint, and stops them) and exit when rank 0 does. NumPy backend only.
"""
import math
import multiprocessing
import os
import pickle
import signal
import threading
import traceback
from pathlib import Path

import numpy as np

from tinyllm import backend
from tinyllm.autograd.grad_mode import no_grad
from tinyllm import dispatch

_ALIGN = 64                    # bytes: each parameter starts on a cache line
_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def available_cores(cgroup_root="/sys/fs/cgroup"):
    """The cores this process may use: its CPU affinity (where the OS has one), capped by a
    cgroup CPU quota (a container's ``--cpus``), rounded up, as loky and the JVM count them.
    Without the cap a 2-CPU container on a 64-core host would start 64 processes that share
    two CPUs' worth of time. Like loky, it reads the cgroup at the mount root, which is the
    container's own under a cgroup namespace (Docker's and Kubernetes' default on cgroup v2);
    a quota set on a nested or parent cgroup without a namespace is not seen."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:                      # macOS, Windows
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def _cgroup_cpu_quota(root):
    """CPUs' worth of time per period granted to this cgroup, or None (no quota, no cgroups):
    cgroup v2's ``cpu.max`` ("<quota> <period>" or "max <period>"), else v1's
    ``cpu/cpu.cfs_quota_us`` / ``cpu/cpu.cfs_period_us`` (quota -1: none)."""
    for files in (("cpu.max",), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us"),
                  ("cpu,cpuacct/cpu.cfs_quota_us", "cpu,cpuacct/cpu.cfs_period_us")):
        try:
            fields = " ".join(Path(root, f).read_text() for f in files).split()
        except OSError:
            continue
        if len(fields) != 2 or fields[0] in ("max", "-1"):
            return None
        try:
            quota, period = int(fields[0]), int(fields[1])
        except ValueError:
            return None
        return quota / period if quota > 0 and period > 0 else None
    return None


def auto_workers(batch_size, cores=None):
    """The largest W <= cores that divides ``batch_size`` (1 when only 1 does)."""
    cores = available_cores() if cores is None else cores
    return max(w for w in range(1, max(1, min(cores, batch_size)) + 1) if batch_size % w == 0)


def model_loss(model, *arrays):
    """The default ``loss_fn``: ``model(*arrays)``, whose last output is the loss when it returns a
    tuple (GPT's ``(logits, loss)``, as nanoGPT's)."""
    out = model(*arrays)
    return out[-1] if isinstance(out, tuple) else out


def _layout(model):
    """[(name, shape, dtype, offset)] of every parameter in one aligned block, and its bytes."""
    entries, offset = [], 0
    for name, p in model.named_parameters():
        data = p.data
        if not isinstance(data, np.ndarray):
            raise TypeError(f"DataParallel: parameter {name!r} is a {type(data).__name__}, "
                            f"expected a NumPy array (the workers share host memory; NumPy "
                            f"backend only)")
        entries.append((name, tuple(data.shape), data.dtype.str, offset))
        offset += -(-data.nbytes // _ALIGN) * _ALIGN
    return entries, max(offset, _ALIGN)


def _views(buffer, layout):
    """NumPy arrays over ``buffer`` (a shared ctypes array), one per layout entry."""
    raw = np.frombuffer(buffer, dtype=np.uint8)
    views = []
    for _, shape, dtype, offset in layout:
        dtype = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64))
        views.append(raw[offset:offset + n * dtype.itemsize].view(dtype).reshape(shape))
    return views


def _check_replica(model, layout):
    """The replica built by a worker must have rank 0's parameters: names, shapes, dtypes."""
    own = [(name, tuple(p.data.shape), p.data.dtype.str) for name, p in model.named_parameters()]
    want = [entry[:3] for entry in layout]
    if own != want:
        diff = next((f"{w} vs {o}" for w, o in zip(want, own) if w != o),
                    f"{len(want)} vs {len(own)} parameters")
        raise RuntimeError(f"DataParallel: build() made a model whose parameters differ from "
                           f"rank 0's (rank 0 vs worker: {diff})")


class DataParallel:
    """Split each batch over ``workers`` processes; see the module docstring.

    Args:
        model: the model rank 0 trains (its parameters move into shared memory, values kept).
        build: a picklable callable with no arguments that returns a model with the same
            parameters (names, shapes, dtypes), e.g. ``functools.partial(GPT, config)``; each
            worker calls it once. Its weights are replaced by the shared ones.
        workers: W, processes in all (rank 0 included); 1 runs everything in this process.
        loss_fn: picklable ``loss_fn(model, *arrays) -> loss`` (a scalar Tensor, the mean over
            the rows it was given); default ``model_loss``.
        seed: seeds the workers' generators (dropout), one stream per rank.
        blas_threads: BLAS threads per process; default ``available_cores() // W`` (at least 1).
    """

    def __init__(self, model, build=None, workers=1, loss_fn=model_loss, seed=0,
                 blas_threads=None):
        if int(workers) != workers or workers < 1:
            raise ValueError(f"DataParallel: workers must be an int >= 1, got {workers!r}")
        if workers > 1 and build is None:
            raise ValueError("DataParallel: workers > 1 needs build=, a picklable callable "
                             "that returns a replica of the model")
        if workers > 1 and backend.get_backend() != "numpy":
            raise ValueError(f"DataParallel: workers={workers} needs the numpy backend, the "
                             f"backend is {backend.get_backend()!r} (use workers=1 on a GPU)")
        self.model, self.loss_fn, self.workers = model, loss_fn, int(workers)
        # True from a call's first message to the workers until it has read their last reply:
        # an exception in between (a KeyboardInterrupt) may have cut a pipe message
        self.in_exchange = False
        self._procs, self._conns, self._pending = [], [], []
        self._limits, self._closed = None, False
        if self.workers == 1:
            return
        self.layout, nbytes = _layout(model)
        self._params = list(model.parameters())
        ctx = multiprocessing.get_context("spawn")
        self._pbuf = ctx.RawArray("b", nbytes)
        self._gbufs = [ctx.RawArray("b", nbytes) for _ in range(self.workers - 1)]
        self._pviews = _views(self._pbuf, self.layout)
        self._gviews = [_views(g, self.layout) for g in self._gbufs]
        self._sync_params()
        threads = blas_threads or max(1, available_cores() // self.workers)
        self._limit_blas(threads)
        settings = {"dtype": np.dtype(backend.get_default_dtype()).str,
                    "kernels": dispatch.get_impl(), "seed": seed,
                    "workers": self.workers}
        # pickled here, unpickled inside the worker's error handling: a build that cannot be
        # imported there comes back as a traceback, not as "exited with code 1"
        callables = pickle.dumps((build, loss_fn))
        saved = {k: os.environ.get(k) for k in _BLAS_ENV}
        # the spawned interpreters inherit SIG_IGN: a Ctrl-C during their imports is rank 0's
        sigint = signal.getsignal(signal.SIGINT) if _main_thread() else None
        try:
            for k in _BLAS_ENV:                 # read by the workers' BLAS and Numba at import
                os.environ[k] = str(threads)
            if sigint is not None:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            for rank in range(1, self.workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, name=f"tinyllm-dp-{rank}", daemon=True,
                                   args=(rank, callables, self.layout, self._pbuf,
                                         self._gbufs[rank - 1], child, settings))
                proc.start()
                child.close()
                self._procs.append(proc)
                self._conns.append(parent)
                self._pending.append(1)          # the worker reports once it is ready
        except BaseException:
            self.close()
            raise
        finally:
            if sigint is not None:
                signal.signal(signal.SIGINT, sigint)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    # ------------------------------------------------------------------------------------------
    # the step

    def forward_backward(self, *arrays, before_backward=None):
        """Loss and gradient of the whole batch: returns the mean loss (a float) and leaves the
        gradient in the model's ``.grad`` (accumulated as ``loss.backward()`` would, after the
        caller's ``zero_grad``). ``before_backward(loss)`` sees rank 0's loss Tensor (its slice
        only) before the backward walk frees the graph."""
        rows = self._start("grad", arrays)
        loss = self.loss_fn(self.model, *rows)
        value = loss.item()
        if before_backward is not None:
            before_backward(loss)
        loss.backward(_seed(loss, self.workers))       # g_0 / W
        del loss
        if self.workers == 1:
            return value
        replies = self._gather()
        self._average_grads([got for _, got in replies])
        self.in_exchange = False
        return sum([value] + [v for v, _ in replies]) / self.workers

    def loss(self, *arrays):
        """The batch's mean loss (a float), no gradient: evaluation split the same way. Runs in
        the model's current mode (``model.eval()`` for evaluation)."""
        rows = self._start("loss", arrays)
        with no_grad():
            value = self.loss_fn(self.model, *rows).item()
        if self.workers == 1:
            return value
        values = self._gather()
        self.in_exchange = False
        return sum([value] + values) / self.workers

    def _start(self, cmd, arrays):
        """Send each worker its rows of ``arrays``; return rank 0's (all of them when W = 1)."""
        if self.workers == 1:
            return arrays
        self._sync_params()
        b = self._slice_rows(arrays, "forward_backward" if cmd == "grad" else "loss")
        self._send_all(cmd, arrays, b)
        return tuple(a[:b] for a in arrays)

    def _slice_rows(self, arrays, op):
        if not arrays:
            raise ValueError(f"DataParallel.{op}: no arrays given")
        rows = {np.shape(a)[0] if np.ndim(a) else None for a in arrays}
        n = rows.pop() if len(rows) == 1 else None
        if n is None or n % self.workers:
            shapes = ", ".join(str(np.shape(a)) for a in arrays)
            raise ValueError(f"DataParallel.{op}: got arrays of shapes {shapes}; expected the "
                             f"same number of rows in each, divisible by workers="
                             f"{self.workers}")
        return n // self.workers

    def _send_all(self, cmd, arrays, b):
        self._drain()
        training = bool(getattr(self.model, "training", True))
        mask = [p.requires_grad for p in self._params]
        for rank in range(1, self.workers):
            rows = tuple(np.ascontiguousarray(a[rank * b:(rank + 1) * b]) for a in arrays)
            self._send(rank, (cmd, rows, training, mask))

    def _average_grads(self, got):
        """Add the workers' g_r / W into rank 0's ``.grad`` (which holds g_0 / W), rank order.
        ``got[r - 1][i]``: worker r's backward reached parameter i (a parameter no rank's loss
        reached keeps ``grad = None``, as after one process's backward)."""
        for i, p in enumerate(self._params):
            if not p.requires_grad:
                continue
            g = p.grad
            for views, reached in zip(self._gviews, got):
                if not reached[i]:
                    continue
                if g is None:
                    g = views[i].copy()                 # the block is rewritten next step
                elif g.flags.writeable:
                    g += views[i]
                else:                                   # e.g. a broadcast view
                    g = g + views[i]
            p.grad = g

    def _sync_params(self):
        """Point rank 0's parameters at the shared block, copying any whose ``.data`` was
        replaced; refuse a model whose parameters changed (added, removed, another Parameter
        object, another shape or dtype), which the workers' replicas could not follow."""
        if self.workers == 1:
            return
        if self._closed:
            raise RuntimeError("DataParallel: used after close()")
        params = list(self.model.parameters())
        if len(params) != len(self._params) or any(
                p is not q for p, q in zip(params, self._params)):
            raise RuntimeError("DataParallel: the model's parameters changed after "
                               "DataParallel was built (a Parameter added, removed or "
                               "replaced); build a new DataParallel")
        for p, view, (name, shape, dtype, _) in zip(self._params, self._pviews, self.layout):
            if p.data is view:
                continue
            got = getattr(p.data, "shape", None), getattr(p.data, "dtype", None)
            if not isinstance(p.data, np.ndarray) or got != (view.shape, view.dtype):
                raise RuntimeError(f"DataParallel: parameter {name!r} is now "
                                   f"{type(p.data).__name__} {got[0]} {got[1]}, expected a "
                                   f"NumPy array of shape {shape} and dtype "
                                   f"{np.dtype(dtype)} (as when DataParallel was built)")
            np.copyto(view, p.data)
            p.data = view

    # ------------------------------------------------------------------------------------------
    # random generators (for checkpoints)

    def rng_states(self):
        """The workers' generator states (JSON-ready), rank 1 first; [] with one worker."""
        self._drain()
        for rank in range(1, self.workers):
            self._send(rank, ("rng_get", None, None, None))
        states = self._gather()
        self.in_exchange = False
        return states

    def set_rng_states(self, states):
        """Restore what ``rng_states`` returned (a resumed run's dropout masks continue)."""
        if len(states) != self.workers - 1:
            raise ValueError(f"DataParallel.set_rng_states: got {len(states)} states for "
                             f"{self.workers - 1} workers (the checkpoint was saved with "
                             f"{len(states) + 1} workers)")
        self._drain()
        for rank, state in enumerate(states, start=1):
            self._send(rank, ("rng_set", state, None, None))
        self._gather()
        self.in_exchange = False

    # ------------------------------------------------------------------------------------------
    # messages

    def _send(self, rank, msg):
        self.in_exchange = True
        try:
            self._conns[rank - 1].send(msg)
        except (BrokenPipeError, OSError):
            self._dead(rank)
        self._pending[rank - 1] += 1

    def _recv(self, rank):
        try:
            reply = self._conns[rank - 1].recv()
        except (EOFError, OSError):
            self._dead(rank)
        self._pending[rank - 1] -= 1
        if reply[0] == "error":
            raise RuntimeError(f"DataParallel: worker {rank} failed:\n{reply[1]}")
        return reply[1]

    def _gather(self):
        """One reply per worker, rank order (``_send_all`` drained older ones first)."""
        return [self._recv(rank) for rank in range(1, self.workers)]

    def _drain(self):
        if self._closed:
            raise RuntimeError("DataParallel: used after close()")
        for rank in range(1, self.workers):
            while self._pending[rank - 1]:
                self._recv(rank)

    def _dead(self, rank):
        proc = self._procs[rank - 1]
        proc.join(timeout=5)
        raise RuntimeError(f"DataParallel: worker {rank} (pid {proc.pid}) exited with code "
                           f"{proc.exitcode}")

    def _limit_blas(self, threads):
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:                          # threadpoolctl is in setup.cfg; be lenient
            return
        self._limits = threadpool_limits(limits=threads, user_api="blas")

    def close(self):
        """Stop the workers and give this process its BLAS threads back. Idempotent."""
        self._closed = self.workers > 1
        for conn in self._conns:
            try:
                conn.send(("stop", None, None, None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._procs, self._conns, self._pending = [], [], []
        if self._limits is not None:
            self._limits.restore_original_limits()
            self._limits = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _seed(loss, workers):
    """dL/dL_r = 1/W, the backward's seed for slice r's mean loss L_r in the batch's mean L
    (None for one process: ``backward()``'s default 1)."""
    if workers == 1:
        return None
    return np.full(loss.shape, 1.0 / workers, dtype=loss.dtype)


def _main_thread():
    return threading.current_thread() is threading.main_thread()


def _worker(rank, callables, layout, pbuf, gbuf, conn, settings):
    """A worker's life: build the replica, point it at the shared weights, then answer
    commands until "stop" or until rank 0 goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # Ctrl-C is rank 0's to handle
    try:
        backend.keep_freed_memory()
        backend.set_default_dtype(np.dtype(settings["dtype"]))
        dispatch.set_impl(settings["kernels"])
        build, loss_fn = pickle.loads(callables)
        model = build()
        _check_replica(model, layout)
        params = list(model.parameters())
        for p, view in zip(params, _views(pbuf, layout)):
            p.data = view
        gviews = _views(gbuf, layout)
        backend.manual_seed(settings["seed"])
        world = settings["workers"]
        # this rank's dropout stream: a spawn key of its own, apart from every list-seeded one
        rng = np.random.default_rng(np.random.SeedSequence(settings["seed"], spawn_key=(2, rank)))
        backend.set_generator_states({"cpu": rng.bit_generator.state})
        conn.send(("ok", None))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            cmd, payload, training, mask = conn.recv()
        except (EOFError, OSError):
            return
        if cmd == "stop":
            return
        try:
            if cmd == "grad":
                model.train(training)
                for p, trainable in zip(params, mask):      # rank 0's freezing, this step
                    p.requires_grad = trainable
                    p.grad = None
                loss = loss_fn(model, *payload)
                value = loss.item()
                loss.backward(_seed(loss, world))                  # g_r / W
                del loss
                got = []
                for p, g in zip(params, gviews):
                    got.append(p.grad is not None)
                    if p.grad is not None:
                        np.copyto(g, p.grad)
                    p.grad = None
                reply = (value, got)
            elif cmd == "loss":
                model.train(training)
                with no_grad():
                    reply = loss_fn(model, *payload).item()
            elif cmd == "rng_get":
                reply = backend.generator_states().get("cpu")
            elif cmd == "rng_set":
                backend.set_generator_states({"cpu": payload})
                reply = None
            else:
                raise ValueError(f"unknown command {cmd!r}")
            conn.send(("ok", reply))
        except BaseException:
            conn.send(("error", traceback.format_exc()))

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
the second BLAS thread shortens a step by only 7% (66.6 ms with two threads, 71.8 ms with one,
on the 2-core machine of benchmarks/RESULTS.md). Two processes that each take half the batch
keep both cores busy for every op: the step takes ~37 ms.

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
  drift apart slowly after (at the preset, 4 decimals of the loss still agree after 300 steps).
- Dropout: each worker draws from its own generator, seeded from (seed, rank), and its state
  travels with checkpoints (``rng_states``), so a resumed run continues the same masks.
- BLAS threads: with W processes on ``os.cpu_count()`` cores each gets cores // W BLAS threads
  (threadpoolctl in this process, OPENBLAS_NUM_THREADS and friends in the workers).

Workers are started with the 'spawn' method: a script that creates a ``DataParallel`` needs the
usual ``if __name__ == "__main__":`` guard (the CLI has one). They ignore Ctrl-C (rank 0 handles
it, saves a checkpoint, and stops them) and exit when rank 0 does. NumPy backend only.
"""
import multiprocessing
import os
import signal
import traceback

import numpy as np

from tinyllm import backend
from tinyllm.autograd.grad_mode import no_grad
from tinyllm.kernels import _numba

_ALIGN = 64                    # bytes: each parameter starts on a cache line
_BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def available_cores():
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                      # macOS, Windows
        return os.cpu_count() or 1


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
        self._procs, self._conns, self._pending = [], [], []
        self._limits = None
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
                    "kernels": _numba.get_impl(), "seed": seed,
                    "workers": self.workers}
        saved = {k: os.environ.get(k) for k in _BLAS_ENV}
        try:
            for k in _BLAS_ENV:                 # read by the workers' BLAS and Numba at import
                os.environ[k] = str(threads)
            for rank in range(1, self.workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, name=f"tinyllm-dp-{rank}", daemon=True,
                                   args=(rank, build, loss_fn, self.layout, self._pbuf,
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
        if self.workers == 1:
            loss = self.loss_fn(self.model, *arrays)
            value = loss.item()
            if before_backward is not None:
                before_backward(loss)
            loss.backward()
            return value
        b = self._slice_rows(arrays, "forward_backward")
        self._sync_params()
        self._send_all("grad", arrays, b)
        loss = self.loss_fn(self.model, *(a[:b] for a in arrays))
        values = [loss.item()]
        if before_backward is not None:
            before_backward(loss)
        loss.backward(self._seed(loss))                # g_0 / W
        del loss
        values += self._gather()
        self._average_grads()
        return sum(values) / self.workers

    def loss(self, *arrays):
        """The batch's mean loss (a float), no gradient: evaluation split the same way. Runs in
        the model's current mode (``model.eval()`` for evaluation)."""
        if self.workers == 1:
            with no_grad():
                return self.loss_fn(self.model, *arrays).item()
        b = self._slice_rows(arrays, "loss")
        self._sync_params()
        self._send_all("loss", arrays, b)
        with no_grad():
            values = [self.loss_fn(self.model, *(a[:b] for a in arrays)).item()]
        values += self._gather()
        return sum(values) / self.workers

    def _seed(self, loss):
        """dL/dloss_r = 1/W: the backward of slice r's mean loss scaled for the batch's mean."""
        return np.full(loss.shape, 1.0 / self.workers, dtype=loss.dtype)

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
        for rank in range(1, self.workers):
            rows = tuple(np.ascontiguousarray(a[rank * b:(rank + 1) * b]) for a in arrays)
            self._send(rank, (cmd, rows, training))

    def _average_grads(self):
        """Add the workers' g_r / W into rank 0's ``.grad`` (which holds g_0 / W), rank order."""
        for i, p in enumerate(self._params):
            if not p.requires_grad:
                continue
            g = p.grad
            for views in self._gviews:
                if g is None:
                    g = views[i].copy()                 # the block is rewritten next step
                elif g.flags.writeable:
                    g += views[i]
                else:                                   # e.g. a broadcast view
                    g = g + views[i]
            p.grad = g

    def _sync_params(self):
        """Point rank 0's parameters at the shared block (copying any that were replaced)."""
        for p, view in zip(self._params, self._pviews):
            if p.data is not view:
                np.copyto(view, p.data)
                p.data = view

    # ------------------------------------------------------------------------------------------
    # random generators (for checkpoints)

    def rng_states(self):
        """The workers' generator states (JSON-ready), rank 1 first; [] with one worker."""
        self._drain()
        for rank in range(1, self.workers):
            self._send(rank, ("rng_get", None, None))
        return self._gather()

    def set_rng_states(self, states):
        """Restore what ``rng_states`` returned (a resumed run's dropout masks continue)."""
        if len(states) != self.workers - 1:
            raise ValueError(f"DataParallel.set_rng_states: got {len(states)} states for "
                             f"{self.workers - 1} workers (the checkpoint was saved with "
                             f"{len(states) + 1} workers)")
        self._drain()
        for rank, state in enumerate(states, start=1):
            self._send(rank, ("rng_set", state, None))
        self._gather()

    # ------------------------------------------------------------------------------------------
    # messages

    def _send(self, rank, msg):
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
        for rank in range(1, self.workers):
            while self._pending[rank - 1]:
                self._recv(rank)

    def _dead(self, rank):
        proc = self._procs[rank - 1]
        proc.join(timeout=1)
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
        for conn in self._conns:
            try:
                conn.send(("stop", None, None))
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


def _worker(rank, build, loss_fn, layout, pbuf, gbuf, conn, settings):
    """A worker's life: build the replica, point it at the shared weights, then answer
    commands until "stop" or until rank 0 goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # Ctrl-C is rank 0's to handle
    try:
        backend.keep_freed_memory()
        backend.set_default_dtype(np.dtype(settings["dtype"]))
        _numba.set_impl(settings["kernels"])
        model = build()
        _check_replica(model, layout)
        params = list(model.parameters())
        for p, view in zip(params, _views(pbuf, layout)):
            p.data = view
        gviews = _views(gbuf, layout)
        backend.manual_seed(settings["seed"])
        world = settings["workers"]
        rng = np.random.default_rng([settings["seed"], 2, rank])     # this rank's stream
        backend.set_generator_states({"cpu": rng.bit_generator.state})
        conn.send(("ok", None))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            cmd, payload, training = conn.recv()
        except (EOFError, OSError):
            return
        if cmd == "stop":
            return
        try:
            if cmd == "grad":
                model.train(training)
                loss = loss_fn(model, *payload)
                value = loss.item()
                for p in params:
                    p.grad = None
                loss.backward(np.full(loss.shape, 1.0 / world, dtype=loss.dtype))  # g_r / W
                del loss
                for p, g in zip(params, gviews):
                    if p.grad is None:
                        g[...] = 0
                    else:
                        np.copyto(g, p.grad)
                    p.grad = None
                reply = value
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

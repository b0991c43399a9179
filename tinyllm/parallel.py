"""Data parallelism: every rank runs the same training step on its share of the batch, and the
gradients are averaged before clipping and the update. One design for every transport.

    comm = ...                                      # tinyllm.distributed: single, shm, mpi, nccl
    dp = DataParallel(model, comm)                  # after the weights are broadcast
    for step in range(max_iters):
        x, y = get_batch(...)                       # the whole global batch (B, T), every rank
        loss = dp.forward_backward(x, y)            # this rank's rows; then the average
        clip_grad_norm_(model.parameters(), 1.0)    # the global gradient's norm, as one process
        opt.step()                                  # the same update on every rank
        opt.zero_grad()

What PyTorch's DistributedDataParallel and ChainerMN's multi-node optimizer do, written out. The
global batch of B rows is split into M micro-batches of B / M rows (``micro_batches``, M a
multiple of the rank count N; default N), and rank r takes micro-batches r M/N ... (r+1) M/N - 1.
With L_m micro-batch m's mean loss, the batch's mean loss is L = (L_0 + ... + L_{M-1}) / M
(equal rows), so its gradient is

    g = (g_0 + g_1 + ... + g_{M-1}) / M                          g_m = dL_m/dw

Each rank runs forward and ``backward()`` on its micro-batches one after another, which sums
their g_m into ``.grad`` (gradient accumulation, nanoGPT's ``gradient_accumulation_steps``),
packs every ``.grad`` into one flat buffer, and the communicator sums the buffers over the ranks
(``allreduce_``, in place); the buffer is scaled by 1/M and each ``.grad`` becomes its slice.
Every rank then holds the same g, and applies the same update to the same weights: no
parameter broadcast after the first (``broadcast_parameters``).

One process with M micro-batches (``--grad-accum M``) computes exactly what N ranks with one
micro-batch each compute: the same micro-batch gradients, added in the same order (a
deterministic communicator sums in rank order: (g_0 + g_1) + g_2 ...), scaled the same way. So
the N-rank run equals the one-process run bit for bit; MPI's fast Allreduce adds in its own
order and agrees to float rounding.

Also per step, in one small collective (``comm.agree``, float64, rank order): the sum of the
micro-batch losses (the returned loss is their mean) and which parameters any rank's backward
reached (one that none reached keeps ``grad = None``, as after one process's backward; one
reached elsewhere only gets the average with zeros here).

Dropout: micro-batch 0 draws from the process's generator (one process without accumulation is
unchanged); micro-batch m > 0 from a stream of its own, seeded by (seed, m), swapped in around
its forward and backward. A micro-batch draws the same masks whichever rank runs it, and
``rng_states`` / ``set_rng_states`` carry the streams through checkpoints, so a run resumed with
another rank count and the same M continues the same masks.

Slices are weighted equally: ``loss_fn`` must return the mean over its rows, each row counting
the same (targets masked by an ``ignore_index`` that vary per row break that).
"""
import contextlib

import numpy as np

from tinyllm import backend
from tinyllm.autograd.grad_mode import no_grad
from tinyllm.distributed import SingleCommunicator, available_cores

__all__ = ["DataParallel", "auto_workers", "available_cores", "broadcast_parameters",
           "broadcast_optimizer_state", "model_loss", "stream_state"]


def auto_workers(batch_size, cores=None):
    """The largest W <= cores that divides ``batch_size`` (1 when only 1 does)."""
    cores = available_cores() if cores is None else cores
    return max(w for w in range(1, max(1, min(cores, batch_size)) + 1) if batch_size % w == 0)


def model_loss(model, *arrays):
    """The default ``loss_fn``: ``model(*arrays)``, whose last output is the loss when it returns a
    tuple (GPT's ``(logits, loss)``, as nanoGPT's)."""
    out = model(*arrays)
    return out[-1] if isinstance(out, tuple) else out


def stream_state(seed, m):
    """The initial state of micro-batch ``m``'s dropout stream (m > 0): a PCG64 of its own,
    apart from every list-seeded generator (spawn key (2, m))."""
    seq = np.random.SeedSequence(seed, spawn_key=(2, m))
    return np.random.default_rng(seq).bit_generator.state


class DataParallel:
    """The data-parallel training step on one rank; see the module docstring.

    Args:
        model: this rank's model (the same weights on every rank: ``broadcast_parameters``).
        comm: a ``tinyllm.distributed`` communicator; default ``SingleCommunicator()``.
        micro_batches: M, the micro-batches each global batch is split into over all ranks
            (a multiple of ``comm.size``); default ``comm.size``.
        seed: seeds the dropout streams of micro-batches 1 .. M-1.
        loss_fn: ``loss_fn(model, *arrays) -> loss``, a scalar Tensor, the mean over the rows
            it was given; default ``model_loss``.
        first_step: the step number of the first call (named in timeouts).
    """

    def __init__(self, model, comm=None, micro_batches=None, seed=0, loss_fn=model_loss,
                 first_step=0):
        self.model, self.loss_fn = model, loss_fn
        self.comm = SingleCommunicator() if comm is None else comm
        size, rank = self.comm.size, self.comm.rank
        m = size if micro_batches is None else micro_batches
        if int(m) != m or m < 1 or m % size:
            raise ValueError(f"DataParallel: micro_batches must be a multiple of the "
                             f"{size} ranks, got {micro_batches!r}")
        self.micro_batches, self.seed = int(m), seed
        per = self.micro_batches // size
        self.local = range(rank * per, (rank + 1) * per)       # this rank's micro-batches
        self._streams = {i: stream_state(seed, i) for i in self.local if i > 0}
        self._buffers = {}              # dtype -> the flat gradient buffer
        self.step = first_step

    @property
    def rank(self):
        return self.comm.rank

    @property
    def size(self):
        return self.comm.size

    # ------------------------------------------------------------------------------------------
    # the step

    def forward_backward(self, *arrays, before_backward=None):
        """The global batch's mean loss (a float, the same on every rank), its gradient left
        in every ``.grad`` (after the caller's ``zero_grad``). ``arrays``: the whole global
        batch; this rank takes its micro-batches' rows. ``before_backward(loss)`` sees this
        rank's first micro-batch loss before its backward frees the graph."""
        self.comm.what = f"step {self.step}"
        rows = self._rows(arrays, "forward_backward")
        params = [p for p in self.model.parameters() if p.requires_grad]
        # gradients from before this call (no zero_grad): kept aside, added back after the
        # average (summed over ranks they would count once per rank)
        held = {i: p.grad.copy() for i, p in enumerate(params) if p.grad is not None}
        for i in held:
            params[i].grad = None
        total = 0.0
        for i, m in enumerate(self.local):
            with self._stream(m):
                loss = self.loss_fn(self.model, *(a[m * rows:(m + 1) * rows] for a in arrays))
                total += loss.item()
                if before_backward is not None and i == 0:
                    before_backward(loss)
                loss.backward()                         # adds g_m into every .grad
            del loss
        reached = [p.grad is not None for p in params]
        agreed = self.comm.agree([total, *reached])
        self._average(params, agreed[1:] > 0)
        for i, g in held.items():
            p = params[i]
            p.grad = g if p.grad is None else g + p.grad
        self.step += 1
        return float(agreed[0]) / self.micro_batches

    def loss(self, *arrays):
        """The global batch's mean loss (a float, every rank), no gradient: evaluation split
        as training is. Runs in the model's current mode (``model.eval()`` to evaluate)."""
        self.comm.what = f"an evaluation at step {self.step}"
        rows = self._rows(arrays, "loss")
        total = 0.0
        with no_grad():
            for m in self.local:
                total += self.loss_fn(self.model, *(a[m * rows:(m + 1) * rows]
                                                    for a in arrays)).item()
        return float(self.comm.agree([total])[0]) / self.micro_batches

    def _average(self, params, reached):
        """``.grad`` <- (the sum over ranks of each rank's ``.grad``) / M, through one flat
        buffer per dtype: pack, ``allreduce_``, scale, and each ``.grad`` a view of its slice."""
        groups = {}
        for p, on in zip(params, reached):
            if on:
                groups.setdefault(np.dtype(p.data.dtype), []).append(p)
        for dtype, group in groups.items():
            n = sum(p.data.size for p in group)
            buf = self._buffer(dtype, n, group[0].data)
            staged = self.comm.staging(n, dtype)        # shared memory: pack where it is read
            packed = buf if staged is None else staged
            offset = 0
            for p in group:                             # pack
                k = p.data.size
                if p.grad is None:                      # reached on another rank only
                    packed[offset:offset + k] = 0
                else:
                    packed[offset:offset + k] = p.grad.reshape(-1)
                offset += k
            self.comm.allreduce_(packed, out=buf)       # the sum over the ranks
            if self.micro_batches > 1:
                buf *= 1.0 / self.micro_batches
            offset = 0
            for p in group:                             # unpack: views of the buffer
                k = p.data.size
                p.grad = buf[offset:offset + k].reshape(p.data.shape)
                offset += k

    def _buffer(self, dtype, n, like):
        buf = self._buffers.get(dtype)
        if buf is None or buf.size != n:
            xp = backend.get_array_module(like)
            buf = self._buffers[dtype] = xp.empty(n, dtype=dtype)
        return buf

    def _rows(self, arrays, op):
        if not arrays:
            raise ValueError(f"DataParallel.{op}: no arrays given")
        rows = {np.shape(a)[0] if np.ndim(a) else None for a in arrays}
        n = rows.pop() if len(rows) == 1 else None
        if n is None or n % self.micro_batches:
            shapes = ", ".join(str(np.shape(a)) for a in arrays)
            raise ValueError(f"DataParallel.{op}: got arrays of shapes {shapes}; expected the "
                             f"same number of rows in each, divisible by the "
                             f"{self.micro_batches} micro-batches")
        return n // self.micro_batches

    @contextlib.contextmanager
    def _stream(self, m):
        """Micro-batch ``m``'s dropout stream in the process generator for the block."""
        if m == 0:
            yield
            return
        gen = backend.get_generator()
        saved = gen.bit_generator.state
        gen.bit_generator.state = self._streams[m]
        try:
            yield
        finally:
            self._streams[m] = gen.bit_generator.state
            gen.bit_generator.state = saved

    # ------------------------------------------------------------------------------------------
    # dropout streams (for checkpoints)

    def rng_states(self):
        """The streams of micro-batches 1 .. M-1 (JSON-ready), at rank 0 (None elsewhere): a
        collective, every rank calls it."""
        got = self.comm.gather_object({m: self._streams[m] for m in self._streams})
        if got is None:
            return None
        merged = {m: s for part in got for m, s in part.items()}
        return [merged[m] for m in range(1, self.micro_batches)]

    def set_rng_states(self, states):
        """Restore what ``rng_states`` returned (every rank passes the same list). A list for
        another M restores the streams it has; the rest start fresh."""
        for m in self._streams:
            if m - 1 < len(states):
                self._streams[m] = states[m - 1]


# ----------------------------------------------------------------------------------------------
# the start: every rank from rank 0's weights and optimizer state

def broadcast_parameters(model, comm, root=0):
    """Rank ``root``'s weights into every rank's model, in place, through one flat buffer per
    dtype. (Buffers, the causal mask and RoPE's tables, follow from the config on every rank.)"""
    if comm.size == 1:
        return
    arrays = [p.data for p in model.parameters()]
    groups = {}
    for a in arrays:
        groups.setdefault(np.dtype(a.dtype), []).append(a)
    for dtype, group in groups.items():
        xp = backend.get_array_module(group[0])
        buf = xp.concatenate([a.reshape(-1) for a in group])
        comm.bcast_(buf, root=root)
        offset = 0
        for a in group:
            a[...] = buf[offset:offset + a.size].reshape(a.shape)
            offset += a.size


def broadcast_optimizer_state(opt, comm, root=0):
    """Rank ``root``'s optimizer state (moments, step counts, hyperparameters) into every
    rank's optimizer (on resume)."""
    if comm.size == 1:
        return
    state = comm.bcast_object(opt.state_dict() if comm.rank == root else None, root=root)
    if comm.rank != root:
        opt.load_state_dict(state)

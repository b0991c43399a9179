"""The shared-memory communicator of ranks on one machine, started by
``tinyllm.distributed.launch`` (no MPI).

This is what ``tinyllm train --workers N`` runs on (``mpiexec -n N tinyllm train`` is the same
training code over ``MPICommunicator``). The transport is shared memory, written for a single
host: every rank owns a slot of an arena that all ranks map.

- ``allreduce_(buf)``: each rank copies ``buf`` into its slot (or packed it there in the first
  place: ``staging``), meets the others at a barrier, then adds the slots into ``buf`` (or
  ``out``) in rank order, (b_0 + b_1) + b_2 ..., so every rank gets the same bits, and they are
  those of one process adding the same micro-batches in order: this transport is
  deterministic by construction. It reads size x n values per rank (a ring
  allreduce moves about 2n); for the few ranks of one machine that is cheaper than a ring's
  2 (size - 1) steps. Two arenas alternate, so one barrier per collective suffices: a rank
  writes arena k % 2 at call k only after every rank reached call k - 1's barrier, so every
  rank has finished reading call k - 2, the last one to use it.
- The barrier: one counter per rank in shared memory, written under a lock (whose
  acquire/release orders the slot's writes before the counter's on every CPU), polled by the
  others. While polling, a rank checks that the others are alive (rank 0 watches its child
  processes, they watch rank 0) and, after ``timeout`` seconds, raises ``DistributedError``
  naming the ranks that did not arrive.
- Objects (``bcast_object``, ``gather_object``) are pickled over one pipe per child; a child's
  error travels the same pipe to rank 0, which raises it naming the rank.

"""
import os
import time
from multiprocessing import shared_memory

import numpy as np

from tinyllm.distributed.base import (Communicator, DistributedError, PeerStopped,
                                      _back_off, _check_root, timeout_from_env)

RUNNING, FAILED, DONE = 0, 1, 2        # a rank's state, in the control block
AGREE_MAX = 4096              # float64 values per rank in one ``agree`` (a flag per parameter)


class SharedMemoryCommunicator(Communicator):
    """One rank of ``launch``'s processes (built by ``launch``; see the module docstring)."""
    name = "shm"
    deterministic = True

    def __init__(self, rank, size, ctrl, small, lock, conns, parent_pid, procs=None,
                 timeout=None):
        self.rank, self.size = rank, size
        self.timeout = timeout_from_env() if timeout is None else float(timeout)
        self.what = "a collective"
        ctrl = np.frombuffer(ctrl, dtype=np.int64)
        self._arrive, self._state = ctrl[:size], ctrl[size:2 * size]
        self._small = np.frombuffer(small, dtype=np.float64).reshape(2, size, AGREE_MAX)
        self._lock, self._conns = lock, conns          # conns: {peer rank: Connection}
        self._parent, self._procs = parent_pid, procs or {}
        self._calls = 0                 # collectives so far: which arena, which barrier
        self._arenas, self._cap = [], 0
        self._errors = {}               # rank -> the error message it sent

    # ------------------------------------------------------------------------------------------
    # arrays

    def allreduce_(self, buf, out=None):
        flat = _flat(buf, "allreduce_")
        res = flat if out is None else _flat(out, "allreduce_")
        if self.size == 1:
            if res is not flat:
                res[...] = flat
            return buf if out is None else out
        slots = self._slots(flat)
        mine = slots[self.rank]
        if _same(mine, flat):                           # packed in place (``staging``)
            if _same(res, flat):
                raise ValueError("SharedMemoryCommunicator.allreduce_: a staged buffer needs "
                                 "out= (the others read it while the sum is written)")
        else:
            mine[...] = flat
        self._barrier("allreduce")
        np.add(slots[0], slots[1], out=res)             # (b_0 + b_1) + b_2 ...: rank order
        for r in range(2, self.size):
            res += slots[r]
        return buf if out is None else out

    def staging(self, n, dtype):
        """This rank's slot of the arena the next collective uses: pack into it, then
        ``allreduce_(staged, out)`` skips the copy in."""
        if self.size == 1:
            return None
        return self._slots(np.empty(0, dtype=dtype), n * np.dtype(dtype).itemsize)[self.rank]

    def bcast_(self, buf, root=0):
        _check_root(root, self.size)
        flat = _flat(buf, "bcast_")
        if self.size == 1:
            return buf
        slots = self._slots(flat)
        if self.rank == root:
            slots[root][...] = flat
        self._barrier("broadcast")
        if self.rank != root:
            np.copyto(flat, slots[root])
        return buf

    def agree(self, values):
        vec = np.array(values, dtype=np.float64).reshape(-1)
        if vec.size > AGREE_MAX:
            raise ValueError(f"SharedMemoryCommunicator.agree: at most {AGREE_MAX} values, "
                             f"got {vec.size}")
        if self.size == 1:
            return vec
        small = self._small[self._calls % 2]
        small[self.rank, :vec.size] = vec
        self._barrier("agree")
        out = small[0, :vec.size].copy()
        for r in range(1, self.size):
            out += small[r, :vec.size]
        return out

    def barrier(self):
        if self.size > 1:
            self._barrier("barrier")

    def _slots(self, flat, nbytes=None):
        """This call's arena as one (size, n) array of ``flat``'s dtype (``nbytes`` per rank,
        default ``flat``'s). A bigger buffer than the arenas hold makes new ones (every rank
        gets here in the same call: SPMD)."""
        nbytes = flat.nbytes if nbytes is None else nbytes
        if nbytes > self._cap:
            self._grow(max(nbytes, 2 * self._cap))
        arena = self._arenas[self._calls % 2]
        raw = np.frombuffer(arena.buf, dtype=np.uint8, count=self.size * self._cap)
        return raw.reshape(self.size, self._cap)[:, :nbytes].view(flat.dtype)

    def _grow(self, cap):
        cap = -(-cap // 64) * 64
        if self.rank == 0:
            new = [shared_memory.SharedMemory(create=True, size=self.size * cap)
                   for _ in range(2)]
            self.bcast_object([m.name for m in new])
        else:
            new = [shared_memory.SharedMemory(name=n) for n in self.bcast_object(None)]
        self._release_arenas()
        self._arenas, self._cap = new, cap

    def _release_arenas(self):
        for m in self._arenas:
            if self.rank == 0:          # first: the name goes even if a view keeps the map
                try:
                    m.unlink()
                except FileNotFoundError:
                    pass
            try:
                m.close()
            except BufferError:         # views still alive (an exception's frames hold them):
                pass                    # the mapping goes with them
        self._arenas, self._cap = [], 0

    # ------------------------------------------------------------------------------------------
    # objects, over the pipes to rank 0

    def bcast_object(self, obj, root=0):
        if root != 0:
            raise ValueError(f"SharedMemoryCommunicator.bcast_object: root must be 0, got "
                             f"{root!r}")
        if self.size == 1:
            return obj
        if self.rank == 0:
            for r in range(1, self.size):
                self._send(r, ("obj", obj))
            return obj
        return self._recv(0, "broadcast")

    def gather_object(self, obj, root=0):
        if root != 0:
            raise ValueError(f"SharedMemoryCommunicator.gather_object: root must be 0, got "
                             f"{root!r}")
        if self.size == 1:
            return [obj]
        if self.rank != 0:
            self._send(0, ("obj", obj))
            return None
        return [obj] + [self._recv(r, "gather") for r in range(1, self.size)]

    def _send(self, peer, msg):
        try:
            self._conns[peer].send(msg)
        except (BrokenPipeError, OSError):
            self._check_peers(force=True)
            raise DistributedError(f"rank {self.rank}: rank {peer} went away") from None

    def _recv(self, peer, what):
        conn, start = self._conns[peer], time.monotonic()
        while not conn.poll(0.05):
            self._check_peers(force=True)
            self._check_time(start, what, [peer])
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            self._check_peers(force=True)
            raise DistributedError(f"rank {self.rank}: rank {peer} went away") from None
        if kind == "error":
            self._raise_failed(peer, payload)
        return payload

    # ------------------------------------------------------------------------------------------
    # the barrier, and noticing dead, failed or late ranks

    def _barrier(self, what):
        self._calls += 1
        gen = self._calls
        with self._lock:                # the lock orders this rank's slot writes before it
            self._arrive[self.rank] = gen
        start, spins = time.monotonic(), 0
        while self._arrive.min() < gen:
            spins += 1
            _back_off(time.monotonic() - start)
            if spins % 256 == 0:
                self._check_peers()
                late = [r for r in range(self.size) if self._arrive[r] < gen]
                self._check_time(start, what, late)
        with self._lock:                # ... and the others' writes before this rank's reads
            pass

    def _check_peers(self, force=False):
        """Raise when another rank failed (its message, named) or died; ranks that finished
        their work cleanly are fine."""
        for r in range(self.size):
            if r != self.rank and self._state[r] == FAILED:
                self._raise_failed(r, self._errors.get(r) or self._poll_error(r))
        if self.rank == 0:
            for r, proc in self._procs.items():
                if proc.exitcode is not None and self._state[r] != DONE:
                    self._raise_failed(r, self._poll_error(r) or
                                       f"its process (pid {proc.pid}) exited with code "
                                       f"{proc.exitcode}")
        elif os.getppid() != self._parent:
            raise PeerStopped(f"rank {self.rank}: rank 0 (pid {self._parent}) went away")

    def _poll_error(self, r):
        """The error message rank ``r`` sent rank 0, if one waits in its pipe."""
        conn = self._conns.get(r)
        try:
            while conn is not None and conn.poll(0.2):
                kind, payload = conn.recv()
                if kind == "error":
                    self._errors[r] = payload
                    return payload
        except (EOFError, OSError):
            pass
        return None

    def _raise_failed(self, r, message):
        if self.rank != 0:              # rank 0 prints what failed; this one stops quietly
            raise PeerStopped(f"rank {self.rank}: stopped because rank {r} failed")
        message = (message or "it failed").rstrip()
        last = message.splitlines()[-1] if message else "it failed"
        err = DistributedError(f"rank {r} failed: {last}")
        err.details = message
        raise err

    def _check_time(self, start, what, late):
        if time.monotonic() - start > self.timeout:
            who = ", ".join(map(str, late)) or "?"
            raise DistributedError(f"rank {self.rank}: {what} in {self.what} did not complete "
                                   f"within {self.timeout:g} s: rank {who} did not arrive "
                                   f"(TINYLLM_DIST_TIMEOUT sets the limit)")

    def _set_state(self, state):
        self._state[self.rank] = state

    def close(self):
        self._release_arenas()


def _same(a, b):
    """Whether two arrays are the same memory (the same start and size)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.nbytes == b.nbytes)


def _flat(buf, op):
    if not isinstance(buf, np.ndarray) or not buf.flags.c_contiguous:
        raise TypeError(f"SharedMemoryCommunicator.{op}: expected a C-contiguous NumPy array, "
                        f"got {type(buf).__name__} (this transport shares host memory)")
    return buf.reshape(-1)

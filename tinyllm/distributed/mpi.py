"""MPI through mpi4py: ``mpiexec -n N tinyllm train ...`` on one host or several.

    comm = MPICommunicator()                    # MPI.COMM_WORLD
    comm.allreduce_(grads)                      # Iallreduce(IN_PLACE, grads, SUM)

Every collective is MPI's nonblocking one (Iallreduce, Ibcast, Isend/Irecv), polled with
``Test`` until done or until ``timeout`` seconds pass: then a ``DistributedError`` names the
collective and, where the pattern shows it, the rank that did not arrive (``agree`` and the
deterministic allreduce gather at rank 0 one message per rank, so rank 0 knows who is late).
The CLI prints it and calls ``abort``, which is ``MPI_Abort``: mpiexec stops every rank. A rank
that dies is mpiexec's to handle: hydra ends every rank and exits with the dead rank's code.

Two modes for the gradient sum: ``"fast"``, MPI's Iallreduce (its algorithm picks the order of
the additions), and ``"deterministic"``, gather to rank 0, add in rank order, broadcast: the
order one process accumulating the same micro-batches adds them in, so the run equals that
process's bit for bit. The deterministic mode moves (size - 1) buffers into rank 0 and one back
out to each rank, against about 2 (size - 1) / size buffers per rank for a ring allreduce.

mpi4py is imported here only (``pip install 'tinyllm[mpi]'``: mpi4py and the ``mpich`` wheel,
which brings ``mpiexec``); importing it initializes MPI, so nothing imports this module unless
the process was started by an MPI launcher (``launched_by_mpi``) or asks for it.
"""
import os
import pickle
import time

import numpy as np

from tinyllm.distributed.base import (Communicator, DistributedError, _back_off, _check_root,
                                      timeout_from_env)

# what MPI launchers put in each rank's environment: MPICH's hydra and Intel MPI (PMI_SIZE),
# Open MPI, MVAPICH2, Slurm's srun with PMI
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")


def launched_by_mpi():
    """The world size an MPI launcher gave this process (from its environment), or 0."""
    for key in _SIZE_VARS:
        try:
            return int(os.environ[key])
        except (KeyError, ValueError):
            continue
    return 0


def launched_rank():
    """This process's rank as an MPI launcher gave it (from its environment), or 0."""
    for key in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "PMIX_RANK"):
        try:
            return int(os.environ[key])
        except (KeyError, ValueError):
            continue
    return 0


def import_mpi():
    """``mpi4py.MPI``, or an ImportError that says how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"tinyllm.distributed: MPI needs mpi4py ({e}); install it with "
                          f"pip install 'tinyllm[mpi]' (mpi4py and the mpich wheel, which "
                          f"brings mpiexec)") from None
    return MPI


class MPICommunicator(Communicator):
    """The ranks of an MPI communicator (default ``MPI.COMM_WORLD``).

    Args:
        comm: an mpi4py communicator.
        mode: ``"fast"`` (MPI's Iallreduce) or ``"deterministic"`` (rank order; see the module
            docstring).
        timeout: seconds a collective may wait before it raises (default
            ``TINYLLM_DIST_TIMEOUT`` or 300).
    """
    name = "mpi"

    def __init__(self, comm=None, mode="fast", timeout=None):
        if mode not in ("fast", "deterministic"):
            raise ValueError(f"MPICommunicator: mode must be 'fast' or 'deterministic', got "
                             f"{mode!r}")
        self.MPI = import_mpi()
        self.comm = self.MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.deterministic = mode == "deterministic"
        self.timeout = timeout_from_env() if timeout is None else float(timeout)
        self.what = "a collective"          # named in timeouts ("the allreduce of step 17")
        self._recv = None                   # rank 0's gather buffer (deterministic mode)

    # ------------------------------------------------------------------------------------------
    # arrays

    def allreduce_(self, buf, out=None):
        _check_buffer(buf, "allreduce_")
        if out is not None and out is not buf:
            _check_buffer(out, "allreduce_")
            out[...] = buf
            buf = out
        if self.size == 1:
            return buf
        if not self.deterministic:
            self._wait([self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)],
                       "allreduce")
            return buf
        flat = buf.reshape(-1)
        if self.rank == 0:                  # b_0 + b_1 + ... in rank order
            if self._recv is None or self._recv.shape != (self.size - 1, flat.size) \
                    or self._recv.dtype != flat.dtype:
                self._recv = np.empty((self.size - 1, flat.size), dtype=flat.dtype)
            reqs = [self.comm.Irecv(self._recv[r - 1], source=r, tag=11)
                    for r in range(1, self.size)]
            self._wait(reqs, "allreduce (gather)", ranks=range(1, self.size))
            for r in range(1, self.size):
                flat += self._recv[r - 1]
        else:
            self._wait([self.comm.Isend(flat, dest=0, tag=11)], "allreduce (gather)")
        self._wait([self.comm.Ibcast(flat, root=0)], "allreduce (broadcast)")
        return buf

    def bcast_(self, buf, root=0):
        _check_root(root, self.size)
        _check_buffer(buf, "bcast_")
        if self.size > 1:
            self._wait([self.comm.Ibcast(buf.reshape(-1), root=root)], "broadcast")
        return buf

    def agree(self, values):
        """The rank-order sum of every rank's ``values`` (float64), on every rank."""
        vec = np.array(values, dtype=np.float64).reshape(-1)
        if self.size == 1:
            return vec
        if self.rank == 0:
            got = np.empty((self.size - 1, vec.size), dtype=np.float64)
            reqs = [self.comm.Irecv(got[r - 1], source=r, tag=12) for r in range(1, self.size)]
            self._wait(reqs, "agree", ranks=range(1, self.size))
            for row in got:
                vec += row
        else:
            self._wait([self.comm.Isend(vec, dest=0, tag=12)], "agree", ranks=[0])
        self._wait([self.comm.Ibcast(vec, root=0)], "agree (answer)", ranks=[0])
        return vec

    # ------------------------------------------------------------------------------------------
    # objects: pickled, then sent as bytes (a length first)

    def bcast_object(self, obj, root=0):
        _check_root(root, self.size)
        if self.size == 1:
            return obj
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if self.rank == root else b""
        n = np.array([len(data)], dtype=np.int64)
        late = None if self.rank == root else [root]    # who a late answer waits on
        self._wait([self.comm.Ibcast(n, root=root)], "broadcast", ranks=late)
        raw = (np.frombuffer(data, dtype=np.uint8).copy() if self.rank == root
               else np.empty(int(n[0]), dtype=np.uint8))
        self._wait([self.comm.Ibcast(raw, root=root)], "broadcast", ranks=late)
        return obj if self.rank == root else pickle.loads(raw.tobytes())

    def gather_object(self, obj, root=0):
        _check_root(root, self.size)
        if self.size == 1:
            return [obj]
        if self.rank != root:
            data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL),
                                 dtype=np.uint8)
            n = np.array([data.size], dtype=np.int64)
            self._wait([self.comm.Isend(n, dest=root, tag=13),
                        self.comm.Isend(data, dest=root, tag=14)], "gather", ranks=[root] * 2)
            return None
        others = [r for r in range(self.size) if r != root]
        sizes = {r: np.empty(1, dtype=np.int64) for r in others}
        self._wait([self.comm.Irecv(sizes[r], source=r, tag=13) for r in others], "gather",
                   ranks=others)
        raws = {r: np.empty(int(sizes[r][0]), dtype=np.uint8) for r in others}
        self._wait([self.comm.Irecv(raws[r], source=r, tag=14) for r in others], "gather",
                   ranks=others)
        return [obj if r == root else pickle.loads(raws[r].tobytes()) for r in range(self.size)]

    def barrier(self):
        if self.size > 1:
            self._wait([self.comm.Ibarrier()], "barrier")

    def abort(self, code=1):
        self.comm.Abort(code)

    # ------------------------------------------------------------------------------------------

    def _wait(self, reqs, what, ranks=None):
        """Poll ``reqs`` until all complete. ``ranks[i]``: the rank request i waits on (named
        when it is late; None: a collective, whose late rank MPI does not tell)."""
        pending = [i for i, r in enumerate(reqs) if not r.Test()]
        start = time.monotonic()
        while pending:
            _back_off(time.monotonic() - start)
            pending = [i for i in pending if not reqs[i].Test()]
            if pending and time.monotonic() - start > self.timeout:
                late = sorted({ranks[i] for i in pending}) if ranks is not None else []
                who = (f"rank {', '.join(map(str, late))} did not answer" if late
                       else "another rank stopped answering")
                raise DistributedError(f"rank {self.rank}: {what} in {self.what} did not "
                                       f"complete within {self.timeout:g} s: {who} "
                                       f"(TINYLLM_DIST_TIMEOUT sets the limit)")


def _check_buffer(buf, op):
    if not isinstance(buf, np.ndarray) or not buf.flags.c_contiguous:
        raise TypeError(f"MPICommunicator.{op}: expected a C-contiguous NumPy array, got "
                        f"{type(buf).__name__}"
                        f"{'' if not isinstance(buf, np.ndarray) else ' (not contiguous)'} "
                        f"(CuPy arrays go through NCCLCommunicator)")

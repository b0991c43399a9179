"""The communicator every data-parallel rank talks through, and the one for a single process.

A communicator is what ChainerMN calls one and ``torch.distributed`` a process group: ``size``
processes (ranks) that run the same program on their own share of the data and meet in
collectives, each called by every rank in the same order (SPMD):

    comm.allreduce_(buf)        # buf <- the sum of every rank's buf, in place (float arrays)
    comm.allreduce_(buf, out)   # ... into out instead
    comm.staging(n, dtype)      # an array to pack into that allreduce_ reads where it lies
    comm.bcast_(buf, root=0)    # buf <- root's buf, in place
    comm.agree(values)          # the sum of a few float64 numbers per rank, in rank order:
                                # the step's losses and its Ctrl-C flag; a rank that does not
                                # arrive within ``timeout`` seconds is named
    comm.bcast_object(obj)      # a picklable object from rank 0 (the run's setup)
    comm.gather_object(obj)     # every rank's object at rank 0 (dropout streams, checkpoints)
    comm.barrier()

Implementations: ``SingleCommunicator`` (size 1, every collective returns its input: the same
training code runs without MPI), ``tinyllm.distributed.shm.SharedMemoryCommunicator`` (processes
on one machine started by ``launch``: ``--workers``), ``tinyllm.distributed.mpi.MPICommunicator``
(mpi4py: ``mpiexec -n N tinyllm train``) and ``tinyllm.distributed.nccl.NCCLCommunicator``
(CuPy arrays on GPUs, bootstrapped over MPI).

``deterministic``: a communicator whose ``allreduce_`` sums in rank order, ((b_0 + b_1) + b_2)
..., the order one process accumulating the same micro-batches adds them in, so that N ranks
of one micro-batch each equal one process accumulating the N bit for bit. MPI's own Allreduce
(``mode="fast"``) adds in the order its algorithm picks (a tree, recursive halving) and agrees
to float rounding.
"""
import os
import time

DEFAULT_TIMEOUT = 300.0          # seconds a rank waits in a collective before naming the late


class DistributedError(RuntimeError):
    """A collective that cannot complete: a rank died, failed or stopped answering. The
    message names the rank; the CLI prints it as one line."""


class PeerStopped(DistributedError):
    """This rank stops because another rank failed (and said so): rank 0's error is the one
    to print, this one exits quietly with code 1."""


def timeout_from_env():
    """``TINYLLM_DIST_TIMEOUT`` (seconds) or ``DEFAULT_TIMEOUT``."""
    value = os.environ.get("TINYLLM_DIST_TIMEOUT", "")
    try:
        seconds = float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"TINYLLM_DIST_TIMEOUT: expected a number of seconds, got "
                         f"{value!r}") from None
    if not seconds > 0:
        raise ValueError(f"TINYLLM_DIST_TIMEOUT: expected seconds > 0, got {value!r}")
    return seconds


class Communicator:
    """The interface (see the module docstring). ``rank``, ``size``; ``name`` says which
    transport; ``deterministic`` whether ``allreduce_`` sums in rank order; ``what`` names the
    collective under way (for messages: "allreduce of step 17")."""
    name = "base"
    rank, size = 0, 1
    deterministic = True
    timeout = DEFAULT_TIMEOUT

    def allreduce_(self, buf, out=None):
        """The sum over the ranks of every rank's ``buf``, into ``out`` (default: ``buf``)."""
        raise NotImplementedError

    def staging(self, n, dtype):
        """An array of ``n`` elements to fill and pass to the next collective,
        ``allreduce_(staged, out)``, which then reads it where it lies instead of copying it
        in; or None (this transport copies nothing: use your own buffer). Collective: every
        rank asks, for the same ``n`` and ``dtype``."""
        return None

    def bcast_(self, buf, root=0):
        raise NotImplementedError

    def agree(self, values):
        raise NotImplementedError

    def bcast_object(self, obj, root=0):
        raise NotImplementedError

    def gather_object(self, obj, root=0):
        raise NotImplementedError

    def barrier(self):
        raise NotImplementedError

    def abort(self, code=1):
        """Stop every rank now (after an error on this one that the others cannot see)."""
        raise SystemExit(code)

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        mode = "deterministic" if self.deterministic else "fast"
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, {mode})"


class SingleCommunicator(Communicator):
    """One process: every collective is the identity (the sum over one rank is its own)."""
    name = "single"

    def allreduce_(self, buf, out=None):
        if out is not None and out is not buf:
            out[...] = buf
            return out
        return buf

    def bcast_(self, buf, root=0):
        _check_root(root, 1)
        return buf

    def agree(self, values):
        import numpy as np
        return np.array(values, dtype=np.float64)

    def bcast_object(self, obj, root=0):
        _check_root(root, 1)
        return obj

    def gather_object(self, obj, root=0):
        _check_root(root, 1)
        return [obj]

    def barrier(self):
        pass


def _check_root(root, size):
    if not (isinstance(root, int) and 0 <= root < size):
        raise ValueError(f"communicator: root must be a rank in [0, {size}), got {root!r}")


def _back_off(waited):
    """Spin for the first millisecond of a wait (a step's ranks arrive within one), then sleep
    50 us at a time, 1 ms after a tenth of a second (a rank saving a checkpoint, or a host with
    more ranks than cores)."""
    if waited > 1e-3:
        time.sleep(5e-5 if waited < 0.1 else 1e-3)


def local_size():
    """How many ranks of this job share this machine, from the launcher's environment (MPICH's
    hydra: MPI_LOCALNRANKS; Open MPI: OMPI_COMM_WORLD_LOCAL_SIZE; Slurm), or None."""
    for key in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE",
                "TINYLLM_LOCAL_SIZE"):
        try:
            return max(1, int(os.environ[key]))
        except (KeyError, ValueError):
            continue
    return None

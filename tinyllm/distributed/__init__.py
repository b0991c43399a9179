"""Data parallelism past one process: communicators, and launching ranks.

    from tinyllm.distributed import create_communicator
    comm = create_communicator("mpi")               # under mpiexec -n N
    dp = tinyllm.parallel.DataParallel(model, comm)  # the training step (see tinyllm.parallel)

Which communicator (ChainerMN's ``create_communicator`` names):
- ``"single"``: one process (``SingleCommunicator``); what a plain ``tinyllm train`` uses.
- ``"shm"``: ranks on this machine started by ``launch`` (``tinyllm train --workers N``),
  shared memory (``tinyllm.distributed.local``, ``tinyllm.distributed.shm``).
- ``"mpi"``: ``mpiexec -n N ...`` on one host or many (``tinyllm.distributed.mpi``, mpi4py);
  ``mode="deterministic"`` sums in rank order, bit for bit the one-process run.
- ``"nccl"``: CuPy arrays on one GPU per rank, NCCL bootstrapped over MPI
  (``tinyllm.distributed.nccl``).

``world()`` is what the CLI calls: an ``MPICommunicator`` when an MPI launcher started this
process with more than one rank, else None. mpi4py is imported only then.
"""
from tinyllm.distributed.base import (Communicator, DistributedError, PeerStopped,
                                      SingleCommunicator, local_size)
from tinyllm.distributed.mpi import launched_by_mpi, launched_rank
from tinyllm.distributed.local import available_cores, blas_threads, launch
from tinyllm.distributed.shm import SharedMemoryCommunicator

__all__ = ["Communicator", "DistributedError", "PeerStopped", "SingleCommunicator",
           "SharedMemoryCommunicator", "available_cores", "blas_threads", "create_communicator",
           "launch",
           "launched_by_mpi", "launched_rank", "local_size", "world"]


def create_communicator(kind="mpi", mode="fast", timeout=None):
    """A communicator by name: "single", "mpi" (``mode`` "fast" or "deterministic") or "nccl"
    (both over ``MPI.COMM_WORLD``). "shm" ranks come from ``launch``, which hands each its
    communicator."""
    if kind == "single":
        return SingleCommunicator()
    if kind == "mpi":
        from tinyllm.distributed.mpi import MPICommunicator
        return MPICommunicator(mode=mode, timeout=timeout)
    if kind == "nccl":
        from tinyllm.distributed.nccl import NCCLCommunicator
        return NCCLCommunicator(timeout=timeout)
    if kind == "shm":
        raise ValueError("create_communicator: 'shm' ranks are started by "
                         "tinyllm.distributed.launch(fn, n), which passes each its "
                         "communicator")
    raise ValueError(f"create_communicator: expected 'single', 'mpi' or 'nccl', got {kind!r}")


def world(mode="fast", backend="numpy", timeout=None):
    """The MPI world this process was launched into (size > 1): an ``MPICommunicator``, or an
    ``NCCLCommunicator`` for ``backend="cupy"``; None when no MPI launcher started it."""
    if launched_by_mpi() <= 1:
        return None
    if backend == "cupy":
        if mode == "deterministic":
            raise ValueError("world: mode 'deterministic' sums on the host in rank order; "
                             "CuPy arrays are summed by NCCL, in its own order")
        return create_communicator("nccl", timeout=timeout)
    return create_communicator("mpi", mode=mode, timeout=timeout)

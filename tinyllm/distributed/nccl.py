"""NCCL through CuPy: the gradient sum of data-parallel ranks that each hold one GPU.

    comm = NCCLCommunicator()                   # under mpiexec: one rank per GPU
    comm.allreduce_(grads)                      # grads: a CuPy array, summed over every rank

ChainerMN's ``PureNcclCommunicator`` pattern: MPI starts the ranks and carries the small host
data, NCCL moves the GPU arrays.

- Bootstrap: the ranks first form an ``MPICommunicator`` (``MPI.COMM_WORLD``, mode "fast").
  Each rank picks its GPU: the ``device`` argument, else its local rank on this machine
  (``MPI_LOCALRANKID`` from MPICH's hydra, ``OMPI_COMM_WORLD_LOCAL_RANK`` from Open MPI, ...)
  modulo the number of GPUs CuPy sees. Rank 0 asks NCCL for a unique id
  (``cupy.cuda.nccl.get_unique_id()``), MPI broadcasts it, and every rank joins
  ``cupy.cuda.nccl.NcclCommunicator(size, uid, rank)``.
- One GPU per rank: the arrays handed to ``allreduce_`` and ``bcast_`` are C-contiguous CuPy
  arrays (float16, float32, float64) on that rank's GPU; NumPy arrays go through
  ``MPICommunicator``.
- The collectives run on CuPy's current stream; the call then waits for the stream (so the
  caller sees the result) by polling an event until it completes or ``timeout`` seconds pass,
  when a ``DistributedError`` names the collective. NCCL does not tell which rank is late.
  ``abort`` aborts the NCCL communicator (which frees a GPU stuck in a collective) and then
  calls ``MPI_Abort``.
- ``agree``, ``bcast_object``, ``gather_object``, ``barrier``: the MPI communicator's.
- ``deterministic`` is False: NCCL picks the order of the additions (ring or tree).

Launch it like the MPI communicator, with the CuPy backend (one GPU per rank)::

    mpiexec -n 4 tinyllm train --backend cupy ...

Needs CuPy with NCCL (``pip install 'tinyllm[cuda]'`` and ``nvidia-nccl-cu12``) and mpi4py
(``pip install 'tinyllm[mpi]'``). Multi-GPU runs are untested in this project (it has no
multi-GPU machine): the tests run a size-1 NCCL communicator (NCCL with one rank) on one GPU.

CuPy is imported only when a communicator is built, through ``tinyllm.backend`` (then its
``cupy.cuda.nccl`` submodule, which ``import cupy`` does not load); importing this module
imports neither CuPy nor mpi4py.
"""
import os
import time

import numpy as np

from tinyllm import backend
from tinyllm.distributed.base import Communicator, DistributedError, _check_root

# what launchers put in each rank's environment: its rank among the ranks of this machine
# (MPICH's hydra and Intel MPI, Open MPI, MVAPICH2, Slurm)
_LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK",
                    "SLURM_LOCALID")

_NCCL_DTYPES = {np.dtype(np.float16): "NCCL_FLOAT16", np.dtype(np.float32): "NCCL_FLOAT32",
                np.dtype(np.float64): "NCCL_FLOAT64"}


def nccl_dtype(dtype, op="allreduce_"):
    """The name of the ``cupy.cuda.nccl`` constant for ``dtype`` ("NCCL_FLOAT32" for float32),
    or a TypeError naming ``op``."""
    try:
        key = np.dtype(dtype)
    except TypeError:
        key = None
    if key not in _NCCL_DTYPES:
        raise TypeError(f"NCCLCommunicator.{op}: expected a float16, float32 or float64 array, "
                        f"got dtype {dtype}")
    return _NCCL_DTYPES[key]


def local_rank_from_env(environ=None):
    """This rank's index among the ranks on its machine, from the launcher's environment, or
    None."""
    environ = os.environ if environ is None else environ
    for key in _LOCAL_RANK_VARS:
        try:
            return int(environ[key])
        except (KeyError, ValueError):
            continue
    return None


def import_nccl():
    """``(cupy, cupy.cuda.nccl)``, or a RuntimeError that says how to install what is missing."""
    try:
        cupy = backend._import_cupy()
    except RuntimeError as e:
        raise RuntimeError(f"NCCLCommunicator: {e}") from e
    try:
        nccl = backend._import_cupy_module("cuda.nccl")
    except ImportError as e:
        nccl, reason = None, e
    else:
        reason = "CuPy cannot load the NCCL library"
    if nccl is None or not getattr(nccl, "available", False):
        raise RuntimeError(f"NCCLCommunicator: CuPy has no NCCL ({reason}); install it with "
                           f"pip install nvidia-nccl-cu12 (or python -m "
                           f"cupyx.tools.install_library --library nccl --cuda 12.x)")
    return cupy, nccl


class NCCLCommunicator(Communicator):
    """The ranks of an MPI job, one GPU each, summing CuPy arrays with NCCL.

    Args:
        mpi_comm: the ``MPICommunicator`` (or another tinyllm communicator over the same ranks)
            that bootstraps NCCL and carries the host collectives; default an
            ``MPICommunicator`` over ``MPI.COMM_WORLD``, mode "fast".
        timeout: seconds a collective may wait before it raises (default the MPI
            communicator's: ``TINYLLM_DIST_TIMEOUT`` or 300).
        device: this rank's GPU (default: its local rank modulo the GPUs CuPy sees).
    """
    name = "nccl"
    deterministic = False

    def __init__(self, mpi_comm=None, timeout=None, device=None):
        if timeout is not None and not float(timeout) > 0:
            raise ValueError(f"NCCLCommunicator: timeout must be seconds > 0, got {timeout!r}")
        self._comm, self._async_check = None, True
        self._cupy, self._lib = import_nccl()     # before MPI: without CuPy, MPI stays idle
        if mpi_comm is None:
            from tinyllm.distributed.mpi import MPICommunicator
            mpi_comm = MPICommunicator(mode="fast", timeout=timeout)
        elif timeout is not None:
            mpi_comm.timeout = float(timeout)
        self.mpi = mpi_comm
        self.rank, self.size = mpi_comm.rank, mpi_comm.size
        self.device = self._pick_device(device)
        cuda = self._cupy.cuda
        cuda.Device(self.device).use()
        self._event = cuda.Event(block=False, disable_timing=True)
        saved, self.what = self.what, "the NCCL bootstrap"
        try:
            uid = self._lib.get_unique_id() if self.rank == 0 else None
            uid = self.mpi.bcast_object(uid, root=0)
        finally:
            self.what = saved
        self._comm = self._lib.NcclCommunicator(self.size, uid, self.rank)

    # ------------------------------------------------------------------------------------------
    # what and timeout are the MPI communicator's (one limit, one name in every message)

    @property
    def what(self):
        return getattr(self.mpi, "what", "a collective")

    @what.setter
    def what(self, value):
        self.mpi.what = value

    @property
    def timeout(self):
        return self.mpi.timeout

    @timeout.setter
    def timeout(self, value):
        self.mpi.timeout = float(value)

    # ------------------------------------------------------------------------------------------
    # arrays: NCCL on the current stream, then wait for it

    def allreduce_(self, buf, out=None):
        dtype = self._check_buffer(buf, "allreduce_")
        if out is None:
            out = buf
        elif out is not buf and (self._check_buffer(out, "allreduce_") != dtype
                                 or out.size != buf.size):
            raise ValueError(f"NCCLCommunicator.allreduce_: out must match buf, got "
                             f"{out.dtype} ({out.size}) for {buf.dtype} ({buf.size})")
        if buf.size == 0:                   # every rank holds the same shapes: all skip
            return out
        with buf.device:
            stream = self._cupy.cuda.get_current_stream()
            self._nccl("allreduce_").allReduce(buf.data.ptr, out.data.ptr, buf.size, dtype,
                                               self._lib.NCCL_SUM, stream.ptr)
            self._wait(stream, "allreduce")
        return out

    def bcast_(self, buf, root=0):
        _check_root(root, self.size)
        dtype = self._check_buffer(buf, "bcast_")
        if buf.size == 0:
            return buf
        with buf.device:
            stream = self._cupy.cuda.get_current_stream()
            self._nccl("bcast_").bcast(buf.data.ptr, buf.size, dtype, root, stream.ptr)
            self._wait(stream, "broadcast")
        return buf

    # ------------------------------------------------------------------------------------------
    # small host data: MPI

    def agree(self, values):
        return self.mpi.agree(values)

    def bcast_object(self, obj, root=0):
        return self.mpi.bcast_object(obj, root=root)

    def gather_object(self, obj, root=0):
        return self.mpi.gather_object(obj, root=root)

    def barrier(self):
        self.mpi.barrier()

    def abort(self, code=1):
        """Abort the NCCL communicator (a GPU waiting in a collective stops waiting), then every
        rank through MPI."""
        comm, self._comm = self._comm, None
        if comm is not None and hasattr(comm, "abort"):
            try:
                comm.abort()
            except Exception:           # an NCCL too old for ncclCommAbort: MPI_Abort still ends it
                pass
        self.mpi.abort(code)

    def close(self):
        comm, self._comm = self._comm, None
        if comm is not None and hasattr(comm, "destroy"):
            comm.destroy()

    # ------------------------------------------------------------------------------------------

    def _pick_device(self, device):
        try:
            count = int(self._cupy.cuda.runtime.getDeviceCount())
        except Exception as e:          # no driver: CUDARuntimeError
            raise RuntimeError(f"NCCLCommunicator: CuPy sees no CUDA device ({e})") from None
        if count < 1:
            raise RuntimeError("NCCLCommunicator: CuPy sees no CUDA device")
        if device is not None:
            if not (isinstance(device, (int, np.integer)) and 0 <= device < count):
                raise ValueError(f"NCCLCommunicator: device must be a GPU in [0, {count}), got "
                                 f"{device!r}")
            return int(device)
        local = local_rank_from_env()
        if local is None:
            local = self._local_rank_from_mpi()
        return local % count

    def _local_rank_from_mpi(self):
        """This rank's index among the ranks that share its memory (an MPI-3 split), for a
        launcher that does not say; the rank itself without an mpi4py communicator."""
        if self.size == 1:
            return 0
        comm, MPI = getattr(self.mpi, "comm", None), getattr(self.mpi, "MPI", None)
        if comm is None or MPI is None or not hasattr(comm, "Split_type"):
            return self.rank
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        try:
            return node.Get_rank()
        finally:
            node.Free()

    def _check_buffer(self, buf, op):
        """The NCCL dtype constant for ``buf``, or a TypeError / ValueError naming ``op``."""
        if isinstance(buf, np.ndarray):
            raise TypeError(f"NCCLCommunicator.{op}: expected a CuPy array, got a NumPy array "
                            f"(NumPy arrays go through MPICommunicator)")
        if not isinstance(buf, self._cupy.ndarray):
            raise TypeError(f"NCCLCommunicator.{op}: expected a CuPy array, got "
                            f"{type(buf).__name__}")
        if not buf.flags.c_contiguous:
            raise TypeError(f"NCCLCommunicator.{op}: expected a C-contiguous CuPy array, got "
                            f"one of shape {tuple(buf.shape)} that is not contiguous")
        if buf.device.id != self.device:
            raise ValueError(f"NCCLCommunicator.{op}: the array is on GPU {buf.device.id}, "
                             f"this rank's communicator on GPU {self.device}")
        return getattr(self._lib, nccl_dtype(buf.dtype, op))

    def _nccl(self, op):
        if self._comm is None:
            raise RuntimeError(f"NCCLCommunicator.{op}: the communicator is closed")
        return self._comm

    def _wait(self, stream, what):
        """Wait for ``stream`` (the collective just queued on it): poll an event until it
        completes, NCCL reports an error, or ``timeout`` seconds pass."""
        event = self._event
        event.record(stream)
        if event.done:
            return
        start, spins, checked = time.monotonic(), 0, time.monotonic()
        while not event.done:
            spins += 1
            if spins > 2000:                # spun ~2 ms: wait more gently
                time.sleep(1e-4 if spins < 20000 else 2e-3)
            now = time.monotonic()
            if now - checked > 0.1:         # a peer that failed shows as NCCL's async error
                checked = now
                self._check_async_error(what)
            if now - start > self.timeout and not event.done:
                raise DistributedError(f"rank {self.rank}: {what} in {self.what} did not "
                                       f"complete within {self.timeout:g} s: another rank "
                                       f"stopped answering (TINYLLM_DIST_TIMEOUT sets the "
                                       f"limit)")

    def _check_async_error(self, what):
        check = getattr(self._comm, "check_async_error", None)
        if check is None or not self._async_check:
            return
        nccl_error = getattr(self._lib, "NcclError", None)
        try:
            check()
        except Exception as e:
            # NcclError; KeyError: CuPy's NcclError has no name for the status (ncclRemoteError)
            if not (isinstance(e, KeyError) or nccl_error and isinstance(e, nccl_error)):
                self._async_check = False   # an NCCL before 2.4 cannot tell: stop asking
                return
            raise DistributedError(f"rank {self.rank}: {what} in {self.what} failed: NCCL "
                                   f"reports {type(e).__name__}: {e} (another rank may have "
                                   f"stopped)") from None

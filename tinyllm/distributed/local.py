"""Ranks on one machine without MPI: ``launch(fn, n)`` runs ``fn(comm, ...)`` on n processes.

    def work(comm, x):                          # runs on every rank
        ...
        comm.allreduce_(grads)
    result = launch(work, 2, x)                 # rank 0 here, rank 1 in a spawned process

What ``tinyllm train --workers N`` runs on, as ``torch.multiprocessing.spawn`` is for PyTorch:
rank 0 is this process, ranks 1 .. n-1 are started with the 'spawn' method (a script that
calls ``launch`` needs the usual ``if __name__ == "__main__":`` guard; the CLI has one), and
the ranks talk through ``SharedMemoryCommunicator`` (``tinyllm.distributed.shm``). Children
ignore Ctrl-C: rank 0 handles it and tells them through the next collective (the training
loop's Ctrl-C check is one). Each rank gets cores // n BLAS threads.
"""
import contextlib
import math
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from tinyllm import backend, dispatch
from tinyllm.distributed.base import PeerStopped, local_size, timeout_from_env
from tinyllm.distributed.shm import (AGREE_MAX, DONE, FAILED, SharedMemoryCommunicator)

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


def launch(fn, nprocs, *args, timeout=None, threads=None):
    """Run ``fn(comm, *args)`` on ``nprocs`` ranks of this machine and return rank 0's result:
    rank 0 is this process, ranks 1.. are spawned (``fn`` and ``args`` must pickle). Each rank
    gets ``threads`` BLAS and Numba threads (default: the cores // nprocs). An exception
    in any rank stops them all; a child's comes back as a ``DistributedError`` naming its rank
    (its traceback in ``.details``)."""
    if int(nprocs) != nprocs or nprocs < 1:
        raise ValueError(f"launch: nprocs must be an int >= 1, got {nprocs!r}")
    nprocs = int(nprocs)
    timeout = timeout_from_env() if timeout is None else float(timeout)    # checked here
    threads = threads or max(1, available_cores() // nprocs)
    ctx = multiprocessing.get_context("spawn")
    ctrl = ctx.RawArray("q", 2 * nprocs)
    small = ctx.RawArray("d", 2 * nprocs * AGREE_MAX)
    lock = ctx.Lock()
    settings = {"dtype": np.dtype(backend.get_default_dtype()).str,
                "kernels": dispatch.choices(), "threads": threads,
                "memory": backend.memory_policy()}
    payload = pickle.dumps((fn, args))
    procs, conns = {}, {}
    saved = {k: os.environ.get(k) for k in _BLAS_ENV}
    main = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main else None
    comm = None
    try:
        for k in _BLAS_ENV:                     # read by the children's BLAS and Numba
            os.environ[k] = str(threads)
        if sigint is not None:                  # children start with Ctrl-C ignored
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        for rank in range(1, nprocs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_child, name=f"tinyllm-rank-{rank}", daemon=True,
                               args=(rank, nprocs, payload, ctrl, small, lock, child, settings,
                                     os.getpid(), timeout))
            proc.start()
            child.close()
            procs[rank], conns[rank] = proc, parent
    except BaseException:
        _stop(procs, conns, ctrl, nprocs)
        raise
    finally:
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    comm = SharedMemoryCommunicator(0, nprocs, ctrl, small, lock, conns, os.getpid(), procs,
                                    timeout)
    ok = False
    try:
        with blas_threads(threads):
            result = fn(comm, *args)
        ok = True
        return result
    finally:
        comm._set_state(DONE if ok else FAILED)
        try:
            _stop(procs, conns, ctrl, nprocs, wait=5 if ok else 1)
        finally:
            comm.close()


def _stop(procs, conns, ctrl, size, wait=1):
    """Wait up to ``wait`` s for the children to end (they do once their ``fn`` returns, or
    once they see rank 0's state), then terminate the rest."""
    deadline = time.monotonic() + wait
    for proc in procs.values():
        proc.join(timeout=max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.terminate()
            proc.join()
    for conn in conns.values():
        conn.close()


def blas_threads(threads=None):
    """A context in which this process uses at most ``threads`` BLAS threads (threadpoolctl;
    nothing without it). Default: this rank's share of the machine, ``available_cores()`` //
    the ranks the launcher put on it (``local_size``)."""
    if threads is None:
        threads = max(1, available_cores() // (local_size() or 1))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads, user_api="blas")


def _child(rank, size, payload, ctrl, small, lock, conn, settings, parent_pid, timeout):
    """A spawned rank: the parent's settings, then ``fn(comm, *args)``; its error goes to rank
    0 through the pipe. Stopping because another rank failed (``PeerStopped``) or with a
    ``SystemExit`` every rank raises (an agreed Ctrl-C stop) is no failure of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # Ctrl-C is rank 0's to handle
    comm = SharedMemoryCommunicator(rank, size, ctrl, small, lock, {0: conn}, parent_pid,
                                    timeout=timeout)
    code = 0
    try:
        backend.set_memory_policy(settings["memory"])
        backend.set_default_dtype(np.dtype(settings["dtype"]))
        dispatch.follow(settings["kernels"])
        fn, args = pickle.loads(payload)
        fn(comm, *args)
        comm._set_state(DONE)
    except PeerStopped:
        comm._set_state(DONE)
        code = 1
    except SystemExit as e:
        comm._set_state(DONE)
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except (BrokenPipeError, OSError):
            pass
        comm._set_state(FAILED)
        code = 1
    finally:
        comm.close()
        conn.close()
    if code:
        raise SystemExit(code)

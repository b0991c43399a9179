"""NCCLCommunicator (tinyllm/distributed/nccl.py).

Without a GPU: the error that says how to install CuPy or NCCL, the dtype table, the launcher's
local rank, and the communicator itself on a stand-in for ``cupy`` and ``cupy.cuda.nccl`` that
records what NCCL is asked (pointers, counts, dtypes, streams), with a stand-in MPI
communicator: the bootstrap, the GPU each rank picks, the argument checks, the wait on the
stream and its timeout. With CuPy, a CUDA device and mpi4py (``gpu``): a real size-1 NCCL
communicator in this process (mpi4py in one process is a size-1 world).
"""
import importlib.util
import sys
import time
import types

import numpy as np
import pytest

from tinyllm.distributed import DistributedError, SingleCommunicator, create_communicator
from tinyllm.distributed import nccl as nccl_mod
from tinyllm.distributed.nccl import NCCLCommunicator, local_rank_from_env, nccl_dtype

# ----------------------------------------------------------------------------------------------
# without CuPy


@pytest.fixture
def no_mpi(monkeypatch):
    """Fail the test if anything asks for mpi4py."""
    from tinyllm.distributed import mpi

    def refuse():
        raise AssertionError("mpi4py was asked for")
    monkeypatch.setattr(mpi, "import_mpi", refuse)


def test_without_cupy_create_communicator_says_how_to_install(monkeypatch, no_mpi):
    monkeypatch.setitem(sys.modules, "cupy", None)         # import cupy fails, GPU or not
    with pytest.raises(RuntimeError) as info:
        create_communicator("nccl", timeout=5)
    msg = str(info.value)
    assert msg.startswith("NCCLCommunicator: ")
    assert "pip install 'tinyllm[cuda]'" in msg


def test_without_nccl_in_cupy_says_how_to_install(fake_cupy, no_mpi):
    fake_cupy.nccl.available = False
    with pytest.raises(RuntimeError, match=r"NCCLCommunicator: CuPy has no NCCL .*"
                                           r"pip install nvidia-nccl-cu12"):
        NCCLCommunicator(timeout=5)


@pytest.mark.parametrize("dtype, name", [(np.float16, "NCCL_FLOAT16"),
                                         (np.float32, "NCCL_FLOAT32"),
                                         ("float64", "NCCL_FLOAT64"),
                                         (np.dtype(">f4").newbyteorder("="), "NCCL_FLOAT32")])
def test_nccl_dtype_maps_the_floats(dtype, name):
    assert nccl_dtype(dtype) == name


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex64, "object",
                                   np.uint8])
def test_nccl_dtype_refuses_the_rest_naming_the_op(dtype):
    with pytest.raises(TypeError) as info:
        nccl_dtype(dtype, "bcast_")
    assert str(info.value) == (f"NCCLCommunicator.bcast_: expected a float16, float32 or "
                               f"float64 array, got dtype {dtype}")


def test_nccl_dtype_refuses_what_is_not_a_dtype():
    with pytest.raises(TypeError, match="NCCLCommunicator.allreduce_: expected a float16"):
        nccl_dtype("not a dtype")


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"MPI_LOCALRANKID": "3"}, 3),
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "2"}, 2),
    ({"MPI_LOCALRANKID": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "5"}, 1),     # hydra's first
    ({"MPI_LOCALRANKID": "x", "SLURM_LOCALID": "4"}, 4),                  # unreadable: next
])
def test_local_rank_from_env(env, expected):
    assert local_rank_from_env(env) == expected


def test_importing_the_module_imports_neither_cupy_nor_mpi4py():
    import subprocess
    code = ("import sys, tinyllm.distributed.nccl; "
            "print('cupy' in sys.modules, 'mpi4py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False False" and out.stderr == ""


# ----------------------------------------------------------------------------------------------
# stand-ins for cupy, cupy.cuda.nccl and the MPI communicator

class FakeDevice:
    log = []

    def __init__(self, id):
        self.id = id

    def use(self):
        FakeDevice.log.append(("use", self.id))

    def __enter__(self):
        FakeDevice.log.append(("enter", self.id))
        return self

    def __exit__(self, *exc):
        FakeDevice.log.append(("exit", self.id))


class FakeArray:
    """A host array posing as a CuPy array on GPU ``device``."""

    def __init__(self, values, device=0):
        self.host = values
        self.shape, self.size, self.dtype = values.shape, values.size, values.dtype
        self.flags = values.flags
        self.data = types.SimpleNamespace(ptr=values.__array_interface__["data"][0])
        self.device = FakeDevice(device)


class FakeStream:
    ptr = 0xBEEF


class FakeEvent:
    done_after = 0          # polls of .done before it reports done; None: never

    def __init__(self, block=False, disable_timing=False):
        self.recorded, self.polls, self.since = [], 0, None

    def record(self, stream=None):
        self.recorded.append(stream)
        self.polls, self.since = 0, time.monotonic()

    @property
    def done(self):
        self.polls += 1
        if time.monotonic() - self.since > 10:      # fail, rather than hang, without a timeout
            raise AssertionError("still polled 10 s after the collective: no timeout fired")
        return FakeEvent.done_after is not None and self.polls > FakeEvent.done_after


class FakeNcclError(RuntimeError):
    pass


class FakeNcclComm:
    made = []

    def __init__(self, ndev, commId, rank):
        self.args, self.calls, self.destroyed, self.aborted = (ndev, commId, rank), [], 0, 0
        self.async_error = None
        FakeNcclComm.made.append(self)

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
        self.calls.append(("allReduce", sendbuf, recvbuf, count, datatype, op, stream))

    def bcast(self, buff, count, datatype, root, stream):
        self.calls.append(("bcast", buff, count, datatype, root, stream))

    def check_async_error(self):
        if self.async_error is not None:
            raise self.async_error

    def destroy(self):
        self.destroyed += 1

    def abort(self):
        self.aborted += 1


UID = tuple(range(-64, 64))                 # 128 bytes, like NCCL's


@pytest.fixture
def fake_cupy(monkeypatch):
    FakeDevice.log.clear()
    FakeNcclComm.made.clear()
    FakeEvent.done_after = 0
    cupy = types.ModuleType("cupy")
    cupy.ndarray = FakeArray
    cuda = types.ModuleType("cupy.cuda")
    cuda.runtime = types.SimpleNamespace(getDeviceCount=lambda: 2)
    cuda.Device, cuda.Event = FakeDevice, FakeEvent
    cuda.get_current_stream = FakeStream
    lib = types.ModuleType("cupy.cuda.nccl")
    lib.available = True
    lib.NCCL_FLOAT16, lib.NCCL_FLOAT32, lib.NCCL_FLOAT64, lib.NCCL_SUM = 6, 7, 8, 0
    lib.NcclError = FakeNcclError
    lib.get_unique_id = lambda: UID
    lib.NcclCommunicator = FakeNcclComm
    cupy.cuda, cuda.nccl = cuda, lib
    for name, mod in (("cupy", cupy), ("cupy.cuda", cuda), ("cupy.cuda.nccl", lib)):
        monkeypatch.setitem(sys.modules, name, mod)
    for key in nccl_mod._LOCAL_RANK_VARS:
        monkeypatch.delenv(key, raising=False)
    cupy.nccl = lib
    return cupy


class FakeMPI(SingleCommunicator):
    """rank ``rank`` of ``size``; bcast_object hands non-root ranks ``from_root``."""
    name = "fake-mpi"

    def __init__(self, rank=0, size=1, from_root=None):
        self.rank, self.size, self.from_root = rank, size, from_root
        self.what, self.timeout, self.log = "a collective", 300.0, []

    def bcast_object(self, obj, root=0):
        self.log.append(("bcast_object", obj, root, self.what))
        return obj if self.rank == root else self.from_root

    def gather_object(self, obj, root=0):
        self.log.append(("gather_object", obj, root))
        return [obj] + ["other"] * (self.size - 1)

    def agree(self, values):
        self.log.append(("agree", list(values)))
        return np.array(values, dtype=np.float64) * self.size

    def barrier(self):
        self.log.append(("barrier",))

    def abort(self, code=1):
        self.log.append(("abort", code))


def test_bootstrap_rank_0_makes_the_unique_id_and_broadcasts_it(fake_cupy):
    mpi = FakeMPI(rank=0, size=2)
    comm = NCCLCommunicator(mpi_comm=mpi, device=1)
    assert mpi.log == [("bcast_object", UID, 0, "the NCCL bootstrap")]
    assert FakeNcclComm.made[0].args == (2, UID, 0)
    assert comm.what == "a collective"          # the bootstrap's name is put back
    assert (comm.rank, comm.size, comm.device) == (0, 2, 1)
    assert FakeDevice.log == [("use", 1)]
    assert (comm.name, comm.deterministic) == ("nccl", False)
    assert repr(comm) == "NCCLCommunicator(rank=0, size=2, fast)"


def test_bootstrap_other_ranks_take_rank_0s_id(fake_cupy, monkeypatch):
    fake_cupy.nccl.get_unique_id = lambda: pytest.fail("only rank 0 asks NCCL for the id")
    mpi = FakeMPI(rank=1, size=2, from_root=UID)
    NCCLCommunicator(mpi_comm=mpi)
    assert mpi.log == [("bcast_object", None, 0, "the NCCL bootstrap")]
    assert FakeNcclComm.made[0].args == (2, UID, 1)


@pytest.mark.parametrize("env, rank, expected", [
    ({"MPI_LOCALRANKID": "3"}, 7, 1),             # local rank 3 of 2 GPUs: GPU 1
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "0"}, 5, 0),
    ({}, 3, 1),                                   # no launcher variable, no mpi4py: the rank
])
def test_each_rank_picks_its_local_gpu(fake_cupy, monkeypatch, env, rank, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    comm = NCCLCommunicator(mpi_comm=FakeMPI(rank=rank, size=8, from_root=UID))
    assert comm.device == expected and FakeDevice.log == [("use", expected)]


@pytest.mark.parametrize("device", [2, -1, "0", 1.0])
def test_a_device_out_of_range_is_refused(fake_cupy, device):
    with pytest.raises(ValueError, match=r"NCCLCommunicator: device must be a GPU in \[0, 2\), "
                                         rf"got {device!r}"):
        NCCLCommunicator(mpi_comm=FakeMPI(), device=device)


def test_no_gpu_is_a_clear_error(fake_cupy):
    def no_driver():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
    fake_cupy.cuda.runtime.getDeviceCount = no_driver
    with pytest.raises(RuntimeError, match="NCCLCommunicator: CuPy sees no CUDA device "
                                           r"\(cudaErrorNoDevice"):
        NCCLCommunicator(mpi_comm=FakeMPI())
    fake_cupy.cuda.runtime.getDeviceCount = lambda: 0
    with pytest.raises(RuntimeError, match="NCCLCommunicator: CuPy sees no CUDA device$"):
        NCCLCommunicator(mpi_comm=FakeMPI())


def test_timeout_is_the_mpi_communicators(fake_cupy):
    mpi = FakeMPI()
    comm = NCCLCommunicator(mpi_comm=mpi, timeout=12)
    assert comm.timeout == 12.0 and mpi.timeout == 12.0
    comm.timeout = 3
    assert mpi.timeout == 3.0
    comm.what = "the allreduce of step 4"
    assert mpi.what == "the allreduce of step 4"
    with pytest.raises(ValueError, match="timeout must be seconds > 0, got 0"):
        NCCLCommunicator(mpi_comm=mpi, timeout=0)


@pytest.mark.parametrize("dtype, code", [(np.float16, 6), (np.float32, 7), (np.float64, 8)])
def test_allreduce_is_one_in_place_nccl_sum_on_the_current_stream(fake_cupy, dtype, code):
    comm = NCCLCommunicator(mpi_comm=FakeMPI(), device=1)
    buf = FakeArray(np.arange(12, dtype=dtype).reshape(3, 4), device=1)
    FakeDevice.log.clear()
    assert comm.allreduce_(buf) is buf
    ptr = buf.data.ptr
    assert FakeNcclComm.made[0].calls == [("allReduce", ptr, ptr, 12, code, 0, FakeStream.ptr)]
    assert [type(s) for s in comm._event.recorded] == [FakeStream]   # then waited on
    assert FakeDevice.log == [("enter", 1), ("exit", 1)]            # on the array's GPU


def test_bcast_is_one_nccl_bcast_from_root(fake_cupy):
    comm = NCCLCommunicator(mpi_comm=FakeMPI(rank=0, size=3), device=0)
    buf = FakeArray(np.ones(5, dtype=np.float32))
    assert comm.bcast_(buf, root=2) is buf
    assert FakeNcclComm.made[0].calls == [("bcast", buf.data.ptr, 5, 7, 2, FakeStream.ptr)]
    with pytest.raises(ValueError, match=r"root must be a rank in \[0, 3\), got 3"):
        comm.bcast_(buf, root=3)


def test_an_empty_array_asks_nccl_nothing(fake_cupy):
    comm = NCCLCommunicator(mpi_comm=FakeMPI())
    buf = FakeArray(np.zeros((0, 4), dtype=np.float32))
    assert comm.allreduce_(buf) is buf and comm.bcast_(buf) is buf
    assert FakeNcclComm.made[0].calls == []


def test_arguments_are_checked_before_nccl_is_asked(fake_cupy):
    comm = NCCLCommunicator(mpi_comm=FakeMPI(), device=0)
    numpy_msg = (r"NCCLCommunicator.allreduce_: expected a CuPy array, got a NumPy array "
                 r"\(NumPy arrays go through MPICommunicator\)")
    with pytest.raises(TypeError, match=numpy_msg):
        comm.allreduce_(np.zeros(3, dtype=np.float32))
    with pytest.raises(TypeError, match="NCCLCommunicator.bcast_: expected a CuPy array, got "
                                        "list"):
        comm.bcast_([1.0, 2.0])
    with pytest.raises(TypeError, match=r"expected a C-contiguous CuPy array, got one of shape "
                                        r"\(4, 2\) that is not contiguous"):
        comm.allreduce_(FakeArray(np.zeros((4, 4), dtype=np.float32)[:, ::2]))
    with pytest.raises(TypeError, match="NCCLCommunicator.allreduce_: expected a float16, "
                                        "float32 or float64 array, got dtype int32"):
        comm.allreduce_(FakeArray(np.zeros(3, dtype=np.int32)))
    with pytest.raises(ValueError, match="NCCLCommunicator.allreduce_: the array is on GPU 1, "
                                         "this rank's communicator on GPU 0"):
        comm.allreduce_(FakeArray(np.zeros(3, dtype=np.float32), device=1))
    assert FakeNcclComm.made[0].calls == []


def test_the_wait_polls_until_the_stream_is_done(fake_cupy):
    FakeEvent.done_after = 5000             # past the spin: it sleeps between polls
    comm = NCCLCommunicator(mpi_comm=FakeMPI(), timeout=30)
    comm.allreduce_(FakeArray(np.ones(4, dtype=np.float32)))
    assert comm._event.polls == 5001


def test_a_collective_that_never_completes_times_out_naming_it(fake_cupy):
    FakeEvent.done_after = None
    comm = NCCLCommunicator(mpi_comm=FakeMPI(rank=1, size=2, from_root=UID), timeout=0.05)
    comm.what = "the allreduce of step 17"
    with pytest.raises(DistributedError) as info:
        comm.allreduce_(FakeArray(np.ones(4, dtype=np.float32), device=1))
    assert str(info.value) == ("rank 1: allreduce in the allreduce of step 17 did not complete "
                               "within 0.05 s: another rank stopped answering "
                               "(TINYLLM_DIST_TIMEOUT sets the limit)")
    with pytest.raises(DistributedError, match="rank 1: broadcast in the allreduce of step 17 "
                                               "did not complete within 0.05 s"):
        comm.bcast_(FakeArray(np.ones(4, dtype=np.float32), device=1))


@pytest.mark.parametrize("error", [FakeNcclError("NCCL_ERROR_SYSTEM_ERROR: unhandled system "
                                                 "error"), KeyError(6)])
def test_an_nccl_async_error_ends_the_wait(fake_cupy, error):
    FakeEvent.done_after = None
    comm = NCCLCommunicator(mpi_comm=FakeMPI(), timeout=30)
    FakeNcclComm.made[0].async_error = error
    with pytest.raises(DistributedError, match=rf"rank 0: allreduce in a collective failed: "
                                               rf"NCCL reports {type(error).__name__}"):
        comm.allreduce_(FakeArray(np.ones(4, dtype=np.float32)))


def test_an_nccl_too_old_for_async_errors_still_times_out(fake_cupy):
    FakeEvent.done_after = None
    comm = NCCLCommunicator(mpi_comm=FakeMPI(), timeout=0.3)
    FakeNcclComm.made[0].async_error = RuntimeError("ncclCommGetAsyncError is not available "
                                                    "in this version")
    with pytest.raises(DistributedError, match="did not complete within 0.3 s"):
        comm.allreduce_(FakeArray(np.ones(4, dtype=np.float32)))
    assert comm._async_check is False


def test_host_collectives_go_to_mpi(fake_cupy):
    mpi = FakeMPI(rank=0, size=3)
    comm = NCCLCommunicator(mpi_comm=mpi)
    mpi.log.clear()
    np.testing.assert_array_equal(comm.agree([1.5, 2.0]), [4.5, 6.0])
    assert comm.bcast_object({"a": 1}, root=0) == {"a": 1}
    assert comm.gather_object("mine") == ["mine", "other", "other"]
    comm.barrier()
    assert mpi.log == [("agree", [1.5, 2.0]), ("bcast_object", {"a": 1}, 0, "a collective"),
                       ("gather_object", "mine", 0), ("barrier",)]


def test_close_is_idempotent_and_abort_aborts_nccl_then_mpi(fake_cupy):
    mpi = FakeMPI()
    comm = NCCLCommunicator(mpi_comm=mpi)
    with comm:
        pass
    comm.close()
    assert FakeNcclComm.made[0].destroyed == 1
    with pytest.raises(RuntimeError, match="NCCLCommunicator.allreduce_: the communicator is "
                                           "closed"):
        comm.allreduce_(FakeArray(np.ones(2, dtype=np.float32)))
    other = NCCLCommunicator(mpi_comm=mpi)
    other.abort(3)
    assert FakeNcclComm.made[1].aborted == 1 and mpi.log[-1] == ("abort", 3)
    other.close()
    assert FakeNcclComm.made[1].destroyed == 0


# ----------------------------------------------------------------------------------------------
# a real size-1 NCCL communicator (GPU, CuPy with NCCL, mpi4py)

needs_mpi4py = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None,
                                  reason="needs mpi4py (pip install 'tinyllm[mpi]')")


@pytest.fixture(scope="module")
def world():
    try:
        nccl_mod.import_nccl()
    except RuntimeError as e:
        pytest.skip(f"needs CuPy with NCCL: {e}")
    comm = NCCLCommunicator(timeout=60)
    yield comm
    comm.close()


@pytest.mark.gpu
@needs_mpi4py
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_gpu_allreduce_over_one_rank_is_the_input(world, dtype):
    cupy = nccl_mod.backend._import_cupy()
    assert (world.rank, world.size, world.name) == (0, 1, "nccl")
    buf = cupy.random.default_rng(0).standard_normal((257, 33)).astype(dtype)
    want = cupy.asnumpy(buf).copy()
    assert world.allreduce_(buf) is buf
    np.testing.assert_array_equal(cupy.asnumpy(buf), want)


@pytest.mark.gpu
@needs_mpi4py
def test_gpu_bcast_keeps_the_array_and_host_collectives_work(world):
    cupy = nccl_mod.backend._import_cupy()
    buf = cupy.arange(1000, dtype=cupy.float32)
    assert world.bcast_(buf, root=0) is buf
    np.testing.assert_array_equal(cupy.asnumpy(buf), np.arange(1000, dtype=np.float32))
    np.testing.assert_array_equal(world.agree([1.5, 2.0]), [1.5, 2.0])
    assert world.bcast_object({"seed": 7}) == {"seed": 7}
    assert world.gather_object("rank 0") == ["rank 0"]
    world.barrier()


@pytest.mark.gpu
@needs_mpi4py
def test_gpu_wrong_arrays_are_refused(world):
    cupy = nccl_mod.backend._import_cupy()
    with pytest.raises(TypeError, match="expected a CuPy array, got a NumPy array"):
        world.allreduce_(np.ones(3, dtype=np.float32))
    with pytest.raises(TypeError, match="got dtype int32"):
        world.allreduce_(cupy.ones(3, dtype=cupy.int32))
    with pytest.raises(TypeError, match="not contiguous"):
        world.bcast_(cupy.ones((4, 4), dtype=cupy.float32)[:, ::2])


@pytest.mark.gpu
@needs_mpi4py
def test_gpu_a_second_communicator_closes_cleanly(world):
    cupy = nccl_mod.backend._import_cupy()
    comm = NCCLCommunicator(mpi_comm=world.mpi, device=world.device)
    buf = cupy.full(8, 2.5, dtype=cupy.float32)
    comm.allreduce_(buf)
    comm.close()
    comm.close()
    np.testing.assert_array_equal(cupy.asnumpy(buf), np.full(8, 2.5, dtype=np.float32))
    with pytest.raises(RuntimeError, match="closed"):
        comm.allreduce_(buf)

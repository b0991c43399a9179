"""tinyllm.distributed: the communicators' collectives give the numbers they promise (the sum in
rank order, the same bits on every rank), and a rank that fails, dies or stops answering is
named instead of hanging the others. Ranks on this machine: ``launch`` (shared memory)."""
import os
import time

import numpy as np
import pytest

from tinyllm import distributed
from tinyllm.distributed import (DistributedError, SingleCommunicator, create_communicator,
                                 launch)

SIZES = (5, 1000, 300_000)          # the last one grows the arenas past their first size


def _collectives(comm):
    """Every collective once, on rank-dependent data; returns what this rank saw."""
    out = {}
    for n in SIZES:
        rng = np.random.default_rng([n, comm.rank])
        buf = rng.standard_normal(n).astype(np.float32)
        mine = buf.copy()
        comm.allreduce_(buf)
        out[f"allreduce {n}"] = (mine, buf)
    b = np.full(7, float(comm.rank), dtype=np.float64)
    comm.bcast_(b, root=comm.size - 1)
    out["bcast"] = b
    out["agree"] = comm.agree([comm.rank + 0.5, 1.0])
    out["objects"] = comm.bcast_object({"from": comm.rank} if comm.rank == 0 else None)
    out["gathered"] = comm.gather_object(("rank", comm.rank))
    comm.barrier()
    return out


def _gather_all(comm):
    """_collectives on every rank, each rank's results brought to rank 0."""
    return comm.gather_object(_collectives(comm))


@pytest.mark.parametrize("size", [2, 3])
def test_shared_memory_collectives_sum_in_rank_order(size):
    seen = launch(_gather_all, size, timeout=60)
    assert len(seen) == size
    for n in SIZES:
        mine = [seen[r][f"allreduce {n}"][0] for r in range(size)]
        want = mine[0].copy()
        for m in mine[1:]:
            want += m                                   # (b_0 + b_1) + b_2: rank order
        for r in range(size):                           # the same bits on every rank
            np.testing.assert_array_equal(seen[r][f"allreduce {n}"][1], want)
    for r in range(size):
        np.testing.assert_array_equal(seen[r]["bcast"], np.full(7, size - 1.0))
        np.testing.assert_array_equal(seen[r]["agree"],
                                      [sum(k + 0.5 for k in range(size)), float(size)])
        assert seen[r]["objects"] == {"from": 0}
    assert seen[0]["gathered"] == [("rank", r) for r in range(size)]
    assert all(seen[r]["gathered"] is None for r in range(1, size))


def test_single_communicator_is_the_identity():
    comm = SingleCommunicator()
    out = _collectives(comm)
    for n in SIZES:
        mine, summed = out[f"allreduce {n}"]
        np.testing.assert_array_equal(mine, summed)
    np.testing.assert_array_equal(out["agree"], [0.5, 1.0])
    assert out["gathered"] == [("rank", 0)] and out["objects"] == {"from": 0}
    assert (comm.rank, comm.size, comm.deterministic) == (0, 1, True)
    with pytest.raises(ValueError, match=r"root must be a rank in \[0, 1\), got 1"):
        comm.bcast_(np.zeros(2), root=1)


def test_create_communicator_names_what_it_knows():
    assert isinstance(create_communicator("single"), SingleCommunicator)
    with pytest.raises(ValueError, match="'shm' ranks are started by"):
        create_communicator("shm")
    with pytest.raises(ValueError, match="expected 'single', 'mpi' or 'nccl', got 'gloo'"):
        create_communicator("gloo")


def test_world_is_none_without_an_mpi_launcher(monkeypatch):
    for key in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.world() is None and distributed.launched_by_mpi() == 0
    monkeypatch.setenv("PMI_SIZE", "1")                 # mpiexec -n 1: one process, no MPI
    assert distributed.world() is None


def _fails_on_rank_1(comm):
    if comm.rank == 1:
        raise ValueError("boom on purpose")
    comm.barrier()
    return "unreachable"


def _sleeps_on_rank_1(comm):
    if comm.rank == 1:
        time.sleep(30)
    comm.agree([1.0])


def _dies_on_rank_1(comm):
    if comm.rank == 1:
        os._exit(7)
    comm.barrier()


def _rank_0_fails(comm):
    if comm.rank == 0:
        raise KeyError("rank 0's own error")
    comm.barrier()                                      # rank 1 sees rank 0 gone and stops


def test_a_failing_rank_is_named_with_its_error():
    with pytest.raises(DistributedError, match="rank 1 failed: ValueError: boom on purpose") \
            as info:
        launch(_fails_on_rank_1, 2, timeout=60)
    assert "Traceback" in info.value.details and "_fails_on_rank_1" in info.value.details


def test_a_rank_that_stops_answering_is_named_after_the_timeout():
    start = time.monotonic()
    with pytest.raises(DistributedError, match=r"rank 0: agree in a collective did not complete "
                                               r"within 1 s: rank 1 did not arrive"):
        launch(_sleeps_on_rank_1, 2, timeout=1)
    assert time.monotonic() - start < 20                # not rank 1's 30 s sleep


def test_a_rank_that_dies_is_named_with_its_exit_code():
    with pytest.raises(DistributedError, match=r"rank 1 failed: its process \(pid \d+\) exited "
                                               r"with code 7"):
        launch(_dies_on_rank_1, 2, timeout=60)


def test_rank_0s_error_is_raised_and_the_others_stop():
    with pytest.raises(KeyError, match="rank 0's own error"):
        launch(_rank_0_fails, 2, timeout=60)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="launch: nprocs must be an int >= 1, got 0"):
        launch(_collectives, 0)
    with pytest.raises(ValueError, match="TINYLLM_DIST_TIMEOUT: expected a number of seconds, "
                                         "got 'soon'"):
        os.environ["TINYLLM_DIST_TIMEOUT"] = "soon"
        try:
            launch(_collectives, 1)
        finally:
            del os.environ["TINYLLM_DIST_TIMEOUT"]


def _refuses_lists(comm):
    try:
        comm.allreduce_([1.0, 2.0])
    except TypeError as e:
        return str(e)
    return "accepted"


def test_a_buffer_that_is_not_an_array_is_refused():
    msg = launch(_refuses_lists, 2, timeout=60)
    assert "SharedMemoryCommunicator.allreduce_: expected a C-contiguous NumPy array, got " \
           "list" in msg


def _kernel_choice(comm, prefer):
    from tinyllm import dispatch
    before = dispatch.get_impl()
    if prefer:
        dispatch.prefer_impl(prefer)
    return comm.gather_object((before, dispatch.get_impl()))


@pytest.mark.parametrize("parent, prefer, want", [
    ({"impl": None, "preferred": "auto"}, None, ("auto", "auto")),   # the CLI's preference
    ({"impl": "numba", "preferred": None}, None, ("numba", "numba")),  # an explicit choice
    ({"impl": None, "preferred": None}, "auto", ("numpy", "auto")),   # the rank prefers itself
])
def test_launched_ranks_choose_kernels_as_their_parent_did(monkeypatch, parent, prefer, want):
    from tinyllm import dispatch
    monkeypatch.delenv("TINYLLM_KERNELS", raising=False)
    saved = dispatch.choices()
    dispatch.follow(parent)
    try:
        seen = launch(_kernel_choice, 2, prefer, timeout=60)
    finally:
        dispatch.follow(saved)
    assert seen == [want, want]


def _staged(comm):
    """Pack into the shared-memory slot (``staging``), sum into a private buffer; and the
    mistake of summing a staged buffer into itself."""
    n = 1000
    mine = np.random.default_rng([3, comm.rank]).standard_normal(n).astype(np.float32)
    staged = comm.staging(n, np.float32)
    staged[...] = mine
    out = np.empty(n, np.float32)
    comm.allreduce_(staged, out=out)
    try:
        again = comm.staging(n, np.float32)
        again[...] = mine
        comm.allreduce_(again)
        refused = None
    except ValueError as e:
        refused = str(e)
    return comm.gather_object((mine, out, refused))


def test_a_staged_buffer_is_summed_where_it_was_packed():
    seen = launch(_staged, 2, timeout=60)
    want = seen[0][0] + seen[1][0]
    for _, out, refused in seen:
        np.testing.assert_array_equal(out, want)
        assert "a staged buffer needs out=" in refused
    assert SingleCommunicator().staging(3, np.float32) is None


def _all_exit_after_a_gather(comm):
    if comm.rank == 2:
        time.sleep(0.5)                 # rank 1 has exited by the time rank 2 answers
    comm.gather_object(comm.rank)
    raise SystemExit(130)               # every rank, as after an agreed Ctrl-C stop


def test_ranks_that_exit_together_are_no_failure():
    with pytest.raises(SystemExit) as info:
        launch(_all_exit_after_a_gather, 3, timeout=60)
    assert info.value.code == 130


def test_same_sums_says_when_another_rank_count_adds_in_the_same_order():
    from tinyllm.run_setup import same_sums
    assert same_sums(2, 2, 1) and same_sums(2, 1, 2) and same_sums(4, 1, 4)
    assert same_sums(4, 2, 2)
    assert not same_sums(4, 2, 1) and not same_sums(4, 4, 2)

"""Helpers shared by the scripts that tests/test_distributed.py runs under mpiexec."""

import hashlib
import sys

import numpy as np

import fusedops.distributed as fod


def start():
    """The world communicator, checked against the rank count the test asked for (argv[1])."""
    comm = fod.world()
    expected = int(sys.argv[1])
    assert comm.size == expected, f"expected {expected} ranks, got {comm.size}: is mpiexec MPICH's?"
    return comm


def digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def identical_on_all_ranks(comm, arrays):
    """True when every rank holds bitwise the same arrays."""
    return len(set(comm.mpi.allgather(digest(arrays)))) == 1


def raises_everywhere(comm, fn, exc, match):
    """fn() raises ``exc`` whose message contains ``match`` (on this rank)."""
    try:
        fn()
    except exc as e:
        assert match in str(e), f"rank {comm.rank}: {match!r} not in {str(e)!r}"
        return str(e)
    raise AssertionError(f"rank {comm.rank}: {fn} did not raise {exc.__name__}")


def done(comm, name):
    comm.barrier()
    print(f"rank {comm.rank}: {name} ok", flush=True)

"""A distributed script run as a plain process (no mpiexec), with mpi4py importable or
blocked (--block-mpi4py): one rank, every collective a no-op after its checks."""

import sys

if "--block-mpi4py" in sys.argv:
    sys.modules["mpi4py"] = None  # import mpi4py raises ImportError

import numpy as np

import fusedops as fo
import fusedops.distributed as fod

comm = fod.world()
assert (comm.rank, comm.size) == (0, 1), comm
assert (comm.mpi is None) == ("--block-mpi4py" in sys.argv)
grads = [np.arange(5, dtype=np.float32), np.ones((2, 2))]
before = [g.copy() for g in grads]
fod.allreduce_mean_(grads, comm)
fod.broadcast_(grads, comm)
assert all(np.array_equal(g, b) for g, b in zip(grads, before))
try:
    fod.allreduce_mean_([np.zeros(2, np.int32)], comm)
except TypeError as e:
    assert "dtype int32" in str(e)
else:
    raise AssertionError("int32 grads were accepted")
params = [np.ones(4, np.float32)]
opt = fo.optim.Adam(params, lr=0.1, comm=comm, shard_state=True)
assert opt.step([np.ones(4, np.float32)])
np.testing.assert_allclose(params[0], 0.9, rtol=1e-6)
assert opt.consolidated_state_dict()["step"] == 1
comm.barrier()
print("rank 0: one rank ok", flush=True)

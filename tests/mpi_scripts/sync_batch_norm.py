"""fo.nn.BatchNorm(..., comm=) over N ranks (argv[1]): forward and backward over the
ranks' batches (uneven, some with 0 or 1 rows) equal batch norm over the concatenated
batch, and bad input on one rank raises on every rank."""

import numpy as np

import fusedops as fo
from _common import done, identical_on_all_ranks, raises_everywhere, start

comm = start()
rank, size = comm.rank, comm.size
ROWS = {2: [[0, 5], [1, 4], [3, 3]], 3: [[0, 1, 6], [3, 3, 3], [1, 0, 2]]}[size]
SHAPES = [((7,), 1), ((3, 4, 5), 1), ((4, 2, 3), -1)]  # per-row shape, channel axis


def make_batch(rows, row_shape, dtype, seed):
    rng = np.random.default_rng(seed)
    n = sum(rows)
    x = (rng.standard_normal((n, *row_shape)) * 2 + 5).astype(dtype)
    dy = rng.standard_normal((n, *row_shape)).astype(dtype)
    starts = np.cumsum([0, *rows])
    return x, dy, slice(starts[rank], starts[rank + 1])


# 16-bit x: float32 parameters and math, the results rounded to 16 bits (an ulp apart at most)
for dtype, rtol in ((np.float64, 1e-10), (np.float32, 1e-4), (fo.bfloat16, 1e-2), (np.float16, 2e-3)):
    for row_shape, axis in SHAPES:
        channels = row_shape[0] if axis == 1 else row_shape[-1]
        for rows in ROWS:
            for affine in (True, False):
                ref = fo.nn.BatchNorm(channels, channel_axis=axis, dtype=dtype, affine=affine,
                                      momentum=0.3)
                bn = fo.nn.BatchNorm(channels, channel_axis=axis, dtype=dtype, affine=affine,
                                     momentum=0.3, comm=comm)
                if affine:
                    rng = np.random.default_rng(7)
                    for layer in (ref, bn):
                        layer.weight[...] = rng.uniform(0.5, 2, channels)
                        layer.bias[...] = rng.standard_normal(channels)
                        rng = np.random.default_rng(7)
                for step in range(2):
                    x, dy, mine = make_batch(rows, row_shape, dtype, seed=10 * step + 1)
                    y_ref = ref.forward(x)
                    dx_ref = ref.backward(dy)
                    y = bn.forward(np.ascontiguousarray(x[mine]))
                    dx = bn.backward(np.ascontiguousarray(dy[mine]))
                    label = f"{dtype.__name__} {row_shape} axis {axis} rows {rows} step {step}"
                    scale = np.abs(y_ref).max()
                    np.testing.assert_allclose(y, y_ref[mine], rtol=rtol, atol=rtol * scale, err_msg=label)
                    np.testing.assert_allclose(dx, dx_ref[mine], rtol=rtol,
                                               atol=rtol * np.abs(dx_ref).max(), err_msg=label)
                    np.testing.assert_allclose(bn.running_mean, ref.running_mean, rtol=rtol, err_msg=label)
                    np.testing.assert_allclose(bn.running_var, ref.running_var, rtol=rtol, err_msg=label)
                    assert identical_on_all_ranks(comm, [bn.running_mean, bn.running_var]), label
                    if affine:  # the ranks' parameter gradients add up to the whole batch's
                        for local, whole in ((bn.grad_weight, ref.grad_weight), (bn.grad_bias, ref.grad_bias)):
                            total = sum(comm.mpi.allgather(local.astype(np.float64)))
                            np.testing.assert_allclose(total, whole, rtol=rtol,
                                                       atol=rtol * np.abs(whole).max(), err_msg=label)
                # Inference uses the running statistics, locally.
                x, _, mine = make_batch(rows, row_shape, dtype, seed=99)
                np.testing.assert_allclose(bn.forward(np.ascontiguousarray(x[mine]), training=False),
                                           ref.forward(x, training=False)[mine], rtol=rtol, atol=rtol)

# ------------------------------------------------------------ errors raise on every rank
bn = fo.nn.BatchNorm(3, comm=comm)
x = np.ones((1 if rank == 0 else 0, 3), np.float32)
raises_everywhere(comm, lambda: bn.forward(x), ValueError, "at least 2")
x = np.random.default_rng(rank).standard_normal((4, 3)).astype(np.float32)
bad = x.astype(np.float64) if rank == size - 1 else x
message = raises_everywhere(comm, lambda: bn.forward(bad), TypeError, "dtype")
if rank != size - 1:
    assert f"rank {size - 1} rejected its input" in message, message
bad_out = np.empty((4, 2), np.float32) if rank == 0 else np.empty_like(x)
raises_everywhere(comm, lambda: bn.forward(x, out=bad_out), ValueError, "shape")
running = [bn.running_mean.copy(), bn.running_var.copy()]
assert np.array_equal(running[0], np.zeros(3)) and np.array_equal(running[1], np.ones(3))
y = bn.forward(x)  # still in step
bad_dy = np.ones((5, 3), np.float32) if rank == size - 1 else np.ones_like(x)
raises_everywhere(comm, lambda: bn.backward(bad_dy), ValueError, "shape")
dx = bn.backward(np.ones_like(x))
assert identical_on_all_ranks(comm, [bn.running_mean, bn.running_var])
done(comm, "sync batch norm")

"""broadcast_, allreduce_mean_ and flat_buffer on N ranks (argv[1]), and their errors."""

import ml_dtypes
import numpy as np

import fusedops.distributed as fod
from _common import done, identical_on_all_ranks, raises_everywhere, start

comm = start()
rank, size = comm.rank, comm.size
SHAPES = [(3, 5), (), (0,), (1,), (17,), (4, 4, 2), (33,)]


def rank_data(r, dtype):
    rng = np.random.default_rng(100 + r)
    return [np.asarray(rng.standard_normal(s) * 10 ** rng.uniform(-3, 3), dtype) for s in SHAPES]


# ------------------------------------------------------------ allreduce_mean_
for dtype in (np.float32, np.float64):
    expected = [np.mean([rank_data(r, dtype)[i].astype(np.float64) for r in range(size)], axis=0)
                for i in range(len(SHAPES))]
    results = {}
    for bucket_bytes in (4, 100, 1 << 20):
        grads = rank_data(rank, dtype)
        fod.allreduce_mean_(grads, comm, bucket_bytes=bucket_bytes)
        for g, e in zip(grads, expected):
            rtol = 1e-6 if dtype == np.float32 else 1e-14
            np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * 1e3 * np.abs(e).max(initial=0))
        assert identical_on_all_ranks(comm, grads)
        # The same data in one flat buffer is averaged in place there: bitwise the same.
        flat, views = fod.flat_buffer(SHAPES, dtype)
        for v, g in zip(views, rank_data(rank, dtype)):
            v[...] = g
        packing, packed = fod._pack, []

        def counting_pack(flats, bucket, buf):
            packed.append(bucket.length)
            packing(flats, bucket, buf)

        fod._pack = counting_pack
        try:
            fod.allreduce_mean_(views, comm.mpi, bucket_bytes=bucket_bytes)  # a raw mpi4py Comm
        finally:
            fod._pack = packing
        # The views are averaged where they are; at most the last few elements are packed.
        assert sum(packed) < size, packed
        assert all(np.array_equal(v, g) for v, g in zip(views, grads))
        # Replays bitwise.
        again = rank_data(rank, dtype)
        fod.allreduce_mean_(again, comm, bucket_bytes=bucket_bytes)
        assert all(a.tobytes() == g.tobytes() for a, g in zip(again, grads))
        results[bucket_bytes] = grads

# Mixed dtypes in one call; a single array.
mixed = [rank_data(rank, np.float32)[0], rank_data(rank, np.float64)[4]]
fod.allreduce_mean_(mixed, comm)
np.testing.assert_allclose(mixed[1], np.mean([rank_data(r, np.float64)[4] for r in range(size)], axis=0),
                           rtol=1e-14)
single = np.full(5, float(rank), np.float32)
fod.allreduce_mean_(single, comm)
np.testing.assert_array_equal(single, np.full(5, (size - 1) / 2, np.float32))

# ------------------------------------------------------------ 16-bit grads on the wire
# The mean of each element is summed in float32 in rank order, divided by the rank count
# in float32 and rounded once, to nearest even: bitwise this reference on every rank.
HALF_SHAPES = SHAPES + [(600_001,), (5, 3)]  # one array of over 1 MiB: averaged in its memory


def half_data(r, dtype):
    rng = np.random.default_rng(200 + r)
    if dtype == np.float16:  # near the top of float16's range: the sums overflow 16 bits
        return [np.asarray(np.clip(rng.standard_normal(s) * 3e4, -65000, 65000), dtype) for s in HALF_SHAPES]
    return [np.asarray(rng.standard_normal(s) * 10.0 ** rng.integers(-20, 20, s), dtype) for s in HALF_SHAPES]


def half_reference(i, dtype):
    total = half_data(0, dtype)[i].astype(np.float32)
    for r in range(1, size):
        total = total + half_data(r, dtype)[i].astype(np.float32)
    return (total.astype(np.float64) / size).astype(np.float32).astype(dtype)


for dtype in (ml_dtypes.bfloat16, np.float16):
    expected = [half_reference(i, dtype) for i in range(len(HALF_SHAPES))]
    if dtype == np.float16:  # the float32 sums leave float16's range; the means do not
        sums = sum(half_data(r, dtype)[-2].astype(np.float32) for r in range(size))
        assert np.abs(sums).max() > 65504 and np.isfinite(expected[-2].astype(np.float32)).all()
    for bucket_bytes in (4, 100, 1 << 20, 25 << 20):
        # Tiny buckets (a collective per few elements) only without the large array.
        count = len(HALF_SHAPES) if bucket_bytes >= 1 << 20 else len(SHAPES)
        grads = half_data(rank, dtype)[:count]
        fod.allreduce_mean_(grads, comm, bucket_bytes=bucket_bytes)
        for g, e in zip(grads, expected):
            assert g.dtype == e.dtype and g.tobytes() == e.tobytes(), (dtype, bucket_bytes, g, e)
        assert identical_on_all_ranks(comm, grads)
        flat, views = fod.flat_buffer(HALF_SHAPES[:count], dtype)  # in place in one buffer
        for v, g in zip(views, half_data(rank, dtype)):
            v[...] = g
        fod.allreduce_mean_(views, comm.mpi, bucket_bytes=bucket_bytes)
        assert all(v.tobytes() == g.tobytes() for v, g in zip(views, grads))
# 16-bit and float32 grads in one call: each dtype its own way.
mixed = [half_data(rank, ml_dtypes.bfloat16)[4], rank_data(rank, np.float32)[4],
         half_data(rank, np.float16)[0]]
fod.allreduce_mean_(mixed, comm)
assert mixed[0].tobytes() == half_reference(4, ml_dtypes.bfloat16).tobytes()
assert mixed[2].tobytes() == half_reference(0, np.float16).tobytes()
np.testing.assert_allclose(mixed[1], np.mean([rank_data(r, np.float32)[4] for r in range(size)], axis=0),
                           rtol=1e-6)
assert identical_on_all_ranks(comm, mixed)
# A rank whose grads have another 16-bit dtype: rejected everywhere before any collective.
odd = [g.astype(np.float16 if rank == size - 1 else ml_dtypes.bfloat16) for g in rank_data(rank, np.float32)[:3]]
kept = [g.copy() for g in odd]
raises_everywhere(comm, lambda: fod.allreduce_mean_(odd, comm), ValueError,
                  "the ranks disagree on the arrays' count, shapes or dtypes")
assert all(a.tobytes() == b.tobytes() for a, b in zip(odd, kept))
raises_everywhere(comm, lambda: fod.allreduce_mean_([np.zeros(3, np.int16)], comm), TypeError,
                  "grads[0] has dtype int16; float32, float64, bfloat16 and float16 are supported")

# ------------------------------------------------------------ broadcast_
for root in (0, size - 1):
    arrays = [np.full((2, 3), rank, np.float32), np.arange(5, dtype=np.int64) * (rank + 1),
              np.full(7, rank + 0.5, ml_dtypes.bfloat16), np.zeros(0), np.array(rank * 1.0)]
    fod.broadcast_(arrays, comm, root=root, bucket_bytes=16)
    assert np.array_equal(arrays[0], np.full((2, 3), root, np.float32))
    assert np.array_equal(arrays[1], np.arange(5) * (root + 1))
    assert np.array_equal(arrays[2].astype(np.float32), np.full(7, root + 0.5, np.float32))
    assert float(arrays[4]) == root

# ------------------------------------------------------------ flat_buffer
flat, views = fod.flat_buffer([(2, 3), 4, ()], np.float64)
assert flat.shape == (11,) and flat.dtype == np.float64 and not flat.any()
assert [v.shape for v in views] == [(2, 3), (4,), ()]
views[1][...] = 7
assert np.array_equal(flat[6:10], np.full(4, 7.0))

# ------------------------------------------------------------ errors raise on every rank
grads = rank_data(rank, np.float32)
before = [g.copy() for g in grads]
if rank == 1:  # one rank's shapes differ: a clear error everywhere, no hang
    grads_bad = grads[:-1] + [np.zeros(34, np.float32)]
else:
    grads_bad = grads
raises_everywhere(comm, lambda: fod.allreduce_mean_(grads_bad, comm), ValueError,
                  "the ranks disagree on the arrays' count, shapes or dtypes")
if rank == size - 1:  # one rank's input is rejected locally
    frozen = [g.copy() for g in grads]
    frozen[2].flags.writeable = False
    frozen[0].flags.writeable = False
    args = frozen
else:
    args = grads
message = raises_everywhere(comm, lambda: fod.allreduce_mean_(args, comm), ValueError, "writeable")
if rank != size - 1:
    assert f"rank {size - 1} rejected its input" in message, message
raises_everywhere(comm, lambda: fod.allreduce_mean_([np.zeros(3, np.int32)], comm), TypeError, "dtype int32")
raises_everywhere(comm, lambda: fod.allreduce_mean_(grads, comm, bucket_bytes=0), ValueError, "bucket_bytes")
raises_everywhere(comm, lambda: fod.allreduce_mean_([grads[0], grads[0]], comm), ValueError, "share memory")
raises_everywhere(comm, lambda: fod.broadcast_(grads, comm, root=size), ValueError, "root")
raises_everywhere(comm, lambda: fod.allreduce_mean_(grads, object()), TypeError, "comm must be")
assert all(np.array_equal(g, b) for g, b in zip(grads, before))  # nothing changed
fod.allreduce_mean_(grads, comm)  # and the ranks are still in step
assert identical_on_all_ranks(comm, grads)
done(comm, "collectives")

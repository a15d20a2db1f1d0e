"""Batch norm forward/backward and the nn.BatchNorm layer against float64 references,
torch autograd (when installed) and finite differences."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedops as fo
from fusedops import _core
from checks import at_line_offset, batch_norm_at_offsets, batch_norm_with_cached_stores
from reference import batch_norm_backward_reference, batch_norm_forward_reference

DTYPES = [np.float32, np.float64]
# (rtol, atol relative to the largest magnitude of the expected array)
TOL = {np.float32: (2e-5, 2e-6), np.float64: (1e-12, 1e-13)}

# (shape, channel_axis): odd channel counts and spatial sizes, every layout, and shapes
# that take each path: slab reductions (spatial >= 96 values and 384 bytes: 100 and 196
# here, 512 and up; multi-block above 16384), row
# reductions (shorter spatial extents, channel-last; multi-tile above 512 columns per
# row), runs for the elementwise passes (spatial >= 32, several runs crossing slabs
# above 16384 values) and rows otherwise (whole rows of several row groups up to 1024
# columns, column blocks above).
CASES = [
    ((4, 3, 5, 7), 1),
    ((3, 17, 7, 9), 1),
    ((6, 3, 1, 1), 1),
    ((5, 1, 7, 9), 1),
    ((8, 17), 1),
    ((9, 3), -1),
    ((4, 3, 11), 1),
    ((2, 3, 4, 5, 6), 1),
    ((3, 7, 9, 17), -1),
    ((6, 1, 1, 3), -1),
    ((3, 7, 9, 1), -1),
    ((2, 4, 3, 5, 3), -1),
    ((2, 3, 130, 130), 1),
    ((4, 5, 5, 600), -1),
    ((4, 300, 2, 2), 1),
    ((3, 5, 40), 1),
    ((5, 7, 9, 5), 1),
    ((40, 13, 37), 1),
    ((2, 3, 600), 1),
    ((9, 3, 100, 21), 1),
    ((200, 700), 1),
    ((150, 40, 20), 1),
    ((6, 5, 14, 14), 1),
    ((5, 7, 100), 1),
    # rows of two column blocks in 1 and 3 row groups, sized for two threads: the
    # elementwise passes run over the reduction's tiles
    ((48, 1024), 1),
    ((96, 1024), 1),
    ((64, 200, 2, 2), 1),
]
CASE_IDS = [f"{'x'.join(map(str, s))}-axis{a}" for s, a in CASES]


def assert_close(actual, expected, dtype, name):
    rtol, atol = TOL[dtype]
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=rtol,
                               atol=atol * max(scale, 1.0), err_msg=name)


def make_inputs(rng, shape, channel_axis, dtype, *, affine=True, spread=3.0, offset=1.5):
    channels = shape[channel_axis]
    x = (rng.standard_normal(shape) * spread + offset).astype(dtype)
    weight = rng.uniform(0.5, 2.0, channels).astype(dtype) if affine else None
    bias = rng.standard_normal(channels).astype(dtype) if affine else None
    running_mean = rng.standard_normal(channels).astype(dtype)
    running_var = rng.uniform(0.5, 2.0, channels).astype(dtype)
    return x, weight, bias, running_mean, running_var


# ---------------------------------------------------------------------------------------
# Functional API against the float64 references, on every ISA.


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape,channel_axis", CASES, ids=CASE_IDS)
def test_forward_matches_reference(isa, rng, shape, channel_axis, dtype, affine, training):
    x, weight, bias, rm, rv = make_inputs(rng, shape, channel_axis, dtype, affine=affine)
    y_ref, mean_ref, invstd_ref, rm_ref, rv_ref = batch_norm_forward_reference(
        x, weight, bias, rm, rv, training=training, momentum=0.3, eps=1e-3,
        channel_axis=channel_axis)
    y, save_mean, save_invstd = fo.batch_norm_forward(
        x, weight, bias, rm, rv, training=training, momentum=0.3, eps=1e-3,
        channel_axis=channel_axis)
    assert y.dtype == dtype
    # The statistics stay float64 whatever x's dtype: a float32 mean is never rounded.
    assert save_mean.dtype == save_invstd.dtype == np.float64
    assert y.shape == x.shape and save_mean.shape == save_invstd.shape == (shape[channel_axis],)
    assert_close(y, y_ref, dtype, "y")
    assert_close(save_mean, mean_ref, dtype, "save_mean")
    assert_close(save_invstd, invstd_ref, dtype, "save_invstd")
    assert_close(rm, rm_ref, dtype, "running_mean")
    assert_close(rv, rv_ref, dtype, "running_var")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape,channel_axis", CASES, ids=CASE_IDS)
def test_backward_matches_reference(isa, rng, shape, channel_axis, dtype, affine, training):
    x, weight, _, rm, rv = make_inputs(rng, shape, channel_axis, dtype, affine=affine)
    dy = rng.standard_normal(shape).astype(dtype)
    _, mean, invstd, _, _ = batch_norm_forward_reference(
        x, training=training, running_mean=rm, running_var=rv, channel_axis=channel_axis)
    save_mean, save_invstd = mean.astype(dtype), invstd.astype(dtype)
    dx_ref, dw_ref, db_ref = batch_norm_backward_reference(
        dy, x, weight, save_mean, save_invstd, training=training, channel_axis=channel_axis)
    dx, dw, db = fo.batch_norm_backward(dy, x, weight, save_mean, save_invstd,
                                        training=training, channel_axis=channel_axis)
    assert dx.dtype == dtype and dx.shape == x.shape
    assert_close(dx, dx_ref, dtype, "dx")
    if affine:
        assert dw.dtype == db.dtype == dtype
        assert_close(dw, dw_ref, dtype, "dweight")
        assert_close(db, db_ref, dtype, "dbias")
    else:
        assert dw is None and db is None


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape,channel_axis", [((5, 7, 93, 83), 1), ((9, 33, 41, 53), -1),
                                                ((300, 131, 2, 2), 1), ((100, 31, 11, 13), 1),
                                                ((1500, 107), 1), ((200, 30, 31, 3), -1)],
                         ids=["nchw", "nhwc", "short-spatial", "runs", "nc", "nhwc-c3"])
def test_outputs_beyond_the_cache_size(isa, small_last_level_cache, shape, channel_axis, dtype):
    # Outputs that do not fit in the last-level cache with the inputs are written with
    # non-temporal stores; odd extents put the rows, runs and blocks at every alignment.
    rng = np.random.default_rng(11)
    x, weight, bias, rm, rv = make_inputs(rng, shape, channel_axis, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    assert 2 * x.nbytes > small_last_level_cache
    if channel_axis == -1:  # the gradient sums of rows from memory: chunks of L1 / 16
        assert _core._batch_norm_plan(*plan_view(shape, -1), x.itemsize)["grad_chunk_bytes"] > 0
    y_ref, mean, invstd, _, _ = batch_norm_forward_reference(x, weight, bias,
                                                             channel_axis=channel_axis)
    y, save_mean, save_invstd = fo.batch_norm_forward(x, weight, bias, channel_axis=channel_axis)
    assert_close(y, y_ref, dtype, "y")
    dx_ref, _, _ = batch_norm_backward_reference(dy, x, weight, save_mean, save_invstd,
                                                 channel_axis=channel_axis)
    dx, _, _ = fo.batch_norm_backward(dy, x, weight, save_mean, save_invstd,
                                      channel_axis=channel_axis)
    assert_close(dx, dx_ref, dtype, "dx")
    # The streamed outputs are bitwise the cached ones.
    _core._set_cache_bytes(1 << 15, 1 << 21, 1 << 40)
    y_cached, _, _ = fo.batch_norm_forward(x, weight, bias, channel_axis=channel_axis)
    dx_cached, _, _ = fo.batch_norm_backward(dy, x, weight, save_mean, save_invstd,
                                             channel_axis=channel_axis)
    np.testing.assert_array_equal(y, y_cached)
    np.testing.assert_array_equal(dx, dx_cached)


@pytest.mark.parametrize("dtype", DTYPES + [fo.bfloat16, np.float16],
                         ids=["f32", "f64", "bf16", "f16"])
@pytest.mark.parametrize("shape,channel_axis", [((600, 1500), 1), ((64, 8, 8, 700), -1),
                                                ((1600, 97, 3, 3), 1), ((160, 2053), 1),
                                                ((128, 9000), 1)],
                         ids=["nc", "nhwc", "short-spatial", "nc-odd", "nc-split-rows"])
def test_long_rows_beyond_the_cache_give_the_cached_bits(isa, threads, small_last_level_cache,
                                                         shape, channel_axis, dtype):
    # Rows longer than a column block (512 values) of data beyond the last-level cache
    # (here 1 MiB; or beyond 16 L2s) are cut into whole-row tiles instead of column blocks,
    # and their sums walk fewer rows at a time: every output, statistics and running
    # statistics included, keeps the bits of the column blocks (the run with unbounded
    # caches), for any thread count.
    rng = np.random.default_rng(21)
    x16 = np.dtype(dtype).itemsize == 2
    param = np.float32 if x16 else dtype
    x = (rng.standard_normal(shape) * 3.0 + 40.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    channels = shape[channel_axis]
    weight = rng.uniform(0.5, 2.0, channels).astype(param)
    bias = rng.standard_normal(channels).astype(param)
    rm0 = rng.standard_normal(channels).astype(param)
    rv0 = rng.uniform(0.5, 2.0, channels).astype(param)
    cols = x.size // x.shape[0] if channel_axis == 1 else channels
    assert cols > 512 and 2 * x.nbytes > small_last_level_cache
    view = plan_view(shape, channel_axis)
    assert _core._batch_norm_plan(*view, x.itemsize)["tile_cols"] > 512  # wide tiles

    def run():
        rm, rv = rm0.copy(), rv0.copy()
        y, mean, invstd = fo.batch_norm_forward(x, weight, bias, rm, rv,
                                                channel_axis=channel_axis)
        dx, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd,
                                            channel_axis=channel_axis)
        return [y, mean, invstd, rm, rv, dx, dw, db]

    results = []
    for n in (1, 2):
        fo.set_num_threads(n)
        results.append(run())
    real = fo.build_info()["cache_bytes"]
    _core._set_cache_bytes(real["l1d"], 1 << 40, 1 << 40)  # column blocks, cached stores
    assert _core._batch_norm_plan(*view, x.itemsize)["tile_cols"] == 512
    results.append(run())
    y_ref, _, _, _, _ = batch_norm_forward_reference(x, weight, bias, channel_axis=channel_axis)
    tol = 1e-2 if x16 else 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(results[0][0].astype(np.float64), y_ref, rtol=tol, atol=tol)
    names = ["y", "mean", "invstd", "running_mean", "running_var", "dx", "dweight", "dbias"]
    for other in results[1:]:
        for name, a, b in zip(names, results[0], other):
            assert a.tobytes() == b.tobytes(), name


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape,channel_axis", [((300, 1500), 1), ((37, 8, 8, 700), -1),
                                                ((3001, 64), 1), ((4001, 24), 1)],
                         ids=["nc-wide", "nhwc-wide", "nc-64", "nc-24"])
def test_gradient_sum_chunks_give_the_same_bits(isa, threads, cache_sizes, shape, channel_axis,
                                                dtype):
    # With a 512 KiB L2 and a 256 KiB last level, the gradient sums over whole rows take
    # chunks of a sixteenth of the L1 (rows that take no prefetches: 4 rows; rows from
    # memory: 2 KiB, prefetched a chunk ahead): the same bits as the column blocks and
    # cached chunks of unbounded caches, for any thread count.
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 2.0 - 7.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    channels = shape[channel_axis]
    weight = rng.uniform(0.5, 2.0, channels).astype(dtype)
    _, mean, invstd = fo.batch_norm_forward(x, weight, None, channel_axis=channel_axis)
    view = plan_view(shape, channel_axis)

    def run():
        return fo.batch_norm_backward(dy, x, weight, mean, invstd, channel_axis=channel_axis)

    cache_sizes(32 << 10, 512 << 10, 256 << 10)
    info = _core._batch_norm_plan(*view, x.itemsize)
    assert info["grad_chunk_bytes"] == 2 << 10 and info["tile_cols"] >= view[1] * view[2]
    chunked = [run() for n in (1, 2) if fo.set_num_threads(n) is None]
    cache_sizes(32 << 10, 1 << 40, 1 << 40)
    assert _core._batch_norm_plan(*view, x.itemsize)["grad_chunk_bytes"] == 0
    cached = run()
    dx_ref, dw_ref, db_ref = batch_norm_backward_reference(dy, x, weight, mean, invstd,
                                                           channel_axis=channel_axis)
    assert_close(cached[0], dx_ref, dtype, "dx")
    for result in chunked:
        for a, b in zip(result, cached):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
@pytest.mark.parametrize("channels", [64, 96, 100, 128, 256, 512, 520, 32])
def test_row_sums_walked_in_memory_order_give_the_same_bits(isa, threads, cache_sizes,
                                                            channels, dtype):
    # Where the last-level cache is near the cores, the row reductions over whole rows of
    # 256 bytes to 512 values whose arrays do not fit in it walk the rows in memory order (the
    # statistics when x does not fit, the gradient sums when x and dy do not): the same
    # bits as the chunks of rows the caches otherwise get, for any thread count; rows of a
    # lane vector's tail (100 values under AVX-512) keep the chunks.
    dtype = np.dtype(fo.bfloat16 if dtype == "bfloat16" else dtype)
    rng = np.random.default_rng(channels)
    rows = 420_000 // channels
    shape = (rows // 12, 3, 4, channels)
    x = (rng.standard_normal(shape) * 2.0 - 7.0).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    param = np.float64 if dtype == np.float64 else np.float32
    weight = rng.uniform(0.5, 2.0, channels).astype(param)
    bias = rng.standard_normal(channels).astype(param)
    view = plan_view(shape, -1)
    near = (32 << 10, 256 << 10, 1 << 20)  # a near last level of 1 MiB

    def run():
        y, mean, invstd = fo.batch_norm_forward(x, weight, bias, channel_axis=-1)
        dx, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd, channel_axis=-1)
        stats = fo.batch_norm_stats(x, channel_axis=-1)
        sums = fo.batch_norm_backward_reduce(dy, x, mean, invstd, channel_axis=-1)
        return [y, mean, invstd, dx, dw, db, *stats, *sums]

    cache_sizes(*near)
    info = _core._batch_norm_plan(*view, x.itemsize)
    walks = 256 <= channels * dtype.itemsize and channels <= 512
    assert info["stats_walk"] == (walks and x.nbytes > near[2])
    assert info["grads_walk"] == (walks and 2 * x.nbytes > near[2])
    assert info["grads_walk"] or not walks
    walked = [run() for n in (1, 2) if fo.set_num_threads(n) is None]
    cache_sizes(near[0], 1 << 40, 1 << 40)
    info = _core._batch_norm_plan(*view, x.itemsize)
    assert not info["stats_walk"] and not info["grads_walk"]
    chunked = run()
    y_ref, _, _, _, _ = batch_norm_forward_reference(x, weight, bias, channel_axis=-1)
    tol = 2e-2 if dtype.itemsize == 2 else 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(chunked[0].astype(np.float64), y_ref, rtol=tol, atol=tol)
    for result in walked:
        for k, (a, b) in enumerate(zip(result, chunked)):
            assert a.tobytes() == b.tobytes(), k


def plan_view(shape, channel_axis):
    """The (outer, channels, inner) view batch norm plans x of `shape` with."""
    if channel_axis == 1:
        return shape[0], shape[1], int(np.prod(shape[2:], dtype=np.int64))
    return int(np.prod(shape[:-1], dtype=np.int64)), shape[-1], 1


def test_row_tiles_follow_the_cache_sizes(cache_sizes):
    # The row tiles' widths as a function of the cache sizes (the bits do not depend on
    # them: test above): 512-column blocks near the core; data far from it (a pair of
    # arrays beyond the last-level cache, or one array of at least 32 L2s, or float32 and
    # float64 rows of at most 4096 values whose four arrays of a training step fill the
    # last-level cache, or, where the last level is far, float32 and 16-bit rows of at
    # least 4 KiB in an array of at least 16 L2s) takes whole rows when they form at least
    # 4 row groups, else equal tiles of at most 4096 columns (in multiples of 64), at
    # least 16 tiles in all.
    plan = _core._batch_norm_plan
    mib = 1 << 20
    cache_sizes(48 << 10, 2 * mib, 480 * mib)  # the Xeon
    assert plan(4096, 4096, 1, 4)["tile_cols"] == 4096  # 64 MiB: 32 L2s
    assert plan(4096, 2048, 1, 4)["tile_cols"] == 2048  # 32 MiB: 16 L2s, rows of 8 KiB
    assert plan(4096, 4096, 1, 2)["tile_cols"] == 4096  # 16-bit, 32 MiB
    assert plan(8192, 1024, 1, 4)["tile_cols"] == 1024  # rows of 4 KiB
    assert plan(16384, 1024, 1, 2)["tile_cols"] == 512  # 16-bit rows of 2 KiB
    assert plan(1024, 4096, 1, 8)["tile_cols"] == 512  # float64, 32 MiB
    assert plan(1024, 4096, 1, 4)["tile_cols"] == 512  # 16 MiB
    assert plan(1024, 1024, 1, 4)["tile_cols"] == 512
    info = plan(256, 1024, 49, 4)  # short spatial, 51 MB: 1 group, 16 tiles of 3136
    assert (info["row_groups"], info["tile_cols"]) == (1, 3136)
    info = plan(1024, 16384, 1, 4)  # 4 row groups: whole rows
    assert (info["row_groups"], info["tile_cols"]) == (4, 16384)
    info = plan(2048, 256, 49, 4)  # 103 MB, 5 groups of rows of 12544
    assert (info["row_groups"], info["tile_cols"]) == (5, 12544)
    info = plan(512, 32768, 1, 4)  # 2 groups: 8 tiles of 4096 each
    assert (info["row_groups"], info["tile_cols"]) == (2, 4096)
    info = plan(256, 2048, 49, 4)  # 1 group of rows of 100352: 25 tiles of 4032
    assert (info["row_groups"], info["tile_cols"]) == (1, 4032)
    assert plan(1024, 64, 1, 4)["tile_cols"] == 512  # rows no longer than a block
    assert plan(64, 256, 784, 4)["tile_cols"] == 0  # channel-first slabs: no row tiles
    cache_sizes(32 << 10, 512 << 10, 32 * mib)  # the EPYC
    assert plan(2048, 2048, 1, 4)["tile_cols"] == 2048  # beyond the last level
    assert plan(1024, 1024, 1, 4)["tile_cols"] == 512  # 4 MiB: 16 MiB in four arrays
    assert plan(2048, 1024, 1, 4)["tile_cols"] == 1024  # 8 MiB: four arrays fill its L3
    assert plan(1024, 1024, 1, 8)["tile_cols"] == 1024  # float64, 8 MiB
    assert plan(2048, 1024, 1, 2)["tile_cols"] == 512  # 16-bit data: blocks
    info = plan(256, 1024, 49, 4)  # cols 50176 beyond the last level, 1 group
    assert info["row_groups"] == 1 and info["tile_cols"] == 3136  # 16 tiles
    cache_sizes(48 << 10, mib, 32 * mib)  # the EPYC Zen 5
    assert plan(1024, 4096, 1, 4)["tile_cols"] == 4096  # 16 MiB: four arrays fill its L3
    assert plan(256, 4096, 1, 4)["tile_cols"] == 512  # 4 MiB
    assert plan(256, 256, 64, 4)["tile_cols"] == 512  # rows of 16384 values, 16 MiB


def test_elementwise_tiles_and_prefetching_follow_the_shape(cache_sizes):
    # Rows of up to 1024 values are normalized a group's rows at a time, except rows of two
    # column blocks in fewer than 4 groups that run on two threads (from 96K values in the
    # two passes): these keep the reduction's tiles. Rows shorter than 512 values are taken
    # several at a time (runs of 512 values) by the passes that stream their output, and
    # in cache by those over rows of at most 64 values in arrays of 16K values or more.
    # The row reductions prefetch ahead for arrays beyond min(last level, 8 L2s) (the
    # streaming threshold, except on a last level of at most 64 L2s: there outputs stream
    # once the pass's arrays reach half of it), and for arrays of rows of at most 256 values beyond the L2; with an
    # L2 of at most 512 KiB, float32 and float64 rows longer than a column block (512
    # values) take no prefetches at all (row_prefetch), 16-bit rows and shorter rows do.
    # The elementwise row loops that stream prefetch as row_prefetch says on a last level
    # of at most 64 L2s and an L1d of at least 48 KiB only (stream_prefetch).
    # The gradient sums of arrays whose x and dy do not fit in the last level together (a
    # near one: whose four x-sized arrays of a step reach it), and of rows that take no
    # prefetches, read chunks of a sixteenth of the L1 (at least 4 rows;
    # grad_chunk_bytes; 0: their own chunks). Where the last level is far, the float32 and
    # float64 row reductions that prefetch ask for 128 KiB of their arrays ahead
    # (ahead_bytes; 0: 32 rows ahead).
    plan = _core._batch_norm_plan
    mib = 1 << 20
    cache_sizes(48 << 10, 2 * mib, 480 * mib)  # the Xeon
    assert plan(64, 256, 1, 4)["elementwise_tiles"] == 1  # 1 group, 1 column block
    assert plan(32, 1024, 1, 4)["elementwise_tiles"] == 1  # 64K values: one thread
    assert plan(48, 1024, 1, 4)["elementwise_tiles"] == 2  # 1 group: its 2 tiles
    assert plan(96, 1024, 1, 4)["elementwise_tiles"] == 6  # 3 groups: their 6 tiles
    assert plan(128, 1024, 1, 4)["elementwise_tiles"] == 4  # 4 groups, whole rows
    assert plan(64, 200, 4, 4)["elementwise_tiles"] == 2  # short spatial, 800 columns
    assert plan(40, 200, 4, 4)["elementwise_tiles"] == 1  # 64K values: one thread
    assert plan(64, 2048, 1, 4)["elementwise_tiles"] == 8  # longer rows: the tiles
    assert plan(64, 256, 784, 4)["elementwise_tiles"] == 0  # channel-first runs
    runs = lambda *view: (plan(*view)["forward_row_run"],  # noqa: E731
                          plan(*view)["backward_row_run"])
    assert runs(64, 256, 1, 4) == (1, 1)  # in cache, rows of 256 values
    assert runs(256, 64, 1, 4) == (8, 8)  # in cache, 16K values in rows of 64
    assert runs(255, 64, 1, 4) == (1, 1)  # fewer values
    assert runs(2, 8, 1, 4) == (1, 1)
    assert runs(4096, 16, 1, 2) == (32, 32)
    assert runs(32 * 56 * 56, 128, 1, 2) == (4, 4)  # streamed (25.7 MB of x)
    assert runs(4 * 56 * 56, 128, 1, 4) == (1, 4)  # the backward's three arrays streamed
    assert runs(64, 256, 784, 4) == (0, 0)  # channel-first runs
    assert not plan(64, 256, 1, 4)["reduce_ahead"]
    assert not plan(1024, 4096, 1, 4)["reduce_ahead"]  # 16 MiB: 8 L2s
    assert plan(1025, 4096, 1, 4)["reduce_ahead"]
    assert plan(32 * 56 * 56, 64, 1, 4)["reduce_ahead"]  # NHWC (32, 56, 56, 64)
    assert plan(8 * 56 * 56, 64, 1, 4)["reduce_ahead"]  # 6.4 MB of rows of 64 values
    assert not plan(4 * 56 * 56, 64, 1, 2)["reduce_ahead"]  # 1.6 MB: within the L2
    assert plan(8192, 256, 1, 4)["reduce_ahead"]  # 8 MiB of rows of 256 values
    assert not plan(2048, 512, 1, 4)["reduce_ahead"]  # rows of 512 values
    assert not plan(64, 256, 784, 4)["reduce_ahead"]  # slabs: no row reductions
    for view in ((2048, 1024, 1, 4), (1024, 4096, 1, 8), (64, 256, 64, 4), (16, 64, 1, 4)):
        assert plan(*view)["row_prefetch"]
        assert not plan(*view)["stream_prefetch"]  # a far L3: 240 L2s
        assert plan(*view)["stream_direct"]  # its streaming row loops: from registers
    assert not plan(2048, 1024, 1, 2)["stream_direct"]  # 16-bit: tiles
    assert plan(100352, 64, 1, 4)["grad_chunk_bytes"] == 0  # 51 MB: in this L3
    assert plan(1 << 20, 64, 1, 4)["grad_chunk_bytes"] == 3 << 10  # 512 MiB
    assert plan(16384, 2048, 1, 4)["grad_chunk_bytes"] == 0  # 4 x 128 MiB: a far L3
    ahead = lambda *view: plan(*view)["ahead_bytes"]  # noqa: E731
    for view in ((4096, 4096, 1, 4), (4096, 4096, 1, 8), (32 * 56 * 56, 64, 1, 4)):
        assert ahead(*view) == 128 << 10
    assert ahead(4096, 4096, 1, 2) == 0  # 16-bit: their own
    assert ahead(1024, 4096, 1, 4) == 0  # 16 MiB: no prefetches (reduce_ahead)
    assert ahead(64, 256, 784, 4) == 0  # slabs: no row reductions
    cache_sizes(48 << 10, mib, 32 * mib)  # the EPYC Zen 5
    assert plan(4096, 1024, 1, 4)["reduce_ahead"] and plan(4096, 1024, 1, 4)["row_prefetch"]
    assert plan(4096, 4096, 1, 4)["row_prefetch"]
    for view in ((4096, 4096, 1, 4), (100352, 64, 1, 4), (8192, 256, 1, 2)):
        assert plan(*view)["stream_prefetch"]  # a near L3: 32 L2s
        assert not plan(*view)["stream_direct"]  # tiles
    assert plan(100352, 64, 1, 4)["grad_chunk_bytes"] == 3 << 10  # NHWC (32, 56, 56, 64)
    assert plan(4096, 4096, 1, 4)["ahead_bytes"] == 0  # a near L3: 32 rows
    cache_sizes(32 << 10, mib, 32 * mib)  # the EPYC Zen 4: a 32 KiB L1d
    assert plan(4096, 4096, 1, 4)["row_prefetch"] and plan(8192, 256, 1, 2)["row_prefetch"]
    for view in ((4096, 4096, 1, 4), (100352, 64, 1, 4), (8192, 256, 1, 2)):
        assert not plan(*view)["stream_prefetch"]
    # x and dy of exactly the L3, (16384, 256) 16 MiB each, (8192, 256) 8 MiB each: a
    # step's four arrays reach the L3
    for view in ((1024, 4096, 1, 4), (16384, 256, 1, 4), (8192, 256, 1, 4), (512, 4096, 1, 8)):
        assert plan(*view)["grad_chunk_bytes"] == 2 << 10
    assert plan(8191, 256, 1, 4)["grad_chunk_bytes"] == 0  # just below
    assert plan(4096, 256, 1, 4)["grad_chunk_bytes"] == 0  # 4 MiB each
    cache_sizes(32 << 10, 512 << 10, 32 * mib)  # the EPYC Zen 3: arrays reaching 16 MiB
    assert runs(8192, 128, 1, 4) == (1, 1)  # 4 MiB of x: x, y and dy, dx, x in cache
    assert runs(16384, 128, 1, 4) == (4, 4)  # 8 MiB: x and y reach half the L3, streamed
    assert runs(12288, 128, 1, 4) == (1, 4)  # 6 MiB: the backward's three arrays streamed
    assert not plan(1024, 1024, 1, 4)["reduce_ahead"]
    assert plan(4096, 64, 1, 4)["reduce_ahead"]  # 1 MiB of rows of 64 values
    assert not plan(2048, 64, 1, 4)["reduce_ahead"]  # 512 KiB: the L2
    assert plan(8192, 512, 1, 4)["reduce_ahead"]  # rows of a column block
    assert plan(8192, 512, 1, 4)["row_prefetch"]
    for view in ((2048, 1024, 1, 4), (4096, 4096, 1, 4), (1024, 1536, 1, 4),
                 (256, 256, 64, 4), (4096, 4096, 1, 8)):  # longer rows, 4 and 8 bytes
        assert not plan(*view)["reduce_ahead"] and not plan(*view)["row_prefetch"]
        assert not plan(*view)["stream_prefetch"]
    assert not plan(100352, 64, 1, 4)["stream_prefetch"]  # NHWC (32, 56, 56, 64): 32 KiB L1d
    assert plan(4096, 1024, 1, 2)["reduce_ahead"]  # 16-bit rows keep them
    assert plan(2048, 1024, 1, 2)["row_prefetch"]
    assert not plan(64, 256, 784, 4)["row_prefetch"]  # channel-first runs: no row loops
    assert plan(100352, 64, 1, 4)["grad_chunk_bytes"] == 2 << 10  # NHWC (32, 56, 56, 64)
    assert plan(100352, 64, 1, 8)["grad_chunk_bytes"] == 2 << 10
    assert plan(16384, 64, 1, 4)["grad_chunk_bytes"] == 0  # x and dy in the L3
    assert plan(4096, 4096, 1, 4)["grad_chunk_bytes"] == 2 << 10  # no prefetching: 4 rows
    assert plan(1024, 1024, 1, 4)["grad_chunk_bytes"] == 2 << 10  # (tiles of 512 columns:
    assert plan(1024, 1024, 1, 4)["tile_cols"] == 512  # not whole rows, their own chunks)
    assert plan(64, 256, 784, 4)["grad_chunk_bytes"] == 0  # slabs


def test_cache_blocked_groups_follow_the_cache_sizes(cache_sizes):
    # Channel-first data beyond the L2 is normalized in groups of channels whose inputs
    # fit in a quarter of the L2 (x forward, x and dy backward; a single channel up to
    # half of it; 16-bit data on a core with an L2 of at most 512 KiB and a near last
    # level: twice the L2), at least 8 groups where there are 8 channels; data that fits
    # in the L2, or channels bigger than half of it, are not blocked (0), but float32 and
    # float64 ones blocked in a near last level.
    plan = _core._batch_norm_plan
    cache_sizes(48 << 10, 2 << 20, 480 << 20)
    blocks = lambda *view: (plan(*view)["forward_block_channels"],  # noqa: E731
                            plan(*view)["backward_block_channels"])
    assert blocks(64, 256, 784, 4) == (2, 1)  # 200 KiB channels: 2 and 1 in 512 KiB
    assert blocks(64, 32, 784, 2) == (4, 2)  # 8 groups of 4, not 7 of 5
    assert blocks(128, 6, 784, 4) == (1, 1)  # 800 KiB in the backward: one channel
    assert blocks(168, 6, 784, 4) == (1, 0)  # over 1 MiB in the backward: not blocked
    assert blocks(8, 16, 784, 4) == (0, 0)  # 400 KiB: in the L2
    assert blocks(1024, 8, 784, 4) == (0, 0)  # 3 MiB channels
    assert blocks(64, 256, 784, 2) == (5, 2)  # 16-bit data
    cache_sizes(48 << 10, 1 << 20, 32 << 20)  # the EPYC Zen 5
    assert blocks(64, 256, 784, 2) == (2, 1)
    cache_sizes(32 << 10, 512 << 10, 32 << 20)  # the EPYC Zen 3: 16-bit groups of 2 L2s
    assert blocks(64, 256, 784, 2) == (10, 5)  # 100 and 200 KiB channels in 1 MiB
    assert blocks(32, 64, 3136, 2) == (5, 0)  # 200 KiB; 400 KiB channels: not blocked
    assert blocks(64, 256, 784, 4) == (1, 10)  # float32: a quarter of the L2, or the L3


def test_blocked_passes_request_short_runs_ahead_on_a_near_last_level(cache_sizes):
    # Where the last-level cache is near the cores, the cache-blocked passes over float32
    # and float64 data request the next rows' slabs of a channel into the L2 when a
    # group's run of one row is at most 8 KiB: the backward for any group, the forward for
    # groups of one channel. Never for 16-bit data, where the passes are not blocked, nor
    # where the last level is far.
    ahead = lambda *view: (_core._batch_norm_plan(*view)["forward_block_prefetch"],  # noqa: E731
                           _core._batch_norm_plan(*view)["backward_block_prefetch"])
    blocks = lambda *view: (_core._batch_norm_plan(*view)["forward_block_channels"],  # noqa: E731
                            _core._batch_norm_plan(*view)["backward_block_channels"])
    cache_sizes(32 << 10, 1 << 20, 32 << 20)  # the EPYC Zen 4
    assert blocks(64, 256, 784, 4) == (1, 1) and ahead(64, 256, 784, 4) == (True, True)
    assert blocks(32, 64, 3136, 4) == (1, 5)  # runs of 12.5 and 61 KiB
    assert ahead(32, 64, 3136, 4) == (False, False)
    assert blocks(256, 256, 196, 8) == (1, 5)  # float64: runs of 1.5 and 7.7 KiB
    assert ahead(256, 256, 196, 8) == (True, True)
    assert blocks(64, 256, 784, 8) == (1, 5)  # runs of 6.1 and 31 KiB
    assert ahead(64, 256, 784, 8) == (True, False)
    assert blocks(64, 512, 196, 4) == (5, 2)  # the forward's groups of several channels
    assert ahead(64, 512, 196, 4) == (False, True)
    assert blocks(64, 256, 784, 2) == (2, 1) and ahead(64, 256, 784, 2) == (False, False)
    assert blocks(8, 16, 784, 4) == (0, 0) and ahead(8, 16, 784, 4) == (False, False)
    assert ahead(64, 64, 32, 4) == (False, False)  # short slabs: rows
    cache_sizes(48 << 10, 2 << 20, 480 << 20)  # the Xeon: its L3 is far
    assert blocks(64, 256, 784, 4) == (2, 1) and ahead(64, 256, 784, 4) == (False, False)


def test_blocked_groups_take_runs_of_whole_granules_on_a_near_last_level(cache_sizes):
    # Where the last level is near, a blocked group's run of one row is whole 16-byte
    # granules and at least 512 bytes: the group widens to the fewest channels that make
    # it so, within half the L2, or the passes run in two passes (0); rows that are not
    # whole granules are not blocked either. A far last level keeps its groups.
    blocks = lambda *view: (_core._batch_norm_plan(*view)["forward_block_channels"],  # noqa: E731
                            _core._batch_norm_plan(*view)["backward_block_channels"])
    cache_sizes(32 << 10, 1 << 20, 32 << 20)  # the EPYC Zen 4
    assert blocks(256, 256, 196, 2) == (2, 2)  # 392-byte slabs: 1 channel -> 2
    assert blocks(512, 128, 196, 2) == (2, 0)  # 2 channels of 401 KiB: over half the L2
    assert blocks(256, 256, 225, 2) == (0, 0)  # 450 bytes: 8 channels for whole granules
    assert blocks(64, 256, 729, 4) == (0, 0)  # 2916 bytes: 4 channels, 744 KiB
    assert blocks(512, 128, 100, 4) == (2, 0)  # 400 bytes: granules, but short
    assert blocks(256, 255, 196, 2) == (0, 0)  # rows of 255 x 392 bytes
    assert blocks(64, 256, 784, 4) == (1, 1)  # 3136 bytes: as they were
    assert blocks(64, 256, 784, 2) == (2, 1)
    assert blocks(128, 256, 144, 4) == (3, 1)
    cache_sizes(48 << 10, 2 << 20, 480 << 20)  # the Xeon: its L3 is far
    assert blocks(512, 128, 196, 2) == (2, 1)
    assert blocks(256, 256, 225, 2) == (4, 2)


@pytest.mark.parametrize("dtype,spatial,near,far",
                         [(np.float32, (10, 10), (2, 0), (1, 1)),
                          (fo.bfloat16, (14, 14), (2, 2), (1, 1)),
                          (np.float16, (14, 14), (2, 2), (1, 1)),
                          (fo.bfloat16, (15, 15), (0, 0), (1, 0))],
                         ids=["f32", "bf16", "f16", "bf16-odd"])
def test_groups_widened_for_whole_granules_give_the_same_bits(isa, threads, cache_sizes, dtype,
                                                              spatial, near, far):
    # One shape under a near last level (groups widened, or two passes), a far one (the
    # groups of one channel) and an L2 that holds it (not blocked), with streamed outputs
    # in the first two: the same bits, on 1 and 2 threads.
    rng = np.random.default_rng(6)
    shape = (20, 12, *spatial)
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    pdt = np.float32
    weight = rng.uniform(0.5, 2, 12).astype(pdt)
    bias = rng.standard_normal(12).astype(pdt)
    view = (20, 12, spatial[0] * spatial[1], np.dtype(dtype).itemsize)
    results, plans = [], []
    for caches in [(32 << 10, 32 << 10, 96 << 10), (32 << 10, 32 << 10, 1 << 40),
                   (32 << 10, 1 << 30, 1 << 31)]:
        cache_sizes(*caches)
        plans.append((_core._batch_norm_plan(*view)["forward_block_channels"],
                      _core._batch_norm_plan(*view)["backward_block_channels"]))
        for threads_used in (1, 2):
            fo.set_num_threads(threads_used)
            rm, rv = np.zeros(12, pdt), np.ones(12, pdt)
            y, mean, invstd = fo.batch_norm_forward(x, weight, bias, rm, rv)
            dx, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd)
            results.append([y, mean, invstd, rm, rv, dx, dw, db])
    assert plans == [near, far, (0, 0)]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()


def test_channels_too_big_to_block_are_shared_by_the_threads_on_a_far_last_level(cache_sizes,
                                                                                 threads):
    # Channel-first data of long slabs whose channel is more than half the L2 (no blocked
    # group of one channel) is shared among the threads, channel by channel, where the
    # last-level cache is far (the Xeon); a near one (the EPYC) keeps its own schedules,
    # as do data that fit in the L2, short slabs (rows) and channel-last data.
    plan = _core._batch_norm_plan
    shared = lambda *view: (plan(*view)["forward_shared"],  # noqa: E731
                            plan(*view)["backward_shared"])
    blocks = lambda *view: (plan(*view)["forward_block_channels"],  # noqa: E731
                            plan(*view)["backward_block_channels"])
    fo.set_num_threads(2)
    cache_sizes(48 << 10, 2 << 20, 480 << 20)  # the Xeon
    assert blocks(64, 256, 784, 4) == (2, 1) and shared(64, 256, 784, 4) == (False, False)
    # slabs of at least 2 KiB in the forward, 12 KiB in the backward (16-bit: 16 KiB)
    assert blocks(832, 256, 784, 4) == (0, 0) and shared(832, 256, 784, 4) == (True, False)
    assert shared(64, 64, 12544, 2) == (True, True)  # bfloat16 (64, 64, 112, 112)
    assert shared(128, 64, 3136, 8) == (True, True)  # float64 (128, 64, 56, 56)
    assert shared(128, 64, 3136, 4) == (True, True)  # float32: slabs of 12.5 KiB
    assert shared(512, 64, 1600, 4) == (True, False)  # 6.25 KiB
    assert shared(256, 64, 3136, 2) == (True, False)  # bfloat16: 6 KiB (16 KiB for 16-bit)
    assert shared(1024, 256, 784, 2) == (False, False)  # bfloat16: slabs of 1.5 KiB
    assert blocks(48, 6, 4096, 4) == (1, 0) and shared(48, 6, 4096, 4) == (False, True)
    fo.set_num_threads(2)
    assert shared(832, 256, 784, 4) == (True, False)
    fo.set_num_threads(1)  # one thread: the two passes
    assert shared(832, 256, 784, 4) == (False, False)
    fo.set_num_threads(2)
    assert shared(8, 16, 784, 4) == (False, False)  # in the L2
    assert shared(1, 1, 1 << 22, 4) == (False, False)  # one row: one thread's slab
    assert shared(65536, 64, 32, 4) == (False, False)  # short slabs: rows
    assert shared(832 * 784, 256, 1, 4) == (False, False)  # channel-last
    cache_sizes(32 << 10, 1 << 20, 32 << 20)  # the EPYC Zen 4: its L3 is near
    assert shared(832, 256, 784, 4) == (False, False)
    assert shared(64, 64, 12544, 2) == (False, False)


def test_backward_reads_four_slab_runs_side_by_side_on_a_far_last_level(cache_sizes):
    # The blocked and shared backward passes read four rows' slabs of a channel side by
    # side where the last level is far, for 16-bit slabs and float32 and float64 slabs of
    # at least 2 KiB; one at a time otherwise (and 0 where the data is not cut into slabs).
    streams = lambda *view: _core._batch_norm_plan(*view)["backward_grad_streams"]  # noqa: E731
    cache_sizes(48 << 10, 2 << 20, 480 << 20)  # the Xeon
    assert streams(64, 256, 784, 4) == 4
    assert streams(64, 256, 784, 8) == 4
    assert streams(16, 512, 196, 4) == 1  # slabs of 784 bytes
    assert streams(64, 256, 784, 2) == 4  # 16-bit
    assert streams(256, 256, 196, 2) == 4  # 16-bit slabs of 392 bytes
    assert streams(64, 64, 32, 4) == 0  # short slabs: rows
    cache_sizes(32 << 10, 1 << 20, 32 << 20)  # the EPYC Zen 4
    assert streams(64, 256, 784, 4) == 1
    assert streams(64, 256, 784, 2) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_row_reductions_prefetching_fewer_rows_ahead_give_the_same_results(isa, threads,
                                                                          cache_sizes, dtype):
    # Rows of 16 KiB (32 KiB) that prefetch, on a far last level: the statistics ask for 8
    # (4) rows ahead and the gradient sums 4 (2), 128 KiB (ahead_bytes), instead of 32; on
    # a near one 32. The same outputs, statistics and parameter gradients, on 1 and 2
    # threads, and the float64 references'. 322 rows: row groups that end inside a chunk.
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((322, 4096)) * 2 + 30).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    weight = rng.uniform(0.5, 2, 4096).astype(dtype)
    bias = rng.standard_normal(4096).astype(dtype)
    results, aheads = [], []
    for caches in [(48 << 10, 600 << 10, 1 << 30), (48 << 10, 600 << 10, 16 << 20)]:
        cache_sizes(*caches)
        info = _core._batch_norm_plan(322, 4096, 1, x.itemsize)
        assert info["reduce_ahead"]
        aheads.append(info["ahead_bytes"])
        for threads_used in (1, 2):
            fo.set_num_threads(threads_used)
            y, mean, invstd = fo.batch_norm_forward(x, weight, bias)
            results.append((y, mean, invstd) + fo.batch_norm_backward(dy, x, weight, mean, invstd))
    assert aheads == [128 << 10, 0]
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()
    y_ref, mean_ref, invstd_ref, _, _ = batch_norm_forward_reference(x, weight, bias)
    np.testing.assert_allclose(results[0][1], mean_ref, rtol=1e-12)
    np.testing.assert_allclose(results[0][2], invstd_ref, rtol=1e-9)
    assert_close(results[0][0], y_ref, dtype, "y")
    expected = batch_norm_backward_reference(dy, x, weight, results[0][1], results[0][2])
    for actual, ref, name in zip(results[0][3:], expected, ("dx", "dweight", "dbias")):
        assert_close(actual, ref, dtype, name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, fo.bfloat16, np.float16],
                         ids=["f32", "f64", "bf16", "f16"])
@pytest.mark.parametrize("shape", [(11, 5, 24, 25), (7, 4, 9000)], ids=["odd-rows", "two-blocks"])
def test_backward_slab_runs_side_by_side_give_the_same_bits(isa, threads, cache_sizes, dtype,
                                                           shape):
    # Four rows side by side (a far last level: blocked, and shared for the long slabs)
    # and one at a time (a near one, and data in the L2), on 1 and 2 threads: the same
    # dx and parameter gradients. Row counts that leave 1 to 3 rows in the last group.
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(shape) * 3 + 40).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    params = np.float32 if np.dtype(dtype).itemsize == 2 else dtype  # 16-bit x: float32 ones
    weight = rng.uniform(0.5, 2, shape[1]).astype(params)
    bias = rng.standard_normal(shape[1]).astype(params)
    view = (shape[0], shape[1], int(np.prod(shape[2:])), np.dtype(dtype).itemsize)
    results, plans = [], []
    l2 = (128 if np.dtype(dtype).itemsize == 2 else 256) << 10  # smaller than x and dy
    for caches in [(4 << 10, l2, 1 << 40), (4 << 10, l2, 2 << 20), (1 << 30, 1 << 30, 1 << 31)]:
        cache_sizes(*caches)
        fo.set_num_threads(2)
        info = _core._batch_norm_plan(*view)
        plans.append((info["backward_grad_streams"], info["backward_block_channels"] > 0 or
                      info["backward_shared"]))
        for threads_used in (1, 2):
            fo.set_num_threads(threads_used)
            _, mean, invstd = fo.batch_norm_forward(x, weight, bias)
            results.append(fo.batch_norm_backward(dy, x, weight, mean, invstd))
    assert plans[0] == (4, True) and plans[1][0] == 1 and plans[2] == (1, False)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, fo.bfloat16, np.float16],
                         ids=["f32", "f64", "bf16", "f16"])
@pytest.mark.parametrize("shape", [(9, 3, 91, 91), (6, 2, 20001), (2, 3, 30000)],
                         ids=["odd-rows", "two-blocks", "two-rows"])
def test_shared_channels_give_the_bits_of_the_other_schedules(isa, threads, cache_sizes, dtype,
                                                               shape):
    # Channels shared among 2 and 3 threads (L2s of 16 and 128 KiB, far from the cores;
    # one thread runs the two passes), with rows split unevenly, slabs of two blocks and outputs streamed or not
    # (the second L2's eight hold some of the arrays), against the
    # schedule of an L2 that holds the data: the same bits for the outputs, the
    # statistics, the running statistics and the parameter gradients, which match the
    # float64 references; with and without weight.
    rng = np.random.default_rng(8)
    channels = shape[1]
    x = (rng.standard_normal(shape) * 3 + 40).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    pdt = np.float64 if dtype == np.float64 else np.float32
    view = (shape[0], channels, int(np.prod(shape[2:])), np.dtype(dtype).itemsize)
    for affine in (True, False):
        weight = rng.uniform(0.5, 2, channels).astype(pdt) if affine else None
        bias = rng.standard_normal(channels).astype(pdt) if affine else None
        results = []
        for caches, threads_used in [((1 << 30, 1 << 30, 1 << 31), 2),
                                     ((4 << 10, 16 << 10, 1 << 40), 1),
                                     ((4 << 10, 16 << 10, 1 << 40), 2),
                                     ((4 << 10, 16 << 10, 1 << 40), 3),
                                     ((4 << 10, 128 << 10, 1 << 40), 2)]:
            cache_sizes(*caches)
            fo.set_num_threads(threads_used)
            info = _core._batch_norm_plan(*view)
            shared = caches[1] != 1 << 30 and threads_used > 1  # one thread: two passes
            assert (info["forward_shared"], info["backward_shared"]) == (shared, shared)
            rm, rv = np.full(channels, 0.5, pdt), np.full(channels, 2.0, pdt)
            y, mean, invstd = fo.batch_norm_forward(x, weight, bias, rm, rv)
            dx, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd)
            results.append([a for a in (y, mean, invstd, rm, rv, dx, dw, db) if a is not None])
        for other in results[1:]:
            for a, b in zip(results[0], other):
                assert a.tobytes() == b.tobytes()
        y_ref, mean_ref, invstd_ref, rm_ref, rv_ref = batch_norm_forward_reference(
            x, weight, bias, np.full(channels, 0.5, pdt), np.full(channels, 2.0, pdt))
        dx_ref, dw_ref, db_ref = batch_norm_backward_reference(dy, x, weight, mean_ref,
                                                               invstd_ref)
        y, mean, invstd, rm, rv, dx, *grads = results[-1]
        tol = {np.float64: 1e-12, np.float32: 2e-5}.get(dtype, 2e-2)
        np.testing.assert_allclose(mean, mean_ref, rtol=1e-12)
        np.testing.assert_allclose(invstd, invstd_ref, rtol=1e-9)
        np.testing.assert_allclose(rm, rm_ref, rtol=1e-6 if pdt == np.float32 else 1e-12)
        np.testing.assert_allclose(rv, rv_ref, rtol=1e-6 if pdt == np.float32 else 1e-12)
        np.testing.assert_allclose(y.astype(np.float64), y_ref, rtol=tol, atol=tol * 4)
        np.testing.assert_allclose(dx.astype(np.float64), dx_ref, rtol=tol, atol=tol * 4)
        if affine:
            np.testing.assert_allclose(grads[0], dw_ref, rtol=1e-4, atol=1e-3)
            np.testing.assert_allclose(grads[1], db_ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, fo.bfloat16, np.float16],
                         ids=["f32", "f64", "bf16", "f16"])
@pytest.mark.parametrize("shape,channel_axis,caches",
                         [((24, 13, 10, 11), 1, (1 << 15, 1 << 15, 1 << 16)),
                          ((24, 13, 10, 11), 1, (1 << 15, 1 << 15, 1 << 40)),
                          ((24, 12, 14, 14), 1, (1 << 15, 1 << 16, 1 << 17)),
                          ((2, 7, 5, 1000), 1, (1 << 15, 1 << 20, 1 << 16)),
                          ((300, 101), 1, (1 << 15, 1 << 20, 1 << 16)),
                          ((6, 5, 7, 65), -1, (1 << 15, 1 << 20, 1 << 16)),
                          ((300, 101), 1, (1 << 14, 1 << 14, 1 << 40)),
                          ((6, 5, 7, 65), -1, (1 << 12, 1 << 12, 1 << 40))],
                         ids=["two-pass-near", "blocked-far", "blocked-near", "runs", "rows",
                              "nhwc-runs-of-rows", "rows-far", "nhwc-runs-of-rows-far"])
def test_streamed_outputs_leave_the_bytes_around_them(isa, cache_sizes, shape, channel_axis,
                                                      caches, dtype):
    # Streamed runs that start or end inside a 16-byte granule write those edges with
    # masked non-temporal stores: every value lands, and no byte outside the output (the
    # rest of its first and last granules, here a marker) is written. Outputs at offsets
    # of a few values past a line, odd rows and slabs, cache-blocked groups and two-pass
    # runs alike, and float32 and float64 rows on a far last level stored straight from
    # registers (stream_direct); the bits those of cached stores.
    rng = np.random.default_rng(12)
    x, weight, bias, _, _ = make_inputs(rng, shape, channel_axis, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    if dtype in (fo.bfloat16, np.float16):
        weight, bias = weight.astype(np.float32), bias.astype(np.float32)
    y_ref, dx_ref = batch_norm_with_cached_stores(x, dy, weight, bias, channel_axis)
    # the eval-mode backward (dx = dy * weight * invstd) with cached stores
    cache_sizes(fo.build_info()["cache_bytes"]["l1d"], 1 << 40, 1 << 40)
    _, mean, invstd = fo.batch_norm_forward(x, weight, bias, channel_axis=channel_axis)
    eval_ref, _, _ = fo.batch_norm_backward(dy, x, weight, mean, invstd, training=False,
                                            channel_axis=channel_axis)
    cache_sizes(*caches)
    item = np.dtype(dtype).itemsize
    outer = int(np.prod(shape[:channel_axis % len(shape)]))
    inner = int(np.prod(shape[channel_axis % len(shape) + 1:]))
    info = _core._batch_norm_plan(outer, shape[channel_axis], inner, item)
    assert info["stream_direct"] == (caches[2] == 1 << 40 and info["tile_cols"] > 0
                                     and item >= 4)
    for at in [item, 3 * item, 16 + item, 40]:
        outputs = []
        for _ in range(2):
            raw = np.full(x.nbytes + 192, 0xA5, np.uint8)
            start = (at - raw.ctypes.data) % 64 + 64
            outputs.append((raw, start, raw[start:start + x.nbytes].view(dtype).reshape(shape)))
        (y_raw, y_start, y), (dx_raw, dx_start, dx) = outputs
        _, mean, invstd = fo.batch_norm_forward(x, weight, bias, channel_axis=channel_axis,
                                                out=y)
        fo.batch_norm_backward(dy, x, weight, mean, invstd, channel_axis=channel_axis, out=dx)
        assert y.tobytes() == y_ref.tobytes(), f"y at {at}"
        assert dx.tobytes() == dx_ref.tobytes(), f"dx at {at}"
        for raw, begin in ((y_raw, y_start), (dx_raw, dx_start)):
            assert np.all(raw[:begin] == 0xA5) and np.all(raw[begin + x.nbytes:] == 0xA5), at
        dx_raw[:] = 0xA5
        fo.batch_norm_backward(dy, x, weight, mean, invstd, training=False,
                               channel_axis=channel_axis, out=dx)
        assert dx.tobytes() == eval_ref.tobytes(), f"eval dx at {at}"
        assert np.all(dx_raw[:dx_start] == 0xA5), at
        assert np.all(dx_raw[dx_start + x.nbytes:] == 0xA5), at


def test_statistics_streams_follow_the_cache_sizes(cache_sizes):
    # The slab statistics read four runs side by side, or one at a time when the
    # last-level cache is near the cores (at most 64 L2s) and holds x and y.
    mib = 1 << 20
    streams = lambda *view: _core._batch_norm_plan(*view)["forward_slab_streams"]  # noqa: E731
    cache_sizes(48 << 10, mib, 32 * mib)  # the EPYC Zen 5
    assert streams(64, 128, 128, 4) == 1  # 4 MiB arrays: x and y in the L3
    assert streams(16, 512, 196, 4) == 1
    assert streams(32, 64, 3136, 4) == 4  # 24.5 MiB arrays: from memory
    assert streams(64, 256, 784, 2) == 4
    assert streams(64, 64, 32, 4) == 0  # short slabs: rows
    cache_sizes(48 << 10, 2 * mib, 480 * mib)  # the Xeon: its L3 is 240 L2s
    assert streams(64, 128, 128, 4) == 4
    cache_sizes(32 << 10, 512 << 10, 32 * mib)  # the EPYC (AVX2): 64 L2s
    assert streams(64, 128, 128, 4) == 1
    cache_sizes(32 << 10, 256 << 10, 32 * mib)  # 128 L2s
    assert streams(64, 128, 128, 4) == 4


@pytest.mark.parametrize("dtype", DTYPES + [fo.bfloat16], ids=["f32", "f64", "bf16"])
@pytest.mark.parametrize("shape", [(9, 24, 211), (33, 40, 213)], ids=["in-l2", "blocked"])
def test_statistics_streams_give_the_same_bits(isa, cache_sizes, shape, dtype):
    # One slab run at a time (a near L3) and four side by side (a far one) add the same
    # terms in the same order: outputs and statistics are bitwise the same, in the plain
    # reduction and in the cache-blocked forward (256 KiB L2s: the second shape's x is
    # beyond them). Odd row counts leave runs that are read alone.
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 3 + 40).astype(dtype)
    pdt = np.float64 if dtype == np.float64 else np.float32
    weight = rng.uniform(0.5, 2, shape[1]).astype(pdt)
    bias = rng.standard_normal(shape[1]).astype(pdt)
    results = []
    for last in (16 << 20, 480 << 20):  # 64 and 1920 L2s
        cache_sizes(48 << 10, 256 << 10, last)
        view = (shape[0], shape[1], shape[2], np.dtype(dtype).itemsize)
        near = last <= 64 * (256 << 10)
        assert _core._batch_norm_plan(*view)["forward_slab_streams"] == (1 if near else 4)
        y, mean, invstd = fo.batch_norm_forward(x, weight, bias)
        results.append([y, mean, invstd, *fo.batch_norm_stats(x)])
    blocked = _core._batch_norm_plan(*view)["forward_block_channels"]
    assert (blocked > 0) == (x.nbytes > 256 << 10)
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes()


def test_cache_sizes_are_the_machines():
    caches = fo.build_info()["cache_bytes"]
    assert 0 < caches["l1d"] <= caches["l2"] <= caches["last_level"]
    root = "/sys/devices/system/cpu/cpu0/cache"
    if not os.path.isdir(root):
        return
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    by_level = {}
    for index in sorted(os.listdir(root)):
        path = os.path.join(root, index)
        if not index.startswith("index"):
            continue
        with open(os.path.join(path, "type")) as f:
            if f.read().strip() == "Instruction":
                continue
        with open(os.path.join(path, "level")) as f:
            level = int(f.read())
        with open(os.path.join(path, "size")) as f:
            text = f.read().strip()
        by_level[level] = int(text.rstrip("KMG")) * units.get(text[-1], 1)
    if 1 in by_level:
        assert caches["l1d"] == by_level[1]
    if 2 in by_level:
        assert caches["l2"] == by_level[2]
    if by_level:
        assert caches["last_level"] == by_level[max(by_level)]


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_out_buffers_are_written_and_returned(rng, channel_axis):
    shape = (4, 3, 6, 5) if channel_axis == 1 else (4, 6, 5, 3)
    x, weight, bias, _, _ = make_inputs(rng, shape, channel_axis, np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y_out = np.full(shape, np.nan, np.float32)
    dx_out = np.full(shape, np.nan, np.float32)
    y, mean, invstd = fo.batch_norm_forward(x, weight, bias, channel_axis=channel_axis,
                                            out=y_out)
    dx, _, _ = fo.batch_norm_backward(dy, x, weight, mean, invstd, channel_axis=channel_axis,
                                      out=dx_out)
    assert y is y_out and dx is dx_out
    y_new, _, _ = fo.batch_norm_forward(x, weight, bias, channel_axis=channel_axis)
    dx_new, _, _ = fo.batch_norm_backward(dy, x, weight, mean, invstd,
                                          channel_axis=channel_axis)
    np.testing.assert_array_equal(y_out, y_new)
    np.testing.assert_array_equal(dx_out, dx_new)


def test_running_stats_update_uses_unbiased_variance():
    x = np.array([[1.0, 10.0], [3.0, 20.0], [5.0, 60.0]])  # (N=3, C=2)
    rm = np.array([0.5, -1.0])
    rv = np.array([2.0, 4.0])
    _, mean, invstd = fo.batch_norm_forward(x, running_mean=rm, running_var=rv, momentum=0.25,
                                            eps=0.0)
    np.testing.assert_allclose(mean, [3.0, 30.0], rtol=1e-14)
    np.testing.assert_allclose(invstd, 1 / np.sqrt([8 / 3, 1400 / 3]), rtol=1e-14)
    np.testing.assert_allclose(rm, [0.75 * 0.5 + 0.25 * 3.0, 0.75 * -1.0 + 0.25 * 30.0],
                               rtol=1e-14)
    np.testing.assert_allclose(rv, [0.75 * 2.0 + 0.25 * 4.0, 0.75 * 4.0 + 0.25 * 700.0],
                               rtol=1e-14)


def test_eval_mode_returns_running_stats():
    rm = np.array([1.0, -2.0], np.float32)
    rv = np.array([4.0, 0.25], np.float32)
    x = np.ones((3, 2, 4), np.float32)
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, invstd = fo.batch_norm_forward(x, None, None, rm, rv, training=False, eps=0.0)
    np.testing.assert_array_equal(mean, rm)
    assert mean is not rm and not np.shares_memory(mean, rm)
    np.testing.assert_array_equal(invstd, [0.5, 2.0])
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    np.testing.assert_array_equal(y[:, 0], 0.0)
    np.testing.assert_array_equal(y[:, 1], 6.0)


def test_nan_propagates_to_its_channel_only():
    x = np.random.default_rng(0).standard_normal((4, 3, 5, 5))
    x[1, 1, 2, 2] = np.nan
    rm, rv = np.zeros(3), np.ones(3)
    y, mean, invstd = fo.batch_norm_forward(x, running_mean=rm, running_var=rv)
    assert np.isnan(y[:, 1]).all() and np.isfinite(y[:, [0, 2]]).all()
    assert np.isnan(mean[1]) and np.isnan(rm[1]) and np.isnan(rv[1])
    assert np.isfinite(rm[[0, 2]]).all() and np.isfinite(rv[[0, 2]]).all()


def test_empty_arrays():
    # No channels: nothing to do, in either mode.
    y, mean, invstd = fo.batch_norm_forward(np.zeros((4, 0, 3), np.float32))
    assert y.shape == (4, 0, 3) and mean.shape == invstd.shape == (0,)
    # No samples: eval mode is a no-op that still reports the running statistics.
    rm, rv = np.zeros(3), np.full(3, 3.0)
    y, mean, invstd = fo.batch_norm_forward(np.zeros((0, 3, 4)), None, None, rm, rv,
                                            training=False, eps=1.0)
    assert y.shape == (0, 3, 4)
    np.testing.assert_array_equal(invstd, 0.5)
    dx, dw, db = fo.batch_norm_backward(np.zeros((0, 3, 4)), np.zeros((0, 3, 4)),
                                        np.ones(3), mean, invstd)
    assert dx.shape == (0, 3, 4)
    np.testing.assert_array_equal(dw, 0.0)
    np.testing.assert_array_equal(db, 0.0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 5),
    c=st.integers(1, 6),
    spatial=st.lists(st.integers(1, 6), max_size=3),
    channel_last=st.booleans(),
    training=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_shapes_match_reference(n, c, spatial, channel_last, training, seed):
    shape = (n, *spatial, c) if channel_last else (n, c, *spatial)
    axis = -1 if channel_last else 1
    if training and n * int(np.prod(spatial)) < 2:
        return  # rejected, tested in test_bad_inputs
    rng = np.random.default_rng(seed)
    x, weight, bias, rm, rv = make_inputs(rng, shape, axis, np.float64)
    dy = rng.standard_normal(shape)
    y_ref, mean_ref, invstd_ref, _, _ = batch_norm_forward_reference(
        x, weight, bias, rm, rv, training=training, channel_axis=axis)
    y, mean, invstd = fo.batch_norm_forward(x, weight, bias, rm, rv, training=training,
                                            channel_axis=axis)
    assert_close(y, y_ref, np.float64, "y")
    dx_ref, dw_ref, db_ref = batch_norm_backward_reference(dy, x, weight, mean, invstd,
                                                           training=training, channel_axis=axis)
    dx, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd, training=training,
                                        channel_axis=axis)
    assert_close(dx, dx_ref, np.float64, "dx")
    assert_close(dw, dw_ref, np.float64, "dweight")
    assert_close(db, db_ref, np.float64, "dbias")


# ---------------------------------------------------------------------------------------
# Gradients: finite differences in float64, torch autograd when installed.


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape,channel_axis", [((3, 2, 2, 3), 1), ((3, 2, 3, 2), -1)],
                         ids=["nchw", "nhwc"])
def test_gradients_match_finite_differences(rng, shape, channel_axis, training):
    x, weight, bias, rm, rv = make_inputs(rng, shape, channel_axis, np.float64)
    g = rng.standard_normal(shape)  # loss = sum(g * y)

    def loss(x_, w_, b_):
        y, _, _ = fo.batch_norm_forward(x_, w_, b_, rm.copy(), rv.copy(), training=training,
                                        channel_axis=channel_axis)
        return float(np.sum(g * y))

    def numeric(arr, f):
        grad = np.zeros_like(arr)
        h = 1e-6
        for i in np.ndindex(arr.shape):
            saved = arr[i]
            arr[i] = saved + h
            up = f()
            arr[i] = saved - h
            down = f()
            arr[i] = saved
            grad[i] = (up - down) / (2 * h)
        return grad

    _, mean, invstd = fo.batch_norm_forward(x, weight, bias, rm.copy(), rv.copy(),
                                            training=training, channel_axis=channel_axis)
    dx, dw, db = fo.batch_norm_backward(g, x, weight, mean, invstd, training=training,
                                        channel_axis=channel_axis)
    f = lambda: loss(x, weight, bias)  # noqa: E731
    np.testing.assert_allclose(dx, numeric(x, f), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, numeric(weight, f), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, numeric(bias, f), rtol=1e-6, atol=1e-7)


TORCH_TOL = {np.float32: (1e-4, 1e-5), np.float64: (1e-10, 1e-12)}


@pytest.fixture
def torch():
    """torch on one thread (the shapes here are tiny), or a skip when not installed."""
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(previous)


def torch_layout(torch, a, channel_axis):
    """An NCHW torch tensor viewing a (channels_last memory format for channel_axis=-1)."""
    t = torch.from_numpy(a)
    return t if channel_axis == 1 else t.movedim(-1, 1)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape,channel_axis",
                         [((4, 3, 7, 9), 1), ((4, 7, 9, 3), -1), ((6, 17), 1),
                          ((2, 5, 3, 4, 2), 1), ((3, 4, 6, 17), -1)],
                         ids=["nchw", "nhwc", "nc", "ncdhw", "nhwc17"])
def test_matches_torch_autograd(torch, rng, shape, channel_axis, dtype, affine, training):
    x, weight, bias, rm, rv = make_inputs(rng, shape, channel_axis, dtype, affine=affine)
    dy = rng.standard_normal(shape).astype(dtype)
    rm_t, rv_t = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    x_t = torch_layout(torch, x.copy(), channel_axis).requires_grad_()
    w_t = torch.from_numpy(weight.copy()).requires_grad_() if affine else None
    b_t = torch.from_numpy(bias.copy()).requires_grad_() if affine else None
    y_t = torch.nn.functional.batch_norm(x_t, rm_t, rv_t, w_t, b_t, training=training,
                                         momentum=0.2, eps=1e-4)
    y_t.backward(torch_layout(torch, dy, channel_axis))

    y, mean, invstd = fo.batch_norm_forward(x, weight, bias, rm, rv, training=training,
                                            momentum=0.2, eps=1e-4, channel_axis=channel_axis)
    dx, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd, training=training,
                                        channel_axis=channel_axis)
    rtol, atol = TORCH_TOL[dtype]

    def check(actual, expected, name):
        expected = expected.detach().numpy()
        scale = max(float(np.max(np.abs(expected))), 1.0)
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=name)

    check(y, y_t if channel_axis == 1 else y_t.movedim(1, -1), "y")
    check(dx, x_t.grad if channel_axis == 1 else x_t.grad.movedim(1, -1), "dx")
    check(rm, rm_t, "running_mean")
    check(rv, rv_t, "running_var")
    if affine:
        check(dw, w_t.grad, "dweight")
        check(db, b_t.grad, "dbias")


# ---------------------------------------------------------------------------------------
# Accuracy with a large mean and a small spread.


@pytest.mark.parametrize("shape,channel_axis", [((16, 3, 32, 32), 1), ((16, 32, 32, 3), -1),
                                                ((64, 3, 2, 2), 1)],
                         ids=["nchw", "nhwc", "short-spatial"])
def test_large_mean_small_spread_float32(isa, shape, channel_axis):
    rng = np.random.default_rng(7)
    x = (1e4 + 1e-2 * rng.standard_normal(shape)).astype(np.float32)
    channels = shape[channel_axis]
    rm, rv = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    y_ref, mean_ref, invstd_ref, rm_ref, rv_ref = batch_norm_forward_reference(
        x, running_mean=rm, running_var=rv, momentum=1.0, eps=1e-8, channel_axis=channel_axis)
    var_ref = 1 / invstd_ref**2 - 1e-8
    assert np.all(np.abs(var_ref / 1e-4 - 1) < 0.5)  # the data really has std ~1e-2

    # The naive one-pass float32 formula loses the variance entirely.
    axes = tuple(d for d in range(x.ndim) if d != channel_axis % x.ndim)
    naive = np.mean(x * x, axis=axes) - np.mean(x, axis=axes) ** 2
    assert naive.dtype == np.float32
    assert np.all(np.abs(naive / var_ref - 1) > 0.5)

    y, mean, invstd = fo.batch_norm_forward(x, None, None, rm, rv, momentum=1.0, eps=1e-8,
                                            channel_axis=channel_axis)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-7)
    np.testing.assert_allclose(invstd, invstd_ref, rtol=1e-5)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-5)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-4)
    assert abs(float(y.astype(np.float64).mean())) < 1e-4
    assert abs(float(y.astype(np.float64).std()) - 1) < 1e-4


LARGE_MEAN_CASES = [((64, 3, 8, 8), 1), ((64, 8, 8, 3), -1), ((256, 3), 1), ((64, 3, 2, 2), 1)]


@pytest.mark.parametrize("shape,channel_axis", LARGE_MEAN_CASES,
                         ids=["nchw", "nhwc", "nc", "short-spatial"])
def test_large_mean_backward_keeps_statistics_exact_float32(isa, shape, channel_axis):
    # Mean 1e4, std 1e-2: a float32 mean is off by up to 5e-4 (5% of the spread), which
    # the backward would turn into a 1e-2 error of dweight. The statistics travel in
    # float64 from the forward to the backward, through the layer too.
    rng = np.random.default_rng(17)
    x = (1e4 + 1e-2 * rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    channels = shape[channel_axis]
    weight = rng.uniform(0.5, 2.0, channels).astype(np.float32)
    bias = np.zeros(channels, np.float32)
    _, mean_ref, invstd_ref, _, _ = batch_norm_forward_reference(x, weight, bias,
                                                                 channel_axis=channel_axis)
    dx_ref, dw_ref, db_ref = batch_norm_backward_reference(dy, x, weight, mean_ref, invstd_ref,
                                                           channel_axis=channel_axis)

    def check(dx, dw, db, where):
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, err_msg=f"{where} dweight")
        np.testing.assert_allclose(db, db_ref, rtol=1e-5, err_msg=f"{where} dbias")
        np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=1e-5 * np.abs(dx_ref).max(),
                                   err_msg=f"{where} dx")

    _, mean, invstd = fo.batch_norm_forward(x, weight, bias, channel_axis=channel_axis)
    check(*fo.batch_norm_backward(dy, x, weight, mean, invstd, channel_axis=channel_axis),
          "functional")

    bn = fo.nn.BatchNorm(channels, channel_axis=channel_axis)
    bn.weight[...] = weight
    bn.forward(x)
    dx = bn.backward(dy)
    check(dx, bn.grad_weight, bn.grad_bias, "layer")

    # The test can tell: the same backward from float32-rounded statistics misses.
    _, dw32, _ = fo.batch_norm_backward(dy, x, weight, mean.astype(np.float32),
                                        invstd.astype(np.float32), channel_axis=channel_axis)
    assert np.max(np.abs(dw32 / dw_ref - 1)) > 1e-3


@pytest.mark.parametrize("shape,channel_axis", [((16, 3, 32, 32), 1), ((16, 32, 32, 3), -1),
                                                ((64, 3, 2, 2), 1)],
                         ids=["nchw", "nhwc", "short-spatial"])
def test_first_value_far_from_the_rest_float32(isa, shape, channel_axis):
    # The first value of each channel is 1000 standard deviations out: statistics taken
    # around it must not lose the spread of the other values.
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(np.float32)
    x[tuple(slice(None) if d == channel_axis % x.ndim else 0 for d in range(x.ndim))] = 1e3
    channels = shape[channel_axis]
    rm, rv = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    _, mean_ref, invstd_ref, _, _ = batch_norm_forward_reference(
        x, running_mean=rm.copy(), running_var=rv.copy(), momentum=1.0, eps=1e-8,
        channel_axis=channel_axis)
    _, mean, invstd = fo.batch_norm_forward(x, None, None, rm, rv, momentum=1.0, eps=1e-8,
                                            channel_axis=channel_axis)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-6)
    np.testing.assert_allclose(invstd, invstd_ref, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Determinism across thread counts.


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape,channel_axis",
                         [((8, 16, 32, 32), 1), ((8, 32, 32, 16), -1), ((2, 3, 150, 150), 1),
                          ((128, 40, 3, 3), 1), ((24, 1500), 1), ((16, 24, 20, 20), 1),
                          ((4096, 40), 1), ((256, 40, 3, 3), 1), ((48, 1500), 1),
                          ((48, 1024), 1), ((96, 1024), 1), ((64, 200, 2, 2), 1),
                          ((16, 300, 4, 4), 1), ((4, 260, 12, 12), 1), ((32, 6, 6, 300), -1)],
                         ids=["nchw", "nhwc", "long-spatial", "short-spatial", "wide-nc",
                              "runs", "tall-nc",
                              # big enough for threads in the two-pass region
                              "short-spatial-parallel", "wide-nc-parallel",
                              # rows of two column blocks in 1 and 3 groups: tiles
                              "nc-1-group", "nc-3-groups", "short-spatial-1-group",
                              # 256 channels or more, threads: the per-channel finishing
                              # cut by channels (columns repeated, slabs, rows)
                              "split-short-spatial", "split-slabs", "split-nhwc"])
def test_bitwise_identical_for_any_thread_count(isa, threads, shape, channel_axis, dtype,
                                                training):
    rng = np.random.default_rng(3)
    x, weight, bias, rm0, rv0 = make_inputs(rng, shape, channel_axis, dtype, offset=50.0)
    dy = rng.standard_normal(shape).astype(dtype)
    results = []
    for n in (1, 2, 3):
        fo.set_num_threads(n)
        rm, rv = rm0.copy(), rv0.copy()
        y, mean, invstd = fo.batch_norm_forward(x, weight, bias, rm, rv, training=training,
                                                channel_axis=channel_axis)
        dx, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd, training=training,
                                            channel_axis=channel_axis)
        results.append([y, mean, invstd, rm, rv, dx, dw, db])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()


# ---------------------------------------------------------------------------------------
# Bad inputs: the right error class, a message naming the argument, nothing changed.


def forward_call(rng, **changes):
    shape = (4, 3, 5, 5)
    x, weight, bias, rm, rv = make_inputs(rng, shape, 1, np.float32)
    kwargs = dict(x=x, weight=weight, bias=bias, running_mean=rm, running_var=rv,
                  training=True, momentum=0.1, eps=1e-5, channel_axis=1,
                  out=np.full(shape, 7.0, np.float32))
    kwargs.update(changes)
    return kwargs


def read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


FORWARD_ERRORS = [
    # (id, changes from the valid call as a function of it, error class, argument named)
    ("x-int", lambda k: {"x": k["x"].astype(np.int32)}, TypeError, "x"),
    ("x-list", lambda k: {"x": k["x"].tolist()}, TypeError, "x"),
    ("x-1d", lambda k: {"x": k["x"].ravel(), "out": None}, ValueError, "x"),
    ("x-strided", lambda k: {"x": k["x"][:, :, ::2], "out": None}, ValueError, "x"),
    ("weight-f64", lambda k: {"weight": k["weight"].astype(np.float64)}, TypeError, "weight"),
    ("weight-shape", lambda k: {"weight": np.ones(4, np.float32)}, ValueError, "weight"),
    ("bias-2d", lambda k: {"bias": np.ones((3, 1), np.float32)}, ValueError, "bias"),
    ("running-mean-read-only", lambda k: {"running_mean": read_only(k["running_mean"])},
     ValueError, "running_mean"),
    ("running-var-strided", lambda k: {"running_var": np.ones(6, np.float32)[::2]},
     ValueError, "running_var"),
    ("running-var-missing", lambda k: {"running_var": None}, ValueError, "running_var"),
    ("running-stats-shared", lambda k: {"running_var": k["running_mean"]}, ValueError,
     "running_"),
    ("eval-without-stats", lambda k: {"training": False, "running_mean": None,
                                      "running_var": None}, ValueError, "running_mean"),
    ("one-value-per-channel", lambda k: {"x": k["x"][:1, :, :1, :1].copy(), "out": None},
     ValueError, "per channel"),
    ("channel-axis-2", lambda k: {"channel_axis": 2}, ValueError, "channel_axis"),
    ("channel-axis-huge", lambda k: {"channel_axis": 2**40}, ValueError, "channel_axis"),
    ("channel-axis-float", lambda k: {"channel_axis": 1.0}, TypeError, "channel_axis"),
    ("channel-axis-bool", lambda k: {"channel_axis": True}, TypeError, "channel_axis"),
    ("training-str", lambda k: {"training": "yes"}, TypeError, "training"),
    ("training-none", lambda k: {"training": None}, TypeError, "training"),
    ("momentum-str", lambda k: {"momentum": "0.1"}, TypeError, "momentum"),
    ("eps-none", lambda k: {"eps": None}, TypeError, "eps"),
    ("eps-bool", lambda k: {"eps": True}, TypeError, "eps"),
    ("momentum-negative", lambda k: {"momentum": -0.1}, ValueError, "momentum"),
    ("momentum-above-1", lambda k: {"momentum": 1.5}, ValueError, "momentum"),
    ("momentum-nan", lambda k: {"momentum": float("nan")}, ValueError, "momentum"),
    ("eps-negative", lambda k: {"eps": -1e-5}, ValueError, "eps"),
    ("eps-inf", lambda k: {"eps": float("inf")}, ValueError, "eps"),
    ("out-shape", lambda k: {"out": np.zeros((4, 3, 5, 4), np.float32)}, ValueError, "out"),
    ("out-f64", lambda k: {"out": np.zeros((4, 3, 5, 5))}, TypeError, "out"),
    ("out-read-only", lambda k: {"out": read_only(k["out"])}, ValueError, "out"),
    ("out-fortran", lambda k: {"out": np.asfortranarray(k["out"])}, ValueError, "out"),
    ("out-is-x", lambda k: {"out": k["x"]}, ValueError, "out"),
]


@pytest.mark.parametrize("make_changes,error,name",
                         [c[1:] for c in FORWARD_ERRORS], ids=[c[0] for c in FORWARD_ERRORS])
def test_forward_bad_inputs_raise_and_change_nothing(rng, make_changes, error, name):
    kwargs = forward_call(rng)
    kwargs.update(make_changes(kwargs))
    before = {k: v.copy() for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    x = kwargs.pop("x")
    with pytest.raises(error, match=name):
        fo.batch_norm_forward(x, **kwargs)
    kwargs["x"] = x
    for k, v in before.items():
        np.testing.assert_array_equal(kwargs[k], v, err_msg=k)


def backward_call(rng, **changes):
    shape = (4, 5, 5, 3)
    x, weight, _, _, _ = make_inputs(rng, shape, -1, np.float64)
    kwargs = dict(dy=rng.standard_normal(shape), x=x, weight=weight,
                  save_mean=rng.standard_normal(3), save_invstd=rng.uniform(1, 2, 3),
                  training=True, channel_axis=-1, out=np.full(shape, 7.0))
    kwargs.update(changes)
    return kwargs


BACKWARD_ERRORS = [
    ("dy-shape", lambda k: {"dy": k["dy"][:3].copy()}, ValueError, "dy"),
    ("dy-f32", lambda k: {"dy": k["dy"].astype(np.float32)}, TypeError, "dy"),
    ("dy-strided", lambda k: {"dy": np.repeat(k["dy"], 2, axis=0)[::2]}, ValueError, "dy"),
    ("weight-shape", lambda k: {"weight": np.ones(5)}, ValueError, "weight"),
    ("save-mean-shape", lambda k: {"save_mean": np.zeros(5)}, ValueError, "save_mean"),
    ("save-invstd-none", lambda k: {"save_invstd": None}, TypeError, "save_invstd"),
    ("save-invstd-f32", lambda k: {"save_invstd": np.ones(3, np.float32)}, TypeError,
     "save_invstd"),
    ("save-mean-int", lambda k: {"save_mean": np.zeros(3, np.int64)}, TypeError, "save_mean"),
    ("save-mean-strided", lambda k: {"save_mean": np.zeros(6)[::2]}, ValueError, "save_mean"),
    ("save-mean-list", lambda k: {"save_mean": [0.0, 0.0, 0.0]}, TypeError, "save_mean"),
    ("out-is-save-mean", lambda k: {"save_mean": k["out"].reshape(-1)[:3]}, ValueError, "out"),
    ("channel-axis", lambda k: {"channel_axis": 0}, ValueError, "channel_axis"),
    ("channel-axis-str", lambda k: {"channel_axis": "-1"}, TypeError, "channel_axis"),
    ("training-int", lambda k: {"training": 1}, TypeError, "training"),
    ("out-is-dy", lambda k: {"out": k["dy"]}, ValueError, "out"),
    ("out-read-only", lambda k: {"out": read_only(k["out"])}, ValueError, "out"),
    ("out-shape", lambda k: {"out": np.zeros((4, 5, 3, 5))}, ValueError, "out"),
]


@pytest.mark.parametrize("make_changes,error,name",
                         [c[1:] for c in BACKWARD_ERRORS], ids=[c[0] for c in BACKWARD_ERRORS])
def test_backward_bad_inputs_raise_and_change_nothing(rng, make_changes, error, name):
    kwargs = backward_call(rng)
    kwargs.update(make_changes(kwargs))
    before = {k: v.copy() for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    positional = [kwargs.pop(k) for k in ("dy", "x", "weight", "save_mean", "save_invstd")]
    with pytest.raises(error, match=name):
        fo.batch_norm_backward(*positional, **kwargs)
    kwargs.update(zip(("dy", "x", "weight", "save_mean", "save_invstd"), positional))
    for k, v in before.items():
        np.testing.assert_array_equal(kwargs[k], v, err_msg=k)


def test_read_only_running_stats_are_fine_in_eval_mode(rng):
    kwargs = forward_call(rng, training=False)
    kwargs["running_mean"] = read_only(kwargs["running_mean"])
    kwargs["running_var"] = read_only(kwargs["running_var"])
    y, mean, _ = fo.batch_norm_forward(kwargs.pop("x"), **kwargs)
    np.testing.assert_array_equal(mean, kwargs["running_mean"])


# ---------------------------------------------------------------------------------------
# The nn.BatchNorm layer.


def test_layer_attributes_and_lists():
    bn = fo.nn.BatchNorm(5, dtype=np.float64)
    assert bn.weight.dtype == np.float64 and bn.weight.shape == (5,)
    np.testing.assert_array_equal(bn.weight, 1.0)
    np.testing.assert_array_equal(bn.bias, 0.0)
    np.testing.assert_array_equal(bn.running_mean, 0.0)
    np.testing.assert_array_equal(bn.running_var, 1.0)
    assert bn.parameters()[0] is bn.weight and bn.parameters()[1] is bn.bias
    assert bn.gradients()[0] is bn.grad_weight and bn.gradients()[1] is bn.grad_bias
    plain = fo.nn.BatchNorm(5, affine=False, track_running_stats=False)
    assert plain.parameters() == [] and plain.gradients() == []
    assert plain.weight is None and plain.running_mean is None
    with pytest.raises(TypeError, match="dtype"):
        fo.nn.BatchNorm(5, dtype=np.int32)
    with pytest.raises(ValueError, match="channel_axis"):
        fo.nn.BatchNorm(5, channel_axis=2)
    with pytest.raises(ValueError, match="momentum"):
        fo.nn.BatchNorm(5, momentum=2.0)
    with pytest.raises(TypeError, match="dtype"):
        bn.forward(np.zeros((2, 5), np.float32))
    with pytest.raises(RuntimeError, match="forward"):
        fo.nn.BatchNorm(5).backward(np.zeros((2, 5), np.float32))


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_layer_training_loop_matches_functional_calls(rng, channel_axis):
    shape = (6, 4, 5, 3) if channel_axis == 1 else (6, 5, 3, 4)
    bn = fo.nn.BatchNorm(4, momentum=0.2, channel_axis=channel_axis)
    weight, bias = np.ones(4, np.float32), np.zeros(4, np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    y_buf, dx_buf = np.empty(shape, np.float32), np.empty(shape, np.float32)
    params, grads = bn.parameters(), bn.gradients()
    for step in range(3):
        x = rng.standard_normal(shape).astype(np.float32) * 2 + step
        dy = rng.standard_normal(shape).astype(np.float32)
        out = y_buf if step == 2 else None
        y = bn.forward(x, out=out)
        dx = bn.backward(dy, out=dx_buf if step == 2 else None)
        y_f, mean, invstd = fo.batch_norm_forward(x, weight, bias, rm, rv, momentum=0.2,
                                                  channel_axis=channel_axis)
        dx_f, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd,
                                              channel_axis=channel_axis)
        np.testing.assert_array_equal(y, y_f)
        np.testing.assert_array_equal(dx, dx_f)
        np.testing.assert_array_equal(bn.grad_weight, dw)
        np.testing.assert_array_equal(bn.grad_bias, db)
        np.testing.assert_array_equal(bn.running_mean, rm)
        np.testing.assert_array_equal(bn.running_var, rv)
        if out is not None:
            assert y is y_buf and dx is dx_buf
        # An SGD step on the layer's own arrays, as an optimizer holding them would do.
        fo.sgd_step(params, grads, lr=0.1)
        fo.sgd_step([weight, bias], [dw, db], lr=0.1)
        assert bn.parameters()[0] is params[0] and bn.gradients()[0] is grads[0]
    np.testing.assert_array_equal(bn.weight, weight)
    # Eval mode normalizes with the running statistics.
    x = rng.standard_normal(shape).astype(np.float32)
    y_eval = bn.forward(x, training=False)
    y_ref, _, _, _, _ = batch_norm_forward_reference(x, weight, bias, rm, rv, training=False,
                                                     channel_axis=channel_axis)
    assert_close(y_eval, y_ref, np.float32, "eval y")
    np.testing.assert_array_equal(bn.running_mean, rm)


def test_layer_returns_fresh_arrays_by_default(rng):
    bn = fo.nn.BatchNorm(3)
    x = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    y1 = bn.forward(x)
    y1_copy = y1.copy()
    y2 = bn.forward(x + 1)
    assert y2 is not y1 and not np.shares_memory(y1, y2)
    np.testing.assert_array_equal(y1, y1_copy)


def test_layer_without_running_stats_uses_batch_stats_in_eval(rng):
    bn = fo.nn.BatchNorm(3, track_running_stats=False, dtype=np.float64)
    x = rng.standard_normal((5, 3, 4))
    dy = rng.standard_normal((5, 3, 4))
    y = bn.forward(x, training=False)
    y_ref, mean, invstd, _, _ = batch_norm_forward_reference(x, bn.weight, bn.bias)
    assert_close(y, y_ref, np.float64, "y")
    dx = bn.backward(dy)
    dx_ref, _, _ = batch_norm_backward_reference(dy, x, bn.weight, mean, invstd)
    assert_close(dx, dx_ref, np.float64, "dx")


def test_layer_matches_torch_batchnorm2d(torch, rng):
    shape = (8, 3, 6, 6)
    bn = fo.nn.BatchNorm(3, momentum=0.3, dtype=np.float64)
    ref = torch.nn.BatchNorm2d(3, momentum=0.3, dtype=torch.float64)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    for _ in range(4):
        x = rng.standard_normal(shape) * 3 + 1
        target = rng.standard_normal(shape)
        # loss = 0.5 * |y - target|^2, so dy = y - target
        y = bn.forward(x)
        bn.backward(y - target)
        fo.sgd_step(bn.parameters(), bn.gradients(), lr=0.05)

        opt.zero_grad()
        y_t = ref(torch.from_numpy(x))
        (0.5 * ((y_t - torch.from_numpy(target)) ** 2).sum()).backward()
        opt.step()
        np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.weight, ref.weight.detach().numpy(), rtol=1e-10)
    np.testing.assert_allclose(bn.bias, ref.bias.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.running_mean, ref.running_mean.numpy(), rtol=1e-10)
    np.testing.assert_allclose(bn.running_var, ref.running_var.numpy(), rtol=1e-10)
    ref.eval()
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(bn.forward(x, training=False),
                               ref(torch.from_numpy(x)).detach().numpy(), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape,channel_axis", [((70, 200), 1), ((33, 5, 24), 1),
                                                ((6, 5, 7, 80), -1), ((40, 1000), 1)],
                         ids=["nc", "ncl-short", "nhwc", "nc-wide"])
def test_any_alignment_gives_the_same_bits(isa, shape, channel_axis, dtype):
    # The elementwise row loops start their vector loop at a cache-line boundary of the
    # output (or of the inputs, when those two share one the output lacks), with the
    # per-column constants placed to match: x, dy, y and dx at every pair of offsets
    # within a line give the results of arrays aligned to a line, bit for bit.
    rng = np.random.default_rng(5)
    x0, weight, bias, _, _ = make_inputs(rng, shape, channel_axis, dtype)
    dy0 = rng.standard_normal(shape).astype(dtype)

    def run(x_at, dy_at, out_at):
        return batch_norm_at_offsets(x0, dy0, weight, bias, channel_axis, x_at, dy_at, out_at)

    y_ref, dx_ref = run(0, 0, 0)
    item = np.dtype(dtype).itemsize
    for x_at, dy_at, out_at in [(0, 0, 16), (16, 16, 0), (16, 32, 48), (item, 3 * item, 0),
                                (48, 48, 5 * item), (item, item, item)]:
        y, dx = run(x_at, dy_at, out_at)
        np.testing.assert_array_equal(y, y_ref, err_msg=f"y at {(x_at, dy_at, out_at)}")
        np.testing.assert_array_equal(dx, dx_ref, err_msg=f"dx at {(x_at, dy_at, out_at)}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(2, 5), (3, 7), (2, 16), (4, 9), (2, 24), (5, 13),
                                   (3, 100), (2, 515)])
def test_backward_rows_at_every_alignment_give_the_same_bits(isa, shape, training, dtype):
    # The in-cache dx row loop writes from the output's first cache-line boundary on,
    # the values before it and after its last whole register under a mask, and reads an
    # input that lies elsewhere within its lines than dx as aligned registers joined in
    # pairs (AVX-512): rows of one register or less (2 x 5), a whole register and edges,
    # two and more, with x, dy and dx at every offset within a line, each input joined or
    # not, give the bits of arrays on line boundaries, and the float64 reference's values;
    # the masked stores write nothing outside dx (the bytes around it keep a marker).
    rng = np.random.default_rng(11)
    x0, weight, _, _, _ = make_inputs(rng, shape, 1, dtype)
    dy0 = rng.standard_normal(shape).astype(dtype)
    _, mean, invstd = fo.batch_norm_forward(x0, weight, None)
    item = np.dtype(dtype).itemsize

    def dx_at(x_at, dy_at, out_at):
        x, dy = at_line_offset(x0, x_at), at_line_offset(dy0, dy_at)
        raw = np.full(x0.nbytes + 192, 0xA5, np.uint8)
        start = (out_at - raw.ctypes.data) % 64 + 64
        dx = raw[start:start + x0.nbytes].view(dtype).reshape(shape)
        fo.batch_norm_backward(dy, x, weight, mean, invstd, training=training, out=dx)
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(dy, dy0)
        assert (raw[:start] == 0xA5).all() and (raw[start + x0.nbytes:] == 0xA5).all(), \
            f"bytes around dx written at {(x_at, dy_at, out_at)}"
        return dx.copy()

    dx_ref = dx_at(0, 0, 0)
    expected, _, _ = batch_norm_backward_reference(dy0, x0, weight, mean, invstd,
                                                   training=training)
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx_ref, expected, **tol)
    for out_at in range(0, 64, item):
        for x_at, dy_at in [(out_at, out_at), (0, 0), (16, 32), ((out_at + item) % 64, out_at),
                            (out_at, (out_at + 3 * item) % 64), ((out_at + 40) % 64, 8)]:
            dx = dx_at(x_at, dy_at, out_at)
            np.testing.assert_array_equal(dx, dx_ref,
                                          err_msg=f"dx at {(x_at, dy_at, out_at)}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape,channel_axis", [((14, 20, 37, 29), 1), ((7, 23, 29, 65), -1),
                                                ((1500, 107), 1)],
                         ids=["nchw", "nhwc", "nc"])
def test_streamed_outputs_at_any_alignment_give_the_same_bits(isa, small_last_level_cache,
                                                              shape, channel_axis, dtype):
    # Outputs beyond the (here 1 MiB) cache are written with non-temporal stores in tiles
    # that start at a cache-line boundary of the output: outputs at every offset within a
    # line give the bits of cached (ordinary) stores.
    rng = np.random.default_rng(9)
    x0, weight, bias, _, _ = make_inputs(rng, shape, channel_axis, dtype)
    dy0 = rng.standard_normal(shape).astype(dtype)
    assert 2 * x0.nbytes > small_last_level_cache
    y_ref, dx_ref = batch_norm_with_cached_stores(x0, dy0, weight, bias, channel_axis)
    item = np.dtype(dtype).itemsize
    for at in [0, 16, 48, item, 5 * item]:
        y, dx = batch_norm_at_offsets(x0, dy0, weight, bias, channel_axis, (at + 16) % 64,
                                      (at + 32) % 64, at)
        np.testing.assert_array_equal(y, y_ref, err_msg=f"y at {at}")
        np.testing.assert_array_equal(dx, dx_ref, err_msg=f"dx at {at}")

"""The split batch norm (stats, combine_stats, elemt, backward_reduce, backward_elemt):
composition against the fused calls (bitwise), the float64 references, Chan's combine
against the statistics of the concatenation, a data-parallel (SyncBatchNorm-style) use,
and bad inputs."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedops as fo
from checks import assert_bitwise_equal, assert_rejected, misaligned, read_only
from reference import batch_norm_backward_reference, batch_norm_forward_reference

DTYPES = [np.float32, np.float64]
EPS = 1e-3

# (shape, channel_axis): every loop shape the runtime has (slab blocks, short-spatial
# rows, channel-last rows, one channel, multi-block slabs, multi-tile rows, several row
# groups, row strides that are multiples of 1-8 KiB) at odd sizes.
CASES = [
    ((4, 3, 5, 7), 1),
    ((2, 17, 20), 1),
    ((8, 17), 1),
    ((2, 1000), 1),
    ((9, 3), -1),
    ((3, 7, 9, 17), -1),
    ((5, 1, 7, 9), 1),
    ((6, 1), 1),
    ((2, 3, 130, 130), 1),
    ((4, 5, 5, 600), -1),
    ((4, 300, 2, 2), 1),
    ((300, 129), 1),
    ((45, 1024), 1),  # rows 4 KiB (float32) and 8 KiB apart: shorter gradient-sum chunks
    ((70, 256), 1),
    ((6, 5, 14, 14), 1),  # short slabs: reduced as slabs (float32, float64)
    ((5, 7, 100), 1),
]
CASE_IDS = [f"{'x'.join(map(str, s))}-axis{a}" for s, a in CASES]


def channel_count(shape, channel_axis):
    return int(np.prod(shape)) // shape[channel_axis]


def make(rng, shape, channel_axis, dtype, offset=2.0):
    c = shape[channel_axis]
    x = (rng.standard_normal(shape) * 3 + offset).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = rng.uniform(0.5, 2.0, c).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    return x, dy, weight, bias


def stats_reference(x, channel_axis):
    """(mean, m2) per channel in float64, the sums exactly rounded (math.fsum)."""
    columns = np.moveaxis(np.asarray(x, np.float64), channel_axis, -1).reshape(-1, x.shape[channel_axis])
    mean = np.array([math.fsum(col) / len(col) for col in columns.T])
    m2 = np.array([math.fsum((col - m) ** 2) for col, m in zip(columns.T, mean)])
    return mean, m2


# ---------------------------------------------------------------------------------------
# Composition equals the fused calls, bitwise.


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape,channel_axis", CASES, ids=CASE_IDS)
def test_composition_equals_fused_calls(isa, rng, shape, channel_axis, dtype, affine):
    x, dy, weight, bias = make(rng, shape, channel_axis, dtype)
    if not affine:
        weight = bias = None
    count = channel_count(shape, channel_axis)

    mean, m2 = fo.batch_norm_stats(x, channel_axis=channel_axis)
    assert mean.dtype == m2.dtype == np.float64
    mean_c, var, m2_c = fo.batch_norm_combine_stats([mean], [m2], [count])
    # Combining one piece gives the piece back.
    assert_bitwise_equal(mean_c, mean)
    assert_bitwise_equal(m2_c, m2)
    assert_bitwise_equal(var, m2 / count)
    invstd = 1.0 / np.sqrt(var + EPS)
    y = fo.batch_norm_elemt(x, weight, bias, mean_c, invstd, channel_axis=channel_axis)
    sum_dy, sum_dy_xhat = fo.batch_norm_backward_reduce(dy, x, mean, invstd,
                                                        channel_axis=channel_axis)
    assert sum_dy.dtype == sum_dy_xhat.dtype == np.float64
    dx = fo.batch_norm_backward_elemt(dy, x, weight, mean, invstd, sum_dy, sum_dy_xhat, count,
                                      channel_axis=channel_axis)

    y_f, save_mean, save_invstd = fo.batch_norm_forward(x, weight, bias, eps=EPS,
                                                        channel_axis=channel_axis)
    dx_f, dw_f, db_f = fo.batch_norm_backward(dy, x, weight, save_mean, save_invstd,
                                              channel_axis=channel_axis)
    assert_bitwise_equal(save_mean, mean)
    assert_bitwise_equal(save_invstd, invstd)
    assert_bitwise_equal(y, y_f)
    assert_bitwise_equal(dx, dx_f)
    if affine:
        assert_bitwise_equal(dw_f, sum_dy_xhat.astype(dtype))
        assert_bitwise_equal(db_f, sum_dy.astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape,channel_axis", CASES, ids=CASE_IDS)
def test_pieces_match_float64_references(isa, rng, shape, channel_axis, dtype):
    x, dy, weight, bias = make(rng, shape, channel_axis, dtype)
    mean_ref, m2_ref = stats_reference(x, channel_axis)
    mean, m2 = fo.batch_norm_stats(x, channel_axis=channel_axis)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m2, m2_ref, rtol=1e-11)

    # Statistics of x's dtype are accepted as well as float64 ones.
    invstd = (1.0 / np.sqrt(m2_ref / channel_count(shape, channel_axis) + EPS))
    for stats_dtype in {dtype, np.float64}:
        m, s = mean_ref.astype(stats_dtype), invstd.astype(stats_dtype)
        y_ref, _, _, _, _ = batch_norm_forward_reference(
            x, weight, bias, m, 1.0 / np.float64(s) ** 2, training=False, eps=0.0,
            channel_axis=channel_axis)
        y = fo.batch_norm_elemt(x, weight, bias, m, s, channel_axis=channel_axis)
        tol = 2e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol * np.abs(y_ref).max())

        dx_ref, dw_ref, db_ref = batch_norm_backward_reference(
            dy, x, weight, m, s, channel_axis=channel_axis)
        sum_dy, sum_dy_xhat = fo.batch_norm_backward_reduce(dy, x, m, s,
                                                            channel_axis=channel_axis)
        np.testing.assert_allclose(sum_dy, db_ref, rtol=1e-11, atol=1e-11 * len(dy.flat))
        np.testing.assert_allclose(sum_dy_xhat, dw_ref, rtol=1e-11, atol=1e-11 * len(dy.flat))
        dx = fo.batch_norm_backward_elemt(dy, x, weight, m, s, sum_dy, sum_dy_xhat,
                                          channel_count(shape, channel_axis),
                                          channel_axis=channel_axis)
        np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol * np.abs(dx_ref).max())


def test_empty_channels_give_zero_statistics():
    mean, m2 = fo.batch_norm_stats(np.zeros((0, 3, 4), np.float32))
    assert_bitwise_equal(mean, np.zeros(3))
    assert_bitwise_equal(m2, np.zeros(3))
    mean, m2 = fo.batch_norm_stats(np.zeros((4, 0, 3)))
    assert mean.shape == m2.shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape,channel_axis", [((64, 40, 37, 3), 1), ((8, 33, 30, 40), -1),
                                                ((4096, 48), 1), ((2, 3, 150, 150), 1)],
                         ids=["short-spatial", "nhwc", "nc", "nchw"])
def test_split_pieces_are_bitwise_identical_for_any_thread_count(isa, threads, shape,
                                                                 channel_axis, dtype):
    rng = np.random.default_rng(5)
    x, dy, weight, bias = make(rng, shape, channel_axis, dtype, offset=30.0)
    results = []
    for n in (1, 2, 3):
        fo.set_num_threads(n)
        mean, m2 = fo.batch_norm_stats(x, channel_axis=channel_axis)
        invstd = 1 / np.sqrt(m2 / channel_count(shape, channel_axis) + EPS)
        y = fo.batch_norm_elemt(x, weight, bias, mean, invstd, channel_axis=channel_axis)
        sums = fo.batch_norm_backward_reduce(dy, x, mean, invstd, channel_axis=channel_axis)
        dx = fo.batch_norm_backward_elemt(dy, x, weight, mean, invstd, *sums, 1000,
                                          channel_axis=channel_axis)
        results.append([mean, m2, y, *sums, dx])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert_bitwise_equal(a, b)


# ---------------------------------------------------------------------------------------
# Chan's combine.


def chan_reference(means, m2s, counts):
    """The pairwise combine written out in Python floats, channel by channel."""
    out_mean, out_m2 = [], []
    for c in range(len(means[0])):
        n = mu = sq = 0.0
        for mean, m2, k in zip(means, m2s, counts):
            k = float(k)
            if k == 0:
                continue
            if n == 0:
                n, mu, sq = k, float(mean[c]), float(m2[c])
                continue
            total = n + k
            delta = float(mean[c]) - mu
            mu += delta * (k / total)
            sq += float(m2[c]) + delta * delta * (n * k / total)
            n = total
        out_mean.append(mu)
        out_m2.append(sq)
    return np.array(out_mean), np.array(out_m2), np.array(out_m2) / sum(map(float, counts))


def test_combine_follows_the_given_order():
    means = np.array([[1.0, -2.0], [3.0, 5.0], [10.0, 0.5]])
    m2s = np.array([[0.5, 2.0], [1.0, 0.0], [4.0, 1.5]])
    counts = [3, 5, 2]
    expected = chan_reference(means, m2s, counts)
    for args in ((means, m2s, counts), (list(means), tuple(m2s), np.array(counts)),
                 (means, m2s, np.array(counts, np.float64))):
        mean, var, m2 = fo.batch_norm_combine_stats(*args)
        assert_bitwise_equal(mean, expected[0])
        assert_bitwise_equal(m2, expected[1])
        assert_bitwise_equal(var, expected[2])
    # Pieces without values are skipped wherever they are.
    zero = np.array([[1e9, -1e9]])
    mean, var, m2 = fo.batch_norm_combine_stats(np.vstack([zero, means, zero]),
                                                np.vstack([zero, m2s, zero]), [0, *counts, 0])
    assert_bitwise_equal(mean, expected[0])
    assert_bitwise_equal(m2, expected[1])


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6).filter(lambda s: sum(s) >= 2),
    channels=st.integers(1, 5),
    inner=st.sampled_from([1, 3, 20]),
    channel_last=st.booleans(),
    f32=st.booleans(),
    offset=st.sampled_from([0.0, 1e3, -5e4]),
    seed=st.integers(0, 2**32 - 1),
)
def test_combined_pieces_equal_statistics_of_the_concatenation(sizes, channels, inner,
                                                               channel_last, f32, offset, seed):
    rng = np.random.default_rng(seed)
    dtype = np.float32 if f32 else np.float64
    axis = -1 if channel_last else 1
    shape = (sum(sizes), inner, channels) if channel_last else (sum(sizes), channels, inner)
    x = (rng.standard_normal(shape) * rng.uniform(0.01, 10) + offset).astype(dtype)
    pieces = np.split(x, np.cumsum(sizes)[:-1], axis=0)
    stats = [fo.batch_norm_stats(np.ascontiguousarray(p), channel_axis=axis) for p in pieces]
    counts = [p.size // channels for p in pieces]
    mean, var, m2 = fo.batch_norm_combine_stats([s[0] for s in stats], [s[1] for s in stats],
                                                counts)
    mean_all, m2_all = fo.batch_norm_stats(x, channel_axis=axis)
    count = x.size // channels
    mean_ref, m2_ref = stats_reference(x, axis)
    # The statistics of the concatenation within a few ulps of what their conditioning
    # allows. The pieces' means are rounded to ulps of |mean|, which the combine sees as
    # shifts of the values against the spread. The sums are taken around a value of the
    # channel (its pivot, at most max|x - mean| from the mean), so the sum of squares they
    # round is up to m2 + count * max|x - mean|^2, and its rounding errors (of random sign)
    # grow like sqrt(count) ulps of it: 4 of those.
    spread = np.sqrt(m2_ref / count)
    columns = np.moveaxis(x.astype(np.float64), axis, -1).reshape(-1, channels)
    pivot_dev = np.max(np.abs(columns - mean_ref), axis=0)
    ulp = np.finfo(np.float64).eps
    mean_tol = 4 * ulp * (np.abs(mean_ref) + np.sqrt(count) * pivot_dev)
    m2_tol = (4 * ulp * count * spread * np.abs(mean_ref)
              + 4 * ulp * np.sqrt(count) * (m2_ref + count * pivot_dev**2))
    for name, got, want, tol in (("mean", mean, mean_all, mean_tol), ("m2", m2, m2_all, m2_tol),
                                 ("var", var, m2_all / count, m2_tol / count),
                                 ("mean vs reference", mean, mean_ref, mean_tol),
                                 ("m2 vs reference", m2, m2_ref, m2_tol)):
        assert np.all(np.abs(got - want) <= tol), (name, got, want, tol)


def test_data_parallel_use_matches_the_fused_calls_on_the_whole_batch(rng):
    # SyncBatchNorm on 3 "ranks": each holds a slice of the batch; statistics and gradient
    # sums are combined across slices, the elementwise pieces run per slice.
    shape, axis = (12, 5, 6, 4), 1
    x, dy, weight, bias = make(rng, shape, axis, np.float32, offset=100.0)
    bounds = [0, 5, 5, 12]  # one rank holds no samples
    xs = [x[a:b] for a, b in zip(bounds, bounds[1:])]
    dys = [dy[a:b] for a, b in zip(bounds, bounds[1:])]
    local = [fo.batch_norm_stats(p) for p in xs]
    counts = np.array([p.size // 5 for p in xs], np.float64)
    mean, var, _ = fo.batch_norm_combine_stats(np.stack([s[0] for s in local]),
                                               np.stack([s[1] for s in local]), counts)
    invstd = 1 / np.sqrt(var + 1e-5)
    y = np.concatenate([fo.batch_norm_elemt(p, weight, bias, mean, invstd) for p in xs])
    sums = [fo.batch_norm_backward_reduce(g, p, mean, invstd) for g, p in zip(dys, xs)]
    sum_dy = sum(s[0] for s in sums)
    sum_dy_xhat = sum(s[1] for s in sums)
    dx = np.concatenate([fo.batch_norm_backward_elemt(g, p, weight, mean, invstd, sum_dy,
                                                      sum_dy_xhat, counts.sum())
                         for g, p in zip(dys, xs)])

    y_ref, mean_ref, invstd_ref, _, _ = batch_norm_forward_reference(x, weight, bias)
    dx_ref, dw_ref, db_ref = batch_norm_backward_reference(dy, x, weight, mean_ref, invstd_ref)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-12)
    np.testing.assert_allclose(invstd, invstd_ref, rtol=1e-10)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sum_dy, db_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(sum_dy_xhat, dw_ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-5 * np.abs(dx_ref).max())


# ---------------------------------------------------------------------------------------
# Bad inputs: the right error class, a message naming the argument, nothing changed.


def _x(dtype=np.float32):
    return np.random.default_rng(2).standard_normal((4, 3, 5)).astype(dtype)


STATS_ERRORS = [
    ("x-int", ((np.zeros((4, 3), np.int32),), {}), TypeError, "x"),
    ("x-list", (([[1.0, 2.0]],), {}), TypeError, "x"),
    ("x-1d", ((np.zeros(4),), {}), ValueError, "x"),
    ("x-strided", ((np.zeros((4, 6))[:, ::2],), {}), ValueError, "x"),
    ("channel-axis", ((np.zeros((4, 6)),), {"channel_axis": 0}), ValueError, "channel_axis"),
    ("channel-axis-none", ((np.zeros((4, 6)),), {"channel_axis": None}), TypeError,
     "channel_axis"),
]


@pytest.mark.parametrize("args,error,match", [e[1:] for e in STATS_ERRORS],
                         ids=[e[0] for e in STATS_ERRORS])
def test_stats_rejects_bad_inputs(args, error, match):
    assert_rejected(fo.batch_norm_stats, args[0], args[1], error, match)


def _combine_args():
    return [np.ones((2, 3)), np.ones((2, 3)), [2, 3]]


COMBINE_ERRORS = [
    ("means-f32", 0, lambda a: np.ones((2, 3), np.float32), TypeError, "means"),
    ("means-1d", 0, lambda a: np.ones(3), ValueError, "means"),
    ("means-none", 0, lambda a: None, TypeError, "means"),
    ("means-empty", 0, lambda a: np.ones((0, 3)), ValueError, "means"),
    ("means-list-ragged", 0, lambda a: [np.ones(3), np.ones(4)], ValueError, r"means\[1\]"),
    ("means-list-int", 0, lambda a: [np.ones(3), np.ones(3, np.int64)], TypeError,
     r"means\[1\]"),
    ("means-strided", 0, lambda a: np.ones((2, 6))[:, ::2], ValueError, "means"),
    ("m2s-shape", 1, lambda a: np.ones((2, 4)), ValueError, "m2s"),
    ("m2s-pieces", 1, lambda a: np.ones((3, 3)), ValueError, "m2s"),
    ("counts-length", 2, lambda a: [1, 2, 3], ValueError, "counts"),
    ("counts-negative", 2, lambda a: [2, -1], ValueError, "counts"),
    ("counts-nan", 2, lambda a: np.array([2.0, np.nan]), ValueError, "counts"),
    ("counts-zero", 2, lambda a: [0, 0], ValueError, "counts"),
    ("counts-str", 2, lambda a: ["2", 3], TypeError, "counts"),
    ("counts-bool", 2, lambda a: np.array([True, True]), TypeError, "counts"),
    ("counts-scalar", 2, lambda a: 5, TypeError, "counts"),
    ("counts-2d", 2, lambda a: np.ones((2, 1)), ValueError, "counts"),
]


@pytest.mark.parametrize("index,make_bad,error,match", [e[1:] for e in COMBINE_ERRORS],
                         ids=[e[0] for e in COMBINE_ERRORS])
def test_combine_rejects_bad_inputs(index, make_bad, error, match):
    args = _combine_args()
    args[index] = make_bad(args)
    assert_rejected(fo.batch_norm_combine_stats, args, {}, error, match)


def _elemt_call():
    x = _x()
    c = x.shape[1]
    return dict(x=x, weight=np.ones(c, np.float32), bias=np.zeros(c, np.float32),
                mean=np.zeros(c), invstd=np.ones(c), out=np.full(x.shape, 7.0, np.float32))


ELEMT_ERRORS = [
    ("x-f16", lambda k: {"x": k["x"].astype(np.float16)}, TypeError, "x"),
    ("weight-f64", lambda k: {"weight": np.ones(3)}, TypeError, "weight"),
    ("bias-shape", lambda k: {"bias": np.zeros(4, np.float32)}, ValueError, "bias"),
    ("mean-shape", lambda k: {"mean": np.zeros(4)}, ValueError, "mean"),
    ("mean-int", lambda k: {"mean": np.zeros(3, np.int32)}, TypeError, "mean"),
    ("mean-none", lambda k: {"mean": None}, TypeError, "mean"),
    ("invstd-f16", lambda k: {"invstd": np.ones(3, np.float16)}, TypeError, "invstd"),
    ("invstd-misaligned", lambda k: {"invstd": misaligned(3, np.float64)}, ValueError, "invstd"),
    ("invstd-strided", lambda k: {"invstd": np.ones(6)[::2]}, ValueError, "invstd"),
    ("out-read-only", lambda k: {"out": read_only(k["out"])}, ValueError, "out"),
    ("out-f64", lambda k: {"out": np.zeros(k["x"].shape)}, TypeError, "out"),
    ("out-shape", lambda k: {"out": np.zeros((4, 3, 4), np.float32)}, ValueError, "out"),
    ("out-is-x", lambda k: {"out": k["x"]}, ValueError, "out"),
    ("channel-axis", lambda k: {"channel_axis": 3}, ValueError, "channel_axis"),
]


@pytest.mark.parametrize("make_changes,error,match", [e[1:] for e in ELEMT_ERRORS],
                         ids=[e[0] for e in ELEMT_ERRORS])
def test_elemt_rejects_bad_inputs(make_changes, error, match):
    kwargs = _elemt_call()
    kwargs.update(make_changes(kwargs))
    args = [kwargs.pop(k) for k in ("x", "weight", "bias", "mean", "invstd")]
    assert_rejected(fo.batch_norm_elemt, args, kwargs, error, match)


def test_elemt_rejects_an_out_that_holds_a_statistic():
    x = _x(np.float64)
    out = np.zeros(x.shape)
    assert_rejected(fo.batch_norm_elemt, [x, None, None, out.reshape(-1)[:3], np.ones(3)],
                    {"out": out}, ValueError, "out")


def _backward_call():
    x = _x(np.float64)
    c = x.shape[1]
    return dict(dy=np.ones_like(x), x=x, weight=np.ones(c), mean=np.zeros(c), invstd=np.ones(c),
                sum_dy=np.ones(c), sum_dy_xhat=np.ones(c), count=20,
                out=np.full(x.shape, 7.0))


BACKWARD_ERRORS = [
    ("dy-shape", lambda k: {"dy": k["dy"][:2].copy()}, ValueError, "dy"),
    ("dy-f32", lambda k: {"dy": k["dy"].astype(np.float32)}, TypeError, "dy"),
    ("mean-f32", lambda k: {"mean": np.zeros(3, np.float32)}, TypeError, "mean"),
    ("invstd-shape", lambda k: {"invstd": np.ones((3, 1))}, ValueError, "invstd"),
]
BACKWARD_ELEMT_ERRORS = BACKWARD_ERRORS + [
    ("weight-shape", lambda k: {"weight": np.ones(2)}, ValueError, "weight"),
    ("sum-dy-shape", lambda k: {"sum_dy": np.ones(2)}, ValueError, "sum_dy"),
    ("sum-dy-xhat-list", lambda k: {"sum_dy_xhat": [1.0, 1.0, 1.0]}, TypeError, "sum_dy_xhat"),
    ("count-zero", lambda k: {"count": 0}, ValueError, "count"),
    ("count-inf", lambda k: {"count": float("inf")}, ValueError, "count"),
    ("count-str", lambda k: {"count": "20"}, TypeError, "count"),
    ("count-none", lambda k: {"count": None}, TypeError, "count"),
    ("out-is-dy", lambda k: {"out": k["dy"]}, ValueError, "out"),
    ("out-read-only", lambda k: {"out": read_only(k["out"])}, ValueError, "out"),
    ("out-holds-sum", lambda k: {"sum_dy": k["out"].reshape(-1)[:3]}, ValueError, "out"),
]
REDUCE_POSITIONAL = ("dy", "x", "mean", "invstd")
ELEMT_POSITIONAL = ("dy", "x", "weight", "mean", "invstd", "sum_dy", "sum_dy_xhat", "count")


@pytest.mark.parametrize("make_changes,error,match", [e[1:] for e in BACKWARD_ERRORS],
                         ids=[e[0] for e in BACKWARD_ERRORS])
def test_backward_reduce_rejects_bad_inputs(make_changes, error, match):
    kwargs = _backward_call()
    kwargs.update(make_changes(kwargs))
    args = [kwargs[k] for k in REDUCE_POSITIONAL]
    assert_rejected(fo.batch_norm_backward_reduce, args, {"channel_axis": 1}, error, match)


@pytest.mark.parametrize("make_changes,error,match", [e[1:] for e in BACKWARD_ELEMT_ERRORS],
                         ids=[e[0] for e in BACKWARD_ELEMT_ERRORS])
def test_backward_elemt_rejects_bad_inputs(make_changes, error, match):
    kwargs = _backward_call()
    kwargs.update(make_changes(kwargs))
    args = [kwargs.pop(k) for k in ELEMT_POSITIONAL]
    assert_rejected(fo.batch_norm_backward_elemt, args, kwargs, error, match)


# ---------------------------------------------------------------------------------------
# The cache-blocked fused passes (channel-first, spatial extent >= 512, inputs beyond the
# L2) give bitwise what the two-pass pieces give, for any thread count. (Their statistics
# read four rows side by side, the pieces' a batch's slab units a quarter apart: a unit's
# sums must not depend on what it is read beside; 9 and 7 rows leave 1 and 3 over.)


@pytest.fixture
def cache_bytes():
    """Sets the cache sizes the runtime plans with; restores the machine's afterwards."""
    from fusedops import _core
    real = fo.build_info()["cache_bytes"]
    yield lambda l2, last: _core._set_cache_bytes(real["l1d"], l2, last)
    _core._set_cache_bytes(real["l1d"], real["l2"], real["last_level"])


def assert_fused_passes_equal_the_pieces(shape, dtype, seed):
    """batch_norm_forward and batch_norm_backward, on 1 to 3 threads, give bitwise what the
    split pieces give (and y within tolerance of the float64 reference)."""
    rng = np.random.default_rng(seed)
    x, dy, weight, bias = make(rng, shape, 1, dtype, offset=40.0)
    count = channel_count(shape, 1)
    mean, m2 = fo.batch_norm_stats(x)
    invstd = 1.0 / np.sqrt(m2 / count + EPS)
    y = fo.batch_norm_elemt(x, weight, bias, mean, invstd)
    sum_dy, sum_dy_xhat = fo.batch_norm_backward_reduce(dy, x, mean, invstd)
    dx = fo.batch_norm_backward_elemt(dy, x, weight, mean, invstd, sum_dy, sum_dy_xhat, count)
    y_ref, _, _, _, _ = batch_norm_forward_reference(x, weight, bias, eps=EPS)
    tol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, y_ref, rtol=tol, atol=tol * np.abs(y_ref).max())
    for n in (1, 2, 3):
        fo.set_num_threads(n)
        rm, rv = np.zeros(shape[1], dtype), np.ones(shape[1], dtype)
        y_f, save_mean, save_invstd = fo.batch_norm_forward(x, weight, bias, rm, rv, eps=EPS)
        dx_f, dw_f, db_f = fo.batch_norm_backward(dy, x, weight, save_mean, save_invstd)
        assert_bitwise_equal(save_mean, mean)
        assert_bitwise_equal(save_invstd, invstd)
        assert_bitwise_equal(y_f, y)
        assert_bitwise_equal(dx_f, dx)
        assert_bitwise_equal(dw_f, sum_dy_xhat.astype(dtype))
        assert_bitwise_equal(db_f, sum_dy.astype(dtype))
        unbiased = m2 / (count - 1)
        np.testing.assert_allclose(rv, 0.9 + 0.1 * unbiased, rtol=1e-6 if dtype == np.float32 else 1e-14)
        np.testing.assert_allclose(rm, 0.1 * mean, rtol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("stream", [False, True], ids=["cached", "streamed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape,l2", [((4, 11, 40, 40), 1 << 18), ((9, 13, 23, 37), 1 << 18),
                                      ((7, 12, 24, 40), 1 << 18), ((1, 20, 130, 130), 1 << 20)],
                         ids=["4x11x40x40", "9x13x23x37", "7x12x24x40", "multi-block"])
def test_blocked_fused_passes_equal_the_pieces(isa, threads, cache_bytes, shape, l2, dtype,
                                               stream):
    # A small L2 makes these inputs "beyond the L2": groups of a few channels.
    cache_bytes(l2, 1 << 16 if stream else 1 << 40)
    x_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    assert x_bytes > l2 and x_bytes // shape[1] * 2 <= l2 // 2
    assert_fused_passes_equal_the_pieces(shape, dtype, seed=8)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(64, 7), (48, 5), (2, 3), (8, 3, 4, 4), (5, 3, 4, 4),
                                   (1024, 2)],
                         ids=["count64", "count48", "count2", "count128", "count80",
                              "count1024"])
def test_invstd_is_the_composition_expression_with_running_stats(isa, rng, shape, dtype):
    # The forward's invstd is 1 / sqrt(m2 / count + eps) as NumPy evaluates it, whether or
    # not it also updates running statistics and whether or not count is a power of two
    # (where m2 / count is taken as a multiplication by 1 / count: the same rounding).
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    count = x.size // shape[1]
    mean, m2 = fo.batch_norm_stats(x)
    rm0 = rng.standard_normal(shape[1]).astype(dtype)
    rv0 = rng.uniform(0.5, 2.0, shape[1]).astype(dtype)
    rm, rv = rm0.copy(), rv0.copy()
    _, save_mean, save_invstd = fo.batch_norm_forward(x, None, None, rm, rv, momentum=0.25,
                                                      eps=EPS)
    assert_bitwise_equal(save_mean, mean)
    assert_bitwise_equal(save_invstd, 1.0 / np.sqrt(m2 / count + EPS))
    _, _, plain_invstd = fo.batch_norm_forward(x, eps=EPS)
    assert_bitwise_equal(plain_invstd, save_invstd)
    var = m2 / count
    np.testing.assert_allclose(rm, 0.75 * rm0.astype(np.float64) + 0.25 * mean,
                               rtol=2 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)
    np.testing.assert_allclose(rv, 0.75 * rv0.astype(np.float64) + 0.25 * var * count / (count - 1),
                               rtol=2 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape,l2,last,group", [((9, 13, 24, 36), 1 << 16, 1 << 19, 1),
                                                 ((4, 41, 24, 40), 1 << 15, 1 << 19, 2)],
                         ids=["9x13x24x36", "4x41x24x40"])
def test_channels_blocked_in_a_near_last_level_cache_equal_the_pieces(isa, threads, cache_bytes,
                                                                       shape, l2, last, group,
                                                                       dtype):
    # The backward's channels (x and dy) bigger than half the L2, x and dy together beyond
    # 1.5 times a last-level cache of a few L2s: groups blocked in that cache (the last one
    # shorter where 41 channels do not divide), the same bits as the two-pass pieces, with
    # the next rows' slabs requested ahead or not.
    from fusedops import _core
    itemsize = np.dtype(dtype).itemsize
    scale = itemsize // 4
    cache_bytes(l2 * scale, last * scale)
    plan = _core._batch_norm_plan(shape[0], shape[1], shape[2] * shape[3], itemsize)
    assert plan["backward_block_channels"] == group
    # Runs of a few KiB: both passes request the next rows' slabs (Plan::block_prefetch).
    assert plan["forward_block_prefetch"] == (plan["forward_block_channels"] == 1)
    assert plan["backward_block_prefetch"] == (group * shape[2] * shape[3] * itemsize <= 8 << 10)
    x_bytes = int(np.prod(shape)) * itemsize
    assert 2 * x_bytes // shape[1] > l2 * scale // 2 and 4 * x_bytes > 3 * last * scale
    assert_fused_passes_equal_the_pieces(shape, dtype, seed=9)

"""Batch norm's plan (which loops run, how the work is split and blocked, which stores
stream) follows the shape, the dtype, the cache sizes, the thread count and where the
arrays start; the results may not. Random cases over all of these: every variant gives
the bits of one baseline run, and the baseline matches the float64 reference."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedops as fo
from checks import at_line_offset, force_isa
from fusedops import _core
from reference import batch_norm_backward_reference, batch_norm_forward_reference
from test_mixed_precision import BF16, F16, F32, F64, assert_rounded

ISAS = fo.available_isas()
EXTENTS = [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 28, 31, 33, 56, 100]
# Long spatial extents take the slab reductions and the run loops (and their cache
# blocking) where short ones take the row loops.
LONG = [96, 130, 600, 1001]
CHANNELS = [1, 2, 3, 7, 8, 9, 16, 17, 31, 64, 100, 257]
BATCH = [1, 2, 3, 7, 16, 33, 64, 100]
# (l1d, l2, last level): the machine's, and small ones under which these shapes take the
# paths of arrays beyond the caches (cache-blocked groups, column blocks, non-temporal
# stores, prefetching reductions, reductions walked in memory order; with a 48 KiB L1d,
# streaming row loops that prefetch).
CACHES = [None, (1 << 12, 1 << 14, 1 << 16), (1 << 14, 1 << 16, 1 << 18),
          (1 << 15, 1 << 18, 1 << 20), (1 << 15, 1 << 16, 1 << 40),
          (3 << 14, 1 << 16, 1 << 20)]


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from([F32, F64, BF16, F16]))
    channel_last = draw(st.booleans())
    n = draw(st.sampled_from(BATCH))
    c = draw(st.sampled_from(CHANNELS))
    spatial = draw(st.lists(st.sampled_from(EXTENTS), max_size=2)
                   | st.lists(st.sampled_from(LONG), min_size=1, max_size=1))
    while n * c * int(np.prod(spatial)) > 400_000:
        n = max(1, n // 4)
        c = max(1, c // 4)
    training = draw(st.booleans())
    if training and n * int(np.prod(spatial)) < 2:
        training = False  # one value per channel: rejected in training (test_batch_norm)
    variants = draw(st.lists(st.tuples(st.sampled_from(CACHES), st.integers(1, 3),
                                       st.sampled_from([0, 2, 4, 8, 36]),
                                       st.sampled_from([0, 2, 4, 8, 36]),
                                       st.sampled_from([0, 8, 40])),
                             min_size=2, max_size=3))
    return dict(dtype=dtype, shape=(n, *spatial, c) if channel_last else (n, c, *spatial),
                axis=-1 if channel_last else 1, training=training,
                affine=draw(st.booleans()), running=draw(st.booleans()) or not training,
                isa=draw(st.sampled_from(ISAS)), offset=draw(st.sampled_from([0.0, 1.5, 300.0])),
                variants=variants, seed=draw(st.integers(0, 2**32 - 1)))


def run(case, x, dy, weight, bias, rm, rv, out_at=0):
    rm, rv = (rm.copy(), rv.copy()) if case["running"] else (None, None)
    y = at_line_offset(np.zeros_like(x), out_at)
    dx = at_line_offset(np.zeros_like(x), out_at)
    _, mean, invstd = fo.batch_norm_forward(x, weight, bias, rm, rv, training=case["training"],
                                            channel_axis=case["axis"], out=y)
    _, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd, training=case["training"],
                                       channel_axis=case["axis"], out=dx)
    return [a for a in (y, mean, invstd, dx, dw, db, rm, rv) if a is not None]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_every_plan_gives_the_bits_of_the_baseline(case):
    rng = np.random.default_rng(case["seed"])
    dtype, shape, axis = case["dtype"], case["shape"], case["axis"]
    c = shape[axis]
    pdtype = F32 if dtype.itemsize == 2 else dtype
    x = (rng.standard_normal(shape) * 2.0 + case["offset"]).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = rng.uniform(0.5, 2.0, c).astype(pdtype) if case["affine"] else None
    bias = rng.standard_normal(c).astype(pdtype) if case["affine"] else None
    rm = (rng.standard_normal(c) + case["offset"]).astype(pdtype)
    rv = rng.uniform(0.5, 2.0, c).astype(pdtype)
    real = fo.build_info()["cache_bytes"]
    real = (real["l1d"], real["l2"], real["last_level"])
    previous_threads = fo.get_num_threads()
    restore_isa = force_isa(case["isa"])
    try:
        fo.set_num_threads(1)
        base = run(case, x, dy, weight, bias, rm, rv)
        y_ref, _, _, rm_ref, rv_ref = batch_norm_forward_reference(
            x, weight, bias, rm if case["running"] else None, rv if case["running"] else None,
            training=case["training"], channel_axis=axis)
        dx_ref, dw_ref, db_ref = batch_norm_backward_reference(
            dy, x, weight, base[1], base[2], training=case["training"], channel_axis=axis)
        y, dx = base[0], base[3]
        # dx is a difference of terms of about |dy| * invstd * |weight|; where they cancel
        # (2 values per channel, a spread far above sqrt(eps)) its error is theirs
        terms = float(np.abs(dy.astype(F64)).max(initial=0.0) * np.max(base[2], initial=0.0)
                      * (np.abs(weight).max(initial=0.0) if weight is not None else 1.0))
        if dtype.itemsize == 2:
            slack = 1e-6 * (np.abs(y_ref).max() + 1.0)
            assert_rounded(y, y_ref, dtype, atol=slack, err_msg="y")
            slack = 4e-6 * (np.abs(dx_ref).max() + terms + 1.0)
            assert_rounded(dx, dx_ref, dtype, atol=slack, err_msg="dx")
        else:
            rtol = 2e-5 if dtype == F32 else 1e-12
            np.testing.assert_allclose(y, y_ref, rtol=rtol, atol=rtol * np.abs(y_ref).max())
            np.testing.assert_allclose(dx, dx_ref, rtol=rtol,
                                       atol=rtol * (np.abs(dx_ref).max() + terms + 1e-300))
        if case["affine"]:
            count = x.size // c
            rtol = 1e-12 if dtype == F64 else 1e-6
            np.testing.assert_allclose(base[4], dw_ref, rtol=rtol, atol=rtol * count)
            np.testing.assert_allclose(base[5], db_ref, rtol=rtol, atol=rtol * count)
        if case["running"]:
            rtol = 1e-12 if dtype == F64 else 1e-6
            np.testing.assert_allclose(base[-2], rm_ref, rtol=rtol, atol=rtol)
            np.testing.assert_allclose(base[-1], rv_ref, rtol=rtol, atol=rtol)
        for caches, threads, x_at, dy_at, out_at in case["variants"]:
            x_at -= x_at % dtype.itemsize
            dy_at -= dy_at % dtype.itemsize
            _core._set_cache_bytes(*(caches or real))
            fo.set_num_threads(threads)
            got = run(case, at_line_offset(x, x_at), at_line_offset(dy, dy_at), weight, bias,
                      rm, rv, out_at)
            for k, (a, b) in enumerate(zip(base, got)):
                assert a.tobytes() == b.tobytes(), (
                    f"output {k} differs with caches {caches}, {threads} threads, x at "
                    f"{x_at}, dy at {dy_at}, outputs at {out_at}")
    finally:
        _core._set_cache_bytes(*real)
        restore_isa()
        fo.set_num_threads(previous_threads)

"""Batch norm on bfloat16 and float16 data (API.md "Mixed precision"): x, dy, y and dx in
the 16-bit dtype, weight, bias, running statistics, dweight and dbias in float32, float64
statistics, float32 math. Checked against float64 references computed from the same
16-bit inputs with the final rounding applied, on every ISA and path (slab reductions,
row tiles, runs, the cache-blocked passes, non-temporal stores), the split API composing
bitwise to the fused calls, any thread count, the layer, torch where importable, and
rejected dtype combinations that change nothing."""

import numpy as np
import pytest

import fusedops as fo
from checks import (assert_bitwise_equal, assert_rejected, batch_norm_at_offsets,
                    batch_norm_with_cached_stores, force_isa)
from fusedops import _core
from reference import batch_norm_backward_reference, batch_norm_forward_reference
from test_mixed_precision import BF16, F16, HALF, assert_rounded

F32 = np.dtype(np.float32)

# Every path of the runtime, with extents that leave vector tails: slabs (long spatial),
# runs, row tiles (channel-last, short spatial, (N, C)), one channel, tiny.
SHAPES = [((4, 3, 5, 7), 1), ((2, 5, 600), 1), ((8, 5, 40, 41), 1), ((6, 9, 9, 17), -1),
          ((64, 256), 1), ((33, 17), 1), ((3, 1, 17), 1), ((2, 15), 1), ((7, 16, 1, 1), 1),
          ((300, 131, 2, 2), 1), ((6, 5, 14, 14), 1), ((5, 7, 150), 1), ((100, 700), 1)]
IDS = ["tiny", "ncl-long", "nchw", "nhwc", "nc", "nc-odd", "one-channel", "n2", "spatial1",
       "short-spatial", "slab-196", "rows-150", "nc-whole-rows"]


def make_inputs(rng, shape, channel_axis, dtype, *, offset=1.5):
    c = shape[channel_axis]
    x = (rng.standard_normal(shape) * 2.0 + offset).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    weight = rng.uniform(0.5, 2.0, c).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    rm = rng.standard_normal(c).astype(np.float32)
    rv = rng.uniform(0.5, 2.0, c).astype(np.float32)
    return x, dy, weight, bias, rm, rv


def float32_slack(ref):
    """What float32 math may add to a float64 reference of this size: a few float32 ulps
    of the largest term (the per-channel constants are rounded to float32)."""
    return 1e-6 * (np.abs(ref).max() + 1.0)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "f16"])
@pytest.mark.parametrize("shape,channel_axis", SHAPES, ids=IDS)
def test_forward_and_backward_match_the_reference(isa, rng, shape, channel_axis, dtype,
                                                  training):
    x, dy, weight, bias, rm, rv = make_inputs(rng, shape, channel_axis, dtype)
    rm_in, rv_in = rm.copy(), rv.copy()
    y, mean, invstd = fo.batch_norm_forward(x, weight, bias, rm, rv, training=training,
                                            channel_axis=channel_axis)
    y_ref, mean_ref, invstd_ref, rm_ref, rv_ref = batch_norm_forward_reference(
        x, weight, bias, rm_in, rv_in, training=training, channel_axis=channel_axis)
    assert y.dtype == dtype and y.shape == x.shape
    assert mean.dtype == invstd.dtype == np.float64
    assert rm.dtype == rv.dtype == F32
    assert_rounded(y, y_ref, dtype, atol=float32_slack(y_ref), err_msg="y")
    # Sums of 16-bit data run in float32 over at most 32 values per lane, then in double
    # (bn16_kernels.hpp): a relative error of a few float32 ulps of the terms' magnitude,
    # here the spread around the mean.
    spread = 1.0 / invstd_ref
    np.testing.assert_allclose(mean, mean_ref, rtol=0, atol=1e-6 * spread.max())
    np.testing.assert_allclose(invstd, invstd_ref, rtol=1e-6)
    np.testing.assert_allclose(rm, rm_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rv, rv_ref, rtol=1e-6, atol=1e-7)

    dx, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd, training=training,
                                        channel_axis=channel_axis)
    dx_ref, dw_ref, db_ref = batch_norm_backward_reference(
        dy, x, weight, mean, invstd, training=training, channel_axis=channel_axis)
    assert dx.dtype == dtype and dw.dtype == db.dtype == F32
    assert_rounded(dx, dx_ref, dtype, atol=4 * float32_slack(dx_ref), err_msg="dx")
    # The same float32 runs: an error of a few float32 ulps of the sum of |terms|.
    count = x.size // x.shape[channel_axis]
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-6, atol=2e-6 * count)
    np.testing.assert_allclose(db, db_ref, rtol=1e-6, atol=2e-6 * count)


@pytest.fixture
def small_caches():
    """A 64 KiB L2 and 256 KiB last-level cache: the arrays below take the cache-blocked
    passes and non-temporal stores of arrays beyond a real machine's caches."""
    real = fo.build_info()["cache_bytes"]
    _core._set_cache_bytes(1 << 14, 1 << 16, 1 << 18)
    yield
    _core._set_cache_bytes(real["l1d"], real["l2"], real["last_level"])


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "f16"])
@pytest.mark.parametrize("shape,channel_axis", [((6, 40, 31, 29), 1), ((7, 23, 25, 33), -1),
                                                ((300, 131, 2, 2), 1), ((1500, 107), 1)],
                         ids=["nchw-blocked", "nhwc", "short-spatial", "nc"])
def test_paths_beyond_the_cache_give_the_cached_bits(isa, small_caches, rng, shape,
                                                     channel_axis, dtype):
    x, dy, weight, bias, _, _ = make_inputs(rng, shape, channel_axis, dtype)
    y, mean, invstd = fo.batch_norm_forward(x, weight, bias, channel_axis=channel_axis)
    y_ref, _, _, _, _ = batch_norm_forward_reference(x, weight, bias, channel_axis=channel_axis)
    assert_rounded(y, y_ref, dtype, atol=float32_slack(y_ref), err_msg="y")
    dx, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd, channel_axis=channel_axis)
    dx_ref, _, _ = batch_norm_backward_reference(dy, x, weight, mean, invstd,
                                                 channel_axis=channel_axis)
    assert_rounded(dx, dx_ref, dtype, atol=4 * float32_slack(dx_ref), err_msg="dx")
    real = fo.build_info()["cache_bytes"]
    _core._set_cache_bytes(1 << 15, 1 << 30, 1 << 40)  # everything "in cache"
    y2, mean2, invstd2 = fo.batch_norm_forward(x, weight, bias, channel_axis=channel_axis)
    dx2, dw2, db2 = fo.batch_norm_backward(dy, x, weight, mean, invstd,
                                           channel_axis=channel_axis)
    _core._set_cache_bytes(real["l1d"], real["l2"], real["last_level"])
    for a, b in [(y, y2), (mean, mean2), (invstd, invstd2), (dx, dx2), (dw, dw2), (db, db2)]:
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "f16"])
@pytest.mark.parametrize("shape,channel_axis", [((8, 16, 32, 32), 1), ((8, 32, 32, 16), -1),
                                                ((24, 1500), 1), ((4096, 40), 1)],
                         ids=["nchw", "nhwc", "wide-nc", "tall-nc"])
def test_bitwise_identical_for_any_thread_count(isa, threads, shape, channel_axis, dtype):
    rng = np.random.default_rng(3)
    x, dy, weight, bias, rm0, rv0 = make_inputs(rng, shape, channel_axis, dtype, offset=50.0)
    results = []
    for n in (1, 2, 3):
        fo.set_num_threads(n)
        rm, rv = rm0.copy(), rv0.copy()
        y, mean, invstd = fo.batch_norm_forward(x, weight, bias, rm, rv,
                                                channel_axis=channel_axis)
        dx, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd,
                                            channel_axis=channel_axis)
        results.append([y, mean, invstd, rm, rv, dx, dw, db])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype,centre,spread", [(BF16, 3000.0, 200.0), (F16, 1000.0, 4.0)],
                         ids=["bf16", "f16"])
@pytest.mark.parametrize("shape,channel_axis", [((4, 3, 40, 41), 1), ((16, 7, 9, 40), -1),
                                                ((257, 37), 1)], ids=["slabs", "rows", "nc"])
def test_large_mean_small_spread_keeps_its_accuracy(isa, rng, shape, channel_axis, dtype,
                                                    centre, spread):
    """Sums are taken around a value of the channel: a mean hundreds of spreads from 0
    costs no accuracy, although runs of them are summed in float32."""
    x = (centre + spread * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    c = shape[channel_axis]
    weight, bias = np.full(c, 1.5, np.float32), np.full(c, 0.25, np.float32)
    y, mean, invstd = fo.batch_norm_forward(x, weight, bias, channel_axis=channel_axis)
    y_ref, mean_ref, invstd_ref, _, _ = batch_norm_forward_reference(
        x, weight, bias, channel_axis=channel_axis)
    np.testing.assert_allclose(mean, mean_ref, rtol=0, atol=1e-6 / invstd_ref.min())
    np.testing.assert_allclose(invstd, invstd_ref, rtol=1e-6)
    assert_rounded(y, y_ref, dtype, atol=float32_slack(y_ref), err_msg="y")
    dx, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd, channel_axis=channel_axis)
    dx_ref, dw_ref, db_ref = batch_norm_backward_reference(dy, x, weight, mean, invstd,
                                                           channel_axis=channel_axis)
    count = x.size // c
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-6, atol=2e-6 * count)
    np.testing.assert_allclose(db, db_ref, rtol=1e-6, atol=2e-6 * count)
    assert_rounded(dx, dx_ref, dtype, atol=4 * float32_slack(dx_ref), err_msg="dx")


@pytest.mark.skipif("avx512" not in fo.build_info()["available_isas"],
                    reason="needs a CPU with AVX-512")
@pytest.mark.parametrize("shape,channel_axis", [((3, 5, 7, 37), 1), ((5, 3, 11, 21), -1),
                                                ((33, 47), 1)], ids=["slabs", "rows", "nc"])
def test_bf16_build_stores_the_bits_of_the_portable_rounding(rng, shape, channel_axis):
    """vcvtneps2bf16 flushes denormals: registers holding one take the integer path, so
    the AVX512_BF16 build writes the bits of the plain AVX-512 build, denormal outputs,
    ties and vector tails included."""
    c = shape[channel_axis]
    x = rng.standard_normal(shape).astype(BF16)
    dy = rng.standard_normal(shape).astype(BF16)
    # outputs around the smallest normal bfloat16 (1.2e-38): denormal ones among them
    weight = np.full(c, 1e-38, np.float32)
    bias = (rng.uniform(-2e-38, 2e-38, c)).astype(np.float32)
    results = []
    restore_isa = force_isa("avx512")
    try:
        if fo.build_info()["fused_16bit_build"] != "avx512bf16":
            pytest.skip("needs a CPU with AVX512_BF16 and the build for it")
        for allowed in (True, False):
            _core._allow_avx512_bf16(allowed)
            y, mean, invstd = fo.batch_norm_forward(x, weight, bias, channel_axis=channel_axis)
            dx, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd,
                                                channel_axis=channel_axis)
            y2, _, _ = fo.batch_norm_forward(x, None, None, channel_axis=channel_axis)
            results.append([y, dx, dw, db, y2])
    finally:
        _core._allow_avx512_bf16(True)
        restore_isa()
    y = results[0][0].astype(np.float32)
    assert np.any((y != 0) & (np.abs(y) < 1.1754944e-38)), "no denormal output was tested"
    for a, b in zip(*results):
        assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "f16"])
@pytest.mark.parametrize("shape,channel_axis", [((5, 6, 30, 31), 1), ((9, 7, 5, 6), -1),
                                                ((64, 33), 1)], ids=["nchw", "nhwc", "nc"])
def test_split_api_composes_to_the_fused_calls(isa, rng, shape, channel_axis, dtype):
    x, dy, weight, bias, _, _ = make_inputs(rng, shape, channel_axis, dtype)
    y, mean, invstd = fo.batch_norm_forward(x, weight, bias, channel_axis=channel_axis)
    dx, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd, channel_axis=channel_axis)
    m, m2 = fo.batch_norm_stats(x, channel_axis=channel_axis)
    count = x.size // x.shape[channel_axis]
    mean_c, var, _ = fo.batch_norm_combine_stats([m], [m2], [count])
    assert mean_c.tobytes() == mean.tobytes()
    invstd_c = 1.0 / np.sqrt(var + 1e-5)
    y_c = fo.batch_norm_elemt(x, weight, bias, mean_c, invstd_c, channel_axis=channel_axis)
    assert y_c.dtype == dtype and y_c.tobytes() == y.tobytes()
    sum_dy, sum_dy_xhat = fo.batch_norm_backward_reduce(dy, x, mean, invstd,
                                                        channel_axis=channel_axis)
    np.testing.assert_array_equal(sum_dy.astype(np.float32), db)
    np.testing.assert_array_equal(sum_dy_xhat.astype(np.float32), dw)
    dx_c = fo.batch_norm_backward_elemt(dy, x, weight, mean, invstd, sum_dy, sum_dy_xhat,
                                        count, channel_axis=channel_axis)
    assert dx_c.dtype == dtype and dx_c.tobytes() == dx.tobytes()
    # float32 statistics are accepted as for float32 x
    y32 = fo.batch_norm_elemt(x, weight, bias, mean.astype(np.float32),
                              invstd.astype(np.float32), channel_axis=channel_axis)
    assert_rounded(y32, y.astype(np.float64), dtype, stochastic=True, atol=1e-5, err_msg="y")


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "f16"])
def test_layer_in_16_bits(rng, dtype):
    layer = fo.nn.BatchNorm(6, dtype=dtype)
    assert layer.dtype == dtype and layer.param_dtype == F32
    assert all(p.dtype == F32 for p in layer.parameters() + layer.gradients())
    assert layer.running_mean.dtype == layer.running_var.dtype == F32
    x, dy, weight, bias, _, _ = make_inputs(rng, (8, 6, 5, 5), 1, dtype)
    layer.weight[...] = weight
    layer.bias[...] = bias
    y = layer.forward(x)
    dx = layer.backward(dy)
    y_f, mean, invstd = fo.batch_norm_forward(x, weight, bias)
    dx_f, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd)
    assert y.tobytes() == y_f.tobytes() and dx.tobytes() == dx_f.tobytes()
    assert layer.grad_weight.tobytes() == dw.tobytes()
    assert layer.grad_bias.tobytes() == db.tobytes()
    y_eval = layer.forward(x, training=False)
    assert y_eval.dtype == dtype
    # an optimizer keeps the float32 parameters
    opt = fo.optim.SGD(layer.parameters(), lr=0.1)
    opt.step(layer.gradients())
    with pytest.raises(TypeError, match="x has dtype float32 but the layer has dtype"):
        layer.forward(x.astype(np.float32))


def test_layer_rejects_other_dtypes():
    with pytest.raises(TypeError, match="dtype must be float32, float64, bfloat16 or float16"):
        fo.nn.BatchNorm(3, dtype=np.int16)


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "f16"])
def test_rejected_dtype_combinations_change_nothing(rng, dtype):
    other = F16 if dtype == BF16 else BF16
    x, dy, weight, bias, rm, rv = make_inputs(rng, (4, 3, 5, 5), 1, dtype)
    mean, invstd = np.zeros(3), np.ones(3)
    fwd = fo.batch_norm_forward
    assert_rejected(fwd, (x, weight.astype(dtype), bias, rm, rv), {}, TypeError,
                    rf"weight has dtype {dtype.name} but x has dtype {dtype.name}; expected "
                    r"float32 \(per-channel arrays are float32 for 16-bit x\)")
    assert_rejected(fwd, (x, weight, bias.astype(np.float64), rm, rv), {}, TypeError,
                    "bias has dtype float64")
    assert_rejected(fwd, (x, weight, bias, rm, rv.astype(dtype)), {}, TypeError,
                    "running_var has dtype")
    assert_rejected(fwd, (x, weight, bias, rm, rv), {"out": np.empty(x.shape, np.float32)},
                    TypeError, f"out has dtype float32 but x has dtype {dtype.name}")
    assert_rejected(fwd, (x, weight, bias, rm, rv), {"out": np.empty(x.shape, other)},
                    TypeError, f"out has dtype {other.name} but x has dtype {dtype.name}")
    bwd = fo.batch_norm_backward
    assert_rejected(bwd, (dy.astype(other), x, weight, mean, invstd), {}, TypeError,
                    f"dy has dtype {other.name} but x has dtype {dtype.name}")
    assert_rejected(bwd, (dy, x, weight, mean.astype(dtype), invstd), {}, TypeError,
                    "save_mean has dtype")
    assert_rejected(bwd, (dy, x, weight.astype(np.float64), mean, invstd), {}, TypeError,
                    "weight has dtype float64")
    assert_rejected(fo.batch_norm_elemt, (x, weight, bias, mean, invstd),
                    {"out": np.empty(x.shape, np.float64)}, TypeError, "out has dtype float64")
    assert_rejected(fo.batch_norm_backward_reduce, (dy.astype(np.float32), x, mean, invstd), {},
                    TypeError, "dy has dtype float32")
    assert_rejected(fo.batch_norm_backward_elemt,
                    (dy, x, weight, mean, invstd, mean, invstd.astype(other), 10), {},
                    TypeError, "sum_dy_xhat has dtype")


def test_float32_x_still_takes_float32_parameters(rng):
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    assert_rejected(fo.batch_norm_forward, (x, np.ones(3, np.float64)), {}, TypeError,
                    "weight has dtype float64 but x has dtype float32; expected float32")


@pytest.mark.parametrize("shape", [(16, 8, 9, 9), (64, 40)], ids=["nchw", "nc"])
def test_matches_torch_bfloat16_with_float32_parameters(rng, shape):
    torch = pytest.importorskip("torch")
    x, dy, weight, bias, rm, rv = make_inputs(rng, shape, 1, BF16)
    tx = torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16).requires_grad_()
    tw = torch.from_numpy(weight.copy()).requires_grad_()
    tb = torch.from_numpy(bias.copy()).requires_grad_()
    trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tw, tb, training=True, momentum=0.1,
                                        eps=1e-5)
    ty.backward(torch.from_numpy(dy.astype(np.float32)).to(torch.bfloat16))
    y, mean, invstd = fo.batch_norm_forward(x, weight, bias, rm, rv)
    dx, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd)
    theirs_y = ty.detach().float().numpy().astype(np.float64)
    theirs_dx = tx.grad.float().numpy().astype(np.float64)
    # Both round float32 results of the same formula to bfloat16: at most one ulp apart.
    assert_rounded(y, theirs_y, BF16, stochastic=True, atol=1e-5, err_msg="y vs torch")
    assert_rounded(dx, theirs_dx, BF16, stochastic=True, atol=1e-4, err_msg="dx vs torch")
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "f16"])
@pytest.mark.parametrize("shape,channel_axis", [((70, 200), 1), ((6, 5, 7, 80), -1)],
                         ids=["nc", "nhwc"])
def test_any_alignment_gives_the_same_bits(isa, rng, shape, channel_axis, dtype):
    # As the float32 test: the row loops line up with the output's (or the inputs')
    # cache lines, the same bits for x, dy, y and dx at any offsets within a line.
    x0, dy0, weight, bias, _, _ = make_inputs(rng, shape, channel_axis, dtype)

    def run(x_at, dy_at, out_at):
        y, dx = batch_norm_at_offsets(x0, dy0, weight, bias, channel_axis, x_at, dy_at, out_at)
        return y.view(np.uint16), dx.view(np.uint16)

    y_ref, dx_ref = run(0, 0, 0)
    for x_at, dy_at, out_at in [(0, 0, 16), (16, 16, 0), (16, 32, 48), (2, 6, 0), (8, 8, 10)]:
        y, dx = run(x_at, dy_at, out_at)
        np.testing.assert_array_equal(y, y_ref, err_msg=f"y at {(x_at, dy_at, out_at)}")
        np.testing.assert_array_equal(dx, dx_ref, err_msg=f"dx at {(x_at, dy_at, out_at)}")


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "f16"])
@pytest.mark.parametrize("shape,channel_axis", [((14, 20, 37, 29), 1), ((7, 23, 29, 65), -1)],
                         ids=["nchw", "nhwc"])
def test_streamed_outputs_at_any_alignment_give_the_same_bits(isa, rng, small_last_level_cache,
                                                              shape, channel_axis, dtype):
    # As the float32 test: 16-bit outputs streamed in line-aligned tiles, at every offset.
    x0, dy0, weight, bias, _, _ = make_inputs(rng, shape, channel_axis, dtype)
    assert 2 * x0.nbytes > small_last_level_cache
    y_ref, dx_ref = batch_norm_with_cached_stores(x0, dy0, weight, bias, channel_axis)
    for at in [0, 2, 16, 34, 48, 62]:
        y, dx = batch_norm_at_offsets(x0, dy0, weight, bias, channel_axis, (at + 16) % 64,
                                      (at + 6) % 64, at)
        np.testing.assert_array_equal(y.view(np.uint16), y_ref.view(np.uint16),
                                      err_msg=f"y at {at}")
        np.testing.assert_array_equal(dx.view(np.uint16), dx_ref.view(np.uint16),
                                      err_msg=f"dx at {at}")


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "f16"])
def test_streamed_subnormal_outputs_give_the_same_bits(isa, rng, small_last_level_cache, dtype):
    # Channel-first outputs streamed from registers: a register holding a subnormal value
    # (which the BF16 build's conversion would flush to zero) is rounded as cached stores
    # round it. Tiny weights make y and dx subnormal in most channels, normal in the rest;
    # slabs of 1073 values cross the 64-byte pieces at every phase.
    shape = (14, 20, 37, 29)
    x0, dy0, weight, bias, _, _ = make_inputs(rng, shape, 1, dtype)
    tiny = float(np.finfo(dtype).smallest_normal)
    weight = (weight * tiny * np.where(np.arange(20) % 3 == 0, 1e3, 1e-1)).astype(np.float32)
    bias = np.zeros_like(bias)
    assert 2 * x0.nbytes > small_last_level_cache
    y_ref, dx_ref = batch_norm_with_cached_stores(x0, dy0, weight, bias, 1)
    for out in (y_ref, dx_ref):
        magnitude = np.abs(out.astype(np.float32))
        assert np.count_nonzero((magnitude > 0) & (magnitude < tiny)) > out.size // 4
    for at in [0, 2, 16, 62]:
        y, dx = batch_norm_at_offsets(x0, dy0, weight, bias, 1, (at + 16) % 64, (at + 6) % 64, at)
        np.testing.assert_array_equal(y.view(np.uint16), y_ref.view(np.uint16),
                                      err_msg=f"y at {at}")
        np.testing.assert_array_equal(dx.view(np.uint16), dx_ref.view(np.uint16),
                                      err_msg=f"dx at {at}")


@pytest.mark.parametrize("dtype", HALF, ids=["bf16", "f16"])
@pytest.mark.parametrize("shape,channel_axis", SHAPES, ids=IDS)
def test_non_finite_channels_stay_in_their_channels(isa, rng, shape, channel_axis, dtype):
    """A NaN or Inf in x (forward) or dy (backward), or a NaN weight, makes its channel's
    outputs NaN and leaves every other channel's outputs bitwise those of the same data
    without it (the channels are independent): the rounding stores take a NaN-free fast
    path only for registers without NaN, and registers that mix the channels take the
    other one (which keeps NaNs whose low bits would carry into the exponent NaN)."""
    c = shape[channel_axis]
    if c < 2:
        return
    x, dy, weight, bias, _, _ = make_inputs(rng, shape, channel_axis, dtype)
    bad = np.zeros(c, bool)
    bad[rng.choice(c, max(1, c // 4), replace=False)] = True
    moved = np.moveaxis(np.arange(x.size).reshape(shape), channel_axis, -1)
    flat = [moved[..., k].ravel() for k in range(c)]
    xb, dyb = x.copy(), dy.copy()
    for k in np.flatnonzero(bad):
        pick = rng.choice(flat[k], max(1, flat[k].size // 8), replace=False)
        xb.reshape(-1)[pick[0::2]] = np.nan
        xb.reshape(-1)[pick[1::2]] = np.inf
    # float32 NaNs whose low 16 bits carry when rounded (the result must stay NaN, not
    # turn into -0 or Inf) in the weights of half the bad channels
    wb = weight.copy()
    payloads = np.array([0x7FFFFFFF, 0xFFFFFFFF, 0x7FFF8001], np.uint32).view(np.float32)
    wb[np.flatnonzero(bad)[::2]] = payloads[rng.integers(0, 3, len(np.flatnonzero(bad)[::2]))]
    y, mean, invstd = fo.batch_norm_forward(x, weight, bias, channel_axis=channel_axis)
    yb, meanb, invstdb = fo.batch_norm_forward(xb, wb, bias, channel_axis=channel_axis)

    def channels(a, which):
        return np.moveaxis(a, channel_axis, -1)[..., which]

    assert np.isnan(channels(yb.astype(np.float32), bad)).all()
    assert_bitwise_equal(channels(yb, ~bad), channels(y, ~bad))
    assert_bitwise_equal(meanb[~bad], mean[~bad])
    # backward: NaN in dy of the bad channels only, x finite
    dyb2 = dy.copy()
    for k in np.flatnonzero(bad):
        dyb2.reshape(-1)[flat[k][:: max(1, flat[k].size // 5)]] = np.nan
    dx, dw, db = fo.batch_norm_backward(dy, x, weight, mean, invstd, channel_axis=channel_axis)
    dxb, dwb, dbb = fo.batch_norm_backward(dyb2, x, wb, mean, invstd, channel_axis=channel_axis)
    assert np.isnan(channels(dxb.astype(np.float32), bad)).all()
    assert_bitwise_equal(channels(dxb, ~bad), channels(dx, ~bad))
    assert_bitwise_equal(dwb[~bad], dw[~bad])
    assert np.isnan(dwb[bad]).all() and np.isnan(dbb[bad]).all()


@pytest.mark.parametrize("shape", [(6, 8, 40, 41), (2, 5, 600), (3, 4, 33)],
                         ids=["nchw", "ncl-long", "ncl-odd"])
def test_non_finite_values_under_finite_constants_keep_their_bits(isa, rng, shape):
    """Evaluation mode keeps each channel's constants finite whatever x and dy hold, so the
    channel-first loops round NaN and Inf lanes without their NaN test: a NaN of x or dy
    comes out as itself made quiet, Inf times a zero weight as the default NaN, Inf times
    any other weight as an Inf, and every finite value as it does without them."""
    x, dy, weight, bias, rm, rv = make_inputs(rng, shape, 1, fo.bfloat16)
    weight[::3] = 0.0
    bits = np.array([0x7FC0, 0xFFC0, 0x7F81, 0xFF81, 0x7FFF, 0x7FA5, 0x7F80, 0xFF80],
                    np.uint16)
    at = rng.choice(x.size, x.size // 6, replace=False)
    put = bits[rng.integers(0, bits.size, at.size)]
    xb, dyb = x.copy(), dy.copy()
    xb.reshape(-1).view(np.uint16)[at] = put
    dyb.reshape(-1).view(np.uint16)[at] = put
    channel = np.broadcast_to(np.arange(shape[1])[:, np.newaxis],
                              (shape[0], shape[1], x[0, 0].size)).reshape(-1)[at]
    scale = weight[channel]  # the sign of weight * invstd: the sign of the weight
    inf = (put & 0x7FFF) == 0x7F80
    negative = (put >= 0x8000) != (scale < 0)
    expected = np.where(~inf, put | 0x0040,  # a NaN made quiet
                        np.where(scale == 0, 0xFFC0,  # Inf * 0: the default NaN
                                 np.where(negative, 0xFF80, 0x7F80))).astype(np.uint16)

    def check(out, clean, what):
        got = out.reshape(-1).view(np.uint16)
        keep = np.ones(out.size, bool)
        keep[at] = False
        np.testing.assert_array_equal(got[keep], clean.reshape(-1).view(np.uint16)[keep],
                                      err_msg=f"{what}: finite values")
        np.testing.assert_array_equal(got[at], expected, err_msg=f"{what}: NaNs and Infs")

    y, mean, invstd = fo.batch_norm_forward(x, weight, bias, rm, rv, training=False)
    yb, _, _ = fo.batch_norm_forward(xb, weight, bias, rm.copy(), rv.copy(), training=False)
    check(yb, y, "y")
    dx, _, _ = fo.batch_norm_backward(dy, x, weight, mean, invstd, training=False)
    dxb, _, _ = fo.batch_norm_backward(dyb, x, weight, mean, invstd, training=False)
    check(dxb, dx, "dx")

"""Mixed precision (API.md "Mixed precision"): bfloat16/float16 conversions on every ISA,
stochastic rounding (neighbours, unbiased, replayable for any thread count), SGD/Adam/AdamW
over every row of the dtype table against float64 references with the final rounding
applied, param_copies, per-tensor combinations in one call, 16-bit norms, torch parity,
and rejected combinations that change nothing."""

import itertools

import numpy as np
import pytest

import fusedops as fo
from checks import assert_bitwise_equal, assert_rejected, forced_isa
from fusedops import _core
from reference import adam_reference, norm_reference, sgd_reference

BF16 = np.dtype(fo.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
HALF = [BF16, F16]
SIZES = [0, 1, 15, 16, 17, 511, 513, 40001]
MANTISSA_BITS = {BF16: 7, F16: 10}
MIN_NORMAL = {BF16: 2.0**-126, F16: 2.0**-14}


def ulp(x, dtype):
    """The spacing of `dtype` at |x| (float64 array)."""
    a = np.maximum(np.abs(np.asarray(x, np.float64)), MIN_NORMAL[dtype])
    a = np.where(np.isfinite(a), a, 1.0)
    return 2.0 ** (np.floor(np.log2(a)) - MANTISSA_BITS[dtype])


def assert_rounded(actual, ref, dtype, *, stochastic=False, rtol=2e-6, atol=0.0, err_msg=""):
    """`actual` (16-bit) is `ref` (float64) rounded to nearest, or, within float32 error of
    a rounding boundary, its other neighbour; with stochastic rounding either neighbour."""
    got = np.asarray(actual).astype(np.float64)
    ref = np.asarray(ref, np.float64)
    slack = (1.0 if stochastic else 0.5) * ulp(ref, dtype) + rtol * np.abs(ref) + atol
    bad = ~(np.abs(got - ref) <= slack)
    bad &= ~(np.isnan(got) & np.isnan(ref))
    assert not bad.any(), (f"{err_msg}: {bad.sum()} of {bad.size} values off, e.g. got "
                           f"{got[bad][:4]} expected {ref[bad][:4]}")


def special_floats(rng, dtype):
    """float32 values around every interesting place of `dtype`'s range."""
    big = 65504.0 if dtype == F16 else float(np.finfo(np.float32).max)
    tiny = 2.0**-24 if dtype == F16 else 2.0**-133
    beyond = 65504.0 * 1.0001 if dtype == F16 else 3.3e38
    values = [0.0, -0.0, np.inf, -np.inf, big, -big, beyond, 65519.0, 65520.0, 65535.0,
              70000.0, tiny, tiny / 2, tiny * 1.5, tiny * 0.49, 2.0**-14, 2.0**-14 * 0.999,
              1.0, 1.0 + 2.0**-8, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 3.0e38, 1e-40]
    exponents = rng.uniform(-30, 17, 20000) if dtype == F16 else rng.uniform(-135, 127, 20000)
    random = rng.choice([-1.0, 1.0], 20000) * 2.0**exponents
    # exact midpoints between neighbours (ties to even)
    h = rng.integers(0, 0x7BFF if dtype == F16 else 0x7F7F, 5000).astype(np.uint16)
    lo = h.view(dtype).astype(np.float64)
    hi = (h + 1).view(dtype).astype(np.float64)
    mid = (lo + hi) / 2
    out = np.concatenate([values, random, mid, -mid]).astype(np.float32)
    return out[np.isfinite(out) | np.isinf(out)]


def cast(x, dtype):
    """NumPy's (correctly rounded) conversion, overflowing to Inf quietly."""
    with np.errstate(over="ignore"):
        return np.asarray(x).astype(dtype)


def copies_of(x32, dtype, **rounding):
    """x32 rounded into a `dtype` array by the step (lr=0: the params stay x32)."""
    p = x32.copy()
    copy = np.zeros(x32.shape, dtype)
    fo.sgd_step(p, np.zeros_like(p), lr=0.0, param_copies=copy, **rounding)
    assert_bitwise_equal(p, x32)
    return copy


# --- conversions --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_round_to_nearest_matches_numpy_and_ml_dtypes(isa, dtype, rng):
    x = special_floats(rng, dtype)
    got = copies_of(x, dtype)
    expected = cast(x, dtype)
    finite = ~np.isnan(x)
    assert_bitwise_equal(got[finite], expected[finite])
    assert np.isnan(got[~finite].astype(np.float32)).all()
    nan = copies_of(np.array([np.nan, -np.nan], np.float32), dtype).astype(np.float32)
    assert np.isnan(nan).all()


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_every_16_bit_pattern_widens_exactly(isa, dtype):
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    grads = bits.view(dtype)
    p = np.full(grads.shape, -0.0, np.float32)
    fo.sgd_step(p, grads, lr=1.0, maximize=True)      # p = -0 + grad, exactly (signed zeros too)
    expected = grads.astype(np.float32)
    nan = np.isnan(expected)
    assert_bitwise_equal(p[~nan], expected[~nan])
    assert np.isnan(p[nan]).all()
    # and a 16-bit param round-trips unchanged (lr=0), NaNs staying NaN
    q = grads.copy()
    fo.sgd_step(q, np.zeros_like(q), lr=0.0)
    assert_bitwise_equal(q[~nan], grads[~nan])
    assert np.isnan(q[nan].astype(np.float32)).all()


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_stochastic_rounding_lands_on_a_neighbour_and_replays(isa, dtype, rng):
    x = special_floats(rng, dtype)
    x = x[np.isfinite(x) & (np.abs(x) < (65504.0 if dtype == F16 else 3e38))]
    a = copies_of(x, dtype, stochastic_rounding=True, seed=7)
    b = copies_of(x, dtype, stochastic_rounding=True, seed=7)
    assert_bitwise_equal(a, b)
    # within one spacing of x: one of the two neighbours
    got = a.astype(np.float64)
    assert (np.abs(got - x) < ulp(x, dtype) * 1.0000001).all()
    exact = cast(x, dtype).astype(np.float32) == x
    assert_bitwise_equal(a[exact], cast(x[exact], dtype))
    c = copies_of(x, dtype, stochastic_rounding=True, seed=8)
    assert not np.array_equal(a[~exact], c[~exact])


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_stochastic_rounding_is_unbiased(isa, dtype, rng):
    # values strictly between two neighbours, several per binade
    lo = np.array([1.0, 3.5, -0.75, 1000.0, 2.0**-20], np.float32)
    frac = np.array([0.5, 0.1, 0.9, 0.3, 0.7])
    step = ulp(lo, dtype)
    x = (lo + frac * step).astype(np.float32)
    frac = np.abs(x.astype(np.float64) - lo) / step
    assert ((frac > 0.05) & (frac < 0.95)).all()
    n = 4000
    big = np.tile(x, n)  # each value at n element indices: n independent draws
    got = copies_of(big, dtype, stochastic_rounding=True, seed=3).astype(np.float64)
    mean = got.reshape(n, x.size).mean(axis=0)
    # Bernoulli(frac) draws scaled by the spacing: 6 standard errors.
    bound = 6 * step * np.sqrt(frac * (1 - frac) / n)
    np.testing.assert_array_less(np.abs(mean - x.astype(np.float64)), bound)


def test_stochastic_rounding_is_identical_for_any_thread_count(isa, threads, rng):
    n = 300007  # several chunks and blocks, odd tail
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    g = rng.standard_normal(n).astype(fo.bfloat16)
    results = []
    for t in (1, 2, 3):
        fo.set_num_threads(t)
        p = x.astype(fo.bfloat16)
        m = np.zeros(n, fo.bfloat16)
        v = np.zeros(n, fo.bfloat16)
        for step in (1, 2):
            fo.adam_step(p, g, m, v, step=step, lr=1e-3, stochastic_rounding=True, seed=11)
        results.append((p, m, v))
    for r in results[1:]:
        for a, b in zip(results[0], r):
            assert_bitwise_equal(a, b)


def test_stochastic_rounding_draws_the_same_bits_on_every_isa(rng):
    # the float math may differ between ISAs (FMA contraction); the rounding does not
    x = (rng.standard_normal(100003) * 3).astype(np.float32)
    out = []
    for isa in fo.available_isas():
        with forced_isa(isa):
            out.append([copies_of(x, dt, stochastic_rounding=True, seed=2) for dt in HALF])
    for other in out[1:]:
        for a, b in zip(out[0], other):
            assert_bitwise_equal(a, b)


# --- optimizer steps over the dtype table --------------------------------------------------

# (params, grads, state, copy)
ROWS = [
    (F32, BF16, F32, None), (F32, F16, F32, None), (F32, F32, BF16, None),
    (F32, BF16, BF16, None), (F32, F16, BF16, None), (F32, BF16, F32, BF16),
    (F32, F16, F32, F16), (F32, F32, F32, BF16), (F32, BF16, BF16, F16),
    (BF16, BF16, F32, None), (BF16, BF16, BF16, None), (F16, F16, F32, None),
]


def row_id(row):
    names = {F32: "f32", F64: "f64", BF16: "bf16", F16: "f16", None: "-"}
    return "p={}-g={}-s={}-c={}".format(*(names[d] for d in row))


def check_output(actual, ref, dtype, stochastic, what, rtol=2e-6, atol=0.0):
    if dtype in (BF16, F16):
        assert_rounded(actual, ref, dtype, stochastic=stochastic, rtol=rtol, atol=atol,
                       err_msg=what)
    else:
        np.testing.assert_allclose(actual.astype(np.float64), ref, rtol=1e-5, atol=1e-6 + atol,
                                   err_msg=what)


class MixedTensor:
    def __init__(self, rng, n, row, names):
        pdt, gdt, sdt, cdt = row
        self.p = (rng.standard_normal(n)).astype(pdt)
        self.grads = [rng.standard_normal(n).astype(gdt) for _ in range(3)]
        self.state = {k: np.abs(rng.standard_normal(n) * 0.1).astype(sdt) for k in names}
        self.copy = None if cdt is None else np.zeros(n, cdt)
        self.row = row


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_adam_rows_match_the_float64_reference(isa, row, stochastic, rng):
    hp = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, amsgrad=True,
              l1=1e-3, grad_scale=2.0)
    names = ("exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs")
    for n in SIZES:
        t = MixedTensor(rng, n, row, names)
        for step, g in enumerate(t.grads, start=1):
            before = [t.p.copy(), *(t.state[k].copy() for k in names)]
            fn = fo.adamw_step if step == 2 else fo.adam_step
            kw = dict(hp, step=step, stochastic_rounding=stochastic, seed=5)
            if t.copy is not None:
                kw["param_copies"] = t.copy
            fn(t.p, g, *(t.state[k] for k in names[:2]), max_exp_avg_sqs=t.state[names[2]], **kw)
            ref_hp = {k: v for k, v in hp.items()}
            ref = adam_reference(*before[:1], g, *before[1:], step=step,
                                 decoupled_weight_decay=step == 2, **ref_hp)
            what = f"{row_id(row)} n={n} step={step}"
            check_output(t.p, ref[0], row[0], stochastic, what + " param", atol=2e-7)
            for k, r in zip(names, ref[1:]):
                check_output(t.state[k], r, row[2], stochastic, what + " " + k, atol=2e-7)
            if t.copy is not None:
                # the copy is the updated float32 param, rounded
                assert_rounded(t.copy, t.p.astype(np.float64), row[3], stochastic=stochastic,
                               rtol=0, err_msg=what + " copy")
                if not stochastic:
                    assert_bitwise_equal(t.copy, t.p.astype(row[3]))


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("row", ROWS, ids=row_id)
@pytest.mark.parametrize("nesterov", [False, True], ids=["plain", "nesterov"])
def test_sgd_rows_match_the_float64_reference(isa, row, nesterov, stochastic, rng):
    hp = dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=0.01, l1=1e-3,
              nesterov=nesterov, grad_scale=4.0)
    for n in SIZES:
        t = MixedTensor(rng, n, row, ("momentum_buffers",))
        buf = t.state["momentum_buffers"]
        for step, g in enumerate(t.grads):
            p0, b0 = t.p.copy(), buf.copy()
            kw = dict(hp, first_step=step == 0, stochastic_rounding=stochastic, seed=step)
            if t.copy is not None:
                kw["param_copies"] = t.copy
            fo.sgd_step(t.p, g, buf, **kw)
            ref_p, ref_b = sgd_reference(p0, g, b0, **{k: v for k, v in kw.items()
                                                        if k not in ("stochastic_rounding", "seed",
                                                                     "param_copies")})
            what = f"{row_id(row)} n={n} step={step}"
            check_output(t.p, ref_p, row[0], stochastic, what + " param", atol=2e-7)
            check_output(buf, ref_b, row[2], stochastic, what + " buffer", atol=2e-7)
            if t.copy is not None and not stochastic:
                assert_bitwise_equal(t.copy, t.p.astype(row[3]))


def assert_rounding_of(actual, wide, dtype, what):
    """`actual` is the float32 result `wide` stored in `dtype`: equal for float32 up to
    FMA contraction, and for 16-bit the same rounding except within an ulp of float32
    arithmetic differences (a value at a rounding boundary)."""
    if np.dtype(dtype) == F32:
        np.testing.assert_allclose(actual, wide, rtol=1e-6, atol=1e-7, err_msg=what)
        return
    expected = wide.astype(dtype)
    same = actual.view(np.uint16) == expected.view(np.uint16)
    assert same.mean() > 0.999, what
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    assert (diff[~same] <= ulp(expected[~same], np.dtype(dtype))).all(), what


@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_a_16_bit_step_is_the_float32_step_rounded(isa, row, rng):
    """With round-to-nearest, a 16-bit step stores what the float32 step computes on the
    widened inputs, rounded."""
    n = 4099
    t = MixedTensor(rng, n, row, ("m", "v"))
    wide = [a.astype(np.float32) for a in (t.p, t.state["m"], t.state["v"])]
    g = t.grads[0]
    kw = dict(step=3, lr=1e-2, weight_decay=0.1)
    fo.adamw_step(*wide[:1], g.astype(np.float32), *wide[1:], **kw)
    fo.adamw_step(t.p, g, t.state["m"], t.state["v"],
                  param_copies=t.copy, **kw)
    assert_rounding_of(t.p, wide[0], row[0], "param")
    assert_rounding_of(t.state["m"], wide[1], row[2], "exp_avg")
    assert_rounding_of(t.state["v"], wide[2], row[2], "exp_avg_sq")
    if t.copy is not None:
        assert_bitwise_equal(t.copy, t.p.astype(row[3]))


def test_tensors_of_different_rows_run_in_one_call(isa, rng):
    rows = [(F64, F64, F64, None), (F32, F32, F32, None), *ROWS]
    sizes = [33, 1000, 17, 70001]
    tensors = [MixedTensor(rng, sizes[i % 4], row, ("m", "v")) for i, row in enumerate(rows)]
    alone = []
    for t in tensors:
        p, m, v = t.p.copy(), t.state["m"].copy(), t.state["v"].copy()
        c = None if t.copy is None else t.copy.copy()
        fo.adam_step(p, t.grads[0], m, v, step=1, lr=0.1, stochastic_rounding=True, seed=4)
        alone.append((p, m, v, c))
    fo.adam_step([t.p for t in tensors], [t.grads[0] for t in tensors],
                 [t.state["m"] for t in tensors], [t.state["v"] for t in tensors], step=1,
                 lr=0.1, stochastic_rounding=True, seed=4)
    for i, (t, (p, m, v, _)) in enumerate(zip(tensors, alone)):
        if t.row[0] in HALF or t.row[2] in HALF:
            # stochastic bits depend on the tensor index: compare with the reference
            continue
        assert_bitwise_equal(t.p, p)
        assert_bitwise_equal(t.state["m"], m)
        assert_bitwise_equal(t.state["v"], v)


def test_tensor_index_changes_the_random_bits(rng):
    x = rng.standard_normal(1000).astype(np.float32)
    copies = [np.zeros(1000, fo.bfloat16) for _ in range(2)]
    fo.sgd_step([x.copy(), x.copy()], [np.zeros_like(x)] * 2, lr=0.0, param_copies=copies,
                stochastic_rounding=True)
    assert not np.array_equal(copies[0], copies[1])


# --- norms ------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, np.inf])
def test_norms_of_16_bit_grads(isa, norm_type, rng):
    grads = [rng.standard_normal(n).astype(dt) for n, dt in
             zip([0, 1, 17, 513, 40001, 5], [BF16, F16, BF16, F16, BF16, F32])]
    ref = norm_reference([g.astype(np.float64) for g in grads], norm_type)
    assert fo.grad_norm(grads, norm_type) == pytest.approx(ref, rel=1e-12)
    assert fo.all_finite(grads)
    grads[3][7] = np.inf
    assert not fo.all_finite(grads)
    grads[3][7] = np.nan
    assert not fo.all_finite(grads)
    assert np.isnan(fo.grad_norm(grads, norm_type))


def test_clip_scales_16_bit_grads_with_round_to_nearest(isa, rng):
    grads = [rng.standard_normal(n).astype(dt) for n, dt in zip([513, 40001], HALF)]
    before = [g.copy() for g in grads]
    total = fo.clip_grad_norm(grads, max_norm=1.0)
    ref = norm_reference([g.astype(np.float64) for g in before])
    assert total == pytest.approx(ref, rel=1e-12)
    coef = np.float32(1.0 / (ref + 1e-6))
    for g, b in zip(grads, before):
        assert_bitwise_equal(g, (b.astype(np.float32) * coef).astype(g.dtype))


def test_bit_patterns_all_finite(isa):
    for dtype in HALF:
        bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
        x = bits.view(dtype)
        finite = np.isfinite(x.astype(np.float32))
        for chunk in np.array_split(np.arange(x.size), 64):
            assert fo.all_finite(x[chunk]) == finite[chunk].all()


# --- rejected combinations ----------------------------------------------------------------------


def adam_args(pdt, gdt, sdt, n=5):
    return ([np.ones(n, np.float32), np.ones(n, pdt)], [np.ones(n, np.float32), np.ones(n, gdt)],
            [np.zeros(n, np.float32), np.zeros(n, sdt)], [np.zeros(n, np.float32), np.zeros(n, sdt)])


BAD_ROWS = [
    ((F64, BF16, F64), r"grads\[1\] has dtype bfloat16 but params\[1\] has dtype float64"),
    ((F64, F32, F64), r"grads\[1\] has dtype float32 but params\[1\] has dtype float64"),
    ((BF16, F16, F32), r"grads\[1\] has dtype float16 but params\[1\] has dtype bfloat16"),
    ((BF16, F32, F32), r"grads\[1\] has dtype float32 but params\[1\] has dtype bfloat16"),
    ((F16, BF16, F32), r"grads\[1\] has dtype bfloat16 but params\[1\] has dtype float16"),
    ((F16, F16, BF16), r"exp_avgs\[1\] has dtype bfloat16 but params\[1\] has dtype float16"),
    ((F16, F16, F16), r"exp_avgs\[1\] has dtype float16 but params\[1\] has dtype float16"),
    ((F32, F32, F16), r"exp_avgs\[1\] has dtype float16 but params\[1\] has dtype float32"),
    ((F32, F32, F64), r"exp_avgs\[1\] has dtype float64 but params\[1\] has dtype float32"),
    ((F64, F64, F32), r"exp_avgs\[1\] has dtype float32 but params\[1\] has dtype float64"),
]


@pytest.mark.parametrize("row, match", BAD_ROWS, ids=[row_id((*r, None)) for r, _ in BAD_ROWS])
def test_combinations_outside_the_table_are_rejected(row, match):
    args = adam_args(*row)
    assert_rejected(fo.adam_step, args, dict(step=1, lr=0.1), TypeError, match)


def test_bad_copies_and_mixed_states_are_rejected():
    n = 4
    p, g = np.ones(n, np.float32), np.ones(n, np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, fo.bfloat16)
    assert_rejected(fo.adam_step, (p, g, m, v), dict(step=1), TypeError,
                    r"exp_avg_sqs has dtype bfloat16 but exp_avgs has dtype float32")
    cases = [
        ((np.ones(n, fo.bfloat16), np.ones(n, fo.bfloat16)), np.zeros(n, fo.bfloat16),
         r"param_copies has dtype bfloat16 but params has dtype bfloat16"),
        ((p, g), np.zeros(n, np.float32), r"param_copies has dtype float32 but params has"),
        ((p, g), np.zeros(n + 1, fo.bfloat16), r"param_copies has shape"),
        ((p, g), [np.zeros(n, fo.bfloat16)], r"param_copies must be a single array"),
    ]
    for (pp, gg), copy, match in cases:
        exc = ValueError if "shape" in match else TypeError
        assert_rejected(fo.sgd_step, (pp, gg), dict(lr=0.1, param_copies=copy), exc, match)
    assert_rejected(fo.sgd_step, (p, g), dict(lr=0.1, param_copies=p.view(fo.bfloat16)[:n]),
                    ValueError,
                    "shares memory")
    assert_rejected(fo.sgd_step, (p, g), dict(lr=0.1, seed=-1), ValueError, "seed")
    assert_rejected(fo.sgd_step, (p, g), dict(lr=0.1, seed=1.5), TypeError, "seed")
    assert_rejected(fo.sgd_step, (p, g), dict(lr=0.1, stochastic_rounding=1), TypeError,
                    "stochastic_rounding")
    assert_rejected(fo.grad_norm, ([np.ones(3, np.int16)],), {}, TypeError,
                    r"grads\[0\] has dtype int16")


# --- torch parity ---------------------------------------------------------------------------


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_bf16_params_and_state_match_torch_fused(isa, name, rng):
    """torch's fused CPU Adam/AdamW on bfloat16 params keeps bfloat16 state and computes in
    float32 with round-to-nearest stores: the same flow. (Its fused SGD is not compared:
    in torch 2.13 its bfloat16 momentum path leaves vectorized lanes of the param
    unchanged on the first step.)"""
    torch = pytest.importorskip("torch")
    n = 10007
    p0 = rng.standard_normal(n).astype(fo.bfloat16)
    grads = [rng.standard_normal(n).astype(fo.bfloat16) for _ in range(5)]
    tp = torch.tensor(p0.astype(np.float32)).to(torch.bfloat16)
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    opt = cls([tp], lr=1e-2, weight_decay=0.01, fused=True)
    m, v = np.zeros(n, fo.bfloat16), np.zeros(n, fo.bfloat16)
    p = p0.copy()
    step_fn = fo.adam_step if name == "adam" else fo.adamw_step
    for step, g in enumerate(grads, start=1):
        tp.grad = torch.tensor(g.astype(np.float32)).to(torch.bfloat16)
        opt.step()
        step_fn(p, g, m, v, step=step, lr=1e-2, weight_decay=0.01)
        if step == 1:  # identical inputs: identical bits
            assert_bitwise_equal(p.view(np.uint16), tp.view(torch.int16).numpy().view(np.uint16))
    ours = p.astype(np.float64)
    theirs = tp.float().numpy().astype(np.float64)
    # the same float32 math up to operation order: an ulp here and there, compounding
    diff = np.abs(ours - theirs)
    assert (diff <= 2 * ulp(theirs, BF16) + 1e-4).all()
    assert (diff == 0).mean() > 0.99
    state = opt.state[tp]
    for ours_state, key in ((m, "exp_avg"), (v, "exp_avg_sq")):
        theirs_state = state[key].float().numpy().astype(np.float64)
        assert (ours_state.astype(np.float64) == theirs_state).mean() > 0.98

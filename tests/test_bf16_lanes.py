"""The register loops of the fused bfloat16 steps (cpp/kernels/lanes.hpp): every build
stores the round-to-nearest-even of its float32 result bit for bit (NaN, Inf, overflow to
Inf, denormals, ties), padded tails compute what the body computes, and the AVX-512 build
with BF16 instructions (vcvtneps2bf16 flushes denormal inputs, so those registers take
the integer path) stores what the plain AVX-512 build stores."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fusedops as fo
from checks import assert_bitwise_equal
from fusedops import _core
from test_mixed_optim_classes import master_of

BF16 = np.dtype(fo.bfloat16)
TAILS = [0, 1, 15, 16, 17, 31, 33, 1001]


def rne_bits(x):
    """bfloat16 bits of float32 `x`, rounded to nearest even from the bits (NaN: quieted,
    high payload kept), independent of the kernels and of ml_dtypes."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return np.where(np.isnan(x), (u >> 16) | 0x40, rounded).astype(np.uint16)


def sgd_expected(p, g):
    with np.errstate(all="ignore"):
        return rne_bits(p.astype(np.float32) - np.float32(0.5) * g.astype(np.float32))


def assert_bits(actual, expected, err_msg=""):
    """Equal bits, except that which NaN operand a NaN result carries may differ (FMA
    and separate operations propagate different ones): there a quiet NaN of any payload."""
    got = actual.view(np.uint16)
    nan = (expected & 0x7FFF) > 0x7F80
    np.testing.assert_array_equal(got[~nan], expected[~nan], err_msg=err_msg)
    assert ((got[nan] & 0x7FC0) == 0x7FC0).all(), err_msg


def special_bf16(rng, n):
    """bfloat16 values of every kind: random bit patterns (denormals, NaNs, Infs included),
    the largest finite, the smallest denormals, zeros."""
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    picks = np.array([0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0x7F7F, 0xFF7F, 0x0001, 0x8001,
                      0x007F, 0x0080, 0x3F80, 0x7F81], np.uint16)
    where = rng.random(n) < 0.3
    bits[where] = rng.choice(picks, where.sum())
    small = rng.random(n) < 0.3  # near and below the smallest normal
    bits[small] = (rng.integers(0, 0x0100, small.sum()) | (rng.integers(0, 2, small.sum()) << 15)).astype(np.uint16)
    return bits.view(BF16)


@pytest.fixture(params=["default", "no-avx512-bf16"])
def bf16_instructions(request):
    _core._allow_avx512_bf16(request.param == "default")
    yield request.param
    _core._allow_avx512_bf16(True)


def test_sgd_stores_the_rounded_float32_result_bitwise(isa, bf16_instructions, rng):
    # lr = 0.5: 0.5 * g is exact, so p - lr * g is one float32 rounding with or without FMA
    for n in TAILS:
        p, g = special_bf16(rng, n), special_bf16(rng, n)
        expected = sgd_expected(p, g)
        fo.sgd_step([p], [g], lr=0.5)
        assert_bits(p, expected, err_msg=f"n={n}")


def test_sgd_momentum_buffer_and_ties(isa, bf16_instructions, rng):
    n = 4099
    # p - 0.5 * g lands between bfloat16 neighbours, on midpoints, and in the denormals
    p = rng.standard_normal(n).astype(BF16)
    g = (p.astype(np.float32) * rng.choice([2.0**-8, 2.0**-9, 3 * 2.0**-9], n)).astype(BF16)
    tiny = rng.random(n) < 0.2
    p[tiny] = (rng.standard_normal(tiny.sum()) * 2.0**-127).astype(BF16)
    b = np.zeros(n, BF16)
    expected_p = sgd_expected(p, g)
    expected_b = g.view(np.uint16).copy()  # the first step stores the gradient
    fo.sgd_step([p], [g], [b], lr=0.5, momentum=0.9, first_step=True)
    np.testing.assert_array_equal(p.view(np.uint16), expected_p)
    np.testing.assert_array_equal(b.view(np.uint16), expected_b)


def test_a_first_momentum_buffer_stores_the_gradient_bits(isa, bf16_instructions, rng):
    # No arithmetic reaches these stores: signalling NaNs are quieted, denormals kept.
    for n in TAILS:
        g = special_bf16(rng, n)
        g.view(np.uint16)[: n // 2] = rng.choice(np.array([0x7F81, 0xFF81, 0x7FBF, 0x0001, 0x807F],
                                                          np.uint16), n // 2)
        widened = (g.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        p, b = np.zeros(n, BF16), np.zeros(n, BF16)
        fo.sgd_step([p], [g], [b], lr=0.5, momentum=0.9, first_step=True)
        np.testing.assert_array_equal(b.view(np.uint16), rne_bits(widened), err_msg=f"n={n}")


def adam_steps(p, g, m, v, x, offset, **kw):
    p, m, v, x = (a[offset:].copy() for a in (p, m, v, x))
    for step in (3, 4, 5):
        fo.adam_step([p], [g[offset:]], [m], [v], max_exp_avg_sqs=[x], step=step, **kw)
    return p, m, v, x


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("kw", [dict(lr=1e-2), dict(lr=1e-2, amsgrad=True, weight_decay=0.1,
                                                     l1=1e-4, grad_scale=2.0)],
                         ids=["plain", "amsgrad-l2-l1-scaled"])
def test_adam_tails_and_builds_agree_bitwise(isa, rng, kw, stochastic):
    """Several steps from nonzero state, with denormal second moments and non-finite
    gradients: a range starting anywhere (other tails) gives the same bits, and on AVX-512
    the BF16 build gives the plain build's bits."""
    n = 1037
    p = rng.standard_normal(n).astype(BF16)
    g = (rng.standard_normal(n) * 10.0 ** rng.integers(-25, 3, n)).astype(BF16)
    g[rng.random(n) < 0.02] = np.inf
    g[rng.random(n) < 0.02] = np.nan
    m = (rng.standard_normal(n) * 0.1).astype(BF16)
    v = np.abs(rng.standard_normal(n) * 10.0 ** rng.integers(-45, -1, n)).astype(BF16)
    x = v.copy()
    kw = dict(kw, stochastic_rounding=stochastic, seed=7)
    if stochastic:  # random bits are keyed on the element index: whole tensors only
        offsets = [0]
    else:
        offsets = [0, 1, 15, 16, 17, 31, 33, n - 15, n - 1]
    whole = adam_steps(p, g, m, v, x, 0, **kw)
    for offset in offsets:
        for got, want in zip(adam_steps(p, g, m, v, x, offset, **kw), whole):
            assert_bitwise_equal(got, want[offset:])
    if fo.simd_isa() == "avx512":
        _core._allow_avx512_bf16(False)
        try:
            plain = adam_steps(p, g, m, v, x, 0, **kw)
        finally:
            _core._allow_avx512_bf16(True)
        for got, want in zip(plain, whole):
            assert_bitwise_equal(got, want)


def test_the_fused_build_follows_a_forced_isa(isa):
    build = _core._fused_build()
    assert build.startswith(isa)
    assert fo.build_info()["batch_norm_isa"] == isa
    if isa == "avx512":
        _core._allow_avx512_bf16(False)
        try:
            assert _core._fused_build() == "avx512"
        finally:
            _core._allow_avx512_bf16(True)


def test_the_fused_loops_default_to_avx512_where_present():
    """Unforced, the fused 16-bit loops run AVX-512 (with BF16 where the CPU has it: the
    measurement is in cpp/runtime/mixed.cpp), and so does batch norm, while the float32
    optimizer kernels keep their default."""
    code = ("import fusedops as fo; from fusedops import _core; "
            "print(fo.simd_isa(), _core._fused_build(), fo.build_info()['fused_16bit_build'], "
            "fo.build_info()['batch_norm_isa'])")
    env = dict(os.environ)
    env.pop("FUSEDOPS_ISA", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    isa, build, reported, batch_norm = result.stdout.split()
    assert isa == fo.available_isas()[0]
    assert build == reported
    if "avx512" in fo.available_isas():
        assert build in ("avx512", "avx512bf16")
        assert batch_norm == "avx512"  # float32/float64 batch norm too (cpp/runtime/cpu.cpp)
    else:
        assert build == isa
        assert batch_norm == isa


M64 = (1 << 64) - 1


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def mix32(x):
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def stochastic_bits(x, seed, step, tensor, operand):
    """bfloat16 bits of finite float32 `x` rounded stochastically, as the library draws
    them, written from its documented construction: a key from splitmix64 over (seed,
    step, tensor and operand, high half of the index), then per element two rounds of
    the lowbias32 mixer over the element index; 16 random bits added below the kept ones,
    truncated."""
    k = splitmix64(seed)
    k = splitmix64(k ^ step)
    k = splitmix64(k ^ (tensor << 3 | operand))
    k = splitmix64(k ^ 0)
    k0, k1 = np.uint32(k & 0xFFFFFFFF), np.uint32(k >> 32)
    index = np.arange(x.size, dtype=np.uint32)
    with np.errstate(over="ignore"):
        random = mix32(mix32(index ^ k0) + k1)
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + (random & np.uint32(0xFFFF))) >> 16).astype(np.uint16)


# (params, momentum buffer) dtypes of the fused lane loops' rows: the all-bfloat16 row
# (AVX2 moves it in the in-lane order of lanes.hpp) and rows with a float32 operand.
SGD_ROWS = [(BF16, BF16), (BF16, np.float32), (np.float32, BF16)]


@pytest.mark.parametrize("row", SGD_ROWS, ids=lambda r: "p={}-b={}".format(*map(np.dtype, r)))
def test_stochastic_rounding_draws_each_elements_bits(isa, row, rng):
    """Every element's random bits are those of its own index, on every ISA and at every
    tail: the param and the momentum buffer against an independent reference. With lr
    and momentum powers of two, each stored value is one float32 rounding with or
    without FMA, so the float math is the same everywhere."""
    pdt, bdt = row
    for n in TAILS + [4099]:
        p = rng.standard_normal(n).astype(pdt)
        g = rng.standard_normal(n).astype(pdt)
        b = (rng.standard_normal(n) * 0.5).astype(bdt)
        f32 = [a.astype(np.float32) for a in (p, g, b)]
        new_b = f32[2] * np.float32(0.5) + f32[1]
        new_p = f32[0] - np.float32(0.25) * new_b
        p0, b0 = p.copy(), b.copy()
        fo.sgd_step([p], [g], [b], lr=0.25, momentum=0.5, step=3, stochastic_rounding=True, seed=9)
        for what, got, before, want, operand in (("param", p, p0, new_p, 0),
                                                 ("buffer", b, b0, new_b, 1)):
            if got.dtype == BF16:
                np.testing.assert_array_equal(got.view(np.uint16),
                                              stochastic_bits(want, 9, 3, 0, operand),
                                              err_msg=f"{what} n={n}")
                assert n == 0 or not np.array_equal(got, before)
            else:
                assert_bitwise_equal(got, want)


# ---- The lane loops' float32 arithmetic is the float32 kernels' (cpp/kernels/optim_kernels.hpp),
# bit for bit: float32 params fed by bfloat16 grads (the master-weights flow) and remainders
# with float32 state run lane loops, and their masters must be those that float32 grads give
# (and those of master_weights=True). The flags that change the arithmetic: decoupled decay
# (torch's rounded p * (1 - lr * wd)), L2, L1, AMSGrad, maximize, grad scaling, momentum,
# dampening, Nesterov, the first momentum step.
ADAM_FLAGS = [dict(), dict(weight_decay=0.1, decoupled_weight_decay=True),
              dict(weight_decay=0.1, decoupled_weight_decay=True, l1=1e-3),
              dict(weight_decay=0.1, amsgrad=True, maximize=True, grad_scale=3.0),
              dict(l1=1e-3, grad_scale=2.0)]
SGD_FLAGS = [dict(), dict(momentum=0.9, dampening=0.3, weight_decay=0.1),
             dict(momentum=0.9, nesterov=True), dict(momentum=0.9, maximize=True, grad_scale=3.0, l1=1e-3)]
LANE_CASES = [("adam", kw) for kw in ADAM_FLAGS] + [("sgd", kw) for kw in SGD_FLAGS]


def lane_case_id(case):
    kind, kw = case
    return kind + "".join(f"-{k}" for k in kw) if kw else kind + "-plain"


def run_steps(kind, kw, params, grads, state, copies=None):
    """Three steps (the first SGD one a first momentum step), in place."""
    for step in (1, 2, 3):
        if kind == "adam":
            fo.adam_step(params, grads, state[0], state[1], step=step, lr=1e-2, param_copies=copies,
                         max_exp_avg_sqs=state[2] if kw.get("amsgrad") else None, **kw)
        else:
            first = step == 1 and kw.get("momentum", 0) != 0
            fo.sgd_step(params, grads, state[0] if kw.get("momentum") else None, lr=1e-2,
                        first_step=first, param_copies=copies, **kw)


@pytest.mark.parametrize("case", LANE_CASES, ids=lane_case_id)
def test_lane_loops_compute_the_float32_kernels_bits(isa, case, rng):
    """float32 params with bfloat16 grads and float32 state (with bfloat16 copies) give the
    float32 kernel's params and state for the widened grads, bitwise; with bfloat16 state,
    its params bitwise and its state rounded to nearest even."""
    kind, kw = case
    for n in TAILS:
        p = rng.standard_normal(n).astype(np.float32)
        g = (rng.standard_normal(n) * 0.1).astype(BF16)
        s = [(rng.standard_normal(n) * 0.01).astype(np.float32),
             (rng.random(n) * 1e-3).astype(np.float32)]
        s.append(s[1] * np.float32(1.5))
        s = [a.astype(BF16).astype(np.float32) for a in s]  # the bfloat16 rows start equal
        want_p, want_s = [p.copy()], [[a.copy()] for a in s]
        run_steps(kind, kw, want_p, [g.astype(np.float32)], want_s)

        got_p, got_s, copies = [p.copy()], [[a.copy()] for a in s], [np.zeros(n, BF16)]
        run_steps(kind, kw, got_p, [g], got_s, copies)
        assert_bitwise_equal(got_p[0], want_p[0])
        for got, want in zip(got_s, want_s):
            assert_bitwise_equal(got[0], want[0])
        np.testing.assert_array_equal(copies[0].view(np.uint16), rne_bits(want_p[0]),
                                      err_msg=f"n={n}")

        # float32 params and grads, bfloat16 state: each step rounds the state, so the
        # float32 reference runs step by step from the rounded state
        got_p, got_s = [p.copy()], [[a.astype(BF16)] for a in s]
        ref_p, ref_s = [p.copy()], [[a.copy()] for a in s]
        for step in (1, 2, 3):
            one = dict(kw)
            if kind == "adam":
                fo.adam_step(got_p, [g.astype(np.float32)], got_s[0], got_s[1], step=step, lr=1e-2,
                             max_exp_avg_sqs=got_s[2] if kw.get("amsgrad") else None, **one)
                fo.adam_step(ref_p, [g.astype(np.float32)], ref_s[0], ref_s[1], step=step, lr=1e-2,
                             max_exp_avg_sqs=ref_s[2] if kw.get("amsgrad") else None, **one)
            else:
                first = step == 1 and kw.get("momentum", 0) != 0
                buf = got_s[0] if kw.get("momentum") else None
                fo.sgd_step(got_p, [g.astype(np.float32)], buf, lr=1e-2, first_step=first, **one)
                fo.sgd_step(ref_p, [g.astype(np.float32)], ref_s[0] if buf else None, lr=1e-2,
                            first_step=first, **one)
            assert_bitwise_equal(got_p[0], ref_p[0])
            for got, ref in zip(got_s, ref_s):
                np.testing.assert_array_equal(got[0].view(np.uint16), rne_bits(ref[0]),
                                              err_msg=f"{kind} n={n} step={step}")
                ref[0][...] = got[0].astype(np.float32)


@pytest.mark.parametrize("state_dtype", [None, fo.bfloat16], ids=["f32-state", "bf16-state"])
@pytest.mark.parametrize("case", LANE_CASES, ids=lane_case_id)
def test_remainder_masters_are_the_float32_masters(isa, case, state_dtype, rng):
    """master_weights="remainder" (bfloat16 params and grads) and master_weights=True keep
    the masters that float32 params stepped with the widened grads get, bitwise (with
    float32 state; with bfloat16 state, the two master flows agree bitwise)."""
    kind, kw = case
    kw = dict(kw)
    scale = kw.pop("grad_scale", 1.0)
    if kind == "adam":
        decoupled = kw.pop("decoupled_weight_decay", False)
        cls = fo.optim.AdamW if decoupled else fo.optim.Adam
        if decoupled:
            kw.setdefault("weight_decay", 0.0)
    else:
        cls = fo.optim.SGD
    shapes = [(n,) for n in TAILS if n] + [(3, 5)]
    params = [np.asarray(rng.standard_normal(s)).astype(BF16) for s in shapes]
    full = [p.copy() for p in params]
    floats = [p.astype(np.float32) for p in params]
    a = cls(params, lr=1e-2, master_weights="remainder", state_dtype=state_dtype, **kw)
    b = cls(full, lr=1e-2, master_weights=True, state_dtype=state_dtype, **kw)
    c = cls(floats, lr=1e-2, **kw) if state_dtype is None else None
    for _ in range(3):
        grads = [np.asarray(rng.standard_normal(p.shape) * 0.1).astype(BF16) for p in params]
        a.step(grads, grad_scale=scale)
        b.step(grads, grad_scale=scale)
        if c is not None:
            c.step([g.astype(np.float32) for g in grads], grad_scale=scale)
    for i, p in enumerate(params):
        master = master_of(p, a.state[i]["remainder"])
        assert_bitwise_equal(master, b.state[i]["master"])
        if c is not None:
            assert_bitwise_equal(master, floats[i])
            for key, value in c.state[i].items():
                assert_bitwise_equal(a.state[i][key], value)



# float32 NaNs whose low 16 bits carry into the exponent when rounded: without the NaN
# select they would be stored as -0 or Inf. Only float32 operands can bring them (a
# widened bfloat16 has zero low bits, and the arithmetic keeps the payload of its NaN).
CARRY_NANS = np.array([0x7FFFFFFF, 0xFFFFFFFF, 0x7FFF8001, 0xFFFF8000], np.uint32).view(np.float32)


@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize("row", ["f32p-f32g-bf16s", "bf16p-f32s", "f32p-bf16g-bf16s"])
def test_nans_from_float32_operands_stay_nan_when_rounded(isa, kind, row, rng):
    """Elements whose float32 operand (grad, state, or param through L2 decay) is such a
    NaN come out NaN in every bfloat16 output; the others are bitwise those of the same
    step without the NaNs (the stores skip the NaN selects only for registers without
    NaN)."""
    n = 1001
    pdt, gdt, sdt = {"f32p-f32g-bf16s": (np.float32, np.float32, BF16),
                     "bf16p-f32s": (BF16, BF16, np.float32),
                     "f32p-bf16g-bf16s": (np.float32, BF16, BF16)}[row]
    p = rng.standard_normal(n).astype(pdt)
    g = (rng.standard_normal(n) * 0.1).astype(gdt)
    m = (rng.standard_normal(n) * 0.01).astype(sdt)
    v = (rng.random(n) * 1e-3).astype(sdt)
    at = np.sort(rng.choice(n, 40, replace=False))
    pn, gn, mn, vn = p.copy(), g.copy(), m.copy(), v.copy()
    where = {"f32p-f32g-bf16s": gn, "bf16p-f32s": mn, "f32p-bf16g-bf16s": pn}[row]
    where[at] = CARRY_NANS[rng.integers(0, len(CARRY_NANS), at.size)]
    kw = dict(weight_decay=0.1)  # L2: a NaN param reaches the state through the gradient
    outs = []
    for arrays in ((p, g, m, v), (pn, gn, mn, vn)):
        a = [x.copy() for x in arrays]
        if kind == "adam":
            fo.adam_step([a[0]], [a[1]], [a[2]], [a[3]], step=3, lr=1e-2, **kw)
        else:
            fo.sgd_step([a[0]], [a[1]], [a[2]], lr=1e-2, momentum=0.9, **kw)
        outs.append(a if kind == "adam" else a[:3])
    rest = np.setdiff1d(np.arange(n), at)
    for name, clean, dirty in zip(("param", "grad", "state0", "state1"), outs[0], outs[1]):
        if name == "grad":
            continue
        if row == "bf16p-f32s" and name == "state1":  # v does not read the NaN exp_avg
            assert_bitwise_equal(dirty, clean)
            continue
        assert np.isnan(dirty[at].astype(np.float32)).all(), f"{name}: a NaN was rounded away"
        assert_bitwise_equal(dirty[rest], clean[rest])

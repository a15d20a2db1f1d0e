"""fo.grad_norm, fo.clip_grad_norm, fo.all_finite: float64 references, accuracy of float32
accumulation, NaN/Inf handling, torch.nn.utils.clip_grad_norm_ cross-check, thread
independence and atomic rejection of bad input."""

import math

import numpy as np
import pytest

import fusedops as fo
from checks import DTYPES, assert_bitwise_equal, assert_rejected, misaligned, randn, read_only
from reference import clip_reference, norm_reference

INF = float("inf")
NAN = float("nan")
NORM_TYPES = [1.0, 2.0, 3.0, INF]
MIXED_SHAPES = [(0,), (1,), (7,), (17,), (3, 0), (2, 3, 4), (1000,), (100003,), (), (33,),
                (8,), (16,), (31,)]

# Totals are accumulated in double, so even float32 data matches the float64 reference
# up to summation order.
NORM_RTOL = 1e-12


def mixed_grads(rng, dtype, shapes=MIXED_SHAPES, scale=1.0):
    return [randn(rng, s, dtype, scale) for s in shapes]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", NORM_TYPES + [0.5])
def test_grad_norm_mixed_sizes(isa, dtype, norm_type, rng):
    grads = mixed_grads(rng, dtype)
    got = fo.grad_norm(grads, norm_type)
    assert isinstance(got, float)
    assert math.isclose(got, norm_reference(grads, norm_type), rel_tol=NORM_RTOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 7, 8, 9, 15, 16, 17, 31, 33, 1000, 16384, 16385, 100003])
def test_grad_norm_single_array_sizes(isa, dtype, size, rng):
    g = randn(rng, size, dtype)
    for norm_type in NORM_TYPES:
        assert math.isclose(fo.grad_norm(g, norm_type), norm_reference([g], norm_type),
                            rel_tol=NORM_RTOL)


def test_grad_norm_default_is_l2(rng):
    grads = mixed_grads(rng, np.float64)
    assert fo.grad_norm(grads) == fo.grad_norm(grads, 2.0)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_grad_norm_of_nothing_is_zero(isa, norm_type):
    assert fo.grad_norm([], norm_type) == 0.0
    assert fo.grad_norm([np.zeros(0), np.zeros((3, 0))], norm_type) == 0.0
    assert fo.grad_norm(np.zeros(0, np.float32), norm_type) == 0.0


def test_grad_norm_exact_small_cases(isa):
    g = [np.array([3.0, -4.0]), np.array(-12.0)]
    assert fo.grad_norm(g, 2.0) == 13.0
    assert fo.grad_norm(g, 1.0) == 19.0
    assert fo.grad_norm(g, INF) == 12.0


def test_grad_norm_counts_a_repeated_array_twice(isa, rng):
    g = randn(rng, 100, np.float64)
    assert math.isclose(fo.grad_norm([g, g]), math.sqrt(2) * fo.grad_norm(g), rel_tol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_norm_reads_read_only_arrays_and_rejects_misaligned_ones(isa, dtype, rng):
    a = read_only(randn(rng, 1001, dtype))
    assert math.isclose(fo.grad_norm([a]), norm_reference([a]), rel_tol=NORM_RTOL)
    b = misaligned(999, dtype)
    b[...] = randn(rng, 999, dtype)
    for fn, kwargs in [(fo.grad_norm, {}), (fo.all_finite, {}), (fo.clip_grad_norm, {"max_norm": 1e-3})]:
        assert_rejected(fn, ([a.copy(), b],), kwargs, ValueError, r"grads\[1\] is not aligned")


@pytest.fixture(scope="module")
def ten_million_float32():
    """10M float32 values of similar size: hard for a float32 running sum."""
    rng = np.random.default_rng(0)
    return (1.0 + 0.01 * rng.random(10_000_000, dtype=np.float32)).astype(np.float32)


@pytest.mark.parametrize("norm_type", [1.0, 2.0])
def test_float32_running_sum_drifts(ten_million_float32, norm_type):
    """The accuracy case below is meaningful: float32 accumulation misses by far more."""
    x = ten_million_float32
    terms = np.abs(x) if norm_type == 1.0 else x * x
    naive = float(np.cumsum(terms, dtype=np.float32)[-1]) ** (1.0 / norm_type)
    expected = norm_reference([x], norm_type)
    assert abs(naive - expected) / expected > 1e-4


@pytest.mark.parametrize("norm_type", [1.0, 2.0, INF])
def test_float32_accumulation_is_accurate(isa, ten_million_float32, norm_type):
    x = ten_million_float32
    expected = norm_reference([x], norm_type)
    assert math.isclose(fo.grad_norm(x, norm_type), expected, rel_tol=1e-6)
    # The same total when the data is split into a list of tensors.
    assert math.isclose(fo.grad_norm(np.array_split(x, 7), norm_type), expected, rel_tol=1e-6)


def test_float32_large_mean_small_spread(isa):
    rng = np.random.default_rng(1)
    x = (1000.0 + 1e-3 * rng.standard_normal(1_000_003)).astype(np.float32)
    assert math.isclose(fo.grad_norm(x), norm_reference([x]), rel_tol=1e-9)
    assert math.isclose(fo.grad_norm(x, 1.0), norm_reference([x], 1.0), rel_tol=1e-9)


# --- NaN and Inf ----------------------------------------------------------------------

NONFINITE_SHAPES = [(17,), (100003,), (5, 7), (33,)]
POSITIONS = {
    "first": (0, 0),
    "middle": (1, 50001),
    "last-of-last": (3, 32),
}


def with_value_at(rng, dtype, where, value):
    grads = mixed_grads(rng, dtype, NONFINITE_SHAPES)
    tensor, index = POSITIONS[where]
    grads[tensor].reshape(-1)[index] = value
    return grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("where", list(POSITIONS))
def test_nan_gives_nan_norm(isa, dtype, norm_type, where, rng):
    grads = with_value_at(rng, dtype, where, NAN)
    assert math.isnan(fo.grad_norm(grads, norm_type))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("where", list(POSITIONS))
@pytest.mark.parametrize("value", [INF, -INF])
def test_inf_gives_inf_norm(isa, dtype, norm_type, where, value, rng):
    grads = with_value_at(rng, dtype, where, value)
    assert fo.grad_norm(grads, norm_type) == INF


@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_nan_wins_over_inf(isa, norm_type, rng):
    grads = with_value_at(rng, np.float32, "first", INF)
    grads[3][-1] = NAN
    assert math.isnan(fo.grad_norm(grads, norm_type))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_in_single_element_tensor(isa, dtype):
    for norm_type in NORM_TYPES:
        assert math.isnan(fo.grad_norm([np.ones(3, dtype), np.array(NAN, dtype)], norm_type))


# --- clip_grad_norm -------------------------------------------------------------------

def clip_and_compare(grads, max_norm, norm_type, dtype):
    expected, expected_total = clip_reference(grads, max_norm, norm_type)
    total = fo.clip_grad_norm(grads, max_norm, norm_type)
    assert isinstance(total, float)
    assert math.isclose(total, expected_total, rel_tol=NORM_RTOL)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.5, 0.999])
def test_clip_scales_to_max_norm(isa, dtype, norm_type, fraction, rng):
    grads = mixed_grads(rng, dtype)
    max_norm = fraction * norm_reference(grads, norm_type)
    clip_and_compare(grads, max_norm, norm_type, dtype)
    if fraction > 0:
        assert math.isclose(fo.grad_norm(grads, norm_type), max_norm, rel_tol=1e-5)
    else:
        assert all(not np.any(g) for g in grads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_clip_below_max_norm_changes_nothing(isa, dtype, norm_type, rng):
    grads = mixed_grads(rng, dtype)
    before = [g.copy() for g in grads]
    total = norm_reference(grads, norm_type)
    for max_norm in [total * 1.5, total + 1e-3, 1e30]:
        got = fo.clip_grad_norm(grads, max_norm, norm_type)
        assert math.isclose(got, total, rel_tol=NORM_RTOL)
        for g, b in zip(grads, before):
            assert_bitwise_equal(g, b)


def test_clip_default_norm_type_and_single_array(isa, rng):
    g = randn(rng, 1000, np.float64)
    expected, total = clip_reference([g], 1.0)
    assert math.isclose(fo.clip_grad_norm(g, 1.0), total, rel_tol=NORM_RTOL)
    np.testing.assert_allclose(g, expected[0], rtol=1e-12)


def test_clip_empty_list():
    assert fo.clip_grad_norm([], 1.0) == 0.0
    assert fo.clip_grad_norm([np.zeros(0)], 0.0) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_with_nan_gives_nan(isa, dtype, rng):
    """As torch: a NaN norm makes the coefficient NaN, and the grads become NaN."""
    grads = with_value_at(rng, dtype, "middle", NAN)
    assert math.isnan(fo.clip_grad_norm(grads, 1.0))
    assert all(np.all(np.isnan(g)) for g in grads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("max_norm", [0.0, 0.5, 3.0, 1e6])
def test_clip_matches_torch(dtype, norm_type, max_norm, rng):
    torch = pytest.importorskip("torch")
    shapes = [(1,), (7,), (2, 3, 4), (1000,), (33,), (), (5, 5)]
    grads = mixed_grads(rng, dtype, shapes)
    tensors = []
    for g in grads:
        t = torch.zeros(g.shape, dtype=torch.from_numpy(g).dtype, requires_grad=True)
        t.grad = torch.from_numpy(g.copy())
        tensors.append(t)
    torch_total = float(torch.nn.utils.clip_grad_norm_(tensors, max_norm, norm_type))
    total = fo.clip_grad_norm(grads, max_norm, norm_type)
    # torch reduces float32 grads in float32; the kernels reduce in double.
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    assert math.isclose(total, torch_total, rel_tol=rtol)
    for g, t in zip(grads, tensors):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=rtol, atol=0)


def test_clip_with_inf_matches_torch():
    """An infinite norm gives coefficient 0: finite grads become 0, infinite ones NaN."""
    torch = pytest.importorskip("torch")
    grads = [np.array([1.0, INF, -2.0]), np.array([3.0])]
    tensors = []
    for g in grads:
        t = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
        t.grad = torch.from_numpy(g.copy())
        tensors.append(t)
    torch_total = float(torch.nn.utils.clip_grad_norm_(tensors, 1.0))
    assert fo.clip_grad_norm(grads, 1.0) == torch_total == INF
    for g, t in zip(grads, tensors):
        np.testing.assert_array_equal(g, t.grad.numpy())
    np.testing.assert_array_equal(grads[0], [0.0, NAN, 0.0])


# --- all_finite -----------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_all_finite_true(isa, dtype, rng):
    grads = mixed_grads(rng, dtype)
    grads.append(np.array([np.finfo(dtype).max, -np.finfo(dtype).max, np.finfo(dtype).tiny,
                           0.0, -0.0], dtype))
    assert fo.all_finite(grads) is True
    assert fo.all_finite([]) is True
    assert fo.all_finite(np.zeros(0, dtype)) is True
    assert fo.all_finite(np.array(1.0, dtype)) is True


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("where", list(POSITIONS))
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_all_finite_false(isa, dtype, where, value, rng):
    grads = with_value_at(rng, dtype, where, value)
    assert fo.all_finite(grads) is False
    assert fo.all_finite(grads[POSITIONS[where][0]]) is False


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("threads_count", [1, 2, 3])
@pytest.mark.parametrize("index", [0, 700_000, 1_000_002])
def test_all_finite_large_input(isa, threads_count, index, rng):
    fo.set_num_threads(threads_count)
    grads = [randn(rng, 100003, np.float32) for _ in range(3)]
    grads.append(randn(rng, 1_000_003, np.float32))
    assert fo.all_finite(grads) is True
    grads[-1][index] = NAN
    assert fo.all_finite(grads) is False
    grads[-1][index] = -INF
    assert fo.all_finite(grads) is False


@pytest.mark.parametrize("size", [1, 7, 15, 16, 17, 33, 100])
def test_all_finite_every_position(isa, size):
    """NaN and Inf are found wherever they sit: in the vector body or in the tail."""
    for dtype in DTYPES:
        for index in range(size):
            for value in (NAN, INF):
                g = np.ones(size, dtype)
                g[index] = value
                assert fo.all_finite([np.ones(3, dtype), g]) is False, (dtype, index, value)


@pytest.mark.parametrize("size", [1, 7, 15, 16, 17, 33, 100])
def test_norm_nan_every_position(isa, size):
    for dtype in DTYPES:
        for index in range(size):
            g = np.ones(size, dtype)
            g[index] = NAN
            for norm_type in NORM_TYPES:
                assert math.isnan(fo.grad_norm(g, norm_type)), (dtype, index, norm_type)


# --- threads --------------------------------------------------------------------------

@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_for_1_2_and_3_threads(isa, dtype, rng):
    grads = [randn(rng, n, dtype) for n in [100003, 100003, 100003, 1_000_003, 17]]
    results = []
    for threads in (1, 2, 3):
        fo.set_num_threads(threads)
        norms = [fo.grad_norm(grads, t) for t in NORM_TYPES + [0.5]]
        clipped = [g.copy() for g in grads]
        total = fo.clip_grad_norm(clipped, 1.0)
        results.append((norms, total, clipped))
    norms1, total1, clipped1 = results[0]
    for norms, total, clipped in results[1:]:
        assert norms == norms1
        assert total == total1
        for a, b in zip(clipped, clipped1):
            assert_bitwise_equal(a, b)
    assert math.isclose(norms1[1], norm_reference(grads), rel_tol=NORM_RTOL)


# --- bad input ------------------------------------------------------------------------

def three_grads(dtype=np.float64):
    rng = np.random.default_rng(9)
    return [randn(rng, 10, dtype, 10.0) for _ in range(3)]


def non_contiguous(a):
    return np.repeat(a, 2)[::2]


def replace_last(grads, a):
    grads[-1] = a
    return grads


BAD_READ_CASES = [
    ("not-array", lambda: 5, TypeError,
     r"grads must be a numpy.ndarray or a list/tuple of numpy.ndarray, got int"),
    ("list-item-not-array", lambda: replace_last(three_grads(), [1.0, 2.0]), TypeError,
     r"^FN: grads\[2\] must be a numpy.ndarray, got list"),
    ("int-dtype", lambda: replace_last(three_grads(), np.ones(3, np.int64)), TypeError,
     r"^FN: grads\[2\] has dtype int64"),
    ("bool-dtype", lambda: replace_last(three_grads(), np.ones(3, np.bool_)), TypeError,
     r"^FN: grads\[2\] has dtype bool; expected float32, float64, bfloat16 or float16"),
    ("byteswapped", lambda: replace_last(three_grads(), np.ones(3, ">f8")), TypeError,
     r"^FN: grads\[2\] has dtype >f8 in non-native byte order"),
    ("non-contiguous", lambda: replace_last(three_grads(), non_contiguous(np.ones(4))),
     ValueError, r"^FN: grads\[2\] is not C-contiguous"),
]


@pytest.mark.parametrize("make,exc,match", [c[1:] for c in BAD_READ_CASES],
                         ids=[c[0] for c in BAD_READ_CASES])
@pytest.mark.parametrize("fn", ["grad_norm", "clip_grad_norm", "all_finite"])
def test_bad_grads_rejected(fn, make, exc, match):
    grads = make()
    args = {"grad_norm": (grads,), "clip_grad_norm": (grads, 1e-3),
            "all_finite": (grads,)}[fn]
    assert_rejected(getattr(fo, fn), args, {}, exc, match.replace("FN", fn))


@pytest.mark.parametrize("norm_type", [0.0, -1.0, -INF, NAN])
@pytest.mark.parametrize("fn", ["grad_norm", "clip_grad_norm"])
def test_bad_norm_type_rejected(fn, norm_type):
    grads = three_grads()
    args = (grads,) if fn == "grad_norm" else (grads, 1e-3)
    assert_rejected(getattr(fo, fn), args, dict(norm_type=norm_type), ValueError,
                    rf"^{fn}: norm_type must be > 0 or inf")


def overlapping_pair():
    base = np.arange(15.0)
    return [base[:10], base[5:]]


BAD_CLIP_CASES = [
    ("max-norm-negative", dict(max_norm=-1.0), ValueError, r"max_norm must be >= 0"),
    ("max-norm-nan", dict(max_norm=NAN), ValueError, r"max_norm must be finite"),
    ("max-norm-inf", dict(max_norm=INF), ValueError, r"max_norm must be finite"),
    ("last-read-only", dict(grads=lambda: replace_last(three_grads(), read_only(np.ones(3)))),
     ValueError, r"grads\[2\] is read-only"),
    ("last-misaligned", dict(grads=lambda: replace_last(three_grads(),
                                                        misaligned(3, np.float64))),
     ValueError, r"grads\[2\] is not aligned"),
    ("same-array-twice", dict(grads=lambda: (lambda g: g + [g[0]])(three_grads())),
     ValueError, r"grads\[(0|3)\] shares memory with grads\[(0|3)\]"),
    ("overlapping-views", dict(grads=overlapping_pair), ValueError,
     r"grads\[1\] shares memory with grads\[0\]"),
]


@pytest.mark.parametrize("overrides,exc,match", [c[1:] for c in BAD_CLIP_CASES],
                         ids=[c[0] for c in BAD_CLIP_CASES])
def test_bad_clip_rejected_and_changes_nothing(overrides, exc, match):
    # max_norm is far below the total, so an accepted call would scale every grad.
    kwargs = dict(grads=three_grads(), max_norm=1e-3)
    kwargs.update({k: v() if callable(v) else v for k, v in overrides.items()})
    assert_rejected(fo.clip_grad_norm, (), kwargs, exc, rf"^clip_grad_norm: {match}")


def test_read_only_grads_are_fine_for_grad_norm_and_all_finite():
    grads = [read_only(g) for g in three_grads()]
    assert math.isclose(fo.grad_norm(grads), norm_reference(grads), rel_tol=NORM_RTOL)
    assert fo.all_finite(grads) is True
    base = np.arange(15.0)
    assert math.isclose(fo.grad_norm([base[:10], base[5:]]),
                        norm_reference([base[:10], base[5:]]), rel_tol=NORM_RTOL)

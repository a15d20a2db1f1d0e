"""fo.sgd_step: parity with the float64 reference on every ISA, multi-tensor calls, thread
independence, torch.optim.SGD cross-check, and atomic rejection of bad input."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

import fusedops as fo
from checks import (DTYPES, assert_bitwise_equal, assert_close, assert_rejected, misaligned,
                    force_isa, randn, read_only)
from fusedops import _core
from reference import sgd_reference

ISAS = fo.available_isas()

SIZES = [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 1000, 100003]
STEPS = 5


def sgd_configs():
    out = []
    momentum_variants = [
        dict(momentum=0.0),
        dict(momentum=0.9),
        dict(momentum=0.9, nesterov=True),
        dict(momentum=0.9, dampening=0.3),
    ]
    for base, maximize, weight_decay, l1, grad_scale in itertools.product(
            momentum_variants, [False, True], [0.0, 0.01], [0.0, 1e-3], [1.0, 3.0]):
        out.append(dict(base, lr=0.1, maximize=maximize, weight_decay=weight_decay, l1=l1,
                        grad_scale=grad_scale))
    return out


def config_id(cfg):
    return "-".join(f"{k}={v}" for k, v in cfg.items() if k != "lr") or "plain"


CONFIGS = sgd_configs()
RICH = dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True, weight_decay=0.01, l1=1e-3,
            grad_scale=3.0)
DAMPED = dict(lr=0.05, momentum=0.8, dampening=0.25, weight_decay=0.02, grad_scale=0.5)
PLAIN = dict(lr=0.1)


def make_tensor(rng, shape, dtype):
    p = randn(rng, shape, dtype)
    # Garbage in the buffer: first_step=True must ignore it.
    buf = randn(rng, shape, dtype, scale=100.0)
    grads = [randn(rng, shape, dtype) for _ in range(STEPS)]
    return p, buf, grads


def check_steps(p, buf, grads, cfg, dtype, first_step_at_start=True):
    """Runs len(grads) steps; each step is compared with the reference started from the
    same state (so every step runs on nonzero state, at one-step tolerance)."""
    uses_momentum = cfg.get("momentum", 0.0) != 0.0
    for k, g in enumerate(grads):
        first = first_step_at_start and k == 0
        expected_p, expected_buf = sgd_reference(p, g, buf, first_step=first, **cfg)
        fo.sgd_step(p, g, buf if uses_momentum else None, first_step=first, **cfg)
        assert_close(p, expected_p, dtype, err_msg=f"param after step {k}")
        if uses_momentum:
            assert_close(buf, expected_buf, dtype, err_msg=f"buffer after step {k}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("cfg", [PLAIN, RICH, DAMPED], ids=["plain", "rich", "damped"])
def test_parity_sizes(isa, dtype, size, cfg, rng):
    p, buf, grads = make_tensor(rng, size, dtype)
    check_steps(p, buf, grads, cfg, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=[config_id(c) for c in CONFIGS])
def test_parity_flag_combinations(isa, dtype, cfg, rng):
    p, buf, grads = make_tensor(rng, 1037, dtype)
    check_steps(p, buf, grads, cfg, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nonzero_state_without_first_step(isa, dtype, rng):
    p, buf, grads = make_tensor(rng, 333, dtype)
    buf[...] = rng.standard_normal(333).astype(dtype)
    check_steps(p, buf, grads, DAMPED, dtype, first_step_at_start=False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [16383, 16384, 16385, 40000])
def test_parity_around_chunk_boundaries(isa, dtype, size, rng):
    p, buf, grads = make_tensor(rng, size, dtype)
    check_steps(p, buf, grads[:2], RICH, dtype)


@pytest.mark.parametrize("shape", [(), (1,), (3, 5), (2, 3, 7), (4, 1, 3, 2), (0, 3), (5, 0)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_shapes(isa, shape, dtype, rng):
    p, buf, grads = make_tensor(rng, shape, dtype)
    check_steps(p, buf, grads[:3], RICH, dtype)
    assert p.shape == shape and buf.shape == shape


def test_zero_dim_arrays_are_updated(isa):
    p = np.array(2.0)
    buf = np.array(0.0)
    fo.sgd_step(p, np.array(1.0), buf, lr=0.5, momentum=0.9, first_step=True)
    assert float(p) == 1.5 and float(buf) == 1.0
    fo.sgd_step(p, np.array(1.0), buf, lr=0.5, momentum=0.9)
    assert math.isclose(float(buf), 1.9, rel_tol=1e-15)
    assert math.isclose(float(p), 1.5 - 0.5 * 1.9, rel_tol=1e-15)


def test_float64_trajectory_matches_reference(rng):
    """Ten steps run independently by the kernel and by the reference stay together."""
    p, buf, grads = make_tensor(rng, 2049, np.float64)
    grads = grads + [rng.standard_normal(2049) for _ in range(5)]
    ref_p, ref_buf = p.copy(), None
    for k, g in enumerate(grads):
        fo.sgd_step(p, g, buf, first_step=k == 0, **DAMPED)
        ref_p, ref_buf = sgd_reference(ref_p, g, ref_buf, first_step=k == 0, **DAMPED)
    np.testing.assert_allclose(p, ref_p, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(buf, ref_buf, rtol=1e-11, atol=1e-12)


def test_momentum_zero_leaves_given_buffers_alone(isa, rng):
    p, buf, grads = make_tensor(rng, 100, np.float64)
    before = buf.copy()
    fo.sgd_step(p, grads[0], buf, lr=0.1, momentum=0.0)
    assert_bitwise_equal(buf, before)


def test_lr_zero_keeps_params(isa, rng):
    p, buf, grads = make_tensor(rng, 100, np.float32)
    before = p.copy()
    fo.sgd_step(p, grads[0], buf, lr=0.0, momentum=0.9, weight_decay=0.1, first_step=True)
    assert_bitwise_equal(p, before)
    assert_close(buf, grads[0] + 0.1 * before.astype(np.float64), np.float32)


# --- multi-tensor calls ---------------------------------------------------------------

LIST_SHAPES = [(), (0,), (1,), (7,), (3, 0, 2), (2, 3, 4), (17,), (1000,), (100003,), (33,)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", [PLAIN, RICH, DAMPED], ids=["plain", "rich", "damped"])
@pytest.mark.parametrize("container", [list, tuple])
def test_list_equals_per_tensor_calls(isa, dtype, cfg, container, rng):
    uses_momentum = cfg.get("momentum", 0.0) != 0.0
    tensors = [make_tensor(rng, shape, dtype) for shape in LIST_SHAPES]
    params = [t[0] for t in tensors]
    bufs = [t[1] for t in tensors]
    single_params = [p.copy() for p in params]
    single_bufs = [b.copy() for b in bufs]
    for k in range(3):
        grads = [t[2][k] for t in tensors]
        fo.sgd_step(container(params), container(grads),
                    container(bufs) if uses_momentum else None, first_step=k == 0, **cfg)
        for p, g, b in zip(single_params, grads, single_bufs):
            fo.sgd_step(p, g, b if uses_momentum else None, first_step=k == 0, **cfg)
    for a, b in zip(params + bufs, single_params + single_bufs):
        assert_bitwise_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_list_parity_with_reference(isa, dtype, rng):
    tensors = [make_tensor(rng, shape, dtype) for shape in LIST_SHAPES]
    params = [t[0] for t in tensors]
    bufs = [t[1] for t in tensors]
    for k in range(3):
        grads = [t[2][k] for t in tensors]
        expected = [sgd_reference(p, g, b, first_step=k == 0, **RICH)
                    for p, g, b in zip(params, grads, bufs)]
        fo.sgd_step(params, grads, bufs, first_step=k == 0, **RICH)
        for p, b, (ep, eb) in zip(params, bufs, expected):
            assert_close(p, ep, dtype)
            assert_close(b, eb, dtype)


def test_empty_list_is_a_no_op():
    fo.sgd_step([], [], lr=0.1)
    fo.sgd_step([], [], [], lr=0.1, momentum=0.9)


def test_grads_may_be_shared_and_read_only(isa, rng):
    """Arrays that are only read may alias each other and need not be writeable."""
    g = read_only(rng.standard_normal(50))
    p1, p2 = rng.standard_normal(50), rng.standard_normal(50)
    e1, _ = sgd_reference(p1, g, None, lr=0.1)
    e2, _ = sgd_reference(p2, g, None, lr=0.1)
    fo.sgd_step([p1, p2], [g, g], lr=0.1)
    assert_close(p1, e1, np.float64)
    assert_close(p2, e2, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_misaligned_grads_are_rejected(dtype, rng):
    """Reading a misaligned float array through a float pointer is undefined behaviour."""
    g = misaligned(1037, dtype)
    g[...] = rng.standard_normal(1037)
    p = rng.standard_normal(1037).astype(dtype)
    assert_rejected(fo.sgd_step, (p, g), dict(lr=0.1), ValueError,
                    r"sgd_step: grads is not aligned to its dtype; pass a copy")


# --- threads --------------------------------------------------------------------------

@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_for_1_2_and_3_threads(isa, dtype, rng):
    sizes = [100003, 100003, 100003, 1_000_003, 17]
    tensors = [make_tensor(rng, n, dtype) for n in sizes]
    results = []
    for threads in (1, 2, 3):
        fo.set_num_threads(threads)
        params = [t[0].copy() for t in tensors]
        bufs = [t[1].copy() for t in tensors]
        for k in range(2):
            fo.sgd_step(params, [t[2][k] for t in tensors], bufs, first_step=k == 0, **RICH)
        results.append(params + bufs)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert_bitwise_equal(a, b)
    # The update did happen.
    assert not np.array_equal(results[0][3], tensors[3][0])


# --- hypothesis -----------------------------------------------------------------------

@st.composite
def sgd_cases(draw):
    shapes = draw(st.lists(array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12),
                           min_size=1, max_size=4))
    momentum = draw(st.sampled_from([0.0, 0.5]) | st.floats(0.0, 0.99))
    nesterov = momentum > 0 and draw(st.booleans())
    dampening = 0.0 if nesterov else draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0))
    cfg = dict(
        lr=draw(st.sampled_from([0.0, 0.1]) | st.floats(0.0, 0.5)),
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        weight_decay=draw(st.sampled_from([0.0]) | st.floats(0.0, 0.1)),
        l1=draw(st.sampled_from([0.0]) | st.floats(0.0, 0.01)),
        maximize=draw(st.booleans()),
        grad_scale=draw(st.sampled_from([1.0, 1024.0]) | st.floats(0.25, 64.0)),
    )
    return dict(shapes=shapes, cfg=cfg, dtype=draw(st.sampled_from(DTYPES)),
                isa=draw(st.sampled_from(ISAS)), steps=draw(st.integers(1, 4)),
                seed=draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=40, deadline=None)
@given(case=sgd_cases())
def test_hypothesis_parity(case):
    rng = np.random.default_rng(case["seed"])
    dtype, cfg = case["dtype"], case["cfg"]
    uses_momentum = cfg["momentum"] != 0.0
    params = [randn(rng, s, dtype) for s in case["shapes"]]
    bufs = [np.zeros(s, dtype) for s in case["shapes"]]
    restore_isa = force_isa(case["isa"])
    try:
        for k in range(case["steps"]):
            grads = [randn(rng, s, dtype) for s in case["shapes"]]
            expected = [sgd_reference(p, g, b, first_step=k == 0, **cfg)
                        for p, g, b in zip(params, grads, bufs)]
            fo.sgd_step(params, grads, bufs if uses_momentum else None, first_step=k == 0,
                        **cfg)
            for p, b, g, (ep, eb) in zip(params, bufs, grads, expected):
                # Rounding error scales with the largest term of the update.
                scale = 1.0 + max([float(np.max(np.abs(x), initial=0.0))
                                   for x in (ep, g / cfg["grad_scale"], eb if eb is not None
                                             else 0.0)])
                assert_close(p, ep, dtype, factor=scale)
                if uses_momentum:
                    assert_close(b, eb, dtype, factor=scale)
    finally:
        restore_isa()


# --- torch cross-check ----------------------------------------------------------------

TORCH_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.1, momentum=0.9, dampening=0.4),
    dict(lr=0.1, momentum=0.9, nesterov=True),
    dict(lr=0.05, maximize=True, weight_decay=0.05),
    dict(lr=0.05, momentum=0.8, nesterov=True, maximize=True, weight_decay=0.01),
    dict(lr=0.05, momentum=0.7, dampening=0.1, maximize=True, weight_decay=0.02),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", TORCH_CONFIGS, ids=[config_id(c) for c in TORCH_CONFIGS])
def test_matches_torch_sgd(dtype, cfg, rng):
    torch = pytest.importorskip("torch")
    shapes = [(1037,), (3, 5), ()]
    params = [randn(rng, s, dtype) for s in shapes]
    bufs = [np.zeros(s, dtype) for s in shapes]
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    opt = torch.optim.SGD(tparams, foreach=False, **cfg)
    uses_momentum = cfg.get("momentum", 0.0) != 0.0
    for k in range(6):
        grads = [randn(rng, s, dtype) for s in shapes]
        for t, g in zip(tparams, grads):
            t.grad = torch.from_numpy(g.copy())
        opt.step()
        fo.sgd_step(params, grads, bufs if uses_momentum else None, first_step=k == 0, **cfg)
    factor = 10.0  # six steps; torch and the kernels round differently
    for p, t in zip(params, tparams):
        assert_close(p, t.detach().numpy().astype(np.float64), dtype, factor=factor)
    if uses_momentum:
        for b, t in zip(bufs, tparams):
            torch_buf = opt.state[t]["momentum_buffer"].numpy().astype(np.float64)
            assert_close(b, torch_buf, dtype, factor=factor)


# --- bad input ------------------------------------------------------------------------

N = 10
COUNT = 3


def valid_call(dtype=np.float64):
    """A call with three tensors that would write every param and buffer."""
    rng = np.random.default_rng(7)
    params = [rng.standard_normal(N).astype(dtype) for _ in range(COUNT)]
    grads = [rng.standard_normal(N).astype(dtype) for _ in range(COUNT)]
    bufs = [rng.standard_normal(N).astype(dtype) for _ in range(COUNT)]
    kwargs = dict(lr=0.1, momentum=0.9, weight_decay=0.01)
    return [params, grads, bufs], kwargs


def test_valid_call_writes_every_written_array():
    """The bad-input cases below start from this call, so a non-atomic implementation
    would visibly change their arrays."""
    args, kwargs = valid_call()
    before = [a.copy() for a in args[0] + args[2]]
    fo.sgd_step(*args, **kwargs)
    for a, b in zip(args[0] + args[2], before):
        assert not np.any(a == b)


def non_contiguous(a):
    wide = np.zeros(a.size * 2, a.dtype)
    view = wide[::2]
    view[...] = a
    return view


def fortran_2d(a):
    return np.asfortranarray(a.reshape(2, -1))


def set_last(index, make):
    """Replaces the last tensor of argument `index` by make(args)."""
    def edit(args, kwargs):
        args[index][-1] = make(args)
    return edit


def set_kw(**updates):
    def edit(args, kwargs):
        kwargs.update(updates)
    return edit


def set_arg(index, make):
    def edit(args, kwargs):
        args[index] = make(args)
    return edit


P, G, B = 0, 1, 2
BAD_CASES = [
    # TypeError: types and dtypes
    ("params-not-array", set_arg(P, lambda a: 5), TypeError,
     r"params must be a numpy.ndarray or a list/tuple of numpy.ndarray, got int"),
    ("grads-not-array", set_arg(G, lambda a: "grads"), TypeError, r"grads must be"),
    ("buffers-not-array", set_arg(B, lambda a: 1.5), TypeError, r"momentum_buffers must be"),
    ("last-param-python-list", set_last(P, lambda a: [0.0] * N), TypeError,
     r"params\[2\] must be a numpy.ndarray, got list"),
    ("last-grad-python-list", set_last(G, lambda a: [0.0] * N), TypeError,
     r"grads\[2\] must be a numpy.ndarray"),
    ("last-param-int", set_last(P, lambda a: np.arange(N)), TypeError,
     r"params\[2\] has dtype int64"),
    ("last-grad-float16", set_last(G, lambda a: np.ones(N, np.float16)), TypeError,
     r"grads\[2\] has dtype float16"),
    ("last-grad-complex", set_last(G, lambda a: np.ones(N, np.complex128)), TypeError,
     r"grads\[2\] has dtype complex128"),
    ("mixed-dtype-grad", set_last(G, lambda a: a[G][-1].astype(np.float32)), TypeError,
     r"grads\[2\] has dtype float32 but params\[2\] has dtype float64"),
    ("mixed-dtype-param", set_last(P, lambda a: a[P][-1].astype(np.float32)), TypeError,
     r"grads\[2\] has dtype float64 but params\[2\] has dtype float32"),
    ("mixed-dtype-buffer", set_last(B, lambda a: a[B][-1].astype(np.float32)), TypeError,
     r"momentum_buffers\[2\] has dtype float32"),
    ("byteswapped-buffer", set_last(B, lambda a: a[B][-1].astype(">f8")), TypeError,
     r"momentum_buffers\[2\] has dtype >f8 in non-native byte order"),
    ("grads-single-vs-list", set_arg(G, lambda a: a[G][0]), TypeError,
     r"grads must be a list/tuple of arrays like params"),
    ("buffers-single-vs-list", set_arg(B, lambda a: a[B][0]), TypeError,
     r"momentum_buffers must be a list/tuple of arrays like params"),
    ("params-single-grads-list",
     lambda a, k: a.__setitem__(P, a[P][0]) or a.__setitem__(B, a[B][0]), TypeError,
     r"grads must be a single array like params"),
    # ValueError: shapes and list lengths
    ("last-grad-longer", set_last(G, lambda a: np.ones(N + 1)), ValueError,
     r"grads\[2\] has shape \(11,\) but params\[2\] has shape \(10,\)"),
    ("last-grad-2d", set_last(G, lambda a: np.ones((2, N // 2))), ValueError,
     r"grads\[2\] has shape \(2, 5\) but params\[2\] has shape \(10,\)"),
    ("last-buffer-shape", set_last(B, lambda a: np.ones(N - 1)), ValueError,
     r"momentum_buffers\[2\] has shape \(9,\)"),
    ("grads-shorter", set_arg(G, lambda a: a[G][:2]), ValueError,
     r"grads has 2 arrays but params has 3"),
    ("buffers-longer", set_arg(B, lambda a: a[B] + [np.ones(N)]), ValueError,
     r"momentum_buffers has 4 arrays but params has 3"),
    # ValueError: layout
    ("last-param-strided", set_last(P, lambda a: non_contiguous(a[P][-1])), ValueError,
     r"params\[2\] is not C-contiguous.*np.ascontiguousarray"),
    ("last-grad-strided", set_last(G, lambda a: non_contiguous(a[G][-1])), ValueError,
     r"grads\[2\] is not C-contiguous"),
    ("last-buffer-fortran",
     lambda a, k: a[P].__setitem__(-1, a[P][-1].reshape(2, -1)) or
     a[G].__setitem__(-1, a[G][-1].reshape(2, -1)) or
     a[B].__setitem__(-1, fortran_2d(a[B][-1])), ValueError,
     r"momentum_buffers\[2\] is not C-contiguous"),
    ("last-param-read-only", set_last(P, lambda a: read_only(a[P][-1])), ValueError,
     r"params\[2\] is read-only"),
    ("last-buffer-read-only", set_last(B, lambda a: read_only(a[B][-1])), ValueError,
     r"momentum_buffers\[2\] is read-only"),
    ("last-param-misaligned", set_last(P, lambda a: misaligned(N, np.float64)), ValueError,
     r"params\[2\] is not aligned"),
    ("last-buffer-misaligned", set_last(B, lambda a: misaligned(N, np.float64)), ValueError,
     r"momentum_buffers\[2\] is not aligned"),
    # ValueError: shared memory
    ("last-grad-is-its-param", set_last(G, lambda a: a[P][-1]), ValueError,
     r"shares memory"),
    ("last-param-is-first-param", set_last(P, lambda a: a[P][0]), ValueError,
     r"params\[(0|2)\] shares memory with params\[(0|2)\]"),
    ("last-buffer-is-first-param", set_last(B, lambda a: a[P][0]), ValueError,
     r"shares memory"),
    ("last-buffer-is-first-grad", set_last(B, lambda a: a[G][0]), ValueError,
     r"shares memory"),
]


def overlapping_views(args, kwargs):
    base = np.random.default_rng(3).standard_normal(N + N // 2)
    args[P][-1] = base[:N]
    args[B][-1] = base[N // 2:]


def overlapping_grad_view(args, kwargs):
    base = np.random.default_rng(4).standard_normal(2 * N)
    args[P][0] = base[:N]
    args[G][-1] = base[N - 1:2 * N - 1]


BAD_CASES += [
    ("overlapping-param-buffer-views", overlapping_views, ValueError,
     r"(params\[2\]|momentum_buffers\[2\]) shares memory"),
    ("grad-view-overlapping-first-param", overlapping_grad_view, ValueError,
     r"shares memory"),
    # ValueError: hyperparameters
    ("lr-negative", set_kw(lr=-0.1), ValueError, r"sgd_step: lr must be >= 0, got -0.1"),
    ("lr-nan", set_kw(lr=float("nan")), ValueError, r"lr must be finite"),
    ("lr-inf", set_kw(lr=float("inf")), ValueError, r"lr must be finite"),
    ("momentum-negative", set_kw(momentum=-0.5), ValueError, r"momentum must be >= 0"),
    ("momentum-nan", set_kw(momentum=float("nan")), ValueError, r"momentum must be finite"),
    ("dampening-above-1", set_kw(dampening=1.5), ValueError,
     r"dampening must be in \[0, 1\], got 1.5"),
    ("dampening-negative", set_kw(dampening=-0.1), ValueError, r"dampening must be in"),
    ("weight-decay-negative", set_kw(weight_decay=-1.0), ValueError,
     r"weight_decay must be >= 0"),
    ("l1-negative", set_kw(l1=-1e-3), ValueError, r"l1 must be >= 0"),
    ("l1-inf", set_kw(l1=float("inf")), ValueError, r"l1 must be finite"),
    ("grad-scale-zero", set_kw(grad_scale=0.0), ValueError, r"grad_scale must be > 0"),
    ("grad-scale-negative", set_kw(grad_scale=-2.0), ValueError, r"grad_scale must be > 0"),
    ("grad-scale-nan", set_kw(grad_scale=float("nan")), ValueError,
     r"grad_scale must be finite"),
    ("nesterov-without-momentum", set_kw(nesterov=True, momentum=0.0), ValueError,
     r"nesterov=True requires momentum > 0 and dampening == 0"),
    ("nesterov-with-dampening", set_kw(nesterov=True, dampening=0.1), ValueError,
     r"nesterov=True requires momentum > 0 and dampening == 0"),
    ("momentum-without-buffers", set_arg(B, lambda a: None), ValueError,
     r"momentum_buffers is required when momentum != 0"),
]


@pytest.mark.parametrize("dtype", [np.float64])
@pytest.mark.parametrize("edit,exc,match", [c[1:] for c in BAD_CASES],
                         ids=[c[0] for c in BAD_CASES])
def test_bad_input_is_rejected_and_changes_nothing(edit, exc, match, dtype):
    args, kwargs = valid_call(dtype)
    edit(args, kwargs)
    assert_rejected(fo.sgd_step, args, kwargs, exc, match)


@pytest.mark.parametrize("edit,exc,match", [
    (set_kw(lr=-1.0), ValueError, r"lr must be >= 0"),
    (set_arg(G, lambda a: np.ones(N + 1, np.float32)), ValueError, r"grads has shape"),
    (set_arg(G, lambda a: np.ones(N, np.float64)), TypeError,
     r"grads has dtype float64 but params has dtype float32"),
    (set_arg(G, lambda a: a[P]), ValueError, r"shares memory"),
    (set_arg(P, lambda a: read_only(a[P])), ValueError, r"params is read-only"),
    (set_arg(B, lambda a: [a[B]]), TypeError, r"momentum_buffers must be a single array"),
], ids=["lr", "shape", "dtype", "alias", "read-only", "list-vs-single"])
def test_bad_input_single_arrays(edit, exc, match):
    rng = np.random.default_rng(11)
    args = [rng.standard_normal(N).astype(np.float32) for _ in range(3)]
    kwargs = dict(lr=0.1, momentum=0.9)
    edit(args, kwargs)
    assert_rejected(fo.sgd_step, args, kwargs, exc, match)


def test_lr_is_keyword_only_and_required():
    p, g = np.ones(3), np.ones(3)
    with pytest.raises(TypeError):
        fo.sgd_step(p, g, None, 0.1)
    with pytest.raises(TypeError):
        fo.sgd_step(p, g)
    assert np.array_equal(p, np.ones(3))

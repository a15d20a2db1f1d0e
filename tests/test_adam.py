"""fo.adam_step / fo.adamw_step: parity with the float64 reference on every ISA, every flag
combination, multi-tensor calls, thread independence, torch.optim.Adam/AdamW cross-check,
and atomic rejection of bad input."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

import fusedops as fo
from checks import (DTYPES, assert_bitwise_equal, assert_close, assert_rejected, misaligned,
                    force_isa, randn, read_only)
from fusedops import _core
from reference import adam_reference

ISAS = fo.available_isas()
SIZES = [0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 1000, 100003]


def adam_configs():
    out = []
    for amsgrad, maximize, decoupled, weight_decay, l1, grad_scale in itertools.product(
            [False, True], [False, True], [False, True], [0.0, 0.05], [0.0, 1e-3], [1.0, 3.0]):
        out.append(dict(lr=1e-2, amsgrad=amsgrad, maximize=maximize,
                        decoupled_weight_decay=decoupled, weight_decay=weight_decay, l1=l1,
                        grad_scale=grad_scale))
    return out


def config_id(cfg):
    short = {"amsgrad": "ams", "maximize": "max", "decoupled_weight_decay": "decoupled",
             "weight_decay": "wd", "l1": "l1", "grad_scale": "scale"}
    return "-".join(f"{short[k]}={v}" for k, v in cfg.items() if k in short)


CONFIGS = adam_configs()
RICH = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, amsgrad=True, maximize=True,
            weight_decay=0.05, l1=1e-3, grad_scale=3.0)
RICH_DECOUPLED = dict(RICH, decoupled_weight_decay=True)
PLAIN = dict(lr=1e-2)


class AdamState:
    """Params and optimizer state of one tensor, plus a grad per step."""

    def __init__(self, rng, shape, dtype, steps):
        self.p = randn(rng, shape, dtype)
        self.m = np.zeros(shape, dtype)
        self.v = np.zeros(shape, dtype)
        self.vmax = np.zeros(shape, dtype)
        self.grads = [randn(rng, shape, dtype) for _ in range(steps)]

    def arrays(self):
        return [self.p, self.m, self.v, self.vmax]

    def copy(self):
        other = object.__new__(AdamState)
        other.p, other.m, other.v, other.vmax = (a.copy() for a in self.arrays())
        other.grads = self.grads
        return other


def check_step(s, g, step, cfg, dtype, fn=fo.adam_step):
    """One kernel step compared with the reference started from the same state."""
    amsgrad = cfg.get("amsgrad", False)
    ref_cfg = dict(cfg)
    if fn is fo.adamw_step:
        ref_cfg["decoupled_weight_decay"] = True
        ref_cfg.setdefault("weight_decay", 1e-2)
    ep, em, ev, evmax = adam_reference(s.p, g, s.m, s.v, s.vmax, step=step, **ref_cfg)
    fn(s.p, g, s.m, s.v, step=step, max_exp_avg_sqs=s.vmax if amsgrad else None, **cfg)
    assert_close(s.p, ep, dtype, err_msg=f"param after step {step}")
    assert_close(s.m, em, dtype, err_msg=f"exp_avg after step {step}")
    assert_close(s.v, ev, dtype, err_msg=f"exp_avg_sq after step {step}")
    if amsgrad:
        assert_close(s.vmax, evmax, dtype, err_msg=f"max_exp_avg_sq after step {step}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("cfg", [PLAIN, RICH, RICH_DECOUPLED],
                         ids=["plain", "rich", "rich-decoupled"])
def test_parity_sizes(isa, dtype, size, cfg, rng):
    s = AdamState(rng, size, dtype, 3)
    for step, g in enumerate(s.grads, start=1):
        check_step(s, g, step, cfg, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=[config_id(c) for c in CONFIGS])
def test_parity_flag_combinations_20_steps(isa, dtype, cfg, rng):
    s = AdamState(rng, 301, dtype, 20)
    for step, g in enumerate(s.grads, start=1):
        check_step(s, g, step, cfg, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [16383, 16384, 16385, 40000])
def test_parity_around_chunk_boundaries(isa, dtype, size, rng):
    s = AdamState(rng, size, dtype, 2)
    for step, g in enumerate(s.grads, start=1):
        check_step(s, g, step, RICH, dtype)


@pytest.mark.parametrize("shape", [(), (1,), (3, 5), (2, 3, 7), (4, 1, 3, 2), (0, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_shapes(isa, shape, dtype, rng):
    s = AdamState(rng, shape, dtype, 3)
    for step, g in enumerate(s.grads, start=1):
        check_step(s, g, step, RICH, dtype)
    assert all(a.shape == shape for a in s.arrays())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("start", [2, 57, 10**6])
def test_later_steps_with_nonzero_state(isa, dtype, start, rng):
    """Bias correction for step numbers far from 1, on a state that is not zero."""
    s = AdamState(rng, 513, dtype, 3)
    s.m[...] = randn(rng, 513, dtype, 0.1)
    s.v[...] = np.abs(randn(rng, 513, dtype, 0.1))
    s.vmax[...] = s.v * np.array(1.5, dtype)
    for k, g in enumerate(s.grads):
        check_step(s, g, start + k, RICH, dtype)


@pytest.mark.parametrize("betas", [(0.0, 0.0), (0.0, 0.999), (0.99, 0.0), (0.5, 0.9999)])
def test_beta_edges(isa, betas, rng):
    s = AdamState(rng, 100, np.float64, 3)
    for step, g in enumerate(s.grads, start=1):
        check_step(s, g, step, dict(lr=1e-2, betas=betas), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_defaults(isa, dtype, rng):
    s = AdamState(rng, 257, dtype, 3)
    for step, g in enumerate(s.grads, start=1):
        ep, em, ev, _ = adam_reference(s.p, g, s.m, s.v, None, step=step, lr=1e-3,
                                       betas=(0.9, 0.999), eps=1e-8)
        fo.adam_step(s.p, g, s.m, s.v, step=step)
        assert_close(s.p, ep, dtype)
        assert_close(s.m, em, dtype)
        assert_close(s.v, ev, dtype)


def test_float64_trajectory_matches_reference(rng):
    """Twenty steps run independently by the kernel and by the reference stay together."""
    s = AdamState(rng, 1025, np.float64, 20)
    ref = s.copy()
    cfg = dict(RICH)
    del cfg["l1"]  # sign(p) may flip differently near zero on independent trajectories
    for step, g in enumerate(s.grads, start=1):
        fo.adam_step(s.p, g, s.m, s.v, step=step, max_exp_avg_sqs=s.vmax, **cfg)
        ref.p, ref.m, ref.v, ref.vmax = adam_reference(ref.p, g, ref.m, ref.v, ref.vmax,
                                                       step=step, **cfg)
    for a, b in zip(s.arrays(), ref.arrays()):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_max_exp_avg_sqs_untouched_without_amsgrad(isa, rng):
    s = AdamState(rng, 64, np.float64, 1)
    s.vmax[...] = 7.0
    fo.adam_step(s.p, s.grads[0], s.m, s.v, step=1, max_exp_avg_sqs=s.vmax)
    assert np.all(s.vmax == 7.0)


def test_lr_zero_keeps_params_but_updates_moments(isa, rng):
    s = AdamState(rng, 64, np.float64, 1)
    before = s.p.copy()
    fo.adam_step(s.p, s.grads[0], s.m, s.v, step=1, lr=0.0, weight_decay=0.1,
                 decoupled_weight_decay=True)
    assert_bitwise_equal(s.p, before)
    assert_close(s.m, 0.1 * s.grads[0], np.float64)


# --- AdamW ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("weight_decay", [None, 0.0, 0.2])
def test_adamw_equals_adam_with_decoupled_decay(isa, dtype, amsgrad, weight_decay, rng):
    """adamw_step is adam_step(decoupled_weight_decay=True), weight_decay defaulting to 1e-2."""
    a = AdamState(rng, 1037, dtype, 4)
    b = a.copy()
    wd_kw = {} if weight_decay is None else dict(weight_decay=weight_decay)
    for step, g in enumerate(a.grads, start=1):
        fo.adamw_step(a.p, g, a.m, a.v, step=step, lr=0.05, amsgrad=amsgrad,
                      max_exp_avg_sqs=a.vmax if amsgrad else None, **wd_kw)
        fo.adam_step(b.p, g, b.m, b.v, step=step, lr=0.05, amsgrad=amsgrad,
                     max_exp_avg_sqs=b.vmax if amsgrad else None, decoupled_weight_decay=True,
                     weight_decay=1e-2 if weight_decay is None else weight_decay)
    for x, y in zip(a.arrays(), b.arrays()):
        assert_bitwise_equal(x, y)


def test_adamw_default_weight_decay_is_applied(isa, rng):
    s = AdamState(rng, 100, np.float64, 2)
    for step, g in enumerate(s.grads, start=1):
        check_step(s, g, step, dict(lr=0.1), np.float64, fn=fo.adamw_step)
    plain = AdamState(np.random.default_rng(1234), 100, np.float64, 2)
    for step, g in enumerate(s.grads, start=1):
        fo.adam_step(plain.p, g, plain.m, plain.v, step=step, lr=0.1)
    assert not np.allclose(plain.p, s.p, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_parity(isa, dtype, rng):
    s = AdamState(rng, 1037, dtype, 5)
    cfg = dict(lr=1e-2, weight_decay=0.1, amsgrad=True, maximize=True, l1=1e-3)
    for step, g in enumerate(s.grads, start=1):
        check_step(s, g, step, cfg, dtype, fn=fo.adamw_step)


# --- multi-tensor calls ---------------------------------------------------------------

LIST_SHAPES = [(), (0,), (1,), (7,), (3, 0, 2), (2, 3, 4), (17,), (1000,), (100003,), (33,)]


def list_step(states, k, step, cfg, fn=fo.adam_step, container=list):
    amsgrad = cfg.get("amsgrad", False)
    fn(container(s.p for s in states), container(s.grads[k] for s in states),
       container(s.m for s in states), container(s.v for s in states), step=step,
       max_exp_avg_sqs=container(s.vmax for s in states) if amsgrad else None, **cfg)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", [PLAIN, RICH, RICH_DECOUPLED],
                         ids=["plain", "rich", "rich-decoupled"])
@pytest.mark.parametrize("container", [list, tuple])
def test_list_equals_per_tensor_calls(isa, dtype, cfg, container, rng):
    states = [AdamState(rng, shape, dtype, 3) for shape in LIST_SHAPES]
    singles = [s.copy() for s in states]
    for k in range(3):
        list_step(states, k, k + 1, cfg, container=container)
        for s in singles:
            list_step([s], k, k + 1, cfg)
    for s, t in zip(states, singles):
        for a, b in zip(s.arrays(), t.arrays()):
            assert_bitwise_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_list_parity_with_reference(isa, dtype, rng):
    states = [AdamState(rng, shape, dtype, 3) for shape in LIST_SHAPES]
    for k in range(3):
        expected = [adam_reference(s.p, s.grads[k], s.m, s.v, s.vmax, step=k + 1, **RICH)
                    for s in states]
        list_step(states, k, k + 1, RICH)
        for s, e in zip(states, expected):
            for a, b in zip(s.arrays(), e):
                assert_close(a, b, dtype)


def test_single_array_single_state():
    p, g = np.ones(5), np.full(5, 2.0)
    m, v = np.zeros(5), np.zeros(5)
    fo.adam_step(p, g, m, v, step=1, lr=0.1)
    # First step: m/bc1 = g and sqrt(v/bc2) = |g|, so p moves by lr * g / (|g| + eps).
    np.testing.assert_allclose(p, 1.0 - 0.1 * 2.0 / (2.0 + 1e-8), rtol=1e-14)


def test_step_accepts_numpy_integers(rng):
    a = AdamState(rng, 50, np.float64, 1)
    b = a.copy()
    fo.adam_step(a.p, a.grads[0], a.m, a.v, step=np.int64(7))
    fo.adam_step(b.p, b.grads[0], b.m, b.v, step=7)
    for x, y in zip(a.arrays(), b.arrays()):
        assert_bitwise_equal(x, y)


def test_empty_list_is_a_no_op():
    fo.adam_step([], [], [], [], step=1)
    fo.adamw_step([], [], [], [], step=1, amsgrad=True, max_exp_avg_sqs=[])


# --- threads --------------------------------------------------------------------------

@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", [RICH, RICH_DECOUPLED], ids=["rich", "rich-decoupled"])
def test_bitwise_identical_for_1_2_and_3_threads(isa, dtype, cfg, rng):
    template = [AdamState(rng, n, dtype, 2) for n in [100003, 100003, 100003, 1_000_003, 17]]
    results = []
    for threads in (1, 2, 3):
        fo.set_num_threads(threads)
        states = [s.copy() for s in template]
        for k in range(2):
            list_step(states, k, k + 1, cfg)
        results.append([a for s in states for a in s.arrays()])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert_bitwise_equal(a, b)
    assert not np.array_equal(results[0][12], template[3].p)


# --- hypothesis -----------------------------------------------------------------------

@st.composite
def adam_cases(draw):
    shapes = draw(st.lists(array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12),
                           min_size=1, max_size=4))
    cfg = dict(
        lr=draw(st.sampled_from([0.0, 1e-3]) | st.floats(0.0, 0.1)),
        betas=(draw(st.sampled_from([0.0, 0.9]) | st.floats(0.0, 0.99)),
               draw(st.sampled_from([0.0, 0.999]) | st.floats(0.0, 0.9999))),
        eps=draw(st.sampled_from([1e-8]) | st.floats(1e-12, 1e-3)),
        weight_decay=draw(st.sampled_from([0.0]) | st.floats(0.0, 0.5)),
        l1=draw(st.sampled_from([0.0]) | st.floats(0.0, 0.01)),
        decoupled_weight_decay=draw(st.booleans()),
        amsgrad=draw(st.booleans()),
        maximize=draw(st.booleans()),
        grad_scale=draw(st.sampled_from([1.0, 65536.0]) | st.floats(0.25, 64.0)),
    )
    return dict(shapes=shapes, cfg=cfg, dtype=draw(st.sampled_from(DTYPES)),
                isa=draw(st.sampled_from(ISAS)), steps=draw(st.integers(1, 4)),
                first_step=draw(st.integers(1, 1000)), seed=draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=40, deadline=None)
@given(case=adam_cases())
def test_hypothesis_parity(case):
    rng = np.random.default_rng(case["seed"])
    dtype, cfg = case["dtype"], case["cfg"]
    states = [AdamState(rng, s, dtype, case["steps"]) for s in case["shapes"]]
    restore_isa = force_isa(case["isa"])
    try:
        for k in range(case["steps"]):
            step = case["first_step"] + k
            expected = [adam_reference(s.p, s.grads[k], s.m, s.v, s.vmax, step=step, **cfg)
                        for s in states]
            old_p = [s.p.copy() for s in states]
            list_step(states, k, step, cfg)
            for s, e, p0 in zip(states, expected, old_p):
                for name, a, b in zip(["p", "m", "v", "vmax"], s.arrays(), e):
                    if b is None:
                        continue
                    # Rounding error scales with the largest term the value comes from.
                    scale = 1.0 + float(np.max(np.abs(b), initial=0.0))
                    if name == "p":
                        scale += float(np.max(np.abs(b - p0), initial=0.0))
                    assert_close(a, b, dtype, factor=scale, err_msg=name)
    finally:
        restore_isa()


# --- torch cross-check ----------------------------------------------------------------

TORCH_CONFIGS = [
    ("Adam", dict(lr=1e-2)),
    ("Adam", dict(lr=1e-2, amsgrad=True)),
    ("Adam", dict(lr=1e-2, maximize=True)),
    ("Adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05)),
    ("Adam", dict(lr=1e-2, amsgrad=True, maximize=True, weight_decay=0.05)),
    ("AdamW", dict(lr=1e-2)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=1e-2, weight_decay=0.1, amsgrad=True, maximize=True,
                   betas=(0.5, 0.9))),
]


def torch_optimizer(torch, name, tparams, cfg, variant):
    cls = getattr(torch.optim, name)
    if variant == "fused":
        try:
            return cls(tparams, fused=True, **cfg)
        except (RuntimeError, ValueError) as e:  # pragma: no cover - depends on the build
            pytest.skip(f"torch fused {name} unavailable on CPU: {e}")
    return cls(tparams, foreach=False, **cfg)


@pytest.mark.parametrize("variant", ["foreach=False", "fused"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,cfg", TORCH_CONFIGS,
                         ids=[f"{n}-{config_id(c) or 'plain'}" for n, c in TORCH_CONFIGS])
def test_matches_torch(name, cfg, dtype, variant, rng):
    torch = pytest.importorskip("torch")
    shapes = [(1037,), (3, 5), ()]
    states = [AdamState(rng, s, dtype, 8) for s in shapes]
    tparams = [torch.tensor(s.p.copy(), requires_grad=True) for s in states]
    opt = torch_optimizer(torch, name, tparams, cfg, variant)
    fn = fo.adamw_step if name == "AdamW" else fo.adam_step
    for k in range(8):
        for t, s in zip(tparams, states):
            t.grad = torch.from_numpy(s.grads[k].copy())
        opt.step()
        list_step(states, k, k + 1, cfg, fn=fn)
    factor = 10.0  # eight steps; torch and the kernels round differently
    for s, t in zip(states, tparams):
        st_ = opt.state[t]
        assert_close(s.p, t.detach().numpy().astype(np.float64), dtype, factor=factor)
        assert_close(s.m, st_["exp_avg"].numpy().astype(np.float64), dtype, factor=factor)
        assert_close(s.v, st_["exp_avg_sq"].numpy().astype(np.float64), dtype, factor=factor)
        if cfg.get("amsgrad"):
            assert_close(s.vmax, st_["max_exp_avg_sq"].numpy().astype(np.float64), dtype,
                         factor=factor)


# --- bad input ------------------------------------------------------------------------

N = 10
COUNT = 3


def valid_call(dtype=np.float64):
    """Keyword arguments of a three-tensor AMSGrad call that writes every param and state."""
    rng = np.random.default_rng(7)

    def arrays(positive=False):
        out = [rng.standard_normal(N).astype(dtype) for _ in range(COUNT)]
        return [np.abs(a) for a in out] if positive else out

    return dict(params=arrays(), grads=arrays(), exp_avgs=arrays(),
                exp_avg_sqs=arrays(positive=True), max_exp_avg_sqs=arrays(positive=True),
                step=3, lr=1e-2, amsgrad=True, weight_decay=0.01)


@pytest.mark.parametrize("fn", [fo.adam_step, fo.adamw_step], ids=["adam", "adamw"])
def test_valid_call_writes_every_written_array(fn):
    call = valid_call()
    call["max_exp_avg_sqs"] = [np.zeros(N) for _ in range(COUNT)]
    written = ["params", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"]
    before = {k: [a.copy() for a in call[k]] for k in written}
    fn(**call)
    for k in written:
        for a, b in zip(call[k], before[k]):
            assert not np.any(a == b), k


def last(name, make):
    def edit(call):
        call[name][-1] = make(call)
    return edit


def put(**updates):
    def edit(call):
        for key, make in updates.items():
            call[key] = make(call) if callable(make) else make
    return edit


def non_contiguous(a):
    wide = np.zeros(a.size * 2, a.dtype)
    view = wide[::2]
    view[...] = a
    return view


def overlapping_state_views(call):
    base = np.abs(np.random.default_rng(3).standard_normal(N + N // 2))
    call["exp_avgs"][-1] = base[:N]
    call["exp_avg_sqs"][-1] = base[N // 2:]


def grad_view_over_state(call):
    base = np.abs(np.random.default_rng(4).standard_normal(2 * N))
    call["max_exp_avg_sqs"][0] = base[:N]
    call["grads"][-1] = base[N - 1:2 * N - 1]


BAD_CASES = [
    # hyperparameters
    ("step-zero", put(step=0), ValueError, r"step must be an int >= 1, got 0"),
    ("step-negative", put(step=-5), ValueError, r"step must be an int >= 1, got -5"),
    ("step-float", put(step=1.5), TypeError, r"adam(w)?_step: step must be an int, got float"),
    ("beta1-one", put(betas=(1.0, 0.999)), ValueError, r"betas\[0\] must be in \[0, 1\), got 1"),
    ("beta2-one", put(betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be in \[0, 1\), got 1"),
    ("beta1-negative", put(betas=(-0.1, 0.999)), ValueError, r"betas\[0\] must be in \[0, 1\)"),
    ("beta2-negative", put(betas=(0.9, -1e-3)), ValueError, r"betas\[1\] must be in \[0, 1\)"),
    ("beta1-nan", put(betas=(float("nan"), 0.999)), ValueError, r"betas\[0\] must be finite"),
    ("beta2-inf", put(betas=(0.9, float("inf"))), ValueError, r"betas\[1\] must be finite"),
    ("eps-negative", put(eps=-1e-8), ValueError, r"eps must be >= 0"),
    ("eps-nan", put(eps=float("nan")), ValueError, r"eps must be finite"),
    ("lr-negative", put(lr=-1e-3), ValueError, r"lr must be >= 0"),
    ("lr-inf", put(lr=float("inf")), ValueError, r"lr must be finite"),
    ("weight-decay-negative", put(weight_decay=-0.1), ValueError, r"weight_decay must be >= 0"),
    ("l1-negative", put(l1=-0.1), ValueError, r"l1 must be >= 0"),
    ("grad-scale-zero", put(grad_scale=0.0), ValueError, r"grad_scale must be > 0"),
    ("grad-scale-inf", put(grad_scale=float("inf")), ValueError, r"grad_scale must be finite"),
    # missing / mistyped arguments
    ("amsgrad-without-max", put(max_exp_avg_sqs=None), ValueError,
     r"max_exp_avg_sqs is required when amsgrad=True"),
    ("exp-avgs-none", put(exp_avgs=None), TypeError, r"exp_avgs must be a numpy.ndarray"),
    ("exp-avg-sqs-none", put(exp_avg_sqs=None), TypeError,
     r"exp_avg_sqs must be a numpy.ndarray"),
    ("exp-avgs-not-array", put(exp_avgs=3), TypeError, r"exp_avgs must be a numpy.ndarray"),
    ("last-param-python-list", last("params", lambda c: [1.0] * N), TypeError,
     r"params\[2\] must be a numpy.ndarray, got list"),
    ("last-grad-int", last("grads", lambda c: np.ones(N, np.int32)), TypeError,
     r"grads\[2\] has dtype int32"),
    ("mixed-dtype-exp-avg-sq", last("exp_avg_sqs", lambda c: np.ones(N, np.float32)),
     TypeError, r"exp_avg_sqs\[2\] has dtype float32 but params\[2\] has dtype float64"),
    ("mixed-dtype-max", last("max_exp_avg_sqs", lambda c: np.ones(N, np.float32)), TypeError,
     r"max_exp_avg_sqs\[2\] has dtype float32"),
    ("mixed-dtype-grad", last("grads", lambda c: np.ones(N, np.float32)), TypeError,
     r"grads\[2\] has dtype float32"),
    ("byteswapped-grad", last("grads", lambda c: c["grads"][-1].astype(">f8")), TypeError,
     r"grads\[2\] has dtype >f8 in non-native byte order"),
    ("exp-avg-sqs-single", put(exp_avg_sqs=lambda c: c["exp_avg_sqs"][0]), TypeError,
     r"exp_avg_sqs must be a list/tuple of arrays like params"),
    ("max-list-for-single",
     put(params=lambda c: c["params"][0], grads=lambda c: c["grads"][0],
         exp_avgs=lambda c: c["exp_avgs"][0], exp_avg_sqs=lambda c: c["exp_avg_sqs"][0]),
     TypeError, r"max_exp_avg_sqs must be a single array like params"),
    # shapes and lengths
    ("last-exp-avg-shape", last("exp_avgs", lambda c: np.zeros(N + 1)), ValueError,
     r"exp_avgs\[2\] has shape \(11,\) but params\[2\] has shape \(10,\)"),
    ("last-max-shape", last("max_exp_avg_sqs", lambda c: np.zeros((2, N // 2))), ValueError,
     r"max_exp_avg_sqs\[2\] has shape \(2, 5\)"),
    ("exp-avgs-shorter", put(exp_avgs=lambda c: c["exp_avgs"][:2]), ValueError,
     r"exp_avgs has 2 arrays but params has 3"),
    ("max-longer", put(max_exp_avg_sqs=lambda c: c["max_exp_avg_sqs"] + [np.zeros(N)]),
     ValueError, r"max_exp_avg_sqs has 4 arrays but params has 3"),
    # layout
    ("last-param-strided", last("params", lambda c: non_contiguous(c["params"][-1])),
     ValueError, r"params\[2\] is not C-contiguous"),
    ("last-max-strided",
     last("max_exp_avg_sqs", lambda c: non_contiguous(c["max_exp_avg_sqs"][-1])),
     ValueError, r"max_exp_avg_sqs\[2\] is not C-contiguous"),
    ("last-exp-avg-sq-read-only", last("exp_avg_sqs", lambda c: read_only(c["exp_avg_sqs"][-1])),
     ValueError, r"exp_avg_sqs\[2\] is read-only"),
    ("last-exp-avg-misaligned", last("exp_avgs", lambda c: misaligned(N, np.float64)),
     ValueError, r"exp_avgs\[2\] is not aligned"),
    # shared memory
    ("exp-avgs-is-exp-avg-sqs", put(exp_avg_sqs=lambda c: c["exp_avgs"]), ValueError,
     r"shares memory"),
    ("last-exp-avg-sq-is-last-exp-avg", last("exp_avg_sqs", lambda c: c["exp_avgs"][-1]),
     ValueError, r"exp_avg(s|_sqs)\[2\] shares memory with exp_avg(s|_sqs)\[2\]"),
    ("last-max-is-first-exp-avg-sq", last("max_exp_avg_sqs", lambda c: c["exp_avg_sqs"][0]),
     ValueError, r"shares memory"),
    ("last-exp-avg-is-last-param", last("exp_avgs", lambda c: c["params"][-1]), ValueError,
     r"shares memory"),
    ("last-grad-is-first-exp-avg", last("grads", lambda c: c["exp_avgs"][0]), ValueError,
     r"shares memory"),
    ("overlapping-state-views", overlapping_state_views, ValueError,
     r"exp_avg(s|_sqs)\[2\] shares memory with exp_avg(s|_sqs)\[2\]"),
    ("grad-view-over-state", grad_view_over_state, ValueError, r"shares memory"),
]


@pytest.mark.parametrize("fn", [fo.adam_step, fo.adamw_step], ids=["adam", "adamw"])
@pytest.mark.parametrize("edit,exc,match", [c[1:] for c in BAD_CASES],
                         ids=[c[0] for c in BAD_CASES])
def test_bad_input_is_rejected_and_changes_nothing(fn, edit, exc, match):
    call = valid_call()
    edit(call)
    assert_rejected(fn, (), call, exc, match)


@pytest.mark.parametrize("fn,name", [(fo.adam_step, "adam_step"), (fo.adamw_step, "adamw_step")])
def test_messages_name_the_function(fn, name):
    call = valid_call()
    call["betas"] = (0.9, 1.5)
    assert_rejected(fn, (), call, ValueError, rf"^{name}: betas\[1\]")


def test_bad_input_single_arrays():
    rng = np.random.default_rng(5)
    p, g, m = (rng.standard_normal(N).astype(np.float32) for _ in range(3))
    v = np.abs(rng.standard_normal(N)).astype(np.float32)
    assert_rejected(fo.adam_step, (p, g, m, v), dict(step=0), ValueError, r"step")
    assert_rejected(fo.adam_step, (p, g, m, m), dict(step=1), ValueError, r"shares memory")
    assert_rejected(fo.adam_step, (p, g, m, v.astype(np.float64)), dict(step=1), TypeError,
                    r"exp_avg_sqs has dtype float64 but params has dtype float32")
    assert_rejected(fo.adam_step, (p, g, m, v), dict(step=1, amsgrad=True), ValueError,
                    r"max_exp_avg_sqs is required")
    assert_rejected(fo.adam_step, (p, g, m, v), dict(step=1, max_exp_avg_sqs=[v.copy()]),
                    TypeError, r"max_exp_avg_sqs must be a single array like params")


@pytest.mark.parametrize("dtype", DTYPES)
def test_amsgrad_nan_in_either_side_of_the_max_propagates(isa, dtype):
    # as torch.maximum: a NaN already stored in max_exp_avg_sqs, or a new NaN in
    # exp_avg_sq, makes the running max NaN
    n = 33
    p = np.ones(n, dtype)
    g = np.full(n, 0.5, dtype)
    m = np.zeros(n, dtype)
    v = np.zeros(n, dtype)
    vmax = np.zeros(n, dtype)
    vmax[3] = np.nan
    v[20] = np.nan
    fo.adam_step(p, g, m, v, step=1, amsgrad=True, max_exp_avg_sqs=vmax)
    assert np.isnan(vmax[3]) and np.isnan(vmax[20])
    assert np.isnan(p[3]) and np.isnan(p[20])
    others = np.ones(n, bool)
    others[[3, 20]] = False
    assert np.all(np.isfinite(vmax[others])) and np.all(np.isfinite(p[others]))

"""The optimizer family (Adagrad, RMSprop, Adamax, NAdam, RAdam, Lion): functional steps
against float64 references on every ISA (vector tails, chunk boundaries, nonzero state,
every option), multi-tensor lists, the classes against the functional calls (bitwise) and
against torch.optim (groups, lr edits, 12+ steps), signatures and defaults against torch's,
clipping and skipping, state_dict round trips, thread independence, and atomic rejection
of bad input."""

import copy
import inspect
import pickle

import numpy as np
import pytest

import fusedops as fo
import reference_family as ref
from checks import DTYPES, assert_bitwise_equal, assert_close, assert_rejected, randn

# kind -> (functional, reference, [(state key, functional argument)], takes step)
KINDS = {
    "adagrad": (fo.adagrad_step, ref.adagrad, [("sum", "state_sums")], True),
    "rmsprop": (fo.rmsprop_step, ref.rmsprop, [("square_avg", "square_avgs"), ("grad_avg", "grad_avgs"),
                                               ("momentum_buffer", "momentum_buffers")], False),
    "adamax": (fo.adamax_step, ref.adamax, [("exp_avg", "exp_avgs"), ("exp_inf", "exp_infs")], True),
    "nadam": (fo.nadam_step, ref.nadam, [("exp_avg", "exp_avgs"), ("exp_avg_sq", "exp_avg_sqs")], True),
    "radam": (fo.radam_step, ref.radam, [("exp_avg", "exp_avgs"), ("exp_avg_sq", "exp_avg_sqs")], True),
    "lion": (fo.lion_step, ref.lion, [("exp_avg", "exp_avgs")], False),
}
CLASSES = {"adagrad": fo.optim.Adagrad, "rmsprop": fo.optim.RMSprop, "adamax": fo.optim.Adamax,
           "nadam": fo.optim.NAdam, "radam": fo.optim.RAdam, "lion": fo.optim.Lion}
EXTRAS = dict(l1=1e-3, maximize=True, grad_scale=3.0)
CONFIGS = {
    "adagrad": [dict(lr=0.1), dict(lr=0.1, lr_decay=0.05, weight_decay=0.1, eps=1e-6, **EXTRAS)],
    "rmsprop": [dict(lr=0.01), dict(lr=0.01, momentum=0.5), dict(lr=0.01, centered=True),
                dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.1, momentum=0.9, centered=True, **EXTRAS)],
    "adamax": [dict(lr=0.01), dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, **EXTRAS)],
    "nadam": [dict(lr=0.01), dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1,
                                  momentum_decay=0.1, **EXTRAS),
              dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, **EXTRAS)],
    "radam": [dict(lr=0.01), dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1, **EXTRAS),
              dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, **EXTRAS)],
    "lion": [dict(lr=1e-3), dict(lr=1e-3, betas=(0.8, 0.95), weight_decay=0.1, **EXTRAS)],
}
ALL_CONFIGS = [(k, i) for k in KINDS for i in range(len(CONFIGS[k]))]
SIZES = [0, 1, 7, 15, 16, 17, 31, 33, 1000, 100003]


def used_states(kind, cfg):
    keys = [key for key, _ in KINDS[kind][2]]
    if kind == "rmsprop":
        keys = ["square_avg"] + (["grad_avg"] if cfg.get("centered") else []) + (
            ["momentum_buffer"] if cfg.get("momentum", 0) > 0 else [])
    return keys


def initial_state(rng, kind, cfg, shape, dtype):
    """Nonzero state that the update's square roots accept."""
    state = {}
    for key in used_states(kind, cfg):
        if key in ("exp_avg", "grad_avg", "momentum_buffer"):
            state[key] = randn(rng, shape, dtype, 0.1)
        elif key == "exp_inf":
            state[key] = np.abs(randn(rng, shape, dtype, 0.1)) + dtype(0.01)
        else:
            state[key] = np.abs(randn(rng, shape, dtype, 0.1))
    if "grad_avg" in state:
        state["square_avg"] = state["square_avg"] + state["grad_avg"] ** 2
    return {key: np.array(value, dtype=dtype) for key, value in state.items()}


def mu_product_before(cfg, step):
    prod = 1.0
    for t in range(1, step):
        prod *= ref.nadam_mu(cfg.get("betas", (0.9, 0.999))[0], cfg.get("momentum_decay", 4e-3), t)
    return prod


def functional(kind, p, g, state, step, cfg):
    fn, _, names, takes_step = KINDS[kind]
    kwargs = dict(cfg)
    if takes_step:
        kwargs["step"] = step
    args = [state.get(key) for key, _ in names]
    while args and args[-1] is None:
        args.pop()
    return fn(p, g, *args, **kwargs)


def check_step(kind, p, g, state, step, cfg, dtype, factor=1.0):
    """One kernel step compared with the reference started from the same values."""
    extra = {"mu_product": mu_product_before(cfg, step)} if kind == "nadam" else {}
    want_p, want_state = KINDS[kind][1](p, g, state, step=step, **cfg, **extra)
    functional(kind, p, g, state, step, cfg)
    assert_close(p, want_p, dtype, factor, err_msg=f"{kind} param after step {step}")
    for key, value in want_state.items():
        assert_close(state[key], value, dtype, factor, err_msg=f"{kind} {key} after step {step}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind, index", ALL_CONFIGS)
def test_parity_sizes(isa, kind, index, size, dtype, rng):
    cfg = CONFIGS[kind][index]
    p = randn(rng, size, dtype)
    state = initial_state(rng, kind, cfg, size, dtype)
    for step in (1, 2, 3):
        check_step(kind, p, randn(rng, size, dtype), state, step, cfg, dtype, factor=4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind, index", ALL_CONFIGS)
def test_parity_twenty_steps(isa, kind, index, dtype, rng):
    """Steps 1..20 (RAdam switches to the rectified update on the way)."""
    cfg = CONFIGS[kind][index]
    p = randn(rng, (3, 101), dtype)
    state = {k: np.zeros_like(p) for k in used_states(kind, cfg)}
    if kind == "adagrad":
        state["sum"][...] = 0.1
    for step in range(1, 21):
        check_step(kind, p, randn(rng, p.shape, dtype), state, step, cfg, dtype, factor=4)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("size", [16383, 16384, 16385, 40001])
def test_parity_around_chunk_boundaries(isa, kind, size, rng):
    cfg = CONFIGS[kind][-1]
    p = randn(rng, size, np.float32)
    state = initial_state(rng, kind, cfg, size, np.float32)
    for step in (7, 8):
        check_step(kind, p, randn(rng, size, np.float32), state, step, cfg, np.float32, factor=4)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("shape", [(), (0, 3), (2, 3, 7)])
def test_shapes(kind, shape, rng):
    cfg = CONFIGS[kind][-1]
    p = randn(rng, shape, np.float64)
    state = initial_state(rng, kind, cfg, shape, np.float64)
    check_step(kind, p, randn(rng, shape, np.float64), state, 4, cfg, np.float64)
    assert p.shape == shape and all(s.shape == shape for s in state.values())


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_list_call_equals_per_tensor_calls(isa, kind, dtype, rng):
    cfg = CONFIGS[kind][-1]
    sizes = [0, 1, 17, 300, 70001, 5]
    ps = [randn(rng, n, dtype) for n in sizes]
    gs = [randn(rng, n, dtype) for n in sizes]
    states = [initial_state(rng, kind, cfg, n, dtype) for n in sizes]
    ps2, states2 = [p.copy() for p in ps], [{k: v.copy() for k, v in s.items()} for s in states]
    names = KINDS[kind][2]
    for step in (1, 2):
        lists = {key: [s[key] for s in states] for key in states[0]}
        functional(kind, ps, gs, lists, step, cfg)
        for p, g, s in zip(ps2, gs, states2):
            functional(kind, p, g, s, step, cfg)
    for a, b in zip(ps, ps2):
        assert_bitwise_equal(a, b)
    for s, s2 in zip(states, states2):
        for key, _ in names:
            if key in s:
                assert_bitwise_equal(s[key], s2[key])


def test_nadam_returns_and_takes_mu_product(rng):
    p = randn(rng, 50, np.float64)
    g = randn(rng, 50, np.float64)
    m, v = np.zeros(50), np.zeros(50)
    q, m2, v2 = p.copy(), m.copy(), v.copy()
    got = fo.nadam_step(p, g, m, v, step=3)
    assert got == pytest.approx(mu_product_before({}, 4), rel=1e-15)
    assert fo.nadam_step(q, g, m2, v2, step=3, mu_product=mu_product_before({}, 3)) == got
    assert_bitwise_equal(p, q)


def test_radam_before_and_after_rectification(rng):
    """rho_t > 5 first at step 6 for beta2=0.999; both branches against the reference."""
    cfg = dict(lr=0.01)
    for step in (5, 6):
        p = randn(rng, 64, np.float64)
        state = initial_state(rng, "radam", cfg, 64, np.float64)
        check_step("radam", p, randn(rng, 64, np.float64), state, step, cfg, np.float64)


def test_lion_moves_each_param_by_lr_exactly(rng):
    p = np.zeros(1000, np.float32)
    g = randn(rng, 1000, np.float32)
    m = np.zeros(1000, np.float32)
    fo.lion_step(p, g, m, lr=0.5)
    assert set(np.abs(p).tolist()) == {0.5}
    np.testing.assert_array_equal(np.sign(p), -np.sign(g))


def test_adamax_nan_in_the_infinity_norm_propagates():
    p = np.ones(20, np.float32)
    g = np.ones(20, np.float32)
    g[13] = np.nan
    m, u = np.zeros(20, np.float32), np.zeros(20, np.float32)
    fo.adamax_step(p, g, m, u, step=1)
    assert np.isnan(u[13]) and np.isnan(p[13])
    assert np.all(np.isfinite(np.delete(p, 13)))


# ------------------------------------------------------------------ bad input

BAD = {
    "adagrad": [(dict(lr=-1.0), "lr"), (dict(lr_decay=-0.1), "lr_decay"), (dict(eps=-1.0), "eps"),
                (dict(weight_decay=np.nan), "weight_decay"), (dict(step=0), "step")],
    "rmsprop": [(dict(alpha=1.5), "alpha"), (dict(momentum=-0.1), "momentum"), (dict(eps=np.inf), "eps"),
                (dict(l1=-1.0), "l1"), (dict(grad_scale=0.0), "grad_scale")],
    "adamax": [(dict(betas=(1.0, 0.9)), r"betas\[0\]"), (dict(betas=(0.9, -0.1)), r"betas\[1\]"),
               (dict(eps=-1e-8), "eps")],
    "nadam": [(dict(momentum_decay=-1.0), "momentum_decay"), (dict(mu_product=1.5), "mu_product"),
              (dict(betas=(0.9, 1.0)), r"betas\[1\]"), (dict(step=-3), "step")],
    "radam": [(dict(betas=(-0.5, 0.9)), r"betas\[0\]"), (dict(lr=np.nan), "lr"),
              (dict(weight_decay=-1.0), "weight_decay")],
    "lion": [(dict(betas=(0.9, 1.0)), r"betas\[1\]"), (dict(lr=-1e-4), "lr"), (dict(grad_scale=-1.0), "grad_scale")],
}


@pytest.mark.parametrize("kind, bad, match", [(k, b, m) for k in BAD for b, m in BAD[k]])
def test_bad_hyperparameters_change_nothing(kind, bad, match, rng):
    fn, _, names, takes_step = KINDS[kind]
    cfg = dict(CONFIGS[kind][-1])
    cfg.update(bad)
    if takes_step:
        cfg.setdefault("step", 2)
    p = randn(rng, 33, np.float32)
    states = [randn(rng, 33, np.float32) for _ in names]
    assert_rejected(fn, (p, randn(rng, 33, np.float32), *states), cfg, ValueError, match)


@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_arrays_change_nothing(kind, rng):
    fn, _, names, takes_step = KINDS[kind]
    kw = {"step": 1} if takes_step else {}
    p = [randn(rng, 40, np.float32), randn(rng, 9, np.float32)]
    g = [randn(rng, 40, np.float32), randn(rng, 9, np.float32)]
    states = [[randn(rng, 40, np.float32), randn(rng, 9, np.float32)] for _ in names]
    wrong_shape = [[s[0], np.zeros(8, np.float32)] for s in states[:1]] + states[1:]
    assert_rejected(fn, (p, g, *wrong_shape), kw, ValueError, r"\[1\] has shape")
    wrong_dtype = [[s[0], s[1].astype(np.float64)] for s in states[:1]] + states[1:]
    assert_rejected(fn, (p, g, *wrong_dtype), kw, TypeError, "dtype")
    aliased = [[s[0], p[1]] for s in states[:1]] + states[1:]
    assert_rejected(fn, (p, g, *aliased), kw, ValueError, "shares memory")
    assert_rejected(fn, (p, g[:1], *states), kw, ValueError, "grads has 1 arrays")


def test_rmsprop_requires_the_state_its_options_use(rng):
    p, g, sq = (randn(rng, 10, np.float64) for _ in range(3))
    assert_rejected(fo.rmsprop_step, (p, g, np.abs(sq)), dict(centered=True), ValueError, "grad_avgs")
    assert_rejected(fo.rmsprop_step, (p, g, np.abs(sq)), dict(momentum=0.9), ValueError, "momentum_buffers")


# ------------------------------------------------------------------ classes

def make_problem(dtype, sizes=(1, 7, 17, 256, 1000, 70001), seed=0, steps=20):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(steps)]
    return params, grads


CLASS_HP = {
    "adagrad": dict(lr=0.05, lr_decay=0.01, weight_decay=1e-2, initial_accumulator_value=0.1),
    "rmsprop": dict(lr=0.01, momentum=0.9, centered=True, weight_decay=1e-2),
    "adamax": dict(lr=0.01, betas=(0.8, 0.99), weight_decay=1e-2),
    "nadam": dict(lr=0.01, weight_decay=1e-2, momentum_decay=0.01),
    "radam": dict(lr=0.01, weight_decay=1e-2, decoupled_weight_decay=True),
    "lion": dict(lr=1e-3, weight_decay=0.1),
}


def functional_hp(kind, hp):
    out = {k: v for k, v in hp.items() if k != "initial_accumulator_value"}
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_class_equals_functional(isa, kind, dtype):
    params, grads = make_problem(dtype)
    mirror = [p.copy() for p in params]
    hp = CLASS_HP[kind]
    opt = CLASSES[kind]([{"params": params[:2], "lr": hp["lr"] * 2}, {"params": params[2:]}], **hp)
    init = hp.get("initial_accumulator_value", 0.0)
    states = {key: [np.full_like(p, init if key == "sum" else 0.0) for p in mirror]
              for key in used_states(kind, hp)}
    for k in range(6):
        assert opt.step(grads[k], grad_scale=2.0) is True
        for lo, hi, lr in ((0, 2, hp["lr"] * 2), (2, len(mirror), hp["lr"])):
            cfg = dict(functional_hp(kind, hp), lr=lr, grad_scale=2.0)
            functional(kind, mirror[lo:hi], grads[k][lo:hi], {key: v[lo:hi] for key, v in states.items()},
                       k + 1, cfg)
        for a, b in zip(params, mirror):
            assert_bitwise_equal(a, b)


def _torch_run(torch, name, params, grads, steps, lr_change, hp):
    tp = [torch.from_numpy(p.copy()) for p in params]
    groups = [{"params": tp[:2], "lr": hp["lr"] * 3}, {"params": tp[2:]}]
    opt = getattr(torch.optim, name)(groups, foreach=False, **hp)
    for k in range(steps):
        if k == lr_change:
            opt.param_groups[1]["lr"] = hp["lr"] / 4
        for p, g in zip(tp, grads[k]):
            p.grad = torch.from_numpy(g.copy())
        opt.step()
    return [p.numpy() for p in tp]


TORCH_CASES = [
    ("Adagrad", dict(lr=0.05)),
    ("Adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=1e-2, initial_accumulator_value=0.1,
                     eps=1e-8, maximize=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, momentum=0.9, centered=True, weight_decay=1e-2, maximize=True)),
    ("Adamax", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=1e-2, maximize=True)),
    ("NAdam", dict(lr=0.01, weight_decay=1e-2, momentum_decay=0.01)),
    ("NAdam", dict(lr=0.01, weight_decay=1e-2, decoupled_weight_decay=True, maximize=True)),
    ("RAdam", dict(lr=0.01, weight_decay=1e-2)),
    ("RAdam", dict(lr=0.01, betas=(0.8, 0.95), weight_decay=1e-2, decoupled_weight_decay=True, maximize=True)),
]


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
@pytest.mark.parametrize("name, hp", TORCH_CASES)
def test_twenty_steps_match_torch(dtype, rtol, name, hp):
    torch = pytest.importorskip("torch")
    params, grads = make_problem(dtype, sizes=(3, 64, 1000, 4099), seed=11)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # NAdam's mu_product is a tensor of this dtype
    try:
        expected = _torch_run(torch, name, params, grads, 20, 12, hp)
    finally:
        torch.set_default_dtype(previous)
    ours = [p.copy() for p in params]
    opt = getattr(fo.optim, name)([{"params": ours[:2], "lr": hp["lr"] * 3}, {"params": ours[2:]}], **hp)
    for k in range(20):
        if k == 12:
            opt.param_groups[1]["lr"] = hp["lr"] / 4
        opt.step(grads[k])
    for a, b in zip(ours, expected):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-2)


TORCH_ONLY = {"foreach", "fused", "capturable", "differentiable"}


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Adamax", "NAdam", "RAdam"])
def test_signature_and_defaults_match_torch(name):
    """Every torch parameter (but the implementation switches) exists with torch's default;
    torch's positional parameters before its first switch keep their positions (RMSprop's
    maximize comes after two switches: ours is keyword-only). Our extras are keyword-only."""
    torch = pytest.importorskip("torch")
    theirs = inspect.signature(getattr(torch.optim, name).__init__).parameters
    ours = inspect.signature(getattr(fo.optim, name).__init__).parameters
    positional = [n for n, p in ours.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
    missing = []
    switches_seen = False
    for i, (pname, param) in enumerate(theirs.items()):
        if pname in TORCH_ONLY:
            switches_seen = True
            continue
        if pname not in ours:
            missing.append(pname)
            continue
        if pname not in ("self", "params"):
            assert ours[pname].default == param.default, f"{name}.{pname}"
        if param.kind == param.POSITIONAL_OR_KEYWORD and not switches_seen:
            assert pname in positional and positional.index(pname) == i, f"{name}.{pname} is not at torch's position"
    # Adam/AdamW's decoupled_weight_decay switch is the one torch keyword we lack (the
    # classes are separate); everything else must be there.
    assert set(missing) <= ({"decoupled_weight_decay"} if name in ("Adam", "AdamW") else set())
    for extra in set(ours) - set(theirs):
        assert ours[extra].kind == ours[extra].KEYWORD_ONLY, f"{name}.{extra} should be keyword-only"


@pytest.mark.parametrize("kind", list(KINDS))
def test_max_grad_norm_and_skip_nonfinite(kind):
    params, grads = make_problem(np.float64, seed=2)
    clipped = [p.copy() for p in params]
    hp = CLASS_HP[kind]
    opt = CLASSES[kind](params, max_grad_norm=1.0, skip_nonfinite=True, **hp)
    ref_opt = CLASSES[kind](clipped, **hp)
    for k in range(4):
        g_copy = [x.copy() for x in grads[k]]
        fo.clip_grad_norm(g_copy, 1.0)
        assert opt.step(grads[k])
        ref_opt.step(g_copy)
        for a, b in zip(params, clipped):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)  # the clip is folded in
    before = copy.deepcopy(opt.state_dict())
    snapshot = [p.copy() for p in params]
    poisoned = [x.copy() for x in grads[5]]
    poisoned[3][100] = np.inf
    assert opt.step(poisoned) is False
    for a, b in zip(params, snapshot):
        assert_bitwise_equal(a, b)
    after = opt.state_dict()
    assert after["step"] == before["step"]
    for i, st in before["state"].items():
        for key, arr in st.items():
            assert_bitwise_equal(after["state"][i][key], arr)


@pytest.mark.parametrize("kind", list(KINDS))
def test_state_dict_round_trip_continues_bitwise(kind):
    params, grads = make_problem(np.float32, seed=6)
    hp = CLASS_HP[kind]
    opt = CLASSES[kind]([{"params": params[:2], "lr": 0.02}, {"params": params[2:]}], **hp)
    for k in range(5):
        opt.step(grads[k])
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    resumed_params = [p.copy() for p in params]
    for k in range(5, 10):
        opt.step(grads[k])
    resumed = CLASSES[kind]([{"params": resumed_params[:2], "lr": 0.7}, {"params": resumed_params[2:]}], **hp)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["lr"] == 0.02
    for k in range(5, 10):
        resumed.step(grads[k])
    for a, b in zip(resumed_params, params):
        assert_bitwise_equal(a, b)


def test_adagrad_initial_accumulator_per_group():
    a, b = np.ones(4), np.ones(5)
    opt = fo.optim.Adagrad([{"params": [a]}, {"params": [b], "initial_accumulator_value": 2.0}],
                           initial_accumulator_value=0.5)
    assert np.all(opt.state[0]["sum"] == 0.5) and np.all(opt.state[1]["sum"] == 2.0)
    opt.add_param_group({"params": [np.ones(3)], "initial_accumulator_value": 7.0})
    assert np.all(opt.state[2]["sum"] == 7.0)


def test_nadam_state_dict_rejects_bad_mu_products():
    p = np.ones(4)
    opt = fo.optim.NAdam([p])
    opt.step([np.ones(4)])
    sd = opt.state_dict()
    sd["mu_products"] = [2.0]
    other = fo.optim.NAdam([np.ones(4)])
    with pytest.raises(ValueError, match="mu_products"):
        other.load_state_dict(sd)
    assert other.state_dict()["step"] == 0


@pytest.mark.parametrize("make, exc, match", [
    (lambda: fo.optim.Adagrad([np.zeros(3)], lr_decay=-1.0), ValueError, "lr_decay"),
    (lambda: fo.optim.Adagrad([np.zeros(3)], initial_accumulator_value=-1.0), ValueError, "initial_accumulator_value"),
    (lambda: fo.optim.RMSprop([np.zeros(3)], alpha=-0.5), ValueError, "alpha"),
    (lambda: fo.optim.RMSprop([np.zeros(3)], centered="yes"), TypeError, "centered"),
    (lambda: fo.optim.Adamax([np.zeros(3)], betas=(0.9,)), TypeError, "betas"),
    (lambda: fo.optim.NAdam([np.zeros(3)], momentum_decay=-1.0), ValueError, "momentum_decay"),
    (lambda: fo.optim.RAdam([np.zeros(3)], eps=-1.0), ValueError, "eps"),
    (lambda: fo.optim.Lion([np.zeros(3)], betas=(0.9, 1.5)), ValueError, r"betas\[1\]"),
    (lambda: fo.optim.Lion([np.zeros(3)], lr="1"), TypeError, "lr"),
    (lambda: fo.optim.Lion([np.zeros(3)], max_grad_norm=-1.0), ValueError, "max_grad_norm"),
])
def test_bad_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_bad_edit_rejected_at_step_and_nothing_changed():
    params, grads = make_problem(np.float64, sizes=(8, 9))
    opt = fo.optim.RMSprop([{"params": params[:1]}, {"params": params[1:]}], momentum=0.9)
    opt.step(grads[0])
    before = [p.copy() for p in params]
    opt.param_groups[1]["alpha"] = 2.0
    with pytest.raises(ValueError, match=r"param_groups\[1\].*alpha"):
        opt.step(grads[1])
    for a, b in zip(params, before):
        assert_bitwise_equal(a, b)
    assert opt.state_dict()["step"] == 1


def test_rmsprop_centered_switched_on_later_allocates_its_state(rng):
    p = rng.standard_normal(50)
    q = p.copy()
    g = [rng.standard_normal(50) for _ in range(3)]
    opt = fo.optim.RMSprop([p], lr=0.01)
    opt.step([g[0]])
    sq = np.zeros(50)
    fo.rmsprop_step(q, g[0], sq, lr=0.01)
    opt.param_groups[0]["centered"] = True
    opt.param_groups[0]["momentum"] = 0.5
    ga, buf = np.zeros(50), np.zeros(50)
    for k in (1, 2):
        opt.step([g[k]])
        fo.rmsprop_step(q, g[k], sq, ga, buf, lr=0.01, centered=True, momentum=0.5)
    assert_bitwise_equal(p, q)


def test_thread_count_does_not_change_results(threads):
    results = []
    for n in (1, 2):
        fo.set_num_threads(n)
        params, grads = make_problem(np.float32, sizes=(300001, 256, 70001), seed=9)
        opt = fo.optim.NAdam(params, lr=0.01, max_grad_norm=1.0)
        for k in range(3):
            opt.step(grads[k])
        results.append(params)
    for a, b in zip(*results):
        assert_bitwise_equal(a, b)


@pytest.mark.parametrize("kind", list(KINDS))
def test_schedulers_drive_every_class(kind):
    """A scheduler's lr reaches the update: equal to setting the lr by hand each step."""
    params, grads = make_problem(np.float64, sizes=(40, 3), seed=4)
    mirror = [p.copy() for p in params]
    hp = CLASS_HP[kind]
    opt, hand = CLASSES[kind](params, **hp), CLASSES[kind](mirror, **hp)
    sched = fo.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp["lr"] * 5, total_steps=20,
                                             cycle_momentum=kind in ("rmsprop", "adamax", "nadam", "radam", "lion"))
    for k in range(20):
        for key in ("lr", "momentum", "betas"):
            if key in opt.param_groups[0]:
                hand.param_groups[0][key] = opt.param_groups[0][key]
        opt.step(grads[k])
        hand.step(grads[k])
        sched.step()
    for a, b in zip(params, mirror):
        assert_bitwise_equal(a, b)


@pytest.mark.parametrize("cls, hp", [(fo.optim.NAdam, dict(lr=0.01)), (fo.optim.RMSprop, dict(momentum=0.5)),
                                     (fo.optim.LAMB, dict(weight_decay=0.1)), (fo.optim.LARS, dict(lr=0.1))])
def test_bound_grads_step_without_arguments(cls, hp):
    params, grads = make_problem(np.float64, sizes=(5, 300), seed=13)
    mirror = [p.copy() for p in params]
    bound = [np.zeros_like(p) for p in params]
    opt = cls([{"params": params[:1], "grads": bound[:1]}, {"params": params[1:], "grads": bound[1:]}], **hp)
    ref_opt = cls([{"params": mirror[:1]}, {"params": mirror[1:]}], **hp)
    for k in range(4):
        for b, g in zip(bound, grads[k]):
            b[...] = g
        assert opt.step() is True
        ref_opt.step(grads[k])
    for a, b in zip(params, mirror):
        assert_bitwise_equal(a, b)


def test_readme_family_example_runs(capsys):
    import os
    import re

    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    with open(readme, encoding="utf-8") as f:
        section = f.read().split("## The optimizer family and schedules", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md (optimizer family)", "exec"), namespace)
    opt = namespace["opt"]
    assert len(opt.trust_ratios) == 2 and opt.trust_ratios[1] == 1.0
    assert namespace["sched"].get_last_lr()[0] == pytest.approx(3e-5)
    assert "[" in capsys.readouterr().out

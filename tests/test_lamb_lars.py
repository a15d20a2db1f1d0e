"""LAMB and LARS: tensor lists against float64 references (You et al. 2019 / 2017) on every
ISA with vector tails and multi-chunk tensors, the returned trust ratios, exclusion,
clamping, thread independence (the per-tensor norms are reduced in the same call), the
classes against the functional calls (bitwise), clipping/skipping, state_dict and bad
input."""

import copy
import pickle

import numpy as np
import pytest

import fusedops as fo
import reference_family as ref
from checks import DTYPES, assert_bitwise_equal, assert_close, assert_rejected, randn

SIZE_LISTS = [[0], [1], [15, 16, 17], [33, 100003, 5], [0, 7, 40000]]

LAMB_CONFIGS = [
    dict(lr=0.01),
    dict(lr=0.01, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1, l1=1e-3, maximize=True, grad_scale=3.0),
    dict(lr=0.01, weight_decay=0.1, trust_clip=0.5, bias_correction=False),
]
LARS_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.8, dampening=0.1, weight_decay=1e-2, eta=0.02, eps=1e-6, l1=1e-3,
         maximize=True, grad_scale=3.0),
    dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, trust_clip=True),
    dict(lr=0.1, momentum=0.0, weight_decay=1e-3),
]


def exclusion(sizes, on):
    return [on and i % 2 == 1 for i in range(len(sizes))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", SIZE_LISTS, ids=str)
@pytest.mark.parametrize("cfg", range(len(LAMB_CONFIGS)))
@pytest.mark.parametrize("excl", [False, True])
def test_lamb_matches_reference(isa, dtype, sizes, cfg, excl, rng):
    cfg = LAMB_CONFIGS[cfg]
    exclude = exclusion(sizes, excl)
    ps = [randn(rng, n, dtype) for n in sizes]
    ms = [randn(rng, n, dtype, 0.1) for n in sizes]
    vs = [np.abs(randn(rng, n, dtype, 0.1)) for n in sizes]
    for step in (1, 2, 3):
        gs = [randn(rng, n, dtype) for n in sizes]
        want_p, want_m, want_v, want_r = ref.lamb(ps, gs, ms, vs, step=step, exclude=exclude, **cfg)
        ratios = fo.lamb_step(ps, gs, ms, vs, step=step, exclude=exclude, **cfg)
        np.testing.assert_allclose(ratios, want_r, rtol=1e-5 if dtype == np.float32 else 1e-11)
        for a, b in zip(ps, want_p):
            assert_close(a, b, dtype, 4)
        for a, b in zip(ms + vs, want_m + want_v):
            assert_close(a, b, dtype, 4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sizes", SIZE_LISTS, ids=str)
@pytest.mark.parametrize("cfg", range(len(LARS_CONFIGS)))
@pytest.mark.parametrize("excl", [False, True])
def test_lars_matches_reference(isa, dtype, sizes, cfg, excl, rng):
    cfg = LARS_CONFIGS[cfg]
    exclude = exclusion(sizes, excl)
    ps = [randn(rng, n, dtype) for n in sizes]
    bufs = [np.zeros(n, dtype) for n in sizes]
    with_momentum = cfg.get("momentum", 0.9) != 0
    for step in (1, 2, 3):
        gs = [randn(rng, n, dtype) for n in sizes]
        want_p, want_b, want_r = ref.lars(ps, gs, bufs, first_step=step == 1, exclude=exclude, **cfg)
        ratios = fo.lars_step(ps, gs, bufs if with_momentum else None, first_step=step == 1,
                              exclude=exclude, **cfg)
        np.testing.assert_allclose(ratios, want_r, rtol=1e-5 if dtype == np.float32 else 1e-11)
        for a, b in zip(ps, want_p):
            assert_close(a, b, dtype, 4)
        if with_momentum:
            for a, b in zip(bufs, want_b):
                assert_close(a, b, dtype, 4)


def test_trust_ratio_corner_cases():
    """A zero param or zero update gives ratio 1; trust_clip clamps; exclusion gives 1."""
    p = [np.zeros(10), np.ones(10), np.full(10, 5.0), np.full(10, 1.5)]
    g = [np.ones(10), np.zeros(10), np.full(10, 1e-3), np.full(10, 1e-3)]
    m = [np.zeros(10) for _ in p]
    v = [np.zeros(10) for _ in p]
    # At step 1 with eps=0 the Adam direction is sign(g): ||u|| = sqrt(10).
    ratios = fo.lamb_step(p, g, m, v, step=1, lr=0.0, eps=0.0, trust_clip=2.0)
    assert ratios[0] == 1.0 and ratios[1] == 1.0
    assert ratios[2] == 2.0 and ratios[3] == pytest.approx(1.5, rel=1e-14)
    ratios = fo.lars_step([np.ones(4)], [np.ones(4)], exclude=[True], lr=0.1, momentum=0.0)
    assert ratios == [1.0]


@pytest.mark.parametrize("which", ["lamb", "lars"])
def test_results_do_not_depend_on_threads(which, threads, rng):
    sizes = [300001, 17, 70000, 0, 5]
    runs = []
    for n in (1, 2, 3):
        fo.set_num_threads(n)
        local = np.random.default_rng(8)
        ps = [randn(local, k, np.float32) for k in sizes]
        st = [np.zeros(k, np.float32) for k in sizes]
        st2 = [np.zeros(k, np.float32) for k in sizes]
        ratios = []
        for step in (1, 2):
            gs = [randn(local, k, np.float32) for k in sizes]
            if which == "lamb":
                ratios += fo.lamb_step(ps, gs, st, st2, step=step, weight_decay=0.01)
            else:
                ratios += fo.lars_step(ps, gs, st, lr=0.1, weight_decay=0.01, first_step=step == 1)
        runs.append((ps, ratios))
    for ps, ratios in runs[1:]:
        assert ratios == runs[0][1]
        for a, b in zip(ps, runs[0][0]):
            assert_bitwise_equal(a, b)


BAD = [
    ("lamb", dict(betas=(1.0, 0.9)), r"betas\[0\]"),
    ("lamb", dict(eps=-1.0), "eps"),
    ("lamb", dict(trust_clip=0.0), "trust_clip"),
    ("lamb", dict(step=0), "step"),
    ("lamb", dict(weight_decay=np.inf), "weight_decay"),
    ("lars", dict(eta=0.0), "eta"),
    ("lars", dict(momentum=0.0, nesterov=True), "nesterov"),
    ("lars", dict(dampening=2.0), "dampening"),
    ("lars", dict(grad_scale=0.0), "grad_scale"),
    ("lars", dict(lr=-1.0), "lr"),
]


@pytest.mark.parametrize("which, bad, match", BAD)
def test_bad_hyperparameters_change_nothing(which, bad, match, rng):
    ps = [randn(rng, 20, np.float32), randn(rng, 3, np.float32)]
    gs = [randn(rng, 20, np.float32), randn(rng, 3, np.float32)]
    st = [[randn(rng, 20, np.float32), randn(rng, 3, np.float32)] for _ in range(2)]
    if which == "lamb":
        assert_rejected(fo.lamb_step, (ps, gs, *st), dict(dict(step=1), **bad), ValueError, match)
    else:
        assert_rejected(fo.lars_step, (ps, gs, st[0]), dict(dict(lr=0.1), **bad), ValueError, match)


@pytest.mark.parametrize("exclude, exc, match", [
    ([True], ValueError, "exclude has 1 flags"),
    ([True, 1], TypeError, r"exclude\[1\] must be a bool"),
    ("yes", TypeError, "exclude must be"),
])
def test_bad_exclude_changes_nothing(exclude, exc, match, rng):
    ps = [randn(rng, 20, np.float32), randn(rng, 3, np.float32)]
    gs = [randn(rng, 20, np.float32), randn(rng, 3, np.float32)]
    bufs = [randn(rng, 20, np.float32), randn(rng, 3, np.float32)]
    assert_rejected(fo.lars_step, (ps, gs, bufs), dict(lr=0.1, exclude=exclude), exc, match)


def test_lars_requires_buffers_with_momentum(rng):
    p, g = randn(rng, 5, np.float64), randn(rng, 5, np.float64)
    assert_rejected(fo.lars_step, (p, g), dict(lr=0.1), ValueError, "momentum_buffers")


# ------------------------------------------------------------------ classes

def problem(dtype, sizes=(3, 64, 1000, 40001, 7), seed=0, steps=12):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(steps)]
    return params, grads


def small(p):
    return p.size < 10


@pytest.mark.parametrize("dtype", DTYPES)
def test_lamb_class_equals_functional(isa, dtype):
    params, grads = problem(dtype)
    mirror = [p.copy() for p in params]
    m, v = [np.zeros_like(p) for p in params], [np.zeros_like(p) for p in params]
    opt = fo.optim.LAMB([{"params": params[:2], "lr": 0.02}, {"params": params[2:], "trust_clip": 3.0}],
                        lr=0.01, weight_decay=0.01, exclude=small)
    for k in range(6):
        assert opt.step(grads[k], grad_scale=2.0)
        r1 = fo.lamb_step(mirror[:2], grads[k][:2], m[:2], v[:2], step=k + 1, lr=0.02, weight_decay=0.01,
                          exclude=[small(p) for p in mirror[:2]], grad_scale=2.0)
        r2 = fo.lamb_step(mirror[2:], grads[k][2:], m[2:], v[2:], step=k + 1, lr=0.01, weight_decay=0.01,
                          trust_clip=3.0, exclude=[small(p) for p in mirror[2:]], grad_scale=2.0)
        assert opt.trust_ratios == r1 + r2
        for a, b in zip(params, mirror):
            assert_bitwise_equal(a, b)
    assert opt.trust_ratios[0] == 1.0 and opt.trust_ratios[-1] == 1.0  # excluded


@pytest.mark.parametrize("dtype", DTYPES)
def test_lars_class_equals_functional(isa, dtype):
    params, grads = problem(dtype)
    mirror = [p.copy() for p in params]
    bufs = [np.zeros_like(p) for p in params]
    opt = fo.optim.LARS([{"params": params[:2], "exclude": True}, {"params": params[2:]}], lr=0.1,
                        weight_decay=1e-3, nesterov=True)
    for k in range(6):
        assert opt.step(grads[k])
        fo.lars_step(mirror[:2], grads[k][:2], bufs[:2], lr=0.1, weight_decay=1e-3, nesterov=True,
                     exclude=[True, True], first_step=k == 0)
        fo.lars_step(mirror[2:], grads[k][2:], bufs[2:], lr=0.1, weight_decay=1e-3, nesterov=True,
                     first_step=k == 0)
        for a, b in zip(params, mirror):
            assert_bitwise_equal(a, b)


@pytest.mark.parametrize("cls, hp", [(fo.optim.LAMB, dict(lr=0.01, weight_decay=0.01)),
                                     (fo.optim.LARS, dict(lr=0.1, weight_decay=1e-3))])
def test_max_grad_norm_and_skip_nonfinite(cls, hp):
    params, grads = problem(np.float64, seed=2)
    clipped = [p.copy() for p in params]
    opt = cls(params, max_grad_norm=1.0, skip_nonfinite=True, **hp)
    plain = cls(clipped, **hp)
    for k in range(4):
        g_copy = [x.copy() for x in grads[k]]
        fo.clip_grad_norm(g_copy, 1.0)
        assert opt.step(grads[k])
        plain.step(g_copy)
        for a, b in zip(params, clipped):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    before = copy.deepcopy(opt.state_dict())
    snapshot = [p.copy() for p in params]
    ratios = list(opt.trust_ratios)
    poisoned = [x.copy() for x in grads[5]]
    poisoned[2][10] = np.nan
    assert opt.step(poisoned) is False
    assert opt.trust_ratios == ratios
    for a, b in zip(params, snapshot):
        assert_bitwise_equal(a, b)
    after = opt.state_dict()
    assert after["step"] == before["step"]
    for i, st in before["state"].items():
        for key, arr in st.items():
            assert_bitwise_equal(after["state"][i][key], arr)


@pytest.mark.parametrize("cls, hp", [(fo.optim.LAMB, dict(lr=0.01, weight_decay=0.01)),
                                     (fo.optim.LARS, dict(lr=0.1, weight_decay=1e-3))])
def test_state_dict_round_trip_with_callable_exclude(cls, hp):
    params, grads = problem(np.float32, seed=6)
    opt = cls([{"params": params[:2], "lr": hp["lr"] * 2}, {"params": params[2:]}], exclude=small, **hp)
    for k in range(4):
        opt.step(grads[k])
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    resumed_params = [p.copy() for p in params]
    for k in range(4, 8):
        opt.step(grads[k])
    resumed = cls([{"params": resumed_params[:2]}, {"params": resumed_params[2:]}], exclude=small, **hp)
    resumed.load_state_dict(saved)
    for k in range(4, 8):
        resumed.step(grads[k])
    for a, b in zip(resumed_params, params):
        assert_bitwise_equal(a, b)


def test_exclude_edit_takes_effect_at_the_next_step():
    params, grads = problem(np.float64, sizes=(50, 60), seed=3)
    opt = fo.optim.LAMB(params, lr=0.01, weight_decay=0.1)
    opt.step(grads[0])
    assert opt.trust_ratios[0] != 1.0
    opt.param_groups[0]["exclude"] = lambda p: p.size == 50
    opt.step(grads[1])
    assert opt.trust_ratios[0] == 1.0 and opt.trust_ratios[1] != 1.0


@pytest.mark.parametrize("make, exc, match", [
    (lambda: fo.optim.LAMB([np.zeros(3)], trust_clip=-1.0), ValueError, "trust_clip"),
    (lambda: fo.optim.LAMB([np.zeros(3)], betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
    (lambda: fo.optim.LAMB([np.zeros(3)], exclude="biases"), TypeError, "exclude"),
    (lambda: fo.optim.LARS([np.zeros(3)], lr=0.1, eta=-1.0), ValueError, "eta"),
    (lambda: fo.optim.LARS([np.zeros(3)], lr=0.1, momentum=0.0, nesterov=True), ValueError, "nesterov"),
    (lambda: fo.optim.LARS([np.zeros(3)], lr=0.1, trust_clip=1), TypeError, "trust_clip"),
])
def test_bad_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("cls, positional", [
    (fo.optim.Lion, [("lr", 1e-4), ("betas", (0.9, 0.99)), ("weight_decay", 0.0)]),
    (fo.optim.LAMB, [("lr", 1e-3), ("betas", (0.9, 0.999)), ("eps", 1e-6), ("weight_decay", 0.0)]),
    (fo.optim.LARS, [("lr", None), ("momentum", 0.9), ("weight_decay", 0.0), ("eta", 1e-3)]),
])
def test_signatures_follow_the_api(cls, positional):
    """API.md's positional parameters and defaults; every other option keyword-only."""
    import inspect

    params = list(inspect.signature(cls).parameters.values())
    assert params[0].name == "params"
    got = [(p.name, None if p.default is p.empty else p.default) for p in params[1:len(positional) + 1]]
    assert got == positional
    assert all(p.kind == p.POSITIONAL_OR_KEYWORD for p in params[:len(positional) + 1])
    assert all(p.kind == p.KEYWORD_ONLY for p in params[len(positional) + 1:])

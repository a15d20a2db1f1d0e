"""Mixed precision in the optimizer classes: state_dtype, master_weights (float32 masters
and bfloat16 remainders), stochastic rounding, per-param dtype rows in one optimizer,
state_dict round trips, and the LossScaler."""

import pickle

import numpy as np
import pytest

import fusedops as fo
from checks import assert_bitwise_equal, assert_rejected

BF16 = np.dtype(fo.bfloat16)
SHAPES = [(3, 5), (17,), (), (0,), (40001,)]


def make(rng, dtype, shapes=SHAPES):
    return [np.asarray(rng.standard_normal(s)).astype(dtype) for s in shapes]


def grads_for(rng, params, dtype=None):
    return [np.asarray(rng.standard_normal(p.shape)).astype(dtype or p.dtype) for p in params]


def master_of(param_bf16, remainder):
    """The float32 whose high half is the bfloat16 param and low half the remainder."""
    bits = param_bf16.view(np.uint16).astype(np.uint32) << 16 | remainder.astype(np.uint32)
    return bits.view(np.float32)


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("state_dtype", [None, fo.bfloat16])
def test_bf16_adam_steps_equal_the_functional_calls(isa, state_dtype, stochastic, rng):
    params = make(rng, BF16)
    mirror = [p.copy() for p in params]
    sdt = state_dtype or np.float32
    m = [np.zeros(p.shape, sdt) for p in params]
    v = [np.zeros(p.shape, sdt) for p in params]
    opt = fo.optim.AdamW(params, lr=1e-2, state_dtype=state_dtype,
                         stochastic_rounding=stochastic, seed=9)
    for step in range(1, 4):
        grads = grads_for(rng, params)
        assert opt.step(grads)
        fo.adamw_step(mirror, grads, m, v, step=step, lr=1e-2, stochastic_rounding=stochastic,
                      seed=9)
        for a, b in zip(params, mirror):
            assert_bitwise_equal(a, b)
    for st, a, b in zip(opt.state, m, v):
        assert st["exp_avg"].dtype == np.dtype(sdt)
        assert_bitwise_equal(st["exp_avg"], a)
        assert_bitwise_equal(st["exp_avg_sq"], b)


@pytest.mark.parametrize("grad_dtype", [BF16, np.dtype(np.float32)], ids=str)
def test_master_weights_step_float32_masters_and_write_the_params(isa, grad_dtype, rng):
    """The masters are float32: bfloat16 or float32 grads feed them."""
    params = make(rng, BF16)
    masters = [p.astype(np.float32) for p in params]
    m = [np.zeros(p.shape, np.float32) for p in params]
    v = [np.zeros(p.shape, np.float32) for p in params]
    copies = [np.zeros(p.shape, BF16) for p in params]
    opt = fo.optim.Adam(params, lr=1e-3, master_weights=True)
    for step in range(1, 4):
        grads = grads_for(rng, params, grad_dtype)
        opt.step(grads)
        fo.adam_step(masters, grads, m, v, step=step, lr=1e-3, param_copies=copies)
        for p, master, c, st in zip(params, masters, copies, opt.state):
            assert_bitwise_equal(st["master"], master)
            assert_bitwise_equal(p, c)
            assert_bitwise_equal(p, master.astype(BF16))
    # tiny updates accumulate in the master while round-to-nearest params would stall
    assert any((st["master"] != p.astype(np.float32)).any() for st, p in zip(opt.state, params))


@pytest.mark.parametrize("state_dtype", [None, fo.bfloat16])
def test_remainder_gives_the_same_masters_as_master_weights(isa, state_dtype, rng):
    params = make(rng, BF16)
    full = [p.copy() for p in params]
    a = fo.optim.AdamW(params, lr=1e-3, master_weights="remainder", state_dtype=state_dtype)
    b = fo.optim.AdamW(full, lr=1e-3, master_weights=True, state_dtype=state_dtype)
    for _ in range(5):
        grads = grads_for(rng, params)
        a.step(grads)
        b.step(grads)
    for p, st_a, st_b in zip(params, a.state, b.state):
        assert st_a["remainder"].dtype == np.uint16
        assert_bitwise_equal(master_of(p, st_a["remainder"]), st_b["master"])
        # the param is the master truncated (not rounded)
        truncated = (st_b["master"].view(np.uint32) >> 16).astype(np.uint16).view(BF16)
        assert_bitwise_equal(p, truncated)
    assert "remainder" in a.state_dict()["state"][0]


@pytest.mark.parametrize("master_weights", [True, "remainder"])
def test_state_dict_round_trip_continues_bitwise(master_weights, rng):
    params = make(rng, BF16)
    twin = [p.copy() for p in params]
    opt = fo.optim.Adam(params, lr=1e-2, master_weights=master_weights, state_dtype=fo.bfloat16,
                        stochastic_rounding=True, seed=3)
    grads = [grads_for(rng, params) for _ in range(4)]
    for g in grads[:2]:
        opt.step(g)
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    for a, b in zip(twin, params):
        a[...] = b
    resumed = fo.optim.Adam(twin, lr=1e-2, master_weights=master_weights,
                            state_dtype=fo.bfloat16, stochastic_rounding=True, seed=3)
    resumed.load_state_dict(saved)
    for g in grads[2:]:
        opt.step(g)
        resumed.step(g)
    for a, b in zip(params, twin):
        assert_bitwise_equal(a, b)
    for sa, sb in zip(opt.state, resumed.state):
        for key in sa:
            assert_bitwise_equal(sa[key], sb[key])


def test_one_optimizer_holds_every_row(isa, rng):
    """float64, float32 (bf16 grads), bfloat16 (bf16 state) and float16 params in one
    optimizer, one native call: each equals its own functional step."""
    groups = [{"params": make(rng, np.float64, [(7,), (300,)])},
              {"params": make(rng, np.float32, [(40001,)])},
              {"params": make(rng, BF16, [(33,)])},
              {"params": make(rng, np.float16, [(513,)])}]
    flat = [p for g in groups for p in g["params"]]
    mirror = [p.copy() for p in flat]
    opt = fo.optim.SGD(groups, lr=0.1, momentum=0.9)
    bufs = [np.zeros(p.shape, np.float64 if p.dtype == np.float64 else np.float32) for p in flat]
    for step in range(3):
        grads = grads_for(rng, flat)
        grads[2] = grads[2].astype(BF16)  # float32 params with bfloat16 grads
        opt.step(grads)
        for i, (p, g, b) in enumerate(zip(mirror, grads, bufs)):
            fo.sgd_step(p, g, b, lr=0.1, momentum=0.9, first_step=step == 0)
            assert_bitwise_equal(flat[i], p)


def test_stochastic_rounding_in_sgd_draws_new_bits_each_step(rng):
    x = (1 + np.abs(rng.standard_normal(1000)) * 8).astype(BF16)  # ulp >= 2**-7 > 2 * 1e-3
    g = np.full(1000, 1e-3, BF16)
    runs = []
    for _ in range(2):
        p = x.copy()
        opt = fo.optim.SGD([p], lr=1.0, stochastic_rounding=True, seed=1)
        history = []
        for _ in range(3):
            opt.step([g])
            history.append(p.copy())
        runs.append(history)
    for a, b in zip(*runs):
        assert_bitwise_equal(a, b)  # replays
    # an update far below half an ulp moves some values (never with round-to-nearest)
    assert (runs[0][0] != x).any()
    moved = [(h != x).sum() for h in runs[0]]
    assert moved[0] != moved[1] or not np.array_equal(runs[0][0], runs[0][1])
    q = x.copy()
    fo.optim.SGD([q], lr=1.0).step([g])
    assert_bitwise_equal(q, x)


def test_max_grad_norm_and_skip_nonfinite_with_16_bit_grads(isa, rng):
    params = make(rng, np.float32)
    mirror = [p.copy() for p in params]
    opt = fo.optim.Adam(params, lr=1e-2, max_grad_norm=0.5, skip_nonfinite=True)
    grads = grads_for(rng, params, np.float16)
    assert opt.step(grads, grad_scale=4.0)
    clipped = [g.astype(np.float32) for g in grads]
    norm = fo.grad_norm(grads) / 4.0
    m = [np.zeros_like(p) for p in mirror]
    v = [np.zeros_like(p) for p in mirror]
    fo.adam_step(mirror, clipped, m, v, step=1, lr=1e-2, grad_scale=4.0 / (0.5 / (norm + 1e-6)))
    for a, b in zip(params, mirror):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    before = [p.copy() for p in params]
    grads[-1][3] = np.inf
    assert not opt.step(grads)
    for a, b in zip(params, before):
        assert_bitwise_equal(a, b)


@pytest.mark.parametrize("make_opt, exc, match", [
    (lambda p: fo.optim.Adam([p.astype(np.float16)], master_weights="remainder"), TypeError,
     "needs bfloat16 params"),
    (lambda p: fo.optim.Adam([p], state_dtype=np.float16), TypeError, "state_dtype"),
    (lambda p: fo.optim.Adam([p], master_weights="yes"), ValueError, "master_weights"),
    (lambda p: fo.optim.Adam([p], seed=-1), TypeError, "seed"),
    (lambda p: fo.optim.Adam([p], stochastic_rounding=1), TypeError, "stochastic_rounding"),
    (lambda p: fo.optim.Adam([p.astype(np.float16)], state_dtype=fo.bfloat16), TypeError,
     "has dtype float16, whose state is float32"),
    (lambda p: fo.optim.SGD([p.astype(BF16)], lr=0.1, momentum=0.9).step(
        [np.zeros(p.shape, np.float16)]), TypeError,
     r"grads\[0\] has dtype float16 but its param has dtype bfloat16"),
])
def test_bad_options_are_rejected(make_opt, exc, match):
    p = np.ones(4, np.float32)
    with pytest.raises(exc, match=match):
        make_opt(p)


def test_rejected_step_changes_nothing(rng):
    params = make(rng, BF16)
    opt = fo.optim.Adam(params, master_weights=True)
    grads = grads_for(rng, params)
    opt.step(grads)
    grads[-1] = grads[-1].astype(np.float64)
    arrays = [*params, *(a for st in opt.state for a in st.values())]
    assert_rejected(opt.step, (grads + arrays,), {}, ValueError, r"grads has 25 arrays")
    assert_rejected(opt.step, (grads,), {}, TypeError,
                    r"grads\[4\] has dtype float64 but its param has dtype float32")
    assert all(a.flags.writeable for a in arrays)


# --- LossScaler --------------------------------------------------------------------------


def test_loss_scaler_follows_gradscaler_schedule():
    s = fo.optim.LossScaler(growth_interval=3)
    assert s.scale == 2.0**16
    expected = 2.0**16
    for applied in [True, True, False, True, True, True, True, False, False]:
        s.update(applied)
    # T T F (back off, reset) T T T (grow) T F F
    expected = 2.0**16 * 0.5 * 2.0 * 0.5 * 0.5
    assert s.scale == expected
    sd = pickle.loads(pickle.dumps(s.state_dict()))
    t = fo.optim.LossScaler()
    t.load_state_dict(sd)
    for applied in [True, True, True]:
        s.update(applied)
        t.update(applied)
    assert s.scale == t.scale == expected * 2.0


def test_loss_scaler_matches_torch_gradscaler_decisions():
    torch = pytest.importorskip("torch")
    pattern = [True] * 5 + [False] + [True] * 7 + [False, False] + [True] * 4
    ours = fo.optim.LossScaler(init_scale=1024.0, growth_interval=4)
    scale = torch.tensor([1024.0])
    tracker = torch.tensor([0], dtype=torch.int32)
    for applied in pattern:
        # the update GradScaler.update() runs (defaults: growth 2.0, backoff 0.5)
        found_inf = torch.tensor([0.0 if applied else 1.0])
        torch._amp_update_scale_(scale, tracker, found_inf, 2.0, 0.5, 4)
        ours.update(applied)
        assert ours.scale == scale.item()


def test_loss_scaler_with_float16_training_skips_overflow(rng):
    params = [rng.standard_normal(100).astype(np.float16)]
    opt = fo.optim.Adam(params, lr=1e-3, master_weights=True, skip_nonfinite=True)
    scaler = fo.optim.LossScaler(init_scale=2.0**15)
    before = params[0].copy()
    g = (rng.standard_normal(100) * 4).astype(np.float32) * np.float32(scaler.scale)
    with np.errstate(over="ignore"):
        g16 = g.astype(np.float16)  # overflows to inf at this scale
    assert not np.isfinite(g16).all()
    applied = opt.step([g16], grad_scale=scaler.scale)
    scaler.update(applied)
    assert not applied and scaler.scale == 2.0**14
    assert_bitwise_equal(params[0], before)
    g16 = ((rng.standard_normal(100)).astype(np.float32) * np.float32(scaler.scale)).astype(np.float16)
    assert opt.step([g16], grad_scale=scaler.scale)
    assert not np.array_equal(params[0], before)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(init_scale=0.0), ValueError, "init_scale"),
    (dict(growth_factor=1.0), ValueError, "growth_factor"),
    (dict(backoff_factor=1.0), ValueError, "backoff_factor"),
    (dict(growth_interval=0), ValueError, "growth_interval"),
    (dict(init_scale="big"), TypeError, "init_scale"),
])
def test_loss_scaler_rejects_bad_settings(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fo.optim.LossScaler(**kwargs)
    s = fo.optim.LossScaler()
    with pytest.raises(TypeError, match="applied"):
        s.update(1)
    with pytest.raises(ValueError, match="missing"):
        s.load_state_dict({"scale": 2.0})
    assert s.scale == 2.0**16

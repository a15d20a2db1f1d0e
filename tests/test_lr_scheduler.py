"""fo.optim.lr_scheduler: the same lr (and momentum) sequences as torch.optim.lr_scheduler
over 100+ steps (and for random arguments), state_dict round trips (pickled) mid-schedule,
the lrs reaching the optimizer's updates, LinearWarmupCosine against its formula, and bad
arguments."""

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedops as fo
from fusedops.optim import lr_scheduler as fls

STEPS = 130


class Scale:
    """A callable object with state (LambdaLR saves its __dict__)."""

    def __init__(self, rate):
        self.rate = rate

    def __call__(self, epoch):
        return self.rate ** epoch


def warmup_then_linear(epoch):
    return min(1.0, (epoch + 1) / 10) * max(0.1, 1 - epoch / 200)


# name -> (optimizer kind, factory(module, optimizer)); the same arguments on both sides.
CASES = {
    "StepLR": ("sgd", lambda L, o: L.StepLR(o, step_size=7, gamma=0.5)),
    "MultiStepLR": ("sgd", lambda L, o: L.MultiStepLR(o, milestones=[10, 30, 30, 90], gamma=0.3)),
    "LinearLR": ("adam", lambda L, o: L.LinearLR(o, start_factor=0.1, end_factor=0.9, total_iters=40)),
    "LinearLR-default": ("adam", lambda L, o: L.LinearLR(o)),
    "ExponentialLR": ("sgd", lambda L, o: L.ExponentialLR(o, gamma=0.97)),
    "CosineAnnealingLR": ("adam", lambda L, o: L.CosineAnnealingLR(o, T_max=50, eta_min=1e-4)),
    "CosineAnnealingLR-restart": ("sgd", lambda L, o: L.CosineAnnealingLR(o, T_max=17)),
    "LambdaLR": ("adam", lambda L, o: L.LambdaLR(o, warmup_then_linear)),
    "LambdaLR-per-group": ("sgd", lambda L, o: L.LambdaLR(o, [Scale(0.99), warmup_then_linear])),
    "OneCycleLR-sgd": ("sgd", lambda L, o: L.OneCycleLR(o, max_lr=[0.5, 0.2], total_steps=STEPS + 1)),
    "OneCycleLR-adam-linear": ("adam", lambda L, o: L.OneCycleLR(
        o, max_lr=0.01, epochs=11, steps_per_epoch=12, anneal_strategy="linear", pct_start=0.25)),
    "OneCycleLR-three-phase": ("sgd", lambda L, o: L.OneCycleLR(
        o, max_lr=0.3, total_steps=STEPS + 5, three_phase=True, div_factor=10.0)),
    "SequentialLR": ("adam", lambda L, o: L.SequentialLR(
        o, [L.LinearLR(o, start_factor=0.01, total_iters=10), L.CosineAnnealingLR(o, T_max=100)],
        milestones=[10])),
    "SequentialLR-three": ("sgd", lambda L, o: L.SequentialLR(
        o, [L.ExponentialLR(o, gamma=0.9), L.StepLR(o, step_size=5, gamma=0.5),
            L.MultiStepLR(o, milestones=[3, 80])], milestones=[20, 60])),
}


def fo_optimizer(kind, params):
    groups = [{"params": params[:1]}, {"params": params[1:], "lr": 0.05}]
    if kind == "sgd":
        return fo.optim.SGD(groups, lr=0.1, momentum=0.9)
    return fo.optim.Adam(groups, lr=0.01)


def torch_optimizer(torch, kind):
    params = [torch.zeros(3, requires_grad=True), torch.zeros(5, requires_grad=True)]
    groups = [{"params": params[:1]}, {"params": params[1:], "lr": 0.05}]
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    return torch.optim.Adam(groups, lr=0.01)


def group_values(opt):
    """lr and momentum/beta1 of every group, as floats."""
    out = []
    for g in opt.param_groups:
        mom = g["betas"][0] if "betas" in g else g.get("momentum")
        out.append((float(g["lr"]), None if mom is None else float(mom)))
    return out


def torch_sequence(torch, kind, factory, steps):
    opt = torch_optimizer(torch, kind)
    sched = factory(torch.optim.lr_scheduler, opt)
    seq = [(list(map(float, sched.get_last_lr())), group_values(opt))]
    for _ in range(steps):
        opt.step()
        sched.step()
        seq.append((list(map(float, sched.get_last_lr())), group_values(opt)))
    return seq


def params_and_grads(kind):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(3), rng.standard_normal(5)]
    return params, [np.zeros(3), np.zeros(5)]


@pytest.mark.parametrize("name", list(CASES))
def test_sequence_matches_torch(name):
    torch = pytest.importorskip("torch")
    kind, factory = CASES[name]
    expected = torch_sequence(torch, kind, factory, STEPS)
    params, grads = params_and_grads(kind)
    opt = fo_optimizer(kind, params)
    sched = factory(fls, opt)
    got = [(sched.get_last_lr(), group_values(opt))]
    for _ in range(STEPS):
        opt.step(grads)
        sched.step()
        got.append((sched.get_last_lr(), group_values(opt)))
    assert len(got) == len(expected)
    for k, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"step {k}: {g} != {e}"


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("split", [1, 9, 57])
def test_state_dict_round_trip_continues_the_sequence(name, split):
    kind, factory = CASES[name]
    params, grads = params_and_grads(kind)
    opt = fo_optimizer(kind, params)
    sched = factory(fls, opt)
    for _ in range(split):
        opt.step(grads)
        sched.step()
    saved_opt = pickle.loads(pickle.dumps(opt.state_dict()))
    saved = pickle.loads(pickle.dumps(sched.state_dict()))
    rest = []
    for _ in range(STEPS - split):
        opt.step(grads)
        sched.step()
        rest.append((sched.get_last_lr(), group_values(opt)))
    # A fresh optimizer and scheduler (built first, as with torch), then the saved states.
    opt2 = fo_optimizer(kind, [p.copy() for p in params])
    sched2 = factory(fls, opt2)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved)
    resumed = []
    for _ in range(STEPS - split):
        opt2.step(grads)
        sched2.step()
        resumed.append((sched2.get_last_lr(), group_values(opt2)))
    assert resumed == rest


def test_state_dict_matches_torch_keys_that_matter():
    torch = pytest.importorskip("torch")
    opt_t = torch_optimizer(torch, "sgd")
    sched_t = torch.optim.lr_scheduler.StepLR(opt_t, step_size=3)
    params, _ = params_and_grads("sgd")
    sched = fls.StepLR(fo_optimizer("sgd", params), step_size=3)
    sd, sd_t = sched.state_dict(), sched_t.state_dict()
    for key in ("last_epoch", "base_lrs", "_last_lr", "_step_count", "step_size", "gamma"):
        assert sd[key] == sd_t[key], key


def test_lambda_state_dict_restores_callable_object_state():
    params, grads = params_and_grads("sgd")
    opt = fo_optimizer("sgd", params)
    sched = fls.LambdaLR(opt, [Scale(0.9), warmup_then_linear])
    sd = sched.state_dict()
    assert sd["lr_lambdas"] == [{"rate": 0.9}, None]
    other = Scale(0.5)
    sched2 = fls.LambdaLR(fo_optimizer("sgd", [p.copy() for p in params]), [other, warmup_then_linear])
    sched2.load_state_dict(sd)
    assert other.rate == 0.9


@pytest.mark.parametrize("cls, hp", [
    (fo.optim.SGD, dict(lr=0.1, momentum=0.9)),
    (fo.optim.Adam, dict(lr=0.01)),
    (fo.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
])
def test_scheduled_lrs_reach_the_updates(cls, hp):
    """The optimizer driven by a scheduler equals one whose lr is set by hand each step."""
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(40) for _ in range(2)]
    ref_params = [p.copy() for p in params]
    grads = [[rng.standard_normal(40) for _ in range(2)] for _ in range(25)]
    opt = cls(params, **hp)
    sched = fls.CosineAnnealingLR(opt, T_max=20, eta_min=1e-4)
    ref = cls(ref_params, **hp)
    lrs = []
    for g in grads:
        lrs.append(opt.param_groups[0]["lr"])
        ref.param_groups[0]["lr"] = lrs[-1]
        opt.step(g)
        ref.step(g)
        sched.step()
    for a, b in zip(params, ref_params):
        assert np.array_equal(a, b)
    assert len(set(lrs)) > 10  # the lr really moved


@pytest.mark.parametrize("warmup, total, start, floor", [(10, 100, 0.0, 0.0), (0, 50, 0.0, 1e-3),
                                                         (7, 30, 0.2, 1e-4)])
def test_linear_warmup_cosine_formula(warmup, total, start, floor):
    params, grads = params_and_grads("adam")
    opt = fo_optimizer("adam", params)
    sched = fls.LinearWarmupCosine(opt, warmup, total, start_factor=start, eta_min=floor)
    bases = [0.01, 0.05]
    for t in range(total + 20):
        for base, lr in zip(bases, sched.get_last_lr()):
            if t < warmup:
                want = base * (start + (1 - start) * t / warmup)
            elif t <= total:
                want = floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))
            else:
                want = floor
            assert lr == pytest.approx(want, rel=1e-14, abs=1e-18), t
        opt.step(grads)
        sched.step()


def test_linear_warmup_cosine_matches_torch_lambda():
    """With start_factor=0, eta_min=0: transformers' cosine-with-warmup, via torch's LambdaLR."""
    torch = pytest.importorskip("torch")

    def lam(t, warmup=8, total=120):
        if t < warmup:
            return t / warmup
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / (total - warmup))))

    expected = torch_sequence(torch, "adam", lambda L, o: L.LambdaLR(o, lam), 120)
    params, grads = params_and_grads("adam")
    opt = fo_optimizer("adam", params)
    sched = fls.LinearWarmupCosine(opt, 8, 120)
    for k in range(121):
        for a, b in zip(sched.get_last_lr(), expected[k][0]):
            assert a == pytest.approx(b, rel=1e-13, abs=1e-20)
        if k < 120:
            opt.step(grads)
            sched.step()


def test_one_cycle_stepping_past_the_end_raises():
    params, grads = params_and_grads("sgd")
    opt = fo_optimizer("sgd", params)
    sched = fls.OneCycleLR(opt, max_lr=0.1, total_steps=3)
    for _ in range(3):
        sched.step()
    with pytest.raises(ValueError, match="total_steps"):
        sched.step()


@pytest.mark.parametrize("make, exc, match", [
    (lambda o: fls.StepLR(o, step_size=0), ValueError, "step_size"),
    (lambda o: fls.LinearLR(o, start_factor=0.0), ValueError, "start_factor"),
    (lambda o: fls.LinearLR(o, end_factor=1.5), ValueError, "end_factor"),
    (lambda o: fls.CosineAnnealingLR(o, T_max=0), ValueError, "T_max"),
    (lambda o: fls.LambdaLR(o, [lambda e: 1.0]), ValueError, "lr_lambdas"),
    (lambda o: fls.LambdaLR(o, 3.0), TypeError, "callable"),
    (lambda o: fls.OneCycleLR(o, max_lr=0.1), ValueError, "total_steps"),
    (lambda o: fls.OneCycleLR(o, max_lr=0.1, total_steps=10, pct_start=1.5), ValueError, "pct_start"),
    (lambda o: fls.OneCycleLR(o, max_lr=[0.1], total_steps=10), ValueError, "max_lr"),
    (lambda o: fls.OneCycleLR(o, max_lr=0.1, total_steps=10, anneal_strategy="exp"), ValueError, "anneal"),
    (lambda o: fls.SequentialLR(o, [fls.StepLR(o, 2)], milestones=[3]), ValueError, "milestone"),
    (lambda o: fls.LinearWarmupCosine(o, 10, 10), ValueError, "total_steps"),
    (lambda o: fls.LinearWarmupCosine(o, 1, 10, eta_min=-1.0), ValueError, "eta_min"),
    (lambda o: fls.StepLR(o, 2, last_epoch=5), KeyError, "initial_lr"),
    (lambda o: fls.StepLR(object(), 2), TypeError, "not an optimizer"),
])
def test_bad_arguments(make, exc, match):
    params, _ = params_and_grads("sgd")
    opt = fo_optimizer("sgd", params)
    with pytest.raises(exc, match=match):
        make(opt)


def test_sequential_rejects_scheduler_of_another_optimizer():
    params, _ = params_and_grads("sgd")
    a, b = fo_optimizer("sgd", params), fo_optimizer("sgd", [p.copy() for p in params])
    with pytest.raises(ValueError, match="another optimizer"):
        fls.SequentialLR(a, [fls.StepLR(a, 2), fls.StepLR(b, 2)], milestones=[3])


SCHEDULES = st.one_of(
    st.builds(lambda n, g: ("StepLR", dict(step_size=n, gamma=g)), st.integers(1, 20), st.floats(0.05, 1.0)),
    st.builds(lambda ms, g: ("MultiStepLR", dict(milestones=ms, gamma=g)),
              st.lists(st.integers(0, 70), max_size=5), st.floats(0.05, 1.0)),
    st.builds(lambda g: ("ExponentialLR", dict(gamma=g)), st.floats(0.5, 1.0)),
    st.builds(lambda t, lo: ("CosineAnnealingLR", dict(T_max=t, eta_min=lo)), st.integers(1, 40),
              st.floats(0.0, 1e-3)),
    st.builds(lambda a, b, n: ("LinearLR", dict(start_factor=a, end_factor=b, total_iters=n)),
              st.floats(0.01, 1.0), st.floats(0.0, 1.0), st.integers(1, 50)),
)


@settings(max_examples=40, deadline=None)
@given(SCHEDULES, st.floats(1e-4, 1.0))
def test_random_schedules_match_torch(schedule, lr):
    torch = pytest.importorskip("torch")
    name, kwargs = schedule
    topt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=lr)
    tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kwargs)
    opt = fo.optim.SGD([np.zeros(2)], lr=lr)
    sched = getattr(fls, name)(opt, **kwargs)
    for _ in range(70):
        # Where torch's sequence ends a rounding error below 0, ours is 0 (a negative lr is
        # rejected by the optimizers); every other value is identical.
        expected = [0.0 if -1e-12 * lr < x < 0 else x for x in tsched.get_last_lr()]
        assert sched.get_last_lr() == expected
        topt.step()
        tsched.step()
        opt.step([np.zeros(2)])
        sched.step()

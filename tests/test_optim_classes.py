"""fo.optim.SGD / Adam / AdamW: equal to the functional calls (bitwise), to torch.optim
(20-step runs), param groups, schedules, clipping, skipping, state_dict, bad input."""

import copy
import pickle

import numpy as np
import pytest

import fusedops as fo
from reference import adam_reference, sgd_reference

SIZES = [1, 7, 17, 256, 1000, 70001]


def make_problem(dtype, sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads_per_step = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(20)]
    return params, grads_per_step


def snapshot(arrays):
    return [a.copy() for a in arrays]


def assert_bitwise(a_list, b_list):
    assert len(a_list) == len(b_list)
    for a, b in zip(a_list, b_list):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=True)


# ------------------------------------------------------------------ functional equality

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hp", [
    dict(lr=0.05),
    dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3),
    dict(lr=0.05, momentum=0.9, nesterov=True, l1=1e-4, maximize=True),
])
def test_sgd_class_equals_functional(isa, dtype, hp):
    params, grads = make_problem(dtype)
    ref = snapshot(params)
    bufs = [np.zeros_like(p) for p in ref]
    opt = fo.optim.SGD(params, **hp)
    for k in range(6):
        assert opt.step(grads[k]) is True
        fo.sgd_step(ref, grads[k], bufs if hp.get("momentum") else None, first_step=(k == 0), **hp)
        assert_bitwise(params, ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, hp", [
    (fo.optim.Adam, dict(lr=1e-2)),
    (fo.optim.Adam, dict(lr=1e-2, weight_decay=1e-2, amsgrad=True, l1=1e-4)),
    (fo.optim.AdamW, dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, maximize=True)),
    (fo.optim.AdamW, dict(lr=1e-2, amsgrad=True)),
])
def test_adam_class_equals_functional(isa, dtype, cls, hp):
    params, grads = make_problem(dtype)
    ref = snapshot(params)
    m, v, vmax = ([np.zeros_like(p) for p in ref] for _ in range(3))
    fn = fo.adamw_step if cls is fo.optim.AdamW else fo.adam_step
    opt = cls(params, **hp)
    for k in range(6):
        assert opt.step(grads[k]) is True
        fn(ref, grads[k], m, v, step=k + 1, max_exp_avg_sqs=vmax if hp.get("amsgrad") else None, **hp)
        assert_bitwise(params, ref)


def test_many_small_tensors_match_functional():
    params, grads = make_problem(np.float32, sizes=[256] * 1000, seed=4)
    ref = snapshot(params)
    m, v = [np.zeros_like(p) for p in ref], [np.zeros_like(p) for p in ref]
    opt = fo.optim.Adam(params, lr=1e-3)
    for k in range(3):
        opt.step(grads[k])
        fo.adam_step(ref, grads[k], m, v, step=k + 1, lr=1e-3)
    assert_bitwise(params, ref)


def test_against_float64_reference_with_groups_and_schedule():
    params, grads = make_problem(np.float64, sizes=[5, 300, 4096])
    ref_p = [p.copy() for p in params]
    ref_m = [np.zeros_like(p) for p in params]
    ref_v = [np.zeros_like(p) for p in params]
    opt = fo.optim.AdamW([{"params": params[:1], "lr": 0.1, "weight_decay": 0.0},
                          {"params": params[1:]}], lr=0.01)
    lrs = [0.1, 0.01, 0.01]
    for k in range(20):
        if k == 10:  # a schedule edits the groups; it takes effect at the next step
            opt.param_groups[1]["lr"] = 0.001
            lrs = [0.1, 0.001, 0.001]
        opt.step(grads[k])
        for i in range(3):
            wd = 0.0 if i == 0 else 1e-2
            ref_p[i], ref_m[i], ref_v[i], _ = adam_reference(
                ref_p[i], grads[k][i], ref_m[i], ref_v[i], None, step=k + 1, lr=lrs[i],
                weight_decay=wd, decoupled_weight_decay=True)
    for p, r in zip(params, ref_p):
        np.testing.assert_allclose(p, r, rtol=1e-11, atol=1e-13)


def test_sgd_momentum_switched_on_later_starts_its_buffer(rng):
    p = rng.standard_normal(100)
    ref = p.copy()
    g = [rng.standard_normal(100) for _ in range(4)]
    opt = fo.optim.SGD([p], lr=0.1)
    opt.step([g[0]])
    ref, _ = sgd_reference(ref, g[0], None, lr=0.1)
    opt.param_groups[0]["momentum"] = 0.9
    opt.param_groups[0]["dampening"] = 0.5
    buf = None
    for k in (1, 2, 3):
        opt.step([g[k]])
        ref, buf = sgd_reference(ref, g[k], buf, lr=0.1, momentum=0.9, dampening=0.5, first_step=buf is None)
    np.testing.assert_allclose(p, ref, rtol=1e-13)


# ------------------------------------------------------------------ clipping and skipping

@pytest.mark.parametrize("cls", [fo.optim.SGD, fo.optim.Adam])
def test_max_grad_norm_is_folded_into_the_scale(cls):
    params, grads = make_problem(np.float32, seed=2)
    clipped = snapshot(params)
    hp = dict(lr=0.01, momentum=0.9) if cls is fo.optim.SGD else dict(lr=0.01)
    opt = cls(params, max_grad_norm=1.0, **hp)
    ref_opt = cls(clipped, **hp)
    for k in range(5):
        g = grads[k]
        g_before = snapshot(g)
        opt.step(g, grad_scale=2.0)
        assert_bitwise(g, g_before)  # the grads are not modified
        g_copy = [x / np.float32(2.0) for x in g]
        fo.clip_grad_norm(g_copy, 1.0)
        ref_opt.step(g_copy)
        for a, b in zip(params, clipped):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_max_grad_norm_equals_functional_with_combined_scale():
    params, grads = make_problem(np.float64, seed=3)
    ref = snapshot(params)
    m, v = [np.zeros_like(p) for p in ref], [np.zeros_like(p) for p in ref]
    opt = fo.optim.Adam(params, lr=0.01, max_grad_norm=0.5)
    for k in range(3):
        opt.step(grads[k])
        norm = fo.grad_norm(grads[k])
        coef = 0.5 / (norm + 1e-6)
        fo.adam_step(ref, grads[k], m, v, step=k + 1, lr=0.01, grad_scale=1.0 / coef if coef < 1 else 1.0)
    assert_bitwise(params, ref)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_skip_nonfinite_changes_nothing(bad, clip):
    params, grads = make_problem(np.float32, seed=5)
    ref = snapshot(params)
    opt = fo.optim.Adam(params, lr=0.01, amsgrad=True, skip_nonfinite=True, max_grad_norm=clip)
    ref_opt = fo.optim.Adam(ref, lr=0.01, amsgrad=True, max_grad_norm=clip)
    assert opt.step(grads[0])
    ref_opt.step(grads[0])
    state_before = copy.deepcopy(opt.state_dict())
    params_before = snapshot(params)
    poisoned = snapshot(grads[1])
    poisoned[-1][12345] = bad  # one element of the last tensor
    assert opt.step(poisoned) is False
    assert_bitwise(params, params_before)
    after = opt.state_dict()
    assert after["step"] == state_before["step"] == 1
    for i, st in state_before["state"].items():
        for key, arr in st.items():
            assert np.array_equal(after["state"][i][key], arr)
    for k in (2, 3):  # training continues as if the bad step never happened
        assert opt.step(grads[k])
        ref_opt.step(grads[k])
    assert_bitwise(params, ref)


def test_without_skip_nonfinite_nan_propagates():
    p = np.ones(10)
    opt = fo.optim.SGD([p], lr=0.1)
    g = np.zeros(10)
    g[3] = np.nan
    assert opt.step([g]) is True
    assert np.isnan(p[3]) and np.all(p[np.arange(10) != 3] == 1.0)


# ------------------------------------------------------------------ state_dict

@pytest.mark.parametrize("cls, hp", [
    (fo.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    (fo.optim.Adam, dict(lr=0.01, amsgrad=True)),
    (fo.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
])
def test_state_dict_pickle_round_trip_continues_bitwise(cls, hp):
    params, grads = make_problem(np.float32, seed=6)
    opt = cls([{"params": params[:2], "lr": 0.1}, {"params": params[2:]}], **hp)
    for k in range(5):
        opt.step(grads[k])
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    resumed_params = snapshot(params)
    for k in range(5, 10):
        opt.step(grads[k])
    resumed = cls([{"params": resumed_params[:2], "lr": 0.7}, {"params": resumed_params[2:]}], **hp)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["lr"] == 0.1
    for k in range(5, 10):
        resumed.step(grads[k])
    assert_bitwise(resumed_params, params)


def test_state_dict_is_a_copy():
    p = np.ones(4)
    opt = fo.optim.Adam([p])
    opt.step([np.ones(4)])
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"][:] = 123.0
    assert not np.any(opt.state[0]["exp_avg"] == 123.0)


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda sd: sd["state"][1].update(exp_avg=np.zeros(3, np.float32)), ValueError, "shape"),
    (lambda sd: sd["state"][1].update(exp_avg=np.zeros(17, np.float64)), TypeError, "dtype"),
    (lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])), ValueError, "param groups"),
    (lambda sd: sd["param_groups"][0]["params"].pop(), ValueError, "params"),
    (lambda sd: sd["param_groups"][0].update(lr=-1.0), ValueError, "lr"),
    (lambda sd: sd["state"].update({99: {}}), ValueError, "99"),
    (lambda sd: sd["state"][0].update(bogus=np.zeros(7, np.float32)), ValueError, "bogus"),
])
def test_load_state_dict_rejects_mismatch_and_changes_nothing(mutate, exc, match):
    params, grads = make_problem(np.float32, sizes=[7, 17], seed=7)
    opt = fo.optim.Adam(params, lr=0.01)
    opt.step(grads[0])
    sd = opt.state_dict()
    mutate(sd)
    other = fo.optim.Adam(snapshot(params), lr=0.02)
    other.step(grads[1])
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(exc, match=match):
        other.load_state_dict(sd)
    after = other.state_dict()
    assert after["step"] == before["step"] and after["param_groups"] == before["param_groups"]
    for i in before["state"]:
        for key in before["state"][i]:
            assert np.array_equal(after["state"][i][key], before["state"][i][key])


# ------------------------------------------------------------------ bad input

def test_bad_grads_rejected_and_nothing_changed():
    params, grads = make_problem(np.float32, sizes=[8, 9, 10])
    opt = fo.optim.SGD(params, lr=0.1, momentum=0.9)
    opt.step(grads[0])
    cases = [
        (grads[1][:2], ValueError, "grads has 2 arrays"),
        ([*grads[1][:2], grads[1][2].astype(np.float64)], TypeError, r"grads\[2\] has dtype float64"),
        ([*grads[1][:2], np.zeros(11, np.float32)], ValueError, r"grads\[2\] has shape"),
        ([*grads[1][:2], np.zeros(20, np.float32)[::2]], ValueError, r"grads\[2\] is not C-contiguous"),
        ([*grads[1][:2], [0.0] * 10], TypeError, r"grads\[2\] must be a numpy.ndarray"),
        ([*grads[1][:2], params[2]], ValueError, r"grads\[2\] shares memory"),
        ([*grads[1][:2], opt.state[2]["momentum_buffer"]], ValueError, r"grads\[2\] shares memory"),
        (np.zeros(8, np.float32), TypeError, "list/tuple"),
    ]
    for bad, exc, match in cases:
        p_before = snapshot(params)
        s_before = [st["momentum_buffer"].copy() for st in opt.state]
        g_before = [np.array(g, copy=True) for g in bad] if isinstance(bad, list) else bad.copy()
        with pytest.raises(exc, match=match):
            opt.step(bad)
        assert_bitwise(params, p_before)
        assert_bitwise([st["momentum_buffer"] for st in opt.state], s_before)
        if isinstance(bad, list):
            for g, gb in zip(bad, g_before):
                assert np.array_equal(np.asarray(g), gb)
    with pytest.raises(ValueError, match="grad_scale"):
        opt.step(grads[1], grad_scale=0.0)
    assert_bitwise(params, p_before)


def test_bad_hyperparameter_edit_rejected_at_step_and_nothing_changed():
    params, grads = make_problem(np.float64, sizes=[8, 9])
    opt = fo.optim.Adam([{"params": params[:1]}, {"params": params[1:]}], lr=0.1)
    opt.step(grads[0])
    before = snapshot(params)
    opt.param_groups[1]["betas"] = (0.9, 1.0)
    with pytest.raises(ValueError, match=r"param_groups\[1\].*betas\[1\]"):
        opt.step(grads[1])
    opt.param_groups[1]["betas"] = (0.9, 0.999)
    opt.param_groups[0]["lr"] = "0.1"
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['lr'\]"):
        opt.step(grads[1])
    assert_bitwise(params, before)
    assert opt.state_dict()["step"] == 1


@pytest.mark.parametrize("make, exc, match", [
    (lambda: fo.optim.SGD([np.zeros(3)], lr=-0.1), ValueError, "lr"),
    (lambda: fo.optim.SGD([np.zeros(3)], lr=0.1, nesterov=True), ValueError, "nesterov"),
    (lambda: fo.optim.Adam([np.zeros(3)], betas=(1.0, 0.9)), ValueError, r"betas\[0\]"),
    (lambda: fo.optim.Adam([np.zeros(3)], eps=-1.0), ValueError, "eps"),
    (lambda: fo.optim.Adam([np.zeros(3)], max_grad_norm=-1.0), ValueError, "max_grad_norm"),
    (lambda: fo.optim.Adam([np.zeros(3), np.zeros(3, np.int32)]), TypeError, "dtype"),
    (lambda: fo.optim.Adam([np.zeros(3, np.int64)]), TypeError, "dtype"),
    (lambda: fo.optim.Adam(np.zeros(3)), TypeError, "single array"),
    (lambda: fo.optim.Adam([]), ValueError, "empty"),
    (lambda: fo.optim.Adam([np.zeros(6)[::2]]), ValueError, "C-contiguous"),
    (lambda: fo.optim.Adam([np.zeros(3)] * 2), ValueError, "shares memory"),
    (lambda: fo.optim.Adam([[1.0, 2.0]]), TypeError, "numpy.ndarray"),
])
def test_bad_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_read_only_param_rejected():
    p = np.zeros(3)
    p.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fo.optim.SGD([p], lr=0.1)


def test_thread_count_does_not_change_results(threads):
    results = []
    for n in (1, 2):
        fo.set_num_threads(n)
        params, grads = make_problem(np.float32, sizes=[300001, 256, 70001], seed=9)
        opt = fo.optim.AdamW(params, lr=0.01, amsgrad=True, max_grad_norm=1.0)
        for k in range(3):
            opt.step(grads[k])
        results.append(params)
    assert_bitwise(results[0], results[1])


# ------------------------------------------------------------------ torch cross-checks

def _torch_run(torch_cls, params, grads, group_spec, steps, lr_change=None, **hp):
    import torch

    tp = [torch.from_numpy(p.copy()) for p in params]
    groups = [{"params": [tp[i] for i in idx], **over} for idx, over in group_spec]
    opt = torch_cls(groups, foreach=False, **hp)
    for k in range(steps):
        if lr_change and k == lr_change[0]:
            opt.param_groups[1]["lr"] = lr_change[1]
        for p, g in zip(tp, grads[k]):
            p.grad = torch.from_numpy(g.copy())
        opt.step()
    return [p.numpy() for p in tp]


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 2e-4)])
@pytest.mark.parametrize("name, hp", [
    ("SGD", dict(lr=0.02, momentum=0.9, dampening=0.2, weight_decay=1e-3)),
    ("SGD", dict(lr=0.02, momentum=0.8, nesterov=True, maximize=True)),
    ("Adam", dict(lr=0.01, weight_decay=1e-2, amsgrad=True)),
    ("AdamW", dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.05, maximize=True)),
])
def test_twenty_steps_match_torch(dtype, rtol, name, hp):
    torch = pytest.importorskip("torch")
    params, grads = make_problem(dtype, sizes=[3, 64, 1000, 4099], seed=11)
    spec = [([0, 1], {"lr": hp["lr"] * 3}), ([2, 3], {})]
    expected = _torch_run(getattr(torch.optim, name), params, grads, spec, 20, lr_change=(12, hp["lr"] / 4), **hp)
    ours = snapshot(params)
    opt = getattr(fo.optim, name)([{"params": [ours[0], ours[1]], "lr": hp["lr"] * 3},
                                   {"params": [ours[2], ours[3]]}], **hp)
    for k in range(20):
        if k == 12:
            opt.param_groups[1]["lr"] = hp["lr"] / 4
        opt.step(grads[k])
    for a, b in zip(ours, expected):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-2)


def test_max_grad_norm_matches_torch_clip_then_step():
    torch = pytest.importorskip("torch")
    params, grads = make_problem(np.float64, sizes=[50, 1000], seed=12)
    tp = [torch.from_numpy(p.copy()) for p in params]
    topt = torch.optim.Adam(tp, lr=0.01, foreach=False)
    opt = fo.optim.Adam(params, lr=0.01, max_grad_norm=2.0)
    for k in range(20):
        for p, g in zip(tp, grads[k]):
            p.grad = torch.from_numpy(g.copy())
        torch.nn.utils.clip_grad_norm_(tp, 2.0)
        topt.step()
        opt.step(grads[k])
    for a, b in zip(params, tp):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-10, atol=1e-12)

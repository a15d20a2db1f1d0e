"""Mixed precision in the optimizer family (Adagrad, RMSprop, Adamax, NAdam, RAdam, Lion,
LAMB, LARS): every row of API.md's dtype table against the float64 references of
reference_family.py computed from the same 16-bit inputs with the final rounding applied,
round to nearest and stochastic, every ISA, vector tails, several steps from nonzero state;
rows mixed in one call; stochastic rounding replayed bitwise for 1 and 2 threads; the
classes (state_dtype, master_weights True/"remainder", stochastic rounding) against the
functional calls bitwise, with state_dict round trips in every flow; torch parity on
bfloat16 params; rejected combinations that change nothing; sgd_step's step=."""

import pickle

import numpy as np
import pytest

import fusedops as fo
import reference_family as ref
from checks import assert_bitwise_equal, assert_rejected
from test_mixed_precision import (BF16, F16, F32, F64, HALF, ROWS, assert_rounded,
                                  check_output, row_id, ulp)

SIZES = [0, 1, 15, 16, 17, 513, 40001]

# name: functional step, reference, state names (the functional's positional order and
# the class's state keys), hyperparameters, first step number.
ELEMENTWISE = {
    "adagrad": (fo.adagrad_step, ref.adagrad, ("sum",),
                dict(lr=0.05, lr_decay=0.01, weight_decay=0.02, eps=1e-6, l1=1e-3,
                     grad_scale=2.0), 1),
    "rmsprop": (fo.rmsprop_step, ref.rmsprop, ("square_avg", "grad_avg", "momentum_buffer"),
                dict(lr=1e-2, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.9,
                     centered=True, l1=1e-3, maximize=True), 1),
    "adamax": (fo.adamax_step, ref.adamax, ("exp_avg", "exp_inf"),
               dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.02, l1=1e-3,
                    grad_scale=4.0), 1),
    "nadam": (fo.nadam_step, ref.nadam, ("exp_avg", "exp_avg_sq"),
              dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01,
                   decoupled_weight_decay=True), 1),
    # betas[1] = 0.99: steps 5 (plain momentum) and 6, 7 (rectified)
    "radam": (fo.radam_step, ref.radam, ("exp_avg", "exp_avg_sq"),
              dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01), 5),
    "lion": (fo.lion_step, ref.lion, ("exp_avg",),
             dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, l1=1e-3), 1),
}
LAMB_HP = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1, l1=1e-3, grad_scale=2.0)
LARS_HP = dict(lr=0.1, momentum=0.9, weight_decay=1e-2, eta=0.02, eps=1e-6, l1=1e-3,
               nesterov=True)
KINDS = [*ELEMENTWISE, "lamb", "lars"]


def initial_state(rng, name, n, dtype):
    """Nonzero state in its valid range (sums and averages of squares positive; RMSprop's
    centered variance stays well above zero)."""
    x = rng.standard_normal(n)
    if name in ("sum", "square_avg"):
        x = 0.1 + np.abs(x) * 0.1
    elif name in ("exp_avg_sq", "exp_inf"):
        x = np.abs(x) * 0.1
    elif name == "grad_avg":
        x = x * 0.01
    else:
        x = x * 0.1
    return x.astype(dtype)


class Problem:
    """Tensors of one dtype row (params, grads, state, copy) over SIZES."""

    def __init__(self, rng, row, names, sizes=SIZES):
        pdt, gdt, sdt, cdt = row
        self.row = row
        self.params = [rng.standard_normal(n).astype(pdt) for n in sizes]
        self.grads = [[rng.standard_normal(n).astype(gdt) for n in sizes] for _ in range(3)]
        self.state = {k: [initial_state(rng, k, n, sdt) for n in sizes] for k in names}
        self.copies = None if cdt is None else [np.zeros(n, cdt) for n in sizes]

    def snapshot(self):
        return [p.copy() for p in self.params], {k: [a.copy() for a in v]
                                                 for k, v in self.state.items()}


def check(actual, want, dtype, stochastic, what):
    """check_output with an absolute slack of float32 arithmetic on terms as large as the
    largest value of the tensor (updates such as RMSprop's momentum buffer cancel terms
    much larger than their result)."""
    want = np.asarray(want, np.float64)
    scale = float(np.max(np.abs(want), initial=1.0, where=np.isfinite(want)))
    check_output(actual, want, dtype, stochastic, what, atol=2e-7 * scale)


def mixed_kw(problem, stochastic, step):
    kw = dict(stochastic_rounding=stochastic, seed=5, step=step)
    if problem.copies is not None:
        kw["param_copies"] = problem.copies
    return kw


def check_copies(problem, stochastic, what):
    if problem.copies is None:
        return
    for p, c in zip(problem.params, problem.copies):
        assert_rounded(c, p.astype(np.float64), problem.row[3], stochastic=stochastic, rtol=0,
                       err_msg=what + " copy")
        if not stochastic:
            assert_bitwise_equal(c, p.astype(problem.row[3]))


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("row", ROWS, ids=row_id)
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_rows_match_the_float64_reference(isa, name, row, stochastic, rng):
    fn, reference, names, hp, first = ELEMENTWISE[name]
    t = Problem(rng, row, names)
    mu_product = 1.0
    for step, grads in enumerate(t.grads, start=first):
        params0, state0 = t.snapshot()
        kw = dict(hp, **mixed_kw(t, stochastic, step))
        if name == "nadam":
            kw["mu_product"] = mu_product
        out = fn(t.params, grads, *(t.state[k] for k in names), **kw)
        for i, g in enumerate(grads):
            ref_kw = dict(hp, step=step)
            if name == "nadam":
                ref_kw["mu_product"] = mu_product
            want_p, want_state = reference(params0[i], g, {k: state0[k][i] for k in names},
                                           **ref_kw)
            what = f"{name} {row_id(row)} n={g.size} step={step}"
            check(t.params[i], want_p, row[0], stochastic, what + " param")
            for k in names:
                check(t.state[k][i], want_state[k], row[2], stochastic, f"{what} {k}")
        check_copies(t, stochastic, f"{name} {row_id(row)} step={step}")
        if name == "nadam":
            mu_product = out


def stored_moments(problem, stochastic, step):
    """LAMB's reference hook: the moments tensor i stored, after checking they are the
    reference moments rounded to the state dtype."""
    def store(i, m, v):
        for key, want in (("exp_avg", m), ("exp_avg_sq", v)):
            check(problem.state[key][i], want, problem.row[2], stochastic,
                         f"lamb {row_id(problem.row)} step={step} {key}[{i}]")
        return problem.state["exp_avg"][i], problem.state["exp_avg_sq"][i]
    return store


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_lamb_rows_match_the_float64_reference(isa, row, stochastic, rng):
    t = Problem(rng, row, ("exp_avg", "exp_avg_sq"))
    exclude = [i % 3 == 2 for i in range(len(SIZES))]
    for step, grads in enumerate(t.grads, start=1):
        params0, state0 = t.snapshot()
        ratios = fo.lamb_step(t.params, grads, t.state["exp_avg"], t.state["exp_avg_sq"],
                              exclude=exclude, **LAMB_HP, **mixed_kw(t, stochastic, step))
        # the norms are of the update computed from the stored moments
        want_p, _, _, want_r = ref.lamb(params0, grads, state0["exp_avg"], state0["exp_avg_sq"],
                                        step=step, exclude=exclude, **LAMB_HP,
                                        store=stored_moments(t, stochastic, step))
        np.testing.assert_allclose(ratios, want_r, rtol=1e-5)
        for i, (p, w) in enumerate(zip(t.params, want_p)):
            check(p, w, row[0], stochastic, f"lamb {row_id(row)} step={step} param[{i}]")
        check_copies(t, stochastic, f"lamb {row_id(row)} step={step}")


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("row", ROWS, ids=row_id)
def test_lars_rows_match_the_float64_reference(isa, row, stochastic, rng):
    t = Problem(rng, row, ("momentum_buffer",))
    exclude = [i % 3 == 2 for i in range(len(SIZES))]
    bufs = t.state["momentum_buffer"]
    for step, grads in enumerate(t.grads, start=1):
        params0, state0 = t.snapshot()
        ratios = fo.lars_step(t.params, grads, bufs, exclude=exclude, **LARS_HP,
                              **mixed_kw(t, stochastic, step))
        want_p, want_b, want_r = ref.lars(params0, grads, state0["momentum_buffer"],
                                          exclude=exclude, **LARS_HP)
        np.testing.assert_allclose(ratios, want_r, rtol=1e-6)
        what = f"lars {row_id(row)} step={step}"
        for i in range(len(SIZES)):
            check(t.params[i], want_p[i], row[0], stochastic, f"{what} param[{i}]")
            check(bufs[i], want_b[i], row[2], stochastic, f"{what} buf[{i}]")
        check_copies(t, stochastic, what)


# --- one call, many rows; threads --------------------------------------------------------


def step_all(name, params, grads, state, step, **kw):
    """One functional step of optimizer `name` over lists (state: name -> list)."""
    if name == "lamb":
        return fo.lamb_step(params, grads, state["exp_avg"], state["exp_avg_sq"], step=step,
                            **LAMB_HP, **kw)
    if name == "lars":
        return fo.lars_step(params, grads, state["momentum_buffer"], step=step,
                            first_step=step == 1, **LARS_HP, **kw)
    fn, _, names, hp, first = ELEMENTWISE[name]
    return fn(params, grads, *(state[k] for k in names), **dict(hp, step=first + step - 1), **kw)


def state_names(name):
    return {"lamb": ("exp_avg", "exp_avg_sq"), "lars": ("momentum_buffer",)}.get(
        name, ELEMENTWISE.get(name, (None, None, ()))[2])


@pytest.mark.parametrize("name", KINDS)
def test_rows_mixed_in_one_call_equal_separate_calls(isa, name, rng):
    """Round to nearest: one call over tensors of every row (float64 and float32 beside
    16-bit ones) gives each tensor what a call of its own gives (float64 tensors of
    LAMB/LARS to rounding: their norms are reduced over other chunk sizes)."""
    names = state_names(name)
    rows = [(F64, F64, F64, None), (F32, F32, F32, None)] + [r for r in ROWS if r[3] is None]
    sizes = [33, 1000, 17, 70001]
    problems = [Problem(rng, row, names, [sizes[i % 4]]) for i, row in enumerate(rows)]
    alone = []
    for t in problems:
        params, state = t.snapshot()
        step_all(name, params, t.grads[0], state, 1)
        alone.append((params, state))
    step_all(name, [t.params[0] for t in problems], [t.grads[0][0] for t in problems],
             {k: [t.state[k][0] for t in problems] for k in names}, 1)
    for t, (params, state) in zip(problems, alone):
        pairs = [(t.params[0], params[0])] + [(t.state[k][0], state[k][0]) for k in names]
        for got, want in pairs:
            if t.row[0] == F64 and name in ("lamb", "lars"):
                np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
            else:
                assert_bitwise_equal(got, want)


@pytest.mark.parametrize("name", KINDS)
def test_stochastic_rounding_replays_bitwise_for_1_and_2_threads(isa, name, threads, rng):
    names = state_names(name)
    sizes = [150001, 17, 70001]  # several chunks and blocks: the step runs in parallel
    rows = [(BF16, BF16, BF16, None), (F32, F16, BF16, None), (F16, F16, F32, None)]
    problems = [Problem(rng, row, names, [n]) for row, n in zip(rows, sizes)]
    results = []
    for count in (1, 2):
        fo.set_num_threads(count)
        params = [t.params[0].copy() for t in problems]
        state = {k: [t.state[k][0].copy() for t in problems] for k in names}
        for step in (1, 2):
            step_all(name, params, [t.grads[step][0] for t in problems], state, step,
                     stochastic_rounding=True, seed=11)
        results.append(params + [a for k in names for a in state[k]])
    for a, b in zip(*results):
        assert_bitwise_equal(a, b)
    # and the step count keys the bits: step 2 alone draws other bits than step 1
    assert not all(np.array_equal(a, p.params[0]) for a, p in zip(results[0], problems))


# --- copies beyond the last-level cache --------------------------------------------------

COPY_ROWS = [r for r in ROWS if r[3] is not None]
COPY_SIZES = [17, 70001, 1000, 2 * 16384 + 5, 1]  # chunks of 16384 elements: 5 chunks
COPY_OFFSETS = [3, 0, 31, 9, 1]  # elements from a line boundary at which each copy starts


def step_any(name, params, grads, state, step, **kw):
    """step_all, and Adam (AMSGrad) and SGD (Nesterov momentum) too."""
    if name == "adam":
        return fo.adam_step(params, grads, state["exp_avg"], state["exp_avg_sq"], step=step,
                            lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, amsgrad=True,
                            max_exp_avg_sqs=state["max_exp_avg_sq"], **kw)
    if name == "sgd":
        return fo.sgd_step(params, grads, state["momentum_buffer"], lr=0.05, momentum=0.9,
                           nesterov=True, first_step=step == 1, **kw)
    return step_all(name, params, grads, state, step, **kw)


def copies_at_offsets(dtype, sizes, offsets):
    """Zeroed copies, copy i starting offsets[i] elements past a 64-byte line boundary."""
    out = []
    for n, k in zip(sizes, offsets):
        raw = np.zeros(n + 64, dtype)
        lead = (-raw.ctypes.data % 64) // raw.itemsize
        out.append(raw[lead + k:lead + k + n])
    return out


@pytest.mark.parametrize("stochastic", [False, True], ids=["nearest", "stochastic"])
@pytest.mark.parametrize("row", COPY_ROWS, ids=row_id)
@pytest.mark.parametrize("name", ["adam", "sgd", *KINDS])
def test_streamed_copies_have_the_bits_of_cached_ones(isa, name, row, stochastic, threads, rng):
    """A call that moves more bytes than the last-level cache writes its param copies
    with non-temporal stores (whole lines from each copy's first line boundary, blocks
    realigned to them): params, state and copies keep the bits of ordinary stores, for
    every copy alignment, vector tails and chunk ends, 1 and 2 threads, two steps."""
    from fusedops import _core

    names = {"adam": ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
             "sgd": ("momentum_buffer",)}.get(name) or state_names(name)
    t = Problem(rng, row, names, COPY_SIZES)
    caches = fo.build_info()["cache_bytes"]
    results = []
    try:
        # unbounded caches: ordinary stores; a 1 MiB last level: the call's ~2.5 MB beyond it
        for l2, last, count in [(1 << 40, 1 << 40, 1), (caches["l2"], 1 << 20, 1),
                                (caches["l2"], 1 << 20, 2)]:
            _core._set_cache_bytes(caches["l1d"], l2, last)
            fo.set_num_threads(count)
            params, state = t.snapshot()
            copies = copies_at_offsets(row[3], COPY_SIZES, COPY_OFFSETS)
            for step in (1, 2):
                step_any(name, params, t.grads[step], state, step, param_copies=copies,
                         stochastic_rounding=stochastic, seed=7)
            results.append(params + copies + [a for k in names for a in state[k]])
    finally:
        _core._set_cache_bytes(caches["l1d"], caches["l2"], caches["last_level"])
    for streamed in results[1:]:
        for a, b in zip(results[0], streamed):
            assert_bitwise_equal(b, a)
    if not stochastic:
        for p, c in zip(results[0][:len(COPY_SIZES)], results[0][len(COPY_SIZES):]):
            assert_bitwise_equal(c, p.astype(row[3]))


# --- classes -------------------------------------------------------------------------------

CLASS_HP = {
    "adagrad": dict(lr=0.05, lr_decay=0.01, weight_decay=0.02, eps=1e-6, l1=1e-3),
    "rmsprop": dict(lr=1e-2, alpha=0.9, eps=1e-6, weight_decay=0.01, momentum=0.9,
                    centered=True, maximize=True),
    "adamax": dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.02),
    "nadam": dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.01, decoupled_weight_decay=True),
    "radam": dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.01),
    "lion": dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1),
    "lamb": dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-4, weight_decay=0.1, l1=1e-3),
    "lars": dict(lr=0.1, momentum=0.9, weight_decay=1e-2, eta=0.02, nesterov=True),
}
CLASSES = {"adagrad": fo.optim.Adagrad, "rmsprop": fo.optim.RMSprop, "adamax": fo.optim.Adamax,
           "nadam": fo.optim.NAdam, "radam": fo.optim.RAdam, "lion": fo.optim.Lion,
           "lamb": fo.optim.LAMB, "lars": fo.optim.LARS}
CLASS_SHAPES = [(3, 5), (17,), (), (0,), (40001,)]

# flow: (param dtype, grad dtype, class options)
FLOWS = {
    "bf16": (BF16, BF16, dict()),
    "bf16-state-sr": (BF16, BF16, dict(state_dtype=fo.bfloat16, stochastic_rounding=True,
                                       seed=3)),
    "fp16": (F16, F16, dict()),
    "fp32-bf16-grads-bf16-state": (F32, BF16, dict(state_dtype=fo.bfloat16)),
    "fp32-fp16-grads-sr": (F32, F16, dict(stochastic_rounding=True, seed=4)),
    "master": (BF16, BF16, dict(master_weights=True)),
    "master-fp16": (F16, F16, dict(master_weights=True, stochastic_rounding=True)),
    "remainder": (BF16, BF16, dict(master_weights="remainder")),
    "remainder-bf16-state": (BF16, BF16, dict(master_weights="remainder",
                                             state_dtype=fo.bfloat16)),
}


def functional_step(name, params, grads, state, step, **kw):
    """The step a class takes at `step` (count from 1), as a functional call."""
    hp = dict(CLASS_HP[name])
    if name == "lamb":
        return fo.lamb_step(params, grads, state["exp_avg"], state["exp_avg_sq"], step=step,
                            **hp, **kw)
    if name == "lars":
        return fo.lars_step(params, grads, state["momentum_buffer"], step=step,
                            first_step=step == 1, **hp, **kw)
    fn, _, names, _, _ = ELEMENTWISE[name]
    return fn(params, grads, *(state[k] for k in names), step=step, **hp, **kw)


def class_flow(name, flow, rng, steps):
    pdt, gdt, options = FLOWS[flow]
    params = [np.asarray(rng.standard_normal(s)).astype(pdt) for s in CLASS_SHAPES]
    grads = [[np.asarray(rng.standard_normal(s)).astype(gdt) for s in CLASS_SHAPES]
             for _ in range(steps)]
    return params, grads, options


@pytest.mark.parametrize("flow", list(FLOWS))
@pytest.mark.parametrize("name", KINDS)
def test_class_flows_equal_the_functional_calls(isa, name, flow, rng):
    """Each flow of a class is the functional call on what it holds: 16-bit params and
    state, or float32 masters (master_weights=True) written to the params as copies;
    the remainder flow holds the same masters, bit for bit, split in two."""
    params, grads, options = class_flow(name, flow, rng, 3)
    masters = options.get("master_weights")
    opt = CLASSES[name]([p.copy() if masters else p for p in params], **CLASS_HP[name],
                        **options)
    held = [p for g in opt.param_groups for p in g["params"]]
    sdt = np.dtype(options.get("state_dtype") or np.float32)
    mirror = [p.astype(np.float32) if masters else p.copy() for p in params]
    state = {k: [np.zeros(p.shape, sdt) for p in params] for k in state_names(name)}
    copies = [np.zeros(p.shape, p.dtype) for p in params] if masters else None
    rounding = {k: options[k] for k in ("stochastic_rounding", "seed") if k in options}
    for step, g in enumerate(grads, start=1):
        assert opt.step(g)
        functional_step(name, mirror, g, state, step, param_copies=copies, **rounding)
        for i, st in enumerate(opt.state):
            for k in state_names(name):
                assert_bitwise_equal(st[k], state[k][i])
            if masters is True:
                assert_bitwise_equal(st["master"], mirror[i])
                assert_bitwise_equal(held[i], copies[i])
            elif masters == "remainder":
                bits = held[i].view(np.uint16).astype(np.uint32) << 16 | st["remainder"]
                assert_bitwise_equal(bits.view(np.float32), mirror[i])
            else:
                assert_bitwise_equal(held[i], mirror[i])


@pytest.mark.parametrize("flow", list(FLOWS))
@pytest.mark.parametrize("name", KINDS)
def test_state_dict_round_trip_continues_bitwise(name, flow, rng):
    params, grads, options = class_flow(name, flow, rng, 4)
    twin = [p.copy() for p in params]
    opt = CLASSES[name](params, **CLASS_HP[name], **options)
    for g in grads[:2]:
        opt.step(g)
    saved = pickle.loads(pickle.dumps(opt.state_dict()))
    for a, b in zip(twin, params):
        a[...] = b
    resumed = CLASSES[name](twin, **CLASS_HP[name], **options)
    resumed.load_state_dict(saved)
    for g in grads[2:]:
        opt.step(g)
        resumed.step(g)
    for a, b in zip(params, twin):
        assert_bitwise_equal(a, b)
    for sa, sb in zip(opt.state, resumed.state):
        assert sa.keys() == sb.keys()
        for key in sa:
            assert_bitwise_equal(sa[key], sb[key])


def test_adagrad_accumulators_take_the_state_dtype():
    p = [np.ones(4, fo.bfloat16), np.ones(3, np.float32)]
    opt = fo.optim.Adagrad(p, initial_accumulator_value=0.3, state_dtype=fo.bfloat16)
    assert [st["sum"].dtype for st in opt.state] == [BF16, BF16]
    assert_bitwise_equal(opt.state[0]["sum"], np.full(4, 0.3, fo.bfloat16))
    opt = fo.optim.Adagrad([np.ones(4, fo.bfloat16)], initial_accumulator_value=0.3,
                           master_weights=True)
    assert opt.state[0]["sum"].dtype == F32 and opt.state[0]["master"].dtype == F32


def test_lion_with_stochastic_rounding_moves_bf16_params_below_half_an_ulp(rng):
    """Lion moves every param by exactly lr: below half a bfloat16 ulp, round to nearest
    leaves the params where they are, stochastic rounding moves a fraction lr / ulp of
    them a whole ulp, in the sign's direction."""
    n = 20000
    x = (1.05 + 0.9 * rng.random(n)).astype(fo.bfloat16)  # in (1, 2): ulp 2**-7
    g = np.ones(n, fo.bfloat16)
    lr = 2.0**-10
    nearest, stochastic = x.copy(), x.copy()
    fo.lion_step(nearest, g, np.zeros(n, np.float32), lr=lr)
    assert_bitwise_equal(nearest, x)
    fo.lion_step(stochastic, g, np.zeros(n, np.float32), lr=lr, stochastic_rounding=True, seed=1)
    moved = stochastic != x
    down = (x.view(np.uint16) - np.uint16(1)).view(fo.bfloat16)  # the neighbour below
    assert_bitwise_equal(stochastic[moved], down[moved])
    frac = (2.0**-10) / 2.0**-7
    assert abs(moved.mean() - frac) < 6 * np.sqrt(frac * (1 - frac) / n)


# --- torch parity -----------------------------------------------------------------------------

TORCH_PARITY = {
    "adagrad": ("Adagrad", dict(lr=0.05, weight_decay=0.01)),
    "rmsprop": ("RMSprop", dict(lr=1e-2, alpha=0.9, momentum=0.5)),
    "adamax": ("Adamax", dict(lr=1e-2, weight_decay=0.01)),
    "nadam": ("NAdam", dict(lr=1e-2, weight_decay=0.01)),
    "radam": ("RAdam", dict(lr=1e-2, betas=(0.9, 0.99))),
}


@pytest.mark.parametrize("name", list(TORCH_PARITY))
def test_all_bf16_matches_torch_single_tensor(isa, name, rng):
    """torch's foreach=False path on bfloat16 params keeps bfloat16 state and rounds every
    intermediate tensor to bfloat16; we compute a step in float32 and round once. From the
    same bfloat16 params and state (torch's, copied into ours before each of ten steps),
    our param is within one bfloat16 ulp of torch's plus a tenth of the step's update (a
    few 2**-9 roundings of torch's intermediates), and most params agree bitwise."""
    torch = pytest.importorskip("torch")
    cls_name, hp = TORCH_PARITY[name]
    n = 4099
    p = rng.standard_normal(n).astype(fo.bfloat16)
    tp = torch.tensor(p.astype(np.float32)).to(torch.bfloat16)
    opt = getattr(torch.optim, cls_name)([tp], foreach=False, **hp)
    ours = CLASSES[name]([p], state_dtype=fo.bfloat16, **hp)

    def bf16_of(t):
        return t.float().numpy().astype(fo.bfloat16)  # exact: bfloat16 -> float32 -> bfloat16

    for step in range(10):
        p[...] = bf16_of(tp)
        for key, value in opt.state[tp].items():
            if key in ours.state[0]:
                ours.state[0][key][...] = bf16_of(value)
        before = p.astype(np.float64)
        g = rng.standard_normal(n).astype(fo.bfloat16)
        tp.grad = torch.tensor(g.astype(np.float32)).to(torch.bfloat16)
        opt.step()
        assert ours.step([g])
        theirs = bf16_of(tp).astype(np.float64)
        got = p.astype(np.float64)
        bound = ulp(theirs, BF16) + 0.1 * np.abs(got - before)
        assert (np.abs(got - theirs) <= bound).all(), f"step {step}"
        assert (got == theirs).mean() > 0.75, f"step {step}"


# --- rejected combinations ----------------------------------------------------------------

BAD_FAMILY_ROWS = [
    ((F64, BF16, F64), r"grads\[1\] has dtype bfloat16 but params\[1\] has dtype float64"),
    ((BF16, F16, F32), r"grads\[1\] has dtype float16 but params\[1\] has dtype bfloat16"),
    ((F16, BF16, F32), r"grads\[1\] has dtype bfloat16 but params\[1\] has dtype float16"),
    ((F16, F16, BF16), r"\[1\] has dtype bfloat16 but params\[1\] has dtype float16"),
    ((F32, F32, F16), r"\[1\] has dtype float16 but params\[1\] has dtype float32"),
    ((F64, F64, F32), r"\[1\] has dtype float32 but params\[1\] has dtype float64"),
]


@pytest.mark.parametrize("row, match", BAD_FAMILY_ROWS, ids=[row_id((*r, None)) for r, _ in
                                                              BAD_FAMILY_ROWS])
@pytest.mark.parametrize("name", KINDS)
def test_combinations_outside_the_table_are_rejected(name, row, match):
    pdt, gdt, sdt = row
    names = state_names(name)
    params = [np.ones(5, np.float32), np.ones(5, pdt)]
    grads = [np.ones(5, np.float32), np.ones(5, gdt)]
    state = {k: [np.full(5, 0.5, np.float32), np.full(5, 0.5, sdt)] for k in names}
    assert_rejected(step_all, (name, params, grads, state, 1), {}, TypeError, match)


@pytest.mark.parametrize("name", KINDS)
def test_bad_copies_and_rounding_options_are_rejected(name):
    names = state_names(name)
    p, g = np.ones(4, np.float32), np.ones(4, np.float32)
    state = {k: [np.full(4, 0.5, np.float32)] for k in names}
    cases = [
        (dict(param_copies=[np.zeros(4, np.float32)]), TypeError,
         r"param_copies\[0\] has dtype float32 but params\[0\] has"),
        (dict(param_copies=[np.zeros(5, fo.bfloat16)]), ValueError, r"param_copies\[0\] has shape"),
        (dict(param_copies=[p.view(fo.bfloat16)[:4]]), ValueError, "shares memory"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(stochastic_rounding=1), TypeError, "stochastic_rounding"),
    ]
    for kw, exc, match in cases:
        assert_rejected(step_all, (name, [p], [g], state, 1), kw, exc, match)
    bf = [np.ones(4, fo.bfloat16)]
    assert_rejected(step_all, (name, bf, [np.ones(4, fo.bfloat16)], {k: [np.zeros(4, np.float32)]
                                                                      for k in names}, 1),
                    dict(param_copies=[np.zeros(4, fo.bfloat16)]), TypeError,
                    r"param_copies\[0\] has dtype bfloat16 but params\[0\] has dtype bfloat16")


@pytest.mark.parametrize("name", KINDS)
def test_class_step_with_a_bad_grad_dtype_changes_nothing(name, rng):
    params = [rng.standard_normal(6).astype(fo.bfloat16), rng.standard_normal(3).astype(F32)]
    opt = CLASSES[name](params, **CLASS_HP[name], state_dtype=fo.bfloat16)
    opt.step([rng.standard_normal(6).astype(fo.bfloat16), rng.standard_normal(3).astype(F16)])
    arrays = [*params, *(a for st in opt.state for a in st.values())]
    before = [a.tobytes() for a in arrays]
    for grads, match in (([np.ones(6, F16), np.ones(3, F16)],
                          r"grads\[0\] has dtype float16 but its param has dtype bfloat16"),
                         ([np.ones(6, fo.bfloat16), np.ones(3, F64)],
                          r"grads\[1\] has dtype float64 but its param has dtype float32")):
        with pytest.raises(TypeError, match=match):
            opt.step(grads)
    assert [a.tobytes() for a in arrays] == before
    assert opt.state_dict()["step"] == 1
    with pytest.raises(TypeError, match="state_dtype"):
        CLASSES[name]([np.ones(3, F16)], **CLASS_HP[name], state_dtype=np.float16)


# --- sgd_step's step= ------------------------------------------------------------------------


def test_sgd_step_keys_stochastic_rounding_with_step(rng):
    """sgd_step(step=t) draws the bits the SGD class draws at its t-th step; the default
    is step 1; other steps draw other bits."""
    x = (1 + np.abs(rng.standard_normal(5000)) * 8).astype(fo.bfloat16)
    g = np.full(5000, 1e-3, fo.bfloat16)
    cls_p = x.copy()
    opt = fo.optim.SGD([cls_p], lr=1.0, stochastic_rounding=True, seed=6)
    fn_p = x.copy()
    history = []
    for t in (1, 2, 3):
        opt.step([g])
        fo.sgd_step(fn_p, g, lr=1.0, stochastic_rounding=True, seed=6,
                    **({} if t == 1 else {"step": t}))
        assert_bitwise_equal(cls_p, fn_p)
        history.append(fn_p.copy())
    # from the same start, steps 1 and 2 round differently
    a, b = x.copy(), x.copy()
    fo.sgd_step(a, g, lr=1.0, stochastic_rounding=True, seed=6, step=1)
    fo.sgd_step(b, g, lr=1.0, stochastic_rounding=True, seed=6, step=2)
    assert not np.array_equal(a, b)
    # round to nearest does not depend on it
    c, d = x.copy(), x.copy()
    fo.sgd_step(c, g, lr=1.0, step=1)
    fo.sgd_step(d, g, lr=1.0, step=7)
    assert_bitwise_equal(c, d)


@pytest.mark.parametrize("step, exc", [(0, ValueError), (-3, ValueError), (1.0, TypeError),
                                       (True, TypeError)])
def test_sgd_step_rejects_a_bad_step(step, exc):
    p, g = np.ones(3, fo.bfloat16), np.ones(3, fo.bfloat16)
    assert_rejected(fo.sgd_step, (p, g), dict(lr=0.1, step=step), exc, "step")

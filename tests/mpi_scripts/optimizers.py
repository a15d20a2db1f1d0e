"""comm= and shard_state=True (ZeRO-1) on SGD/Adam/AdamW over N ranks (argv[1]).

A small NumPy MLP; each rank computes the gradient of the mean loss over its equal slice
of a global batch. Checked on every rank: data parallel equals one process on the whole
batch (5 steps), every rank holds bitwise the same params, ZeRO-1 equals data parallel,
ZeRO-1 state is 1/N per rank, the skip decision and clipping are global, state dicts
round-trip, and mismatched or rejected inputs raise on every rank.
"""

import numpy as np

import fusedops as fo
import fusedops.distributed as fod
from _common import done, identical_on_all_ranks, raises_everywhere, start

comm = start()
rank, size = comm.rank, comm.size
ROWS, STEPS = 12, 5  # 12 rows split evenly over 1, 2 or 3 ranks
SIZES = (5, 7, 3)


def init_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((SIZES[0], SIZES[1])) * 0.5).astype(dtype),
            (rng.standard_normal(SIZES[1]) * 0.1).astype(dtype),
            (rng.standard_normal((SIZES[1], SIZES[2])) * 0.5).astype(dtype),
            np.asarray(rng.standard_normal() * 0.1, dtype),  # a 0-d param
            (rng.standard_normal(SIZES[2]) * 0.1).astype(dtype)]


def batch(step, dtype):
    rng = np.random.default_rng(1000 + step)
    return (rng.standard_normal((ROWS, SIZES[0])).astype(dtype),
            rng.standard_normal((ROWS, SIZES[2])).astype(dtype))


def gradients(params, x, t, grads):
    """Grads of mean_rows 0.5 * ||tanh(x W1 + b1) W2 + c + b2 - t||^2 into ``grads``."""
    w1, b1, w2, c, b2 = params
    h = np.tanh(x @ w1 + b1)
    dy = (h @ w2 + c + b2 - t) / x.shape[0]
    dh = (dy @ w2.T) * (1 - h * h)
    for g, value in zip(grads, [x.T @ dh, dh.sum(0), h.T @ dy, dy.sum(), dy.sum(0)]):
        g[...] = value


def groups_of(params, two_groups):
    if not two_groups:
        return params
    return [{"params": [params[0], params[2]]},
            {"params": [params[1], params[3], params[4]], "weight_decay": 0.0, "lr": 0.02}]


def flat_order(params, two_groups):
    return [params[i] for i in ((0, 2, 1, 3, 4) if two_groups else range(5))]


CASES = [
    ("sgd", lambda ps, **kw: fo.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                          weight_decay=1e-2, **kw), False),
    ("adam", lambda ps, **kw: fo.optim.Adam(ps, lr=0.01, weight_decay=1e-3, **kw), True),
    ("adamw-clip", lambda ps, **kw: fo.optim.AdamW(ps, lr=0.01, amsgrad=True, max_grad_norm=0.05,
                                                   **kw), False),
    ("sgd-clip-groups", lambda ps, **kw: fo.optim.SGD(ps, lr=0.1, momentum=0.5, max_grad_norm=0.1,
                                                      **kw), True),
]


def train(make, two_groups, dtype, *, comm=None, shard_state=False, steps=STEPS, nan_at=None,
          flat=False):
    """Trains from the seeded init; with comm, on this rank's slice of each batch. With
    ``flat``, params and grads are views of flat_buffer()s (in the optimizer's order)."""
    params = init_params(dtype)
    if flat:
        order = (0, 2, 1, 3, 4) if two_groups else range(5)
        _, views = fod.flat_buffer([params[i].shape for i in order], dtype)
        for v, i in zip(views, order):
            v[...] = params[i]
            params[i] = v
    kwargs = {} if comm is None else dict(comm=comm, shard_state=shard_state)
    opt = make(groups_of(params, two_groups), **kwargs)
    ordered = flat_order(params, two_groups)
    grads = fod.flat_buffer([p.shape for p in ordered], dtype)[1] if flat else [np.empty_like(p) for p in ordered]
    applied = []
    for step in range(steps):
        x, t = batch(step, dtype)
        if comm is not None:
            rows = slice(rank * ROWS // size, (rank + 1) * ROWS // size)
            x, t = x[rows], t[rows]
        natural_grads = [np.empty_like(p) for p in params]
        gradients(params, x, t, natural_grads)
        order = (0, 2, 1, 3, 4) if two_groups else range(5)
        for g, i in zip(grads, order):
            g[...] = natural_grads[i]
        if nan_at == step and rank == size - 1:
            grads[1].reshape(-1)[0] = np.nan
        if step == 2:  # hyperparameter edits take effect at the next step
            for group in opt.param_groups:
                group["lr"] *= 0.5
        applied.append(opt.step(grads))
    return params, opt, applied, grads


for dtype, rtol in ((np.float64, 1e-9), (np.float32, 2e-4)):
    for name, make, two_groups in CASES:
        reference, ref_opt, _, _ = train(make, two_groups, dtype)
        dp, dp_opt, _, _ = train(make, two_groups, dtype, comm=comm)
        zero, zero_opt, _, _ = train(make, two_groups, dtype, comm=comm, shard_state=True)
        for a, b, c in zip(reference, dp, zero):
            np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol, err_msg=f"{name} data parallel")
            np.testing.assert_allclose(c, b, rtol=rtol, atol=rtol, err_msg=f"{name} ZeRO-1")
        assert identical_on_all_ranks(comm, dp), name
        assert identical_on_all_ranks(comm, zero), name

        # ZeRO-1 keeps 1/N of the state on each rank; gathered, it is the whole state.
        full = dp_opt.state_dict()
        full_bytes = sum(a.nbytes for entry in full["state"].values() for a in entry.values())
        shard = zero_opt.state_dict()
        shard_bytes = sum(a.nbytes for a in shard["state"].values())
        total_bytes = sum(comm.mpi.allgather(shard_bytes))
        # Each bucket is cut into N equal blocks: at most N - 1 padding elements per bucket.
        padding = len(shard["state"]) * np.dtype(dtype).itemsize * (size - 1) * len(zero_opt._dist.buckets)
        assert full_bytes <= total_bytes <= full_bytes + padding, (total_bytes, full_bytes)
        assert shard_bytes == total_bytes // size  # the same on every rank
        gathered = zero_opt.consolidated_state_dict(root=size - 1)
        assert (gathered is None) == (rank != size - 1)
        if gathered is not None:
            assert gathered["step"] == full["step"] == STEPS
            assert gathered["state"].keys() == full["state"].keys()
            for i, entry in full["state"].items():
                assert entry.keys() == gathered["state"][i].keys()
                for key, value in entry.items():
                    np.testing.assert_allclose(gathered["state"][i][key], value, rtol=rtol, atol=rtol)
        assert dp_opt.consolidated_state_dict()["step"] == STEPS if rank == 0 else True

        # Several buckets (each cutting through tensors), and params and grads in flat
        # buffers (collectives in place): the same results.
        for bucket_bytes, flat in ((40, False), (40, True), (fod.DEFAULT_BUCKET_BYTES, True)):
            saved, fod.DEFAULT_BUCKET_BYTES = fod.DEFAULT_BUCKET_BYTES, bucket_bytes
            try:
                for shard_state, expected in ((False, dp), (True, zero)):
                    run = train(make, two_groups, dtype, comm=comm, shard_state=shard_state, flat=flat)[0]
                    for a, b in zip(run, expected):
                        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol, err_msg=f"{name} {bucket_bytes}")
                    assert identical_on_all_ranks(comm, run), name
            finally:
                fod.DEFAULT_BUCKET_BYTES = saved
print(f"rank {rank}: equivalence done", flush=True)

# ------------------------------------------------------------ the optimizer family
FAMILY = [
    ("rmsprop", lambda ps, **kw: fo.optim.RMSprop(ps, lr=0.01, momentum=0.5, **kw), True),
    ("nadam", lambda ps, **kw: fo.optim.NAdam(ps, lr=0.01, **kw), True),
    ("lion", lambda ps, **kw: fo.optim.Lion(ps, lr=1e-3, max_grad_norm=0.05, **kw), True),
    ("lamb", lambda ps, **kw: fo.optim.LAMB(ps, lr=0.01, weight_decay=0.01, **kw), False),
]
for name, make, shardable in FAMILY:
    reference = train(make, False, np.float64)[0]
    for shard_state in (False, True) if shardable else (False,):
        run = train(make, False, np.float64, comm=comm, shard_state=shard_state)[0]
        for a, b in zip(run, reference):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=f"{name} {shard_state}")
        assert identical_on_all_ranks(comm, run), name
raises_everywhere(comm, lambda: fo.optim.LAMB(init_params(np.float32), comm=comm, shard_state=True),
                  ValueError, "shard_state=True is not supported")

# ------------------------------------------------------------ fewer elements than ranks
# (a rank with an empty shard) and bound grads: step() without arguments
runs = []
for shard_state in (False, True):
    tiny = [np.array(1.0), np.array([2.0])]
    bound = [np.array(float(rank)), np.array([1.0 + rank])]
    opt = fo.optim.Adam([{"params": tiny, "grads": bound}], lr=0.1, comm=comm, shard_state=shard_state)
    for _ in range(3):
        assert opt.step()
    runs.append(tiny)
    assert identical_on_all_ranks(comm, tiny)
plain = [np.array(1.0), np.array([2.0])]
single = fo.optim.Adam(plain, lr=0.1)
for _ in range(3):
    single.step([np.array((size - 1) / 2), np.array([1.0 + (size - 1) / 2])])
for tiny in runs:
    for a, b in zip(tiny, plain):
        np.testing.assert_allclose(a, b, rtol=1e-12)

# ------------------------------------------------------------ momentum switched on mid-run
# (the state appears at the next step: allocated for the shard only with shard_state)
runs = []
for kwargs in ({}, dict(comm=comm), dict(comm=comm, shard_state=True)):
    params = init_params(np.float64)
    opt = fo.optim.SGD(params, lr=0.05, **kwargs)
    for step in range(4):
        if step == 2:
            opt.param_groups[0]["momentum"] = 0.9
        x, t = batch(step, np.float64)
        if kwargs:
            x, t = x[rank * ROWS // size:(rank + 1) * ROWS // size], t[rank * ROWS // size:(rank + 1) * ROWS // size]
        grads = [np.empty_like(p) for p in params]
        gradients(params, x, t, grads)
        opt.step(grads)
    runs.append(params)
for run in runs[1:]:
    for a, b in zip(run, runs[0]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)

# ------------------------------------------------------------ the DP grads receive the average
params = init_params(np.float64)
opt = fo.optim.SGD(params, lr=0.1, comm=comm)
grads = [np.full_like(p, rank + 1.0) for p in params]
opt.step(grads)
assert all(np.all(g == (size + 1) / 2) for g in grads)

# ------------------------------------------------------------ a NaN on one rank
# Without skip_nonfinite it spreads the same way on every rank, sharded or not.
for name, make, two_groups in CASES:
    runs = [train(make, two_groups, np.float32, comm=comm, shard_state=s, nan_at=2)
            for s in (False, True)]
    for params, _, applied, _ in runs:
        assert applied == [True] * STEPS
        assert identical_on_all_ranks(comm, params)
        assert any(np.isnan(p).any() for p in params), name
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-4, equal_nan=True)
# With skip_nonfinite every rank skips that step.
for shard_state in (False, True):
    make = lambda ps, **kw: fo.optim.Adam(ps, lr=0.01, skip_nonfinite=True, max_grad_norm=1.0, **kw)
    nan_run, nan_opt, applied, _ = train(make, False, np.float32, comm=comm, shard_state=shard_state,
                                         nan_at=2)
    assert applied == [True, True, False, True, True], applied
    assert nan_opt.state_dict()["step"] == 4
    assert all(np.isfinite(p).all() for p in nan_run)
    assert identical_on_all_ranks(comm, nan_run)

# ------------------------------------------------------------ state_dict round trips (ZeRO-1)
for name, make, two_groups in CASES:
    params, opt, _, grads = train(make, two_groups, np.float64, comm=comm, shard_state=True, steps=3)
    saved_params = [p.copy() for p in params]
    shard = opt.state_dict()
    whole = opt.consolidated_state_dict(root=0)
    whole = comm.mpi.bcast(whole, root=0)
    opt.step(grads)
    expected = [p.copy() for p in params]
    for source in (shard, whole):
        restored = [p.copy() for p in saved_params]
        twin = make(groups_of(restored, two_groups), comm=comm, shard_state=True)
        twin.load_state_dict(source)
        twin.step(grads)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(restored, expected)), name
    if rank == 0:  # the consolidated state loads into a plain optimizer too
        plain = make(groups_of([p.copy() for p in saved_params], two_groups))
        plain.load_state_dict(whole)
    other = dict(shard, shard={**shard["shard"], "rank": (rank + 1) % size})
    raises_everywhere(comm, lambda: opt.load_state_dict(other), ValueError, "this rank's shard")

# ------------------------------------------------------------ mismatched ranks raise on every rank
params = init_params(np.float32)
mismatched = params + [np.zeros(2, np.float32)] if rank == 1 else params
for shard_state in (False, True):
    message = raises_everywhere(comm, lambda: fo.optim.Adam(mismatched, comm=comm, shard_state=shard_state),
                                ValueError, "the ranks' params disagree")
    assert "rank 0 has 5 params, rank 1 has 6" in message, message
reshaped = [params[0].reshape(7, 5)] + params[1:] if rank == size - 1 else params
message = raises_everywhere(comm, lambda: fo.optim.SGD(reshaped, lr=0.1, comm=comm), ValueError,
                            "param 0: rank 0 has shape (5, 7)")
bad_lr = -1.0 if rank == 1 else 0.1
message = raises_everywhere(comm, lambda: fo.optim.SGD(params, lr=bad_lr, comm=comm), ValueError, "lr")
if rank != 1:
    assert "rank 1 rejected its arguments" in message

# ------------------------------------------------------------ a step rejected on one rank
for shard_state in (False, True):
    params = init_params(np.float32)
    opt = fo.optim.Adam(params, lr=0.1, comm=comm, shard_state=shard_state)
    grads = [np.ones_like(p) for p in params]
    before = [p.copy() for p in params]
    bad = grads[:2] + [np.ones((7, 2), np.float32)] + grads[3:] if rank == size - 1 else grads
    message = raises_everywhere(comm, lambda: opt.step(bad), ValueError, "shape")
    if rank != size - 1:
        assert f"rank {size - 1} rejected its input" in message, message
    raises_everywhere(comm, lambda: opt.step(grads, grad_scale=0.0), ValueError, "grad_scale")
    opt.param_groups[0]["lr"] = -1.0 if rank == 0 else 0.1
    raises_everywhere(comm, lambda: opt.step(grads), ValueError, "lr")
    opt.param_groups[0]["lr"] = 0.1
    assert all(np.array_equal(p, b) for p, b in zip(params, before))
    assert all(np.all(g == 1) for g in grads)
    assert opt.step(grads)  # the ranks are still in step
    assert opt.state_dict()["step"] == 1
    assert identical_on_all_ranks(comm, params)
    if shard_state:
        raises_everywhere(comm, lambda: opt.add_param_group({"params": [np.zeros(3, np.float32)]}),
                          ValueError, "shard_state=True")
done(comm, "optimizers")

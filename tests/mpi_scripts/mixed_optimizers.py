"""16-bit grads (and params) with comm= and shard_state=True on N ranks (argv[1]).

Each rank has its own grads; the reference is one process stepping with the average the
wire computes (per element: the ranks' 16-bit values summed in float32 in rank order,
divided by N in float32, rounded once to nearest even). Checked on every rank: data
parallel and ZeRO-1 equal that reference bitwise (params, and the gathered state with
its float32 masters), stochastic rounding included; every rank holds the same bits; bad
inputs raise on every rank and change nothing.
"""

import numpy as np

import fusedops as fo
import fusedops.distributed as fod
from _common import done, identical_on_all_ranks, raises_everywhere, start

comm = start()
rank, size = comm.rank, comm.size
BF16, F16 = np.dtype(fo.bfloat16), np.dtype(np.float16)
SHAPES = [(7, 5), (5,), (), (1,), (17,), (4, 33)]  # vector tails, a 0-d param, uneven shards
STEPS = 4


def init_params(dtype):
    rng = np.random.default_rng(0)
    return [np.asarray(rng.standard_normal(s), dtype) for s in SHAPES]


def rank_grads(r, step, dtype, scale=1.0):
    rng = np.random.default_rng(1000 * step + r)
    return [np.asarray(np.clip(rng.standard_normal(s) * scale, -65000, 65000), dtype) for s in SHAPES]


def wire_mean(step, dtype, scale=1.0):
    """The documented average of every rank's 16-bit grads."""
    grads = []
    for i in range(len(SHAPES)):
        total = rank_grads(0, step, dtype, scale)[i].astype(np.float32)
        for r in range(1, size):
            total = total + rank_grads(r, step, dtype, scale)[i].astype(np.float32)
        grads.append(np.asarray((total.astype(np.float64) / size).astype(np.float32), dtype))
    return grads


def run(make, param_dtype, grad_dtype, *, comm=None, shard_state=False, scale=1.0, bucket=None):
    params = init_params(param_dtype)
    saved = fod.DEFAULT_BUCKET_BYTES
    if bucket is not None:
        fod.DEFAULT_BUCKET_BYTES = bucket
    try:
        opt = make(params) if comm is None else make(params, comm=comm, shard_state=shard_state)
    finally:
        fod.DEFAULT_BUCKET_BYTES = saved
    for step in range(STEPS):
        if comm is None:
            grads = wire_mean(step, grad_dtype, scale)
        else:
            grads = rank_grads(rank, step, grad_dtype, scale)
        assert opt.step(grads)
        if comm is not None and not shard_state:  # the grads received the wire's average
            assert all(g.tobytes() == e.tobytes() for g, e in zip(grads, wire_mean(step, grad_dtype, scale)))
    return params, opt


def whole_state(opt):
    sd = opt.consolidated_state_dict(root=0)
    return comm.mpi.bcast(sd, root=0)


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


CASES = [
    # (name, make, param dtype, grad dtype)
    ("adamw f32 params bf16 grads", lambda ps, **kw: fo.optim.AdamW(ps, lr=0.01, **kw), np.float32, BF16),
    ("sgd f32 params f16 grads", lambda ps, **kw: fo.optim.SGD(ps, lr=0.1, momentum=0.9, **kw), np.float32, F16),
    ("adam f32 params bf16 grads bf16 state",
     lambda ps, **kw: fo.optim.Adam(ps, lr=0.01, state_dtype=fo.bfloat16, stochastic_rounding=True, seed=3, **kw),
     np.float32, BF16),
    ("adamw bf16 all", lambda ps, **kw: fo.optim.AdamW(ps, lr=0.01, **kw), BF16, BF16),
    ("adamw bf16 all, bf16 state, stochastic",
     lambda ps, **kw: fo.optim.AdamW(ps, lr=0.01, state_dtype=fo.bfloat16, stochastic_rounding=True, seed=7, **kw),
     BF16, BF16),
    ("sgd bf16 masters stochastic",
     lambda ps, **kw: fo.optim.SGD(ps, lr=0.05, momentum=0.5, master_weights=True, stochastic_rounding=True,
                                   seed=11, **kw), BF16, BF16),
    ("adam bf16 remainder stochastic",
     lambda ps, **kw: fo.optim.Adam(ps, lr=0.01, master_weights="remainder", stochastic_rounding=True, **kw),
     BF16, BF16),
    ("adamw f16 masters", lambda ps, **kw: fo.optim.AdamW(ps, lr=0.01, master_weights=True, **kw), F16, F16),
    ("sgd f16 all", lambda ps, **kw: fo.optim.SGD(ps, lr=1e-6, **kw), F16, F16),
]

for name, make, pdt, gdt in CASES:
    reference, ref_opt = run(make, pdt, gdt)
    ref_state = ref_opt.state_dict()
    for shard_state in (False, True):
        for bucket in (None, 40):  # one bucket; many, cutting through tensors
            params, opt = run(make, pdt, gdt, comm=comm, shard_state=shard_state, bucket=bucket)
            label = f"{name} shard_state={shard_state} bucket={bucket}"
            assert all(same_bits(a, b) for a, b in zip(params, reference)), label
            assert identical_on_all_ranks(comm, params), label
            state = whole_state(opt)
            assert state["state"].keys() == ref_state["state"].keys(), label
            for i, entry in ref_state["state"].items():
                assert entry.keys() == state["state"][i].keys(), label
                for key, value in entry.items():
                    assert same_bits(state["state"][i][key], value), (label, i, key)
            if shard_state:  # 1/N of the state per rank (masters included), gathered it is all
                shard = opt.state_dict()["state"]
                whole_bytes = sum(v.nbytes for e in ref_state["state"].values() for v in e.values())
                mine = sum(v.nbytes for v in shard.values())
                assert mine * size >= whole_bytes and mine * size <= whole_bytes + 64 * len(shard) * size, label
print(f"rank {rank}: equivalence done", flush=True)

# ------------------------------------------------------------ stochastic rounding is keyed
# on each param's own element index: a different seed changes the bits (the test can fail)
a = run(CASES[4][1], BF16, BF16, comm=comm, shard_state=True)[0]
b = run(lambda ps, **kw: fo.optim.AdamW(ps, lr=0.01, state_dtype=fo.bfloat16, stochastic_rounding=True,
                                        seed=8, **kw), BF16, BF16, comm=comm, shard_state=True)[0]
assert any(not same_bits(x, y) for x, y in zip(a, b))

# ------------------------------------------------------------ float16: sums past 65504
big, _ = run(lambda ps, **kw: fo.optim.SGD(ps, lr=1e-9, **kw), np.float32, F16, comm=comm, scale=4e4)
ref, _ = run(lambda ps, **kw: fo.optim.SGD(ps, lr=1e-9, **kw), np.float32, F16, scale=4e4)
assert all(same_bits(x, y) for x, y in zip(big, ref))
sums = [sum(rank_grads(r, 0, F16, 4e4)[i].astype(np.float32) for r in range(size)) for i in range(len(SHAPES))]
assert max(np.abs(x).max() for x in sums) > 65504  # the 16-bit sum would overflow
assert all(np.isfinite(g.astype(np.float32)).all() for s in range(STEPS) for g in wire_mean(s, F16, 4e4))

# ------------------------------------------------------------ clipping with 16-bit grads:
# the global norm over the shards agrees with the unsharded step up to rounding
clip = lambda ps, **kw: fo.optim.AdamW(ps, lr=0.01, max_grad_norm=0.5, **kw)  # noqa: E731
reference = run(clip, np.float32, BF16)[0]
for shard_state in (False, True):
    params = run(clip, np.float32, BF16, comm=comm, shard_state=shard_state)[0]
    for x, y in zip(params, reference):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    assert identical_on_all_ranks(comm, params)

# ------------------------------------------------------------ a NaN in one rank's 16-bit grads
# skip_nonfinite: every rank skips that step; without it, the NaN spreads the same way
for shard_state in (False, True):
    for skip in (True, False):
        params = init_params(np.float32)
        opt = fo.optim.AdamW(params, lr=0.01, skip_nonfinite=skip, max_grad_norm=1.0, comm=comm,
                             shard_state=shard_state)
        applied = []
        for step in range(3):
            grads = rank_grads(rank, step, BF16)
            if step == 1 and rank == size - 1:
                grads[4][3] = np.nan
            applied.append(opt.step(grads))
        assert applied == ([True, False, True] if skip else [True] * 3), applied
        assert all(np.isfinite(p).all() for p in params) == skip
        assert identical_on_all_ranks(comm, params)

# ------------------------------------------------------------ bad inputs, on every rank
for shard_state in (False, True):
    params = init_params(np.float32)
    opt = fo.optim.Adam(params, lr=0.1, comm=comm, shard_state=shard_state)
    before = [p.copy() for p in params]
    ints = [np.ones(s, np.int32) for s in SHAPES]
    raises_everywhere(comm, lambda: opt.step(ints), TypeError, "grads[0] has dtype int32")
    f64 = [np.ones(s, np.float64) for s in SHAPES]
    raises_everywhere(comm, lambda: opt.step(f64), TypeError, "grads[0] has dtype float64")
    # One rank sends float16 grads where the others send bfloat16: no collective runs.
    odd = rank_grads(rank, 0, F16 if rank == size - 1 else BF16)
    kept = [g.copy() for g in odd]
    raises_everywhere(comm, lambda: opt.step(odd), ValueError, "disagree")
    assert all(same_bits(g, k) for g, k in zip(odd, kept))
    mixed = rank_grads(rank, 0, BF16)
    mixed[1] = mixed[1].astype(np.float32)
    if shard_state:
        raises_everywhere(comm, lambda: opt.step(mixed), TypeError, "share one dtype")
    assert all(same_bits(p, b) for p, b in zip(params, before))
    assert opt.step(rank_grads(rank, 0, BF16))  # still in step
    assert identical_on_all_ranks(comm, params)

    half = init_params(BF16)
    opt = fo.optim.SGD(half, lr=0.1, comm=comm, shard_state=shard_state)
    raises_everywhere(comm, lambda: opt.step(rank_grads(rank, 0, np.float32)), TypeError,
                      "grads[0] has dtype float32, its param has bfloat16")
    raises_everywhere(comm, lambda: opt.step(rank_grads(rank, 0, F16)), TypeError,
                      "grads[0] has dtype float16, its param has bfloat16")
    assert all(same_bits(p, b) for p, b in zip(half, init_params(BF16)))
# Ranks whose mixed-precision options differ would diverge: rejected at construction.
for shard_state in (False, True):
    seed = 1 if rank == size - 1 else 0
    message = raises_everywhere(comm, lambda: fo.optim.AdamW(init_params(BF16), stochastic_rounding=True, seed=seed,
                                                             comm=comm, shard_state=shard_state),
                                ValueError, "the ranks' params disagree: mixed-precision options")
    assert f"rank {size - 1} has (None, False, True, 1)" in message, message
raises_everywhere(comm, lambda: fo.optim.SGD([np.zeros(3, np.float32), np.zeros(2, BF16)], lr=0.1, comm=comm,
                                             shard_state=True), TypeError, "params of one dtype")
done(comm, "mixed optimizers")

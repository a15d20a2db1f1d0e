"""fusedops.distributed: the collectives and the comm=/shard_state= optimizers.

The multi-rank tests launch the scripts in tests/mpi_scripts/ under ``mpiexec -n 2`` and
``-n 3`` (uneven shards) and assert on their output; each script checks its results on
every rank against a single-process reference and prints "rank r: <name> ok" at the end.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusedops as fo
import fusedops.distributed as fod
from checks import assert_bitwise_equal, assert_rejected, misaligned, read_only
from fusedops import _core

SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"
TIMEOUT = 180  # seconds per launch; a hang fails the test instead of stalling the suite


def find_mpiexec():
    """mpiexec of this environment: beside the interpreter (a venv with the mpich wheel),
    beside the interpreter the venv was made from, then PATH."""
    for directory in (Path(sys.executable).parent, Path(os.path.realpath(sys.executable)).parent,
                      Path(sys.base_prefix) / "bin"):
        candidate = directory / "mpiexec"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("mpiexec")


def mpi_environment():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"       # ranks share the cores
    env["HYDRA_LAUNCHER"] = "fork"     # MPICH: local processes only, never ssh
    env.pop("PMI_RANK", None)          # not a rank of an outer MPI job
    env.pop("PMI_SIZE", None)
    return env


def run_script(name, ranks, *args):
    """Runs tests/mpi_scripts/<name> on ``ranks`` ranks (0: plain python, no mpiexec);
    returns its stdout after checking that it exited cleanly."""
    script = [sys.executable, str(SCRIPTS / name), str(max(ranks, 1)), *args]
    if ranks:
        pytest.importorskip("mpi4py", reason="fusedops.distributed needs mpi4py (pip install '.[dist]')")
        mpiexec = find_mpiexec()
        if mpiexec is None:
            pytest.skip("mpiexec not found (pip install '.[dist]' installs MPICH's)")
        command = [mpiexec, "-n", str(ranks), *script]
    else:
        command = script
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT,
                              cwd=SCRIPTS, env=mpi_environment())
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(command)} timed out after {TIMEOUT} s\n{e.stdout}\n{e.stderr}")
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def assert_all_ranks_ok(output, name, ranks):
    # mpiexec forwards each rank's output in chunks: lines of different ranks may run together
    reported = re.findall(rf"rank (\d+): {re.escape(name)} ok", output)
    assert sorted(map(int, reported)) == list(range(ranks)), output


# ---------------------------------------------------------------- multi-rank

@pytest.mark.parametrize("ranks", [2, 3])
def test_collectives(ranks):
    assert_all_ranks_ok(run_script("collectives.py", ranks), "collectives", ranks)


@pytest.mark.parametrize("ranks", [2, 3])
def test_optimizers(ranks):
    """comm= and shard_state=True on SGD/Adam/AdamW: equal to one process on the whole
    batch, bitwise identical params on every rank, ZeRO-1 state 1/N per rank, global skip
    and clipping, state dicts, and errors raised on every rank."""
    assert_all_ranks_ok(run_script("optimizers.py", ranks), "optimizers", ranks)


@pytest.mark.parametrize("ranks", [2, 3])
def test_sixteen_bit_grads_on_the_wire(ranks):
    """bfloat16/float16 grads with comm= and shard_state=True (float32 params with 16-bit
    grads, all-16-bit params, bfloat16 state, float32 masters and remainders, stochastic
    rounding): bitwise the single-process step on the wire's average, on every rank;
    float16 sums past 65504; bad inputs raise on every rank and change nothing."""
    assert_all_ranks_ok(run_script("mixed_optimizers.py", ranks), "mixed optimizers", ranks)


@pytest.mark.parametrize("ranks", [2, 3])
def test_sync_batch_norm(ranks):
    """fo.nn.BatchNorm(..., comm=) over ranks with uneven batches (0 and 1 rows included)
    equals batch norm over the concatenated batch; errors raise on every rank."""
    assert_all_ranks_ok(run_script("sync_batch_norm.py", ranks), "sync batch norm", ranks)


# ---------------------------------------------------------------- one rank, no MPI

def test_one_rank_without_mpiexec():
    pytest.importorskip("mpi4py")
    assert_all_ranks_ok(run_script("one_rank.py", 0), "one rank", 1)


def test_one_rank_without_mpi4py():
    assert_all_ranks_ok(run_script("one_rank.py", 0, "--block-mpi4py"), "one rank", 1)


def test_flat_buffer():
    flat, views = fod.flat_buffer([(2, 3), 4, (), (0, 5)], np.float64)
    assert flat.shape == (11,) and flat.dtype == np.float64 and not flat.any()
    assert [v.shape for v in views] == [(2, 3), (4,), (), (0, 5)]
    for i, v in enumerate(views):
        v[...] = i + 1
    np.testing.assert_array_equal(flat, [1] * 6 + [2] * 4 + [3])
    with pytest.raises(ValueError, match=r"shapes\[1\] has a negative dimension"):
        fod.flat_buffer([(2,), (3, -1)])


@pytest.mark.parametrize("blocks", [1, 2, 3])
@pytest.mark.parametrize("bucket_bytes", [4, 40, 1 << 12, 25 << 20])
def test_bucket_plan_covers_every_element_once(blocks, bucket_bytes):
    """Buckets take the arrays' elements in order, each once; in-place buckets are slices
    of one array a multiple of the block count long; the blocks of the ranks partition
    every bucket."""
    sizes = [0, 1, 5, 17, 1000, 0, 3, 300_000, 2, 262_144, 262_145, 7]
    buckets = fod.plan_buckets(sizes, 4, bucket_bytes, blocks)
    per_bucket = max(blocks, bucket_bytes // 4 // blocks * blocks)
    covered = [(i, lo, n) for b in buckets for i, lo, n in b.pieces]
    expected, flat = [], [(i, k) for i, size in enumerate(sizes) for k in range(size)]
    for i, lo, n in covered:
        expected.extend((i, k) for k in range(lo, lo + n))
    assert expected == flat
    for b in buckets:
        assert 0 < b.length <= per_bucket and b.block == -(-b.length // blocks)
        if b.in_place:
            assert len(b.pieces) == 1 and b.length % blocks == 0
        parts = sorted((i, lo, n) for r in range(blocks) for i, lo, n, _ in b.block_pieces(r))
        assert sum(n for _, _, n in parts) == b.length
        for r in range(blocks):
            positions = [pos for _, _, _, pos in b.block_pieces(r)]
            assert positions == sorted(positions) and all(0 <= p < b.block for p in positions)
    in_place = {b.pieces[0][0] for b in buckets if b.in_place}
    if bucket_bytes >= 1 << 20:  # only the arrays of 1 MiB or more
        assert in_place == {7, 9, 10}
    else:  # any array of a bucket or more
        assert in_place == {i for i, size in enumerate(sizes) if size >= per_bucket}


def test_flat_buffer_views_are_one_span():
    """Views of a flat_buffer, in order, are recognized as one buffer (collectives run in
    it without copies); anything else is not."""
    flat, views = fod.flat_buffer([(2, 2), 3, (1, 2)], np.float32)

    def span(arrays):
        flats = [a.reshape(-1) for a in arrays]
        return fod._contiguous_span(flats, sum(f.size for f in flats))

    whole = span(views)
    assert whole is not None and whole.size == flat.size and np.shares_memory(whole, flat)
    assert span(views[::-1]) is None                 # not in memory order
    assert span([views[0], views[2]]) is None        # a gap
    assert span([np.zeros(3), np.zeros(3)]) is None  # two buffers


def test_optimizer_arguments_without_mpi():
    p = [np.zeros(3, np.float32)]
    with pytest.raises(ValueError, match="shard_state=True needs comm="):
        fo.optim.Adam(p, shard_state=True)
    with pytest.raises(TypeError, match="comm must be"):
        fo.optim.SGD(p, lr=0.1, comm="world")
    with pytest.raises(TypeError, match="shard_state must be a bool"):
        fo.optim.AdamW(p, comm=fod.Communicator(), shard_state=1)


@pytest.mark.parametrize("shard_state", [False, True])
def test_one_rank_communicator_is_a_plain_optimizer(rng, shard_state):
    """comm= with one rank (no MPI at all here) changes nothing: bitwise the plain run."""
    params = [rng.standard_normal(s).astype(np.float32) for s in [(4, 3), (3,), ()]]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params] for _ in range(3)]
    runs = []
    for comm in (None, fod.Communicator()):
        ps = [p.copy() for p in params]
        kwargs = {} if comm is None else dict(comm=comm, shard_state=shard_state)
        opt = fo.optim.AdamW(ps, lr=0.01, max_grad_norm=0.5, **kwargs)
        for g in grads:
            assert opt.step([x.copy() for x in g])
        runs.append((ps, opt.state_dict(), opt.consolidated_state_dict()))
    for a, b in zip(runs[0][0], runs[1][0]):
        assert_bitwise_equal(a, b)
    assert runs[1][1]["step"] == 3 and runs[1][2]["step"] == 3
    for i, entry in runs[0][1]["state"].items():
        for key, value in entry.items():
            assert_bitwise_equal(value, runs[1][1]["state"][i][key])


def test_batch_norm_with_one_rank_is_plain(rng):
    x = rng.standard_normal((6, 3, 4)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    plain, synced = fo.nn.BatchNorm(3), fo.nn.BatchNorm(3, comm=fod.Communicator())
    assert synced.comm is None
    for layer in (plain, synced):
        layer.forward(x)
        layer.backward(dy)
    for a, b in zip([plain.running_mean, plain.running_var, plain.grad_weight],
                    [synced.running_mean, synced.running_var, synced.grad_weight]):
        assert_bitwise_equal(a, b)
    with pytest.raises(TypeError, match="comm must be"):
        fo.nn.BatchNorm(3, comm=1)


# ---------------------------------------------------------------- the 16-bit wire kernel

HALF = [fo.bfloat16, np.float16]


def mean_of_rows_reference(rows):
    """The documented average of 16-bit values: summed in float32 in row order, divided by
    the row count (one correctly rounded float32 division: float64 then float32 is), then
    rounded to nearest even into the 16-bit dtype (ml_dtypes' and NumPy's casts)."""
    total = rows[0].astype(np.float32)
    for row in rows[1:]:
        total = total + row.astype(np.float32)
    mean = (total.astype(np.float64) / rows.shape[0]).astype(np.float32)
    return mean.astype(rows.dtype)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 1023, 1025, 100_003])
@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_mean_of_rows_is_the_float32_mean_rounded_once(isa, rng, dtype, n, ranks):
    # float16: sums beyond its range (65504); bfloat16: a wide spread of magnitudes.
    values = rng.standard_normal((ranks, n)) * (3e4 if dtype == np.float16 else 1.0)
    if dtype != np.float16:
        values *= 10.0 ** rng.integers(-30, 30, values.shape)
    rows = np.clip(values, -65000, 65000).astype(dtype) if dtype == np.float16 else values.astype(dtype)
    # Ties of the final rounding, subnormals and values that cancel.
    if n >= 17:
        rows[:, :4] = np.array([1.0, 1.0 + 2.0**-7, 2.0**-130, -3.0], np.float32).astype(dtype)
        rows[0, 5] = -rows[-1, 5] if ranks > 1 else rows[0, 5]
    out = np.full(n, 7.0, dtype)
    _core._mean_of_rows(rows, out)
    assert_bitwise_equal(out, mean_of_rows_reference(rows))


def test_mean_of_rows_float16_overflow_only_in_the_result(isa):
    """float16: sums beyond 65504 stay finite (float32) when the mean is in range."""
    rows = np.array([[6e4, -6e4, 6e4, 1.0], [6e4, -6e4, -6e4, 2.0], [6e4, -6e4, 3e4, 3.0]], np.float16)
    out = np.empty(4, np.float16)
    _core._mean_of_rows(rows, out)
    np.testing.assert_array_equal(out, np.array([60000, -60000, 10000, 2.0], np.float16))


@pytest.mark.parametrize("dtype", HALF)
def test_mean_of_rows_nonfinite(isa, dtype):
    rows = np.array([[np.inf, np.nan, 1.0, np.inf], [1.0, 1.0, -np.inf, -np.inf]], dtype)
    out = np.empty(4, dtype)
    _core._mean_of_rows(rows, out)
    values = out.astype(np.float32)
    assert values[0] == np.inf and values[2] == -np.inf and np.isnan(values[[1, 3]]).all()


def test_mean_of_rows_thread_count_independent(threads, rng):
    rows = (rng.standard_normal((3, 300_001))).astype(fo.bfloat16)
    results = []
    for count in (1, 2):
        fo.set_num_threads(count)
        out = np.empty(rows.shape[1], rows.dtype)
        _core._mean_of_rows(rows, out)
        results.append(out)
    assert_bitwise_equal(results[0], results[1])


def test_mean_of_rows_takes_a_list_of_rows_and_writes_into_one(rng):
    """Rows as a list of 1-D arrays (any memory), and out being one of them (the rank's
    own block of the bucket): the same bits as the 2-D form."""
    rows = rng.standard_normal((3, 1001)).astype(fo.bfloat16)
    expected = mean_of_rows_reference(rows)
    listed = [rows[0].copy(), rows[1].copy(), rows[2].copy()]
    out = np.empty(1001, fo.bfloat16)
    _core._mean_of_rows(listed, out)
    assert_bitwise_equal(out, expected)
    _core._mean_of_rows(listed, listed[1])  # in place into the middle row
    assert_bitwise_equal(listed[1], expected)


def test_mean_of_rows_rejects_bad_input():
    bf = fo.bfloat16
    rows, out = np.ones((2, 5), bf), np.zeros(5, bf)
    cases = [
        ((rows.astype(np.float32), np.zeros(5, np.float32)), TypeError, "out has dtype float32; expected bfloat16 or float16"),
        ((np.ones((2, 5), np.int16), out), TypeError, "rows has dtype int16"),
        ((rows, np.zeros(5, np.float16)), TypeError, "rows has dtype bfloat16 but out has dtype float16"),
        (([np.ones(5, bf), np.ones(5, np.float16)], out), TypeError, "rows[1] has dtype float16 but out"),
        ((rows, np.zeros(4, bf)), ValueError, "rows must have shape (ranks, 4)"),
        ((np.ones(5, bf), out), ValueError, "rows must have shape (ranks, 5)"),
        (([np.ones(5, bf), np.ones(4, bf)], out), ValueError, "rows[1] must have shape (5,) as out"),
        ((np.ones((0, 5), bf), out), ValueError, "at least one row"),
        (([], out), ValueError, "at least one row"),
        ((rows, np.zeros((1, 5), bf)), ValueError, "out must be 1-D"),
        ((rows, read_only(out)), ValueError, "out"),
        ((rows, misaligned(5, bf)), ValueError, "out"),
        ((rows[:, ::2], np.zeros(3, bf)), ValueError, "rows"),
        ((rows, [out]), TypeError, "out must be a numpy.ndarray"),
        ((rows.tolist(), out), TypeError, "rows"),
    ]
    for args, exc, match in cases:
        assert_rejected(_core._mean_of_rows, args, {}, exc, re.escape(match))
    buf = np.ones(15, bf)
    assert_rejected(_core._mean_of_rows, (buf[:10].reshape(2, 5), buf[3:8]), {}, ValueError,
                    "out overlaps rows without being it")
    assert_rejected(_core._mean_of_rows, ([buf[:5], buf[5:10]], buf[7:12]), {}, ValueError,
                    re.escape("out overlaps rows[1] without being it"))


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_plan_origins_round_pieces_as_the_whole_tensor(isa, rng, kind):
    """A plan over pieces of tensors, each given its (tensor, offset) origin, writes with
    stochastic rounding bitwise what the plan over the whole tensors writes (a ZeRO-1
    shard rounds as the unsharded step); without the origins it does not."""
    sizes = [40_000, 17, 1]
    params = [(rng.standard_normal(n)).astype(fo.bfloat16) for n in sizes]
    grads = [(rng.standard_normal(n)).astype(fo.bfloat16) for n in sizes]
    cuts = [(0, 0, 15), (0, 15, 30_000), (0, 30_015, 9_985), (1, 0, 17), (2, 0, 1)]
    names = ("momentum_buffer",) if kind == "sgd" else ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

    def run(pieces, origins):
        ps = [p.copy() for p in params]
        views = [ps[i][lo:lo + n] for i, lo, n in pieces]
        states = [np.zeros(v.shape, fo.bfloat16) for _ in names[:2] for v in views]
        columns = [states[k * len(views):(k + 1) * len(views)] for k in range(len(names[:2]))]
        columns += [[None] * len(views)] * (len(names) - len(columns))
        plan = _core._OptimizerPlan(kind, views, [0] * len(views), columns, None, None, True, 5, origins)
        gs = [grads[i][lo:lo + n] for i, lo, n in pieces]
        for step in (1, 2):
            if kind == "sgd":
                plan.step_sgd(gs, [(0.1, 0.9, 0.0, 0.0, 0.0, False, False, step == 1)], 1.0, None, False, step)
            else:
                plan.step_adam(gs, [(0.01, 0.9, 0.999, 1e-8, 0.0, 0.0, False, False)], step, True, 1.0, None, False)
        return ps

    whole = run([(i, 0, n) for i, n in enumerate(sizes)], None)
    pieces = run(cuts, [(i, lo) for i, lo, _ in cuts])
    unkeyed = run(cuts, None)
    for a, b in zip(whole, pieces):
        assert_bitwise_equal(a, b)
    assert any(a.tobytes() != b.tobytes() for a, b in zip(whole, unkeyed))
    view = np.zeros(4, fo.bfloat16)
    with pytest.raises(ValueError, match=r"origins\[0\] crosses a multiple of 2\*\*32"):
        _core._OptimizerPlan("sgd", [view], [0], [[None]], None, None, True, 0, [(0, 2**32 - 2)])
    with pytest.raises(ValueError, match="one \\(tensor, offset\\) pair per param"):
        _core._OptimizerPlan("sgd", [view], [0], [[None]], None, None, True, 0, [])


# ---------------------------------------------------------------- bench/dist.py, bench/dist_model.py

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_dist_benchmark_runs_and_checks_its_results():
    """bench/dist.py on a small model of GPT-2's structure, 1 and 2 ranks (it asserts that
    the ranks' averages and params agree)."""
    pytest.importorskip("mpi4py")
    if find_mpiexec() is None:
        pytest.skip("mpiexec not found (pip install '.[dist]' installs MPICH's)")
    done = subprocess.run([sys.executable, str(BENCH / "dist.py"), "--ranks", "1", "2", "--tiny",
                           "--repeats", "1"], capture_output=True, text=True, timeout=TIMEOUT,
                          env=mpi_environment())
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "28 float32 tensors, 2,696 values" in out, out  # 936 + 2 * 872 + 16
    for ranks in (1, 2):
        assert re.search(rf"^\s+{ranks}  ZeRO-1 step\s+\d", out, re.M), out
    assert re.search(r"^2 ranks: averaging / raw Allreduce = \d", out, re.M), out
    assert re.search(r"^2 ranks: bf16 grads on the wire: float32 time / bf16 time = \d", out, re.M), out
    assert re.search(r"^\s+2  allreduce_mean_ bf16 \(flat_buffer views\)\s+\d", out, re.M), out


def test_gpt2_small_parameter_list():
    sys.path.insert(0, str(BENCH))
    try:
        import dist
        import dist_model
    finally:
        sys.path.remove(str(BENCH))
    shapes = dist.gpt2_small_shapes()
    assert len(shapes) == 148
    assert sum(int(np.prod(s)) for s in shapes) == dist_model.GPT2_SMALL == 124_439_808
    # The model's formulas (ZeRO paper, table 1; ring allreduce).
    assert dist_model.wire_bytes(1000, 4) == 2 * 3 / 4 * 4000
    assert dist_model.memory_per_param(8, mixed=False, zero=True) == 9.0
    assert dist_model.memory_per_param(4, mixed=True, zero=True) == 7.0
    assert dist_model.memory_per_param(4, mixed=True, zero=False) == 16.0
    seconds = dist_model.step_seconds(0.2, 2 * dist_model.GPT2_SMALL, 8, 100, zero=True)
    assert seconds == pytest.approx(0.4 / 8 + dist_model.wire_bytes(2 * dist_model.GPT2_SMALL, 8) * 8 / 1e11
                                    + 14 * dist_model.LATENCY_S)


def test_readme_example_runs_on_two_ranks(tmp_path):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("## Data parallel over MPI", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    script = tmp_path / "readme_dist.py"
    script.write_text(code + "\nassert np.all(grads[0] == (comm.size - 1) / 2)\n"
                      "assert all(np.allclose(p, q, rtol=1e-6) for p, q in zip(opt.param_groups[0]['params'],"
                      " zero.param_groups[0]['params']))\n"
                      "print(f'rank {comm.rank}: readme ok', flush=True)\n")
    pytest.importorskip("mpi4py")
    mpiexec = find_mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (pip install '.[dist]' installs MPICH's)")
    done = subprocess.run([mpiexec, "-n", "2", sys.executable, str(script)], capture_output=True,
                          text=True, timeout=TIMEOUT, env=mpi_environment())
    assert done.returncode == 0, done.stdout + done.stderr
    assert_all_ranks_ok(done.stdout, "readme", 2)


# ---------------------------------------------------------------- the MLP example

def _example_run(ranks, *args):
    example = Path(__file__).resolve().parents[1] / "examples" / "train_mlp_digits.py"
    command = [sys.executable, str(example), "--epochs", "3", "--hidden", "64", "64", *args]
    if ranks:
        command = [find_mpiexec(), "-n", str(ranks), *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT,
                          env=mpi_environment())
    assert done.returncode == 0, done.stdout + done.stderr
    losses = [float(x) for x in re.findall(r"^epoch +\d+ +loss (\S+)", done.stdout, re.M)]
    accuracy = float(re.search(r"^test accuracy: (\S+)", done.stdout, re.M).group(1))
    return losses, accuracy


@pytest.mark.parametrize("shard_state", [False, True], ids=["data-parallel", "zero1"])
def test_mlp_example_distributed_follows_the_single_process_run(shard_state):
    """Two ranks, each on half of every batch, with SyncBatchNorm and grads averaged in
    the step, train the same model as one process on the whole batches (up to rounding)."""
    pytest.importorskip("sklearn")
    pytest.importorskip("mpi4py")
    if find_mpiexec() is None:
        pytest.skip("mpiexec not found (pip install '.[dist]' installs MPICH's)")
    single_losses, single_accuracy = _example_run(0)
    losses, accuracy = _example_run(2, "--distributed", *(["--shard-state"] if shard_state else []))
    assert len(losses) == len(single_losses) == 3
    np.testing.assert_allclose(losses, single_losses, rtol=1e-3)
    assert abs(accuracy - single_accuracy) <= 0.01 and accuracy > 0.9

"""Memory safety under concurrency, fork, thread control, numerics at the edges and the
errors of wrongly typed arguments. Cases that crashed or hung once run in a subprocess,
so that a regression fails the test instead of killing the run."""

import math
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fusedops as fo
from checks import assert_rejected, misaligned
from reference import adam_reference

try:
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None


def run_python(code, timeout=120, **env_overrides):
    env = dict(os.environ)
    env.pop("FUSEDOPS_ISA", None)
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_ran_clean(result, expected_stdout):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stdout.split() == expected_stdout.split()


# ------------------------------------------------------------------ owning references

LIST_REPLACED_BY_ANOTHER_THREAD = """
import threading
import numpy as np
import fusedops as fo

fo.set_num_threads(1)
lst = [np.ones(4_000_000, np.float32) for _ in range(4)]
stop = threading.Event()

def replace():
    while not stop.is_set():
        lst[0] = np.ones(4_000_000, np.float32)   # frees the array the call was given

t = threading.Thread(target=replace)
t.start()
try:
    norms = [fo.grad_norm(lst) for _ in range(40)]
    clipped = [fo.clip_grad_norm(lst, 1e9) for _ in range(10)]
finally:
    stop.set()
    t.join()
print(all(n == 4000.0 for n in norms + clipped))
"""


def test_list_edited_by_another_thread_during_a_call():
    assert_ran_clean(run_python(LIST_REPLACED_BY_ANOTHER_THREAD), "True")


LIST_SUBCLASSES = """
import numpy as np
import fusedops as fo

class FreshItems(list):
    def __getitem__(self, i):            # a new array at every access
        return np.ones(100_000, np.float32)

class Shrinking(list):
    def __len__(self):                   # claims more items than it holds
        return super().__len__() + 5

grads = FreshItems([np.full(100_000, 2.0, np.float32) for _ in range(3)])
print(fo.grad_norm(grads) == np.sqrt(3 * 100_000 * 4.0))
params = [np.zeros(100_000, np.float32) for _ in range(3)]
fo.sgd_step(params, grads, lr=1.0)
print(all((p == -2.0).all() for p in params))
opt = fo.optim.SGD([np.zeros(100_000, np.float32) for _ in range(3)], lr=1.0)
print(opt.step(Shrinking([np.ones(100_000, np.float32) for _ in range(3)])))
print(fo.grad_norm(Shrinking([np.ones(4, np.float32)])) == 2.0)
"""


def test_list_subclasses_are_read_from_one_snapshot_of_their_items():
    assert_ran_clean(run_python(LIST_SUBCLASSES), "True True True True")


# ------------------------------------------------------------------ fork

FORK_AFTER_PARALLEL_KERNEL = """
import os
import numpy as np
import fusedops as fo

fo.set_num_threads(2)
a = np.ones(1_000_000, np.float32)
fo.grad_norm([a])                         # the parent's OpenMP pool is running
pid = os.fork()
if pid == 0:
    ok = fo.grad_norm([a]) == 1000.0 and fo.get_num_threads() == 1
    p = np.zeros(100_000, np.float32)
    fo.sgd_step(p, np.ones_like(p), lr=1.0)
    os._exit(0 if ok and (p == -1).all() else 3)
_, status = os.waitpid(pid, 0)
print(os.WEXITSTATUS(status), fo.get_num_threads(), fo.grad_norm([a]))
"""


def test_os_fork_child_runs_kernels_after_the_parent_used_threads():
    if not fo.build_info()["openmp"]:
        pytest.skip("built without OpenMP")
    assert_ran_clean(run_python(FORK_AFTER_PARALLEL_KERNEL, timeout=60), "0 2 1000.0")


WORKER_POOL = """
import multiprocessing as mp
import numpy as np
import fusedops as fo

def work(seed):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(200_000).astype(np.float32)
    g = rng.standard_normal(200_000).astype(np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    fo.adam_step(p, g, m, v, step=1, lr=1e-3)
    return float(fo.grad_norm([p], norm_type=1.0))

if __name__ == "__main__":
    fo.set_num_threads(2)
    expected = [work(s) for s in range(6)]          # parallel kernels in the parent
    with mp.get_context("fork").Pool(2) as pool:     # a DataLoader-style worker pool
        got = pool.map(work, range(6))
    with mp.get_context("fork").Pool(1) as pool:
        got_one = pool.map(work, range(6))
    print(got == expected, got_one == expected)
"""


def test_fork_worker_pool_after_parallel_kernels(tmp_path):
    script = tmp_path / "pool.py"
    script.write_text(WORKER_POOL)
    env = dict(os.environ)
    env.pop("FUSEDOPS_ISA", None)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, env=env)
    assert_ran_clean(result, "True True")


# ------------------------------------------------------------------ worker placement

THREAD_MASKS = """
import os
import sys
import numpy as np
import fusedops as fo

fo.set_num_threads(int(sys.argv[1]))
a = np.ones(1_000_000, np.float32)
before = os.sched_getaffinity(0)
total = 0.0
for _ in range(3):                      # parallel regions of both kinds
    total += fo.grad_norm([a])
    fo.clip_grad_norm([a], max_norm=1e9)
    fo.sgd_step(a, np.zeros_like(a), lr=0.1)
me = os.getpid()
others = [os.sched_getaffinity(int(t)) for t in os.listdir("/proc/self/task") if int(t) != me]
pinned = [m for m in others if len(m) == 1]
print(fo.build_info()["worker_pinning"], os.sched_getaffinity(0) == before, len(pinned),
      all(m <= before for m in pinned), total == 3000.0)
"""

PLACEMENT_VARIABLES = ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY",
                       "FUSEDOPS_PIN_THREADS")


def run_thread_masks(tmp_path, threads, **env_overrides):
    script = tmp_path / "masks.py"
    script.write_text(THREAD_MASKS)
    env = {k: v for k, v in os.environ.items()
           if k not in PLACEMENT_VARIABLES and k != "FUSEDOPS_ISA"}
    env.update(env_overrides)
    return subprocess.run([sys.executable, str(script), str(threads)], capture_output=True,
                          text=True, timeout=60, env=env)


needs_two_cpus = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not fo.build_info()["openmp"]
    or len(os.sched_getaffinity(0)) < 2,
    reason="worker placement: Linux, OpenMP and at least two allowed CPUs")


@needs_two_cpus
def test_parallel_kernels_pin_their_worker_and_never_the_calling_thread(tmp_path):
    # One worker (2 threads) pinned to one CPU of the process's set; the caller's own
    # mask, which threads it starts later inherit, unchanged.
    assert_ran_clean(run_thread_masks(tmp_path, 2), "True True 1 True True")


@needs_two_cpus
@pytest.mark.parametrize("overrides", [{"FUSEDOPS_PIN_THREADS": "0"},
                                       {"OMP_PROC_BIND": "false"}],
                         ids=["FUSEDOPS_PIN_THREADS=0", "OMP_PROC_BIND-set"])
def test_worker_pinning_stays_off_when_asked_or_when_the_user_places_threads(tmp_path,
                                                                             overrides):
    assert_ran_clean(run_thread_masks(tmp_path, 2, **overrides), "False True 0 True True")


@needs_two_cpus
def test_teams_larger_than_the_cpus_are_not_pinned(tmp_path):
    threads = len(os.sched_getaffinity(0)) + 1
    assert_ran_clean(run_thread_masks(tmp_path, threads), "True True 0 True True")


# ------------------------------------------------------------------ one step at a time

def test_one_optimizer_stepped_from_two_threads_raises_instead_of_racing():
    rng = np.random.default_rng(0)
    n = 2_000_000
    params = [rng.standard_normal(n).astype(np.float32)]
    grads = [rng.standard_normal(n).astype(np.float32)]
    opt = fo.optim.Adam(params, lr=1e-3)
    errors, applied = [], []
    start = threading.Barrier(2)

    def stepper():
        start.wait()
        for _ in range(30):
            try:
                applied.append(opt.step(grads))
            except RuntimeError as e:
                errors.append(str(e))

    threads = [threading.Thread(target=stepper) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors, "two threads stepping one optimizer never overlapped (or were not detected)"
    assert all("another thread is running step()" in e for e in errors)
    # The steps that ran, ran one after the other: the same as that many serial steps.
    ref = [np.random.default_rng(0).standard_normal(n).astype(np.float32)]
    serial = fo.optim.Adam(ref, lr=1e-3)
    for _ in range(len(applied)):
        serial.step(grads)
    assert np.array_equal(params[0], ref[0])


# ------------------------------------------------------------------ writeability per step

def test_param_made_read_only_after_construction_is_not_written():
    p = np.ones(1000, np.float32)
    opt = fo.optim.SGD([p], lr=0.1, momentum=0.9)
    g = np.ones_like(p)
    opt.step([g])
    before = p.copy()
    p.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[0\] has become read-only"):
        opt.step([g])
    assert np.array_equal(p, before)
    p.flags.writeable = True
    assert opt.step([g])


def test_state_made_read_only_is_not_written():
    p = np.ones(100, np.float64)
    opt = fo.optim.Adam([p], lr=0.1)
    opt.step([np.ones_like(p)])
    opt.state[0]["exp_avg"].flags.writeable = False
    before = p.copy()
    with pytest.raises(ValueError, match="optimizer state of params\\[0\\] has become read-only"):
        opt.step([np.ones_like(p)])
    assert np.array_equal(p, before)


# ------------------------------------------------------------------ misaligned inputs

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_misaligned_read_only_inputs_are_rejected_everywhere(dtype):
    n = 1000
    p, m, v = (np.zeros(n, dtype) for _ in range(3))
    g = misaligned(n, dtype)
    assert_rejected(fo.adam_step, (p, g, m, v), dict(step=1), ValueError, "grads is not aligned")
    opt = fo.optim.Adam([p])
    assert_rejected(opt.step, ([g],), {}, ValueError, r"grads\[0\] is not aligned")
    x = misaligned(4 * 3 * 5, dtype).reshape(4, 3, 5)
    assert_rejected(fo.batch_norm_forward, (x,), {}, ValueError, "x is not aligned")


# ------------------------------------------------------------------ threads

@pytest.mark.usefixtures("threads")
def test_threadpoolctl_limits_apply_to_fusedops():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not fo.build_info()["openmp"]:
        pytest.skip("built without OpenMP")
    fo.set_num_threads(2)
    assert fo.get_num_threads() == 2
    with threadpoolctl.threadpool_limits(1):
        assert fo.get_num_threads() == 1
    assert fo.get_num_threads() == 2
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert fo.get_num_threads() == 1


@pytest.mark.usefixtures("threads")
def test_set_num_threads_is_visible_to_threadpoolctl():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not fo.build_info()["openmp"]:
        pytest.skip("built without OpenMP")
    fo.set_num_threads(1)
    import fusedops._core as core
    ours = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "openmp"]
    assert ours and any(i["num_threads"] == 1 for i in ours), ours
    assert core.get_num_threads() == 1


def test_thread_count_results_stay_bitwise_under_threadpoolctl():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    rng = np.random.default_rng(3)
    g = [rng.standard_normal(300_001).astype(np.float32) for _ in range(3)]
    with threadpoolctl.threadpool_limits(1):
        one = fo.grad_norm(g)
    assert fo.grad_norm(g) == one


# ------------------------------------------------------------------ numerics

@pytest.mark.parametrize("magnitude", [1e20, 1e30])
def test_adam_huge_gradients_do_not_overflow_the_second_moment_early(isa, magnitude):
    p = np.array([1.0, -2.0, 0.5, 3.0] * 5, np.float32)
    g = (np.array([1, -1, 0.5, -0.25] * 5) * magnitude).astype(np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)
    p0 = p.copy()
    fo.adam_step(p, g, m, v, step=1, lr=0.1)
    if magnitude == 1e20:
        # (1 - beta2) * g * g = 1e37 fits float32; g * g alone would be inf.
        assert np.isfinite(v).all()
        e_p, e_m, e_v, _ = adam_reference(p0, g, np.zeros(20), np.zeros(20), None, step=1, lr=0.1)
        np.testing.assert_allclose(v, e_v, rtol=1e-6)
        np.testing.assert_allclose(p, e_p, rtol=1e-6)
        assert not np.array_equal(p, p0)
    else:
        # 1e57 does not fit float32 in any order: v is inf, as in torch, and p stays.
        assert np.isinf(v).all()
    if torch is not None:
        tp = torch.tensor(p0, requires_grad=True)
        tp.grad = torch.tensor(g)
        opt = torch.optim.Adam([tp], lr=0.1)
        opt.step()
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-6)


# ------------------------------------------------------------------ wrongly typed arguments

def _adam_call(**overrides):
    p, g, m, v = (np.ones(8, np.float32) for _ in range(4))
    kwargs = dict(step=1)
    kwargs.update(overrides)
    return (p, g, m, v), kwargs


@pytest.mark.parametrize("overrides, exc, match", [
    (dict(betas=(0.9,)), TypeError, r"adam_step: betas must be a pair"),
    (dict(betas=0.9), TypeError, r"adam_step: betas must be a pair"),
    (dict(betas=(0.9, "x")), TypeError, r"adam_step: betas\[1\] must be a real number"),
    (dict(step=1.5), TypeError, r"adam_step: step must be an int, got float"),
    (dict(step=True), TypeError, r"adam_step: step must be an int, got bool"),
    (dict(step=2**70), ValueError, r"adam_step: step is out of range"),
    (dict(lr="0.1"), TypeError, r"adam_step: lr must be a real number \(int or float\), got str '0.1'"),
    (dict(lr=None), TypeError, r"adam_step: lr must be a real number"),
    (dict(eps=[1e-8]), TypeError, r"adam_step: eps must be a real number"),
    (dict(amsgrad=None), TypeError, r"adam_step: amsgrad must be a bool"),
    (dict(maximize=1), TypeError, r"adam_step: maximize must be a bool"),
    (dict(grad_scale="2"), TypeError, r"adam_step: grad_scale must be a real number"),
])
def test_adam_scalar_arguments_of_the_wrong_type_are_named(overrides, exc, match):
    args, kwargs = _adam_call(**overrides)
    assert_rejected(fo.adam_step, args, kwargs, exc, match)


def test_numpy_scalars_are_accepted_as_hyperparameters():
    args, kwargs = _adam_call(lr=np.float32(0.1), step=np.int64(2), betas=(np.float64(0.9), 0.99))
    fo.adam_step(*args, **kwargs)
    p = np.ones(8)
    fo.sgd_step(p, np.ones(8), lr=np.float64(0.5), nesterov=np.bool_(False))
    assert (p == 0.5).all()


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(first_step=None), TypeError, r"sgd_step: first_step must be a bool \(True or False\), got NoneType"),
    (dict(nesterov="yes"), TypeError, r"sgd_step: nesterov must be a bool"),
    (dict(momentum="0.9"), TypeError, r"sgd_step: momentum must be a real number"),
])
def test_sgd_scalar_arguments_of_the_wrong_type_are_named(kwargs, exc, match):
    p, g = np.ones(8), np.ones(8)
    assert_rejected(fo.sgd_step, (p, g), dict(lr=0.1, **kwargs), exc, match)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(channel_axis=2**40), ValueError, r"batch_norm_forward: channel_axis must be 1"),
    (dict(channel_axis=2**80), ValueError, r"batch_norm_forward: channel_axis is out of range"),
    (dict(channel_axis=1.0), TypeError, r"batch_norm_forward: channel_axis must be an int"),
    (dict(training=None), TypeError, r"batch_norm_forward: training must be a bool"),
    (dict(momentum="0.1"), TypeError, r"batch_norm_forward: momentum must be a real number"),
    (dict(eps=None), TypeError, r"batch_norm_forward: eps must be a real number"),
])
def test_batch_norm_scalar_arguments_of_the_wrong_type_are_named(kwargs, exc, match):
    x = np.ones((4, 3, 5), np.float32)
    out = np.zeros_like(x)
    assert_rejected(fo.batch_norm_forward, (x,), dict(out=out, **kwargs), exc, match)


def test_norm_scalar_arguments_of_the_wrong_type_are_named():
    g = [np.ones(8)]
    assert_rejected(fo.grad_norm, (g,), dict(norm_type="inf"), TypeError,
                    r"grad_norm: norm_type must be a real number")
    assert_rejected(fo.clip_grad_norm, (g,), dict(max_norm=None), TypeError,
                    r"clip_grad_norm: max_norm must be a real number")


def test_masked_arrays_are_rejected():
    p = np.ones(8)
    g = np.ma.masked_array(np.ones(8), mask=[True] + [False] * 7)
    assert_rejected(fo.sgd_step, (p, g), dict(lr=0.1), TypeError,
                    r"sgd_step: grads is a numpy.ma.MaskedArray, whose mask would be ignored")
    assert_rejected(fo.grad_norm, ([g],), {}, TypeError, r"grads\[0\] is a numpy.ma.MaskedArray")
    opt = fo.optim.SGD([p], lr=0.1)
    assert_rejected(opt.step, ([g],), {}, TypeError, r"SGD: grads\[0\] is a numpy.ma.MaskedArray")
    with pytest.raises(TypeError, match="MaskedArray"):
        fo.optim.SGD([np.ma.masked_array(np.ones(3))], lr=0.1)


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda sd: "not a dict", TypeError, "state_dict must be a dict"),
    (lambda sd: {k: v for k, v in sd.items() if k != "step"}, ValueError, r"missing \['step'\]"),
    (lambda sd: {**sd, "param_groups": 5}, TypeError, r"'param_groups'\] must be a list"),
    (lambda sd: {**sd, "param_groups": [5]}, TypeError, r"'param_groups'\]\[0\] must be a dict"),
    (lambda sd: {**sd, "param_groups": [{"lr": 0.1}]}, ValueError, "needs a 'params' list"),
    (lambda sd: {**sd, "state": [1, 2]}, TypeError, r"'state'\] must be a dict"),
    (lambda sd: {**sd, "state": {0: 5}}, TypeError, r"'state'\]\[0\] must be a dict"),
    (lambda sd: {**sd, "step": "3"}, TypeError, r"'step'\] must be an int"),
    (lambda sd: {**sd, "step": -1}, ValueError, r"'step'\] must be an int >= 0"),
])
def test_malformed_state_dict_is_a_clear_error_and_changes_nothing(mutate, exc, match):
    p = np.ones(5)
    opt = fo.optim.Adam([p], lr=0.1)
    opt.step([np.ones(5)])
    good = opt.state_dict()
    before = (p.copy(), opt.state[0]["exp_avg"].copy(), opt._step)
    with pytest.raises(exc, match=match):
        opt.load_state_dict(mutate(good))
    assert np.array_equal(p, before[0]) and np.array_equal(opt.state[0]["exp_avg"], before[1])
    assert opt._step == before[2]


def test_batch_norm_layer_names_itself_and_suggests_channel_axis_for_nhwc():
    bn = fo.nn.BatchNorm(3)
    x = np.ones((2, 5, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r"BatchNorm\(3.*channel_axis=1.*build the layer with channel_axis=-1"):
        bn.forward(x)
    fo.nn.BatchNorm(3, channel_axis=-1).forward(x)


# ------------------------------------------------------------------ bound gradients

def test_bound_grads_step_without_arguments_equals_step_with_grads():
    rng = np.random.default_rng(5)
    shapes = [(3, 4), (4,), (7,)]
    params = [rng.standard_normal(s) for s in shapes]
    grads = [np.zeros(s) for s in shapes]
    ref = [p.copy() for p in params]
    opt = fo.optim.AdamW([{"params": params[:2], "grads": grads[:2]},
                          {"params": params[2:], "grads": grads[2:], "weight_decay": 0.0}], lr=0.1)
    ref_opt = fo.optim.AdamW([{"params": ref[:2]}, {"params": ref[2:], "weight_decay": 0.0}], lr=0.1)
    for _ in range(3):
        for g in grads:
            g[...] = rng.standard_normal(g.shape)   # the backward pass fills the bound buffers
        assert opt.step() is True
        ref_opt.step([g.copy() for g in grads])
    for a, b in zip(params, ref):
        assert np.array_equal(a, b)
    assert opt.step(grads) is True               # an explicit list keeps working
    assert "grads" not in opt.state_dict()["param_groups"][0]


def test_bound_grads_mismatch_is_rejected_at_construction():
    p = [np.ones(3), np.ones(4)]
    with pytest.raises(ValueError, match=r"param_groups\[0\] has 2 params but 1 grads"):
        fo.optim.SGD([{"params": p, "grads": [np.ones(3)]}], lr=0.1)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['grads'\]\[1\] has shape \(3,\)"):
        fo.optim.SGD([{"params": p, "grads": [np.ones(3), np.ones(3)]}], lr=0.1)
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['grads'\]\[0\] has dtype float32"):
        fo.optim.SGD([{"params": p, "grads": [np.ones(3, np.float32), np.ones(4)]}], lr=0.1)


def test_step_without_grads_needs_every_group_bound():
    a, b = np.ones(3), np.ones(3)
    opt = fo.optim.SGD([{"params": [a], "grads": [np.ones(3)]}, {"params": [b]}], lr=0.1)
    with pytest.raises(ValueError, match=r"param_groups\[1\] has no 'grads'"):
        opt.step()
    assert (a == 1).all() and (b == 1).all()


# ------------------------------------------------------------------ types

USER_CODE = """
import numpy as np
import fusedops as fo

params = [np.zeros(3, np.float32)]
grads = [np.zeros(3, np.float32)]
opt = fo.optim.AdamW(params, lr=1e-3, max_grad_norm=1.0, skip_nonfinite=True)
applied: bool = opt.step(grads, grad_scale=2.0)
bound = fo.optim.SGD([{"params": params, "grads": grads}], momentum=0.9)
bound.step()
norm: float = fo.clip_grad_norm(grads, 1.0)
bn = fo.nn.BatchNorm(3, channel_axis=-1)
y = bn.forward(np.zeros((2, 3), np.float32))
dx = bn.backward(y)
"""


def _mypy(tmp_path, code):
    mypy_api = pytest.importorskip("mypy.api")
    path = tmp_path / "user.py"
    path.write_text(code)
    return mypy_api.run(["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
                         str(path)])


def test_mypy_strict_is_clean_on_user_code(tmp_path):
    out, err, status = _mypy(tmp_path, USER_CODE)
    assert status == 0, out + err


def test_mypy_strict_catches_a_string_learning_rate(tmp_path):
    out, err, status = _mypy(tmp_path, USER_CODE + 'fo.optim.Adam(params, lr="1e-3")\n')
    assert status == 1 and 'Argument "lr" to "Adam" has incompatible type "str"' in out, out + err


def test_stubs_match_the_runtime():
    pytest.importorskip("mypy.stubtest")
    allowlist = os.path.join(os.path.dirname(__file__), "stubtest_allowlist.txt")
    result = subprocess.run([sys.executable, "-m", "mypy.stubtest", "fusedops", "--allowlist",
                             allowlist], capture_output=True, text=True, timeout=600,
                            cwd=os.path.dirname(__file__))
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- overlap check, many arrays

def _pieces_of_one_buffer(rng, tensors, n, spread):
    """params, grads, exp_avgs, exp_avg_sqs: 4 * `tensors` float32 views of n values each at
    random offsets of one buffer, and their value ranges. With `spread` 2 a call has no
    overlapping pair about half the time (the birthday bound), with 0.2 rarely."""
    buffer = np.zeros(int((4 * tensors) ** 2 * n * spread) + n, np.float32)
    starts = rng.choice(len(buffer) - n, size=4 * tensors, replace=False)
    views = [buffer[s:s + n] for s in starts]
    lists = [views[k * tensors:(k + 1) * tensors] for k in range(4)]
    return buffer, lists, [(int(s), int(s) + n) for s in starts]


def _expect_overlap(ranges, tensors):
    """Brute force: some written array (params, exp_avgs, exp_avg_sqs) shares a value with
    any other array of the call (grads, the read ones, may share among themselves)."""
    written = [i // tensors != 1 for i in range(len(ranges))]
    for i, (a0, a1) in enumerate(ranges):
        for j in range(i + 1, len(ranges)):
            b0, b1 = ranges[j]
            if (written[i] or written[j]) and a0 < b1 and b0 < a1:
                return True
    return False


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("tensors", [3, 9, 40])
def test_overlap_check_matches_brute_force(seed, tensors):
    # 12, 36 and 160 arrays: the first sorted by insertion, the others by their starts'
    # bytes; a call is rejected exactly when some written array overlaps another one.
    rng = np.random.default_rng(1000 * tensors + seed)
    buffer, (p, g, m, v), ranges = _pieces_of_one_buffer(
        rng, tensors, n=int(rng.integers(1, 40)), spread=2 if seed % 2 else 0.2)
    buffer[:] = rng.standard_normal(len(buffer)).astype(np.float32)
    if _expect_overlap(ranges, tensors):
        assert_rejected(fo.adam_step, (p, g, m, v), dict(step=1), ValueError,
                        r"shares memory with")
    else:
        before = buffer.copy()
        fo.adam_step(p, g, m, v, step=1)
        assert not np.array_equal(buffer, before)


def _adam_lists(rng, tensors, n=64):
    """params and grads (random), exp_avgs and exp_avg_sqs (zeros): `tensors` float32
    arrays of n values each, every one its own allocation."""
    p = [rng.standard_normal(n).astype(np.float32) for _ in range(tensors)]
    g = [rng.standard_normal(n).astype(np.float32) for _ in range(tensors)]
    m = [np.zeros(n, np.float32) for _ in range(tensors)]
    v = [np.zeros(n, np.float32) for _ in range(tensors)]
    return p, g, m, v


def test_overlap_in_a_long_list_names_both_arrays():
    # 50 tensors (200 arrays, the byte-wise sort): exp_avg_sqs[37] overlaps params[3].
    p, g, m, v = _adam_lists(np.random.default_rng(5), 50)
    v[37] = p[3]
    assert_rejected(fo.adam_step, (p, g, m, v), dict(step=1), ValueError,
                    r"(exp_avg_sqs\[37\] shares memory with params\[3\]|"
                    r"params\[3\] shares memory with exp_avg_sqs\[37\])")
    v[37] = np.zeros(64, np.float32)
    g[20] = g[10]  # grads are read: they may share memory with each other
    fo.adam_step(p, g, m, v, step=1)


def test_overlap_check_remembers_only_the_exact_ranges_that_passed():
    # A call of more than 32 arrays whose ranges equal those of the last call that passed
    # on its thread skips the sort; any change of a range, or of which arrays are
    # written, is checked afresh (and an overlapping call is rejected, untouched).
    p, g, m, v = _adam_lists(np.random.default_rng(11), 50)
    for step in (1, 2):
        fo.adam_step(p, g, m, v, step=step)  # passes, then passes as remembered
    p_moved = list(p)
    p_moved[7] = v[30]  # a written range moved onto another written array
    assert_rejected(fo.adam_step, (p_moved, g, m, v), dict(step=3), ValueError,
                    r"shares memory with")
    g_moved = list(g)
    g_moved[4] = m[9]  # a read range moved onto a written array
    assert_rejected(fo.adam_step, (p, g_moved, m, v), dict(step=3), ValueError,
                    r"shares memory with")
    g_shared = list(g)
    g_shared[20] = g[10]  # read ranges may coincide: passes, and is remembered
    for step in (3, 4):
        fo.adam_step(p, g_shared, m, v, step=step)
    # The same ranges, but the shared pair now written: rejected
    assert_rejected(fo.adam_step, (g_shared, p, m, v), dict(step=5), ValueError,
                    r"shares memory with")
    before = [a.copy() for a in p + m + v]
    fo.adam_step(p, g, m, v, step=5)  # the original lists still pass
    assert not all(np.array_equal(a, b) for a, b in zip(p + m + v, before))


@pytest.mark.parametrize("cls", [fo.optim.SGD, fo.optim.Adam, fo.optim.AdamW])
def test_class_step_takes_grads_that_only_touch_a_param(cls):
    # One arena of [p0 g0 p1 g1 p2 g2] (the per-layer packing of some frameworks): each
    # grad ends where the next param starts, and the last param starts where a grad ends.
    # Touching is not sharing; a grad shifted one value into the next param is.
    sizes = [5, 16, 7]
    arena = np.zeros(2 * sum(sizes), np.float32)
    params, grads, at = [], [], 0
    for n in sizes:
        params.append(arena[at:at + n])
        grads.append(arena[at + n:at + 2 * n])
        at += 2 * n
    rng = np.random.default_rng(3)
    arena[:] = rng.standard_normal(arena.size).astype(np.float32)
    ref_params = [p.copy() for p in params]
    kw = {"momentum": 0.9} if cls is fo.optim.SGD else {}
    opt, ref = cls(params, lr=0.01, **kw), cls(ref_params, lr=0.01, **kw)
    for _ in range(3):
        opt.step(grads)
        ref.step([g.copy() for g in grads])
        assert all(np.array_equal(a, b) for a, b in zip(params, ref_params))
    before = arena.copy()
    g1 = 2 * sizes[0] + sizes[1]  # where grads[1] starts; params[2] starts where it ends
    shifted = arena[g1 + 1:g1 + 1 + sizes[1]]  # its last value is params[2]'s first
    with pytest.raises(ValueError, match=r"grads\[1\] shares memory with a param"):
        opt.step([grads[0], shifted, grads[2]])
    assert np.array_equal(arena, before)


@pytest.mark.parametrize("seed", range(8))
def test_class_grad_check_matches_brute_force(seed):
    # params at random disjoint places of one buffer, grads anywhere in it, some of them
    # placed to end exactly where a param starts or start where one ends: a step is
    # rejected exactly when a grad shares a value with a param (the state is the
    # optimizer's own), and then changes nothing.
    rng = np.random.default_rng(seed)
    n, tensors = int(rng.integers(1, 24)), 6
    buffer = np.zeros(tensors * n * 12, np.float32)
    slots = rng.choice(len(buffer) // n - 1, size=tensors, replace=False) * n
    params = [buffer[s:s + n] for s in slots]
    buffer[:] = rng.standard_normal(len(buffer)).astype(np.float32)
    opt = fo.optim.Adam(params, lr=0.01)
    for trial in range(20):
        starts = []
        for i in range(tensors):
            kind = rng.integers(4)
            s = int(rng.choice(slots))
            start = {0: s - n, 1: s + n, 2: s - n + 1}.get(int(kind), int(rng.integers(0, len(buffer) - n)))
            starts.append(min(max(start, 0), len(buffer) - n))
        grads = [buffer[a:a + n] for a in starts]
        clash = any(a < s + n and s < a + n for a in starts for s in slots)
        before = buffer.copy()
        if clash:
            with pytest.raises(ValueError, match="shares memory with a param"):
                opt.step(grads)
            assert np.array_equal(buffer, before)
        else:
            opt.step(grads)
            assert not np.array_equal(buffer, before)


# ------------------------------------------------------------------ reused call buffers

def test_calls_of_many_tensors_reusing_their_buffers_from_two_threads():
    # A call's lists of more than a few hundred tensors (checked arrays, sorted memory
    # ranges, the tensor list) take blocks that each thread keeps and hands out again to
    # its next calls: calls of growing and shrinking lists, on two threads at once, each
    # give the float64 reference's result, and a written array shared by two tensors is
    # still found in the longest list (its ranges sorted in reused blocks), the call
    # changing nothing.
    counts = [1500, 40, 3000, 700, 3000, 1]
    errors = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        try:
            for step, count in enumerate(counts, start=1):
                sizes = rng.integers(1, 9, count)
                p = [rng.standard_normal(n).astype(np.float32) for n in sizes]
                g = [rng.standard_normal(n).astype(np.float32) for n in sizes]
                m = [rng.standard_normal(n).astype(np.float32) for n in sizes]
                v = [rng.uniform(0, 1, n).astype(np.float32) for n in sizes]
                expected = [adam_reference(*a, None, step=step, lr=0.01)[0]
                            for a in zip(p, g, m, v)]
                fo.adam_step(p, g, m, v, step=step, lr=0.01)
                for got, want in zip(p, expected):
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
                if count == 3000:
                    before = [a.copy() for a in p + m + v]
                    j = int(np.flatnonzero(sizes[:-1] == sizes[-1])[0])  # same shape
                    with pytest.raises(ValueError, match="shares memory"):
                        fo.adam_step(p, g, m, v[:-1] + [m[j]], step=step)
                    for a, b in zip(p + m + v, before):
                        np.testing.assert_array_equal(a, b)
        except Exception as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors

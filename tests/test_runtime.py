"""Runtime controls: ISA dispatch (incl. FUSEDOPS_ISA), threads, build information."""

import json
import os
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest

import fusedops as fo
from fusedops import _core

from checks import forced_isa

KNOWN_ISAS = {"scalar", "avx2", "avx512"}


def run_python(code, **env_overrides):
    """Runs `code` in a fresh interpreter (so FUSEDOPS_ISA is read at import)."""
    env = dict(os.environ)
    env.pop("FUSEDOPS_ISA", None)
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)


def test_simd_isa_is_available():
    assert fo.simd_isa() in fo.available_isas()


def test_available_isas():
    available = fo.available_isas()
    compiled = fo.build_info()["compiled_isas"]
    assert "scalar" in available
    assert len(set(available)) == len(available)
    assert set(available) <= set(compiled) <= KNOWN_ISAS
    # The default choice first: AVX2 before AVX-512 (see cpu.cpp for the measurement).
    order = ["avx2", "avx512", "scalar"]
    assert available == sorted(available, key=order.index)


def test_default_isa_is_best_available():
    result = run_python("import fusedops as fo; print(fo.simd_isa())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == fo.available_isas()[0]


def test_build_info():
    info = fo.build_info()
    assert {"version", "compiler", "openmp", "compiled_isas"} <= set(info)
    assert info["version"] == fo.__version__
    assert isinstance(info["compiler"], str) and info["compiler"]
    assert isinstance(info["openmp"], bool)
    assert isinstance(info["compiled_isas"], list) and "scalar" in info["compiled_isas"]


def test_version_matches_distribution():
    assert isinstance(fo.__version__, str)
    assert fo.__version__ == metadata.version("fusedops")


@pytest.mark.usefixtures("threads")
def test_set_get_num_threads():
    fo.set_num_threads(1)
    assert fo.get_num_threads() == 1
    fo.set_num_threads(3)
    assert fo.get_num_threads() == 3


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("n", [9, 12])
def test_teams_beyond_the_stack_counters_give_the_one_thread_results(n):
    # A region's share counters live on the stack for up to 8 threads, on the heap beyond;
    # more threads than CPUs also make threads finish their shares late, so the others
    # take what is left of them.
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((96, 24, 11, 11)) * 3 + 40).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.uniform(0.5, 2, 24).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    p0 = rng.standard_normal(300_000).astype(np.float32)
    g = rng.standard_normal(300_000).astype(np.float32)
    results = []
    for threads in (1, n):
        fo.set_num_threads(threads)
        y, mean, invstd = fo.batch_norm_forward(x, w, b)
        dx, dw, db = fo.batch_norm_backward(dy, x, w, mean, invstd)
        p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
        fo.adam_step(p, g, m, v, step=1, lr=1e-3)
        results.append([y, mean, invstd, dx, dw, db, p, m, v,
                        np.float64(fo.grad_norm([p0, g]))])
    for a, c in zip(*results):
        assert a.tobytes() == c.tobytes()


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("n", [0, -1, 100_000, 2**70])
def test_set_num_threads_rejects_out_of_range(n):
    before = fo.get_num_threads()
    with pytest.raises(ValueError, match=r"set_num_threads: n (must be an int in \[1, \d+\]|is out of range)"):
        fo.set_num_threads(n)
    assert fo.get_num_threads() == before


@pytest.mark.usefixtures("threads")
@pytest.mark.parametrize("n", [None, 1.5, "2", True])
def test_set_num_threads_names_a_wrong_type(n):
    before = fo.get_num_threads()
    with pytest.raises(TypeError, match="set_num_threads: n must be an int, got"):
        fo.set_num_threads(n)
    assert fo.get_num_threads() == before


def test_num_threads_default_follows_omp_num_threads():
    if not fo.build_info()["openmp"]:
        pytest.skip("built without OpenMP")
    result = run_python("import fusedops as fo; print(fo.get_num_threads())",
                        OMP_NUM_THREADS="3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "3"


def test_isa_fixture_switches_kernels(isa):
    assert fo.simd_isa() == isa


# What decides which kernels run: the ISA, whether it is forced, and the choices of batch
# norm and the fused 16-bit loops. Defined once, run here and in fresh interpreters.
ISA_STATE_SOURCE = """
import json
import fusedops as fo
from fusedops import _core
def state():
    info = fo.build_info()
    return [fo.simd_isa(), _core._isa_forced(), info["batch_norm_isa"], info["fused_16bit_build"]]
"""
ISA_STATE = ISA_STATE_SOURCE + "print(json.dumps(state()))\n"
_isa_state_namespace = {}
exec(ISA_STATE_SOURCE, _isa_state_namespace)
isa_state = _isa_state_namespace["state"]


def fresh_isa_state(**env):
    result = run_python(ISA_STATE, **env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_reset_isa_gives_back_every_default():
    # a forced ISA also takes batch norm and the fused 16-bit loops off their own defaults
    defaults = fresh_isa_state()
    assert defaults[1] is False
    before = isa_state()
    with forced_isa("scalar"):
        assert isa_state()[:3] == ["scalar", True, "scalar"]
        _core._reset_isa()
        assert isa_state() == defaults
    assert isa_state() == before


@pytest.mark.parametrize("name", fo.available_isas())
def test_forced_isa_puts_back_what_was_before(name):
    before = isa_state()
    with forced_isa(name):
        assert fo.simd_isa() == name and _core._isa_forced()
        assert fo.build_info()["batch_norm_isa"] == name
    assert isa_state() == before
    # a process that FUSEDOPS_ISA forced stays forced, on the same ISA
    code = ISA_STATE_SOURCE + f"""
import sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
from checks import forced_isa
before = state()
with forced_isa({name!r}):
    pass
assert state() == before, (state(), before)
print(json.dumps(state()))
"""
    forced = fo.available_isas()[-1]
    result = run_python(code, FUSEDOPS_ISA=forced)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(f'["{forced}", true, "{forced}"')


def test_set_isa_rejects_unknown_name():
    before = fo.simd_isa()
    with pytest.raises(ValueError, match="unknown ISA 'sse9'"):
        _core._set_isa("sse9")
    assert fo.simd_isa() == before


FORCED_ISA_CHECK = """
import numpy as np
import fusedops as fo
p = np.ones(37, dtype=np.float32)
fo.sgd_step(p, np.full(37, 2.0, dtype=np.float32), lr=0.25)
assert np.array_equal(p, np.full(37, 0.5, dtype=np.float32)), p
print(fo.simd_isa())
"""


@pytest.mark.parametrize("name", fo.available_isas())
def test_fusedops_isa_forces_each_available_isa(name):
    result = run_python(FORCED_ISA_CHECK, FUSEDOPS_ISA=name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == name


def test_fusedops_isa_unknown_name_fails_import():
    result = run_python("import fusedops", FUSEDOPS_ISA="sse9")
    assert result.returncode != 0
    assert "FUSEDOPS_ISA" in result.stderr
    assert "unknown ISA 'sse9'" in result.stderr


@pytest.mark.skipif(
    not ("avx512" in fo.build_info()["compiled_isas"] and "avx512" not in fo.available_isas()),
    reason="needs avx512 compiled in but unsupported by this CPU",
)
def test_fusedops_isa_unsupported_by_cpu_fails_import():
    result = run_python("import fusedops", FUSEDOPS_ISA="avx512")
    assert result.returncode != 0
    assert "FUSEDOPS_ISA" in result.stderr
    assert "does not support ISA 'avx512'" in result.stderr


@pytest.mark.skipif(
    not ("avx512" in fo.build_info()["compiled_isas"] and "avx512" not in fo.available_isas()),
    reason="needs avx512 compiled in but unsupported by this CPU",
)
def test_set_isa_unsupported_by_cpu_raises():
    before = fo.simd_isa()
    with pytest.raises(ValueError, match="does not support ISA 'avx512'"):
        _core._set_isa("avx512")
    assert fo.simd_isa() == before


def test_empty_fusedops_isa_uses_default():
    result = run_python("import fusedops as fo; print(fo.simd_isa())", FUSEDOPS_ISA="")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == fo.available_isas()[0]


def test_public_names():
    for name in ["sgd_step", "adam_step", "adamw_step", "grad_norm", "clip_grad_norm",
                 "all_finite", "set_num_threads", "get_num_threads", "simd_isa",
                 "available_isas", "build_info", "__version__"]:
        assert hasattr(fo, name), name


def test_import_leaves_the_environment_as_it_was():
    code = ("import os; import fusedops; "
            "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "None"]
    env["OMP_WAIT_POLICY"] = "active"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "active"]


# ------------------------------------------------------------ ml_dtypes imported on demand

def _assert_printed(result, expected):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.stdout.split() == expected.split()


def test_import_and_float_work_leave_ml_dtypes_unimported():
    # Importing ml_dtypes takes about a second (its casts and ufunc loops registered with
    # NumPy); a user of float32/float64 never pays it. Every module, a functional step,
    # the optimizer classes, the layer and the split batch norm run without it.
    code = """
import sys
import numpy as np
import fusedops as fo
import fusedops.distributed, fusedops.nn, fusedops.optim, fusedops.lr_scheduler
print("ml_dtypes" in sys.modules)
p, g = np.ones(33, np.float32), np.full(33, 0.5, np.float32)
m, v = np.zeros_like(p), np.zeros_like(p)
fo.adam_step([p], [g], [m], [v], lr=0.1, step=1)
opt = fo.optim.AdamW([np.ones(5, np.float64)], state_dtype=np.float32)
opt.step([np.ones(5, np.float64)])
sgd = fo.optim.SGD([np.ones(5, np.float16)], lr=0.1, master_weights=True)
sgd.step([np.ones(5, np.float16)])
layer = fo.nn.BatchNorm(3, dtype="float32")
y = layer.forward(np.arange(12, dtype=np.float32).reshape(4, 3))
layer.backward(np.ones_like(y))
fo.batch_norm_stats(np.ones((2, 3), np.float64))
fo.grad_norm([np.ones(3, np.float16)])
print("ml_dtypes" in sys.modules, round(float(p[0]), 5))
"""
    _assert_printed(run_python(code), "False False 0.9")


def test_bfloat16_is_ml_dtypes_bfloat16_imported_on_first_use():
    code = """
import sys
import numpy as np
import fusedops as fo
print("bfloat16" in dir(fo), "ml_dtypes" in sys.modules)
import ml_dtypes
from fusedops import bfloat16
print(fo.bfloat16 is ml_dtypes.bfloat16, bfloat16 is ml_dtypes.bfloat16)
p = np.ones(17, fo.bfloat16)
fo.sgd_step([p], [np.ones(17, fo.bfloat16)], lr=0.5)
print(p.astype(np.float32).tolist() == [0.5] * 17)
try:
    fo.definitely_not_a_name
except AttributeError as exc:
    print(type(exc).__name__)
"""
    _assert_printed(run_python(code), "True False True True True AttributeError")


def test_bfloat16_given_by_name_before_ml_dtypes_is_imported():
    # NumPy knows the name "bfloat16" only once ml_dtypes has registered it: a dtype given
    # by name imports it. An unknown name is still rejected, naming the argument.
    code = """
import numpy as np
import fusedops as fo
opt = fo.optim.Adam([np.ones(4, np.float32)], state_dtype="bfloat16")
opt.step([np.ones(4, np.float32)])
print(opt.state[0]["exp_avg"].dtype, opt.state[0]["exp_avg_sq"].dtype)
layer = fo.nn.BatchNorm(2, dtype="bfloat16")
print(layer.dtype.name, layer.param_dtype.name)
try:
    fo.optim.Adam([np.ones(4, np.float32)], state_dtype="bfloat17")
except TypeError as exc:
    print("state_dtype" in str(exc))
"""
    _assert_printed(run_python(code), "bfloat16 bfloat16 bfloat16 float32 True")


# ------------------------------------------------------------------ worker start-up

def test_parallel_floor_follows_the_measured_worker_start():
    assert _core._worker_start_ns() == (0, 0)  # held there for the suite (conftest)
    try:
        _core._set_worker_start_ns(0)
        assert _core._min_parallel_elements() == 32 * 1024
        _core._set_worker_start_ns(5_000)  # 5 us: below the fixed floor's worth
        assert _core._min_parallel_elements() == 32 * 1024
        _core._set_worker_start_ns(100_000)  # 100 us: four elements per ns
        assert _core._min_parallel_elements() == 400_000
        _core._set_worker_start_ns(1_000_000)
        assert _core._min_parallel_elements() == 4_000_000
    finally:
        _core._set_worker_start_ns(0)


@pytest.mark.parametrize("start_ns", [0, 150_000, 10**9])
def test_results_do_not_depend_on_the_worker_start(threads, start_ns):
    """The measured start-up only moves calls between one thread and several: the same
    bits either way (one in 64 held-back calls runs in parallel anyway; 200 calls here)."""
    fo.set_num_threads(2)
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal(300_001).astype(np.float32)
    g = rng.standard_normal(p0.size).astype(np.float32)
    x = rng.standard_normal((256, 1024)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    w, b = np.ones(1024, np.float32), np.zeros(1024, np.float32)

    def run():
        p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
        norms, ys = [], []
        for step in range(1, 101):
            fo.adam_step(p, g, m, v, step=step, lr=1e-3)
            norms.append(fo.grad_norm([p]))
            y, mean, invstd = fo.batch_norm_forward(x, w, b)
            ys.append(fo.batch_norm_backward(dy, x, w, mean, invstd)[0])
        return p, m, v, norms, y, ys[-1]

    try:
        _core._set_worker_start_ns(0)
        expected = run()
        _core._set_worker_start_ns(start_ns)
        got = run()
    finally:
        _core._set_worker_start_ns(0)  # where the suite holds it (conftest)
    for e, o in zip(expected, got):
        assert np.array_equal(np.asarray(e), np.asarray(o))


WORKER_START = """
import time
import numpy as np
import fusedops as fo
from fusedops import _core

fo.set_num_threads(2)
a = np.ones(1 << 20, np.float32)
for _ in range(12):
    fo.grad_norm([a])                      # the first region starts the pool: not counted
    time.sleep(0.001)                      # the worker asleep: a cold start each time
measured = _core._worker_start_ns()[1]     # (hot, cold)
_core._set_worker_start_ns(10**9)          # 1 s: every call held back...
b = np.ones(100_000, np.float32)
for _ in range(16 * 64):
    fo.grad_norm([b])                      # ...but one in 64, which may lower it
lowered = _core._worker_start_ns()[1]      # regions after a long sleep: cold
_core._set_worker_start_ns(10**9)
_core._hold_worker_start_ns(True)
for _ in range(16 * 64):
    fo.grad_norm([b])
held = _core._worker_start_ns()
print(measured > 0, 0 < lowered < 10**9, held == (10**9, 10**9))
"""


def test_worker_start_is_measured_and_held_back_calls_remeasure_it():
    if not fo.build_info()["openmp"] or (os.cpu_count() or 1) < 2:
        pytest.skip("needs OpenMP and two CPUs")
    result = run_python(WORKER_START)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True"]

"""Runtime controls: ISA dispatch (incl. FUSEDOPS_ISA), threads, build information."""

import os
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest

import fusedops as fo
from fusedops import _core

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

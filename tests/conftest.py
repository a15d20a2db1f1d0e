import numpy as np
import pytest

import fusedops as fo
from fusedops import _core

from checks import forced_isa

ISAS = fo.available_isas()


@pytest.fixture(autouse=True, scope="session")
def parallel_from_the_fixed_floor():
    """Calls from 32K elements run in parallel in every test, whatever this machine's
    workers take to wake up: the measured start-up that raises that size for users
    (_core._min_parallel_elements) is held at 0, so the tests reach the parallel paths.
    test_runtime's tests of the measurement release it for themselves."""
    _core._set_worker_start_ns(0)
    _core._hold_worker_start_ns(True)
    yield
    _core._hold_worker_start_ns(False)


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs the test once per instruction set this build and CPU can run."""
    with forced_isa(request.param):
        yield request.param


@pytest.fixture
def threads():
    """Restores the thread count after a test that changes it."""
    previous = fo.get_num_threads()
    yield
    fo.set_num_threads(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def cache_sizes():
    """_core._set_cache_bytes(l1d, l2, last_level): the cache sizes the runtime plans with,
    for this test; the machine's are put back after it."""
    real = fo.build_info()["cache_bytes"]
    yield _core._set_cache_bytes
    _core._set_cache_bytes(real["l1d"], real["l2"], real["last_level"])


@pytest.fixture
def small_last_level_cache():
    """A 1 MiB last-level cache: arrays of a few MiB take the paths of arrays beyond the
    machine's real cache (non-temporal stores)."""
    real = fo.build_info()["cache_bytes"]
    _core._set_cache_bytes(real["l1d"], real["l2"], 1 << 20)
    yield 1 << 20
    _core._set_cache_bytes(real["l1d"], real["l2"], real["last_level"])

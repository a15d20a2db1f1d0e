import numpy as np
import pytest

import fusedops as fo
from fusedops import _core

ISAS = fo.available_isas()


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs the test once per instruction set this build and CPU can run."""
    previous = fo.simd_isa()
    _core._set_isa(request.param)
    yield request.param
    _core._set_isa(previous)


@pytest.fixture
def threads():
    """Restores the thread count after a test that changes it."""
    previous = fo.get_num_threads()
    yield
    fo.set_num_threads(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

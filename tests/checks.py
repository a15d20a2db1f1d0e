"""Assertions shared by the test modules: per-dtype tolerances, bitwise equality, and the
"a rejected call changed nothing" check, and forcing an ISA for a test."""

import contextlib

import numpy as np
import pytest

import fusedops as fo
from fusedops import _core

DTYPES = [np.float32, np.float64]

# One step compared with a float64 reference.
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-6),
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12),
}


def tol(dtype, factor=1.0):
    t = TOLERANCES[np.dtype(dtype)]
    return dict(rtol=t["rtol"] * factor, atol=t["atol"] * factor)


def assert_close(actual, expected, dtype, factor=1.0, err_msg=""):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected,
                               err_msg=err_msg, **tol(dtype, factor))


def assert_bitwise_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def arrays_in(obj):
    """Every ndarray reachable through lists, tuples and dict values."""
    if isinstance(obj, np.ndarray):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [a for item in obj for a in arrays_in(item)]
    if isinstance(obj, dict):
        return [a for item in obj.values() for a in arrays_in(item)]
    return []


def assert_rejected(fn, args, kwargs, exc, match):
    """fn(*args, **kwargs) raises `exc` matching `match`, and every array of the call holds
    exactly the bytes it held before."""
    arrays = arrays_in(args) + arrays_in(kwargs)
    before = [a.tobytes() for a in arrays]
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)
    for i, (a, b) in enumerate(zip(arrays, before)):
        assert a.tobytes() == b, f"array {i} of the rejected call was modified"


def misaligned(n, dtype, fill=1.0):
    """A writeable, C-contiguous array whose data is not aligned to its dtype."""
    itemsize = np.dtype(dtype).itemsize
    raw = bytearray(n * itemsize + 1)
    a = np.frombuffer(raw, dtype=dtype, count=n, offset=1)
    a[...] = fill
    assert not a.flags.aligned and a.flags.writeable and a.flags.c_contiguous
    return a


def read_only(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


def randn(rng, shape, dtype, scale=1.0):
    """Standard normal values as an ndarray of `shape` (0-d included) and `dtype`."""
    return np.array(rng.standard_normal(shape) * scale, dtype=dtype)


def at_line_offset(a, offset):
    """A C-contiguous copy of `a` whose data starts `offset` bytes past a 64-byte boundary
    (a cache line): the kernels' loops see every alignment of their rows."""
    raw = np.empty(a.nbytes + 128, np.uint8)
    start = (offset - raw.ctypes.data) % 64
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert out.ctypes.data % 64 == offset
    return out


def batch_norm_at_offsets(x, dy, weight, bias, channel_axis, x_at, dy_at, out_at):
    """(y, dx) of a training forward and backward with x, dy and the outputs y, dx each
    placed `*_at` bytes past a cache line (at_line_offset)."""
    x, dy = at_line_offset(x, x_at), at_line_offset(dy, dy_at)
    y = at_line_offset(np.zeros_like(x), out_at)
    dx = at_line_offset(np.zeros_like(x), out_at)
    _, mean, invstd = fo.batch_norm_forward(x, weight, bias, channel_axis=channel_axis, out=y)
    fo.batch_norm_backward(dy, x, weight, mean, invstd, channel_axis=channel_axis, out=dx)
    return y, dx


def batch_norm_with_cached_stores(x, dy, weight, bias, channel_axis):
    """(y, dx) of a training forward and backward run as if the L2 and the last-level
    cache were unbounded (ordinary stores, column-block tiles, no cache blocking), the
    cache sizes then put back as they were: the bits the paths for arrays beyond the
    caches must reproduce."""
    caches = fo.build_info()["cache_bytes"]
    _core._set_cache_bytes(caches["l1d"], 1 << 40, 1 << 40)
    try:
        y, mean, invstd = fo.batch_norm_forward(x, weight, bias, channel_axis=channel_axis)
        dx, _, _ = fo.batch_norm_backward(dy, x, weight, mean, invstd,
                                          channel_axis=channel_axis)
    finally:
        _core._set_cache_bytes(caches["l1d"], caches["l2"], caches["last_level"])
    return y, dx


def force_isa(name):
    """Forces the ISA `name` (as FUSEDOPS_ISA would) and returns what puts back the state
    before: the same forced ISA, or the defaults with nothing forced (batch norm and the
    fused 16-bit loops have their own, which a forced ISA overrides)."""
    previous, was_forced = fo.simd_isa(), _core._isa_forced()
    _core._set_isa(name)

    def restore():
        if was_forced:
            _core._set_isa(previous)
        else:
            _core._reset_isa()

    return restore


@contextlib.contextmanager
def forced_isa(name):
    """force_isa(name) for the block."""
    restore = force_isa(name)
    try:
        yield name
    finally:
        restore()

"""Benchmark machinery: cases, interleaved timing, result checks, the bandwidth probe."""

from __future__ import annotations

import dataclasses
import glob
import os
import platform
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np

import fusedops as fo
from fusedops import _core


@dataclasses.dataclass
class Impl:
    """One implementation of a case: `run` does the whole operation once."""

    name: str
    run: Callable[[], None]
    outputs: Callable[[], Sequence[np.ndarray]]  # what is compared with the reference
    prepare: Optional[Callable[[], None]] = None  # untimed, before every timed run


@dataclasses.dataclass
class Case:
    kernel: str
    case: str
    dtype: str
    n_elements: int
    n_tensors: int
    bytes_per_element: float  # the traffic model the GB/s column counts
    build: Callable[[], tuple[list[Impl], list[np.ndarray]]]  # impls and float64 reference
    rtol: float = 1e-4
    atol: float = 1e-6
    baseline: str = "torch"  # the peer the speedup column compares with
    sweep: str = ""  # cases of one kernel and dtype sharing a sweep name form a size sweep


class WrongResult(AssertionError):
    pass


def optional_import(name):
    try:
        return __import__(name)
    except ImportError:
        return None


torch = optional_import("torch")
numba = optional_import("numba")


def set_threads(n: int) -> None:
    fo.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    if numba is not None:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header_lines(threads: int) -> list[str]:
    info = fo.build_info()
    versions = [f"numpy {np.__version__}"]
    versions.append(f"torch {torch.__version__}" if torch is not None else "torch: not installed (rows skipped)")
    versions.append(f"numba {numba.__version__}" if numba is not None else "numba: not installed (rows skipped)")
    return [
        f"fusedops {fo.__version__} ({info['compiler']}, openmp={info['openmp']}), "
        f"isa={fo.simd_isa()} of {info['available_isas']}, threads={threads}",
        f"cpu: {cpu_model()}, {os.cpu_count()} logical cores; python {platform.python_version()}",
        ", ".join(versions),
    ]


def _time_once(impl: Impl, number: int) -> float:
    if impl.prepare is not None:
        impl.prepare()
    start = time.perf_counter()
    for _ in range(number):
        impl.run()
    return (time.perf_counter() - start) / number


def check(case: Case, impl: Impl, reference: list[np.ndarray]) -> None:
    got = impl.outputs()
    for i, (g, r) in enumerate(zip(got, reference)):
        g = np.asarray(g, dtype=np.float64)
        if g.shape != r.shape or not np.allclose(g, r, rtol=case.rtol, atol=case.atol, equal_nan=True):
            err = np.max(np.abs(g - r)) if g.shape == r.shape else "shape"
            raise WrongResult(f"{case.kernel}/{case.case}/{case.dtype}: {impl.name} output {i} "
                              f"differs from the float64 reference (max abs err {err})")


# Pause before each sample: longer than an OpenMP pool spins after its last parallel
# region (libgomp's default spin lasts a few ms). Without it, the worker threads of the
# implementation timed before (torch's pool, NumPy's, ours) still spin on the cores while
# the next one runs: with two cores, a 300 us call measured 5-10x slower.
SETTLE_SECONDS = 0.02
# After the pause, each implementation runs untimed for at least this long (at least one
# call) right before its sample: it wakes the implementation's own threads, brings its
# data back to the caches, and lets the machine leave the idle state the pause put it in,
# as a training loop that keeps the cores busy would find them. (On the Xeon VM, one call
# of a few milliseconds right after a 20 ms pause ran 15-25% slower than back to back, and
# the next one 10-15%: batch norm forward+backward at (64, 256, 28, 28) 0.66 and 0.60
# ns/el against 0.52; every implementation's short and medium calls measured faster with
# the warm-up, NumPy's and torch's as much as ours.) With warm_seconds=0, calls shorter
# than WARM_CALL_SECONDS get one untimed call and longer ones none (the method of the
# runs before 2026-12-01's ninth session).
WARM_SECONDS = 0.02
WARM_CALL_SECONDS = 0.02


def measure(case: Case, repeats: int, probe: Optional[Impl] = None, probe_bytes: float = 0.0,
            min_sample_seconds: float = 2e-3, warm_seconds: float = WARM_SECONDS) -> list[dict]:
    """Checks every implementation once, then times them interleaved, together with the
    bandwidth probe (so each row's % of bandwidth compares with the machine as it was
    while that row ran). Each sample starts after a pause (SETTLE_SECONDS) and
    warm_seconds of untimed calls of the same implementation (WARM_SECONDS)."""
    impls, reference = case.build()
    for impl in impls:  # the first run is the checked one
        if impl.prepare is not None:
            impl.prepare()
        impl.run()
        check(case, impl, reference)
    numbers, warm = {}, {}
    for impl in impls:  # warm-up, and calls per sample so a sample lasts long enough
        t = max(_time_once(impl, 1), 1e-7)
        numbers[impl.name] = 1 if impl.prepare is not None else max(1, min(1000, int(min_sample_seconds / t)))
        warm[impl.name] = t < WARM_CALL_SECONDS
    timed = impls + ([probe] if probe is not None else [])
    if probe is not None:
        numbers[probe.name] = 1
        warm[probe.name] = False
    samples = {impl.name: [] for impl in timed}
    for r in range(repeats):
        order = timed[r % len(timed):] + timed[:r % len(timed)]
        for impl in order:
            time.sleep(SETTLE_SECONDS)
            if warm_seconds > 0:
                until = time.perf_counter() + warm_seconds
                _time_once(impl, 1)
                while time.perf_counter() < until:
                    _time_once(impl, 1)
            elif warm[impl.name]:
                _time_once(impl, 1)
            samples[impl.name].append(_time_once(impl, numbers[impl.name]))
    probe_gbps = probe_bytes / float(np.median(samples[probe.name])) / 1e9 if probe is not None else None
    rows = []
    for impl in impls:
        s = np.array(samples[impl.name])
        rows.append(dict(kernel=case.kernel, case=case.case, dtype=case.dtype,
                         n_elements=case.n_elements, n_tensors=case.n_tensors, impl=impl.name,
                         seconds_median=float(np.median(s)), seconds_min=float(s.min()),
                         bytes_per_element=case.bytes_per_element, baseline=case.baseline,
                         sweep=case.sweep, probe_gbps=probe_gbps))
    del impls, reference
    return rows


def largest_cache_bytes() -> int:
    """The largest CPU cache of this machine (usually the L3), read from sysfs; 32 MiB if
    sysfs does not say."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    best = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text and text[-1] in units and text[:-1].isdigit():
            best = max(best, int(text[:-1]) * units[text[-1]])
        elif text.isdigit():
            best = max(best, int(text))
    return best or 32 << 20


def beyond_cache_elements(bytes_per_element: float, minimum: int = 1 << 24) -> int:
    """The smallest power-of-two element count, at least `minimum`, whose traffic (at
    `bytes_per_element`) is at least twice the largest cache: a size that runs from DRAM."""
    n = minimum
    while n * bytes_per_element < 2 * largest_cache_bytes():
        n *= 2
    return n


def _median_seconds(call: Callable[[], object], repeats: int) -> float:
    """The median of `repeats` timed calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


class BandwidthProbe:
    """Native multi-threaded a += s * b over float32 arrays beyond the caches (12 B/element):
    the two arrays together hold at least twice the largest cache of this machine."""

    name = "bandwidth-probe"
    prepare = None

    def __init__(self, n: int = 0):
        n = n or beyond_cache_elements(8)
        self.a = np.ones(n, dtype=np.float32)
        self.b = np.ones(n, dtype=np.float32)
        self.bytes = 12.0 * n
        self.calls = 0

    STEP = 2.0 ** -20  # 1 + k * STEP is exact in float32 for every k the run reaches

    def run(self) -> None:
        _core._bandwidth_probe(self.a, self.b, self.STEP)
        self.calls += 1

    def check(self) -> None:
        if not np.all(self.a[:: 1 << 12] == np.float32(1 + self.calls * self.STEP)):
            raise WrongResult("bandwidth probe computed a wrong result")

    def measure_read(self, repeats: int) -> float:
        """GB/s of the read-only probe: a native sum over b (4 B/element, four runs side by
        side per unit of work, prefetched, threaded like the kernels). A pass that only
        reads (a norm, batch-norm statistics or gradient sums) moves at most about this."""
        total = _core._read_probe(self.b)
        if total != self.b.size:  # b holds ones: every partial sum is exact
            raise WrongResult(f"read probe summed {total}, expected {self.b.size}")
        return 4.0 * self.b.size / _median_seconds(lambda: _core._read_probe(self.b), repeats) / 1e9

    def measure(self, repeats: int) -> float:
        self.run()
        seconds = _median_seconds(self.run, repeats)
        self.check()
        return self.bytes / seconds / 1e9


def progress(message: str) -> None:
    """A one-line progress note on a terminal; nothing when stderr is a file or a pipe."""
    if not sys.stderr.isatty():
        return
    sys.stderr.write(f"\r\033[K{message}")
    sys.stderr.flush()

"""The benchmark machinery on small cases: every implementation's first run is checked
against the float64 reference, rows carry the documented keys, a wrong answer is an
error, and the report renders. (Speed itself is measured by bench/run.py, not here.)"""

import json
import math
import os
import sys

import numpy as np
import pytest

import fusedops as fo
from fusedops import _core

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import cases_norm  # noqa: E402
import cases_optim  # noqa: E402
import harness  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402

JSON_KEYS = {"kernel", "case", "dtype", "n_elements", "n_tensors", "impl", "threads", "seconds_median",
             "seconds_min", "ns_per_element", "gbps", "pct_bandwidth"}

SMALL_CASES = [
    lambda: cases_optim.sgd_case([1000, 33], np.float32, "momentum"),
    lambda: cases_optim.sgd_case([17], np.float64, "nesterov"),
    lambda: cases_optim.sgd_case([1000], np.float32, "plain"),
    lambda: cases_optim.adam_case([1000, 7], np.float32, "adam"),
    lambda: cases_optim.adam_case([999], np.float64, "adamw-amsgrad"),
    lambda: cases_optim.clip_case([100, 1000], np.float32),
    lambda: cases_optim.adam_class_case([256] * 5, np.float32, "5x256"),
    *[lambda kind=kind: cases_optim.family_case(kind, [1000, 17], np.float32) for kind in cases_optim.FAMILY],
    *[lambda kind=kind: cases_optim.family_case(kind, [256] * 5, np.float64, through_class=True)
      for kind in cases_optim.FAMILY],
    lambda: cases_optim.lamb_case(cases_optim.gpt2_sizes(layers=1, width=16, vocab=50, context=8),
                                  np.float32, "gpt2-tiny"),
    lambda: cases_optim.lars_case([1000, 3, 0], np.float32, "3 tensors"),
    lambda: cases_norm.batch_norm_case((4, 3, 5, 7), 1, np.float32, "fwd+bwd"),
    lambda: cases_norm.batch_norm_case((4, 5, 7, 3), -1, np.float64, "forward"),
    lambda: cases_norm.batch_norm_case((4, 3, 5, 7), 1, np.float32, "backward"),
]


def assert_peer_is_measured(case, rows):
    """A case that builds a torch implementation compares with one of them: its baseline
    names an implementation it measured (else the speedup column is blank)."""
    impls = {r["impl"] for r in rows}
    if any(i.startswith("torch") for i in impls):
        assert case.baseline in impls, (case.case, case.baseline, impls)


@pytest.fixture(scope="module")
def probe():
    return harness.BandwidthProbe(n=1 << 16)


@pytest.mark.parametrize("make", SMALL_CASES)
def test_small_case_runs_checked_and_reports_rows(make, probe):
    case = make()
    rows = harness.measure(case, repeats=2, probe=probe, probe_bytes=probe.bytes)
    run.finish_rows(rows, threads=1)
    impls = [r["impl"] for r in rows]
    assert impls[0] == "fusedops" and "numpy" in impls
    assert_peer_is_measured(case, rows)
    for r in rows:
        assert JSON_KEYS <= r.keys()
        assert r["seconds_median"] > 0 and r["gbps"] > 0 and r["pct_bandwidth"] > 0
    json.dumps(rows)
    table = report.summary(rows)
    assert table.splitlines()[2].startswith(f"| {case.kernel} | {case.case} |")
    assert run.format_table(rows).count("\n") == len(rows) + 1
    probe.check()


def test_a_wrong_answer_is_an_error():
    case = cases_optim.sgd_case([100], np.float32, "momentum")
    build = case.build

    def broken_build():
        impls, reference = build()
        impls[0].run = lambda: None  # "fusedops" that skips the work
        return impls, reference
    case.build = broken_build
    with pytest.raises(harness.WrongResult, match="fusedops"):
        harness.measure(case, repeats=1)


def test_case_lists_cover_every_kernel():
    names = {(c.kernel, c.dtype) for c in cases_optim.optim_cases(False) + cases_norm.norm_cases(False)}
    kernels = {k for k, _ in names}
    assert {"sgd_step", "adam_step", "adamw_step", "clip_grad_norm", "optim.Adam.step",
            "batch_norm forward", "batch_norm backward", "batch_norm fwd+bwd"} <= kernels
    assert {d for _, d in names} == {"float32", "float64", "bfloat16"}


@pytest.mark.parametrize("flow", sorted(cases_optim.MIXED_ADAM_FLOWS))
def test_mixed_precision_cases_check_their_results(flow, probe):
    for case in (cases_optim.mixed_adam_case([1000, 37], flow), cases_optim.mixed_sgd_case([1000])):
        rows = harness.measure(case, repeats=1, probe=probe, probe_bytes=probe.bytes)
        assert rows and all(r["seconds_median"] > 0 for r in rows)
        assert_peer_is_measured(case, rows)
        assert case.bytes_per_element == int(case.case.split("(")[1].split()[0])


def test_plot_of_a_size_sweep(tmp_path, probe):
    pytest.importorskip("matplotlib")
    rows = []
    for n in (100, 1000, 10000):
        case_rows = harness.measure(cases_optim.sgd_case([n], np.float32, "momentum"), repeats=1,
                                    probe=probe, probe_bytes=probe.bytes)
        run.finish_rows(case_rows, threads=1)
        rows += case_rows
    path = tmp_path / "sweep.png"
    run.plot(rows, 30.0, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_a_sweep_is_a_bar_chart(tmp_path, probe):
    pytest.importorskip("matplotlib")
    rows = []
    for case in (cases_optim.sgd_case([1000], np.float32, "momentum"),
                 cases_norm.batch_norm_case((4, 3, 5, 7), 1, np.float32, "fwd+bwd")):
        case_rows = harness.measure(case, repeats=1, probe=probe, probe_bytes=probe.bytes)
        run.finish_rows(case_rows, threads=1)
        rows += case_rows
    path = tmp_path / "bars.png"
    run.plot(rows, 30.0, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_of_batch_norm_sweeps(tmp_path, probe):
    pytest.importorskip("matplotlib")
    rows = []
    for sweep, shapes in (("NC", [(4, 3), (16, 8), (64, 16)]),
                          ("NHWC", [(2, 3, 3, 4), (2, 5, 5, 4), (4, 7, 7, 4)])):
        axis = 1 if sweep == "NC" else -1
        for shape in shapes:
            case = cases_norm.batch_norm_case(shape, axis, np.float32, "forward", sweep=sweep)
            case_rows = harness.measure(case, repeats=1, probe=probe, probe_bytes=probe.bytes)
            run.finish_rows(case_rows, threads=1)
            rows += case_rows
    assert {r["sweep"] for r in rows} == {"NC", "NHWC"}
    path = tmp_path / "sweeps.png"
    run.plot(rows, 30.0, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_norm_cases_hold_size_sweeps():
    for quick in (True, False):
        sizes = {}
        for c in cases_norm.norm_cases(quick):
            if c.sweep:
                sizes.setdefault((c.kernel, c.sweep, c.dtype), set()).add(c.n_elements)
        assert sizes and all(len(s) >= 3 for s in sizes.values())
        if not quick:
            kernels = {(k, d) for k, _, d in sizes}
            assert {("batch_norm forward", "float32"), ("batch_norm backward", "float32"),
                    ("batch_norm fwd+bwd", "float32"), ("batch_norm fwd+bwd", "float64")} <= kernels
            assert {sweep for _, sweep, _ in sizes} == set(cases_norm.SWEEPS)


def test_plot_that_cannot_be_written_fails_before_the_run(tmp_path, capsys, monkeypatch):
    missing_dir = tmp_path / "no-such-dir" / "x.png"
    assert run.main(["--quick", "--only", "batch_norm", "--plot", str(missing_dir)]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    assert run.main(["--quick", "--only", "batch_norm", "--plot", str(tmp_path / "x.png")]) == 2
    assert "needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_run_rejects_zero_threads_and_an_empty_selection(capsys):
    import run
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--threads", "0"])
    assert exit_info.value.code == 2
    assert "--threads: expected an int >= 1, got 0" in capsys.readouterr().err
    assert run.main(["--quick", "--only", "no-such-case"]) == 2
    assert "matches no case" in capsys.readouterr().err


def test_headline_sizes_are_beyond_the_largest_cache():
    import harness
    llc = harness.largest_cache_bytes()
    assert llc > 0
    for bpe in (8, 12, 28):
        n = harness.beyond_cache_elements(bpe)
        assert n * bpe >= 2 * llc and n & (n - 1) == 0


@pytest.mark.parametrize("warm_seconds", [0.0, 0.01])
def test_each_sample_follows_its_warm_up(warm_seconds):
    # After the pause before each sample, the implementation runs untimed for warm_seconds
    # (at least one call); with 0, a short call gets exactly one untimed call.
    case = cases_optim.sgd_case([100], np.float32, "momentum")
    build = case.build
    calls = []

    def counting_build():
        impls, reference = build()
        run_fusedops = impls[0].run

        def counted():
            calls.append(1)
            run_fusedops()
        impls[0].run = counted
        return impls, reference
    case.build = counting_build
    rows = harness.measure(case, repeats=2, warm_seconds=warm_seconds, min_sample_seconds=1e-9)
    assert rows[0]["impl"] == "fusedops"
    # checked run + sizing run, then per sample: the warm-up and one timed call
    per_sample = (len(calls) - 2) / 2 - 1
    if warm_seconds == 0:
        assert per_sample == 1
    else:
        assert per_sample > 10  # a 100-element SGD step takes microseconds


def test_warm_ms_must_not_be_negative(capsys):
    with pytest.raises(SystemExit):
        run.main(["--warm-ms", "-1"])
    assert "--warm-ms" in capsys.readouterr().err


READ_UNIT = 1 << 18  # the read probe's unit of work (values)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 63, 64, 65, 1000, READ_UNIT - 1, READ_UNIT,
                               READ_UNIT + 1, 4 * READ_UNIT + 37])
def test_read_probe_sums_every_value_once(n):
    # small integers: every float partial is exact, so any value skipped, read twice or
    # read from past the end shows as a different total
    rng = np.random.default_rng(n)
    a = rng.integers(0, 4, size=n).astype(np.float32)
    assert _core._read_probe(a) == float(a.astype(np.int64).sum())
    a[n // 2:] = 0
    assert _core._read_probe(a) == float(a.astype(np.int64).sum())


def test_read_probe_is_the_same_for_any_thread_count():
    a = np.random.default_rng(1).random(3 * READ_UNIT + 101, dtype=np.float32)
    before = fo.get_num_threads()
    try:
        fo.set_num_threads(1)
        one = _core._read_probe(a)
        fo.set_num_threads(2)
        two = _core._read_probe(a)
    finally:
        fo.set_num_threads(before)
    assert one == two
    assert one == pytest.approx(math.fsum(a.astype(np.float64)), rel=1e-5)


def test_read_probe_rejects_what_it_cannot_read():
    with pytest.raises(TypeError, match="_read_probe: a must be float32"):
        _core._read_probe(np.ones(10))
    with pytest.raises(TypeError, match="_read_probe: a must be a single array"):
        _core._read_probe([np.ones(10, np.float32)])
    with pytest.raises((TypeError, ValueError), match="_read_probe"):
        _core._read_probe(np.ones(20, np.float32)[::2])


def test_bench_measures_the_read_probe(probe):
    assert probe.measure_read(2) > 0
    saved = probe.b[3]
    probe.b[3] = 2
    try:
        with pytest.raises(harness.WrongResult, match="read probe"):
            probe.measure_read(1)
    finally:
        probe.b[3] = saved

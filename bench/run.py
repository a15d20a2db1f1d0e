"""fusedops benchmark: every kernel against NumPy and the peers, with the machine's limit.

    python bench/run.py [--quick] [--only PATTERN] [--threads N] [--warm-ms MS] [--json PATH]
                        [--plot PATH]

Each case is run by every implementation in one process, interleaved, after a checked
first run (a wrong answer is an error, not a row); each sample starts after a short pause
(the previous implementation's threads stop spinning) and 20 ms of untimed calls of the
same implementation (--warm-ms: its threads awake, its data in the caches, the machine out
of the idle state the pause left it in). GB/s counts the bytes/element model
stated per kernel; "% bw" compares it with the native bandwidth probe (a += s * b over
arrays beyond the caches, 12 bytes/element of float32), which is timed interleaved with
the implementations of every case. In-cache sizes may exceed 100%.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import fusedops as fo  # noqa: E402
import harness  # noqa: E402
from cases_optim import family_bytes_note, optim_cases  # noqa: E402

CASE_LISTS = [optim_cases]
try:
    from cases_norm import norm_cases  # noqa: E402

    CASE_LISTS.append(norm_cases)
except ImportError:  # batch norm cases not present in this checkout
    pass


def finish_rows(rows: list[dict], threads: int) -> None:
    by_impl = {r["impl"]: r for r in rows}
    for r in rows:
        probe_gbps = r.pop("probe_gbps")
        n = r["n_elements"]
        t = r["seconds_median"]
        r["threads"] = threads
        r["ns_per_element"] = t / n * 1e9 if n else float("nan")
        r["ns_per_element_min"] = r["seconds_min"] / n * 1e9 if n else float("nan")
        r["gbps"] = r["bytes_per_element"] * n / t / 1e9
        r["probe_gbps"] = probe_gbps
        r["pct_bandwidth"] = 100.0 * r["gbps"] / probe_gbps
        numpy_row = by_impl.get("numpy")
        r["speedup_vs_numpy"] = numpy_row["seconds_median"] / t if numpy_row else None
        peer = by_impl.get(r["baseline"])
        r["speedup_vs_peer"] = peer["seconds_median"] / t if peer else None


def format_table(rows: list[dict]) -> str:
    head = ("kernel", "case", "dtype", "elements", "tensors", "impl", "ns/el med", "ns/el min",
            "GB/s", "probe GB/s", "% bw", "vs numpy", "vs peer")
    lines = [head]

    def ratio(x):
        return "-" if x is None else f"{x:.2f}x"
    for r in rows:
        lines.append((r["kernel"], r["case"], r["dtype"], f"{r['n_elements']:,}", str(r["n_tensors"]), r["impl"],
                      f"{r['ns_per_element']:.3f}", f"{r['ns_per_element_min']:.3f}", f"{r['gbps']:.1f}",
                      f"{r['probe_gbps']:.1f}", f"{r['pct_bandwidth']:.0f}%", ratio(r["speedup_vs_numpy"]),
                      ratio(r["speedup_vs_peer"])
                      + (f" {r['baseline']}" if r["impl"] == "fusedops" and r["speedup_vs_peer"] else "")))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for k, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) if i < 6 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths))))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def summary_lines(rows: list[dict]) -> list[str]:
    """Derived figures: the cost of many small tensors relative to one big one."""
    ours = {(r["kernel"], r["case"], r["dtype"]): r for r in rows if r["impl"] == "fusedops"}
    out = []
    for dtype in ("float32", "float64"):
        many = ours.get(("optim.Adam.step", "1000x256", dtype))
        one = ours.get(("optim.Adam.step", "1x256000", dtype))
        if many and one:
            out.append(f"optim.Adam.step {dtype}: 1000 tensors x 256 take {many['seconds_median'] / one['seconds_median']:.2f}x "
                       f"the time of one tensor of 256000 (ideal 1x)")
    return out


def plot(rows: list[dict], probe_gbps: float, path: str) -> None:
    """ns/element against size for every size sweep of the run (log-log, with the
    bandwidth limit of the sweep's bytes/element model); a run without a sweep (three
    sizes or more) gets a bar chart of ns/element per case and implementation instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = {}
    for r in rows:
        if r["n_tensors"] == 1:
            key = (r["kernel"], r.get("sweep") or r["case"], r["dtype"])
            sweeps.setdefault(key, []).append(r)
    sweeps = {k: v for k, v in sweeps.items() if len({r["n_elements"] for r in v}) >= 3}
    if not sweeps:
        _bar_chart(plt, rows, path)
        return
    columns = min(3, len(sweeps))
    lines = (len(sweeps) + columns - 1) // columns
    fig, axes = plt.subplots(lines, columns, figsize=(6.5 * columns, 4.8 * lines), squeeze=False)
    for ax in axes.flat[len(sweeps):]:
        ax.set_visible(False)
    for ax, ((kernel, case, dtype), rs) in zip(axes.flat, sorted(sweeps.items())):
        for impl in dict.fromkeys(r["impl"] for r in rs):
            pts = sorted((r["n_elements"], r["ns_per_element"]) for r in rs if r["impl"] == impl)
            ax.plot(*zip(*pts), marker="o", label=impl)
        bpe = rs[0]["bytes_per_element"]
        ax.axhline(bpe / probe_gbps, color="k", linestyle="--",
                   label=f"bandwidth limit ({bpe:g} B/el at {probe_gbps:.1f} GB/s)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("elements")
        ax.set_ylabel("ns per element (median)")
        ax.set_title(f"{kernel} {case} {dtype}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bar_chart(plt, rows: list[dict], path: str) -> None:
    cases = list(dict.fromkeys((r["kernel"], r["case"], r["dtype"]) for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    value = {(r["kernel"], r["case"], r["dtype"], r["impl"]): r["ns_per_element"] for r in rows}
    width = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(max(6.5, 0.9 * len(cases) + 2), 5.5))
    for k, impl in enumerate(impls):
        heights = [value.get((*c, impl), float("nan")) for c in cases]
        ax.bar([i + k * width for i in range(len(cases))], heights, width, label=impl)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))])
    ax.set_xticklabels([f"{kernel}\n{case}\n{dtype}" for kernel, case, dtype in cases],
                       rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("ns per element (median)")
    ax.set_title("ns per element per case (no size sweep in this run)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def check_plot_possible(path: str) -> str | None:
    """Why --plot PATH cannot be honoured (checked before the run), or None."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "--plot needs matplotlib (pip install matplotlib, or the bench extra)"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"--plot {path}: directory {directory} does not exist"
    if not os.access(directory, os.W_OK):
        return f"--plot {path}: directory {directory} is not writeable"
    return None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a representative subset (about a minute)")
    ap.add_argument("--only", metavar="PATTERN", help="run cases whose 'kernel/case/dtype' matches (glob or substring)")
    ap.add_argument("--threads", type=positive_int, default=fo.get_num_threads(),
                    help="threads for every implementation (>= 1)")
    ap.add_argument("--repeats", type=positive_int, default=None, help="timed samples per implementation")
    ap.add_argument("--warm-ms", type=non_negative_float, default=harness.WARM_SECONDS * 1e3,
                    help="untimed calls before each sample, for at least this many milliseconds "
                         "(default %(default)g; 0: one untimed call before samples of calls "
                         "under 20 ms, the method of the runs before 2026-12-01's ninth session)")
    ap.add_argument("--json", metavar="PATH", help="write the rows as a JSON list")
    ap.add_argument("--plot", metavar="PATH", help="write ns/element against size as a PNG (matplotlib)")
    args = ap.parse_args(argv)

    if args.plot:
        problem = check_plot_possible(args.plot)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    cases = [c for make in CASE_LISTS for c in make(args.quick)]
    if args.only:
        pat = args.only if any(ch in args.only for ch in "*?[") else f"*{args.only}*"
        cases = [c for c in cases if fnmatch.fnmatch(f"{c.kernel}/{c.case}/{c.dtype}", pat)]
        if not cases:
            print(f"error: --only {args.only!r} matches no case of this run"
                  f"{' (--quick)' if args.quick else ''}", file=sys.stderr)
            return 2
    harness.set_threads(args.threads)
    repeats = args.repeats or (5 if args.quick else 11)
    for line in harness.header_lines(args.threads):
        print(line)
    harness.progress("bandwidth probe...")
    probe = harness.BandwidthProbe()
    probe_start = probe.measure(repeats)
    print(f"bandwidth probe: {probe_start:.1f} GB/s at the start (native a += s*b over two "
          f"{probe.a.nbytes >> 20} MiB float32 arrays, 12 B/element; the largest cache here is "
          f"{harness.largest_cache_bytes() >> 20} MiB); it also runs interleaved with every case, and "
          "each row's '% bw' compares with the probe measured during that case")
    read_start = probe.measure_read(repeats)
    print(f"read-only probe: {read_start:.1f} GB/s at the start ({100 * read_start / probe_start:.0f}% "
          "of the probe; a native sum over the probe's second array, 4 B/element, four runs side "
          "by side per core, prefetched): what a pass that only reads can move, as the reductions "
          "(norms, batch-norm statistics, gradient sums) do")
    print("bytes/element: sgd plain 3, momentum 5, adam 7, adamw-amsgrad 9, clip_grad_norm 3 (x itemsize); "
          "optim.Adam.step 7 x itemsize; batch_norm see case names")
    print(family_bytes_note())
    missing = [name for name, mod in (("torch", harness.torch), ("numba", harness.numba)) if mod is None]
    if missing:
        print(f"skipped peers (not installed): {', '.join(missing)}")
    all_rows = []
    for i, case in enumerate(cases):
        harness.progress(f"[{i + 1}/{len(cases)}] {case.kernel} {case.case} {case.dtype} "
                         f"{case.n_elements:,} elements x {case.n_tensors} tensors")
        rows = harness.measure(case, repeats, probe=probe, probe_bytes=probe.bytes,
                               warm_seconds=args.warm_ms / 1e3)
        finish_rows(rows, args.threads)
        for r in rows:
            r["read_probe_gbps"] = read_start
        all_rows.extend(rows)
    probe.check()
    harness.progress("")
    print(format_table(all_rows))
    for line in summary_lines(all_rows):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_rows, f, indent=1)
    if args.plot:
        plot(all_rows, float(np.median([r["probe_gbps"] for r in all_rows])) if all_rows else probe_start, args.plot)
        if not os.path.isfile(args.plot):
            print(f"error: --plot {args.plot} was not written", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

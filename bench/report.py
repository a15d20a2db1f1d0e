"""Markdown tables from a `bench/run.py --json` file (the README's benchmark section).

    python bench/report.py results.json            # one line per case: fusedops vs the peers
    python bench/report.py results.json --all      # every row
"""

from __future__ import annotations

import argparse
import json
import sys


def _ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def summary(rows: list[dict]) -> str:
    cases: dict[tuple, dict] = {}
    for r in rows:
        cases.setdefault((r["kernel"], r["case"], r["dtype"], r["n_elements"], r["n_tensors"]), {})[r["impl"]] = r
    out = ["| kernel | case | dtype | elements x tensors | fusedops ns/el | GB/s | % of probe | NumPy ns/el "
           "| best peer (ns/el) | vs NumPy | vs peer |",
           "|---|---|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for (kernel, case, dtype, n, tensors), impls in cases.items():
        ours = impls.get("fusedops")
        if ours is None:
            continue
        numpy_row = impls.get("numpy")
        peer = impls.get(ours["baseline"])
        peer_text = f"{peer['impl']} ({peer['ns_per_element']:.3f})" if peer else "-"
        out.append(f"| {kernel} | {case} | {dtype} | {n:,} x {tensors} | {ours['ns_per_element']:.3f} | "
                   f"{ours['gbps']:.1f} | {ours['pct_bandwidth']:.0f}% | "
                   f"{numpy_row['ns_per_element']:.3f} | {peer_text} | "
                   f"{_ratio(ours['speedup_vs_numpy'])} | {_ratio(ours['speedup_vs_peer'])} |"
                   if numpy_row else
                   f"| {kernel} | {case} | {dtype} | {n:,} x {tensors} | {ours['ns_per_element']:.3f} | "
                   f"{ours['gbps']:.1f} | {ours['pct_bandwidth']:.0f}% | - | {peer_text} | - | "
                   f"{_ratio(ours['speedup_vs_peer'])} |")
    return "\n".join(out)


def every_row(rows: list[dict]) -> str:
    out = ["| kernel | case | dtype | elements | tensors | impl | ns/el median | ns/el min | GB/s | % of probe |",
           "|---|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['kernel']} | {r['case']} | {r['dtype']} | {r['n_elements']:,} | {r['n_tensors']} | "
                   f"{r['impl']} | {r['ns_per_element']:.3f} | {r['ns_per_element_min']:.3f} | {r['gbps']:.1f} | "
                   f"{r['pct_bandwidth']:.0f}% |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json_path")
    ap.add_argument("--all", action="store_true", help="every row instead of one line per case")
    args = ap.parse_args(argv)
    with open(args.json_path) as f:
        rows = json.load(f)
    print(every_row(rows) if args.all else summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

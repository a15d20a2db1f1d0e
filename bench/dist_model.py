"""A model of data-parallel training at scale, from one measured single-rank step.

Inputs: the single-rank AdamW step time of the GPT-2-small parameter list (124M values),
measured by ``bench/dist.py`` (``--json``) or given with ``--step-ms``, and stated network
figures. For N ranks and a model of P parameters it computes:

- bytes on the wire per rank and step: a ring allreduce (or reduce-scatter + allgather,
  which ZeRO-1 does) sends, and receives, 2 (N - 1) / N x the gradient bytes;
- model-state memory per rank (ZeRO paper, table 1): float32 Adam holds params, grads
  and two moments, 16 B/param, ZeRO-1 shards the moments: 8 + 8 / N; mixed-precision
  Adam holds 16-bit params and grads and float32 master, m and v: 2 + 2 + 12 = 16
  B/param, ZeRO-1: 4 + 12 / N;
- optimizer step time: the measured step scaled by P / 124M (the step streams memory,
  so it is linear in P); ZeRO-1 runs it on 1/N of the params;
- communication time: bytes / bandwidth + 2 (N - 1) latencies (one per ring step);
- step time = optimizer step + communication (no overlap with the backward pass, which
  is not modelled: this is the part fusedops runs).

    python bench/dist_model.py --json dist.json     # from bench/dist.py --ranks 1 2 --json dist.json
    python bench/dist_model.py --step-ms 240
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GPT2_SMALL = 124_439_808
MODELS = {"124M": GPT2_SMALL, "1.5B": 1_557_611_200}  # GPT-2 small and GPT-2 XL
RANKS = [8, 16, 64, 256, 1024]
NETWORKS_GBPS = [10, 100]
LATENCY_S = 5e-6  # per message, a typical MPI latency over Ethernet/InfiniBand


def wire_bytes(params: int, ranks: int, grad_bytes: int = 4) -> float:
    return 2 * (ranks - 1) / ranks * params * grad_bytes


def memory_per_param(ranks: int, mixed: bool, zero: bool) -> float:
    if mixed:
        return 4 + 12 / ranks if zero else 16.0
    return 8 + 8 / ranks if zero else 16.0


def comm_seconds(params: int, ranks: int, gbps: float, grad_bytes: int = 4) -> float:
    return wire_bytes(params, ranks, grad_bytes) * 8 / (gbps * 1e9) + 2 * (ranks - 1) * LATENCY_S


def step_seconds(step_124m: float, params: int, ranks: int, gbps: float, zero: bool) -> float:
    optimizer = step_124m * params / GPT2_SMALL / (ranks if zero else 1)
    return optimizer + comm_seconds(params, ranks, gbps)


def report(step_124m: float) -> str:
    lines = [f"Measured: AdamW step of the 124M-value parameter list on one rank: "
             f"{step_124m * 1e3:.0f} ms. Network: {LATENCY_S * 1e6:.0f} us per message, "
             "ring allreduce, float32 grads, no overlap with the backward pass.", ""]
    lines.append("| model | ranks | MB sent per rank and step | state B/param: fp32 Adam, ZeRO-1 | "
                 "mixed Adam, ZeRO-1 | " + " | ".join(f"step ms @{g} Gb/s: DP, ZeRO-1"
                                                       for g in NETWORKS_GBPS) + " |")
    lines.append("|---" * (5 + len(NETWORKS_GBPS)) + "|")
    for name, params in MODELS.items():
        for n in RANKS:
            times = " | ".join(
                f"{step_seconds(step_124m, params, n, g, False) * 1e3:.0f}, "
                f"{step_seconds(step_124m, params, n, g, True) * 1e3:.0f}" for g in NETWORKS_GBPS)
            lines.append(f"| {name} | {n} | {wire_bytes(params, n) / 1e6:.0f} | "
                         f"{memory_per_param(n, False, False):.0f}, {memory_per_param(n, False, True):.2f} | "
                         f"{memory_per_param(n, True, False):.0f}, {memory_per_param(n, True, True):.2f} | "
                         f"{times} |")
    return "\n".join(lines)


def single_rank_step(path: str) -> float:
    """The one-rank data-parallel step (seconds) from bench/dist.py's JSON."""
    for result in json.loads(Path(path).read_text()):
        if result["ranks"] == 1:
            return next(r["ms"] for r in result["rows"] if r["op"] == "data parallel step") / 1e3
    raise SystemExit(f"{path} has no one-rank result (run bench/dist.py --ranks 1 2)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--json", help="bench/dist.py results holding a one-rank run")
    source.add_argument("--step-ms", type=float, help="the one-rank 124M AdamW step, in ms")
    args = parser.parse_args(argv)
    step = args.step_ms / 1e3 if args.step_ms is not None else single_rank_step(args.json)
    print(report(step))
    return 0


if __name__ == "__main__":
    sys.exit(main())

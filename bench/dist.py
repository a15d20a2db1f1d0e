"""Data-parallel optimizer steps over MPI on the GPT-2-small parameter list.

148 float32 tensors, 124,439,808 values (GPT-2 small: token and position embeddings, 12
blocks of layer norms, attention and MLP weights and biases, a final layer norm), AdamW.
Measured in the world this runs in (``mpiexec -n N``), every rank timing the same calls
between barriers, the slowest rank counting:

- ``allreduce (raw mpi4py)``: one ``MPI.Allreduce`` (in place, SUM) of a contiguous buffer
  holding all the grads: the floor for averaging them;
- ``allreduce_mean_ (separate arrays)`` / ``(flat_buffer views)``: fusedops' bucketed average,
  with packing copies / in the grads' own buffer;
- ``data parallel step``: ``AdamW(..., comm=).step(grads)``, split into communication
  (the averaging) and compute (the same fused step on one rank's arrays);
- ``ZeRO-1 step``: ``AdamW(..., comm=, shard_state=True).step(grads)``, split into
  communication (reduce-scatter of the grads, allgather of the params) and the rest;
- ``allreduce_mean_ bf16 ...``: the same grads as bfloat16, averaged in 16 bits on the
  wire (an Alltoallv of raw blocks, the native float32 mean rounded once, an allgather),
  against the float32 rows above; ``... step, bf16 grads``: the two steps with those
  bfloat16 grads of the float32 params.

Bytes per rank are what a ring (or reduce-scatter + allgather) algorithm sends and
receives: 2 (N - 1) / N x the grad bytes, for both modes (half of it for bfloat16). On
one machine the ranks share cores and the memory bus: the "network" is a shared-memory
copy, so read the split as what it is, not as a cluster's.

    mpiexec -n 2 python bench/dist.py                 # this world size
    python bench/dist.py --ranks 1 2 --json out.json  # launches mpiexec -n 1 and -n 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

import fusedops as fo
import fusedops.distributed as fod


def gpt2_small_shapes(vocab: int = 50257, context: int = 1024, width: int = 768,
                      layers: int = 12) -> list[tuple[int, ...]]:
    """The parameter shapes of GPT-2 small, in the order of its state dict."""
    shapes: list[tuple[int, ...]] = [(vocab, width), (context, width)]
    for _ in range(layers):
        shapes += [(width,), (width,),                      # ln_1
                   (width, 3 * width), (3 * width,),        # attn.c_attn
                   (width, width), (width,),                # attn.c_proj
                   (width,), (width,),                      # ln_2
                   (width, 4 * width), (4 * width,),        # mlp.c_fc
                   (4 * width, width), (width,)]            # mlp.c_proj
    return shapes + [(width,), (width,)]                    # ln_f


class Stopwatch:
    """Adds up the time spent in the functions it wraps (reset before each timed run)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn):
        def timed_fn(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return timed_fn


def timed(comm: fod.Communicator, fn, repeats: int, before=None,
          watch: Stopwatch | None = None) -> tuple[float, float]:
    """(seconds, the watch's seconds in that run) of the fastest of ``repeats`` runs of
    fn() (after one warm-up), each timed between barriers, the slowest rank counting."""
    best, best_part = float("inf"), 0.0
    for i in range(repeats + 1):
        if before is not None:
            before()
        if watch is not None:
            watch.seconds = 0.0
        comm.barrier()
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        part = watch.seconds if watch is not None else 0.0
        if comm.size > 1:
            elapsed, part = comm.mpi.allreduce((elapsed, part), op=fod._load_mpi().MAX)
        if i and elapsed < best:
            best, best_part = elapsed, part
    return best, best_part


def measure(repeats: int, tiny: bool = False) -> dict:
    comm = fod.world()
    size, rank = comm.size, comm.rank
    shapes = gpt2_small_shapes(vocab=101, context=16, width=8, layers=2) if tiny else gpt2_small_shapes()
    n = sum(int(np.prod(s)) for s in shapes)
    grad_bytes = 4 * n
    rng = np.random.default_rng(0)  # the same params on every rank
    params = [(rng.standard_normal(s, dtype=np.float32) * 0.02) for s in shapes]
    local = np.random.default_rng(1 + rank)
    grads = [local.standard_normal(s, dtype=np.float32) * 1e-3 for s in shapes]
    flat, views = fod.flat_buffer(shapes, np.float32)
    wire = 2 * (size - 1) / size * grad_bytes
    rows = []

    def row(op: str, seconds: float, comm_seconds: float | None = None, moved: float = wire):
        rows.append({"ranks": size, "op": op, "ms": seconds * 1e3,
                     "comm_ms": None if comm_seconds is None else comm_seconds * 1e3,
                     "bytes_per_rank": moved if size > 1 else 0.0})

    def refill_views():
        for v, g in zip(views, grads):
            v[...] = g

    # Raw mpi4py: one Allreduce of the same bytes (the flat buffer as scratch).
    mpi = fod._load_mpi()
    if size > 1:
        row("allreduce (raw mpi4py)",
            timed(comm, lambda: comm.mpi.Allreduce(mpi.IN_PLACE, flat, op=mpi.SUM), repeats,
                  refill_views)[0])
    row("allreduce_mean_ (separate arrays)", timed(comm, lambda: fod.allreduce_mean_(grads, comm),
                                                   repeats)[0])
    row("allreduce_mean_ (flat_buffer views)", timed(comm, lambda: fod.allreduce_mean_(views, comm),
                                                     repeats, refill_views)[0])
    # The average is the same on every rank (a check that the timed calls did their job).
    assert size == 1 or len(set(comm.mpi.allgather(zlib.crc32(views[5])))) == 1, \
        "the ranks' averages differ"

    # The same grads as bfloat16: half the bytes on the wire.
    half_grads = [g.astype(fo.bfloat16) for g in grads]
    half_flat, half_views = fod.flat_buffer(shapes, fo.bfloat16)

    def refill_half_views():
        for v, g in zip(half_views, half_grads):
            v[...] = g

    row("allreduce_mean_ bf16 (separate arrays)",
        timed(comm, lambda: fod.allreduce_mean_(half_grads, comm), repeats)[0], moved=wire / 2)
    row("allreduce_mean_ bf16 (flat_buffer views)",
        timed(comm, lambda: fod.allreduce_mean_(half_views, comm), repeats, refill_half_views)[0],
        moved=wire / 2)
    assert size == 1 or len(set(comm.mpi.allgather(zlib.crc32(half_views[5].view(np.uint16))))) == 1, \
        "the ranks' bfloat16 averages differ"
    del half_flat, half_views

    # Compute alone: the fused AdamW step on one rank's full arrays.
    opt = fo.optim.AdamW(params, lr=1e-4)
    row("AdamW step, one rank's arrays (compute)", timed(comm, lambda: opt.step(grads), repeats)[0],
        moved=0.0)
    del opt

    # Data parallel: the time outside the local fused step is communication.
    dp = fo.optim.AdamW(params, lr=1e-4, comm=comm)
    watch = Stopwatch()
    dp._step_local = watch.wrap(dp._step_local)
    dp_step, dp_compute = timed(comm, lambda: dp.step(grads), repeats, watch=watch)
    row("data parallel step", dp_step, dp_step - dp_compute if size > 1 else 0.0)
    assert size == 1 or len(set(comm.mpi.allgather(zlib.crc32(params[3])))) == 1, \
        "params differ across ranks"
    dp_state = sum(a.nbytes for entry in dp.state_dict()["state"].values() for a in entry.values())
    del dp

    # ZeRO-1: the reduce-scatter of the grads and the allgather of the params are communication.
    zero = fo.optim.AdamW(params, lr=1e-4, comm=comm, shard_state=True)
    watch = Stopwatch()
    helper = zero._dist
    if isinstance(helper, fod.ShardedDataParallel):
        helper._reduce_scatter_mean = watch.wrap(helper._reduce_scatter_mean)
        helper._allgather_params = watch.wrap(helper._allgather_params)
    zero_step, zero_comm = timed(comm, lambda: zero.step(grads), repeats, watch=watch)
    row("ZeRO-1 step", zero_step, zero_comm)
    if not isinstance(helper, fod.ShardedDataParallel):
        zero_state = dp_state
    else:
        zero_state = sum(a.nbytes for a in zero.state_dict()["state"].values())
    assert size == 1 or len(set(comm.mpi.allgather(zlib.crc32(params[3])))) == 1
    del zero

    # The same steps with bfloat16 grads of the float32 params: the grads travel as 16 bits
    # (ZeRO-1 still gathers float32 params: 3/4 of the float32 bytes).
    for op, shard_state, moved in (("data parallel step, bf16 grads", False, wire / 2),
                                   ("ZeRO-1 step, bf16 grads", True, wire * 3 / 4)):
        opt = fo.optim.AdamW(params, lr=1e-4, comm=comm, shard_state=shard_state)
        watch = Stopwatch()
        helper = opt._dist
        if isinstance(helper, fod.ShardedDataParallel):
            helper._reduce_scatter_mean = watch.wrap(helper._reduce_scatter_mean)
            helper._allgather_params = watch.wrap(helper._allgather_params)
        else:
            opt._step_local = watch.wrap(opt._step_local)
        step, part = timed(comm, lambda: opt.step(half_grads), repeats, watch=watch)
        communication = part if shard_state else step - part
        row(op, step, communication if size > 1 else 0.0, moved=moved)
        assert size == 1 or len(set(comm.mpi.allgather(zlib.crc32(params[3])))) == 1
        del opt
    return {"ranks": size, "tensors": len(shapes), "values": n, "threads_per_rank": fo.get_num_threads(),
            "state_bytes_per_rank": {"data parallel": dp_state, "ZeRO-1": zero_state}, "rows": rows}


def format_report(results: list[dict]) -> str:
    first = results[0]
    lines = [f"GPT-2-small-shaped parameter list: {first['tensors']} float32 tensors, "
             f"{first['values']:,} values, AdamW", "",
             f"{'ranks':>5}  {'operation':<42} {'time ms':>9} {'comm ms':>9} {'compute ms':>10} "
             f"{'MB/rank':>8}"]
    for result in results:
        for r in result["rows"]:
            comm_ms = "" if r["comm_ms"] is None else f"{r['comm_ms']:9.1f}"
            compute = "" if r["comm_ms"] is None else f"{r['ms'] - r['comm_ms']:10.1f}"
            lines.append(f"{r['ranks']:>5}  {r['op']:<42} {r['ms']:9.1f} {comm_ms:>9} {compute:>10} "
                         f"{r['bytes_per_rank'] / 1e6:8.0f}")
        states = result["state_bytes_per_rank"]
        lines.append(f"{result['ranks']:>5}  optimizer state per rank: data parallel "
                     f"{states['data parallel'] / 1e6:.0f} MB, ZeRO-1 {states['ZeRO-1'] / 1e6:.0f} MB "
                     f"({result['threads_per_rank']} threads per rank)")
    for result in results:
        ops = {r["op"]: r for r in result["rows"]}
        if "allreduce (raw mpi4py)" in ops:
            raw = ops["allreduce (raw mpi4py)"]["ms"]
            lines.append(f"{result['ranks']} ranks: averaging / raw Allreduce = "
                         f"{ops['allreduce_mean_ (separate arrays)']['ms'] / raw:.2f} (separate arrays), "
                         f"{ops['allreduce_mean_ (flat_buffer views)']['ms'] / raw:.2f} (flat buffer); "
                         f"ZeRO-1 step / data-parallel step = "
                         f"{ops['ZeRO-1 step']['ms'] / ops['data parallel step']['ms']:.2f}")
            lines.append(f"{result['ranks']} ranks: bf16 grads on the wire: float32 time / bf16 time = "
                         f"{ops['allreduce_mean_ (separate arrays)']['ms'] / ops['allreduce_mean_ bf16 (separate arrays)']['ms']:.2f}"
                         f" (separate arrays), "
                         f"{ops['allreduce_mean_ (flat_buffer views)']['ms'] / ops['allreduce_mean_ bf16 (flat_buffer views)']['ms']:.2f}"
                         f" (flat buffer)")
    return "\n".join(lines)


def find_mpiexec() -> str | None:
    for directory in (Path(sys.executable).parent, Path(os.path.realpath(sys.executable)).parent,
                      Path(sys.base_prefix) / "bin"):
        candidate = directory / "mpiexec"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("mpiexec")


def launch(ranks: list[int], repeats: int, tiny: bool) -> list[dict]:
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise SystemExit("mpiexec not found: pip install '.[dist]'")
    results = []
    for n in ranks:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "result.json"
            env = {**os.environ, "HYDRA_LAUNCHER": "fork"}
            subprocess.run([mpiexec, "-n", str(n), sys.executable, __file__, "--repeats", str(repeats),
                            "--json", str(out), "--no-report", *(["--tiny"] if tiny else [])],
                           check=True, env=env)
            results.append(json.loads(out.read_text())[0])
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+",
                        help="launch mpiexec with each of these rank counts (else: this world)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0,
                        help="threads per rank (default: the cores divided by the ranks)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tiny", action="store_true",
                        help="a 2-block, width-8 model of the same structure (a quick check)")
    args = parser.parse_args(argv)
    if args.ranks:
        results = launch(args.ranks, args.repeats, args.tiny)
    else:
        comm = fod.world()
        fo.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // comm.size))
        results = [measure(args.repeats, args.tiny)]
        if comm.rank != 0:
            return 0
    if not args.no_report:
        print(format_report(results), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

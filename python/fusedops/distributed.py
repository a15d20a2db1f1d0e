"""Data parallelism over MPI (mpi4py): gradient averaging, ZeRO-1 sharded optimizer steps.

Run a script under ``mpiexec -n N python script.py``; each process is one rank. Without
mpi4py, or with one rank, :func:`world` is a one-rank communicator and every collective
here is a no-op (after the same argument checks), so the same script runs anywhere.

Everything moves through buffer-protocol calls on NumPy arrays (no pickling on the hot
path) and the optimizer math runs in the same fused kernels, on views. The collectives
have a fixed structure: arrays are cut in list order into buckets whose boundaries
depend only on the shapes, dtypes and ``bucket_bytes`` (:func:`plan_buckets`: large
arrays are used in their own memory, small ones packed together); each bucket is
reduce-scattered (every element is summed by exactly one rank, in the MPI library's
fixed order for that message size and rank count), divided by the rank count on that
rank and allgathered. So every rank receives bitwise the same average, and a run
replays bitwise.

bfloat16 and float16 arrays travel as 16 bits (raw uint16: MPI has no bfloat16 type):
each rank receives every other rank's copy of its block and one native call sums them in
float32 in rank order, divides by the rank count in float32 and rounds the mean once, to
nearest even (:func:`allreduce_mean_`).

Errors never leave a rank waiting in a collective: the arguments are checked on every
rank first, the ranks agree on the outcome (one tiny allreduce), and if any rank rejected
its input every rank raises.
"""

from __future__ import annotations

import bisect
import math
import numbers
import sys
import zlib
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple,
                    Union)

import numpy as np
import numpy.typing as npt
from ._bfloat16 import is_half

from . import _core

if TYPE_CHECKING:
    from .nn import BatchNorm
    from .optim import Optimizer

Array = npt.NDArray[Any]

_MPI: Any = None  # mpi4py.MPI once world() or an mpi4py communicator brought it in


def _load_mpi() -> Any:
    """mpi4py.MPI, or None without mpi4py. Imported on first use, not with this module:
    importing it initializes MPI (a one-rank "singleton" when not under mpiexec)."""
    global _MPI
    if _MPI is None:
        try:
            from mpi4py import MPI
        except ImportError:
            return None
        _MPI = MPI
    return _MPI


def _mpi_dtype(dtype: "np.dtype[Any]") -> Any:
    """The predefined MPI datatype (reductions need one, not a derived copy)."""
    return {np.dtype(np.float32): _MPI.FLOAT, np.dtype(np.float64): _MPI.DOUBLE}[np.dtype(dtype)]


def _buffer(a: Array) -> List[Any]:
    """``a`` as an MPI message: 16-bit floats travel as raw uint16 (NumPy cannot export
    bfloat16 as a buffer and MPI has no bfloat16 type), the others as their MPI type."""
    if is_half(a.dtype):
        return [a.view(np.uint16), _MPI.UINT16_T]
    return [a, _mpi_dtype(a.dtype)]


__all__ = ["Communicator", "world", "broadcast_", "allreduce_mean_", "flat_buffer"]

DEFAULT_BUCKET_BYTES = 25 << 20  # also what an optimizer built with comm= uses (read then)
# Reducible dtypes: these, and the 16-bit ones (is_half), which are averaged on the wire in
# 16 bits.
_FULL = (np.dtype(np.float32), np.dtype(np.float64))


class Communicator:
    """A group of ranks: ``rank``, ``size`` and the mpi4py communicator (``mpi``, None
    without MPI). :func:`world` gives one over every process of the run; any mpi4py
    ``Comm`` is accepted wherever a communicator is (it is wrapped)."""

    def __init__(self, mpi_comm: Any = None) -> None:
        if mpi_comm is not None:
            _load_mpi()
        self.mpi: Any = mpi_comm
        self.rank: int = 0 if mpi_comm is None else mpi_comm.Get_rank()
        self.size: int = 1 if mpi_comm is None else mpi_comm.Get_size()

    def barrier(self) -> None:
        if self.size > 1:
            self.mpi.Barrier()

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size})"


def world() -> Communicator:
    """Every process of the run (``MPI.COMM_WORLD``); one rank without mpi4py."""
    mpi = _load_mpi()
    return Communicator(None if mpi is None else mpi.COMM_WORLD)


def as_communicator(comm: Any, where: str) -> Communicator:
    """``comm`` as a :class:`Communicator` (an mpi4py ``Comm`` is wrapped)."""
    if isinstance(comm, Communicator):
        return comm
    mpi = sys.modules.get("mpi4py.MPI")  # an mpi4py Comm implies mpi4py is loaded
    if mpi is not None and isinstance(comm, mpi.Comm):
        _load_mpi()
        return Communicator(comm)
    raise TypeError(f"{where}: comm must be a fusedops.distributed.Communicator (see world()) "
                    f"or an mpi4py Comm, got {type(comm).__name__}")


def flat_buffer(shapes: Sequence[Union[int, Sequence[int]]],
                dtype: npt.DTypeLike = np.float32) -> Tuple[Array, List[Array]]:
    """One zeroed, contiguous 1-D buffer and a view into it per shape, laid out in order.

    Collectives on a list of such views (e.g. gradients) run on the buffer itself, with no
    packing copies.
    """
    dims = [tuple(int(d) for d in ((s,) if isinstance(s, numbers.Integral) else s))  # type: ignore[union-attr]
            for s in shapes]
    for i, shape in enumerate(dims):
        if any(d < 0 for d in shape):
            raise ValueError(f"flat_buffer: shapes[{i}] has a negative dimension: {shape}")
    sizes = [math.prod(shape) for shape in dims]
    flat = np.zeros(sum(sizes), np.dtype(dtype))
    views: List[Array] = []
    offset = 0
    for shape, n in zip(dims, sizes):
        views.append(flat[offset:offset + n].reshape(shape))
        offset += n
    return flat, views


# ---------------------------------------------------------------- argument checks

def _as_array_list(arrays: Any, where: str, name: str) -> List[Array]:
    if isinstance(arrays, np.ndarray):
        return [arrays]
    if not isinstance(arrays, (list, tuple)):
        raise TypeError(f"{where}: {name} must be an array or a list/tuple of arrays, got "
                        f"{type(arrays).__name__}")
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{where}: {name}[{i}] must be a numpy.ndarray, got {type(a).__name__}")
    return list(arrays)


def _check_written(arrays: Sequence[Array], where: str, name: str) -> None:
    """Each array can be written in place, and no two share memory."""
    for i, a in enumerate(arrays):
        if not a.flags.c_contiguous:
            raise ValueError(f"{where}: {name}[{i}] must be C-contiguous (use np.ascontiguousarray "
                             "and keep that array)")
        if not a.flags.writeable:
            raise ValueError(f"{where}: {name}[{i}] must be writeable")
        if not a.flags.aligned:
            raise ValueError(f"{where}: {name}[{i}] must be aligned to its dtype")
    _check_no_overlap([(f"{name}[{i}]", a) for i, a in enumerate(arrays)], where)


def _check_no_overlap(named: Sequence[Tuple[str, Array]], where: str) -> None:
    spans = sorted((a.__array_interface__["data"][0], a.nbytes, label)
                   for label, a in named if a.nbytes)
    for (start, size, label), (next_start, _, next_label) in zip(spans, spans[1:]):
        if start + size > next_start:
            raise ValueError(f"{where}: {label} and {next_label} share memory")


def _check_bucket_bytes(bucket_bytes: Any, where: str) -> int:
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, numbers.Integral):
        raise TypeError(f"{where}: bucket_bytes must be an int, got {type(bucket_bytes).__name__}")
    if bucket_bytes < 1:
        raise ValueError(f"{where}: bucket_bytes must be >= 1, got {bucket_bytes}")
    return int(bucket_bytes)


def _layout_signature(arrays: Sequence[Array]) -> int:
    """A 32-bit fingerprint of the shapes and dtypes, compared across ranks."""
    text = ";".join(f"{a.dtype.str}{a.shape}" for a in arrays)
    return zlib.crc32(text.encode())


def _agree(comm: Communicator, error: Optional[Exception], where: str, signature: int = 0) -> None:
    """Collective: raises on every rank if any rank has an ``error`` or the ranks'
    ``signature`` values differ. The rank with the error re-raises its own; the others
    raise the same type naming that rank. Costs one 3-integer allreduce when all is well."""
    if comm.size == 1:
        if error is not None:
            raise error
        return
    flags = np.array([error is not None, signature, -signature], np.int64)
    comm.mpi.Allreduce(_MPI.IN_PLACE, flags, op=_MPI.MAX)
    if flags[0]:
        reports = comm.mpi.allgather(None if error is None else (type(error), str(error)))
        if error is not None:
            raise error
        rank, (kind, message) = next((r, e) for r, e in enumerate(reports) if e is not None)
        if not (isinstance(kind, type) and issubclass(kind, (TypeError, ValueError))):
            kind = ValueError
        raise kind(f"{where}: rank {rank} rejected its input: {message}")
    if flags[1] != -flags[2]:
        raise ValueError(f"{where}: the ranks disagree on the arrays' count, shapes or dtypes")


# ---------------------------------------------------------------- arrays in one buffer

def _root_array(a: Array) -> Array:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _contiguous_span(flats: Sequence[Array], total: int) -> Optional[Array]:
    """A 1-D view of all the arrays' elements when they lie back to back, in list order,
    in one C-contiguous buffer (as :func:`flat_buffer`'s views do); else None."""
    arrays = [f for f in flats if f.size]
    if not arrays:
        return None
    dtype = arrays[0].dtype
    root = _root_array(arrays[0])
    if any(f.dtype != dtype or _root_array(f) is not root for f in arrays) or not root.flags.c_contiguous:
        return None
    addresses = [f.__array_interface__["data"][0] for f in arrays]
    if any(a + f.nbytes != b for a, f, b in zip(addresses, arrays, addresses[1:])):
        return None
    offset = addresses[0] - root.__array_interface__["data"][0]
    span = root.reshape(-1).view(np.uint8)[offset:offset + total * dtype.itemsize].view(dtype)
    return span if span.flags.writeable and span.flags.aligned else None


# ---------------------------------------------------------------- collectives

def _by_dtype(arrays: Sequence[Array]) -> Dict["np.dtype[Any]", List[Array]]:
    runs: Dict["np.dtype[Any]", List[Array]] = {}
    for a in arrays:
        runs.setdefault(a.dtype, []).append(a)
    return runs


def _mean_blocks(comm: Communicator, buf: Array, received: Optional[Array]) -> None:
    """Reduce-scatter (each block averaged on one rank), then allgather: ``buf.size`` is a
    multiple of the rank count. 16-bit ``buf``: ``received`` holds ``buf.size`` elements."""
    block = buf.size // comm.size
    lo = comm.rank * block
    if is_half(buf.dtype):
        assert received is not None
        _mean_block_16(comm, buf, buf[lo:lo + block], received)
    else:
        # In place, the rank's summed block lands at the start of buf: never inside the
        # rank's own block further on (rank 0's is the same block).
        comm.mpi.Reduce_scatter_block(_MPI.IN_PLACE, _buffer(buf), op=_MPI.SUM)
        np.divide(buf[:block], comm.size, out=buf[lo:lo + block])
    comm.mpi.Allgather(_MPI.IN_PLACE, _buffer(buf))


def _mean_block_16(comm: Communicator, send: Array, mine: Array, received: Array) -> None:
    """The 16-bit reduce-scatter: every rank sends each other rank that rank's block of
    ``send``, as raw 16 bits (one Alltoallv that skips the rank itself: its own block is
    read where it is, not copied), then one native call sums the ranks' blocks in float32
    in rank order, divides by the rank count and rounds once (to nearest even) into
    ``mine`` (which may be the rank's own block of ``send``). The same bits on every rank
    and in every run."""
    size, rank, block = comm.size, comm.rank, mine.size
    counts = [block] * size
    counts[rank] = 0
    displacements = [r * block for r in range(size)]
    rows = received[:send.size].reshape(size, block)
    comm.mpi.Alltoallv([send.view(np.uint16), (counts, displacements), _MPI.UINT16_T],
                       [rows.view(np.uint16), (counts, displacements), _MPI.UINT16_T])
    own = send[rank * block:(rank + 1) * block]
    _core._mean_of_rows([own if r == rank else rows[r] for r in range(size)], mine)


def _cached(cache: Dict[Any, Array], key: Any, size: int, dtype: "np.dtype[Any]") -> Array:
    """A scratch array of at least ``size`` elements, kept in ``cache`` from call to call."""
    scratch = cache.get(key)
    if scratch is None or scratch.size < size:
        scratch = cache[key] = np.empty(size, dtype)
    return scratch


def _average(comm: Communicator, arrays: Sequence[Array], bucket_bytes: int,
             cache: Dict[Any, Array]) -> None:
    """Replaces the (checked) arrays by their mean over the ranks, dtype by dtype, bucket
    by bucket. 16-bit arrays are averaged in 16 bits on the wire (:func:`_mean_block_16`)."""
    for dtype, run in _by_dtype(arrays).items():
        flats, buckets = _bucketed(run, bucket_bytes, comm.size)
        scratch = _cached(cache, ("packed", dtype), _scratch_elements(buckets, comm.size), dtype)
        received = None
        if is_half(dtype):
            largest = max((comm.size * b.block for b in buckets), default=0)
            received = _cached(cache, ("received", dtype), largest, dtype)
        _run_buckets(flats, buckets, comm.size,
                     lambda buf: _mean_blocks(comm, buf, received), scratch=scratch)


def allreduce_mean_(grads: Union[Array, Sequence[Array]], comm: Any, *,
                    bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
    """Replaces each array by its mean over the ranks, in place (float32, float64,
    bfloat16 or float16).

    The arrays of each dtype are cut into buckets of at most ``bucket_bytes``
    (:func:`plan_buckets`) and each bucket is averaged with a reduce-scatter and an
    allgather, so the result is bitwise identical on every rank and from run to run.
    Arrays of 1 MiB or more, and arrays that lie back to back in one buffer
    (:func:`flat_buffer`), are averaged in their own memory; smaller ones are packed.
    Every rank must pass arrays of the same shapes and dtypes (ValueError on every rank
    otherwise).

    bfloat16 and float16 arrays travel as 16 bits (half the bytes of float32): each rank
    receives every rank's copy of its block, sums them in float32 in rank order, divides
    by the rank count in float32 and rounds the mean once, to nearest even, to the
    16-bit dtype; the 16-bit means are then allgathered. A float16 sum beyond 65504 does
    not overflow (only a mean beyond it does).
    """
    where = "allreduce_mean_"
    comm = as_communicator(comm, where)
    error: Optional[Exception] = None
    try:
        arrays = _as_array_list(grads, where, "grads")
        for i, a in enumerate(arrays):
            if a.dtype not in _FULL and not is_half(a.dtype):
                raise TypeError(f"{where}: grads[{i}] has dtype {a.dtype}; float32, float64, "
                                "bfloat16 and float16 are supported")
        _check_written(arrays, where, "grads")
        bucket_bytes = _check_bucket_bytes(bucket_bytes, where)
    except (TypeError, ValueError) as exc:
        error = exc
    _agree(comm, error, where, 0 if error else _layout_signature(arrays))
    if comm.size == 1:
        return
    _average(comm, arrays, bucket_bytes, {})


def broadcast_(arrays: Union[Array, Sequence[Array]], comm: Any, root: int = 0, *,
               bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
    """Copies rank ``root``'s arrays into every rank's arrays, in place (any dtype).

    Typically once at start-up, so that every rank starts from the same params. Every
    rank must pass arrays of the same shapes and dtypes (ValueError on every rank
    otherwise).
    """
    where = "broadcast_"
    comm = as_communicator(comm, where)
    error: Optional[Exception] = None
    try:
        items = _as_array_list(arrays, where, "arrays")
        _check_written(items, where, "arrays")
        _check_root(comm, root, where)
        bucket_bytes = _check_bucket_bytes(bucket_bytes, where)
    except (TypeError, ValueError) as exc:
        error = exc
    _agree(comm, error, where, 0 if error else _layout_signature(items) ^ int(root))
    if comm.size == 1:
        return
    # Raw bytes: any dtype (bfloat16 included) travels as MPI.BYTE.
    raw = [a.reshape(-1).view(np.uint8) for a in items]

    def bcast(buf: Array) -> None:
        comm.mpi.Bcast([buf, _MPI.BYTE], root=root)

    flats, buckets = _bucketed(raw, bucket_bytes, 1)
    _run_buckets(flats, buckets, 1, bcast,
                 pack=comm.rank == root, unpack=comm.rank != root)


# ---------------------------------------------------------------- buckets

# Arrays of at least this size are run in their own memory: copying them into a bucket
# and back costs more than the collective calls saved (about 0.4 ms per MiB against tens
# of microseconds per call).
_IN_PLACE_BYTES = 1 << 20

Piece = Tuple[int, int, int]  # (array index, first flat element, element count)


class Bucket:
    """The elements of one collective: ``pieces`` of the arrays, back to back, seen as
    ``blocks`` equal blocks of ``block`` elements (the last zero-padded).

    ``in_place``: a single slice of one array whose length is a multiple of ``blocks``,
    used in the array's own memory; otherwise the pieces are packed into a scratch buffer.
    """

    __slots__ = ("pieces", "length", "block", "in_place")

    def __init__(self, pieces: List[Piece], blocks: int, in_place: bool) -> None:
        self.pieces = pieces
        self.length = sum(n for _, _, n in pieces)
        self.block = -(-self.length // blocks)
        self.in_place = in_place

    def block_pieces(self, r: int) -> List[Tuple[int, int, int, int]]:
        """(array index, first element, count, position in the block) of the elements of
        block ``r``, the bucket's elements [r * block, (r + 1) * block)."""
        start, end = r * self.block, min((r + 1) * self.block, self.length)
        found, pos = [], 0
        for i, lo, n in self.pieces:
            a, b = max(start, pos), min(end, pos + n)
            if a < b:
                found.append((i, lo + a - pos, b - a, a - start))
            pos += n
        return found


def plan_buckets(sizes: Sequence[int], itemsize: int, bucket_bytes: int, blocks: int, *,
                 in_place_bytes: int = _IN_PLACE_BYTES) -> List[Bucket]:
    """Cuts arrays of these sizes, in list order, into buckets of at most ``bucket_bytes``
    made of ``blocks`` equal blocks. An array of at least ``in_place_bytes`` (or a bucket)
    gives in-place buckets, slices of it whose lengths are multiples of ``blocks``; its
    last few elements and the smaller arrays are packed, whole and in order, into shared
    buckets. The plan depends only on the arguments, so it is the same on every rank."""
    per_bucket = max(blocks, bucket_bytes // itemsize // blocks * blocks)
    in_place = min(per_bucket, max(blocks, in_place_bytes // itemsize))
    buckets: List[Bucket] = []
    pending: List[Piece] = []
    filled = 0

    def flush() -> None:
        nonlocal filled
        if filled:
            buckets.append(Bucket(list(pending), blocks, False))
        pending.clear()
        filled = 0

    def add_packed(piece: Piece) -> None:
        nonlocal filled
        if filled + piece[2] > per_bucket:
            flush()
        pending.append(piece)
        filled += piece[2]

    for i, size in enumerate(sizes):
        if size >= in_place:
            flush()
            body = size - size % blocks
            for lo in range(0, body, per_bucket):
                buckets.append(Bucket([(i, lo, min(per_bucket, body - lo))], blocks, True))
            if body < size:
                add_packed((i, body, size - body))
        elif size:
            add_packed((i, 0, size))
    flush()
    return buckets


def _bucketed(arrays: Sequence[Array], bucket_bytes: int,
              blocks: int) -> Tuple[List[Array], List[Bucket]]:
    """1-D views of the arrays and their buckets. Arrays that lie back to back in one
    buffer are one array, used in place whatever its size."""
    flats = [a.reshape(-1) for a in arrays]
    span = _contiguous_span(flats, sum(f.size for f in flats))
    if span is not None:
        flats = [span]
    return flats, plan_buckets([f.size for f in flats], flats[0].dtype.itemsize if flats else 1,
                               bucket_bytes, blocks,
                               in_place_bytes=0 if span is not None else _IN_PLACE_BYTES)


def _scratch_elements(buckets: Sequence[Bucket], blocks: int) -> int:
    return max((blocks * b.block for b in buckets if not b.in_place), default=0)


def _pack(flats: Sequence[Array], bucket: Bucket, buf: Array) -> None:
    pos = 0
    for i, lo, n in bucket.pieces:
        buf[pos:pos + n] = flats[i][lo:lo + n]
        pos += n
    buf[pos:] = 0


def _unpack(flats: Sequence[Array], bucket: Bucket, buf: Array) -> None:
    pos = 0
    for i, lo, n in bucket.pieces:
        flats[i][lo:lo + n] = buf[pos:pos + n]
        pos += n


def _run_buckets(flats: Sequence[Array], buckets: Sequence[Bucket], blocks: int,
                 collective: Callable[[Array], None], *, pack: bool = True, unpack: bool = True,
                 scratch: Optional[Array] = None) -> None:
    """Runs ``collective(buffer)`` on each bucket: an in-place bucket in its array's
    memory, a packed one through ``scratch`` (allocated if None or too small)."""
    for bucket in buckets:
        if bucket.in_place:
            i, lo, n = bucket.pieces[0]
            collective(flats[i][lo:lo + n])
            continue
        size = blocks * bucket.block
        if scratch is None or scratch.size < size:
            scratch = np.empty(_scratch_elements(buckets, blocks), flats[0].dtype)
        buf = scratch[:size]
        if pack:
            _pack(flats, bucket, buf)
        collective(buf)
        if unpack:
            _unpack(flats, bucket, buf)


# ---------------------------------------------------------------- optimizers (comm=)

def attach(opt: Optimizer, comm: Any, shard_state: Any,
           setup: Callable[[], None]) -> Optional[DataParallel]:
    """Builds an optimizer given ``comm=``/``shard_state=``: runs its local ``setup()`` on
    every rank, then one allgather checks that the ranks agree (no rank failed, same param
    count, group sizes, shapes and dtypes); otherwise every rank raises. Returns the object
    that runs the distributed steps, or None with one rank (a plain optimizer)."""
    name = type(opt).__name__
    if not isinstance(shard_state, (bool, np.bool_)):
        raise TypeError(f"{name}: shard_state must be a bool, got {type(shard_state).__name__}")
    if comm is None:
        if shard_state:
            raise ValueError(f"{name}: shard_state=True needs comm= (e.g. fusedops.distributed.world())")
        setup()
        return None
    comm = as_communicator(comm, name)
    if comm.size == 1:
        setup()
        return None
    error: Optional[Exception] = None
    signature: Optional[Tuple[Any, ...]] = None
    try:
        setup()
        signature = _optimizer_signature(opt, bool(shard_state))
    except (TypeError, ValueError) as exc:
        error = exc
    # One allgather of small objects (construction only): each rank's error or signature.
    reports: List[Tuple[Any, ...]] = comm.mpi.allgather(
        ("ok", signature) if error is None else ("error", type(error), str(error)))
    if error is not None:
        raise error
    failed = [(r, rep) for r, rep in enumerate(reports) if rep[0] == "error"]
    if failed:
        rank, (_, kind, message) = failed[0]
        kind = kind if isinstance(kind, type) and issubclass(kind, (TypeError, ValueError)) else ValueError
        raise kind(f"{name}: rank {rank} rejected its arguments: {message}")
    for rank, (_, other) in enumerate(reports):
        if other != reports[0][1]:
            raise ValueError(f"{name}: the ranks' params disagree: "
                             f"{_signature_difference(reports[0][1], other, rank)}")
    return (ShardedDataParallel if shard_state else DataParallel)(opt, comm)


def _all_params(opt: Optimizer) -> List[Array]:
    return [p for g in opt.param_groups for p in g["params"]]


def _optimizer_signature(opt: Optimizer, shard_state: bool) -> Tuple[Any, ...]:
    precision = opt._precision  # ranks that round or keep masters differently would diverge
    options = (None if precision.state_dtype is None else str(precision.state_dtype),
               precision.master_weights, precision.stochastic_rounding, precision.seed)
    return (type(opt).__name__, shard_state, tuple(len(g["params"]) for g in opt.param_groups),
            tuple((p.shape, p.dtype.str) for p in _all_params(opt)), options)


def _signature_difference(first: Tuple[Any, ...], other: Tuple[Any, ...], rank: int) -> str:
    shapes_a, shapes_b = first[3], other[3]
    if len(shapes_a) != len(shapes_b):
        return f"rank 0 has {len(shapes_a)} params, rank {rank} has {len(shapes_b)}"
    if first[4] != other[4]:
        return (f"mixed-precision options (state_dtype, master_weights, stochastic_rounding, "
                f"seed): rank 0 has {first[4]}, rank {rank} has {other[4]}")
    names = ("optimizer class", "shard_state", "param-group sizes")
    for label, a, b in zip(names, first, other):
        if a != b:
            return f"{label}: rank 0 has {a}, rank {rank} has {b}"
    for i, (a, b) in enumerate(zip(shapes_a, shapes_b)):
        if a != b:
            return (f"param {i}: rank 0 has shape {a[0]} dtype {np.dtype(a[1])}, rank {rank} "
                    f"has shape {b[0]} dtype {np.dtype(b[1])}")
    return "unknown difference"


def _check_step_input(opt: Optimizer, grads_arg: Any, grad_scale: Any, *,
                      written: bool) -> Tuple[List[Array], List[Any]]:
    """The checks the native step makes, run before any collective; returns the grads
    (the bound ones when ``grads_arg`` is None) and the groups' hyperparameters."""
    name = type(opt).__name__
    params = _all_params(opt)
    if grads_arg is None:
        grads_arg = opt._bound_grads()
    if isinstance(grads_arg, np.ndarray) and len(params) == 1:
        grads_arg = [grads_arg]
    grads = _as_array_list(grads_arg, f"{name}.step", "grads")
    if len(grads) != len(params):
        raise ValueError(f"{name}.step: got {len(grads)} grads for {len(params)} params")
    for i, (g, p) in enumerate(zip(grads, params)):
        if g.dtype != p.dtype and not (p.dtype == np.float32 and is_half(g.dtype)):
            raise TypeError(f"{name}.step: grads[{i}] has dtype {g.dtype}, its param has {p.dtype} "
                            "(a grad has its param's dtype; float32 params also take bfloat16 "
                            "or float16 grads)")
        if g.shape != p.shape:
            raise ValueError(f"{name}.step: grads[{i}] has shape {g.shape}, its param has {p.shape}")
        if not g.flags.c_contiguous:
            raise ValueError(f"{name}.step: grads[{i}] must be C-contiguous (use np.ascontiguousarray)")
    if written:  # the average is written into the grads
        _check_written(grads, f"{name}.step", "grads")
    _check_no_overlap([*((f"grads[{i}]", g) for i, g in enumerate(grads)),
                       *((f"params[{i}]", p) for i, p in enumerate(params))], f"{name}.step")
    if isinstance(grad_scale, bool) or not isinstance(grad_scale, numbers.Real):
        raise TypeError(f"{name}.step: grad_scale must be a real number, got {type(grad_scale).__name__}")
    if not (math.isfinite(grad_scale) and float(grad_scale) > 0):
        raise ValueError(f"{name}.step: grad_scale must be finite and > 0, got {grad_scale}")
    groups: List[Any] = []
    for i, group in enumerate(opt.param_groups):
        opt._check_group(group, i)  # the native step's type and range checks
        groups.append(opt._group_args(group, i))
    return grads, groups


class DataParallel:
    """The steps of an optimizer built with ``comm=`` (more than one rank).

    Every rank holds all params and all state; ``step`` averages the grads over the ranks
    in place (bucketed), then runs the ordinary fused step. The averaged grads are bitwise
    identical on every rank, so the global-norm clipping and the skip decision are too,
    and so are the updated params."""

    def __init__(self, opt: Optimizer, comm: Communicator) -> None:
        self.opt = opt
        self.comm = comm
        self.bucket_bytes = DEFAULT_BUCKET_BYTES
        self._scratch: Dict[Any, Array] = {}  # buffers of the averaging, kept from step to step

    def step(self, grads_arg: Any, grad_scale: float) -> bool:
        error: Optional[Exception] = None
        signature = 0
        try:
            grads, _ = _check_step_input(self.opt, grads_arg, grad_scale, written=True)
            signature = _layout_signature([*_all_params(self.opt), *grads])
        except (TypeError, ValueError) as exc:
            error = exc
        _agree(self.comm, error, f"{type(self.opt).__name__}.step", signature)
        _average(self.comm, grads, self.bucket_bytes, self._scratch)
        return self.opt._step_local(grads, grad_scale)

    def consolidated_state_dict(self, root: int = 0) -> Optional[Dict[str, Any]]:
        _check_root(self.comm, root, type(self.opt).__name__)
        return self.opt.state_dict() if self.comm.rank == root else None

    def check_add_param_group(self) -> None:
        pass


def _check_root(comm: Communicator, root: Any, where: str) -> None:
    if isinstance(root, bool) or not isinstance(root, numbers.Integral):
        raise TypeError(f"{where}: root must be an int, got {type(root).__name__}")
    if not 0 <= int(root) < comm.size:
        raise ValueError(f"{where}: root must be in [0, {comm.size}), got {root}")


def _groups_for_state_dict(opt: Optimizer) -> List[Dict[str, Any]]:
    groups: List[Dict[str, Any]] = []
    offset = 0
    for group in opt.param_groups:
        n = len(group["params"])
        groups.append({**{k: v for k, v in group.items() if k not in ("params", "grads")},
                       "params": list(range(offset, offset + n))})
        offset += n
    return groups


_KEY_BLOCK = 1 << 32  # stochastic rounding keys change every 2**32 elements of a tensor


def _split_at_key_blocks(pieces: Sequence[Tuple[int, int, int, int]]) -> List[Tuple[int, int, int, int]]:
    """The pieces (param, first element, count, shard offset), cut where the element index
    crosses a multiple of 2**32."""
    out = []
    for i, lo, n, off in pieces:
        end = lo + n
        while lo < end:
            m = min(end, (lo // _KEY_BLOCK + 1) * _KEY_BLOCK) - lo
            out.append((i, lo, m, off))
            lo, off = lo + m, off + m
    return out


class ShardedDataParallel(DataParallel):
    """The steps of an optimizer built with ``comm=`` and ``shard_state=True``: ZeRO-1.

    The params, in group order, are cut into buckets (:func:`plan_buckets`) and each
    bucket into one equal block per rank; a rank's shard is its block of every bucket
    (1/N of the elements, cutting through tensors). A step reduce-scatters the grads so
    each rank gets the average of its shard, runs the fused step on views of its shard
    (the optimizer state exists for the shard only), then allgathers the updated params.
    Buckets of large tensors are used in the tensors' own memory (the grads are sent from
    where they are and the params gathered in place); only small tensors are packed. The
    user's grads are only read. The global grad norm and the non-finite check are agreed
    with one small allgather (partial sums added in rank order), so every rank decides
    the same.

    Mixed precision: the params share one dtype; the grads of a step share one dtype
    (16-bit grads are averaged in 16 bits on the wire, as :func:`allreduce_mean_` does);
    the params are gathered in their own dtype. The optimizer's float32 masters
    (``master_weights``) are sharded like the state, and stochastic rounding draws each
    element's bits from its param's index and its index in that param, so a sharded step
    writes bitwise what the unsharded step writes."""

    _EXTRA_STATE: Dict[str, "np.dtype[Any]"] = {"master": np.dtype(np.float32),
                                                "remainder": np.dtype(np.uint16)}

    def __init__(self, opt: Optimizer, comm: Communicator) -> None:
        super().__init__(opt, comm)
        params = _all_params(opt)
        name = type(opt).__name__
        dtypes = sorted({str(p.dtype) for p in params})
        if len(dtypes) > 1:
            raise TypeError(f"{name}: shard_state=True needs params of one dtype, got {', '.join(dtypes)}")
        self.dtype = params[0].dtype
        self.state_dtype = np.dtype(opt._precision.state_dtype_for(params[0]))
        self.params = [p.reshape(-1) for p in params]
        sizes = [p.size for p in params]
        self.buckets = plan_buckets(sizes, self.dtype.itemsize, self.bucket_bytes, comm.size)
        self.offsets = [0]  # where each bucket's block starts in a shard
        for bucket in self.buckets:
            self.offsets.append(self.offsets[-1] + bucket.block)
        self.shard = self.offsets[-1]  # elements per shard, padding included
        self.layout_id = zlib.crc32(repr((sizes, self.dtype.str, self.bucket_bytes)).encode())
        self.grad_shards: Dict["np.dtype[Any]", Tuple[Array, List[Array]]] = {}  # by grad dtype
        self.state_flat: Dict[str, Array] = {}  # state name -> the shard's state
        # This rank's elements: (param index, first flat element, count, offset in the shard).
        self.pieces = self._pieces_of(comm.rank)
        # The plan's pieces: never across a multiple of 2**32 elements of a param (the
        # stochastic-rounding keys change there).
        self.plan_pieces = _split_at_key_blocks(self.pieces)
        group_of_param = [gi for gi, g in enumerate(opt.param_groups) for _ in g["params"]]
        self.group_of_piece = [group_of_param[i] for i, _, _, _ in self.plan_pieces]
        self.groups_used = max(self.group_of_piece, default=-1) + 1
        # The whole masters (or remainders) the optimizer made: this rank keeps its shard.
        for key, dtype in self._EXTRA_STATE.items():
            if any(key in st for st in opt.state):
                flat = np.zeros(self.shard, dtype)
                for i, lo, n, off in self.pieces:
                    flat[off:off + n] = opt.state[i][key].reshape(-1)[lo:lo + n]
                self.state_flat[key] = flat
        opt.state = [{} for _ in params]
        self._plan: Any = None

    def _dtype_of(self, name: str) -> "np.dtype[Any]":
        return self._EXTRA_STATE.get(name, self.state_dtype)

    def _state_names(self) -> List[str]:
        """The names a state dict may hold: the optimizer's, then master/remainder if used."""
        return [*self.opt._state_names, *(k for k in self._EXTRA_STATE if k in self.state_flat)]

    def _grad_shard(self, dtype: "np.dtype[Any]") -> Tuple[Array, List[Array]]:
        """This rank's averaged grads of ``dtype`` and the plan's views of them."""
        if dtype not in self.grad_shards:
            flat = np.zeros(self.shard, dtype)
            self.grad_shards[dtype] = (flat, [flat[off:off + n] for _, _, n, off in self.plan_pieces])
        return self.grad_shards[dtype]

    def _pieces_of(self, rank: int) -> List[Tuple[int, int, int, int]]:
        return [(i, lo, n, offset + pos)
                for bucket, offset in zip(self.buckets, self.offsets)
                for i, lo, n, pos in bucket.block_pieces(rank)]

    # ------------------------------------------------------------ stepping

    def _ensure_state(self) -> None:
        opt = self.opt
        needed: set[str] = set()
        for group in opt.param_groups:
            needed.update(opt._needed_state(group))
        for name in opt._state_names:
            if name in needed and name not in self.state_flat:
                self.state_flat[name] = np.zeros(self.shard, self.state_dtype)
                self._plan = None

    def _current_plan(self) -> Any:
        self._ensure_state()
        if self._plan is None:
            pieces = self.plan_pieces

            def views(name: str) -> List[Optional[Array]]:
                flat = self.state_flat.get(name)
                return [None if flat is None else flat[off:off + n] for _, _, n, off in pieces]

            columns = [views(name) for name in self.opt._state_names]
            params = [self.params[i][lo:lo + n] for i, lo, n, _ in pieces]
            masters = [m for m in views("master") if m is not None]
            remainders = views("remainder") if "remainder" in self.state_flat else None
            precision = self.opt._precision
            # With masters, the plan steps them and writes the params as their copies.
            self._plan = _core._OptimizerPlan(
                type(self.opt).__name__, masters if masters else params, self.group_of_piece,
                columns, list(params) if masters else None, remainders,
                precision.stochastic_rounding, precision.seed, [(i, lo) for i, lo, _, _ in pieces])
        return self._plan

    def step(self, grads_arg: Any, grad_scale: float) -> bool:
        opt, comm = self.opt, self.comm
        error: Optional[Exception] = None
        signature = 0
        try:
            grads, groups = _check_step_input(opt, grads_arg, grad_scale, written=False)
            grad_dtypes = sorted({str(g.dtype) for g in grads})
            if len(grad_dtypes) > 1:
                raise TypeError(f"{type(opt).__name__}.step: with shard_state=True the grads share "
                                f"one dtype, got {', '.join(grad_dtypes)}")
            signature = _layout_signature(grads)
        except (TypeError, ValueError) as exc:
            error = exc
        _agree(comm, error, f"{type(opt).__name__}.step", signature)
        grad_shard, grad_views = self._grad_shard(grads[0].dtype if grads else self.dtype)
        self._reduce_scatter_mean(grads, grad_shard)

        divisor = float(grad_scale)
        if opt.max_grad_norm is not None or opt.skip_nonfinite:
            local = np.array([_core.grad_norm(grad_shard) ** 2 if opt.max_grad_norm is not None else 0.0,
                              0.0 if not opt.skip_nonfinite or _core.all_finite(grad_shard) else 1.0])
            parts = np.empty((comm.size, 2))
            comm.mpi.Allgather(local, parts)
            sum_squares = 0.0
            for value in parts[:, 0]:  # rank order: the same sum on every rank
                sum_squares += float(value)
            nonfinite = bool(parts[:, 1].any())
            if opt.max_grad_norm is not None:  # as the native step: a scale, grads untouched
                norm = math.sqrt(sum_squares) / grad_scale
                if opt.skip_nonfinite and not math.isfinite(norm) and nonfinite:
                    return False
                coef = opt.max_grad_norm / (norm + 1e-6)
                if not coef >= 1.0:
                    divisor = grad_scale / coef
                    if not math.isfinite(divisor):  # a NaN/Inf norm: as torch, grads * coef
                        if is_half(grad_shard.dtype):  # (in float32, rounded once)
                            grad_shard[...] = grad_shard.astype(np.float32) * np.float32(coef)
                        else:
                            np.multiply(grad_shard, coef, out=grad_shard)
                        divisor = float(grad_scale)
            elif nonfinite:
                return False

        if self.plan_pieces:
            plan = self._current_plan()
            # Clipping and the skip decision were made above, over every rank's shard.
            saved = opt.max_grad_norm, opt.skip_nonfinite
            opt.max_grad_norm, opt.skip_nonfinite = None, False
            try:
                opt._native_step(plan, grad_views, groups[:self.groups_used], divisor)
            finally:
                opt.max_grad_norm, opt.skip_nonfinite = saved
        opt._record_applied()
        self._allgather_params()
        return True

    def _reduce_scatter_mean(self, grads: Sequence[Array], grad_shard: Array) -> None:
        """The average of the grads of this rank's shard, into ``grad_shard`` (the grads'
        dtype; 16-bit grads travel and are averaged in 16 bits)."""
        comm, dtype = self.comm, grad_shard.dtype
        flats = [g.reshape(-1) for g in grads]
        scratch = _cached(self._scratch, ("packed", dtype), _scratch_elements(self.buckets, comm.size), dtype)
        received = None
        if is_half(dtype):
            largest = max((comm.size * b.block for b in self.buckets), default=0)
            received = _cached(self._scratch, ("received", dtype), largest, dtype)
        for bucket, offset in zip(self.buckets, self.offsets):
            if bucket.in_place:
                i, lo, n = bucket.pieces[0]
                send = flats[i][lo:lo + n]
            else:
                send = scratch[:comm.size * bucket.block]
                _pack(flats, bucket, send)
            mine = grad_shard[offset:offset + bucket.block]
            if received is not None:
                _mean_block_16(comm, send, mine, received)
            else:
                comm.mpi.Reduce_scatter_block(_buffer(send), _buffer(mine), op=_MPI.SUM)
                np.divide(mine, comm.size, out=mine)

    def _allgather_params(self) -> None:
        """Every rank's updated block of every bucket into every rank's params (in their
        own dtype: 16-bit params travel as 16 bits)."""
        comm, rank, params = self.comm, self.comm.rank, self.params
        scratch = _cached(self._scratch, ("packed", self.dtype),
                          _scratch_elements(self.buckets, comm.size), self.dtype)
        for bucket in self.buckets:
            if bucket.in_place:  # this rank's block was updated where it is
                i, lo, n = bucket.pieces[0]
                comm.mpi.Allgather(_MPI.IN_PLACE, _buffer(params[i][lo:lo + n]))
                continue
            buf = scratch[:comm.size * bucket.block]
            mine = buf[rank * bucket.block:]
            for i, lo, n, pos in bucket.block_pieces(rank):
                mine[pos:pos + n] = params[i][lo:lo + n]
            comm.mpi.Allgather(_MPI.IN_PLACE, _buffer(buf))
            _unpack(params, bucket, buf)

    def check_add_param_group(self) -> None:
        raise ValueError(f"{type(self.opt).__name__}: add_param_group is not supported with "
                         "shard_state=True (the shards are fixed at construction); pass every "
                         "group to the constructor")

    # ------------------------------------------------------------ state

    def _shard_info(self) -> Dict[str, int]:
        return {"rank": self.comm.rank, "size": self.comm.size, "elements": self.shard,
                "layout": self.layout_id}

    def state_dict(self) -> Dict[str, Any]:
        """The rank's shard: each state as one flat array of the shard's elements."""
        opt = self.opt
        return {"state": {name: flat.copy() for name, flat in self.state_flat.items()},
                "param_groups": _groups_for_state_dict(opt), "step": opt._step,
                "started": list(opt._started), "shard": self._shard_info()}

    def consolidated_state_dict(self, root: int = 0) -> Optional[Dict[str, Any]]:
        """Collective: the whole state on ``root``, in the unsharded optimizer's format
        (loadable by either); None on the other ranks."""
        opt, comm = self.opt, self.comm
        where = f"{type(opt).__name__}.consolidated_state_dict"
        error: Optional[Exception] = None
        try:
            _check_root(comm, root, where)
        except (TypeError, ValueError) as exc:
            error = exc
        self._ensure_state()
        names = [n for n in self._state_names() if n in self.state_flat]
        _agree(comm, error, where, zlib.crc32(",".join(names).encode()))
        shards: Dict[str, Array] = {}  # name -> every rank's shard, on root
        for name in names:
            flat = self.state_flat[name]
            recv = np.empty((comm.size, self.shard), flat.dtype) if comm.rank == root else None
            # raw bytes: any dtype (the Gather only moves them)
            comm.mpi.Gather([flat.view(np.uint8), _MPI.BYTE],
                            None if recv is None else [recv.view(np.uint8), _MPI.BYTE], root=root)
            if recv is not None:
                shards[name] = recv
        if comm.rank != root:
            return None
        params = _all_params(opt)
        group_of_param = [gi for gi, g in enumerate(opt.param_groups) for _ in g["params"]]
        whole = {name: [np.empty(p.shape, self._dtype_of(name)) for p in params] for name in names}
        for r in range(comm.size):
            for i, lo, n, off in self._pieces_of(r):
                for name in names:
                    whole[name][i].reshape(-1)[lo:lo + n] = shards[name][r, off:off + n]
        state = {}
        for i in range(len(params)):
            entry = {name: whole[name][i] for name in names
                     if opt._started[group_of_param[i]] or name != "momentum_buffer"}
            if entry:
                state[i] = entry
        return {"state": state, "param_groups": _groups_for_state_dict(opt), "step": opt._step}

    def load_state_dict(self, state_dict: Any) -> None:
        """Accepts this rank's shard (from ``state_dict()``) or a whole state (from
        ``consolidated_state_dict()`` or an unsharded optimizer); validated first."""
        opt = self.opt
        if not isinstance(state_dict, dict):
            raise TypeError(f"{type(opt).__name__}: state_dict must be a dict, got "
                            f"{type(state_dict).__name__}")
        if "shard" in state_dict:
            flats, started = self._checked_shard(state_dict)
        else:
            flats, started = self._checked_whole(state_dict)
        # The optimizer checks the rest (groups, step) and applies it, or raises having
        # changed nothing; it holds no per-param state, so it gets none.
        opt._load_state_dict_local({**state_dict, "state": {}})
        for key in list(self.state_flat):
            if key == "master" and key not in flats:  # as unsharded: the masters are the params
                for i, lo, n, off in self.pieces:
                    self.state_flat[key][off:off + n] = self.params[i][lo:lo + n]
            elif key not in flats:
                self.state_flat[key][...] = 0
        for key, flat in flats.items():
            if key in self.state_flat:
                np.copyto(self.state_flat[key], flat)
            else:
                self.state_flat[key] = np.array(flat, self._dtype_of(key), copy=True)
                self._plan = None
        opt._started = started

    def _checked_shard(self, state_dict: Dict[str, Any]) -> Tuple[Dict[str, Array], List[bool]]:
        name = type(self.opt).__name__
        if not isinstance(state_dict.get("state"), dict):
            raise TypeError(f"{name}: state_dict['state'] must be a dict of flat shard arrays")
        if state_dict["shard"] != self._shard_info():
            raise ValueError(f"{name}: the state_dict is the shard {state_dict['shard']}, this rank's "
                             f"shard is {self._shard_info()}")
        started = state_dict.get("started")
        if (not isinstance(started, list) or len(started) != len(self.opt.param_groups)
                or not all(isinstance(s, bool) for s in started)):
            raise ValueError(f"{name}: state_dict['started'] must be a list of one bool per param group")
        flats = {}
        for key, value in state_dict["state"].items():
            if key not in self._state_names():
                raise ValueError(f"{name}: unknown state {key!r}")
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{name}: state {key!r} must be a numpy.ndarray")
            if value.dtype != self._dtype_of(key):
                raise TypeError(f"{name}: state {key!r} has dtype {value.dtype}, expected {self._dtype_of(key)}")
            if value.shape != (self.shard,):
                raise ValueError(f"{name}: state {key!r} has shape {value.shape}, the shard has "
                                 f"({self.shard},)")
            flats[key] = value
        return flats, list(started)

    def _checked_whole(self, state_dict: Dict[str, Any]) -> Tuple[Dict[str, Array], List[bool]]:
        opt = self.opt
        name = type(opt).__name__
        params = _all_params(opt)
        saved_state = state_dict.get("state")
        if not isinstance(saved_state, dict) or not all(isinstance(e, dict) for e in saved_state.values()):
            raise TypeError(f"{name}: state_dict['state'] must be a dict of per-param dicts")
        for i, entry in saved_state.items():
            if not isinstance(i, numbers.Integral) or not 0 <= int(i) < len(params):
                raise ValueError(f"{name}: state_dict['state'] has an entry for param {i!r}, "
                                 f"the optimizer has {len(params)} params")
            for key, value in entry.items():
                if key not in self._state_names():
                    raise ValueError(f"{name}: unknown state {key!r} for param {i}")
                if not isinstance(value, np.ndarray):
                    raise TypeError(f"{name}: state {key!r} of param {i} must be a numpy.ndarray")
                if value.dtype != self._dtype_of(key):
                    raise TypeError(f"{name}: state {key!r} of param {i} has dtype {value.dtype}, "
                                    f"expected {self._dtype_of(key)}")
                if value.shape != params[i].shape:
                    raise ValueError(f"{name}: state {key!r} of param {i} has shape {value.shape}, "
                                     f"the param has {params[i].shape}")
        started: List[bool] = []
        offset = 0
        for group in opt.param_groups:
            indices = range(offset, offset + len(group["params"]))
            started.append(bool(indices) and all(
                "momentum_buffer" in saved_state.get(i, {}) for i in indices))
            offset += len(group["params"])
        keys = [k for k in self._state_names() if any(k in e for e in saved_state.values())]
        flats = {}
        for key in keys:
            flat = np.zeros(self.shard, self._dtype_of(key))
            for i, lo, n, off in self.pieces:
                if key in saved_state.get(i, {}):
                    flat[off:off + n] = saved_state[i][key].reshape(-1)[lo:lo + n]
            flats[key] = flat
        return flats, started


# ---------------------------------------------------------------- SyncBatchNorm

def _check_like(a: Any, x: Array, where: str, name: str, *, written: bool) -> None:
    """``a`` has x's shape and dtype and, if written, can be written in place."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{where}: {name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != x.dtype:
        raise TypeError(f"{where}: {name} has dtype {a.dtype}, x has {x.dtype}")
    if a.shape != x.shape:
        raise ValueError(f"{where}: {name} has shape {a.shape}, x has {x.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{where}: {name} must be C-contiguous (use np.ascontiguousarray)")
    if written and not (a.flags.writeable and a.flags.aligned):
        raise ValueError(f"{where}: {name} must be writeable and aligned")


def _allgather_rows(comm: Communicator, row: Optional[Array], width: int,
                    error: Optional[Exception], where: str) -> Array:
    """Collective: every rank's float64 ``row`` (``width`` values), in rank order, behind
    an error flag: if any rank has an ``error``, every rank raises."""
    send = np.zeros(width + 1)
    if error is None:
        send[1:] = row
    else:
        send[0] = 1.0
    rows = np.empty((comm.size, width + 1))
    comm.mpi.Allgather(send, rows)
    if rows[:, 0].any():
        _agree(comm, error, where)  # the failing rank raises its own error, the others name it
    return rows[:, 1:]


def sync_batch_norm_forward(layer: BatchNorm, comm: Communicator, x: Any,
                            out: Optional[Array]) -> Tuple[Array, Array, Array, float]:
    """Training forward of ``layer`` (a fusedops.nn.BatchNorm) with statistics of the
    global batch: each rank's (count, mean, m2) per channel are allgathered and combined
    in rank order (Chan), identically on every rank. Updates the running statistics
    (global unbiased variance). Returns (y, mean, invstd, global count)."""
    import fusedops  # the public batch-norm calls (the package is loaded by now)
    where = "BatchNorm.forward"
    c = layer.num_features
    error: Optional[Exception] = None
    row: Optional[Array] = None
    try:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{where}: x must be a numpy.ndarray, got {type(x).__name__}")
        if x.dtype != layer.dtype:
            raise TypeError(f"{where}: x has dtype {x.dtype} but the layer has dtype {layer.dtype}")
        if x.ndim < 2 or x.shape[layer.channel_axis] != c:
            raise ValueError(f"{where}: x must have ndim >= 2 and {c} channels on axis "
                             f"{layer.channel_axis}, got shape {x.shape}")
        if out is not None:
            _check_like(out, x, where, "out", written=True)
        mean, m2 = fusedops.batch_norm_stats(x, channel_axis=layer.channel_axis)
        row = np.concatenate([[x.size // c], mean, m2])
    except (TypeError, ValueError) as exc:
        error = exc
    rows = _allgather_rows(comm, row, 1 + 2 * c, error, where)
    counts = np.ascontiguousarray(rows[:, 0])
    count = float(counts.sum())
    if count < 2:
        raise ValueError(f"{where}: the global batch has {count:.0f} values per channel; "
                         "training needs at least 2")
    mean, var, m2 = fusedops.batch_norm_combine_stats(np.ascontiguousarray(rows[:, 1:1 + c]),
                                                   np.ascontiguousarray(rows[:, 1 + c:]), counts)
    invstd = 1.0 / np.sqrt(var + layer.eps)
    y = fusedops.batch_norm_elemt(x, layer.weight, layer.bias, mean, invstd,
                               channel_axis=layer.channel_axis, out=out)
    if layer.running_mean is not None and layer.running_var is not None:
        momentum = layer.momentum
        layer.running_mean[...] = (1 - momentum) * layer.running_mean + momentum * mean
        layer.running_var[...] = (1 - momentum) * layer.running_var + momentum * (m2 / (count - 1))
    return y, mean, invstd, count


def sync_batch_norm_backward(layer: BatchNorm, comm: Communicator, dy: Any, x: Array,
                             mean: Array, invstd: Array, count: float,
                             out: Optional[Array]) -> Tuple[Array, Array, Array]:
    """Backward of :func:`sync_batch_norm_forward`: the per-channel sums of dy and
    dy * xhat are allgathered and added in rank order; dx uses the global sums and count.
    Returns (dx, dweight, dbias) where dweight = sum(dy * xhat) and dbias = sum(dy) over
    this rank's rows: the parameter gradients of this rank's loss, which a data-parallel
    optimizer then averages, as for any other parameter."""
    import fusedops  # the public batch-norm calls (the package is loaded by now)
    where = "BatchNorm.backward"
    c = layer.num_features
    error: Optional[Exception] = None
    row: Optional[Array] = None
    try:
        _check_like(dy, x, where, "dy", written=False)
        if out is not None:
            _check_like(out, x, where, "out", written=True)
        sum_dy, sum_dy_xhat = fusedops.batch_norm_backward_reduce(dy, x, mean, invstd,
                                                               channel_axis=layer.channel_axis)
        row = np.concatenate([sum_dy, sum_dy_xhat])
    except (TypeError, ValueError) as exc:
        error = exc
    rows = _allgather_rows(comm, row, 2 * c, error, where)
    total = np.zeros(2 * c)
    for r in range(comm.size):  # rank order: the same sums on every rank
        total += rows[r]
    dx = fusedops.batch_norm_backward_elemt(dy, x, layer.weight, mean, invstd, total[:c], total[c:],
                                         count, channel_axis=layer.channel_axis, out=out)
    return dx, sum_dy_xhat, sum_dy

// Batch norm: the split pieces (statistics, elementwise normalize, gradient sums,
// elementwise dx) and the forward and backward composed of them.
//
// x is viewed as (outer, C, inner). The work is cut into units whose boundaries depend
// only on the shape: per-(n, c) slab blocks when the spatial extent is long enough
// (channel-first), otherwise (row group, column block) tiles of the rows of C * inner
// contiguous values (channel-last, or short spatial extents). Reduction units write
// partial sums to their own slots, combined per channel in unit order: results are
// bitwise identical for any thread count. Per-channel constants are derived in double;
// statistics cross the API in double, so a float32 mean is never rounded on its way
// from the forward to the backward.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

#include "fusedops/fusedops.hpp"
#include "fusedops/kernels.hpp"
#include "fusedops/mixed.hpp"
#include "cache.hpp"
#include "work.hpp"

namespace fusedops {

namespace {

// Channel-first reductions over spatial extents shorter than this many values, or
// bytes, run as rows: a slab unit pays a call and a horizontal sum of its lanes, which
// short slabs do not amortize. (Measured on the Xeon, 2 threads, slab runs read four side
// by side: float32 slabs of 196 and 128 values reduce faster than rows, the (16, 512, 14,
// 14) backward 0.60 -> 0.38 ns/el and (64, 128, 128) 0.67 -> 0.47; float64 slabs of 128
// and 96 values faster as well, of 64 slower (float32 too); bfloat16 slabs of 196 values
// faster, of 128 slower.)
constexpr std::size_t kMinReduceSlab = 96;
constexpr std::size_t kMinReduceSlabBytes = 384;
// Channel-first elementwise passes with a spatial extent shorter than this run as rows
// (a run's per-slab pieces would be mostly vector tails).
constexpr std::size_t kMinRunSlab = 32;
// Rows are split into at most this many groups, each with its own row of partial sums...
constexpr std::size_t kMaxRowGroups = 64;
// ...each tile (group x column block) of at least this many values (a group's partial
// row costs a pass over its columns to clear and to combine: small inputs get one group
// and no combine to speak of)...
constexpr std::size_t kRowTileElements = 16 * 1024;
// ...and fewer when rows are long, so the partials stay within this many doubles.
constexpr std::size_t kRowPartialBudget = std::size_t(1) << 16;
// Columns per row tile: the tile's accumulators (2 doubles per column) stay in L1. Rows
// longer than that of data far from the core take wider tiles (Plan's tile_cols_): whole
// rows when there are at least kMinFarGroups row groups...
constexpr std::size_t kColBlock = 512;
constexpr std::size_t kMinFarGroups = 4;
// ...else (rows longer than 16384 values, or few rows) equal tiles of at most
// kFarTileCols columns, in multiples of kFarTileAlign, at least kMinFarUnits of them in
// all: whole rows of one group are one unit of work, which one thread runs alone.
// (Measured on the Xeon, 2 threads, fwd+bwd: (256, 2048, 7, 7), 1 group of rows of 100352
// values, whole rows 1.69-1.74 ns/el, 25 tiles of 4032 columns 0.97-0.99, column blocks
// 1.00-1.11; (5120, 256, 7, 7) from memory, 5 groups of rows of 12544, whole rows
// 1.17-1.20, 4 tiles of 3136 columns 1.43-1.48, 2 of 6272 1.43-1.47: the whole rows of a
// group are one contiguous run; (1024, 16384), 4 groups, whole rows 0.90-0.91, 4 tiles of
// 4096 0.87-0.88.)
constexpr std::size_t kFarTileCols = 4096;
constexpr std::size_t kMinFarUnits = 16;
constexpr std::size_t kFarTileAlign = 64;
// Where the last level is far, rows of at least kWideRowBytes (float32 and 16-bit data)
// count as far from this many L2s of x up (Plan's constructor).
constexpr std::size_t kWideRowL2s = 16;
constexpr std::size_t kWideRowBytes = 4096;
// The cache-blocked passes (Plan::block_channels) cut the channels into at least this many
// groups: each is one unit of work, and a few units leave a thread idle at the end.
// (Measured on the Xeon, 2 threads, fwd+bwd: (128, 6, 28, 28) 0.62-0.71 ns/el with the
// forward in 3 groups of 2 channels, 0.53-0.55 in 6; (64, 16, 28, 28) 0.56-0.58 in 4 groups
// of up to 5, 0.49 in 8; (64, 256, 28, 28) and (32, 64, 56, 56), whose groups are already
// many, unchanged.)
constexpr std::size_t kMinBlockGroups = 8;
// Channel groups blocked in a near last-level cache take at most this fraction of it
// (Plan::block_channels).
constexpr std::size_t kL3BlockParts = 8;
// The elementwise passes take a group's rows whole (one contiguous run, which the hardware
// prefetchers follow to its end) when rows are at most this many values: their per-column
// constants, 3 or 4 arrays of them, then stay within 16 KiB (float32) of the L1. Longer
// rows keep the column blocks, the constants in L1. (Measured on the Xeon, 2 threads,
// (1024, 1024) float32 in cache: normalize 0.23 -> 0.14 ns/el, dx 0.36 -> 0.22.)
constexpr std::size_t kWholeRowCols = 1024;
// Whole rows shorter than this many values are taken several at a time as one longer row
// (the per-column constants repeated as often): a row loop's costs per row (its setup,
// its head and tail, a streaming tile of its own) are then paid once per this many values.
// (Measured on the Xeon, 2 threads, NHWC (32, 56, 56, 64) beyond the cache, fwd+bwd:
// bfloat16 0.35-0.37 -> 0.33-0.34 ns/el, float32 0.64-0.66 -> 0.60-0.62.)
constexpr std::size_t kMinRowRun = 512;
// Rows this short take runs of kMinRowRun values in cache as well: a row of 64 values is
// one or two registers, and the row loop's own costs then outweigh its work. (Measured on
// the Xeon, 2 threads, fwd+bwd in the L2: float32 (8, 28, 28, 64) NHWC 0.56 -> 0.43 ns/el,
// (256, 64) 0.80 -> 0.69, (1024, 32) 0.80 -> 0.62; bfloat16 (512, 64) 0.60 -> 0.50, and
// (16, 56, 56, 64) in the L3, the forward not streamed, 0.149 -> 0.130.)
constexpr std::size_t kShortRowCols = 64;
// Row reductions over rows of at most this many values prefetch ahead once the array is
// bigger than the L2 (Plan::reduce_ahead).
constexpr std::size_t kAheadRowCols = 256;
// Row reductions from memory walk rows of at least this many bytes a row at a time
// (Plan::rows_walk); shorter rows keep their chunks (a row of 32 float32 values is two
// lane vectors: the walk's loads and stores of the sums then cost more than it saves).
constexpr std::size_t kWalkMinRowBytes = 256;
// The streaming elementwise row loops prefetch only on cores with at least this much L1d
// (Plan::stream_prefetch).
constexpr std::size_t kStreamPrefetchMinL1 = 48 * 1024;
// On cores with an L2 of at most this many bytes, float32 and float64 rows longer than a
// column block (kColBlock) take no software prefetches, in their reductions or in their
// streaming elementwise loops (Plan::row_prefetch): there each of a chunk's rows is a run
// the hardware streamers follow, and the prefetches (a chunk of rows ahead, or a row's
// worth at its start) only cost. (AMD EPYC Zen 3, 512 KiB L2, 32 MiB L3, 2 threads,
// in-process A/B, same bits: float32 forward 0.83-0.91x and backward 0.71-0.82x from
// (512, 4096) and (4096, 1024) in its L3 to (4096, 4096) and (16384, 1024) from memory,
// NCL (256, 256, 64) 0.83x / 0.78x, NHWC (64, 7, 7, 2048) 0.90x / 0.75x; float64 (1024,
// 4096) 0.74x / 0.82x; gradient sums alone 0.59-0.86x, the statistics 0.73-0.89x, and
// a prefetch one chunk ahead instead of four still slower than none. Rows of at most a
// column block keep them: each chunk of such rows is one contiguous run that the blocks
// walk down, not along, and there they gain, (16384, 256) fwd+bwd 1.19x and (32768, 128)
// 1.10x slower without. bfloat16 rows keep them: faster without in the L3, slower from
// memory, (4096, 4096) gradient sums 1.26x. The Zen 5 (1 MiB L2) measured the streaming
// row loops' prefetches faster, (4096, 4096) 0.89x, and the Xeon (2 MiB) the reductions'
// (kernels.hpp, Plan::reduce_ahead): they keep both.)
constexpr std::size_t kSmallL2Bytes = 512 * 1024;
// The cache-blocked passes request the next rows' slabs of a channel into the L2 when a
// group's run of one row is at most this many bytes (Plan::block_prefetch).
constexpr std::size_t kShortBlockRunBytes = 8 * 1024;
// Where the last level is near, a cache-blocked group's run of one row (its channels' slabs
// in that row) is whole granules of this many bytes (the non-temporal stores' unit) and at
// least kMinBlockRunBytes long, or the passes are not blocked (Plan::block_channels).
constexpr std::size_t kGranuleBytes = 16;
constexpr std::size_t kMinBlockRunBytes = 512;
// The training passes share a channel among the threads (Plan::share_channels) when its
// slabs are at least this many bytes: the forward's...
constexpr std::size_t kMinSharedSlabBytes = 2 * 1024;
// ...and the backward's, float32 and float64 (their gradient sums read four rows side by
// side, Plan::grad_streams) and 16-bit data (measured when its sums read one slab at a
// time; they now take four rows' slabs in turn where the last level is far).
constexpr std::size_t kMinSharedGradSlabBytes = 12 * 1024;
constexpr std::size_t kMinShared16GradSlabBytes = 16 * 1024;
// The blocked and shared backward passes read slabs of at least this many bytes four rows
// side by side (Plan::grad_streams).
constexpr std::size_t kMinGradStreamSlabBytes = 2 * 1024;
// The gradient sums over whole rows from memory read chunks of this fraction of the L1 per
// array (Plan::grad_chunk_bytes).
constexpr std::size_t kGradChunkL1Parts = 16;
// The row reductions that prefetch (Plan::reduce_ahead) where the last level is far ask
// for about this many bytes of their arrays ahead (Plan::ahead_bytes).
constexpr std::size_t kAheadBytes = 128 * 1024;

constexpr std::size_t kLineBytes = 64;

// Where per-column constants (values of V) start within a cache line so that they line up
// with the columns of `out` (values of R): the elementwise row loops write each row from
// its first cache-line boundary on (write_blocks), and a constant of column j then loads
// from an aligned address whenever out's column j does (a 64-byte load that straddles two
// lines costs two). 0 when out is not aligned to its own values.
template <class V, class R>
std::size_t line_shift(const R* out) {
  const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(out) % kLineBytes;
  if (at % sizeof(R) != 0) return 0;
  return at / sizeof(R) % (kLineBytes / sizeof(V));
}

// Requests the lines of the `count` values at p into the L2 (prefetcht2 on x86: the
// lines a pass reads next, there while it works through the ones it has; into the L1
// they would hold its fill buffers).
template <class R>
inline void request_l2(const R* p, std::size_t count) {
  const char* const bytes = reinterpret_cast<const char*>(p);
  for (std::size_t b = 0; b < count * sizeof(R); b += kLineBytes) {
    __builtin_prefetch(bytes + b, 0, 1);
  }
}

// Per-thread memory reused from call to call for a call's temporaries (per-channel
// constants, partial sums): after the first calls of a shape, a call allocates nothing.
// Frames nest: what a Scratch takes is given back when it goes out of scope.
class Scratch {
 public:
  Scratch() : pool_(pool()), first_(pool_.used) {}
  ~Scratch() { pool_.used = first_; }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  // n values of V (unspecified contents) starting `shift` values past a cache line
  // (shift < kLineBytes / sizeof(V)).
  template <class V>
  V* take(std::size_t n, std::size_t shift = 0) {
    if (pool_.used == pool_.buffers.size()) pool_.buffers.emplace_back();
    std::vector<unsigned char>& buffer = pool_.buffers[pool_.used++];
    const std::size_t bytes = n * sizeof(V) + 2 * kLineBytes;
    if (buffer.size() < bytes) buffer.resize(bytes);
    const std::uintptr_t at = (reinterpret_cast<std::uintptr_t>(buffer.data()) + kLineBytes - 1) &
                              ~std::uintptr_t(kLineBytes - 1);
    return reinterpret_cast<V*>(at) + shift;
  }

 private:
  struct Pool {
    std::vector<std::vector<unsigned char>> buffers;
    std::size_t used = 0;
  };
  static Pool& pool() {
    thread_local Pool p;
    return p;
  }
  Pool& pool_;
  std::size_t first_;
};

struct SlabUnit {
  std::size_t offset;
  std::size_t length;
  std::size_t channel;
};

struct RowUnit {
  std::size_t offset;  // of the tile's first value
  std::size_t rows;
  std::size_t col;     // first column
  std::size_t cols;
  std::size_t group;
};

// A contiguous range of channel-first data, `slab_offset` values into a slab of `channel`.
struct RunUnit {
  std::size_t offset;
  std::size_t length;
  std::size_t slab_offset;
  std::size_t channel;
};

// How a shape is cut into units. Reductions run over slab units (channel-first, long
// spatial extent) or row tiles; elementwise passes over runs (channel-first) or row tiles.
// Unit boundaries depend only on the shape, never on the thread count.
class Plan {
 public:
  Plan(const BatchNormShape& shape, std::size_t element_bytes)
      : outer_(shape.outer), channels_(shape.channels), inner_(shape.inner),
        element_bytes_(element_bytes), chunk_(kChunkBytes / element_bytes) {
    if (channels_ == 1) {  // one channel: the whole array is one slab
      inner_ *= outer_;
      outer_ = 1;
    }
    total_ = outer_ * channels_ * inner_;
    reduce_slabs_ = inner_ >= kMinReduceSlab && inner_ * element_bytes_ >= kMinReduceSlabBytes;
    runs_ = inner_ >= kMinRunSlab;
    if (reduce_slabs_) {
      blocks_per_slab_ = (inner_ + chunk_ - 1) / chunk_;
      slab_units_ = outer_ * channels_ * blocks_per_slab_;
    }
    if (!reduce_slabs_ || !runs_) {
      cols_ = channels_ * inner_;
      const std::size_t col_blocks = (cols_ + kColBlock - 1) / kColBlock;
      const std::size_t budget_groups = kRowPartialBudget / std::max<std::size_t>(cols_, 1);
      const std::size_t work_groups = total_ / (kRowTileElements * std::max<std::size_t>(col_blocks, 1));
      groups_ = std::max<std::size_t>(
          1, std::min({outer_, kMaxRowGroups, budget_groups, work_groups}));
      // Rows longer than a column block, of data far from the core (x and one more array
      // of its size beyond the last-level cache, or x alone at least 32 L2s): tiles of
      // whole rows, or of up to kFarTileCols columns when the rows form fewer than
      // kMinFarGroups groups. A column block of such rows reads 2 KiB of each row, a piece
      // the hardware prefetchers start afresh for; a wide tile's rows are long runs, whole
      // rows one run per group. (Measured on the Xeon, 2 threads, float32
      // forward+backward from memory: (40960, 4096) 1.36 -> 1.03 ns/el, NHWC (64, 28, 28,
      // 3328) 1.34 -> 1.0. Its 480 MB L3 feeds a core no faster than memory does, and
      // arrays of 64 MiB and more in it, in-process A/B, gained as much: (4096, 4096)
      // 0.93-1.02 -> 0.80-0.88; (8192, 2048) 0.95-0.97 -> 0.74-0.75; (1024, 16384) 1.07 ->
      // 0.91; (512, 32768) 1.17 -> 0.96. Smaller arrays in the L3 gained less or lost:
      // 25-51 MB from -4% to +12% (short spatial extents, whose rows are longest, lost),
      // 16 MB within 4%, (1024, 1024) 0.69 against 0.75, its accumulators and per-column
      // constants in the L1 and part of its data in the two L2s. On the EPYC, 32 L2s are
      // its L3: the rule there is what it was, beyond the last-level cache.) float32 and
      // float64 rows of at most kFarTileCols values count as far once four arrays of x's
      // size (a training step's x, y, dy and dx) reach the last-level cache. (AMD EPYC Zen
      // 5, 32 MiB L3, 2 threads, in-process A/B, forward then backward, float32: (1024,
      // 4096) 0.85x, (2048, 2048) 0.79-0.83x, (512, 4096) 0.83x, (1024, 2048) and (3072,
      // 1024) 0.93x, forward and backward alone faster too; NCL (2048, 64, 16) and (1024,
      // 128, 32) 0.98-1.04x; float64 (1024, 1024) 0.94x, (1024, 2048) and (512, 4096)
      // 1.00x. Not taken: bfloat16 (1024, 4096) and (2048, 4096) 1.02-1.18x slower;
      // longer rows, (256, 256, 64) with rows of 16384 values, 0.66 -> 0.77 ns/el; (256,
      // 4096), 16 MiB in all, tied.) Where the last level is far, rows of at least
      // kWideRowBytes of float32 or 16-bit data count as far from kWideRowL2s L2s of x up
      // (32 MiB on the Xeon), now that the reductions over such rows prefetch no more than
      // ahead_bytes() ahead. (Intel Xeon, 2 MiB L2, 480 MiB L3, 2 threads, in-process A/B,
      // same bits, forward then backward: float32 (2048, 4096) 0.90x, (4096, 2048) 0.82x,
      // NHWC (64, 7, 7, 4096) 0.75x, (32, 14, 14, 2048) 0.78x, (32, 7, 7, 8192) 0.76x, NCL
      // (512, 256, 64) and (256, 512, 64) 0.94x; bfloat16 (4096, 4096) 0.77x, (8192, 2048)
      // 0.83x, (2048, 8192) 0.89x, NHWC (64, 14, 14, 2048) 0.78x. Not taken: rows of 2 KiB,
      // bfloat16 (16384, 1024), 1.04x slower (float32 (8192, 1024), rows of 4 KiB, tied);
      // float64, (1024, 4096) 1.09x slower, (2048, 2048) tied.) The groups, and so every
      // sum, are the same either way: results do not depend on the cache sizes.
      tile_cols_ = kColBlock;
      const CacheSizes& caches = cache_sizes();
      const std::size_t bytes = total_ * element_bytes_;
      const bool step_fills_last = 4 * bytes >= caches.last && cols_ <= kFarTileCols &&
                                   element_bytes_ >= 4;
      const bool wide_rows_far = !last_level_near() && element_bytes_ <= 4 &&
                                 cols_ * element_bytes_ >= kWideRowBytes &&
                                 bytes >= kWideRowL2s * caches.l2;
      const bool far = 2 * bytes > caches.last || bytes >= 32 * caches.l2 || step_fills_last ||
                       wide_rows_far;
      if (cols_ > kColBlock && far) {
        tile_cols_ = cols_;
        if (groups_ < kMinFarGroups) {
          const std::size_t tiles = std::max((cols_ + kFarTileCols - 1) / kFarTileCols,
                                             (kMinFarUnits + groups_ - 1) / groups_);
          const std::size_t width = (cols_ + tiles - 1) / tiles;
          tile_cols_ = std::max(kColBlock,
                                (width + kFarTileAlign - 1) / kFarTileAlign * kFarTileAlign);
        }
      }
      col_blocks_ = (cols_ + tile_cols_ - 1) / tile_cols_;
      row_units_ = groups_ * col_blocks_;
    }
    if (runs_) run_units_ = (total_ + chunk_ - 1) / chunk_;
  }

  bool reduce_slabs() const { return reduce_slabs_; }
  bool runs() const { return runs_; }
  std::size_t outer() const { return outer_; }
  std::size_t channels() const { return channels_; }
  std::size_t inner() const { return inner_; }
  std::size_t per_channel() const { return outer_ * inner_; }
  std::size_t blocks_per_slab() const { return blocks_per_slab_; }
  // An elementwise pass over `arrays` x-shaped arrays (inputs and output) writes its
  // output with non-temporal stores when they do not fit in the cache together: the
  // stores then skip reading the destination (4 of 12 bytes per value in the forward)
  // and keep the inputs cached. Below that, the output stays in cache for whatever
  // reads it next. The cache counted is streaming_threshold_bytes(): on a Xeon with a
  // 480 MiB L3 (2 MiB L2) streaming was 8-20% faster for every tensor from 12 MiB up.
  bool stream_output(std::size_t arrays) const {
    return arrays * total_ * element_bytes_ > streaming_threshold_bytes();
  }
  std::size_t cols() const { return cols_; }
  std::size_t groups() const { return groups_; }
  // Whether the row reductions prefetch a chunk of rows ahead: for arrays bigger than
  // core_share_bytes() (the streaming threshold before a near L3 got its own), whose rows come
  // from the L3 or from memory through pages the hardware prefetchers stop at, and for
  // arrays of short rows (kAheadRowCols) bigger than the L2, whose tiles are contiguous
  // runs of whole rows. Smaller ones are better off without: a prefetch costs an issue
  // slot and a load port, and those past the array's last rows touch lines (and pages)
  // nobody reads. (Measured on the Xeon, 2 threads, float32: gradient sums of (64, 1024)
  // 15.8 -> 10.4 us and of (64, 256) 3.0 -> 2.4 without them, fwd+bwd of (1024, 4096)
  // (16 MiB) 2.59 -> 2.35 ms, (2048, 512) 0.65 -> 0.69 ns/el and (256, 256) 0.54 -> 0.65
  // with them; with them, NHWC (64, 28, 28, 256) (51 MB) fwd+bwd 10.4 -> 9.3 ms, (32, 56,
  // 56, 64) 3.65 -> 3.52 ms, and beyond the L3 the gradient sums of (65536, 1024) 21.6 ->
  // 17.1 ms; rows of 64 and 256 values from 4 to 13 MB, fwd+bwd: float32 NHWC (8, 56, 56, 64)
  // 0.59 -> 0.54 ns/el and (16, 56, 56, 64) 0.61 -> 0.57, bfloat16 (32, 56, 56, 64) 0.33
  // -> 0.32, (8192, 256) bfloat16 0.39 -> 0.37.) Never where row_prefetch() says none.
  bool reduce_ahead() const {
    if (!row_prefetch()) return false;
    return total_ * element_bytes_ > core_share_bytes() ||
           (cols_ > 0 && cols_ <= kAheadRowCols && total_ * element_bytes_ > cache_sizes().l2);
  }
  // The chunks of the gradient sums over tiles of whole rows (kernels.hpp,
  // grad_chunk_rows): about this many bytes of each array, a sixteenth of the L1 (the
  // chunk being read and the one requested ahead, of both arrays, then take a quarter of
  // it), in two cases: rows that prefetch and whose x and dy do not fit in the last-level
  // cache together, and rows that take no prefetches at all (row_prefetch(); rows that
  // long get the kernels' fewest rows). 0 otherwise: the kernels' own chunks. A
  // last-level cache near the cores (last_level_near(): AMD's L3, which takes what the L2s
  // evict) counts x and dy as out of it once a training step's four x-sized arrays (x, y,
  // dy, dx) reach its size: the forward's y and the backward's own dx pass it on their way
  // out and push x and dy from it, so they come from memory. (AMD EPYC Zen 4, 32 MiB L3,
  // 2 threads, in-process A/B, same bits, forward+backward float32: (1024, 4096), x and dy
  // exactly the L3, 0.84-0.89x the time, its gradient sums 0.47-0.65x; (960, 4096)
  // 0.84x, (768, 4096) 0.91x, (2048, 2048) 0.83-0.87x, (4096, 1024) 0.88-0.90x, (16384,
  // 256) 0.84-0.89x, (12288, 256) 0.92x, (32768, 128) 0.86x, (8192, 256) 0.97x, float64
  // (512, 4096) 0.83x; (512, 4096) float32, bfloat16 (1024, 4096) and (2048, 4096) and
  // smaller arrays within noise. Walking those rows in memory order instead (rows_walk)
  // gained less and made the statistics, whose x alone stays in the L3, 1.5-1.7x slower.
  // The Xeon, whose L3 is far, keeps the rule above; not measured there.)
  std::size_t grad_chunk_bytes() const {
    const std::size_t bytes = total_ * element_bytes_, last = cache_sizes().last;
    const bool from_memory =
        reduce_ahead() && (2 * bytes > last || (last_level_near() && 4 * bytes >= last));
    const bool unprefetched = !row_prefetch();
    if (!from_memory && !unprefetched) return 0;
    return std::max<std::size_t>(kLineBytes, cache_sizes().l1d / kGradChunkL1Parts);
  }
  // How far ahead the row reductions (statistics, gradient sums) prefetch (kernels.hpp,
  // rows_ahead): about kAheadBytes of their arrays (x; dy and x) where they prefetch
  // (reduce_ahead()) and the last level is far (not last_level_near()), for float32 and
  // float64 (the 16-bit loops keep their own); 0 otherwise, kRowChunk rows. 32 rows of 16
  // KiB of both arrays are half this Xeon's L2 of requests waiting their turn (the
  // kernels' notes give the measurements). Rows of at most 4 KiB (statistics) and 2 KiB
  // (gradient sums) are unchanged. The EPYCs, whose L2s of 1 MiB prefetch rows that long
  // too (row_prefetch), were not measured: they keep their 32 rows.
  std::size_t ahead_bytes() const {
    return reduce_ahead() && !last_level_near() && element_bytes_ >= 4 ? kAheadBytes : 0;
  }
  std::size_t tile_cols() const { return tile_cols_; }
  // Whether the row reductions over `arrays` x-shaped arrays (the statistics 1, the
  // gradient sums 2) walk their tiles in memory order, a row at a time (kernels.hpp,
  // bn_rows_walk), rather than in chunks of rows: tiles of whole rows of kWalkMinRowBytes
  // to kColBlock values whose arrays do not fit in the last-level cache together, where
  // that cache is near the cores (last_level_near()). Measured on an AMD EPYC Zen 4 (the
  // kernels' notes); the Xeon, whose chunks were tuned there, keeps them (not measured
  // there). The sums are the same either way.
  bool rows_walk(std::size_t arrays) const {
    return last_level_near() && cols_ * element_bytes_ >= kWalkMinRowBytes && cols_ <= kColBlock &&
           tile_cols_ >= cols_ && arrays * total_ * element_bytes_ > cache_sizes().last;
  }
  // Whether the row loops prefetch at all (the reductions as reduce_ahead() says, the
  // elementwise loops when they stream their output): not rows longer than a column block
  // of float32 or float64 on a core with a small L2 (kSmallL2Bytes).
  bool row_prefetch() const {
    return cols_ <= kColBlock || element_bytes_ < 4 || cache_sizes().l2 > kSmallL2Bytes;
  }
  // Whether the elementwise row loops that stream their output prefetch each row's inputs
  // (kernels.hpp, bn_rows_normalize_loop): as row_prefetch() says, and only where the
  // last-level cache is near the cores (last_level_near(): AMD's L3 of a core complex),
  // where they were measured to gain (Zen 5, NHWC float32 fwd+bwd 0.78-0.94x). On an
  // Intel Xeon (Emerald Rapids, 2 MiB L2, 260 MiB L3; 2 threads, builds with and without
  // them interleaved in one process, two runs each, same bits) they cost: float32 NHWC (32,
  // 56, 56, 64) fwd+bwd 1.12x the time, (8192, 256) 1.04-1.07x; this rule against the
  // build that had them there 0.90-0.93x and 0.95-0.96x. Nor on cores with an L1d smaller
  // than kStreamPrefetchMinL1 (the Zen 5 has 48 KiB): on an AMD EPYC Zen 4 (32 KiB L1d, 1
  // MiB L2, 32 MiB L3; 2 threads, in-process A/B, same bits) they cost, float32
  // forward+backward without them NHWC (32, 56, 56, 64) 0.91x the time, (16, 56, 56, 64)
  // 0.89x, (64, 7, 7, 2048) 0.90x, (16384, 1024) 0.73x, (2048, 2048) 0.94x, (64, 28, 28,
  // 256) 0.88-1.00x, float64 0.92-0.99x, (8192, 256) and (4096, 4096) 0.97-1.02x; the dx
  // pass alone 0.85-0.90x. (The Zen 3, with the same L1d, follows: not measured there.)
  bool stream_prefetch() const {
    return row_prefetch() && last_level_near() && cache_sizes().l1d >= kStreamPrefetchMinL1;
  }
  // Whether the row loops that stream their output store straight from registers
  // (kernels.hpp, stream_row) rather than through a tile in the L1 (write_blocks), as the
  // float32 and float64 run loops do: float32 and float64 where the last level is far.
  // (Intel Xeon, 2 MiB L2, 480 MiB L3, 2 threads, in-process A/B, same bits: the
  // normalize of (65536, 256) in the L3 0.77-0.81x the time, NHWC (64, 64, 64, 64)
  // 0.78-0.79x, (64, 28, 28, 256) 0.74-0.87x, (4096, 4096) 0.84-0.91x, float64 (4096,
  // 4096) 0.84x, below 16 MiB alike; the dx pass 0.90-0.96x, NHWC (32, 56, 56, 64) 0.88x;
  // forward+backward NHWC (64, 28, 28, 256) 0.94x, beyond the L3 (832, 28, 28, 256) 0.93x
  // (its forward 0.87x), float64 NHWC (32, 56, 56, 64) 0.94x, (4096, 4096) and (65536,
  // 256) 0.97x, (8192, 256) 0.98x. The EPYCs, not measured, keep their tiles.)
  bool stream_direct() const { return !last_level_near() && element_bytes_ >= 4; }

  // Channels per group of a cache-blocked fused pass over `arrays` x-shaped inputs: a
  // group's inputs fit in a quarter of the L2 (one channel: half of it), so its
  // elementwise pass re-reads them from there right after its reduction read them (reading
  // x, and dy, from memory once instead of twice), and there are at least kMinBlockGroups
  // groups (where there are as many channels). 0 when blocking does not apply: row tiles
  // (channel-last or short spatial extents), inputs that fit in the L2 anyway, or a
  // channel bigger than half the L2 outside the last-level case below. (A quarter, not a
  // half: on the AMD EPYC Zen 5, 1 MiB L2, 2 threads, bfloat16 NCHW (64, 256, 28, 28)
  // fwd+bwd 0.83-0.87x, its backward's groups 400 -> 200 KiB; the other NCHW shapes
  // measured within 3%, and on the Xeon, 2 MiB L2,
  // groups of a quarter to a sixteenth had measured 3-5% faster beyond the L3 and within
  // noise on its bench shapes.) Channels bigger than half the L2 are blocked in the
  // last-level cache instead where it is near the cores (last_level_near(): AMD's L3 of
  // a core complex, which takes the lines the L2 evicts), for float32 and
  // float64 data whose two x-sized arrays (the forward's x and y, the backward's x and dy)
  // exceed 1.5 times it: groups of up to a kL3BlockParts-th of it, so that the
  // elementwise pass re-reads x (and dy) from the L3 rather than from memory. (AMD EPYC
  // Zen 3, 512 KiB L2, 32 MiB L3, 2 threads, in-process A/B, same bits, two runs each:
  // backward float32 (64, 256, 28, 28) 0.83x / 0.88x, (128, 256, 28, 28) 0.84x / 0.85x,
  // (32, 64, 56, 56) 0.91x / 0.94x, (40, 64, 56, 56) 0.93x / 0.94x, (256, 64, 28, 28)
  // 0.92x / 0.97x, float64 (64, 256, 28, 28) 0.80x, (32, 64, 56, 56) 0.85x; forward
  // float32 (128, 256, 28, 28) 0.86x / 0.91x, (32, 64, 56, 56) 0.94x / 0.95x. Not taken:
  // x and dy of 38.5 MB, (24, 64, 56, 56) and (48, 128, 28, 28), backward 1.03-1.14x
  // slower (the two-pass second read then partly hits the L3); groups of a quarter of the
  // L3 instead of an eighth, float64 0.86x / 0.94x; bfloat16, backward 1.03-1.13x slower.
  // On the Xeon, whose L3 feeds a core no faster than memory, channels blocked one at a
  // time in it had measured slower than the two passes: it keeps them.) 16-bit data on a
  // core with a small L2 (kSmallL2Bytes) and a near last level takes groups of up to twice
  // the L2 instead, re-read from the L3: there a group of a quarter of the L2 (one channel
  // of (64, 256, 28, 28), its 64 rows 1.5 KiB runs) measured the slowest of the sizes tried.
  // (AMD EPYC Zen 3, 2 threads, interleaved runs, same bits, fwd+bwd: bfloat16 (64, 256,
  // 28, 28) 0.80-0.85x the time, (32, 128, 28, 28) 0.75-0.86x, (16, 256, 28, 28) in the L3
  // 0.86-0.88x, (8, 512, 14, 14) 0.92-0.96x, float16 (64, 256, 28, 28) 0.82x; groups of
  // 1 to 4 MiB measured alike, of half the L2 0.96-1.03x, of the whole L2 0.86-0.91x.
  // float32 there measured within noise of its quarter; the Zen 5's 1 MiB L2 had measured
  // a quarter faster than half for bfloat16, above.) Where the last level is near, a
  // group's run of one row (its channels' slabs in that row) is a whole number of 16-byte
  // granules and at least kMinBlockRunBytes long: the group takes as many more channels as
  // make it so, within half the L2 (the room of the last-level case there), or the passes
  // are not blocked; nor where the rows themselves are not whole granules. The elementwise
  // pass streams each run out, and the lines at its edges are shared with the neighbouring
  // runs, another group's, written at another time: short runs, and runs that end inside
  // a granule (whose edges take masked stores, stream_granule_part), paid for those lines
  // more than a second read of x costs. (AMD EPYC Zen 4, 1 MiB L2, 32 MiB L3, 2 threads,
  // in-process A/B, same bits, against the groups before, of one channel here, two runs:
  // bfloat16 (256, 256, 14, 14), slabs of 392 bytes, backward in groups of 2 channels
  // 0.80x the time; (512, 128, 14, 14) forward in groups of 2 0.71x, backward in two passes
  // 0.65x; (512, 96, 15, 15), slabs of 450 bytes, in two passes 0.66-0.68x / 0.62-0.64x;
  // (256, 256, 15, 15) backward 0.69-0.70x; (256, 255, 14, 14), rows off their granules,
  // backward 0.66-0.73x; float32 (512, 128, 10, 10), 400 bytes, forward in groups of 2
  // 0.91-0.93x, backward in two passes 0.72-0.82x. Before the masked edges, when those
  // granules took plain stores, the same rule gained 2-4x on these shapes. Left:
  // misaligned runs of 1.4 KiB and more blocked as they were, (64, 256, 27, 27), measured
  // 0.87-0.94x in the forward and 0.95-0.98x in the float32 backward, but 1.20-1.24x slower
  // in the bfloat16 backward. The Xeon, not measured, keeps its groups.)
  std::size_t block_channels(std::size_t arrays) const {
    if (!reduce_slabs_ || !runs_) return 0;
    const CacheSizes& caches = cache_sizes();
    const std::size_t l2 = caches.l2;
    const std::size_t channel_bytes = arrays * per_channel() * element_bytes_;
    if (channel_bytes == 0 || arrays * total_ * element_bytes_ <= l2) return 0;
    std::size_t room = l2 / 4;
    if (element_bytes_ < 4 && l2 <= kSmallL2Bytes && last_level_near()) room = 2 * l2;
    std::size_t most = l2 / 2;  // the room of the fewest channels that make a long run
    if (channel_bytes > l2 / 2) {  // blocked in a near last-level cache, or not at all
      room = caches.last / kL3BlockParts;
      if (!last_level_near() || element_bytes_ < 4 || channel_bytes > room ||
          4 * total_ * element_bytes_ <= 3 * caches.last) {
        return 0;
      }
      most = room;
    }
    const std::size_t fit = room / channel_bytes;  // 0: one channel (below)
    const std::size_t group =
        std::max<std::size_t>(1, std::min(fit, (channels_ + kMinBlockGroups - 1) / kMinBlockGroups));
    if (!last_level_near()) return group;
    // Runs of whole granules, at least kMinBlockRunBytes long, or no blocking.
    const std::size_t slab_bytes = inner_ * element_bytes_;
    if (channels_ * slab_bytes % kGranuleBytes != 0) return 0;  // rows off their granules
    const std::size_t step = kGranuleBytes / std::gcd(slab_bytes, kGranuleBytes);
    std::size_t wide = std::max(group, (kMinBlockRunBytes + slab_bytes - 1) / slab_bytes);
    wide = (wide + step - 1) / step * step;
    if (wide == group) return group;
    return wide * channel_bytes <= most ? wide : 0;
  }
  // Whether the training passes over `arrays` x-shaped inputs share each channel among
  // the threads (forward_shared, backward_shared): channel-first data whose channel is too
  // big for the blocked passes (block_channels 0: more than half the L2), where the
  // last-level cache is not near the cores, and whose slabs are at least
  // kMinSharedSlabBytes long (the forward) or kMinSharedGradSlabBytes (the backward;
  // 16-bit data kMinShared16GradSlabBytes). Each thread reads its rows of a channel, the
  // team adds up their partial sums, and each normalizes its rows from its own L2, last
  // row first (what it read last is what its L2 still holds): x (and dy) come from memory
  // once instead of twice, but one channel's slabs at a time, runs a whole row apart,
  // where the two passes read memory in order. (Intel Xeon, 2 MiB L2, 480 MiB L3, 2
  // threads, in-process A/B against the two passes, same bits, nine runs each: forward
  // float32 (64, 64, 112, 112) 0.76x the time, (128, 64, 56, 56) 0.76x, (400, 256, 28,
  // 28) 0.80x, (832, 256, 28, 28), 1.3 MiB of a channel per thread, 0.95x; float64 (64,
  // 64, 112, 112) and (128, 64, 56, 56) 0.84x; bfloat16 (256, 64, 56, 56) 0.87x, (32, 64,
  // 112, 112) 1.01x; backward float32 (64, 64, 112, 112), slabs of 49 KiB, 0.87x and (128,
  // 64, 56, 56), 12.5 KiB, 0.82x (with its gradient sums four rows side by side,
  // grad_streams; 0.95x one at a time), float64 (64, 64, 112, 112) 0.91x, bfloat16 (32,
  // 64, 112, 112) 0.78x. Not taken: the backward over shorter slabs, float32 (512, 64,
  // 40, 40), 6.4 KiB, 1.05x slower, (256, 128, 32, 32) 1.12x, (400, 256, 28, 28) 1.13x and
  // (832, 256, 28, 28) 1.21x (their gradient sums alone, one slab at a time, 0.40 ns/el
  // against the two passes' 0.27 in memory order), bfloat16 (256, 64, 56, 56), 6 KiB,
  // 1.16x (float64 (256, 64, 28, 28), 6.3 KiB, measured 0.90x: left with the rest); the
  // forward over slabs of 1.5 KiB, bfloat16 (1024, 256, 28, 28), 1.14x. Requests for the
  // next rows' slabs into the L2 gained nothing in the forward and 4-7% in the backward.
  // The EPYC, whose L3 takes channels this big (block_channels), is not measured: it
  // keeps its schedules.) Calls on one thread keep the two passes: a whole channel then
  // goes through one L2, and the forward measured 1.09-1.17x slower shared on (64, 64,
  // 112, 112) and (128, 64, 56, 56), the backward 1.02-1.05x.
  bool share_channels(std::size_t arrays) const {
    if (!reduce_slabs_ || !runs_ || last_level_near() || get_num_threads() < 2) return false;
    const std::size_t channel_bytes = arrays * per_channel() * element_bytes_;
    const std::size_t least = arrays == 1           ? kMinSharedSlabBytes
                              : element_bytes_ >= 4 ? kMinSharedGradSlabBytes
                                                    : kMinShared16GradSlabBytes;
    return outer_ > 1 && inner_ * element_bytes_ >= least &&
           channel_bytes > cache_sizes().l2 / 2 && block_channels(arrays) == 0;
  }
  // Whether the cache-blocked passes over groups of `group` channels (block_channels) read
  // from `arrays` x-shaped inputs request, as they start a channel's slab of a row, the
  // channel's slabs of the rows they read next into the L2 (request_l2): float32 and
  // float64 data where the last-level cache is near the cores (last_level_near()), a
  // group's run of one row at most kShortBlockRunBytes, and, for the forward (one input),
  // groups of one channel. A group's rows lie a whole row of data apart, each run within
  // a page or two: too short for the hardware prefetchers to follow before it ends, so
  // each run's lines were fetched one request at a time. (AMD EPYC Zen 4, 32 KiB L1d, 1
  // MiB L2, 32 MiB L3, 2 threads, in-process A/B, same bits, against none: float32 NCHW
  // (64, 256, 28, 28), one channel a group, backward 0.76-0.85x the time, its gradient
  // sums 0.69x, forward 0.80-1.04x; (128, 256, 28, 28) forward 0.84-0.92x, backward
  // (groups of 5 channels, runs of 15 KiB: not taken) 0.92-1.00x; (96, 192, 28, 28)
  // forward 0.87-0.94x; (256, 256, 14, 14) backward 0.87-0.94x; float64 (256, 256, 14, 14)
  // forward 0.84-0.88x, backward (5 channels, runs of 7.7 KiB) 0.72-0.84x, (64, 256, 28,
  // 28) forward 0.87-0.90x. Not taken: runs of 12.5 KiB and more, float32 (32, 64, 56, 56)
  // 1.02-1.15x slower, float64 (64, 256, 28, 28) backward (5 channels, 31 KiB)
  // 1.06-1.08x; the forward's groups of several channels, float32 (64, 512, 14, 14)
  // 1.03-1.05x; 16-bit data, bfloat16 and float16 (32, 64, 56, 56) 1.07-1.14x slower,
  // (64, 256, 28, 28) within 2%, (128, 256, 28, 28) backward 0.96x; into the L1
  // (prefetcht0, the whole run), no faster for float32; the first KiB of a run only, no
  // faster. The Xeon, not measured, keeps its passes.)
  bool block_prefetch(std::size_t group, std::size_t arrays) const {
    return last_level_near() && element_bytes_ >= 4 &&
           group * inner_ * element_bytes_ <= kShortBlockRunBytes &&
           (arrays > 1 || group == 1);
  }
  // Slab runs the statistics read side by side (kSlabStreams), or one at a time: one
  // when the last-level cache is near the cores (last_level_near(), at most 64 L2s: AMD's
  // L3 of a core complex, not a large server's L3 shared over a mesh) and holds the
  // `arrays` x-shaped arrays of the pass (x, and the forward's y), so that x comes from
  // it rather than from memory. There a run alone reads fast enough, and four runs'
  // accumulators (32 lanes per sum each) overflow the registers: AVX-512 spills three,
  // AVX2 most of its 64. (AMD EPYC Zen 5, 1 MiB L2, 32 MiB L3, 2 threads, in-process A/B,
  // float32 forward: with AVX-512 NCL (32, 128, 128) 0.82x, (64, 128, 128) 0.84-0.87x,
  // NCHW (8, 512, 14, 14) 0.88x, (16, 512, 14, 14) 0.91x, (64, 256, 14, 14) 0.85-0.91x,
  // bfloat16 0.91-0.95x; with AVX2 0.70-0.84x on the same float32 shapes; slabs of 3136
  // values unchanged. From memory four runs stay faster: (32, 64, 56, 56) 0.110 ns/el
  // with four, 0.139 with one; with AVX2 0.211 and 0.240.) On the Xeon (480 MiB L3 over
  // 2 MiB L2s) four runs read 1.2x faster than one with the data in its L3 (kernels.hpp):
  // it keeps four. The AVX2 EPYC (Zen 3: 32 MiB L3 over 512 KiB L2s, 64) takes one:
  // measured there (2 threads, float32, same bits), forward in its L3 NCL (32, 128, 128)
  // 0.74x, (64, 128, 128) 0.86x, NCHW (16, 512, 14, 14) 0.79x, (64, 256, 14, 14) 0.92x
  // (fwd+bwd 0.88-0.89x); beyond it one and four within noise (0.96-1.05x), so four stay
  // there too. The sums are the same either way (each run's are those it gets alone).
  std::size_t slab_streams(std::size_t arrays) const {
    const bool fits = arrays * total_ * element_bytes_ <= cache_sizes().last;
    return last_level_near() && fits ? 1 : kSlabStreams;
  }
  // Slab runs of a channel the blocked and shared backward passes' gradient sums read
  // side by side (kSlabStreams), or one at a time: four where the last-level cache is far
  // (the Xeon), for 16-bit slabs and for float32 and float64 slabs of at least
  // kMinGradStreamSlabBytes, whose runs a whole row apart, read one at a time, came from
  // memory slower than in order. (Intel Xeon, 2 MiB L2, 480 MiB L3, 2 threads, in-process
  // A/B, same bits, backward: float32 (64, 256, 28, 28) 0.89x / 0.92x the time, (128, 256,
  // 28, 28) 0.86x, (32, 64, 56, 56) 0.90x, float64 (64, 256, 28, 28) 0.94x; two side by
  // side gained about half as much. Not taken: float32 slabs of 784 bytes, (16, 512, 14,
  // 14), 1.12-1.16x slower (1.10x with two), (256, 256, 14, 14) 1.06x, (64, 512, 14, 14)
  // 0.96-1.00x. 16-bit slabs, measured again once their kernels had changed: bfloat16 (64,
  // 256, 28, 28) 0.92x, float16 0.91x, (256, 256, 14, 14) 0.94x, (256, 128, 14, 14) 0.95x,
  // (16, 512, 14, 14) 0.94x, (96, 192, 28, 28), (32, 64, 56, 56), (128, 512, 7, 7) and the
  // shared (32, 64, 112, 112) 0.99-1.01x; the AVX2 kernels on the same core 0.92-0.94x.)
  // The near L3 of the EPYC, not measured, keeps one. The 16-bit kernels take the four
  // runs in turn (bn16_slab_grad_sums). Each run's sums are those it gets alone.
  std::size_t grad_streams() const {
    const bool long_slabs = inner_ * element_bytes_ >= kMinGradStreamSlabBytes;
    return !last_level_near() && (element_bytes_ < 4 || long_slabs) ? kSlabStreams : 1;
  }
  // Work list of the blocked passes: item g is the group of channels [g * group, ...).
  WorkList block_work(std::size_t group) const {
    const std::size_t groups = (channels_ + group - 1) / group;
    return WorkList::units(groups, element_bytes_, [this, group](std::size_t g) {
      return (std::min(channels_, (g + 1) * group) - g * group) * per_channel();
    });
  }

  // Block b of the slab of (row o, channel c): slab_unit((o * channels + c) * blocks + b)
  // without its divisions (a short slab's unit costs little more than them).
  SlabUnit slab_block(std::size_t o, std::size_t c, std::size_t b) const {
    const std::size_t begin = b * chunk_;
    return {(o * channels_ + c) * inner_ + begin, std::min(inner_, begin + chunk_) - begin, c};
  }

  SlabUnit slab_unit(std::size_t u) const {
    const std::size_t slab = u / blocks_per_slab_;
    const std::size_t begin = (u % blocks_per_slab_) * chunk_;
    return {slab * inner_ + begin, std::min(inner_, begin + chunk_) - begin, slab % channels_};
  }

  RowUnit row_unit(std::size_t u) const {
    const std::size_t group = u / col_blocks_;
    const std::size_t col = (u % col_blocks_) * tile_cols_;
    const std::size_t row = row_begin(group);
    return {row * cols_ + col, row_begin(group + 1) - row, col,
            std::min(cols_, col + tile_cols_) - col, group};
  }

  RunUnit run_unit(std::size_t u) const {
    const std::size_t begin = u * chunk_;
    const std::size_t slab = begin / inner_;
    return {begin, std::min(total_, begin + chunk_) - begin, begin - slab * inner_,
            slab % channels_};
  }

  WorkList slab_work() const {
    return WorkList::units(slab_units_, element_bytes_,
                           [this](std::size_t u) { return slab_unit(u).length; });
  }
  WorkList row_work() const {
    return WorkList::units(row_units_, element_bytes_, [this](std::size_t u) { return row_cost(u); });
  }

  // The elementwise passes' tiles: each group's rows whole when they are at most
  // kWholeRowCols values (the groups' rows one after another), else the row tiles. Rows
  // of two column blocks in fewer than kMinFarGroups groups keep the tiles too when the
  // passes run on two threads (2 * total_ from kMinSequenceElements up): whole rows of
  // one group are one unit, which one thread runs alone, reading the half of the data
  // the other thread's reduction brought into its own cache; of three groups, a share of
  // the reduction's tiles that the elementwise shares do not line up with. (Measured on
  // the Xeon, 2 threads, fwd+bwd: (48, 1024), 1 group, 49.1 -> 42.6 us; (96, 1024), 3
  // groups, 72.6 -> 57.9 us; (64, 1024), 2 groups, 54.6 -> 53.7 us.)
  bool whole_rows() const {
    return cols_ <= kWholeRowCols &&
           (col_blocks_ == 1 || groups_ >= kMinFarGroups || 2 * total_ < kMinSequenceElements);
  }
  // Rows per run of the elementwise row loops (kMinRowRun), at most a group's (the
  // per-column constants are repeated that many times per call, runs or no runs)...
  std::size_t rows_per_run() const {
    if (!whole_rows() || cols_ == 0 || cols_ >= kMinRowRun || groups_ == 0) return 1;
    const std::size_t group_rows = (outer_ + groups_ - 1) / groups_;
    return std::max<std::size_t>(1, std::min(kMinRowRun / cols_, group_rows));
  }
  // ...taken by those that stream their output, and by those over rows of at most
  // kShortRowCols values in arrays of at least kRowTileElements (in cache, runs of longer
  // rows measured slower, (512, 128) float32 27 -> 31 us; and below that size the
  // constants' copies cost more than the runs save, (64, 64) forward 1.72 -> 1.88 us).
  std::size_t elementwise_period(bool stream) const {
    return stream || (cols_ <= kShortRowCols && total_ >= kRowTileElements) ? rows_per_run() : 1;
  }
  std::size_t elementwise_units() const { return whole_rows() ? groups_ : row_units_; }
  RowUnit elementwise_unit(std::size_t u) const {
    if (!whole_rows()) return row_unit(u);
    const std::size_t row = row_begin(u);
    return {row * cols_, row_begin(u + 1) - row, 0, cols_, u};
  }
  // The elementwise passes' work: tile u is item u. (When a pass follows its reduction in
  // one parallel region, each thread runs its share from the last tile back: see
  // WorkList::run_in_sequence.)
  WorkList elementwise_work() const {
    return WorkList::units(elementwise_units(), element_bytes_, [this](std::size_t u) {
      const RowUnit r = elementwise_unit(u);
      return r.rows * r.cols;
    });
  }
  WorkList run_work() const {
    return WorkList::units(run_units_, element_bytes_,
                           [this](std::size_t u) { return run_unit(u).length; });
  }

 private:
  std::size_t row_begin(std::size_t group) const { return group * outer_ / groups_; }
  std::size_t row_cost(std::size_t u) const {
    const RowUnit r = row_unit(u);
    return r.rows * r.cols;
  }

  std::size_t outer_, channels_, inner_, element_bytes_, chunk_;
  std::size_t total_ = 0;
  bool reduce_slabs_ = false, runs_ = false;
  std::size_t blocks_per_slab_ = 0, slab_units_ = 0;              // slab units
  std::size_t cols_ = 0, groups_ = 0, col_blocks_ = 0, row_units_ = 0;  // row tiles
  std::size_t tile_cols_ = kColBlock;                                 // columns per tile
  std::size_t run_units_ = 0;                                      // runs
};

// f_sum = the sum of f[0 .. n), s_sum that of s[0 .. n), in a fixed order: kSumWays
// interleaved running sums (independent chains, kept in vector registers) added pairwise
// at the end. One running sum is a chain of dependent adds, one channel's columns after
// another on one thread: (16, 512, 14, 14) float32 statistics 0.27 -> 0.24 ns/el (Xeon,
// 2 threads, in cache).
constexpr std::size_t kSumWays = 8;
inline void sum_pair(const double* __restrict f, const double* __restrict s, std::size_t n,
                     double& f_sum, double& s_sum) {
  double a[kSumWays] = {}, b[kSumWays] = {};
  std::size_t i = 0;
  for (; i + kSumWays <= n; i += kSumWays) {
    for (std::size_t k = 0; k < kSumWays; ++k) {
      a[k] += f[i + k];
      b[k] += s[i + k];
    }
  }
  for (std::size_t k = 0; i < n; ++i, ++k) {
    a[k] += f[i];
    b[k] += s[i];
  }
  for (std::size_t width = kSumWays / 2; width > 0; width /= 2) {
    for (std::size_t k = 0; k < width; ++k) {
      a[k] += a[k + width];
      b[k] += b[k + width];
    }
  }
  f_sum = a[0];
  s_sum = b[0];
}

// A two-sum reduction over all units, cut so that it can share a parallel region with
// the pass that follows (WorkList::run_in_sequence): batch(lo, hi) fills the partials of
// the work items [lo, hi), combine() then adds them per channel, in unit order, into
// first[c] and second[c]. The source gives the sums: source.slab_sums(units, count,
// sums[2 count]) those of `count` (at most `streams`) slab units of one length, read side
// by side; source.row_sums(unit, first_row, second_row) one row tile's, its partial rows
// indexed by column. With `streams` > 1 (at most kSlabStreams, Plan::slab_streams), a
// batch's slab units are read 1 / streams of the batch apart (unit u beside u + q, u + 2 q,
// ...): runs in different pages, each followed by its own hardware stream. Every unit's
// partials are those it gets alone, whichever units it is read beside, so results are
// bitwise the same for any thread count (and any number of streams).
template <class Source>
class SumReduction {
 public:
  SumReduction(const Plan& plan, Scratch& scratch, const Source& source, std::size_t streams)
      : plan_(plan), source_(source),
        streams_(std::max<std::size_t>(1, std::min(streams, kSlabStreams))),
        work_(plan.reduce_slabs() ? plan.slab_work() : plan.row_work()) {
    if (plan.reduce_slabs()) {
      partials_ = scratch.take<double>(2 * work_.items().size());
    } else {
      // The accumulator rows are updated for every row of data: each group's rows start
      // on their own cache lines, or two threads would keep stealing the line they share.
      constexpr std::size_t kDoublesPerLine = kLineBytes / sizeof(double);
      stride_ = (plan.cols() + kDoublesPerLine - 1) / kDoublesPerLine * kDoublesPerLine;
      first_rows_ = scratch.take<double>(plan.groups() * stride_);
      second_rows_ = scratch.take<double>(plan.groups() * stride_);
    }
  }

  const WorkList& work() const { return work_; }

  void batch(std::size_t lo, std::size_t hi) const {
    if (!plan_.reduce_slabs()) {
      for (std::size_t u = lo; u < hi; ++u) {
        const RowUnit r = plan_.row_unit(u);
        const std::size_t at = r.group * stride_ + r.col;
        source_.row_sums(r, first_rows_ + at, second_rows_ + at);
      }
      return;
    }
    const std::size_t streams = streams_;
    const std::size_t q = (hi - lo) / streams;
    SlabUnit units[kSlabStreams];
    double sums[2 * kSlabStreams];
    const auto alone = [&](std::size_t u) {
      units[0] = plan_.slab_unit(u);
      source_.slab_sums(units, 1, partials_ + 2 * u);
    };
    for (std::size_t u = lo; u < lo + q; ++u) {
      bool same_length = true;
      for (std::size_t s = 0; s < streams; ++s) {
        units[s] = plan_.slab_unit(u + s * q);
        same_length = same_length && units[s].length == units[0].length;
      }
      if (!same_length) {
        for (std::size_t s = 0; s < streams; ++s) alone(u + s * q);
        continue;
      }
      source_.slab_sums(units, streams, sums);
      for (std::size_t s = 0; s < streams; ++s) {
        partials_[2 * (u + s * q)] = sums[2 * s];
        partials_[2 * (u + s * q) + 1] = sums[2 * s + 1];
      }
    }
    for (std::size_t u = lo + streams * q; u < hi; ++u) alone(u);
  }

  // Whether the sums of the one row group are the channels' sums as they are (a column
  // per channel): combine() would add them to zeros, which changes no value (a sum that
  // starts at +0.0 is never -0.0), so channel_sums() reads them in place.
  bool in_place() const { return !plan_.reduce_slabs() && plan_.groups() == 1 && plan_.inner() == 1; }

  // The sums of channels [c0, c1), where the caller reads them: combined into first[c]
  // and second[c], returned as {first, second}, or, in_place(), the row group's own
  // (first and second untouched). Pointers to channel 0 either way.
  std::pair<double*, double*> channel_sums(double* first, double* second, std::size_t c0,
                                           std::size_t c1) const {
    if (in_place()) return {first_rows_, second_rows_};
    combine(first, second, c0, c1);
    return {first, second};
  }

  // The sums of channels [c0, c1) (all by default) into first[c] and second[c].
  void combine(double* first, double* second, std::size_t c0 = 0,
               std::size_t c1 = std::size_t(-1)) const {
    const std::size_t channels = plan_.channels(), inner = plan_.inner();
    if (c1 > channels) c1 = channels;
    std::fill(first + c0, first + c1, 0.0);
    std::fill(second + c0, second + c1, 0.0);
    if (plan_.reduce_slabs()) {
      const std::size_t blocks = plan_.blocks_per_slab();
      for (std::size_t o = 0; o < plan_.outer(); ++o) {
        const double* p = partials_ + 2 * blocks * (o * channels + c0);
        for (std::size_t c = c0; c < c1; ++c) {
          for (std::size_t b = 0; b < blocks; ++b, p += 2) {
            first[c] += p[0];
            second[c] += p[1];
          }
        }
      }
      return;
    }
    for (std::size_t g = 0; g < plan_.groups(); ++g) {
      const double* __restrict f = first_rows_ + g * stride_;
      const double* __restrict s = second_rows_ + g * stride_;
      if (inner == 1) {  // a column per channel: the same sums, as a loop that vectorizes
        for (std::size_t c = c0; c < c1; ++c) {
          first[c] += f[c];
          second[c] += s[c];
        }
        continue;
      }
      f += c0 * inner;
      s += c0 * inner;
      for (std::size_t c = c0; c < c1; ++c, f += inner, s += inner) {
        double f_sum, s_sum;
        sum_pair(f, s, inner, f_sum, s_sum);
        first[c] += f_sum;
        second[c] += s_sum;
      }
    }
  }

  // The reduction alone, in its own parallel region.
  void run(double* first, double* second) const {
    work_.run_batches([this](std::size_t lo, std::size_t hi) { batch(lo, hi); });
    combine(first, second);
  }

 private:
  const Plan& plan_;
  Source source_;
  std::size_t streams_;
  WorkList work_;
  double* partials_ = nullptr;                                  // slab units
  std::size_t stride_ = 0;                                      // row tiles
  double* first_rows_ = nullptr;
  double* second_rows_ = nullptr;
};

// Room for fill_columns(..., rows): null when the per-channel values serve as they are
// (a column per channel, one row).
template <class V>
V* column_room(const Plan& plan, Scratch& scratch, std::size_t rows = 1, std::size_t shift = 0) {
  if (plan.inner() == 1 && rows == 1) return nullptr;
  return scratch.take<V>(rows * plan.cols(), shift);
}

// Per-channel values repeated for each column of a row (column j holds channel
// j / inner), and the row repeated `rows` times, into `room` (from column_room); the
// values themselves when room is null. fill_range writes the columns of channels
// [c0, c1) only.
template <class V>
void fill_range(const Plan& plan, const V* per_channel, V* room, std::size_t rows,
                std::size_t c0, std::size_t c1) {
  if (room == nullptr) return;
  const std::size_t inner = plan.inner(), cols = plan.cols();
  V* o = room + c0 * inner;
  for (std::size_t c = c0; c < c1; ++c) {
    for (std::size_t i = 0; i < inner; ++i) *o++ = per_channel[c];
  }
  if (c0 == 0 && c1 == plan.channels()) {  // whole rows: doubling copies
    for (std::size_t done = 1; done < rows; done *= 2) {
      const std::size_t n = std::min(done, rows - done);
      std::copy(room, room + n * cols, room + done * cols);
    }
    return;
  }
  for (std::size_t r = 1; r < rows; ++r) {
    std::copy(room + c0 * inner, room + c1 * inner, room + r * cols + c0 * inner);
  }
}

template <class V>
const V* fill_columns(const Plan& plan, const V* per_channel, V* room, std::size_t rows = 1) {
  fill_range(plan, per_channel, room, rows, 0, plan.channels());
  return room == nullptr ? per_channel : room;
}

template <class V>
const V* per_column(const Plan& plan, const V* per_channel, Scratch& scratch,
                    std::size_t rows = 1) {
  return fill_columns(plan, per_channel, column_room<V>(plan, scratch, rows), rows);
}

// Calls f(offset, rows, stride, cols) for the row loops over the elementwise tile r: the
// tile itself, or, with whole rows taken `period` at a time (Plan::rows_per_run), its
// rows in runs of `period` (each one row of period * cols values, the constants repeated
// as per_column(..., period) repeats them) and the rows left over.
template <class F>
void row_runs(const Plan& plan, const RowUnit& r, std::size_t period, const F& f) {
  const std::size_t stride = plan.cols();
  const std::size_t runs = period > 1 ? r.rows / period : 0;
  if (runs > 0) f(r.offset, runs, period * stride, period * r.cols);
  const std::size_t done = runs * period;
  if (r.rows > done) f(r.offset + done * stride, r.rows - done, stride, r.cols);
}

// What a thread runs after each batch of the elementwise pass: a fence when the pass
// writes with non-temporal stores.
template <class R, class T>
auto stream_fence_after_batch(const BatchNormKernels<R, T>& k, bool stream) {
  return [&k, stream] {
    if (stream) k.stream_fence();
  };
}

// Per-channel arithmetic, shared by the two-pass and the cache-blocked schedules so both
// give bitwise the same results: the kernels' loops over channels [c0, c1)
// (BatchNormKernels::finish_stats and the rest; the elementwise passes subtract the mean
// as a value of T, hi, with the rest of it folded into their constant terms).

// mean and m2 of channels [c0, c1) from their sums around `pivot` (a value of each
// channel); pivot, sum and sum_sq are indexed from c0.
template <class K>
void finish_stats(const K& k, std::size_t c0, std::size_t c1, const double* pivot,
                  const double* sum, const double* sum_sq, double count, double* mean,
                  double* m2) {
  k.finish_stats(c1 - c0, pivot, sum, sum_sq, 1.0 / count, mean + c0, m2 + c0);
}

// Training forward of channels [c0, c1): invstd and the running statistics.
template <class K>
void finish_forward(const K& k, std::size_t c0, std::size_t c1, const double* m2, double count,
                    const BatchNormForwardArgs& a) {
  using T = typename K::value;
  T* running_mean = static_cast<T*>(a.running_mean);
  T* running_var = static_cast<T*>(a.running_var);
  k.finish_forward(c1 - c0, m2 + c0, count, a.eps, a.save_mean + c0, a.save_invstd + c0,
                   running_mean ? running_mean + c0 : nullptr,
                   running_var ? running_var + c0 : nullptr, a.momentum);
}

// The parameter gradients of channels [c0, c1) (weight nullptr: none); sum_dy and
// sum_dy_xhat are indexed from c0, sum_dy_xhat arrives as sum(dy * (x - mean)) and leaves
// times invstd.
template <class K>
void finish_grads(const K& k, std::size_t c0, std::size_t c1, const BatchNormBackwardArgs& a,
                  const double* sum_dy, double* sum_dy_xhat) {
  using T = typename K::value;
  const bool grads = a.weight != nullptr;
  k.finish_grads(c1 - c0, a.save_invstd + c0, sum_dy, sum_dy_xhat,
                 grads ? static_cast<T*>(a.grad_weight) + c0 : nullptr,
                 grads ? static_cast<T*>(a.grad_bias) + c0 : nullptr);
}

// The constants of y = (x - hi) * scale + shift for channel c (shift = bias - lo * scale).
template <class T>
struct NormalizeConstants {
  T* mean_hi;
  T* scale;
  T* shift;

  // at: where each array starts past a cache line (line_shift).
  NormalizeConstants(Scratch& scratch, std::size_t channels, std::size_t at = 0)
      : mean_hi(scratch.take<T>(channels, at)), scale(scratch.take<T>(channels, at)),
        shift(scratch.take<T>(channels, at)) {}

  template <class K>
  void set(const K& k, std::size_t c0, std::size_t c1, const double* mean, const double* invstd,
           const T* weight, const T* bias) {
    k.normalize_constants(c1 - c0, mean + c0, invstd + c0, weight ? weight + c0 : nullptr,
                          bias ? bias + c0 : nullptr, mean_hi + c0, scale + c0, shift + c0);
  }

  // The training forward's finishing of channels [c0, c1) from their sums (pivot, sum and
  // sum_sq indexed from c0): a's save_mean, save_invstd and running statistics, and the
  // constants, as finish_stats, finish_forward and set() give them.
  template <class K>
  void finish(const K& k, std::size_t c0, std::size_t c1, const double* pivot,
              const double* sum, const double* sum_sq, double count,
              const BatchNormForwardArgs& a) {
    T* running_mean = static_cast<T*>(a.running_mean);
    T* running_var = static_cast<T*>(a.running_var);
    const T* weight = static_cast<const T*>(a.weight);
    const T* bias = static_cast<const T*>(a.bias);
    k.finish_normalize(c1 - c0, pivot, sum, sum_sq, count, a.eps, a.momentum, a.save_mean + c0,
                       a.save_invstd + c0, running_mean ? running_mean + c0 : nullptr,
                       running_var ? running_var + c0 : nullptr, weight ? weight + c0 : nullptr,
                       bias ? bias + c0 : nullptr, mean_hi + c0, scale + c0, shift + c0);
  }
};

// The constants of dx = dy * k_dy + (x - hi) * k_x + k_0 for channel c:
// dx = w * invstd * (dy - sum_dy / M - xhat * sum_dy_xhat / M), xhat = (x - mean) * invstd,
// k_0 holding the -lo * k_x of the mean's remainder; centered = false drops the x terms
// (eval).
template <class T>
struct DxConstants {
  T* k_dy;
  T* mean_hi;
  T* k_x;
  T* k_0;

  DxConstants(Scratch& scratch, std::size_t channels, std::size_t at = 0)
      : k_dy(scratch.take<T>(channels, at)), mean_hi(scratch.take<T>(channels, at)),
        k_x(scratch.take<T>(channels, at)), k_0(scratch.take<T>(channels, at)) {}

  // sum_dy and sum_dy_xhat are indexed from c0.
  template <class K>
  void set(const K& k, std::size_t c0, std::size_t c1, const T* weight, const double* mean,
           const double* invstd, const double* sum_dy, const double* sum_dy_xhat, double count,
           bool centered) {
    k.dx_constants(c1 - c0, weight ? weight + c0 : nullptr, mean + c0, invstd + c0, sum_dy,
                   sum_dy_xhat, 1.0 / count, centered, k_dy + c0, mean_hi + c0, k_x + c0,
                   k_0 + c0);
  }

  // The training backward's finishing of channels [c0, c1) from their sums (indexed from
  // c0; sum_dy_xhat as sum(dy * (x - mean)), left so): a's parameter gradients and the
  // constants, as finish_grads and set(..., centered) give them.
  template <class K>
  void finish(const K& k, std::size_t c0, std::size_t c1, const BatchNormBackwardArgs& a,
              const double* sum_dy, const double* sum_dy_xhat, double count) {
    const T* weight = static_cast<const T*>(a.weight);
    T* grad_weight = weight ? static_cast<T*>(a.grad_weight) + c0 : nullptr;
    T* grad_bias = weight ? static_cast<T*>(a.grad_bias) + c0 : nullptr;
    k.finish_dx(c1 - c0, weight ? weight + c0 : nullptr, a.save_mean + c0, a.save_invstd + c0,
                sum_dy, sum_dy_xhat, 1.0 / count, grad_weight, grad_bias, k_dy + c0,
                mean_hi + c0, k_x + c0, k_0 + c0);
  }
};

// The sums of the statistics: sum(x - pivot) and sum((x - pivot)^2) per channel, around
// a value of each channel (its first), so they see the spread, not the mean; exact
// enough in double even when that value is far out.
template <class R, class T>
struct StatsSums {
  const BatchNormKernels<R, T>& k;
  const Plan& plan;
  const R* x;
  double* pivot;            // per channel
  const double* pivot_col;  // per column (row tiles)

  StatsSums(const BatchNormKernels<R, T>& kernels, const Plan& p, const R* data, Scratch& scratch)
      : k(kernels), plan(p), x(data), pivot(scratch.take<double>(p.channels())) {
    k.values_at(x, plan.inner(), plan.channels(), pivot);
    pivot_col = plan.reduce_slabs() ? nullptr : per_column(plan, pivot, scratch);
  }
  void slab_sums(const SlabUnit* units, std::size_t count, double* out) const {
    const R* xs[kSlabStreams];
    double pivots[kSlabStreams];
    for (std::size_t s = 0; s < count; ++s) {
      xs[s] = x + units[s].offset;
      pivots[s] = pivot[units[s].channel];
    }
    k.slab_stats(xs, count, units[0].length, pivots, out);
  }
  void row_sums(const RowUnit& r, double* first, double* second) const {
    k.rows_stats(x + r.offset, r.rows, plan.cols(), r.cols, pivot_col + r.col, first, second,
                 plan.reduce_ahead(), plan.ahead_bytes(), plan.rows_walk(1));
  }
};

// The gradient sums: sum(dy) and sum(dy * (x - mean)) per channel (slab units one at a
// time).
template <class R, class T>
struct GradSums {
  const BatchNormKernels<R, T>& k;
  const Plan& plan;
  const R* dy;
  const R* x;
  const double* mean;
  const double* mean_col;
  bool ahead;               // the plan's, for every row tile
  std::size_t chunk_bytes;
  std::size_t ahead_bytes;
  bool walk;

  GradSums(const BatchNormKernels<R, T>& kernels, const Plan& p, const R* grad, const R* data,
           const double* m, Scratch& scratch)
      : k(kernels), plan(p), dy(grad), x(data), mean(m),
        mean_col(p.reduce_slabs() ? nullptr : per_column(p, m, scratch)),
        ahead(p.reduce_ahead()), chunk_bytes(p.grad_chunk_bytes()),
        ahead_bytes(p.ahead_bytes()), walk(p.rows_walk(2)) {}
  void slab_sums(const SlabUnit* units, std::size_t, double* out) const {
    const R* g = dy + units[0].offset;
    const R* v = x + units[0].offset;
    k.slab_grad_sums(&g, &v, 1, units[0].length, mean[units[0].channel], out);
  }
  void row_sums(const RowUnit& r, double* first, double* second) const {
    k.rows_grad_sums(dy + r.offset, x + r.offset, r.rows, plan.cols(), r.cols,
                     mean_col + r.col, first, second, ahead, chunk_bytes, ahead_bytes, walk);
  }
};

// The elementwise work items [lo, hi): run(unit) for each channel-first run, or
// row(at, rows, stride, cols, col) for each row loop of a tile (Plan::elementwise_unit,
// cut by row_runs into runs of `period` rows; col is the tile's first column).
template <class Run, class Row>
void for_each_elementwise(const Plan& plan, std::size_t lo, std::size_t hi, std::size_t period,
                          const Run& run, const Row& row) {
  for (std::size_t u = lo; u < hi; ++u) {
    if (plan.runs()) {
      run(plan.run_unit(u));
      continue;
    }
    const RowUnit r = plan.elementwise_unit(u);
    row_runs(plan, r, period, [&](std::size_t at, std::size_t rows, std::size_t stride,
                                  std::size_t cols) { row(at, rows, stride, cols, r.col); });
  }
}

// The elementwise pass y = (x - hi) * scale + shift, cut like SumReduction: the
// constructor takes its memory, set() its constants (per channel, and per column for
// row tiles), batch(lo, hi) runs the work items [lo, hi) and fences streaming stores.
template <class R, class T>
class NormalizePass {
 public:
  NormalizePass(const BatchNormKernels<R, T>& k, const Plan& plan, Scratch& scratch, const R* x,
                R* y)
      : NormalizePass(k, plan, scratch, x, y, plan.runs() ? 0 : line_shift<T>(y)) {}

  // The constants of channels [c0, c1) (all by default).
  void set(const double* mean, const double* invstd, const T* weight, const T* bias,
           std::size_t c0 = 0, std::size_t c1 = std::size_t(-1)) {
    if (c1 > plan_.channels()) c1 = plan_.channels();
    constants_.set(k_, c0, c1, mean, invstd, weight, bias);
    fill(c0, c1);
  }

  // The training forward's finishing of channels [c0, c1) (NormalizeConstants::finish)
  // with the constants placed as set() places them.
  void finish(std::size_t c0, std::size_t c1, const double* pivot, const double* sum,
              const double* sum_sq, double count, const BatchNormForwardArgs& a) {
    constants_.finish(k_, c0, c1, pivot, sum, sum_sq, count, a);
    fill(c0, c1);
  }

  const WorkList& work() const { return work_; }

  void batch(std::size_t lo, std::size_t hi) const {
    for_each_elementwise(plan_, lo, hi, period_,
        [&](const RunUnit& r) {
          k_.runs_normalize(x_ + r.offset, y_ + r.offset, r.length, plan_.inner(),
                            plan_.channels(), r.slab_offset, r.channel, constants_.mean_hi,
                            constants_.scale, constants_.shift, stream_);
        },
        [&](std::size_t at, std::size_t rows, std::size_t stride, std::size_t cols,
            std::size_t col) {
          k_.rows_normalize(x_ + at, y_ + at, rows, stride, cols, hi_ + col, sc_ + col,
                            sh_ + col, stream_, ahead_, direct_);
        });
    if (stream_) k_.stream_fence();
  }

  void run() const {
    work_.run_batches([this](std::size_t lo, std::size_t hi) { batch(lo, hi); });
  }

 private:
  // The per-column constants of channels [c0, c1) from the per-channel ones.
  void fill(std::size_t c0, std::size_t c1) {
    if (plan_.runs()) return;
    fill_range(plan_, constants_.mean_hi, room_[0], period_, c0, c1);
    fill_range(plan_, constants_.scale, room_[1], period_, c0, c1);
    fill_range(plan_, constants_.shift, room_[2], period_, c0, c1);
  }

  // shift: where the per-column constants start within a line (line_shift).
  NormalizePass(const BatchNormKernels<R, T>& k, const Plan& plan, Scratch& scratch, const R* x,
                R* y, std::size_t shift)
      : k_(k), plan_(plan), x_(x), y_(y), constants_(scratch, plan.channels(), shift),
        stream_(plan.stream_output(2)), ahead_(plan.stream_prefetch()),
        direct_(plan.stream_direct()), period_(plan.elementwise_period(stream_)),
        work_(plan.runs() ? plan.run_work() : plan.elementwise_work()) {
    if (!plan.runs()) {
      for (std::size_t i = 0; i < 3; ++i) room_[i] = column_room<T>(plan, scratch, period_, shift);
      hi_ = room_[0] ? room_[0] : constants_.mean_hi;
      sc_ = room_[1] ? room_[1] : constants_.scale;
      sh_ = room_[2] ? room_[2] : constants_.shift;
    }
  }

  const BatchNormKernels<R, T>& k_;
  const Plan& plan_;
  const R* x_;
  R* y_;
  NormalizeConstants<T> constants_;
  bool stream_;
  bool ahead_;  // the row loops' prefetches (Plan::stream_prefetch)
  bool direct_;  // their stores straight from registers (Plan::stream_direct)
  std::size_t period_;
  WorkList work_;
  T* room_[3] = {nullptr, nullptr, nullptr};
  const T* hi_ = nullptr;
  const T* sc_ = nullptr;
  const T* sh_ = nullptr;
};

// The elementwise pass dx = dy * k_dy + (x - hi) * k_x + k_0, cut as NormalizePass.
// centered = false: dx = dy * weight * invstd (eval mode; the sums are not read).
template <class R, class T>
class DxPass {
 public:
  DxPass(const BatchNormKernels<R, T>& k, const Plan& plan, Scratch& scratch, const R* dy,
         const R* x, R* dx, bool centered)
      : DxPass(k, plan, scratch, dy, x, dx, centered,
               plan.runs() ? 0 : line_shift<T>(line_anchor<R>(dy, centered ? x : nullptr, dx))) {}

  // The constants of channels [c0, c1) (all by default); sum_dy and sum_dy_xhat are
  // indexed from c0.
  void set(const T* weight, const double* mean, const double* invstd, const double* sum_dy,
           const double* sum_dy_xhat, double count, std::size_t c0 = 0,
           std::size_t c1 = std::size_t(-1)) {
    if (c1 > plan_.channels()) c1 = plan_.channels();
    constants_.set(k_, c0, c1, weight, mean, invstd, sum_dy, sum_dy_xhat, count, centered_);
    fill(c0, c1);
  }

  // The training backward's finishing of channels [c0, c1) (DxConstants::finish; sums
  // indexed from c0) with the constants placed as set() places them.
  void finish(std::size_t c0, std::size_t c1, const BatchNormBackwardArgs& a,
              const double* sum_dy, const double* sum_dy_xhat, double count) {
    constants_.finish(k_, c0, c1, a, sum_dy, sum_dy_xhat, count);
    fill(c0, c1);
  }

  const WorkList& work() const { return work_; }

  void batch(std::size_t lo, std::size_t hi) const {
    for_each_elementwise(plan_, lo, hi, period_,
        [&](const RunUnit& r) {
          k_.runs_dx(dy_ + r.offset, x_ + r.offset, dx_ + r.offset, r.length, plan_.inner(),
                     plan_.channels(), r.slab_offset, r.channel, constants_.k_dy,
                     constants_.mean_hi, constants_.k_x, constants_.k_0, centered_, stream_);
        },
        [&](std::size_t at, std::size_t rows, std::size_t stride, std::size_t cols,
            std::size_t col) {
          k_.rows_dx(dy_ + at, x_ + at, dx_ + at, rows, stride, cols, kd_ + col, hi_ + col,
                     kx_ + col, k0_ + col, centered_, stream_, ahead_, direct_);
        });
    if (stream_) k_.stream_fence();
  }

  void run() const {
    work_.run_batches([this](std::size_t lo, std::size_t hi) { batch(lo, hi); });
  }

 private:
  void fill(std::size_t c0, std::size_t c1) {
    if (plan_.runs()) return;
    fill_range(plan_, constants_.k_dy, room_[0], period_, c0, c1);
    fill_range(plan_, constants_.mean_hi, room_[1], period_, c0, c1);
    fill_range(plan_, constants_.k_x, room_[2], period_, c0, c1);
    fill_range(plan_, constants_.k_0, room_[3], period_, c0, c1);
  }

  // shift: as NormalizePass's, for the array the row loops line up with (line_anchor).
  DxPass(const BatchNormKernels<R, T>& k, const Plan& plan, Scratch& scratch, const R* dy,
         const R* x, R* dx, bool centered, std::size_t shift)
      : k_(k), plan_(plan), dy_(dy), x_(x), dx_(dx), constants_(scratch, plan.channels(), shift),
        centered_(centered), stream_(plan.stream_output(3)), ahead_(plan.stream_prefetch()),
        direct_(plan.stream_direct()), period_(plan.elementwise_period(stream_)),
        work_(plan.runs() ? plan.run_work() : plan.elementwise_work()) {
    if (!plan.runs()) {
      for (std::size_t i = 0; i < 4; ++i) room_[i] = column_room<T>(plan, scratch, period_, shift);
      kd_ = room_[0] ? room_[0] : constants_.k_dy;
      hi_ = room_[1] ? room_[1] : constants_.mean_hi;
      kx_ = room_[2] ? room_[2] : constants_.k_x;
      k0_ = room_[3] ? room_[3] : constants_.k_0;
    }
  }

  const BatchNormKernels<R, T>& k_;
  const Plan& plan_;
  const R* dy_;
  const R* x_;
  R* dx_;
  DxConstants<T> constants_;
  bool centered_;
  bool stream_;
  bool ahead_;  // as NormalizePass's
  bool direct_;  // as NormalizePass's
  std::size_t period_;
  WorkList work_;
  T* room_[4] = {nullptr, nullptr, nullptr, nullptr};
  const T* kd_ = nullptr;
  const T* hi_ = nullptr;
  const T* kx_ = nullptr;
  const T* k0_ = nullptr;
};

template <class R, class T>
void stats_typed(const BatchNormKernels<R, T>& k, const Plan& plan, const R* x, double* mean,
                 double* m2) {
  const std::size_t channels = plan.channels();
  if (plan.per_channel() == 0) {
    std::fill(mean, mean + channels, 0.0);
    std::fill(m2, m2 + channels, 0.0);
    return;
  }
  Scratch scratch;
  const StatsSums<R, T> sums(k, plan, x, scratch);
  const SumReduction<StatsSums<R, T>> reduction(plan, scratch, sums, plan.slab_streams(1));
  double* sum = scratch.take<double>(channels);
  double* sum_sq = scratch.take<double>(channels);
  reduction.run(sum, sum_sq);
  finish_stats(k, 0, channels, sums.pivot, sum, sum_sq, double(plan.per_channel()), mean, m2);
}

template <class R, class T>
void elemt_typed(const BatchNormKernels<R, T>& k, const Plan& plan, const R* x, R* y,
                 const double* mean, const double* invstd,
                 const T* weight, const T* bias) {
  Scratch scratch;
  NormalizePass<R, T> pass(k, plan, scratch, x, y);
  pass.set(mean, invstd, weight, bias);
  pass.run();
}

template <class R, class T>
void backward_reduce_typed(const BatchNormKernels<R, T>& k, const Plan& plan, const R* dy,
                           const R* x, const double* mean,
                           const double* invstd, double* sum_dy, double* sum_dy_xhat) {
  Scratch scratch;
  const GradSums<R, T> sums(k, plan, dy, x, mean, scratch);
  const SumReduction<GradSums<R, T>> reduction(plan, scratch, sums, 1);
  reduction.run(sum_dy, sum_dy_xhat);
  k.finish_grads(plan.channels(), invstd, sum_dy, sum_dy_xhat, nullptr, nullptr);
}

template <class R, class T>
void backward_elemt_typed(const BatchNormKernels<R, T>& k, const Plan& plan, const R* dy,
                          const R* x, R* dx, const T* weight,
                          const double* mean, const double* invstd, const double* sum_dy,
                          const double* sum_dy_xhat, double count, bool centered) {
  Scratch scratch;
  DxPass<R, T> pass(k, plan, scratch, dy, x, dx, centered);
  pass.set(weight, mean, invstd, sum_dy, sum_dy_xhat, count);
  pass.run();
}

// The statistics around `pivot` of block b of channel c's slabs in rows [o, o + rows) (at
// most kSlabStreams), read side by side: row o + r's to out[2 r], out[2 r + 1].
template <class R, class T>
void rows_stats(const BatchNormKernels<R, T>& k, const Plan& plan, const R* x, std::size_t o,
                std::size_t rows, std::size_t c, std::size_t b, double pivot, double* out) {
  const R* xs[kSlabStreams];
  double pivots[kSlabStreams];
  for (std::size_t r = 0; r < rows; ++r) {
    xs[r] = x + plan.slab_block(o + r, c, b).offset;
    pivots[r] = pivot;
  }
  k.slab_stats(xs, rows, plan.slab_block(o, c, b).length, pivots, out);  // one length a row
}

// The training forward for a channel-first x beyond the L2 (Plan::block_channels): each
// thread takes a group of channels, sums their slab units (in the order reduce() adds
// them), derives their statistics and normalizes them while they are still in the L2.
template <class R, class T>
void forward_blocked(const BatchNormKernels<R, T>& k, const Plan& plan, std::size_t group,
                     const BatchNormForwardArgs& a) {
  const std::size_t channels = plan.channels(), inner = plan.inner(), outer = plan.outer();
  const std::size_t blocks = plan.blocks_per_slab();
  const R* x = static_cast<const R*>(a.x);
  R* y = static_cast<R*>(a.y);
  const double count = double(plan.per_channel());
  const bool stream = plan.stream_output(2);
  const std::size_t streams = plan.slab_streams(2);
  const bool ahead = plan.block_prefetch(group, 1);
  Scratch scratch;
  NormalizeConstants<T> constants(scratch, channels);
  plan.block_work(group).run([&](std::size_t g, const WorkItem&) {
    const std::size_t c0 = g * group, c1 = std::min(channels, c0 + group), n = c1 - c0;
    Scratch thread_sums;  // this worker's
    double* pivot = thread_sums.take<double>(n);
    double* sum = thread_sums.take<double>(n);
    double* sum_sq = thread_sums.take<double>(n);
    k.values_at(x + c0 * inner, inner, n, pivot);
    std::fill(sum, sum + n, 0.0);
    std::fill(sum_sq, sum_sq + n, 0.0);
    double* partials = thread_sums.take<double>(2 * kSlabStreams * blocks);
    // `streams` rows at a time (Plan::slab_streams), side by side (rows a whole row of
    // data apart: runs the hardware follows separately), the group's slabs of those rows
    // in memory order. Each channel still adds its partials in slab-unit order (row, then
    // block).
    for (std::size_t o = 0; o < outer; o += streams) {
      const std::size_t rows = std::min(streams, outer - o);
      for (std::size_t c = c0; c < c1; ++c) {
        for (std::size_t r = o + streams; ahead && r < std::min(outer, o + 2 * streams); ++r) {
          request_l2(x + (r * channels + c) * inner, inner);
        }
        for (std::size_t b = 0; b < blocks; ++b) {
          rows_stats(k, plan, x, o, rows, c, b, pivot[c - c0], partials + 2 * rows * b);
        }
        for (std::size_t r = 0; r < rows; ++r) {
          for (std::size_t b = 0; b < blocks; ++b) {
            sum[c - c0] += partials[2 * (rows * b + r)];
            sum_sq[c - c0] += partials[2 * (rows * b + r) + 1];
          }
        }
      }
    }
    constants.finish(k, c0, c1, pivot, sum, sum_sq, count, a);
    for (std::size_t o = 0; o < outer; ++o) {
      const std::size_t at = (o * channels + c0) * inner;
      k.runs_normalize(x + at, y + at, (c1 - c0) * inner, inner, channels, 0, c0,
                          constants.mean_hi, constants.scale,
                          constants.shift, stream);
    }
  }, stream_fence_after_batch(k, stream));
}

// The gradient sums of block b of channel c's slabs in rows [o, o + rows) (at most
// kSlabStreams), read side by side: row o + r's to out[2 r], out[2 r + 1].
template <class R, class T>
void rows_grad_sums(const BatchNormKernels<R, T>& k, const Plan& plan, const R* dy, const R* x,
                    std::size_t o, std::size_t rows, std::size_t c, std::size_t b, double mean,
                    double* out) {
  const R* gs[kSlabStreams];
  const R* xs[kSlabStreams];
  for (std::size_t r = 0; r < rows; ++r) {
    gs[r] = dy + plan.slab_block(o + r, c, b).offset;
    xs[r] = x + plan.slab_block(o + r, c, b).offset;
  }
  k.slab_grad_sums(gs, xs, rows, plan.slab_block(o, c, b).length, mean, out);
}

// The training backward, blocked as forward_blocked.
template <class R, class T>
void backward_blocked(const BatchNormKernels<R, T>& k, const Plan& plan, std::size_t group,
                      const BatchNormBackwardArgs& a) {
  const std::size_t channels = plan.channels(), inner = plan.inner(), outer = plan.outer();
  const std::size_t blocks = plan.blocks_per_slab();
  const R* dy = static_cast<const R*>(a.dy);
  const R* x = static_cast<const R*>(a.x);
  R* dx = static_cast<R*>(a.dx);
  const double count = double(plan.per_channel());
  const bool stream = plan.stream_output(3);
  const bool ahead = plan.block_prefetch(group, 2);
  const std::size_t streams = plan.grad_streams();
  Scratch scratch;
  DxConstants<T> constants(scratch, channels);
  plan.block_work(group).run([&](std::size_t g, const WorkItem&) {
    const std::size_t c0 = g * group, c1 = std::min(channels, c0 + group);
    Scratch thread_sums;  // this worker's
    double* sums = thread_sums.take<double>(2 * (c1 - c0));  // row by row
    std::fill(sums, sums + 2 * (c1 - c0), 0.0);
    double* partials = thread_sums.take<double>(2 * kSlabStreams * blocks);
    // `streams` rows at a time (Plan::grad_streams), side by side; each channel adds its
    // partials in slab-unit order (row, then block).
    for (std::size_t o = 0; o < outer; o += streams) {
      const std::size_t rows = std::min(streams, outer - o);
      for (std::size_t c = c0; c < c1; ++c) {
        double* s = sums + 2 * (c - c0);
        for (std::size_t r = o + rows; ahead && r < std::min(outer, o + rows + streams); ++r) {
          request_l2(dy + (r * channels + c) * inner, inner);  // the next rows' slabs
          request_l2(x + (r * channels + c) * inner, inner);
        }
        for (std::size_t b = 0; b < blocks; ++b) {
          rows_grad_sums(k, plan, dy, x, o, rows, c, b, a.save_mean[c], partials + 2 * rows * b);
        }
        for (std::size_t r = 0; r < rows; ++r) {
          for (std::size_t b = 0; b < blocks; ++b) {
            s[0] += partials[2 * (rows * b + r)];
            s[1] += partials[2 * (rows * b + r) + 1];
          }
        }
      }
    }
    // sums[2 i], sums[2 i + 1] -> sum_dy[i], sum_dy_xhat[i] (channel c0 + i)
    double* sum_dy = thread_sums.take<double>(c1 - c0);
    double* sum_dy_xhat = thread_sums.take<double>(c1 - c0);
    for (std::size_t c = c0; c < c1; ++c) {
      sum_dy[c - c0] = sums[2 * (c - c0)];
      sum_dy_xhat[c - c0] = sums[2 * (c - c0) + 1];
    }
    constants.finish(k, c0, c1, a, sum_dy, sum_dy_xhat, count);
    for (std::size_t o = 0; o < outer; ++o) {
      const std::size_t at = (o * channels + c0) * inner;
      k.runs_dx(dy + at, x + at, dx + at, (c1 - c0) * inner, inner, channels, 0, c0,
                   constants.k_dy, constants.mean_hi, constants.k_x,
                   constants.k_0, true, stream);
    }
  }, stream_fence_after_batch(k, stream));
}

// The per-channel partial sums of the shared schedules (forward_shared, backward_shared):
// two buffers of a pair of sums per slab unit of a channel, used by alternate channels,
// and their totals in slab-unit order (row, then block).
class SharedParts {
 public:
  SharedParts(const Plan& plan, Scratch& scratch)
      : units_(plan.outer() * plan.blocks_per_slab()),
        parts_{scratch.take<double>(2 * units_), scratch.take<double>(2 * units_)} {}
  // Channel c's pair of sums for the slab unit (row o, block b), blocks per slab apart.
  double* of(std::size_t c, std::size_t unit) const { return parts_[c % 2] + 2 * unit; }
  void total(std::size_t c, double* first, double* second) const {
    const double* part = parts_[c % 2];
    double s1 = 0.0, s2 = 0.0;
    for (std::size_t u = 0; u < units_; ++u) {
      s1 += part[2 * u];
      s2 += part[2 * u + 1];
    }
    *first = s1;
    *second = s2;
  }

 private:
  std::size_t units_;
  double* parts_[2];
};

// The training forward with each channel shared by the team (Plan::share_channels): per
// channel, thread t reads rows [outer * t / team, outer * (t + 1) / team) and leaves the
// sums of each of its slab blocks in `parts`; after a sync() every thread adds them up in
// slab-unit order (row, then block: the same sums, in the same order, as the other
// schedules), and normalizes its rows, last first. Thread 0 writes the channel's
// statistics; the others keep their constants to themselves. The parts of consecutive
// channels alternate between two buffers: a thread writes channel c + 2's only after the
// sync() of channel c + 1, which every thread reaches after adding up channel c's.
template <class R, class T>
void forward_shared(const BatchNormKernels<R, T>& k, const Plan& plan,
                    const BatchNormForwardArgs& a) {
  const std::size_t channels = plan.channels(), inner = plan.inner(), outer = plan.outer();
  const std::size_t blocks = plan.blocks_per_slab();
  const R* x = static_cast<const R*>(a.x);
  R* y = static_cast<R*>(a.y);
  const double count = double(plan.per_channel());
  const bool stream = plan.stream_output(2);
  const std::size_t streams = plan.slab_streams(2);
  Scratch scratch;
  const SharedParts parts(plan, scratch);
  WorkList::run_team(channels * plan.per_channel(), outer,
                     [&](std::size_t t, std::size_t team, const auto& sync) {
    const std::size_t lo = outer * t / team, hi = outer * (t + 1) / team;
    Scratch own;
    NormalizeConstants<T> constants(own, channels);
    BatchNormForwardArgs mine = a;
    if (t != 0) {  // statistics written by thread 0 only
      mine.running_mean = nullptr;
      mine.running_var = nullptr;
      mine.save_mean = own.take<double>(channels);
      mine.save_invstd = own.take<double>(channels);
    }
    double partials[2 * kSlabStreams];
    for (std::size_t c = 0; c < channels; ++c) {
      double pivot;
      k.values_at(x + c * inner, inner, 1, &pivot);
      for (std::size_t o = lo; o < hi; o += streams) {
        const std::size_t rows = std::min(streams, hi - o);
        for (std::size_t b = 0; b < blocks; ++b) {
          rows_stats(k, plan, x, o, rows, c, b, pivot, partials);
          for (std::size_t r = 0; r < rows; ++r) {
            std::copy(partials + 2 * r, partials + 2 * r + 2, parts.of(c, (o + r) * blocks + b));
          }
        }
      }
      sync();
      double sum, sum_sq;
      parts.total(c, &sum, &sum_sq);
      constants.finish(k, c, c + 1, &pivot, &sum, &sum_sq, count, mine);
      for (std::size_t o = hi; o-- > lo;) {
        const std::size_t at = (o * channels + c) * inner;
        k.runs_normalize(x + at, y + at, inner, inner, channels, 0, c, constants.mean_hi,
                         constants.scale, constants.shift, stream);
      }
    }
    if (stream) k.stream_fence();
  });
}

// The training backward, channels shared as forward_shared.
template <class R, class T>
void backward_shared(const BatchNormKernels<R, T>& k, const Plan& plan,
                     const BatchNormBackwardArgs& a) {
  const std::size_t channels = plan.channels(), inner = plan.inner(), outer = plan.outer();
  const std::size_t blocks = plan.blocks_per_slab();
  const R* dy = static_cast<const R*>(a.dy);
  const R* x = static_cast<const R*>(a.x);
  R* dx = static_cast<R*>(a.dx);
  const double count = double(plan.per_channel());
  const bool stream = plan.stream_output(3);
  const std::size_t streams = plan.grad_streams();
  Scratch scratch;
  const SharedParts parts(plan, scratch);
  WorkList::run_team(channels * plan.per_channel(), outer,
                     [&](std::size_t t, std::size_t team, const auto& sync) {
    const std::size_t lo = outer * t / team, hi = outer * (t + 1) / team;
    Scratch own;
    DxConstants<T> constants(own, channels);
    BatchNormBackwardArgs mine = a;
    if (t != 0 && a.weight != nullptr) {  // parameter gradients written by thread 0 only
      mine.grad_weight = own.take<T>(channels);
      mine.grad_bias = own.take<T>(channels);
    }
    double partials[2 * kSlabStreams];
    for (std::size_t c = 0; c < channels; ++c) {
      for (std::size_t o = lo; o < hi; o += streams) {
        const std::size_t rows = std::min(streams, hi - o);
        for (std::size_t b = 0; b < blocks; ++b) {
          rows_grad_sums(k, plan, dy, x, o, rows, c, b, a.save_mean[c], partials);
          for (std::size_t r = 0; r < rows; ++r) {
            std::copy(partials + 2 * r, partials + 2 * r + 2, parts.of(c, (o + r) * blocks + b));
          }
        }
      }
      sync();
      double sum_dy, sum_dy_xhat;
      parts.total(c, &sum_dy, &sum_dy_xhat);
      constants.finish(k, c, c + 1, mine, &sum_dy, &sum_dy_xhat, count);
      for (std::size_t o = hi; o-- > lo;) {
        const std::size_t at = (o * channels + c) * inner;
        k.runs_dx(dy + at, x + at, dx + at, inner, inner, channels, 0, c, constants.k_dy,
                  constants.mean_hi, constants.k_x, constants.k_0, true, stream);
      }
    }
    if (stream) k.stream_fence();
  });
}

// Channels [begin, end): part `part` of `parts` of the per-channel finishing, cut on
// multiples of 16 channels (a cache line of float constants, two of double statistics)
// so that the threads write few lines in common. The results do not depend on the cut:
// each channel's values come from its own sums, in the same order.
struct ChannelRange {
  std::size_t begin;
  std::size_t end;
};

// Fewer channels than this are finished by one thread: splitting them measured no
// faster, and slower for (8, 32, 14, 14) (Xeon, 2 threads: 39 -> 43 us forward+backward).
constexpr std::size_t kMinSplitChannels = 256;

inline ChannelRange channel_part(std::size_t channels, std::size_t part, std::size_t parts) {
  constexpr std::size_t kAlign = 16;
  const std::size_t lines = (channels + kAlign - 1) / kAlign;
  const std::size_t begin = std::min(channels, lines * part / parts * kAlign);
  const std::size_t end = std::min(channels, lines * (part + 1) / parts * kAlign);
  return {begin, end};
}

// The forward and backward below run their reduction, their per-channel finishing and
// their elementwise pass in one parallel region (WorkList::run_in_sequence_split): a
// call wakes the pool's workers once, and the team shares the finishing by channels.
template <class R, class T>
void forward_typed(const BatchNormKernels<R, T>& k, const BatchNormShape& shape,
                   const BatchNormForwardArgs& a) {
  const Plan plan(shape, sizeof(R));
  const std::size_t channels = plan.channels();
  const R* x = static_cast<const R*>(a.x);
  const T* weight = static_cast<const T*>(a.weight);
  const T* bias = static_cast<const T*>(a.bias);
  T* running_mean = static_cast<T*>(a.running_mean);
  T* running_var = static_cast<T*>(a.running_var);
  double* mean = a.save_mean;
  double* invstd = a.save_invstd;
  if (a.training) {
    if (const std::size_t group = plan.block_channels(1); group > 0) {
      forward_blocked(k, plan, group, a);
      return;
    }
    if (plan.share_channels(1)) {
      forward_shared(k, plan, a);
      return;
    }
  }
  Scratch scratch;
  NormalizePass<R, T> pass(k, plan, scratch, x, static_cast<R*>(a.y));
  if (!a.training) {
    for (std::size_t c = 0; c < channels; ++c) {
      mean[c] = double(running_mean[c]);
      invstd[c] = 1.0 / std::sqrt(double(running_var[c]) + a.eps);
    }
    pass.set(mean, invstd, weight, bias);
    pass.run();
    return;
  }
  const double count = double(plan.per_channel());
  if (plan.per_channel() == 0) {  // (rejected before it gets here; kept well defined)
    double* m2 = scratch.take<double>(channels);
    stats_typed(k, plan, x, mean, m2);
    finish_forward(k, 0, channels, m2, count, a);
    pass.set(mean, invstd, weight, bias);
    pass.run();
    return;
  }
  const StatsSums<R, T> sums(k, plan, x, scratch);
  const SumReduction<StatsSums<R, T>> reduction(plan, scratch, sums, plan.slab_streams(2));
  double* const sum = scratch.take<double>(channels);
  double* const sum_sq = scratch.take<double>(channels);
  WorkList::run_in_sequence_split(
      reduction.work(), [&](std::size_t lo, std::size_t hi) { reduction.batch(lo, hi); },
      [&](std::size_t part, std::size_t parts) {
        const ChannelRange r = channel_part(channels, part, parts);
        const auto [s1, s2] = reduction.channel_sums(sum, sum_sq, r.begin, r.end);
        pass.finish(r.begin, r.end, sums.pivot + r.begin, s1 + r.begin, s2 + r.begin, count, a);
      },
      pass.work(), [&](std::size_t lo, std::size_t hi) { pass.batch(lo, hi); },
      channels >= kMinSplitChannels);
}

template <class R, class T>
void backward_typed(const BatchNormKernels<R, T>& k, const BatchNormShape& shape,
                    const BatchNormBackwardArgs& a) {
  const Plan plan(shape, sizeof(R));
  const std::size_t channels = plan.channels();
  const R* dy = static_cast<const R*>(a.dy);
  const R* x = static_cast<const R*>(a.x);
  const T* weight = static_cast<const T*>(a.weight);
  if (a.training) {
    if (const std::size_t group = plan.block_channels(2); group > 0) {
      backward_blocked(k, plan, group, a);
      return;
    }
    if (plan.share_channels(2)) {
      backward_shared(k, plan, a);
      return;
    }
  }
  const double count = double(plan.per_channel());
  Scratch scratch;
  DxPass<R, T> pass(k, plan, scratch, dy, x, static_cast<R*>(a.dx), a.training && count > 0);
  double* sum_dy = scratch.take<double>(channels);
  double* sum_dy_xhat = scratch.take<double>(channels);
  // Eval mode without weight needs neither sum.
  if (!a.training && weight == nullptr) {
    pass.set(weight, a.save_mean, a.save_invstd, sum_dy, sum_dy_xhat, count);
    pass.run();
    return;
  }
  const GradSums<R, T> sums(k, plan, dy, x, a.save_mean, scratch);
  const SumReduction<GradSums<R, T>> reduction(plan, scratch, sums, 1);
  WorkList::run_in_sequence_split(
      reduction.work(), [&](std::size_t lo, std::size_t hi) { reduction.batch(lo, hi); },
      [&](std::size_t part, std::size_t parts) {
        const ChannelRange r = channel_part(channels, part, parts);
        const auto [s1, s2] = reduction.channel_sums(sum_dy, sum_dy_xhat, r.begin, r.end);
        if (a.training && count > 0) {  // the constants centered (DxPass)
          pass.finish(r.begin, r.end, a, s1 + r.begin, s2 + r.begin, count);
        } else {
          finish_grads(k, r.begin, r.end, a, s1 + r.begin, s2 + r.begin);
          pass.set(weight, a.save_mean, a.save_invstd, s1 + r.begin, s2 + r.begin, count,
                   r.begin, r.end);
        }
      },
      pass.work(), [&](std::size_t lo, std::size_t hi) { pass.batch(lo, hi); },
      channels >= kMinSplitChannels);
}

// Calls f(k) with k the current ISA's batch-norm kernels for x-shaped data of dtype.
template <class F>
void with_kernels(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::f32: f(batch_norm_kernel_table().f32.bn); break;
    case Dtype::f64: f(batch_norm_kernel_table().f64.bn); break;
    case Dtype::bf16: f(current_batch_norm16_kernels().bf16); break;
    case Dtype::f16: f(current_batch_norm16_kernels().f16); break;
  }
}

}  // namespace

void batch_norm_forward(Dtype dtype, const BatchNormShape& shape,
                        const BatchNormForwardArgs& args) {
  with_kernels(dtype, [&](const auto& k) { forward_typed(k, shape, args); });
}

void batch_norm_backward(Dtype dtype, const BatchNormShape& shape,
                         const BatchNormBackwardArgs& args) {
  with_kernels(dtype, [&](const auto& k) { backward_typed(k, shape, args); });
}

BatchNormPlanInfo batch_norm_plan_info(const BatchNormShape& shape, std::size_t element_bytes) {
  const Plan plan(shape, element_bytes);
  const bool rows = !plan.reduce_slabs() || !plan.runs();
  const std::size_t forward_group = plan.block_channels(1), backward_group = plan.block_channels(2);
  return {rows ? plan.groups() : 0,
          rows ? plan.tile_cols() : 0,
          forward_group,
          backward_group,
          plan.runs() ? 0 : plan.elementwise_units(),
          plan.runs() ? 0 : plan.elementwise_period(plan.stream_output(2)),
          plan.runs() ? 0 : plan.elementwise_period(plan.stream_output(3)),
          rows && plan.reduce_ahead(),
          rows && plan.row_prefetch(),
          rows && plan.stream_prefetch(),
          rows && plan.stream_direct(),
          rows ? plan.grad_chunk_bytes() : 0,
          rows ? plan.ahead_bytes() : 0,
          plan.reduce_slabs() ? plan.slab_streams(2) : 0,
          rows && plan.rows_walk(1),
          rows && plan.rows_walk(2),
          forward_group > 0 && plan.block_prefetch(forward_group, 1),
          backward_group > 0 && plan.block_prefetch(backward_group, 2),
          plan.share_channels(1),
          plan.share_channels(2),
          plan.reduce_slabs() && plan.runs() ? plan.grad_streams() : 0};
}

void batch_norm_stats(Dtype dtype, const BatchNormShape& shape, const void* x, double* mean,
                      double* m2) {
  with_kernels(dtype, [&](const auto& k) {
    using R = typename std::decay_t<decltype(k)>::raw;
    stats_typed(k, Plan(shape, sizeof(R)), static_cast<const R*>(x), mean, m2);
  });
}

void batch_norm_combine_stats(const double* means, const double* m2s, const double* counts,
                              std::size_t pieces, std::size_t channels, double* mean,
                              double* var, double* m2) {
  for (std::size_t c = 0; c < channels; ++c) {
    double n = 0.0, mu = 0.0, sq = 0.0;
    for (std::size_t p = 0; p < pieces; ++p) {
      const double n_p = counts[p];
      if (n_p == 0.0) continue;
      const double mu_p = means[p * channels + c], sq_p = m2s[p * channels + c];
      if (n == 0.0) {
        n = n_p;
        mu = mu_p;
        sq = sq_p;
        continue;
      }
      const double total = n + n_p;
      const double delta = mu_p - mu;
      mu += delta * (n_p / total);
      sq += sq_p + delta * delta * (n * n_p / total);
      n = total;
    }
    mean[c] = mu;
    m2[c] = sq;
    var[c] = sq / n;
  }
}

void batch_norm_elemt(Dtype dtype, const BatchNormShape& shape, const BatchNormElemtArgs& a) {
  with_kernels(dtype, [&](const auto& k) {
    using R = typename std::decay_t<decltype(k)>::raw;
    using T = typename std::decay_t<decltype(k)>::value;
    elemt_typed(k, Plan(shape, sizeof(R)), static_cast<const R*>(a.x), static_cast<R*>(a.y),
                a.mean, a.invstd, static_cast<const T*>(a.weight),
                static_cast<const T*>(a.bias));
  });
}

void batch_norm_backward_reduce(Dtype dtype, const BatchNormShape& shape, const void* dy,
                                const void* x, const double* mean, const double* invstd,
                                double* sum_dy, double* sum_dy_xhat) {
  with_kernels(dtype, [&](const auto& k) {
    using R = typename std::decay_t<decltype(k)>::raw;
    backward_reduce_typed(k, Plan(shape, sizeof(R)), static_cast<const R*>(dy),
                          static_cast<const R*>(x), mean, invstd, sum_dy, sum_dy_xhat);
  });
}

void batch_norm_backward_elemt(Dtype dtype, const BatchNormShape& shape,
                               const BatchNormBackwardElemtArgs& a) {
  with_kernels(dtype, [&](const auto& k) {
    using R = typename std::decay_t<decltype(k)>::raw;
    using T = typename std::decay_t<decltype(k)>::value;
    backward_elemt_typed(k, Plan(shape, sizeof(R)), static_cast<const R*>(a.dy),
                         static_cast<const R*>(a.x), static_cast<R*>(a.dx),
                         static_cast<const T*>(a.weight), a.mean, a.invstd, a.sum_dy,
                         a.sum_dy_xhat, a.count, true);
  });
}

}  // namespace fusedops

// Batch-norm loops, written once and compiled per ISA.
//
// The runtime views x as (outer, C, inner) and runs these loop shapes:
// - slab reductions walk one contiguous run of a single channel (channel-first layouts:
//   a block of the spatial extent of one (n, c));
// - run loops (elementwise) walk any contiguous range of channel-first data, a piece per
//   slab, with per-channel constants;
// - row loops walk `rows` rows of `cols` contiguous values whose column j belongs to a
//   channel the runtime knows (channel-last layouts, and channel-first layouts whose
//   spatial extent is too short for the others); per-column constants arrive as arrays.
// Every sum is accumulated in double; statistics are taken around a per-channel pivot
// (a value of the channel), so a large mean does not cancel the small spread.
#pragma once

// Included by isa_table.cpp inside its per-ISA namespace.
#include "simd_common.hpp"

// Double lanes as a GCC/Clang generic vector of the ISA's register width (8 with
// AVX-512, 4 with AVX2, 2 with SSE2), so the slab reductions are plain vertical vector
// code on every ISA. (Written as arrays of doubles, GCC vectorized one of the two sums and
// kept the other in 16 scalar registers: 2 cycles per element; a vector wider than the
// registers is spilled through the stack.)
#if defined(__AVX512F__)
constexpr std::size_t kLaneWidth = 8;
#elif defined(__AVX__)
constexpr std::size_t kLaneWidth = 4;
#else
constexpr std::size_t kLaneWidth = 2;
#endif
typedef double Lanes __attribute__((vector_size(kLaneWidth * sizeof(double))));
typedef float LaneFloats __attribute__((vector_size(kLaneWidth * sizeof(float))));

// x - p, computed as x * 1 - p where the ISA has fused multiply-add: the same value (one
// rounding of the exact difference, signed zeros and NaN alike), issued to the FMA units.
// On CPUs with separate add and multiply pipes (AMD) the float32 reductions below are
// bound by their add pipe (a widening conversion, a subtraction and an add per value
// against one FMA); this moves the subtraction over. (AMD EPYC Zen 5, in-process A/B, same
// bits: with AVX2, float32 (N, C) in cache fwd+bwd 0.92-0.94x, (64, 256) 0.93x, larger
// shapes 0.97-0.99x; a register model of the statistics loop in L1 12.1 -> 8.1 cycles per
// 32 values. With AVX-512 (6.8 -> 5.9 cycles in the model) and for float64 (no
// conversion), within noise. The 16-bit kernels' float32 runs measured no change.)
inline Lanes minus(Lanes x, Lanes p) {
#if defined(__AVX512F__)
  return Lanes(_mm512_fmsub_pd(__m512d(x), _mm512_set1_pd(1.0), __m512d(p)));
#elif defined(__AVX__) && defined(__FMA__)
  return Lanes(_mm256_fmsub_pd(__m256d(x), _mm256_set1_pd(1.0), __m256d(p)));
#else
  return x - p;
#endif
}
// p in every lane (not Lanes{} + p: an add, which turns -0.0 into +0.0).
inline Lanes splat(double p) {
#if defined(__AVX512F__)
  return Lanes(_mm512_set1_pd(p));
#elif defined(__AVX__)
  return Lanes(_mm256_set1_pd(p));
#else
  return Lanes{p, p};
#endif
}
inline Lanes minus(Lanes x, double p) { return minus(x, splat(p)); }
inline double minus(double x, double p) { return x - p; }

// (The conversion by intrinsic: GCC lowers __builtin_convertvector of 4 floats through
// the stack.)
inline Lanes load_lanes(const float* p) {
#if defined(__AVX512F__)
  return Lanes(_mm512_cvtps_pd(_mm256_loadu_ps(p)));
#elif defined(__AVX__)
  return Lanes(_mm256_cvtps_pd(_mm_loadu_ps(p)));
#elif defined(__SSE2__)
  return Lanes(_mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))));
#else
  LaneFloats f;
  __builtin_memcpy(&f, p, sizeof f);
  return __builtin_convertvector(f, Lanes);
#endif
}
inline Lanes load_lanes(const double* p) {
  Lanes d;
  __builtin_memcpy(&d, p, sizeof d);
  return d;
}

inline void store_lanes(double* p, const Lanes& v) { __builtin_memcpy(p, &v, sizeof v); }

// How the loops read and write x-shaped data: S::raw is what memory holds, S::value the
// compute type (the type of the per-channel constants). load(p, i) widens one value,
// narrow(v) rounds one result to storage, lanes(p) loads kLaneWidth values as doubles.
// float32 and float64 are stored as they are; bfloat16 and float16 adaptors (widening
// exactly, rounding to nearest even) are defined where storage.hpp is included.
template <class T>
struct BnPlain {
  using raw = T;
  using value = T;
  static T load(const T* p, std::size_t i) { return p[i]; }
  static T narrow(T v) { return v; }
  static Lanes lanes(const T* p) { return load_lanes(p); }
};

// Values at p as the accumulator type: a vector of lanes, or one double.
template <class Acc, class S>
inline Acc load_as(const typename S::raw* p) {
  if constexpr (sizeof(Acc) == sizeof(double)) {
    return double(S::load(p, 0));
  } else {
    return S::lanes(p);
  }
}

// out[i] = x[i * stride] as a double, i < n (the pivots: one value of each channel).
template <class S>
void bn_values_at(const typename S::raw* __restrict x, std::size_t stride, std::size_t n,
                  double* __restrict out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = double(S::load(x + i * stride, 0));
}

// Independent accumulators per slab reduction, enough to hide the latency of the adds
// (4 AVX-512 or 8 AVX2 registers per sum).
constexpr std::size_t kSlabLanes = 32;

// How far ahead of their reads the slab reductions, and the streaming run loops, prefetch:
// software prefetches cross the 4 KiB pages where the hardware streamers stop, and start
// each slab's run early. (1 KiB measured best of 0, 1 and 2 KiB on the Xeon; prefetcht2
// no better than t0. In the run loops that stream their output, 2 threads, the blocked
// forward's second pass reads x back from the L2 or the L3: the forward 1.2x faster.)
constexpr std::size_t kPrefetchBytes = 1024;

// The run loops (channel-first elementwise passes) that stream their output compute it in
// tiles of this many bytes (write_blocks), each tile a call of the loop over its slab
// pieces: the piece's setup (its constants and their NaN test, its prefetches) and the
// tile's copy out are paid once a tile. Builds without AVX-512 (the batch norm of CPUs
// without it) take 1 KiB: on the AVX2 EPYC (Zen 3), whose 16-bit passes are bound by
// their instructions rather than by memory, 256-byte tiles left the bfloat16 dx loop a
// quarter of its time outside its vector loop (perf), and 1 KiB tiles cut the
// instructions of a bfloat16 forward+backward by 13% (callgrind, (16, 256, 28, 28), one
// thread). (AMD EPYC Zen 3, 2 threads, forward+backward, the two builds in alternating
// processes, medians of six runs each, same bits: bfloat16 NCHW (64, 256, 28, 28) 0.93x
// the time, (32, 64, 56, 56) 0.91x, float16 (64, 256, 28, 28) 0.90x, float32 0.96-0.98x,
// float64 1.00x; 2 KiB tiles no faster than 1 KiB. The row loops (NHWC, (N, C)) keep
// 256 bytes: with 1 KiB bfloat16 NHWC measured 1.03-1.05x slower, float32 (4096, 1024)
// 1.03x.) The AVX2 build on an Intel Xeon (Emerald Rapids, 2 threads, the two builds
// interleaved in one process, two runs): bfloat16 0.87-0.96x, float16 0.92-0.93x, float32
// NCHW 0.97x. The AVX-512 builds keep 256 bytes: on that Xeon 1 KiB measured 0.94-1.03x
// (bfloat16 (64, 256, 28, 28) 0.95x in one run, 1.03x in the other), and an earlier Xeon
// slower (bfloat16 normalize streamed from the L2, one thread, 0.108 -> 0.118 ns/el).
// The float32 and float64 run loops of the AVX2 and AVX-512 builds stream without tiles
// (stream_run, below).
#if defined(__AVX512F__)
constexpr std::size_t kRunStreamTileBytes = 256;
#else
constexpr std::size_t kRunStreamTileBytes = 1024;
#endif

// Requests the lines of the `count` values of T at p. GCC counts a prefetch as having no
// side effects: a function that only prefetches is "pure", and a call of it whose result
// nobody reads is dropped. A lambda of prefetches passed to a loop (an `ahead`) that GCC
// does not inline early loses its prefetches that way: bn_slab_grad_sums' is marked
// always_inline; the others are small enough to be inlined early (each kernel compiled
// again with prefetches GCC cannot drop, volatile asm, had the same prefetches in every
// other function). (GCC 12: the gradient sums over four rows' slabs side by side,
// bn_slab_grad_sums, had none in any ISA's build until then; compiled in, the blocked
// backward on the Xeon, 2 threads, in-process A/B, same bits: float32 (64, 256, 28, 28)
// 0.81x the time, float64 0.86x, (32, 64, 56, 56) 0.92x, (128, 256, 28, 28) 0.96x, the
// shared (64, 64, 112, 112) 0.94x; with the AVX2 kernels 0.78x and 0.89x; one thread 0.81x.
// Four slabs side by side stay faster than two or one, and float32 slabs of 784 bytes
// stay one at a time: with four, prefetched, 1.08-1.13x slower.)
template <class T>
inline void prefetch_span(const T* p, std::size_t count) {
  const char* at = reinterpret_cast<const char*>(p);
  for (std::size_t b = 0; b < count * sizeof(T); b += 64) __builtin_prefetch(at + b);
}

// Requests the lines `kPrefetchBytes` past the `count` values of T at p.
template <class T>
inline void prefetch_ahead(const T* p, std::size_t count) {
  prefetch_span(reinterpret_cast<const char*>(p) + kPrefetchBytes, count * sizeof(T));
}

// Calls f(std::integral_constant<std::size_t, K>{}) for K = streams (1 to kSlabStreams):
// each stream count gets its own loop, with its accumulators in registers.
template <class F>
inline void with_streams(std::size_t streams, const F& f) {
  switch (streams) {
    case 4: f(std::integral_constant<std::size_t, 4>{}); break;
    case 3: f(std::integral_constant<std::size_t, 3>{}); break;
    case 2: f(std::integral_constant<std::size_t, 2>{}); break;
    default: f(std::integral_constant<std::size_t, 1>{}); break;
  }
}

// Two sums over each of K slab runs of n values read side by side, kSlabLanes
// independent accumulators per sum and run (element i goes to lane i % kSlabLanes),
// combined pairwise in a fixed order: each run's sums are those it would get alone.
// add(k, i, s1, s2) adds the terms of run k's elements from i to its sums: kLaneWidth of
// them to Lanes sums, one to doubles. ahead(k, i) prefetches for run k's values from i on.
// sums[2 k], sums[2 k + 1] receive run k's.
template <std::size_t K, class AddTerms, class Ahead>
void bn_slab_sum_pairs(std::size_t n, const AddTerms& add, const Ahead& ahead, double* sums) {
  constexpr std::size_t kVectors = kSlabLanes / kLaneWidth;
  Lanes v1[K][kVectors] = {}, v2[K][kVectors] = {};
  std::size_t i = 0;
  for (; i + kSlabLanes <= n; i += kSlabLanes) {
    for (std::size_t k = 0; k < K; ++k) {
      ahead(k, i);
      for (std::size_t v = 0; v < kVectors; ++v) add(k, i + kLaneWidth * v, v1[k][v], v2[k][v]);
    }
  }
  for (std::size_t k = 0; k < K; ++k) {
    double s1[kSlabLanes], s2[kSlabLanes];
    __builtin_memcpy(s1, v1[k], sizeof s1);
    __builtin_memcpy(s2, v2[k], sizeof s2);
    for (std::size_t t = i, j = 0; t < n; ++t, ++j) add(k, t, s1[j], s2[j]);
    // s[j] += s[j + width] for j < width, width = 16, 8, ..., 1: lane vectors while the
    // halves are whole vectors, then single lanes (the same additions, so the same sums).
    // (callgrind, AVX2, one thread, float32 fwd+bwd: (256, 256, 14, 14), runs of 196
    // values, 5% fewer instructions than adding one lane at a time; runs of 784 values
    // unchanged; times on the Xeon within its noise.)
    for (std::size_t width = kSlabLanes / 2; width > 0; width /= 2) {
      if (width >= kLaneWidth) {
        for (std::size_t j = 0; j < width; j += kLaneWidth) {
          store_lanes(s1 + j, load_lanes(s1 + j) + load_lanes(s1 + j + width));
          store_lanes(s2 + j, load_lanes(s2 + j) + load_lanes(s2 + j + width));
        }
      } else {
        for (std::size_t j = 0; j < width; ++j) {
          s1[j] += s1[j + width];
          s2[j] += s2[j + width];
        }
      }
    }
    sums[2 * k] = s1[0];
    sums[2 * k + 1] = s2[0];
  }
}

// For each run k < streams (at most kSlabStreams, n values each at x[k]):
// sums[2 k] = sum(x - pivot[k]), sums[2 k + 1] = sum((x - pivot[k])^2).
template <class S>
void bn_slab_stats(const typename S::raw* const* x, std::size_t streams, std::size_t n,
                   const double* pivot, double* sums) {
  with_streams(streams, [&](auto streams_k) {
    constexpr std::size_t K = decltype(streams_k)::value;
    const typename S::raw* __restrict xs[K];
    double p[K];
    for (std::size_t k = 0; k < K; ++k) {
      xs[k] = x[k];
      p[k] = pivot[k];
    }
    bn_slab_sum_pairs<K>(n, [&](std::size_t k, std::size_t i, auto& s1, auto& s2) {
      using Acc = std::remove_reference_t<decltype(s1)>;
      const Acc d = minus(load_as<Acc, S>(xs[k] + i), p[k]);
      s1 += d;
      s2 += d * d;
    }, [&](std::size_t k, std::size_t i) { prefetch_ahead(xs[k] + i, kSlabLanes); }, sums);
  });
}

// sums[0] = sum(dy), sums[1] = sum(dy * (x - mean)) over one slab run.
template <class S>
void bn_slab_grad_sums_one(const typename S::raw* __restrict dy,
                           const typename S::raw* __restrict x, std::size_t n, double mean,
                           double* sums) {
  bn_slab_sum_pairs<1>(n, [dy, x, mean](std::size_t, std::size_t i, auto& s1, auto& s2) {
    using Acc = std::remove_reference_t<decltype(s1)>;
    const Acc g = load_as<Acc, S>(dy + i);
    s1 += g;
    s2 += g * minus(load_as<Acc, S>(x + i), mean);
  }, [dy, x](std::size_t, std::size_t i) {
    prefetch_ahead(dy + i, kSlabLanes);
    prefetch_ahead(x + i, kSlabLanes);
  }, sums);
}

// For each run k < streams (at most kSlabStreams, n values each at dy[k] and x[k]):
// sums[2 k] = sum(dy), sums[2 k + 1] = sum(dy * (x - mean)), as bn_slab_grad_sums_one
// gives them. One run takes that loop (its pointers in registers: the loop over arrays of
// them measured 1.13-1.19x slower, float32 (16, 512, 14, 14) and bfloat16 (64, 256, 28, 28)
// backward on the Xeon).
template <class S>
void bn_slab_grad_sums(const typename S::raw* const* dy, const typename S::raw* const* x,
                       std::size_t streams, std::size_t n, double mean, double* sums) {
  if (streams <= 1) {
    bn_slab_grad_sums_one<S>(dy[0], x[0], n, mean, sums);
    return;
  }
  with_streams(streams, [&](auto streams_k) {
    constexpr std::size_t K = decltype(streams_k)::value;
    const typename S::raw* __restrict gs[K];
    const typename S::raw* __restrict xs[K];
    for (std::size_t k = 0; k < K; ++k) {
      gs[k] = dy[k];
      xs[k] = x[k];
    }
    bn_slab_sum_pairs<K>(n, [&](std::size_t k, std::size_t i, auto& s1, auto& s2) {
      using Acc = std::remove_reference_t<decltype(s1)>;
      const Acc g = load_as<Acc, S>(gs[k] + i);
      s1 += g;
      s2 += g * minus(load_as<Acc, S>(xs[k] + i), mean);
    }, [&](std::size_t k, std::size_t i) __attribute__((always_inline)) {  // see prefetch_span
      prefetch_ahead(gs[k] + i, kSlabLanes);
      prefetch_ahead(xs[k] + i, kSlabLanes);
    }, sums);
  });
}

// A position in channel-first data seen as consecutive slabs of slab_len values whose
// channel cycles through `channels`: `offset` values into a slab of channel `channel`.
struct SlabCursor {
  std::size_t slab_len, channels, offset, channel;

  // Calls piece(begin, count, channel) for each piece of [begin, begin + n) (counted
  // from where the cursor started; calls continue where the last one ended) that lies
  // in one slab, and moves the cursor past them.
  template <class Piece>
  void walk(std::size_t begin, std::size_t n, const Piece& piece) {
    while (n > 0) {
      const std::size_t left = slab_len - offset;
      const std::size_t count = n < left ? n : left;
      piece(begin, count, channel);
      begin += count;
      n -= count;
      offset += count;
      if (offset == slab_len) {
        offset = 0;
        if (++channel == channels) channel = 0;
      }
    }
  }
};

// Non-temporal stores straight from registers for the float32 and float64 run loops
// (bn_runs_normalize_loop, bn_runs_dx_loop) in the builds with 256- or 512-bit registers:
// no tile computed into an L1 buffer and copied out (write_blocks), so the pass issues
// one store per register instead of a store, a load and a store, and sets up its
// constants once a slab piece instead of once a piece of a tile. (Intel Xeon, Emerald
// Rapids, 2 threads, the two builds loaded in one process and run alternately, same bits,
// fwd+bwd: float32 NCHW (64, 256, 28, 28) 0.92-0.95x the time, (32, 64, 56, 56)
// 0.91-0.97x, (16, 512, 14, 14) 0.93-0.96x, (448, 256, 28, 28) from memory 0.96x; float64
// (64, 256, 28, 28) 0.88x; the AVX2 build 0.89-0.95x.)
#if defined(__AVX__)
typedef float StreamFloats __attribute__((vector_size(kStreamStoreBytes)));
typedef double StreamDoubles __attribute__((vector_size(kStreamStoreBytes)));
template <class T>
using StreamReg = std::conditional_t<std::is_same_v<T, float>, StreamFloats, StreamDoubles>;

// The register v, or the aligned register's worth at src, stored non-temporally at p
// (aligned for it).
template <class T>
inline void stream_reg(T* p, StreamReg<T> v) {
#if defined(__AVX512F__)
  _mm512_stream_si512(reinterpret_cast<__m512i*>(p), __m512i(v));
#else
  _mm256_stream_si256(reinterpret_cast<__m256i*>(p), __m256i(v));
#endif
}
template <class T>
inline void stream_line(T* p, const T* src) {
#if defined(__AVX512F__)
  _mm512_stream_si512(reinterpret_cast<__m512i*>(p), _mm512_load_si512(src));
#else
  _mm256_stream_si256(reinterpret_cast<__m256i*>(p),
                      _mm256_load_si256(reinterpret_cast<const __m256i*>(src)));
#endif
}
template <class T>
inline StreamReg<T> load_reg(const T* p) {
  StreamReg<T> v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

// Copies the m values at `values` to dst with 16-byte non-temporal stores, the granules at
// either edge that the run fills only in part with masked ones (stream_granule_part): the
// edges of a streamed run, whose lines it shares with its neighbours. (Ordinary stores
// there read a line before they write it, and a line written by both kinds of store
// apart measured far slower: see stream_granule_part.)
template <class T>
inline void stream_granules(T* __restrict dst, const T* __restrict values, std::size_t m) {
  char* out = reinterpret_cast<char*>(dst);
  const char* in = reinterpret_cast<const char*>(values);
  const std::size_t bytes = m * sizeof(T);
  std::size_t b = (16 - reinterpret_cast<std::uintptr_t>(out) % 16) % 16;
  if (b > bytes) b = bytes;
  stream_granule_part(out, in, b);
  for (; b + 16 <= bytes; b += 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(out + b),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + b)));
  }
  stream_granule_part(out + b, in + b, bytes - b);
}

// Writes the n values of a run of channel-first data (of any storage type T) from
// `cursor` on to out: regs(c) a function (its constants set up once) put(k, dst) that
// computes the values [k, k + W) of channel c (k counted from the run's start; W values
// take kStreamStoreBytes) and stores them non-temporally at dst; fill(b, m, c, o) values
// [b, b + m) of channel c to o[0, m), each value with put's expression, so either gives
// the same bits. Registers that lie in one channel and start on an address aligned for
// them are put whole (prefetch(k) first, once a register); a register across a channel
// boundary is filled into the L1 and stored the same way, and so are the values before
// the first aligned address and after the last whole register (stream_granules).
template <class T, class Regs, class Fill, class Prefetch>
inline void stream_run(T* __restrict out, std::size_t n, SlabCursor cursor, const Regs& regs,
                       const Fill& fill, const Prefetch& prefetch) {
  constexpr std::size_t W = kStreamStoreBytes / sizeof(T);
  const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(out);
  const std::size_t to_line = (kStreamStoreBytes - at % kStreamStoreBytes) % kStreamStoreBytes;
  std::size_t head = at % sizeof(T) != 0 ? n : to_line / sizeof(T);
  if (head > n) head = n;
  if (head == n) {  // not aligned to its own values, or shorter than the first line
    cursor.walk(0, n, [&](std::size_t b, std::size_t m, std::size_t c) { fill(b, m, c, out + b); });
    return;
  }
  alignas(kStreamStoreBytes) T values[W];
  // values [b, b + m) (at most W) into `values`
  const auto in_l1 = [&](std::size_t b, std::size_t m) {
    cursor.walk(b, m, [&](std::size_t e, std::size_t k, std::size_t c) {
      fill(e, k, c, values + (e - b));
    });
  };
  in_l1(0, head);
  stream_granules(out, values, head);
  std::size_t i = head;
  while (i + W <= n) {
    const std::size_t left = cursor.slab_len - cursor.offset;
    if (left >= W) {
      const std::size_t count = (left < n - i ? left : n - i) / W * W;
      const auto put = regs(cursor.channel);
      for (std::size_t k = i; k < i + count; k += W) {
        prefetch(k);
        put(k, out + k);
      }
      cursor.walk(i, count, [](std::size_t, std::size_t, std::size_t) {});
      i += count;
      continue;
    }
    in_l1(i, W);
    stream_line(out + i, values);
    i += W;
  }
  in_l1(i, n - i);
  stream_granules(out + i, values, n - i);
}
#endif

#if defined(__AVX__)
// Writes the n values of a row (of float32 or float64) to out with non-temporal stores
// straight from registers, as stream_run writes a run: reg(i) the register's worth of
// values from i on, for each whole register from out's first aligned address; value(j)
// value j by the same expression (so the same bits), for the values before that address
// and after the last whole register, filled into the L1 and streamed as granules
// (stream_granules). The row loops' per-column constants start where their columns' values
// of out do within a line (line_shift in the runtime), so theirs load aligned too.
template <class T, class Reg, class Value>
inline void stream_row(T* __restrict out, std::size_t n, const Reg& reg, const Value& value) {
  constexpr std::size_t W = kStreamStoreBytes / sizeof(T);
  alignas(kStreamStoreBytes) T values[W];
  const auto spill = [&](std::size_t b, std::size_t m) {  // values [b, b + m), m <= W
    for (std::size_t k = 0; k < m; ++k) values[k] = value(b + k);
    stream_granules(out + b, values, m);
  };
  const std::uintptr_t at = reinterpret_cast<std::uintptr_t>(out);
  std::size_t i = 0;
  if (at % sizeof(T) == 0) {
    const std::size_t head =
        (kStreamStoreBytes - at % kStreamStoreBytes) % kStreamStoreBytes / sizeof(T);
    if (head < n) {
      if (head > 0) spill(0, head);
      for (i = head; i + W <= n; i += W) stream_reg(out + i, reg(i));
    }
  }
  for (; i < n; i += W) spill(i, n - i < W ? n - i : W);
}
#endif

#if defined(__AVX512F__)
// The 512-bit operations of the in-cache row loops (cache_row) on float32 and float64
// values: loads under a mask (the lanes outside it read as zeros, and do not fault),
// aligned stores and stores under a mask, the join of two aligned registers into the
// register that starts `s` values into the first (vpermt2ps / vpermt2pd), and a fused
// multiply-add written out (the expressions of these loops must round as the scalar and
// streaming loops' contracted ones do; left to the compiler, the sanitizer build
// contracted some of its copies of them and not others).
template <class T>
struct RowZmm;
template <>
struct RowZmm<float> {
  using Reg = StreamReg<float>;
  using Mask = __mmask16;
  static constexpr unsigned kLanes = 16;
  static Mask below(std::size_t k) { return Mask((1u << k) - 1); }  // lanes [0, k)
  static Reg masked(Mask m, const float* p) { return Reg(_mm512_maskz_loadu_ps(m, p)); }
  static void put(float* p, Reg v) { _mm512_store_ps(p, __m512(v)); }
  static void put_masked(float* p, Mask m, Reg v) { _mm512_mask_storeu_ps(p, m, __m512(v)); }
  static __m512i index(unsigned s) {
    return _mm512_add_epi32(
        _mm512_set1_epi32(int(s)),
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  }
  static Reg join(Reg lo, __m512i index, Reg hi) {
    return Reg(_mm512_permutex2var_ps(__m512(lo), index, __m512(hi)));
  }
  static Reg fma(Reg a, Reg b, Reg c) {
    return Reg(_mm512_fmadd_ps(__m512(a), __m512(b), __m512(c)));
  }
};
template <>
struct RowZmm<double> {
  using Reg = StreamReg<double>;
  using Mask = __mmask8;
  static constexpr unsigned kLanes = 8;
  static Mask below(std::size_t k) { return Mask((1u << k) - 1); }  // lanes [0, k)
  static Reg masked(Mask m, const double* p) { return Reg(_mm512_maskz_loadu_pd(m, p)); }
  static void put(double* p, Reg v) { _mm512_store_pd(p, __m512d(v)); }
  static void put_masked(double* p, Mask m, Reg v) { _mm512_mask_storeu_pd(p, m, __m512d(v)); }
  static __m512i index(unsigned s) {
    return _mm512_add_epi64(_mm512_set1_epi64(s), _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static Reg join(Reg lo, __m512i index, Reg hi) {
    return Reg(_mm512_permutex2var_pd(__m512d(lo), index, __m512d(hi)));
  }
  static Reg fma(Reg a, Reg b, Reg c) {
    return Reg(_mm512_fmadd_pd(__m512d(a), __m512d(b), __m512d(c)));
  }
};

// The register's worth of values at p: a plain load for a whole register (Full), the
// lanes of m otherwise.
template <class T, class Full>
inline StreamReg<T> row_reg(Full, typename RowZmm<T>::Mask m, const T* p) {
  if constexpr (Full::value) {
    return load_reg(p);
  } else {
    return RowZmm<T>::masked(m, p);
  }
}

// The whole registers of cache_row (see there) from value i on, with the inputs whose bit
// is set in kJoins read as joined registers (s[k]: where input k's value i lies within its
// line, in values); returns where they end. While another register follows, each joined
// input's next aligned register lies within the row; the last reads its values of it
// under a mask. (Its own function, its arguments copied: written inside cache_row, the
// loop reloaded its lambdas' captures after every store, 5-7% of its time.)
template <unsigned kJoins, class T, std::size_t K, class Value>
inline std::size_t cache_row_whole(T* __restrict out, std::size_t n, std::size_t i,
                                   const T* const (&in)[K], const std::size_t (&s)[K],
                                   const Value value) {
  using Z = RowZmm<T>;
  using Reg = StreamReg<T>;
  using Mask = typename Z::Mask;
  constexpr std::size_t W = Z::kLanes;
  constexpr auto joined = [](std::size_t k) { return ((kJoins >> k) & 1u) != 0; };
  const T* p[K];
  std::size_t at[K];
  __m512i index[K];
  Reg lo[K];
  for (std::size_t k = 0; k < K; ++k) {
    p[k] = in[k];
    at[k] = s[k];
    index[k] = Z::index(unsigned(s[k]));
    // the aligned register holding value i: its lanes from s[k] on
    if (joined(k) && i + W <= n) lo[k] = Z::masked(Mask(~Z::below(s[k])), p[k] + i - s[k]);
  }
  const auto put = [&](auto last) {
    Reg v[K];
    for (std::size_t k = 0; k < K; ++k) {
      if (joined(k)) {
        const T* next = p[k] + i - at[k] + W;
        Reg hi;
        if constexpr (decltype(last)::value) {
          hi = i + 2 * W - at[k] <= n ? load_reg(next) : Z::masked(Z::below(at[k]), next);
        } else {
          hi = load_reg(next);
        }
        v[k] = Z::join(lo[k], index[k], hi);
        lo[k] = hi;
      } else {
        v[k] = load_reg(p[k] + i);
      }
    }
    Z::put(out + i, value(std::true_type{}, Mask(~Mask(0)), std::ptrdiff_t(i), v));
  };
  for (; i + 2 * W <= n; i += W) put(std::false_type{});
  if (i + W <= n) {
    put(std::true_type{});
    i += W;
  }
  return i;
}

// Writes the n values of a row to out through the cache (ordinary stores), from K inputs
// read value for value beside it: each register's worth from out's first cache-line
// boundary on with one aligned store, the values before that boundary and after the last
// whole register with one masked store each. value(full, m, i, v) computes the register
// of values [i, i + W) (i a ptrdiff_t, negative for the register before out's first
// boundary; lanes outside the mask m unused; full: m is every lane) from v[k],
// input k's values [i, i + W); it loads its per-column constants with row_reg. An input
// whose values start elsewhere within a line than out's is read as aligned registers, each
// loaded once and joined with the one before it (RowZmm::join): no load straddles two
// lines, and none reads outside the row but under a mask. The values are the same
// whichever way a register is read, and so is each output value: the one expression
// computes every register. out and the inputs must be aligned to their values.
// (Intel Xeon, Sapphire Rapids class, in-process A/B, same bits: the dx pass of (64, 256)
// in the L2, x, dy and dx 16, 32 and 48 bytes past a line (NumPy's placement, 64 KiB
// arrays from malloc) 4.5 -> 3.6 us, x or dy alone off 0.84-0.89x, all on line boundaries
// 0.92x (the edges masked instead of scalar); the backward of (64, 256) 0.93x, (256,
// 1024) 0.92x, float64 (64, 256) dx pass 0.83-0.89x; from the L3 ((1024, 1024)) within
// noise. The normalize, one input, measured no faster (1.00-1.07x): it keeps
// write_values.)
template <class T, std::size_t K, class Value>
inline void cache_row(T* __restrict out, std::size_t n, const T* const (&in)[K],
                      const Value& value) {
  using Z = RowZmm<T>;
  using Reg = StreamReg<T>;
  using Mask = typename Z::Mask;
  constexpr std::size_t W = Z::kLanes;
  constexpr std::false_type part{};
  std::size_t head = (64 - reinterpret_cast<std::uintptr_t>(out) % 64) % 64 / sizeof(T);
  if (head >= n) {  // the row within one register's worth from out on
    Reg v[K];
    for (std::size_t k = 0; k < K; ++k) v[k] = Z::masked(Z::below(n), in[k]);
    Z::put_masked(out, Z::below(n), value(part, Z::below(n), std::ptrdiff_t{0}, v));
    return;
  }
  if (head > 0) {  // values [0, head) as the top lanes of the register ending there
    const Mask m = Mask(~Z::below(W - head));
    const std::ptrdiff_t b = std::ptrdiff_t(head) - std::ptrdiff_t(W);
    Reg v[K];
    for (std::size_t k = 0; k < K; ++k) v[k] = Z::masked(m, in[k] + b);
    Z::put_masked(out + b, m, value(part, m, b, v));
  }
  std::size_t i = head;
  std::size_t s[K];  // where input k's value i lies within its line, in values
  unsigned joins = 0;
  for (std::size_t k = 0; k < K; ++k) {
    s[k] = reinterpret_cast<std::uintptr_t>(in[k] + i) % 64 / sizeof(T);
    joins |= (s[k] != 0 ? 1u : 0u) << k;
  }
  static_assert(K >= 1 && K <= 2, "one or two inputs");
  switch (joins) {
    case 0: i = cache_row_whole<0>(out, n, i, in, s, value); break;
    case 1: i = cache_row_whole<1>(out, n, i, in, s, value); break;
    case 2: i = cache_row_whole<2>(out, n, i, in, s, value); break;
    default: i = cache_row_whole<3>(out, n, i, in, s, value); break;
  }
  if (i < n) {
    const Mask m = Z::below(n - i);
    Reg v[K];
    for (std::size_t k = 0; k < K; ++k) v[k] = Z::masked(m, in[k] + i);
    Z::put_masked(out + i, m, value(part, m, std::ptrdiff_t(i), v));
  }
}

// Whether cache_row can write a row of out from in1 and in2: each aligned to its own
// values (in2 may be null).
template <class R>
inline bool cache_rows(const R* out, const R* in1, const R* in2 = nullptr) {
  const auto own = [](const R* p) {
    return reinterpret_cast<std::uintptr_t>(p) % sizeof(R) == 0;
  };
  return own(out) && own(in1) && (in2 == nullptr || own(in2));
}
#endif

// y = (x - mean_hi) * scale + shift over a run of n values of channel-first data starting
// at `cursor`, with per-channel constants. mean_hi is the mean as a value of T (x - mean_hi
// is exact near the mean, so float32 output keeps its precision when |mean| >> std); the
// runtime folds the rest of the mean into shift.
// `stream` writes with non-temporal stores (see write_blocks); the caller fences.
template <class S, bool kStream, class R = typename S::raw, class T = typename S::value>
void bn_runs_normalize_loop(const R* __restrict x, R* __restrict y, std::size_t n,
                            SlabCursor cursor, const T* __restrict mean_hi,
                            const T* __restrict scale, const T* __restrict shift) {
#if defined(__AVX__)
  if constexpr (kStream && std::is_same_v<R, T>) {
    stream_run(y, n, cursor,
        [=](std::size_t c) {
          const T hi = mean_hi[c], sc = scale[c], sh = shift[c];
          return [=](std::size_t i, T* dst) {
            stream_reg(dst, (load_reg(x + i) - hi) * sc + sh);
          };
        },
        [=](std::size_t b, std::size_t m, std::size_t c, T* __restrict o) {
          const T hi = mean_hi[c], sc = scale[c], sh = shift[c];
          for (std::size_t k = 0; k < m; ++k) o[k] = (x[b + k] - hi) * sc + sh;
        },
        [=](std::size_t i) { prefetch_ahead(x + i, 1); });
    return;
  }
#endif
  write_blocks<kStream, kRunStreamTileBytes>(
      y, n, [&](R* __restrict out, std::size_t begin, std::size_t count) {
    cursor.walk(begin, count, [&](std::size_t b, std::size_t m, std::size_t c) {
      const T hi = mean_hi[c], sc = scale[c], sh = shift[c];
      const R* __restrict xs = x + b;
      R* __restrict o = out + (b - begin);
      if (kStream) prefetch_ahead(xs, m);
      for (std::size_t k = 0; k < m; ++k) {
        o[k] = S::narrow((S::load(xs, k) - hi) * sc + sh);
      }
    });
  });
}

template <class S, class R = typename S::raw, class T = typename S::value>
void bn_runs_normalize(const R* x, R* y, std::size_t n, std::size_t slab_len,
                       std::size_t channels, std::size_t offset, std::size_t channel,
                       const T* mean_hi, const T* scale, const T* shift, bool stream) {
  const SlabCursor cursor{slab_len, channels, offset, channel};
  with_flags(
      [&](auto s) {
        bn_runs_normalize_loop<S, s>(x, y, n, cursor, mean_hi, scale, shift);
      },
      stream);
}

// dx = dy * k_dy + (x - mean_hi) * k_x + k_0 over a run as above;
// kCentered = false drops the x terms (eval).
template <class S, bool kCentered, bool kStream, class R = typename S::raw,
          class T = typename S::value>
void bn_runs_dx_loop(const R* __restrict dy, const R* __restrict x, R* __restrict dx,
                     std::size_t n, SlabCursor cursor, const T* __restrict k_dy,
                     const T* __restrict mean_hi, const T* __restrict k_x,
                     const T* __restrict k_0) {
#if defined(__AVX__)
  if constexpr (kStream && std::is_same_v<R, T>) {
    stream_run(dx, n, cursor,
        [=](std::size_t c) {
          const T kd = k_dy[c], hi = mean_hi[c], kx = k_x[c], k0 = k_0[c];
          return [=](std::size_t i, T* dst) {
            const StreamReg<T> g = load_reg(dy + i);
            if constexpr (kCentered) {
              stream_reg(dst, g * kd + ((load_reg(x + i) - hi) * kx + k0));
            } else {
              stream_reg(dst, g * kd);
            }
          };
        },
        [=](std::size_t b, std::size_t m, std::size_t c, T* __restrict o) {
          const T kd = k_dy[c], hi = mean_hi[c], kx = k_x[c], k0 = k_0[c];
          for (std::size_t k = 0; k < m; ++k) {
            const T g = dy[b + k];
            o[k] = kCentered ? g * kd + ((x[b + k] - hi) * kx + k0) : g * kd;
          }
        },
        [=](std::size_t i) {
          prefetch_ahead(dy + i, 1);
          if (kCentered) prefetch_ahead(x + i, 1);
        });
    return;
  }
#endif
  write_blocks<kStream, kRunStreamTileBytes>(
      dx, n, [&](R* __restrict out, std::size_t begin, std::size_t count) {
    cursor.walk(begin, count, [&](std::size_t b, std::size_t m, std::size_t c) {
      const T kd = k_dy[c], hi = mean_hi[c], kx = k_x[c], k0 = k_0[c];
      const R* __restrict gs = dy + b;
      const R* __restrict xs = x + b;
      R* __restrict o = out + (b - begin);
      if (kStream) {
        prefetch_ahead(gs, m);
        if (kCentered) prefetch_ahead(xs, m);
      }
      for (std::size_t k = 0; k < m; ++k) {
        const T g = S::load(gs, k);
        o[k] = S::narrow(kCentered ? g * kd + ((S::load(xs, k) - hi) * kx + k0)
                                   : g * kd);
      }
    });
  });
}

template <class S, class R = typename S::raw, class T = typename S::value>
void bn_runs_dx(const R* dy, const R* x, R* dx, std::size_t n, std::size_t slab_len,
                std::size_t channels, std::size_t offset, std::size_t channel, const T* k_dy,
                const T* mean_hi, const T* k_x, const T* k_0, bool centered, bool stream) {
  const SlabCursor cursor{slab_len, channels, offset, channel};
  with_flags(
      [&](auto c, auto s) {
        bn_runs_dx_loop<S, c, s>(dy, x, dx, n, cursor, k_dy, mean_hi, k_x, k_0);
      },
      centered, stream);
}

// Rows are `stride` apart; the tile covers `cols` columns of each. The row loops take
// kRowChunk rows at a time (a few KB: in L1) and walk them in blocks of kColVectors lane
// vectors of columns (16 with AVX2, 32 with AVX-512, 8 with SSE2), each block's sums (or
// per-column constants) in registers down the chunk's rows: per value one widening load,
// a subtraction, an add and a fused multiply-add. Each column's terms are added in row
// order, whatever the chunking. The reductions prefetch each block's values a chunk of
// rows ahead as they go (the next chunk's, read after this one's other blocks) when the
// runtime asks (`ahead`: arrays beyond the caches, Plan::reduce_ahead).
constexpr std::size_t kRowChunk = 32;
constexpr std::size_t kColVectors = 4;
constexpr std::size_t kColBlockWidth = kColVectors * kLaneWidth;

// Adds over `rows` rows the two terms of kVectors lane vectors of columns to first[] and
// second[]: terms(at, v, s1, s2) adds those of the values `at` past the block's start in
// the tile (row offset plus the vector's); ahead(at) requests the block's values `at` past
// its start, called with the row `ahead_rows` (a chunk) below the one being added.
template <std::size_t kVectors, class Terms, class Ahead>
inline void bn_rows_sum_block(std::size_t rows, std::size_t stride, const Terms& terms,
                              const Ahead& ahead, double* __restrict first,
                              double* __restrict second,
                              std::size_t ahead_rows = kRowChunk) {
  Lanes s1[kVectors], s2[kVectors];
  for (std::size_t v = 0; v < kVectors; ++v) {
    s1[v] = load_lanes(first + v * kLaneWidth);
    s2[v] = load_lanes(second + v * kLaneWidth);
  }
  std::size_t at = 0;
  for (std::size_t r = 0; r < rows; ++r, at += stride) {
    ahead(at + ahead_rows * stride);
    for (std::size_t v = 0; v < kVectors; ++v) terms(at + v * kLaneWidth, v, s1[v], s2[v]);
  }
  for (std::size_t v = 0; v < kVectors; ++v) {
    store_lanes(first + v * kLaneWidth, s1[v]);
    store_lanes(second + v * kLaneWidth, s2[v]);
  }
}

// Tiles wider than kWideTileCols columns (whole rows of data beyond the last-level cache:
// the runtime's column blocks are 512 columns) walk at most kWideTileChunk rows at a time:
// a chunk reads its rows side by side, each a stream the hardware follows from memory, and
// fewer streams at once measured faster. (Xeon, 2 threads, whole-row tiles: NHWC (64, 28,
// 28, 3328) float32 backward from memory 0.82 -> 0.65 ns/el with 8 rows instead of 16.)
constexpr std::size_t kWideTileCols = 512;
constexpr std::size_t kWideTileChunk = 8;

// Two per-column sums over the tile, chunk by chunk: block(vectors, offset, rows, j) with
// kVectors or 1 vectors of kWidth columns, or single(offset, rows, j) for the last columns.
template <std::size_t kVectors = kColVectors, std::size_t kWidth = kLaneWidth, class Block,
          class Single>
inline void bn_rows_sums(std::size_t rows, std::size_t stride, std::size_t cols,
                         double* __restrict first, double* __restrict second,
                         const Block& block, const Single& single,
                         std::size_t chunk = kRowChunk) {
  if (cols > kWideTileCols && chunk > kWideTileChunk) chunk = kWideTileChunk;
  for (std::size_t j = 0; j < cols; ++j) first[j] = second[j] = 0.0;
  for (std::size_t r0 = 0; r0 < rows; r0 += chunk) {
    const std::size_t n = rows - r0 < chunk ? rows - r0 : chunk;
    const std::size_t offset = r0 * stride;
    std::size_t j = 0;
    for (; j + kVectors * kWidth <= cols; j += kVectors * kWidth) {
      block(std::integral_constant<std::size_t, kVectors>{}, offset, n, j);
    }
    for (; j + kWidth <= cols; j += kWidth) {
      block(std::integral_constant<std::size_t, 1>{}, offset, n, j);
    }
    for (; j < cols; ++j) single(offset, n, j);
  }
}

// Two per-column sums over a tile of whole rows walked in memory order, a row at a time,
// for rows read from memory (Plan::rows_walk): the sums stay in first[] and second[] (in
// the L1), loaded and stored once a row per lane vector of columns. Each column's terms
// are added in row order, as bn_rows_sums adds them, so the sums are the same bits.
// bn_rows_sums' chunks walk a column block down a chunk's rows, then the next block: a
// page is read in pieces, out of order, which the hardware prefetchers follow poorly from
// memory. (AMD EPYC Zen 4, 32 KiB L1d, 1 MiB L2, 32 MiB L3, 2 threads, in-process A/B,
// same bits, from memory: float32 statistics over rows of 512 values (32768, 512) 0.52x
// the time, of 256 (50176, 256) 0.56x and (65536, 256) 0.59x, of 128 0.61x, of 64 0.77x;
// float64 0.57-0.69x; the gradient sums 0.48-0.85x, float64 0.68-0.95x; forward+backward
// NHWC (64, 28, 28, 256) 0.81x, (32, 56, 56, 64), whose x alone fits in the L3, 0.93x,
// float64 0.84-0.96x. Two or four rows at a time, sharing the loads and stores of the
// sums: no gain from memory. Rows of 1024 values, whose sums take half the L1, measured
// 1.5x slower, rows of 128 bytes or less 1.2-2.8x; in the caches the statistics 1.2-1.9x
// slower.) Rows of whole lane vectors only (cols a multiple of kLaneWidth; the kernels
// keep their chunks for the others): the last columns' scalar sums, compiled in another
// loop, would not promise the same roundings (a column's multiply and add fused in one,
// not in the other: measured). terms(at, j, s1, s2) adds those of the lane vector at `at`
// (offset in the tile) whose columns start at j.
template <class Terms>
inline void bn_rows_walk(std::size_t rows, std::size_t stride, std::size_t cols,
                         double* __restrict first, double* __restrict second,
                         const Terms& terms) {
  for (std::size_t j = 0; j < cols; ++j) first[j] = second[j] = 0.0;
  std::size_t at = 0;
  for (std::size_t r = 0; r < rows; ++r, at += stride) {
    for (std::size_t j = 0; j < cols; j += kLaneWidth) {
      Lanes s1 = load_lanes(first + j), s2 = load_lanes(second + j);
      terms(at + j, j, s1, s2);
      store_lanes(first + j, s1);
      store_lanes(second + j, s2);
    }
    // One row after the other: without this GCC jams two rows into one pass over the
    // columns (-O3's unroll-and-jam), which reads like the two-row walk measured above.
    __asm__ volatile("" ::: "memory");
  }
}

// Rows per chunk of the gradient sums (two arrays of T, rows `stride` values apart). A
// column block walks its chunk's rows, a line of each array per row, and rows a multiple
// of 4 KiB apart fall in one L1 set: such strides get fewer rows, at most 4 per cycle of
// the sets (8 lines per set), and no fewer than 8. (Measured on the Xeon, 2 threads, in
// cache: (64, 256) gradient sums 4.2 -> 3.8 us, (1024, 1024) 345 -> 300 us; the
// statistics, one array, measured best at 32 rows for every stride.) The sums are the
// same for any chunk (each column's terms in row order).
template <class T>
inline std::size_t grad_row_chunk(std::size_t stride) {
  const std::size_t bytes = stride * sizeof(T) % 4096;
  const std::size_t period = bytes == 0 ? 1 : 4096 / (bytes & (~bytes + 1));  // rows per cycle of sets
  const std::size_t rows = 4 * period;
  return rows < 8 ? 8 : rows < kRowChunk ? rows : kRowChunk;
}

// Rows the row reductions over `arrays` arrays of T (rows `stride` values apart) prefetch
// ahead given ahead_bytes > 0: about ahead_bytes of all of them, at least 1 row, at most
// `most` (kRowChunk, or the gradient sums' chunk_bytes chunk). A line requested waits in
// the L2 until the chunk of rows that reads it comes, behind every line the chunks before
// it bring in: 32 rows of 16 KiB of two arrays are 1 MiB of requests waiting their turn.
// Fewer rows than the chunk the loops read at a time (kWideTileChunk rows of wide tiles)
// request the next chunk's first rows only. (Intel Xeon, 2 MiB L2, 480 MiB L3, 2 threads,
// in-process A/B, same bits, 128 KiB against 32 rows: the gradient sums of float32 (4096,
// 4096), in the L3, 0.75x the time (4 rows; 8, one chunk, measured alike), (1024, 16384)
// 0.70x (1 row), (8192, 2048) 0.89x, (2048, 4096) 0.85x, NHWC (64, 7, 7, 2048) 0.86x,
// float64 (4096, 4096) 0.68x (2 rows), (2048, 4096) 0.60x; the statistics of float64
// (4096, 4096) 0.72x and (2048, 4096) 0.71x (4 rows), float32 (1024, 16384) 0.74x, (4096,
// 4096) 0.89x (8 rows); (16384, 1024), whose 32 rows of the statistics are 128 KiB,
// 0.96-1.00x; (40960, 4096) from memory 0.91x / 0.99x; forward+backward float32 (4096,
// 4096) 0.95x, (1024, 16384) 0.92x, float64 (4096, 4096) 0.91x, the other shapes 0.97-1.00x.
// 512 KiB measured 1.03-1.09x slower than 128 from memory, (40960, 4096) and NHWC (64,
// 28, 28, 3328).)
template <class T>
inline std::size_t rows_ahead(std::size_t stride, std::size_t arrays, std::size_t ahead_bytes,
                              std::size_t most) {
  const std::size_t row_bytes = arrays * stride * sizeof(T);
  const std::size_t rows = row_bytes > 0 ? ahead_bytes / row_bytes : most;
  return rows < 1 ? 1 : rows < most ? rows : most;
}

// sum[j] = sum over rows of (x - pivot[j]), sum_sq[j] of its square.
template <class S, class T = typename S::raw>
void bn_rows_stats(const T* __restrict x, std::size_t rows, std::size_t stride,
                   std::size_t cols, const double* __restrict pivot, double* __restrict sum,
                   double* __restrict sum_sq, bool ahead, std::size_t ahead_bytes, bool walk) {
  if (walk && cols % kLaneWidth == 0) {
    bn_rows_walk(rows, stride, cols, sum, sum_sq,
        [&](std::size_t at, std::size_t j, Lanes& s1, Lanes& s2) {
          const Lanes d = minus(S::lanes(x + at), load_lanes(pivot + j));
          s1 += d;
          s2 += d * d;
        });
    return;
  }
  const std::size_t ahead_rows =
      ahead_bytes > 0 ? rows_ahead<T>(stride, 1, ahead_bytes, kRowChunk) : kRowChunk;
  with_flags([&](auto kAhead) {
    bn_rows_sums(rows, stride, cols, sum, sum_sq,
        [&](auto vectors, std::size_t offset, std::size_t n, std::size_t j) {
          constexpr std::size_t kVectors = decltype(vectors)::value;
          Lanes p[kVectors];
          for (std::size_t v = 0; v < kVectors; ++v) p[v] = load_lanes(pivot + j + v * kLaneWidth);
          const T* __restrict xj = x + offset + j;
          bn_rows_sum_block<kVectors>(n, stride, [&](std::size_t at, std::size_t v, Lanes& s1, Lanes& s2) {
            const Lanes d = minus(S::lanes(xj + at), p[v]);
            s1 += d;
            s2 += d * d;
          }, [&](std::size_t at) {
            if (kAhead) prefetch_span(xj + at, kVectors * kLaneWidth);
          }, sum + j, sum_sq + j, ahead_rows);
        },
        [&](std::size_t offset, std::size_t n, std::size_t j) {
          double s1 = sum[j], s2 = sum_sq[j];
          for (std::size_t r = 0; r < n; ++r) {
            const double d = double(S::load(x + offset + r * stride, j)) - pivot[j];
            s1 += d;
            s2 += d * d;
          }
          sum[j] = s1;
          sum_sq[j] = s2;
        });
  }, ahead);
}

// Rows per chunk of the gradient sums over a tile of whole rows given chunk_bytes > 0:
// about chunk_bytes of each array, at least kMinChunkRows rows, at most `chunk`
// (grad_row_chunk), prefetched (`ahead`) a chunk ahead. A chunk of such rows is one
// contiguous run that the column blocks walk down, a line of each row at a time; for
// arrays from memory, fewer rows at a time, the next chunk requested as the current one is
// read, measured faster (the runtime sizes them so that the chunk being read and the one
// requested, of both arrays, take a quarter of the L1). (AMD EPYC Zen 3, 32 KiB L1d, 2
// threads, in-process A/B, same bits, 2 KiB chunks against 32 rows prefetched 32 rows
// ahead: the gradient sums of rows of 64 values (100352, 64) 0.62x, of 128 (100352, 128)
// 0.69x, of 256 (25088, 256) 0.73x and (50176, 256) 0.87x, of 32 (200704, 32) 0.83x, of
// 512 (65536, 512) 0.84x; rows of 16 values keep their 32 rows (2 KiB); 3 KiB chunks
// measured between the two. With the two arrays in the L3, 4-8 MiB, 1.03-1.07x slower:
// the runtime leaves those chunks as they were.) Rows longer than kWideTileCols that take
// no prefetches (Plan::row_prefetch) get chunk_bytes too: kMinChunkRows rows at a time,
// 8 streams of the two arrays instead of 16. (Zen 3, same A/B: float32 backward (1024,
// 4096) 0.77x, (2048, 2048) 0.90x, (4096, 4096) 0.83x, (4096, 1024) 0.83x, NCL (256, 256,
// 64) 0.75x, NHWC (64, 7, 7, 2048) 0.79x; float64 0.80-0.85x. The statistics, one array,
// measured 1.3x slower in chunks of 4 rows than of 8.) Otherwise the chunks are
// grad_row_chunk's (kWideTileChunk rows for rows longer than kWideTileCols), prefetched
// kRowChunk rows ahead.
constexpr std::size_t kMinChunkRows = 4;
template <class T>
inline std::size_t grad_chunk_rows(std::size_t cols, std::size_t chunk_bytes, std::size_t chunk) {
  const std::size_t rows = chunk_bytes / (cols * sizeof(T));
  return rows < kMinChunkRows ? kMinChunkRows : rows < chunk ? rows : chunk;
}

// sum_dy[j] = sum over rows of dy, sum_dyx[j] of dy * (x - mean[j]).
template <class S, class T = typename S::raw>
void bn_rows_grad_sums(const T* __restrict dy, const T* __restrict x, std::size_t rows,
                       std::size_t stride, std::size_t cols, const double* __restrict mean,
                       double* __restrict sum_dy, double* __restrict sum_dyx, bool ahead,
                       std::size_t chunk_bytes, std::size_t ahead_bytes, bool walk) {
  if (walk && cols % kLaneWidth == 0) {
    bn_rows_walk(rows, stride, cols, sum_dy, sum_dyx,
        [&](std::size_t at, std::size_t j, Lanes& s1, Lanes& s2) {
          const Lanes g = S::lanes(dy + at);
          s1 += g;
          s2 += g * minus(S::lanes(x + at), load_lanes(mean + j));
        });
    return;
  }
  std::size_t chunk = grad_row_chunk<T>(stride);
  std::size_t ahead_rows = kRowChunk;
  if (chunk_bytes > 0 && cols == stride && cols > 0) {
    chunk = ahead_rows = grad_chunk_rows<T>(cols, chunk_bytes, chunk);
  }
  if (ahead_bytes > 0) ahead_rows = rows_ahead<T>(stride, 2, ahead_bytes, ahead_rows);
  with_flags([&](auto kAhead) {
    bn_rows_sums(rows, stride, cols, sum_dy, sum_dyx,
        [&](auto vectors, std::size_t offset, std::size_t n, std::size_t j) {
          constexpr std::size_t kVectors = decltype(vectors)::value;
          Lanes m[kVectors];
          for (std::size_t v = 0; v < kVectors; ++v) m[v] = load_lanes(mean + j + v * kLaneWidth);
          const T* __restrict gj = dy + offset + j;
          const T* __restrict xj = x + offset + j;
          bn_rows_sum_block<kVectors>(n, stride, [&](std::size_t at, std::size_t v, Lanes& s1, Lanes& s2) {
            const Lanes g = S::lanes(gj + at);
            s1 += g;
            s2 += g * minus(S::lanes(xj + at), m[v]);
          }, [&](std::size_t at) {
            if (kAhead) {
              prefetch_span(gj + at, kVectors * kLaneWidth);
              prefetch_span(xj + at, kVectors * kLaneWidth);
            }
          }, sum_dy + j, sum_dyx + j, ahead_rows);
        },
        [&](std::size_t offset, std::size_t n, std::size_t j) {
          double s1 = sum_dy[j], s2 = sum_dyx[j];
          for (std::size_t r = 0; r < n; ++r) {
            const double g = double(S::load(dy + offset + r * stride, j));
            s1 += g;
            s2 += g * (double(S::load(x + offset + r * stride, j)) - mean[j]);
          }
          sum_dy[j] = s1;
          sum_dyx[j] = s2;
        },
        chunk);
  }, ahead);
}

// The row loops that stream their output (data beyond the caches) prefetch each row's
// inputs kPrefetchBytes ahead, as the streaming run loops do, when the runtime asks
// (`ahead`, Plan::stream_prefetch: near last-level caches and L1ds of 48 KiB only; the
// Xeon and a Zen 4 measured them slower): the hardware streamers stop at 4 KiB pages. (AMD EPYC
// Zen 5, 2 threads, in-process A/B, fwd+bwd float32: NHWC (64, 28, 28, 256) 0.78-0.90x,
// (32, 56, 56, 64) 0.87-0.94x, (4096, 4096) 0.89x; the dx loop's prefetches are float32's
// only: float64's NHWC backward measured 1.03-1.08x slower with them, and the 16-bit loops
// (bn16_kernels.hpp) keep none: bfloat16 NHWC backward 1.10-1.18x slower with them.)
template <class S, bool kStream, class R = typename S::raw, class T = typename S::value>
void bn_rows_normalize_loop(const R* __restrict x, R* __restrict y, std::size_t rows,
                            std::size_t stride, std::size_t cols, const T* __restrict mean_hi,
                            const T* __restrict scale, const T* __restrict shift,
                            bool ahead, bool direct) {
  for (std::size_t r = 0; r < rows; ++r) {
    const R* __restrict xr = x + r * stride;
    if (kStream && ahead) prefetch_ahead(xr, cols);
#if defined(__AVX__)
    if constexpr (kStream && std::is_same_v<R, T>) {
      if (direct) {
        stream_row(y + r * stride, cols,
            [=](std::size_t i) {
              return (load_reg(xr + i) - load_reg(mean_hi + i)) * load_reg(scale + i) +
                     load_reg(shift + i);
            },
            [=](std::size_t j) { return (xr[j] - mean_hi[j]) * scale[j] + shift[j]; });
        continue;
      }
    }
#endif
    write_values<kStream>(y + r * stride, cols, [=](std::size_t j) {
      return S::narrow((S::load(xr, j) - mean_hi[j]) * scale[j] + shift[j]);
    });
  }
}

template <class S, class R = typename S::raw, class T = typename S::value>
void bn_rows_normalize(const R* x, R* y, std::size_t rows, std::size_t stride, std::size_t cols,
                       const T* mean_hi, const T* scale, const T* shift, bool stream,
                       bool ahead, bool direct) {
  with_flags(
      [&](auto s) {
        bn_rows_normalize_loop<S, s>(x, y, rows, stride, cols, mean_hi, scale, shift, ahead,
                                     direct);
      },
      stream);
}

template <class S, bool kCentered, bool kStream, class R = typename S::raw,
          class T = typename S::value>
void bn_rows_dx_loop(const R* __restrict dy, const R* __restrict x, R* __restrict dx,
                     std::size_t rows, std::size_t stride, std::size_t cols,
                     const T* __restrict k_dy, const T* __restrict mean_hi,
                     const T* __restrict k_x, const T* __restrict k_0, bool ahead,
                     bool direct) {
  for (std::size_t r = 0; r < rows; ++r) {
    const R* __restrict gr = dy + r * stride;
    const R* __restrict xr = x + r * stride;
    R* const o = dx + r * stride;
    if (kStream && sizeof(R) == 4 && ahead) {
      prefetch_ahead(gr, cols);
      if (kCentered) prefetch_ahead(xr, cols);
    }
#if defined(__AVX__)
    if constexpr (kStream && std::is_same_v<R, T>) {
      if (direct) {
        stream_row(o, cols,
            [=](std::size_t i) {
              const auto g = load_reg(gr + i);
              if constexpr (kCentered) {
                return g * load_reg(k_dy + i) +
                       ((load_reg(xr + i) - load_reg(mean_hi + i)) * load_reg(k_x + i) +
                        load_reg(k_0 + i));
              } else {
                return g * load_reg(k_dy + i);
              }
            },
            [=](std::size_t j) {
              return kCentered ? gr[j] * k_dy[j] + ((xr[j] - mean_hi[j]) * k_x[j] + k_0[j])
                               : gr[j] * k_dy[j];
            });
        continue;
      }
    }
#endif
#if defined(__AVX512F__)
    // In the cache, float32 and float64 rows take cache_row, unless x and dy share an
    // offset within a line that dx does not have: the runtime then placed the constants
    // to match the inputs (line_anchor), and the row keeps write_values. (Lining the loop
    // up with dx there and joining both inputs measured within noise, 0.95-1.04x.)
    if constexpr (!kStream && std::is_same_v<R, T>) {
      if (cache_rows(o, gr, xr) && line_anchor<R>(gr, kCentered ? xr : nullptr, o) == o) {
        if constexpr (kCentered) {
          const T* const in[2] = {gr, xr};
          cache_row(o, cols, in,
              [=](auto full, auto m, std::ptrdiff_t i, const StreamReg<T>* v) {
                using Z = RowZmm<T>;
                return Z::fma(v[0], row_reg(full, m, k_dy + i),
                              Z::fma(v[1] - row_reg(full, m, mean_hi + i),
                                     row_reg(full, m, k_x + i), row_reg(full, m, k_0 + i)));
              });
        } else {
          const T* const in[1] = {gr};
          cache_row(o, cols, in,
              [=](auto full, auto m, std::ptrdiff_t i, const StreamReg<T>* v) {
                return v[0] * row_reg(full, m, k_dy + i);
              });
        }
        continue;
      }
    }
#endif
    write_values<kStream>(o, cols, [=](std::size_t j) {
      const T g = S::load(gr, j);
      return S::narrow(
          kCentered ? g * k_dy[j] + ((S::load(xr, j) - mean_hi[j]) * k_x[j] + k_0[j])
                    : g * k_dy[j]);
    }, line_anchor<R>(gr, kCentered ? xr : nullptr, o));
  }
}

template <class S, class R = typename S::raw, class T = typename S::value>
void bn_rows_dx(const R* dy, const R* x, R* dx, std::size_t rows, std::size_t stride,
                std::size_t cols, const T* k_dy, const T* mean_hi, const T* k_x, const T* k_0,
                bool centered, bool stream, bool ahead, bool direct) {
  with_flags(
      [&](auto c, auto s) {
        bn_rows_dx_loop<S, c, s>(dy, x, dx, rows, stride, cols, k_dy, mean_hi, k_x, k_0, ahead,
                                 direct);
      },
      centered, stream);
}

// Per-channel finishing (BatchNormKernels::finish_stats and the rest): plain loops over
// arrays, vectorized for the ISA (compiled for the baseline, the (N, 256) forward and
// backward spent 1.5 us of 12 in them, converting two values per instruction). The
// divisions and square roots are those the expressions name, correctly rounded on every
// ISA. Each loop's body is one of the channel functions below, which the fused loops
// (finish_normalize, finish_dx) chain for one channel at a time: the same expressions,
// so the fused and the separate steps give the same bits (the split API's composition
// tests hold them to it).

// mean and m2 of one channel from its sums around `pivot`.
inline void channel_stats(double pivot, double sum, double sum_sq, double inv_count,
                          double& mean, double& m2) {
  const double shift = sum * inv_count;
  const double spread = sum_sq - sum * shift;
  mean = pivot + shift;
  m2 = spread < 0.0 ? 0.0 : spread;  // rounding may dip below 0; NaN stays
}

inline void bn_finish_stats(std::size_t n, const double* __restrict pivot,
                            const double* __restrict sum, const double* __restrict sum_sq,
                            double inv_count, double* __restrict mean, double* __restrict m2) {
  for (std::size_t c = 0; c < n; ++c) {
    channel_stats(pivot[c], sum[c], sum_sq[c], inv_count, mean[c], m2[c]);
  }
}

// m2 / count, as a multiplication by 1 / count when that is exact (count a power of two:
// both round the same real number once), sparing the divider a third of its work (the
// loop is bound by it: two divisions and a square root per channel).
template <bool kPowerOfTwo>
inline double per_count(double m2, double count, double inv_count) {
  return kPowerOfTwo ? m2 * inv_count : m2 / count;
}

// The training forward's constants of the batch (count values per channel).
struct ForwardTerms {
  double count, inv_count, eps, bessel, keep, momentum;

  ForwardTerms(double n, double epsilon, double m)
      : count(n), inv_count(1.0 / n), eps(epsilon), bessel(n / (n - 1.0)), keep(1.0 - m),
        momentum(m) {}
};

// invstd of one channel; with running statistics (kRunning), channel c's move towards
// the batch's mean and unbiased variance.
template <class T, bool kPowerOfTwo, bool kRunning>
inline double channel_forward(double m2, double mean, const ForwardTerms& f,
                              T* __restrict running_mean, T* __restrict running_var,
                              std::size_t c) {
  const double var = per_count<kPowerOfTwo>(m2, f.count, f.inv_count);
  if (kRunning) {
    running_mean[c] = T(f.keep * double(running_mean[c]) + f.momentum * mean);
    running_var[c] = T(f.keep * double(running_var[c]) + f.momentum * (var * f.bessel));
  }
  return 1.0 / sqrt_of(var + f.eps);
}

// Calls body(power_of_two, running) with the two flags as compile-time constants.
template <class Body>
inline void with_forward_flags(double count, bool running, const Body& body) {
  int exponent = 0;
  const bool power_of_two = __builtin_frexp(count, &exponent) == 0.5;
  with_flags(body, power_of_two, running);
}

template <class T>
void bn_finish_forward(std::size_t n, const double* m2, double count, double eps,
                       const double* mean, double* invstd, T* running_mean, T* running_var,
                       double momentum) {
  const ForwardTerms f(count, eps, momentum);
  with_forward_flags(count, running_mean != nullptr, [&](auto p, auto r) {
    for (std::size_t c = 0; c < n; ++c) {
      invstd[c] = channel_forward<T, p, r>(m2[c], mean[c], f, running_mean, running_var, c);
    }
  });
}

// The elementwise passes subtract the mean as a value of T, hi: x - hi is exact near the
// mean, so float32 keeps its precision when |mean| >> std. The remainder lo = mean - hi
// is folded, in double, into the constant term: ((x - hi) - lo) * k + c =
// (x - hi) * k + (c - lo * k), one operation fewer per value, with the same error bound
// (the folded constant is rounded once; lo * k is at most half an ulp of the mean, in
// units of the spread).
// (kWeight, kBias: whether weight and bias are given; compile-time, so that loops that
// chain several channel functions still vectorize.)
template <class T, bool kWeight, bool kBias>
inline void channel_normalize(double mean, double invstd, const T* __restrict weight,
                              const T* __restrict bias, std::size_t c, T* __restrict mean_hi,
                              T* __restrict scale, T* __restrict shift) {
  const T hi = T(mean);
  const T sc = T(kWeight ? invstd * double(weight[c]) : invstd);
  const double lo = mean - double(hi);
  mean_hi[c] = hi;
  scale[c] = sc;
  shift[c] = T((kBias ? double(bias[c]) : 0.0) - lo * double(sc));
}

template <class T>
void bn_normalize_constants(std::size_t n, const double* __restrict mean,
                            const double* __restrict invstd, const T* __restrict weight,
                            const T* __restrict bias, T* __restrict mean_hi,
                            T* __restrict scale, T* __restrict shift) {
  with_flags([&](auto w, auto b) {
    for (std::size_t c = 0; c < n; ++c) {
      channel_normalize<T, w, b>(mean[c], invstd[c], weight, bias, c, mean_hi, scale, shift);
    }
  }, weight != nullptr, bias != nullptr);
}

// finish_stats, finish_forward and normalize_constants, channel by channel (m2 is not
// kept).
template <class T>
void bn_finish_normalize(std::size_t n, const double* __restrict pivot,
                         const double* __restrict sum, const double* __restrict sum_sq,
                         double count, double eps, double momentum, double* __restrict mean,
                         double* __restrict invstd, T* __restrict running_mean,
                         T* __restrict running_var, const T* __restrict weight,
                         const T* __restrict bias, T* __restrict mean_hi,
                         T* __restrict scale, T* __restrict shift) {
  const ForwardTerms f(count, eps, momentum);
  with_forward_flags(count, running_mean != nullptr, [&](auto p, auto r) {
    with_flags([&](auto w, auto b) {
      for (std::size_t c = 0; c < n; ++c) {
        double mu, m2;
        channel_stats(pivot[c], sum[c], sum_sq[c], f.inv_count, mu, m2);
        const double is = channel_forward<T, p, r>(m2, mu, f, running_mean, running_var, c);
        mean[c] = mu;
        invstd[c] = is;
        channel_normalize<T, w, b>(mu, is, weight, bias, c, mean_hi, scale, shift);
      }
    }, weight != nullptr, bias != nullptr);
  });
}

// sum(dy * xhat) of one channel from sum(dy * (x - mean)); with kGrads, the parameter
// gradients of channel c.
template <class T, bool kGrads>
inline double channel_grads(double invstd, double sum_dy, double sum_dy_xc, std::size_t c,
                            T* __restrict grad_weight, T* __restrict grad_bias) {
  const double sum_dy_xhat = sum_dy_xc * invstd;
  if (kGrads) {
    grad_weight[c] = T(sum_dy_xhat);
    grad_bias[c] = T(sum_dy);
  }
  return sum_dy_xhat;
}

template <class T>
void bn_finish_grads(std::size_t n, const double* __restrict invstd,
                     const double* __restrict sum_dy, double* __restrict sum_dy_xhat,
                     T* __restrict grad_weight, T* __restrict grad_bias) {
  with_flags([&](auto g) {
    for (std::size_t c = 0; c < n; ++c) {
      sum_dy_xhat[c] =
          channel_grads<T, g>(invstd[c], sum_dy[c], sum_dy_xhat[c], c, grad_weight, grad_bias);
    }
  }, grad_weight != nullptr);
}

// dx = w * invstd * (dy - sum_dy / M - xhat * sum_dy_xhat / M), xhat = (x - mean) * invstd,
// as dy * k_dy + (x - hi) * k_x + k_0, k_0 holding the -lo * k_x of the mean's remainder
// (sum_dy_xhat here already times invstd).
template <class T, bool kWeight>
inline void channel_dx(const T* __restrict weight, double mean, double invstd, double sum_dy,
                       double sum_dy_xhat, double inv_count, std::size_t c, T* __restrict k_dy,
                       T* __restrict mean_hi, T* __restrict k_x, T* __restrict k_0) {
  const double scale = kWeight ? double(weight[c]) * invstd : invstd;
  const T hi = T(mean);
  const double lo = mean - double(hi);
  const T kx = T(-scale * invstd * sum_dy_xhat * inv_count);
  k_dy[c] = T(scale);
  mean_hi[c] = hi;
  k_x[c] = kx;
  k_0[c] = T(-scale * sum_dy * inv_count - lo * double(kx));
}

template <class T>
void bn_dx_constants(std::size_t n, const T* __restrict weight, const double* __restrict mean,
                     const double* __restrict invstd, const double* __restrict sum_dy,
                     const double* __restrict sum_dy_xhat, double inv_count, bool centered,
                     T* __restrict k_dy, T* __restrict mean_hi, T* __restrict k_x,
                     T* __restrict k_0) {
  if (!centered) {
    for (std::size_t c = 0; c < n; ++c) {
      k_dy[c] = T(weight ? double(weight[c]) * invstd[c] : invstd[c]);
      mean_hi[c] = T(mean[c]);
      k_x[c] = T(0);
      k_0[c] = T(0);
    }
    return;
  }
  with_flags([&](auto w) {
    for (std::size_t c = 0; c < n; ++c) {
      channel_dx<T, w>(weight, mean[c], invstd[c], sum_dy[c], sum_dy_xhat[c], inv_count, c,
                       k_dy, mean_hi, k_x, k_0);
    }
  }, weight != nullptr);
}

// finish_grads and dx_constants (centered), channel by channel: sum_dy_xhat is read as
// sum(dy * (x - mean)) and left so; the parameter gradients are written when weight is
// given (grad_weight and grad_bias with it).
template <class T>
void bn_finish_dx(std::size_t n, const T* __restrict weight, const double* __restrict mean,
                  const double* __restrict invstd, const double* __restrict sum_dy,
                  const double* __restrict sum_dy_xhat, double inv_count,
                  T* __restrict grad_weight, T* __restrict grad_bias, T* __restrict k_dy,
                  T* __restrict mean_hi, T* __restrict k_x, T* __restrict k_0) {
  with_flags([&](auto w) {
    for (std::size_t c = 0; c < n; ++c) {
      const double sdx =
          channel_grads<T, w>(invstd[c], sum_dy[c], sum_dy_xhat[c], c, grad_weight, grad_bias);
      channel_dx<T, w>(weight, mean[c], invstd[c], sum_dy[c], sdx, inv_count, c, k_dy, mean_hi,
                       k_x, k_0);
    }
  }, weight != nullptr);
}

// The table entries for storage S.
template <class S>
constexpr BatchNormKernels<typename S::raw, typename S::value> batch_norm_kernels() {
  BatchNormKernels<typename S::raw, typename S::value> k{};
  k.values_at = &bn_values_at<S>;
  k.slab_stats = &bn_slab_stats<S>;
  k.slab_grad_sums = &bn_slab_grad_sums<S>;
  k.runs_normalize = &bn_runs_normalize<S>;
  k.runs_dx = &bn_runs_dx<S>;
  k.rows_stats = &bn_rows_stats<S>;
  k.rows_grad_sums = &bn_rows_grad_sums<S>;
  k.rows_normalize = &bn_rows_normalize<S>;
  k.rows_dx = &bn_rows_dx<S>;
  k.stream_fence = &stream_fence;
  using T = typename S::value;
  k.finish_stats = &bn_finish_stats;
  k.finish_forward = &bn_finish_forward<T>;
  k.normalize_constants = &bn_normalize_constants<T>;
  k.finish_normalize = &bn_finish_normalize<T>;
  k.finish_grads = &bn_finish_grads<T>;
  k.dx_constants = &bn_dx_constants<T>;
  k.finish_dx = &bn_finish_dx<T>;
  return k;
}

// Batch norm on bfloat16 and float16 data as register loops (lanes.hpp): a register of
// 16-bit values is widened to floats, computed in float32 and rounded back per register
// (bfloat16: vcvtneps2bf16 in the AVX512_BF16 build; float16: F16C), instead of the
// element adaptors of batch_norm_kernels.hpp, whose widening and rounding per element
// made these passes compute-bound at about the speed of float32 data (half the bytes).
//
// Reductions: each lane sums up to kFloatRun register loads in float32 before the sum
// is added to the double accumulators (slabs), or sums a row chunk (kRowChunk rows) in
// float32 (rows). For 16-bit inputs (8 or 11 significant bits) the terms are close to
// exact in float32 and a run of at most 32 float additions adds a relative error of
// about 2e-6 of the run's sum: far below the data's own resolution, at a quarter of the
// instructions of widening every value to double. The order is fixed by the shape, so
// results stay bitwise identical for any thread count. Sums around a mean that is not
// a value of the channel (the gradient sums) are taken around its float32 part `hi` and
// corrected in double: sum(dy * (x - mean)) = sum(dy * (x - hi)) - (mean - hi) * sum(dy).
//
// Included inside the per-ISA namespace after storage.hpp, lanes.hpp and
// batch_norm_kernels.hpp.
#pragma once

static_assert(kRegLanes == 2 * kLaneWidth, "a register of floats widens to two of doubles");

// map1's last values (fewer than a register) as one register with masked loads and
// stores (AVX-512 with 16-bit masked moves), instead of a value at a time: the rows of
// NHWC data are short (64 channels: 128 bytes), and their per-value tails cost more than
// their registers. (Measured on the Xeon, 2 threads, bfloat16 NHWC forward, rows taken one
// at a time: (16, 56, 56, 64) 0.209 -> 0.149 ns/el, (4, 56, 56, 64) 0.243 -> 0.180.)
// map2's tails stay per value: masked, the NCHW backward's runs measured slower ((64,
// 256, 28, 28) 1.08x).
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define FUSEDOPS_MASKED_TAILS 1
#else
#define FUSEDOPS_MASKED_TAILS 0
#endif

// a * b + c rounded once where the ISA has FMA, written out rather than left to the
// compiler's contraction: the normalize's register body and its masked tail are different
// expressions to GCC, and a build that fuses one and not the other (the sanitizer build
// did) would round the last values of a piece differently from the rest.
FUSEDOPS_ALWAYS_INLINE RegFloats fmadd(RegFloats a, RegFloats b, RegFloats c) {
#if defined(__AVX512F__)
  return reinterpret_cast<RegFloats>(_mm512_fmadd_ps(
      reinterpret_cast<__m512>(a), reinterpret_cast<__m512>(b), reinterpret_cast<__m512>(c)));
#elif defined(__FMA__)
  return reinterpret_cast<RegFloats>(_mm256_fmadd_ps(
      reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b), reinterpret_cast<__m256>(c)));
#else
  return a * b + c;
#endif
}
FUSEDOPS_ALWAYS_INLINE RegFloats fmadd(RegFloats a, float b, float c) {
  return fmadd(a, RegFloats{} + b, RegFloats{} + c);
}
FUSEDOPS_ALWAYS_INLINE float fmadd(float a, float b, float c) {
#if defined(__FMA__) || defined(__AVX512F__)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

// Adds the low and high halves of f, widened, to d[0] and d[1].
FUSEDOPS_ALWAYS_INLINE void widen_add(RegFloats f, Lanes* d) {
#if defined(__AVX512F__)
  const __m512 v = reinterpret_cast<__m512>(f);
  d[0] += Lanes(_mm512_cvtps_pd(_mm512_castps512_ps256(v)));
  d[1] += Lanes(_mm512_cvtps_pd(
      _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
#elif defined(__AVX2__)
  const __m256 v = reinterpret_cast<__m256>(f);
  d[0] += Lanes(_mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  d[1] += Lanes(_mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
#elif defined(__SSE2__)
  const __m128 v = reinterpret_cast<__m128>(f);
  d[0] += Lanes(_mm_cvtps_pd(v));
  d[1] += Lanes(_mm_cvtps_pd(_mm_movehl_ps(v, v)));
#else
  for (std::size_t k = 0; k < kLaneWidth; ++k) {
    d[0][k] += double(f[k]);
    d[1][k] += double(f[k + kLaneWidth]);
  }
#endif
}

// Register adaptors of the 16-bit storage types: load(p) widens kRegLanes values,
// store(p, v) rounds a register to nearest even (the bits of S::narrow per value).
struct RegBf16 {
  static FUSEDOPS_ALWAYS_INLINE RegFloats load(const std::uint16_t* p) {
    return float_of(load_halves(p) << 16);
  }
  // The 2 kRegLanes values at p as two registers, in an order of their own: a gets the
  // values at even offsets, b those at odd ones (each 32-bit lane holds one of each:
  // a shift and a mask, where load() widens half a register per value). For sums, whose
  // order is fixed by this choice, not by the values.
  static FUSEDOPS_ALWAYS_INLINE void load2(const std::uint16_t* p, RegFloats& a, RegFloats& b) {
    RegBits u;
    __builtin_memcpy(&u, p, sizeof u);
    a = float_of(u << 16);
    b = float_of(u & 0xFFFF0000u);
  }
  static FUSEDOPS_ALWAYS_INLINE void store(std::uint16_t* p, RegFloats v) {
    store_bf16_lanes<false>(p, v, RegBits{});
  }
  // Two registers, a at p and b after it: with AVX512_BF16 one conversion of both (the
  // rounding of store(); one test for denormal values, which it would round to zero);
  // with AVX2 one pack and one permute for both, and, when neither holds a NaN (one
  // compare and one test), without the NaN selects (as the optimizer loops,
  // mixed_kernels.hpp store_step; store2_in_load_order too). AMD EPYC Zen 3, 2 threads,
  // in-process A/B, same bits: bfloat16 forward 0.93-0.99x the time, backward 0.93-0.99x,
  // NCHW (8, 64, 28, 28) to (64, 256, 28, 28), NHWC (2, 56, 56, 64) to (64, 28, 28, 256).
  static FUSEDOPS_ALWAYS_INLINE void store2(std::uint16_t* p, RegFloats a, RegFloats b) {
#if defined(__AVX512BF16__) && defined(__AVX512DQ__)
    const __m512 va = reinterpret_cast<__m512>(a), vb = reinterpret_cast<__m512>(b);
    if (__builtin_expect(
            (_mm512_fpclass_ps_mask(va, 0x20) | _mm512_fpclass_ps_mask(vb, 0x20)) == 0, 1)) {
      _mm512_storeu_si512(p, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(vb, va)));
      return;
    }
#elif FUSEDOPS_LANE_PAIRS
    if (__builtin_expect(!any_lane(nan_lanes(a, b)), 1)) {
      store_bf16_pair<false, false, false>(p, a, b);  // no NaN: without the NaN selects
    } else {
      store_bf16_pair<false, false>(p, a, b);
    }
    return;
#endif
    store(p, a);
    store(p + kRegLanes, b);
  }
#if !defined(__AVX512BF16__)
  // Without the BF16 instructions, the elementwise passes whose constants are one per
  // slab take load2's order for their output too: a's values to the even offsets and b's
  // to the odd ones, a shift and a blend for both registers (store2 narrows each one on
  // its own). AMD EPYC Zen 3 (AVX2), 2 threads, in-process A/B, same bits: bfloat16 NCHW
  // forward 0.83-0.86x the time from (8, 64, 28, 28) to (64, 256, 28, 28), backward
  // 0.84-0.94x. The plain AVX-512 and baseline builds (CPUs without AVX512_BF16 or AVX2,
  // not measured) take it too: fewer instructions than narrowing each register, and the
  // tests hold every build to the same bits.
  static constexpr bool kStoresInLoadOrder = true;
  static FUSEDOPS_ALWAYS_INLINE void store2_in_load_order(std::uint16_t* p, RegFloats a, RegFloats b) {
#if FUSEDOPS_LANE_PAIRS
    if (__builtin_expect(!any_lane(nan_lanes(a, b)), 1)) {  // no NaN: without the selects
      store2_in_load_order<false>(p, a, b);
      return;
    }
#endif
    store2_in_load_order<true>(p, a, b);
  }
  template <bool kMayBeNan>
  static FUSEDOPS_ALWAYS_INLINE void store2_in_load_order(std::uint16_t* p, RegFloats a, RegFloats b) {
    const RegBits even = bf16_lanes_nearest<kMayBeNan>(a) >> 16;
    const RegBits odd = bf16_lanes_nearest<kMayBeNan>(b);
#if defined(__AVX2__) && !defined(__AVX512F__)
    const RegBits both = reinterpret_cast<RegBits>(
        _mm256_blend_epi16(reinterpret_cast<__m256i>(even), reinterpret_cast<__m256i>(odd), 0xAA));
#else
    const RegBits both = even | (odd & 0xFFFF0000u);
#endif
    __builtin_memcpy(p, &both, sizeof both);
  }
#else
  static constexpr bool kStoresInLoadOrder = false;
#endif
#if defined(__AVX512BF16__) && defined(__AVX512DQ__)
  // store2's 64 bytes as one register (stream_pair): false, and `out` unset, where
  // store2 takes its per-register path (a denormal value).
  static constexpr bool kPacks = true;
  static FUSEDOPS_ALWAYS_INLINE bool pack2(RegFloats a, RegFloats b, __m512i& out) {
    const __m512 va = reinterpret_cast<__m512>(a), vb = reinterpret_cast<__m512>(b);
    if (__builtin_expect(
            (_mm512_fpclass_ps_mask(va, 0x20) | _mm512_fpclass_ps_mask(vb, 0x20)) == 0, 1)) {
      out = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(vb, va));
      return true;
    }
    return false;
  }
#else
  static constexpr bool kPacks = false;
#endif
#if FUSEDOPS_MASKED_TAILS
  // The values of lanes in `mask` (the first ones): load() and store() of fewer values.
  static FUSEDOPS_ALWAYS_INLINE RegFloats load_masked(const std::uint16_t* p, __mmask16 mask) {
    const __m512i halves = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p));
    return float_of(reinterpret_cast<RegBits>(halves) << 16);
  }
  static FUSEDOPS_ALWAYS_INLINE void store_masked(std::uint16_t* p, RegFloats v, __mmask16 mask) {
#if defined(__AVX512BF16__)
    const __m512 f = reinterpret_cast<__m512>(v);
    if (__builtin_expect(_mm512_mask_fpclass_ps_mask(mask, f, 0x20) == 0, 1)) {
      _mm256_mask_storeu_epi16(p, mask, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(f)));
      return;
    }
#endif
    const RegBits rounded = bf16_lanes_nearest(v) >> 16;
    _mm256_mask_storeu_epi16(p, mask, _mm512_cvtepi32_epi16(reinterpret_cast<__m512i>(rounded)));
  }
#endif
};

struct RegF16 {
  static constexpr bool kStoresInLoadOrder = false;
  // The 2 kRegLanes values at p as two registers (RegBf16::load2): here in order.
  static FUSEDOPS_ALWAYS_INLINE void load2(const std::uint16_t* p, RegFloats& a, RegFloats& b) {
    a = load(p);
    b = load(p + kRegLanes);
  }
  static FUSEDOPS_ALWAYS_INLINE RegFloats load(const std::uint16_t* p) {
#if defined(__AVX512F__)
    return reinterpret_cast<RegFloats>(
        _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#elif defined(__F16C__)
    return reinterpret_cast<RegFloats>(
        _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#else
    RegFloats v;
    for (std::size_t k = 0; k < kRegLanes; ++k) v[k] = f16_to_float(p[k]);
    return v;
#endif
  }
  static FUSEDOPS_ALWAYS_INLINE void store(std::uint16_t* p, RegFloats v) {
#if defined(__AVX512F__)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(reinterpret_cast<__m512>(v), _MM_FROUND_TO_NEAREST_INT));
#elif defined(__F16C__)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph(reinterpret_cast<__m256>(v), _MM_FROUND_TO_NEAREST_INT));
#else
    for (std::size_t k = 0; k < kRegLanes; ++k) p[k] = f16_round_nearest(v[k]);
#endif
  }
  static FUSEDOPS_ALWAYS_INLINE void store2(std::uint16_t* p, RegFloats a, RegFloats b) {
    store(p, a);
    store(p + kRegLanes, b);
  }
#if defined(__AVX512F__)
  // store2's 64 bytes as one register (RegBf16::pack2).
  static constexpr bool kPacks = true;
  static FUSEDOPS_ALWAYS_INLINE bool pack2(RegFloats a, RegFloats b, __m512i& out) {
    const __m256i low = _mm512_cvtps_ph(reinterpret_cast<__m512>(a), _MM_FROUND_TO_NEAREST_INT);
    const __m256i high = _mm512_cvtps_ph(reinterpret_cast<__m512>(b), _MM_FROUND_TO_NEAREST_INT);
    out = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
    return true;
  }
#else
  static constexpr bool kPacks = false;
#endif
#if FUSEDOPS_MASKED_TAILS
  static FUSEDOPS_ALWAYS_INLINE RegFloats load_masked(const std::uint16_t* p, __mmask16 mask) {
    return reinterpret_cast<RegFloats>(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, p)));
  }
  static FUSEDOPS_ALWAYS_INLINE void store_masked(std::uint16_t* p, RegFloats v, __mmask16 mask) {
    _mm256_mask_storeu_epi16(
        p, mask, _mm512_cvtps_ph(reinterpret_cast<__m512>(v), _MM_FROUND_TO_NEAREST_INT));
  }
#endif
};

// Per-column constants at p: a register of them, or one.
struct RegAt {
  std::size_t k;
  FUSEDOPS_ALWAYS_INLINE RegFloats operator()(const float* p) const { return load_floats(p + k); }
};
struct OneAt {
  std::size_t k;
  FUSEDOPS_ALWAYS_INLINE float operator()(const float* p) const { return p[k]; }
};
#if FUSEDOPS_MASKED_TAILS
// ...or the first lanes of a register (those in `mask`; the others zero).
struct MaskedAt {
  std::size_t k;
  __mmask16 mask;
  FUSEDOPS_ALWAYS_INLINE RegFloats operator()(const float* p) const {
    return reinterpret_cast<RegFloats>(_mm512_maskz_loadu_ps(mask, p + k));
  }
};
#endif

// o[k] = narrow(f(a[k], at)) for k < m (f2: of a[k] and b[k]), a register at a time,
// the last values one by one (map1's as one masked register where FUSEDOPS_MASKED_TAILS);
// `at(p)` gives the per-column constants p[k] in the same form.
// kSlabConstants: f ignores `at` (one set of constants for all m values), so the
// registers may hold the values in the order of Reg::load2 where Reg stores that order
// back (kStoresInLoadOrder).
template <class S, class Reg, bool kSlabConstants = false, bool kNanFree = false, class F>
FUSEDOPS_ALWAYS_INLINE void map1(const std::uint16_t* __restrict a, std::uint16_t* __restrict o,
                                 std::size_t m, const F& f) {
  std::size_t k = 0;
  if constexpr (kSlabConstants && Reg::kStoresInLoadOrder) {
    for (; k + 2 * kRegLanes <= m; k += 2 * kRegLanes) {
      RegFloats va, vb;
      Reg::load2(a + k, va, vb);
      if constexpr (kNanFree) {
        Reg::template store2_in_load_order<false>(o + k, f(va, RegAt{k}), f(vb, RegAt{k}));
      } else {
        Reg::store2_in_load_order(o + k, f(va, RegAt{k}), f(vb, RegAt{k}));
      }
    }
  }
  for (; k + 2 * kRegLanes <= m; k += 2 * kRegLanes) {
    Reg::store2(o + k, f(Reg::load(a + k), RegAt{k}),
                f(Reg::load(a + k + kRegLanes), RegAt{k + kRegLanes}));
  }
  for (; k + kRegLanes <= m; k += kRegLanes) Reg::store(o + k, f(Reg::load(a + k), RegAt{k}));
#if FUSEDOPS_MASKED_TAILS
  if (k < m) {
    const __mmask16 mask = __mmask16((1u << (m - k)) - 1);
    Reg::store_masked(o + k, f(Reg::load_masked(a + k, mask), MaskedAt{k, mask}), mask);
  }
#else
  for (; k < m; ++k) o[k] = S::narrow(f(S::load(a, k), OneAt{k}));
#endif
}

template <class S, class Reg, bool kSlabConstants = false, bool kNanFree = false, class F>
FUSEDOPS_ALWAYS_INLINE void map2(const std::uint16_t* __restrict a, const std::uint16_t* __restrict b,
                                 std::uint16_t* __restrict o, std::size_t m, const F& f) {
  std::size_t k = 0;
  if constexpr (kSlabConstants && Reg::kStoresInLoadOrder) {
    for (; k + 2 * kRegLanes <= m; k += 2 * kRegLanes) {
      RegFloats va, vb, wa, wb;
      Reg::load2(a + k, va, vb);
      Reg::load2(b + k, wa, wb);
      if constexpr (kNanFree) {
        Reg::template store2_in_load_order<false>(o + k, f(va, wa, RegAt{k}), f(vb, wb, RegAt{k}));
      } else {
        Reg::store2_in_load_order(o + k, f(va, wa, RegAt{k}), f(vb, wb, RegAt{k}));
      }
    }
  }
  for (; k + 2 * kRegLanes <= m; k += 2 * kRegLanes) {
    const std::size_t k2 = k + kRegLanes;
    Reg::store2(o + k, f(Reg::load(a + k), Reg::load(b + k), RegAt{k}),
                f(Reg::load(a + k2), Reg::load(b + k2), RegAt{k2}));
  }
  for (; k + kRegLanes <= m; k += kRegLanes) {
    Reg::store(o + k, f(Reg::load(a + k), Reg::load(b + k), RegAt{k}));
  }
  for (; k < m; ++k) o[k] = S::narrow(f(S::load(a, k), S::load(b, k), OneAt{k}));
}

// ---- Elementwise passes (the formulas of batch_norm_kernels.hpp).

// The elementwise formulas of the channel-first loops (one set of constants per slab
// piece), as map1 and map2 take them: each loop computes every value with these.
inline auto normalize_of(float hi, float sc, float sh) {
  return [=](auto v, auto) { return fmadd(v - hi, sc, sh); };
}
inline auto dx_of(float kd, float hi, float kx, float k0) {
  return [=](auto g, auto v, auto) { return g * kd + ((v - hi) * kx + k0); };
}
inline auto dx_uncentered_of(float kd) {
  return [=](auto g, auto) { return g * kd; };
}

#if defined(__AVX512F__)
// stream_run (batch_norm_kernels.hpp) for 16-bit data where Reg packs two registers of
// floats into one of 16-bit values (Reg::kPacks: the AVX-512 builds, bfloat16 in the one
// with AVX512_BF16): a and b, the 32 values at p (aligned), rounded as Reg::store2 rounds
// them and stored non-temporally. Each value is computed with the expression of the tiles
// it replaces (map1, map2), so the bits are theirs. (Intel Xeon, Emerald Rapids,
// 2 threads, the two builds loaded in one process and run alternately, same bits,
// fwd+bwd: bfloat16 NCHW (64, 256, 28, 28) 0.82-0.84x the time, (32, 64, 56, 56)
// 0.79-0.80x, (16, 512, 14, 14) 0.97x, (8, 64, 56, 56) 1.00x, (448, 256, 28, 28) from
// memory 0.98x; float16 (64, 256, 28, 28) 0.89x. The AVX2 and plain AVX-512 bfloat16
// builds, whose stores narrow a register at a time or in load2's order, keep the tiles,
// as do the row loops (NHWC, (N, C)): streamed from registers, with the edges of every
// row in plain stores, the row loops measured slower, float32 NHWC (32, 56, 56, 64)
// 1.05-1.06x the time, bfloat16 1.09-1.17x.)
template <class Reg>
FUSEDOPS_ALWAYS_INLINE void stream_pair(std::uint16_t* p, RegFloats a, RegFloats b) {
  __m512i packed;
  if (Reg::pack2(a, b, packed)) {
    _mm512_stream_si512(reinterpret_cast<__m512i*>(p), packed);
    return;
  }
  alignas(64) std::uint16_t values[2 * kRegLanes];
  Reg::store2(values, a, b);
  stream_line(p, values);
}
#endif

// The channel-first loops (one set of constants per slab piece) round a piece without the
// NaN test of store2_in_load_order when none of its constants is NaN: every NaN a lane can
// then hold is quiet with its low 16 bits zero (a 16-bit x or dy widened, or the default
// NaN of an invalid operation such as Inf * 0), and both roundings keep such a NaN as it
// is. NaN constants, float32 values with any payload (a NaN weight, the statistics of a
// channel holding a NaN), keep the test. (AMD EPYC Zen 3, bfloat16 NCHW, interleaved runs,
// same bits: one thread in cache, (2, 64, 28, 28) and (8, 256, 28, 28), forward 0.91-0.93x
// the time, backward 0.89-0.91x; 2 threads, (8, 256, 28, 28) to (64, 256, 28, 28),
// forward 0.91-0.94x, backward 0.95-1.01x.) Only the builds whose stores take that test
// (Reg::kStoresInLoadOrder) get the second copy of the loop (with_flag_if).
template <class S, class Reg, bool kStream>
void bn16_runs_normalize_loop(const std::uint16_t* __restrict x, std::uint16_t* __restrict y,
                              std::size_t n, SlabCursor cursor, const float* __restrict mean_hi,
                              const float* __restrict scale, const float* __restrict shift) {
#if defined(__AVX512F__)
  if constexpr (kStream && Reg::kPacks && !Reg::kStoresInLoadOrder) {
    stream_run(y, n, cursor,
        [=](std::size_t c) {
          const auto f = normalize_of(mean_hi[c], scale[c], shift[c]);
          return [=](std::size_t k, std::uint16_t* dst) {
            stream_pair<Reg>(dst, f(Reg::load(x + k), RegAt{k}),
                             f(Reg::load(x + k + kRegLanes), RegAt{k + kRegLanes}));
          };
        },
        [=](std::size_t b, std::size_t m, std::size_t c, std::uint16_t* __restrict o) {
          map1<S, Reg, true>(x + b, o, m, normalize_of(mean_hi[c], scale[c], shift[c]));
        },
        [=](std::size_t k) { prefetch_ahead(x + k, 2 * kRegLanes); });
    return;
  }
#endif
  write_blocks<kStream, kRunStreamTileBytes>(
      y, n, [&](std::uint16_t* __restrict out, std::size_t begin, std::size_t count) {
    cursor.walk(begin, count, [&](std::size_t b, std::size_t m, std::size_t c) {
      const float hi = mean_hi[c], sc = scale[c], sh = shift[c];
      if (kStream) prefetch_ahead(x + b, m);
      with_flag_if<Reg::kStoresInLoadOrder>([&](auto nan_free) {
        map1<S, Reg, true, nan_free>(x + b, out + (b - begin), m, normalize_of(hi, sc, sh));
      }, !std::isnan(hi) && !std::isnan(sc) && !std::isnan(sh));
    });
  });
}

template <class S, class Reg>
void bn16_runs_normalize(const std::uint16_t* x, std::uint16_t* y, std::size_t n,
                         std::size_t slab_len, std::size_t channels, std::size_t offset,
                         std::size_t channel, const float* mean_hi, const float* scale,
                         const float* shift, bool stream) {
  const SlabCursor cursor{slab_len, channels, offset, channel};
  with_flags(
      [&](auto s) {
        bn16_runs_normalize_loop<S, Reg, s>(x, y, n, cursor, mean_hi, scale, shift);
      },
      stream);
}

template <class S, class Reg, bool kCentered, bool kStream>
void bn16_runs_dx_loop(const std::uint16_t* __restrict dy, const std::uint16_t* __restrict x,
                       std::uint16_t* __restrict dx, std::size_t n, SlabCursor cursor,
                       const float* __restrict k_dy, const float* __restrict mean_hi,
                       const float* __restrict k_x, const float* __restrict k_0) {
#if defined(__AVX512F__)
  if constexpr (kStream && Reg::kPacks && !Reg::kStoresInLoadOrder) {
    stream_run(dx, n, cursor,
        [=](std::size_t c) {
          const auto f = dx_of(k_dy[c], mean_hi[c], k_x[c], k_0[c]);
          const auto f0 = dx_uncentered_of(k_dy[c]);
          return [=](std::size_t k, std::uint16_t* dst) {
            const std::size_t k2 = k + kRegLanes;
            if (kCentered) {
              stream_pair<Reg>(dst, f(Reg::load(dy + k), Reg::load(x + k), RegAt{k}),
                               f(Reg::load(dy + k2), Reg::load(x + k2), RegAt{k2}));
            } else {
              stream_pair<Reg>(dst, f0(Reg::load(dy + k), RegAt{k}),
                               f0(Reg::load(dy + k2), RegAt{k2}));
            }
          };
        },
        [=](std::size_t b, std::size_t m, std::size_t c, std::uint16_t* __restrict o) {
          if (kCentered) {
            map2<S, Reg, true>(dy + b, x + b, o, m, dx_of(k_dy[c], mean_hi[c], k_x[c], k_0[c]));
          } else {
            map1<S, Reg, true>(dy + b, o, m, dx_uncentered_of(k_dy[c]));
          }
        },
        [=](std::size_t k) {
          prefetch_ahead(dy + k, 2 * kRegLanes);
          if (kCentered) prefetch_ahead(x + k, 2 * kRegLanes);
        });
    return;
  }
#endif
  write_blocks<kStream, kRunStreamTileBytes>(
      dx, n, [&](std::uint16_t* __restrict out, std::size_t begin, std::size_t count) {
    cursor.walk(begin, count, [&](std::size_t b, std::size_t m, std::size_t c) {
      const float kd = k_dy[c], hi = mean_hi[c], kx = k_x[c], k0 = k_0[c];
      std::uint16_t* __restrict o = out + (b - begin);
      if (kStream) {
        prefetch_ahead(dy + b, m);
        if (kCentered) prefetch_ahead(x + b, m);
      }
      with_flag_if<Reg::kStoresInLoadOrder>([&](auto nan_free) {
        if (kCentered) {
          map2<S, Reg, true, nan_free>(dy + b, x + b, o, m, dx_of(kd, hi, kx, k0));
        } else {
          map1<S, Reg, true, nan_free>(dy + b, o, m, dx_uncentered_of(kd));
        }
      }, !std::isnan(kd) && !std::isnan(hi) && !std::isnan(kx) && !std::isnan(k0));
    });
  });
}

template <class S, class Reg>
void bn16_runs_dx(const std::uint16_t* dy, const std::uint16_t* x, std::uint16_t* dx,
                  std::size_t n, std::size_t slab_len, std::size_t channels, std::size_t offset,
                  std::size_t channel, const float* k_dy, const float* mean_hi,
                  const float* k_x, const float* k_0, bool centered, bool stream) {
  const SlabCursor cursor{slab_len, channels, offset, channel};
  with_flags(
      [&](auto c, auto s) {
        bn16_runs_dx_loop<S, Reg, c, s>(dy, x, dx, n, cursor, k_dy, mean_hi, k_x, k_0);
      },
      centered, stream);
}

template <class S, class Reg, bool kStream>
void bn16_rows_normalize_loop(const std::uint16_t* __restrict x, std::uint16_t* __restrict y,
                              std::size_t rows, std::size_t stride, std::size_t cols,
                              const float* __restrict mean_hi, const float* __restrict scale,
                              const float* __restrict shift) {
  for (std::size_t r = 0; r < rows; ++r) {
    const std::uint16_t* __restrict xr = x + r * stride;
    write_blocks<kStream>(y + r * stride, cols,
        [&](std::uint16_t* __restrict out, std::size_t begin, std::size_t count) {
          const float *hi = mean_hi + begin, *sc = scale + begin, *sh = shift + begin;
          map1<S, Reg>(xr + begin, out, count,
                       [=](auto v, auto at) { return fmadd(v - at(hi), at(sc), at(sh)); });
        });
  }
}

template <class S, class Reg>
void bn16_rows_normalize(const std::uint16_t* x, std::uint16_t* y, std::size_t rows,
                         std::size_t stride, std::size_t cols, const float* mean_hi,
                         const float* scale, const float* shift, bool stream,
                         bool /*ahead: the 16-bit row loops take no prefetches*/,
                         bool /*direct: and keep their tiles*/) {
  with_flags(
      [&](auto s) {
        bn16_rows_normalize_loop<S, Reg, s>(x, y, rows, stride, cols, mean_hi, scale, shift);
      },
      stream);
}

template <class S, class Reg, bool kCentered, bool kStream>
void bn16_rows_dx_loop(const std::uint16_t* __restrict dy, const std::uint16_t* __restrict x,
                       std::uint16_t* __restrict dx, std::size_t rows, std::size_t stride,
                       std::size_t cols, const float* __restrict k_dy,
                       const float* __restrict mean_hi, const float* __restrict k_x,
                       const float* __restrict k_0) {
  for (std::size_t r = 0; r < rows; ++r) {
    const std::uint16_t* __restrict gr = dy + r * stride;
    const std::uint16_t* __restrict xr = x + r * stride;
    std::uint16_t* const o = dx + r * stride;
    write_blocks<kStream>(o, cols,
        [&](std::uint16_t* __restrict out, std::size_t begin, std::size_t count) {
          const float *kd = k_dy + begin, *hi = mean_hi + begin, *kx = k_x + begin,
                      *k0 = k_0 + begin;
          if (kCentered) {
            map2<S, Reg>(gr + begin, xr + begin, out, count, [=](auto g, auto v, auto at) {
              return g * at(kd) + ((v - at(hi)) * at(kx) + at(k0));
            });
          } else {
            map1<S, Reg>(gr + begin, out, count, [=](auto g, auto at) { return g * at(kd); });
          }
        }, line_anchor<std::uint16_t>(gr, kCentered ? xr : nullptr, o));
  }
}

template <class S, class Reg>
void bn16_rows_dx(const std::uint16_t* dy, const std::uint16_t* x, std::uint16_t* dx,
                  std::size_t rows, std::size_t stride, std::size_t cols, const float* k_dy,
                  const float* mean_hi, const float* k_x, const float* k_0, bool centered,
                  bool stream, bool /*ahead: as bn16_rows_normalize's*/,
                  bool /*direct: as bn16_rows_normalize's*/) {
  with_flags(
      [&](auto c, auto s) {
        bn16_rows_dx_loop<S, Reg, c, s>(dy, x, dx, rows, stride, cols, k_dy, mean_hi, k_x, k_0);
      },
      centered, stream);
}

// ---- Reductions.

// Independent float accumulators per sum (latency of the adds), and register loads per
// accumulator summed in float before they are added to the double lanes: 32, the run the
// accuracy note above allows and the row chunks take (kRowChunk). (Measured on the Xeon,
// 2 threads, bfloat16, in-process A/B against 8: forward (64, 256, 28, 28) 0.93x, (32, 64,
// 56, 56) 0.95x, (16, 512, 14, 14) and (64, 128, 128) 0.99x; backward 0.96-0.99x; the
// statistics in the L2 on one thread, slabs of 3136 values, 0.101 -> 0.076 ns/el: a slab
// of 784 to 3136 values is one or two float runs instead of two to seven, each widened
// to double.)
constexpr std::size_t kSumRegs = 4;
constexpr std::size_t kFloatRun = 32;

// Two sums over each of K slab runs of n values read side by side: terms2(k, i, f1a, f2a,
// f1b, f2b) adds those of the two registers of run k's values at i (Reg::load2) to float
// registers, terms(k, i, f1, f2) those of one register (the last ones); one(k, i, s1, s2)
// those of its value i to doubles (the last values); ahead(k, i) prefetches for run k's
// values from i on (batch_norm_kernels.hpp's prefetch_ahead). The runs take turns a float
// run at a time (kFloatRun register steps, 4 KiB of bfloat16 with AVX-512), so one run's
// float registers are live at a time; a float run's registers are added, widened, in
// register order to one pair of double lane vectors per sum and run (a pair per register
// kept 16 vectors per run in memory: in cache, 1 thread, 4 runs of 784 values 0.111 ->
// 0.106 ns/el); each run's sums are those it would get alone, in sums[2 k], sums[2 k + 1].
template <std::size_t K, class Terms2, class Terms, class One, class Ahead>
void bn16_slab_sum_pairs(std::size_t n, const Terms2& terms2, const Terms& terms, const One& one,
                         const Ahead& ahead, double* sums) {
  static_assert(kSumRegs % 2 == 0, "registers are loaded in pairs");
  constexpr std::size_t kStep = kSumRegs * kRegLanes;
  Lanes d1[K][2] = {}, d2[K][2] = {};
  std::size_t i = 0;
  while (i + kStep <= n) {
    std::size_t next = i;
    for (std::size_t k = 0; k < K; ++k) {
      RegFloats f1[kSumRegs] = {}, f2[kSumRegs] = {};
      std::size_t j = i;
      for (std::size_t r = 0; r < kFloatRun && j + kStep <= n; ++r, j += kStep) {
        ahead(k, j);
        for (std::size_t u = 0; u < kSumRegs; u += 2) {
          terms2(k, j + u * kRegLanes, f1[u], f2[u], f1[u + 1], f2[u + 1]);
        }
      }
      for (std::size_t u = 0; u < kSumRegs; ++u) {
        widen_add(f1[u], d1[k]);
        widen_add(f2[u], d2[k]);
      }
      next = j;
    }
    i = next;
  }
  for (std::size_t k = 0; k < K; ++k) {
    std::size_t j = i;
    if (j + kRegLanes <= n) {  // the last whole registers (fewer than kSumRegs)
      RegFloats f1 = {}, f2 = {};
      for (; j + kRegLanes <= n; j += kRegLanes) terms(k, j, f1, f2);
      widen_add(f1, d1[k]);
      widen_add(f2, d2[k]);
    }
    // The double lanes folded into one vector, then its lanes pairwise (a slab run may
    // be a few hundred values: this costs about as much as the loop).
    d1[k][0] += d1[k][1];
    d2[k][0] += d2[k][1];
    constexpr std::size_t kDoubles = kLaneWidth;
    double s1[kDoubles], s2[kDoubles];
    __builtin_memcpy(s1, &d1[k][0], sizeof s1);
    __builtin_memcpy(s2, &d2[k][0], sizeof s2);
    for (std::size_t width = kDoubles / 2; width > 0; width /= 2) {
      for (std::size_t w = 0; w < width; ++w) {
        s1[w] += s1[w + width];
        s2[w] += s2[w + width];
      }
    }
    double t1 = 0.0, t2 = 0.0;
    for (; j < n; ++j) one(k, j, t1, t2);
    sums[2 * k] = s1[0] + t1;
    sums[2 * k + 1] = s2[0] + t2;
  }
}

template <class S, class Reg>
void bn16_slab_stats(const std::uint16_t* const* x, std::size_t streams, std::size_t n,
                     const double* pivot, double* sums) {
  with_streams(streams, [&](auto streams_k) {
    constexpr std::size_t K = decltype(streams_k)::value;
    const std::uint16_t* __restrict xs[K];
    double pd[K];
    float pf[K];
    for (std::size_t k = 0; k < K; ++k) {
      xs[k] = x[k];
      pd[k] = pivot[k];
      pf[k] = float(pivot[k]);  // a value of the channel: exact in float
    }
    // the terms of one register of run k's values
    const auto add = [&](std::size_t k, RegFloats v, RegFloats& f1, RegFloats& f2) {
      const RegFloats d = v - pf[k];
      f1 += d;
      f2 += d * d;
    };
    bn16_slab_sum_pairs<K>(n,
        [&](std::size_t k, std::size_t i, RegFloats& f1a, RegFloats& f2a, RegFloats& f1b,
            RegFloats& f2b) {
          RegFloats a, b;
          Reg::load2(xs[k] + i, a, b);
          add(k, a, f1a, f2a);
          add(k, b, f1b, f2b);
        },
        [&](std::size_t k, std::size_t i, RegFloats& f1, RegFloats& f2) {
          add(k, Reg::load(xs[k] + i), f1, f2);
        },
        [&](std::size_t k, std::size_t i, double& s1, double& s2) {
          const double d = double(S::load(xs[k], i)) - pd[k];
          s1 += d;
          s2 += d * d;
        },
        [&](std::size_t k, std::size_t i) { prefetch_ahead(xs[k] + i, kSumRegs * kRegLanes); },
        sums);
  });
}

template <class S, class Reg>
void bn16_slab_grad_sums_one(const std::uint16_t* __restrict dy,
                             const std::uint16_t* __restrict x, std::size_t n, double mean,
                             double* sums) {
  const float hi = float(mean);
  const double hi_d = double(hi), lo = mean - hi_d;
  // the terms of one register of dy (g) and of x (v)
  const auto add = [hi](RegFloats g, RegFloats v, RegFloats& f1, RegFloats& f2) {
    f1 += g;
    f2 += g * (v - hi);
  };
  bn16_slab_sum_pairs<1>(n,
      [dy, x, &add](std::size_t, std::size_t i, RegFloats& f1a, RegFloats& f2a, RegFloats& f1b,
                    RegFloats& f2b) {
        RegFloats ga, gb, va, vb;
        Reg::load2(dy + i, ga, gb);
        Reg::load2(x + i, va, vb);
        add(ga, va, f1a, f2a);
        add(gb, vb, f1b, f2b);
      },
      [dy, x, &add](std::size_t, std::size_t i, RegFloats& f1, RegFloats& f2) {
        add(Reg::load(dy + i), Reg::load(x + i), f1, f2);
      },
      [dy, x, hi_d](std::size_t, std::size_t i, double& s1, double& s2) {
        const double g = double(S::load(dy, i));
        s1 += g;
        s2 += g * (double(S::load(x, i)) - hi_d);
      },
      [dy, x](std::size_t, std::size_t i) {
        prefetch_ahead(dy + i, kSumRegs * kRegLanes);
        prefetch_ahead(x + i, kSumRegs * kRegLanes);
      },
      sums);
  sums[1] -= lo * sums[0];
}

// The gradient sums of `streams` runs (BatchNormKernels::slab_grad_sums), one after the
// other, each run's sums those it gets alone. Given four rows' slabs of a channel
// (Plan::grad_streams), it reads them in turn; in a blocked group of several channels the
// next channel's slabs continue those rows: four rows advance together, a slab at a time.
template <class S, class Reg>
void bn16_slab_grad_sums(const std::uint16_t* const* dy, const std::uint16_t* const* x,
                         std::size_t streams, std::size_t n, double mean, double* sums) {
  for (std::size_t k = 0; k < streams; ++k) {
    bn16_slab_grad_sums_one<S, Reg>(dy[k], x[k], n, mean, sums + 2 * k);
  }
}

// Columns of a row tile per pass of the row reductions (their float centres on the stack).
constexpr std::size_t kRowSegment = 512;

// Adds f, widened, to the kRegLanes doubles at p.
FUSEDOPS_ALWAYS_INLINE void widen_add_to(double* p, RegFloats f) {
  Lanes d[2] = {load_lanes(p), load_lanes(p + kLaneWidth)};
  widen_add(f, d);
  store_lanes(p, d[0]);
  store_lanes(p + kLaneWidth, d[1]);
}

// Two per-column sums over a row tile (bn_rows_sums' chunks and column blocks): each
// chunk of kRowChunk rows summed in float in blocks of kSumRegs registers of columns
// (then one register), added to first[] and second[] per chunk; the last columns in
// double. terms(at, c, f1, f2) adds the terms of the register at `at` (offset in the
// tile) whose columns start at c; one(at, c, s1, s2) those of one value; ahead(at, count)
// prefetches the `count` values at `at` (a chunk of rows ahead).
template <class Terms, class One, class Ahead>
void bn16_rows_sums(std::size_t rows, std::size_t stride, std::size_t cols,
                    double* __restrict first, double* __restrict second, const Terms& terms,
                    const One& one, const Ahead& ahead) {
  bn_rows_sums<kSumRegs, kRegLanes>(rows, stride, cols, first, second,
      [&](auto regs, std::size_t offset, std::size_t n, std::size_t j) {
        constexpr std::size_t kRegs = decltype(regs)::value;
        RegFloats f1[kRegs] = {}, f2[kRegs] = {};
        std::size_t at = offset + j;
        for (std::size_t r = 0; r < n; ++r, at += stride) {
          ahead(at + kRowChunk * stride, kRegs * kRegLanes);
          for (std::size_t u = 0; u < kRegs; ++u) {
            terms(at + u * kRegLanes, j + u * kRegLanes, f1[u], f2[u]);
          }
        }
        for (std::size_t u = 0; u < kRegs; ++u) {
          widen_add_to(first + j + u * kRegLanes, f1[u]);
          widen_add_to(second + j + u * kRegLanes, f2[u]);
        }
      },
      [&](std::size_t offset, std::size_t n, std::size_t j) {
        double s1 = first[j], s2 = second[j];
        for (std::size_t r = 0; r < n; ++r) one(offset + r * stride + j, j, s1, s2);
        first[j] = s1;
        second[j] = s2;
      });
}

// bn16_rows_sums' sums walked in memory order, a row at a time (bn_rows_walk, for rows
// read from memory): each chunk of kRowChunk rows summed in float in f1[] and f2[] (in the
// L1), loaded and stored once a row per register of columns, then added to first[] and
// second[]. The same chunks, each column's terms in row order: the same sums. Rows of
// whole registers only (cols a multiple of kRegLanes), as bn_rows_walk. (AMD EPYC Zen 4,
// 2 threads, in-process A/B, same bits, bfloat16 from memory: gradient sums over rows of
// 512 values 0.56x the time, of 256 0.63x, of 128 0.69x; forward+backward 0.86-0.94x.
// Rows of 64 values, 128 bytes, statistics 1.4x slower: they keep their chunks.)
template <class Terms>
void bn16_rows_walk(std::size_t rows, std::size_t stride, std::size_t cols,
                    double* __restrict first, double* __restrict second, const Terms& terms) {
  alignas(64) float f1[kRowSegment], f2[kRowSegment];
  for (std::size_t j = 0; j < cols; ++j) first[j] = second[j] = 0.0;
  for (std::size_t r0 = 0; r0 < rows; r0 += kRowChunk) {
    const std::size_t n = rows - r0 < kRowChunk ? rows - r0 : kRowChunk;
    for (std::size_t j = 0; j < cols; ++j) f1[j] = f2[j] = 0.0f;
    std::size_t at = r0 * stride;
    for (std::size_t r = 0; r < n; ++r, at += stride) {
      for (std::size_t j = 0; j < cols; j += kRegLanes) {
        RegFloats a = load_floats(f1 + j), b = load_floats(f2 + j);
        terms(at + j, j, a, b);
        store_floats(f1 + j, a);
        store_floats(f2 + j, b);
      }
      __asm__ volatile("" ::: "memory");  // one row after the other (bn_rows_walk)
    }
    for (std::size_t j = 0; j < cols; j += kRegLanes) {
      widen_add_to(first + j, load_floats(f1 + j));
      widen_add_to(second + j, load_floats(f2 + j));
    }
  }
}

template <class S, class Reg>
void bn16_rows_stats(const std::uint16_t* __restrict x, std::size_t rows, std::size_t stride,
                     std::size_t cols, const double* __restrict pivot, double* __restrict sum,
                     double* __restrict sum_sq, bool ahead,
                     std::size_t /*ahead_bytes: the 16-bit loops keep their prefetches*/,
                     bool walk) {
  alignas(64) float p[kRowSegment];
  for (std::size_t c0 = 0; c0 < cols; c0 += kRowSegment) {
    const std::size_t m = cols - c0 < kRowSegment ? cols - c0 : kRowSegment;
    for (std::size_t j = 0; j < m; ++j) p[j] = float(pivot[c0 + j]);  // values: exact
    const std::uint16_t* xs = x + c0;
    const double* ps = pivot + c0;
    const auto terms = [&](std::size_t at, std::size_t c, RegFloats& f1, RegFloats& f2) {
      const RegFloats d = Reg::load(xs + at) - load_floats(p + c);
      f1 += d;
      f2 += d * d;
    };
    const auto one = [&](std::size_t at, std::size_t c, double& s1, double& s2) {
      const double d = double(S::load(xs, at)) - ps[c];
      s1 += d;
      s2 += d * d;
    };
    if (walk && m % kRegLanes == 0) {
      bn16_rows_walk(rows, stride, m, sum + c0, sum_sq + c0, terms);
      continue;
    }
    with_flags([&](auto kAhead) {
      bn16_rows_sums(rows, stride, m, sum + c0, sum_sq + c0, terms, one,
          [&](std::size_t at, std::size_t count) {
            if (kAhead) prefetch_span(xs + at, count);
          });
    }, ahead);
  }
}

template <class S, class Reg>
void bn16_rows_grad_sums(const std::uint16_t* __restrict dy, const std::uint16_t* __restrict x,
                         std::size_t rows, std::size_t stride, std::size_t cols,
                         const double* __restrict mean, double* __restrict sum_dy,
                         double* __restrict sum_dyx, bool ahead,
                         std::size_t /*chunk_bytes: the 16-bit loops keep their chunks*/,
                         std::size_t /*ahead_bytes: and their prefetches*/, bool walk) {
  alignas(64) float hi[kRowSegment];
  for (std::size_t c0 = 0; c0 < cols; c0 += kRowSegment) {
    const std::size_t m = cols - c0 < kRowSegment ? cols - c0 : kRowSegment;
    for (std::size_t j = 0; j < m; ++j) hi[j] = float(mean[c0 + j]);
    const std::uint16_t* gs = dy + c0;
    const std::uint16_t* xs = x + c0;
    const auto terms = [&](std::size_t at, std::size_t c, RegFloats& f1, RegFloats& f2) {
      const RegFloats g = Reg::load(gs + at);
      f1 += g;
      f2 += g * (Reg::load(xs + at) - load_floats(hi + c));
    };
    const auto one = [&](std::size_t at, std::size_t c, double& s1, double& s2) {
      const double g = double(S::load(gs, at));
      s1 += g;
      s2 += g * (double(S::load(xs, at)) - double(hi[c]));
    };
    if (walk && m % kRegLanes == 0) {
      bn16_rows_walk(rows, stride, m, sum_dy + c0, sum_dyx + c0, terms);
    } else {
      with_flags([&](auto kAhead) {
        bn16_rows_sums(rows, stride, m, sum_dy + c0, sum_dyx + c0, terms, one,
            [&](std::size_t at, std::size_t count) {
              if (kAhead) {
                prefetch_span(gs + at, count);
                prefetch_span(xs + at, count);
              }
            });
      }, ahead);
    }
    for (std::size_t j = 0; j < m; ++j) {
      sum_dyx[c0 + j] -= (mean[c0 + j] - double(hi[j])) * sum_dy[c0 + j];
    }
  }
}

// The table entries of storage S (batch_norm_kernels.hpp's adaptor) with register type Reg.
template <class S, class Reg>
constexpr BatchNormKernels<std::uint16_t, float> bn16_kernels() {
  BatchNormKernels<std::uint16_t, float> k = batch_norm_kernels<S>();
  k.slab_stats = &bn16_slab_stats<S, Reg>;
  k.slab_grad_sums = &bn16_slab_grad_sums<S, Reg>;
  k.runs_normalize = &bn16_runs_normalize<S, Reg>;
  k.runs_dx = &bn16_runs_dx<S, Reg>;
  k.rows_stats = &bn16_rows_stats<S, Reg>;
  k.rows_grad_sums = &bn16_rows_grad_sums<S, Reg>;
  k.rows_normalize = &bn16_rows_normalize<S, Reg>;
  k.rows_dx = &bn16_rows_dx<S, Reg>;
  return k;
}

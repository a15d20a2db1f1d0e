// Explicit vector lanes for the fused 16-bit loops (mixed_kernels.hpp): one register of
// floats of this ISA (SSE2: 4, AVX2: 8, AVX-512: 16) as a GCC vector type, so the loop
// bodies written for `float` compile unchanged for a whole register, plus the loads and
// stores of the float32 and bfloat16 storage types. Auto-vectorized, the bfloat16 stores
// cost about twice the instructions of these (GCC narrows the NaN candidate and the
// rounded value separately, each with masking, packing and a lane permute, then blends
// them); here the NaN select is done on 32-bit lanes and each store narrows once.
// With AVX512_BF16 the round-to-nearest-even store is vcvtneps2bf16, which flushes
// denormal inputs to zero: a register holding a denormal takes the integer path instead,
// so every build stores the same bits. Included inside the per-ISA namespace after
// storage.hpp.
#pragma once

// The loops call these and the update bodies of mixed_kernels.hpp once per element or
// register: left to GCC's inliner, whose unit-growth limits this translation unit's many
// instantiations reach, some loops kept the calls and did not vectorize.
#define FUSEDOPS_ALWAYS_INLINE inline __attribute__((always_inline))
// The same for the lambdas of the lane loops (their step runs in the loop and on the
// padded tail: two call sites, which the inliner otherwise weighs against its size).
#define FUSEDOPS_LAMBDA_INLINE __attribute__((always_inline))

#if defined(__AVX512F__)
constexpr std::size_t kRegLanes = 16;
#elif defined(__AVX2__)
constexpr std::size_t kRegLanes = 8;
#else
constexpr std::size_t kRegLanes = 4;  // SSE2, the x86-64 baseline, or plain lane loops
#endif

typedef float RegFloats __attribute__((vector_size(4 * kRegLanes)));
typedef std::uint32_t RegBits __attribute__((vector_size(4 * kRegLanes)));

FUSEDOPS_ALWAYS_INLINE RegBits bits_of(RegFloats x) { return reinterpret_cast<RegBits>(x); }
FUSEDOPS_ALWAYS_INLINE RegFloats float_of(RegBits u) { return reinterpret_cast<RegFloats>(u); }

FUSEDOPS_ALWAYS_INLINE RegFloats sqrt_of(RegFloats x) {
#if defined(__AVX512F__)
  return reinterpret_cast<RegFloats>(_mm512_sqrt_ps(reinterpret_cast<__m512>(x)));
#elif defined(__AVX2__)
  return reinterpret_cast<RegFloats>(_mm256_sqrt_ps(reinterpret_cast<__m256>(x)));
#elif defined(__SSE2__)
  return reinterpret_cast<RegFloats>(_mm_sqrt_ps(reinterpret_cast<__m128>(x)));
#else
  for (std::size_t k = 0; k < kRegLanes; ++k) x[k] = __builtin_sqrtf(x[k]);
  return x;
#endif
}

// sign_of of simd_common.hpp on lanes: -1, +1, and x itself for +-0 and NaN.
FUSEDOPS_ALWAYS_INLINE RegFloats sign_of(RegFloats x) {
  const RegBits u = bits_of(x);
  const RegFloats one = float_of((u & 0x80000000u) | bits_of(1.0f));
  return float_of(u & 0x7FFFFFFFu) > RegFloats{} ? one : x;
}

// Lane k holds `first + k`.
FUSEDOPS_ALWAYS_INLINE RegBits lane_indices(std::uint32_t first) {
  RegBits index;
  for (std::size_t k = 0; k < kRegLanes; ++k) index[k] = first + std::uint32_t(k);
  return index;
}

FUSEDOPS_ALWAYS_INLINE RegFloats load_floats(const float* p) {
  RegFloats x;
  __builtin_memcpy(&x, p, sizeof x);
  return x;
}

FUSEDOPS_ALWAYS_INLINE void store_floats(float* p, RegFloats x) { __builtin_memcpy(p, &x, sizeof x); }

// The kRegLanes 16-bit values at p, zero-extended to 32-bit lanes.
FUSEDOPS_ALWAYS_INLINE RegBits load_halves(const std::uint16_t* p) {
#if defined(__AVX512F__)
  return reinterpret_cast<RegBits>(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#elif defined(__AVX2__)
  return reinterpret_cast<RegBits>(
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(__SSE2__)
  return reinterpret_cast<RegBits>(_mm_unpacklo_epi16(
      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), _mm_setzero_si128()));
#else
  RegBits u;
  for (std::size_t k = 0; k < kRegLanes; ++k) u[k] = p[k];
  return u;
#endif
}

// Stores the low 16 bits of every lane (each lane < 2^16).
FUSEDOPS_ALWAYS_INLINE void store_halves(std::uint16_t* p, RegBits u) {
#if defined(__AVX512F__)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtepi32_epi16(reinterpret_cast<__m512i>(u)));
#elif defined(__AVX2__)
  const __m256i w = reinterpret_cast<__m256i>(u);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packus_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1)));
#elif defined(__SSE2__)
  // Shifted up and back arithmetically, the lanes fit the signed saturating pack.
  const __m128i w = _mm_srai_epi32(_mm_slli_epi32(reinterpret_cast<__m128i>(u), 16), 16);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi32(w, w));
#else
  for (std::size_t k = 0; k < kRegLanes; ++k) p[k] = std::uint16_t(u[k]);
#endif
}

// Stores the high 16 bits of every lane.
FUSEDOPS_ALWAYS_INLINE void store_high_halves(std::uint16_t* p, RegBits u) {
#if defined(__AVX512F__)
  store_halves(p, u >> 16);
#elif defined(__AVX2__)
  // The high halves to the low 8 bytes of each 128-bit lane, then both lanes together.
  const __m256i pick = _mm256_setr_epi8(2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1,
                                        2, 3, 6, 7, 10, 11, 14, 15, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i w = _mm256_shuffle_epi8(reinterpret_cast<__m256i>(u), pick);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_castsi256_si128(_mm256_permute4x64_epi64(w, 0x08)));
#elif defined(__SSE2__)
  const __m128i w = _mm_srai_epi32(reinterpret_cast<__m128i>(u), 16);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi32(w, w));
#else
  store_halves(p, u >> 16);
#endif
}

// ---- Pairs of registers (AVX2). The fused 16-bit loops take two registers per step
// there, so that a 16-bit operand moves as one 256-bit load or store: with the in-lane
// order (pair_order), each 128-bit half of the load unpacks into the two registers
// (one instruction per register, where load_halves widens and shifts) and one pack stores
// them back (where store_high_halves shuffles and permutes each register). Elementwise
// loops whose operands are all 16-bit take that order as it comes; float32 operands
// would need a permute each way, so rows with one keep the order of memory (a pack and
// one permute per store). AMD EPYC (Zen 3, AVX2, 2.45 GHz), the all-bfloat16 loops called
// directly, one thread, in L1: SGD with momentum 0.46-0.57 -> 0.33 ns per element, Adam
// 1.0-1.2 -> 0.75-0.89. AVX-512 registers already hold 16 values: those builds keep one.
#if defined(__AVX2__) && !defined(__AVX512F__)
#define FUSEDOPS_LANE_PAIRS 1
constexpr std::size_t kStepRegs = 2;

// Element offsets of the lanes of a pair: in memory order a holds 0-7 and b 8-15; in the
// in-lane order a holds 0-3 and 8-11, b 4-7 and 12-15.
template <bool kInLane>
FUSEDOPS_ALWAYS_INLINE void pair_order(std::uint32_t first, RegBits& a, RegBits& b) {
  for (std::uint32_t k = 0; k < kRegLanes; ++k) {
    const std::uint32_t half = k / 4, within = k % 4;
    a[k] = first + (kInLane ? half * 8 + within : k);
    b[k] = first + (kInLane ? half * 8 + 4 + within : kRegLanes + k);
  }
}

// The 16 values at high (and at low) as two registers in the in-lane order: each value
// at high in the high half of its lane, the one at low (or zero) in the low half.
FUSEDOPS_ALWAYS_INLINE void load_halves2_inlane(const std::uint16_t* high, RegBits& a, RegBits& b) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(high));
  const __m256i zero = _mm256_setzero_si256();
  a = reinterpret_cast<RegBits>(_mm256_unpacklo_epi16(zero, h));
  b = reinterpret_cast<RegBits>(_mm256_unpackhi_epi16(zero, h));
}
FUSEDOPS_ALWAYS_INLINE void load_halves2_inlane(const std::uint16_t* high, const std::uint16_t* low,
                                                RegBits& a, RegBits& b) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(high));
  const __m256i l = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(low));
  a = reinterpret_cast<RegBits>(_mm256_unpacklo_epi16(l, h));
  b = reinterpret_cast<RegBits>(_mm256_unpackhi_epi16(l, h));
}

// Stores the low 16 bits of the lanes of a and b (each < 2^16) as 16 values, the lanes in
// the order pair_order<kInLane> gives them.
template <bool kInLane>
FUSEDOPS_ALWAYS_INLINE void store_halves2(std::uint16_t* p, RegBits a, RegBits b) {
  __m256i packed = _mm256_packus_epi32(reinterpret_cast<__m256i>(a), reinterpret_cast<__m256i>(b));
  if (!kInLane) packed = _mm256_permute4x64_epi64(packed, 0xD8);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), packed);
}
#else
#define FUSEDOPS_LANE_PAIRS 0
constexpr std::size_t kStepRegs = 1;
#endif

// bfloat16 lanes: bf16_from_bits_plus of storage.hpp, the NaN select on 32-bit lanes; the
// result is the high half of each lane. kMayBeNan false: the caller has checked that no
// lane is NaN (nan_lanes), and the select, whose other side is then never taken, is left
// out (the same bits, three instructions fewer per register).
template <bool kMayBeNan = true>
FUSEDOPS_ALWAYS_INLINE RegBits bf16_lanes_plus(RegFloats x, RegBits addend) {
  const RegBits u = bits_of(x);
  if (!kMayBeNan) return u + addend;
  const RegBits nan = u | 0x00400000u;  // (u >> 16 | 0x0040) in the high half
  return reinterpret_cast<RegBits>(x != x ? nan : u + addend);
}

// bf16_round_nearest of every lane (to nearest even, NaN kept quiet), in its high half.
template <bool kMayBeNan = true>
FUSEDOPS_ALWAYS_INLINE RegBits bf16_lanes_nearest(RegFloats x) {
  return bf16_lanes_plus<kMayBeNan>(x, 0x7FFFu + ((bits_of(x) >> 16) & 1u));
}

#if FUSEDOPS_LANE_PAIRS
// Two registers rounded to bfloat16 (to nearest even, or adding the low 16 bits of ra,
// rb: stochastic) and stored as 16 values in the order pair_order<kInLane> gives them.
template <bool kInLane, bool kStochastic, bool kMayBeNan = true>
FUSEDOPS_ALWAYS_INLINE void store_bf16_pair(std::uint16_t* p, RegFloats a, RegFloats b,
                                            RegBits ra = RegBits{}, RegBits rb = RegBits{}) {
  const auto high = [](RegFloats x, RegBits r) {
    return (kStochastic ? bf16_lanes_plus<kMayBeNan>(x, r & 0xFFFFu)
                        : bf16_lanes_nearest<kMayBeNan>(x)) >> 16;
  };
  store_halves2<kInLane>(p, high(a, ra), high(b, rb));
}

// All ones in the lanes where a or b is NaN: one compare for two registers. The 16-bit
// loops test the registers they round once per step (any_lane) and, in the common case
// of no NaN, store them without the NaN selects.
FUSEDOPS_ALWAYS_INLINE RegBits nan_lanes(RegFloats a, RegFloats b) {
  return reinterpret_cast<RegBits>(
      _mm256_cmp_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b), _CMP_UNORD_Q));
}

FUSEDOPS_ALWAYS_INLINE bool any_lane(RegBits mask) {
  const __m256i m = reinterpret_cast<__m256i>(mask);
  return !_mm256_testz_si256(m, m);
}
#endif

template <bool kStochastic>
FUSEDOPS_ALWAYS_INLINE void store_bf16_lanes(std::uint16_t* p, RegFloats x, RegBits random) {
  if (kStochastic) {
    store_high_halves(p, bf16_lanes_plus(x, random & 0xFFFFu));
    return;
  }
#if defined(__AVX512BF16__) && defined(__AVX512DQ__)
  // vcvtneps2bf16 rounds as bf16_round_nearest except for denormal inputs (zero).
  const __m512 v = reinterpret_cast<__m512>(x);
  if (__builtin_expect(_mm512_fpclass_ps_mask(v, 0x20) == 0, 1)) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
    return;
  }
#endif
  store_high_halves(p, bf16_lanes_nearest(x));
}

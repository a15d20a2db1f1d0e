// Storage types of the mixed-precision kernels: loads widen to float, stores round to
// nearest even or stochastically. Included only inside the per-ISA namespace of
// cpp/kernels/convert_table.cpp. Everything is integer or float arithmetic on 32-bit
// lanes with selects instead of branches, so the loops that call these vectorize on
// every ISA (float16 uses F16C in the loops when the ISA has it; these portable
// conversions then give the same bits).
#pragma once

inline std::uint32_t bits_of(float x) {
  std::uint32_t u;
  __builtin_memcpy(&u, &x, sizeof u);
  return u;
}

inline float float_of(std::uint32_t u) {
  float x;
  __builtin_memcpy(&x, &u, sizeof x);
  return x;
}

// Random bits of one element: two rounds of a 32-bit integer mixer (Wellons' lowbias32)
// over the element index, keyed by (seed, step, tensor, operand) hashed once per block.
// Counter-based: no state, so any chunking or thread count draws the same bits.
// Templates so that lanes of 32-bit integers (lanes.hpp) draw the same bits.
template <class U>
inline U mix32(U x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

template <class U>
inline U random_bits(std::uint32_t k0, std::uint32_t k1, U index) {
  return mix32(mix32(index ^ k0) + k1);
}

// ---- bfloat16: the high half of a float32.

inline float bf16_to_float(std::uint16_t h) { return float_of(std::uint32_t(h) << 16); }

// NaN stays NaN (quieted, sign and high payload kept); a carry out of the largest finite
// value gives Inf, as the correctly rounded result does.
inline std::uint16_t bf16_from_bits_plus(float x, std::uint32_t addend) {
  const std::uint32_t u = bits_of(x);
  const std::uint32_t nan = (u >> 16) | 0x0040u;
  return std::uint16_t(x != x ? nan : (u + addend) >> 16);
}

inline std::uint16_t bf16_round_nearest(float x) {
  const std::uint32_t u = bits_of(x);
  return bf16_from_bits_plus(x, 0x7FFFu + ((u >> 16) & 1u));
}

// x + 16 random bits below the kept ones, truncated: rounds up with probability equal to
// the dropped fraction, so the expected result is x.
inline std::uint16_t bf16_round_stochastic(float x, std::uint32_t random) {
  return bf16_from_bits_plus(x, random & 0xFFFFu);
}

// ---- float16 (IEEE binary16), portable.

inline float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t em = std::uint32_t(h & 0x7FFFu) << 13;  // exponent and mantissa
  const std::uint32_t exponent = em & 0x0F800000u;
  const float normal = float_of(em + (112u << 23));      // rebias 15 -> 127
  const float special = float_of(em + (224u << 23));     // Inf/NaN: exponent 255
  // Subnormal: m * 2^-24 = (2^-14 + m * 2^-24) - 2^-14, both exact.
  const float subnormal = float_of(em + (113u << 23)) - float_of(113u << 23);
  const float magnitude =
      exponent == 0x0F800000u ? special : (exponent == 0 ? subnormal : normal);
  return float_of(bits_of(magnitude) | sign);
}

inline std::uint16_t f16_round_nearest(float x) {
  const std::uint32_t u = bits_of(x);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t a = u & 0x7FFFFFFFu;
  // NaN keeps its high payload and is quieted (as F16C does); >= 65536 is Inf.
  const std::uint32_t special = a > 0x7F800000u ? 0x7E00u | ((a >> 13) & 0x3FFu) : 0x7C00u;
  // Below 2^-14 the result is a multiple of 2^-24: adding 0.5 (ulp 2^-24) lets the FPU
  // round to nearest even; the bits above 0.5 are the binary16 encoding.
  const std::uint32_t subnormal = bits_of(float_of(a) + 0.5f) - bits_of(0.5f);
  // Normal range: rebias, round the 13 dropped bits to nearest even (a carry into the
  // exponent is the correct next binade, and past 65504 it is Inf).
  const std::uint32_t normal = (a - (112u << 23) + 0xFFFu + ((a >> 13) & 1u)) >> 13;
  const std::uint32_t magnitude =
      a >= 0x47800000u ? special : (a < 0x38800000u ? subnormal : normal);
  return std::uint16_t(magnitude | sign);
}

// The float, exactly representable in binary16 (or >= 65536: Inf), that stochastic
// rounding of x picks: x truncated towards zero to binary16, plus one binary16 ulp with
// probability (dropped part) / ulp. Converting it to binary16 is then exact.
inline float f16_stochastic_value(float x, std::uint32_t random) {
  const std::uint32_t u = bits_of(x);
  const std::uint32_t a = u & 0x7FFFFFFFu;
  const float magnitude = float_of(a);
  const bool subnormal = a < 0x38800000u;
  const float low = subnormal ? float(std::int32_t(magnitude * 0x1p24f)) * 0x1p-24f
                              : float_of(a & ~0x1FFFu);
  const float ulp = subnormal ? 0x1p-24f : float_of((a & 0x7F800000u) - (10u << 23));
  const float threshold = float(random >> 8) * 0x1p-24f * ulp;  // uniform in [0, ulp)
  const float rounded = low + ((magnitude - low) > threshold ? ulp : 0.0f);
  // >= 65536, Inf and NaN: the conversion gives Inf or NaN.
  const float result = a >= 0x47800000u ? magnitude : rounded;
  return float_of(bits_of(result) | (u & 0x80000000u));
}

// ---- Storage types of the fused mixed-precision loops: load(ptr, i) -> float,
// store<kStochastic>(ptr, i, value, random). float16 uses the portable conversion here
// (integer lane ops, so the fused loops vectorize on every ISA).

struct Float32Storage {
  using raw = float;
  static float load(const raw* p, std::size_t i) { return p[i]; }
  template <bool kStochastic>
  static void store(raw* p, std::size_t i, float x, std::uint32_t) { p[i] = x; }
  static constexpr bool kRounds = false;
};

struct Bfloat16Storage {
  using raw = std::uint16_t;
  static float load(const raw* p, std::size_t i) { return bf16_to_float(p[i]); }
  template <bool kStochastic>
  static void store(raw* p, std::size_t i, float x, std::uint32_t random) {
    p[i] = kStochastic ? bf16_round_stochastic(x, random) : bf16_round_nearest(x);
  }
  static constexpr bool kRounds = true;
};

struct Float16Storage {
  using raw = std::uint16_t;
  static float load(const raw* p, std::size_t i) { return f16_to_float(p[i]); }
  template <bool kStochastic>
  static void store(raw* p, std::size_t i, float x, std::uint32_t random) {
    p[i] = f16_round_nearest(kStochastic ? f16_stochastic_value(x, random) : x);
  }
  static constexpr bool kRounds = true;
};

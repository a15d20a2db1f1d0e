// The 16-bit conversions, compiled once per ISA (see CMakeLists.txt) like isa_table.cpp.
// The loops are plain element loops the compiler vectorizes (integer ops on 32-bit
// lanes); float16 uses the F16C instructions where the ISA has them (AVX2 and AVX-512
// builds), the portable conversion of storage.hpp otherwise: both give the same bits.
#include "isa_tu.hpp"

#include "fusedops/mixed.hpp"

namespace fusedops {
namespace FUSEDOPS_ISA_NS {
namespace {
#include "simd_common.hpp"
#include "storage.hpp"
#include "lanes.hpp"

void widen_bf16(const std::uint16_t* __restrict src, float* __restrict dst, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) dst[i] = bf16_to_float(src[i]);
}

void widen_split(const std::uint16_t* __restrict hi, const std::uint16_t* __restrict lo,
                 float* __restrict dst, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) dst[i] = float_of(std::uint32_t(hi[i]) << 16 | lo[i]);
}

void split(const float* __restrict src, std::uint16_t* __restrict hi,
           std::uint16_t* __restrict lo, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t u = bits_of(src[i]);
    hi[i] = std::uint16_t(u >> 16);
    lo[i] = std::uint16_t(u);
  }
}

// With AVX2, two registers per step and one pack for both (lanes.hpp; the loop GCC
// vectorizes narrows each register on its own, with twice the instructions). AMD EPYC
// Zen 3, 2 threads, in-process A/B, same bits: the master-weights flow (float32 Adam,
// bfloat16 grads, bfloat16 copy) 0.83x the time at 256K elements, 0.97x at 16M (from
// memory); with stochastic rounding 0.86x and 0.84x.
void narrow_bf16(const float* __restrict src, std::uint16_t* __restrict dst, std::size_t n,
                 const RoundingKey* key, std::uint32_t first) {
  std::size_t i = 0;
#if FUSEDOPS_LANE_PAIRS
  constexpr std::size_t kStep = 2 * kRegLanes;
  if (key == nullptr) {
    for (; i + kStep <= n; i += kStep) {
      store_bf16_pair<false, false>(dst + i, load_floats(src + i), load_floats(src + i + kRegLanes));
    }
  } else {
    RegBits a, b;
    pair_order<false>(first, a, b);
    for (; i + kStep <= n; i += kStep) {
      const std::uint32_t at = std::uint32_t(i);
      store_bf16_pair<false, true>(dst + i, load_floats(src + i), load_floats(src + i + kRegLanes),
                                   random_bits(key->k0, key->k1, a + at),
                                   random_bits(key->k0, key->k1, b + at));
    }
  }
#endif
  if (key == nullptr) {
    for (; i < n; ++i) dst[i] = bf16_round_nearest(src[i]);
    return;
  }
  const std::uint32_t k0 = key->k0, k1 = key->k1;
  for (; i < n; ++i) {
    dst[i] = bf16_round_stochastic(src[i], random_bits(k0, k1, first + std::uint32_t(i)));
  }
}

#if defined(__AVX512F__)
void widen_f16(const std::uint16_t* __restrict src, float* __restrict dst, std::size_t n) {
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);
}

void f16_from_floats(const float* __restrict src, std::uint16_t* __restrict dst, std::size_t n) {
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), h);
  }
  for (; i < n; ++i) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}
#elif defined(__F16C__)
void widen_f16(const std::uint16_t* __restrict src, float* __restrict dst, std::size_t n) {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);
}

void f16_from_floats(const float* __restrict src, std::uint16_t* __restrict dst, std::size_t n) {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  for (; i < n; ++i) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}
#else
void widen_f16(const std::uint16_t* __restrict src, float* __restrict dst, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) dst[i] = f16_to_float(src[i]);
}

void f16_from_floats(const float* __restrict src, std::uint16_t* __restrict dst, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) dst[i] = f16_round_nearest(src[i]);
}
#endif

// Blocks of the runtime are at most this long; longer ranges are converted piecewise.
constexpr std::size_t kPiece = 512;

void narrow_f16(const float* __restrict src, std::uint16_t* __restrict dst, std::size_t n,
                const RoundingKey* key, std::uint32_t first) {
  if (key == nullptr) {
    f16_from_floats(src, dst, n);
    return;
  }
  // The stochastically chosen value is exact in binary16, so its conversion is exact.
  alignas(64) float chosen[kPiece];
  const std::uint32_t k0 = key->k0, k1 = key->k1;
  for (std::size_t b = 0; b < n; b += kPiece) {
    const std::size_t m = n - b < kPiece ? n - b : kPiece;
    const std::uint32_t base = first + std::uint32_t(b);
    for (std::size_t i = 0; i < m; ++i) {
      chosen[i] = f16_stochastic_value(src[b + i], random_bits(k0, k1, base + std::uint32_t(i)));
    }
    f16_from_floats(chosen, dst + b, m);
  }
}

// narrow_bf16 / narrow_f16 written with non-temporal stores (write_blocks): whole lines
// from the first line boundary of dst on, partial lines at either end with ordinary
// stores; the bits are those of the plain versions. The caller fences (stream_fence).
void narrow_bf16_stream(const float* __restrict src, std::uint16_t* __restrict dst,
                        std::size_t n, const RoundingKey* key, std::uint32_t first) {
  write_blocks<true>(dst, n, [&](std::uint16_t* __restrict out, std::size_t b, std::size_t count) {
    narrow_bf16(src + b, out, count, key, first + std::uint32_t(b));
  });
}

void narrow_f16_stream(const float* __restrict src, std::uint16_t* __restrict dst,
                       std::size_t n, const RoundingKey* key, std::uint32_t first) {
  write_blocks<true>(dst, n, [&](std::uint16_t* __restrict out, std::size_t b, std::size_t count) {
    narrow_f16(src + b, out, count, key, first + std::uint32_t(b));
  });
}

constexpr ConvertKernels kConvert{&widen_bf16,         &widen_f16,         &widen_split,
                                  &narrow_bf16,        &narrow_f16,        &split,
                                  &narrow_bf16_stream, &narrow_f16_stream, &stream_fence};
}  // namespace

const ConvertKernels& convert_kernels() { return kConvert; }

}  // namespace FUSEDOPS_ISA_NS
}  // namespace fusedops

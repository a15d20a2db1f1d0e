// Batch norm on bfloat16 and float16 data (float32 compute, double sums), compiled once
// per ISA like isa_table.cpp and once more as `avx512bf16` (see CMakeLists.txt): the
// element adaptors of batch_norm_kernels.hpp for the pivots, the register loops of
// bn16_kernels.hpp for every pass.
#include "isa_tu.hpp"

#include "fusedops/mixed.hpp"

namespace fusedops {
namespace FUSEDOPS_ISA_NS {
namespace {
#include "simd_common.hpp"
#include "storage.hpp"
#include "lanes.hpp"
#include "batch_norm_kernels.hpp"
#include "bn16_kernels.hpp"

// Batch norm storage adaptors (batch_norm_kernels.hpp) of the 16-bit dtypes: exact
// widening, rounding to nearest even, lanes of doubles for the slab reductions.
struct BnBf16 {
  using raw = std::uint16_t;
  using value = float;
  static float load(const raw* p, std::size_t i) { return bf16_to_float(p[i]); }
  static raw narrow(float v) { return bf16_round_nearest(v); }
  static Lanes lanes(const raw* p) {
#if defined(__AVX512F__)
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return Lanes(_mm512_cvtps_pd(_mm256_castsi256_ps(_mm256_slli_epi32(w, 16))));
#elif defined(__AVX2__)
    const __m128i w = _mm_cvtepu16_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    return Lanes(_mm256_cvtps_pd(_mm_castsi128_ps(_mm_slli_epi32(w, 16))));
#else
    Lanes d;
    for (std::size_t k = 0; k < kLaneWidth; ++k) d[k] = double(bf16_to_float(p[k]));
    return d;
#endif
  }
};

struct BnF16 {
  using raw = std::uint16_t;
  using value = float;
  static float load(const raw* p, std::size_t i) { return f16_to_float(p[i]); }
  static raw narrow(float v) { return f16_round_nearest(v); }
  static Lanes lanes(const raw* p) {
#if defined(__AVX512F__)
    return Lanes(_mm512_cvtps_pd(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))));
#elif defined(__F16C__)
    return Lanes(_mm256_cvtps_pd(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))));
#else
    Lanes d;
    for (std::size_t k = 0; k < kLaneWidth; ++k) d[k] = double(f16_to_float(p[k]));
    return d;
#endif
  }
};

constexpr BatchNorm16Kernels kBatchNorm16{bn16_kernels<BnBf16, RegBf16>(),
                                          bn16_kernels<BnF16, RegF16>()};
}  // namespace

const BatchNorm16Kernels& batch_norm16_kernels() { return kBatchNorm16; }

}  // namespace FUSEDOPS_ISA_NS
}  // namespace fusedops

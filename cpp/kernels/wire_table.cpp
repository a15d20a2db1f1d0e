// The 16-bit wire kernels, compiled once per ISA (see CMakeLists.txt) like isa_table.cpp.
// bfloat16 widens inline (a shift the compiler vectorizes); float16 goes through the
// same ISA's conversions (F16C where the ISA has it), so both formats round exactly as
// the optimizer steps do.
#include "isa_tu.hpp"

#include "fusedops/mixed.hpp"
#include "fusedops/wire.hpp"

namespace fusedops {
namespace FUSEDOPS_ISA_NS {
namespace {
#include "storage.hpp"
#include "wire_kernels.hpp"

void mean_rows_bf16(const std::uint16_t* const* rows, std::size_t n_rows, std::size_t begin,
                    std::size_t n, std::uint16_t* out) {
  mean_rows(
      rows, n_rows, begin, n, out,
      [](const std::uint16_t* __restrict src, float* __restrict sum, std::size_t m) {
        for (std::size_t i = 0; i < m; ++i) sum[i] = bf16_to_float(src[i]);
      },
      [](const std::uint16_t* __restrict src, float* __restrict sum, std::size_t m) {
        for (std::size_t i = 0; i < m; ++i) sum[i] += bf16_to_float(src[i]);
      },
      [](const float* __restrict sum, std::uint16_t* __restrict dst, std::size_t m) {
        for (std::size_t i = 0; i < m; ++i) dst[i] = bf16_round_nearest(sum[i]);
      });
}

void mean_rows_f16(const std::uint16_t* const* rows, std::size_t n_rows, std::size_t begin,
                   std::size_t n, std::uint16_t* out) {
  const ConvertKernels& cv = convert_kernels();
  alignas(64) float row[kWireBlock];
  mean_rows(
      rows, n_rows, begin, n, out,
      [&](const std::uint16_t* src, float* sum, std::size_t m) { cv.widen_f16(src, sum, m); },
      [&](const std::uint16_t* src, float* __restrict sum, std::size_t m) {
        cv.widen_f16(src, row, m);
        for (std::size_t i = 0; i < m; ++i) sum[i] += row[i];
      },
      [&](const float* sum, std::uint16_t* dst, std::size_t m) {
        cv.narrow_f16(sum, dst, m, nullptr, 0);
      });
}

constexpr WireKernels kWire{&mean_rows_bf16, &mean_rows_f16};
}  // namespace

const WireKernels& wire_kernels() { return kWire; }

}  // namespace FUSEDOPS_ISA_NS
}  // namespace fusedops

// 16-bit gradients on the wire (fusedops.distributed): each rank receives every rank's
// copy of its block as raw 16-bit values and averages them with one native call. No
// pybind11 here, no MPI anywhere in C++.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fusedops/fusedops.hpp"

namespace fusedops {

// out[i] = round16(sum_r rows[r][i] / n_rows) for i in [begin, begin + n): the sum is
// taken in float32 in row order (r = 0, 1, ...), divided by n_rows in float32 (one
// correctly rounded division) and rounded to nearest even into the 16-bit format; NaN
// and Inf propagate. The same bits for any ISA and thread count. out may be one of the
// rows (each block of elements is read before it is written), and may not otherwise
// overlap them.
struct WireKernels {
  void (*mean_rows_bf16)(const std::uint16_t* const* rows, std::size_t n_rows, std::size_t begin,
                         std::size_t n, std::uint16_t* out);
  void (*mean_rows_f16)(const std::uint16_t* const* rows, std::size_t n_rows, std::size_t begin,
                        std::size_t n, std::uint16_t* out);
};

namespace scalar { const WireKernels& wire_kernels(); }
namespace avx2 { const WireKernels& wire_kernels(); }
namespace avx512 { const WireKernels& wire_kernels(); }

// The kernel above over rows of n elements, dtype bf16 or f16, with the current ISA, in
// one parallel region.
void mean_rows_16bit(const std::uint16_t* const* rows, std::size_t n_rows, std::size_t n,
                     std::uint16_t* out, Dtype dtype);

}  // namespace fusedops

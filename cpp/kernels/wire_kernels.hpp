// The averaging kernel of 16-bit gradients on the wire (fusedops/wire.hpp). Included
// only inside the per-ISA namespace of cpp/kernels/wire_table.cpp, after storage.hpp.
// An L1 block of float32 sums is built row by row (in row order: every rank computes the
// same bits), divided by the row count and rounded once into the 16-bit output.
#pragma once

// Elements per block: the float sums and one widened row fit in L1 on any x86 core.
constexpr std::size_t kWireBlock = 1024;

// Widen(src, dst, n): n 16-bit values to float; Narrow(src, dst, n): float to 16-bit,
// round to nearest even.
template <class Widen, class Narrow>
void mean_rows(const std::uint16_t* __restrict rows, std::size_t stride, std::size_t n_rows,
               std::size_t n, std::uint16_t* __restrict out, const Widen& widen,
               const Narrow& narrow) {
  alignas(64) float sum[kWireBlock];
  alignas(64) float row[kWireBlock];
  const float count = float(n_rows);
  for (std::size_t b = 0; b < n; b += kWireBlock) {
    const std::size_t m = n - b < kWireBlock ? n - b : kWireBlock;
    widen(rows + b, sum, m);
    for (std::size_t r = 1; r < n_rows; ++r) {
      widen(rows + r * stride + b, row, m);
      for (std::size_t i = 0; i < m; ++i) sum[i] += row[i];
    }
    for (std::size_t i = 0; i < m; ++i) sum[i] /= count;
    narrow(sum, out + b, m);
  }
}

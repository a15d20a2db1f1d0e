// The averaging kernel of 16-bit gradients on the wire (fusedops/wire.hpp). Included
// only inside the per-ISA namespace of cpp/kernels/wire_table.cpp, after storage.hpp.
// An L1 block of float32 sums is built row by row (in row order: every rank computes the
// same bits), divided by the row count and rounded once into the 16-bit output.
#pragma once

// Elements per block: the float sums and one widened row fit in L1 on any x86 core.
constexpr std::size_t kWireBlock = 1024;

// add(src, sum, m): sum[i] += the float value of src[i]; first(src, sum, m): sum[i] = it;
// narrow(sum, dst, m): round to nearest even into dst.
template <class First, class Add, class Narrow>
void mean_rows(const std::uint16_t* const* rows, std::size_t n_rows, std::size_t begin,
               std::size_t n, std::uint16_t* out, const First& first, const Add& add,
               const Narrow& narrow) {
  alignas(64) float sum[kWireBlock];
  const float count = float(n_rows);
  for (std::size_t b = begin; b < begin + n; b += kWireBlock) {
    const std::size_t m = begin + n - b < kWireBlock ? begin + n - b : kWireBlock;
    first(rows[0] + b, sum, m);
    for (std::size_t r = 1; r < n_rows; ++r) add(rows[r] + b, sum, m);
    for (std::size_t i = 0; i < m; ++i) sum[i] /= count;
    narrow(sum, out + b, m);  // out may be a row: this block of every row was read above
  }
}

// Batch-norm loops, written once and compiled per ISA.
//
// The runtime views x as (outer, C, inner) and runs one of two loop shapes:
// - slab loops walk one contiguous run of a single channel (channel-first layouts: a
//   block of the spatial extent of one (n, c));
// - row loops walk `rows` rows of `cols` contiguous values whose column j belongs to a
//   channel the runtime knows (channel-last layouts, and channel-first layouts whose
//   spatial extent is too short for slabs); per-column constants arrive as arrays.
// Every sum is accumulated in double; statistics are taken around a per-channel pivot
// (a value of the channel), so a large mean does not cancel the small spread.
#pragma once

// Included by isa_table.cpp inside its per-ISA namespace.
#include "simd_common.hpp"

// Independent accumulators per slab reduction. With 16 double lanes GCC vectorizes
// across loop iterations and transposes (slower than scalar code); 32 keep the loop a
// plain vertical one on every ISA.
template <class T>
constexpr std::size_t kSlabLanes = sizeof(T) == 8 ? 32 : 16;

// sums[0] = sum(x - pivot), sums[1] = sum((x - pivot)^2) over one slab run.
template <class T>
void bn_slab_stats(const T* __restrict x, std::size_t n, double pivot, double* sums) {
  constexpr std::size_t kLanes = kSlabLanes<T>;
  double s1[kLanes] = {}, s2[kLanes] = {};
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (std::size_t j = 0; j < kLanes; ++j) {
      const double d = double(x[i + j]) - pivot;
      s1[j] += d;
      s2[j] += d * d;
    }
  }
  for (std::size_t j = 0; i < n; ++i, ++j) {
    const double d = double(x[i]) - pivot;
    s1[j] += d;
    s2[j] += d * d;
  }
  for (std::size_t width = kLanes / 2; width > 0; width /= 2) {
    for (std::size_t j = 0; j < width; ++j) {
      s1[j] += s1[j + width];
      s2[j] += s2[j + width];
    }
  }
  sums[0] = s1[0];
  sums[1] = s2[0];
}

// sums[0] = sum(dy), sums[1] = sum(dy * (x - mean)) over one slab run.
template <class T>
void bn_slab_grad_sums(const T* __restrict dy, const T* __restrict x, std::size_t n,
                       double mean, double* sums) {
  constexpr std::size_t kLanes = kSlabLanes<T>;
  double s1[kLanes] = {}, s2[kLanes] = {};
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (std::size_t j = 0; j < kLanes; ++j) {
      const double g = double(dy[i + j]);
      s1[j] += g;
      s2[j] += g * (double(x[i + j]) - mean);
    }
  }
  for (std::size_t j = 0; i < n; ++i, ++j) {
    const double g = double(dy[i]);
    s1[j] += g;
    s2[j] += g * (double(x[i]) - mean);
  }
  for (std::size_t width = kLanes / 2; width > 0; width /= 2) {
    for (std::size_t j = 0; j < width; ++j) {
      s1[j] += s1[j + width];
      s2[j] += s2[j + width];
    }
  }
  sums[0] = s1[0];
  sums[1] = s2[0];
}

// y = ((x - mean_hi) - mean_lo) * scale + shift. The mean is split in two values of T
// (mean_lo = 0 in double, or when the mean is already a value of T): x - mean_hi is
// exact near the mean, so float32 output keeps its precision when |mean| >> std.
// `stream` writes with non-temporal stores (see write_values); the caller fences.
template <class T, bool kStream>
void bn_slab_normalize_loop(const T* __restrict x, T* __restrict y, std::size_t n, T mean_hi,
                            T mean_lo, T scale, T shift) {
  write_values<kStream>(y, n, [=](std::size_t i) {
    return ((x[i] - mean_hi) - mean_lo) * scale + shift;
  });
}

template <class T>
void bn_slab_normalize(const T* x, T* y, std::size_t n, T mean_hi, T mean_lo, T scale, T shift,
                       bool stream) {
  with_flags([&](auto s) { bn_slab_normalize_loop<T, s>(x, y, n, mean_hi, mean_lo, scale, shift); },
             stream);
}

// dx = dy * k_dy + (x - mean) * k_x + k_0; kCentered = false drops the x terms (eval).
template <class T, bool kCentered, bool kStream>
void bn_slab_dx_loop(const T* __restrict dy, const T* __restrict x, T* __restrict dx,
                     std::size_t n, T k_dy, T mean, T k_x, T k_0) {
  write_values<kStream>(dx, n, [=](std::size_t i) {
    return kCentered ? dy[i] * k_dy + ((x[i] - mean) * k_x + k_0) : dy[i] * k_dy;
  });
}

template <class T>
void bn_slab_dx(const T* dy, const T* x, T* dx, std::size_t n, T k_dy, T mean, T k_x, T k_0,
                bool centered, bool stream) {
  with_flags(
      [&](auto c, auto s) { bn_slab_dx_loop<T, c, s>(dy, x, dx, n, k_dy, mean, k_x, k_0); },
      centered, stream);
}

// Rows are `stride` apart; the block covers `cols` columns of each. The columns are taken
// kRowColTile at a time, and the rows kRowBlock<T> at a time: a row block is summed in T
// (four rows combined before touching the block sums, which stay in L1), then added to
// the double accumulators. Converting every float to double made the float32 passes
// compute-bound; a block of 16 float32 terms loses at most a few units in the 7th digit
// of the block's sum of magnitudes, and the blocks still accumulate in double. double
// data needs no blocks: all its rows are one block.
constexpr std::size_t kRowUnroll = 4;
template <class T>
constexpr std::size_t kRowBlock = sizeof(T) < sizeof(double) ? 16 : ~std::size_t(0);
constexpr std::size_t kRowColTile = 256;

// For every row block [r0, r1) of every column tile [c0, c0 + n): sum_block(r0, r1, c0, n,
// s1, s2) sums the block into s1, s2 (zeroed), then add_block(r0, r1, c0, n, s1, s2) adds
// them to first, second. prepare(c0, n) runs before the tile's first block.
template <class T, class Prepare, class SumBlock, class AddBlock>
inline void bn_rows_blocked(std::size_t rows, std::size_t cols, double* __restrict first,
                            double* __restrict second, const Prepare& prepare,
                            const SumBlock& sum_block, const AddBlock& add_block) {
  for (std::size_t j = 0; j < cols; ++j) first[j] = second[j] = 0.0;
  for (std::size_t c0 = 0; c0 < cols; c0 += kRowColTile) {
    const std::size_t n = cols - c0 < kRowColTile ? cols - c0 : kRowColTile;
    prepare(c0, n);
    for (std::size_t r0 = 0, r1; r0 < rows; r0 = r1) {
      r1 = rows - r0 < kRowBlock<T> ? rows : r0 + kRowBlock<T>;
      alignas(64) T s1[kRowColTile], s2[kRowColTile];
      for (std::size_t j = 0; j < n; ++j) s1[j] = s2[j] = T(0);
      sum_block(r0, r1, c0, n, s1, s2);
      add_block(r0, r1, c0, n, s1, s2);
    }
  }
}

// sum[j] = sum over rows of (x - pivot[j]), sum_sq[j] of its square. A block is summed in
// T around its own first row (a value of the column near the block's values, so a pivot
// far from the data costs no float32 precision) and moved to the pivot in double:
// sum (x - p) = s1 + n (b - p), sum (x - p)^2 = s2 + (b - p) (2 s1 + n (b - p)).
template <class T>
void bn_rows_stats(const T* __restrict x, std::size_t rows, std::size_t stride,
                   std::size_t cols, const double* __restrict pivot, double* __restrict sum,
                   double* __restrict sum_sq) {
  bn_rows_blocked<T>(
      rows, cols, sum, sum_sq, [](std::size_t, std::size_t) {},
      [&](std::size_t r0, std::size_t r1, std::size_t c0, std::size_t n, T* __restrict s1,
          T* __restrict s2) {
        const T* __restrict p = x + r0 * stride + c0;
        std::size_t r = r0;
        for (; r + kRowUnroll <= r1; r += kRowUnroll) {
          const T* __restrict x0 = x + r * stride + c0;
          const T* __restrict x1 = x0 + stride;
          const T* __restrict x2 = x1 + stride;
          const T* __restrict x3 = x2 + stride;
          for (std::size_t j = 0; j < n; ++j) {
            const T d0 = x0[j] - p[j], d1 = x1[j] - p[j];
            const T d2 = x2[j] - p[j], d3 = x3[j] - p[j];
            s1[j] += (d0 + d1) + (d2 + d3);
            s2[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
          }
        }
        for (; r < r1; ++r) {
          const T* __restrict xr = x + r * stride + c0;
          for (std::size_t j = 0; j < n; ++j) {
            const T d = xr[j] - p[j];
            s1[j] += d;
            s2[j] += d * d;
          }
        }
      },
      [&](std::size_t r0, std::size_t r1, std::size_t c0, std::size_t n,
          const T* __restrict s1, const T* __restrict s2) {
        const T* __restrict p = x + r0 * stride + c0;
        const double count = double(r1 - r0);
        for (std::size_t j = 0; j < n; ++j) {
          const double shift = double(p[j]) - pivot[c0 + j];
          const double first = double(s1[j]);
          sum[c0 + j] += first + count * shift;
          sum_sq[c0 + j] += double(s2[j]) + shift * (2.0 * first + count * shift);
        }
      });
}

// sum_dy[j] = sum over rows of dy, sum_dyx[j] of dy * (x - mean[j]); mean[j] is a value
// of T.
template <class T>
void bn_rows_grad_sums(const T* __restrict dy, const T* __restrict x, std::size_t rows,
                       std::size_t stride, std::size_t cols, const double* __restrict mean,
                       double* __restrict sum_dy, double* __restrict sum_dyx) {
  alignas(64) T m[kRowColTile];
  bn_rows_blocked<T>(
      rows, cols, sum_dy, sum_dyx,
      [&](std::size_t c0, std::size_t n) {
        for (std::size_t j = 0; j < n; ++j) m[j] = T(mean[c0 + j]);
      },
      [&](std::size_t r0, std::size_t r1, std::size_t c0, std::size_t n, T* __restrict s1,
          T* __restrict s2) {
        std::size_t r = r0;
        for (; r + kRowUnroll <= r1; r += kRowUnroll) {
          const std::size_t o = r * stride + c0;
          const T* __restrict g0 = dy + o;
          const T* __restrict x0 = x + o;
          for (std::size_t j = 0; j < n; ++j) {
            const T a0 = g0[j], a1 = g0[j + stride];
            const T a2 = g0[j + 2 * stride], a3 = g0[j + 3 * stride];
            const T d0 = x0[j] - m[j], d1 = x0[j + stride] - m[j];
            const T d2 = x0[j + 2 * stride] - m[j], d3 = x0[j + 3 * stride] - m[j];
            s1[j] += (a0 + a1) + (a2 + a3);
            s2[j] += (a0 * d0 + a1 * d1) + (a2 * d2 + a3 * d3);
          }
        }
        for (; r < r1; ++r) {
          const T* __restrict gr = dy + r * stride + c0;
          const T* __restrict xr = x + r * stride + c0;
          for (std::size_t j = 0; j < n; ++j) {
            s1[j] += gr[j];
            s2[j] += gr[j] * (xr[j] - m[j]);
          }
        }
      },
      [&](std::size_t, std::size_t, std::size_t c0, std::size_t n, const T* __restrict s1,
          const T* __restrict s2) {
        for (std::size_t j = 0; j < n; ++j) {
          sum_dy[c0 + j] += double(s1[j]);
          sum_dyx[c0 + j] += double(s2[j]);
        }
      });
}

template <class T, bool kStream>
void bn_rows_normalize_loop(const T* __restrict x, T* __restrict y, std::size_t rows,
                            std::size_t stride, std::size_t cols, const T* __restrict mean_hi,
                            const T* __restrict mean_lo, const T* __restrict scale,
                            const T* __restrict shift) {
  for (std::size_t r = 0; r < rows; ++r) {
    const T* __restrict xr = x + r * stride;
    write_values<kStream>(y + r * stride, cols, [=](std::size_t j) {
      return ((xr[j] - mean_hi[j]) - mean_lo[j]) * scale[j] + shift[j];
    });
  }
}

template <class T>
void bn_rows_normalize(const T* x, T* y, std::size_t rows, std::size_t stride, std::size_t cols,
                       const T* mean_hi, const T* mean_lo, const T* scale, const T* shift,
                       bool stream) {
  with_flags(
      [&](auto s) {
        bn_rows_normalize_loop<T, s>(x, y, rows, stride, cols, mean_hi, mean_lo, scale, shift);
      },
      stream);
}

template <class T, bool kCentered, bool kStream>
void bn_rows_dx_loop(const T* __restrict dy, const T* __restrict x, T* __restrict dx,
                     std::size_t rows, std::size_t stride, std::size_t cols,
                     const T* __restrict k_dy, const T* __restrict mean,
                     const T* __restrict k_x, const T* __restrict k_0) {
  for (std::size_t r = 0; r < rows; ++r) {
    const T* __restrict gr = dy + r * stride;
    const T* __restrict xr = x + r * stride;
    write_values<kStream>(dx + r * stride, cols, [=](std::size_t j) {
      return kCentered ? gr[j] * k_dy[j] + ((xr[j] - mean[j]) * k_x[j] + k_0[j])
                       : gr[j] * k_dy[j];
    });
  }
}

template <class T>
void bn_rows_dx(const T* dy, const T* x, T* dx, std::size_t rows, std::size_t stride,
                std::size_t cols, const T* k_dy, const T* mean, const T* k_x, const T* k_0,
                bool centered, bool stream) {
  with_flags(
      [&](auto c, auto s) {
        bn_rows_dx_loop<T, c, s>(dy, x, dx, rows, stride, cols, k_dy, mean, k_x, k_0);
      },
      centered, stream);
}

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

// Two sums over one slab run, kSlabLanes<T> independent accumulators each, combined
// pairwise in a fixed order: add(i, s1, s2) adds element i's terms to its lane's sums.
template <class T, class AddTerms>
void bn_slab_sum_pair(std::size_t n, const AddTerms& add, double* sums) {
  constexpr std::size_t kLanes = kSlabLanes<T>;
  double s1[kLanes] = {}, s2[kLanes] = {};
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (std::size_t j = 0; j < kLanes; ++j) add(i + j, s1[j], s2[j]);
  }
  for (std::size_t j = 0; i < n; ++i, ++j) add(i, s1[j], s2[j]);
  for (std::size_t width = kLanes / 2; width > 0; width /= 2) {
    for (std::size_t j = 0; j < width; ++j) {
      s1[j] += s1[j + width];
      s2[j] += s2[j + width];
    }
  }
  sums[0] = s1[0];
  sums[1] = s2[0];
}

// sums[0] = sum(x - pivot), sums[1] = sum((x - pivot)^2) over one slab run.
template <class T>
void bn_slab_stats(const T* __restrict x, std::size_t n, double pivot, double* sums) {
  bn_slab_sum_pair<T>(n, [x, pivot](std::size_t i, double& s1, double& s2) {
    const double d = double(x[i]) - pivot;
    s1 += d;
    s2 += d * d;
  }, sums);
}

// sums[0] = sum(dy), sums[1] = sum(dy * (x - mean)) over one slab run.
template <class T>
void bn_slab_grad_sums(const T* __restrict dy, const T* __restrict x, std::size_t n,
                       double mean, double* sums) {
  bn_slab_sum_pair<T>(n, [dy, x, mean](std::size_t i, double& s1, double& s2) {
    const double g = double(dy[i]);
    s1 += g;
    s2 += g * (double(x[i]) - mean);
  }, sums);
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

// dx = dy * k_dy + ((x - mean_hi) - mean_lo) * k_x + k_0; kCentered = false drops the x
// terms (eval). The split mean keeps x - mean exact near a large mean, as in the forward.
template <class T, bool kCentered, bool kStream>
void bn_slab_dx_loop(const T* __restrict dy, const T* __restrict x, T* __restrict dx,
                     std::size_t n, T k_dy, T mean_hi, T mean_lo, T k_x, T k_0) {
  write_values<kStream>(dx, n, [=](std::size_t i) {
    return kCentered ? dy[i] * k_dy + (((x[i] - mean_hi) - mean_lo) * k_x + k_0)
                     : dy[i] * k_dy;
  });
}

template <class T>
void bn_slab_dx(const T* dy, const T* x, T* dx, std::size_t n, T k_dy, T mean_hi, T mean_lo,
                T k_x, T k_0, bool centered, bool stream) {
  with_flags(
      [&](auto c, auto s) {
        bn_slab_dx_loop<T, c, s>(dy, x, dx, n, k_dy, mean_hi, mean_lo, k_x, k_0);
      },
      centered, stream);
}

// Rows are `stride` apart; the block covers `cols` columns of each. Four rows are
// combined before touching the accumulators, which live in memory (one per column).
constexpr std::size_t kRowUnroll = 4;

// sum[j] = sum over rows of (x - pivot[j]), sum_sq[j] of its square.
template <class T>
void bn_rows_stats(const T* __restrict x, std::size_t rows, std::size_t stride,
                   std::size_t cols, const double* __restrict pivot, double* __restrict sum,
                   double* __restrict sum_sq) {
  for (std::size_t j = 0; j < cols; ++j) sum[j] = sum_sq[j] = 0.0;
  std::size_t r = 0;
  for (; r + kRowUnroll <= rows; r += kRowUnroll) {
    const T* __restrict x0 = x + r * stride;
    const T* __restrict x1 = x0 + stride;
    const T* __restrict x2 = x1 + stride;
    const T* __restrict x3 = x2 + stride;
    for (std::size_t j = 0; j < cols; ++j) {
      const double p = pivot[j];
      const double d0 = double(x0[j]) - p, d1 = double(x1[j]) - p;
      const double d2 = double(x2[j]) - p, d3 = double(x3[j]) - p;
      sum[j] += (d0 + d1) + (d2 + d3);
      sum_sq[j] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
    }
  }
  for (; r < rows; ++r) {
    const T* __restrict xr = x + r * stride;
    for (std::size_t j = 0; j < cols; ++j) {
      const double d = double(xr[j]) - pivot[j];
      sum[j] += d;
      sum_sq[j] += d * d;
    }
  }
}

// sum_dy[j] = sum over rows of dy, sum_dyx[j] of dy * (x - mean[j]).
template <class T>
void bn_rows_grad_sums(const T* __restrict dy, const T* __restrict x, std::size_t rows,
                       std::size_t stride, std::size_t cols, const double* __restrict mean,
                       double* __restrict sum_dy, double* __restrict sum_dyx) {
  for (std::size_t j = 0; j < cols; ++j) sum_dy[j] = sum_dyx[j] = 0.0;
  std::size_t r = 0;
  for (; r + kRowUnroll <= rows; r += kRowUnroll) {
    const std::size_t o = r * stride;
    const T* __restrict g0 = dy + o;
    const T* __restrict x0 = x + o;
    for (std::size_t j = 0; j < cols; ++j) {
      const double m = mean[j];
      const double a0 = double(g0[j]), a1 = double(g0[j + stride]);
      const double a2 = double(g0[j + 2 * stride]), a3 = double(g0[j + 3 * stride]);
      const double d0 = double(x0[j]) - m, d1 = double(x0[j + stride]) - m;
      const double d2 = double(x0[j + 2 * stride]) - m, d3 = double(x0[j + 3 * stride]) - m;
      sum_dy[j] += (a0 + a1) + (a2 + a3);
      sum_dyx[j] += (a0 * d0 + a1 * d1) + (a2 * d2 + a3 * d3);
    }
  }
  for (; r < rows; ++r) {
    const T* __restrict gr = dy + r * stride;
    const T* __restrict xr = x + r * stride;
    for (std::size_t j = 0; j < cols; ++j) {
      const double g = double(gr[j]);
      sum_dy[j] += g;
      sum_dyx[j] += g * (double(xr[j]) - mean[j]);
    }
  }
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
                     const T* __restrict k_dy, const T* __restrict mean_hi,
                     const T* __restrict mean_lo, const T* __restrict k_x,
                     const T* __restrict k_0) {
  for (std::size_t r = 0; r < rows; ++r) {
    const T* __restrict gr = dy + r * stride;
    const T* __restrict xr = x + r * stride;
    write_values<kStream>(dx + r * stride, cols, [=](std::size_t j) {
      return kCentered
                 ? gr[j] * k_dy[j] + (((xr[j] - mean_hi[j]) - mean_lo[j]) * k_x[j] + k_0[j])
                 : gr[j] * k_dy[j];
    });
  }
}

template <class T>
void bn_rows_dx(const T* dy, const T* x, T* dx, std::size_t rows, std::size_t stride,
                std::size_t cols, const T* k_dy, const T* mean_hi, const T* mean_lo,
                const T* k_x, const T* k_0, bool centered, bool stream) {
  with_flags(
      [&](auto c, auto s) {
        bn_rows_dx_loop<T, c, s>(dy, x, dx, rows, stride, cols, k_dy, mean_hi, mean_lo, k_x,
                                 k_0);
      },
      centered, stream);
}

// Optimizer update and gradient-norm loops, written once and compiled per ISA.
// Every loop is a single pass over memory; constants arrive precomputed in double and
// are rounded to T once per call. The compiler vectorizes the loops for the ISA of the
// translation unit; the remainder iterations run the same expression.
#pragma once

// Included by isa_table.cpp inside its per-ISA namespace.
#include "simd_common.hpp"

template <class T, bool kMomentum, bool kNesterov, bool kFirst, bool kDecay, bool kL1,
          bool kScaled>
void sgd_loop(const SgdConstants& c, T* __restrict p, const T* __restrict g,
              T* __restrict buf, std::size_t n) {
  const T lr = T(c.lr), momentum = T(c.momentum), damp = T(c.one_minus_dampening);
  const T wd = T(c.weight_decay), l1 = T(c.l1), divisor = T(c.grad_divisor);
  for (std::size_t i = 0; i < n; ++i) {
    const T pi = p[i];
    T d = kScaled ? g[i] / divisor : g[i];
    if (kDecay) d = d + wd * pi;
    if (kL1) d = d + l1 * sign_of(pi);
    if (kMomentum) {
      const T b = kFirst ? d : momentum * buf[i] + damp * d;
      buf[i] = b;
      d = kNesterov ? d + momentum * b : b;
    }
    p[i] = pi - lr * d;
  }
}

template <class T>
void sgd(const SgdConstants& c, T* p, const T* g, T* buf, std::size_t n) {
  with_flags(
      [&](auto mom, auto nest, auto first, auto decay, auto l1, auto scaled) {
        sgd_loop<T, mom, nest, first, decay, l1, scaled>(c, p, g, buf, n);
      },
      c.use_momentum, c.use_momentum && c.nesterov, c.use_momentum && c.first_step,
      c.use_weight_decay, c.use_l1, c.scaled);
}

template <class T, bool kDecoupled, bool kDecay, bool kL1, bool kAmsgrad, bool kScaled>
void adam_loop(const AdamConstants& c, T* __restrict p, const T* __restrict g,
               T* __restrict m, T* __restrict v, T* __restrict vmax, std::size_t n) {
  const T beta1 = T(c.beta1), omb1 = T(c.one_minus_beta1);
  const T beta2 = T(c.beta2), omb2 = T(c.one_minus_beta2);
  const T step_size = T(c.step_size), inv_sqrt_bc2 = T(c.inv_sqrt_bc2), eps = T(c.eps);
  const T wd = T(c.weight_decay), decay_factor = T(c.decay_factor), l1 = T(c.l1);
  const T divisor = T(c.grad_divisor);
  // Decoupled decay rounds p * decay_factor before the update subtracts from it, as
  // torch's p.mul_(1 - lr * wd) and the fused 16-bit lane loops (mixed_kernels.hpp) do:
  // without L1 (whose sign_of reads the decayed param), the product is formed after the
  // update term, so that GCC's contraction, which takes the multiplications in
  // statement order, fuses step_size * (m / denom) into the subtraction and leaves the
  // product rounded (formed first, it was fused instead: 1 ulp apart in a quarter of the
  // params). tests/test_bf16_lanes.py holds the two kinds of loops to the same bits.
  constexpr bool kDecayLate = kDecay && kDecoupled && !kL1;
  for (std::size_t i = 0; i < n; ++i) {
    T pi = p[i];
    T d = kScaled ? g[i] / divisor : g[i];
    if (kDecay && !kDecayLate) {
      if (kDecoupled) {
        pi = pi * decay_factor;
      } else {
        d = d + wd * pi;
      }
    }
    if (kL1) d = d + l1 * sign_of(pi);
    const T mi = beta1 * m[i] + omb1 * d;
    // (1 - beta2) * d first, as torch: d * d alone overflows float32 for |d| > 1.8e19.
    const T vi = beta2 * v[i] + (omb2 * d) * d;
    m[i] = mi;
    v[i] = vi;
    T second = vi;
    if (kAmsgrad) {
      const T old = vmax[i];
      second = (old >= vi || old != old) ? old : vi;  // NaN on either side propagates
      vmax[i] = second;
    }
    const T denom = sqrt_of(second) * inv_sqrt_bc2 + eps;
    const T update = step_size * (mi / denom);
    if (kDecayLate) pi = pi * decay_factor;
    p[i] = pi - update;
  }
}

template <class T>
void adam(const AdamConstants& c, T* p, const T* g, T* m, T* v, T* vmax, std::size_t n) {
  with_flags(
      [&](auto decoupled, auto decay, auto l1, auto amsgrad, auto scaled) {
        adam_loop<T, decoupled, decay, l1, amsgrad, scaled>(c, p, g, m, v, vmax, n);
      },
      c.decoupled, c.use_weight_decay, c.use_l1, c.amsgrad, c.scaled);
}

// Reductions keep kLanes independent accumulators (the compiler may not reassociate
// floating-point sums on its own), combined pairwise in a fixed order at the end.
constexpr std::size_t kLanes = 16;

template <class Op>
double lane_sum(const Op& term, std::size_t n) {
  double acc[kLanes] = {};
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (std::size_t j = 0; j < kLanes; ++j) acc[j] += term(i + j);
  }
  for (std::size_t j = 0; i < n; ++i, ++j) acc[j] += term(i);
  for (std::size_t width = kLanes / 2; width > 0; width /= 2) {
    for (std::size_t j = 0; j < width; ++j) acc[j] += acc[j + width];
  }
  return acc[0];
}

template <class T>
double sum_squares(const T* x, std::size_t n) {
  return lane_sum([x](std::size_t i) { const double d = double(x[i]); return d * d; }, n);
}

template <class T>
double sum_abs(const T* x, std::size_t n) {
  return lane_sum([x](std::size_t i) { return abs_of(double(x[i])); }, n);
}

template <class T>
double sum_abs_pow(const T* x, std::size_t n, double p) {
  return lane_sum([x, p](std::size_t i) { return __builtin_pow(abs_of(double(x[i])), p); }, n);
}

template <class T>
double max_abs(const T* x, std::size_t n) {
  T acc[kLanes] = {};
  T nan_probe[kLanes] = {};  // collects NaNs, which the comparisons above drop
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (std::size_t j = 0; j < kLanes; ++j) {
      const T a = abs_of(x[i + j]);
      acc[j] = acc[j] >= a ? acc[j] : a;
      nan_probe[j] += x[i + j] != x[i + j] ? x[i + j] : T(0);
    }
  }
  for (std::size_t j = 0; i < n; ++i, ++j) {
    const T a = abs_of(x[i]);
    acc[j] = acc[j] >= a ? acc[j] : a;
    nan_probe[j] += x[i] != x[i] ? x[i] : T(0);
  }
  T best = 0, probe = 0;
  for (std::size_t j = 0; j < kLanes; ++j) {
    best = best >= acc[j] ? best : acc[j];
    probe += nan_probe[j];
  }
  return double(best) + double(probe);
}

template <class T>
bool all_finite(const T* x, std::size_t n) {
  // x - x is 0 for finite x and NaN for NaN/Inf; NaN survives the sum.
  T acc[kLanes] = {};
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (std::size_t j = 0; j < kLanes; ++j) acc[j] += x[i + j] - x[i + j];
  }
  for (std::size_t j = 0; i < n; ++i, ++j) acc[j] += x[i] - x[i];
  T total = 0;
  for (std::size_t j = 0; j < kLanes; ++j) total += acc[j];
  return total == T(0);
}

template <class T>
void scale(T* __restrict x, std::size_t n, double factor) {
  const T f = T(factor);
  for (std::size_t i = 0; i < n; ++i) x[i] = x[i] * f;
}

template <class T>
void add_scaled(T* __restrict a, const T* __restrict b, std::size_t n, double factor) {
  const T f = T(factor);
  for (std::size_t i = 0; i < n; ++i) a[i] = a[i] + f * b[i];
}

// The elementwise optimizer family: Adagrad, RMSprop, Adamax, NAdam, RAdam (torch.optim
// semantics) and Lion (Chen et al. 2023). One pass over memory per tensor range, like
// optim_kernels.hpp: constants arrive precomputed in double, are rounded to T once per
// call, and every flag combination gets its own branch-free loop.
#pragma once

// Included by isa_table.cpp inside its per-ISA namespace, after optim_kernels.hpp.
#include "simd_common.hpp"

// The gradient every family member starts from: unscaled (and negated when maximizing),
// with L2 weight decay added, or the param decayed in place (decoupled), then the l1 term.
template <class T, bool kDecoupled, bool kDecay, bool kL1, bool kScaled>
struct GradPrologue {
  T divisor, wd, decay_factor, l1;

  explicit GradPrologue(const FamilyConstants& c)
      : divisor(T(c.grad_divisor)), wd(T(c.weight_decay)), decay_factor(T(c.decay_factor)),
        l1(T(c.l1)) {}

  // Returns the effective gradient; updates `p` when the weight decay is decoupled.
  inline T operator()(T& p, T g) const {
    T d = kScaled ? g / divisor : g;
    if (kDecay) {
      if (kDecoupled) {
        p = p * decay_factor;
      } else {
        d = d + wd * p;
      }
    }
    if (kL1) d = d + l1 * sign_of(p);
    return d;
  }
};

// max(a, b) that returns NaN when either side is NaN (as torch.maximum).
template <class T>
inline T nan_max(T a, T b) {
  return (a >= b || a != a) ? a : b;
}

// sum += g^2;  p -= clr * g / (sqrt(sum) + eps)
template <class T, class Pro>
void adagrad_loop(const FamilyConstants& c, T* __restrict p, const T* __restrict g,
                  T* __restrict sum, std::size_t n) {
  const Pro pro(c);
  const T clr = T(c.step_size), eps = T(c.eps);
  for (std::size_t i = 0; i < n; ++i) {
    T pi = p[i];
    const T d = pro(pi, g[i]);
    const T s = sum[i] + d * d;
    sum[i] = s;
    p[i] = pi - clr * (d / (sqrt_of(s) + eps));
  }
}

// sq = alpha sq + (1 - alpha) g^2;  centered: ga = alpha ga + (1 - alpha) g,
// avg = sqrt(sq - ga^2) + eps (else sqrt(sq) + eps);
// momentum: buf = momentum buf + g / avg, p -= lr buf;  else p -= lr g / avg
template <class T, class Pro, bool kCentered, bool kMomentum>
void rmsprop_loop(const FamilyConstants& c, T* __restrict p, const T* __restrict g,
                  T* __restrict sq, T* __restrict ga, T* __restrict buf, std::size_t n) {
  const Pro pro(c);
  const T alpha = T(c.beta1), one_minus_alpha = T(c.one_minus_beta1);
  const T lr = T(c.step_size), eps = T(c.eps), momentum = T(c.momentum);
  for (std::size_t i = 0; i < n; ++i) {
    T pi = p[i];
    const T d = pro(pi, g[i]);
    const T s = alpha * sq[i] + one_minus_alpha * (d * d);
    sq[i] = s;
    T var = s;
    if (kCentered) {
      const T a = alpha * ga[i] + one_minus_alpha * d;
      ga[i] = a;
      var = s - a * a;
    }
    const T ratio = d / (sqrt_of(var) + eps);
    if (kMomentum) {
      const T b = momentum * buf[i] + ratio;
      buf[i] = b;
      p[i] = pi - lr * b;
    } else {
      p[i] = pi - lr * ratio;
    }
  }
}

// m = b1 m + (1 - b1) g;  u = max(b2 u, |g| + eps);  p -= (lr / bc1) m / u
template <class T, class Pro>
void adamax_loop(const FamilyConstants& c, T* __restrict p, const T* __restrict g,
                 T* __restrict m, T* __restrict u, std::size_t n) {
  const Pro pro(c);
  const T beta1 = T(c.beta1), omb1 = T(c.one_minus_beta1), beta2 = T(c.beta2);
  const T step_size = T(c.step_size), eps = T(c.eps);
  for (std::size_t i = 0; i < n; ++i) {
    T pi = p[i];
    const T d = pro(pi, g[i]);
    const T mi = beta1 * m[i] + omb1 * d;
    const T ui = nan_max(beta2 * u[i], abs_of(d) + eps);
    m[i] = mi;
    u[i] = ui;
    p[i] = pi - step_size * (mi / ui);
  }
}

// m, v as Adam;  denom = sqrt(v) / sqrt(bc2) + eps;
// p += (grad_coef g + avg_coef m) / denom  (the coefficients carry -lr and mu)
template <class T, class Pro>
void nadam_loop(const FamilyConstants& c, T* __restrict p, const T* __restrict g,
                T* __restrict m, T* __restrict v, std::size_t n) {
  const Pro pro(c);
  const T beta1 = T(c.beta1), omb1 = T(c.one_minus_beta1);
  const T beta2 = T(c.beta2), omb2 = T(c.one_minus_beta2);
  const T grad_coef = T(c.grad_coef), avg_coef = T(c.avg_coef);
  const T inv_sqrt_bc2 = T(c.inv_sqrt_bc2), eps = T(c.eps);
  for (std::size_t i = 0; i < n; ++i) {
    T pi = p[i];
    const T d = pro(pi, g[i]);
    const T mi = beta1 * m[i] + omb1 * d;
    const T vi = beta2 * v[i] + omb2 * (d * d);
    m[i] = mi;
    v[i] = vi;
    const T denom = sqrt_of(vi) * inv_sqrt_bc2 + eps;
    p[i] = pi + (grad_coef * d + avg_coef * mi) / denom;  // one division for both terms
  }
}

// m, v as Adam;  rectified: p -= step_size m / (sqrt(v) + eps)  (step_size =
// lr rect sqrt(bc2) / bc1);  else p -= (lr / bc1) m
template <class T, class Pro, bool kRectified>
void radam_loop(const FamilyConstants& c, T* __restrict p, const T* __restrict g,
                T* __restrict m, T* __restrict v, std::size_t n) {
  const Pro pro(c);
  const T beta1 = T(c.beta1), omb1 = T(c.one_minus_beta1);
  const T beta2 = T(c.beta2), omb2 = T(c.one_minus_beta2);
  const T step_size = T(c.step_size), eps = T(c.eps);
  for (std::size_t i = 0; i < n; ++i) {
    T pi = p[i];
    const T d = pro(pi, g[i]);
    const T mi = beta1 * m[i] + omb1 * d;
    const T vi = beta2 * v[i] + omb2 * (d * d);
    m[i] = mi;
    v[i] = vi;
    p[i] = kRectified ? pi - step_size * (mi / (sqrt_of(vi) + eps)) : pi - step_size * mi;
  }
}

// Lion: update = sign(b1 m + (1 - b1) g);  p = p (1 - lr wd) - lr update;
// m = b2 m + (1 - b2) g   (the weight decay is always decoupled)
template <class T, class Pro>
void lion_loop(const FamilyConstants& c, T* __restrict p, const T* __restrict g,
               T* __restrict m, std::size_t n) {
  const Pro pro(c);
  const T beta1 = T(c.beta1), omb1 = T(c.one_minus_beta1);
  const T beta2 = T(c.beta2), omb2 = T(c.one_minus_beta2);
  const T lr = T(c.step_size);
  for (std::size_t i = 0; i < n; ++i) {
    T pi = p[i];
    const T d = pro(pi, g[i]);
    const T mi = m[i];
    p[i] = pi - lr * sign_of(beta1 * mi + omb1 * d);
    m[i] = beta2 * mi + omb2 * d;
  }
}

// Runs f(GradPrologue<...>{}, extra flags...) with the prologue's flags fixed.
template <class T, class F, class... Extra>
inline void with_prologue(const FamilyConstants& c, F&& f, Extra... extra) {
  with_flags(
      [&](auto decoupled, auto decay, auto l1, auto scaled, auto... more) {
        f(static_cast<GradPrologue<T, decoupled, decay, l1, scaled>*>(nullptr), more...);
      },
      c.decoupled, c.use_weight_decay, c.use_l1, c.scaled, extra...);
}

template <class Pro>
using prologue_t = std::remove_pointer_t<Pro>;

template <class T>
void family_adagrad(const FamilyConstants& c, T* p, const T* g, T* s0, T*, T*, std::size_t n) {
  with_prologue<T>(c, [&](auto pro) { adagrad_loop<T, prologue_t<decltype(pro)>>(c, p, g, s0, n); });
}

template <class T>
void family_rmsprop(const FamilyConstants& c, T* p, const T* g, T* s0, T* s1, T* s2,
                    std::size_t n) {
  with_prologue<T>(
      c,
      [&](auto pro, auto centered, auto momentum) {
        rmsprop_loop<T, prologue_t<decltype(pro)>, centered, momentum>(c, p, g, s0, s1, s2, n);
      },
      c.centered, c.use_momentum);
}

template <class T>
void family_adamax(const FamilyConstants& c, T* p, const T* g, T* s0, T* s1, T*, std::size_t n) {
  with_prologue<T>(c, [&](auto pro) { adamax_loop<T, prologue_t<decltype(pro)>>(c, p, g, s0, s1, n); });
}

template <class T>
void family_nadam(const FamilyConstants& c, T* p, const T* g, T* s0, T* s1, T*, std::size_t n) {
  with_prologue<T>(c, [&](auto pro) { nadam_loop<T, prologue_t<decltype(pro)>>(c, p, g, s0, s1, n); });
}

template <class T>
void family_radam(const FamilyConstants& c, T* p, const T* g, T* s0, T* s1, T*, std::size_t n) {
  with_prologue<T>(
      c,
      [&](auto pro, auto rectified) {
        radam_loop<T, prologue_t<decltype(pro)>, rectified>(c, p, g, s0, s1, n);
      },
      c.rectified);
}

template <class T>
void family_lion(const FamilyConstants& c, T* p, const T* g, T* s0, T*, T*, std::size_t n) {
  with_prologue<T>(c, [&](auto pro) { lion_loop<T, prologue_t<decltype(pro)>>(c, p, g, s0, n); });
}

// LAMB's Adam direction plus weight decay: u = (m / bc1) / (sqrt(v) / sqrt(bc2) + eps) + wd p.
template <class T, bool kDecay>
inline T lamb_direction(T p, T m, T v, T inv_bc1, T inv_sqrt_bc2, T eps, T wd) {
  const T u = (m * inv_bc1) / (sqrt_of(v) * inv_sqrt_bc2 + eps);
  return kDecay ? u + wd * p : u;
}

template <class T, bool kDecay, bool kL1, bool kScaled>
void lamb_moments_loop(const LambConstants& c, const T* __restrict p, const T* __restrict g,
                       T* __restrict m, T* __restrict v, std::size_t n, double* sums) {
  const T beta1 = T(c.beta1), omb1 = T(c.one_minus_beta1);
  const T beta2 = T(c.beta2), omb2 = T(c.one_minus_beta2);
  const T inv_bc1 = T(c.inv_bc1), inv_sqrt_bc2 = T(c.inv_sqrt_bc2), eps = T(c.eps);
  const T wd = T(c.weight_decay), l1 = T(c.l1), divisor = T(c.grad_divisor);
  // Independent lanes per sum, combined pairwise at the end: a fixed order, vectorizable.
  double acc_p[kLanes] = {}, acc_u[kLanes] = {};
  const auto element = [&](std::size_t i, std::size_t lane) {
    const T pi = p[i];
    T d = kScaled ? g[i] / divisor : g[i];
    if (kL1) d = d + l1 * sign_of(pi);
    const T mi = beta1 * m[i] + omb1 * d;
    const T vi = beta2 * v[i] + omb2 * (d * d);
    m[i] = mi;
    v[i] = vi;
    const double u = double(lamb_direction<T, kDecay>(pi, mi, vi, inv_bc1, inv_sqrt_bc2, eps, wd));
    acc_p[lane] += double(pi) * double(pi);
    acc_u[lane] += u * u;
  };
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (std::size_t j = 0; j < kLanes; ++j) element(i + j, j);
  }
  for (std::size_t j = 0; i < n; ++i, ++j) element(i, j);
  for (std::size_t width = kLanes / 2; width > 0; width /= 2) {
    for (std::size_t j = 0; j < width; ++j) {
      acc_p[j] += acc_p[j + width];
      acc_u[j] += acc_u[j + width];
    }
  }
  sums[0] = acc_p[0];
  sums[1] = acc_u[0];
}

template <class T>
void lamb_moments(const LambConstants& c, const T* p, const T* g, T* m, T* v, std::size_t n,
                  double* sums) {
  with_flags(
      [&](auto decay, auto l1, auto scaled) {
        lamb_moments_loop<T, decay, l1, scaled>(c, p, g, m, v, n, sums);
      },
      c.use_weight_decay, c.use_l1, c.scaled);
}

template <class T, bool kDecay>
void lamb_apply_loop(const LambConstants& c, T* __restrict p, const T* __restrict m,
                     const T* __restrict v, std::size_t n, double step_size) {
  const T inv_bc1 = T(c.inv_bc1), inv_sqrt_bc2 = T(c.inv_sqrt_bc2), eps = T(c.eps);
  const T wd = T(c.weight_decay), step = T(step_size);
  for (std::size_t i = 0; i < n; ++i) {
    const T pi = p[i];
    p[i] = pi - step * lamb_direction<T, kDecay>(pi, m[i], v[i], inv_bc1, inv_sqrt_bc2, eps, wd);
  }
}

template <class T>
void lamb_apply(const LambConstants& c, T* p, const T* m, const T* v, std::size_t n,
                double step_size) {
  with_flags([&](auto decay) { lamb_apply_loop<T, decay>(c, p, m, v, n, step_size); },
             c.use_weight_decay);
}

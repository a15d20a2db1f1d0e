// Multi-tensor optimizer steps and gradient norms: derive the per-step constants once
// in double, then run every tensor's chunks in one parallel region.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "constants.hpp"
#include "fusedops/fusedops.hpp"
#include "work.hpp"

namespace fusedops {

SgdConstants sgd_constants(const SgdParams& p) {
  SgdConstants c{};
  c.lr = p.lr;
  c.momentum = p.momentum;
  c.one_minus_dampening = 1.0 - p.dampening;
  c.weight_decay = p.weight_decay;
  c.l1 = p.l1;
  c.grad_divisor = p.maximize ? -p.grad_scale : p.grad_scale;
  c.use_momentum = p.momentum != 0.0;
  c.nesterov = p.nesterov;
  c.first_step = p.first_step;
  c.use_weight_decay = p.weight_decay != 0.0;
  c.use_l1 = p.l1 != 0.0;
  c.scaled = c.grad_divisor != 1.0;
  return c;
}

AdamConstants adam_constants(const AdamParams& p) {
  AdamConstants c{};
  const double step = static_cast<double>(p.step);
  const double bc1 = 1.0 - std::pow(p.beta1, step);
  const double bc2 = 1.0 - std::pow(p.beta2, step);
  c.beta1 = p.beta1;
  c.one_minus_beta1 = 1.0 - p.beta1;
  c.beta2 = p.beta2;
  c.one_minus_beta2 = 1.0 - p.beta2;
  c.step_size = p.lr / bc1;
  c.inv_sqrt_bc2 = 1.0 / std::sqrt(bc2);
  c.eps = p.eps;
  c.decoupled = p.decoupled_weight_decay;
  c.use_weight_decay = p.weight_decay != 0.0;
  c.weight_decay = p.weight_decay;
  c.decay_factor = 1.0 - p.lr * p.weight_decay;
  c.l1 = p.l1;
  c.use_l1 = p.l1 != 0.0;
  c.amsgrad = p.amsgrad;
  c.grad_divisor = p.maximize ? -p.grad_scale : p.grad_scale;
  c.scaled = c.grad_divisor != 1.0;
  return c;
}

namespace {

template <class T>
T* typed(void* p) { return static_cast<T*>(p); }
template <class T>
const T* typed(const void* p) { return static_cast<const T*>(p); }

template <class T>
void sgd_typed(const SgdConstants* c, const OptimTensor* tensors, std::size_t count) {
  const auto& k = current_kernels().typed<T>();
  const WorkList work(count, sizeof(T), [&](std::size_t t) { return tensors[t].n; });
  work.run([&](std::size_t, const WorkItem& item) {
    const OptimTensor& t = tensors[item.tensor];
    T* buf = t.state[0] ? typed<T>(t.state[0]) + item.begin : nullptr;
    k.sgd(c[t.group], typed<T>(t.param) + item.begin, typed<T>(t.grad) + item.begin, buf,
          item.end - item.begin);
  });
}

template <class T>
void adam_typed(const AdamConstants* c, const OptimTensor* tensors, std::size_t count) {
  const auto& k = current_kernels().typed<T>();
  const WorkList work(count, sizeof(T), [&](std::size_t t) { return tensors[t].n; });
  work.run([&](std::size_t, const WorkItem& item) {
    const OptimTensor& t = tensors[item.tensor];
    const std::size_t b = item.begin;
    T* vmax = t.state[2] ? typed<T>(t.state[2]) + b : nullptr;
    k.adam(c[t.group], typed<T>(t.param) + b, typed<T>(t.grad) + b, typed<T>(t.state[0]) + b,
           typed<T>(t.state[1]) + b, vmax, item.end - b);
  });
}

// Per-chunk partials, combined in item order: the same total for any thread count.
template <class T, class Partial>
std::vector<double> chunk_partials(const Buffer* buffers, std::size_t count, Partial partial) {
  const WorkList work(count, sizeof(T), [&](std::size_t t) { return buffers[t].n; });
  std::vector<double> partials(work.items().size());
  work.run([&](std::size_t i, const WorkItem& item) {
    partials[i] = partial(typed<T>(static_cast<const void*>(buffers[item.tensor].data)) +
                              item.begin,
                          item.end - item.begin);
  });
  return partials;
}

template <class T>
double global_norm_typed(const Buffer* buffers, std::size_t count, double norm_type) {
  const auto& k = current_kernels().typed<T>();
  if (std::isinf(norm_type)) {
    const auto partials = chunk_partials<T>(buffers, count, k.max_abs);
    double best = 0.0;
    for (double x : partials) best = (best >= x || std::isnan(best)) ? best : x;
    return best;
  }
  std::vector<double> partials;
  if (norm_type == 2.0) {
    partials = chunk_partials<T>(buffers, count, k.sum_squares);
  } else if (norm_type == 1.0) {
    partials = chunk_partials<T>(buffers, count, k.sum_abs);
  } else {
    partials = chunk_partials<T>(buffers, count, [&](const T* x, std::size_t n) {
      return k.sum_abs_pow(x, n, norm_type);
    });
  }
  double total = 0.0;
  for (double x : partials) total += x;
  if (norm_type == 2.0) return std::sqrt(total);
  if (norm_type == 1.0) return total;
  return std::pow(total, 1.0 / norm_type);
}

template <class T>
bool all_finite_typed(const Buffer* buffers, std::size_t count) {
  const auto& k = current_kernels().typed<T>();
  const WorkList work(count, sizeof(T), [&](std::size_t t) { return buffers[t].n; });
  // Chunks after the first non-finite one are skipped (each thread stops early).
  std::atomic<bool> finite{true};
  work.run([&](std::size_t, const WorkItem& item) {
    if (!finite.load(std::memory_order_relaxed)) return;
    if (!k.all_finite(typed<T>(static_cast<const void*>(buffers[item.tensor].data)) + item.begin,
                      item.end - item.begin)) {
      finite.store(false, std::memory_order_relaxed);
    }
  });
  return finite.load();
}

template <class T>
void scale_typed(const Buffer* buffers, std::size_t count, double factor) {
  const auto& k = current_kernels().typed<T>();
  const WorkList work(count, sizeof(T), [&](std::size_t t) { return buffers[t].n; });
  work.run([&](std::size_t, const WorkItem& item) {
    k.scale(typed<T>(buffers[item.tensor].data) + item.begin, item.end - item.begin, factor);
  });
}

template <class T>
void add_scaled_typed(const Buffer& a, const Buffer& b, double factor) {
  const auto& k = current_kernels().typed<T>();
  const WorkList work(1, sizeof(T), [&](std::size_t) { return a.n; });
  work.run([&](std::size_t, const WorkItem& item) {
    k.add_scaled(typed<T>(a.data) + item.begin,
                 typed<T>(static_cast<const void*>(b.data)) + item.begin,
                 item.end - item.begin, factor);
  });
}

// The read probe's unit of work (1 MiB of float32), its runs side by side, and how far
// ahead of its reads it prefetches (the slab reductions' distance).
constexpr std::size_t kReadProbeUnit = std::size_t(1) << 18;
constexpr std::size_t kReadProbeRuns = 4;
constexpr std::size_t kReadProbeAhead = 1024;

// The sum of p[0, n): kReadProbeRuns runs of q values read side by side (16 float lanes
// each, in two vectors), the values after them one by one.
double read_unit_sum(const float* p, std::size_t n) {
  typedef float Floats __attribute__((vector_size(32)));  // 8 floats: two SSE registers
  constexpr std::size_t kStep = 2 * sizeof(Floats) / sizeof(float);
  const std::size_t q = n / kReadProbeRuns / kStep * kStep;
  Floats acc[kReadProbeRuns][2] = {};
  for (std::size_t i = 0; i < q; i += kStep) {
    for (std::size_t r = 0; r < kReadProbeRuns; ++r) {
      const float* at = p + r * q + i;
      __builtin_prefetch(reinterpret_cast<const char*>(at) + kReadProbeAhead);
      Floats lo, hi;
      __builtin_memcpy(&lo, at, sizeof lo);
      __builtin_memcpy(&hi, at + kStep / 2, sizeof hi);
      acc[r][0] += lo;
      acc[r][1] += hi;
    }
  }
  double total = 0.0;
  for (std::size_t r = 0; r < kReadProbeRuns; ++r) {
    const Floats both = acc[r][0] + acc[r][1];
    for (std::size_t l = 0; l < kStep / 2; ++l) total += double(both[l]);
  }
  for (std::size_t i = kReadProbeRuns * q; i < n; ++i) total += double(p[i]);
  return total;
}

}  // namespace

double read_sum(const Buffer& a) {
  const float* p = static_cast<const float*>(static_cast<const void*>(a.data));
  const std::size_t units = (a.n + kReadProbeUnit - 1) / kReadProbeUnit;
  std::vector<double> partial(units);
  const WorkList work = WorkList::units(units, sizeof(float), [&](std::size_t u) {
    return std::min(a.n, (u + 1) * kReadProbeUnit) - u * kReadProbeUnit;
  });
  work.run([&](std::size_t u, const WorkItem& item) {
    partial[u] = read_unit_sum(p + u * kReadProbeUnit, item.end);
  });
  double total = 0.0;
  for (const double s : partial) total += s;
  return total;
}

void add_scaled(Dtype dtype, const Buffer& a, const Buffer& b, double factor) {
  if (dtype == Dtype::f32) {
    add_scaled_typed<float>(a, b, factor);
  } else {
    add_scaled_typed<double>(a, b, factor);
  }
}

void sgd_step(Dtype dtype, const SgdParams* groups, std::size_t n_groups,
              const OptimTensor* tensors, std::size_t count) {
  std::vector<SgdConstants> c(n_groups);
  for (std::size_t i = 0; i < n_groups; ++i) c[i] = sgd_constants(groups[i]);
  if (dtype == Dtype::f32) {
    sgd_typed<float>(c.data(), tensors, count);
  } else {
    sgd_typed<double>(c.data(), tensors, count);
  }
}

void adam_step(Dtype dtype, const AdamParams* groups, std::size_t n_groups,
               const OptimTensor* tensors, std::size_t count) {
  std::vector<AdamConstants> c(n_groups);
  for (std::size_t i = 0; i < n_groups; ++i) c[i] = adam_constants(groups[i]);
  if (dtype == Dtype::f32) {
    adam_typed<float>(c.data(), tensors, count);
  } else {
    adam_typed<double>(c.data(), tensors, count);
  }
}

double global_norm(Dtype dtype, const Buffer* buffers, std::size_t count, double norm_type) {
  return dtype == Dtype::f32 ? global_norm_typed<float>(buffers, count, norm_type)
                             : global_norm_typed<double>(buffers, count, norm_type);
}

bool all_finite(Dtype dtype, const Buffer* buffers, std::size_t count) {
  return dtype == Dtype::f32 ? all_finite_typed<float>(buffers, count)
                             : all_finite_typed<double>(buffers, count);
}

void scale_in_place(Dtype dtype, const Buffer* buffers, std::size_t count, double factor) {
  if (dtype == Dtype::f32) {
    scale_typed<float>(buffers, count, factor);
  } else {
    scale_typed<double>(buffers, count, factor);
  }
}

}  // namespace fusedops

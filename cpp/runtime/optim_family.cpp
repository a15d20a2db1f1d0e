// The family optimizers: per-group constants in double, then every tensor's chunks in
// one parallel region (as cpp/runtime/optim.cpp does for SGD and Adam).
#include "fusedops/optim_family.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "mixed_run.hpp"
#include "work.hpp"

namespace fusedops {

namespace {

FamilyConstants family_constants(const FamilyParams& p) {
  FamilyConstants c{};
  const double step = static_cast<double>(p.step);
  c.beta1 = p.beta1;
  c.one_minus_beta1 = 1.0 - p.beta1;
  c.beta2 = p.beta2;
  c.one_minus_beta2 = 1.0 - p.beta2;
  c.eps = p.eps;
  c.weight_decay = p.weight_decay;
  c.decay_factor = 1.0 - p.lr * p.weight_decay;
  c.l1 = p.l1;
  c.grad_divisor = p.maximize ? -p.grad_scale : p.grad_scale;
  c.scaled = c.grad_divisor != 1.0;
  c.use_weight_decay = p.weight_decay != 0.0;
  c.use_l1 = p.l1 != 0.0;
  c.decoupled = p.decoupled_weight_decay;
  c.step_size = p.lr;
  switch (p.kind) {
    case FamilyKind::adagrad:
      c.decoupled = false;
      c.step_size = p.lr / (1.0 + (step - 1.0) * p.lr_decay);
      break;
    case FamilyKind::rmsprop:
      c.decoupled = false;
      c.beta1 = p.alpha;
      c.one_minus_beta1 = 1.0 - p.alpha;
      c.momentum = p.momentum;
      c.use_momentum = p.momentum > 0.0;
      c.centered = p.centered;
      break;
    case FamilyKind::adamax:
      c.decoupled = false;
      c.step_size = p.lr / (1.0 - std::pow(p.beta1, step));
      break;
    case FamilyKind::nadam: {
      const double mu = nadam_mu(p.beta1, p.momentum_decay, p.step);
      const double mu_next = nadam_mu(p.beta1, p.momentum_decay, p.step + 1);
      const double mu_product = p.mu_product * mu;
      c.grad_coef = -p.lr * (1.0 - mu) / (1.0 - mu_product);
      c.avg_coef = -p.lr * mu_next / (1.0 - mu_product * mu_next);
      c.inv_sqrt_bc2 = 1.0 / std::sqrt(1.0 - std::pow(p.beta2, step));
      break;
    }
    case FamilyKind::radam: {
      const double bc1 = 1.0 - std::pow(p.beta1, step);
      const double bc2 = 1.0 - std::pow(p.beta2, step);
      const double rho_inf = 2.0 / (1.0 - p.beta2) - 1.0;
      const double rho_t = rho_inf - 2.0 * step * std::pow(p.beta2, step) / bc2;
      c.rectified = rho_t > 5.0;
      if (c.rectified) {
        const double rect = std::sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                                      ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t));
        c.step_size = p.lr * rect * std::sqrt(bc2) / bc1;
      } else {
        c.step_size = p.lr / bc1;
      }
      break;
    }
    case FamilyKind::lion:
      c.decoupled = true;
      break;
    case FamilyKind::count:
      break;
  }
  return c;
}

template <class T>
T* typed(void* p) { return static_cast<T*>(p); }

template <class T>
void family_typed(const FamilyConstants* c, FamilyKind kind, const OptimTensor* tensors,
                  std::size_t count) {
  const auto kernel = current_kernels().typed<T>().family[static_cast<int>(kind)];
  const WorkList work(count, sizeof(T), [&](std::size_t t) { return tensors[t].n; });
  work.run([&](std::size_t, const WorkItem& item) {
    const OptimTensor& t = tensors[item.tensor];
    const std::size_t b = item.begin;
    const auto state = [&](int k) { return t.state[k] ? typed<T>(t.state[k]) + b : nullptr; };
    kernel(c[t.group], typed<T>(t.param) + b, static_cast<const T*>(t.grad) + b, state(0),
           state(1), state(2), item.end - b);
  });
}

LambConstants lamb_constants(const LambParams& p, bool excluded) {
  LambConstants c{};
  const double step = static_cast<double>(p.step);
  c.beta1 = p.beta1;
  c.one_minus_beta1 = 1.0 - p.beta1;
  c.beta2 = p.beta2;
  c.one_minus_beta2 = 1.0 - p.beta2;
  c.inv_bc1 = p.bias_correction ? 1.0 / (1.0 - std::pow(p.beta1, step)) : 1.0;
  c.inv_sqrt_bc2 = p.bias_correction ? 1.0 / std::sqrt(1.0 - std::pow(p.beta2, step)) : 1.0;
  c.eps = p.eps;
  c.weight_decay = excluded ? 0.0 : p.weight_decay;
  c.use_weight_decay = c.weight_decay != 0.0;
  c.l1 = p.l1;
  c.use_l1 = p.l1 != 0.0;
  c.grad_divisor = p.maximize ? -p.grad_scale : p.grad_scale;
  c.scaled = c.grad_divisor != 1.0;
  return c;
}

// Per-tensor sums over the items of a work list (two partials per item), in item order:
// the same totals for any thread count.
void tensor_sums(const WorkList& work, const std::vector<double>& partials,
                 std::vector<double>* first, std::vector<double>* second) {
  std::fill(first->begin(), first->end(), 0.0);
  std::fill(second->begin(), second->end(), 0.0);
  const auto& items = work.items();
  for (std::size_t i = 0; i < items.size(); ++i) {
    (*first)[items[i].tensor] += partials[2 * i];
    (*second)[items[i].tensor] += partials[2 * i + 1];
  }
}

// Each tensor's step size lr * ratio, ratio = ||p|| / ||update|| (1 for excluded tensors
// and zero norms, at most trust_clip when set), from the per-tensor sums of squares.
template <class Tensor>
void lamb_step_sizes(const LambParams* groups, const Tensor* tensors,
                     const unsigned char* excluded, const std::vector<double>& param_sq,
                     const std::vector<double>& update_sq, std::vector<double>* step_size,
                     double* trust_ratios) {
  for (std::size_t t = 0; t < step_size->size(); ++t) {
    const LambParams& p = groups[tensors[t].group];
    const double param_norm = std::sqrt(param_sq[t]);
    const double update_norm = std::sqrt(update_sq[t]);
    double ratio = 1.0;
    if (!(excluded != nullptr && excluded[t]) && param_norm > 0.0 && update_norm > 0.0) {
      ratio = param_norm / update_norm;
      if (p.trust_clip > 0.0 && ratio > p.trust_clip) ratio = p.trust_clip;
    }
    (*step_size)[t] = p.lr * ratio;
    if (trust_ratios != nullptr) trust_ratios[t] = ratio;
  }
}

template <class T>
void lamb_typed(const LambParams* groups, std::size_t n_groups, const OptimTensor* tensors,
                const unsigned char* excluded, std::size_t count, double* trust_ratios) {
  const auto& k = current_kernels().typed<T>();
  // Two constant sets per group: [2 g] for adapted tensors, [2 g + 1] for excluded ones.
  std::vector<LambConstants> c(2 * n_groups);
  for (std::size_t g = 0; g < n_groups; ++g) {
    c[2 * g] = lamb_constants(groups[g], false);
    c[2 * g + 1] = lamb_constants(groups[g], true);
  }
  const auto is_excluded = [&](std::size_t t) { return excluded != nullptr && excluded[t]; };
  const auto constants = [&](std::size_t t) -> const LambConstants& {
    return c[2 * tensors[t].group + (is_excluded(t) ? 1 : 0)];
  };
  const WorkList work(count, sizeof(T), [&](std::size_t t) { return tensors[t].n; });
  std::vector<double> partials(2 * work.items().size());
  std::vector<double> param_sq(count), update_sq(count), step_size(count);
  work.run_phases(
      [&](std::size_t i, const WorkItem& item) {
        const OptimTensor& t = tensors[item.tensor];
        const std::size_t b = item.begin;
        k.lamb_moments(constants(item.tensor), typed<T>(t.param) + b,
                       static_cast<const T*>(t.grad) + b, typed<T>(t.state[0]) + b,
                       typed<T>(t.state[1]) + b, item.end - b, &partials[2 * i]);
      },
      [&] {
        tensor_sums(work, partials, &param_sq, &update_sq);
        lamb_step_sizes(groups, tensors, excluded, param_sq, update_sq, &step_size, trust_ratios);
      },
      [&](std::size_t, const WorkItem& item) {
        const OptimTensor& t = tensors[item.tensor];
        const std::size_t b = item.begin;
        k.lamb_apply(constants(item.tensor), typed<T>(t.param) + b,
                     static_cast<const T*>(t.state[0]) + b,
                     static_cast<const T*>(t.state[1]) + b, item.end - b,
                     step_size[item.tensor]);
      });
}

// LARS's update is SGD's on the gradient times the trust ratio: the ratio folds into
// SGD's constants (grad divisor, weight decay and l1 coefficients) per tensor.
SgdConstants lars_sgd_constants(const LarsParams& p, double ratio, bool excluded) {
  SgdConstants c{};
  c.lr = p.lr;
  c.momentum = p.momentum;
  c.one_minus_dampening = 1.0 - p.dampening;
  c.weight_decay = excluded ? 0.0 : p.weight_decay * ratio;
  c.l1 = p.l1 * ratio;
  c.grad_divisor = (p.maximize ? -p.grad_scale : p.grad_scale) / ratio;
  c.use_momentum = p.momentum != 0.0;
  c.nesterov = p.nesterov;
  c.first_step = p.first_step;
  c.use_weight_decay = c.weight_decay != 0.0;
  c.use_l1 = c.l1 != 0.0;
  c.scaled = c.grad_divisor != 1.0;
  return c;
}

// Each tensor's SGD constants with its trust ratio folded in, from the per-tensor sums of
// squares of the params and the (scaled) grads.
template <class Tensor>
void lars_tensor_constants(const LarsParams* groups, const Tensor* tensors,
                           const unsigned char* excluded, const std::vector<double>& param_sq,
                           const std::vector<double>& grad_sq, std::vector<SgdConstants>* c,
                           double* trust_ratios) {
  for (std::size_t t = 0; t < c->size(); ++t) {
    const LarsParams& p = groups[tensors[t].group];
    const bool skip = excluded != nullptr && excluded[t];
    const double param_norm = std::sqrt(param_sq[t]);
    const double grad_norm = std::sqrt(grad_sq[t]) / p.grad_scale;
    double ratio = 1.0;
    if (!skip && param_norm > 0.0 && grad_norm > 0.0) {
      ratio = p.eta * param_norm / (grad_norm + p.weight_decay * param_norm + p.eps);
      if (p.trust_clip && p.lr > 0.0) ratio = std::min(ratio / p.lr, 1.0);
    }
    (*c)[t] = lars_sgd_constants(p, ratio, skip);
    if (trust_ratios != nullptr) trust_ratios[t] = ratio;
  }
}

template <class T>
void lars_typed(const LarsParams* groups, const OptimTensor* tensors, const unsigned char* excluded,
                std::size_t count, double* trust_ratios) {
  const auto& k = current_kernels().typed<T>();
  const WorkList work(count, sizeof(T), [&](std::size_t t) { return tensors[t].n; });
  std::vector<double> partials(2 * work.items().size());
  std::vector<double> param_sq(count), grad_sq(count);
  std::vector<SgdConstants> c(count);
  work.run_phases(
      [&](std::size_t i, const WorkItem& item) {
        const OptimTensor& t = tensors[item.tensor];
        const std::size_t b = item.begin, n = item.end - b;
        partials[2 * i] = k.sum_squares(typed<T>(t.param) + b, n);
        partials[2 * i + 1] = k.sum_squares(static_cast<const T*>(t.grad) + b, n);
      },
      [&] {
        tensor_sums(work, partials, &param_sq, &grad_sq);
        lars_tensor_constants(groups, tensors, excluded, param_sq, grad_sq, &c, trust_ratios);
      },
      [&](std::size_t, const WorkItem& item) {
        const OptimTensor& t = tensors[item.tensor];
        const std::size_t b = item.begin;
        T* buf = t.state[0] ? typed<T>(t.state[0]) + b : nullptr;
        k.sgd(c[item.tensor], typed<T>(t.param) + b, static_cast<const T*>(t.grad) + b, buf,
              item.end - b);
      });
}

// ---- Mixed precision: float64 and all-float32 tensors run their kernels on memory (the
// single-dtype results), the other rows run the float32 kernels over widened blocks.

using mixed_detail::Context;
using mixed_detail::kBlock;
using mixed_detail::kChunkElementBytes;

// Sum of squares of one operand over [begin, end): the float64 or float32 kernel on
// memory, or, `blocked`, the sum in order over kBlock blocks of the (widened) values. Every
// operand of a tensor that is not float32 throughout is blocked, so that a float32 master
// written to a copy and the same master split into a bfloat16 param and its remainder
// give the same sums, bit for bit.
double sum_squares_mixed(const Context& ctx, const void* data, Dtype dtype,
                         const std::uint16_t* remainder, bool blocked, std::size_t begin,
                         std::size_t end) {
  if (dtype == Dtype::f64) return ctx.table.f64.sum_squares(static_cast<const double*>(data) + begin, end - begin);
  if (!blocked) {
    return ctx.table.f32.sum_squares(static_cast<const float*>(data) + begin, end - begin);
  }
  alignas(64) float block[kBlock];
  double total = 0.0;
  for (std::size_t b = begin; b < end; b += kBlock) {
    const std::size_t n = std::min(kBlock, end - b);
    total += ctx.table.f32.sum_squares(
        mixed_detail::float_view(ctx.cv, const_cast<void*>(data), dtype, remainder, b, n, block), n);
  }
  return total;
}

// LAMB's first pass over [begin, end) of t: the moments, stored (rounded), and the sums
// of squares of the param and of the update (sums[0], sums[1]).
void lamb_moments_mixed(const Context& ctx, const LambConstants& c, const MixedTensor& t,
                        std::size_t tensor, std::size_t begin, std::size_t end,
                        const Rounding& r, double* sums) {
  using mixed_detail::at;
  using mixed_detail::float_view;
  const std::size_t n_all = end - begin;
  if (t.param_dtype == Dtype::f64) {
    ctx.table.f64.lamb_moments(c, at<double>(t.param, begin),
                               at<const double>(const_cast<void*>(t.grad), begin),
                               at<double>(t.state[0], begin), at<double>(t.state[1], begin), n_all,
                               sums);
    return;
  }
  if (mixed_detail::all_float32(t)) {
    ctx.table.f32.lamb_moments(c, at<float>(t.param, begin),
                               at<const float>(const_cast<void*>(t.grad), begin),
                               at<float>(t.state[0], begin), at<float>(t.state[1], begin), n_all,
                               sums);
    return;
  }
  // Re-reading rounded moments: beta 1 and a zero gradient keep m and v as they are.
  LambConstants reread = c;
  reread.beta1 = reread.beta2 = 1.0;
  reread.one_minus_beta1 = reread.one_minus_beta2 = 0.0;
  reread.use_l1 = reread.scaled = false;
  const std::size_t key_tensor = mixed_detail::key_tensor_of(t, tensor);
  alignas(64) static const float zeros[kBlock] = {};
  alignas(64) float blocks[4][kBlock];
  const bool rounded_state = t.state_dtype != Dtype::f32;
  sums[0] = sums[1] = 0.0;
  for (std::size_t b = begin; b < end; b += kBlock) {
    const std::size_t n = std::min(kBlock, end - b);
    const float* p = float_view(ctx.cv, t.param, t.param_dtype, t.remainder, b, n, blocks[0]);
    const float* g = float_view(ctx.cv, const_cast<void*>(t.grad), t.grad_dtype, nullptr, b, n, blocks[1]);
    float* m = float_view(ctx.cv, t.state[0], t.state_dtype, nullptr, b, n, blocks[2]);
    float* v = float_view(ctx.cv, t.state[1], t.state_dtype, nullptr, b, n, blocks[3]);
    double block_sums[2];
    ctx.table.f32.lamb_moments(c, p, g, m, v, n, block_sums);
    if (rounded_state) {
      for (unsigned j = 0; j < 2; ++j) {
        mixed_detail::store_back(ctx.cv, t.state[j], t.state_dtype, nullptr, b, n, j == 0 ? m : v,
                                 r, key_tensor, mixed_detail::kStateOperand + j, t.key_offset);
      }
      // The norm of the update the second pass applies: from the stored moments.
      m = float_view(ctx.cv, t.state[0], t.state_dtype, nullptr, b, n, blocks[2]);
      v = float_view(ctx.cv, t.state[1], t.state_dtype, nullptr, b, n, blocks[3]);
      ctx.table.f32.lamb_moments(reread, p, zeros, m, v, n, block_sums);
    }
    sums[0] += block_sums[0];
    sums[1] += block_sums[1];
  }
}

// LAMB's second pass over [begin, end) of t: p -= step_size * update, stored (rounded,
// or split into param and remainder), and the param copy.
void lamb_apply_mixed(const Context& ctx, const LambConstants& c, const MixedTensor& t,
                      std::size_t tensor, std::size_t begin, std::size_t end, const Rounding& r,
                      double step_size) {
  using mixed_detail::at;
  using mixed_detail::float_view;
  if (t.param_dtype == Dtype::f64) {
    ctx.table.f64.lamb_apply(c, at<double>(t.param, begin), at<const double>(t.state[0], begin),
                             at<const double>(t.state[1], begin), end - begin, step_size);
    return;
  }
  if (mixed_detail::all_float32(t)) {
    ctx.table.f32.lamb_apply(c, at<float>(t.param, begin), at<const float>(t.state[0], begin),
                             at<const float>(t.state[1], begin), end - begin, step_size);
    return;
  }
  const std::size_t key_tensor = mixed_detail::key_tensor_of(t, tensor);
  alignas(64) float blocks[3][kBlock];
  const std::size_t lead = mixed_detail::copy_lead(ctx, t, begin);
  mixed_detail::for_blocks(begin, end, lead, [&](std::size_t b, std::size_t n) {
    float* p = float_view(ctx.cv, t.param, t.param_dtype, t.remainder, b, n, blocks[0]);
    const float* m = float_view(ctx.cv, t.state[0], t.state_dtype, nullptr, b, n, blocks[1]);
    const float* v = float_view(ctx.cv, t.state[1], t.state_dtype, nullptr, b, n, blocks[2]);
    ctx.table.f32.lamb_apply(c, p, m, v, n, step_size);
    mixed_detail::store_back(ctx.cv, t.param, t.param_dtype, t.remainder, b, n, p, r, key_tensor,
                             mixed_detail::kParamOperand, t.key_offset);
    if (t.copy != nullptr) mixed_detail::store_copy(ctx, t, b, n, p, r, key_tensor);
  });
  mixed_detail::end_copies(ctx, t);
}

}  // namespace

void family_step_mixed(const FamilyParams* groups, std::size_t n_groups,
                       const MixedTensor* tensors, std::size_t count, const Rounding& rounding) {
  if (n_groups == 0) return;
  std::vector<FamilyConstants> c(n_groups);
  for (std::size_t i = 0; i < n_groups; ++i) c[i] = family_constants(groups[i]);
  const int kind = static_cast<int>(groups[0].kind);
  mixed_detail::run_mixed(
      c.data(), tensors, count, rounding,
      [kind](const auto& k, const FamilyConstants& fc, auto* p, const auto* g, auto* s0, auto* s1,
             auto* s2, std::size_t n) { k.family[kind](fc, p, g, s0, s1, s2, n); },
      mixed_detail::NoFusedLoops{});
}

void lamb_step_mixed(const LambParams* groups, std::size_t n_groups, const MixedTensor* tensors,
                     const unsigned char* excluded, std::size_t count, const Rounding& rounding,
                     double* trust_ratios) {
  const Context ctx = mixed_detail::current_context(tensors, count);
  std::vector<LambConstants> c(2 * n_groups);
  for (std::size_t g = 0; g < n_groups; ++g) {
    c[2 * g] = lamb_constants(groups[g], false);
    c[2 * g + 1] = lamb_constants(groups[g], true);
  }
  const auto constants = [&](std::size_t t) -> const LambConstants& {
    return c[2 * tensors[t].group + (excluded != nullptr && excluded[t] ? 1 : 0)];
  };
  const WorkList work(count, kChunkElementBytes, [&](std::size_t t) { return tensors[t].n; });
  std::vector<double> partials(2 * work.items().size());
  std::vector<double> param_sq(count), update_sq(count), step_size(count);
  work.run_phases(
      [&](std::size_t i, const WorkItem& item) {
        lamb_moments_mixed(ctx, constants(item.tensor), tensors[item.tensor], item.tensor,
                           item.begin, item.end, rounding, &partials[2 * i]);
      },
      [&] {
        tensor_sums(work, partials, &param_sq, &update_sq);
        lamb_step_sizes(groups, tensors, excluded, param_sq, update_sq, &step_size, trust_ratios);
      },
      [&](std::size_t, const WorkItem& item) {
        lamb_apply_mixed(ctx, constants(item.tensor), tensors[item.tensor], item.tensor,
                         item.begin, item.end, rounding, step_size[item.tensor]);
      });
}

void lars_step_mixed(const LarsParams* groups, std::size_t, const MixedTensor* tensors,
                     const unsigned char* excluded, std::size_t count, const Rounding& rounding,
                     double* trust_ratios) {
  const Context ctx = mixed_detail::current_context(tensors, count);
  const WorkList work(count, kChunkElementBytes, [&](std::size_t t) { return tensors[t].n; });
  std::vector<double> partials(2 * work.items().size());
  std::vector<double> param_sq(count), grad_sq(count);
  std::vector<SgdConstants> c(count);
  work.run_phases(
      [&](std::size_t i, const WorkItem& item) {
        const MixedTensor& t = tensors[item.tensor];
        const bool blocked = !mixed_detail::all_float32(t);
        partials[2 * i] = sum_squares_mixed(ctx, t.param, t.param_dtype, t.remainder, blocked,
                                            item.begin, item.end);
        partials[2 * i + 1] = sum_squares_mixed(ctx, t.grad, t.grad_dtype, nullptr, blocked,
                                                item.begin, item.end);
      },
      [&] {
        tensor_sums(work, partials, &param_sq, &grad_sq);
        lars_tensor_constants(groups, tensors, excluded, param_sq, grad_sq, &c, trust_ratios);
      },
      [&](std::size_t, const WorkItem& item) {
        mixed_detail::update_item(
            ctx, tensors[item.tensor], item.tensor, item.begin, item.end, rounding, c[item.tensor],
            [](const auto& k, const SgdConstants& sc, auto* p, const auto* g, auto* s0, auto*,
               auto*, std::size_t n) { k.sgd(sc, p, g, s0, n); },
            [](const FusedKernels& fk, int row, const SgdConstants& sc, const FusedArgs& a,
               std::size_t n) { fk.sgd[row](sc, a, n); });
      });
}

void lamb_step(Dtype dtype, const LambParams* groups, std::size_t n_groups,
               const OptimTensor* tensors, const unsigned char* excluded, std::size_t count,
               double* trust_ratios) {
  if (dtype == Dtype::f32) {
    lamb_typed<float>(groups, n_groups, tensors, excluded, count, trust_ratios);
  } else {
    lamb_typed<double>(groups, n_groups, tensors, excluded, count, trust_ratios);
  }
}

void lars_step(Dtype dtype, const LarsParams* groups, std::size_t, const OptimTensor* tensors,
               const unsigned char* excluded, std::size_t count, double* trust_ratios) {
  if (dtype == Dtype::f32) {
    lars_typed<float>(groups, tensors, excluded, count, trust_ratios);
  } else {
    lars_typed<double>(groups, tensors, excluded, count, trust_ratios);
  }
}

double nadam_mu(double beta1, double momentum_decay, long long step) {
  return beta1 * (1.0 - 0.5 * std::pow(0.96, static_cast<double>(step) * momentum_decay));
}

void family_step(Dtype dtype, const FamilyParams* groups, std::size_t n_groups,
                 const OptimTensor* tensors, std::size_t count) {
  if (n_groups == 0) return;
  std::vector<FamilyConstants> c(n_groups);
  for (std::size_t i = 0; i < n_groups; ++i) c[i] = family_constants(groups[i]);
  const FamilyKind kind = groups[0].kind;
  if (dtype == Dtype::f32) {
    family_typed<float>(c.data(), kind, tensors, count);
  } else {
    family_typed<double>(c.data(), kind, tensors, count);
  }
}

}  // namespace fusedops

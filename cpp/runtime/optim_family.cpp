// The family optimizers: per-group constants in double, then every tensor's chunks in
// one parallel region (as cpp/runtime/optim.cpp does for SGD and Adam).
#include "fusedops/optim_family.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

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
        for (std::size_t t = 0; t < count; ++t) {
          const LambParams& p = groups[tensors[t].group];
          const double param_norm = std::sqrt(param_sq[t]);
          const double update_norm = std::sqrt(update_sq[t]);
          double ratio = 1.0;
          if (!is_excluded(t) && param_norm > 0.0 && update_norm > 0.0) {
            ratio = param_norm / update_norm;
            if (p.trust_clip > 0.0 && ratio > p.trust_clip) ratio = p.trust_clip;
          }
          step_size[t] = p.lr * ratio;
          if (trust_ratios != nullptr) trust_ratios[t] = ratio;
        }
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

template <class T>
void lars_typed(const LarsParams* groups, const OptimTensor* tensors, const unsigned char* excluded,
                std::size_t count, double* trust_ratios) {
  const auto& k = current_kernels().typed<T>();
  const auto is_excluded = [&](std::size_t t) { return excluded != nullptr && excluded[t]; };
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
        for (std::size_t t = 0; t < count; ++t) {
          const LarsParams& p = groups[tensors[t].group];
          const double param_norm = std::sqrt(param_sq[t]);
          const double grad_norm = std::sqrt(grad_sq[t]) / p.grad_scale;
          double ratio = 1.0;
          if (!is_excluded(t) && param_norm > 0.0 && grad_norm > 0.0) {
            ratio = p.eta * param_norm / (grad_norm + p.weight_decay * param_norm + p.eps);
            if (p.trust_clip && p.lr > 0.0) ratio = std::min(ratio / p.lr, 1.0);
          }
          c[t] = lars_sgd_constants(p, ratio, is_excluded(t));
          if (trust_ratios != nullptr) trust_ratios[t] = ratio;
        }
      },
      [&](std::size_t, const WorkItem& item) {
        const OptimTensor& t = tensors[item.tensor];
        const std::size_t b = item.begin;
        T* buf = t.state[0] ? typed<T>(t.state[0]) + b : nullptr;
        k.sgd(c[item.tensor], typed<T>(t.param) + b, static_cast<const T*>(t.grad) + b, buf,
              item.end - b);
      });
}

}  // namespace

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

// The family optimizers: per-group constants in double, then every tensor's chunks in
// one parallel region (as cpp/runtime/optim.cpp does for SGD and Adam).
#include "fusedops/optim_family.hpp"

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

}  // namespace

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

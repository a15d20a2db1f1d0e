// The optimizer family beyond SGD and Adam: entry points on raw pointers, like
// fusedops.hpp (validation is the caller's job). No pybind11 here.
#pragma once

#include <cstddef>

#include "fusedops/fusedops.hpp"

namespace fusedops {

// Hyperparameters of one param group of a family optimizer; each kind reads its own.
struct FamilyParams {
  FamilyKind kind = FamilyKind::adagrad;
  double lr = 1e-3;
  double beta1 = 0.9;   // Adamax, NAdam, RAdam, Lion
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  double l1 = 0.0;
  double grad_scale = 1.0;
  double lr_decay = 0.0;        // Adagrad
  double alpha = 0.99;          // RMSprop
  double momentum = 0.0;        // RMSprop
  double momentum_decay = 4e-3; // NAdam
  double mu_product = 1.0;      // NAdam: product of mu_t over the steps before this one
  long long step = 1;           // this step's number (1 for the first)
  bool maximize = false;
  bool decoupled_weight_decay = false;  // NAdam, RAdam (Lion: always)
  bool centered = false;                // RMSprop
};

// NAdam's momentum coefficient mu_t = beta1 (1 - 0.5 * 0.96^(t * momentum_decay)).
double nadam_mu(double beta1, double momentum_decay, long long step);

// One step over all tensors (one parallel region); groups[t.group] are tensor t's
// hyperparameters, all of one kind. State slots as TypedKernels::family documents.
void family_step(Dtype dtype, const FamilyParams* groups, std::size_t n_groups,
                 const OptimTensor* tensors, std::size_t count);

}  // namespace fusedops

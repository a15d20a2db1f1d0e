// The optimizer family beyond SGD and Adam: entry points on raw pointers, like
// fusedops.hpp (validation is the caller's job). No pybind11 here.
#pragma once

#include <cstddef>

#include "fusedops/fusedops.hpp"
#include "fusedops/mixed.hpp"

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

// LAMB (You et al. 2019) and LARS (You et al. 2017): per-tensor trust ratios from norms
// of the data being updated, computed in the same call (a reduction pass, then the update
// pass, in one parallel region). `excluded` (nullable, one flag per tensor) marks tensors
// updated without weight decay and with trust ratio 1 (biases, norm weights).
// `trust_ratios` (nullable) receives each tensor's ratio.
struct LambParams {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-6;
  double weight_decay = 0.0;
  double l1 = 0.0;
  double grad_scale = 1.0;
  double trust_clip = 0.0;  // > 0: the ratio is clamped to at most this
  long long step = 1;
  bool bias_correction = true;
  bool maximize = false;
};

struct LarsParams {
  double lr = 0.0;
  double momentum = 0.9;
  double dampening = 0.0;
  double weight_decay = 0.0;
  double eta = 1e-3;   // the trust coefficient
  double eps = 1e-8;
  double l1 = 0.0;
  double grad_scale = 1.0;
  bool nesterov = false;
  bool maximize = false;
  bool first_step = false;  // the momentum buffer starts as the (scaled) gradient
  bool trust_clip = false;  // LARC clipping: ratio = min(ratio / lr, 1)
};

// LAMB: state[0] exp_avg, state[1] exp_avg_sq.
void lamb_step(Dtype dtype, const LambParams* groups, std::size_t n_groups,
               const OptimTensor* tensors, const unsigned char* excluded, std::size_t count,
               double* trust_ratios);
// LARS: state[0] momentum_buffer (nullptr without momentum).
void lars_step(Dtype dtype, const LarsParams* groups, std::size_t n_groups,
               const OptimTensor* tensors, const unsigned char* excluded, std::size_t count,
               double* trust_ratios);

// The mixed-precision forms (API.md's dtype table, per tensor, in one parallel region):
// rows without a fused 16-bit loop run the float32 kernels over widened L1 blocks (the
// block path of fusedops/mixed.hpp), and 16-bit results are rounded as `rounding` says.
// LAMB/LARS reduce their per-tensor norms over the widened values; with 16-bit state,
// LAMB's ||update|| is of the update computed from the stored (rounded) moments, the
// update its second pass applies.
void family_step_mixed(const FamilyParams* groups, std::size_t n_groups,
                       const MixedTensor* tensors, std::size_t count, const Rounding& rounding);
void lamb_step_mixed(const LambParams* groups, std::size_t n_groups, const MixedTensor* tensors,
                     const unsigned char* excluded, std::size_t count, const Rounding& rounding,
                     double* trust_ratios);
void lars_step_mixed(const LarsParams* groups, std::size_t n_groups, const MixedTensor* tensors,
                     const unsigned char* excluded, std::size_t count, const Rounding& rounding,
                     double* trust_ratios);

}  // namespace fusedops

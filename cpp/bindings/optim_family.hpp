// Hyperparameters of the family optimizers, shared by the functional steps
// (optim_family.cpp) and the optimizer classes (optimizer.cpp).
#pragma once

#include <vector>

#include "common.hpp"
#include "fusedops/optim_family.hpp"

namespace fusedops::bind {

// Range checks (ValueError naming `fn` and the argument) of the fields `p.kind` reads.
void check_family_params(const char* fn, const FamilyParams& p);

// A param group's hyperparameters: `group` maps FamilyParams field names (lr, beta1, ...)
// to numbers/bools already type-checked by the Python class; absent keys keep their
// defaults. Range-checked as check_family_params.
FamilyParams family_params_from_group(const char* where, FamilyKind kind, const py::dict& group,
                                      long long step, double grad_scale);

// Whether a kind with these hyperparameters reads and writes state slot k.
bool family_uses_state(const FamilyParams& p, int k);

void check_lamb_params(const char* fn, const LambParams& p);
void check_lars_params(const char* fn, const LarsParams& p);

// As family_params_from_group, for LAMB (keys lr, beta1, beta2, eps, weight_decay, l1,
// trust_clip, bias_correction, maximize) and LARS (lr, momentum, dampening, weight_decay,
// eta, eps, l1, nesterov, maximize, trust_clip).
LambParams lamb_params_from_group(const char* where, const py::dict& group, long long step,
                                  double grad_scale);
LarsParams lars_params_from_group(const char* where, const py::dict& group, double grad_scale,
                                  bool first_step);

// One flag per tensor from None (all zero) or a sequence of `count` bools.
std::vector<unsigned char> exclusion_flags(const char* fn, py::handle exclude, std::size_t count);

}  // namespace fusedops::bind

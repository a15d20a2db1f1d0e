// Hyperparameters of the family optimizers, shared by the functional steps
// (optim_family.cpp) and the optimizer classes (optimizer.cpp).
#pragma once

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

}  // namespace fusedops::bind

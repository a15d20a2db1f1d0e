// The per-step constants of the optimizers, derived once (in double) from the
// hyperparameters; shared by the single-dtype and the mixed-precision steps.
#pragma once

#include "fusedops/fusedops.hpp"

namespace fusedops {

SgdConstants sgd_constants(const SgdParams& p);
AdamConstants adam_constants(const AdamParams& p);

}  // namespace fusedops

// Hyperparameter validation shared by the functional steps and the optimizer classes.
#pragma once

#include <utility>

#include "common.hpp"

namespace fusedops::bind {

SgdParams checked_sgd_params(const char* fn, double lr, double momentum, double dampening,
                             double weight_decay, double l1, bool nesterov, bool maximize,
                             bool first_step, double grad_scale);

AdamParams checked_adam_params(const char* fn, long long step, double lr,
                               std::pair<double, double> betas, double eps, double weight_decay,
                               double l1, bool decoupled_weight_decay, bool amsgrad, bool maximize,
                               double grad_scale);

}  // namespace fusedops::bind

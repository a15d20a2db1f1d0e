// Hyperparameter validation shared by the functional steps and the optimizer classes.
#pragma once

#include <utility>
#include <vector>

#include "common.hpp"
#include "fusedops/mixed.hpp"

namespace fusedops::bind {

SgdParams checked_sgd_params(const char* fn, double lr, double momentum, double dampening,
                             double weight_decay, double l1, bool nesterov, bool maximize,
                             bool first_step, double grad_scale);

AdamParams checked_adam_params(const char* fn, long long step, double lr,
                               std::pair<double, double> betas, double eps, double weight_decay,
                               double l1, bool decoupled_weight_decay, bool amsgrad, bool maximize,
                               double grad_scale);

// The arrays of an optimizer step: params (written), grads (read), the state arguments
// (written; None where absent) and param_copies (written; None: none), unpacked and
// checked; one MixedTensor per param, its dtypes checked against API.md's table.
struct StepArrays {
  ArrayArg params, grads;
  std::vector<ArrayArg> states;  // same order as the names given
  ArrayArg copies;
  CallVector<MixedTensor> tensors;
};

StepArrays check_step_arrays(const char* function, py::handle params, py::handle grads,
                             const std::vector<std::pair<const char*, py::handle>>& states,
                             py::handle param_copies);

// The single-dtype form of a call (float32 or float64 throughout, no copies), if it has one.
bool single_dtype(const CallVector<MixedTensor>& tensors, Dtype* dtype,
                  CallVector<OptimTensor>* out);

// stochastic_rounding (a bool) and seed (an int >= 0); the caller sets the step.
Rounding checked_rounding(const char* fn, py::handle stochastic_rounding, py::handle seed);

}  // namespace fusedops::bind

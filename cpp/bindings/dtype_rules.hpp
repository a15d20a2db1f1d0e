// The dtype table of API.md ("Mixed precision"), checked per tensor of an optimizer step.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common.hpp"

namespace fusedops::bind {

// One labelled array of a tensor: "grads[3]" and its dtype.
struct LabelledDtype {
  std::string label;
  Dtype dtype;
};

// TypeError (prefixed with `fn`) naming the argument and both dtypes unless
// (param, grad, states, copy) is a row of the table. States may be empty; copy optional.
void check_tensor_dtypes(const std::string& fn, const LabelledDtype& param,
                         const LabelledDtype& grad, const std::vector<LabelledDtype>& states,
                         const LabelledDtype* copy);

// The grad rule alone: the param dtype, or any 16-bit float for float32 params.
bool grad_dtype_allowed(Dtype param, Dtype grad);

}  // namespace fusedops::bind

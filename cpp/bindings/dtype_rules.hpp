// The dtype table of API.md ("Mixed precision"), checked per tensor of an optimizer step.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "common.hpp"

namespace fusedops::bind {

// One labelled array of a tensor: its dtype and what names it ("grads[3]"): an argument
// and an index, whose label is built only for an error message (a call over a thousand
// tensors checks four thousand of these), or a given text.
struct LabelledDtype {
  LabelledDtype() = default;
  LabelledDtype(const ArrayArg& a, std::size_t i, Dtype d) : dtype(d), arg(&a), index(i) {}
  LabelledDtype(std::string name, Dtype d) : dtype(d), text(std::move(name)) {}
  std::string label() const { return arg != nullptr ? arg->label(index) : text; }

  Dtype dtype = Dtype::f32;
  const ArrayArg* arg = nullptr;
  std::size_t index = 0;
  std::string text;
};

// TypeError (prefixed with `fn`) naming the argument and both dtypes unless
// (param, grad, states, copy) is a row of the table. `count` states (may be 0); copy
// optional.
void check_tensor_dtypes(const char* fn, const LabelledDtype& param, const LabelledDtype& grad,
                         const LabelledDtype* states, std::size_t count,
                         const LabelledDtype* copy);

// The grad rule alone: the param dtype, or any 16-bit float for float32 params.
bool grad_dtype_allowed(Dtype param, Dtype grad);

}  // namespace fusedops::bind

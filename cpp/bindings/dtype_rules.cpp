#include "dtype_rules.hpp"

#include "fusedops/mixed.hpp"

namespace fusedops::bind {

namespace {

bool is_16bit(Dtype d) { return d == Dtype::bf16 || d == Dtype::f16; }

[[noreturn]] void mismatch(const char* fn, const LabelledDtype& a, const LabelledDtype& b,
                           const std::string& rule) {
  throw py::type_error(std::string(fn) + ": " + a.label() + " has dtype " + dtype_name(a.dtype) +
                       " but " + b.label() + " has dtype " + dtype_name(b.dtype) + "; " + rule);
}

bool state_dtype_allowed(Dtype param, Dtype state) {
  switch (param) {
    case Dtype::f64: return state == Dtype::f64;
    case Dtype::f32:
    case Dtype::bf16: return state == Dtype::f32 || state == Dtype::bf16;
    case Dtype::f16: return state == Dtype::f32;
  }
  return false;
}

const char* state_rule(Dtype param) {
  switch (param) {
    case Dtype::f64: return "float64 params keep float64 state";
    case Dtype::f16: return "the state of float16 params is float32";
    default: return "the state of float32 and bfloat16 params is float32 or bfloat16";
  }
}

}  // namespace

bool grad_dtype_allowed(Dtype param, Dtype grad) {
  return grad == param || (param == Dtype::f32 && is_16bit(grad));
}

void check_tensor_dtypes(const char* fn, const LabelledDtype& param, const LabelledDtype& grad,
                         const LabelledDtype* states, std::size_t count,
                         const LabelledDtype* copy) {
  if (!grad_dtype_allowed(param.dtype, grad.dtype)) {
    mismatch(fn, grad, param,
             "grads have the param dtype, or are bfloat16/float16 when the params are float32");
  }
  for (std::size_t k = 0; k < count; ++k) {
    if (!state_dtype_allowed(param.dtype, states[k].dtype)) {
      mismatch(fn, states[k], param, state_rule(param.dtype));
    }
    if (k > 0 && states[k].dtype != states[0].dtype) {
      mismatch(fn, states[k], states[0], "the state arrays of one param share one dtype");
    }
  }
  if (copy != nullptr) {
    if (param.dtype != Dtype::f32) {
      mismatch(fn, *copy, param, "param_copies are written from float32 params only");
    }
    if (!is_16bit(copy->dtype)) {
      mismatch(fn, *copy, param, "param_copies are bfloat16 or float16");
    }
  }
}

}  // namespace fusedops::bind

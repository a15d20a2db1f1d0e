// Bindings of the optimizer steps and gradient norms.
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

#include "common.hpp"
#include "dtype_rules.hpp"
#include "fusedops/mixed.hpp"
#include "optim_params.hpp"

namespace fusedops::bind {

SgdParams checked_sgd_params(const char* fn, double lr, double momentum, double dampening,
                             double weight_decay, double l1, bool nesterov, bool maximize,
                             bool first_step, double grad_scale) {
  require_at_least(fn, "lr", lr, 0.0);
  require_at_least(fn, "momentum", momentum, 0.0);
  require_range(fn, "dampening", dampening, 0.0, 1.0, true);
  require_at_least(fn, "weight_decay", weight_decay, 0.0);
  require_at_least(fn, "l1", l1, 0.0);
  require_positive(fn, "grad_scale", grad_scale);
  if (nesterov && (momentum <= 0.0 || dampening != 0.0)) {
    throw py::value_error(std::string(fn) +
                          ": nesterov=True requires momentum > 0 and dampening == 0");
  }
  SgdParams p;
  p.lr = lr;
  p.momentum = momentum;
  p.dampening = dampening;
  p.weight_decay = weight_decay;
  p.l1 = l1;
  p.grad_scale = grad_scale;
  p.nesterov = nesterov;
  p.maximize = maximize;
  p.first_step = first_step;
  return p;
}

AdamParams checked_adam_params(const char* fn, long long step, double lr,
                               std::pair<double, double> betas, double eps, double weight_decay,
                               double l1, bool decoupled_weight_decay, bool amsgrad, bool maximize,
                               double grad_scale) {
  if (step < 1) {
    throw py::value_error(std::string(fn) + ": step must be an int >= 1, got " +
                          std::to_string(step));
  }
  require_at_least(fn, "lr", lr, 0.0);
  require_range(fn, "betas[0]", betas.first, 0.0, 1.0, false);
  require_range(fn, "betas[1]", betas.second, 0.0, 1.0, false);
  require_at_least(fn, "eps", eps, 0.0);
  require_at_least(fn, "weight_decay", weight_decay, 0.0);
  require_at_least(fn, "l1", l1, 0.0);
  require_positive(fn, "grad_scale", grad_scale);
  AdamParams p;
  p.lr = lr;
  p.beta1 = betas.first;
  p.beta2 = betas.second;
  p.eps = eps;
  p.weight_decay = weight_decay;
  p.l1 = l1;
  p.grad_scale = grad_scale;
  p.step = step;
  p.decoupled_weight_decay = decoupled_weight_decay;
  p.amsgrad = amsgrad;
  p.maximize = maximize;
  return p;
}

// The state arrays a tensor of a step may have (MixedTensor::state).
constexpr std::size_t kMaxStepStates = sizeof(MixedTensor::state) / sizeof(void*);

StepArrays check_step_arrays(const char* function, py::handle params, py::handle grads,
                             const std::vector<std::pair<const char*, py::handle>>& states,
                             py::handle param_copies) {
  StepArrays s{unpack(function, "params", params), {}, {}, {"param_copies", false, {}}, {}};
  s.grads = unpack(function, "grads", grads, &s.params);
  std::vector<int> slot_of_state;
  int slot = 0;
  for (const auto& [name, obj] : states) {
    if (!obj.is_none()) {
      s.states.push_back(unpack(function, name, obj, &s.params));
      slot_of_state.push_back(slot);
    }
    ++slot;
  }
  const bool has_copies = !param_copies.is_none();
  if (has_copies) s.copies = unpack(function, "param_copies", param_copies, &s.params);
  if (s.states.size() > kMaxStepStates) {  // (callers pass at most three)
    throw std::logic_error(std::string(function) + ": more state lists than a tensor holds");
  }
  CallChecker checker(function, true);
  const std::size_t count = s.params.items.size();
  checker.reserve(count * (2 + s.states.size() + (has_copies ? 1 : 0)));
  s.tensors.resize(count);
  for (std::size_t i = 0; i < count; ++i) {
    MixedTensor& t = s.tensors[i];
    request_array_ahead(s.params.items, i);
    request_array_ahead(s.grads.items, i);
    for (const ArrayArg& a : s.states) request_array_ahead(a.items, i);
    if (has_copies) request_array_ahead(s.copies.items, i);
    const CheckedArray p = checker.check(s.params, i, Access::write);
    const CheckedArray g = checker.check(s.grads, i, Access::read, &s.params);
    t.param = p.data;
    t.n = p.n;
    t.grad = g.data;
    t.param_dtype = p.dtype;
    t.grad_dtype = g.dtype;
    t.state[0] = t.state[1] = t.state[2] = nullptr;
    t.state_dtype = p.dtype == Dtype::f64 ? Dtype::f64 : Dtype::f32;
    t.copy = nullptr;
    t.copy_dtype = Dtype::f32;
    t.remainder = nullptr;
    t.group = 0;
    LabelledDtype state_dtypes[kMaxStepStates];
    for (std::size_t k = 0; k < s.states.size(); ++k) {
      const CheckedArray a = checker.check(s.states[k], i, Access::write, &s.params);
      t.state[slot_of_state[k]] = a.data;
      t.state_dtype = a.dtype;
      state_dtypes[k] = {s.states[k], i, a.dtype};
    }
    LabelledDtype copy{};
    if (has_copies) {
      const CheckedArray c = checker.check(s.copies, i, Access::write, &s.params);
      t.copy = c.data;
      t.copy_dtype = c.dtype;
      copy = {s.copies, i, c.dtype};
    }
    check_tensor_dtypes(function, {s.params, i, p.dtype}, {s.grads, i, g.dtype}, state_dtypes,
                        s.states.size(), has_copies ? &copy : nullptr);
  }
  checker.check_no_overlap();
  return s;
}

// The single-dtype form of a call (float32 or float64 throughout, no copies), if it has one.
bool single_dtype(const CallVector<MixedTensor>& tensors, Dtype* dtype,
                  CallVector<OptimTensor>* out) {
  if (tensors.empty()) return false;
  *dtype = tensors[0].param_dtype;
  if (*dtype != Dtype::f32 && *dtype != Dtype::f64) return false;
  for (const MixedTensor& t : tensors) {
    if (t.param_dtype != *dtype || t.grad_dtype != *dtype || t.state_dtype != *dtype ||
        t.copy != nullptr || t.remainder != nullptr) {
      return false;
    }
  }
  out->reserve(tensors.size());
  for (const MixedTensor& t : tensors) {
    out->push_back({t.param, t.grad, {t.state[0], t.state[1], t.state[2]}, t.n, t.group});
  }
  return true;
}

Rounding checked_rounding(const char* fn, py::handle stochastic_rounding, py::handle seed) {
  Rounding r;
  r.stochastic = flag_arg(fn, "stochastic_rounding", stochastic_rounding);
  const long long s = int_arg(fn, "seed", seed);
  if (s < 0) {
    throw py::value_error(std::string(fn) + ": seed must be an int >= 0, got " + std::to_string(s));
  }
  r.seed = static_cast<std::uint64_t>(s);
  return r;
}

namespace {

void sgd_step_py(py::handle params, py::handle grads, py::handle momentum_buffers, py::handle lr,
                 py::handle momentum, py::handle dampening, py::handle weight_decay, py::handle l1,
                 py::handle nesterov, py::handle maximize, py::handle first_step,
                 py::handle grad_scale, py::handle step, py::handle param_copies,
                 py::handle stochastic_rounding, py::handle seed) {
  const char* fn = "sgd_step";
  const double momentum_value = real_arg(fn, "momentum", momentum);
  const SgdParams p = checked_sgd_params(
      fn, real_arg(fn, "lr", lr), momentum_value, real_arg(fn, "dampening", dampening),
      real_arg(fn, "weight_decay", weight_decay), real_arg(fn, "l1", l1),
      flag_arg(fn, "nesterov", nesterov), flag_arg(fn, "maximize", maximize),
      flag_arg(fn, "first_step", first_step), real_arg(fn, "grad_scale", grad_scale));
  const long long step_value = int_arg(fn, "step", step);
  if (step_value < 1) {
    throw py::value_error(std::string(fn) + ": step must be an int >= 1, got " +
                          std::to_string(step_value));
  }
  Rounding rounding = checked_rounding(fn, stochastic_rounding, seed);
  rounding.step = static_cast<std::uint64_t>(step_value);
  if (momentum_value != 0.0 && momentum_buffers.is_none()) {
    throw py::value_error("sgd_step: momentum_buffers is required when momentum != 0");
  }
  StepArrays s = check_step_arrays(fn, params, grads, {{"momentum_buffers", momentum_buffers}},
                                   param_copies);
  if (momentum_value == 0.0) {
    for (MixedTensor& t : s.tensors) t.state[0] = nullptr;
  }
  Dtype dtype;
  CallVector<OptimTensor> single;
  const bool is_single = single_dtype(s.tensors, &dtype, &single);
  py::gil_scoped_release release;
  if (is_single) {
    sgd_step(dtype, &p, 1, single.data(), single.size());
  } else {
    sgd_step_mixed(&p, 1, s.tensors.data(), s.tensors.size(), rounding);
  }
}

void adam_step_impl(const char* fn, py::handle params, py::handle grads, py::handle exp_avgs,
                    py::handle exp_avg_sqs, py::handle step, py::handle lr, py::handle betas,
                    py::handle eps, py::handle weight_decay, py::handle l1,
                    bool decoupled_weight_decay, py::handle amsgrad_obj,
                    py::handle max_exp_avg_sqs, py::handle maximize, py::handle grad_scale,
                    py::handle param_copies, py::handle stochastic_rounding, py::handle seed) {
  const bool amsgrad = flag_arg(fn, "amsgrad", amsgrad_obj);
  const AdamParams p = checked_adam_params(
      fn, int_arg(fn, "step", step), real_arg(fn, "lr", lr), pair_arg(fn, "betas", betas),
      real_arg(fn, "eps", eps), real_arg(fn, "weight_decay", weight_decay),
      real_arg(fn, "l1", l1), decoupled_weight_decay, amsgrad,
      flag_arg(fn, "maximize", maximize), real_arg(fn, "grad_scale", grad_scale));
  Rounding rounding = checked_rounding(fn, stochastic_rounding, seed);
  rounding.step = static_cast<std::uint64_t>(p.step);
  // The state check below skips None (optional state); these two are always written.
  if (exp_avgs.is_none() || exp_avg_sqs.is_none()) {
    throw py::type_error(std::string(fn) + ": " +
                         (exp_avgs.is_none() ? "exp_avgs" : "exp_avg_sqs") +
                         " must be a numpy.ndarray or a list/tuple of numpy.ndarray, got None");
  }
  if (amsgrad && max_exp_avg_sqs.is_none()) {
    throw py::value_error(std::string(fn) + ": max_exp_avg_sqs is required when amsgrad=True");
  }
  StepArrays s = check_step_arrays(fn, params, grads,
                                   {{"exp_avgs", exp_avgs},
                                    {"exp_avg_sqs", exp_avg_sqs},
                                    {"max_exp_avg_sqs", max_exp_avg_sqs}},
                                   param_copies);
  if (!amsgrad) {
    for (MixedTensor& t : s.tensors) t.state[2] = nullptr;
  }
  Dtype dtype;
  CallVector<OptimTensor> single;
  const bool is_single = single_dtype(s.tensors, &dtype, &single);
  py::gil_scoped_release release;
  if (is_single) {
    adam_step(dtype, &p, 1, single.data(), single.size());
  } else {
    adam_step_mixed(&p, 1, s.tensors.data(), s.tensors.size(), rounding);
  }
}

// Unpacks a read-only list of gradients for the norm functions.
// Each array may have any of the four float dtypes; `single` is set when they share
// float32 or float64 (the single-dtype kernels then run).
struct ReadArrays {
  ArrayArg arg;
  CallVector<Buffer> buffers;
  CallVector<TypedBuffer> typed;
  Dtype dtype = Dtype::f32;
  bool single = true;

  double norm(double norm_type) const {
    return single ? global_norm(dtype, buffers.data(), buffers.size(), norm_type)
                  : global_norm_mixed(typed.data(), typed.size(), norm_type);
  }
  bool finite() const {
    return single ? all_finite(dtype, buffers.data(), buffers.size())
                  : all_finite_mixed(typed.data(), typed.size());
  }
  void scale(double factor) const {
    if (single) {
      scale_in_place(dtype, buffers.data(), buffers.size(), factor);
    } else {
      scale_in_place_mixed(typed.data(), typed.size(), factor);
    }
  }
};

ReadArrays check_grads(const char* fn, py::handle grads, Access access) {
  ReadArrays r{unpack(fn, "grads", grads), {}, {}, Dtype::f32, true};
  CallChecker checker(fn, true);
  r.buffers.reserve(r.arg.items.size());
  for (std::size_t i = 0; i < r.arg.items.size(); ++i) {
    const CheckedArray a = checker.check(r.arg, i, access);
    r.buffers.push_back({a.data, a.n});
    r.typed.push_back({a.data, a.n, a.dtype});
    if (i == 0) r.dtype = a.dtype;
    r.single = r.single && a.dtype == r.dtype;
  }
  r.single = r.single && (r.dtype == Dtype::f32 || r.dtype == Dtype::f64);
  if (access == Access::write) checker.check_no_overlap();
  return r;
}

double checked_norm_type(const char* fn, py::handle norm_type_obj) {
  const double norm_type = real_arg(fn, "norm_type", norm_type_obj);
  if (!(norm_type > 0.0)) {
    throw py::value_error(std::string(fn) + ": norm_type must be > 0 or inf, got " +
                          std::to_string(norm_type));
  }
  return norm_type;
}

double grad_norm_py(py::handle grads, py::handle norm_type_obj) {
  const double norm_type = checked_norm_type("grad_norm", norm_type_obj);
  const ReadArrays r = check_grads("grad_norm", grads, Access::read);
  py::gil_scoped_release release;
  return r.norm(norm_type);
}

double clip_grad_norm_py(py::handle grads, py::handle max_norm_obj, py::handle norm_type_obj) {
  const double max_norm = real_arg("clip_grad_norm", "max_norm", max_norm_obj);
  require_at_least("clip_grad_norm", "max_norm", max_norm, 0.0);
  const double norm_type = checked_norm_type("clip_grad_norm", norm_type_obj);
  const ReadArrays r = check_grads("clip_grad_norm", grads, Access::write);
  py::gil_scoped_release release;
  const double total = r.norm(norm_type);
  // As torch.nn.utils.clip_grad_norm_: scale by min(1, max_norm / (total + 1e-6)); a NaN
  // norm scales by NaN.
  const double coef = max_norm / (total + 1e-6);
  if (!(coef >= 1.0)) r.scale(coef);
  return total;
}

bool all_finite_py(py::handle grads) {
  const ReadArrays r = check_grads("all_finite", grads, Access::read);
  py::gil_scoped_release release;
  return r.finite();
}

void bandwidth_probe_py(py::handle a, py::handle b, double factor) {
  const ArrayArg a_arg = unpack("_bandwidth_probe", "a", a);
  const ArrayArg b_arg = unpack("_bandwidth_probe", "b", b, &a_arg);
  if (a_arg.is_list) throw py::type_error("_bandwidth_probe: a must be a single array");
  CallChecker checker("_bandwidth_probe");
  const CheckedArray ca = checker.check(a_arg, 0, Access::write);
  const CheckedArray cb = checker.check(b_arg, 0, Access::read, &a_arg);
  checker.check_no_overlap();
  py::gil_scoped_release release;
  add_scaled(checker.dtype(), {ca.data, ca.n}, {cb.data, cb.n}, factor);
}

double read_probe_py(py::handle a) {
  const ArrayArg a_arg = unpack("_read_probe", "a", a);
  if (a_arg.is_list) throw py::type_error("_read_probe: a must be a single array");
  CallChecker checker("_read_probe");
  const CheckedArray ca = checker.check(a_arg, 0, Access::read);
  if (checker.dtype() != Dtype::f32) {
    throw py::type_error("_read_probe: a must be float32");
  }
  py::gil_scoped_release release;
  return read_sum({ca.data, ca.n});
}

}  // namespace

void register_optim(py::module_& m) {
  m.def("sgd_step", &sgd_step_py, py::arg("params"), py::arg("grads"),
        py::arg("momentum_buffers") = py::none(), py::kw_only(), py::arg("lr"),
        py::arg("momentum") = 0.0, py::arg("dampening") = 0.0, py::arg("weight_decay") = 0.0,
        py::arg("l1") = 0.0, py::arg("nesterov") = false, py::arg("maximize") = false,
        py::arg("first_step") = false, py::arg("grad_scale") = 1.0, py::arg("step") = 1,
        py::arg("param_copies") = py::none(), py::arg("stochastic_rounding") = false,
        py::arg("seed") = 0,
        "One fused SGD step (torch.optim.SGD semantics plus l1 and grad_scale), in place.\n"
        "step (an int >= 1, default 1) only keys stochastic rounding: the random bits come\n"
        "from (seed, step, tensor, element), so pass the step count (1, 2, ...) for new bits\n"
        "at each step, as the optimizer classes do.");

  m.def(
      "adam_step",
      [](py::handle params, py::handle grads, py::handle exp_avgs, py::handle exp_avg_sqs,
         py::handle step, py::handle lr, py::handle betas, py::handle eps,
         py::handle weight_decay, py::handle l1, py::handle decoupled_weight_decay,
         py::handle amsgrad, py::handle max_exp_avg_sqs, py::handle maximize,
         py::handle grad_scale, py::handle param_copies, py::handle stochastic_rounding,
         py::handle seed) {
        const bool decoupled = flag_arg("adam_step", "decoupled_weight_decay", decoupled_weight_decay);
        adam_step_impl("adam_step", params, grads, exp_avgs, exp_avg_sqs, step, lr, betas, eps,
                       weight_decay, l1, decoupled, amsgrad, max_exp_avg_sqs, maximize,
                       grad_scale, param_copies, stochastic_rounding, seed);
      },
      py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
      py::kw_only(), py::arg("step"), py::arg("lr") = 1e-3,
      py::arg("betas") = std::make_pair(0.9, 0.999), py::arg("eps") = 1e-8,
      py::arg("weight_decay") = 0.0, py::arg("l1") = 0.0,
      py::arg("decoupled_weight_decay") = false, py::arg("amsgrad") = false,
      py::arg("max_exp_avg_sqs") = py::none(), py::arg("maximize") = false,
      py::arg("grad_scale") = 1.0, py::arg("param_copies") = py::none(),
      py::arg("stochastic_rounding") = false, py::arg("seed") = 0,
      "One fused Adam step (torch.optim.Adam; AdamW with decoupled_weight_decay=True), in place.");

  m.def(
      "adamw_step",
      [](py::handle params, py::handle grads, py::handle exp_avgs, py::handle exp_avg_sqs,
         py::handle step, py::handle lr, py::handle betas, py::handle eps,
         py::handle weight_decay, py::handle l1, py::handle amsgrad,
         py::handle max_exp_avg_sqs, py::handle maximize, py::handle grad_scale,
         py::handle param_copies, py::handle stochastic_rounding, py::handle seed) {
        adam_step_impl("adamw_step", params, grads, exp_avgs, exp_avg_sqs, step, lr, betas,
                       eps, weight_decay, l1, true, amsgrad, max_exp_avg_sqs, maximize,
                       grad_scale, param_copies, stochastic_rounding, seed);
      },
      py::arg("params"), py::arg("grads"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"),
      py::kw_only(), py::arg("step"), py::arg("lr") = 1e-3,
      py::arg("betas") = std::make_pair(0.9, 0.999), py::arg("eps") = 1e-8,
      py::arg("weight_decay") = 1e-2, py::arg("l1") = 0.0, py::arg("amsgrad") = false,
      py::arg("max_exp_avg_sqs") = py::none(), py::arg("maximize") = false,
      py::arg("grad_scale") = 1.0, py::arg("param_copies") = py::none(),
      py::arg("stochastic_rounding") = false, py::arg("seed") = 0,
      "One fused AdamW step (torch.optim.AdamW), in place.");

  m.def("grad_norm", &grad_norm_py, py::arg("grads"), py::arg("norm_type") = 2.0,
        "Global norm over all arrays (norm_type > 0 or inf); NaN if any element is NaN.");
  m.def("clip_grad_norm", &clip_grad_norm_py, py::arg("grads"), py::arg("max_norm"),
        py::arg("norm_type") = 2.0,
        "torch.nn.utils.clip_grad_norm_: scale grads in place by "
        "min(1, max_norm / (total_norm + 1e-6)); returns total_norm.");
  m.def("all_finite", &all_finite_py, py::arg("grads"),
        "True when no array holds NaN or Inf.");
  m.def("_read_probe", &read_probe_py, py::arg("a"),
        "The sum of float32 a, read as four runs side by side per unit of work, with the "
        "kernels' threading: the read-only bandwidth probe (4 bytes/element).");
  m.def("_bandwidth_probe", &bandwidth_probe_py, py::arg("a"), py::arg("b"), py::arg("factor"),
        "a += factor * b with the kernels' threading: 12 bytes/element of float32 traffic.");
}

}  // namespace fusedops::bind

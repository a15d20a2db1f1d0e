// The native side of the optimizer classes (python/fusedops/optim.py). The optimizer owns
// its params and state arrays, so they are validated once, when the plan is built; a step
// validates only what is new (the grads and the current hyperparameters) and runs the
// whole update, for every param group, as one native call with one parallel region.
#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>

#include "common.hpp"
#include "dtype_rules.hpp"
#include "fusedops/mixed.hpp"
#include "optim_params.hpp"
#include "optim_family.hpp"

namespace fusedops::bind {

namespace {

// (lr, momentum, dampening, weight_decay, l1, nesterov, maximize, first_step)
using SgdGroup = std::tuple<double, double, double, double, double, bool, bool, bool>;
// (lr, beta1, beta2, eps, weight_decay, l1, amsgrad, maximize)
using AdamGroup = std::tuple<double, double, double, double, double, double, bool, bool>;

class OptimizerPlan {
 public:
  // params: list of arrays; groups: group index per param; states: lists aligned with
  // params (None entries where a tensor has no such state). Mixed precision: copies
  // (16-bit arrays written from float32 params) and remainders (uint16, the low halves of
  // bfloat16 params' float32 masters) are None or lists aligned with params (None
  // entries: none); 16-bit values are written with stochastic rounding when asked.
  OptimizerPlan(std::string name, py::list params, std::vector<std::size_t> groups,
                std::vector<py::list> states, py::object copies, py::object remainders,
                bool stochastic_rounding, std::uint64_t seed, py::object origins)
      : name_(std::move(name)), params_(params), states_(std::move(states)),
        extras_(py::make_tuple(copies, remainders)) {
    rounding_.stochastic = stochastic_rounding;
    rounding_.seed = seed;
    const ArrayArg params_arg = unpack(name_.c_str(), "params", params);
    const std::size_t n = params_arg.items.size();
    if (groups.size() != n) throw py::value_error("groups must have one entry per param");
    std::vector<ArrayArg> state_args;
    for (std::size_t k = 0; k < states_.size(); ++k) {
      if (states_[k].size() != n) throw py::value_error("each state list needs one entry per param");
      state_args.push_back(ArrayArg::list("state", sequence_snapshot(states_[k])));
    }
    const ArrayArg copies_arg = ArrayArg::list(
        "param_copies",
        copies.is_none() ? std::vector<py::object>(n, py::none()) : sequence_snapshot(copies));
    const ArrayArg remainders_arg = ArrayArg::list(
        "remainders", remainders.is_none() ? std::vector<py::object>(n, py::none())
                                           : sequence_snapshot(remainders));
    if (copies_arg.items.size() != n || remainders_arg.items.size() != n) {
      throw py::value_error("copies and remainders need one entry per param");
    }
    CallChecker checker(name_.c_str(), true);
    tensors_.resize(n);
    shapes_.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      MixedTensor& t = tensors_[i];
      const CheckedArray p = checker.check(params_arg, i, Access::write);
      t.param = p.data;
      t.n = p.n;
      t.grad = nullptr;
      t.group = groups[i];
      t.param_dtype = t.grad_dtype = p.dtype;
      t.state_dtype = p.dtype == Dtype::f64 ? Dtype::f64 : Dtype::f32;
      t.copy = nullptr;
      t.copy_dtype = Dtype::f32;
      t.remainder = nullptr;
      n_groups_ = std::max(n_groups_, groups[i] + 1);
      std::vector<LabelledDtype> state_dtypes;
      std::size_t state_bytes[3] = {0, 0, 0};
      for (std::size_t k = 0; k < 3; ++k) {
        t.state[k] = nullptr;
        if (k < state_args.size() && !state_args[k].items[i].is_none()) {
          const CheckedArray a = checker.check(state_args[k], i, Access::write, &params_arg);
          t.state[k] = a.data;
          t.state_dtype = a.dtype;
          state_bytes[k] = a.nbytes;
          state_dtypes.push_back({"the optimizer state of params[" + std::to_string(i) + "]",
                                  a.dtype});
        }
      }
      LabelledDtype copy_dtype{};
      if (!copies_arg.items[i].is_none()) {
        const CheckedArray c = checker.check(copies_arg, i, Access::write, &params_arg);
        t.copy = c.data;
        t.copy_dtype = c.dtype;
        copy_dtype = {copies_arg, i, c.dtype};
        record_written(c);
        written_arrays_.emplace_back(copies_arg.items[i], copies_arg.label(i));
      }
      check_tensor_dtypes(name_.c_str(), {params_arg, i, p.dtype}, {params_arg, i, p.dtype},
                          state_dtypes.data(), state_dtypes.size(),
                          t.copy ? &copy_dtype : nullptr);
      if (!remainders_arg.items[i].is_none()) {
        t.remainder = checked_remainder(remainders_arg.items[i], params_arg.items[i], p, i);
        record_written({t.remainder, t.n, 2 * t.n, Access::write, nullptr, 0, Dtype::bf16});
      }
      const py::array a = py::reinterpret_borrow<py::array>(params_arg.items[i]);
      shapes_[i].assign(a.shape(), a.shape() + a.ndim());
      record_written(p);
      written_arrays_.emplace_back(params_arg.items[i], "params[" + std::to_string(i) + "]");
      for (std::size_t k = 0; k < 3; ++k) {
        if (t.state[k] != nullptr) {
          record_written({t.state[k], t.n, state_bytes[k], Access::write, nullptr, 0});
          written_arrays_.emplace_back(state_args[k].items[i],
                                       "the optimizer state of params[" + std::to_string(i) + "]");
        }
      }
    }
    checker.check_no_overlap();
    set_origins(origins);
    single_ = !tensors_.empty();
    if (single_) dtype_ = tensors_[0].param_dtype;
    for (const MixedTensor& t : tensors_) {
      single_ = single_ && (dtype_ == Dtype::f32 || dtype_ == Dtype::f64) &&
                t.param_dtype == dtype_ && t.state_dtype == dtype_ && t.copy == nullptr &&
                t.remainder == nullptr;
    }
    std::sort(written_.begin(), written_.end());
    cleared_grads_.assign(n, nullptr);
  }

  bool step_sgd(py::handle grads, const std::vector<SgdGroup>& groups, double grad_scale,
                std::optional<double> max_grad_norm, bool skip_nonfinite, long long step) {
    require_positive(name_.c_str(), "grad_scale", grad_scale);
    std::vector<SgdParams> params(groups.size());
    for (std::size_t i = 0; i < groups.size(); ++i) {
      const auto& [lr, momentum, dampening, wd, l1, nesterov, maximize, first] = groups[i];
      const std::string fn = group_label(i);
      params[i] = checked_sgd_params(fn.c_str(), lr, momentum, dampening, wd, l1, nesterov,
                                     maximize, first, grad_scale);
    }
    check_group_count(params.size());
    for (const MixedTensor& t : tensors_) {
      if (params[t.group].momentum != 0.0 && t.state[0] == nullptr) {
        throw py::value_error(name_ + ": a param of group " + std::to_string(t.group) +
                              " has no momentum buffer");
      }
    }
    const std::vector<py::object> grad_items = grads_snapshot(grads);  // alive until return
    std::vector<MixedTensor> tensors = with_grads(grad_items);
    check_still_writeable();
    py::gil_scoped_release release;
    double scale = 1.0;
    if (!gradient_scale(tensors, grad_scale, max_grad_norm, skip_nonfinite, &scale)) return false;
    for (SgdParams& p : params) p.grad_scale = scale;
    for (MixedTensor& t : tensors) {
      if (params[t.group].momentum == 0.0) t.state[0] = nullptr;
    }
    std::vector<OptimTensor> single;
    if (single_dtype(tensors, &single)) {
      sgd_step(dtype_, params.data(), params.size(), single.data(), single.size());
    } else {
      Rounding r = rounding_;
      r.step = static_cast<std::uint64_t>(step);
      sgd_step_mixed(params.data(), params.size(), tensors.data(), tensors.size(), r);
    }
    return true;
  }

  bool step_adam(py::handle grads, const std::vector<AdamGroup>& groups, long long step,
                 bool decoupled, double grad_scale, std::optional<double> max_grad_norm,
                 bool skip_nonfinite) {
    require_positive(name_.c_str(), "grad_scale", grad_scale);
    std::vector<AdamParams> params(groups.size());
    for (std::size_t i = 0; i < groups.size(); ++i) {
      const auto& [lr, beta1, beta2, eps, wd, l1, amsgrad, maximize] = groups[i];
      const std::string fn = group_label(i);
      params[i] = checked_adam_params(fn.c_str(), step, lr, {beta1, beta2}, eps, wd, l1,
                                      decoupled, amsgrad, maximize, grad_scale);
    }
    check_group_count(params.size());
    for (const MixedTensor& t : tensors_) {
      if (params[t.group].amsgrad && t.state[2] == nullptr) {
        throw py::value_error(name_ + ": a param of group " + std::to_string(t.group) +
                              " has no max_exp_avg_sq state");
      }
    }
    const std::vector<py::object> grad_items = grads_snapshot(grads);  // alive until return
    std::vector<MixedTensor> tensors = with_grads(grad_items);
    check_still_writeable();
    py::gil_scoped_release release;
    double scale = 1.0;
    if (!gradient_scale(tensors, grad_scale, max_grad_norm, skip_nonfinite, &scale)) return false;
    for (AdamParams& p : params) p.grad_scale = scale;
    for (MixedTensor& t : tensors) {
      if (!params[t.group].amsgrad) t.state[2] = nullptr;
    }
    std::vector<OptimTensor> single;
    if (single_dtype(tensors, &single)) {
      adam_step(dtype_, params.data(), params.size(), single.data(), single.size());
    } else {
      Rounding r = rounding_;
      r.step = static_cast<std::uint64_t>(step);
      adam_step_mixed(params.data(), params.size(), tensors.data(), tensors.size(), r);
    }
    return true;
  }

  // One step of a family optimizer (FamilyKind `kind`); each group dict maps FamilyParams
  // field names to values (see family_params_from_group).
  bool step_family(py::handle grads, int kind, const std::vector<py::dict>& groups,
                   long long step, double grad_scale, std::optional<double> max_grad_norm,
                   bool skip_nonfinite) {
    require_positive(name_.c_str(), "grad_scale", grad_scale);
    if (kind < 0 || kind >= static_cast<int>(FamilyKind::count)) {
      throw py::value_error(name_ + ": unknown optimizer kind " + std::to_string(kind));
    }
    std::vector<FamilyParams> params(groups.size());
    for (std::size_t i = 0; i < groups.size(); ++i) {
      params[i] = family_params_from_group(group_label(i).c_str(), static_cast<FamilyKind>(kind),
                                           groups[i], step, grad_scale);
    }
    check_group_count(params.size());
    for (const MixedTensor& t : tensors_) {
      for (int k = 0; k < 3; ++k) {
        if (family_uses_state(params[t.group], k) && t.state[k] == nullptr) {
          throw py::value_error(name_ + ": a param of group " + std::to_string(t.group) +
                                " lacks state slot " + std::to_string(k));
        }
      }
    }
    const std::vector<py::object> grad_items = grads_snapshot(grads);  // alive until return
    std::vector<MixedTensor> tensors = with_grads(grad_items);
    check_still_writeable();
    py::gil_scoped_release release;
    double scale = 1.0;
    if (!gradient_scale(tensors, grad_scale, max_grad_norm, skip_nonfinite, &scale)) return false;
    for (FamilyParams& p : params) p.grad_scale = scale;
    for (MixedTensor& t : tensors) {
      for (int k = 0; k < 3; ++k) {
        if (!family_uses_state(params[t.group], k)) t.state[k] = nullptr;
      }
    }
    std::vector<OptimTensor> single;
    if (single_dtype(tensors, &single)) {
      family_step(dtype_, params.data(), params.size(), single.data(), single.size());
    } else {
      family_step_mixed(params.data(), params.size(), tensors.data(), tensors.size(),
                        rounding_at(step));
    }
    return true;
  }

  // LAMB / LARS: `excluded` holds one byte per param (nonzero: no weight decay, trust
  // ratio 1). Returns the per-tensor trust ratios, or None when the step was skipped.
  std::optional<std::vector<double>> step_lamb(py::handle grads, const std::vector<py::dict>& groups,
                                               long long step, const std::string& excluded,
                                               double grad_scale,
                                               std::optional<double> max_grad_norm,
                                               bool skip_nonfinite) {
    require_positive(name_.c_str(), "grad_scale", grad_scale);
    std::vector<LambParams> params(groups.size());
    for (std::size_t i = 0; i < groups.size(); ++i) {
      params[i] = lamb_params_from_group(group_label(i).c_str(), groups[i], step, grad_scale);
    }
    check_group_count(params.size());
    check_exclusion(excluded);
    for (const MixedTensor& t : tensors_) {
      if (t.state[0] == nullptr || t.state[1] == nullptr) {
        throw py::value_error(name_ + ": a param lacks its exp_avg/exp_avg_sq state");
      }
    }
    const std::vector<py::object> grad_items = grads_snapshot(grads);  // alive until return
    const std::vector<MixedTensor> tensors = with_grads(grad_items);
    check_still_writeable();
    std::vector<double> ratios(tensors.size());
    const auto* flags = reinterpret_cast<const unsigned char*>(excluded.data());
    py::gil_scoped_release release;
    double scale = 1.0;
    if (!gradient_scale(tensors, grad_scale, max_grad_norm, skip_nonfinite, &scale)) {
      return std::nullopt;
    }
    for (LambParams& p : params) p.grad_scale = scale;
    std::vector<OptimTensor> single;
    if (single_dtype(tensors, &single)) {
      lamb_step(dtype_, params.data(), params.size(), single.data(), flags, single.size(),
                ratios.data());
    } else {
      lamb_step_mixed(params.data(), params.size(), tensors.data(), flags, tensors.size(),
                      rounding_at(step), ratios.data());
    }
    return ratios;
  }

  // `first_step` per group: its momentum buffers start as the gradient.
  std::optional<std::vector<double>> step_lars(py::handle grads, const std::vector<py::dict>& groups,
                                               const std::vector<bool>& first_step,
                                               const std::string& excluded, double grad_scale,
                                               std::optional<double> max_grad_norm,
                                               bool skip_nonfinite, long long step) {
    require_positive(name_.c_str(), "grad_scale", grad_scale);
    if (first_step.size() != groups.size()) {
      throw py::value_error(name_ + ": first_step needs one flag per param group");
    }
    std::vector<LarsParams> params(groups.size());
    for (std::size_t i = 0; i < groups.size(); ++i) {
      params[i] = lars_params_from_group(group_label(i).c_str(), groups[i], grad_scale,
                                         first_step[i]);
    }
    check_group_count(params.size());
    check_exclusion(excluded);
    for (const MixedTensor& t : tensors_) {
      if (params[t.group].momentum != 0.0 && t.state[0] == nullptr) {
        throw py::value_error(name_ + ": a param of group " + std::to_string(t.group) +
                              " has no momentum buffer");
      }
    }
    const std::vector<py::object> grad_items = grads_snapshot(grads);  // alive until return
    std::vector<MixedTensor> tensors = with_grads(grad_items);
    check_still_writeable();
    std::vector<double> ratios(tensors.size());
    const auto* flags = reinterpret_cast<const unsigned char*>(excluded.data());
    py::gil_scoped_release release;
    double scale = 1.0;
    if (!gradient_scale(tensors, grad_scale, max_grad_norm, skip_nonfinite, &scale)) {
      return std::nullopt;
    }
    for (LarsParams& p : params) p.grad_scale = scale;
    for (MixedTensor& t : tensors) {
      if (params[t.group].momentum == 0.0) t.state[0] = nullptr;
    }
    std::vector<OptimTensor> single;
    if (single_dtype(tensors, &single)) {
      lars_step(dtype_, params.data(), params.size(), single.data(), flags, single.size(),
                ratios.data());
    } else {
      lars_step_mixed(params.data(), params.size(), tensors.data(), flags, tensors.size(),
                      rounding_at(step), ratios.data());
    }
    return ratios;
  }

  std::size_t size() const { return tensors_.size(); }

  // origins (None, or one (tensor, offset) pair per param): param i is the range of
  // tensor `tensor` starting at element `offset`, and stochastic rounding draws its bits
  // as for that tensor (a ZeRO-1 shard rounds as the unsharded step). A range may not
  // cross a multiple of 2**32 elements of its tensor (the keys change there).
  void set_origins(const py::object& origins) {
    if (origins.is_none()) return;
    const std::vector<py::object> items = sequence_snapshot(origins);
    if (items.size() != tensors_.size()) {
      throw py::value_error(name_ + ": origins needs one (tensor, offset) pair per param");
    }
    for (std::size_t i = 0; i < items.size(); ++i) {
      const auto [tensor, offset] = items[i].cast<std::pair<std::size_t, std::size_t>>();
      if (tensors_[i].n && offset >> 32 != (offset + tensors_[i].n - 1) >> 32) {
        throw py::value_error(name_ + ": origins[" + std::to_string(i) +
                              "] crosses a multiple of 2**32 elements");
      }
      tensors_[i].key_tensor = tensor;
      tensors_[i].key_offset = offset;
    }
  }

 private:
  using Range = std::pair<const char*, const char*>;

  // Params and state were checked when the plan was built; a param made read-only since
  // (flags.writeable = False) must not be written. A flag read per array.
  void check_still_writeable() const {
    for (const auto& [array, label] : written_arrays_) {
      if (!(py::detail::array_proxy(array.ptr())->flags &
            py::detail::npy_api::NPY_ARRAY_WRITEABLE_)) {
        throw py::value_error(name_ + ": " + label +
                              " has become read-only since the optimizer was built; the step "
                              "writes it in place (make it writeable again)");
      }
    }
  }

  std::vector<py::object> grads_snapshot(py::handle grads) const {
    if (!PyList_Check(grads.ptr()) && !PyTuple_Check(grads.ptr())) {
      throw py::type_error(name_ + ": grads must be a list/tuple of numpy.ndarray, got " +
                           type_name(grads));
    }
    return sequence_snapshot(grads);
  }

  // How this step writes 16-bit values: the random bits are keyed by the step count too.
  Rounding rounding_at(long long step) const {
    Rounding r = rounding_;
    r.step = static_cast<std::uint64_t>(step);
    return r;
  }

  std::string group_label(std::size_t i) const {
    return name_ + ": param_groups[" + std::to_string(i) + "]";
  }

  void check_exclusion(const std::string& excluded) const {
    if (excluded.size() != tensors_.size()) {
      throw py::value_error(name_ + ": expected one exclusion flag per param (" +
                            std::to_string(tensors_.size()) + "), got " +
                            std::to_string(excluded.size()));
    }
  }

  void check_group_count(std::size_t count) const {
    if (count != n_groups_) {
      throw py::value_error(name_ + ": expected hyperparameters for " +
                            std::to_string(n_groups_) + " param groups, got " +
                            std::to_string(count));
    }
  }

  void record_written(const CheckedArray& a) {
    if (a.nbytes == 0) return;
    const char* start = static_cast<const char*>(a.data);
    written_.emplace_back(start, start + a.nbytes);
  }

  // Checks the grads (the only arrays new at each step) and returns the tensors with them.
  std::vector<MixedTensor> with_grads(const std::vector<py::object>& seq) const {
    if (seq.size() != tensors_.size()) {
      throw py::value_error(name_ + ": grads has " + std::to_string(seq.size()) +
                            " arrays but the optimizer has " + std::to_string(tensors_.size()) +
                            " params (in param group order)");
    }
    std::vector<MixedTensor> tensors = tensors_;
    std::size_t i = 0;
    for (py::handle h : seq) {
      // This runs for every grad at every step: read the array's fields directly
      // (no temporary Python objects, no strings); errors take the slow, descriptive
      // path. (The layout check built its label for every grad, and the grads were
      // gathered for a norm nobody asked for: together 60% of the instructions of an
      // optim.Adam step over 1000 x 256 float32, callgrind, one thread, 1.73M -> 0.69M a
      // step; AMD EPYC Zen 4, 2 threads: 201 -> 86 us, bfloat16 params 202 -> 88.)
      const auto label = [i] { return "grads[" + std::to_string(i) + "]"; };
      if (Py_TYPE(h.ptr()) != py::detail::npy_api::get().PyArray_Type_) {
        require_plain_ndarray(name_ + ": " + label(), h);
      }
      const auto* fields = py::detail::array_proxy(h.ptr());
      const auto* descr = py::detail::array_descriptor_proxy(fields->descr);
      const auto a = [h] { return py::reinterpret_borrow<py::array>(h); };
      const Dtype param_dtype = tensors_[i].param_dtype;
      Dtype grad_dtype = param_dtype;
      if (!dtype_of_type_num(descr->type_num, &grad_dtype) || !is_native_byte_order(h) ||
          !grad_dtype_allowed(param_dtype, grad_dtype)) {
        throw py::type_error(name_ + ": " + label() + " has dtype " +
                             py::str(a().dtype()).cast<std::string>() + " but its param has dtype " +
                             dtype_name(param_dtype) +
                             (param_dtype == Dtype::f32
                                  ? "; expected float32, bfloat16 or float16"
                                  : "; expected the param dtype"));
      }
      tensors[i].grad_dtype = grad_dtype;
      const auto& shape = shapes_[i];
      bool same = static_cast<std::size_t>(fields->nd) == shape.size();
      for (std::size_t d = 0; same && d < shape.size(); ++d) same = fields->dimensions[d] == shape[d];
      if (!same) {
        throw py::value_error(name_ + ": " + label() + " has shape " + shape_string(a()) +
                              " but its param has shape " + shape_string(py::reinterpret_borrow<py::array>(params_[i])));
      }
      if (!layout_ok(fields->flags, Access::read)) {
        require_layout(name_ + ": " + label(), fields->flags, Access::read);
      }
      const char* start = fields->data;
      const std::size_t nbytes = tensors_[i].n * dtype_size(grad_dtype);
      // The written ranges never change while the plan lives, so a grad at the address
      // that passed last step (the usual reused gradient buffer) passes again.
      if (nbytes > 0 && start != cleared_grads_[i] && overlaps_written(start, start + nbytes)) {
        throw py::value_error(name_ + ": " + label() +
                              " shares memory with a param or optimizer state");
      }
      tensors[i].grad = start;
      ++i;
    }
    for (std::size_t k = 0; k < tensors.size(); ++k) {
      cleared_grads_[k] = static_cast<const char*>(tensors[k].grad);
    }
    return tensors;
  }

  bool overlaps_written(const char* start, const char* end) const {
    // written_ is sorted and disjoint: only the last range starting before `end` can overlap
    // (one starting at `end` itself only touches it: lower_bound, not upper_bound).
    auto it = std::lower_bound(written_.begin(), written_.end(), Range{end, nullptr},
                               [](const Range& x, const Range& y) { return x.first < y.first; });
    if (it == written_.begin()) return false;
    --it;
    return it->second > start;
  }

  // The divisor the kernels apply to the grads: grad_scale, times 1/clip_coef when the
  // global norm of the unscaled grads exceeds max_grad_norm. False: skip this step.
  bool gradient_scale(const std::vector<MixedTensor>& tensors, double grad_scale,
                      std::optional<double> max_grad_norm, bool skip_nonfinite,
                      double* divisor) const {
    *divisor = grad_scale;
    if (!max_grad_norm && !skip_nonfinite) return true;  // no pass over the grads
    std::vector<TypedBuffer> buffers;
    buffers.reserve(tensors.size());
    bool single = true;
    for (const MixedTensor& t : tensors) {
      buffers.push_back({const_cast<void*>(t.grad), t.n, t.grad_dtype});
      single = single && single_ && t.grad_dtype == dtype_;
    }
    std::vector<Buffer> plain;
    if (single) {
      for (const TypedBuffer& b : buffers) plain.push_back({b.data, b.n});
    }
    const auto global_norm = [&](Dtype, const TypedBuffer*, std::size_t, double norm_type) {
      return single ? fusedops::global_norm(dtype_, plain.data(), plain.size(), norm_type)
                    : global_norm_mixed(buffers.data(), buffers.size(), norm_type);
    };
    const auto all_finite = [&](Dtype, const TypedBuffer*, std::size_t) {
      return single ? fusedops::all_finite(dtype_, plain.data(), plain.size())
                    : all_finite_mixed(buffers.data(), buffers.size());
    };
    *divisor = grad_scale;
    if (max_grad_norm) {
      const double norm = global_norm(dtype_, buffers.data(), buffers.size(), 2.0) / grad_scale;
      // A finite norm proves every grad finite; an infinite one may be overflow, so check.
      if (skip_nonfinite && !std::isfinite(norm) &&
          !all_finite(dtype_, buffers.data(), buffers.size())) {
        return false;
      }
      const double coef = *max_grad_norm / (norm + 1e-6);
      if (!(coef >= 1.0)) *divisor = grad_scale / coef;  // a NaN norm gives NaN, as torch
      return true;
    }
    return !skip_nonfinite || all_finite(dtype_, buffers.data(), buffers.size());
  }

  // The single-dtype form of a step (float32 or float64 throughout), if it has one.
  bool single_dtype(const std::vector<MixedTensor>& tensors, std::vector<OptimTensor>* out) const {
    if (!single_) return false;
    for (const MixedTensor& t : tensors) {
      if (t.grad_dtype != dtype_) return false;
    }
    out->reserve(tensors.size());
    for (const MixedTensor& t : tensors) {
      out->push_back({t.param, t.grad, {t.state[0], t.state[1], t.state[2]}, t.n, t.group});
    }
    return true;
  }

  std::uint16_t* checked_remainder(py::handle obj, py::handle param, const CheckedArray& p,
                                   std::size_t i) const {
    const std::string where = name_ + ": the remainder of params[" + std::to_string(i) + "]";
    require_plain_ndarray(where, obj);
    const auto a = py::reinterpret_borrow<py::array>(obj);
    if (p.dtype != Dtype::bf16) {
      throw py::type_error(where + ": a remainder needs bfloat16 params, got " + dtype_name(p.dtype));
    }
    if (!a.dtype().is(py::dtype::of<std::uint16_t>())) {
      throw py::type_error(where + " must have dtype uint16, got " + py::str(a.dtype()).cast<std::string>());
    }
    const auto pa = py::reinterpret_borrow<py::array>(param);
    bool same = a.ndim() == pa.ndim();
    for (py::ssize_t d = 0; same && d < a.ndim(); ++d) same = a.shape(d) == pa.shape(d);
    if (!same) throw py::value_error(where + " has shape " + shape_string(a) + ", expected " + shape_string(pa));
    require_layout(where, py::detail::array_proxy(obj.ptr())->flags, Access::write);
    return reinterpret_cast<std::uint16_t*>(py::detail::array_proxy(obj.ptr())->data);
  }

  std::string name_;
  py::list params_;                // keeps the arrays alive
  std::vector<py::list> states_;   // idem
  py::tuple extras_;               // keeps copies and remainders alive
  std::vector<MixedTensor> tensors_;
  std::vector<std::vector<py::ssize_t>> shapes_;
  std::vector<Range> written_;
  std::vector<std::pair<py::object, std::string>> written_arrays_;  // params and state
  mutable std::vector<const char*> cleared_grads_;  // grads that passed the overlap check
  std::size_t n_groups_ = 0;
  Dtype dtype_ = Dtype::f32;
  bool single_ = false;            // float32 or float64 throughout, no copies or remainders
  Rounding rounding_;
};

}  // namespace

void register_optimizer(py::module_& m) {
  m.def(
      "_check_sgd_group",
      [](const std::string& where, const SgdGroup& g) {
        const auto& [lr, momentum, dampening, wd, l1, nesterov, maximize, first] = g;
        checked_sgd_params(where.c_str(), lr, momentum, dampening, wd, l1, nesterov, maximize,
                           first, 1.0);
      },
      py::arg("where"), py::arg("group"), "Raises ValueError for out-of-range SGD hyperparameters.");
  m.def(
      "_check_adam_group",
      [](const std::string& where, const AdamGroup& g) {
        const auto& [lr, beta1, beta2, eps, wd, l1, amsgrad, maximize] = g;
        checked_adam_params(where.c_str(), 1, lr, {beta1, beta2}, eps, wd, l1, false, amsgrad,
                            maximize, 1.0);
      },
      py::arg("where"), py::arg("group"), "Raises ValueError for out-of-range Adam hyperparameters.");
  py::class_<OptimizerPlan>(m, "_OptimizerPlan",
                            "Validated params and state of an optimizer; steps them natively.")
      .def(py::init<std::string, py::list, std::vector<std::size_t>, std::vector<py::list>,
                    py::object, py::object, bool, std::uint64_t, py::object>(),
           py::arg("name"), py::arg("params"), py::arg("groups"), py::arg("states"),
           py::arg("copies") = py::none(), py::arg("remainders") = py::none(),
           py::arg("stochastic_rounding") = false, py::arg("seed") = 0,
           py::arg("origins") = py::none())
      .def("step_sgd", &OptimizerPlan::step_sgd, py::arg("grads"), py::arg("groups"),
           py::arg("grad_scale"), py::arg("max_grad_norm"), py::arg("skip_nonfinite"),
           py::arg("step") = 0)
      .def("step_adam", &OptimizerPlan::step_adam, py::arg("grads"), py::arg("groups"),
           py::arg("step"), py::arg("decoupled"), py::arg("grad_scale"),
           py::arg("max_grad_norm"), py::arg("skip_nonfinite"))
      .def("step_family", &OptimizerPlan::step_family, py::arg("grads"), py::arg("kind"),
           py::arg("groups"), py::arg("step"), py::arg("grad_scale"), py::arg("max_grad_norm"),
           py::arg("skip_nonfinite"))
      .def("step_lamb", &OptimizerPlan::step_lamb, py::arg("grads"), py::arg("groups"),
           py::arg("step"), py::arg("excluded"), py::arg("grad_scale"), py::arg("max_grad_norm"),
           py::arg("skip_nonfinite"))
      .def("step_lars", &OptimizerPlan::step_lars, py::arg("grads"), py::arg("groups"),
           py::arg("first_step"), py::arg("excluded"), py::arg("grad_scale"),
           py::arg("max_grad_norm"), py::arg("skip_nonfinite"), py::arg("step") = 1)
      .def("__len__", &OptimizerPlan::size);
}

}  // namespace fusedops::bind

// Bindings of batch norm: forward, backward and the split pieces they are made of.
#include <cmath>
#include <string>
#include <vector>

#include "common.hpp"
#include "fusedops/mixed.hpp"

namespace fusedops::bind {

namespace {

// An argument that must be one ndarray (not a list).
ArrayArg single(const char* name, py::handle obj) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " + type_name(obj));
  }
  return ArrayArg::single(name, obj);
}

py::array as_array(const ArrayArg& arg) { return py::reinterpret_borrow<py::array>(arg.items[0]); }

// The natives are called positionally by the Python wrappers in
// python/fusedops/_batch_norm.py; scalar arguments arrive as objects and are converted
// by real_arg/flag_arg/int_arg (common.hpp), whose errors name the argument.

// x as (outer, channels, inner) for channel_axis 1 or -1; x must have ndim >= 2.
struct Layout {
  BatchNormShape shape;
  int channel_axis;
};

Layout layout_of(const CallChecker& checker, const ArrayArg& x_arg, py::handle axis_obj) {
  const long long channel_axis = int_arg(checker.function(), "channel_axis", axis_obj);
  if (channel_axis != 1 && channel_axis != -1) {
    checker.value_error("channel_axis must be 1 (N, C, *spatial) or -1 (N, *spatial, C), got " +
                        std::to_string(channel_axis));
  }
  const py::array x = as_array(x_arg);
  if (x.ndim() < 2) {
    checker.value_error(std::string(x_arg.name) + " must have ndim >= 2 (N, C, ...), got shape " +
                        shape_string(x));
  }
  const std::size_t ndim = static_cast<std::size_t>(x.ndim());
  const std::size_t axis = channel_axis == 1 ? 1 : ndim - 1;
  BatchNormShape s{1, static_cast<std::size_t>(x.shape(axis)), 1};
  for (std::size_t d = 0; d < ndim; ++d) {
    const std::size_t extent = static_cast<std::size_t>(x.shape(d));
    if (d < axis) s.outer *= extent;
    if (d > axis) s.inner *= extent;
  }
  return {s, static_cast<int>(channel_axis)};
}

std::string channels_expected(const Layout& layout) {
  return "x has " + std::to_string(layout.shape.channels) + " channels (channel_axis=" +
         std::to_string(layout.channel_axis) + "); expected shape (" +
         std::to_string(layout.shape.channels) + ",)";
}

// Batch norm's dtype rules, over a checker with per-array dtypes: x is float32, float64,
// bfloat16 or float16; every other x-shaped array (dy, out) has x's dtype; per-channel
// arrays (weight, bias, running statistics, dweight and dbias) have the parameter dtype:
// x's, or float32 when x is 16-bit (the math runs in float32 then, as it does for
// float32 x).
class BnChecker : public CallChecker {
 public:
  explicit BnChecker(const char* fn) : CallChecker(fn, true) {}

  CheckedArray x(const ArrayArg& x_arg) {
    const CheckedArray checked = check(x_arg, 0, Access::read);
    x_dtype_ = checked.dtype;
    return checked;
  }
  Dtype x_dtype() const { return x_dtype_; }
  Dtype param_dtype() const { return x_dtype_ == Dtype::f64 ? Dtype::f64 : Dtype::f32; }
  bool x_16bit() const { return x_dtype_ == Dtype::bf16 || x_dtype_ == Dtype::f16; }

  // An x-shaped array: x's shape and dtype.
  CheckedArray x_shaped(const ArrayArg& arg, Access access, const ArrayArg& x_arg) {
    const CheckedArray checked = check(arg, 0, access, &x_arg);
    if (checked.dtype != x_dtype_) {
      type_error(std::string(arg.name) + " has dtype " + dtype_name(checked.dtype) +
                 " but x has dtype " + dtype_name(x_dtype_) + "; they must be equal");
    }
    return checked;
  }

  void require_param_dtype(const char* name, Dtype dtype) const {
    if (dtype != param_dtype()) {
      type_error(std::string(name) + " has dtype " + dtype_name(dtype) + " but x has dtype " +
                 dtype_name(x_dtype_) + "; expected " + dtype_name(param_dtype()) +
                 (x_16bit() ? " (per-channel arrays are float32 for 16-bit x)" : ""));
    }
  }

 private:
  Dtype x_dtype_ = Dtype::f32;
};

// Checks an optional per-channel array (None allowed): the parameter dtype, layout,
// shape (C,).
void* per_channel(BnChecker& checker, const ArrayArg* arg, Access access, const Layout& layout) {
  if (arg == nullptr) return nullptr;
  const CheckedArray checked = checker.check(*arg, 0, access);
  checker.require_param_dtype(arg->name, checked.dtype);
  const py::array a = as_array(*arg);
  if (a.ndim() != 1 || static_cast<std::size_t>(a.shape(0)) != layout.shape.channels) {
    checker.value_error(std::string(arg->name) + " has shape " + shape_string(a) + " but " +
                        channels_expected(layout));
  }
  return checked.data;
}

// A per-channel statistic that is only read (mean, invstd, the gradient sums): a (C,)
// array of float64, read where it is (the call holds a reference to it, and no array the
// call writes may overlap it), or of the parameter dtype float32, read into doubles.
struct Statistic {
  const char* name;
  const double* values;
  const char* begin;
  std::size_t nbytes;
  std::vector<double> widened;  // float32 values as doubles (values points here)
};

Statistic statistic(const BnChecker& checker, const char* name, py::handle obj,
                    const Layout& layout) {
  // (The label is built only when a check fails; an exact ndarray skips the isinstance.)
  const auto where = [&] { return std::string(checker.function()) + ": " + name; };
  if (Py_TYPE(obj.ptr()) != py::detail::npy_api::get().PyArray_Type_) {
    require_plain_ndarray(where(), obj);
  }
  const py::array a = py::reinterpret_borrow<py::array>(obj);
  const int num = py::detail::array_descriptor_proxy(py::detail::array_proxy(a.ptr())->descr)->type_num;
  const bool native = is_native_byte_order(a);
  const bool f64 = native && num == py::detail::npy_api::NPY_DOUBLE_;
  const bool f32 = native && num == py::detail::npy_api::NPY_FLOAT_;
  const bool f32_params = checker.param_dtype() == Dtype::f32;
  if (!f64 && !(f32 && f32_params)) {
    checker.type_error(std::string(name) + " has dtype " + py::str(a.dtype()).cast<std::string>() +
                       "; expected float64" +
                       (f32_params ? std::string(" (or float32, the parameter dtype of ") +
                                         dtype_name(checker.x_dtype()) + " x)"
                                   : std::string()));
  }
  if (a.ndim() != 1 || static_cast<std::size_t>(a.shape(0)) != layout.shape.channels) {
    checker.value_error(std::string(name) + " has shape " + shape_string(a) + " but " +
                        channels_expected(layout));
  }
  if (!layout_ok(a.flags(), Access::read)) require_layout(where(), a.flags(), Access::read);
  Statistic s{name, static_cast<const double*>(a.data()), static_cast<const char*>(a.data()),
              static_cast<std::size_t>(a.nbytes()), {}};
  if (!f64) {
    const float* data = static_cast<const float*>(a.data());
    s.widened.assign(data, data + layout.shape.channels);
    s.values = s.widened.data();
  }
  return s;
}

// The written x-shaped array may not share memory with a statistic of the call.
void check_no_overlap(const CallChecker& checker, const py::array& out, const char* out_name,
                      const std::vector<const Statistic*>& stats) {
  const char* begin = static_cast<const char*>(out.data());
  const char* end = begin + out.nbytes();
  for (const Statistic* s : stats) {
    if (s->nbytes > 0 && out.nbytes() > 0 && s->begin < end && begin < s->begin + s->nbytes) {
      checker.value_error(std::string(out_name) + " shares memory with " + s->name +
                          "; an array written by a call may not overlap any other array of "
                          "the call");
    }
  }
}

// The array written as the x-shaped result: `out` when given (checked), else a new one.
py::array x_shaped_result(BnChecker& checker, const ArrayArg* out_arg, const ArrayArg& x_arg) {
  if (out_arg != nullptr) {
    checker.x_shaped(*out_arg, Access::write, x_arg);
    return as_array(*out_arg);
  }
  return new_array_like(x_arg.items[0]);
}

// A per-channel result (dweight, dbias) of the parameter dtype.
py::array channel_result(const BnChecker& checker, const Layout& layout) {
  const std::size_t c = layout.shape.channels;
  return new_vector(checker.param_dtype() == Dtype::f64 ? py::detail::npy_api::NPY_DOUBLE_
                                                        : py::detail::npy_api::NPY_FLOAT_,
                    c);
}

py::array_t<double> float64_result(std::size_t n) {
  return py::reinterpret_steal<py::array_t<double>>(
      new_vector(py::detail::npy_api::NPY_DOUBLE_, n).release());
}

struct Optional {
  ArrayArg arg;
  bool present;
  Optional(const char* name, py::handle obj)
      : arg(obj.is_none() ? ArrayArg{name, false, {}} : single(name, obj)), present(!obj.is_none()) {}
  const ArrayArg* get() const { return present ? &arg : nullptr; }
};

py::tuple batch_norm_forward_py(py::handle x_obj, py::handle weight_obj, py::handle bias_obj,
                                py::handle running_mean_obj, py::handle running_var_obj,
                                py::handle training_obj, py::handle momentum_obj,
                                py::handle eps_obj, py::handle channel_axis,
                                py::handle out_obj) {
  const char* fn = "batch_norm_forward";
  const bool training = flag_arg(fn, "training", training_obj);
  const double momentum = real_arg(fn, "momentum", momentum_obj);
  const double eps = real_arg(fn, "eps", eps_obj);
  require_range(fn, "momentum", momentum, 0.0, 1.0, true);
  require_at_least(fn, "eps", eps, 0.0);
  const ArrayArg x_arg = single("x", x_obj);
  const Optional weight("weight", weight_obj), bias("bias", bias_obj);
  const Optional running_mean("running_mean", running_mean_obj);
  const Optional running_var("running_var", running_var_obj);
  const Optional out("out", out_obj);

  BnChecker checker(fn);
  const CheckedArray x = checker.x(x_arg);
  const Layout layout = layout_of(checker, x_arg, channel_axis);
  BatchNormForwardArgs args{};
  args.x = x.data;
  args.weight = per_channel(checker, weight.get(), Access::read, layout);
  args.bias = per_channel(checker, bias.get(), Access::read, layout);
  // Running statistics are only read in eval mode.
  const Access stats_access = training ? Access::write : Access::read;
  args.running_mean = per_channel(checker, running_mean.get(), stats_access, layout);
  args.running_var = per_channel(checker, running_var.get(), stats_access, layout);
  if (running_mean.present != running_var.present) {
    checker.value_error(std::string(running_mean.present ? "running_var" : "running_mean") +
                        " is None but " + (running_mean.present ? "running_mean" : "running_var") +
                        " is given; pass both running statistics or neither");
  }
  if (!training && !running_mean.present) {
    checker.value_error(
        "training=False normalizes with running_mean and running_var, which are None");
  }
  const std::size_t per_channel_count = layout.shape.outer * layout.shape.inner;
  if (training && per_channel_count < 2) {
    checker.value_error("training needs more than 1 value per channel, got " +
                        std::to_string(per_channel_count) + " for x of shape " +
                        shape_string(as_array(x_arg)));
  }
  py::array y = x_shaped_result(checker, out.get(), x_arg);
  checker.check_no_overlap();

  py::array_t<double> save_mean = float64_result(layout.shape.channels);
  py::array_t<double> save_invstd = float64_result(layout.shape.channels);
  args.y = y.mutable_data();
  args.save_mean = save_mean.mutable_data();
  args.save_invstd = save_invstd.mutable_data();
  args.training = training;
  args.momentum = momentum;
  args.eps = eps;
  {
    py::gil_scoped_release release;
    batch_norm_forward(checker.x_dtype(), layout.shape, args);
  }
  return py::make_tuple(y, save_mean, save_invstd);
}

py::tuple batch_norm_backward_py(py::handle dy_obj, py::handle x_obj, py::handle weight_obj,
                                 py::handle save_mean_obj, py::handle save_invstd_obj,
                                 py::handle training_obj, py::handle channel_axis,
                                 py::handle out_obj) {
  const char* fn = "batch_norm_backward";
  const bool training = flag_arg(fn, "training", training_obj);
  const ArrayArg dy_arg = single("dy", dy_obj);
  const ArrayArg x_arg = single("x", x_obj);
  const Optional weight("weight", weight_obj);
  const Optional out("out", out_obj);

  BnChecker checker(fn);
  const CheckedArray x = checker.x(x_arg);
  const Layout layout = layout_of(checker, x_arg, channel_axis);
  BatchNormBackwardArgs args{};
  args.x = x.data;
  args.dy = checker.x_shaped(dy_arg, Access::read, x_arg).data;
  args.weight = per_channel(checker, weight.get(), Access::read, layout);
  const Statistic save_mean = statistic(checker, "save_mean", save_mean_obj, layout);
  const Statistic save_invstd = statistic(checker, "save_invstd", save_invstd_obj, layout);
  py::array dx = x_shaped_result(checker, out.get(), x_arg);
  checker.check_no_overlap();
  check_no_overlap(checker, dx, "out", {&save_mean, &save_invstd});

  py::object grad_weight = py::none(), grad_bias = py::none();
  if (weight.present) {
    py::array gw = channel_result(checker, layout), gb = channel_result(checker, layout);
    args.grad_weight = gw.mutable_data();
    args.grad_bias = gb.mutable_data();
    grad_weight = gw;
    grad_bias = gb;
  }
  args.save_mean = save_mean.values;
  args.save_invstd = save_invstd.values;
  args.dx = dx.mutable_data();
  args.training = training;
  {
    py::gil_scoped_release release;
    batch_norm_backward(checker.x_dtype(), layout.shape, args);
  }
  return py::make_tuple(dx, grad_weight, grad_bias);
}

py::tuple batch_norm_stats_py(py::handle x_obj, py::handle channel_axis) {
  const char* fn = "batch_norm_stats";
  const ArrayArg x_arg = single("x", x_obj);
  BnChecker checker(fn);
  const CheckedArray x = checker.x(x_arg);
  const Layout layout = layout_of(checker, x_arg, channel_axis);
  py::array_t<double> mean = float64_result(layout.shape.channels);
  py::array_t<double> m2 = float64_result(layout.shape.channels);
  double* mean_data = mean.mutable_data();
  double* m2_data = m2.mutable_data();
  {
    py::gil_scoped_release release;
    batch_norm_stats(checker.x_dtype(), layout.shape, x.data, mean_data, m2_data);
  }
  return py::make_tuple(mean, m2);
}

// The per-piece statistics of a combine: a float64 (pieces, C) array, or a list/tuple of
// float64 (C,) arrays; copied row-major into `values`.
struct Pieces {
  std::size_t count = 0;
  std::size_t channels = 0;
  std::vector<double> values;
};

Pieces pieces_of(const char* fn, const char* name, py::handle obj) {
  const std::string where = std::string(fn) + ": " + name;
  const auto float64_array = [&](py::handle item, const std::string& label) {
    if (!py::isinstance<py::array>(item)) {
      throw py::type_error(where + " must be a float64 numpy.ndarray of shape (pieces, C) or a "
                           "list/tuple of float64 (C,) arrays; " + label + " is a " +
                           type_name(item));
    }
    const std::string item_where = std::string(fn) + ": " + label;
    require_plain_ndarray(item_where, item);
    const py::array a = py::reinterpret_borrow<py::array>(item);
    if (!a.dtype().equal(py::dtype::of<double>())) {
      throw py::type_error(item_where + " has dtype " + py::str(a.dtype()).cast<std::string>() +
                           "; expected float64");
    }
    require_layout(item_where, a.flags(), Access::read);
    return a;
  };
  Pieces p;
  if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) {
    const std::vector<py::object> items = sequence_snapshot(obj);
    p.count = items.size();
    for (std::size_t i = 0; i < p.count; ++i) {
      const std::string label = std::string(name) + "[" + std::to_string(i) + "]";
      const py::array a = float64_array(items[i], label);
      if (a.ndim() != 1 || (i > 0 && static_cast<std::size_t>(a.shape(0)) != p.channels)) {
        throw py::value_error(where + ": " + label + " has shape " + shape_string(a) +
                              "; expected (C,) like " + name + "[0]");
      }
      p.channels = static_cast<std::size_t>(a.shape(0));
      const double* data = static_cast<const double*>(a.data());
      p.values.insert(p.values.end(), data, data + p.channels);
    }
  } else {
    const py::array a = float64_array(obj, name);
    if (a.ndim() != 2) {
      throw py::value_error(where + " has shape " + shape_string(a) + "; expected (pieces, C)");
    }
    p.count = static_cast<std::size_t>(a.shape(0));
    p.channels = static_cast<std::size_t>(a.shape(1));
    const double* data = static_cast<const double*>(a.data());
    p.values.assign(data, data + p.count * p.channels);
  }
  if (p.count == 0) throw py::value_error(where + " holds no pieces; pass at least one");
  return p;
}

// Counts of the pieces: a 1-D int or float array or a list/tuple of numbers, each finite
// and >= 0.
std::vector<double> counts_of(const char* fn, py::handle obj, std::size_t pieces) {
  const std::string where = std::string(fn) + ": counts";
  std::vector<double> counts;
  if (py::isinstance<py::array>(obj)) {
    require_plain_ndarray(where, obj);
    const py::array a = py::reinterpret_borrow<py::array>(obj);
    const char kind = a.dtype().kind();
    if (kind != 'i' && kind != 'u' && kind != 'f') {
      throw py::type_error(where + " has dtype " + py::str(a.dtype()).cast<std::string>() +
                           "; expected an integer or float dtype");
    }
    if (a.ndim() != 1) {
      throw py::value_error(where + " has shape " + shape_string(a) + "; expected (pieces,)");
    }
    const auto as_double = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(a);
    counts.assign(as_double.data(), as_double.data() + as_double.size());
  } else if (py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj)) {
    const std::vector<py::object> items = sequence_snapshot(obj);
    for (std::size_t i = 0; i < items.size(); ++i) {
      const std::string label = "counts[" + std::to_string(i) + "]";
      counts.push_back(real_arg(fn, label.c_str(), items[i]));
    }
  } else {
    throw py::type_error(where + " must be a 1-D numpy.ndarray or a list/tuple of numbers, got " +
                         type_name(obj));
  }
  if (counts.size() != pieces) {
    throw py::value_error(where + " has " + std::to_string(counts.size()) +
                          " values but means has " + std::to_string(pieces) + " pieces");
  }
  double total = 0.0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    if (!std::isfinite(counts[i]) || counts[i] < 0.0) {
      throw py::value_error(where + "[" + std::to_string(i) + "] must be finite and >= 0, got " +
                            py::repr(py::float_(counts[i])).cast<std::string>());
    }
    total += counts[i];
  }
  if (!(total > 0.0)) throw py::value_error(where + " sum to 0; there is nothing to combine");
  return counts;
}

py::tuple batch_norm_combine_stats_py(py::handle means_obj, py::handle m2s_obj,
                                      py::handle counts_obj) {
  const char* fn = "batch_norm_combine_stats";
  const Pieces means = pieces_of(fn, "means", means_obj);
  const Pieces m2s = pieces_of(fn, "m2s", m2s_obj);
  if (m2s.count != means.count || m2s.channels != means.channels) {
    throw py::value_error(std::string(fn) + ": m2s holds " + std::to_string(m2s.count) +
                          " pieces of " + std::to_string(m2s.channels) + " channels but means " +
                          std::to_string(means.count) + " of " + std::to_string(means.channels) +
                          "; they must match");
  }
  const std::vector<double> counts = counts_of(fn, counts_obj, means.count);
  py::array_t<double> mean = float64_result(means.channels);
  py::array_t<double> var = float64_result(means.channels);
  py::array_t<double> m2 = float64_result(means.channels);
  batch_norm_combine_stats(means.values.data(), m2s.values.data(), counts.data(), means.count,
                           means.channels, mean.mutable_data(), var.mutable_data(),
                           m2.mutable_data());
  return py::make_tuple(mean, var, m2);
}

py::array batch_norm_elemt_py(py::handle x_obj, py::handle weight_obj, py::handle bias_obj,
                              py::handle mean_obj, py::handle invstd_obj,
                              py::handle channel_axis, py::handle out_obj) {
  const char* fn = "batch_norm_elemt";
  const ArrayArg x_arg = single("x", x_obj);
  const Optional weight("weight", weight_obj), bias("bias", bias_obj);
  const Optional out("out", out_obj);
  BnChecker checker(fn);
  const CheckedArray x = checker.x(x_arg);
  const Layout layout = layout_of(checker, x_arg, channel_axis);
  BatchNormElemtArgs args{};
  args.x = x.data;
  args.weight = per_channel(checker, weight.get(), Access::read, layout);
  args.bias = per_channel(checker, bias.get(), Access::read, layout);
  const Statistic mean = statistic(checker, "mean", mean_obj, layout);
  const Statistic invstd = statistic(checker, "invstd", invstd_obj, layout);
  py::array y = x_shaped_result(checker, out.get(), x_arg);
  checker.check_no_overlap();
  check_no_overlap(checker, y, "out", {&mean, &invstd});
  args.y = y.mutable_data();
  args.mean = mean.values;
  args.invstd = invstd.values;
  {
    py::gil_scoped_release release;
    batch_norm_elemt(checker.x_dtype(), layout.shape, args);
  }
  return y;
}

py::tuple batch_norm_backward_reduce_py(py::handle dy_obj, py::handle x_obj, py::handle mean_obj,
                                        py::handle invstd_obj, py::handle channel_axis) {
  const char* fn = "batch_norm_backward_reduce";
  const ArrayArg dy_arg = single("dy", dy_obj);
  const ArrayArg x_arg = single("x", x_obj);
  BnChecker checker(fn);
  const CheckedArray x = checker.x(x_arg);
  const Layout layout = layout_of(checker, x_arg, channel_axis);
  const CheckedArray dy = checker.x_shaped(dy_arg, Access::read, x_arg);
  const Statistic mean = statistic(checker, "mean", mean_obj, layout);
  const Statistic invstd = statistic(checker, "invstd", invstd_obj, layout);
  py::array_t<double> sum_dy = float64_result(layout.shape.channels);
  py::array_t<double> sum_dy_xhat = float64_result(layout.shape.channels);
  double* sum_dy_data = sum_dy.mutable_data();
  double* sum_dy_xhat_data = sum_dy_xhat.mutable_data();
  {
    py::gil_scoped_release release;
    batch_norm_backward_reduce(checker.x_dtype(), layout.shape, dy.data, x.data,
                               mean.values, invstd.values, sum_dy_data,
                               sum_dy_xhat_data);
  }
  return py::make_tuple(sum_dy, sum_dy_xhat);
}

py::array batch_norm_backward_elemt_py(py::handle dy_obj, py::handle x_obj, py::handle weight_obj,
                                       py::handle mean_obj, py::handle invstd_obj,
                                       py::handle sum_dy_obj, py::handle sum_dy_xhat_obj,
                                       py::handle count_obj, py::handle channel_axis,
                                       py::handle out_obj) {
  const char* fn = "batch_norm_backward_elemt";
  const double count = real_arg(fn, "count", count_obj);
  if (!std::isfinite(count) || !(count > 0.0)) {
    throw py::value_error(std::string(fn) + ": count must be finite and > 0, got " +
                          py::repr(py::float_(count)).cast<std::string>());
  }
  const ArrayArg dy_arg = single("dy", dy_obj);
  const ArrayArg x_arg = single("x", x_obj);
  const Optional weight("weight", weight_obj);
  const Optional out("out", out_obj);
  BnChecker checker(fn);
  const CheckedArray x = checker.x(x_arg);
  const Layout layout = layout_of(checker, x_arg, channel_axis);
  BatchNormBackwardElemtArgs args{};
  args.x = x.data;
  args.dy = checker.x_shaped(dy_arg, Access::read, x_arg).data;
  args.weight = per_channel(checker, weight.get(), Access::read, layout);
  const Statistic mean = statistic(checker, "mean", mean_obj, layout);
  const Statistic invstd = statistic(checker, "invstd", invstd_obj, layout);
  const Statistic sum_dy = statistic(checker, "sum_dy", sum_dy_obj, layout);
  const Statistic sum_dy_xhat = statistic(checker, "sum_dy_xhat", sum_dy_xhat_obj, layout);
  py::array dx = x_shaped_result(checker, out.get(), x_arg);
  checker.check_no_overlap();
  check_no_overlap(checker, dx, "out", {&mean, &invstd, &sum_dy, &sum_dy_xhat});
  args.dx = dx.mutable_data();
  args.mean = mean.values;
  args.invstd = invstd.values;
  args.sum_dy = sum_dy.values;
  args.sum_dy_xhat = sum_dy_xhat.values;
  args.count = count;
  {
    py::gil_scoped_release release;
    batch_norm_backward_elemt(checker.x_dtype(), layout.shape, args);
  }
  return dx;
}

}  // namespace

// The natives take every argument positionally, and python/fusedops/_batch_norm.py gives
// them their public, keyword-friendly signatures: pybind11 matches each keyword argument
// by building a string per parameter, which cost about 1 us a call here, more than the
// whole kernel at MLP sizes.
void register_norm(py::module_& m) {
  m.def("_batch_norm_forward", &batch_norm_forward_py);
  m.def("_batch_norm_backward", &batch_norm_backward_py);
  m.def("_batch_norm_stats", &batch_norm_stats_py);
  m.def("_batch_norm_combine_stats", &batch_norm_combine_stats_py);
  m.def("_batch_norm_elemt", &batch_norm_elemt_py);
  m.def("_batch_norm_backward_reduce", &batch_norm_backward_reduce_py);
  m.def("_batch_norm_backward_elemt", &batch_norm_backward_elemt_py);
}

}  // namespace fusedops::bind

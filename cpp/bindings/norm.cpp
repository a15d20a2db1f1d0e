// Bindings of batch norm forward and backward.
#include <string>
#include <vector>

#include "common.hpp"

namespace fusedops::bind {

namespace {

// An argument that must be one ndarray (not a list).
ArrayArg single(const char* name, py::handle obj) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " + type_name(obj));
  }
  return ArrayArg{name, false, {py::reinterpret_borrow<py::object>(obj)}};
}

py::array as_array(const ArrayArg& arg) { return py::reinterpret_borrow<py::array>(arg.items[0]); }

// x as (outer, channels, inner) for channel_axis 1 or -1; x must have ndim >= 2.
struct Layout {
  BatchNormShape shape;
  int channel_axis;
};

Layout layout_of(const CallChecker& checker, const ArrayArg& x_arg, py::handle channel_axis_obj) {
  const long long channel_axis = int_arg(checker.function(), "channel_axis", channel_axis_obj);
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

// Checks an optional per-channel array (None allowed): dtype, layout, shape (C,).
void* per_channel(CallChecker& checker, const ArrayArg* arg, Access access, const Layout& layout) {
  if (arg == nullptr) return nullptr;
  const CheckedArray checked = checker.check(*arg, 0, access);
  const py::array a = as_array(*arg);
  if (a.ndim() != 1 || static_cast<std::size_t>(a.shape(0)) != layout.shape.channels) {
    checker.value_error(std::string(arg->name) + " has shape " + shape_string(a) + " but x has " +
                        std::to_string(layout.shape.channels) + " channels (channel_axis=" +
                        std::to_string(layout.channel_axis) + "); expected shape (" +
                        std::to_string(layout.shape.channels) + ",)");
  }
  return checked.data;
}

// The array written as the x-shaped result: `out` when given (checked), else a new one.
py::array x_shaped_result(CallChecker& checker, const ArrayArg* out_arg, const ArrayArg& x_arg) {
  if (out_arg != nullptr) {
    checker.check(*out_arg, 0, Access::write, &x_arg);
    return as_array(*out_arg);
  }
  const py::array x = as_array(x_arg);
  return py::array(x.dtype(), std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
}

py::array channel_result(const py::array& x, const Layout& layout) {
  return py::array(x.dtype(), std::vector<py::ssize_t>{static_cast<py::ssize_t>(layout.shape.channels)});
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

  CallChecker checker(fn);
  const CheckedArray x = checker.check(x_arg, 0, Access::read);
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

  const py::array x_array = as_array(x_arg);
  py::array save_mean = channel_result(x_array, layout);
  py::array save_invstd = channel_result(x_array, layout);
  args.y = y.mutable_data();
  args.save_mean = save_mean.mutable_data();
  args.save_invstd = save_invstd.mutable_data();
  args.training = training;
  args.momentum = momentum;
  args.eps = eps;
  {
    py::gil_scoped_release release;
    batch_norm_forward(checker.dtype(), layout.shape, args);
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
  const ArrayArg save_mean_arg = single("save_mean", save_mean_obj);
  const ArrayArg save_invstd_arg = single("save_invstd", save_invstd_obj);
  const Optional out("out", out_obj);

  CallChecker checker(fn);
  const CheckedArray x = checker.check(x_arg, 0, Access::read);
  const Layout layout = layout_of(checker, x_arg, channel_axis);
  BatchNormBackwardArgs args{};
  args.x = x.data;
  args.dy = checker.check(dy_arg, 0, Access::read, &x_arg).data;
  args.weight = per_channel(checker, weight.get(), Access::read, layout);
  args.save_mean = per_channel(checker, &save_mean_arg, Access::read, layout);
  args.save_invstd = per_channel(checker, &save_invstd_arg, Access::read, layout);
  py::array dx = x_shaped_result(checker, out.get(), x_arg);
  checker.check_no_overlap();

  const py::array x_array = as_array(x_arg);
  py::object grad_weight = py::none(), grad_bias = py::none();
  if (weight.present) {
    py::array gw = channel_result(x_array, layout), gb = channel_result(x_array, layout);
    args.grad_weight = gw.mutable_data();
    args.grad_bias = gb.mutable_data();
    grad_weight = gw;
    grad_bias = gb;
  }
  args.dx = dx.mutable_data();
  args.training = training;
  {
    py::gil_scoped_release release;
    batch_norm_backward(checker.dtype(), layout.shape, args);
  }
  return py::make_tuple(dx, grad_weight, grad_bias);
}

}  // namespace

void register_norm(py::module_& m) {
  m.def("batch_norm_forward", &batch_norm_forward_py, py::arg("x"),
        py::arg("weight") = py::none(), py::arg("bias") = py::none(),
        py::arg("running_mean") = py::none(), py::arg("running_var") = py::none(),
        py::kw_only(), py::arg("training") = true, py::arg("momentum") = 0.1,
        py::arg("eps") = 1e-5, py::arg("channel_axis") = 1, py::arg("out") = py::none(),
        "Batch norm forward; returns (y, save_mean, save_invstd). In training, updates the "
        "running statistics in place when given.");
  m.def("batch_norm_backward", &batch_norm_backward_py, py::arg("dy"), py::arg("x"),
        py::arg("weight"), py::arg("save_mean"), py::arg("save_invstd"), py::kw_only(),
        py::arg("training") = true, py::arg("channel_axis") = 1, py::arg("out") = py::none(),
        "Batch norm backward; returns (dx, dweight, dbias), dweight and dbias None when "
        "weight is None.");
}

}  // namespace fusedops::bind

// Bindings of the 16-bit wire kernel used by fusedops.distributed: the average of the
// rows a rank received from every rank, rounded into its block of the output.
#include <string>

#include "common.hpp"
#include "fusedops/mixed.hpp"
#include "fusedops/wire.hpp"

namespace fusedops::bind {

namespace {

constexpr const char* kName = "_mean_of_rows";

ArrayArg single(const char* name, py::handle obj) {
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(kName) + ": " + name + " must be a numpy.ndarray, got " +
                         type_name(obj));
  }
  return ArrayArg{name, false, {py::reinterpret_borrow<py::object>(obj)}};
}

void mean_of_rows(py::handle rows_obj, py::handle out_obj) {
  const ArrayArg rows_arg = single("rows", rows_obj);
  const ArrayArg out_arg = single("out", out_obj);
  CallChecker checker(kName, true);
  const CheckedArray rows = checker.check(rows_arg, 0, Access::read);
  const CheckedArray out = checker.check(out_arg, 0, Access::write);
  const auto name_of = [](const CheckedArray& a) { return std::string(dtype_name(a.dtype)); };
  if (rows.dtype != Dtype::bf16 && rows.dtype != Dtype::f16) {
    checker.type_error("rows has dtype " + name_of(rows) + "; expected bfloat16 or float16");
  }
  if (out.dtype != rows.dtype) {
    checker.type_error("out has dtype " + name_of(out) + " but rows has dtype " + name_of(rows));
  }
  const py::array r = py::reinterpret_borrow<py::array>(rows_obj);
  const py::array o = py::reinterpret_borrow<py::array>(out_obj);
  if (r.ndim() != 2 || r.shape(0) < 1) {
    checker.value_error("rows must have shape (ranks >= 1, n), got " + shape_string(r));
  }
  if (o.ndim() != 1 || o.shape(0) != r.shape(1)) {
    checker.value_error("out must have shape (" + std::to_string(r.shape(1)) + ",) (rows has " +
                        shape_string(r) + "), got " + shape_string(o));
  }
  checker.check_no_overlap();
  const auto n_rows = static_cast<std::size_t>(r.shape(0));
  const auto n = static_cast<std::size_t>(r.shape(1));
  const auto* src = static_cast<const std::uint16_t*>(rows.data);
  auto* dst = static_cast<std::uint16_t*>(out.data);
  const Dtype dtype = rows.dtype;
  py::gil_scoped_release release;
  mean_rows_16bit(src, n_rows, n, dst, dtype);
}

}  // namespace

void register_wire(py::module_& m) {
  m.def("_mean_of_rows", &mean_of_rows, py::arg("rows"), py::arg("out"),
        "out[i] = the mean of rows[:, i], bfloat16 or float16: summed in float32 in row "
        "order, divided by the row count in float32, rounded to nearest even once. Used by "
        "fusedops.distributed for 16-bit gradients on the wire.");
}

}  // namespace fusedops::bind

// Bindings of the 16-bit wire kernel used by fusedops.distributed: the average of the
// rows a rank received from every rank, rounded into its block of the output.
#include <string>
#include <vector>

#include "common.hpp"
#include "fusedops/mixed.hpp"
#include "fusedops/wire.hpp"

namespace fusedops::bind {

namespace {

constexpr const char* kName = "_mean_of_rows";

void mean_of_rows(py::handle rows_obj, py::handle out_obj) {
  if (!py::isinstance<py::array>(out_obj)) {
    throw py::type_error(std::string(kName) + ": out must be a numpy.ndarray, got " +
                         type_name(out_obj));
  }
  const ArrayArg rows_arg = unpack(kName, "rows", rows_obj);  // a 2-D array or a list of rows
  const bool listed = rows_arg.is_list;
  const ArrayArg out_arg = ArrayArg::single("out", out_obj);
  CallChecker checker(kName, true);
  const CheckedArray out = checker.check(out_arg, 0, Access::write);
  const py::array o = py::reinterpret_borrow<py::array>(out_obj);
  if (out.dtype != Dtype::bf16 && out.dtype != Dtype::f16) {
    checker.type_error("out has dtype " + std::string(dtype_name(out.dtype)) +
                       "; expected bfloat16 or float16");
  }
  if (o.ndim() != 1) checker.value_error("out must be 1-D, got shape " + shape_string(o));
  const auto n = static_cast<std::size_t>(o.shape(0));
  std::vector<const std::uint16_t*> rows;
  const auto check_row = [&](const CheckedArray& a, const std::string& label) {
    if (a.dtype != out.dtype) {
      checker.type_error(label + " has dtype " + dtype_name(a.dtype) + " but out has dtype " +
                         dtype_name(out.dtype));
    }
    // out may be a row itself (read before written, block by block), not partly one.
    const auto* lo = static_cast<const char*>(a.data);
    const auto* out_lo = static_cast<const char*>(out.data);
    if (a.data != out.data && lo < out_lo + out.nbytes && out_lo < lo + a.nbytes) {
      checker.value_error("out overlaps " + label + " without being it");
    }
  };
  if (listed) {
    for (std::size_t r = 0; r < rows_arg.items.size(); ++r) {
      const CheckedArray a = checker.check(rows_arg, r, Access::read);
      const py::array row = py::reinterpret_borrow<py::array>(rows_arg.items[r]);
      if (row.ndim() != 1 || static_cast<std::size_t>(row.shape(0)) != n) {
        checker.value_error(rows_arg.label(r) + " must have shape (" + std::to_string(n) +
                            ",) as out, got " + shape_string(row));
      }
      check_row(a, rows_arg.label(r));
      rows.push_back(static_cast<const std::uint16_t*>(a.data));
    }
  } else {
    const CheckedArray a = checker.check(rows_arg, 0, Access::read);
    const py::array r = py::reinterpret_borrow<py::array>(rows_obj);
    if (r.ndim() != 2 || static_cast<std::size_t>(r.shape(1)) != n) {
      checker.value_error("rows must have shape (ranks, " + std::to_string(n) + ") (out has " +
                          shape_string(o) + "), got " + shape_string(r));
    }
    check_row(a, "rows");
    for (py::ssize_t k = 0; k < r.shape(0); ++k) {
      rows.push_back(static_cast<const std::uint16_t*>(a.data) + static_cast<std::size_t>(k) * n);
    }
  }
  if (rows.empty()) checker.value_error("rows must hold at least one row");
  const Dtype dtype = out.dtype;
  auto* dst = static_cast<std::uint16_t*>(out.data);
  py::gil_scoped_release release;
  mean_rows_16bit(rows.data(), rows.size(), n, dst, dtype);
}

}  // namespace

void register_wire(py::module_& m) {
  m.def("_mean_of_rows", &mean_of_rows, py::arg("rows"), py::arg("out"),
        "out[i] = the mean of row[i] over the rows (a 2-D array, or a list of 1-D arrays; "
        "bfloat16 or float16): summed in float32 in row order, divided by the row count in "
        "float32, rounded to nearest even once. out may be one of the rows. Used by "
        "fusedops.distributed for 16-bit gradients on the wire.");
}

}  // namespace fusedops::bind

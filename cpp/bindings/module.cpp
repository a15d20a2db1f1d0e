#include "common.hpp"

namespace fusedops::bind {
void register_runtime(py::module_& m);
void register_optim(py::module_& m);
void register_optimizer(py::module_& m);
void register_norm(py::module_& m);
void register_optim_family(py::module_& m);
void register_wire(py::module_& m);
}  // namespace fusedops::bind

PYBIND11_MODULE(_core, m) {
  m.doc() = "fusedops native kernels";
  fusedops::bind::register_runtime(m);
  fusedops::bind::register_optim(m);
  fusedops::bind::register_optimizer(m);
  fusedops::bind::register_norm(m);
  fusedops::bind::register_optim_family(m);
  fusedops::bind::register_wire(m);
}

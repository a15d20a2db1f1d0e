// Compiled once per ISA (see CMakeLists.txt): FUSEDOPS_ISA_NS names the instruction set
// and the namespace, so the copies never collide at link time.
#include <cstddef>
#include <type_traits>

#include "fusedops/kernels.hpp"

#ifndef FUSEDOPS_ISA_NS
#error "FUSEDOPS_ISA_NS must name the ISA this translation unit is compiled for"
#endif

namespace fusedops {
namespace FUSEDOPS_ISA_NS {
namespace {
#include "optim_kernels.hpp"
#include "batch_norm_kernels.hpp"

template <class T>
constexpr TypedKernels<T> typed_kernels() {
  return TypedKernels<T>{&sgd<T>,
                         &adam<T>,
                         &sum_squares<T>,
                         &sum_abs<T>,
                         &sum_abs_pow<T>,
                         &max_abs<T>,
                         &all_finite<T>,
                         &scale<T>,
                         &bn_slab_stats<T>,
                         &bn_slab_grad_sums<T>,
                         &bn_slab_normalize<T>,
                         &bn_slab_dx<T>,
                         &bn_rows_stats<T>,
                         &bn_rows_grad_sums<T>,
                         &bn_rows_normalize<T>,
                         &bn_rows_dx<T>};
}

#define FUSEDOPS_STR2(x) #x
#define FUSEDOPS_STR(x) FUSEDOPS_STR2(x)
constexpr KernelTable kTable{Isa::FUSEDOPS_ISA_NS, FUSEDOPS_STR(FUSEDOPS_ISA_NS),
                             typed_kernels<float>(), typed_kernels<double>()};
}  // namespace

const KernelTable& kernel_table() { return kTable; }

}  // namespace FUSEDOPS_ISA_NS
}  // namespace fusedops

// Compiled once per ISA (see CMakeLists.txt): FUSEDOPS_ISA_NS names the instruction set
// and the namespace, so the copies never collide at link time.
#include "isa_tu.hpp"

#include "fusedops/kernels.hpp"

namespace fusedops {
namespace FUSEDOPS_ISA_NS {
namespace {
#include "optim_kernels.hpp"
#include "optim_family_kernels.hpp"
#include "batch_norm_kernels.hpp"

template <class T>
constexpr TypedKernels<T> typed_kernels() {
  TypedKernels<T> k{};
  k.sgd = &sgd<T>;
  k.adam = &adam<T>;
  k.family[static_cast<int>(FamilyKind::adagrad)] = &family_adagrad<T>;
  k.family[static_cast<int>(FamilyKind::rmsprop)] = &family_rmsprop<T>;
  k.family[static_cast<int>(FamilyKind::adamax)] = &family_adamax<T>;
  k.family[static_cast<int>(FamilyKind::nadam)] = &family_nadam<T>;
  k.family[static_cast<int>(FamilyKind::radam)] = &family_radam<T>;
  k.family[static_cast<int>(FamilyKind::lion)] = &family_lion<T>;
  k.lamb_moments = &lamb_moments<T>;
  k.lamb_apply = &lamb_apply<T>;
  k.sum_squares = &sum_squares<T>;
  k.sum_abs = &sum_abs<T>;
  k.sum_abs_pow = &sum_abs_pow<T>;
  k.max_abs = &max_abs<T>;
  k.all_finite = &all_finite<T>;
  k.scale = &scale<T>;
  k.add_scaled = &add_scaled<T>;
  k.bn = batch_norm_kernels<BnPlain<T>>();
  k.stream_fence = &stream_fence;
  return k;
}

#define FUSEDOPS_STR2(x) #x
#define FUSEDOPS_STR(x) FUSEDOPS_STR2(x)
constexpr KernelTable kTable{Isa::FUSEDOPS_ISA_NS, FUSEDOPS_STR(FUSEDOPS_ISA_NS),
                             typed_kernels<float>(), typed_kernels<double>()};
}  // namespace

const KernelTable& kernel_table() { return kTable; }

}  // namespace FUSEDOPS_ISA_NS
}  // namespace fusedops

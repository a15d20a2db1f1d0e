// The fused 16-bit SGD/Adam loops (mixed_kernels.hpp), compiled once per ISA like
// convert_table.cpp, and once more as `avx512bf16` (AVX-512 with the BF16, BW, VL and DQ
// extensions: vcvtneps2bf16 rounds a register of bfloat16 stores in one instruction).
#include "isa_tu.hpp"

#include "fusedops/mixed.hpp"

namespace fusedops {
namespace FUSEDOPS_ISA_NS {
namespace {
#include "simd_common.hpp"
#include "storage.hpp"
#include "lanes.hpp"
#include "mixed_kernels.hpp"

constexpr FusedKernels kFused = fused_table();
}  // namespace

const FusedKernels& fused_kernels() { return kFused; }

}  // namespace FUSEDOPS_ISA_NS
}  // namespace fusedops

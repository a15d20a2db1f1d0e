// Mixed precision: bfloat16 and float16 storage beside float32/float64, per tensor.
// The math runs in float (double for float64 tensors). Rows with 16-bit params or state,
// and float32 params fed bfloat16 grads, have fused loops for SGD and Adam (load, update,
// round, store in one pass); the other rows run the TypedKernels<float> entry over L1
// blocks into which their 16-bit operands are widened, and the results are rounded back
// (to nearest even, or stochastically). No pybind11 here.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fusedops/fusedops.hpp"
#include "fusedops/kernels.hpp"

namespace fusedops {

// Stochastic rounding key of one block of one operand; the element index supplies the
// rest of the counter.
struct RoundingKey {
  std::uint32_t k0, k1;
};

// Conversions between float and 16-bit storage over one contiguous range, compiled per
// ISA (cpp/kernels/convert_table.cpp). `key` nullptr: round to nearest even; otherwise
// stochastic rounding with random bits of (key, first + i) for element i.
struct ConvertKernels {
  void (*widen_bf16)(const std::uint16_t* src, float* dst, std::size_t n);
  void (*widen_f16)(const std::uint16_t* src, float* dst, std::size_t n);
  // The float whose high 16 bits are hi[i] and low 16 bits lo[i].
  void (*widen_split)(const std::uint16_t* hi, const std::uint16_t* lo, float* dst,
                      std::size_t n);
  void (*narrow_bf16)(const float* src, std::uint16_t* dst, std::size_t n,
                      const RoundingKey* key, std::uint32_t first);
  void (*narrow_f16)(const float* src, std::uint16_t* dst, std::size_t n,
                     const RoundingKey* key, std::uint32_t first);
  // hi[i] = high 16 bits of src[i] (the truncated bfloat16), lo[i] = low 16 bits.
  void (*split)(const float* src, std::uint16_t* hi, std::uint16_t* lo, std::size_t n);
  // narrow_bf16 / narrow_f16 with non-temporal stores for the whole lines of dst (the same
  // bits); the thread calls stream_fence() after its streaming writes.
  void (*narrow_bf16_stream)(const float* src, std::uint16_t* dst, std::size_t n,
                             const RoundingKey* key, std::uint32_t first);
  void (*narrow_f16_stream)(const float* src, std::uint16_t* dst, std::size_t n,
                            const RoundingKey* key, std::uint32_t first);
  void (*stream_fence)();
};

// The rows of API.md's table that have a fused loop: 16-bit params or state, and float32
// params with float32 state and bfloat16 grads (the master-weights flow; with float16
// grads it goes through the block path, which then only widens the grads). "split":
// bfloat16 params with a remainder (exact float32 masters). The float32 arithmetic of the
// lane loops is that of the float32 kernels bit for bit (tests hold them to it), so a
// remainder's masters are those of master_weights=True, which are those that float32
// grads would give.
enum class FusedRow : int {
  f32_f32_bf16, f32_bf16_bf16, f32_f16_bf16,   // params, grads, state
  bf16_bf16_f32, bf16_bf16_bf16, f16_f16_f32,
  split_bf16_bf16,
  f32_bf16_f32, split_bf16_f32,
  count
};

// One range of one tensor for a fused loop: pointers already offset to the range's first
// element `first` (its index in the tensor, low 32 bits). keys[k]: random-bit keys of
// the param (0) and the state slots (1..3) when stochastic.
struct FusedArgs {
  void* param;
  const void* grad;
  void* state[3];
  std::uint16_t* remainder;
  RoundingKey keys[4];
  std::uint32_t first;
  bool stochastic;
};

struct FusedKernels {
  void (*sgd[int(FusedRow::count)])(const SgdConstants&, const FusedArgs&, std::size_t n);
  void (*adam[int(FusedRow::count)])(const AdamConstants&, const FusedArgs&, std::size_t n);
};

namespace scalar { const FusedKernels& fused_kernels(); }
namespace avx2 { const FusedKernels& fused_kernels(); }
namespace avx512 { const FusedKernels& fused_kernels(); }
// The AVX-512 loops built with AVX512_BF16 (+BW, VL, DQ) too: vcvtneps2bf16 stores.
namespace avx512bf16 { const FusedKernels& fused_kernels(); }
// The build the fused loops run with (cpp/runtime/mixed.cpp): "avx512bf16", "avx512",
// "avx2" or "scalar".
const char* fused_build_name();
// For tests: false keeps a forced AVX-512 on its build without BF16 instructions.
void allow_avx512_bf16(bool allowed);

// Batch norm on bfloat16 and float16 data (float32 constants and compute, double sums),
// compiled per ISA and as avx512bf16 (cpp/kernels/bn16_table.cpp).
struct BatchNorm16Kernels {
  BatchNormKernels<std::uint16_t, float> bf16;
  BatchNormKernels<std::uint16_t, float> f16;
};
namespace scalar { const BatchNorm16Kernels& batch_norm16_kernels(); }
namespace avx2 { const BatchNorm16Kernels& batch_norm16_kernels(); }
namespace avx512 { const BatchNorm16Kernels& batch_norm16_kernels(); }
namespace avx512bf16 { const BatchNorm16Kernels& batch_norm16_kernels(); }
// Those of the build the fused 16-bit loops run with (fused_build_name(); cpp/runtime/mixed.cpp).
const BatchNorm16Kernels& current_batch_norm16_kernels();

namespace scalar { const ConvertKernels& convert_kernels(); }
namespace avx2 { const ConvertKernels& convert_kernels(); }
namespace avx512 { const ConvertKernels& convert_kernels(); }

std::size_t dtype_size(Dtype dtype);
const char* dtype_name(Dtype dtype);

// One tensor of a mixed optimizer step (the combinations of API.md's table; the caller
// checks them). state[] as OptimTensor, all of state_dtype. `copy` (optional) receives
// the updated float32 param rounded to copy_dtype. `remainder` (bfloat16 params only):
// the low 16 bits of the float32 master whose high 16 bits are the param.
struct MixedTensor {
  void* param;
  const void* grad;
  void* state[3];
  void* copy;
  std::uint16_t* remainder;
  std::size_t n;
  std::size_t group;
  Dtype param_dtype, grad_dtype, state_dtype, copy_dtype;
  // Stochastic rounding draws the bits of element i from (key_tensor, key_offset + i):
  // a tensor that is a range of a larger one (a ZeRO-1 shard's piece) then rounds
  // exactly as that tensor does. kOwnKey: the tensor's index in the call, offset 0.
  static constexpr std::size_t kOwnKey = ~std::size_t(0);
  std::size_t key_tensor = kOwnKey;
  std::size_t key_offset = 0;
};

// How 16-bit values are written. Stochastic: random bits from (seed, step, tensor index,
// operand, element index).
struct Rounding {
  bool stochastic = false;
  std::uint64_t seed = 0;
  std::uint64_t step = 0;
};

void sgd_step_mixed(const SgdParams* groups, std::size_t n_groups, const MixedTensor* tensors,
                    std::size_t count, const Rounding& rounding);
void adam_step_mixed(const AdamParams* groups, std::size_t n_groups, const MixedTensor* tensors,
                     std::size_t count, const Rounding& rounding);

struct TypedBuffer {
  void* data;
  std::size_t n;
  Dtype dtype;
};

// As global_norm / all_finite / scale_in_place, each buffer with its own dtype; sums in
// double. 16-bit buffers scaled in place are rounded to nearest even.
double global_norm_mixed(const TypedBuffer* buffers, std::size_t count, double norm_type);
bool all_finite_mixed(const TypedBuffer* buffers, std::size_t count);
void scale_in_place_mixed(const TypedBuffer* buffers, std::size_t count, double factor);

}  // namespace fusedops

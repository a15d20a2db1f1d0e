// The machinery of the mixed-precision steps (cpp/runtime/mixed.cpp), shared with the
// optimizer family (cpp/runtime/optim_family.cpp): the per-ISA conversion and fused
// tables, the stochastic-rounding keys, and the per-range update that runs a tensor's
// fused loop or, without one, its TypedKernels<float> entry over L1 blocks into which the
// 16-bit operands are widened and from which the results are rounded back.
#pragma once

#include <algorithm>
#include <cstddef>
#include <type_traits>

#include "fusedops/mixed.hpp"
#include "work.hpp"

namespace fusedops::mixed_detail {

// Small enough that five float blocks (param, grad, three states) fit in a 32 KiB L1.
constexpr std::size_t kBlock = 512;
// Chunks are counted in 4-byte elements for every dtype of a mixed call.
constexpr std::size_t kChunkElementBytes = 4;

// Operands of one tensor, for the random-bit key.
enum Operand : unsigned { kParamOperand = 0, kStateOperand = 1, kCopyOperand = 4 };

// The kernel tables of the current ISA, and how the call writes param copies.
struct Context {
  const KernelTable& table;
  const ConvertKernels& cv;
  const FusedKernels& fk;
  bool stream_copies = false;
};
// stream_copies: set when the call moves more bytes than the last-level cache holds
// (streams_copies).
Context current_context(const MixedTensor* tensors = nullptr, std::size_t count = 0);

// Whether a call over these tensors writes its param copies with non-temporal stores: when
// the bytes it reads and writes exceed streaming_threshold_bytes() (cache.hpp), a copy
// has left the cache before the model reads it, and an ordinary store costs its line
// twice (read for ownership, then write back). Measured: see mixed.cpp.
bool streams_copies(const MixedTensor* tensors, std::size_t count);

// Elements from `begin` to the first element of t's copy that starts a cache line: the
// length of a first, shorter block, so that the blocks after it write whole lines of a
// streamed copy. 0 when the call does not stream copies or t has none.
std::size_t copy_lead(const Context& ctx, const MixedTensor& t, std::size_t begin);

// Calls f(b, n) for the blocks of [begin, end), in order: a first one `lead` long when
// 0 < lead < end - begin, then blocks of kBlock (the last one shorter).
template <class F>
void for_blocks(std::size_t begin, std::size_t end, std::size_t lead, const F& f) {
  std::size_t b = begin;
  if (lead > 0 && lead < end - begin) {
    f(b, lead);
    b += lead;
  }
  for (; b < end; b += kBlock) f(b, std::min(kBlock, end - b));
}

// The fused loop of a tensor's row, or -1 for the block path.
int fused_row(const MixedTensor& t);

// The key of the random bits of (tensor, operand) for the elements whose index has the
// high 32 bits of `index` (blocks never straddle a multiple of 2^32).
RoundingKey rounding_key(const Rounding& r, std::size_t tensor, unsigned operand,
                         std::size_t index);

// Float values of one operand over [b, b + n): the memory itself for float32 storage,
// otherwise `buffer` filled with the widened values (a param with a remainder: the
// float32 masters).
float* float_view(const ConvertKernels& cv, void* data, Dtype dtype, const std::uint16_t* remainder,
                  std::size_t b, std::size_t n, float* buffer);

// Writes the block's updated values of a 16-bit operand (float32 ones were updated in
// place). A param with a remainder keeps the truncated high half and the low half.
// Stochastic rounding keys element i on (tensor, key_offset + i) (see key_tensor_of).
void store_back(const ConvertKernels& cv, void* data, Dtype dtype, std::uint16_t* remainder,
                std::size_t b, std::size_t n, const float* values, const Rounding& r,
                std::size_t tensor, unsigned operand, std::size_t key_offset);

// Writes elements [b, b + n) of t's param copy from the updated float32 params `values`
// (streamed when ctx.stream_copies; the caller then fences, end_copies).
void store_copy(const Context& ctx, const MixedTensor& t, std::size_t b, std::size_t n,
                const float* values, const Rounding& r, std::size_t tensor);

// Orders a range's streamed copy stores before what the thread does next.
inline void end_copies(const Context& ctx, const MixedTensor& t) {
  if (ctx.stream_copies && t.copy != nullptr) ctx.cv.stream_fence();
}

// The tensor index stochastic rounding keys t's bits on: its own index in the call, or
// the tensor it is a range of (MixedTensor::key_tensor, with key_offset).
inline std::size_t key_tensor_of(const MixedTensor& t, std::size_t index) {
  return t.key_tensor == MixedTensor::kOwnKey ? index : t.key_tensor;
}

// float32 throughout: the tensor runs its float32 kernel on memory, without blocks.
bool all_float32(const MixedTensor& t);

template <class T>
T* at(void* p, std::size_t b) { return p ? static_cast<T*>(p) + b : nullptr; }

template <class T>
T* offset(void* p, std::size_t b, std::size_t size) {
  return p ? reinterpret_cast<T*>(static_cast<char*>(p) + b * size) : nullptr;
}

// Runs the fused loop of tensor t's row over [begin, end), then writes the param copy
// from the updated float32 params while they are still in cache. False: no fused loop.
template <class Fused>
bool fused_range(const Context& ctx, const MixedTensor& t, std::size_t tensor,
                 std::size_t begin, std::size_t end, const Rounding& r, const Fused& fused) {
  const int row = fused_row(t);
  if (row < 0) return false;
  FusedArgs a{};
  a.param = offset<void>(t.param, begin, dtype_size(t.param_dtype));
  a.grad = offset<void>(const_cast<void*>(t.grad), begin, dtype_size(t.grad_dtype));
  for (int j = 0; j < 3; ++j) a.state[j] = offset<void>(t.state[j], begin, dtype_size(t.state_dtype));
  a.remainder = t.remainder ? t.remainder + begin : nullptr;
  a.first = std::uint32_t(t.key_offset + begin);
  a.stochastic = r.stochastic;
  if (r.stochastic) {
    for (unsigned k = 0; k < 4; ++k) {
      a.keys[k] = rounding_key(r, tensor, kParamOperand + k, t.key_offset + begin);
    }
  }
  fused(row, a, end - begin);
  if (t.copy != nullptr) {
    store_copy(ctx, t, begin, end - begin, static_cast<const float*>(t.param) + begin, r, tensor);
    end_copies(ctx, t);
  }
  return true;
}

// Runs update(param, grad, state0, state1, state2, n) over [begin, end) of tensor t, with
// T-typed pointers (T: float or double) into memory or into widened blocks.
template <class Update32, class Update64>
void update_range(const Context& ctx, const MixedTensor& t, std::size_t tensor,
                  std::size_t begin, std::size_t end, const Rounding& r,
                  const Update32& update32, const Update64& update64) {
  const ConvertKernels& cv = ctx.cv;
  if (t.param_dtype == Dtype::f64) {
    update64(at<double>(t.param, begin), at<const double>(const_cast<void*>(t.grad), begin),
             at<double>(t.state[0], begin), at<double>(t.state[1], begin),
             at<double>(t.state[2], begin), end - begin);
    return;
  }
  if (all_float32(t)) {
    update32(at<float>(t.param, begin), at<const float>(const_cast<void*>(t.grad), begin),
             at<float>(t.state[0], begin), at<float>(t.state[1], begin),
             at<float>(t.state[2], begin), end - begin);
    return;
  }
  alignas(64) float blocks[5][kBlock];
  for_blocks(begin, end, copy_lead(ctx, t, begin), [&](std::size_t b, std::size_t n) {
    float* p = float_view(cv, t.param, t.param_dtype, t.remainder, b, n, blocks[0]);
    const float* g =
        float_view(cv, const_cast<void*>(t.grad), t.grad_dtype, nullptr, b, n, blocks[1]);
    float* s[3];
    for (int j = 0; j < 3; ++j) {
      s[j] = t.state[j] ? float_view(cv, t.state[j], t.state_dtype, nullptr, b, n, blocks[2 + j])
                        : nullptr;
    }
    update32(p, g, s[0], s[1], s[2], n);
    const std::size_t ko = t.key_offset;
    store_back(cv, t.param, t.param_dtype, t.remainder, b, n, p, r, tensor, kParamOperand, ko);
    for (unsigned j = 0; j < 3; ++j) {
      if (t.state[j]) {
        store_back(cv, t.state[j], t.state_dtype, nullptr, b, n, s[j], r, tensor,
                   kStateOperand + j, ko);
      }
    }
    if (t.copy != nullptr) store_copy(ctx, t, b, n, p, r, tensor);
  });
  end_copies(ctx, t);
}

// The fused_step of an optimizer without fused 16-bit loops: every 16-bit row takes the
// block path.
struct NoFusedLoops {};

// Updates [begin, end) of tensor t (index `tensor` in the call) with constants k:
// step(typed_kernels, k, p, g, s0, s1, s2, n) on float/double pointers, or
// fused_step(fused_kernels, row, k, args, n) for rows with a fused loop.
template <class Constants, class Step, class FusedStep>
void update_item(const Context& ctx, const MixedTensor& t, std::size_t tensor, std::size_t begin,
                 std::size_t end, const Rounding& rounding, const Constants& k, const Step& step,
                 const FusedStep& fused_step) {
  const std::size_t key_tensor = key_tensor_of(t, tensor);
  if constexpr (!std::is_same_v<FusedStep, NoFusedLoops>) {
    const auto fused = [&](int row, const FusedArgs& a, std::size_t n) {
      fused_step(ctx.fk, row, k, a, n);
    };
    if (fused_range(ctx, t, key_tensor, begin, end, rounding, fused)) return;
  }
  update_range(
      ctx, t, key_tensor, begin, end, rounding,
      [&](float* p, const float* g, float* s0, float* s1, float* s2, std::size_t n) {
        step(ctx.table.f32, k, p, g, s0, s1, s2, n);
      },
      [&](double* p, const double* g, double* s0, double* s1, double* s2, std::size_t n) {
        step(ctx.table.f64, k, p, g, s0, s1, s2, n);
      });
}

// Every tensor's chunks in one parallel region; c[t.group] are tensor t's constants.
template <class Constants, class Step, class FusedStep>
void run_mixed(const Constants* c, const MixedTensor* tensors, std::size_t count,
               const Rounding& rounding, const Step& step, const FusedStep& fused_step) {
  const Context ctx = current_context(tensors, count);
  const WorkList work(count, kChunkElementBytes, [&](std::size_t t) { return tensors[t].n; });
  work.run([&](std::size_t, const WorkItem& item) {
    const MixedTensor& t = tensors[item.tensor];
    update_item(ctx, t, item.tensor, item.begin, item.end, rounding, c[t.group], step, fused_step);
  });
}

}  // namespace fusedops::mixed_detail

// Mixed-precision steps and norms: every tensor of a call, whatever its dtypes, is cut
// into chunks of one work list run in one parallel region. float64 and all-float32
// tensors go straight to their TypedKernels entry; rows with 16-bit params or state run
// their fused loop (cpp/kernels/mixed_kernels.hpp) over the chunk, then write the param
// copy from the chunk still in cache; so do float32 params with bfloat16 grads and float32
// state, and remainders with float32 state (SGD and Adam; the optimizer family takes the
// block path for every 16-bit row). The other rows (float32 params and state with float16
// grads or copies) are walked in blocks of kBlock elements: their
// 16-bit operands are widened into block buffers (float32 operands are used in place),
// the float32 kernel updates the block, and the results are rounded back while the block
// is in L1. The block path works for any TypedKernels<float> entry, so a new optimizer
// gets the whole dtype table from it before it has fused loops.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "cache.hpp"
#include "constants.hpp"
#include "mixed_run.hpp"

namespace fusedops {

namespace mixed_detail {

namespace {

const ConvertKernels& current_convert_kernels() {
  switch (current_isa()) {
#ifdef FUSEDOPS_HAVE_AVX512
    case Isa::avx512:
      return avx512::convert_kernels();
#endif
#ifdef FUSEDOPS_HAVE_AVX2
    case Isa::avx2:
      return avx2::convert_kernels();
#endif
    default:
      return scalar::convert_kernels();
  }
}

std::atomic<bool> g_avx512_bf16_allowed{true};

bool cpu_has_avx512_bf16() {
#if defined(FUSEDOPS_HAVE_AVX512BF16) && (defined(__x86_64__) || defined(__i386__)) && \
    (defined(__GNUC__) || defined(__clang__))
  static const bool has = cpu_supports(Isa::avx512) && __builtin_cpu_supports("avx512bf16") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return has;
#else
  return false;
#endif
}

enum class FusedBuild { scalar, avx2, avx512, avx512bf16 };

// The fused 16-bit loops follow a forced ISA (FUSEDOPS_ISA, _set_isa), AVX-512 taking its
// BF16 build where the CPU has it. Unforced, they run AVX-512 wherever the CPU has it,
// while the float32 kernels keep the AVX2 default (cpu.cpp). On the Intel Xeon (Sapphire
// Rapids class, 2 threads, 2026-11-30, builds interleaved in one process, rough: the
// machine was shared), all-bf16 Adam / SGD momentum in ns/element:
//   128M elements: AVX2 0.563 / 0.420, AVX-512 0.475 / 0.343, AVX-512+BF16 0.440 / 0.322
//   4M:            AVX2 0.459 / 0.294, AVX-512 0.346 / 0.201, AVX-512+BF16 0.267 / 0.162
//   256K:          AVX2 0.498 / 0.330, AVX-512 0.398 / 0.212, AVX-512+BF16 0.350 / 0.179
// (stochastic rounding: AVX-512 1.4x faster than AVX2, with or without BF16).
FusedBuild fused_build() {
  Isa isa = current_isa();
  if (!isa_forced() && isa_compiled(Isa::avx512) && cpu_supports(Isa::avx512)) {
    isa = Isa::avx512;
  }
  switch (isa) {
    case Isa::avx512:
      return cpu_has_avx512_bf16() && g_avx512_bf16_allowed.load(std::memory_order_relaxed)
                 ? FusedBuild::avx512bf16
                 : FusedBuild::avx512;
    case Isa::avx2:
      return FusedBuild::avx2;
    default:
      return FusedBuild::scalar;
  }
}

const FusedKernels& current_fused_kernels() {
  switch (fused_build()) {
#ifdef FUSEDOPS_HAVE_AVX512BF16
    case FusedBuild::avx512bf16:
      return avx512bf16::fused_kernels();
#endif
#ifdef FUSEDOPS_HAVE_AVX512
    case FusedBuild::avx512:
      return avx512::fused_kernels();
#endif
#ifdef FUSEDOPS_HAVE_AVX2
    case FusedBuild::avx2:
      return avx2::fused_kernels();
#endif
    default:
      return scalar::fused_kernels();
  }
}

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

namespace {

// Rounds values[0, n) into elements [b, b + n) of the 16-bit array `data` (nothing for
// float32, which was updated in place), keyed for stochastic rounding on (tensor,
// operand, key_offset + i); `stream`: with non-temporal stores for the whole lines.
void narrow_into(const ConvertKernels& cv, void* data, Dtype dtype, std::size_t b, std::size_t n,
                 const float* values, const Rounding& r, std::size_t tensor, unsigned operand,
                 std::size_t key_offset, bool stream) {
  if (dtype != Dtype::bf16 && dtype != Dtype::f16) return;
  auto* half = static_cast<std::uint16_t*>(data) + b;
  RoundingKey key{};
  if (r.stochastic) key = rounding_key(r, tensor, operand, key_offset + b);
  const RoundingKey* k = r.stochastic ? &key : nullptr;
  const auto first = std::uint32_t(key_offset + b);
  if (dtype == Dtype::bf16) {
    (stream ? cv.narrow_bf16_stream : cv.narrow_bf16)(values, half, n, k, first);
  } else {
    (stream ? cv.narrow_f16_stream : cv.narrow_f16)(values, half, n, k, first);
  }
}

}  // namespace

Context current_context(const MixedTensor* tensors, std::size_t count) {
  Context ctx{current_kernels(), current_convert_kernels(), current_fused_kernels()};
  ctx.stream_copies = streams_copies(tensors, count);
  return ctx;
}

// Streamed copies, measured on the Xeon (Sapphire Rapids class, 480 MB L3, 2 threads,
// one build, streaming toggled by the cache size, alternating calls, medians), 64M
// elements of fp32 masters + bf16 grads + fp32 state + bf16 copy: Adam 0.681 -> 0.621
// ns/el (28 B/el: 41 -> 45 GB/s), SGD with momentum 0.525 -> 0.441; within its L3 too
// (1M, 4M, 16M elements: Adam 0.375 -> 0.355, 0.379 -> 0.348, 0.640 -> 0.586). The
// threshold is batch norm's for its outputs, streaming_threshold_bytes() (the model reads
// the copies after the optimizer has swept all of its state through the caches anyway).
bool streams_copies(const MixedTensor* tensors, std::size_t count) {
  std::size_t bytes = 0;
  bool copies = false;
  for (std::size_t i = 0; i < count; ++i) {
    const MixedTensor& t = tensors[i];
    std::size_t per_element = 2 * dtype_size(t.param_dtype) + dtype_size(t.grad_dtype);
    for (const void* s : t.state) {
      if (s != nullptr) per_element += 2 * dtype_size(t.state_dtype);
    }
    if (t.remainder != nullptr) per_element += 4;
    if (t.copy != nullptr) {
      per_element += dtype_size(t.copy_dtype);
      copies = true;
    }
    bytes += per_element * t.n;
  }
  return copies && bytes > streaming_threshold_bytes();
}

std::size_t copy_lead(const Context& ctx, const MixedTensor& t, std::size_t begin) {
  if (!ctx.stream_copies || t.copy == nullptr) return 0;
  const std::size_t size = dtype_size(t.copy_dtype);
  const auto at = reinterpret_cast<std::uintptr_t>(static_cast<const char*>(t.copy) + begin * size);
  return (64 - at % 64) % 64 / size;
}

void store_copy(const Context& ctx, const MixedTensor& t, std::size_t b, std::size_t n,
                const float* values, const Rounding& r, std::size_t tensor) {
  narrow_into(ctx.cv, t.copy, t.copy_dtype, b, n, values, r, tensor, kCopyOperand, t.key_offset,
              ctx.stream_copies);
}

// The fused loop of a tensor's row, or -1 for the block path, where the float32 kernel
// runs: float32 params with float32 state and float32 or float16 grads (with copies; the
// float16 grads widened). Remainders with float32 state and float32 params with bfloat16
// grads and float32 state run lane loops whose float32 arithmetic is the float32
// kernel's (the tests compare them bitwise), so their masters equal those of float32
// grads. AMD EPYC (Zen 3, AVX2), 16M elements, 2 threads, in-process A/B on the same
// arrays, two runs: master weights with bfloat16 grads and copies 0.75x and 0.89x the
// time of the block path, the remainder flow 0.67x and 0.90x.
int fused_row(const MixedTensor& t) {
  const bool bf16_state = t.state_dtype == Dtype::bf16;
  if (t.remainder != nullptr) {
    return int(bf16_state ? FusedRow::split_bf16_bf16 : FusedRow::split_bf16_f32);
  }
  switch (t.param_dtype) {
    case Dtype::bf16:
      return int(bf16_state ? FusedRow::bf16_bf16_bf16 : FusedRow::bf16_bf16_f32);
    case Dtype::f16:
      return int(FusedRow::f16_f16_f32);
    case Dtype::f32:
      if (!bf16_state) return t.grad_dtype == Dtype::bf16 ? int(FusedRow::f32_bf16_f32) : -1;
      if (t.grad_dtype == Dtype::bf16) return int(FusedRow::f32_bf16_bf16);
      if (t.grad_dtype == Dtype::f16) return int(FusedRow::f32_f16_bf16);
      return int(FusedRow::f32_f32_bf16);
    default:
      return -1;
  }
}

// The key of the random bits of (tensor, operand) for the elements whose index has the
// high 32 bits of `index` (blocks never straddle a multiple of 2^32).
RoundingKey rounding_key(const Rounding& r, std::size_t tensor, unsigned operand,
                         std::size_t index) {
  std::uint64_t k = splitmix64(r.seed);
  k = splitmix64(k ^ r.step);
  k = splitmix64(k ^ (std::uint64_t(tensor) << 3 | operand));
  k = splitmix64(k ^ (std::uint64_t(index) >> 32));
  return {std::uint32_t(k), std::uint32_t(k >> 32)};
}

// Float values of one operand over [b, b + n): the memory itself for float32 storage,
// otherwise `buffer` filled with the widened values.
float* float_view(const ConvertKernels& cv, void* data, Dtype dtype, const std::uint16_t* remainder,
                  std::size_t b, std::size_t n, float* buffer) {
  if (dtype == Dtype::f32) return static_cast<float*>(data) + b;
  const auto* half = static_cast<const std::uint16_t*>(data) + b;
  if (remainder != nullptr) {
    cv.widen_split(half, remainder + b, buffer, n);
  } else if (dtype == Dtype::bf16) {
    cv.widen_bf16(half, buffer, n);
  } else {
    cv.widen_f16(half, buffer, n);
  }
  return buffer;
}

// Writes the block's updated values of a 16-bit operand (float32 ones were updated in
// place). A param with a remainder keeps the truncated high half and the low half.
void store_back(const ConvertKernels& cv, void* data, Dtype dtype, std::uint16_t* remainder,
                std::size_t b, std::size_t n, const float* values, const Rounding& r,
                std::size_t tensor, unsigned operand, std::size_t key_offset) {
  if (dtype == Dtype::f32) return;
  auto* half = static_cast<std::uint16_t*>(data) + b;
  if (remainder != nullptr) {
    cv.split(values, half, remainder + b, n);
    return;
  }
  narrow_into(cv, data, dtype, b, n, values, r, tensor, operand, key_offset, false);
}

bool all_float32(const MixedTensor& t) {
  return t.param_dtype == Dtype::f32 && t.grad_dtype == Dtype::f32 &&
         t.state_dtype == Dtype::f32 && t.copy == nullptr && t.remainder == nullptr;
}

}  // namespace mixed_detail

const char* fused_build_name() {
  switch (mixed_detail::fused_build()) {
    case mixed_detail::FusedBuild::avx512bf16: return "avx512bf16";
    case mixed_detail::FusedBuild::avx512: return "avx512";
    case mixed_detail::FusedBuild::avx2: return "avx2";
    default: return "scalar";
  }
}

void allow_avx512_bf16(bool allowed) {
  mixed_detail::g_avx512_bf16_allowed.store(allowed, std::memory_order_relaxed);
}


namespace {

using namespace mixed_detail;

// The (widened) values of one buffer range, block by block: f(const T* x, n) with T the
// buffer's compute type; 16-bit ranges arrive as float blocks.
template <class F>
void for_blocks(const ConvertKernels& cv, const TypedBuffer& buf, std::size_t begin,
                std::size_t end, const F& f) {
  if (buf.dtype == Dtype::f64) {
    f(static_cast<const double*>(buf.data) + begin, end - begin);
    return;
  }
  if (buf.dtype == Dtype::f32) {
    f(static_cast<const float*>(buf.data) + begin, end - begin);
    return;
  }
  alignas(64) float block[kBlock];
  for (std::size_t b = begin; b < end; b += kBlock) {
    const std::size_t n = std::min(kBlock, end - b);
    f(static_cast<const float*>(float_view(cv, buf.data, buf.dtype, nullptr, b, n, block)), n);
  }
}

// Per-chunk partials (each the in-order sum, or max, of its blocks' partials), in item
// order: the same for any thread count.
template <class Partial>
std::vector<double> mixed_partials(const TypedBuffer* buffers, std::size_t count, bool is_max,
                                   const Partial& partial) {
  const ConvertKernels& cv = current_context().cv;
  const WorkList work(count, kChunkElementBytes, [&](std::size_t t) { return buffers[t].n; });
  std::vector<double> partials(work.items().size());
  work.run([&](std::size_t i, const WorkItem& item) {
    double acc = 0.0;
    for_blocks(cv, buffers[item.tensor], item.begin, item.end, [&](const auto* x, std::size_t n) {
      const double v = partial(x, n);
      acc = is_max ? ((acc >= v || std::isnan(acc)) ? acc : v) : acc + v;
    });
    partials[i] = acc;
  });
  return partials;
}

}  // namespace

const BatchNorm16Kernels& current_batch_norm16_kernels() {
  switch (fused_build()) {
#ifdef FUSEDOPS_HAVE_AVX512BF16
    case FusedBuild::avx512bf16:
      return avx512bf16::batch_norm16_kernels();
#endif
#ifdef FUSEDOPS_HAVE_AVX512
    case FusedBuild::avx512:
      return avx512::batch_norm16_kernels();
#endif
#ifdef FUSEDOPS_HAVE_AVX2
    case FusedBuild::avx2:
      return avx2::batch_norm16_kernels();
#endif
    default:
      return scalar::batch_norm16_kernels();
  }
}

std::size_t dtype_size(Dtype dtype) {
  switch (dtype) {
    case Dtype::f32: return 4;
    case Dtype::f64: return 8;
    default: return 2;
  }
}

const char* dtype_name(Dtype dtype) {
  switch (dtype) {
    case Dtype::f32: return "float32";
    case Dtype::f64: return "float64";
    case Dtype::bf16: return "bfloat16";
    case Dtype::f16: return "float16";
  }
  return "unknown";
}

void sgd_step_mixed(const SgdParams* groups, std::size_t n_groups, const MixedTensor* tensors,
                    std::size_t count, const Rounding& rounding) {
  std::vector<SgdConstants> c(n_groups);
  for (std::size_t i = 0; i < n_groups; ++i) c[i] = sgd_constants(groups[i]);
  run_mixed(c.data(), tensors, count, rounding,
            [](const auto& k, const SgdConstants& sc, auto* p, const auto* g, auto* s0, auto*,
               auto*, std::size_t n) { k.sgd(sc, p, g, s0, n); },
            [](const FusedKernels& fk, int row, const SgdConstants& sc, const FusedArgs& a,
               std::size_t n) { fk.sgd[row](sc, a, n); });
}

void adam_step_mixed(const AdamParams* groups, std::size_t n_groups, const MixedTensor* tensors,
                     std::size_t count, const Rounding& rounding) {
  std::vector<AdamConstants> c(n_groups);
  for (std::size_t i = 0; i < n_groups; ++i) c[i] = adam_constants(groups[i]);
  run_mixed(c.data(), tensors, count, rounding,
            [](const auto& k, const AdamConstants& ac, auto* p, const auto* g, auto* s0,
               auto* s1, auto* s2, std::size_t n) { k.adam(ac, p, g, s0, s1, s2, n); },
            [](const FusedKernels& fk, int row, const AdamConstants& ac, const FusedArgs& a,
               std::size_t n) { fk.adam[row](ac, a, n); });
}

double global_norm_mixed(const TypedBuffer* buffers, std::size_t count, double norm_type) {
  const KernelTable& table = current_kernels();
  const auto pick = [&](const auto* x) -> const auto& {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(x)>>;
    return table.typed<T>();
  };
  if (std::isinf(norm_type)) {
    const auto partials = mixed_partials(buffers, count, true, [&](const auto* x, std::size_t n) {
      return pick(x).max_abs(x, n);
    });
    double best = 0.0;
    for (double x : partials) best = (best >= x || std::isnan(best)) ? best : x;
    return best;
  }
  const auto partials = mixed_partials(buffers, count, false, [&](const auto* x, std::size_t n) {
    const auto& k = pick(x);
    if (norm_type == 2.0) return k.sum_squares(x, n);
    if (norm_type == 1.0) return k.sum_abs(x, n);
    return k.sum_abs_pow(x, n, norm_type);
  });
  double total = 0.0;
  for (double x : partials) total += x;
  if (norm_type == 2.0) return std::sqrt(total);
  if (norm_type == 1.0) return total;
  return std::pow(total, 1.0 / norm_type);
}

bool all_finite_mixed(const TypedBuffer* buffers, std::size_t count) {
  const KernelTable& table = current_kernels();
  const ConvertKernels& cv = current_context().cv;
  const WorkList work(count, kChunkElementBytes, [&](std::size_t t) { return buffers[t].n; });
  std::atomic<bool> finite{true};
  work.run([&](std::size_t, const WorkItem& item) {
    if (!finite.load(std::memory_order_relaxed)) return;
    bool ok = true;
    for_blocks(cv, buffers[item.tensor], item.begin, item.end, [&](const auto* x, std::size_t n) {
      using T = std::remove_const_t<std::remove_pointer_t<decltype(x)>>;
      ok = ok && table.typed<T>().all_finite(x, n);
    });
    if (!ok) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

void scale_in_place_mixed(const TypedBuffer* buffers, std::size_t count, double factor) {
  const KernelTable& table = current_kernels();
  const ConvertKernels& cv = current_context().cv;
  const WorkList work(count, kChunkElementBytes, [&](std::size_t t) { return buffers[t].n; });
  const Rounding nearest;
  work.run([&](std::size_t, const WorkItem& item) {
    const TypedBuffer& buf = buffers[item.tensor];
    const std::size_t begin = item.begin, end = item.end;
    if (buf.dtype == Dtype::f64) {
      table.f64.scale(static_cast<double*>(buf.data) + begin, end - begin, factor);
      return;
    }
    alignas(64) float block[kBlock];
    for (std::size_t b = begin; b < end; b += kBlock) {
      const std::size_t n = std::min(kBlock, end - b);
      float* x = float_view(cv, buf.data, buf.dtype, nullptr, b, n, block);
      table.f32.scale(x, n, factor);
      store_back(cv, buf.data, buf.dtype, nullptr, b, n, x, nearest, item.tensor, 0, 0);
    }
  });
}

}  // namespace fusedops

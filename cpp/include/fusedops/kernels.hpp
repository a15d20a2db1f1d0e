// The per-ISA kernel table: every kernel the library has, for one instruction set.
// Each entry works on one contiguous range of raw memory; the runtime splits tensors
// into ranges, picks the table and runs the ranges in parallel. No pybind11 here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace fusedops {

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2 };

// Per-step constants of SGD, derived once (in double) from the hyperparameters.
struct SgdConstants {
  double lr;
  double momentum;
  double one_minus_dampening;
  double weight_decay;
  double l1;
  double grad_divisor;  // grad_scale, negated when maximizing
  bool use_momentum;
  bool nesterov;
  bool first_step;
  bool use_weight_decay;
  bool use_l1;
  bool scaled;  // grad_divisor != 1 (a division by -1 is exact, so maximize folds in)
};

// Per-step constants of Adam/AdamW, derived once (in double) from the hyperparameters.
struct AdamConstants {
  double beta1, one_minus_beta1;
  double beta2, one_minus_beta2;
  double step_size;          // lr / (1 - beta1^step)
  double inv_sqrt_bc2;       // 1 / sqrt(1 - beta2^step)
  double eps;
  double weight_decay;       // L2 coefficient added to the gradient
  double decay_factor;       // 1 - lr * weight_decay (decoupled)
  double l1;
  double grad_divisor;       // grad_scale, negated when maximizing
  bool decoupled;
  bool use_weight_decay;
  bool use_l1;
  bool amsgrad;
  bool scaled;
};

// The elementwise optimizer family (cpp/kernels/optim_family_kernels.hpp); the enum
// indexes TypedKernels::family.
enum class FamilyKind { adagrad, rmsprop, adamax, nadam, radam, lion, count };

// Per-step constants of a family optimizer, derived once (in double) from the
// hyperparameters; each loop reads the fields its update uses.
struct FamilyConstants {
  double beta1, one_minus_beta1;  // RMSprop: alpha
  double beta2, one_minus_beta2;
  double eps;
  double step_size;     // the lr factor of the update (bias corrections folded in)
  double grad_coef;     // NAdam: coefficient of grad / denom
  double avg_coef;      // NAdam: coefficient of exp_avg / denom
  double inv_sqrt_bc2;  // NAdam: 1 / sqrt(1 - beta2^step)
  double momentum;      // RMSprop
  double weight_decay;  // L2 coefficient added to the gradient
  double decay_factor;  // 1 - lr * weight_decay (decoupled)
  double l1;
  double grad_divisor;  // grad_scale, negated when maximizing
  bool decoupled;
  bool use_weight_decay;
  bool use_l1;
  bool scaled;
  bool use_momentum;  // RMSprop
  bool centered;      // RMSprop
  bool rectified;     // RAdam: rho_t > 5
};

// Per-step constants of LAMB (one set per group, and one without weight decay for the
// tensors excluded from decay and adaptation).
struct LambConstants {
  double beta1, one_minus_beta1;
  double beta2, one_minus_beta2;
  double inv_bc1;       // 1 / (1 - beta1^step), or 1 without bias correction
  double inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^step), or 1
  double eps;
  double weight_decay;  // added to the update, inside the trust ratio
  double l1;
  double grad_divisor;  // grad_scale, negated when maximizing
  bool use_weight_decay;
  bool use_l1;
  bool scaled;
};

// Slab runs the statistics read side by side. One core's reads from memory are bound by
// how many lines it has in flight, and the hardware prefetchers follow each run (each
// page) on its own: four runs far apart read 1.5x faster than one (the Xeon, 2 threads,
// data beyond the caches; 1.2x with the data in its L3). The gradient sums read two
// arrays, two runs already: side by side they measured no faster (and slower in the
// order the split reduction would read them). From an L3 near the cores, one run at a
// time measured faster (Plan::slab_streams).
constexpr std::size_t kSlabStreams = 4;

// The array whose cache lines the elementwise row loops line their vector accesses up
// with (they write each row's values before that array's first line boundary on their
// own; the runtime places the per-column constants to match): the output, unless the two
// inputs share an alignment it does not have. A load that straddles two lines costs two,
// and two such loads cost more than one straddling store (measured on the Xeon, the
// (64, 256) backward's dx pass: 3.4 us with the inputs aligned, 4.2 with the output).
// (The AVX-512 in-cache dx loop, cache_row, reads inputs off the output's lines as aligned
// registers joined in pairs; lined up with the output where the inputs share a line
// offset, it measured within noise of lining up with them, 0.95-1.04x, which stays.)
template <class R>
inline const R* line_anchor(const R* in1, const R* in2, const R* out) {
  const auto line = [](const R* p) { return reinterpret_cast<std::uintptr_t>(p) % 64; };
  return in2 != nullptr && line(in1) == line(in2) && line(in1) != line(out) ? in1 : out;
}

// Batch-norm loops (cpp/kernels/batch_norm_kernels.hpp) over x-shaped arrays stored as R
// (float, double, or the bits of bfloat16/float16) with per-channel constants of T, the
// compute type (double for double data, float otherwise). Slab reductions walk one
// contiguous run of a single channel. Run loops walk n values of channel-first data seen
// as slabs of slab_len values (channel cycling through `channels`), starting `offset`
// values into a slab of channel `channel`, with one constant per channel. Row loops walk
// `rows` rows, `stride` apart, of `cols` values with one constant (or accumulator) per
// column. Sums are in double (16-bit data: float32 runs, bn16_kernels.hpp). The
// elementwise passes get the mean as a value of T, hi (x - hi exact near the mean), and
// constant terms holding the rest of it. `stream` writes the output with non-temporal stores. 16-bit
// outputs are rounded to nearest even.
template <class R, class T>
struct BatchNormKernels {
  using raw = R;
  using value = T;
  // out[i] = x[i * stride] as a double for i < n (the pivots)
  void (*values_at)(const R* x, std::size_t stride, std::size_t n, double* out);
  // The statistics of `streams` slab runs of n values (x[k], at most kSlabStreams) read
  // side by side; run k's two sums go to sums[2 k], sums[2 k + 1], equal to what the run
  // gives alone.
  void (*slab_stats)(const R* const* x, std::size_t streams, std::size_t n, const double* pivot,
                     double* sums);
  // The gradient sums of `streams` slab runs of one channel (dy[k], x[k]; at most
  // kSlabStreams) read side by side: sum(dy) and sum(dy * (x - mean)) of run k to
  // sums[2 k], sums[2 k + 1], equal to what the run gives alone.
  void (*slab_grad_sums)(const R* const* dy, const R* const* x, std::size_t streams,
                         std::size_t n, double mean, double* sums);
  void (*runs_normalize)(const R* x, R* y, std::size_t n, std::size_t slab_len,
                         std::size_t channels, std::size_t offset, std::size_t channel,
                         const T* mean_hi, const T* scale, const T* shift,
                         bool stream);
  void (*runs_dx)(const R* dy, const R* x, R* dx, std::size_t n, std::size_t slab_len,
                  std::size_t channels, std::size_t offset, std::size_t channel, const T* k_dy,
                  const T* mean_hi, const T* k_x, const T* k_0,
                  bool centered, bool stream);
  // The row reductions prefetch their values a chunk of rows ahead when `ahead` (arrays
  // beyond the caches: Plan::reduce_ahead()); the gradient sums with chunk_bytes > 0 take
  // tiles of whole rows in chunks of about chunk_bytes of each array, each prefetched as
  // the one before is read (Plan::grad_chunk_bytes()). With ahead_bytes > 0 both prefetch
  // fewer rows ahead: about ahead_bytes of their arrays, a row at least (Plan::ahead_bytes(),
  // rows_ahead in the kernels). With `walk` (tiles of whole rows from memory:
  // Plan::rows_walk()) both walk the rows in memory order, a row at a time, where the
  // columns are whole lane vectors; the same sums either way.
  void (*rows_stats)(const R* x, std::size_t rows, std::size_t stride, std::size_t cols,
                     const double* pivot, double* sum, double* sum_sq, bool ahead,
                     std::size_t ahead_bytes, bool walk);
  void (*rows_grad_sums)(const R* dy, const R* x, std::size_t rows, std::size_t stride,
                         std::size_t cols, const double* mean, double* sum_dy,
                         double* sum_dyx, bool ahead, std::size_t chunk_bytes,
                         std::size_t ahead_bytes, bool walk);
  // The row loops that stream their output (`stream`) prefetch each row's inputs when
  // `ahead` (Plan::stream_prefetch()) and, with `direct`, store straight from registers
  // instead of through a tile in the L1 (Plan::stream_direct(); float32 and float64, the
  // same bits either way).
  void (*rows_normalize)(const R* x, R* y, std::size_t rows, std::size_t stride,
                         std::size_t cols, const T* mean_hi, const T* scale,
                         const T* shift, bool stream, bool ahead, bool direct);
  void (*rows_dx)(const R* dy, const R* x, R* dx, std::size_t rows, std::size_t stride,
                  std::size_t cols, const T* k_dy, const T* mean_hi,
                  const T* k_x, const T* k_0, bool centered, bool stream, bool ahead,
                  bool direct);
  // Orders this thread's non-temporal stores before what it does next.
  void (*stream_fence)();

  // Per-channel arithmetic between a reduction and the elementwise pass, over n channels
  // (the caller offsets every pointer to the first), vectorized like the loops above.
  // mean = pivot + sum / count, m2 = sum_sq - sum * (sum / count), at least 0 (NaN stays).
  void (*finish_stats)(std::size_t n, const double* pivot, const double* sum,
                       const double* sum_sq, double inv_count, double* mean, double* m2);
  // invstd = 1 / sqrt(m2 / count + eps), exactly that expression (a split-API composition
  // computes it so); with running statistics (both or neither), each moves `momentum` of
  // the way to the batch's mean and unbiased variance (from the same m2 / count).
  void (*finish_forward)(std::size_t n, const double* m2, double count, double eps,
                         const double* mean, double* invstd, T* running_mean,
                         T* running_var, double momentum);
  // The constants of y = (x - mean_hi) * scale + shift (weight, bias nullptr: 1, 0).
  void (*normalize_constants)(std::size_t n, const double* mean, const double* invstd,
                              const T* weight, const T* bias, T* mean_hi, T* scale,
                              T* shift);
  // finish_stats, finish_forward and normalize_constants in one loop, channel by
  // channel (the same values; m2 not kept).
  void (*finish_normalize)(std::size_t n, const double* pivot, const double* sum,
                           const double* sum_sq, double count, double eps, double momentum,
                           double* mean, double* invstd, T* running_mean, T* running_var,
                           const T* weight, const T* bias, T* mean_hi, T* scale, T* shift);
  // sum_dy_xhat *= invstd (it arrives as sum(dy * (x - mean))); with grad_weight, the
  // parameter gradients: grad_weight = sum_dy_xhat, grad_bias = sum_dy.
  void (*finish_grads)(std::size_t n, const double* invstd, const double* sum_dy,
                       double* sum_dy_xhat, T* grad_weight, T* grad_bias);
  // The constants of dx = dy * k_dy + (x - mean_hi) * k_x + k_0; centered = false drops
  // the x terms (eval: k_x = k_0 = 0, the sums not read).
  void (*dx_constants)(std::size_t n, const T* weight, const double* mean,
                       const double* invstd, const double* sum_dy, const double* sum_dy_xhat,
                       double inv_count, bool centered, T* k_dy, T* mean_hi, T* k_x,
                       T* k_0);
  // finish_grads and dx_constants (centered) in one loop, channel by channel (the same
  // values; sum_dy_xhat is only read).
  void (*finish_dx)(std::size_t n, const T* weight, const double* mean, const double* invstd,
                    const double* sum_dy, const double* sum_dy_xhat, double inv_count,
                    T* grad_weight, T* grad_bias, T* k_dy, T* mean_hi, T* k_x, T* k_0);
};

// Reductions return partial results for one range; the runtime combines the ranges'
// partials in a fixed order so the total never depends on the thread count.
template <class T>
struct TypedKernels {
  void (*sgd)(const SgdConstants&, T* param, const T* grad, T* momentum_buffer, std::size_t n);
  void (*adam)(const AdamConstants&, T* param, const T* grad, T* exp_avg, T* exp_avg_sq,
               T* max_exp_avg_sq, std::size_t n);
  // state0..2 per kind: Adagrad (sum), RMSprop (square_avg, grad_avg, momentum_buffer),
  // Adamax (exp_avg, exp_inf), NAdam/RAdam (exp_avg, exp_avg_sq), Lion (exp_avg).
  void (*family[static_cast<int>(FamilyKind::count)])(const FamilyConstants&, T* param,
                                                      const T* grad, T* state0, T* state1,
                                                      T* state2, std::size_t n);
  // LAMB, two passes: the moments (m, v written) with the partial sums of p^2 and u^2
  // (u the Adam direction plus weight decay) into sums[0..1]; then p -= step_size * u.
  void (*lamb_moments)(const LambConstants&, const T* param, const T* grad, T* exp_avg,
                       T* exp_avg_sq, std::size_t n, double* sums);
  void (*lamb_apply)(const LambConstants&, T* param, const T* exp_avg, const T* exp_avg_sq,
                     std::size_t n, double step_size);
  double (*sum_squares)(const T* x, std::size_t n);
  double (*sum_abs)(const T* x, std::size_t n);
  double (*sum_abs_pow)(const T* x, std::size_t n, double p);
  double (*max_abs)(const T* x, std::size_t n);  // NaN if any element is NaN
  bool (*all_finite)(const T* x, std::size_t n);
  void (*scale)(T* x, std::size_t n, double factor);
  void (*add_scaled)(T* a, const T* b, std::size_t n, double factor);  // bandwidth probe

  // Batch norm over x-shaped arrays of T (cpp/kernels/batch_norm_kernels.hpp).
  BatchNormKernels<T, T> bn;
  // Orders this thread's non-temporal stores before what it does next.
  void (*stream_fence)();
};

struct KernelTable {
  Isa isa;
  const char* name;
  TypedKernels<float> f32;
  TypedKernels<double> f64;

  template <class T>
  const TypedKernels<T>& typed() const {
    if constexpr (std::is_same_v<T, float>) {
      return f32;
    } else {
      return f64;
    }
  }
};

// One table per compiled ISA; defined in cpp/kernels/isa_table.cpp compiled per ISA.
namespace scalar { const KernelTable& kernel_table(); }
namespace avx2 { const KernelTable& kernel_table(); }
namespace avx512 { const KernelTable& kernel_table(); }

}  // namespace fusedops

// The public C++ entry points: multi-tensor operations on raw pointers, element counts
// and a small parameter struct. Validation is the caller's job (the Python bindings do
// it); these functions only compute. No pybind11 here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fusedops/kernels.hpp"

namespace fusedops {

// bf16/f16 only reach the *_mixed entry points (fusedops/mixed.hpp).
enum class Dtype { f32, f64, bf16, f16 };

struct SgdParams {
  double lr = 0.0;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  double l1 = 0.0;
  double grad_scale = 1.0;
  bool nesterov = false;
  bool maximize = false;
  bool first_step = false;
};

struct AdamParams {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  double l1 = 0.0;
  double grad_scale = 1.0;
  long long step = 1;
  bool decoupled_weight_decay = false;
  bool amsgrad = false;
  bool maximize = false;
};

// One tensor of an optimizer step. state[] holds momentum_buffer (SGD) or
// exp_avg, exp_avg_sq, max_exp_avg_sq (Adam); unused slots are nullptr. `group` indexes
// the hyperparameters (param groups) the tensor is updated with.
struct OptimTensor {
  void* param;
  const void* grad;
  void* state[3];
  std::size_t n;
  std::size_t group;
};

struct Buffer {
  void* data;
  std::size_t n;
};

// One step over all tensors (one parallel region); groups[t.group] are tensor t's
// hyperparameters.
void sgd_step(Dtype dtype, const SgdParams* groups, std::size_t n_groups,
              const OptimTensor* tensors, std::size_t count);
void adam_step(Dtype dtype, const AdamParams* groups, std::size_t n_groups,
               const OptimTensor* tensors, std::size_t count);

// Global norm over all buffers; norm_type > 0 or +inf. NaN in, NaN out.
double global_norm(Dtype dtype, const Buffer* buffers, std::size_t count, double norm_type);
bool all_finite(Dtype dtype, const Buffer* buffers, std::size_t count);
void scale_in_place(Dtype dtype, const Buffer* buffers, std::size_t count, double factor);
// a += factor * b over one buffer pair, threaded like every kernel: the bandwidth probe.
void add_scaled(Dtype dtype, const Buffer& a, const Buffer& b, double factor);
// The sum of the float32 buffer a, read the way reads go fastest here: each work unit
// (kReadProbeUnit values) as four runs side by side, prefetched, threaded like every
// kernel. The read-only bandwidth probe: reductions (norms,
// batch-norm statistics and gradient sums) read and write nothing else, and on some
// machines a core's reads alone move much less than the a += factor * b probe.
double read_sum(const Buffer& a);

// Batch norm over x viewed as (outer, channels, inner): channel_axis=1 is
// (N, C, prod(spatial)), channel_axis=-1 is (N * prod(spatial), C, 1). Every pointer
// below addresses a C-contiguous array: x-shaped ones hold outer * channels * inner
// values, per-channel ones `channels`.
struct BatchNormShape {
  std::size_t outer;
  std::size_t channels;
  std::size_t inner;
};

struct BatchNormForwardArgs {
  const void* x;
  void* y;
  const void* weight;   // nullptr: 1
  const void* bias;     // nullptr: 0
  void* running_mean;   // both or neither; read when !training, updated when training
  void* running_var;
  double* save_mean;    // written: the mean used
  double* save_invstd;  // written: 1 / sqrt(var + eps)
  bool training;
  double momentum;
  double eps;
};

struct BatchNormBackwardArgs {
  const void* dy;
  const void* x;
  void* dx;
  const void* weight;   // nullptr: 1, and grad_weight/grad_bias are not written
  const double* save_mean;
  const double* save_invstd;
  void* grad_weight;
  void* grad_bias;
  bool training;
};

// Training mode needs outer * inner >= 2 (checked by the caller).
void batch_norm_forward(Dtype dtype, const BatchNormShape& shape, const BatchNormForwardArgs& args);
void batch_norm_backward(Dtype dtype, const BatchNormShape& shape,
                         const BatchNormBackwardArgs& args);

// The split batch norm: the pieces batch_norm_forward and batch_norm_backward are made of,
// with the same reduction order, so composing them gives bitwise the same results.
// Statistics are float64 per channel.

// mean[c] and m2[c] = sum((x - mean[c])^2) over the values of channel c (0 and 0 for a
// channel without values).
void batch_norm_stats(Dtype dtype, const BatchNormShape& shape, const void* x, double* mean,
                      double* m2);
// Chan's parallel combine of `pieces` (count, mean[c], m2[c]) triples, folded left in the
// given order; means and m2s are (pieces, channels) row-major. Pieces with count 0 are
// skipped; the first counted piece is taken as it is. The total count must be > 0.
void batch_norm_combine_stats(const double* means, const double* m2s, const double* counts,
                              std::size_t pieces, std::size_t channels, double* mean,
                              double* var, double* m2);

struct BatchNormElemtArgs {
  const void* x;
  void* y;
  const void* weight;  // nullptr: 1
  const void* bias;    // nullptr: 0
  const double* mean;
  const double* invstd;
};
// y = (x - mean) * invstd * weight + bias.
void batch_norm_elemt(Dtype dtype, const BatchNormShape& shape, const BatchNormElemtArgs& args);

// sum_dy[c] = sum(dy), sum_dy_xhat[c] = sum(dy * (x - mean) * invstd) over channel c.
void batch_norm_backward_reduce(Dtype dtype, const BatchNormShape& shape, const void* dy,
                                const void* x, const double* mean, const double* invstd,
                                double* sum_dy, double* sum_dy_xhat);

struct BatchNormBackwardElemtArgs {
  const void* dy;
  const void* x;
  void* dx;
  const void* weight;  // nullptr: 1
  const double* mean;
  const double* invstd;
  const double* sum_dy;
  const double* sum_dy_xhat;
  double count;        // values per channel the sums were taken over (> 0)
};
// dx = weight * invstd * (dy - sum_dy / count - xhat * sum_dy_xhat / count).
void batch_norm_backward_elemt(Dtype dtype, const BatchNormShape& shape,
                               const BatchNormBackwardElemtArgs& args);

// How the batch-norm runtime cuts a shape with the current cache sizes (for tests that
// must reach a path): row groups and the columns of a row tile (0 for both when the
// reductions run over slabs), and channels per cache-blocked group of the training
// forward and backward (0: not blocked); the elementwise passes' row tiles (0: runs),
// the rows their row loops take per run in the training forward's and backward's
// elementwise passes (0: runs), and whether the row reductions prefetch ahead.
struct BatchNormPlanInfo {
  std::size_t row_groups;
  std::size_t tile_cols;
  std::size_t forward_block_channels;
  std::size_t backward_block_channels;
  std::size_t elementwise_tiles;
  std::size_t forward_row_run;
  std::size_t backward_row_run;
  bool reduce_ahead;
  bool row_prefetch;  // whether the row loops prefetch at all (Plan::row_prefetch)
  bool stream_prefetch;  // whether the streaming row loops prefetch (Plan::stream_prefetch)
  bool stream_direct;  // whether they store straight from registers (Plan::stream_direct)
  std::size_t grad_chunk_bytes;  // the gradient sums' chunks of whole rows (0: their own)
  std::size_t ahead_bytes;  // how far ahead the row reductions prefetch (0: 32 rows)
  std::size_t forward_slab_streams;  // slab runs the forward's statistics read side by side
  bool stats_walk;  // whether the row statistics walk rows in memory order (Plan::rows_walk)
  bool grads_walk;  // whether the row gradient sums do
  // whether the blocked forward and backward request the next rows' slabs into the L2
  // (Plan::block_prefetch; false where they are not blocked)
  bool forward_block_prefetch;
  bool backward_block_prefetch;
  // whether the training forward and backward share each channel among the threads
  // (Plan::share_channels)
  bool forward_shared;
  bool backward_shared;
  // slab runs the blocked and shared backward's gradient sums read side by side
  // (Plan::grad_streams; 0 where the data is not cut into slabs)
  std::size_t backward_grad_streams;
};
BatchNormPlanInfo batch_norm_plan_info(const BatchNormShape& shape, std::size_t element_bytes);

// Runtime: instruction-set choice and threads.
const char* isa_name(Isa isa);
bool isa_from_name(const std::string& name, Isa* out);
bool cpu_supports(Isa isa);
bool isa_compiled(Isa isa);
std::vector<Isa> available_isas();  // compiled and supported, the default first
Isa best_isa();
Isa current_isa();
void set_isa(Isa isa);  // caller checks availability
bool isa_forced();      // set_isa was called (FUSEDOPS_ISA, _set_isa)
void reset_isa();       // back to the defaults, nothing forced (_reset_isa)
const KernelTable& current_kernels();
// The table batch norm's float32/float64 loops come from: AVX-512 where the CPU has it,
// unless an ISA is forced (then that one).
const KernelTable& batch_norm_kernel_table();

// Threads of the calling thread's next kernel: OpenMP's count for this thread
// (OMP_NUM_THREADS, omp_set_num_threads, threadpoolctl) capped by set_num_threads;
// 1 in a process forked after its parent ran a parallel region.
int get_num_threads();
void set_num_threads(int n);  // n >= 1: the cap, and OpenMP's count for the calling thread
int max_num_threads();        // the largest n set_num_threads accepts
bool forked_single_threaded();
void note_thread_pool_used();  // called before each parallel region
bool openmp_enabled();

// Worker placement. A worker of the OpenMP pool that sleeps between calls (a training
// step's other work, longer than the pool's spin) is woken by the calling thread, and the
// OS may put it on the caller's own CPU and leave it there for many milliseconds: the
// call then runs its two threads on one core. Each parallel region therefore pins its
// workers, the caller never: worker t to the t-th allowed CPU after the one the caller
// runs on. Only on Linux, only when the team fits the process's CPUs, and not when the
// user placed OpenMP's threads (OMP_PROC_BIND, OMP_PLACES, GOMP_CPU_AFFINITY,
// KMP_AFFINITY) or set FUSEDOPS_PIN_THREADS=0.
// The CPU the calling thread runs on, to pass to pin_worker; -1 when placement is off.
int worker_placement_origin();
// Called by thread `thread_num` of a team of `team` at the start of a parallel region.
void pin_worker(int thread_num, int team, int origin);
bool worker_pinning_enabled();

// Worker start-up. Each parallel region measures how long its workers took to join it
// (from the caller entering the region to the last worker's arrival): about a microsecond
// while they still spin after the previous region, but tens to hundreds of microseconds
// once they sleep on a virtual machine whose idle vCPUs the hypervisor must wake first
// (the pool's spin is short: see fusedops/__init__.py). Moving averages of it, one for
// workers still spinning (hot) and one for sleeping ones (cold), raise the size from which
// a call runs in parallel (min_parallel_elements, work.hpp): a region waits for its last
// worker, so it only pays off for calls whose single-thread time is twice that wait.
bool workers_hot();                                    // the last region ended moments ago
std::uint64_t worker_start_ns(bool hot);               // the estimate (0 before any region)
void set_worker_start_ns(std::uint64_t ns);            // both estimates (tests; 0 forgets)
void note_worker_start_ns(std::uint64_t ns, bool hot);  // a region's measurement
void note_region_end();                                // a region has ended
void hold_worker_start_ns(bool held);  // true: measurements leave the estimates (tests)
std::uint64_t steady_ns();                    // a monotonic clock, in nanoseconds

}  // namespace fusedops

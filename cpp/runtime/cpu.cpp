// CPU feature detection, ISA choice and thread settings.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif
#if defined(__linux__)
#include <sched.h>
#endif

#include "fusedops/fusedops.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fusedops {

namespace {

const KernelTable* compiled_table(Isa isa) {
  switch (isa) {
    case Isa::scalar:
      return &scalar::kernel_table();
    case Isa::avx2:
#ifdef FUSEDOPS_HAVE_AVX2
      return &avx2::kernel_table();
#else
      return nullptr;
#endif
    case Isa::avx512:
#ifdef FUSEDOPS_HAVE_AVX512
      return &avx512::kernel_table();
#else
      return nullptr;
#endif
  }
  return nullptr;
}

std::atomic<const KernelTable*> g_table{nullptr};

// The thread count is OpenMP's own setting (omp_get_max_threads() of the calling thread:
// OMP_NUM_THREADS, omp_set_num_threads, threadpoolctl's limits), capped by
// fusedops.set_num_threads, which also sets OpenMP's count so that threadpoolctl sees it.
std::atomic<int> g_thread_cap{INT_MAX};

// libgomp's worker pool does not survive fork(): a child that enters a parallel region
// after its parent used one waits forever for workers that do not exist. Such a child
// runs every kernel on its own thread.
std::atomic<bool> g_pool_used{false};
std::atomic<bool> g_forked_after_pool{false};

#if defined(__unix__) || defined(__APPLE__)
void after_fork_in_child() {
  if (g_pool_used.load(std::memory_order_relaxed)) {
    g_forked_after_pool.store(true, std::memory_order_relaxed);
  }
}
const int g_atfork_registered = pthread_atfork(nullptr, nullptr, &after_fork_in_child);
#endif

// The CPUs worker placement uses (the process's allowed set when first asked, in
// ascending order); empty when placement is off.
const std::vector<int>& placement_cpus() {
  static const std::vector<int> cpus = [] {
    std::vector<int> out;
#if defined(__linux__)
    const char* flag = std::getenv("FUSEDOPS_PIN_THREADS");
    if (flag != nullptr && std::strcmp(flag, "0") == 0) return out;
    for (const char* name : {"OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY", "KMP_AFFINITY"}) {
      if (std::getenv(name) != nullptr) return out;
    }
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return out;
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &set)) out.push_back(cpu);
    }
    if (out.size() < 2) out.clear();
#endif
    return out;
  }();
  return cpus;
}

// The CPU this worker thread was last pinned to (-1: never).
thread_local int t_pinned_cpu = -1;

int openmp_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "unknown";
}

bool isa_from_name(const std::string& name, Isa* out) {
  for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
    if (name == isa_name(isa)) {
      *out = isa;
      return true;
    }
  }
  return false;
}

bool cpu_supports(Isa isa) {
  switch (isa) {
    case Isa::scalar:
      return true;
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    // __builtin_cpu_supports also checks that the OS saves the wide registers (XCR0).
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("f16c");
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
             __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#endif
    default:
      return false;
  }
}

bool isa_compiled(Isa isa) { return compiled_table(isa) != nullptr; }

// The order of preference, the default first. AVX2 comes before AVX-512: on an Intel Xeon
// with AVX-512 (2026-11-30, 2 threads, each kernel's two builds interleaved in one
// process), the AVX-512 build of SGD, Adam/AdamW, the norms and batch norm beat the AVX2
// one by no more than 5% and lost in cache (SGD momentum 1.37x slower at 256K elements, Adam 1.05x, AdamW-AMSGrad 1.11x,
// float64 Adam 1.13x) and on batch-norm forward passes beyond the caches (1.14x, since
// reversed: batch_norm_kernel_table() below); beyond
// the caches the optimizer steps tied. (Lion at 16M elements was 1.2x faster with
// AVX-512: a per-kernel choice would take it.) The AVX-512 build stays compiled and
// tested, and FUSEDOPS_ISA=avx512 selects it. The fused 16-bit loops choose their own
// default (AVX-512 where present, cpp/runtime/mixed.cpp).
std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::avx2, Isa::avx512, Isa::scalar}) {
    if (isa_compiled(isa) && cpu_supports(isa)) out.push_back(isa);
  }
  return out;
}

Isa best_isa() { return available_isas().front(); }

const KernelTable& current_kernels() {
  const KernelTable* table = g_table.load(std::memory_order_acquire);
  if (table == nullptr) {
    table = compiled_table(best_isa());
    g_table.store(table, std::memory_order_release);
  }
  return *table;
}

Isa current_isa() { return current_kernels().isa; }

// Batch norm (float32, float64) runs AVX-512 wherever the CPU has it unless an ISA is
// forced, like the fused 16-bit loops (mixed.cpp). On the Xeon (2 threads, 2026-11-30,
// builds interleaved in one process): (64, 256) forward+backward 13.6 -> 11.4 us, (1024,
// 1024) 12% faster in cache; beyond the caches the NCHW forward 8% and the NHWC backward
// 12% faster, the rest tied (an earlier build's forward had been 1.14x slower with
// AVX-512, before its reads ran side by side and prefetched).
const KernelTable& batch_norm_kernel_table() {
  static const bool avx512 = isa_compiled(Isa::avx512) && cpu_supports(Isa::avx512);
  if (avx512 && !isa_forced()) return *compiled_table(Isa::avx512);
  return current_kernels();
}

std::atomic<bool> g_isa_forced{false};

void set_isa(Isa isa) {
  g_isa_forced.store(true, std::memory_order_relaxed);
  g_table.store(compiled_table(isa), std::memory_order_release);
}

bool isa_forced() { return g_isa_forced.load(std::memory_order_relaxed); }

void reset_isa() {
  g_table.store(compiled_table(best_isa()), std::memory_order_release);
  g_isa_forced.store(false, std::memory_order_relaxed);
}

int get_num_threads() {
  if (g_forked_after_pool.load(std::memory_order_relaxed)) return 1;
  return std::max(1, std::min(openmp_threads(), g_thread_cap.load(std::memory_order_relaxed)));
}

void set_num_threads(int n) {
  n = std::max(n, 1);
  g_thread_cap.store(n, std::memory_order_relaxed);
#ifdef _OPENMP
  omp_set_num_threads(n);
#endif
}

int max_num_threads() {
#ifdef _OPENMP
  return std::max(64, 4 * omp_get_num_procs());
#else
  return 64;
#endif
}

bool forked_single_threaded() { return g_forked_after_pool.load(std::memory_order_relaxed); }

void note_thread_pool_used() {
  if (!g_pool_used.load(std::memory_order_relaxed)) {
    g_pool_used.store(true, std::memory_order_relaxed);
  }
}

bool worker_pinning_enabled() { return !placement_cpus().empty(); }

namespace {
// The start-up of workers that were still spinning (hot: the last region ended less than
// kHotGapNs before this one began) and of workers that had gone to sleep (cold): the lower
// median of each kind's last kStartSamples samples, 0 until there are kMinStartSamples. A
// median, so that one worker the OS preempted (a millisecond) moves nothing; a change of
// regime (a loop that now lets the workers sleep, or keeps them spinning) takes over in
// a few regions.
constexpr std::size_t kStartSamples = 8;
constexpr std::size_t kMinStartSamples = 3;
// Workers whose last region ended less than this long ago still spin (the pool's spin is
// short: on the Xeon, 2 vCPUs, a region 25 us after the last one waited 28 us for its
// worker, one right after it 0.6 us).
constexpr std::uint64_t kHotGapNs = 10'000;

struct StartSamples {
  std::uint64_t ring[kStartSamples] = {};
  std::size_t count = 0;
  std::atomic<std::uint64_t> estimate{0};

  void add(std::uint64_t ns) {
    ring[count % kStartSamples] = ns;
    ++count;
    if (count < kMinStartSamples) return;
    const std::size_t n = std::min(count, kStartSamples);
    std::uint64_t sorted[kStartSamples];
    std::copy(ring, ring + n, sorted);
    std::sort(sorted, sorted + n);
    estimate.store(sorted[(n - 1) / 2], std::memory_order_relaxed);
  }
  void set(std::uint64_t ns) {
    std::fill(ring, ring + kStartSamples, ns);
    count = ns == 0 ? 0 : kStartSamples;
    estimate.store(ns, std::memory_order_relaxed);
  }
};

std::mutex g_start_mutex;
StartSamples g_hot_start, g_cold_start;
std::atomic<std::uint64_t> g_last_region_end_ns{0};
std::atomic<bool> g_worker_start_held{false};
}  // namespace

bool workers_hot() {
  const std::uint64_t end = g_last_region_end_ns.load(std::memory_order_relaxed);
  return end != 0 && steady_ns() - end < kHotGapNs;
}

std::uint64_t worker_start_ns(bool hot) {
  return (hot ? g_hot_start : g_cold_start).estimate.load(std::memory_order_relaxed);
}

void set_worker_start_ns(std::uint64_t ns) {
  const std::lock_guard<std::mutex> lock(g_start_mutex);
  g_hot_start.set(ns);
  g_cold_start.set(ns);
}

void hold_worker_start_ns(bool held) { g_worker_start_held.store(held, std::memory_order_relaxed); }

void note_worker_start_ns(std::uint64_t ns, bool hot) {
  if (g_worker_start_held.load(std::memory_order_relaxed)) return;
  const std::lock_guard<std::mutex> lock(g_start_mutex);
  (hot ? g_hot_start : g_cold_start).add(ns);
}

void note_region_end() { g_last_region_end_ns.store(steady_ns(), std::memory_order_relaxed); }

std::uint64_t steady_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

int worker_placement_origin() {
#if defined(__linux__)
  if (placement_cpus().empty()) return -1;
  return sched_getcpu();
#else
  return -1;
#endif
}

void pin_worker(int thread_num, int team, int origin) {
#if defined(__linux__)
  if (thread_num <= 0 || origin < 0) return;
  const std::vector<int>& cpus = placement_cpus();
  const int n = static_cast<int>(cpus.size());
  if (team > n) return;
  const auto at = std::find(cpus.begin(), cpus.end(), origin);
  if (at == cpus.end()) return;
  const int target = cpus[(static_cast<int>(at - cpus.begin()) + thread_num) % n];
  if (t_pinned_cpu == target) return;
  t_pinned_cpu = target;  // once per placement, whether or not the OS accepts it
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(target, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
#else
  (void)thread_num;
  (void)team;
  (void)origin;
#endif
}

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace fusedops

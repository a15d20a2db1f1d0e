// Work partitioning: tensors are cut into fixed-size chunks (a multiple of 64 bytes,
// counted from each tensor's start), and the flattened (tensor, chunk) list runs in one
// parallel region. Chunk boundaries never depend on the thread count, so elementwise
// results and per-chunk reduction partials are identical for any number of threads.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "fusedops/fusedops.hpp"
#include "fusedops/small_vector.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__SANITIZE_THREAD__)
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace fusedops {

// The happens-before edges of a parallel region's fork and join, told to ThreadSanitizer:
// libgomp is not built with it, so without them every value the calling thread prepares
// for the team (on its stack, in the arrays) and every result the team leaves for it would
// be reported as a race. Built with -fsanitize=thread only (CI's thread-sanitizer run);
// nothing otherwise.
class RegionEdges {
 public:
  // On the calling thread, before the region: what it wrote is visible to the team...
  void fork() { edge_release(&fork_); }
  // ...as each member starts; and what each member wrote before it leaves...
  void enter() { edge_acquire(&fork_); }
  void leave() { edge_release(&join_); }
  // ...is visible to the calling thread after the region.
  void join() { edge_acquire(&join_); }

 private:
#if defined(__SANITIZE_THREAD__)
  static void edge_release(char* token) { __tsan_release(token); }
  static void edge_acquire(char* token) { __tsan_acquire(token); }
#else
  static void edge_release(char*) {}
  static void edge_acquire(char*) {}
#endif
  char fork_ = 0, join_ = 0;
};

constexpr std::size_t kChunkBytes = 64 * 1024;
// Below this many elements in a call, a fork/join costs more than it saves...
constexpr std::size_t kMinParallelElements = 32 * 1024;
// ...and below this many per nanosecond of the workers' measured start-up (worker_start_ns,
// hot or cold as they are now): a region ends when its last worker has joined it, so a
// call gains only when its time on one thread is twice that wait, counted at 0.5 ns per
// element (the in-cache float32 Adam step measured 0.7 on the Xeon, a plain SGD step 0.2).
// On the Xeon (2 vCPUs, twenty-seventh session) a worker asleep for 15 us or more took
// 28-67 us to start, and with the workers pinned (cpu.cpp) longer: float32 Adam steps with
// 200 us of other work between them took, with the fixed floor alone and with this one,
// 49-198 and 23 us on 32768 values, 69-223 and 37-41 us on the digits example's 85K
// parameters in 8 tensors, 88-299 and 80-91 us on 128K; on 1M values (parallel either way)
// 425-982 and 418-762; in loops without a pause alike (one run of 128K 71 against 44 us).
constexpr std::size_t kParallelElementsPerStartNs = 4;
// A call kept on one thread by the start-up estimate runs in parallel anyway once in this
// many, so that the estimate follows the machine: only parallel regions measure it, and a
// loop whose workers now start fast would otherwise never find out.
constexpr std::size_t kStartRemeasureCalls = 64;

// Elements from which a call runs in parallel: kMinParallelElements, raised by the workers'
// measured start-up; `remeasure` set when this call should run in parallel regardless.
inline std::size_t min_parallel_elements(bool* remeasure = nullptr) {
  const std::uint64_t start_ns = worker_start_ns(workers_hot());
  const std::size_t by_start = static_cast<std::size_t>(start_ns) * kParallelElementsPerStartNs;
  if (remeasure != nullptr) *remeasure = false;
  if (by_start <= kMinParallelElements) return kMinParallelElements;
  if (remeasure != nullptr) {
    static std::atomic<std::size_t> held_back{0};
    *remeasure = held_back.fetch_add(1, std::memory_order_relaxed) % kStartRemeasureCalls ==
                 kStartRemeasureCalls - 1;
  }
  return by_start;
}

// Measures a parallel region's worker start-up (hot or cold, as the workers were when it
// began): constructed as the caller enters it, arrive() by each thread as it starts,
// finish() after it. The process's first region (which starts the pool's threads) is not
// counted, and a region run only to remeasure (min_parallel_elements) counts only when it
// is below the estimate: its workers have slept longer than those of regular regions, and
// counting their wake-ups would keep the calls on one thread for ever longer.
class StartClock {
 public:
  explicit StartClock(bool remeasure = false)
      : start_(steady_ns()), hot_(workers_hot()), remeasure_(remeasure) {}
  void arrive(std::size_t thread) {
    if (thread == 0) return;
    const std::uint64_t now = steady_ns();
    std::uint64_t last = last_.load(std::memory_order_relaxed);
    while (now > last && !last_.compare_exchange_weak(last, now, std::memory_order_relaxed)) {
    }
  }
  void finish() const {
    static std::atomic<bool> pool_started{false};
    const bool counted = pool_started.exchange(true, std::memory_order_relaxed);
    const std::uint64_t last = last_.load(std::memory_order_relaxed);
    if (counted && last > start_) {
      const std::uint64_t ns = last - start_;
      if (!remeasure_ || ns < worker_start_ns(hot_)) note_worker_start_ns(ns, hot_);
    }
    note_region_end();
  }

 private:
  std::uint64_t start_;
  bool hot_;  // the workers were still spinning after the last region
  bool remeasure_;
  std::atomic<std::uint64_t> last_{0};
};
// Two passes in one region (run_in_sequence) also wait at a barrier in the middle: below
// this many elements in the two lists together they run on one thread. (Measured on the
// Xeon, batch norm forward+backward: (128, 256), 32K values a pass, 21 us on one thread
// and 28 on two; (8, 32, 14, 14), 50K, 39 and 33.)
constexpr std::size_t kMinSequenceElements = 3 * kMinParallelElements;

struct WorkItem {
  std::size_t tensor;
  std::size_t begin;
  std::size_t end;
};

class WorkList {
 public:
  // Items held inside the list: a call over a few tensors or units allocates nothing.
  static constexpr std::size_t kLocalItems = 16;

  // size_of(i) gives the element count of tensor i.
  template <class SizeOf>
  WorkList(std::size_t count, std::size_t element_bytes, SizeOf size_of) {
    const std::size_t chunk = kChunkBytes / element_bytes;
    std::size_t batch_elements = 0;
    for (std::size_t t = 0; t < count; ++t) {
      const std::size_t n = size_of(t);
      for (std::size_t b = 0; b < n; b += chunk) {
        const std::size_t e = std::min(n, b + chunk);
        items_.push_back({t, b, e});
        elements_ += e - b;
        batch_elements += e - b;
        // Small tensors are grouped so that a batch holds about one chunk of work.
        if (batch_elements >= chunk) {
          batch_ends_.push_back(items_.size());
          batch_elements = 0;
        }
      }
    }
    if (batch_ends_.empty() || batch_ends_.back() != items_.size()) {
      batch_ends_.push_back(items_.size());
    }
  }

  // One item per unit of work that is not a range of one tensor: item i is
  // {i, 0, cost_of(i)}, the cost counted in elements of element_bytes. Consecutive
  // units are batched like small tensors.
  template <class CostOf>
  static WorkList units(std::size_t count, std::size_t element_bytes, CostOf cost_of) {
    const std::size_t chunk = kChunkBytes / element_bytes;
    WorkList work;
    work.items_.reserve(count);
    std::size_t batch_elements = 0;
    for (std::size_t i = 0; i < count; ++i) {
      const std::size_t cost = cost_of(i);
      work.items_.push_back({i, 0, cost});
      work.elements_ += cost;
      batch_elements += cost;
      if (batch_elements >= chunk) {
        work.batch_ends_.push_back(i + 1);
        batch_elements = 0;
      }
    }
    if (work.batch_ends_.empty() || work.batch_ends_.back() != count) {
      work.batch_ends_.push_back(count);
    }
    return work;
  }

  // Two passes in one parallel region: first(i, item) for every item, then between() once
  // (on one thread, after every first() has returned), then second(i, item) for every
  // item. For steps whose update needs a reduction over the data it updates (per-tensor
  // norms): the per-item partials of first() are combined in between(), in item order.
  template <class First, class Between, class Second>
  void run_phases(First&& first, Between&& between, Second&& second) const {
    const auto first_batch = [&](std::size_t lo, std::size_t hi) {
      for (std::size_t i = lo; i < hi; ++i) first(i, items_[i]);
    };
    const auto second_batch = [&](std::size_t lo, std::size_t hi) {
      for (std::size_t i = lo; i < hi; ++i) second(i, items_[i]);
    };
    run_in_sequence(*this, first_batch, between, *this, second_batch);
  }

  // Two work lists in one parallel region (one fork/join instead of two; each wake-up of
  // a sleeping worker costs microseconds): first_batch(lo, hi) for the items of every
  // batch of `first`, then between() once on the calling thread after every batch of
  // `first` has returned, then second_batch(lo, hi) for every batch of `second`, last
  // batch first. The team is what the larger list would get alone.
  //
  // For passes over the same data (a reduction, then an elementwise pass over what it
  // read), thread t owns the t-th share of each list's batches: the second pass finds in
  // its own cache what its first read, starting with what it read last (the second list's
  // share runs last batch first). A thread that has finished its share takes the batches
  // left in the others' shares, so one the OS delays does not hold the rest up. (Measured
  // on the Xeon, 2 threads, batch norm forward+backward, against batches taken from one
  // shared counter: (256, 1024) 161 -> 124 us, (128, 64, 32) 161 -> 118 us, (512, 256)
  // 67 -> 57 us, (1024, 1024) 740 -> 635 us.)
  template <class FirstBatch, class Between, class SecondBatch>
  static void run_in_sequence(const WorkList& first, FirstBatch&& first_batch, Between&& between,
                              const WorkList& second, SecondBatch&& second_batch) {
    const auto on_first = [&](std::size_t part, std::size_t) {
      if (part == 0) between();
    };
    sequence(first, first_batch, on_first, false, second, second_batch);
  }

  // As run_in_sequence, but when `split` between(part, parts) runs on every thread of
  // the team (part 0 to parts - 1), each doing its part of the step (the per-channel
  // finishing of a batch norm, cut by channels), all of them after every batch of
  // `first` and before any of `second`; otherwise between(0, 1) runs on one thread.
  template <class FirstBatch, class Between, class SecondBatch>
  static void run_in_sequence_split(const WorkList& first, FirstBatch&& first_batch,
                                    Between&& between, const WorkList& second,
                                    SecondBatch&& second_batch, bool split) {
    sequence(first, first_batch, between, split, second, second_batch);
  }

  // Runs fn(t, team, sync) on every thread t of a team: in parallel when `elements`
  // make a regular parallel call, on at most `most` threads; else fn(0, 1, sync) on the
  // calling thread. sync() returns once every thread of the team has called it as often
  // (a barrier: threads that arrive first spin, then yield). For work whose threads cooperate
  // step by step on shared data (each step's partial results combined by all before the
  // next step reads them); a thread the OS delays holds the others up at the next sync().
  // fn must not throw.
  template <class Fn>
  static void run_team(std::size_t elements, std::size_t most, Fn&& fn) {
    int threads = get_num_threads();
    if (elements < min_parallel_elements() || most < 2) threads = 1;
    if (static_cast<std::size_t>(threads) > most) threads = static_cast<int>(most);
#ifdef _OPENMP
    if (threads <= 1) {
#endif
      const auto alone = [] {};
      fn(std::size_t{0}, std::size_t{1}, alone);
      return;
#ifdef _OPENMP
    }
    SpinBarrier barrier;
    region(threads, false, [&](std::size_t t, std::size_t team) {
      const auto sync = [&barrier, team] { barrier.arrive_and_wait(team); };
      fn(t, team, sync);
    });
#endif
  }

  const SmallVector<WorkItem, kLocalItems>& items() const { return items_; }
  std::size_t elements() const { return elements_; }

  // Runs fn(item_index, item) for every item, in parallel when the call is big enough.
  // Thread t runs the t-th share of the batches, then helps with what is left of the
  // others' (see take_shares), so a thread that the OS delays on a busy machine does not
  // hold the others up. fn must not throw.
  template <class Fn>
  void run(Fn&& fn) const {
    run(fn, [] {});
  }

  // As run(fn); after_batch() then runs on the thread that ran a batch, after the batch.
  template <class Fn, class AfterBatch>
  void run(Fn&& fn, AfterBatch&& after_batch) const {
    run_batches([&](std::size_t lo, std::size_t hi) {
      for (std::size_t i = lo; i < hi; ++i) fn(i, items_[i]);
      after_batch();
    });
  }

  // Runs fn(lo, hi) for the items [lo, hi) of every batch (consecutive items), in
  // parallel as run(fn): for loops that take a batch's items side by side. A call's
  // thread t gets the same share of the same list call after call, so data that fits in
  // the caches stays in the one a thread last used.
  template <class Fn>
  void run_batches(Fn&& fn) const {
    bool remeasure = false;
    const int threads = thread_count(&remeasure);
#ifdef _OPENMP
    if (threads <= 1) {
#endif
      run_batches_serially(fn, false);
      return;
#ifdef _OPENMP
    }
    ShareCounters taken(threads);
    region(threads, remeasure, [&](std::size_t t, std::size_t team) {
      take_shares(taken.get(), t, team, false, fn);
    });
#endif
  }

 private:
  WorkList() = default;

  // run_in_sequence and run_in_sequence_split: between(part, parts) on every thread when
  // `split`, else on the first only (the others wait for it).
  template <class FirstBatch, class Between, class SecondBatch>
  static void sequence(const WorkList& first, FirstBatch& first_batch, Between& between,
                       bool split, const WorkList& second, SecondBatch& second_batch) {
    bool remeasure = false;
    const std::size_t least = std::max(kMinSequenceElements, min_parallel_elements(&remeasure));
    int threads = std::max(first.thread_count(remeasure), second.thread_count(remeasure));
    if (first.elements_ + second.elements_ >= least) remeasure = false;  // a regular region
    if (first.elements_ + second.elements_ < least && !remeasure) threads = 1;
    if (first.elements_ + second.elements_ < kMinSequenceElements) threads = 1;
#ifdef _OPENMP
    if (threads <= 1) {
#endif
      first.run_batches_serially(first_batch, false);
      between(std::size_t{0}, std::size_t{1});
      second.run_batches_serially(second_batch, true);
      return;
#ifdef _OPENMP
    }
    ShareCounters first_taken(threads), second_taken(threads);
    SpinBarrier barrier;
    region(threads, remeasure, [&](std::size_t t, std::size_t team) {
      first.take_shares(first_taken.get(), t, team, false, first_batch);
      barrier.arrive_and_wait(team);
      if (split || t == 0) between(split ? t : std::size_t{0}, split ? team : std::size_t{1});
      barrier.arrive_and_wait(team);
      second.take_shares(second_taken.get(), t, team, true, second_batch);
    });
#endif
  }

#ifdef _OPENMP
  // One parallel region of `threads` threads, each pinned (pin_worker), running
  // body(t, team); its workers' start-up measured (StartClock, `remeasure` as
  // min_parallel_elements set it) and its edges told to the thread sanitizer.
  template <class Body>
  static void region(int threads, bool remeasure, Body&& body) {
    note_thread_pool_used();
    const int origin = worker_placement_origin();
    StartClock clock(remeasure);
    RegionEdges edges;
    edges.fork();
#pragma omp parallel num_threads(threads)
    {
      edges.enter();
      const std::size_t t = static_cast<std::size_t>(omp_get_thread_num());
      clock.arrive(t);
      const std::size_t team = static_cast<std::size_t>(omp_get_num_threads());
      pin_worker(static_cast<int>(t), static_cast<int>(team), origin);
      body(t, team);
      edges.leave();
    }
    edges.join();
    clock.finish();
  }
#endif

  // The barriers of sequence(): the threads that arrive first spin until the last one
  // does, then yield the core after a while. libgomp's barrier puts them to sleep once
  // its spin count runs out (the short one set at import), and waking them goes through
  // the kernel: with a per-channel step of thousands of channels between the passes, a
  // quarter of the (16, 4096) batch norm's time was spent in the scheduler.
  class SpinBarrier {
   public:
    void arrive_and_wait(std::size_t team) {
      const std::size_t generation = generation_.load(std::memory_order_acquire);
      if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == team) {
        arrived_.store(0, std::memory_order_relaxed);
        generation_.store(generation + 1, std::memory_order_release);
        return;
      }
      for (std::size_t spins = 0; generation_.load(std::memory_order_acquire) == generation;
           ++spins) {
        if (spins < kSpins) {
#if defined(__SSE2__)
          _mm_pause();
#endif
        } else {
          std::this_thread::yield();
        }
      }
    }

   private:
    // 100-300 us of pauses on current x86 cores, then the core is offered to others.
    static constexpr std::size_t kSpins = 4096;
    alignas(64) std::atomic<std::size_t> arrived_{0};
    alignas(64) std::atomic<std::size_t> generation_{0};
  };

  // A count of the batches taken from one thread's share, on a cache line of its own.
  struct alignas(64) ShareCounter {
    std::atomic<std::size_t> taken{0};
  };

  // A region's counters: on the stack for up to kLocalShares threads (a call allocates
  // nothing), else on the heap.
  class ShareCounters {
   public:
    explicit ShareCounters(int threads)
        : heap_(threads > kLocalShares ? new ShareCounter[threads] : nullptr) {}
    ShareCounter* get() { return heap_ ? heap_.get() : local_; }

   private:
    static constexpr int kLocalShares = 8;
    ShareCounter local_[kLocalShares];
    std::unique_ptr<ShareCounter[]> heap_;
  };

  template <class Fn>
  void run_batch(std::size_t b, Fn& fn) const {
    fn(b == 0 ? 0 : batch_ends_[b - 1], batch_ends_[b]);
  }

  // fn(lo, hi) for every batch on the calling thread, in order or last batch first.
  template <class Fn>
  void run_batches_serially(Fn& fn, bool last_first) const {
    const std::size_t batches = batch_ends_.size();
    for (std::size_t i = 0; i < batches; ++i) run_batch(last_first ? batches - 1 - i : i, fn);
  }

  // Thread t of `team`: the batches of its own share (the t-th of `team` consecutive
  // ranges), then those left in the other shares, each taken once through its share's
  // counter; within a share in order, or last batch first.
  template <class Fn>
  void take_shares(ShareCounter* counters, std::size_t t, std::size_t team, bool last_first,
                   Fn& fn) const {
    const std::size_t batches = batch_ends_.size();
    for (std::size_t k = 0; k < team; ++k) {
      const std::size_t owner = (t + k) % team;
      const std::size_t lo = owner * batches / team, hi = (owner + 1) * batches / team;
      std::atomic<std::size_t>& taken = counters[owner].taken;
      for (std::size_t i = taken.fetch_add(1, std::memory_order_relaxed); lo + i < hi;
           i = taken.fetch_add(1, std::memory_order_relaxed)) {
        run_batch(last_first ? hi - 1 - i : lo + i, fn);
      }
    }
  }

  // remeasure: a call min_parallel_elements() picked to run in parallel regardless (from
  // kMinParallelElements up), which sequence() asks for itself.
  int thread_count(bool* remeasure) const {
    const std::size_t least = min_parallel_elements(remeasure);
    if (elements_ >= least) *remeasure = false;  // a regular region
    return thread_count(least, *remeasure);
  }
  int thread_count(bool remeasure) const { return thread_count(kMinParallelElements, remeasure); }
  int thread_count(std::size_t least, bool remeasure) const {
    const std::size_t batches = batch_ends_.size();
    int threads = get_num_threads();
    if (remeasure) least = kMinParallelElements;
    if (elements_ < least || batches < 2) threads = 1;
    if (threads > static_cast<int>(batches)) threads = static_cast<int>(batches);
    return threads;
  }

  SmallVector<WorkItem, kLocalItems> items_;
  SmallVector<std::size_t, kLocalItems> batch_ends_;  // items [batch_ends_[b-1], batch_ends_[b]) form batch b
  std::size_t elements_ = 0;
};

}  // namespace fusedops

// Work partitioning: tensors are cut into fixed-size chunks (a multiple of 64 bytes,
// counted from each tensor's start), and the flattened (tensor, chunk) list runs in one
// parallel region. Chunk boundaries never depend on the thread count, so elementwise
// results and per-chunk reduction partials are identical for any number of threads.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fusedops/fusedops.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fusedops {

constexpr std::size_t kChunkBytes = 64 * 1024;
// Below this many elements in a call, a fork/join costs more than it saves.
constexpr std::size_t kMinParallelElements = 32 * 1024;
// Per-item cost in element-equivalents, so many tiny tensors are balanced fairly.
constexpr std::size_t kItemOverhead = 64;

struct WorkItem {
  std::size_t tensor;
  std::size_t begin;
  std::size_t end;
};

class WorkList {
 public:
  // size_of(i) gives the element count of tensor i.
  template <class SizeOf>
  WorkList(std::size_t count, std::size_t element_bytes, SizeOf size_of) {
    const std::size_t chunk = kChunkBytes / element_bytes;
    for (std::size_t t = 0; t < count; ++t) {
      const std::size_t n = size_of(t);
      for (std::size_t b = 0; b < n; b += chunk) {
        items_.push_back({t, b, std::min(n, b + chunk)});
        elements_ += std::min(n, b + chunk) - b;
      }
    }
  }

  // One item per unit of work that is not a range of one tensor: item i is
  // {i, 0, cost_of(i)}, the cost counted in element-equivalents.
  template <class CostOf>
  static WorkList units(std::size_t count, CostOf cost_of) {
    WorkList work;
    work.items_.reserve(count);
    for (std::size_t i = 0; i < count; ++i) {
      const std::size_t cost = cost_of(i);
      work.items_.push_back({i, 0, cost});
      work.elements_ += cost;
    }
    return work;
  }

  const std::vector<WorkItem>& items() const { return items_; }
  std::size_t elements() const { return elements_; }

  // Runs fn(item_index, item) for every item, in parallel when the call is big enough.
  // fn must not throw.
  template <class Fn>
  void run(Fn&& fn) const {
    const std::size_t count = items_.size();
    int threads = get_num_threads();
    if (elements_ < kMinParallelElements || count < 2) threads = 1;
    if (threads > static_cast<int>(count)) threads = static_cast<int>(count);
    if (threads <= 1) {
      for (std::size_t i = 0; i < count; ++i) fn(i, items_[i]);
      return;
    }
    // Contiguous, cost-balanced ranges per thread: thread t takes the items whose
    // cumulative cost starts in [t * total / T, (t + 1) * total / T).
    std::vector<std::size_t> start_cost(count + 1, 0);
    for (std::size_t i = 0; i < count; ++i) {
      start_cost[i + 1] = start_cost[i] + (items_[i].end - items_[i].begin) + kItemOverhead;
    }
    const std::size_t total = start_cost[count];
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    {
      const std::size_t team = static_cast<std::size_t>(omp_get_num_threads());
      const std::size_t tid = static_cast<std::size_t>(omp_get_thread_num());
      const auto first_at = [&](std::size_t part) {
        const std::size_t target = total / team * part + (total % team) * part / team;
        return static_cast<std::size_t>(
            std::lower_bound(start_cost.begin(), start_cost.end() - 1, target) -
            start_cost.begin());
      };
      const std::size_t lo = first_at(tid);
      const std::size_t hi = tid + 1 == team ? count : first_at(tid + 1);
      for (std::size_t i = lo; i < hi; ++i) fn(i, items_[i]);
    }
#else
    for (std::size_t i = 0; i < count; ++i) fn(i, items_[i]);
#endif
  }

 private:
  WorkList() = default;

  std::vector<WorkItem> items_;
  std::size_t elements_ = 0;
};

}  // namespace fusedops

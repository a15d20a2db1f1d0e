// The data cache sizes of the machine, read once from the operating system: thresholds
// that depend on what stays in cache (streaming stores, blocking) follow the CPU the
// library runs on instead of one it was tuned on.
#pragma once

#include <cstddef>

namespace fusedops {

struct CacheSizes {
  std::size_t l1d;   // per core
  std::size_t l2;    // per core (as the OS reports it)
  std::size_t last;  // the largest level: L3 where there is one, else L2
};

// Linux sysfs (/sys/devices/system/cpu/cpu0/cache/index*), then sysconf, then defaults
// small enough for any current x86 server (32 KiB, 512 KiB, 8 MiB).
const CacheSizes& cache_sizes();
// Replaces the sizes (tests use it to reach the large-tensor paths with small arrays);
// not safe while kernels run.
void set_cache_sizes(const CacheSizes& sizes);

// Whether the last-level cache is near the cores: at most 64 L2s (AMD's L3 of a core
// complex, which takes the lines the L2 evicts), not a large server's L3 shared over a mesh.
bool last_level_near();

// The part of the last-level cache a call counts on keeping its arrays in: all of it, but
// at most eight L2s, since a big server L3 is shared by the whole socket and whatever
// reads a large output next does so after the L3 has let it go. (Batch norm's row
// reductions prefetch ahead over arrays bigger than this.)
std::size_t core_share_bytes();

// Outputs of a call whose arrays together exceed this many bytes are written with
// non-temporal stores (batch norm's y and dx, the optimizers' param copies):
// core_share_bytes(), except that a last-level
// cache near the cores (at most 64 L2s: AMD's L3 of a core complex) keeps outputs until
// the arrays reach half of it. (AMD EPYC Zen 3, 512 KiB L2, 32 MiB L3, 2 threads, batch
// norm forward then backward, in-process A/B against eight L2s (4 MiB), same bits: float32
// (1024, 1024) 0.77-0.78x the time, (4096, 256) 0.80x, (512, 1024) 0.94x, NCHW (8, 256,
// 28, 28) 0.88x, bfloat16 (2048, 1024) 0.90-0.92x, float64 (512, 1024) 0.90x; the arrays
// that reach half of it (x of 8 MiB: float32 (2048, 1024), (1024, 2048), bfloat16 (4096,
// 1024)) were 1.03-1.07x slower when kept, and tie when streamed (and bfloat16 (4096,
// 1024) 1.13x slower if its row reductions lost their prefetches: those still follow
// core_share_bytes()); keeping them until
// the whole L3 was 1.05-1.21x slower from there up. The Zen 5 (1 MiB L2), whose eight L2s
// made 8 MiB, had measured that whole-L3 threshold slower too; half of it is unmeasured
// there.)
std::size_t streaming_threshold_bytes();

}  // namespace fusedops

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

// Outputs of a call whose arrays together exceed this many bytes are written with
// non-temporal stores (batch norm's y and dx, the optimizers' param copies): the last-level
// cache, but at most eight L2s, since a big server L3 is shared by the whole socket and
// whatever reads a large output next does so after the L3 has let it go.
std::size_t streaming_threshold_bytes();

}  // namespace fusedops

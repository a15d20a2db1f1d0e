#include "cache.hpp"

#include <fstream>
#include <string>

#if defined(__unix__)
#include <unistd.h>
#endif

namespace fusedops {

namespace {

// "48K", "2048K", "480M" or a plain byte count; 0 if unreadable.
std::size_t parse_size(const std::string& text) {
  std::size_t value = 0, i = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
    value = value * 10 + static_cast<std::size_t>(text[i] - '0');
    ++i;
  }
  if (i == 0) return 0;
  switch (i < text.size() ? text[i] : ' ') {
    case 'K': case 'k': return value << 10;
    case 'M': case 'm': return value << 20;
    case 'G': case 'g': return value << 30;
    default: return value;
  }
}

std::string read_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

CacheSizes read_cache_sizes() {
  CacheSizes sizes{0, 0, 0};
  std::size_t l3 = 0;
  for (int index = 0; index < 16; ++index) {
    const std::string dir =
        "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    const std::string level = read_line(dir + "level");
    if (level.empty()) break;
    const std::string type = read_line(dir + "type");
    if (type == "Instruction") continue;
    const std::size_t size = parse_size(read_line(dir + "size"));
    if (level == "1") sizes.l1d = size;
    if (level == "2") sizes.l2 = size;
    if (level == "3") l3 = size;
  }
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE) && defined(_SC_LEVEL3_CACHE_SIZE)
  const auto conf = [](int name) {
    const long value = sysconf(name);
    return value > 0 ? static_cast<std::size_t>(value) : std::size_t(0);
  };
  if (sizes.l1d == 0) sizes.l1d = conf(_SC_LEVEL1_DCACHE_SIZE);
  if (sizes.l2 == 0) sizes.l2 = conf(_SC_LEVEL2_CACHE_SIZE);
  if (l3 == 0) l3 = conf(_SC_LEVEL3_CACHE_SIZE);
#endif
  const bool found_l2 = sizes.l2 != 0;
  if (sizes.l1d == 0) sizes.l1d = std::size_t(32) << 10;
  if (sizes.l2 == 0) sizes.l2 = std::size_t(512) << 10;
  sizes.last = l3 != 0 ? l3 : (found_l2 ? sizes.l2 : std::size_t(8) << 20);
  return sizes;
}

CacheSizes& current() {
  static CacheSizes sizes = read_cache_sizes();
  return sizes;
}

}  // namespace

const CacheSizes& cache_sizes() { return current(); }

void set_cache_sizes(const CacheSizes& sizes) { current() = sizes; }

namespace {
constexpr std::size_t kNearLastLevelL2s = 64;
}  // namespace

bool last_level_near() {
  const CacheSizes& caches = current();
  return caches.last <= kNearLastLevelL2s * caches.l2;
}

std::size_t core_share_bytes() {
  const CacheSizes& caches = current();
  return caches.last < 8 * caches.l2 ? caches.last : 8 * caches.l2;
}

std::size_t streaming_threshold_bytes() {
  const CacheSizes& caches = current();
  if (caches.last > caches.l2 && last_level_near()) {
    return caches.last / 2 - 1;  // arrays that reach half of it stream
  }
  return core_share_bytes();
}

}  // namespace fusedops

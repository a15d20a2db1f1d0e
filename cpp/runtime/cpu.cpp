// CPU feature detection, ISA choice and thread settings.
#include <atomic>

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

int default_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

std::atomic<int> g_threads{default_threads()};

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
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
             __builtin_cpu_supports("fma");
#endif
    default:
      return false;
  }
}

bool isa_compiled(Isa isa) { return compiled_table(isa) != nullptr; }

std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::avx512, Isa::avx2, Isa::scalar}) {
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

void set_isa(Isa isa) { g_table.store(compiled_table(isa), std::memory_order_release); }

int get_num_threads() { return g_threads.load(std::memory_order_relaxed); }

void set_num_threads(int n) { g_threads.store(n < 1 ? 1 : n, std::memory_order_relaxed); }

bool openmp_enabled() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

}  // namespace fusedops

// Bindings of the runtime: ISA choice, threads, build information.
#include <cstdlib>

#include "cache.hpp"
#include "work.hpp"
#include "common.hpp"
#include "fusedops/mixed.hpp"

namespace fusedops::bind {

namespace {

Isa isa_or_raise(const std::string& name, const char* origin) {
  Isa isa;
  if (!isa_from_name(name, &isa)) {
    throw py::value_error(std::string(origin) + ": unknown ISA '" + name +
                          "'; expected one of scalar, avx2, avx512");
  }
  if (!isa_compiled(isa)) {
    throw py::value_error(std::string(origin) + ": ISA '" + name +
                          "' was not compiled into this build");
  }
  if (!cpu_supports(isa)) {
    throw py::value_error(std::string(origin) + ": this CPU does not support ISA '" + name +
                          "'");
  }
  return isa;
}

py::list available_isa_names() {
  py::list out;
  for (Isa isa : available_isas()) out.append(isa_name(isa));
  return out;
}

}  // namespace

void register_runtime(py::module_& m) {
  // FUSEDOPS_ISA forces an ISA at import; an unusable value makes the import fail.
  if (const char* forced = std::getenv("FUSEDOPS_ISA"); forced != nullptr && *forced) {
    set_isa(isa_or_raise(forced, "FUSEDOPS_ISA"));
  }

  m.def("simd_isa", [] { return std::string(isa_name(current_isa())); },
        "The instruction set the kernels run with: 'avx512', 'avx2' or 'scalar'.");
  m.def("available_isas", &available_isa_names,
        "Instruction sets compiled into this build and supported by this CPU, the default first.");
  m.def(
      "_set_isa", [](const std::string& name) { set_isa(isa_or_raise(name, "_set_isa")); },
      py::arg("name"), "Switch the kernel table (for tests and benchmarks).");
  m.def("_isa_forced", &isa_forced,
        "Whether an ISA is forced (FUSEDOPS_ISA or _set_isa): batch norm and the fused 16-bit "
        "loops then follow it instead of their own defaults.");
  m.def("_reset_isa", &reset_isa,
        "Undo _set_isa and FUSEDOPS_ISA: every kernel back to its default ISA, nothing forced "
        "(for tests).");
  m.def("_worker_start_ns",
        [] { return std::make_pair(worker_start_ns(true), worker_start_ns(false)); },
        "The measured start-up of the OpenMP workers, (hot, cold): moving averages over the "
        "parallel regions that found them still spinning, and asleep, in ns (0 before any). "
        "Calls smaller than _min_parallel_elements() run on the calling thread.");
  m.def(
      "_set_worker_start_ns", [](std::uint64_t ns) { set_worker_start_ns(ns); }, py::arg("ns"),
      "Replace both measured worker start-ups (for tests; 0 forgets them).");
  m.def(
      "_hold_worker_start_ns", [](bool held) { hold_worker_start_ns(held); }, py::arg("held"),
      "True: parallel regions stop updating the measured worker start-up, so that calls "
      "keep the thread count its current value gives them (the test suite, which must "
      "reach the parallel paths whatever the machine's wake-ups cost).");
  m.def("_min_parallel_elements", [] { return min_parallel_elements(); },
        "Elements from which a call made now runs in parallel, given the measured worker "
        "start-up of workers as they are now (hot or cold).");
  m.def("_fused_build", [] { return std::string(fused_build_name()); },
        "The build the fused 16-bit SGD/Adam loops run with (for tests and benchmarks).");
  m.def("_allow_avx512_bf16", &allow_avx512_bf16, py::arg("allowed"),
        "False keeps a forced AVX-512 on its build without BF16 instructions (for tests).");
  m.def(
      "set_num_threads",
      [](py::handle n_obj) {
        const long long n = int_arg("set_num_threads", "n", n_obj);
        const int most = max_num_threads();
        if (n < 1 || n > most) {
          throw py::value_error("set_num_threads: n must be an int in [1, " +
                                std::to_string(most) + "] (at most 4 threads per CPU, and at "
                                "least 64), got " + std::to_string(n));
        }
        set_num_threads(static_cast<int>(n));
      },
      py::arg("n"),
      "Caps the threads of the kernels at n, and sets OpenMP's thread count of the calling "
      "thread to n (what threadpoolctl reports). Default: OpenMP's own setting "
      "(OMP_NUM_THREADS or all cores), which threadpoolctl's limits also control.");
  m.def(
      "_set_cache_bytes",
      [](std::size_t l1d, std::size_t l2, std::size_t last_level) {
        set_cache_sizes({l1d, l2, last_level});
      },
      py::arg("l1d"), py::arg("l2"), py::arg("last_level"),
      "Replace the cache sizes read at import (for tests of the large-tensor paths).");
  m.def(
      "_batch_norm_plan",
      [](std::size_t outer, std::size_t channels, std::size_t inner, std::size_t element_bytes) {
        const BatchNormPlanInfo info = batch_norm_plan_info({outer, channels, inner}, element_bytes);
        py::dict out;
        out["row_groups"] = info.row_groups;
        out["tile_cols"] = info.tile_cols;
        out["forward_block_channels"] = info.forward_block_channels;
        out["backward_block_channels"] = info.backward_block_channels;
        out["elementwise_tiles"] = info.elementwise_tiles;
        out["forward_row_run"] = info.forward_row_run;
        out["backward_row_run"] = info.backward_row_run;
        out["reduce_ahead"] = info.reduce_ahead;
        out["row_prefetch"] = info.row_prefetch;
        out["stream_prefetch"] = info.stream_prefetch;
        out["stream_direct"] = info.stream_direct;
        out["grad_chunk_bytes"] = info.grad_chunk_bytes;
        out["ahead_bytes"] = info.ahead_bytes;
        out["forward_slab_streams"] = info.forward_slab_streams;
        out["stats_walk"] = info.stats_walk;
        out["grads_walk"] = info.grads_walk;
        out["forward_block_prefetch"] = info.forward_block_prefetch;
        out["backward_block_prefetch"] = info.backward_block_prefetch;
        out["forward_shared"] = info.forward_shared;
        out["backward_shared"] = info.backward_shared;
        out["backward_grad_streams"] = info.backward_grad_streams;
        return out;
      },
      py::arg("outer"), py::arg("channels"), py::arg("inner"), py::arg("element_bytes"),
      "How batch norm cuts an (outer, channels, inner) view with the current cache sizes "
      "(for tests).");
  m.def("get_num_threads", &get_num_threads,
        "Threads the next kernel called from this thread will use (1 in a child forked after "
        "the parent ran a parallel kernel: OpenMP's workers do not survive fork).");
  m.def("build_info", [] {
    py::dict info;
    info["version"] = FUSEDOPS_VERSION;
    info["compiler"] = FUSEDOPS_COMPILER;
    info["openmp"] = openmp_enabled();
    py::list compiled;
    for (Isa isa : {Isa::scalar, Isa::avx2, Isa::avx512}) {
      if (isa_compiled(isa)) compiled.append(isa_name(isa));
    }
    info["compiled_isas"] = compiled;
    info["available_isas"] = available_isa_names();
    info["simd_isa"] = isa_name(current_isa());
    info["fused_16bit_build"] = fused_build_name();
    info["batch_norm_isa"] = isa_name(batch_norm_kernel_table().isa);
    info["num_threads"] = get_num_threads();
    info["forked_single_threaded"] = forked_single_threaded();
    info["worker_pinning"] = worker_pinning_enabled();
    py::dict caches;
    caches["l1d"] = cache_sizes().l1d;
    caches["l2"] = cache_sizes().l2;
    caches["last_level"] = cache_sizes().last;
    info["cache_bytes"] = caches;
    return info;
  });
  m.attr("__version__") = FUSEDOPS_VERSION;
}

}  // namespace fusedops::bind

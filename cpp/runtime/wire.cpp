// 16-bit gradients on the wire: the averaging of the rows a rank received, cut into
// chunks (counted in 2-byte elements) of one parallel region. Elementwise, so the result
// does not depend on the chunking or the thread count.
#include "fusedops/wire.hpp"
#include "work.hpp"

namespace fusedops {

namespace {

const WireKernels& current_wire_kernels() {
  switch (current_isa()) {
#ifdef FUSEDOPS_HAVE_AVX512
    case Isa::avx512:
      return avx512::wire_kernels();
#endif
#ifdef FUSEDOPS_HAVE_AVX2
    case Isa::avx2:
      return avx2::wire_kernels();
#endif
    default:
      return scalar::wire_kernels();
  }
}

}  // namespace

void mean_rows_16bit(const std::uint16_t* const* rows, std::size_t n_rows, std::size_t n,
                     std::uint16_t* out, Dtype dtype) {
  const WireKernels& k = current_wire_kernels();
  const auto kernel = dtype == Dtype::bf16 ? k.mean_rows_bf16 : k.mean_rows_f16;
  // Each output element reads n_rows values: weigh it so a chunk reads about kChunkBytes,
  // keeping chunks a power-of-two number of cache lines of the output.
  std::size_t weight = 2;
  while (weight < 2 * n_rows && weight < kChunkBytes / 64) weight *= 2;
  const WorkList work(1, weight, [&](std::size_t) { return n; });
  work.run([&](std::size_t, const WorkItem& item) {
    kernel(rows, n_rows, item.begin, item.end - item.begin, out);
  });
}

}  // namespace fusedops

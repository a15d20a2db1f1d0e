// Batch norm forward and backward: one reduction pass and one elementwise pass each.
//
// x is viewed as (outer, C, inner). The work is cut into units whose boundaries depend
// only on the shape: per-(n, c) slab blocks when the spatial extent is long enough
// (channel-first), otherwise (row group, column block) tiles of the rows of C * inner
// contiguous values (channel-last, or short spatial extents). Reduction units write
// partial sums to their own slots, combined per channel in unit order: results are
// bitwise identical for any thread count. Per-channel constants are derived in double.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "fusedops/fusedops.hpp"
#include "work.hpp"

namespace fusedops {

namespace {

// A spatial extent shorter than this runs as rows (the slab loops would mostly be tails).
constexpr std::size_t kMinSlab = 16;
// Rows are split into at most this many groups, each with its own row of partial sums...
constexpr std::size_t kMaxRowGroups = 64;
// ...and fewer when rows are long, so the partials stay within this many doubles.
constexpr std::size_t kRowPartialBudget = std::size_t(1) << 16;
// Columns per row tile: the tile's accumulators (2 doubles per column) stay in L1.
constexpr std::size_t kColBlock = 512;
// Outputs at least this large are written with non-temporal stores: they would not stay
// in cache anyway, and the stores then skip reading the destination and keep the inputs
// cached for the pass that follows.
constexpr std::size_t kStreamMinBytes = std::size_t(16) << 20;

struct SlabUnit {
  std::size_t offset;
  std::size_t length;
  std::size_t channel;
};

struct RowUnit {
  std::size_t offset;  // of the tile's first value
  std::size_t rows;
  std::size_t col;     // first column
  std::size_t cols;
  std::size_t group;
};

class Plan {
 public:
  Plan(const BatchNormShape& shape, std::size_t element_bytes)
      : outer_(shape.outer), channels_(shape.channels), inner_(shape.inner),
        element_bytes_(element_bytes) {
    if (channels_ == 1) {  // one channel: the whole array is one slab
      inner_ *= outer_;
      outer_ = 1;
    }
    slab_ = inner_ >= kMinSlab;
    if (slab_) {
      block_ = kChunkBytes / element_bytes;
      blocks_per_slab_ = (inner_ + block_ - 1) / block_;
      units_ = outer_ * channels_ * blocks_per_slab_;
    } else {
      cols_ = channels_ * inner_;
      const std::size_t budget_groups = kRowPartialBudget / std::max<std::size_t>(cols_, 1);
      groups_ = std::min({outer_, kMaxRowGroups, std::max<std::size_t>(1, budget_groups)});
      col_blocks_ = (cols_ + kColBlock - 1) / kColBlock;
      units_ = groups_ * col_blocks_;
    }
  }

  bool slab() const { return slab_; }
  std::size_t channels() const { return channels_; }
  std::size_t inner() const { return inner_; }
  std::size_t per_channel() const { return outer_ * inner_; }
  std::size_t units() const { return units_; }
  bool stream_output() const {
    return outer_ * channels_ * inner_ * element_bytes_ >= kStreamMinBytes;
  }
  std::size_t cols() const { return cols_; }
  std::size_t groups() const { return groups_; }

  SlabUnit slab_unit(std::size_t u) const {
    const std::size_t slab = u / blocks_per_slab_;
    const std::size_t begin = (u % blocks_per_slab_) * block_;
    return {slab * inner_ + begin, std::min(inner_, begin + block_) - begin, slab % channels_};
  }

  RowUnit row_unit(std::size_t u) const {
    const std::size_t group = u / col_blocks_;
    const std::size_t col = (u % col_blocks_) * kColBlock;
    const std::size_t row = row_begin(group);
    return {row * cols_ + col, row_begin(group + 1) - row, col,
            std::min(cols_, col + kColBlock) - col, group};
  }

  std::size_t cost(std::size_t u) const {
    if (slab_) return slab_unit(u).length;
    const RowUnit r = row_unit(u);
    return r.rows * r.cols;
  }

  WorkList work() const {
    return WorkList::units(units_, element_bytes_, [this](std::size_t u) { return cost(u); });
  }
  // The units from last to first: item u of this list is unit last_first(u). The
  // backward's row path runs its elementwise pass backwards, starting on the dy and x the
  // reduction pass read last, part of which the cache still holds (channel-last, 2
  // threads: about 3% faster; the same order in the forward measured no difference).
  WorkList work_backwards() const {
    return WorkList::units(units_, element_bytes_,
                           [this](std::size_t u) { return cost(last_first(u)); });
  }
  std::size_t last_first(std::size_t u) const { return units_ - 1 - u; }

 private:
  std::size_t row_begin(std::size_t group) const { return group * outer_ / groups_; }

  std::size_t outer_, channels_, inner_, element_bytes_;
  bool slab_ = false;
  std::size_t units_ = 0;
  std::size_t block_ = 0, blocks_per_slab_ = 0;              // slab units
  std::size_t cols_ = 0, groups_ = 0, col_blocks_ = 0;       // row units
};

constexpr std::size_t kDoublesPerLine = 64 / sizeof(double);

// The first cache-line boundary at or after p (p's buffer has a line to spare).
double* cache_line_aligned(double* p) {
  const std::uintptr_t at = (reinterpret_cast<std::uintptr_t>(p) + 63) & ~std::uintptr_t(63);
  return reinterpret_cast<double*>(at);
}

// Per-channel sums of a reduction pass: first[c] and second[c].
struct ChannelSums {
  std::vector<double> first, second;
};

// Runs a two-sum reduction over all units and combines the partials per channel in
// unit order. slab_sums(unit, sums[2]) and row_sums(unit, first_row, second_row) fill
// one unit's partials; row partial rows are indexed by column.
template <class SlabSums, class RowSums>
ChannelSums reduce(const Plan& plan, const WorkList& work, SlabSums slab_sums,
                   RowSums row_sums) {
  const std::size_t channels = plan.channels();
  ChannelSums total{std::vector<double>(channels, 0.0), std::vector<double>(channels, 0.0)};
  if (plan.slab()) {
    std::vector<double> partials(2 * plan.units());
    work.run([&](std::size_t u, const WorkItem&) {
      slab_sums(plan.slab_unit(u), &partials[2 * u]);
    });
    for (std::size_t u = 0; u < plan.units(); ++u) {
      const std::size_t c = plan.slab_unit(u).channel;
      total.first[c] += partials[2 * u];
      total.second[c] += partials[2 * u + 1];
    }
  } else {
    // The accumulator rows are updated for every row of data: each group's rows start on
    // their own cache lines, or two threads would keep stealing the line they share.
    const std::size_t cols = plan.cols(), groups = plan.groups();
    const std::size_t stride = (cols + kDoublesPerLine - 1) / kDoublesPerLine * kDoublesPerLine;
    std::vector<double> storage(2 * groups * stride + kDoublesPerLine);
    double* first = cache_line_aligned(storage.data());
    double* second = first + groups * stride;
    work.run([&](std::size_t u, const WorkItem&) {
      const RowUnit r = plan.row_unit(u);
      const std::size_t at = r.group * stride + r.col;
      row_sums(r, first + at, second + at);
    });
    for (std::size_t g = 0; g < groups; ++g) {
      for (std::size_t col = 0; col < cols; ++col) {
        const std::size_t c = col / plan.inner();
        total.first[c] += first[g * stride + col];
        total.second[c] += second[g * stride + col];
      }
    }
  }
  return total;
}

// Expands per-channel values to per-column values of a row (channel of column j is
// j / inner).
template <class V>
std::vector<V> per_column(const Plan& plan, const std::vector<V>& per_channel) {
  std::vector<V> out(plan.cols());
  for (std::size_t j = 0; j < out.size(); ++j) out[j] = per_channel[j / plan.inner()];
  return out;
}

// What a thread runs after each batch of the elementwise pass: a fence when the pass
// writes with non-temporal stores.
template <class T>
auto stream_fence_after_batch(const TypedKernels<T>& k, bool stream) {
  return [&k, stream] {
    if (stream) k.stream_fence();
  };
}

template <class T>
void forward_typed(const BatchNormShape& shape, const BatchNormForwardArgs& a) {
  const auto& k = current_kernels().typed<T>();
  const Plan plan(shape, sizeof(T));
  const WorkList work = plan.work();
  const std::size_t channels = plan.channels();
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  T* running_mean = static_cast<T*>(a.running_mean);
  T* running_var = static_cast<T*>(a.running_var);

  std::vector<double> mean(channels), invstd(channels);
  if (a.training && plan.per_channel() > 0) {
    // Shift by a value of each channel (its first) so the sums see the spread, not the
    // mean; exact enough in double even when that value is far out.
    std::vector<double> pivot(channels);
    for (std::size_t c = 0; c < channels; ++c) pivot[c] = double(x[c * plan.inner()]);
    const auto pivot_col = plan.slab() ? std::vector<double>() : per_column(plan, pivot);
    const ChannelSums sums = reduce(
        plan, work,
        [&](const SlabUnit& s, double* out) {
          k.bn_slab_stats(x + s.offset, s.length, pivot[s.channel], out);
        },
        [&](const RowUnit& r, double* sum, double* sum_sq) {
          k.bn_rows_stats(x + r.offset, r.rows, plan.cols(), r.cols, &pivot_col[r.col], sum,
                          sum_sq);
        });
    const double count = double(plan.per_channel());
    for (std::size_t c = 0; c < channels; ++c) {
      const double shift = sums.first[c] / count;
      const double spread = sums.second[c] / count - shift * shift;
      const double var = spread < 0.0 ? 0.0 : spread;  // rounding may dip below 0; NaN stays
      mean[c] = pivot[c] + shift;
      invstd[c] = 1.0 / std::sqrt(var + a.eps);
      if (running_mean != nullptr) {
        const double unbiased = var * (count / (count - 1.0));
        const double keep = 1.0 - a.momentum;
        running_mean[c] = T(keep * double(running_mean[c]) + a.momentum * mean[c]);
        running_var[c] = T(keep * double(running_var[c]) + a.momentum * unbiased);
      }
    }
  } else if (!a.training) {
    for (std::size_t c = 0; c < channels; ++c) {
      mean[c] = double(running_mean[c]);
      invstd[c] = 1.0 / std::sqrt(double(running_var[c]) + a.eps);
    }
  }

  const T* weight = static_cast<const T*>(a.weight);
  const T* bias = static_cast<const T*>(a.bias);
  T* save_mean = static_cast<T*>(a.save_mean);
  T* save_invstd = static_cast<T*>(a.save_invstd);
  std::vector<T> mean_hi(channels), mean_lo(channels), scale(channels), shift(channels);
  for (std::size_t c = 0; c < channels; ++c) {
    mean_hi[c] = T(mean[c]);
    mean_lo[c] = T(mean[c] - double(mean_hi[c]));
    scale[c] = T(invstd[c] * (weight ? double(weight[c]) : 1.0));
    shift[c] = bias ? bias[c] : T(0);
    save_mean[c] = mean_hi[c];
    save_invstd[c] = T(invstd[c]);
  }

  const bool stream = plan.stream_output();
  const auto fence = stream_fence_after_batch(k, stream);
  if (plan.slab()) {
    work.run([&](std::size_t u, const WorkItem&) {
      const SlabUnit s = plan.slab_unit(u);
      const std::size_t c = s.channel;
      k.bn_slab_normalize(x + s.offset, y + s.offset, s.length, mean_hi[c], mean_lo[c],
                          scale[c], shift[c], stream);
    }, fence);
  } else {
    const auto hi = per_column(plan, mean_hi), lo = per_column(plan, mean_lo);
    const auto sc = per_column(plan, scale), sh = per_column(plan, shift);
    work.run([&](std::size_t u, const WorkItem&) {
      const RowUnit r = plan.row_unit(u);
      k.bn_rows_normalize(x + r.offset, y + r.offset, r.rows, plan.cols(), r.cols, &hi[r.col],
                          &lo[r.col], &sc[r.col], &sh[r.col], stream);
    }, fence);
  }
}

template <class T>
void backward_typed(const BatchNormShape& shape, const BatchNormBackwardArgs& a) {
  const auto& k = current_kernels().typed<T>();
  const Plan plan(shape, sizeof(T));
  const WorkList work = plan.work();
  const std::size_t channels = plan.channels();
  const T* dy = static_cast<const T*>(a.dy);
  const T* x = static_cast<const T*>(a.x);
  T* dx = static_cast<T*>(a.dx);
  const T* weight = static_cast<const T*>(a.weight);
  const T* save_mean = static_cast<const T*>(a.save_mean);
  const T* save_invstd = static_cast<const T*>(a.save_invstd);

  // sum(dy) and sum(dy * (x - mean)) per channel; eval mode without weight needs neither.
  ChannelSums sums{std::vector<double>(channels, 0.0), std::vector<double>(channels, 0.0)};
  if (a.training || weight != nullptr) {
    std::vector<double> mean(channels);
    for (std::size_t c = 0; c < channels; ++c) mean[c] = double(save_mean[c]);
    const auto mean_col = plan.slab() ? std::vector<double>() : per_column(plan, mean);
    sums = reduce(
        plan, work,
        [&](const SlabUnit& s, double* out) {
          k.bn_slab_grad_sums(dy + s.offset, x + s.offset, s.length, mean[s.channel], out);
        },
        [&](const RowUnit& r, double* sum_dy, double* sum_dyx) {
          k.bn_rows_grad_sums(dy + r.offset, x + r.offset, r.rows, plan.cols(), r.cols,
                              &mean_col[r.col], sum_dy, sum_dyx);
        });
  }

  const double count = double(plan.per_channel());
  const bool centered = a.training && count > 0;
  T* grad_weight = static_cast<T*>(a.grad_weight);
  T* grad_bias = static_cast<T*>(a.grad_bias);
  std::vector<T> k_dy(channels), k_x(channels), k_0(channels);
  for (std::size_t c = 0; c < channels; ++c) {
    const double invstd = double(save_invstd[c]);
    const double dweight = invstd * sums.second[c];
    const double dbias = sums.first[c];
    if (weight != nullptr) {
      grad_weight[c] = T(dweight);
      grad_bias[c] = T(dbias);
    }
    // dx = w * invstd * (dy - dbias / M - xhat * dweight / M), xhat = (x - mean) * invstd
    const double scale = (weight ? double(weight[c]) : 1.0) * invstd;
    k_dy[c] = T(scale);
    k_x[c] = centered ? T(-scale * invstd * dweight / count) : T(0);
    k_0[c] = centered ? T(-scale * dbias / count) : T(0);
  }

  const bool stream = plan.stream_output();
  const auto fence = stream_fence_after_batch(k, stream);
  if (plan.slab()) {
    work.run([&](std::size_t u, const WorkItem&) {
      const SlabUnit s = plan.slab_unit(u);
      const std::size_t c = s.channel;
      k.bn_slab_dx(dy + s.offset, x + s.offset, dx + s.offset, s.length, k_dy[c],
                   save_mean[c], k_x[c], k_0[c], centered, stream);
    }, fence);
  } else {
    const auto kd = per_column(plan, k_dy), kx = per_column(plan, k_x);
    const auto k0 = per_column(plan, k_0);
    std::vector<T> mean(channels);
    for (std::size_t c = 0; c < channels; ++c) mean[c] = save_mean[c];
    const auto mc = per_column(plan, mean);
    plan.work_backwards().run([&](std::size_t u, const WorkItem&) {
      const RowUnit r = plan.row_unit(plan.last_first(u));
      k.bn_rows_dx(dy + r.offset, x + r.offset, dx + r.offset, r.rows, plan.cols(), r.cols,
                   &kd[r.col], &mc[r.col], &kx[r.col], &k0[r.col], centered, stream);
    }, fence);
  }
}

}  // namespace

void batch_norm_forward(Dtype dtype, const BatchNormShape& shape,
                        const BatchNormForwardArgs& args) {
  if (dtype == Dtype::f32) {
    forward_typed<float>(shape, args);
  } else {
    forward_typed<double>(shape, args);
  }
}

void batch_norm_backward(Dtype dtype, const BatchNormShape& shape,
                         const BatchNormBackwardArgs& args) {
  if (dtype == Dtype::f32) {
    backward_typed<float>(shape, args);
  } else {
    backward_typed<double>(shape, args);
  }
}

}  // namespace fusedops

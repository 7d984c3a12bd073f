#pragma once

/// @file
/// @brief FixedBatcher: every batch takes up to the same number of requests, at once.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "apo/batch/batch.hpp"
#include "apo/core/error.hpp"

namespace apo {
struct Config;
}  // namespace apo

namespace apo::batch {

/// @brief Settings of a FixedBatcher.
struct FixedBatcherOptions {
  /// @brief The defaults of Config{} (the configuration schema is their one source).
  FixedBatcherOptions();
  /// @brief performance_optimization.batch_size.
  static FixedBatcherOptions from_config(const Config& config);

  std::size_t batch_size;

 private:
  explicit FixedBatcherOptions(const Config& config);
};

/// @brief Plans batches of up to `batch_size` requests within the free memory, never waiting
/// for a fuller batch and never learning from outcomes. Stateless after construction, so
/// thread-safe.
class FixedBatcher {
 public:
  using Options = FixedBatcherOptions;

  /// @brief Throws Error(InvalidArgument) unless 1 ≤ batch_size ≤ kMaxBatchSize.
  explicit FixedBatcher(Options options = {}) : batch_size_(options.batch_size) {
    if (batch_size_ < 1 || batch_size_ > kMaxBatchSize) {
      fail(ErrorCode::InvalidArgument, "FixedBatcher: batch_size must be 1 to {}, got {}",
           kMaxBatchSize, batch_size_);
    }
  }
  explicit FixedBatcher(std::size_t batch_size) : FixedBatcher(with_size(batch_size)) {}

  BatchPlan plan(const BatchCandidate& candidate, std::int64_t free_bytes) const {
    if (candidate.head_memory_bytes > free_bytes) return BatchPlan::blocked();
    return BatchPlan::take(batch_size_, std::max<std::int64_t>(free_bytes, 0),
                           BatchLimit::fixed_size);
  }
  void record(const BatchOutcome& /*outcome*/) {}
  std::size_t max_batch_size() const { return batch_size_; }

 private:
  static Options with_size(std::size_t batch_size) {
    Options options;
    options.batch_size = batch_size;
    return options;
  }

  std::size_t batch_size_;
};
static_assert(Batcher<FixedBatcher>);

}  // namespace apo::batch

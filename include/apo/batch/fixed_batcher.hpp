#pragma once

/// @file
/// @brief FixedBatcher: every batch takes up to the same number of requests, at once.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "apo/batch/batch.hpp"
#include "apo/core/config.hpp"
#include "apo/core/error.hpp"

namespace apo::batch {

/// @brief Plans batches of up to `batch_size` requests within the free memory, never waiting
/// for a fuller batch and never learning from outcomes. Stateless after construction, so
/// thread-safe.
class FixedBatcher {
 public:
  /// @brief Throws Error(InvalidArgument) unless 1 ≤ batch_size ≤ kMaxBatchSize.
  explicit FixedBatcher(std::size_t batch_size) : batch_size_(batch_size) {
    if (batch_size < 1 || batch_size > kMaxBatchSize) {
      fail(ErrorCode::InvalidArgument, "FixedBatcher: batch_size must be 1 to {}, got {}",
           kMaxBatchSize, batch_size);
    }
  }

  /// @brief performance_optimization.batch_size.
  static FixedBatcher from_config(const Config& config) {
    return FixedBatcher(static_cast<std::size_t>(config.performance.batch_size));
  }

  BatchPlan plan(const BatchCandidate& /*candidate*/, std::int64_t free_bytes) const {
    return BatchPlan::take(batch_size_, std::max<std::int64_t>(free_bytes, 0));
  }
  void record(const BatchOutcome& /*outcome*/) {}
  std::size_t max_batch_size() const { return batch_size_; }

 private:
  std::size_t batch_size_;
};
static_assert(Batcher<FixedBatcher>);

}  // namespace apo::batch

#include "apo/batch/memory_aware_batcher.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "apo/batch/fixed_batcher.hpp"
#include "apo/core/config.hpp"
#include "apo/core/error.hpp"

namespace apo::batch {

void MemoryAwareBatcherOptions::validate() const {
  if (max_batch_size < 1 || max_batch_size > kMaxBatchSize) {
    fail(ErrorCode::InvalidArgument, "MemoryAwareBatcher: max_batch_size must be 1 to {}, got {}",
         kMaxBatchSize, max_batch_size);
  }
  if (max_queue_delay < Clock::duration::zero()) {
    fail(ErrorCode::InvalidArgument, "MemoryAwareBatcher: max_queue_delay must be >= 0, got {} ns",
         max_queue_delay.count());
  }
  if (throughput_window < 1) {
    fail(ErrorCode::InvalidArgument, "MemoryAwareBatcher: throughput_window must be >= 1");
  }
  if (!(throughput_tolerance >= 0.0 && throughput_tolerance <= 1.0)) {
    fail(ErrorCode::InvalidArgument,
         "MemoryAwareBatcher: throughput_tolerance must be 0 to 1, got {}", throughput_tolerance);
  }
  if (max_tracked_groups < 1) {
    fail(ErrorCode::InvalidArgument, "MemoryAwareBatcher: max_tracked_groups must be >= 1");
  }
}

MemoryAwareBatcherOptions::MemoryAwareBatcherOptions() : MemoryAwareBatcherOptions(Config{}) {}

MemoryAwareBatcherOptions::MemoryAwareBatcherOptions(const Config& config)
    : max_batch_size(static_cast<std::size_t>(config.performance.max_batch_size)),
      max_queue_delay(std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double, std::milli>(config.scheduling.max_queue_delay_ms))),
      throughput_window(static_cast<std::size_t>(config.scheduling.throughput_window)),
      throughput_tolerance(config.scheduling.throughput_tolerance) {}

MemoryAwareBatcherOptions MemoryAwareBatcherOptions::from_config(const Config& config) {
  return MemoryAwareBatcherOptions(config);
}

FixedBatcherOptions::FixedBatcherOptions() : FixedBatcherOptions(Config{}) {}

FixedBatcherOptions::FixedBatcherOptions(const Config& config)
    : batch_size(static_cast<std::size_t>(config.performance.batch_size)) {}

FixedBatcherOptions FixedBatcherOptions::from_config(const Config& config) {
  return FixedBatcherOptions(config);
}

MemoryAwareBatcher::MemoryAwareBatcher(MemoryAwareBatcherOptions options)
    : options_(options), alpha_(2.0 / (static_cast<double>(options.throughput_window) + 1.0)) {
  options_.validate();
}

std::size_t MemoryAwareBatcher::size_limit(GroupKeyView key) const {
  const std::lock_guard lock(mutex_);
  const auto found = history_.find(key);
  return found == history_.end() ? options_.max_batch_size : found->second.limit;
}

BatchPlan MemoryAwareBatcher::plan(const BatchCandidate& candidate, std::int64_t free_bytes) const {
  free_bytes = std::max<std::int64_t>(free_bytes, 0);
  if (candidate.head_memory_bytes > free_bytes) return BatchPlan::blocked();
  // An unknown estimate (0) counts as one byte: the count limits alone then decide.
  const std::int64_t per_request = std::max<std::int64_t>(candidate.head_memory_bytes, 1);
  const auto by_memory = static_cast<std::uint64_t>(free_bytes / per_request);
  const std::size_t limit = size_limit(candidate.key);
  const std::size_t target =
      std::clamp<std::size_t>(static_cast<std::size_t>(std::min<std::uint64_t>(by_memory, limit)),
                              1, options_.max_batch_size);
  BatchLimit why = BatchLimit::max_batch_size;
  if (candidate.available < target) {
    why = BatchLimit::queued;
  } else if (by_memory < limit && by_memory < options_.max_batch_size) {
    why = BatchLimit::memory;
  } else if (limit < options_.max_batch_size) {
    why = BatchLimit::throughput;
  }

  const auto fill_deadline = candidate.head_submit_time + options_.max_queue_delay;
  if (candidate.available >= target || candidate.now >= fill_deadline) {
    return BatchPlan::take(target, free_bytes, why);
  }
  return BatchPlan::wait(fill_deadline);
}

void MemoryAwareBatcher::record(const BatchOutcome& outcome) {
  if (outcome.size < 1 || outcome.size > kMaxBatchSize ||
      outcome.service_time <= Clock::duration::zero()) {
    return;  // nothing to learn: no requests, or no measurable time
  }
  const double seconds = std::chrono::duration<double>(outcome.service_time).count();
  const double sample = static_cast<double>(outcome.size) / seconds;

  const std::lock_guard lock(mutex_);
  auto found = history_.find(GroupKeyView(outcome.key));
  if (found == history_.end()) {
    if (history_.size() >= options_.max_tracked_groups) {
      const auto oldest = std::min_element(
          history_.begin(), history_.end(),
          [](const auto& a, const auto& b) { return a.second.last_used < b.second.last_used; });
      history_.erase(oldest);
    }
    found = history_.emplace(outcome.key, History{}).first;
    found->second.limit = options_.max_batch_size;
  }
  History& history = found->second;
  history.last_used = ++tick_;

  double& average = history.throughput[outcome.size];
  const double before = average;
  average = before > 0 ? before + alpha_ * (sample - before) : sample;

  // Only a batch that reached its planned size says anything about the limit: a smaller one was
  // short of requests, not of throughput.
  if (outcome.size < outcome.planned_size) return;
  const bool fell = before > 0 && sample < before * (1.0 - options_.throughput_tolerance);
  if (fell) {
    history.limit = std::max<std::size_t>(1, std::min(history.limit, outcome.size - 1));
    history.steady_full_batches = 0;
    return;
  }
  if (outcome.size >= history.limit && history.limit < options_.max_batch_size &&
      ++history.steady_full_batches >= options_.throughput_window) {
    ++history.limit;
    history.steady_full_batches = 0;
  }
}

}  // namespace apo::batch

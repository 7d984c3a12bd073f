#pragma once

/// @file
/// @brief MemoryAwareBatcher: the guide's DynamicBatcher, sized by memory and throughput. The batch
/// size comes from the memory left and the per-request estimate, is capped by what throughput
/// history allows, and a batch may wait a bounded time to fill, as Triton's dynamic batcher does.

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>

#include "apo/batch/batch.hpp"

namespace apo {
struct Config;
}  // namespace apo

namespace apo::batch {

/// @brief Settings of a MemoryAwareBatcher (see docs/config.md, block "scheduling").
struct MemoryAwareBatcherOptions {
  /// @brief The defaults of Config{} (the configuration schema is their one source).
  MemoryAwareBatcherOptions();
  static MemoryAwareBatcherOptions from_config(const Config& config);

  /// The largest batch (performance_optimization.max_batch_size; the guide: 8).
  std::size_t max_batch_size;
  /// How long a batch may wait after its head was submitted for more requests to join
  /// (scheduling.max_queue_delay_ms); zero never waits.
  Clock::duration max_queue_delay;
  /// Throughput samples the history averages over (scheduling.throughput_window; the guide
  /// looks at the last 5).
  std::size_t throughput_window;
  /// A sample this fraction below the history counts as a fall (scheduling.throughput_tolerance).
  double throughput_tolerance;
  /// Grouping keys whose history is kept; the least recently used is forgotten beyond this.
  std::size_t max_tracked_groups = 256;

  /// @brief Throws Error(InvalidArgument) naming the first setting out of range.
  void validate() const;

 private:
  explicit MemoryAwareBatcherOptions(const Config& config);
};

/// @brief Sizes each batch as min(free memory ÷ the head's estimate, the group's throughput
/// limit), clamped to [1, max_batch_size]; waits up to max_queue_delay for that many requests.
/// Blocked when the head alone does not fit the free memory.
///
/// Throughput history, per grouping key: throughput (requests per second of service) is
/// averaged per batch size (an exponential average over throughput_window samples). A full
/// batch (one that reached its planned size) whose throughput falls more than
/// throughput_tolerance below that size's average lowers the group's limit to one below its
/// size. After throughput_window full batches in a row at the limit without a fall, the limit
/// grows by one, back towards max_batch_size: so the size shrinks while throughput falls and
/// grows back once it recovers.
///
/// Thread-safe: plan() and record() take an internal mutex.
class MemoryAwareBatcher {
 public:
  using Options = MemoryAwareBatcherOptions;

  explicit MemoryAwareBatcher(Options options = {});

  BatchPlan plan(const BatchCandidate& candidate, std::int64_t free_bytes) const;
  void record(const BatchOutcome& outcome);
  std::size_t max_batch_size() const { return options_.max_batch_size; }

  /// @brief The throughput limit of a group now (max_batch_size until history lowers it).
  std::size_t size_limit(GroupKeyView key) const;
  const MemoryAwareBatcherOptions& options() const noexcept { return options_; }

 private:
  struct History {
    std::size_t limit = 0;
    std::array<double, kMaxBatchSize + 1> throughput{};  ///< per batch size; 0: never seen
    std::size_t steady_full_batches = 0;
    std::uint64_t last_used = 0;
  };

  MemoryAwareBatcherOptions options_;
  double alpha_;  ///< weight of a new sample in the per-size average
  mutable std::mutex mutex_;
  std::unordered_map<GroupKey, History, GroupKeyHash, GroupKeyEqual> history_;
  std::uint64_t tick_ = 0;
};
static_assert(Batcher<MemoryAwareBatcher>);

}  // namespace apo::batch

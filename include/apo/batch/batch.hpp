#pragma once

/// @file
/// @brief What batchers and schedulers exchange: the grouping key, the candidate a scheduler
/// shows, the plan a batcher returns, the batch that results and the outcome reported after it
/// ran; and the Batcher concept.

#include <compare>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apo/core/clock.hpp"
#include "apo/engine/request.hpp"

namespace apo::batch {

using engine::QualityLevel;
using engine::Request;

/// @brief The most requests any batch may hold (performance_optimization.max_batch_size's upper
/// limit).
inline constexpr std::size_t kMaxBatchSize = 64;

/// @brief Requests share a batch only when these agree: the guide's (workflow, resolution,
/// quality level), where a video's resolution includes its frame count (its latent shape).
struct GroupKey {
  std::string workflow;
  int width = 0;
  int height = 0;
  int frames = 1;
  QualityLevel quality = QualityLevel::balanced;

  friend bool operator==(const GroupKey&, const GroupKey&) = default;
  friend auto operator<=>(const GroupKey&, const GroupKey&) = default;
};

/// @brief A GroupKey that borrows its workflow name, for lookups that must not copy it.
struct GroupKeyView {
  std::string_view workflow;
  int width = 0;
  int height = 0;
  int frames = 1;
  QualityLevel quality = QualityLevel::balanced;

  GroupKeyView() = default;
  GroupKeyView(const GroupKey& key)  // NOLINT: implicit, so owned keys look up as views
      : workflow(key.workflow),
        width(key.width),
        height(key.height),
        frames(key.frames),
        quality(key.quality) {}
  explicit GroupKeyView(const Request& r)
      : workflow(r.workflow),
        width(r.width),
        height(r.height),
        frames(r.frames),
        quality(r.quality) {}

  GroupKey owned() const { return {std::string(workflow), width, height, frames, quality}; }
  friend bool operator==(const GroupKeyView&, const GroupKeyView&) = default;
};

/// @brief The grouping key of a request.
inline GroupKey group_key(const Request& request) {
  return GroupKeyView(request).owned();
}

/// @brief Hash and equality over GroupKey and GroupKeyView alike (heterogeneous lookup).
struct GroupKeyHash {
  using is_transparent = void;
  std::size_t operator()(GroupKeyView key) const noexcept {
    std::size_t h = std::hash<std::string_view>{}(key.workflow);
    const auto mix = [&h](std::uint64_t v) {
      h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    };
    mix(static_cast<std::uint64_t>(key.width) << 32 | static_cast<std::uint32_t>(key.height));
    mix(static_cast<std::uint64_t>(key.frames) << 8 | static_cast<std::uint64_t>(key.quality));
    return h;
  }
};
struct GroupKeyEqual {
  using is_transparent = void;
  bool operator()(GroupKeyView a, GroupKeyView b) const noexcept { return a == b; }
};

/// @brief What a scheduler shows a batcher about the batch it would form next: the group of its
/// most urgent request (the head).
struct BatchCandidate {
  GroupKeyView key;  ///< borrowed from the head request: valid during the planner call only
  /// Requests that could join a batch led by the head, the head included (a FIFO scheduler stops
  /// counting at kMaxBatchSize).
  std::size_t available = 0;
  std::int64_t head_memory_bytes = 0;
  Clock::time_point head_submit_time{};
  Clock::time_point now{};
};

/// @brief A batcher's answer: take up to `max_requests` whose estimates sum to at most
/// `max_memory_bytes` now, or take nothing and look again at `wait_until` (to let the batch
/// fill).
struct BatchPlan {
  std::size_t max_requests = 0;
  std::int64_t max_memory_bytes = 0;
  std::optional<Clock::time_point> wait_until;

  /// @brief Take up to `requests` now (at least 1), within `memory_bytes`.
  static BatchPlan take(std::size_t requests, std::int64_t memory_bytes) {
    return {requests < 1 ? 1 : requests, memory_bytes, std::nullopt};
  }
  /// @brief Take nothing before `time`.
  static BatchPlan wait(Clock::time_point time) { return {0, 0, time}; }

  bool takes() const noexcept { return max_requests > 0; }
};

/// @brief Requests that run together: one grouping key, in the order the scheduler chose them.
struct Batch {
  std::vector<Request> requests;
  std::int64_t memory_bytes = 0;  ///< sum of the requests' estimates
  std::size_t planned_size = 0;   ///< the plan's max_requests (how full the batch is)
  Clock::time_point formed_at{};

  bool empty() const noexcept { return requests.empty(); }
  std::size_t size() const noexcept { return requests.size(); }
  GroupKeyView key() const { return GroupKeyView(requests.front()); }
};

/// @brief What a batcher learns after a batch ran: its key, its size against the size it was
/// planned at, and how long it took.
struct BatchOutcome {
  GroupKey key;
  std::size_t size = 0;
  std::size_t planned_size = 0;
  Clock::duration service_time{};

  /// @brief The outcome of `batch` (which must not be empty) after `service_time`.
  static BatchOutcome of(const Batch& batch, Clock::duration service_time) {
    return {batch.key().owned(), batch.size(), batch.planned_size, service_time};
  }
};

/// @brief Chooses how many requests go into the next batch.
///
/// Contract:
/// - `plan(candidate, free_bytes)` returns either a take plan with 1 ≤ max_requests ≤
///   max_batch_size() and max_memory_bytes ≤ free_bytes, or a wait plan whose wait_until lies
///   after candidate.now and no later than the batcher's maximum queue delay after
///   candidate.head_submit_time. It may read only the candidate, free_bytes and what record() has
///   taught it; it must not call the scheduler (schedulers call it under their lock).
/// - `record(outcome)` feeds back how a batch ran; it must accept any key, size and duration
///   (a zero duration included).
/// - `max_batch_size()` is fixed at construction and is at most kMaxBatchSize.
/// - Every member is safe to call from any thread at the same time as any other.
template <class B>
concept Batcher = requires(B& batcher, const B& const_batcher, const BatchCandidate& candidate,
                           std::int64_t free_bytes, const BatchOutcome& outcome) {
  { const_batcher.plan(candidate, free_bytes) } -> std::same_as<BatchPlan>;
  { batcher.record(outcome) } -> std::same_as<void>;
  { const_batcher.max_batch_size() } -> std::same_as<std::size_t>;
};

}  // namespace apo::batch

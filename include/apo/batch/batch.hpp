#pragma once

/// @file
/// @brief What batchers and schedulers exchange: the grouping key, the candidate a scheduler
/// shows, the plan a batcher returns, the batch that results and the outcome reported after it
/// ran; and the Batcher concept.

#include <array>
#include <bit>
#include <compare>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "apo/core/clock.hpp"
#include "apo/request/request.hpp"

namespace apo::batch {

/// @brief The most requests any batch may hold (performance_optimization.max_batch_size's upper
/// limit).
inline constexpr std::size_t kMaxBatchSize = 64;

/// @brief Requests share a batch only when everything that must agree inside one batch agrees:
/// the workflow, its model and LoRA set (the weights), the latent shape (width, height, frames),
/// the sampling (steps, guidance, sampler and, for image inputs, strength), the kinds of input,
/// and the quality level that fixes sampling left unset. Seeds, prompts and input pixels may
/// differ.
struct GroupKey {
  std::string workflow;
  std::string model;
  std::vector<models::LoraRequest> loras;
  int width = 0;
  int height = 0;
  int frames = 1;
  int steps = 0;         ///< 0: unset (the quality level decides)
  double guidance = -1;  ///< negative: unset
  int sampler = -1;      ///< the Sampler's value; -1: unset
  double strength = 1;
  std::uint8_t inputs = 0;  ///< InputBits
  QualityLevel quality = QualityLevel::balanced;

  friend bool operator==(const GroupKey&, const GroupKey&) = default;
};

/// @brief A GroupKey that borrows its strings and LoRAs, for lookups that must not copy them.
struct GroupKeyView {
  std::string_view workflow;
  std::string_view model;
  std::span<const models::LoraRequest> loras;
  int width = 0;
  int height = 0;
  int frames = 1;
  int steps = 0;
  double guidance = -1;
  int sampler = -1;
  double strength = 1;
  std::uint8_t inputs = 0;
  QualityLevel quality = QualityLevel::balanced;

  GroupKeyView() = default;
  GroupKeyView(const GroupKey& key)  // NOLINT: implicit, so owned keys look up as views
      : workflow(key.workflow),
        model(key.model),
        loras(key.loras),
        width(key.width),
        height(key.height),
        frames(key.frames),
        steps(key.steps),
        guidance(key.guidance),
        sampler(key.sampler),
        strength(key.strength),
        inputs(key.inputs),
        quality(key.quality) {}
  explicit GroupKeyView(const Request& r)
      : workflow(r.workflow),
        model(r.model),
        loras(r.loras),
        width(r.width),
        height(r.height),
        frames(r.frames),
        steps(r.steps.value_or(0)),
        guidance(r.guidance.value_or(-1)),
        sampler(r.sampler ? static_cast<int>(*r.sampler) : -1),
        strength(r.strength),
        inputs(r.inputs()),
        quality(r.quality) {}

  GroupKey owned() const {
    return {std::string(workflow),
            std::string(model),
            std::vector<models::LoraRequest>(loras.begin(), loras.end()),
            width,
            height,
            frames,
            steps,
            guidance,
            sampler,
            strength,
            inputs,
            quality};
  }
  friend bool operator==(const GroupKeyView& a, const GroupKeyView& b) noexcept {
    return a.workflow == b.workflow && a.model == b.model && a.width == b.width &&
           a.height == b.height && a.frames == b.frames && a.steps == b.steps &&
           a.guidance == b.guidance && a.sampler == b.sampler && a.strength == b.strength &&
           a.inputs == b.inputs && a.quality == b.quality &&
           std::equal(a.loras.begin(), a.loras.end(), b.loras.begin(), b.loras.end());
  }
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
    if (!key.model.empty()) mix(std::hash<std::string_view>{}(key.model));
    for (const auto& lora : key.loras) {
      mix(std::hash<std::string_view>{}(lora.path.native()));
      mix(std::bit_cast<std::uint64_t>(lora.strength));
    }
    mix(static_cast<std::uint64_t>(key.width) << 32 | static_cast<std::uint32_t>(key.height));
    mix(static_cast<std::uint64_t>(key.frames) << 8 | static_cast<std::uint64_t>(key.quality));
    mix(static_cast<std::uint64_t>(key.steps) << 32 | static_cast<std::uint32_t>(key.sampler));
    mix(std::bit_cast<std::uint64_t>(key.guidance) ^ (std::uint64_t{key.inputs} << 56));
    mix(std::bit_cast<std::uint64_t>(key.strength));
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

/// @brief What set the size of a take plan: the requests queued, the memory free, the group's
/// throughput history, the batcher's largest batch, or a fixed size.
enum class BatchLimit : std::uint8_t { queued, memory, throughput, max_batch_size, fixed_size };

/// @brief A batcher's answer: take up to `max_requests` whose estimates sum to at most
/// `max_memory_bytes` now; take nothing and look again at `wait_until` (to let the batch fill);
/// or take nothing because the head alone needs more memory than is free (blocked: only freed
/// memory helps).
struct BatchPlan {
  std::size_t max_requests = 0;
  std::int64_t max_memory_bytes = 0;
  std::optional<Clock::time_point> wait_until;
  BatchLimit limit = BatchLimit::queued;

  /// @brief Take up to `requests` now (at least 1), within `memory_bytes`.
  static BatchPlan take(std::size_t requests, std::int64_t memory_bytes,
                        BatchLimit limit = BatchLimit::fixed_size) {
    return {requests < 1 ? 1 : requests, memory_bytes, std::nullopt, limit};
  }
  /// @brief Take nothing before `time`.
  static BatchPlan wait(Clock::time_point time) { return {0, 0, time, BatchLimit::queued}; }
  /// @brief Take nothing: the head does not fit the free memory.
  static BatchPlan blocked() { return {0, 0, std::nullopt, BatchLimit::memory}; }

  bool takes() const noexcept { return max_requests > 0; }
  bool is_blocked() const noexcept { return max_requests == 0 && !wait_until; }
};

/// @brief Requests that run together: one grouping key, in the order the scheduler chose them.
struct Batch {
  std::vector<Request> requests;
  std::int64_t memory_bytes = 0;          ///< sum of the requests' estimates
  std::size_t planned_size = 0;           ///< the plan's max_requests (how full the batch is)
  BatchLimit limit = BatchLimit::queued;  ///< what set the plan's size
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

/// @brief Anything that plans batches (a Batcher, or a wrapper around one): what placement and
/// schedulers call.
template <class P>
concept BatchPlanner = requires(const P& planner, const BatchCandidate& candidate,
                                std::int64_t free_bytes) {
  { planner.plan(candidate, free_bytes) } -> std::same_as<BatchPlan>;
  { planner.max_batch_size() } -> std::same_as<std::size_t>;
};

/// @brief Chooses how many requests go into the next batch.
///
/// Contract:
/// - `plan(candidate, free_bytes)` returns a blocked plan when the head alone needs more than
///   `free_bytes` (candidate.head_memory_bytes > free_bytes); otherwise either a take plan with
///   1 ≤ max_requests ≤ max_batch_size() and head_memory_bytes ≤ max_memory_bytes ≤ free_bytes,
///   or a wait plan whose wait_until lies after candidate.now and no later than the batcher's
///   maximum queue delay after candidate.head_submit_time. It may read only the candidate,
///   free_bytes and what record() has taught it; it must not call the scheduler (schedulers
///   call it under their lock).
/// - `record(outcome)` feeds back how a batch ran; it must accept any key, size and duration
///   (a zero duration included).
/// - `max_batch_size()` is fixed at construction and is at most kMaxBatchSize.
/// - `B::Options` is its settings type, with `from_config(const Config&)`, and `B(options)`
///   builds it.
/// - Every member is safe to call from any thread at the same time as any other.
template <class B>
concept Batcher = BatchPlanner<B> &&
    requires(B& batcher, const B& const_batcher, const BatchOutcome& outcome,
             const typename B::Options& options) {
  { batcher.record(outcome) } -> std::same_as<void>;
  B(options);
};

}  // namespace apo::batch

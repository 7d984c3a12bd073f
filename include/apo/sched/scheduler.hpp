#pragma once

/// @file
/// @brief The Scheduler concept: the queue between callers who submit requests and the
/// dispatcher that forms batches, with its options, results and counters.

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "apo/batch/batch.hpp"
#include "apo/core/clock.hpp"
#include "apo/request/request.hpp"

namespace apo {
struct Config;
}  // namespace apo

namespace apo::sched {

using batch::Batch;
using batch::BatchCandidate;
using batch::BatchPlan;
using batch::GroupKey;
using batch::GroupKeyView;

/// @brief Settings of a scheduler (docs/config.md, block "scheduling").
struct SchedulerOptions {
  /// @brief The defaults of Config{} (the configuration schema is their one source).
  SchedulerOptions();
  static SchedulerOptions from_config(const Config& config);

  /// Requests the queue holds; a submit beyond it is Rejected.
  std::size_t max_queue_size;
  /// Deadline given to requests that set none, after their submission; zero: none.
  Clock::duration default_timeout;
  /// PriorityScheduler: priorities run 0 (lowest) to priority_levels − 1 (highest).
  std::size_t priority_levels;
  /// PriorityScheduler: after this wait a request outranks every newly submitted request.
  Clock::duration aging_bound;

  /// @brief Throws Error(InvalidArgument) naming the first setting out of range.
  void validate() const;

 private:
  explicit SchedulerOptions(const Config& config);
};

/// @brief The head of the queue needs more memory than the planner had: only freed memory
/// helps.
struct MemoryBlocked {
  RequestId head = 0;
  std::int64_t head_memory_bytes = 0;
};

/// @brief What one pop_batch call did.
struct PopResult {
  /// The batch formed; empty when the plan waited, the queue was empty, or the head request
  /// did not fit the plan's memory.
  Batch batch;
  /// Requests removed because their deadline passed; they end TimedOut.
  std::vector<Request> timed_out;
  /// When the batch is empty but requests are queued: the time at which calling again may
  /// give a batch with nothing else changing (the batcher's fill deadline, or the next
  /// request deadline). Unset: only a change (a submit, memory freed) helps.
  std::optional<Clock::time_point> retry_at;
  /// Set when the batch is empty because the planner found the head too large for the memory.
  std::optional<MemoryBlocked> blocked;
};

/// @brief Why Scheduler::wait returned.
enum class WaitResult {
  changed,  ///< a submit or a notify() since the last wait
  timeout,  ///< the clock reached the time waited for
  closed,   ///< close() was called
};

/// @brief Counters over a scheduler's life. At every moment
/// submitted = rejected + timed_out + cancelled + dispatched + queued.
struct SchedulerStats {
  std::uint64_t submitted = 0;   ///< valid submits (rejected ones included)
  std::uint64_t rejected = 0;    ///< refused because the queue was full
  std::uint64_t timed_out = 0;   ///< deadline passed (at submit or while queued)
  std::uint64_t cancelled = 0;   ///< removed by cancel()
  std::uint64_t dispatched = 0;  ///< left in a batch
  std::uint64_t queued = 0;      ///< still queued

  friend bool operator==(const SchedulerStats&, const SchedulerStats&) = default;
};

namespace detail {
/// @brief Stands for any planner in the concept's requirements: a callable from the candidate
/// to a plan (usually a lambda around Batcher::plan).
struct PlannerArchetype {
  BatchPlan operator()(const BatchCandidate& candidate) const;
};
}  // namespace detail

/// @brief Holds submitted requests until they leave in a batch, are cancelled or time out.
///
/// Contract:
/// - `submit(request)` validates it (engine::validate, the policy's own limits such as the
///   priority range, and an id not already queued: Error(InvalidArgument)), stamps
///   `submit_time` from the scheduler's clock and gives it the default deadline if it has none.
///   It throws Error(Rejected) when max_queue_size requests are queued and Error(TimedOut) when
///   the deadline is not after now; a request that throws is not queued. Every queued request
///   then ends exactly once: in a batch from pop_batch, returned by cancel, or returned as
///   timed out by pop_batch or expire.
/// - `pop_batch(planner)` first removes the requests whose deadline has come (`timed_out`).
///   If any request remains it calls `planner(candidate)` exactly once, for the batch led by
///   the policy's most urgent request (the head). A take plan gives a batch: the head first,
///   then requests of the head's grouping key in the policy's order, at most max_requests of
///   them, whose estimates sum to at most max_memory_bytes. The head is never passed over: if
///   it alone exceeds the memory, the batch is empty. A wait plan gives an empty batch and a
///   retry_at no later than its wait_until; a blocked plan an empty batch and `blocked`. The
///   planner runs under the scheduler's lock: it must be quick and must not call the scheduler.
/// - `wait(until)` blocks the caller (a dispatcher) until something changed since its last
///   wait (a submit, or notify() — say, memory was freed), the scheduler's clock reaches
///   `until`, or close() is called (one wait returns `closed`; later ones wait as before); it
///   returns which. Waits follow the clock: under a FakeClock
///   they end when the clock is advanced past `until`.
/// - `close()` refuses further submits (Error(Rejected)) and wakes waiters; queued requests stay
///   and leave as before (a dispatcher drains them, or cancels them).
/// - `S::Options` is SchedulerOptions, and `S(clock, options)` builds one.
/// - `cancel(id)` removes and returns the queued request with that id, or nullopt.
/// - `expire()` removes and returns the requests whose deadline has come.
/// - `next_deadline()` is the earliest deadline among queued requests.
/// - Every member is safe to call from any thread at the same time as any other (one internal
///   mutex). Each costs O(log n) in the queued count n, per request it submits, removes or
///   returns.
template <class S>
concept Scheduler = requires(S& scheduler, const S& const_scheduler, Request request, RequestId id,
                             const detail::PlannerArchetype& planner,
                             std::optional<Clock::time_point> until, const Clock& clock,
                             const typename S::Options& options) {
  { scheduler.submit(std::move(request)) } -> std::same_as<void>;
  { scheduler.pop_batch(planner) } -> std::same_as<PopResult>;
  { scheduler.cancel(id) } -> std::same_as<std::optional<Request>>;
  { scheduler.expire() } -> std::same_as<std::vector<Request>>;
  { scheduler.wait(until) } -> std::same_as<WaitResult>;
  { scheduler.notify() } -> std::same_as<void>;
  { scheduler.close() } -> std::same_as<void>;
  { const_scheduler.closed() } -> std::same_as<bool>;
  { const_scheduler.size() } -> std::same_as<std::size_t>;
  { const_scheduler.next_deadline() } -> std::same_as<std::optional<Clock::time_point>>;
  { const_scheduler.stats() } -> std::same_as<SchedulerStats>;
  S(clock, options);
};

}  // namespace apo::sched

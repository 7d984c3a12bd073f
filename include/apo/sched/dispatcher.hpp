#pragma once

/// @file
/// @brief Dispatcher: the loop that moves requests from a scheduler, through a batcher, onto
/// devices. One step of it is: complete (free a batch's place and memory, teach the batcher) →
/// admit (submits) → dispatch (place batches while a device has room) → the next wake-up. The
/// simulator drives it on a fake clock from a trace; the engine drives it from a thread.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <iterator>
#include <optional>
#include <utility>
#include <vector>

#include "apo/batch/batch.hpp"
#include "apo/sched/placement.hpp"
#include "apo/sched/scheduler.hpp"

namespace apo::sched {

/// @brief A batch placed on a device by a dispatch round (take it with Placement::take).
struct Placed {
  std::size_t device = 0;
  std::size_t batch_size = 0;
};

/// @brief What one dispatch round did.
struct DispatchRound {
  std::vector<Placed> placed;
  std::vector<Request> timed_out;  ///< they end TimedOut
  /// Set when the round stopped because the head needs more memory than any device has room for.
  std::optional<BlockedOnMemory> blocked;
  /// When to run a round again with nothing else changing: the batcher's fill deadline or the
  /// next request deadline. Unset: only a change (a submit, a completion) helps.
  std::optional<Clock::time_point> wake_at;
};

/// @brief A batcher that takes what is there instead of waiting for a fuller batch: while a
/// dispatcher drains (shutting down), nothing waits for requests that will not come.
template <batch::BatchPlanner B>
struct TakeWithoutWaiting {
  const B& inner;
  std::size_t max_requests;

  BatchPlan plan(const BatchCandidate& candidate, std::int64_t free_bytes) const {
    BatchPlan plan = inner.plan(candidate, free_bytes);
    if (plan.takes() || plan.is_blocked()) return plan;
    return BatchPlan::take(std::min(candidate.available, max_requests), free_bytes,
                           batch::BatchLimit::queued);
  }
  std::size_t max_batch_size() const { return max_requests; }
};

/// @brief Drives a scheduler, a batcher and a placement together. Holds references: all three
/// must outlive it. Thread-safe as its parts are: submit, cancel and complete from any thread,
/// while one thread runs dispatch rounds and waits.
template <Scheduler S, batch::Batcher B>
class Dispatcher {
 public:
  Dispatcher(S& scheduler, B& batcher, Placement& placement, ExtraBytes extra = {})
      : scheduler_(scheduler), batcher_(batcher), placement_(placement), extra_(std::move(extra)) {}

  /// @brief Admits a request: Error(Rejected) when no device could ever hold its estimate,
  /// otherwise the scheduler's submit (and its errors).
  void submit(Request request) {
    placement_.admit(request);
    scheduler_.submit(std::move(request));
  }

  /// @brief Removes a queued request.
  std::optional<Request> cancel(RequestId id) { return scheduler_.cancel(id); }

  /// @brief A device finished `batch` after `service_time`: frees its place and reservation,
  /// teaches the batcher, and wakes a dispatcher waiting for room.
  void complete(std::size_t device, const Batch& batch, Clock::duration service_time) {
    placement_.complete(device, batch);
    if (!batch.empty()) batcher_.record(batch::BatchOutcome::of(batch, service_time));
    scheduler_.notify();
  }

  /// @brief Places batches while a device has room and requests wait.
  DispatchRound dispatch() {
    DispatchRound round;
    for (;;) {
      DispatchResult result =
          draining_.load()
              ? placement_.dispatch(
                    scheduler_, TakeWithoutWaiting<B>{batcher_, batcher_.max_batch_size()}, extra_)
              : placement_.dispatch(scheduler_, batcher_, extra_);
      std::move(result.timed_out.begin(), result.timed_out.end(),
                std::back_inserter(round.timed_out));
      if (!result.device) {
        round.blocked = result.blocked;
        round.wake_at = result.retry_at;
        break;
      }
      round.placed.push_back({*result.device, result.batch_size});
    }
    // Deadlines of requests still queued wake the next round too (they must time out).
    if (const auto deadline = scheduler_.next_deadline()) {
      if (!round.wake_at || *deadline < *round.wake_at) round.wake_at = deadline;
    }
    return round;
  }

  /// @brief Blocks until a submit, a completion or notify(), close(), or the clock reaching
  /// `until`.
  WaitResult wait(std::optional<Clock::time_point> until) { return scheduler_.wait(until); }

  /// @brief While draining, batches take what is queued at once (no fill delay).
  void set_draining(bool draining) {
    draining_ = draining;
    scheduler_.notify();
  }

  S& scheduler() noexcept { return scheduler_; }
  B& batcher() noexcept { return batcher_; }
  Placement& placement() noexcept { return placement_; }

 private:
  S& scheduler_;
  B& batcher_;
  Placement& placement_;
  ExtraBytes extra_;
  std::atomic<bool> draining_{false};
};

}  // namespace apo::sched

#pragma once

/// @file
/// @brief What both schedulers share: the request slots, the id index, the deadline heap, the
/// counters, the lock and the submit / cancel / expire / pop skeleton. A policy (CRTP) adds its
/// order through `order_key`, `link`, `unlink`, `head`, `available` and `take`.

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "apo/core/error.hpp"
#include "apo/sched/detail/id_index.hpp"
#include "apo/sched/detail/indexed_heap.hpp"
#include "apo/sched/scheduler.hpp"

namespace apo::sched::detail {

inline std::int64_t to_ns(Clock::time_point time) noexcept {
  return time.time_since_epoch().count();
}

/// @brief Queued requests by slot, with an id index and a heap of deadlines. Not synchronized:
/// the scheduler's lock guards it.
class RequestStore {
 public:
  struct Slot {
    Request request;
    std::uint64_t seq = 0;    ///< submission order, unique
    std::int64_t key = 0;     ///< the policy's order key (smaller runs first)
    std::uint32_t group = 0;  ///< the policy's group of this request, if it has groups
  };

  std::size_t size() const noexcept { return by_id_.size(); }
  /// @brief Slots ever used (an upper bound on slot numbers, for per-slot arrays).
  std::size_t capacity() const noexcept { return slots_.size(); }
  Slot& operator[](std::uint32_t slot) noexcept { return slots_[slot]; }
  const Slot& operator[](std::uint32_t slot) const noexcept { return slots_[slot]; }

  std::optional<std::uint32_t> find(RequestId id) const { return by_id_.find(id); }

  /// @brief Stores a request whose id is not queued; returns its slot.
  std::uint32_t insert(Request&& request, std::uint64_t seq, std::int64_t key) {
    std::uint32_t slot;
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
      slots_[slot].request = std::move(request);
    } else {
      slot = static_cast<std::uint32_t>(slots_.size());
      slots_.emplace_back().request = std::move(request);
      deadline_positions_.push_back(kNotInHeap);
    }
    Slot& stored = slots_[slot];
    stored.seq = seq;
    stored.key = key;
    by_id_.insert(stored.request.id, slot);
    if (stored.request.deadline) {
      deadlines_.push({to_ns(*stored.request.deadline), seq, slot}, deadline_positions_);
    }
    return slot;
  }

  /// @brief Removes a slot's request from the indexes and frees the slot.
  Request release(std::uint32_t slot) {
    Slot& stored = slots_[slot];
    by_id_.erase(stored.request.id);
    if (deadline_positions_[slot] != kNotInHeap) {
      deadlines_.erase(deadline_positions_[slot], deadline_positions_);
    }
    free_.push_back(slot);
    return std::move(stored.request);
  }

  /// @brief The slot with the earliest deadline if that deadline is at or before `now`.
  std::optional<std::uint32_t> overdue(Clock::time_point now) const {
    if (deadlines_.empty() || deadlines_.top().key > to_ns(now)) return std::nullopt;
    return deadlines_.top().slot;
  }

  std::optional<Clock::time_point> next_deadline() const {
    if (deadlines_.empty()) return std::nullopt;
    return Clock::time_point(Clock::duration(deadlines_.top().key));
  }

 private:
  std::vector<Slot> slots_;
  std::vector<std::uint32_t> free_;
  IdIndex by_id_;
  IndexedHeap deadlines_;
  std::vector<std::uint32_t> deadline_positions_;
};

/// @brief The shared skeleton. Policy must provide, all called under the lock:
/// - `void check(const Request&) const`: policy limits (throws InvalidArgument);
/// - `std::int64_t order_key(const Request&) const`: smaller runs first (ties by submission);
/// - `void link(std::uint32_t slot)`, `void unlink(std::uint32_t slot)`;
/// - `std::optional<std::uint32_t> head() const`;
/// - `std::size_t available(std::uint32_t head) const`;
/// - `void take(std::uint32_t head, const BatchPlan&, Batch&)`: moves requests out via
///   `release(slot)`, head first.
template <class Policy>
class SchedulerCore {
 public:
  void submit(Request request) {
    validate(request);
    policy().check(request);
    std::unique_lock lock(mutex_);
    if (store_.find(request.id)) {
      throw Error(ErrorCode::InvalidArgument,
                  fmt::format("a request with id {} is already queued", request.id),
                  describe(request));
    }
    const Clock::time_point now = clock_.now();
    ++stats_.submitted;
    if (closed_) {
      ++stats_.rejected;
      throw Error(ErrorCode::Rejected, "the scheduler is closed", describe(request));
    }
    if (store_.size() >= options_.max_queue_size) {
      ++stats_.rejected;
      throw Error(
          ErrorCode::Rejected,
          fmt::format("queue full: {} requests queued (scheduling.max_queue_size)", store_.size()),
          describe(request));
    }
    if (!request.deadline && options_.default_timeout > Clock::duration::zero()) {
      request.deadline = now + options_.default_timeout;
    }
    if (request.deadline && *request.deadline <= now) {
      ++stats_.timed_out;
      throw Error(ErrorCode::TimedOut, "deadline passed before the request was queued",
                  describe(request));
    }
    request.submit_time = now;
    const std::int64_t key = policy().order_key(request);
    const std::uint32_t slot = store_.insert(std::move(request), next_seq_++, key);
    policy().link(slot);
    changed_ = true;
    lock.unlock();
    wake_.notify_all();
  }

  template <class Planner>
  PopResult pop_batch(Planner&& planner) {
    PopResult result;
    const std::lock_guard lock(mutex_);
    const Clock::time_point now = clock_.now();
    expire_locked(now, result.timed_out);
    const std::optional<std::uint32_t> head = policy().head();
    if (!head) return result;

    const Request& lead = store_[*head].request;
    const BatchCandidate candidate{GroupKeyView(lead), policy().available(*head),
                                   lead.memory_estimate_bytes, lead.submit_time, now};
    BatchPlan plan;
    try {
      plan = std::forward<Planner>(planner)(std::as_const(candidate));
    } catch (...) {
      // The requests expired above must still reach a caller: the next pop or expire returns
      // them.
      for (Request& request : result.timed_out) undelivered_.push_back(std::move(request));
      throw;
    }
    if (!plan.takes()) {
      result.retry_at = earliest(plan.wait_until, store_.next_deadline());
      if (plan.is_blocked()) result.blocked = MemoryBlocked{lead.id, lead.memory_estimate_bytes};
      return result;
    }
    plan.max_requests = std::min(plan.max_requests, batch::kMaxBatchSize);
    result.batch.planned_size = plan.max_requests;
    result.batch.limit = plan.limit;
    result.batch.formed_at = now;
    policy().take(*head, plan, result.batch);
    stats_.dispatched += result.batch.size();
    if (result.batch.empty()) result.retry_at = store_.next_deadline();
    return result;
  }

  std::optional<Request> cancel(RequestId id) {
    const std::lock_guard lock(mutex_);
    const std::optional<std::uint32_t> slot = store_.find(id);
    if (!slot) return std::nullopt;
    policy().unlink(*slot);
    ++stats_.cancelled;
    return release(*slot);
  }

  std::vector<Request> expire() {
    std::vector<Request> timed_out;
    const std::lock_guard lock(mutex_);
    expire_locked(clock_.now(), timed_out);
    return timed_out;
  }

  WaitResult wait(std::optional<Clock::time_point> until) {
    std::unique_lock lock(mutex_);
    wake_.wait_until(lock, until, [&] { return changed_ || close_unseen_; });
    if (close_unseen_) {
      close_unseen_ = false;
      return WaitResult::closed;
    }
    if (!changed_) return WaitResult::timeout;
    changed_ = false;
    return WaitResult::changed;
  }

  void notify() {
    {
      const std::lock_guard lock(mutex_);
      changed_ = true;
    }
    wake_.notify_all();
  }

  void close() {
    {
      const std::lock_guard lock(mutex_);
      if (closed_) return;
      closed_ = true;
      close_unseen_ = true;
    }
    wake_.notify_all();
  }

  bool closed() const {
    const std::lock_guard lock(mutex_);
    return closed_;
  }

  std::size_t size() const {
    const std::lock_guard lock(mutex_);
    return store_.size();
  }

  std::optional<Clock::time_point> next_deadline() const {
    const std::lock_guard lock(mutex_);
    return store_.next_deadline();
  }

  SchedulerStats stats() const {
    const std::lock_guard lock(mutex_);
    SchedulerStats stats = stats_;
    stats.queued = store_.size();
    return stats;
  }

  const SchedulerOptions& options() const noexcept { return options_; }

 protected:
  SchedulerCore(const Clock& clock, SchedulerOptions options)
      : clock_(clock), options_(validated(std::move(options))) {}

  Request release(std::uint32_t slot) { return store_.release(slot); }

  static std::optional<Clock::time_point> earliest(std::optional<Clock::time_point> a,
                                                   std::optional<Clock::time_point> b) {
    if (!a) return b;
    if (!b) return a;
    return std::min(*a, *b);
  }

  const Clock& clock_;
  const SchedulerOptions options_;
  RequestStore store_;  // guarded by mutex_, like everything below

 private:
  static SchedulerOptions validated(SchedulerOptions options) {
    options.validate();
    return options;
  }

  Policy& policy() { return static_cast<Policy&>(*this); }
  const Policy& policy() const { return static_cast<const Policy&>(*this); }

  void expire_locked(Clock::time_point now, std::vector<Request>& out) {
    if (!undelivered_.empty()) {
      out = std::move(undelivered_);
      undelivered_.clear();
    }
    while (const std::optional<std::uint32_t> slot = store_.overdue(now)) {
      policy().unlink(*slot);
      out.push_back(release(*slot));
      ++stats_.timed_out;
    }
  }

  mutable std::mutex mutex_;
  ClockCondition wake_{clock_, mutex_};
  SchedulerStats stats_;
  std::uint64_t next_seq_ = 0;
  std::vector<Request> undelivered_;  ///< timed out during a pop whose planner threw
  bool changed_ = false;              ///< a submit or notify() since the last wait
  bool closed_ = false;
  bool close_unseen_ = false;  ///< closed, and no wait has returned `closed` yet
};

}  // namespace apo::sched::detail

#pragma once

/// @file
/// @brief FifoScheduler: requests leave in arrival order.

#include <cstdint>
#include <optional>
#include <vector>

#include "apo/sched/detail/scheduler_core.hpp"
#include "apo/sched/scheduler.hpp"

namespace apo::sched {

/// @brief Strict arrival order, priorities ignored. A batch is the longest run of consecutive
/// queued requests that share the oldest request's grouping key (as Triton's dynamic batcher
/// takes requests in order and batches only equal shapes), so no request ever leaves before
/// an older one.
///
/// The queue is an intrusive doubly linked list over the request slots: submit and cancel are
/// O(1) apart from the id index, and a batch costs O(its size). Thread-safe (see Scheduler).
class FifoScheduler : public detail::SchedulerCore<FifoScheduler> {
 public:
  using Options = SchedulerOptions;

  /// @brief A scheduler reading time from `clock`, which must outlive it. Throws
  /// Error(InvalidArgument) for options out of range.
  explicit FifoScheduler(const Clock& clock, SchedulerOptions options = {})
      : SchedulerCore(clock, std::move(options)) {}

 private:
  friend class detail::SchedulerCore<FifoScheduler>;
  static constexpr std::uint32_t kNone = detail::kNotInHeap;

  void check(const Request& /*request*/) const {}
  std::int64_t order_key(const Request& request) const {
    return detail::to_ns(request.submit_time);
  }

  void link(std::uint32_t slot) {
    if (slot >= next_.size()) {
      next_.resize(slot + 1, kNone);
      prev_.resize(slot + 1, kNone);
    }
    prev_[slot] = tail_;
    next_[slot] = kNone;
    if (tail_ != kNone) {
      next_[tail_] = slot;
    } else {
      head_ = slot;
    }
    tail_ = slot;
  }

  void unlink(std::uint32_t slot) {
    const std::uint32_t before = prev_[slot];
    const std::uint32_t after = next_[slot];
    (before != kNone ? next_[before] : head_) = after;
    (after != kNone ? prev_[after] : tail_) = before;
    prev_[slot] = next_[slot] = kNone;
  }

  std::optional<std::uint32_t> head() const {
    if (head_ == kNone) return std::nullopt;
    return head_;
  }

  std::size_t available(std::uint32_t head) const {
    const GroupKeyView key(store_[head].request);
    std::size_t count = 0;
    for (std::uint32_t slot = head; slot != kNone && count < batch::kMaxBatchSize;
         slot = next_[slot]) {
      if (GroupKeyView(store_[slot].request) != key) break;
      ++count;
    }
    return count;
  }

  void take(std::uint32_t head, const BatchPlan& plan, Batch& batch) {
    std::uint32_t slot = head;
    while (slot != kNone && batch.size() < plan.max_requests) {
      const Request& request = store_[slot].request;
      if (!batch.empty() && GroupKeyView(request) != batch.key()) break;
      if (batch.memory_bytes + request.memory_estimate_bytes > plan.max_memory_bytes) break;
      const std::uint32_t following = next_[slot];
      unlink(slot);
      batch.memory_bytes += request.memory_estimate_bytes;
      batch.requests.push_back(release(slot));
      slot = following;
    }
  }

  std::vector<std::uint32_t> next_;
  std::vector<std::uint32_t> prev_;
  std::uint32_t head_ = kNone;
  std::uint32_t tail_ = kNone;
};
static_assert(Scheduler<FifoScheduler>);

}  // namespace apo::sched

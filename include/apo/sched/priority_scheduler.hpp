#pragma once

/// @file
/// @brief PriorityScheduler: priority with aging, batches drawn from one grouping key.

#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "apo/sched/detail/indexed_heap.hpp"
#include "apo/sched/detail/scheduler_core.hpp"
#include "apo/sched/scheduler.hpp"

namespace apo::sched {

/// @brief Serves the request of highest effective priority first, and fills its batch with the
/// next requests of the same grouping key (the guide's RequestScheduler, made O(log n) and
/// starvation-free).
///
/// Aging. With L priority levels and aging bound B, one level is worth s = B / (L − 1) of
/// waiting: a request of priority p submitted at t has, at time now, the effective priority
/// p + (now − t) / s. Ordering by effective priority is ordering by the fixed key
/// t − p·s (smaller first; ties by submission), the same at every instant, so aging never
/// re-sorts anything: the key is computed once, at submit.
///
/// Wait bound. A batch's head is always the queued request of smallest key. A request r of
/// priority p can therefore be passed (as a head) only by requests of smaller key, and a request
/// submitted more than (L − 1 − p)·s ≤ B after r has a larger key whatever its priority. So r
/// leaves within N + 1 batches, N being the requests queued with a smaller key when r was
/// submitted plus those submitted in the (L − 1 − p)·s after it; with one device whose batches
/// take at most S and a batcher that waits at most D, r waits at most (N + 1)·(S + D).
/// Requests that join the head's batch as companions (same key, next in key order) may leave
/// ahead of requests of other groups with smaller keys: that is the grouping's gain, and it
/// never delays the head.
///
/// Structure: one indexed heap per grouping key, holding its requests by key, and a heap of the
/// groups by their best key; plus the id index and the deadline heap. Submit, cancel, expiry
/// and each request taken cost O(log n). Thread-safe (see Scheduler).
class PriorityScheduler : public detail::SchedulerCore<PriorityScheduler> {
 public:
  using Options = SchedulerOptions;

  /// @brief A scheduler reading time from `clock`, which must outlive it. Throws
  /// Error(InvalidArgument) for options out of range.
  explicit PriorityScheduler(const Clock& clock, SchedulerOptions options = {})
      : SchedulerCore(clock, std::move(options)),
        level_step_ns_(options_.priority_levels > 1
                           ? options_.aging_bound.count() /
                                 static_cast<std::int64_t>(options_.priority_levels - 1)
                           : 0) {}

  /// @brief The wait worth one priority level (aging_bound / (priority_levels − 1)).
  Clock::duration level_step() const noexcept { return Clock::duration(level_step_ns_); }

  /// @brief The order key of a request submitted at `submit_time` with `priority`: smaller
  /// keys run first.
  std::int64_t order_key(Clock::time_point submit_time, int priority) const noexcept {
    return detail::to_ns(submit_time) - static_cast<std::int64_t>(priority) * level_step_ns_;
  }

 private:
  friend class detail::SchedulerCore<PriorityScheduler>;

  struct Group {
    GroupKey key;
    detail::IndexedHeap members;
  };

  void check(const Request& request) const {
    if (static_cast<std::size_t>(request.priority) >= options_.priority_levels) {
      throw Error(
          ErrorCode::InvalidArgument,
          fmt::format("priority must be 0 to {} (scheduling.priority_levels = {}), got {}",
                      options_.priority_levels - 1, options_.priority_levels, request.priority),
          fmt::format("request {}", request.id));
    }
  }

  std::int64_t order_key(const Request& request) const {
    return order_key(request.submit_time, request.priority);
  }

  void link(std::uint32_t slot) {
    if (slot >= member_positions_.size()) member_positions_.resize(slot + 1, detail::kNotInHeap);
    auto& stored = store_[slot];
    auto found = group_index_.find(GroupKeyView(stored.request));
    const bool new_group = found == group_index_.end();
    std::uint32_t group;
    if (new_group) {
      if (!free_groups_.empty()) {
        group = free_groups_.back();
        free_groups_.pop_back();
      } else {
        group = static_cast<std::uint32_t>(groups_.size());
        groups_.emplace_back();
        group_positions_.push_back(detail::kNotInHeap);
      }
      groups_[group].key = batch::group_key(stored.request);
      group_index_.emplace(groups_[group].key, group);
    } else {
      group = found->second;
    }
    stored.group = group;
    const detail::HeapEntry entry{stored.key, stored.seq, slot};
    Group& g = groups_[group];
    g.members.push(entry, member_positions_);
    if (new_group) {
      group_heap_.push({entry.key, entry.seq, group}, group_positions_);
    } else if (member_positions_[slot] == 0) {
      group_heap_.replace(group_positions_[group], {entry.key, entry.seq, group}, group_positions_);
    }
  }

  void unlink(std::uint32_t slot) {
    const std::uint32_t group = store_[slot].group;
    Group& g = groups_[group];
    const std::uint32_t position = member_positions_[slot];
    g.members.erase(position, member_positions_);
    if (g.members.empty()) {
      group_heap_.erase(group_positions_[group], group_positions_);
      group_index_.erase(g.key);
      free_groups_.push_back(group);
    } else if (position == 0) {
      const detail::HeapEntry& best = g.members.top();
      group_heap_.replace(group_positions_[group], {best.key, best.seq, group}, group_positions_);
    }
  }

  std::optional<std::uint32_t> head() const {
    if (group_heap_.empty()) return std::nullopt;
    return groups_[group_heap_.top().slot].members.top().slot;
  }

  std::size_t available(std::uint32_t head) const {
    return groups_[store_[head].group].members.size();
  }

  void take(std::uint32_t head, const BatchPlan& plan, Batch& batch) {
    const std::uint32_t group = store_[head].group;
    // unlink() frees the group with its last member; the size check stops before that read.
    std::size_t left = groups_[group].members.size();
    while (left > 0 && batch.size() < plan.max_requests) {
      const std::uint32_t slot = groups_[group].members.top().slot;
      const std::int64_t bytes = store_[slot].request.memory_estimate_bytes;
      if (batch.memory_bytes + bytes > plan.max_memory_bytes) break;
      unlink(slot);
      --left;
      batch.memory_bytes += bytes;
      batch.requests.push_back(release(slot));
    }
  }

  std::int64_t level_step_ns_;
  std::vector<Group> groups_;
  std::vector<std::uint32_t> free_groups_;
  std::unordered_map<GroupKey, std::uint32_t, batch::GroupKeyHash, batch::GroupKeyEqual>
      group_index_;
  detail::IndexedHeap group_heap_;               ///< groups by their best member's key
  std::vector<std::uint32_t> group_positions_;   ///< by group
  std::vector<std::uint32_t> member_positions_;  ///< by request slot, in its group's heap
};
static_assert(Scheduler<PriorityScheduler>);

}  // namespace apo::sched

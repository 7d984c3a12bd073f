#pragma once

/// @file
/// @brief A 4-ary min-heap whose entries name slots, with each slot's position kept in an array
/// owned by the caller, so that any entry can be removed or re-keyed in O(log n). Four children
/// per node keep a sift within few cache lines; entries carry their keys so comparisons never
/// chase pointers.

#include <algorithm>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace apo::sched::detail {

/// @brief Marks a slot that is in no heap.
inline constexpr std::uint32_t kNotInHeap = std::numeric_limits<std::uint32_t>::max();

/// @brief A heap entry: ordered by (key, seq); seq is unique, so the order is total and
/// deterministic. slot names what the entry stands for (a request, a group).
struct HeapEntry {
  std::int64_t key = 0;
  std::uint64_t seq = 0;
  std::uint32_t slot = 0;

  friend bool operator<(const HeapEntry& a, const HeapEntry& b) noexcept {
    return a.key != b.key ? a.key < b.key : a.seq < b.seq;
  }
};

/// @brief The heap. `positions[slot]` is the index of the slot's entry, or kNotInHeap; several
/// heaps may share one positions array when no slot is in two of them at once.
class IndexedHeap {
 public:
  bool empty() const noexcept { return entries_.empty(); }
  std::size_t size() const noexcept { return entries_.size(); }
  const HeapEntry& top() const noexcept { return entries_.front(); }
  const HeapEntry& at(std::uint32_t position) const noexcept { return entries_[position]; }

  void push(const HeapEntry& entry, std::vector<std::uint32_t>& positions) {
    entries_.push_back(entry);
    sift_up(static_cast<std::uint32_t>(entries_.size() - 1), positions);
  }

  /// @brief Removes the entry at `position` (positions[slot] of its slot).
  void erase(std::uint32_t position, std::vector<std::uint32_t>& positions) {
    assert(position < entries_.size());
    positions[entries_[position].slot] = kNotInHeap;
    const auto last = static_cast<std::uint32_t>(entries_.size() - 1);
    if (position != last) {
      entries_[position] = entries_[last];
      entries_.pop_back();
      restore(position, positions);
    } else {
      entries_.pop_back();
    }
  }

  /// @brief Replaces the entry at `position` (same slot, new key or seq) and restores the order.
  void replace(std::uint32_t position, const HeapEntry& entry,
               std::vector<std::uint32_t>& positions) {
    entries_[position] = entry;
    restore(position, positions);
  }

  /// @brief Drops every entry; the caller resets the positions it cares about.
  void clear() noexcept { entries_.clear(); }

 private:
  static constexpr std::uint32_t kArity = 4;

  void restore(std::uint32_t position, std::vector<std::uint32_t>& positions) {
    if (position > 0 && entries_[position] < entries_[(position - 1) / kArity]) {
      sift_up(position, positions);
    } else {
      sift_down(position, positions);
    }
  }

  void sift_up(std::uint32_t position, std::vector<std::uint32_t>& positions) {
    const HeapEntry moving = entries_[position];
    while (position > 0) {
      const std::uint32_t parent = (position - 1) / kArity;
      if (!(moving < entries_[parent])) break;
      entries_[position] = entries_[parent];
      positions[entries_[position].slot] = position;
      position = parent;
    }
    entries_[position] = moving;
    positions[moving.slot] = position;
  }

  void sift_down(std::uint32_t position, std::vector<std::uint32_t>& positions) {
    const HeapEntry moving = entries_[position];
    const auto count = static_cast<std::uint32_t>(entries_.size());
    for (;;) {
      const std::uint64_t first = std::uint64_t{position} * kArity + 1;
      if (first >= count) break;
      const auto last = static_cast<std::uint32_t>(std::min<std::uint64_t>(first + kArity, count));
      auto best = static_cast<std::uint32_t>(first);
      for (auto child = best + 1; child < last; ++child) {
        if (entries_[child] < entries_[best]) best = child;
      }
      if (!(entries_[best] < moving)) break;
      entries_[position] = entries_[best];
      positions[entries_[position].slot] = position;
      position = best;
    }
    entries_[position] = moving;
    positions[moving.slot] = position;
  }

  std::vector<HeapEntry> entries_;
};

}  // namespace apo::sched::detail

#pragma once

/// @file
/// @brief A flat map from request id to slot: open addressing with linear probing, kept at most
/// half full, and deletion by backward shift (no tombstones), so lookups stay short however
/// many requests come and go. A node-based std::unordered_map costs a heap allocation per
/// request and several cache misses per erase, which at 100k queued requests was the largest
/// part of a submit and pop.

#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

namespace apo::sched::detail {

class IdIndex {
 public:
  std::size_t size() const noexcept { return size_; }

  std::optional<std::uint32_t> find(std::uint64_t id) const noexcept {
    if (entries_.empty()) return std::nullopt;
    for (std::size_t i = home(id);; i = (i + 1) & mask_) {
      const Entry& e = entries_[i];
      if (e.slot == kEmpty) return std::nullopt;
      if (e.id == id) return e.slot;
    }
  }

  /// @brief Adds `id`, which must not be present.
  void insert(std::uint64_t id, std::uint32_t slot) {
    if ((size_ + 1) * 2 > entries_.size()) grow();
    place(id, slot);
    ++size_;
  }

  /// @brief Removes `id` if present.
  void erase(std::uint64_t id) noexcept {
    if (entries_.empty()) return;
    std::size_t hole = home(id);
    for (;; hole = (hole + 1) & mask_) {
      if (entries_[hole].slot == kEmpty) return;
      if (entries_[hole].id == id) break;
    }
    // Shift back each later entry of the run that may move into the hole: one whose home is
    // not cyclically in (hole, here].
    for (std::size_t here = (hole + 1) & mask_; entries_[here].slot != kEmpty;
         here = (here + 1) & mask_) {
      const std::size_t wanted = home(entries_[here].id);
      const bool stays =
          hole <= here ? (hole < wanted && wanted <= here) : (hole < wanted || wanted <= here);
      if (stays) continue;
      entries_[hole] = entries_[here];
      hole = here;
    }
    entries_[hole].slot = kEmpty;
    --size_;
  }

 private:
  static constexpr std::uint32_t kEmpty = std::numeric_limits<std::uint32_t>::max();
  struct Entry {
    std::uint64_t id = 0;
    std::uint32_t slot = kEmpty;
  };

  std::size_t home(std::uint64_t id) const noexcept {
    // Fibonacci hashing: sequential ids spread over the table.
    return static_cast<std::size_t>((id * 0x9e3779b97f4a7c15ULL) >> shift_);
  }

  void place(std::uint64_t id, std::uint32_t slot) noexcept {
    std::size_t i = home(id);
    while (entries_[i].slot != kEmpty) i = (i + 1) & mask_;
    entries_[i] = {id, slot};
  }

  void grow() {
    std::vector<Entry> old = std::move(entries_);
    const std::size_t capacity = old.empty() ? 1024 : old.size() * 2;
    entries_.assign(capacity, Entry{});
    mask_ = capacity - 1;
    shift_ = 64;
    for (std::size_t c = capacity; c > 1; c >>= 1) --shift_;
    for (const Entry& e : old) {
      if (e.slot != kEmpty) place(e.id, e.slot);
    }
  }

  std::vector<Entry> entries_;
  std::size_t size_ = 0;
  std::size_t mask_ = 0;
  int shift_ = 64;
};

}  // namespace apo::sched::detail

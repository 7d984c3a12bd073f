#pragma once

/// @file
/// @brief ArenaPool: the guide's MemoryPool (one big reservation handed out by a bump pointer)
/// that never hands out memory still in use.

#include <atomic>
#include <cstdint>

#include "apo/memory/resource.hpp"

namespace apo::memory {

/// @brief Counters of an ArenaPool.
struct ArenaStats {
  std::int64_t capacity_bytes = 0;     ///< the one reservation
  std::int64_t offset_bytes = 0;       ///< where the next allocation starts
  std::int64_t peak_offset_bytes = 0;  ///< the highest the offset has been
  std::int64_t live_allocations = 0;
};

/// @brief Per-request scratch memory: one reservation from the upstream at construction,
/// allocation by bumping an offset, no per-block bookkeeping. Deallocating the most recent block
/// moves the offset back (so stack-like use reuses memory at once); deallocating the last live
/// block rewinds the arena to its start. Unlike the guide's pool, which reset its pointer when
/// full while tensors still pointed into it, the arena never hands out memory in use:
/// reset() with live allocations is refused. Lock-free: offset and live count share one atomic
/// word, so allocate, deallocate and reset are each a single compare-and-swap.
class ArenaPool {
 public:
  /// @brief The largest arena (1 TiB) and the most live allocations (2^24 - 1) it can track.
  static constexpr std::int64_t kMaxCapacityBytes = (std::int64_t{1} << 40) - 1;
  static constexpr std::int64_t kMaxLiveAllocations = (std::int64_t{1} << 24) - 1;

  /// @brief Reserves `capacity_bytes` (1 to kMaxCapacityBytes) from `upstream`, aligned to
  /// kMaxAlignment; the upstream's errors propagate.
  ArenaPool(AnyResource upstream, std::int64_t capacity_bytes)
      : upstream_(std::move(upstream)), capacity_bytes_(capacity_bytes) {
    if (capacity_bytes < 1 || capacity_bytes > kMaxCapacityBytes) {
      fail(ErrorCode::InvalidArgument, "ArenaPool: capacity {} bytes is outside 1 to {} bytes",
           capacity_bytes, kMaxCapacityBytes);
    }
    base_ = static_cast<char*>(upstream_.allocate(capacity_bytes_, kMaxAlignment));
  }

  ~ArenaPool() { upstream_.deallocate(base_, capacity_bytes_, kMaxAlignment); }

  ArenaPool(const ArenaPool&) = delete;
  ArenaPool& operator=(const ArenaPool&) = delete;

  /// @brief See MemoryResource. Throws OutOfMemory when the block does not fit in what is left.
  void* allocate(std::int64_t bytes, std::int64_t alignment = kDefaultAlignment) {
    check_request(bytes, alignment, "ArenaPool");
    if (bytes == 0) return nullptr;
    std::uint64_t state = state_.load(std::memory_order_relaxed);
    for (;;) {
      const std::int64_t offset = offset_of(state);
      const std::int64_t live = live_of(state);
      const std::int64_t start = align_up(offset, alignment);  // base_ is kMaxAlignment-aligned
      if (bytes > capacity_bytes_ - start) {
        fail(ErrorCode::OutOfMemory,
             "ArenaPool: {} requested with {} of {} left ({} live allocations); the arena is "
             "too small for this request",
             format_bytes(bytes), format_bytes(capacity_bytes_ - offset),
             format_bytes(capacity_bytes_), live);
      }
      if (live == kMaxLiveAllocations) {
        fail(ErrorCode::OutOfMemory, "ArenaPool: {} live allocations, the most an arena tracks",
             live);
      }
      const std::int64_t end = start + bytes;
      if (state_.compare_exchange_weak(state, pack(end, live + 1), std::memory_order_acq_rel,
                                       std::memory_order_relaxed)) {
        raise_peak(end);
        return base_ + start;
      }
    }
  }

  /// @brief See MemoryResource.
  void deallocate(void* ptr, std::int64_t bytes,
                  std::int64_t /*alignment*/ = kDefaultAlignment) noexcept {
    if (ptr == nullptr) return;
    const std::int64_t start = static_cast<char*>(ptr) - base_;
    std::uint64_t state = state_.load(std::memory_order_relaxed);
    for (;;) {
      const std::int64_t offset = offset_of(state);
      const std::int64_t live = live_of(state) - 1;
      const std::int64_t next = live == 0 ? 0 : (start + bytes == offset ? start : offset);
      if (state_.compare_exchange_weak(state, pack(next, live), std::memory_order_acq_rel,
                                       std::memory_order_relaxed)) {
        return;
      }
    }
  }

  /// @brief Host, pinned or device: the upstream's.
  MemorySpace space() const noexcept { return upstream_.space(); }

  /// @brief Ends a request's use of the arena: the next allocation starts at the beginning.
  /// Throws Rejected, and changes nothing, while allocations are live (the guide's pool reset
  /// under live tensors). Freeing the last live block rewinds on its own; reset() is the checked
  /// form for the end of a request.
  void reset() {
    std::uint64_t state = state_.load(std::memory_order_relaxed);
    for (;;) {
      if (live_of(state) != 0) {
        fail(ErrorCode::Rejected, "ArenaPool::reset: {} allocations are still live",
             live_of(state));
      }
      if (state_.compare_exchange_weak(state, pack(0, 0), std::memory_order_acq_rel,
                                       std::memory_order_relaxed)) {
        return;
      }
    }
  }

  ArenaStats stats() const noexcept {
    const std::uint64_t state = state_.load(std::memory_order_acquire);
    return {capacity_bytes_, offset_of(state), peak_offset_.load(std::memory_order_relaxed),
            live_of(state)};
  }

  const AnyResource& upstream() const noexcept { return upstream_; }

 private:
  static constexpr int kOffsetBits = 40;
  static constexpr std::uint64_t kOffsetMask = (std::uint64_t{1} << kOffsetBits) - 1;

  static std::int64_t offset_of(std::uint64_t state) noexcept {
    return static_cast<std::int64_t>(state & kOffsetMask);
  }
  static std::int64_t live_of(std::uint64_t state) noexcept {
    return static_cast<std::int64_t>(state >> kOffsetBits);
  }
  static std::uint64_t pack(std::int64_t offset, std::int64_t live) noexcept {
    return (static_cast<std::uint64_t>(live) << kOffsetBits) | static_cast<std::uint64_t>(offset);
  }

  void raise_peak(std::int64_t end) noexcept {
    std::int64_t peak = peak_offset_.load(std::memory_order_relaxed);
    while (end > peak &&
           !peak_offset_.compare_exchange_weak(peak, end, std::memory_order_relaxed)) {
    }
  }

  AnyResource upstream_;
  std::int64_t capacity_bytes_;
  char* base_ = nullptr;
  std::atomic<std::uint64_t> state_{0};
  std::atomic<std::int64_t> peak_offset_{0};
};

static_assert(MemoryResource<ArenaPool>);

}  // namespace apo::memory

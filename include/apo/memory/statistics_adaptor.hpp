#pragma once

/// @file
/// @brief StatisticsAdaptor: counts what passes through to any upstream.

#include <atomic>
#include <cstdint>

#include "apo/memory/resource.hpp"

namespace apo::memory {

/// @brief A current value, its peak and the running total.
struct Counter {
  std::int64_t current = 0;
  std::int64_t peak = 0;
  std::int64_t total = 0;
};

/// @brief What a StatisticsAdaptor has seen: bytes and allocation counts.
struct ResourceStatistics {
  Counter bytes;
  Counter allocations;
  std::int64_t failed_allocations = 0;  ///< upstream errors passed on to the caller
};

/// @brief Counts bytes and allocations (current, peak, total) and failures through it to any
/// upstream. Lock-free: relaxed atomics, so a snapshot taken while other threads allocate may
/// mix moments, but each counter is exact once they stop.
class StatisticsAdaptor {
 public:
  explicit StatisticsAdaptor(AnyResource upstream) : upstream_(std::move(upstream)) {}

  StatisticsAdaptor(StatisticsAdaptor&& other) noexcept
      : upstream_(std::move(other.upstream_)),
        bytes_(other.bytes_),
        allocations_(other.allocations_),
        failed_allocations_(other.failed_allocations_.load()) {}
  StatisticsAdaptor(const StatisticsAdaptor&) = delete;
  StatisticsAdaptor& operator=(const StatisticsAdaptor&) = delete;
  StatisticsAdaptor& operator=(StatisticsAdaptor&&) = delete;

  /// @brief See MemoryResource.
  void* allocate(std::int64_t bytes, std::int64_t alignment = kDefaultAlignment) {
    check_request(bytes, alignment, "StatisticsAdaptor");
    if (bytes == 0) return nullptr;
    void* ptr = nullptr;
    try {
      ptr = upstream_.allocate(bytes, alignment);
    } catch (...) {
      failed_allocations_.fetch_add(1, std::memory_order_relaxed);
      throw;
    }
    bytes_.add(bytes);
    allocations_.add(1);
    return ptr;
  }

  /// @brief See MemoryResource.
  void deallocate(void* ptr, std::int64_t bytes,
                  std::int64_t alignment = kDefaultAlignment) noexcept {
    if (ptr == nullptr) return;
    // Counted out before the upstream can hand the memory to another thread, so that a
    // concurrent allocation never makes the peak exceed what was really held.
    bytes_.subtract(bytes);
    allocations_.subtract(1);
    upstream_.deallocate(ptr, bytes, alignment);
  }

  /// @brief The upstream's.
  MemorySpace space() const noexcept { return upstream_.space(); }

  ResourceStatistics stats() const noexcept {
    return {bytes_.snapshot(), allocations_.snapshot(),
            failed_allocations_.load(std::memory_order_relaxed)};
  }

  const AnyResource& upstream() const noexcept { return upstream_; }

 private:
  class AtomicCounter {
   public:
    AtomicCounter() = default;
    AtomicCounter(const AtomicCounter& other) noexcept
        : current_(other.current_.load()), peak_(other.peak_.load()), total_(other.total_.load()) {}
    AtomicCounter& operator=(const AtomicCounter&) = delete;

    void add(std::int64_t amount) noexcept {
      const std::int64_t now = current_.fetch_add(amount, std::memory_order_relaxed) + amount;
      total_.fetch_add(amount, std::memory_order_relaxed);
      std::int64_t peak = peak_.load(std::memory_order_relaxed);
      while (now > peak && !peak_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
      }
    }
    void subtract(std::int64_t amount) noexcept {
      current_.fetch_sub(amount, std::memory_order_relaxed);
    }
    Counter snapshot() const noexcept {
      return {current_.load(std::memory_order_relaxed), peak_.load(std::memory_order_relaxed),
              total_.load(std::memory_order_relaxed)};
    }

   private:
    std::atomic<std::int64_t> current_{0};
    std::atomic<std::int64_t> peak_{0};
    std::atomic<std::int64_t> total_{0};
  };

  AnyResource upstream_;
  AtomicCounter bytes_;
  AtomicCounter allocations_;
  std::atomic<std::int64_t> failed_allocations_{0};
};

static_assert(MemoryResource<StatisticsAdaptor>);

}  // namespace apo::memory

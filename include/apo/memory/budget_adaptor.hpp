#pragma once

/// @file
/// @brief BudgetAdaptor: a hard cap in bytes on what passes through to an upstream.

#include <atomic>
#include <cstdint>

#include "apo/memory/resource.hpp"

namespace apo::memory {

/// @brief A hard cap on the bytes allocated through it (the guide's max_memory_usage_gb, which
/// apo::gib_to_bytes turns into bytes). A request that would pass the cap
/// throws OutOfMemory naming the request, the bytes in use and the limit, and never reaches the
/// upstream: nothing is ever allocated past the cap, even by concurrent callers (the count is
/// reserved by compare-and-swap before the upstream is asked, and given back if it fails).
/// Counts the bytes callers ask for. Under a CachingPool it caps what the pool reserves (and
/// the pool answers a refusal by releasing its cache and trying again); above a pool it caps the
/// bytes live in it.
class BudgetAdaptor {
 public:
  /// @brief Throws InvalidArgument unless `limit_bytes` is positive.
  BudgetAdaptor(AnyResource upstream, std::int64_t limit_bytes)
      : upstream_(std::move(upstream)), limit_bytes_(limit_bytes) {
    if (limit_bytes <= 0) {
      fail(ErrorCode::InvalidArgument, "BudgetAdaptor: limit {} bytes is not positive",
           limit_bytes);
    }
  }

  BudgetAdaptor(BudgetAdaptor&& other) noexcept
      : upstream_(std::move(other.upstream_)),
        limit_bytes_(other.limit_bytes_),
        used_bytes_(other.used_bytes_.load()) {}
  BudgetAdaptor(const BudgetAdaptor&) = delete;
  BudgetAdaptor& operator=(const BudgetAdaptor&) = delete;
  BudgetAdaptor& operator=(BudgetAdaptor&&) = delete;

  /// @brief See MemoryResource. Throws OutOfMemory when the request would pass the limit.
  void* allocate(std::int64_t bytes, std::int64_t alignment = kDefaultAlignment) {
    check_request(bytes, alignment, "BudgetAdaptor");
    if (bytes == 0) return nullptr;
    std::int64_t used = used_bytes_.load(std::memory_order_relaxed);
    do {
      if (bytes > limit_bytes_ - used) {
        fail(ErrorCode::OutOfMemory,
             "BudgetAdaptor: {} requested with {} in use would pass the limit of {}",
             format_bytes(bytes), format_bytes(used), format_bytes(limit_bytes_));
      }
    } while (!used_bytes_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
    try {
      return upstream_.allocate(bytes, alignment);
    } catch (...) {
      used_bytes_.fetch_sub(bytes, std::memory_order_relaxed);
      throw;
    }
  }

  /// @brief See MemoryResource.
  void deallocate(void* ptr, std::int64_t bytes,
                  std::int64_t alignment = kDefaultAlignment) noexcept {
    if (ptr == nullptr) return;
    upstream_.deallocate(ptr, bytes, alignment);
    used_bytes_.fetch_sub(bytes, std::memory_order_relaxed);
  }

  /// @brief The upstream's.
  MemorySpace space() const noexcept { return upstream_.space(); }

  std::int64_t limit_bytes() const noexcept { return limit_bytes_; }
  /// @brief Bytes allocated through the adaptor and not yet deallocated.
  std::int64_t used_bytes() const noexcept { return used_bytes_.load(std::memory_order_relaxed); }
  const AnyResource& upstream() const noexcept { return upstream_; }

 private:
  AnyResource upstream_;
  std::int64_t limit_bytes_;
  std::atomic<std::int64_t> used_bytes_{0};
};

static_assert(MemoryResource<BudgetAdaptor>);

}  // namespace apo::memory

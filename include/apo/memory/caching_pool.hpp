#pragma once

/// @file
/// @brief CachingPool: a caching allocator over any upstream, after PyTorch's CUDA caching
/// allocator: size classes for small blocks, best fit with splitting and coalescing for large
/// ones, freed memory kept for reuse until release().

#include <cstdint>
#include <memory>

#include "apo/core/units.hpp"
#include "apo/memory/resource.hpp"

namespace apo::memory {

/// @brief Tuning of a CachingPool. The defaults are PyTorch's CUDA caching allocator's.
struct CachingPoolOptions {
  /// Requests up to this size (and aligned to at most 256 bytes) are rounded up to a size class
  /// (four per power of two, so at most 25% is lost) and carved from slabs. A power of two from
  /// 1 KiB to 64 MiB.
  std::int64_t small_block_limit_bytes = 1 * MiB;
  /// The segment that one size class's blocks are carved from; a multiple of 4 KiB and at least
  /// twice small_block_limit_bytes.
  std::int64_t slab_bytes = 2 * MiB;
  /// Large requests under half this size share segments of this size, split between them; a
  /// multiple of 4 KiB.
  std::int64_t shared_segment_bytes = 20 * MiB;
  /// Larger requests get a segment of their own, rounded up to this; a power of two of at least
  /// 4 KiB.
  std::int64_t segment_granularity_bytes = 2 * MiB;
};

/// @brief Counters of a CachingPool, read together under its lock.
struct PoolStats {
  std::int64_t bytes_in_use = 0;       ///< blocks handed to callers (after rounding)
  std::int64_t bytes_requested = 0;    ///< what callers asked for, of the blocks in use
  std::int64_t bytes_reserved = 0;     ///< segments held from the upstream
  std::int64_t peak_bytes_in_use = 0;  ///< highest bytes_in_use so far
  std::int64_t peak_bytes_reserved = 0;
  std::int64_t live_allocations = 0;
  std::int64_t allocation_count = 0;           ///< allocations served since construction
  std::int64_t upstream_allocation_count = 0;  ///< segments obtained from the upstream
  std::int64_t largest_free_block_bytes = 0;   ///< the largest block the pool could hand out now

  /// @brief Reserved but not in use: the cache.
  std::int64_t bytes_cached() const noexcept { return bytes_reserved - bytes_in_use; }
  /// @brief 1 - largest free block / total free (0 with nothing free): how much of the cache is
  /// in pieces too small for the largest request it could otherwise serve.
  double fragmentation() const noexcept {
    const std::int64_t free = bytes_cached();
    if (free <= 0) return 0.0;
    return 1.0 - static_cast<double>(largest_free_block_bytes) / static_cast<double>(free);
  }
};

/// @brief A caching allocator over any upstream. Small requests (up to
/// small_block_limit_bytes, aligned to at most 256 bytes) are rounded to a size class and served
/// last-in first-out from slabs of that class. Larger or page-aligned requests are rounded to
/// whole pages and served best fit (the smallest free block that holds them) from segments: a
/// block much larger than the request is split and the rest stays free; a freed block merges with
/// free neighbours in its segment. Freed memory stays cached; release() gives wholly free
/// segments and slabs back to the upstream. When the upstream refuses (OutOfMemory, or
/// std::bad_alloc), the pool releases its cache and asks once more before it throws
/// OutOfMemory. Thread-safe under one mutex; the upstream is called under it.
///
/// Device memory: the pool reuses freed blocks at once, without events. Work queued on torch's
/// current stream is safe (a block freed after its last use there is reused by work queued
/// later on the same stream, and CudaDeviceResource orders its own allocations and frees on
/// that stream too); memory used on another stream must be synchronised with the current one
/// before it is deallocated, as with torch's caching allocator without record_stream.
/// deallocate() of a pointer the pool did not hand out is caught for large blocks (the pool
/// aborts with a message); small blocks trust the caller's size, as the contract allows.
class CachingPool {
 public:
  /// @brief Throws InvalidArgument for options outside their documented ranges.
  explicit CachingPool(AnyResource upstream, CachingPoolOptions options = {});
  /// @brief Gives every segment back to the upstream; nothing may be in use.
  ~CachingPool();

  CachingPool(const CachingPool&) = delete;
  CachingPool& operator=(const CachingPool&) = delete;

  /// @brief See MemoryResource.
  void* allocate(std::int64_t bytes, std::int64_t alignment = kDefaultAlignment);
  /// @brief See MemoryResource.
  void deallocate(void* ptr, std::int64_t bytes,
                  std::int64_t alignment = kDefaultAlignment) noexcept;
  /// @brief The upstream's.
  MemorySpace space() const noexcept;

  /// @brief Gives wholly free segments and slabs back to the upstream; returns their bytes.
  std::int64_t release();

  PoolStats stats() const;
  /// @brief Segments held from the upstream, read without the lock (for periodic checks).
  std::int64_t bytes_reserved() const noexcept;

  const AnyResource& upstream() const noexcept;
  const CachingPoolOptions& options() const noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

static_assert(MemoryResource<CachingPool>);

}  // namespace apo::memory

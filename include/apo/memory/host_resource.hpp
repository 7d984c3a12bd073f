#pragma once

/// @file
/// @brief HostResource: pageable host memory from the C++ runtime, aligned as asked.

#include <cstddef>
#include <cstdint>
#include <new>

#include "apo/memory/resource.hpp"

namespace apo::memory {

/// @brief Pageable host memory from aligned operator new. Large requests are fresh pages from
/// the kernel each time (glibc maps anything above its mmap threshold), which is what the pools
/// above it save. Stateless and thread-safe.
class HostResource {
 public:
  /// @brief See MemoryResource.
  void* allocate(std::int64_t bytes, std::int64_t alignment = kDefaultAlignment) {
    check_request(bytes, alignment, "HostResource");
    if (bytes == 0) return nullptr;
    void* ptr = ::operator new(static_cast<std::size_t>(bytes), align_val(alignment), std::nothrow);
    if (ptr == nullptr) {
      fail(ErrorCode::OutOfMemory, "HostResource: could not allocate {} (alignment {})",
           format_bytes(bytes), alignment);
    }
    return ptr;
  }

  /// @brief See MemoryResource.
  void deallocate(void* ptr, std::int64_t bytes,
                  std::int64_t alignment = kDefaultAlignment) noexcept {
    if (ptr == nullptr) return;
    ::operator delete(ptr, static_cast<std::size_t>(bytes), align_val(alignment));
  }

  /// @brief Always host memory.
  MemorySpace space() const noexcept { return MemorySpace::host(); }

 private:
  // Always the aligned form, so that allocate and deallocate agree whatever the alignment.
  static std::align_val_t align_val(std::int64_t alignment) noexcept {
    return std::align_val_t{static_cast<std::size_t>(
        alignment < std::int64_t{alignof(std::max_align_t)} ? alignof(std::max_align_t)
                                                            : alignment)};
  }
};

static_assert(MemoryResource<HostResource>);

}  // namespace apo::memory

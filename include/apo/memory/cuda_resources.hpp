#pragma once

/// @file
/// @brief CUDA upstreams: page-locked host memory and device memory (stream-ordered where the
/// device supports it). Both need apo built with CUDA and a CUDA device at run time; otherwise
/// their constructors throw apo::Error(Unsupported). This header does not include CUDA's.

#include <cstdint>
#include <memory>

#include "apo/memory/resource.hpp"

namespace apo::memory {

/// @brief Whether apo was built with CUDA and the runtime sees at least one device. Never throws.
bool cuda_device_available() noexcept;

/// @brief Page-locked ("pinned") host memory from cudaHostAlloc, portable across devices, so
/// that copies to and from any device can run asynchronously. Page-aligned, so every alignment
/// up to kMaxAlignment holds. Pinning is slow (it maps and locks pages): put a CachingPool above
/// it. Thread-safe.
class PinnedHostResource {
 public:
  /// @brief Throws Unsupported when apo was built without CUDA or no CUDA device is present.
  PinnedHostResource();

  /// @brief See MemoryResource.
  void* allocate(std::int64_t bytes, std::int64_t alignment = kDefaultAlignment);
  /// @brief See MemoryResource.
  void deallocate(void* ptr, std::int64_t bytes,
                  std::int64_t alignment = kDefaultAlignment) noexcept;
  /// @brief Always pinned host memory.
  MemorySpace space() const noexcept { return MemorySpace::pinned_host(); }
};

static_assert(MemoryResource<PinnedHostResource>);

/// @brief Options of a CudaDeviceResource.
struct CudaDeviceOptions {
  int device = 0;  ///< the CUDA device index
  /// The cudaStream_t that allocations are ordered on; nullptr is the legacy default stream.
  void* stream = nullptr;
  /// Use cudaMallocAsync/cudaFreeAsync when the device supports memory pools.
  bool stream_ordered = true;
};

/// @brief Memory of one CUDA device. Where the device supports memory pools (and the options ask
/// for it), allocation is stream-ordered (cudaMallocAsync/cudaFreeAsync on the resource's
/// stream): memory is ready for work on that stream at once, and a deallocation takes effect
/// after the work queued before it on that stream; work on another stream must synchronise with
/// that stream first. Otherwise cudaMalloc/cudaFree, which synchronise the device. Alignments
/// above 256 bytes (cudaMalloc's guarantee) are served by over-allocating. Thread-safe; the
/// calling thread's current device is left as it was.
class CudaDeviceResource {
 public:
  /// @brief Throws Unsupported without CUDA, InvalidArgument for a device index that does not
  /// exist.
  explicit CudaDeviceResource(CudaDeviceOptions options = {});

  /// @brief See MemoryResource.
  void* allocate(std::int64_t bytes, std::int64_t alignment = kDefaultAlignment);
  /// @brief See MemoryResource.
  void deallocate(void* ptr, std::int64_t bytes,
                  std::int64_t alignment = kDefaultAlignment) noexcept;
  /// @brief Device memory of options().device.
  MemorySpace space() const noexcept { return {MemoryKind::device, Device::cuda(options_.device)}; }

  /// @brief Whether allocations use cudaMallocAsync (the device supports memory pools).
  bool stream_ordered() const noexcept { return stream_ordered_; }
  const CudaDeviceOptions& options() const noexcept { return options_; }

 private:
  struct OverAligned;  // aligned pointer -> cudaMalloc'd pointer, for alignments above 256

  void release(void* raw) const noexcept;  // cudaFree or cudaFreeAsync; the device is current

  CudaDeviceOptions options_;
  bool stream_ordered_ = false;
  std::shared_ptr<OverAligned> over_aligned_;
};

static_assert(MemoryResource<CudaDeviceResource>);

/// @brief Copies `bytes` between two device pointers or a device and a host pointer
/// (cudaMemcpy with cudaMemcpyDefault). Throws Unsupported without CUDA.
void cuda_copy(void* destination, const void* source, std::int64_t bytes);

}  // namespace apo::memory

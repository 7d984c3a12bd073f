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

/// @brief Options of a PinnedHostResource.
struct PinnedHostOptions {
  /// Freed blocks up to this many bytes in all are kept for reuse instead of being given back:
  /// cudaFreeHost synchronises the whole device, so freeing on every deallocate would stall
  /// every stream. 0 frees at once.
  std::int64_t max_cached_bytes = 256 * MiB;
};

/// @brief Page-locked ("pinned") host memory from cudaHostAlloc, portable across devices, so
/// that copies to and from any device can run asynchronously. Page-aligned, so every alignment
/// up to kMaxAlignment holds. Freed blocks are cached (up to max_cached_bytes) and reused for
/// requests they fit without wasting more than half of themselves; release() gives the cache
/// back. A freed block may still be read or written by an asynchronous copy: deallocate records
/// an event on torch's current stream of the current device (where torch queues its copies), and
/// a cached block is handed out again only after that event; copies on other streams or devices
/// must be waited for before deallocating. Pinning is slow (it maps and locks pages): for many
/// sizes, put a CachingPool above it. Thread-safe.
class PinnedHostResource {
 public:
  /// @brief Throws Unsupported when apo was built without CUDA or no CUDA device is present;
  /// InvalidArgument for a negative max_cached_bytes.
  explicit PinnedHostResource(PinnedHostOptions options = {});

  /// @brief See MemoryResource.
  void* allocate(std::int64_t bytes, std::int64_t alignment = kDefaultAlignment);
  /// @brief See MemoryResource.
  void deallocate(void* ptr, std::int64_t bytes,
                  std::int64_t alignment = kDefaultAlignment) noexcept;
  /// @brief Always pinned host memory.
  MemorySpace space() const noexcept { return MemorySpace::pinned_host(); }

  /// @brief Frees the cached blocks (cudaFreeHost, once per block); returns their bytes.
  std::int64_t release();
  /// @brief Bytes of freed blocks kept for reuse.
  std::int64_t cached_bytes() const noexcept;

 private:
  struct Cache;  // shared by copies, so that a moved resource keeps its cache
  std::shared_ptr<Cache> cache_;
};

static_assert(MemoryResource<PinnedHostResource>);

/// @brief Options of a CudaDeviceResource.
struct CudaDeviceOptions {
  int device = 0;  ///< the CUDA device index
  /// The cudaStream_t that allocations and frees are ordered on; nullptr: torch's current stream
  /// of the device at each call, the stream the caller's work is queued on.
  void* stream = nullptr;
  /// Use cudaMallocAsync/cudaFreeAsync when the device supports memory pools.
  bool stream_ordered = true;
};

/// @brief Memory of one CUDA device. Where the device supports memory pools (and the options ask
/// for it), allocation is stream-ordered (cudaMallocAsync/cudaFreeAsync on the options' stream,
/// by default torch's current stream at the time of the call): memory is ready for work on that
/// stream at once, and a deallocation takes effect after the work queued before it on that
/// stream. So work on torch's current stream is safe as it is; memory used on another stream
/// must be synchronised with the deallocating thread's current stream first. Otherwise
/// cudaMalloc/cudaFree, which synchronise the device. Alignments above 256 bytes (cudaMalloc's
/// guarantee) are served by over-allocating; deallocate finds such blocks by address, whatever
/// alignment the caller passes. Thread-safe; the calling thread's current device is left as it
/// was.
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

/// @brief Copies `bytes` between two device pointers or a device and a host pointer, queued on
/// torch's current stream of the device involved (the destination's, for two devices), so that
/// it is ordered with torch's work there. Returns once the copy is queued, or, when the
/// destination is host memory, once it is done (host code reads it next). Throws Unsupported
/// without CUDA, Internal on CUDA errors.
void cuda_copy(void* destination, const void* source, std::int64_t bytes);

}  // namespace apo::memory

// PinnedHostResource and CudaDeviceResource through the CUDA runtime API. Without CUDA in the
// build every entry point reports Unsupported. Compile-checked on machines without a GPU; the
// [gpu] tests exercise it on one.

#include "apo/memory/cuda_resources.hpp"

#include "../core/cuda_context.hpp"

#if APO_WITH_CUDA
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>
#endif

namespace apo::memory {

#if APO_WITH_CUDA

namespace {

using detail::cuda_error_text;
using detail::CudaDeviceScope;

// The device count, or an Unsupported error naming why there is none.
int require_devices(std::string_view who) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the error so that later calls start clean
    fail(ErrorCode::Unsupported, "{}: no usable CUDA device: cudaGetDeviceCount: {}", who,
         cuda_error_text(status));
  }
  if (count == 0) fail(ErrorCode::Unsupported, "{}: no CUDA device", who);
  return count;
}

[[noreturn]] void fail_allocation(std::string_view who, std::int64_t bytes, cudaError_t status) {
  cudaGetLastError();  // allocation failures are not sticky; clear them for the next call
  if (status == cudaErrorMemoryAllocation) {
    fail(ErrorCode::OutOfMemory, "{}: could not allocate {}: {}", who, format_bytes(bytes),
         cuda_error_text(status));
  }
  fail(ErrorCode::Internal, "{}: allocating {} failed: {}", who, format_bytes(bytes),
       cuda_error_text(status));
}

constexpr std::int64_t kPage = 4096;

}  // namespace

bool cuda_device_available() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return count > 0;
}

// ---- pinned host memory ---------------------------------------------------------------------

// Freed blocks by size, each with the event recorded when it was freed (null when none could be
// recorded: then nothing is known to use it).
struct PinnedHostResource::Cache {
  struct Freed {
    void* ptr;
    cudaEvent_t freed;
  };
  std::int64_t max_bytes = 0;
  mutable std::mutex mutex;
  std::multimap<std::int64_t, Freed> blocks;  // by size
  std::vector<cudaEvent_t> spare_events;
  std::atomic<std::int64_t> bytes{0};

  ~Cache() {
    for (auto& [size, block] : blocks) {
      if (block.freed != nullptr) cudaEventSynchronize(block.freed);
      cudaFreeHost(block.ptr);
      if (block.freed != nullptr) cudaEventDestroy(block.freed);
    }
    for (cudaEvent_t e : spare_events) cudaEventDestroy(e);
  }

  // An event on torch's current stream of the current device, marking the work that may still
  // use a block being freed; null when none can be recorded (no current device, no context).
  cudaEvent_t record_free() noexcept {
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    cudaEvent_t event = nullptr;
    {
      std::lock_guard lock(mutex);
      if (!spare_events.empty()) {
        event = spare_events.back();
        spare_events.pop_back();
      }
    }
    if (event == nullptr &&
        cudaEventCreateWithFlags(&event, cudaEventDisableTiming) != cudaSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    const auto stream = static_cast<cudaStream_t>(detail::torch_current_cuda_stream(device));
    if (cudaEventRecord(event, stream) != cudaSuccess) {
      cudaGetLastError();
      cudaEventDestroy(event);
      return nullptr;
    }
    return event;
  }
};

PinnedHostResource::PinnedHostResource(PinnedHostOptions options)
    : cache_(std::make_shared<Cache>()) {
  require_devices("PinnedHostResource");
  if (options.max_cached_bytes < 0) {
    fail(ErrorCode::InvalidArgument, "PinnedHostResource: max_cached_bytes {} is negative",
         options.max_cached_bytes);
  }
  cache_->max_bytes = options.max_cached_bytes;
}

void* PinnedHostResource::allocate(std::int64_t bytes, std::int64_t alignment) {
  check_request(bytes, alignment, "PinnedHostResource");
  if (bytes == 0) return nullptr;
  const std::int64_t size = align_up(bytes, kPage);
  {
    std::unique_lock lock(cache_->mutex);
    // The smallest cached block that holds the request without wasting more than half of it.
    const auto fit = cache_->blocks.lower_bound(size);
    if (fit != cache_->blocks.end() && fit->first <= 2 * size) {
      const Cache::Freed block = fit->second;
      const std::int64_t block_size = fit->first;
      cache_->blocks.erase(fit);
      cache_->bytes.fetch_sub(block_size, std::memory_order_relaxed);
      lock.unlock();
      if (block.freed != nullptr) {
        // The copies queued before the block was freed must be done before it is reused.
        const cudaError_t waited = cudaEventSynchronize(block.freed);
        std::lock_guard relock(cache_->mutex);
        cache_->spare_events.push_back(block.freed);
        if (waited != cudaSuccess) {
          cudaGetLastError();
          cudaFreeHost(block.ptr);
          fail(ErrorCode::Internal,
               "PinnedHostResource: waiting for the work on a freed block failed: {}",
               cuda_error_text(waited));
        }
      }
      return block.ptr;
    }
  }
  void* ptr = nullptr;
  // Page-aligned, which covers kMaxAlignment.
  const cudaError_t status =
      cudaHostAlloc(&ptr, static_cast<std::size_t>(size), cudaHostAllocPortable);
  if (status == cudaErrorMemoryAllocation && release() > 0) {
    cudaGetLastError();
    if (cudaHostAlloc(&ptr, static_cast<std::size_t>(size), cudaHostAllocPortable) == cudaSuccess) {
      return ptr;
    }
  }
  if (status != cudaSuccess) fail_allocation("PinnedHostResource", bytes, status);
  return ptr;
}

void PinnedHostResource::deallocate(void* ptr, std::int64_t bytes, std::int64_t) noexcept {
  if (ptr == nullptr) return;
  const std::int64_t size = align_up(bytes, kPage);
  if (cache_->bytes.load(std::memory_order_relaxed) + size <= cache_->max_bytes) {
    const cudaEvent_t freed = cache_->record_free();
    try {
      std::lock_guard lock(cache_->mutex);
      cache_->blocks.emplace(size, Cache::Freed{ptr, freed});
      cache_->bytes.fetch_add(size, std::memory_order_relaxed);
      return;
    } catch (...) {
      // No room to remember it: free it below (cudaFreeHost waits for the device).
      if (freed != nullptr) cudaEventDestroy(freed);
    }
  }
  cudaFreeHost(ptr);
}

std::int64_t PinnedHostResource::release() {
  std::multimap<std::int64_t, Cache::Freed> blocks;
  {
    std::lock_guard lock(cache_->mutex);
    blocks.swap(cache_->blocks);
    cache_->bytes.store(0, std::memory_order_relaxed);
  }
  std::int64_t released = 0;
  for (auto& [size, block] : blocks) {
    // cudaFreeHost waits for the device anyway; the blocks go back to back, so only the first
    // wait finds work to wait for.
    cudaFreeHost(block.ptr);
    if (block.freed != nullptr) cudaEventDestroy(block.freed);
    released += size;
  }
  return released;
}

std::int64_t PinnedHostResource::cached_bytes() const noexcept {
  return cache_->bytes.load(std::memory_order_relaxed);
}

// ---- device memory ----------------------------------------------------------------------------

struct CudaDeviceResource::OverAligned {
  std::mutex mutex;
  std::unordered_map<void*, void*> raw_of;
  std::atomic<std::int64_t> count{0};  // lets deallocate skip the lock when there are none
};

namespace {
constexpr std::int64_t kCudaMallocAlignment = 256;
}

CudaDeviceResource::CudaDeviceResource(CudaDeviceOptions options)
    : options_(options), over_aligned_(std::make_shared<OverAligned>()) {
  const int count = require_devices("CudaDeviceResource");
  if (options_.device < 0 || options_.device >= count) {
    fail(ErrorCode::InvalidArgument, "CudaDeviceResource: device {} does not exist ({} devices)",
         options_.device, count);
  }
  int pools_supported = 0;
  if (cudaDeviceGetAttribute(&pools_supported, cudaDevAttrMemoryPoolsSupported, options_.device) !=
      cudaSuccess) {
    cudaGetLastError();
    pools_supported = 0;
  }
  stream_ordered_ = options_.stream_ordered && pools_supported != 0;
}

namespace {

// The stream a resource orders its work on now: its own, or torch's current one.
cudaStream_t stream_for(const CudaDeviceOptions& options) noexcept {
  return static_cast<cudaStream_t>(options.stream != nullptr
                                       ? options.stream
                                       : detail::torch_current_cuda_stream(options.device));
}

}  // namespace

void* CudaDeviceResource::allocate(std::int64_t bytes, std::int64_t alignment) {
  check_request(bytes, alignment, "CudaDeviceResource");
  if (bytes == 0) return nullptr;
  const bool over_aligned = alignment > kCudaMallocAlignment;
  const std::int64_t raw_bytes = over_aligned ? bytes + alignment - kCudaMallocAlignment : bytes;
  const CudaDeviceScope scope(options_.device, "CudaDeviceResource");
  void* raw = nullptr;
  const cudaError_t status =
      stream_ordered_
          ? cudaMallocAsync(&raw, static_cast<std::size_t>(raw_bytes), stream_for(options_))
          : cudaMalloc(&raw, static_cast<std::size_t>(raw_bytes));
  if (status != cudaSuccess) fail_allocation("CudaDeviceResource", bytes, status);
  if (!over_aligned) return raw;
  const auto address = reinterpret_cast<std::uintptr_t>(raw);
  void* aligned = reinterpret_cast<void*>((address + static_cast<std::uintptr_t>(alignment) - 1) &
                                          ~(static_cast<std::uintptr_t>(alignment) - 1));
  try {
    std::lock_guard lock(over_aligned_->mutex);
    over_aligned_->raw_of.emplace(aligned, raw);
    over_aligned_->count.fetch_add(1, std::memory_order_relaxed);
  } catch (...) {
    release(raw);
    throw;
  }
  return aligned;
}

void CudaDeviceResource::deallocate(void* ptr, std::int64_t bytes,
                                    std::int64_t alignment) noexcept {
  if (ptr == nullptr) return;
  void* raw = ptr;
  // Over-aligned blocks are found by address: a caller's wrong alignment must not make the
  // resource free an address that cudaMalloc never returned.
  if (over_aligned_->count.load(std::memory_order_relaxed) > 0 ||
      alignment > kCudaMallocAlignment) {
    std::lock_guard lock(over_aligned_->mutex);
    const auto found = over_aligned_->raw_of.find(ptr);
    if (found != over_aligned_->raw_of.end()) {
      raw = found->second;
      over_aligned_->raw_of.erase(found);
      over_aligned_->count.fetch_sub(1, std::memory_order_relaxed);
    } else if (alignment > kCudaMallocAlignment) {
      std::fprintf(stderr,
                   "apo::memory::CudaDeviceResource::deallocate: %p (%lld bytes, alignment "
                   "%lld) was not allocated by this resource or was already deallocated\n",
                   ptr, static_cast<long long>(bytes), static_cast<long long>(alignment));
      std::abort();
    }
  }
  const CudaDeviceScope scope(options_.device, std::nothrow);
  release(raw);
}

void CudaDeviceResource::release(void* raw) const noexcept {
  const cudaError_t status =
      stream_ordered_ ? cudaFreeAsync(raw, stream_for(options_)) : cudaFree(raw);
  if (status != cudaSuccess)
    cudaGetLastError();  // deallocate cannot report; keep later calls clean
}

void cuda_copy(void* destination, const void* source, std::int64_t bytes) {
  if (bytes <= 0) return;
  cudaPointerAttributes to{};
  cudaPointerAttributes from{};
  if (cudaPointerGetAttributes(&to, destination) != cudaSuccess ||
      cudaPointerGetAttributes(&from, source) != cudaSuccess) {
    const cudaError_t status = cudaGetLastError();
    const bool no_device = status == cudaErrorNoDevice || status == cudaErrorInsufficientDriver;
    fail(no_device ? ErrorCode::Unsupported : ErrorCode::Internal,
         "cuda_copy: cannot tell where the pointers of a {} copy live: {}", format_bytes(bytes),
         cuda_error_text(status));
  }
  const bool to_device = to.type == cudaMemoryTypeDevice || to.type == cudaMemoryTypeManaged;
  const bool from_device = from.type == cudaMemoryTypeDevice || from.type == cudaMemoryTypeManaged;
  const int device = to_device ? to.device : from_device ? from.device : -1;
  if (device < 0) {
    fail(ErrorCode::InvalidArgument,
         "cuda_copy: neither pointer of a {} copy is device memory; copy host memory with "
         "memcpy",
         format_bytes(bytes));
  }
  const CudaDeviceScope scope(device, "cuda_copy");
  const auto stream = static_cast<cudaStream_t>(detail::torch_current_cuda_stream(device));
  cudaError_t status = cudaMemcpyAsync(destination, source, static_cast<std::size_t>(bytes),
                                       cudaMemcpyDefault, stream);
  if (status == cudaSuccess && !to_device) status = cudaStreamSynchronize(stream);
  if (status != cudaSuccess) {
    cudaGetLastError();
    fail(ErrorCode::Internal, "cuda_copy: copying {} on cuda:{} failed: {}", format_bytes(bytes),
         device, cuda_error_text(status));
  }
}

#else  // built without CUDA

namespace {
[[noreturn]] void fail_without_cuda(std::string_view who) {
  fail(ErrorCode::Unsupported, "{}: apo was built without CUDA", who);
}
}  // namespace

bool cuda_device_available() noexcept {
  return false;
}

struct PinnedHostResource::Cache {};

PinnedHostResource::PinnedHostResource(PinnedHostOptions) {
  fail_without_cuda("PinnedHostResource");
}
void* PinnedHostResource::allocate(std::int64_t, std::int64_t) {
  fail_without_cuda("PinnedHostResource");
}
void PinnedHostResource::deallocate(void*, std::int64_t, std::int64_t) noexcept {}
std::int64_t PinnedHostResource::release() {
  return 0;
}
std::int64_t PinnedHostResource::cached_bytes() const noexcept {
  return 0;
}

struct CudaDeviceResource::OverAligned {};

CudaDeviceResource::CudaDeviceResource(CudaDeviceOptions options) : options_(options) {
  fail_without_cuda("CudaDeviceResource");
}
void* CudaDeviceResource::allocate(std::int64_t, std::int64_t) {
  fail_without_cuda("CudaDeviceResource");
}
void CudaDeviceResource::deallocate(void*, std::int64_t, std::int64_t) noexcept {}

void cuda_copy(void*, const void*, std::int64_t) {
  fail_without_cuda("cuda_copy");
}

#endif

}  // namespace apo::memory

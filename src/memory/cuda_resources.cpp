// PinnedHostResource and CudaDeviceResource through the CUDA runtime API. Without CUDA in the
// build every entry point reports Unsupported. Compile-checked on machines without a GPU; the
// [gpu] tests exercise it on one.

#include "apo/memory/cuda_resources.hpp"

#if APO_WITH_CUDA
#include <cuda_runtime_api.h>

#include <mutex>
#include <string>
#include <unordered_map>
#endif

namespace apo::memory {

#if APO_WITH_CUDA

namespace {

std::string error_text(cudaError_t error) {
  return std::string(cudaGetErrorName(error)) + " (" + cudaGetErrorString(error) + ")";
}

// The device count, or an Unsupported error naming why there is none.
int require_devices(std::string_view who) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the error so that later calls start clean
    fail(ErrorCode::Unsupported, "{}: no usable CUDA device: cudaGetDeviceCount: {}", who,
         error_text(status));
  }
  if (count == 0) fail(ErrorCode::Unsupported, "{}: no CUDA device", who);
  return count;
}

// Makes `device` current for a scope and restores the caller's device after.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    if (previous_ != device) cudaSetDevice(device);
  }
  ~DeviceScope() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = -1;
};

[[noreturn]] void fail_allocation(std::string_view who, std::int64_t bytes, cudaError_t status) {
  cudaGetLastError();  // allocation failures are not sticky; clear them for the next call
  if (status == cudaErrorMemoryAllocation) {
    fail(ErrorCode::OutOfMemory, "{}: could not allocate {}: {}", who, format_bytes(bytes),
         error_text(status));
  }
  fail(ErrorCode::Internal, "{}: allocating {} failed: {}", who, format_bytes(bytes),
       error_text(status));
}

}  // namespace

bool cuda_device_available() noexcept {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return count > 0;
}

PinnedHostResource::PinnedHostResource() {
  require_devices("PinnedHostResource");
}

void* PinnedHostResource::allocate(std::int64_t bytes, std::int64_t alignment) {
  check_request(bytes, alignment, "PinnedHostResource");
  if (bytes == 0) return nullptr;
  void* ptr = nullptr;
  // Page-aligned, which covers kMaxAlignment.
  const cudaError_t status =
      cudaHostAlloc(&ptr, static_cast<std::size_t>(bytes), cudaHostAllocPortable);
  if (status != cudaSuccess) fail_allocation("PinnedHostResource", bytes, status);
  return ptr;
}

void PinnedHostResource::deallocate(void* ptr, std::int64_t, std::int64_t) noexcept {
  if (ptr != nullptr) cudaFreeHost(ptr);
}

struct CudaDeviceResource::OverAligned {
  std::mutex mutex;
  std::unordered_map<void*, void*> raw_of;
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

void* CudaDeviceResource::allocate(std::int64_t bytes, std::int64_t alignment) {
  check_request(bytes, alignment, "CudaDeviceResource");
  if (bytes == 0) return nullptr;
  const bool over_aligned = alignment > kCudaMallocAlignment;
  const std::int64_t raw_bytes = over_aligned ? bytes + alignment - kCudaMallocAlignment : bytes;
  DeviceScope scope(options_.device);
  void* raw = nullptr;
  const cudaError_t status = stream_ordered_
                                 ? cudaMallocAsync(&raw, static_cast<std::size_t>(raw_bytes),
                                                   static_cast<cudaStream_t>(options_.stream))
                                 : cudaMalloc(&raw, static_cast<std::size_t>(raw_bytes));
  if (status != cudaSuccess) fail_allocation("CudaDeviceResource", bytes, status);
  if (!over_aligned) return raw;
  const auto address = reinterpret_cast<std::uintptr_t>(raw);
  void* aligned = reinterpret_cast<void*>((address + static_cast<std::uintptr_t>(alignment) - 1) &
                                          ~(static_cast<std::uintptr_t>(alignment) - 1));
  try {
    std::lock_guard lock(over_aligned_->mutex);
    over_aligned_->raw_of.emplace(aligned, raw);
  } catch (...) {
    release(raw);
    throw;
  }
  return aligned;
}

void CudaDeviceResource::deallocate(void* ptr, std::int64_t, std::int64_t alignment) noexcept {
  if (ptr == nullptr) return;
  void* raw = ptr;
  if (alignment > kCudaMallocAlignment) {
    std::lock_guard lock(over_aligned_->mutex);
    const auto found = over_aligned_->raw_of.find(ptr);
    if (found == over_aligned_->raw_of.end()) return;  // not ours: the contract's undefined case
    raw = found->second;
    over_aligned_->raw_of.erase(found);
  }
  DeviceScope scope(options_.device);
  release(raw);
}

void CudaDeviceResource::release(void* raw) const noexcept {
  if (stream_ordered_) {
    cudaFreeAsync(raw, static_cast<cudaStream_t>(options_.stream));
  } else {
    cudaFree(raw);
  }
}

void cuda_copy(void* destination, const void* source, std::int64_t bytes) {
  if (bytes <= 0) return;
  const cudaError_t status =
      cudaMemcpy(destination, source, static_cast<std::size_t>(bytes), cudaMemcpyDefault);
  if (status != cudaSuccess) {
    cudaGetLastError();
    const bool no_device = status == cudaErrorNoDevice || status == cudaErrorInsufficientDriver;
    fail(no_device ? ErrorCode::Unsupported : ErrorCode::Internal,
         "cuda_copy: copying {} failed: {}", format_bytes(bytes), error_text(status));
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

PinnedHostResource::PinnedHostResource() {
  fail_without_cuda("PinnedHostResource");
}
void* PinnedHostResource::allocate(std::int64_t, std::int64_t) {
  fail_without_cuda("PinnedHostResource");
}
void PinnedHostResource::deallocate(void*, std::int64_t, std::int64_t) noexcept {}

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

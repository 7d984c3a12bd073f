#pragma once

/// @file
/// @brief libtorch meets apo's resources: tensors whose storage comes from a pool and returns to
/// it when the last reference dies, a c10::Allocator over any resource, a scope in which the
/// calling thread's torch CPU allocations come from a pool, and a cleanup hook for torch's
/// device cache. The only memory header that includes torch's.

#include <cstddef>
#include <cstdint>
#include <optional>

#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>

#include "apo/core/device.hpp"
#include "apo/memory/memory_manager.hpp"
#include "apo/memory/resource.hpp"

namespace apo::memory {

/// @brief A c10::Allocator over any resource. Each DataPtr holds a share of the resource and
/// returns its block to it when the DataPtr dies, on whichever thread that happens, so a tensor
/// or view may outlive both this allocator and every other handle to the resource. Device
/// memory yields CUDA DataPtrs on the resource's device; host and pinned memory yield CPU ones.
class PoolAllocator final : public c10::Allocator {
 public:
  /// @brief Throws InvalidArgument for an alignment the resource contract does not allow.
  explicit PoolAllocator(AnyResource resource, std::int64_t alignment = kDefaultAlignment);

  /// @brief A block of `bytes` from the resource (its errors, OutOfMemory included, propagate).
  c10::DataPtr allocate(std::size_t bytes) override;
  /// @brief memcpy for host memory, cudaMemcpy for device memory.
  void copy_data(void* destination, const void* source, std::size_t bytes) const override;

  const AnyResource& resource() const noexcept { return resource_; }
  c10::Device device() const noexcept { return device_; }

 private:
  AnyResource resource_;
  std::int64_t alignment_;
  c10::Device device_;
};

/// @brief A contiguous tensor of `sizes` and `dtype` whose storage comes from `resource`, on the
/// resource's device. Its storage cannot grow (resize_ past its size raises torch's error), since
/// growing would move it out of the pool.
at::Tensor empty_from(const AnyResource& resource, at::IntArrayRef sizes, at::ScalarType dtype);

/// @brief While it lives, torch's CPU allocations on the calling thread come from `resource`
/// (a host or pinned resource); other threads are untouched. Scopes nest (the innermost serves)
/// and must end on the thread and in the order they began; tensors made inside may outlive the
/// scope. The first scope installs, once per process, an allocator that forwards to the scope or,
/// outside any scope, to the CPU allocator that was installed before it. Inside a scope, torch's
/// raw_allocate() on the CPU allocator raises a c10::Error (pooled blocks carry a context), which
/// only a few legacy torch paths use. Throws InvalidArgument for device memory.
class CpuAllocationScope {
 public:
  explicit CpuAllocationScope(AnyResource resource);
  ~CpuAllocationScope();

  CpuAllocationScope(const CpuAllocationScope&) = delete;
  CpuAllocationScope& operator=(const CpuAllocationScope&) = delete;

 private:
  PoolAllocator allocator_;
  PoolAllocator* previous_;
};

/// @brief Bytes torch's caching allocator holds (reserves) on a CUDA device: what apo's ledger
/// reconciles with. nullopt for the CPU, without an accelerator, or with libtorch before 2.9.
std::optional<std::int64_t> torch_reserved_bytes(Device device);

/// @brief Empties torch's device caching allocator (the guide's torch.cuda.empty_cache()) and
/// returns the bytes it gave back; 0 where torch has no accelerator (or is older than 2.9).
std::int64_t release_torch_device_cache();

/// @brief A hook for MemoryManager that runs release_torch_device_cache() in aggressive and
/// requested passes.
CleanupHook torch_device_cache_hook();

}  // namespace apo::memory

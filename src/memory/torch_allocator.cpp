// The torch side of apo::memory: pooled DataPtrs, pooled tensors, the CPU allocation scope and
// the device-cache hook. The one translation unit of the area that includes libtorch.

#include "apo/memory/torch_allocator.hpp"

#include <atomic>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <unordered_map>

#include <ATen/DeviceAccelerator.h>
#include <c10/core/Storage.h>
#include <c10/core/TensorImpl.h>
#include <c10/core/TensorOptions.h>
#include <fmt/ranges.h>
#include <torch/version.h>

#include "apo/memory/cuda_resources.hpp"

namespace apo::memory {

namespace {

c10::Device device_of(const MemorySpace& space) {
  // Pinned host memory is CPU memory to torch.
  return space.kind == MemoryKind::device ? space.device.to_torch() : c10::Device(c10::kCPU);
}

// A pooled block's owner: a share of the resource, so that it outlives the block.
struct PooledBlock {
  AnyResource resource;
  std::int64_t bytes;
  std::int64_t alignment;
};

// Pooled blocks by address. A pooled DataPtr's context is its data pointer, as torch requires of
// a "simple" DataPtr: Allocator::raw_allocate asserts it, and raw_deallocate frees through
// raw_deleter() with the pointer alone, so the owner is looked up here. Never destroyed: storages
// may be freed during exit.
struct PooledBlocks {
  std::mutex mutex;
  std::unordered_map<void*, PooledBlock> blocks;
};

PooledBlocks& pooled_blocks() {
  static auto* const blocks = new PooledBlocks;
  return *blocks;
}

// What freed a pointer that was not pooled: the raw deleter of the allocator apo's CPU
// allocator replaced.
std::atomic<c10::DeleterFnPtr> fallback_raw_deleter{nullptr};

// Pooled blocks alive: while there are none, freeing skips the table.
std::atomic<std::int64_t> pooled_count{0};

void return_block(void* ptr) {
  std::optional<PooledBlock> block;
  if (pooled_count.load(std::memory_order_acquire) > 0) {
    PooledBlocks& pooled = pooled_blocks();
    const std::lock_guard lock(pooled.mutex);
    const auto it = pooled.blocks.find(ptr);
    if (it != pooled.blocks.end()) {
      block = std::move(it->second);
      pooled.blocks.erase(it);
      pooled_count.fetch_sub(1, std::memory_order_release);
    }
  }
  if (block) {
    block->resource.deallocate(ptr, block->bytes, block->alignment);
  } else if (const c10::DeleterFnPtr fallback = fallback_raw_deleter.load()) {
    fallback(ptr);
  }
}

// Installed once as torch's CPU allocator: serves the calling thread's innermost scope, or
// forwards to the allocator it replaced. Never destroyed: torch keeps raw pointers to it in
// every storage it allocated.
class ScopedCpuAllocator final : public c10::Allocator {
 public:
  explicit ScopedCpuAllocator(c10::Allocator* fallback) : fallback_(fallback) {}

  c10::DataPtr allocate(std::size_t bytes) override {
    if (PoolAllocator* scope = current) return scope->allocate(bytes);
    c10::DataPtr data = fallback_->allocate(bytes);
    // Every simple DataPtr carries raw_deleter(), as torch's Allocator contract says.
    if (data.get() != nullptr && data.get() == data.get_context() &&
        data.get_deleter() == fallback_raw_deleter.load()) {
      const c10::Device device = data.device();
      void* ptr = data.release_context();
      return c10::DataPtr(ptr, ptr, &return_block, device);
    }
    return data;
  }
  void copy_data(void* destination, const void* source, std::size_t bytes) const override {
    if (bytes != 0) std::memcpy(destination, source, bytes);
  }
  // Frees pooled pointers into their pool and every other one through the fallback's.
  c10::DeleterFnPtr raw_deleter() const override {
    return fallback_->raw_deleter() != nullptr ? &return_block : nullptr;
  }

  static inline thread_local PoolAllocator* current = nullptr;  // the innermost scope's

 private:
  c10::Allocator* fallback_;
};

void install_scoped_cpu_allocator() {
  static ScopedCpuAllocator* const installed = [] {
    c10::Allocator* fallback = c10::GetAllocator(c10::DeviceType::CPU);
    fallback_raw_deleter.store(fallback->raw_deleter());
    auto* allocator = new ScopedCpuAllocator(fallback);
    c10::SetAllocator(c10::DeviceType::CPU, allocator, std::numeric_limits<std::uint8_t>::max());
    return allocator;
  }();
  if (c10::GetAllocator(c10::DeviceType::CPU) != installed) {
    fail(ErrorCode::Unsupported,
         "CpuAllocationScope: another CPU allocator replaced apo's, so torch's CPU allocations "
         "cannot be routed to a pool");
  }
}

}  // namespace

PoolAllocator::PoolAllocator(AnyResource resource, std::int64_t alignment)
    : resource_(std::move(resource)), alignment_(alignment), device_(device_of(resource_.space())) {
  check_request(0, alignment, "PoolAllocator");
}

c10::DataPtr PoolAllocator::allocate(std::size_t bytes) {
  if (bytes > static_cast<std::size_t>(kMaxAllocationBytes)) {
    check_request(kMaxAllocationBytes + 1, alignment_, "PoolAllocator");  // throws OutOfMemory
  }
  const auto size = static_cast<std::int64_t>(bytes);
  void* ptr = resource_.allocate(size, alignment_);
  if (ptr == nullptr) return c10::DataPtr(nullptr, device_);
  try {
    PooledBlocks& pooled = pooled_blocks();
    const std::lock_guard lock(pooled.mutex);
    pooled.blocks.emplace(ptr, PooledBlock{resource_, size, alignment_});
    pooled_count.fetch_add(1, std::memory_order_release);
  } catch (...) {
    resource_.deallocate(ptr, size, alignment_);
    throw;
  }
  return c10::DataPtr(ptr, ptr, &return_block, device_);
}

void PoolAllocator::copy_data(void* destination, const void* source, std::size_t bytes) const {
  if (bytes == 0) return;
  if (device_.is_cuda()) {
    cuda_copy(destination, source, static_cast<std::int64_t>(bytes));
  } else {
    std::memcpy(destination, source, bytes);
  }
}

at::Tensor empty_from(const AnyResource& resource, at::IntArrayRef sizes, at::ScalarType dtype) {
  std::int64_t elements = 1;
  for (const std::int64_t size : sizes) {
    if (size < 0) {
      fail(ErrorCode::InvalidArgument, "empty_from: negative dimension {} in sizes {}", size,
           fmt::join(sizes.begin(), sizes.end(), "x"));
    }
    if (size != 0 && elements > kMaxAllocationBytes / size) {
      fail(ErrorCode::OutOfMemory, "empty_from: sizes {} hold more elements than any resource",
           fmt::join(sizes.begin(), sizes.end(), "x"));
    }
    elements *= size;
  }
  const auto element_bytes = static_cast<std::int64_t>(c10::elementSize(dtype));
  if (elements > kMaxAllocationBytes / element_bytes) {
    fail(ErrorCode::OutOfMemory, "empty_from: sizes {} of {} exceed any resource",
         fmt::join(sizes.begin(), sizes.end(), "x"), c10::toString(dtype));
  }
  const std::int64_t bytes = elements * element_bytes;

  PoolAllocator allocator(resource);
  c10::Storage storage(c10::Storage::use_byte_size_t{}, bytes,
                       allocator.allocate(static_cast<std::size_t>(bytes)),
                       /*allocator=*/nullptr, /*resizable=*/false);
  const c10::DispatchKeySet keys(c10::computeDispatchKey(dtype, c10::kStrided, allocator.device()));
  at::Tensor tensor = at::detail::make_tensor<c10::TensorImpl>(
      std::move(storage), keys, caffe2::TypeMeta::fromScalarType(dtype));
  tensor.unsafeGetTensorImpl()->set_sizes_contiguous(sizes);
  return tensor;
}

CpuAllocationScope::CpuAllocationScope(AnyResource resource)
    : allocator_(std::move(resource)), previous_(ScopedCpuAllocator::current) {
  if (!allocator_.device().is_cpu()) {
    fail(ErrorCode::InvalidArgument,
         "CpuAllocationScope: the resource holds {} memory; torch's CPU allocations need host "
         "memory",
         to_string(allocator_.resource().space()));
  }
  install_scoped_cpu_allocator();
  ScopedCpuAllocator::current = &allocator_;
}

CpuAllocationScope::~CpuAllocationScope() {
  ScopedCpuAllocator::current = previous_;
}

#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
#define APO_TORCH_DEVICE_STATS 1
#else
#define APO_TORCH_DEVICE_STATS 0
#endif

std::optional<std::int64_t> torch_reserved_bytes(Device device) {
#if APO_TORCH_DEVICE_STATS
  if (!device.is_cuda()) return std::nullopt;
  const auto accelerator = at::accelerator::getAccelerator(/*checked=*/false);
  if (!accelerator || *accelerator != c10::DeviceType::CUDA ||
      device.index >= at::accelerator::deviceCount()) {
    return std::nullopt;
  }
  const auto aggregate = static_cast<std::size_t>(c10::CachingDeviceAllocator::StatType::AGGREGATE);
  return at::accelerator::getDeviceStats(static_cast<c10::DeviceIndex>(device.index))
      .reserved_bytes[aggregate]
      .current;
#else
  (void)device;
  return std::nullopt;
#endif
}

std::int64_t release_torch_device_cache() {
#if APO_TORCH_DEVICE_STATS
  const auto accelerator = at::accelerator::getAccelerator(/*checked=*/false);
  if (!accelerator) return 0;
  const auto reserved = [&] {
    std::int64_t total = 0;
    const auto aggregate =
        static_cast<std::size_t>(c10::CachingDeviceAllocator::StatType::AGGREGATE);
    for (c10::DeviceIndex i = 0; i < at::accelerator::deviceCount(); ++i) {
      total += at::accelerator::getDeviceStats(i).reserved_bytes[aggregate].current;
    }
    return total;
  };
  const std::int64_t before = reserved();
  at::accelerator::emptyCache();
  return before - reserved();
#else
  return 0;
#endif
}

CleanupHook torch_device_cache_hook() {
  return [](const CleanupContext& context) -> std::int64_t {
    if (!context.aggressive && context.reason != CleanupReason::requested) return 0;
    return release_torch_device_cache();
  };
}

}  // namespace apo::memory

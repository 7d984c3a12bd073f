// The CUDA resources where there is no device (they must say so, not crash) and, under [gpu],
// their behaviour on one. The shared contract runs on them in test_conformance.cpp.

#include <ATen/ATen.h>

#include "apo_catch.hpp"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "apo/core/error.hpp"
#include "apo/core/machine.hpp"
#include "apo/core/units.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/memory/cuda_resources.hpp"
#include "apo/memory/torch_allocator.hpp"
#include "memory_test_support.hpp"

using namespace apo::literals;
using namespace apo::memory;
using apo::ErrorCode;
using apo::memory::testing::require_error;

TEST_CASE("CUDA resources report Unsupported where no device exists", "[memory][cuda]") {
  const apo::MachineInfo machine = apo::probe_machine();
  CHECK(cuda_device_available() == (machine.cuda_built && !machine.cuda_devices.empty()));
  if (cuda_device_available()) {
    // A GPU machine: construction succeeds and the memory is where it says.
    CHECK(PinnedHostResource{}.space().kind == MemoryKind::pinned_host);
    CHECK(CudaDeviceResource{}.space() == (MemorySpace{MemoryKind::device, apo::Device::cuda(0)}));
    return;
  }
  const std::string pinned = require_error(ErrorCode::Unsupported, [] { PinnedHostResource{}; });
  CHECK_THAT(pinned, Catch::StartsWith("PinnedHostResource: "));
  const std::string device = require_error(ErrorCode::Unsupported, [] { CudaDeviceResource{}; });
  CHECK_THAT(device, Catch::StartsWith("CudaDeviceResource: "));
  require_error(ErrorCode::Unsupported, [] {
    char a = 0;
    char b = 0;
    cuda_copy(&a, &b, 1);
  });
}

TEST_CASE("CudaDeviceResource is stream-ordered where the device has memory pools",
          "[memory][cuda][gpu]") {
  REQUIRE(cuda_device_available());
  CudaDeviceResource resource;
  CHECK(resource.stream_ordered());  // every device apo targets (sm_80+) has memory pools
  CudaDeviceResource synchronous(CudaDeviceOptions{0, nullptr, false});
  CHECK_FALSE(synchronous.stream_ordered());
  require_error(ErrorCode::InvalidArgument, [] { CudaDeviceResource(CudaDeviceOptions{1000}); });

  void* a = resource.allocate(1_MiB, 4096);  // over-aligned: served by over-allocating
  CHECK(apo::memory::testing::is_aligned(a, 4096));
  void* b = synchronous.allocate(1_MiB);
  cuda_copy(b, a, 1_MiB);
  resource.deallocate(a, 1_MiB, 4096);
  synchronous.deallocate(b, 1_MiB);
}

TEST_CASE("a CachingPool over device memory caches segments", "[memory][cuda][gpu]") {
  REQUIRE(cuda_device_available());
  CachingPool pool(CudaDeviceResource{});
  void* a = pool.allocate(64_MiB);
  pool.deallocate(a, 64_MiB);
  CHECK(pool.allocate(64_MiB) == a);
  CHECK(pool.stats().upstream_allocation_count == 1);
  pool.deallocate(a, 64_MiB);
  CHECK(pool.release() == 64_MiB);
}

TEST_CASE("PinnedHostResource caches freed blocks and gives them back on release",
          "[memory][cuda][gpu]") {
  REQUIRE(cuda_device_available());
  PinnedHostResource pinned(PinnedHostOptions{.max_cached_bytes = 8_MiB});
  void* a = pinned.allocate(1_MiB);
  pinned.deallocate(a, 1_MiB);
  CHECK(pinned.cached_bytes() == 1_MiB);
  void* b = pinned.allocate(1_MiB - 100);  // the cached block fits: reused, no cudaHostAlloc
  CHECK(b == a);
  CHECK(pinned.cached_bytes() == 0);
  void* big = pinned.allocate(16_MiB);
  pinned.deallocate(big, 16_MiB);  // beyond the cap: freed at once
  CHECK(pinned.cached_bytes() == 0);
  pinned.deallocate(b, 1_MiB - 100);
  CHECK(pinned.release() == 1_MiB);
  CHECK(pinned.cached_bytes() == 0);
  require_error(ErrorCode::InvalidArgument,
                [] { PinnedHostResource(PinnedHostOptions{.max_cached_bytes = -1}); });
}

TEST_CASE("a pinned block is reused only after the copy that read it", "[memory][cuda][gpu]") {
  REQUIRE(cuda_device_available());
  REQUIRE(at::hasCUDA());
  auto pinned = std::make_shared<PinnedHostResource>();
  constexpr std::int64_t kElements = 32 * 1024 * 1024;  // 128 MiB: the copy takes milliseconds
  at::Tensor source = empty_from(AnyResource(pinned), {kElements}, at::kFloat);
  source.fill_(1.0f);
  void* const address = source.data_ptr();
  const at::Tensor copy = source.to(at::Device(at::kCUDA, 0), /*non_blocking=*/true);
  source.reset();  // freed while the copy may still read it
  at::Tensor reused = empty_from(AnyResource(pinned), {kElements}, at::kFloat);
  CHECK(reused.data_ptr() == address);
  reused.fill_(2.0f);  // must not reach the copy
  CHECK(copy.sum().item<double>() == static_cast<double>(kElements));
}

TEST_CASE("cuda_copy is ordered with torch's work on the device", "[memory][cuda][gpu]") {
  REQUIRE(cuda_device_available());
  REQUIRE(at::hasCUDA());
  const at::Tensor device = at::full({1 << 20}, 3.0f, at::TensorOptions().device(at::kCUDA));
  std::vector<float> host(1 << 20, 0.0f);
  cuda_copy(host.data(), device.data_ptr(), 4_MiB);  // waits: host code reads it next
  CHECK(std::all_of(host.begin(), host.end(), [](float v) { return v == 3.0f; }));
  at::Tensor other = at::zeros_like(device);
  cuda_copy(other.data_ptr(), device.data_ptr(), 4_MiB);
  CHECK(other.sum().item<double>() == 3.0 * (1 << 20));
  require_error(ErrorCode::InvalidArgument, [&] { cuda_copy(host.data(), host.data() + 1, 4); });
}

TEST_CASE("CudaDeviceResource finds over-aligned blocks by address", "[memory][cuda][gpu]") {
  REQUIRE(cuda_device_available());
  CudaDeviceResource resource;
  void* a = resource.allocate(1_MiB, 4096);
  // A caller passing the wrong alignment still frees cudaMalloc's pointer, not the aligned one
  // (which would be an invalid free, reported by the next CUDA call).
  resource.deallocate(a, 1_MiB, kDefaultAlignment);
  void* b = resource.allocate(1_MiB);
  void* c = resource.allocate(1_MiB);
  cuda_copy(c, b, 1_MiB);
  resource.deallocate(b, 1_MiB);
  resource.deallocate(c, 1_MiB);
}

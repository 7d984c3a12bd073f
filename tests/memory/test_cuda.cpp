// The CUDA resources where there is no device (they must say so, not crash) and, under [gpu],
// their behaviour on one. The shared contract runs on them in test_conformance.cpp.

#include "apo_catch.hpp"

#include <cstdint>
#include <memory>

#include "apo/core/error.hpp"
#include "apo/core/machine.hpp"
#include "apo/core/units.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/memory/cuda_resources.hpp"
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

// Pooled tensors: storage from a pool that returns to it when the last reference dies, on any
// thread, through views that outlive their base, and after every other handle to the pool is
// gone; the CPU allocation scope; the torch device-cache hook.

#include "apo_catch.hpp"

#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include <ATen/ATen.h>

#include "apo/core/error.hpp"
#include "apo/core/units.hpp"
#include "apo/memory/arena_pool.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/memory/cuda_resources.hpp"
#include "apo/memory/host_resource.hpp"
#include "apo/memory/statistics_adaptor.hpp"
#include "apo/memory/torch_allocator.hpp"
#include "memory_test_support.hpp"

using namespace apo::literals;
using namespace apo::memory;
using apo::ErrorCode;
using apo::memory::testing::require_error;

namespace {

bool owns(const CachingPool& pool, std::int64_t bytes) {
  return pool.stats().bytes_requested == bytes;
}

}  // namespace

TEST_CASE("pooled tensors", "[memory][tensor]") {
  SECTION("empty_from makes a tensor on the pool's memory") {
    auto pool = std::make_shared<CachingPool>(HostResource{});
    at::Tensor tensor = empty_from(AnyResource(pool), {4, 8}, at::kFloat);
    CHECK(tensor.sizes() == at::IntArrayRef({4, 8}));
    CHECK(tensor.scalar_type() == at::kFloat);
    CHECK(tensor.device().is_cpu());
    CHECK(tensor.is_contiguous());
    CHECK(owns(*pool, 4 * 8 * 4));
    CHECK(apo::memory::testing::is_aligned(tensor.data_ptr(), kDefaultAlignment));

    tensor.fill_(2.0f);
    CHECK(tensor.sum().item<float>() == 64.0f);
    at::Tensor doubled = tensor * 2;  // an ordinary torch allocation, not the pool's
    CHECK(owns(*pool, 4 * 8 * 4));

    tensor.reset();
    CHECK(owns(*pool, 0));
    CHECK(pool->stats().live_allocations == 0);
    CHECK(doubled.sum().item<float>() == 128.0f);
  }

  SECTION("a pooled tensor freed on another thread returns to its pool") {
    auto pool = std::make_shared<CachingPool>(HostResource{});
    const AnyResource resource(pool);
    std::vector<at::Tensor> tensors;
    for (int i = 0; i < 32; ++i) tensors.push_back(empty_from(resource, {256 + i}, at::kDouble));
    CHECK(pool->stats().live_allocations == 32);

    std::thread other([moved = std::move(tensors)]() mutable {
      for (at::Tensor& tensor : moved) tensor.fill_(1.0);
      moved.clear();  // the last references die here
    });
    // Meanwhile this thread keeps using the same pool.
    for (int i = 0; i < 200; ++i) {
      at::Tensor scratch = empty_from(resource, {1024}, at::kFloat);
      scratch.zero_();
    }
    other.join();
    CHECK(pool->stats().live_allocations == 0);
    CHECK(pool->stats().bytes_in_use == 0);
  }

  SECTION("a view outlives its base and keeps the block") {
    auto pool = std::make_shared<CachingPool>(HostResource{});
    at::Tensor base = empty_from(AnyResource(pool), {10, 10}, at::kFloat);
    base.copy_(at::arange(100, at::kFloat).view({10, 10}));
    at::Tensor view = base.slice(/*dim=*/0, 2, 5).t();
    base.reset();
    CHECK(pool->stats().live_allocations == 1);  // the view holds the storage
    CHECK(view.sizes() == at::IntArrayRef({10, 3}));
    CHECK(view[0][0].item<float>() == 20.0f);
    CHECK(view.sum().item<float>() == Approx((20 + 49) * 30 / 2.0));

    std::thread([v = std::move(view)]() mutable { v.reset(); }).join();
    CHECK(pool->stats().live_allocations == 0);
  }

  SECTION("a pooled tensor keeps its pool alive after every other handle is gone") {
    auto counted = std::make_shared<StatisticsAdaptor>(HostResource{});
    auto pool = std::make_shared<CachingPool>(AnyResource(counted));
    std::weak_ptr<CachingPool> watch = pool;
    at::Tensor tensor = empty_from(AnyResource(pool), {1000}, at::kFloat);
    pool.reset();
    REQUIRE_FALSE(watch.expired());
    tensor.fill_(3.0f);
    CHECK(tensor.sum().item<float>() == 3000.0f);
    tensor.reset();  // the last tensor: the pool goes, and gives its slab back
    CHECK(watch.expired());
    CHECK(counted->stats().bytes.current == 0);
  }

  SECTION("pooled tensors from an arena rewind it when they die") {
    auto arena = std::make_shared<ArenaPool>(HostResource{}, 1_MiB);
    {
      at::Tensor a = empty_from(AnyResource(arena), {1000}, at::kFloat);
      at::Tensor b = empty_from(AnyResource(arena), {1000}, at::kFloat);
      CHECK(arena->stats().live_allocations == 2);
      CHECK(b.data_ptr<float>() >= a.data_ptr<float>() + 1000);
    }
    CHECK(arena->stats().offset_bytes == 0);
  }

  SECTION("empty_from rejects bad shapes and pooled storage cannot grow") {
    const AnyResource resource(std::make_shared<CachingPool>(HostResource{}));
    require_error(ErrorCode::InvalidArgument, [&] { empty_from(resource, {2, -3}, at::kFloat); });
    require_error(ErrorCode::OutOfMemory, [&] {
      empty_from(resource, {1 << 30, 1 << 30, 1 << 30}, at::kFloat);
    });
    const at::Tensor empty = empty_from(resource, {0, 5}, at::kFloat);
    CHECK(empty.numel() == 0);

    at::Tensor tensor = empty_from(resource, {16}, at::kFloat);
    CHECK_THROWS_AS(tensor.resize_({1 << 20}), c10::Error);
    tensor.resize_({8});  // shrinking stays within the block
    CHECK(tensor.numel() == 8);
  }

  SECTION("PoolAllocator hands out DataPtrs that return to the resource") {
    auto pool = std::make_shared<CachingPool>(HostResource{});
    PoolAllocator allocator(AnyResource(pool), 64);
    CHECK(allocator.device().is_cpu());
    {
      c10::DataPtr data = allocator.allocate(1000);
      REQUIRE(data.get() != nullptr);
      CHECK(apo::memory::testing::is_aligned(data.get(), 64));
      CHECK(owns(*pool, 1000));
      c10::DataPtr copy = allocator.allocate(1000);
      std::memset(data.get(), 7, 1000);
      allocator.copy_data(copy.get(), data.get(), 1000);
      CHECK(static_cast<unsigned char*>(copy.get())[999] == 7);
    }
    CHECK(owns(*pool, 0));
    CHECK(allocator.allocate(0).get() == nullptr);
    require_error(ErrorCode::InvalidArgument, [&] { PoolAllocator(AnyResource(pool), 3); });
  }
}

TEST_CASE("CpuAllocationScope serves torch's CPU allocations on its thread", "[memory][tensor]") {
  auto pool = std::make_shared<CachingPool>(HostResource{});
  auto inner_pool = std::make_shared<CachingPool>(HostResource{});
  at::Tensor made_inside;
  {
    CpuAllocationScope scope{AnyResource(pool)};
    at::Tensor a = at::ones({64, 64});
    at::Tensor b = a * 3 + 1;
    CHECK(pool->stats().live_allocations == 2);
    CHECK(b.sum().item<float>() == 4.0f * 64 * 64);
    {
      CpuAllocationScope inner{AnyResource(inner_pool)};
      at::Tensor c = at::empty({10});
      CHECK(inner_pool->stats().live_allocations == 1);
      CHECK(pool->stats().live_allocations == 2);
    }
    // Another thread is not in the scope.
    std::thread([&] {
      at::Tensor elsewhere = at::empty({1000});
      elsewhere.zero_();
    }).join();
    CHECK(pool->stats().live_allocations == 2);
    made_inside = b;
  }
  CHECK(pool->stats().live_allocations == 1);  // b outlives the scope
  at::Tensor outside = at::empty({1000});
  CHECK(pool->stats().live_allocations == 1);
  made_inside.reset();
  CHECK(pool->stats().live_allocations == 0);
  CHECK(inner_pool->stats().live_allocations == 0);
}

TEST_CASE("torch's raw allocations work inside and across a CpuAllocationScope",
          "[memory][tensor]") {
  // Some ATen kernels take scratch through Allocator::raw_allocate, which needs a DataPtr whose
  // context is its data, and free it through raw_deleter() with the pointer alone.
  auto pool = std::make_shared<CachingPool>(HostResource{});
  void* outside = nullptr;
  c10::Allocator* allocator = nullptr;
  {
    CpuAllocationScope scope{AnyResource(pool)};
    // The first scope of the process installs apo's CPU allocator: ask for it after.
    allocator = c10::GetAllocator(c10::DeviceType::CPU);
    void* inside = allocator->raw_allocate(4096);
    REQUIRE(inside != nullptr);
    std::memset(inside, 1, 4096);
    CHECK(pool->stats().live_allocations == 1);
    allocator->raw_deallocate(inside);
    CHECK(pool->stats().live_allocations == 0);
    // Made in the scope, freed after it: still returned to its pool.
    inside = allocator->raw_allocate(256);
    CHECK(pool->stats().live_allocations == 1);
    at::Tensor tensor = at::ones({32});
    CHECK(tensor.storage().data_ptr().get() == tensor.storage().data_ptr().get_context());
    outside = inside;
  }
  allocator->raw_deallocate(outside);
  CHECK(pool->stats().live_allocations == 0);
  // Outside scopes raw allocations are the replaced allocator's, freed by it.
  void* plain = allocator->raw_allocate(1024);
  REQUIRE(plain != nullptr);
  CHECK(pool->stats().live_allocations == 0);
  allocator->raw_deallocate(plain);
}

TEST_CASE("the torch device-cache hook is harmless without an accelerator", "[memory][tensor]") {
  const CleanupHook hook = torch_device_cache_hook();
  REQUIRE(hook);
  CHECK(hook(CleanupContext{CleanupReason::periodic, false}) == 0);
  if (!at::hasCUDA()) CHECK(hook(CleanupContext{CleanupReason::requested, true}) == 0);
}

TEST_CASE("pooled tensors on a CUDA device", "[memory][tensor][gpu]") {
  REQUIRE(cuda_device_available());
  REQUIRE(at::hasCUDA());
  auto pool = std::make_shared<CachingPool>(CudaDeviceResource{});
  at::Tensor tensor = empty_from(AnyResource(pool), {1024, 1024}, at::kFloat);
  CHECK(tensor.is_cuda());
  tensor.fill_(0.5f);
  CHECK(tensor.sum().item<float>() == Approx(0.5 * 1024 * 1024));
  at::Tensor view = tensor.narrow(0, 0, 10);
  tensor.reset();
  CHECK(view.cpu().sum().item<float>() == Approx(0.5 * 10 * 1024));
  view.reset();
  CHECK(pool->stats().live_allocations == 0);
}

TEST_CASE("the torch device-cache hook empties torch's CUDA cache", "[memory][tensor][gpu]") {
  REQUIRE(at::hasCUDA());
  {
    at::Tensor cached = at::empty({64, 1024, 1024}, at::TensorOptions().device(at::kCUDA));
    cached.zero_();
  }  // freed into torch's caching allocator, which keeps it
  const CleanupHook hook = torch_device_cache_hook();
  CHECK(hook(CleanupContext{CleanupReason::periodic, false}) == 0);  // not aggressive: keeps it
  CHECK(hook(CleanupContext{CleanupReason::requested, false}) >= 64 * 1024 * 1024 * 4);
}

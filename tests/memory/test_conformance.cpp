// The MemoryResource conformance suite: every resource and adaptor passes the same checks of
// the contract in apo/memory/resource.hpp. The CUDA resources run it under [gpu].

#include "apo_catch.hpp"

#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "apo/core/error.hpp"
#include "apo/core/units.hpp"
#include "apo/memory/arena_pool.hpp"
#include "apo/memory/budget_adaptor.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/memory/cuda_resources.hpp"
#include "apo/memory/host_resource.hpp"
#include "apo/memory/resource.hpp"
#include "apo/memory/statistics_adaptor.hpp"
#include "memory_test_support.hpp"

using namespace apo::literals;
using namespace apo::memory;
using apo::ErrorCode;
using apo::memory::testing::fill_pattern;
using apo::memory::testing::has_pattern;
using apo::memory::testing::is_aligned;
using apo::memory::testing::LiveBlocks;
using apo::memory::testing::require_error;

namespace {

// Each fixture makes one resource, says whether the test may write to its memory, and names a
// request that the resource must refuse with OutOfMemory.
struct HostFixture {
  using Resource = HostResource;
  static constexpr bool host_accessible = true;
  static constexpr std::int64_t unsatisfiable_bytes = std::int64_t{1} << 50;
  static constexpr std::int64_t concurrent_max_bytes = 3_MiB;
  static std::shared_ptr<Resource> make() { return std::make_shared<HostResource>(); }
};

struct ArenaFixture {
  using Resource = ArenaPool;
  static constexpr bool host_accessible = true;
  static constexpr std::int64_t unsatisfiable_bytes = 128_MiB;
  // The arena reclaims only when every block is free: keep the concurrent test within it.
  static constexpr std::int64_t concurrent_max_bytes = 16_KiB;
  static std::shared_ptr<Resource> make() {
    return std::make_shared<ArenaPool>(HostResource{}, 96_MiB);
  }
};

struct CachingPoolFixture {
  using Resource = CachingPool;
  static constexpr bool host_accessible = true;
  static constexpr std::int64_t unsatisfiable_bytes = std::int64_t{1} << 50;
  static constexpr std::int64_t concurrent_max_bytes = 3_MiB;
  static std::shared_ptr<Resource> make() { return std::make_shared<CachingPool>(HostResource{}); }
};

struct BudgetFixture {
  using Resource = BudgetAdaptor;
  static constexpr bool host_accessible = true;
  static constexpr std::int64_t unsatisfiable_bytes = 257_MiB;
  static constexpr std::int64_t concurrent_max_bytes = 3_MiB;
  static std::shared_ptr<Resource> make() {
    return std::make_shared<BudgetAdaptor>(HostResource{}, 256_MiB);
  }
};

struct StatisticsFixture {
  using Resource = StatisticsAdaptor;
  static constexpr bool host_accessible = true;
  static constexpr std::int64_t unsatisfiable_bytes = std::int64_t{1} << 50;
  static constexpr std::int64_t concurrent_max_bytes = 3_MiB;
  static std::shared_ptr<Resource> make() {
    return std::make_shared<StatisticsAdaptor>(HostResource{});
  }
};

// The composition apo uses: a budget under a caching pool, counted, behind AnyResource.
struct ComposedFixture {
  using Resource = AnyResource;
  static constexpr bool host_accessible = true;
  static constexpr std::int64_t unsatisfiable_bytes = 600_MiB;
  static constexpr std::int64_t concurrent_max_bytes = 3_MiB;
  static std::shared_ptr<Resource> make() {
    auto budget = std::make_shared<BudgetAdaptor>(StatisticsAdaptor(HostResource{}), 512_MiB);
    return std::make_shared<AnyResource>(std::make_shared<CachingPool>(AnyResource(budget)));
  }
};

struct PinnedFixture {
  using Resource = PinnedHostResource;
  static constexpr bool host_accessible = true;
  static constexpr std::int64_t unsatisfiable_bytes = std::int64_t{1} << 50;
  static constexpr std::int64_t concurrent_max_bytes = 3_MiB;
  static std::shared_ptr<Resource> make() { return std::make_shared<PinnedHostResource>(); }
};

struct DeviceFixture {
  using Resource = CudaDeviceResource;
  static constexpr bool host_accessible = false;
  static constexpr std::int64_t unsatisfiable_bytes = std::int64_t{1} << 50;
  static constexpr std::int64_t concurrent_max_bytes = 3_MiB;
  static std::shared_ptr<Resource> make() { return std::make_shared<CudaDeviceResource>(); }
};

struct DevicePoolFixture {
  using Resource = CachingPool;
  static constexpr bool host_accessible = false;
  static constexpr std::int64_t unsatisfiable_bytes = std::int64_t{1} << 50;
  static constexpr std::int64_t concurrent_max_bytes = 3_MiB;
  static std::shared_ptr<Resource> make() {
    return std::make_shared<CachingPool>(CudaDeviceResource{});
  }
};

constexpr std::int64_t kSizes[] = {1,    7,    64,    255,       256,       257,
                                   1000, 4096, 65536, 1_MiB - 1, 1_MiB + 1, 3_MiB};
constexpr std::int64_t kAlignments[] = {1, 2, 8, 16, 64, 256, 512, 4096};

struct Block {
  void* ptr;
  std::int64_t bytes;
  std::int64_t alignment;
};

template <class Fixture, MemoryResource R>
void check_aligned_writable_disjoint(R& resource) {
  std::vector<Block> blocks;
  LiveBlocks live;
  for (const std::int64_t alignment : kAlignments) {
    for (const std::int64_t bytes : kSizes) {
      void* ptr = resource.allocate(bytes, alignment);
      REQUIRE(ptr != nullptr);
      INFO(bytes << " bytes aligned to " << alignment);
      CHECK(is_aligned(ptr, alignment));
      CHECK(live.insert(ptr, bytes));
      if constexpr (Fixture::host_accessible) fill_pattern(ptr, bytes, blocks.size());
      blocks.push_back({ptr, bytes, alignment});
    }
  }
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    if constexpr (Fixture::host_accessible) CHECK(has_pattern(blocks[i].ptr, blocks[i].bytes, i));
    resource.deallocate(blocks[i].ptr, blocks[i].bytes, blocks[i].alignment);
  }
}

template <MemoryResource R>
void check_bad_requests(R& resource) {
  for (const std::int64_t alignment :
       {std::int64_t{0}, std::int64_t{3}, std::int64_t{-8}, std::int64_t{48}, 2 * kMaxAlignment}) {
    INFO("alignment " << alignment);
    require_error(ErrorCode::InvalidArgument, [&] { resource.allocate(64, alignment); });
  }
  const std::string message =
      require_error(ErrorCode::InvalidArgument, [&] { resource.allocate(-1, 256); });
  CHECK_THAT(message, Catch::Contains("-1 bytes"));
  require_error(ErrorCode::OutOfMemory, [&] { resource.allocate(kMaxAllocationBytes + 1, 256); });
  // Still usable.
  void* ptr = resource.allocate(128, 64);
  CHECK(ptr != nullptr);
  resource.deallocate(ptr, 128, 64);
}

template <class Fixture, MemoryResource R>
void check_out_of_memory(R& resource) {
  void* kept = resource.allocate(1_KiB, 256);
  const std::string message = require_error(
      ErrorCode::OutOfMemory, [&] { resource.allocate(Fixture::unsatisfiable_bytes, 256); });
  CHECK_FALSE(message.empty());
  void* after = resource.allocate(1_KiB, 256);
  CHECK(after != nullptr);
  CHECK(after != kept);
  resource.deallocate(after, 1_KiB, 256);
  resource.deallocate(kept, 1_KiB, 256);
}

template <MemoryResource R>
void check_zero_bytes(R& resource) {
  CHECK(resource.allocate(0, 256) == nullptr);
  CHECK(resource.allocate(0, 1) == nullptr);
  resource.deallocate(nullptr, 0, 256);
}

template <class Fixture, MemoryResource R>
void check_cross_thread_free(R& resource) {
  std::vector<Block> blocks;
  for (int i = 0; i < 64; ++i) {
    const std::int64_t bytes = 512 + 1000 * i;
    blocks.push_back({resource.allocate(bytes, 64), bytes, 64});
    if constexpr (Fixture::host_accessible) fill_pattern(blocks.back().ptr, bytes, i);
  }
  std::atomic<int> intact{0};
  std::thread other([&] {
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      if constexpr (Fixture::host_accessible) {
        if (has_pattern(blocks[i].ptr, blocks[i].bytes, i)) ++intact;
      } else {
        ++intact;
      }
      resource.deallocate(blocks[i].ptr, blocks[i].bytes, blocks[i].alignment);
    }
  });
  other.join();
  CHECK(intact == 64);
  void* again = resource.allocate(4096, 256);
  CHECK(again != nullptr);
  resource.deallocate(again, 4096, 256);
}

template <class Fixture, MemoryResource R>
void check_concurrent_use(R& resource) {
  constexpr int kThreads = 4;
  constexpr int kOperations = 2000;
  struct Tagged {
    void* ptr;
    std::int64_t bytes;
    std::int64_t alignment;
    std::uint64_t tag;
  };
  std::atomic<int> corrupted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 random(t);
      std::vector<Tagged> mine;
      for (int op = 0; op < kOperations; ++op) {
        if (mine.empty() || (mine.size() < 32 && random() % 2 == 0)) {
          // Mostly small blocks, one in ten up to the fixture's largest.
          const std::int64_t limit = random() % 10 == 0 ? Fixture::concurrent_max_bytes : 16384;
          const std::int64_t bytes = 1 + static_cast<std::int64_t>(random() % limit);
          const std::int64_t alignment = std::int64_t{1} << (random() % 13);
          const std::uint64_t tag = static_cast<std::uint64_t>(t) * 1000003 + op;
          void* ptr = resource.allocate(bytes, alignment);
          if (!is_aligned(ptr, alignment)) ++corrupted;
          if constexpr (Fixture::host_accessible) fill_pattern(ptr, bytes, tag);
          mine.push_back({ptr, bytes, alignment, tag});
        } else {
          const std::size_t i = random() % mine.size();
          if constexpr (Fixture::host_accessible) {
            if (!has_pattern(mine[i].ptr, mine[i].bytes, mine[i].tag)) ++corrupted;
          }
          resource.deallocate(mine[i].ptr, mine[i].bytes, mine[i].alignment);
          mine[i] = mine.back();
          mine.pop_back();
        }
      }
      for (const Tagged& block : mine) resource.deallocate(block.ptr, block.bytes, block.alignment);
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(corrupted == 0);
}

template <class Fixture>
void run_conformance() {
  const std::shared_ptr<typename Fixture::Resource> resource = Fixture::make();
  REQUIRE(resource != nullptr);
  const MemorySpace space = resource->space();

  SECTION("blocks are aligned, writable and disjoint") {
    check_aligned_writable_disjoint<Fixture>(*resource);
  }
  SECTION("zero bytes give nullptr") {
    check_zero_bytes(*resource);
  }
  SECTION("bad requests throw InvalidArgument and change nothing") {
    check_bad_requests(*resource);
  }
  SECTION("a request that cannot be met throws OutOfMemory and changes nothing") {
    check_out_of_memory<Fixture>(*resource);
  }
  SECTION("memory may be freed on another thread") {
    check_cross_thread_free<Fixture>(*resource);
  }
  SECTION("concurrent callers get disjoint blocks") {
    check_concurrent_use<Fixture>(*resource);
  }
  CHECK(resource->space() == space);
}

}  // namespace

TEMPLATE_TEST_CASE("MemoryResource conformance", "[memory][conformance]", HostFixture, ArenaFixture,
                   CachingPoolFixture, BudgetFixture, StatisticsFixture, ComposedFixture) {
  run_conformance<TestType>();
  CHECK(TestType::make()->space() == MemorySpace::host());
}

TEMPLATE_TEST_CASE("MemoryResource conformance on CUDA", "[memory][conformance][gpu]",
                   PinnedFixture, DeviceFixture, DevicePoolFixture) {
  REQUIRE(cuda_device_available());
  run_conformance<TestType>();
}

// Behaviour of each pool and adaptor beyond the shared contract: arena bumping and rewinding,
// the caching pool's size classes, best fit, splitting, coalescing, release and statistics, the
// budget's cap, the statistics adaptor's counters and AnyResource's ownership.

#include "apo_catch.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "apo/core/error.hpp"
#include "apo/core/units.hpp"
#include "apo/memory/arena_pool.hpp"
#include "apo/memory/budget_adaptor.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/memory/host_resource.hpp"
#include "apo/memory/statistics_adaptor.hpp"
#include "memory_test_support.hpp"

using namespace apo::literals;
using namespace apo::memory;
using apo::ErrorCode;
using apo::memory::testing::require_error;

namespace {

char* as_bytes(void* ptr) {
  return static_cast<char*>(ptr);
}

}  // namespace

TEST_CASE("ArenaPool", "[memory][arena]") {
  SECTION("bumps, rolls back the newest block and rewinds when empty") {
    auto counted = std::make_shared<StatisticsAdaptor>(HostResource{});
    ArenaPool arena(AnyResource(counted), 1_MiB);
    CHECK(counted->stats().bytes.current == 1_MiB);  // one reservation, at construction

    char* a = as_bytes(arena.allocate(100, 64));
    char* b = as_bytes(arena.allocate(10, 256));
    CHECK(b == a + 256);  // 100 rounded up to the next 256-byte boundary
    CHECK(arena.stats().offset_bytes == 266);
    CHECK(arena.stats().live_allocations == 2);

    arena.deallocate(b, 10, 256);  // the newest block: the offset moves back
    CHECK(arena.stats().offset_bytes == 256);
    char* c = as_bytes(arena.allocate(16, 16));
    CHECK(c == a + 256);

    arena.deallocate(a, 100, 64);  // not the newest: the offset stays
    CHECK(arena.stats().offset_bytes == 272);
    arena.deallocate(c, 16, 16);  // the last live block: the arena rewinds
    CHECK(arena.stats().offset_bytes == 0);
    CHECK(arena.stats().peak_offset_bytes == 272);
    CHECK(arena.allocate(8, 8) == a);
    CHECK(counted->stats().allocations.total == 1);  // never went back upstream
    arena.deallocate(a, 8, 8);
  }

  SECTION("refuses what does not fit and a reset under live blocks") {
    ArenaPool arena(HostResource{}, 64_KiB);
    void* a = arena.allocate(40_KiB, 256);
    const std::string message =
        require_error(ErrorCode::OutOfMemory, [&] { arena.allocate(30_KiB, 256); });
    CHECK_THAT(message, Catch::Contains("30.00 KiB requested with 24.00 KiB of 64.00 KiB left"));
    CHECK(arena.stats().live_allocations == 1);  // the failed call changed nothing

    const std::string reset = require_error(ErrorCode::Rejected, [&] { arena.reset(); });
    CHECK_THAT(reset, Catch::Contains("1 allocations are still live"));
    CHECK(arena.stats().offset_bytes == 40_KiB);

    arena.deallocate(a, 40_KiB, 256);
    arena.reset();
    CHECK(arena.stats().offset_bytes == 0);
    void* whole = arena.allocate(64_KiB, 4096);  // the whole arena fits again
    arena.deallocate(whole, 64_KiB, 4096);
  }

  SECTION("checks its capacity and passes upstream failures on") {
    require_error(ErrorCode::InvalidArgument, [] { ArenaPool(HostResource{}, 0); });
    require_error(ErrorCode::InvalidArgument,
                  [] { ArenaPool(HostResource{}, ArenaPool::kMaxCapacityBytes + 1); });
    const std::string message = require_error(
        ErrorCode::OutOfMemory, [] { ArenaPool(BudgetAdaptor(HostResource{}, 1_MiB), 2_MiB); });
    CHECK_THAT(message, Catch::Contains("BudgetAdaptor"));
  }
}

TEST_CASE("CachingPool", "[memory][caching]") {
  SECTION("rounds small requests to size classes and reuses them") {
    auto counted = std::make_shared<StatisticsAdaptor>(HostResource{});
    CachingPool pool{AnyResource(counted)};

    void* a = pool.allocate(1000);
    CHECK(pool.stats().bytes_in_use == 1024);
    CHECK(pool.stats().bytes_requested == 1000);
    void* b = pool.allocate(1025);
    CHECK(pool.stats().bytes_in_use == 1024 + 1280);
    void* c = pool.allocate(1_MiB);  // the largest small class
    CHECK(pool.stats().bytes_in_use == 1024 + 1280 + 1_MiB);
    CHECK(pool.stats().bytes_reserved == 3 * 2_MiB);  // one slab per class
    CHECK(pool.stats().upstream_allocation_count == 3);

    pool.deallocate(a, 1000);
    CHECK(pool.allocate(900) == a);  // same class, last in first out
    pool.deallocate(a, 900);
    pool.deallocate(b, 1025);
    pool.deallocate(c, 1_MiB);

    const PoolStats stats = pool.stats();
    CHECK(stats.bytes_in_use == 0);
    CHECK(stats.bytes_requested == 0);
    CHECK(stats.live_allocations == 0);
    CHECK(stats.allocation_count == 4);
    CHECK(stats.peak_bytes_in_use == 1024 + 1280 + 1_MiB);
    CHECK(stats.bytes_cached() == 3 * 2_MiB);
    CHECK(counted->stats().allocations.current == 3);

    CHECK(pool.release() == 3 * 2_MiB);
    CHECK(pool.stats().bytes_reserved == 0);
    CHECK(counted->stats().bytes.current == 0);
  }

  SECTION("keeps a slab while any of its blocks is in use") {
    CachingPool pool(HostResource{});
    void* a = pool.allocate(4096);
    void* b = pool.allocate(4096);
    pool.deallocate(a, 4096);
    CHECK(pool.release() == 0);
    pool.deallocate(b, 4096);
    CHECK(pool.release() == 2_MiB);
  }

  SECTION("splits shared segments and coalesces freed neighbours") {
    CachingPool pool(HostResource{});  // large requests under 10 MiB share 20 MiB segments
    char* a = as_bytes(pool.allocate(3_MiB));
    char* b = as_bytes(pool.allocate(3_MiB));
    char* c = as_bytes(pool.allocate(3_MiB));
    CHECK(b == a + 3_MiB);
    CHECK(c == b + 3_MiB);
    CHECK(pool.stats().upstream_allocation_count == 1);
    CHECK(pool.stats().bytes_reserved == 20_MiB);
    CHECK(pool.stats().largest_free_block_bytes == 11_MiB);
    CHECK(pool.stats().fragmentation() == 0.0);

    pool.deallocate(b, 3_MiB);  // a hole between two live blocks
    PoolStats stats = pool.stats();
    CHECK(stats.bytes_cached() == 14_MiB);
    CHECK(stats.largest_free_block_bytes == 11_MiB);
    CHECK(stats.fragmentation() == Approx(1.0 - 11.0 / 14.0));
    CHECK(pool.release() == 0);  // the segment is in use

    CHECK(pool.allocate(2_MiB) == b);  // best fit: the 3 MiB hole, not the 11 MiB tail
    pool.deallocate(b, 2_MiB);

    pool.deallocate(a, 3_MiB);  // merges with the hole after it
    CHECK(pool.stats().largest_free_block_bytes == 11_MiB);
    pool.deallocate(c, 3_MiB);  // merges with both sides: the whole segment is free again
    stats = pool.stats();
    CHECK(stats.largest_free_block_bytes == 20_MiB);
    CHECK(stats.fragmentation() == 0.0);
    CHECK(pool.release() == 20_MiB);
    CHECK(pool.stats().bytes_reserved == 0);
  }

  SECTION("serves large requests best fit from cached segments") {
    auto counted = std::make_shared<StatisticsAdaptor>(HostResource{});
    CachingPool pool{AnyResource(counted)};
    void* twelve = pool.allocate(12_MiB);   // own segment: 12 MiB
    void* sixteen = pool.allocate(15_MiB);  // own segment: rounded to 16 MiB
    CHECK(pool.stats().bytes_reserved == 28_MiB);
    CHECK(pool.stats().bytes_in_use == 12_MiB + 15_MiB);
    pool.deallocate(sixteen, 15_MiB);
    pool.deallocate(twelve, 12_MiB);

    CHECK(pool.allocate(11_MiB) == twelve);  // the smallest free block that holds it
    CHECK(pool.allocate(11_MiB) == sixteen);
    CHECK(counted->stats().allocations.total == 2);  // no new segment
    pool.deallocate(twelve, 11_MiB);
    pool.deallocate(sixteen, 11_MiB);
  }

  SECTION("releases its cache and retries when the upstream refuses") {
    auto budget = std::make_shared<BudgetAdaptor>(HostResource{}, 24_MiB);
    CachingPool pool(AnyResource{budget});
    void* a = pool.allocate(12_MiB);
    pool.deallocate(a, 12_MiB);
    CHECK(budget->used_bytes() == 12_MiB);  // cached

    void* b = pool.allocate(16_MiB);  // 12 cached + 16 would pass 24: the cache goes first
    CHECK(budget->used_bytes() == 16_MiB);
    CHECK(pool.stats().bytes_reserved == 16_MiB);

    const std::string message =
        require_error(ErrorCode::OutOfMemory, [&] { pool.allocate(10_MiB); });
    CHECK_THAT(message, Catch::Contains("even after the cache was released"));
    CHECK_THAT(message, Catch::Contains("would pass the limit of 24.00 MiB"));
    CHECK(pool.stats().live_allocations == 1);
    pool.deallocate(b, 16_MiB);
  }

  SECTION("serves page-aligned small requests from whole pages") {
    CachingPool pool(HostResource{});
    void* a = pool.allocate(100, 4096);
    void* b = pool.allocate(100, 512);
    CHECK(apo::memory::testing::is_aligned(a, 4096));
    CHECK(apo::memory::testing::is_aligned(b, 512));
    CHECK(pool.stats().bytes_in_use == 2 * 4096);
    pool.deallocate(a, 100, 4096);
    pool.deallocate(b, 100, 512);
    CHECK(pool.release() == 20_MiB);
  }

  SECTION("rejects options outside their ranges") {
    const auto make = [](CachingPoolOptions options) { CachingPool pool(HostResource{}, options); };
    CachingPoolOptions options;
    options.small_block_limit_bytes = 3000;
    require_error(ErrorCode::InvalidArgument, [&] { make(options); });
    options = {};
    options.slab_bytes = 1_MiB;  // under twice the small limit
    require_error(ErrorCode::InvalidArgument, [&] { make(options); });
    options = {};
    options.shared_segment_bytes = 5000;
    require_error(ErrorCode::InvalidArgument, [&] { make(options); });
    options = {};
    options.segment_granularity_bytes = 3_MiB;
    require_error(ErrorCode::InvalidArgument, [&] { make(options); });
    options = {};
    options.small_block_limit_bytes = 4_KiB;
    options.slab_bytes = 64_KiB;
    options.shared_segment_bytes = 256_KiB;
    options.segment_granularity_bytes = 64_KiB;
    make(options);  // a small, valid configuration
  }
}

TEST_CASE("BudgetAdaptor", "[memory][budget]") {
  SECTION("never passes its limit and says why") {
    auto counted = std::make_shared<StatisticsAdaptor>(HostResource{});
    BudgetAdaptor budget(AnyResource(counted), 4_MiB);
    void* a = budget.allocate(3_MiB);
    CHECK(budget.used_bytes() == 3_MiB);

    const std::string message =
        require_error(ErrorCode::OutOfMemory, [&] { budget.allocate(2_MiB); });
    CHECK_THAT(message, Catch::Equals(
                            "BudgetAdaptor: 2.00 MiB requested with 3.00 MiB in use would pass the "
                            "limit of 4.00 MiB"));
    CHECK(counted->stats().allocations.total == 1);  // the refused request never went upstream
    CHECK(budget.used_bytes() == 3_MiB);

    void* b = budget.allocate(1_MiB);  // exactly up to the limit is allowed
    CHECK(budget.used_bytes() == 4_MiB);
    budget.deallocate(a, 3_MiB);
    budget.deallocate(b, 1_MiB);
    CHECK(budget.used_bytes() == 0);
    require_error(ErrorCode::InvalidArgument, [] { BudgetAdaptor(HostResource{}, 0); });
  }

  SECTION("gives the bytes back when the upstream fails") {
    auto arena = std::make_shared<ArenaPool>(HostResource{}, 1_MiB);
    BudgetAdaptor budget(AnyResource(arena), 8_MiB);
    require_error(ErrorCode::OutOfMemory, [&] { budget.allocate(2_MiB); });
    CHECK(budget.used_bytes() == 0);
  }
}

TEST_CASE("StatisticsAdaptor counts bytes, allocations and failures", "[memory][statistics]") {
  StatisticsAdaptor counted(BudgetAdaptor(HostResource{}, 1_MiB));
  void* a = counted.allocate(100);
  void* b = counted.allocate(300);
  counted.deallocate(a, 100);
  void* c = counted.allocate(50);
  require_error(ErrorCode::OutOfMemory, [&] { counted.allocate(2_MiB); });

  const ResourceStatistics stats = counted.stats();
  CHECK(stats.bytes.current == 350);
  CHECK(stats.bytes.peak == 400);
  CHECK(stats.bytes.total == 450);
  CHECK(stats.allocations.current == 2);
  CHECK(stats.allocations.peak == 2);
  CHECK(stats.allocations.total == 3);
  CHECK(stats.failed_allocations == 1);
  counted.deallocate(b, 300);
  counted.deallocate(c, 50);
  CHECK(counted.stats().bytes.current == 0);
}

TEST_CASE("AnyResource shares ownership and recovers the concrete type", "[memory][any]") {
  auto pool = std::make_shared<CachingPool>(HostResource{});
  AnyResource any(pool);
  const AnyResource copy = any;
  CHECK(copy == any);
  CHECK(any.target<CachingPool>() == pool.get());
  CHECK(any.target<HostResource>() == nullptr);
  CHECK(AnyResource(HostResource{}) != any);

  std::weak_ptr<CachingPool> watch = pool;
  pool.reset();  // the AnyResource copies keep it alive
  REQUIRE_FALSE(watch.expired());
  void* ptr = any.allocate(64);
  any.deallocate(ptr, 64);
  any = AnyResource(HostResource{});
  CHECK_FALSE(watch.expired());  // `copy` still holds it
  CHECK(to_string(copy.space()) == "host");

  require_error(ErrorCode::InvalidArgument, [] { AnyResource(std::shared_ptr<HostResource>{}); });
}

// Randomized alloc/free sequences checked against a shadow model after every step: blocks never
// overlap and keep their alignment and contents, the budget is never exceeded, and every layer's
// statistics equal the shadow's count.

#include "apo_catch.hpp"

#include <cstdint>
#include <memory>
#include <random>
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
using namespace apo::memory::testing;

namespace {

struct ShadowBlock {
  void* ptr;
  std::int64_t bytes;
  std::int64_t alignment;
  std::uint64_t tag;
};

// Sizes spread over every path: tiny, size classes, the small limit's edge, shared segments and
// segments of their own.
std::int64_t random_size(std::mt19937_64& random, std::int64_t small_limit) {
  switch (random() % 6) {
    case 0:
      return 1 + static_cast<std::int64_t>(random() % 256);
    case 1:
    case 2:
      return 1 + static_cast<std::int64_t>(random() % small_limit);
    case 3:
      return small_limit - 2 + static_cast<std::int64_t>(random() % 4);
    case 4:
      return small_limit + static_cast<std::int64_t>(random() % (16 * small_limit));
    default:
      return 1 + static_cast<std::int64_t>(random() % (64 * small_limit));
  }
}

}  // namespace

TEST_CASE("CachingPool over a budget matches a shadow model", "[memory][property]") {
  const std::uint64_t seed = GENERATE(1, 2, 3, 4, 5, 6);
  const int operations = 3000 * stress_scale();
  CAPTURE(seed);

  // Small sizes so that a few thousand steps split, coalesce, release and hit the budget often.
  CachingPoolOptions options;
  options.small_block_limit_bytes = 4_KiB;
  options.slab_bytes = 16_KiB;
  options.shared_segment_bytes = 128_KiB;
  options.segment_granularity_bytes = 16_KiB;
  constexpr std::int64_t kLimit = 2_MiB;

  auto bottom = std::make_shared<StatisticsAdaptor>(HostResource{});
  auto budget = std::make_shared<BudgetAdaptor>(AnyResource(bottom), kLimit);
  auto pool = std::make_shared<CachingPool>(AnyResource(budget), options);
  StatisticsAdaptor top{AnyResource(pool)};

  std::mt19937_64 random(seed);
  std::vector<ShadowBlock> shadow;
  LiveBlocks live;
  std::int64_t shadow_bytes = 0;
  std::int64_t refused = 0;

  for (int op = 0; op < operations; ++op) {
    const auto roll = random() % 100;
    if (roll < 55 || shadow.empty()) {
      const std::int64_t bytes = random_size(random, options.small_block_limit_bytes);
      const std::int64_t alignment = std::int64_t{1} << (random() % 13);
      void* ptr = nullptr;
      try {
        ptr = top.allocate(bytes, alignment);
      } catch (const apo::Error& error) {
        REQUIRE(error.code() == apo::ErrorCode::OutOfMemory);
        ++refused;
      }
      if (ptr != nullptr) {
        REQUIRE(is_aligned(ptr, alignment));
        REQUIRE(live.insert(ptr, bytes));
        fill_pattern(ptr, bytes, static_cast<std::uint64_t>(op));
        shadow.push_back({ptr, bytes, alignment, static_cast<std::uint64_t>(op)});
        shadow_bytes += bytes;
      }
    } else if (roll < 97) {
      const std::size_t i = random() % shadow.size();
      const ShadowBlock block = shadow[i];
      REQUIRE(has_pattern(block.ptr, block.bytes, block.tag));
      top.deallocate(block.ptr, block.bytes, block.alignment);
      live.erase(block.ptr);
      shadow_bytes -= block.bytes;
      shadow[i] = shadow.back();
      shadow.pop_back();
    } else {
      pool->release();
    }

    const PoolStats stats = pool->stats();
    REQUIRE(stats.bytes_requested == shadow_bytes);
    REQUIRE(stats.live_allocations == static_cast<std::int64_t>(shadow.size()));
    REQUIRE(stats.bytes_in_use >= shadow_bytes);
    REQUIRE(stats.bytes_in_use <= stats.bytes_reserved);
    REQUIRE(stats.largest_free_block_bytes <= stats.bytes_cached());
    REQUIRE(top.stats().bytes.current == shadow_bytes);
    REQUIRE(budget->used_bytes() == stats.bytes_reserved);
    REQUIRE(bottom->stats().bytes.current == stats.bytes_reserved);
    REQUIRE(bottom->stats().bytes.peak <= kLimit);
  }
  CHECK(refused > 0);  // the sequence did reach the budget

  for (const ShadowBlock& block : shadow) {
    REQUIRE(has_pattern(block.ptr, block.bytes, block.tag));
    top.deallocate(block.ptr, block.bytes, block.alignment);
  }
  CHECK(pool->stats().bytes_in_use == 0);
  // release() gives back only whole free segments: all of them going back shows that every
  // split block coalesced with its neighbours again.
  pool->release();
  CHECK(pool->stats().bytes_reserved == 0);
  CHECK(budget->used_bytes() == 0);
  CHECK(bottom->stats().bytes.current == 0);
}

TEST_CASE("ArenaPool matches a shadow model", "[memory][property]") {
  const std::uint64_t seed = GENERATE(11, 12, 13);
  const int operations = 3000 * stress_scale();
  CAPTURE(seed);
  constexpr std::int64_t kCapacity = 1_MiB;
  ArenaPool arena(HostResource{}, kCapacity);
  char* const base = static_cast<char*>(arena.allocate(1, 1));  // an empty arena starts at its base
  arena.deallocate(base, 1, 1);

  std::mt19937_64 random(seed);
  std::vector<ShadowBlock> shadow;
  LiveBlocks live;
  for (int op = 0; op < operations; ++op) {
    if (random() % 100 < 50 || shadow.empty()) {
      const std::int64_t bytes = 1 + static_cast<std::int64_t>(random() % 8192);
      const std::int64_t alignment = std::int64_t{1} << (random() % 13);
      void* ptr = nullptr;
      try {
        ptr = arena.allocate(bytes, alignment);
      } catch (const apo::Error& error) {
        REQUIRE(error.code() == apo::ErrorCode::OutOfMemory);
      }
      if (ptr != nullptr) {
        REQUIRE(is_aligned(ptr, alignment));
        REQUIRE(live.insert(ptr, bytes));
        fill_pattern(ptr, bytes, static_cast<std::uint64_t>(op));
        shadow.push_back({ptr, bytes, alignment, static_cast<std::uint64_t>(op)});
      }
    } else {
      // Mostly the newest block (stack-like use), sometimes any.
      const std::size_t i = random() % 4 != 0 ? shadow.size() - 1 : random() % shadow.size();
      const ShadowBlock block = shadow[i];
      REQUIRE(has_pattern(block.ptr, block.bytes, block.tag));
      arena.deallocate(block.ptr, block.bytes, block.alignment);
      live.erase(block.ptr);
      shadow.erase(shadow.begin() + static_cast<std::ptrdiff_t>(i));
    }
    const ArenaStats stats = arena.stats();
    REQUIRE(stats.live_allocations == static_cast<std::int64_t>(shadow.size()));
    REQUIRE(stats.offset_bytes <= kCapacity);
    if (shadow.empty()) REQUIRE(stats.offset_bytes == 0);
    for (const ShadowBlock& block : shadow) {
      // Every live block lies below the offset: the arena never hands it out again.
      REQUIRE(static_cast<char*>(block.ptr) + block.bytes <= base + stats.offset_bytes);
    }
  }
}

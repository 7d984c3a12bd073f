// Many threads on one composed stack at once, handing blocks to each other to free, while a
// MemoryManager thread releases the pool's cache underneath them. APO_STRESS_SCALE=N runs N times
// the operations.

#include "apo_catch.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "apo/core/error.hpp"
#include "apo/core/units.hpp"
#include "apo/memory/arena_pool.hpp"
#include "apo/memory/budget_adaptor.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/memory/host_resource.hpp"
#include "apo/memory/memory_manager.hpp"
#include "apo/memory/statistics_adaptor.hpp"
#include "memory_test_support.hpp"

using namespace apo::literals;
using namespace apo::memory;
using namespace apo::memory::testing;

namespace {

struct Handoff {
  void* ptr;
  std::int64_t bytes;
  std::int64_t alignment;
  std::uint64_t tag;
};

}  // namespace

TEST_CASE("threads share a budgeted caching pool while the manager releases it",
          "[memory][stress]") {
  constexpr int kThreads = 4;
  constexpr std::int64_t kLimit = 96_MiB;
  const int operations = 4000 * stress_scale();

  auto bottom = std::make_shared<StatisticsAdaptor>(HostResource{});
  auto budget = std::make_shared<BudgetAdaptor>(AnyResource(bottom), kLimit);
  auto pool = std::make_shared<CachingPool>(AnyResource(budget));

  MemoryManagerOptions manager_options;
  manager_options.cleanup_interval = std::chrono::milliseconds{2};
  manager_options.high_water_check_interval = std::chrono::milliseconds{1};
  manager_options.aggressive = true;
  MemoryManager manager(manager_options);
  const CleanupRegistration watched = manager.watch("stress pool", pool, 32_MiB);
  manager.start();

  std::mutex handoff_mutex;
  std::vector<Handoff> handoffs;  // blocks one thread allocated for another to free
  std::atomic<int> corrupted{0};
  std::atomic<int> refused{0};

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 random(1000 + t);
      std::vector<Handoff> mine;
      const auto release = [&](const Handoff& block) {
        if (!has_pattern(block.ptr, block.bytes, block.tag)) ++corrupted;
        pool->deallocate(block.ptr, block.bytes, block.alignment);
      };
      for (int op = 0; op < operations; ++op) {
        const auto roll = random() % 100;
        if (roll < 50 || mine.empty()) {
          const std::int64_t bytes = random() % 20 == 0
                                         ? 1_MiB + static_cast<std::int64_t>(random() % 6_MiB)
                                         : 1 + static_cast<std::int64_t>(random() % 64_KiB);
          const std::int64_t alignment = std::int64_t{1} << (random() % 13);
          const std::uint64_t tag =
              static_cast<std::uint64_t>(t) << 32 | static_cast<std::uint64_t>(op);
          try {
            void* ptr = pool->allocate(bytes, alignment);
            if (!is_aligned(ptr, alignment)) ++corrupted;
            fill_pattern(ptr, bytes, tag);
            mine.push_back({ptr, bytes, alignment, tag});
          } catch (const apo::Error& error) {
            if (error.code() != apo::ErrorCode::OutOfMemory) ++corrupted;
            ++refused;
          }
        } else if (roll < 85) {
          const std::size_t i = random() % mine.size();
          release(mine[i]);
          mine[i] = mine.back();
          mine.pop_back();
        } else if (roll < 93) {
          std::lock_guard lock(handoff_mutex);
          handoffs.push_back(mine.back());
          mine.pop_back();
        } else {
          Handoff block{};
          {
            std::lock_guard lock(handoff_mutex);
            if (handoffs.empty()) continue;
            block = handoffs.back();
            handoffs.pop_back();
          }
          release(block);
        }
      }
      for (const Handoff& block : mine) release(block);
    });
  }
  for (auto& thread : threads) thread.join();
  for (const Handoff& block : handoffs) pool->deallocate(block.ptr, block.bytes, block.alignment);
  manager.stop();

  CHECK(corrupted == 0);
  const PoolStats stats = pool->stats();
  CHECK(stats.live_allocations == 0);
  CHECK(stats.bytes_in_use == 0);
  CHECK(stats.bytes_requested == 0);
  CHECK(bottom->stats().bytes.peak <= kLimit);
  CHECK(budget->used_bytes() == stats.bytes_reserved);
  CHECK(manager.stats().periodic_passes + manager.stats().high_water_passes > 0);
  pool->release();
  CHECK(bottom->stats().bytes.current == 0);
  INFO("refused allocations: " << refused.load());
}

TEST_CASE("threads bump one arena concurrently", "[memory][stress]") {
  constexpr int kThreads = 4;
  const int rounds = 200 * stress_scale();
  ArenaPool arena(HostResource{}, 16_MiB);
  std::atomic<int> corrupted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 random(2000 + t);
      for (int round = 0; round < rounds; ++round) {
        std::vector<Handoff> mine;
        for (int i = 0; i < 16; ++i) {
          const std::int64_t bytes = 1 + static_cast<std::int64_t>(random() % 16_KiB);
          const std::int64_t alignment = std::int64_t{1} << (random() % 13);
          const std::uint64_t tag =
              static_cast<std::uint64_t>(t) << 32 | static_cast<std::uint64_t>(round * 16 + i);
          try {
            void* ptr = arena.allocate(bytes, alignment);
            if (!is_aligned(ptr, alignment)) ++corrupted;
            fill_pattern(ptr, bytes, tag);
            mine.push_back({ptr, bytes, alignment, tag});
          } catch (const apo::Error&) {
            break;  // full until the other threads free theirs
          }
        }
        for (auto it = mine.rbegin(); it != mine.rend(); ++it) {
          if (!has_pattern(it->ptr, it->bytes, it->tag)) ++corrupted;
          arena.deallocate(it->ptr, it->bytes, it->alignment);
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(corrupted == 0);
  CHECK(arena.stats().live_allocations == 0);
  CHECK(arena.stats().offset_bytes == 0);
}

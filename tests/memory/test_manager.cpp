// MemoryManager: which pass runs when (driven by a FakeClock), what each pass releases, hooks
// and their registrations, failures, and a thread that starts, wakes and stops promptly.

#include "apo_catch.hpp"

#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <thread>

#include "apo/core/clock.hpp"
#include "apo/core/config.hpp"
#include "apo/core/error.hpp"
#include "apo/core/units.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/memory/host_resource.hpp"
#include "apo/memory/memory_manager.hpp"
#include "memory_test_support.hpp"

using namespace apo::literals;
using namespace apo::memory;
using namespace std::chrono_literals;
using apo::ErrorCode;
using apo::memory::testing::require_error;

namespace {

MemoryManagerOptions options_with(bool aggressive) {
  MemoryManagerOptions options;
  options.cleanup_interval = 60s;
  options.high_water_check_interval = 1s;
  options.aggressive = aggressive;
  return options;
}

// A pool whose whole reservation, `segments` segments of 12 MiB, is free cache.
std::shared_ptr<CachingPool> pool_with_cache(int segments) {
  auto pool = std::make_shared<CachingPool>(HostResource{});
  std::vector<void*> blocks;
  for (int i = 0; i < segments; ++i) blocks.push_back(pool->allocate(12_MiB));
  for (void* block : blocks) pool->deallocate(block, 12_MiB);
  return pool;
}

// Waits (real time, bounded) until `condition` holds.
template <class Condition>
bool eventually(Condition&& condition) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

}  // namespace

TEST_CASE("MemoryManager options come from memory_optimization", "[memory][manager]") {
  apo::Config config;
  config.memory.cleanup_interval_s = 2.5;
  config.memory.aggressive_cleanup = true;
  const MemoryManagerOptions options = MemoryManagerOptions::from_config(config);
  CHECK(options.cleanup_interval == 2500ms);
  CHECK(options.aggressive);
  CHECK(options.high_water_check_interval == 1s);

  config.memory.cleanup_interval_s = 0.25;  // checks at least as often as it cleans
  CHECK(MemoryManagerOptions::from_config(config).high_water_check_interval == 250ms);
  CHECK(MemoryManagerOptions::from_config(apo::Config{}).cleanup_interval == 60s);

  MemoryManagerOptions bad;
  bad.cleanup_interval = 0s;
  require_error(ErrorCode::InvalidArgument, [&] { MemoryManager manager(bad); });
  bad = {};
  bad.high_water_check_interval = -1s;
  require_error(ErrorCode::InvalidArgument, [&] { MemoryManager manager(bad); });
}

TEST_CASE("periodic passes run hooks and release pools above their mark", "[memory][manager]") {
  const bool aggressive = GENERATE(false, true);
  apo::FakeClock clock;
  MemoryManager manager(options_with(aggressive), clock);
  auto busy = pool_with_cache(3);   // 36 MiB cached
  auto quiet = pool_with_cache(1);  // 12 MiB cached
  const auto busy_watch = manager.watch("busy", busy, 24_MiB);
  const auto quiet_watch = manager.watch("quiet", quiet, 24_MiB);
  int hook_runs = 0;
  CleanupContext seen;
  const auto hook = manager.add_hook("model cache", [&](const CleanupContext& context) {
    ++hook_runs;
    seen = context;
    return std::int64_t{5};
  });

  CHECK_FALSE(manager.poll());  // nothing due at time zero
  clock.advance(59s);
  // The high-water check (every second) finds the busy pool first.
  CHECK(manager.poll());
  CHECK(busy->bytes_reserved() == 0);
  CHECK(quiet->bytes_reserved() == 12_MiB);
  CHECK(hook_runs == 0);  // high-water passes are for pools only
  CHECK(manager.stats().high_water_passes == 1);

  clock.advance(1s);
  CHECK(manager.poll());
  CHECK(manager.stats().periodic_passes == 1);
  CHECK(hook_runs == 1);
  CHECK(seen.reason == CleanupReason::periodic);
  CHECK(seen.aggressive == aggressive);
  // Below its mark the quiet pool keeps its cache, unless cleanup is aggressive.
  CHECK(quiet->bytes_reserved() == (aggressive ? 0 : 12_MiB));
  CHECK(manager.stats().bytes_released == 36_MiB + (aggressive ? 12_MiB : 0) + 5);

  CHECK_FALSE(manager.poll());  // the next pass is an interval away
  clock.advance(1s);
  CHECK_FALSE(manager.poll());  // a check, and nothing is above its mark
}

TEST_CASE("MemoryManager requested passes and failures", "[memory][manager]") {
  SECTION("requested passes release everything and run every hook") {
    apo::FakeClock clock;
    MemoryManager manager(options_with(false), clock);
    auto pool = pool_with_cache(1);
    const auto watch = manager.watch("pool", pool, 1_GiB);
    int hook_runs = 0;
    const auto hook = manager.add_hook("hook", [&](const CleanupContext& context) {
      ++hook_runs;
      CHECK(context.reason == CleanupReason::requested);
      return std::int64_t{0};
    });
    const CleanupReport report = manager.cleanup_now();
    CHECK(report.reason == CleanupReason::requested);
    CHECK(report.bytes_released == 12_MiB);
    CHECK(report.entries_run == 2);
    CHECK(report.failures.empty());
    CHECK(hook_runs == 1);

    manager.request_cleanup();  // without a thread, the next poll serves it
    CHECK(manager.poll());
    CHECK(hook_runs == 2);
    CHECK(manager.stats().requested_passes == 2);
  }

  SECTION("a failing hook is recorded and the others still run") {
    apo::FakeClock clock;
    MemoryManager manager(options_with(false), clock);
    bool later_ran = false;
    const auto failing = manager.add_hook("flaky cache", [](const CleanupContext&) -> std::int64_t {
      throw std::runtime_error("disk gone");
    });
    const auto later = manager.add_hook("later", [&](const CleanupContext&) {
      later_ran = true;
      return std::int64_t{1};
    });
    const CleanupReport report = manager.cleanup_now();
    REQUIRE(report.failures.size() == 1);
    CHECK(report.failures[0] == "flaky cache: disk gone");
    CHECK(later_ran);
    CHECK(manager.stats().failures == 1);
    CHECK(manager.stats().last_failure == "flaky cache: disk gone");
    require_error(ErrorCode::InvalidArgument, [&] { (void)manager.add_hook("empty", {}); });
    require_error(ErrorCode::InvalidArgument,
                  [&] { (void)manager.watch("none", std::shared_ptr<CachingPool>{}, 0); });
  }
}

TEST_CASE("MemoryManager registrations", "[memory][manager]") {
  SECTION("registrations unregister, outlive the manager and may end inside their hook") {
    apo::FakeClock clock;
    CleanupRegistration survivor;
    int runs = 0;
    {
      MemoryManager manager(options_with(false), clock);
      CleanupRegistration dropped = manager.add_hook("dropped", [&](const CleanupContext&) {
        ++runs;
        return std::int64_t{0};
      });
      dropped.reset();
      CHECK_FALSE(dropped);
      manager.cleanup_now();
      CHECK(runs == 0);

      CleanupRegistration self;
      self = manager.add_hook("once", [&](const CleanupContext&) {
        ++runs;
        self.reset();  // a hook may drop its own registration
        return std::int64_t{0};
      });
      manager.cleanup_now();
      manager.cleanup_now();
      CHECK(runs == 1);
      survivor =
          manager.add_hook("survivor", [](const CleanupContext&) { return std::int64_t{0}; });
    }
    CHECK(survivor);
    survivor.reset();  // after the manager: nothing to unregister from, and no crash
  }

  SECTION("dropping a registration waits for its run in progress") {
    apo::FakeClock clock;
    MemoryManager manager(options_with(false), clock);
    std::atomic<bool> entered{false};
    std::atomic<bool> finish{false};
    std::atomic<bool> hook_done{false};
    auto registration =
        std::make_unique<CleanupRegistration>(manager.add_hook("slow", [&](const CleanupContext&) {
          entered = true;
          while (!finish) std::this_thread::sleep_for(1ms);
          hook_done = true;
          return std::int64_t{0};
        }));
    std::thread pass([&] { manager.cleanup_now(); });
    REQUIRE(eventually([&] { return entered.load(); }));

    std::atomic<bool> dropped{false};
    std::atomic<bool> hook_done_when_dropped{false};
    std::thread dropper([&] {
      registration.reset();
      hook_done_when_dropped = hook_done.load();
      dropped = true;
    });
    std::this_thread::sleep_for(50ms);
    CHECK_FALSE(dropped);
    finish = true;
    dropper.join();
    pass.join();
    CHECK(dropped);
    CHECK(hook_done_when_dropped);  // the hook had finished before the registration was gone
  }
}

TEST_CASE("MemoryManager thread", "[memory][manager]") {
  SECTION("the manager thread follows the clock, wakes on request and stops promptly") {
    apo::FakeClock clock;
    MemoryManagerOptions options;
    options.cleanup_interval = 3600s;
    options.high_water_check_interval = 3600s;
    MemoryManager manager(options, clock);
    std::atomic<int> runs{0};
    const auto hook = manager.add_hook("hook", [&](const CleanupContext&) {
      ++runs;
      return std::int64_t{0};
    });

    manager.start();
    manager.start();  // already running: no second thread
    CHECK(manager.running());

    clock.advance(3600s);
    manager.wake();
    CHECK(eventually([&] { return manager.stats().periodic_passes == 1; }));

    manager.request_cleanup();
    CHECK(eventually([&] { return manager.stats().requested_passes == 1; }));
    CHECK(runs == 2);

    const auto before = std::chrono::steady_clock::now();
    manager.stop();  // an hour until the next pass; stop does not wait for it
    CHECK(std::chrono::steady_clock::now() - before < 2s);
    CHECK_FALSE(manager.running());
    manager.stop();

    manager.start();  // a stopped manager can start again; the destructor stops and joins it
    CHECK(manager.running());
  }

  SECTION("the manager thread releases a pool that passes its mark") {
    MemoryManagerOptions options;
    options.cleanup_interval = 3600s;
    options.high_water_check_interval = 5ms;  // real time: the steady clock
    MemoryManager manager(options);
    auto pool = std::make_shared<CachingPool>(HostResource{});
    const auto watch = manager.watch("pool", pool, 16_MiB);
    manager.start();
    void* block = pool->allocate(24_MiB);
    pool->deallocate(block, 24_MiB);  // 24 MiB cached, above the mark
    CHECK(eventually([&] { return pool->bytes_reserved() == 0; }));
    // The pass counts itself after its hooks ran: wait for the count, not only the release.
    CHECK(eventually([&] { return manager.stats().high_water_passes >= 1; }));
  }
}

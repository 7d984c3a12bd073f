// The Batcher contract (include/apo/batch/batch.hpp) against every batcher, then what each
// batcher does on its own.

#include "apo_catch.hpp"

#include <atomic>
#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "apo/batch/fixed_batcher.hpp"
#include "apo/batch/memory_aware_batcher.hpp"
#include "apo/core/config.hpp"
#include "apo/core/error.hpp"
#include "apo/core/units.hpp"

using apo::Clock;
using apo::Error;
using apo::batch::BatchCandidate;
using apo::batch::BatchOutcome;
using apo::batch::BatchPlan;
using apo::batch::FixedBatcher;
using apo::batch::GroupKey;
using apo::batch::GroupKeyView;
using apo::batch::MemoryAwareBatcher;
using apo::batch::MemoryAwareBatcherOptions;
using namespace std::chrono_literals;
using namespace apo::literals;

namespace {

template <class B>
B make_batcher();
template <>
FixedBatcher make_batcher<FixedBatcher>() {
  return FixedBatcher(4);
}
template <>
MemoryAwareBatcher make_batcher<MemoryAwareBatcher>() {
  return MemoryAwareBatcher();
}

GroupKey key_of(std::string workflow, int width, int height, int frames) {
  GroupKey key;
  key.workflow = std::move(workflow);
  key.width = width;
  key.height = height;
  key.frames = frames;
  return key;
}

const GroupKey kImage = key_of("qwen_edit", 1024, 1024, 1);
const GroupKey kVideo = key_of("hunyuan_t2v", 848, 480, 61);

BatchCandidate candidate(const GroupKey& key, std::size_t available, std::int64_t head_bytes,
                         Clock::time_point submitted, Clock::time_point now) {
  return {GroupKeyView(key), available, head_bytes, submitted, now};
}

}  // namespace

TEMPLATE_TEST_CASE("batcher: the Batcher contract", "[batch][conformance]", FixedBatcher,
                   MemoryAwareBatcher) {
  SECTION("plans stay within the contract") {
    TestType batcher = make_batcher<TestType>();
    const std::size_t max = batcher.max_batch_size();
    CHECK(max >= 1);
    CHECK(max <= apo::batch::kMaxBatchSize);

    std::mt19937_64 random(7);
    for (int i = 0; i < 2000; ++i) {
      const auto now = Clock::time_point(std::chrono::seconds(1000 + random() % 1000));
      const auto submitted = now - std::chrono::milliseconds(random() % 500);
      const auto free_bytes = static_cast<std::int64_t>(random() % (64 * apo::GiB)) - 4 * apo::GiB;
      const auto c =
          candidate(i % 2 ? kImage : kVideo, 1 + random() % 20,
                    static_cast<std::int64_t>(random() % (8 * apo::GiB)), submitted, now);
      const BatchPlan plan = batcher.plan(c, free_bytes);
      if (c.head_memory_bytes > free_bytes) {
        CHECK(plan.is_blocked());
        CHECK_FALSE(plan.takes());
      } else if (plan.takes()) {
        CHECK(plan.max_requests >= 1);
        CHECK(plan.max_requests <= max);
        CHECK(plan.max_memory_bytes >= c.head_memory_bytes);
        CHECK(plan.max_memory_bytes <= std::max<std::int64_t>(free_bytes, 0));
        CHECK_FALSE(plan.wait_until);
      } else {
        REQUIRE(plan.wait_until);
        CHECK_FALSE(plan.is_blocked());
        CHECK(*plan.wait_until > now);
        CHECK(*plan.wait_until <= c.head_submit_time + 100ms);  // the default max_queue_delay
      }
    }
  }
  SECTION("a head that has waited long is always taken") {
    TestType batcher = make_batcher<TestType>();
    const auto now = Clock::time_point(2h);
    const BatchPlan plan = batcher.plan(candidate(kImage, 1, 1_GiB, now - 1h, now), 20_GiB);
    CHECK(plan.takes());
  }
  SECTION("any outcome is accepted") {
    TestType batcher = make_batcher<TestType>();
    batcher.record({kImage, 0, 0, 0s});
    batcher.record({kImage, 1, 1, 0s});
    batcher.record({kImage, 3, 4, -5s});
    batcher.record({kImage, 1000, 1000, 1s});
    batcher.record({kVideo, 2, 2, 10h});
    const auto now = Clock::time_point(1h);
    CHECK(batcher.plan(candidate(kImage, 8, 1_GiB, now - 1h, now), 20_GiB).takes());
  }
  SECTION("plan and record may run on many threads") {
    TestType batcher = make_batcher<TestType>();
    std::atomic<int> takes{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 500; ++i) {
          const GroupKey& key = (i + t) % 2 ? kImage : kVideo;
          if (t % 2 == 0) {
            batcher.record({key, static_cast<std::size_t>(1 + i % 8), 8,
                            std::chrono::milliseconds(100 + i % 50)});
          } else {
            const auto now = Clock::time_point(std::chrono::seconds(i));
            if (batcher.plan(candidate(key, 8, 1_GiB, now - 1s, now), 20_GiB).takes()) ++takes;
          }
        }
      });
    }
    for (auto& thread : threads) thread.join();
    CHECK(takes == 1000);
  }
}

TEST_CASE("FixedBatcher: a fixed size at once", "[batch][fixed]") {
  const FixedBatcher batcher(3);
  const auto now = Clock::time_point(10s);
  const BatchPlan plan = batcher.plan(candidate(kImage, 1, 1_GiB, now, now), 5_GiB);
  CHECK(plan.max_requests == 3);
  CHECK(plan.max_memory_bytes == 5_GiB);
  CHECK_THROWS_AS(FixedBatcher(0), Error);
  CHECK_THROWS_AS(FixedBatcher(65), Error);
  CHECK(batcher.plan(candidate(kImage, 1, 6_GiB, now, now), 5_GiB).is_blocked());
  apo::Config config;
  config.performance.batch_size = 2;
  CHECK(FixedBatcher(apo::batch::FixedBatcherOptions::from_config(config)).max_batch_size() == 2);
}

TEST_CASE("MemoryAwareBatcher: sizing, fill delay and throughput history",
          "[batch][memory_aware]") {
  SECTION("size from free memory and the estimate, clamped to [1, max]") {
    const MemoryAwareBatcher batcher;  // max 8, 100 ms delay
    const auto now = Clock::time_point(10s);
    const auto plan = [&](std::int64_t head_bytes, std::int64_t free_bytes) {
      return batcher.plan(candidate(kImage, 64, head_bytes, now, now), free_bytes);
    };
    CHECK(plan(6_GiB, 20_GiB).max_requests == 3);  // 20 / 6
    CHECK(plan(2_GiB, 20_GiB).max_requests == 8);  // 10, clamped to the guide's 8
    CHECK(plan(30_GiB, 20_GiB).is_blocked());      // the head alone does not fit
    CHECK(plan(0, 20_GiB).max_requests == 8);      // unknown estimate: count alone
    CHECK(plan(1_GiB, 0).is_blocked());
    CHECK(plan(6_GiB, 20_GiB).max_memory_bytes == 20_GiB);
    CHECK(plan(6_GiB, 20_GiB).limit == apo::batch::BatchLimit::memory);
    CHECK(plan(2_GiB, 20_GiB).limit == apo::batch::BatchLimit::max_batch_size);
  }
  SECTION("waits up to max_queue_delay for a fuller batch") {
    MemoryAwareBatcherOptions options;
    options.max_queue_delay = 250ms;
    const MemoryAwareBatcher batcher(options);
    const auto submitted = Clock::time_point(100s);

    // 2 of the 8 that fit are queued: wait for the head's fill deadline.
    const BatchPlan early =
        batcher.plan(candidate(kImage, 2, 1_GiB, submitted, submitted + 50ms), 20_GiB);
    CHECK_FALSE(early.takes());
    REQUIRE(early.wait_until);
    CHECK(*early.wait_until == submitted + 250ms);
    // At the deadline, take what is there.
    CHECK(batcher.plan(candidate(kImage, 2, 1_GiB, submitted, submitted + 250ms), 20_GiB).takes());
    // A full batch never waits.
    CHECK(batcher.plan(candidate(kImage, 8, 1_GiB, submitted, submitted), 20_GiB).takes());
    // Memory bounds the size, so 3 video requests are already a full batch.
    CHECK(batcher.plan(candidate(kVideo, 3, 6_GiB, submitted, submitted), 20_GiB).takes());

    options.max_queue_delay = 0ms;
    const MemoryAwareBatcher no_delay(options);
    CHECK(no_delay.plan(candidate(kImage, 1, 1_GiB, submitted, submitted), 20_GiB).takes());
  }
  SECTION("shrinks while throughput falls and grows back once it recovers") {
    MemoryAwareBatcherOptions options;  // window 5, tolerance 5%
    MemoryAwareBatcher batcher(options);
    // A full batch of n takes base × (1 + 0.5 (n − 1)); a slowdown multiplies that.
    const auto run = [&](std::size_t n, double slowdown) {
      const double seconds = 10.0 * (1.0 + 0.5 * static_cast<double>(n - 1)) * slowdown;
      batcher.record(
          {kImage, n, n,
           std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds))});
    };
    const auto limit = [&] { return batcher.size_limit(GroupKeyView(kImage)); };
    CHECK(limit() == 8);
    for (int i = 0; i < 10; ++i) run(limit(), 1.0);
    CHECK(limit() == 8);

    // Throughput falls (the device slows down by half): the limit drops.
    run(limit(), 2.0);
    CHECK(limit() == 7);
    std::size_t lowest = limit();
    double slowdown = 2.0;
    for (int i = 0; i < 30; ++i) {
      slowdown *= 1.1;  // and keeps falling, 9% a batch
      run(limit(), slowdown);
      lowest = std::min(lowest, limit());
    }
    CHECK(lowest <= 4);

    // Recovery: the limit climbs back to the maximum and stays there.
    for (int i = 0; i < 200; ++i) run(limit(), 1.0);
    CHECK(limit() == 8);
    for (int i = 0; i < 20; ++i) run(limit(), 1.0);
    CHECK(limit() == 8);

    // Groups learn separately; partial batches teach nothing about the limit.
    CHECK(batcher.size_limit(GroupKeyView(kVideo)) == 8);
    for (int i = 0; i < 20; ++i) batcher.record({kVideo, 2, 3, std::chrono::seconds(10 + 5 * i)});
    CHECK(batcher.size_limit(GroupKeyView(kVideo)) == 8);

    // The limit caps the memory-derived size.
    run(8, 1.0);
    run(8, 3.0);
    const auto now = Clock::time_point(1h);
    CHECK(batcher.plan(candidate(kImage, 64, 1_GiB, now, now), 20_GiB).max_requests == 7);
  }
  SECTION("history is kept for a bounded number of groups") {
    MemoryAwareBatcherOptions options;
    options.max_tracked_groups = 4;
    MemoryAwareBatcher batcher(options);
    for (int g = 0; g < 10; ++g) {
      const GroupKey key = key_of("w" + std::to_string(g), 512, 512, 1);
      batcher.record({key, 8, 8, 1s});
      batcher.record({key, 8, 8, 4s});  // a fall: limit 7
      CHECK(batcher.size_limit(GroupKeyView(key)) == 7);
    }
    const GroupKey first = key_of("w0", 512, 512, 1);
    CHECK(batcher.size_limit(GroupKeyView(first)) == 8);  // forgotten
  }
  SECTION("options are validated and come from the config") {
    MemoryAwareBatcherOptions bad;
    bad.max_batch_size = 0;
    CHECK_THROWS_AS(MemoryAwareBatcher(bad), Error);
    bad = {};
    bad.max_queue_delay = -1ms;
    CHECK_THROWS_AS(MemoryAwareBatcher(bad), Error);
    bad = {};
    bad.throughput_tolerance = 1.5;
    CHECK_THROWS_AS(MemoryAwareBatcher(bad), Error);

    apo::Config config;
    config.performance.max_batch_size = 6;
    config.scheduling.max_queue_delay_ms = 40;
    config.scheduling.throughput_window = 3;
    config.scheduling.throughput_tolerance = 0.1;
    const auto options = MemoryAwareBatcherOptions::from_config(config);
    CHECK(options.max_batch_size == 6);
    CHECK(options.max_queue_delay == 40ms);
    CHECK(options.throughput_window == 3);
    CHECK(options.throughput_tolerance == 0.1);
    CHECK(MemoryAwareBatcher(options).max_batch_size() == 6);
  }
}

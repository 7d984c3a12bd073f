// What distinguishes the policies: FIFO's strict arrival order, priority with aging and grouping.

#include "apo_catch.hpp"

#include <vector>

#include "apo/core/clock.hpp"
#include "apo/core/config.hpp"
#include "apo/core/error.hpp"
#include "apo/sched/fifo_scheduler.hpp"
#include "apo/sched/priority_scheduler.hpp"
#include "sched_test_support.hpp"

using apo::Error;
using apo::ErrorCode;
using apo::FakeClock;
using apo::RequestId;
using apo::sched::FifoScheduler;
using apo::sched::PriorityScheduler;
using apo::sched::SchedulerOptions;
using namespace sched_test;
using namespace apo::literals;

namespace {

template <class S>
std::vector<std::vector<RequestId>> drain(S& scheduler, Take plan = {}) {
  std::vector<std::vector<RequestId>> batches;
  while (scheduler.size() > 0) {
    auto popped = scheduler.pop_batch(plan);
    REQUIRE_FALSE(popped.batch.empty());
    std::vector<RequestId> ids;
    for (const auto& r : popped.batch.requests) ids.push_back(r.id);
    batches.push_back(ids);
  }
  return batches;
}

using Batches = std::vector<std::vector<RequestId>>;

}  // namespace

TEST_CASE("FIFO: strict arrival order, a batch is a run of one key", "[sched][fifo]") {
  FakeClock clock;
  FifoScheduler scheduler(clock);
  // a a b a, priorities that FIFO ignores
  scheduler.submit(request(1, "qwen_edit", 0));
  scheduler.submit(request(2, "qwen_edit", 9));
  scheduler.submit(request(3, "wan_alpha", 5));
  scheduler.submit(request(4, "qwen_edit", 9));
  CHECK(drain(scheduler) == Batches{{1, 2}, {3}, {4}});

  // Shape and quality are part of the key.
  auto tall = request(5);
  tall.height = 768;
  auto fine = request(6);
  fine.quality = apo::QualityLevel::quality_first;
  scheduler.submit(request(7));
  scheduler.submit(tall);
  scheduler.submit(fine);
  scheduler.submit(request(8));
  CHECK(drain(scheduler) == Batches{{7}, {5}, {6}, {8}});

  // The run stops at the plan's count and continues in the next batch.
  for (int i = 10; i < 15; ++i) scheduler.submit(request(i));
  CHECK(drain(scheduler, Take{2}) == Batches{{10, 11}, {12, 13}, {14}});
}

TEST_CASE("priority: order, aging and grouping", "[sched][priority]") {
  SECTION("higher first, arrival order within a level") {
    FakeClock clock;
    PriorityScheduler scheduler(clock);
    scheduler.submit(request(1, "a", 1));
    scheduler.submit(request(2, "b", 5));
    scheduler.submit(request(3, "c", 9));
    scheduler.submit(request(4, "d", 5));
    CHECK(drain(scheduler) == Batches{{3}, {2}, {4}, {1}});
  }
  SECTION("companions come from the head's group, in priority order") {
    FakeClock clock;
    PriorityScheduler scheduler(clock);
    scheduler.submit(request(1, "qwen_edit", 2));
    scheduler.submit(request(2, "wan_alpha", 8));
    scheduler.submit(request(3, "qwen_edit", 9));
    scheduler.submit(request(4, "qwen_edit", 5));
    scheduler.submit(request(5, "wan_alpha", 1));
    // Head: 3 (priority 9) with its group by key: 4 (5), 1 (2). Then wan_alpha: 2, 5.
    CHECK(drain(scheduler, Take{3}) == Batches{{3, 4, 1}, {2, 5}});
  }
  SECTION("aging serves an old low-priority request before new high ones") {
    FakeClock clock;
    SchedulerOptions options;
    options.priority_levels = 11;  // one level = 10 s of waiting
    options.aging_bound = 100s;
    PriorityScheduler scheduler(clock, options);
    CHECK(scheduler.level_step() == 10s);

    scheduler.submit(request(1, "low", 0));
    clock.advance(99s);
    scheduler.submit(request(2, "high", 10));  // submitted 99 s later: key 99 − 100 = −1 < 0
    clock.advance(2s);
    scheduler.submit(request(3, "other", 10));  // 101 s later: key 1 > 0
    scheduler.submit(request(4, "mid", 5));     // key 101 − 50 = 51
    CHECK(drain(scheduler) == Batches{{2}, {1}, {3}, {4}});

    // Effective priority p + wait / step: 3 levels of waiting make a priority-2 request equal to
    // a fresh priority-5 one; ties go to the earlier submit.
    scheduler.submit(request(5, "x", 2));
    clock.advance(30s);
    scheduler.submit(request(6, "y", 5));
    CHECK(drain(scheduler) == Batches{{5}, {6}});
    CHECK(scheduler.order_key(apo::Clock::time_point(30s), 3) == (30s - 30s).count());
  }
  SECTION("a starving request is served within its bound under a flood") {
    // One batch of one request per 1 s, and a new top-priority request every 0.5 s: without aging
    // the priority-0 request would never leave.
    FakeClock clock;
    SchedulerOptions options;
    options.priority_levels = 10;
    options.aging_bound = 90s;  // 10 s per level
    options.max_queue_size = 100000;
    PriorityScheduler scheduler(clock, options);
    scheduler.submit(request(1, "low", 0));
    RequestId next = 2;
    std::optional<double> served_after_s;
    for (int tick = 0; tick < 1000 && !served_after_s; ++tick) {
      scheduler.submit(request(next++, "flood", 9));
      clock.advance(500ms);
      scheduler.submit(request(next++, "flood", 9));
      clock.advance(500ms);
      auto popped = scheduler.pop_batch(Take{1});
      if (popped.batch.requests.at(0).id == 1) served_after_s = (tick + 1) * 1.0;
    }
    REQUIRE(served_after_s);
    // Only requests submitted before 90 s after it are ahead: it leaves within the bound plus
    // the service of those ahead (two per second of which one leaves per second): ~ 180 s.
    CHECK(*served_after_s <= 181.0);
    CHECK(*served_after_s >= 90.0);
  }
  SECTION("priorities outside the levels are refused") {
    FakeClock clock;
    SchedulerOptions options;
    options.priority_levels = 4;
    PriorityScheduler scheduler(clock, options);
    scheduler.submit(request(1, "a", 3));
    CHECK_THROWS_MATCHES(scheduler.submit(request(2, "a", 4)), Error,
                         Catch::Predicate<Error>([](const Error& e) {
                           return e.code() == ErrorCode::InvalidArgument &&
                                  e.message().find("priority must be 0 to 3") != std::string::npos;
                         }));
    CHECK_THROWS_AS(scheduler.submit(request(3, "a", -1)), Error);

    // One level: pure arrival order among groups' heads.
    SchedulerOptions single;
    single.priority_levels = 1;
    PriorityScheduler flat(clock, single);
    flat.submit(request(1, "a", 0));
    flat.submit(request(2, "b", 0));
    flat.submit(request(3, "a", 0));
    CHECK(drain(flat) == Batches{{1, 3}, {2}});
  }
  SECTION("cancelling a group's head promotes the next, emptying frees the group") {
    FakeClock clock;
    PriorityScheduler scheduler(clock);
    scheduler.submit(request(1, "a", 9));
    scheduler.submit(request(2, "a", 1));
    scheduler.submit(request(3, "b", 5));
    REQUIRE(scheduler.cancel(1));
    // Group a's best is now priority 1: b (5) leads.
    CHECK(drain(scheduler) == Batches{{3}, {2}});
    // Groups come and go without limit.
    for (RequestId id = 10; id < 2000; ++id) {
      scheduler.submit(request(id, "w" + std::to_string(id % 37), static_cast<int>(id % 10)));
      if (id % 3 == 0) scheduler.cancel(id);
      if (id % 5 == 0) scheduler.pop_batch(Take{4});
    }
    std::size_t total = 0;
    for (const auto& batch : drain(scheduler)) total += batch.size();
    CHECK(scheduler.size() == 0);
    CHECK(total > 0);
  }
}

TEST_CASE("scheduler options come from the config", "[sched][config]") {
  apo::Config config;
  config.scheduling.max_queue_size = 17;
  config.scheduling.priority_levels = 5;
  config.scheduling.aging_bound_s = 40;
  config.scheduling.default_timeout_s = 2.5;
  const auto options = SchedulerOptions::from_config(config);
  CHECK(options.max_queue_size == 17);
  CHECK(options.priority_levels == 5);
  CHECK(options.aging_bound == 40s);
  CHECK(options.default_timeout == 2500ms);
  FakeClock clock;
  CHECK(PriorityScheduler(clock, options).level_step() == 10s);

  const auto loaded = apo::parse_config(R"({"scheduling": {"queue_policy": "fifo",
      "batch_policy": "fixed", "max_queue_delay_ms": 0, "aging_bound_s": 60}})");
  CHECK(loaded.scheduling.queue_policy == apo::QueuePolicy::fifo);
  CHECK(loaded.scheduling.batch_policy == apo::BatchPolicy::fixed);
  CHECK(loaded.scheduling.max_queue_delay_ms == 0);
  CHECK_THROWS_AS(apo::parse_config(R"({"scheduling": {"queue_policy": "lifo"}})"), Error);
  CHECK_THROWS_AS(apo::parse_config(R"({"scheduling": {"max_queue_size": 0}})"), Error);
  CHECK_THROWS_AS(apo::parse_config(R"({"scheduling": {"aging_bound_s": 0}})"), Error);
  // The canonical JSON carries the block.
  CHECK(apo::to_json(apo::Config{}).find("\"aging_bound_s\"") != std::string::npos);
}

// The Scheduler contract (include/apo/sched/scheduler.hpp), run against every scheduler.

#include "apo_catch.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "apo/core/clock.hpp"
#include "apo/core/error.hpp"
#include "apo/sched/fifo_scheduler.hpp"
#include "apo/sched/priority_scheduler.hpp"
#include "sched_test_support.hpp"

using apo::Error;
using apo::ErrorCode;
using apo::FakeClock;
using apo::batch::BatchCandidate;
using apo::batch::BatchPlan;
using apo::batch::GroupKeyView;
using apo::sched::FifoScheduler;
using apo::sched::PriorityScheduler;
using apo::sched::SchedulerOptions;
using namespace sched_test;
using namespace apo::literals;
using namespace std::chrono_literals;

namespace {

template <class S>
void check_conservation(const S& scheduler) {
  const auto s = scheduler.stats();
  CHECK(s.submitted == s.rejected + s.timed_out + s.cancelled + s.dispatched + s.queued);
  CHECK(s.queued == scheduler.size());
}

}  // namespace

TEMPLATE_TEST_CASE("scheduler: the Scheduler contract", "[sched][conformance]", FifoScheduler,
                   PriorityScheduler) {
  SECTION("a blocked plan forms nothing and names the head") {
    FakeClock clock;
    TestType scheduler(clock);
    scheduler.submit(request(1, "qwen_edit", 0, 3_GiB));
    scheduler.submit(request(2, "qwen_edit", 0, 1_GiB));
    const auto popped =
        scheduler.pop_batch([](const BatchCandidate&) { return apo::batch::BatchPlan::blocked(); });
    CHECK(popped.batch.empty());
    REQUIRE(popped.blocked);
    CHECK(popped.blocked->head == 1);
    CHECK(popped.blocked->head_memory_bytes == 3_GiB);
    CHECK(scheduler.size() == 2);
    check_conservation(scheduler);
  }
  SECTION("wait returns on a submit, a notify, the clock and close") {
    FakeClock clock;
    TestType scheduler(clock);
    // Nothing changed yet: a wait until now returns at once.
    CHECK(scheduler.wait(clock.now()) == apo::sched::WaitResult::timeout);
    // A submit before the wait is not lost.
    scheduler.submit(request(1));
    CHECK(scheduler.wait(std::nullopt) == apo::sched::WaitResult::changed);
    // A submit from another thread wakes a waiter that has no deadline.
    std::atomic<int> woke{0};
    std::thread waiter([&] { woke = static_cast<int>(scheduler.wait(std::nullopt)) + 1; });
    scheduler.submit(request(2));
    waiter.join();
    CHECK(woke == static_cast<int>(apo::sched::WaitResult::changed) + 1);
    // The fake clock moving past the deadline wakes a waiter (no real time passes).
    std::atomic<bool> returned{false};
    const auto deadline = clock.now() + 10s;
    std::atomic<apo::sched::WaitResult> timed_result{apo::sched::WaitResult::changed};
    std::thread timed([&] {
      timed_result = scheduler.wait(deadline);
      returned = true;
    });
    clock.advance(5s);
    std::this_thread::sleep_for(20ms);
    const bool early = returned;
    clock.advance(5s);
    timed.join();
    CHECK_FALSE(early);
    CHECK(timed_result == apo::sched::WaitResult::timeout);
    // notify() wakes, close() wakes and refuses submits; queued requests stay.
    scheduler.notify();
    CHECK(scheduler.wait(std::nullopt) == apo::sched::WaitResult::changed);
    std::thread closer([&] { scheduler.close(); });
    CHECK(scheduler.wait(std::nullopt) == apo::sched::WaitResult::closed);
    closer.join();
    CHECK(scheduler.closed());
    CHECK_THROWS_MATCHES(
        scheduler.submit(request(3)), Error,
        Catch::Predicate<Error>([](const Error& e) { return e.code() == ErrorCode::Rejected; }));
    CHECK(scheduler.size() == 2);
    CHECK(scheduler.pop_batch(Take{}).batch.size() == 2);
    check_conservation(scheduler);
  }
  SECTION("a batch holds one grouping key, within the plan's limits") {
    FakeClock clock;
    TestType scheduler(clock);
    // a a b a a a (same priority), 2 GiB each
    const char* workflows[] = {"qwen_edit", "qwen_edit", "wan_alpha",
                               "qwen_edit", "qwen_edit", "qwen_edit"};
    for (int i = 0; i < 6; ++i) scheduler.submit(request(i + 1, workflows[i], 0, 2_GiB));
    CHECK(scheduler.size() == 6);

    auto popped = scheduler.pop_batch(Take{3, 100_GiB});
    REQUIRE(popped.batch.size() >= 1);
    CHECK(popped.batch.size() <= 3);
    CHECK(popped.batch.planned_size == 3);
    CHECK(popped.batch.requests.front().id == 1);  // the head: oldest at equal priority
    for (const auto& r : popped.batch.requests) CHECK(GroupKeyView(r) == popped.batch.key());
    std::int64_t bytes = 0;
    for (const auto& r : popped.batch.requests) bytes += r.memory_estimate_bytes;
    CHECK(popped.batch.memory_bytes == bytes);

    // Memory: 5 GiB holds two of the 2 GiB requests.
    auto limited = scheduler.pop_batch(Take{8, 5_GiB});
    CHECK(limited.batch.size() <= 2);
    CHECK(limited.batch.memory_bytes <= 5_GiB);
    check_conservation(scheduler);
  }
  SECTION("the head is never passed over for a smaller request") {
    FakeClock clock;
    TestType scheduler(clock);
    scheduler.submit(request(1, "qwen_edit", 0, 8_GiB));
    scheduler.submit(request(2, "qwen_edit", 0, 1_GiB));
    auto popped = scheduler.pop_batch(Take{8, 4_GiB});
    CHECK(popped.batch.empty());
    CHECK(scheduler.size() == 2);
    CHECK_FALSE(popped.retry_at);  // only freed memory helps
    auto later = scheduler.pop_batch(Take{8, 9_GiB});
    REQUIRE(later.batch.size() == 2);
    CHECK(later.batch.requests[0].id == 1);
    check_conservation(scheduler);
  }
  SECTION("the planner sees the head's group once per pop") {
    FakeClock clock;
    TestType scheduler(clock);
    clock.advance(5s);
    scheduler.submit(request(7, "qwen_edit", 0, 3_GiB));
    clock.advance(1s);
    scheduler.submit(request(8, "qwen_edit", 0, 3_GiB));
    clock.advance(1s);

    int calls = 0;
    BatchCandidate seen;
    std::string workflow;
    auto popped = scheduler.pop_batch([&](const BatchCandidate& c) {
      ++calls;
      seen = c;
      workflow = std::string(c.key.workflow);
      return BatchPlan::wait(c.now + 1s);
    });
    CHECK(calls == 1);
    CHECK(workflow == "qwen_edit");
    CHECK(seen.available == 2);
    CHECK(seen.head_memory_bytes == 3_GiB);
    CHECK(seen.head_submit_time == apo::Clock::time_point(5s));
    CHECK(seen.now == apo::Clock::time_point(7s));
    CHECK(popped.batch.empty());
    REQUIRE(popped.retry_at);
    CHECK(*popped.retry_at == apo::Clock::time_point(8s));
    CHECK(scheduler.size() == 2);

    // An empty queue never calls the planner.
    FakeClock other_clock;
    TestType empty(other_clock);
    empty.pop_batch([&](const BatchCandidate&) {
      ++calls;
      return BatchPlan::take(1, 0);
    });
    CHECK(calls == 1);
  }
  SECTION("cancel by id removes exactly that request") {
    FakeClock clock;
    TestType scheduler(clock);
    for (int i = 1; i <= 5; ++i) scheduler.submit(request(i));
    auto cancelled = scheduler.cancel(3);
    REQUIRE(cancelled);
    CHECK(cancelled->id == 3);
    CHECK_FALSE(scheduler.cancel(3));
    CHECK_FALSE(scheduler.cancel(99));
    CHECK(scheduler.size() == 4);

    std::vector<apo::RequestId> ids;
    while (scheduler.size() > 0) {
      for (const auto& r : scheduler.pop_batch(Take{2}).batch.requests) ids.push_back(r.id);
    }
    CHECK(ids == std::vector<apo::RequestId>{1, 2, 4, 5});
    CHECK(scheduler.stats().cancelled == 1);
    // The id is free again once its request has left.
    scheduler.submit(request(3));
    CHECK(scheduler.size() == 1);
    check_conservation(scheduler);
  }
  SECTION("bad requests are refused with the field named") {
    FakeClock clock;
    TestType scheduler(clock);
    auto bad = request(1);
    bad.width = 0;
    CHECK_THROWS_MATCHES(scheduler.submit(bad), Error, Catch::Predicate<Error>([](const Error& e) {
                           return e.code() == ErrorCode::InvalidArgument &&
                                  e.message().find("width") != std::string::npos &&
                                  e.context() == "request 1";
                         }));
    auto no_workflow = request(2, "");
    CHECK_THROWS_AS(scheduler.submit(no_workflow), Error);
    auto negative = request(3, "qwen_edit", 0, -1);
    CHECK_THROWS_AS(scheduler.submit(negative), Error);

    scheduler.submit(request(4));
    CHECK_THROWS_MATCHES(scheduler.submit(request(4)), Error,
                         Catch::Predicate<Error>([](const Error& e) {
                           return e.code() == ErrorCode::InvalidArgument &&
                                  e.message().find("already queued") != std::string::npos;
                         }));
    CHECK(scheduler.size() == 1);
    CHECK(scheduler.stats().submitted == 1);
    check_conservation(scheduler);
  }
  SECTION("a full queue rejects, and only while full") {
    FakeClock clock;
    SchedulerOptions options;
    options.max_queue_size = 3;
    TestType scheduler(clock, options);
    for (int i = 1; i <= 3; ++i) scheduler.submit(request(i));
    CHECK_THROWS_MATCHES(scheduler.submit(request(4)), Error,
                         Catch::Predicate<Error>([](const Error& e) {
                           return e.code() == ErrorCode::Rejected &&
                                  e.message().find("queue full") != std::string::npos &&
                                  e.message().find("max_queue_size") != std::string::npos;
                         }));
    CHECK(scheduler.size() == 3);
    CHECK(scheduler.stats().rejected == 1);
    scheduler.pop_batch(Take{1});
    scheduler.submit(request(4));
    CHECK(scheduler.size() == 3);
    check_conservation(scheduler);

    SchedulerOptions bad;
    bad.max_queue_size = 0;
    CHECK_THROWS_AS(TestType(clock, bad), Error);
  }
  SECTION("deadlines end requests TimedOut") {
    FakeClock clock;
    SchedulerOptions options;
    options.default_timeout = 60s;
    TestType scheduler(clock, options);

    auto soon = request(1);
    soon.deadline = apo::Clock::time_point(10s);
    scheduler.submit(soon);
    scheduler.submit(request(2));  // default: 60 s
    auto late = request(3);
    late.deadline = apo::Clock::time_point(600s);
    scheduler.submit(late);
    REQUIRE(scheduler.next_deadline());
    CHECK(*scheduler.next_deadline() == apo::Clock::time_point(10s));

    clock.advance(10s);
    auto expired = scheduler.expire();
    REQUIRE(expired.size() == 1);
    CHECK(expired[0].id == 1);
    CHECK(*scheduler.next_deadline() == apo::Clock::time_point(60s));

    // pop_batch expires before it forms a batch, and reports the expired requests.
    clock.advance(50s);
    auto popped = scheduler.pop_batch(Take{8});
    REQUIRE(popped.timed_out.size() == 1);
    CHECK(popped.timed_out[0].id == 2);
    REQUIRE(popped.batch.size() == 1);
    CHECK(popped.batch.requests[0].id == 3);

    // A wait plan's retry time is no later than the next deadline.
    auto waiting = request(4);
    waiting.deadline = clock.now() + 5s;
    scheduler.submit(waiting);
    auto held =
        scheduler.pop_batch([](const BatchCandidate& c) { return BatchPlan::wait(c.now + 30s); });
    REQUIRE(held.retry_at);
    CHECK(*held.retry_at == clock.now() + 5s);

    auto past = request(5);
    past.deadline = clock.now();
    CHECK_THROWS_MATCHES(scheduler.submit(past), Error, Catch::Predicate<Error>([](const Error& e) {
                           return e.code() == ErrorCode::TimedOut;
                         }));
    CHECK(scheduler.stats().timed_out == 3);
    check_conservation(scheduler);
  }
  SECTION("a planner that throws loses no request") {
    FakeClock clock;
    TestType scheduler(clock);
    auto soon = request(1);
    soon.deadline = apo::Clock::time_point(1s);
    scheduler.submit(soon);
    scheduler.submit(request(2));
    clock.advance(2s);
    CHECK_THROWS_AS(scheduler.pop_batch([](const BatchCandidate&) -> BatchPlan {
      throw Error(ErrorCode::Internal, "planner failed");
    }),
                    Error);
    CHECK(scheduler.size() == 1);
    auto expired = scheduler.expire();
    REQUIRE(expired.size() == 1);
    CHECK(expired[0].id == 1);
    CHECK(scheduler.pop_batch(Take{}).batch.size() == 1);
    check_conservation(scheduler);
  }
  SECTION("submit stamps the submit time from its clock") {
    FakeClock clock;
    TestType scheduler(clock);
    clock.advance(42s);
    auto r = request(1);
    r.submit_time = apo::Clock::time_point(1s);  // a caller's value is overwritten
    scheduler.submit(r);
    auto popped = scheduler.pop_batch(Take{1});
    REQUIRE(popped.batch.size() == 1);
    CHECK(popped.batch.requests[0].submit_time == apo::Clock::time_point(42s));
    CHECK(popped.batch.formed_at == apo::Clock::time_point(42s));
  }
}

// Random operations against a model of what must hold for every policy.
TEMPLATE_TEST_CASE("scheduler: random operations keep every request accounted for",
                   "[sched][conformance][property]", FifoScheduler, PriorityScheduler) {
  const auto seed = GENERATE(1u, 2u, 3u, 4u, 5u);
  std::mt19937_64 random(seed);
  FakeClock clock;
  SchedulerOptions options;
  options.max_queue_size = 200;
  TestType scheduler(clock, options);

  const char* workflows[] = {"qwen_edit", "wan_alpha", "newbie_anime"};
  std::map<apo::RequestId, int> ends;  // id -> times it ended
  std::set<apo::RequestId> queued;
  apo::RequestId next_id = 1;
  const auto ended = [&](apo::RequestId id) {
    ++ends[id];
    CHECK(queued.erase(id) == 1);
  };

  for (int step = 0; step < 3000; ++step) {
    const auto op = random() % 10;
    if (op < 5) {
      auto r = request(next_id++, workflows[random() % 3], static_cast<int>(random() % 10),
                       static_cast<std::int64_t>(1 + random() % 4) * apo::GiB);
      if (random() % 4 == 0) r.deadline = clock.now() + std::chrono::seconds(1 + random() % 20);
      try {
        scheduler.submit(r);
        queued.insert(r.id);
      } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::Rejected);
        ++ends[r.id];
      }
    } else if (op < 6 && !queued.empty()) {
      auto pick = queued.begin();
      std::advance(pick, static_cast<long>(random() % queued.size()));
      const auto id = *pick;
      auto cancelled = scheduler.cancel(id);
      REQUIRE(cancelled);
      CHECK(cancelled->id == id);
      ended(id);
    } else if (op < 9) {
      const Take plan{1 + random() % 8, static_cast<std::int64_t>(1 + random() % 12) * apo::GiB};
      auto popped = scheduler.pop_batch(plan);
      for (const auto& r : popped.timed_out) {
        CHECK(r.deadline);
        CHECK(*r.deadline <= clock.now());
        ended(r.id);
      }
      CHECK(popped.batch.size() <= plan.count);
      CHECK(popped.batch.memory_bytes <= plan.memory_bytes);
      for (const auto& r : popped.batch.requests) {
        CHECK(GroupKeyView(r) == popped.batch.key());
        CHECK((!r.deadline || *r.deadline > clock.now()));
        ended(r.id);
      }
    } else {
      clock.advance(std::chrono::milliseconds(random() % 3000));
    }
    if (step % 500 == 0) check_conservation(scheduler);
  }
  CHECK(scheduler.size() == queued.size());
  for (const auto& [id, count] : ends) CHECK(count == 1);
  check_conservation(scheduler);
}

TEMPLATE_TEST_CASE("scheduler: concurrent submits, cancels and pops lose nothing",
                   "[sched][conformance][threads]", FifoScheduler, PriorityScheduler) {
  FakeClock clock;
  SchedulerOptions options;
  options.max_queue_size = 100000;
  TestType scheduler(clock, options);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 2000;
  std::atomic<int> popped{0};
  std::atomic<int> cancelled{0};
  std::atomic<bool> submitting{true};

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const auto id = static_cast<apo::RequestId>(t * kPerThread + i + 1);
        scheduler.submit(request(id, i % 2 ? "qwen_edit" : "wan_alpha", i % 10));
        if (i % 7 == 0 && scheduler.cancel(id)) ++cancelled;
      }
    });
  }
  std::thread popper([&] {
    while (submitting || scheduler.size() > 0) {
      popped += static_cast<int>(scheduler.pop_batch(Take{4}).batch.size());
    }
  });
  for (auto& thread : threads) thread.join();
  submitting = false;
  popper.join();
  CHECK(popped + cancelled == kThreads * kPerThread);
  check_conservation(scheduler);
}

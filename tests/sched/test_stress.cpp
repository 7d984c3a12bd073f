// Stress: 8 threads submit (and cancel) 100k requests while a dispatcher places batches on two
// devices and a worker per device runs them. Run under tsan in CI. APO_STRESS_REQUESTS sets the
// request count for a longer run.

#include "apo_catch.hpp"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "apo/batch/memory_aware_batcher.hpp"
#include "apo/core/clock.hpp"
#include "apo/core/error.hpp"
#include "apo/sched/fifo_scheduler.hpp"
#include "apo/sched/placement.hpp"
#include "apo/sched/priority_scheduler.hpp"
#include "sched_test_support.hpp"

using apo::Error;
using apo::ErrorCode;
using apo::FakeClock;
using apo::RequestId;
using apo::batch::MemoryAwareBatcher;
using apo::sched::FifoScheduler;
using apo::sched::Placement;
using apo::sched::PriorityScheduler;
using apo::sched::SchedulerOptions;
using namespace sched_test;
using namespace apo::literals;

namespace {

std::size_t stress_requests() {
  if (const char* value = std::getenv("APO_STRESS_REQUESTS")) {
    const long long parsed = std::atoll(value);
    if (parsed > 0) return static_cast<std::size_t>(parsed);
  }
  return 100'000;
}

enum Ending { kCompleted, kRejected, kCancelled, kTimedOut, kEndings };

}  // namespace

TEMPLATE_TEST_CASE("stress: 8 submitting threads, every request ends exactly once",
                   "[sched][stress][threads]", PriorityScheduler, FifoScheduler) {
  constexpr int kSubmitters = 8;
  const std::size_t total = stress_requests();
  const std::size_t per_thread = total / kSubmitters;

  FakeClock clock;
  SchedulerOptions options;
  options.max_queue_size = 4096;
  TestType scheduler(clock, options);
  apo::batch::MemoryAwareBatcherOptions batcher_options;
  batcher_options.max_queue_delay = std::chrono::microseconds(50);
  MemoryAwareBatcher batcher(batcher_options);
  Placement placement(
      apo::sched::make_ledgers({{apo::Device::cuda(0), 20_GiB}, {apo::Device::cuda(1), 12_GiB}}));

  const std::size_t ids = per_thread * kSubmitters + 1;
  std::unique_ptr<std::atomic<int>[]> endings(new std::atomic<int>[ids]);
  for (std::size_t i = 0; i < ids; ++i) endings[i] = 0;
  std::atomic<std::size_t> counts[kEndings] = {};
  const auto end = [&](RequestId id, Ending how) {
    endings[id].fetch_add(1, std::memory_order_relaxed);
    counts[how].fetch_add(1, std::memory_order_relaxed);
  };

  std::atomic<int> submitters_left{kSubmitters};
  std::vector<std::thread> submitters;
  const char* workflows[] = {"qwen_edit", "qwen_relight", "wan_alpha", "newbie_anime"};
  for (int t = 0; t < kSubmitters; ++t) {
    submitters.emplace_back([&, t] {
      for (std::size_t i = 0; i < per_thread; ++i) {
        const RequestId id = static_cast<RequestId>(t * per_thread + i + 1);
        auto r = request(id, workflows[(i + t) % 4], static_cast<int>(i % 10),
                         static_cast<std::int64_t>(1 + i % 3) * apo::GiB);
        if (i % 10 == 3) r.deadline = clock.now() + std::chrono::microseconds(200);
        try {
          scheduler.submit(std::move(r));
        } catch (const Error& e) {
          end(id, e.code() == ErrorCode::TimedOut ? kTimedOut : kRejected);
          std::this_thread::yield();  // the queue is full: let the dispatcher catch up
        }
        if (i % 16 == 7) {
          const RequestId earlier = id - 5;
          if (scheduler.cancel(earlier)) end(earlier, kCancelled);
        }
      }
      --submitters_left;
    });
  }

  std::vector<std::jthread> workers;
  for (std::size_t device = 0; device < placement.device_count(); ++device) {
    workers.emplace_back([&, device](std::stop_token stop) {
      while (auto batch = placement.take(device, stop)) {
        clock.advance(std::chrono::microseconds(20));  // the batch "runs"
        for (const auto& r : batch->requests) end(r.id, kCompleted);
        placement.complete(device, *batch);
        batcher.record(apo::batch::BatchOutcome::of(*batch, std::chrono::microseconds(20)));
      }
    });
  }

  // The dispatcher: forms and places batches while any device has room; sleeps (moves the fake
  // clock) until a retry time when the batcher waits.
  std::thread dispatcher([&] {
    for (;;) {
      auto dispatched = placement.dispatch(scheduler, batcher);
      for (const auto& r : dispatched.timed_out) end(r.id, kTimedOut);
      if (dispatched.device) continue;
      if (dispatched.retry_at && *dispatched.retry_at > clock.now()) {
        clock.advance(*dispatched.retry_at - clock.now());
      }
      if (submitters_left == 0 && scheduler.size() == 0) break;
      std::this_thread::yield();
    }
  });

  for (auto& thread : submitters) thread.join();
  dispatcher.join();
  // Let the workers finish what was placed, then stop them.
  for (std::size_t device = 0; device < placement.device_count(); ++device) {
    while (placement.load(device).in_flight > 0) std::this_thread::yield();
  }
  for (auto& worker : workers) worker.request_stop();
  workers.clear();

  INFO("completed " << counts[kCompleted] << ", rejected " << counts[kRejected] << ", cancelled "
                    << counts[kCancelled] << ", timed out " << counts[kTimedOut]);
  std::size_t ended_once = 0;
  for (std::size_t id = 1; id < ids; ++id) {
    if (endings[id] != 1) FAIL_CHECK("request " << id << " ended " << endings[id] << " times");
    ended_once += endings[id] == 1;
  }
  CHECK(ended_once == per_thread * kSubmitters);
  const auto stats = scheduler.stats();
  CHECK(stats.queued == 0);
  CHECK(stats.dispatched == counts[kCompleted]);
  CHECK(stats.cancelled == counts[kCancelled]);
  CHECK(stats.rejected == counts[kRejected]);
  CHECK(stats.timed_out == counts[kTimedOut]);
  CHECK(counts[kCompleted] > 0);
}

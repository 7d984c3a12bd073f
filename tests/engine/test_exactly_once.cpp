// Every accepted request gets exactly one result, whatever eight submitting threads do at once:
// submits, cancels (queued and running), deadlines that pass as a thread moves the fake clock,
// a full queue, and a shutdown while all of it is in flight. The ledger never passes its budget.

#include "apo_catch.hpp"

#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "apo/core/clock.hpp"
#include "apo/core/error.hpp"
#include "apo/engine/workflow_engine.hpp"
#include "engine_test_support.hpp"

using apo::engine::Callbacks;
using apo::engine::Engine;
using apo::engine::Result;
using apo::engine::Status;
using apo::engine::Ticket;
using namespace engine_test;

TEST_CASE("exactly one result per accepted request, under eight submitting threads",
          "[engine][threads]") {
  ScratchDir dir;
  TestWorkflow::Options options;
  options.encoder = write_model(dir.path, "encoder", 1, 1);
  options.dit = write_model(dir.path, "dit", 1, 2);
  options.estimate_bytes = 2_MiB;
  TestWorkflow::Options other = options;
  other.name = "other_t2i";
  apo::FakeClock clock;
  auto config = engine_config(24_MiB, dir.path);
  config.scheduling.max_queue_size = 48;
  config.scheduling.max_queue_delay_ms = 5;  // batches may wait for the fake clock to fill
  Engine engine(config, clock, cpu_machine());
  engine.add_workflow(std::make_shared<TestWorkflow>(options));
  engine.add_workflow(std::make_shared<TestWorkflow>(other));

  constexpr int kThreads = 8;
  constexpr int kPerThread = 25;
  std::mutex mutex;
  std::map<RequestId, int> callbacks;  // id -> results seen through the callback
  std::vector<Ticket> tickets;
  std::atomic<int> refused{0};
  std::atomic<int> refused_otherwise{0};  // refusals that are not InvalidArgument
  std::atomic<bool> submitting{true};

  // The fake clock moves while requests are in flight: batches fill, deadlines pass.
  std::thread ticker([&] {
    while (submitting) {
      clock.advance(std::chrono::milliseconds(3));
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 random(static_cast<unsigned>(t));
      std::vector<RequestId> mine;
      for (int i = 0; i < kPerThread; ++i) {
        Request r = request("p" + std::to_string(i % 3), static_cast<std::uint64_t>(t * 100 + i),
                            i % 4 == 0 ? "other_t2i" : "test_t2i");
        r.priority = static_cast<int>(random() % 10);
        r.steps = 1 + static_cast<int>(random() % 3);
        if (i % 5 == 1) r.deadline = clock.now() + std::chrono::milliseconds(random() % 20);
        if (i % 11 == 7) r.width = 61;  // refused by the workflow: not accepted
        Callbacks cb;
        cb.on_result = [&](const Result& result) {
          const std::lock_guard lock(mutex);
          ++callbacks[result.id];
        };
        try {
          Ticket ticket = engine.submit(std::move(r), cb);
          mine.push_back(ticket.id());
          // Now and then wait for a result, so that work runs while others submit.
          if (i % 8 == 7) ticket.wait_for(std::chrono::seconds(30));
          const std::lock_guard lock(mutex);
          tickets.push_back(std::move(ticket));
        } catch (const apo::Error& e) {
          // Catch's assertions are not thread-safe: what the threads see is checked after.
          if (e.code() != apo::ErrorCode::InvalidArgument) ++refused_otherwise;
          ++refused;
        }
        if (!mine.empty() && random() % 4 == 0) {
          engine.cancel(mine[random() % mine.size()]);
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  // A shutdown that cancels whatever is left races with the tail of the work.
  std::thread stopper([&] { engine.shutdown(apo::engine::ShutdownMode::cancel); });
  stopper.join();
  submitting = false;
  ticker.join();

  const std::lock_guard lock(mutex);
  std::map<Status, int> by_status;
  for (const Ticket& ticket : tickets) {
    REQUIRE(ticket.ready());
    const Result& result = ticket.wait();
    CHECK(result.id == ticket.id());
    ++by_status[result.status];
    CHECK(callbacks[ticket.id()] == 1);
    if (result.status != Status::ok) CHECK_FALSE(result.message.empty());
  }
  CHECK(refused_otherwise == 0);
  CHECK(callbacks.size() == tickets.size());
  CHECK(static_cast<int>(tickets.size()) + refused == kThreads * kPerThread);
  INFO("ok " << by_status[Status::ok] << ", cancelled " << by_status[Status::cancelled]
             << ", timed out " << by_status[Status::timed_out] << ", rejected "
             << by_status[Status::rejected]);
  CHECK(by_status[Status::ok] > 0);
  CHECK(by_status[Status::failed] == 0);
  CHECK(by_status[Status::out_of_memory] == 0);
  const auto stats = engine.stats();
  CHECK(stats.submitted == tickets.size());
  CHECK(stats.completed + stats.cancelled + stats.timed_out + stats.rejected == tickets.size());
  CHECK(stats.queued == 0);
  CHECK(stats.running == 0);
  const auto memory = engine.memory(0);
  CHECK(memory.peak_used_bytes <= memory.budget_bytes);
  CHECK(memory.batches_bytes == 0);
}

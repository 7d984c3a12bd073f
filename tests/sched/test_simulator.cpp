// The simulator: traces, the guide's service model, and exact reports on small traces.

#include "apo_catch.hpp"

#include <chrono>
#include <map>
#include <set>

#include "apo/batch/fixed_batcher.hpp"
#include "apo/batch/memory_aware_batcher.hpp"
#include "apo/core/error.hpp"
#include "apo/sched/fifo_scheduler.hpp"
#include "apo/sched/priority_scheduler.hpp"
#include "apo/sched/simulator.hpp"
#include "sched_test_support.hpp"

using apo::Clock;
using apo::Error;
using apo::QualityLevel;
using apo::batch::Batch;
using apo::batch::FixedBatcher;
using apo::batch::MemoryAwareBatcher;
using apo::sched::FifoScheduler;
using apo::sched::Outcome;
using apo::sched::PriorityScheduler;
using apo::sched::SchedulerOptions;
using apo::sched::SimulationOptions;
using apo::sched::TraceEvent;
using apo::sched::TraceOptions;
using namespace sched_test;
using namespace apo::literals;

namespace {

auto make_fifo(SchedulerOptions options = {}) {
  return [options](const Clock& clock) { return FifoScheduler(clock, options); };
}
auto make_priority(SchedulerOptions options = {}) {
  return [options](const Clock& clock) { return PriorityScheduler(clock, options); };
}

TraceEvent submit_at(Clock::duration at, Request request) {
  TraceEvent event;
  event.at = Clock::time_point(at);
  event.request = std::move(request);
  return event;
}

double seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

}  // namespace

TEST_CASE("simulator: traces and the service model", "[sched][simulator]") {
  SECTION("deterministic Poisson arrivals over the guide's eight workflows") {
    TraceOptions options;
    options.requests = 5000;
    options.arrivals_per_s = 0.5;
    options.seed = 11;
    options.cancel_fraction = 0.1;
    const auto trace = apo::sched::make_trace(options);
    CHECK(apo::sched::make_trace(options).size() == trace.size());
    options.seed = 12;
    const auto other = apo::sched::make_trace(options);

    std::map<std::string, int> workflows;
    std::map<QualityLevel, int> qualities;
    std::set<apo::RequestId> submitted;
    int cancels = 0;
    Clock::time_point last_submit{};
    apo::RequestId expected_id = 1;
    for (std::size_t i = 0; i < trace.size(); ++i) {
      const auto& event = trace[i];
      if (i > 0) CHECK(trace[i - 1].at <= event.at);
      if (event.kind == TraceEvent::Kind::cancel) {
        CHECK(submitted.count(event.request.id) == 1);  // after its submit
        ++cancels;
        continue;
      }
      CHECK(event.request.id == expected_id++);
      apo::validate(event.request);
      ++workflows[event.request.workflow];
      ++qualities[event.request.quality];
      CHECK(event.request.steps == apo::sched::steps_for(event.request.quality));
      CHECK(event.request.memory_estimate_bytes > 0);
      CHECK(event.request.priority < 10);
      submitted.insert(event.request.id);
      last_submit = event.at;
    }
    CHECK(submitted.size() == 5000);
    CHECK(workflows.size() == 8);
    for (const auto& [name, count] : workflows) {
      CHECK(apo::sched::find_workflow(name));
      CHECK(count == Approx(5000 / 8).epsilon(0.2));
    }
    CHECK(qualities[QualityLevel::balanced] == Approx(2500).epsilon(0.1));
    CHECK(cancels == Approx(500).epsilon(0.25));
    // Mean gap 1 / rate.
    CHECK(seconds(last_submit.time_since_epoch()) / 5000 == Approx(2.0).epsilon(0.05));
    // Another seed, another trace.
    CHECK(other[0].at != trace[0].at);

    TraceOptions bad;
    bad.arrivals_per_s = 0;
    CHECK_THROWS_AS(apo::sched::make_trace(bad), Error);
    bad = {};
    bad.workflow_weights = {1.0, 2.0};
    CHECK_THROWS_AS(apo::sched::make_trace(bad), Error);
    bad = {};
    bad.cancel_fraction = 2;
    CHECK_THROWS_AS(apo::sched::make_trace(bad), Error);
  }
  SECTION("the guide's times, steps and batch cost") {
    Batch batch;
    batch.requests.push_back(request(1, "qwen_edit"));
    CHECK(seconds(apo::sched::guide_service_time(batch)) == Approx(22.0));
    for (int i = 2; i <= 4; ++i) batch.requests.push_back(request(i, "qwen_edit"));
    CHECK(seconds(apo::sched::guide_service_time(batch)) == Approx(22.0 * (1 + 0.6 * 3)));
    Batch fine;
    fine.requests.push_back(request(1, "hunyuan_t2v"));
    fine.requests[0].steps = 75;
    CHECK(seconds(apo::sched::guide_service_time(fine)) == Approx(110.0 * 2.5));
    Batch unknown;
    unknown.requests.push_back(request(1, "my_workflow"));
    CHECK_THROWS_AS(apo::sched::guide_service_time(unknown), Error);
    CHECK(apo::sched::guide_workflows().size() == 8);
  }
}

TEST_CASE("simulator: runs and reports", "[sched][simulator]") {
  SECTION("exact figures on a small trace") {
    // Three qwen_edit requests at 0, 1 and 2 s on one device; batches of up to 8, no waiting.
    std::vector<TraceEvent> trace{submit_at(0s, request(1)), submit_at(1s, request(2)),
                                  submit_at(2s, request(3))};
    FixedBatcher batcher(8);
    const auto report = apo::sched::simulate(trace, make_fifo(), batcher, SimulationOptions{});
    // Request 1 runs alone (0 to 22 s); 2 and 3 run together (22 to 57.2 s).
    REQUIRE(report.batches.size() == 2);
    CHECK(report.batches[0].ids == std::vector<apo::RequestId>{1});
    CHECK(report.batches[1].ids == std::vector<apo::RequestId>{2, 3});
    CHECK(seconds(report.batches[1].start.time_since_epoch()) == Approx(22.0));
    CHECK(seconds(report.batches[1].end.time_since_epoch()) == Approx(57.2));
    CHECK(report.completed == 3);
    CHECK(report.wait_p50_s == Approx(20.0));
    CHECK(report.wait_max_s == Approx(21.0));
    CHECK(report.wait_p99_s == Approx(21.0));
    CHECK(report.makespan_s == Approx(57.2));
    CHECK(report.throughput_per_hour == Approx(3 * 3600 / 57.2));
    CHECK(report.mean_batch_size == Approx(1.5));
    CHECK(report.batch_fill == Approx((1.0 / 8 + 2.0 / 8) / 2));
    for (const auto& r : report.requests) CHECK(r.outcome == Outcome::completed);
  }
  SECTION("the batcher's fill delay gathers a fuller batch") {
    std::vector<TraceEvent> trace;
    for (int i = 0; i < 4; ++i)
      trace.push_back(submit_at(std::chrono::milliseconds(10 * i), request(i + 1)));
    apo::batch::MemoryAwareBatcherOptions options;
    options.max_queue_delay = 50ms;
    MemoryAwareBatcher batcher(options);
    const auto report = apo::sched::simulate(trace, make_priority(), batcher, SimulationOptions{});
    REQUIRE(report.batches.size() == 1);
    CHECK(report.batches[0].ids.size() == 4);
    CHECK(report.batches[0].start == Clock::time_point(50ms));
    CHECK(report.wait_max_s == Approx(0.05));
  }
  SECTION("rejections, deadlines, cancels and the horizon are reported") {
    std::vector<TraceEvent> trace;
    trace.push_back(submit_at(0s, request(1, "hunyuan_t2v", 0, 6_GiB)));
    trace.push_back(submit_at(0s, request(2, "hunyuan_t2v", 0, 30_GiB)));  // fits no device
    auto hurried = request(3, "qwen_edit", 0, 1_GiB);
    hurried.deadline = Clock::time_point(5s);
    trace.push_back(submit_at(1s, hurried));  // the device is busy until 110 s
    trace.push_back(submit_at(2s, request(4, "qwen_edit")));
    trace.push_back(submit_at(3s, request(5, "qwen_edit")));  // the queue holds 2
    TraceEvent cancel;
    cancel.kind = TraceEvent::Kind::cancel;
    cancel.at = Clock::time_point(10s);
    cancel.request.id = 4;
    trace.push_back(cancel);
    trace.push_back(submit_at(20s, request(6, "qwen_edit")));

    SchedulerOptions options;
    options.max_queue_size = 2;
    FixedBatcher batcher(4);
    SimulationOptions sim;
    sim.horizon = 100s;
    const auto report = apo::sched::simulate(trace, make_priority(options), batcher, sim);
    const auto outcome = [&](apo::RequestId id) { return report.requests.at(id - 1).outcome; };
    CHECK(outcome(1) == Outcome::running);
    CHECK(outcome(2) == Outcome::rejected);
    CHECK(report.requests[1].reason == "no_device_fits");
    CHECK(outcome(3) == Outcome::timed_out);
    CHECK(outcome(4) == Outcome::cancelled);
    CHECK(outcome(5) == Outcome::rejected);
    CHECK(report.requests[4].reason == "queue_full");
    CHECK(outcome(6) == Outcome::queued);
    CHECK(report.submitted == 6);
    CHECK(report.rejected == 2);
    CHECK(report.rejections.at("no_device_fits") == 1);
    CHECK(report.rejections.at("queue_full") == 1);
    CHECK(report.timed_out == 1);
    CHECK(report.cancelled == 1);
    CHECK(report.running == 1);
    CHECK(report.queued == 1);
    CHECK(report.completed == 0);
  }
  SECTION("grouping fills batches that FIFO cannot on a mixed trace") {
    TraceOptions options;
    options.requests = 400;
    options.arrivals_per_s = 0.05;
    options.seed = 3;
    const auto trace = apo::sched::make_trace(options);
    SimulationOptions sim;
    sim.devices = {{apo::Device::cuda(0), 20_GiB}, {apo::Device::cuda(1), 20_GiB}};
    MemoryAwareBatcher fifo_batcher;
    MemoryAwareBatcher priority_batcher;
    const auto fifo = apo::sched::simulate(trace, make_fifo(), fifo_batcher, sim);
    const auto grouped = apo::sched::simulate(trace, make_priority(), priority_batcher, sim);
    CHECK(fifo.completed == 400);
    CHECK(grouped.completed == 400);
    CHECK(grouped.mean_batch_size > 1.5 * fifo.mean_batch_size);
    CHECK(grouped.makespan_s < fifo.makespan_s);

    // The same inputs give the same report.
    MemoryAwareBatcher again_batcher;
    const auto again = apo::sched::simulate(trace, make_priority(), again_batcher, sim);
    CHECK(again.makespan_s == grouped.makespan_s);
    CHECK(again.wait_p99_s == grouped.wait_p99_s);
    CHECK(again.batches.size() == grouped.batches.size());
  }
}

// Properties over random traces, for every scheduler and batcher pair: each request ends exactly
// once (or is still queued), no request is in two batches, every batch shares one grouping key
// and fits the memory budget, the policy's order holds, and no request waits past its bound.

#include "apo_catch.hpp"

#include <algorithm>
#include <chrono>
#include <map>
#include <tuple>
#include <unordered_map>

#include "apo/batch/fixed_batcher.hpp"
#include "apo/batch/memory_aware_batcher.hpp"
#include "apo/sched/fifo_scheduler.hpp"
#include "apo/sched/priority_scheduler.hpp"
#include "apo/sched/simulator.hpp"

using apo::Clock;
using apo::RequestId;
using apo::batch::FixedBatcher;
using apo::batch::GroupKeyView;
using apo::batch::MemoryAwareBatcher;
using apo::sched::BatchRecord;
using apo::sched::FifoScheduler;
using apo::sched::Outcome;
using apo::sched::PriorityScheduler;
using apo::sched::RequestRecord;
using apo::sched::SchedulerOptions;
using apo::sched::SimulationOptions;
using apo::sched::SimulationReport;
using apo::sched::TraceOptions;
using namespace apo::literals;
using namespace std::chrono_literals;

namespace {

constexpr Clock::duration kFillDelay = 200ms;

SchedulerOptions scheduler_options() {
  SchedulerOptions options;
  options.max_queue_size = 60;
  options.priority_levels = 10;
  options.aging_bound = 900s;  // 100 s a level
  return options;
}

struct Fixed {
  static FixedBatcher make() { return FixedBatcher(4); }
};
struct MemoryAware {
  static MemoryAwareBatcher make() {
    apo::batch::MemoryAwareBatcherOptions options;
    options.max_queue_delay = kFillDelay;
    return MemoryAwareBatcher(options);
  }
};

// The order each policy promises: smaller first.
using OrderKey = std::tuple<std::int64_t, std::uint64_t>;

OrderKey priority_key(const RequestRecord& r, const SchedulerOptions& options) {
  const auto step =
      options.aging_bound.count() / static_cast<std::int64_t>(options.priority_levels - 1);
  return {r.submitted.time_since_epoch().count() - r.request.priority * step, r.submit_seq};
}
OrderKey fifo_key(const RequestRecord& r, const SchedulerOptions&) {
  return {r.submitted.time_since_epoch().count(), r.submit_seq};
}

bool queued_at(const RequestRecord& r, std::uint64_t seq) {
  return r.submit_seq < seq && (!r.left_queue_seq || *r.left_queue_seq > seq);
}

template <class Scheduler>
constexpr bool kIsPriority = std::is_same_v<Scheduler, PriorityScheduler>;

template <class Scheduler>
void check_report(const SimulationReport& report, const SimulationOptions& sim,
                  const SchedulerOptions& options, Clock::duration fill_delay) {
  const auto key = [&](const RequestRecord& r) {
    return kIsPriority<Scheduler> ? priority_key(r, options) : fifo_key(r, options);
  };
  std::unordered_map<RequestId, const RequestRecord*> by_id;
  for (const auto& r : report.requests) by_id.emplace(r.request.id, &r);

  // Every request ended exactly once: nothing is left queued or running without a horizon, and
  // each outcome agrees with the record's batch.
  std::size_t ended = 0;
  for (const auto& r : report.requests) {
    switch (r.outcome) {
      case Outcome::completed:
        REQUIRE(r.batch);
        REQUIRE(r.started);
        REQUIRE(r.finished);
        ++ended;
        break;
      case Outcome::rejected:
      case Outcome::cancelled:
      case Outcome::timed_out:
        CHECK_FALSE(r.batch);
        REQUIRE(r.left_queue);
        ++ended;
        break;
      case Outcome::queued:
      case Outcome::running:
        FAIL("request " << r.request.id << " never ended");
    }
    if (r.outcome == Outcome::timed_out && r.left_queue) {
      CHECK(r.request.deadline);
      CHECK(*r.left_queue >= *r.request.deadline);
    }
  }
  CHECK(ended == report.submitted);
  CHECK(report.completed + report.rejected + report.cancelled + report.timed_out ==
        report.submitted);

  // No request in two batches; each batch one key, within budget, the plan's size.
  std::map<RequestId, int> appearances;
  for (std::size_t b = 0; b < report.batches.size(); ++b) {
    const BatchRecord& batch = report.batches[b];
    REQUIRE_FALSE(batch.ids.empty());
    CHECK(batch.ids.size() <= batch.planned_size);
    const RequestRecord& head = *by_id.at(batch.ids.front());
    std::int64_t bytes = 0;
    for (const RequestId id : batch.ids) {
      ++appearances[id];
      const RequestRecord& r = *by_id.at(id);
      CHECK(r.batch == b);
      CHECK(GroupKeyView(r.request) == GroupKeyView(head.request));
      bytes += r.request.memory_estimate_bytes;
    }
    CHECK(bytes == batch.memory_bytes);
    // Batches running at once on a device share its budget.
    std::int64_t concurrent = 0;
    for (const BatchRecord& other : report.batches) {
      if (other.device == batch.device && other.start <= batch.start && other.end > batch.start) {
        concurrent += other.memory_bytes;
      }
    }
    CHECK(concurrent <= sim.devices.at(batch.device).budget_bytes);
  }
  for (const auto& [id, count] : appearances) CHECK(count == 1);

  // Order: the head leads everything still queued; the rest follow the head in the policy's
  // order (priority: the best of the head's group; FIFO: the run after the head).
  const auto level_step =
      options.aging_bound / static_cast<std::int64_t>(options.priority_levels - 1);
  for (std::size_t b = 0; b < report.batches.size(); ++b) {
    const BatchRecord& batch = report.batches[b];
    const RequestRecord& head = *by_id.at(batch.ids.front());
    const RequestRecord& last = *by_id.at(batch.ids.back());
    for (std::size_t i = 1; i < batch.ids.size(); ++i) {
      CHECK(key(*by_id.at(batch.ids[i - 1])) < key(*by_id.at(batch.ids[i])));
    }
    for (const auto& q : report.requests) {
      if (!queued_at(q, batch.seq) || q.batch == b) continue;
      CHECK(key(head) < key(q));
      if constexpr (kIsPriority<Scheduler>) {
        if (GroupKeyView(q.request) == GroupKeyView(head.request)) CHECK(key(last) < key(q));
        // In words: a request of higher priority than the head is left only if the head had
        // waited longer by at least a level's wait per level of difference.
        if (q.request.priority > head.request.priority) {
          CHECK((q.submitted - head.submitted) >=
                (q.request.priority - head.request.priority) * level_step);
        }
      } else {
        CHECK_FALSE((key(head) < key(q) && key(q) < key(last)));
      }
    }
  }

  // The wait bound (one device, one batch at a time): a request waits at most
  // (N + 1) × (longest batch + fill delay), N = requests ahead of it in the policy's order that
  // were still queued when it arrived or arrived later.
  if (sim.devices.size() != 1 || sim.placement.batches_per_device != 1) return;
  Clock::duration longest{};
  for (const auto& batch : report.batches) longest = std::max(longest, batch.end - batch.start);
  for (const auto& r : report.requests) {
    if (r.outcome != Outcome::completed) continue;
    std::int64_t ahead = 0;
    for (const auto& other : report.requests) {
      if (&other == &r || !(key(other) < key(r))) continue;
      if (other.outcome == Outcome::rejected) continue;
      if (other.left_queue_seq && *other.left_queue_seq < r.submit_seq) continue;
      ++ahead;
    }
    const Clock::duration bound = (ahead + 1) * (longest + fill_delay);
    CHECK(*r.started - r.submitted <= bound);
  }
}

// The devices of a run: one large, one small (some requests fit no device, batches are small),
// or two of different sizes.
SimulationOptions devices_of(int setup) {
  SimulationOptions sim;
  switch (setup) {
    case 0:
      sim.devices = {{apo::Device::cuda(0), 20_GiB}};
      break;
    case 1:
      sim.devices = {{apo::Device::cuda(0), 6_GiB}};
      break;
    default:
      sim.devices = {{apo::Device::cuda(0), 20_GiB}, {apo::Device::cuda(1), 14_GiB}};
  }
  return sim;
}

template <class Scheduler, class BatcherFactory>
void run_properties(int setup, std::uint64_t seed) {
  const SimulationOptions sim = devices_of(setup);
  TraceOptions trace_options;
  trace_options.requests = 400;
  trace_options.arrivals_per_s = 0.02 * static_cast<double>(sim.devices.size()) + 0.02;  // overload
  trace_options.seed = seed;
  trace_options.deadline_fraction = 0.2;
  trace_options.deadline_after = 20min;
  trace_options.cancel_fraction = 0.1;
  trace_options.cancel_after = 3min;
  const auto trace = apo::sched::make_trace(trace_options);

  const SchedulerOptions options = scheduler_options();
  auto batcher = BatcherFactory::make();
  const auto report = apo::sched::simulate(
      trace, [&](const Clock& clock) { return Scheduler(clock, options); }, batcher, sim);
  INFO("seed " << seed << ", setup " << setup << ": completed " << report.completed << ", rejected "
               << report.rejected << ", timed out " << report.timed_out);
  CHECK(report.completed > 0);
  if (setup == 1) CHECK(report.rejections.count("no_device_fits") == 1);
  check_report<Scheduler>(report, sim, options,
                          std::is_same_v<BatcherFactory, MemoryAware> ? kFillDelay : 0s);
}

}  // namespace

TEMPLATE_PRODUCT_TEST_CASE("properties hold over random traces", "[sched][property]", std::tuple,
                           ((PriorityScheduler, Fixed), (PriorityScheduler, MemoryAware),
                            (FifoScheduler, Fixed), (FifoScheduler, MemoryAware))) {
  using Scheduler = std::tuple_element_t<0, TestType>;
  using Batcher = std::tuple_element_t<1, TestType>;
  const int setup = GENERATE(0, 1, 2);
  const std::uint64_t seed = GENERATE(1u, 2u, 3u);
  run_properties<Scheduler, Batcher>(setup, seed);
}

// bench_sched: the scheduler's submit + pop cost at 1k, 10k and 100k queued requests against
// the guide's RequestScheduler algorithm, and the simulator's throughput and waits for grouped
// priority scheduling against FIFO on a mixed trace.

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <ctime>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "apo/batch/batch.hpp"
#include "apo/batch/memory_aware_batcher.hpp"
#include "apo/core/clock.hpp"
#include "apo/monitor/benchmark.hpp"
#include "apo/sched/fifo_scheduler.hpp"
#include "apo/sched/priority_scheduler.hpp"
#include "apo/sched/simulator.hpp"

namespace {

using apo::Clock;
using apo::Request;
using apo::RequestId;
using apo::batch::BatchCandidate;
using apo::batch::BatchPlan;
using apo::batch::GroupKey;
using apo::batch::GroupKeyEqual;
using apo::batch::GroupKeyHash;
using apo::batch::GroupKeyView;
using namespace apo::literals;

constexpr std::size_t kBatch = 8;

// The guide's RequestScheduler (performance-tuning-guide.md, "Request Grouping and Scheduling"),
// written as it is, with the benefit of the doubt where C++ allows. Entries hold a score and a
// pointer, as a Python list holds references. add_request keeps the queue sorted by priority,
// highest first: the guide appends and re-sorts, and Python's sort finds the sorted run and
// merges the new element in O(n), which a binary search and an insert are here.
// create_optimal_batch groups the whole queue by (workflow, resolution, quality), takes the
// group of the first (highest-priority) request ("select_best_batch" is not given), then removes
// each chosen request with a pass over the queue.
class GuideRequestScheduler {
 public:
  void add_request(Request request) {
    const int score = request.priority;
    const auto at = std::upper_bound(queue_.begin(), queue_.end(), score,
                                     [](int s, const Entry& e) { return s > e.score; });
    queue_.insert(at, Entry{score, std::make_unique<Request>(std::move(request))});
  }

  /// @brief Fills an empty queue at once (sorting once), to reach a size quickly.
  void prefill(std::vector<Request> requests) {
    for (auto& r : requests)
      queue_.push_back({r.priority, std::make_unique<Request>(std::move(r))});
    std::stable_sort(queue_.begin(), queue_.end(),
                     [](const Entry& a, const Entry& b) { return a.score > b.score; });
  }

  std::vector<Request> create_optimal_batch(std::size_t max_batch_size) {
    if (queue_.empty()) return {};
    // group_similar_requests: every queued request, up to max_batch_size per group.
    std::unordered_map<GroupKeyView, std::vector<const Request*>, GroupKeyHash, GroupKeyEqual>
        groups;
    for (const Entry& e : queue_) {
      auto& group = groups[GroupKeyView(*e.request)];
      if (group.size() < max_batch_size) group.push_back(e.request.get());
    }
    const auto& best = groups.at(GroupKeyView(*queue_.front().request));
    std::vector<RequestId> chosen;
    for (const Request* r : best) chosen.push_back(r->id);
    std::vector<Request> batch;
    for (const RequestId id : chosen) {
      // self.request_queue = [(p, r) for p, r in self.request_queue if r != request]
      const auto at = std::find_if(queue_.begin(), queue_.end(),
                                   [&](const Entry& e) { return e.request->id == id; });
      batch.push_back(std::move(*at->request));
      std::erase_if(queue_, [&](const Entry& e) { return e.request->id == id; });
    }
    return batch;
  }

  std::size_t size() const { return queue_.size(); }

 private:
  struct Entry {
    int score;
    std::unique_ptr<Request> request;
  };
  std::vector<Entry> queue_;
};

// Requests over the guide's eight workflows, two shapes and three quality levels (48 grouping
// keys), with random priorities: a cheap generator so both sides pay the same to make them.
class RequestSource {
 public:
  RequestSource() {
    const auto workflows = apo::sched::guide_workflows();
    for (std::size_t i = 0; i < 4096; ++i) {
      const auto& w = workflows[next() % workflows.size()];
      Request r;
      r.workflow = std::string(w.name);
      const bool alternate = next() % 2;
      r.width = alternate ? w.alternate_width : w.width;
      r.height = alternate ? w.alternate_height : w.height;
      r.frames = w.frames;
      r.quality = static_cast<apo::QualityLevel>(next() % 3);
      r.priority = static_cast<int>(next() % 10);
      r.memory_estimate_bytes = w.memory_bytes;
      templates_.push_back(std::move(r));
    }
  }

  Request next_request() {
    Request r = templates_[next() % templates_.size()];
    r.id = ++last_id_;
    return r;
  }

 private:
  std::uint64_t next() {
    state_ = state_ * 6364136223846793005ULL + 1442695040888963407ULL;
    return state_ >> 33;
  }
  std::uint64_t state_ = 42;
  RequestId last_id_ = 0;
  std::vector<Request> templates_;
};

// Median thread CPU time of `run()` over at least `min_runs` runs and `min_total_s` seconds,
// after a warm-up run. CPU time rather than wall time: the loop is single-threaded and CPU-bound,
// and on a machine shared with other work the wall clock also counts the time others ran.
template <class F>
double median_cpu_seconds(F&& run, int min_runs, double min_total_s) {
  const auto cpu_now = [] {
    timespec t{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
  };
  run();
  std::vector<double> times;
  double total = 0;
  while (static_cast<int>(times.size()) < min_runs || total < min_total_s) {
    const double start = cpu_now();
    run();
    times.push_back(cpu_now() - start);
    total += times.back();
  }
  std::nth_element(times.begin(), times.begin() + static_cast<std::ptrdiff_t>(times.size() / 2),
                   times.end());
  return times[times.size() / 2];
}

struct QueueCost {
  double per_request_ns = 0;    ///< one submit plus its share of the pop that took it
  double per_operation_ns = 0;  ///< per submit or pop
};

// Holds `queued` requests and times rounds of: pop a batch of up to 8 (one grouping key), then
// submit as many new requests, so the queue stays at its size.
template <class Queue, class Fill, class Submit, class Pop>
QueueCost measure(Queue& queue, std::size_t queued, std::size_t rounds, Fill fill, Submit submit,
                  Pop pop) {
  RequestSource source;
  std::vector<Request> initial;
  for (std::size_t i = 0; i < queued; ++i) initial.push_back(source.next_request());
  fill(queue, std::move(initial));
  std::size_t requests = 0;
  std::size_t operations = 0;
  const double seconds = median_cpu_seconds(
      [&] {
        requests = 0;
        operations = 0;
        for (std::size_t round = 0; round < rounds; ++round) {
          const std::size_t taken = pop(queue);
          for (std::size_t i = 0; i < taken; ++i) submit(queue, source.next_request());
          requests += taken;
          operations += taken + 1;
        }
      },
      3, 0.3);
  return {seconds * 1e9 / static_cast<double>(requests),
          seconds * 1e9 / static_cast<double>(operations)};
}

struct TakeEight {
  BatchPlan operator()(const BatchCandidate&) const { return BatchPlan::take(kBatch, 1LL << 60); }
};

template <class Scheduler>
QueueCost measure_scheduler(std::size_t queued, std::size_t rounds) {
  apo::sched::SchedulerOptions options;
  options.max_queue_size = queued + kBatch;
  Scheduler scheduler(apo::SteadyClock::instance(), options);
  return measure(
      scheduler, queued, rounds,
      [](Scheduler& s, std::vector<Request> requests) {
        for (auto& r : requests) s.submit(std::move(r));
      },
      [](Scheduler& s, Request r) { s.submit(std::move(r)); },
      [](Scheduler& s) {
        const auto popped = s.pop_batch(TakeEight{});
        apo::bench::do_not_optimize(popped.batch.requests.data());
        return popped.batch.size();
      });
}

QueueCost measure_guide(std::size_t queued, std::size_t rounds) {
  GuideRequestScheduler guide;
  return measure(
      guide, queued, rounds,
      [](GuideRequestScheduler& g, std::vector<Request> requests) {
        g.prefill(std::move(requests));
      },
      [](GuideRequestScheduler& g, Request r) { g.add_request(std::move(r)); },
      [](GuideRequestScheduler& g) {
        const auto batch = g.create_optimal_batch(kBatch);
        apo::bench::do_not_optimize(batch.data());
        return batch.size();
      });
}

void queue_cases(apo::bench::Report& report, bool quick) {
  struct Size {
    std::size_t queued;
    std::size_t rounds;
    std::size_t guide_rounds;
  };
  const std::vector<Size> sizes =
      quick ? std::vector<Size>{{1000, 2000, 50}, {10000, 2000, 5}}
            : std::vector<Size>{{1000, 20000, 2000}, {10000, 20000, 200}, {100000, 20000, 20}};
  for (const Size& size : sizes) {
    const QueueCost guide = measure_guide(size.queued, size.guide_rounds);
    const QueueCost priority =
        measure_scheduler<apo::sched::PriorityScheduler>(size.queued, size.rounds);
    const std::string queued = size.queued >= 1000 ? fmt::format("{}k", size.queued / 1000)
                                                   : fmt::format("{}", size.queued);
    using apo::bench::Better;
    report.add({fmt::format("submit+pop, {} queued: priority vs guide", queued), "time per request",
                priority.per_request_ns, "ns", guide.per_request_ns, Better::lower});
    report.add({fmt::format("submit+pop, {} queued: priority", queued), "time per operation",
                priority.per_operation_ns, "ns", std::nullopt, Better::lower});
  }
}

// The p99 queue wait of completed requests of priority 7 to 9: what priority buys.
double high_priority_p99_s(const apo::sched::SimulationReport& report) {
  std::vector<double> waits;
  for (const auto& r : report.requests) {
    if (r.outcome != apo::sched::Outcome::completed || r.request.priority < 7) continue;
    waits.push_back(std::chrono::duration<double>(*r.started - r.submitted).count());
  }
  if (waits.empty()) return 0;
  std::sort(waits.begin(), waits.end());
  const auto rank = static_cast<std::size_t>(std::ceil(0.99 * static_cast<double>(waits.size())));
  return waits[std::max<std::size_t>(rank, 1) - 1];
}

void simulation_cases(apo::bench::Report& report, bool quick) {
  // Two RTX 4090-class devices (20 GiB budgets) and the guide's eight workflows, evenly mixed
  // (48 grouping keys with two shapes and three quality levels), priorities 0 to 9, at three
  // loads: below FIFO's capacity (about 100 requests an hour here), above it, and far above.
  apo::sched::SimulationOptions sim;
  sim.devices = {{apo::Device::cuda(0), 20_GiB}, {apo::Device::cuda(1), 20_GiB}};
  for (const double rate_per_hour : {90.0, 150.0, 300.0}) {
    apo::sched::TraceOptions trace_options;
    trace_options.requests = quick ? 300 : 3000;
    trace_options.arrivals_per_s = rate_per_hour / 3600.0;
    trace_options.seed = 2024;
    const auto trace = apo::sched::make_trace(trace_options);

    apo::sched::SchedulerOptions options;
    options.max_queue_size = 100000;  // measure waits, not rejections
    apo::batch::MemoryAwareBatcher fifo_batcher;
    apo::batch::MemoryAwareBatcher grouped_batcher;
    const auto fifo = apo::sched::simulate(
        trace, [&](const Clock& c) { return apo::sched::FifoScheduler(c, options); }, fifo_batcher,
        sim);
    const auto grouped = apo::sched::simulate(
        trace, [&](const Clock& c) { return apo::sched::PriorityScheduler(c, options); },
        grouped_batcher, sim);

    using apo::bench::Better;
    const std::string load = fmt::format("{} req/h, 2 devices", rate_per_hour);
    report.add({fmt::format("simulated {}: grouped priority vs FIFO", load), "throughput",
                grouped.throughput_per_hour, "req/h", fifo.throughput_per_hour, Better::higher});
    report.add({fmt::format("simulated {}: grouped priority vs FIFO", load), "p99 queue wait",
                grouped.wait_p99_s, "s", fifo.wait_p99_s, Better::lower});
    report.add({fmt::format("simulated {}: grouped priority vs FIFO", load), "p50 queue wait",
                grouped.wait_p50_s, "s", fifo.wait_p50_s, Better::lower});
    report.add({fmt::format("simulated {}: grouped priority vs FIFO", load), "p99 wait, prio 7-9",
                high_priority_p99_s(grouped), "s", high_priority_p99_s(fifo), Better::lower});
    report.add({fmt::format("simulated {}: grouped priority vs FIFO", load), "max queue wait",
                grouped.wait_max_s, "s", fifo.wait_max_s, Better::lower});
    report.add({fmt::format("simulated {}: grouped priority vs FIFO", load), "mean batch size",
                grouped.mean_batch_size, "requests", fifo.mean_batch_size, Better::higher});
    report.add({fmt::format("simulated {}: grouped priority vs FIFO", load), "batch fill",
                grouped.batch_fill, "of plan", fifo.batch_fill, Better::higher});
  }
}

}  // namespace

int main(int argc, char** argv) {
  const auto options = apo::bench::parse_options(
      argc, argv,
      "Scheduler submit+pop cost against the guide's RequestScheduler, and simulated grouped "
      "priority scheduling against FIFO");
  apo::bench::Report report("bench_sched");
  queue_cases(report, options.quick);
  simulation_cases(report, options.quick);
  return apo::bench::finish(report, options);
}

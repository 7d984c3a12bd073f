// bench_sched: the scheduler's submit + pop cost at 10, 100, 1k, 10k and 100k queued requests
// against what a user would otherwise run: a textbook O(log n) grouped priority queue (std::map on
// (priority, sequence) plus a map from grouping key to its requests) and a Triton-style queue per
// priority level; the guide's RequestScheduler algorithm (O(n) per pop) is a reference row. Then
// the simulator: grouped priority scheduling against FIFO and against grouped FIFO, so that the
// effects of grouping and of priority are measured apart.

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <ctime>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
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

// A textbook grouped priority queue, as a competent user writes one with the standard library:
// requests in a std::map ordered by (priority, highest first; then submission), and a hash map
// from grouping key to that key's requests in the same order. The head is the map's first
// request; its batch is the first requests of its key. O(log n) per submit and per request
// taken, one mutex, no aging, no deadlines. With every request submitted at the same instant it
// forms exactly PriorityScheduler's batches (checked below).
class TextbookScheduler {
 public:
  void submit(Request request) {
    const std::lock_guard lock(mutex_);
    const Order order{-request.priority, next_seq_++};
    auto group = groups_.find(GroupKeyView(request));
    if (group == groups_.end()) {
      group = groups_.emplace(apo::batch::group_key(request), std::set<Order>{}).first;
    }
    group->second.insert(order);
    queue_.emplace(order, std::move(request));
  }

  std::vector<Request> pop_batch(std::size_t max_requests) {
    std::vector<Request> batch;
    const std::lock_guard lock(mutex_);
    if (queue_.empty()) return batch;
    const auto group = groups_.find(GroupKeyView(queue_.begin()->second));
    std::set<Order>& members = group->second;  // the head is its first member
    while (!members.empty() && batch.size() < max_requests) {
      batch.push_back(std::move(queue_.extract(*members.begin()).mapped()));
      members.erase(members.begin());
    }
    if (members.empty()) groups_.erase(group);
    return batch;
  }

  std::size_t size() const {
    const std::lock_guard lock(mutex_);
    return queue_.size();
  }

 private:
  struct Order {
    int neg_priority;
    std::uint64_t seq;
    friend auto operator<=>(const Order&, const Order&) = default;
  };
  mutable std::mutex mutex_;
  std::map<Order, Request> queue_;
  std::unordered_map<GroupKey, std::set<Order>, GroupKeyHash, GroupKeyEqual> groups_;
  std::uint64_t next_seq_ = 0;
};

// Triton's dynamic batcher with priority levels: a FIFO queue per level, served from the highest
// level; a batch is the head and the requests that follow it in queue order while they share its
// grouping key (Triton batches only equal shapes, and stops at the first request that differs).
// O(1) per submit, O(levels + batch) per pop; no aging, no grouping beyond adjacent requests.
class PerLevelQueues {
 public:
  explicit PerLevelQueues(std::size_t levels) : levels_(levels) {}

  void submit(Request request) {
    const std::lock_guard lock(mutex_);
    levels_[static_cast<std::size_t>(request.priority)].push_back(std::move(request));
    ++size_;
  }

  std::vector<Request> pop_batch(std::size_t max_requests) {
    std::vector<Request> batch;
    const std::lock_guard lock(mutex_);
    for (auto level = levels_.rbegin(); level != levels_.rend() && batch.size() < max_requests;
         ++level) {
      while (!level->empty() && batch.size() < max_requests) {
        if (!batch.empty() && GroupKeyView(level->front()) != GroupKeyView(batch.front())) {
          size_ -= batch.size();
          return batch;
        }
        batch.push_back(std::move(level->front()));
        level->pop_front();
      }
    }
    size_ -= batch.size();
    return batch;
  }

  std::size_t size() const {
    const std::lock_guard lock(mutex_);
    return size_;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<std::deque<Request>> levels_;
  std::size_t size_ = 0;
};

// Thread CPU time, in seconds. CPU time rather than wall time: the loop is single-threaded and
// CPU-bound, and on a machine shared with other work the wall clock also counts others' time.
double thread_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// One queue under test, held at a depth: `round()` pops a batch of up to 8 and submits as many
// new requests, and returns how many it popped.
struct QueueUnderTest {
  std::string name;
  std::size_t rounds_per_run;
  std::function<std::size_t()> round;
};

// Median thread CPU time per request of each queue, its runs (of rounds_per_run rounds) taken
// round-robin after a warm-up run each, until each has `min_runs` runs and `min_total_s` passed.
std::vector<double> interleaved_ns_per_request(std::vector<QueueUnderTest>& queues, int min_runs,
                                               double min_total_s) {
  std::vector<std::vector<double>> samples(queues.size());
  const auto run = [](QueueUnderTest& q) {
    std::size_t requests = 0;
    const double start = thread_cpu_seconds();
    for (std::size_t r = 0; r < q.rounds_per_run; ++r) requests += q.round();
    return (thread_cpu_seconds() - start) * 1e9 /
           static_cast<double>(std::max<std::size_t>(1, requests));
  };
  for (auto& q : queues) run(q);
  double total = 0;
  while (static_cast<int>(samples[0].size()) < min_runs || total < min_total_s) {
    for (std::size_t i = 0; i < queues.size(); ++i) {
      const double start = thread_cpu_seconds();
      samples[i].push_back(run(queues[i]));
      total += thread_cpu_seconds() - start;
    }
  }
  std::vector<double> medians;
  for (auto& s : samples) {
    std::nth_element(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(s.size() / 2), s.end());
    medians.push_back(s[s.size() / 2]);
  }
  return medians;
}

struct TakeEight {
  BatchPlan operator()(const BatchCandidate&) const { return BatchPlan::take(kBatch, 1LL << 60); }
};

// A scheduler's sequence of batches (request ids) as it drains `requests`, all submitted first.
template <class Submit, class Pop>
std::vector<std::vector<RequestId>> drain_order(const std::vector<Request>& requests,
                                                Submit&& submit, Pop&& pop) {
  for (const Request& r : requests) submit(r);
  std::vector<std::vector<RequestId>> batches;
  for (;;) {
    std::vector<Request> batch = pop();
    if (batch.empty()) break;
    std::vector<RequestId> ids;
    for (const Request& r : batch) ids.push_back(r.id);
    batches.push_back(std::move(ids));
  }
  return batches;
}

// Every request leaves exactly once, in batches of at most 8 that share one grouping key.
bool well_formed(const std::vector<Request>& requests,
                 const std::vector<std::vector<RequestId>>& batches) {
  std::unordered_map<RequestId, const Request*> by_id;
  for (const Request& r : requests) by_id.emplace(r.id, &r);
  std::unordered_set<RequestId> seen;
  for (const auto& batch : batches) {
    if (batch.empty() || batch.size() > kBatch) return false;
    for (const RequestId id : batch) {
      const auto found = by_id.find(id);
      if (found == by_id.end() || !seen.insert(id).second) return false;
      if (GroupKeyView(*found->second) != GroupKeyView(*by_id.at(batch.front()))) return false;
    }
  }
  return seen.size() == requests.size();
}

// Before timing: on one set of requests, all submitted at one instant (so that aging reorders
// nothing), PriorityScheduler must form the textbook queue's batches exactly; the Triton-style
// queue and the guide's algorithm must form well-formed ones.
void check_outputs(std::size_t count) {
  RequestSource source;
  std::vector<Request> requests;
  for (std::size_t i = 0; i < count; ++i) requests.push_back(source.next_request());

  apo::FakeClock clock;
  apo::sched::SchedulerOptions options;
  options.max_queue_size = count;
  apo::sched::PriorityScheduler priority(clock, options);
  const auto apo_batches = drain_order(
      requests, [&](const Request& r) { priority.submit(r); },
      [&] { return priority.pop_batch(TakeEight{}).batch.requests; });
  TextbookScheduler textbook;
  const auto textbook_batches = drain_order(
      requests, [&](const Request& r) { textbook.submit(r); },
      [&] { return textbook.pop_batch(kBatch); });
  PerLevelQueues levels(options.priority_levels);
  const auto level_batches = drain_order(
      requests, [&](const Request& r) { levels.submit(r); },
      [&] { return levels.pop_batch(kBatch); });
  GuideRequestScheduler guide;
  const auto guide_batches = drain_order(
      requests, [&](const Request& r) { guide.add_request(r); },
      [&] { return guide.create_optimal_batch(kBatch); });

  apo::bench::check_output(well_formed(requests, apo_batches) && apo_batches == textbook_batches,
                           "PriorityScheduler's batches differ from the textbook queue's");
  apo::bench::check_output(well_formed(requests, level_batches),
                           "the per-level queues formed a wrong batch");
  apo::bench::check_output(well_formed(requests, guide_batches),
                           "the guide's scheduler formed a wrong batch");
  std::printf(
      "output check, %zu requests: PriorityScheduler = textbook (%zu batches); per-level "
      "queues %zu batches; guide %zu batches\n",
      count, apo_batches.size(), level_batches.size(), guide_batches.size());
}

std::string depth_name(std::size_t queued) {
  return queued >= 1000 ? fmt::format("{}k", queued / 1000) : fmt::format("{}", queued);
}

void queue_cases(apo::bench::Report& report, bool quick) {
  check_outputs(quick ? 2000 : 20000);
  const std::vector<std::size_t> depths =
      quick ? std::vector<std::size_t>{10, 100, 1000}
            : std::vector<std::size_t>{10, 100, 1000, 10000, 100000};
  for (const std::size_t depth : depths) {
    // PriorityScheduler as the engine runs it: the steady clock, default options (aging on).
    apo::sched::SchedulerOptions options;
    options.max_queue_size = depth + kBatch;
    apo::sched::PriorityScheduler priority(apo::SteadyClock::instance(), options);
    // The same with a deadline on every request (an hour away): expiry's heap is kept too.
    apo::sched::SchedulerOptions expiring = options;
    expiring.default_timeout = std::chrono::hours(1);
    apo::sched::PriorityScheduler priority_deadlines(apo::SteadyClock::instance(), expiring);
    TextbookScheduler textbook;
    PerLevelQueues levels(options.priority_levels);
    GuideRequestScheduler guide;
    RequestSource priority_source, deadlines_source, textbook_source, levels_source, guide_source;
    std::vector<Request> initial;
    for (std::size_t i = 0; i < depth; ++i) initial.push_back(guide_source.next_request());
    for (std::size_t i = 0; i < depth; ++i) {
      priority.submit(priority_source.next_request());
      priority_deadlines.submit(deadlines_source.next_request());
      textbook.submit(textbook_source.next_request());
      levels.submit(levels_source.next_request());
    }
    guide.prefill(std::move(initial));

    // Rounds per run: about a millisecond or more of work for each.
    const std::size_t rounds = quick ? 500 : 2000;
    const std::size_t guide_rounds =
        std::max<std::size_t>(5, std::min<std::size_t>(rounds, 2'000'000 / (depth * 8)));
    std::vector<QueueUnderTest> queues{
        {"PriorityScheduler", rounds,
         [&] {
           const auto popped = priority.pop_batch(TakeEight{});
           for (std::size_t i = 0; i < popped.batch.size(); ++i)
             priority.submit(priority_source.next_request());
           return popped.batch.size();
         }},
        {"PriorityScheduler, deadlines", rounds,
         [&] {
           const auto popped = priority_deadlines.pop_batch(TakeEight{});
           for (std::size_t i = 0; i < popped.batch.size(); ++i)
             priority_deadlines.submit(deadlines_source.next_request());
           return popped.batch.size();
         }},
        {"textbook", rounds,
         [&] {
           const auto batch = textbook.pop_batch(kBatch);
           for (std::size_t i = 0; i < batch.size(); ++i)
             textbook.submit(textbook_source.next_request());
           return batch.size();
         }},
        {"per-level queues", rounds,
         [&] {
           const auto batch = levels.pop_batch(kBatch);
           for (std::size_t i = 0; i < batch.size(); ++i)
             levels.submit(levels_source.next_request());
           return batch.size();
         }},
        {"guide", guide_rounds,
         [&] {
           const auto batch = guide.create_optimal_batch(kBatch);
           for (std::size_t i = 0; i < batch.size(); ++i)
             guide.add_request(guide_source.next_request());
           return batch.size();
         }},
    };
    const std::vector<double> ns =
        interleaved_ns_per_request(queues, quick ? 3 : 9, quick ? 0.2 : 1.0);
    apo::bench::check_output(priority.size() == depth && priority_deadlines.size() == depth &&
                                 textbook.size() == depth && levels.size() == depth &&
                                 guide.size() == depth,
                             "a queue did not stay at its depth");

    using apo::bench::Better;
    const std::string queued = depth_name(depth);
    report.add(
        {fmt::format("submit+pop, {} queued: PriorityScheduler vs textbook std::map", queued),
         "time per request", ns[0], "ns", ns[2], Better::lower});
    report.add({fmt::format("submit+pop, {} queued: PriorityScheduler with deadlines vs textbook "
                            "std::map",
                            queued),
                "time per request", ns[1], "ns", ns[2], Better::lower});
    report.add({fmt::format("submit+pop, {} queued: PriorityScheduler vs per-level queues", queued),
                "time per request", ns[0], "ns", ns[3], Better::lower});
    report.add(
        {fmt::format("submit+pop, {} queued: PriorityScheduler vs guide (reference)", queued),
         "time per request", ns[0], "ns", ns[4], Better::lower});
  }
}

// The grouped FIFO baseline of the simulator: PriorityScheduler with priorities dropped at submit,
// so the head is the oldest request and its batch the next oldest of its key. Against plain FIFO
// (which batches only adjacent requests) it measures grouping; against PriorityScheduler,
// priority with aging.
class GroupedFifoScheduler {
 public:
  using Options = apo::sched::SchedulerOptions;
  GroupedFifoScheduler(const Clock& clock, const Options& options) : inner_(clock, options) {}

  void submit(Request request) {
    request.priority = 0;
    inner_.submit(std::move(request));
  }
  template <class Planner>
  apo::sched::PopResult pop_batch(Planner&& planner) {
    return inner_.pop_batch(std::forward<Planner>(planner));
  }
  std::optional<Request> cancel(RequestId id) { return inner_.cancel(id); }
  std::vector<Request> expire() { return inner_.expire(); }
  apo::sched::WaitResult wait(std::optional<Clock::time_point> until) { return inner_.wait(until); }
  void notify() { inner_.notify(); }
  void close() { inner_.close(); }
  bool closed() const { return inner_.closed(); }
  std::size_t size() const { return inner_.size(); }
  std::optional<Clock::time_point> next_deadline() const { return inner_.next_deadline(); }
  apo::sched::SchedulerStats stats() const { return inner_.stats(); }

 private:
  apo::sched::PriorityScheduler inner_;
};
static_assert(apo::sched::Scheduler<GroupedFifoScheduler>);

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
    const auto run = [&](auto make_scheduler) {
      apo::batch::MemoryAwareBatcher batcher;
      return apo::sched::simulate(trace, make_scheduler, batcher, sim);
    };
    const auto fifo = run([&](const Clock& c) { return apo::sched::FifoScheduler(c, options); });
    const auto grouped_fifo = run([&](const Clock& c) { return GroupedFifoScheduler(c, options); });
    const auto grouped =
        run([&](const Clock& c) { return apo::sched::PriorityScheduler(c, options); });
    for (const auto* r : {&fifo, &grouped_fifo, &grouped}) {
      apo::bench::check_output(r->completed == trace_options.requests,
                               "a simulated scheduler did not complete every request");
    }

    using apo::bench::Better;
    const std::string load = fmt::format("{} req/h, 2 devices", rate_per_hour);
    const auto compare = [&](const std::string& what, const apo::sched::SimulationReport& a,
                             const apo::sched::SimulationReport& b) {
      const std::string name = fmt::format("simulated {}: {}", load, what);
      report.add({name, "throughput", a.throughput_per_hour, "req/h", b.throughput_per_hour,
                  Better::higher});
      report.add({name, "p50 queue wait", a.wait_p50_s, "s", b.wait_p50_s, Better::lower});
      report.add({name, "p99 queue wait", a.wait_p99_s, "s", b.wait_p99_s, Better::lower});
      report.add({name, "p99 wait, prio 7-9", high_priority_p99_s(a), "s", high_priority_p99_s(b),
                  Better::lower});
      report.add({name, "max queue wait", a.wait_max_s, "s", b.wait_max_s, Better::lower});
      report.add({name, "mean batch size", a.mean_batch_size, "requests", b.mean_batch_size,
                  Better::higher});
    };
    // Grouping alone, priority alone, and both against FIFO.
    compare("grouped FIFO vs FIFO (grouping)", grouped_fifo, fifo);
    compare("grouped priority vs grouped FIFO (priority)", grouped, grouped_fifo);
    compare("grouped priority vs FIFO (both)", grouped, fifo);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const auto options = apo::bench::parse_options(
      argc, argv,
      "Scheduler submit+pop cost against a textbook grouped priority queue, Triton-style "
      "per-level queues and the guide's RequestScheduler; simulated grouped priority scheduling "
      "against FIFO and grouped FIFO");
  apo::bench::Report report("bench_sched");
  queue_cases(report, options.quick);
  simulation_cases(report, options.quick);
  return apo::bench::finish(report, options);
}

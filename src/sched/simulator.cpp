#include "apo/sched/simulator.hpp"

#include <cmath>
#include <numeric>
#include <random>

#include <fmt/format.h>

namespace apo::sched {

namespace {

// Service times follow the guide's RTX 4090 expectations (video 90–120 s, image 15–25 s);
// memory per request and the batch cost are modelling assumptions (see the header).
constexpr std::array<WorkflowProfile, 8> kGuideWorkflows{{
    {"hunyuan_t2v", 848, 480, 61, 480, 848, 110.0, 6 * GiB, 0.9},
    {"hunyuan_i2v", 848, 480, 61, 480, 848, 105.0, 6 * GiB + 512 * MiB, 0.9},
    {"wan_inpaint", 832, 480, 81, 480, 832, 100.0, 5 * GiB, 0.9},
    {"wan_alpha", 832, 480, 81, 480, 832, 95.0, 5 * GiB, 0.9},
    {"newbie_anime", 1024, 1024, 1, 832, 1216, 20.0, 3 * GiB / 2, 0.6},
    {"qwen_relight", 1024, 1024, 1, 832, 1216, 18.0, 2 * GiB, 0.6},
    {"qwen_edit", 1024, 1024, 1, 832, 1216, 22.0, 2 * GiB, 0.6},
    {"qwen_layered", 1024, 1024, 1, 832, 1216, 25.0, 5 * GiB / 2, 0.65},
}};

constexpr double kReferenceSteps = 30.0;

// Draws from std::mt19937_64 (whose output the standard fixes) with formulas of our own, so a
// seed gives the same trace with every standard library.
class Draw {
 public:
  explicit Draw(std::uint64_t seed) : engine_(seed) {}

  double unit() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }  // [0, 1)
  double exponential(double rate) { return -std::log1p(-unit()) / rate; }
  std::size_t below(std::size_t n) {
    return static_cast<std::size_t>(unit() * static_cast<double>(n));
  }
  bool chance(double p) { return unit() < p; }

  template <class Weights>
  std::size_t pick(const Weights& weights) {
    const double total = std::accumulate(std::begin(weights), std::end(weights), 0.0);
    double point = unit() * total;
    std::size_t i = 0;
    for (const double w : weights) {
      if (point < w) return i;
      point -= w;
      ++i;
    }
    return i - 1;
  }

 private:
  std::mt19937_64 engine_;
};

double percentile(std::vector<double>& sorted, double fraction) {
  if (sorted.empty()) return 0;
  const auto rank =
      static_cast<std::size_t>(std::ceil(fraction * static_cast<double>(sorted.size())));
  return sorted[std::clamp<std::size_t>(rank, 1, sorted.size()) - 1];
}

double seconds_between(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

}  // namespace

std::span<const WorkflowProfile> guide_workflows() {
  return kGuideWorkflows;
}

const WorkflowProfile* find_workflow(std::string_view name) {
  for (const auto& profile : kGuideWorkflows) {
    if (profile.name == name) return &profile;
  }
  return nullptr;
}

int steps_for(QualityLevel quality) {
  switch (quality) {
    case QualityLevel::speed_first:
      return 15;
    case QualityLevel::balanced:
      return 30;
    case QualityLevel::quality_first:
      return 75;
  }
  return 30;
}

Clock::duration guide_service_time(const Batch& batch) {
  if (batch.empty()) return Clock::duration::zero();
  const Request& first = batch.requests.front();
  const WorkflowProfile* profile = find_workflow(first.workflow);
  if (!profile) {
    throw Error(ErrorCode::InvalidArgument,
                fmt::format("workflow \"{}\" is not one of the guide's eight; give the simulator "
                            "a service_time for it",
                            first.workflow),
                describe(first));
  }
  int steps = 0;
  for (const Request& request : batch.requests) {
    steps = std::max(steps, request.steps.value_or(steps_for(request.quality)));
  }
  const double seconds = profile->service_s * (steps / kReferenceSteps) *
                         (1.0 + profile->batch_cost * static_cast<double>(batch.size() - 1));
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

void TraceOptions::validate() const {
  const auto bad = [](std::string message) {
    throw Error(ErrorCode::InvalidArgument, std::move(message), "trace");
  };
  if (!(arrivals_per_s > 0 && std::isfinite(arrivals_per_s))) {
    bad(fmt::format("arrivals_per_s must be > 0, got {}", arrivals_per_s));
  }
  if (!workflow_weights.empty() && workflow_weights.size() != kGuideWorkflows.size()) {
    bad(fmt::format("workflow_weights needs {} weights (one per guide workflow), got {}",
                    kGuideWorkflows.size(), workflow_weights.size()));
  }
  const auto check_weights = [&](std::span<const double> weights, std::string_view what) {
    double total = 0;
    for (const double w : weights) {
      if (!(w >= 0 && std::isfinite(w))) bad(fmt::format("{} must be >= 0, got {}", what, w));
      total += w;
    }
    if (!weights.empty() && !(total > 0)) bad(fmt::format("{} sum to 0", what));
  };
  check_weights(workflow_weights, "workflow_weights");
  check_weights(quality_weights, "quality_weights");
  for (const auto& [name, fraction] :
       {std::pair{"alternate_shape_fraction", alternate_shape_fraction},
        std::pair{"deadline_fraction", deadline_fraction},
        std::pair{"cancel_fraction", cancel_fraction}}) {
    if (!(fraction >= 0 && fraction <= 1))
      bad(fmt::format("{} must be 0 to 1, got {}", name, fraction));
  }
  if (priority_levels < 1) bad("priority_levels must be >= 1");
  if (deadline_after <= Clock::duration::zero()) bad("deadline_after must be > 0");
  if (cancel_after < Clock::duration::zero()) bad("cancel_after must be >= 0");
}

std::vector<TraceEvent> make_trace(const TraceOptions& options) {
  options.validate();
  Draw draw(options.seed);
  std::vector<double> workflow_weights = options.workflow_weights;
  if (workflow_weights.empty()) workflow_weights.assign(kGuideWorkflows.size(), 1.0);

  std::vector<TraceEvent> events;
  events.reserve(options.requests * 2);
  double at_s = 0;
  for (std::size_t i = 0; i < options.requests; ++i) {
    at_s += draw.exponential(options.arrivals_per_s);
    const WorkflowProfile& profile = kGuideWorkflows[draw.pick(workflow_weights)];
    TraceEvent event;
    event.at = Clock::time_point(
        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(at_s)));
    Request& r = event.request;
    r.id = i + 1;
    r.workflow = std::string(profile.name);
    const bool alternate = draw.chance(options.alternate_shape_fraction);
    r.width = alternate ? profile.alternate_width : profile.width;
    r.height = alternate ? profile.alternate_height : profile.height;
    r.frames = profile.frames;
    r.quality = static_cast<QualityLevel>(draw.pick(options.quality_weights));
    r.steps = steps_for(r.quality);
    r.guidance = r.quality == QualityLevel::speed_first     ? 6.0
                 : r.quality == QualityLevel::quality_first ? 9.0
                                                            : 7.5;
    r.priority = static_cast<int>(draw.below(options.priority_levels));
    r.seed = i + 1;
    r.memory_estimate_bytes = profile.memory_bytes;
    if (draw.chance(options.deadline_fraction)) r.deadline = event.at + options.deadline_after;
    const bool cancel = draw.chance(options.cancel_fraction);
    events.push_back(event);
    if (cancel) {
      TraceEvent cancel_event;
      cancel_event.kind = TraceEvent::Kind::cancel;
      cancel_event.at = event.at + options.cancel_after;
      cancel_event.request.id = r.id;
      events.push_back(std::move(cancel_event));
    }
  }
  // Submits were generated in time order; cancels are merged in after their submits.
  std::stable_sort(events.begin(), events.end(),
                   [](const TraceEvent& a, const TraceEvent& b) { return a.at < b.at; });
  return events;
}

namespace detail {

SimulationLedger::SimulationLedger(std::size_t expected_requests) {
  report_.requests.reserve(expected_requests);
  by_id_.reserve(expected_requests);
}

RequestRecord& SimulationLedger::record_of(RequestId id) {
  const auto found = by_id_.find(id);
  if (found == by_id_.end()) {
    fail(ErrorCode::Internal, "simulator: no record of request {}", id);
  }
  return report_.requests[found->second];
}

std::size_t SimulationLedger::submitted(const Request& request, Clock::time_point now) {
  RequestRecord record;
  record.request = request;
  record.request.submit_time = now;
  record.submitted = now;
  record.submit_seq = next_seq_++;
  report_.requests.push_back(std::move(record));
  const std::size_t index = report_.requests.size() - 1;
  // Later events of this id are this request's, unless refused() hands the id back.
  const auto [slot, inserted] = by_id_.try_emplace(request.id, index);
  displaced_ = inserted ? std::nullopt : std::optional<std::size_t>(slot->second);
  slot->second = index;
  return index;
}

void SimulationLedger::refused(std::size_t index, const Error& error, bool by_placement) {
  RequestRecord& record = report_.requests[index];
  if (displaced_) by_id_[record.request.id] = *displaced_;  // e.g. a duplicate of a queued id
  displaced_.reset();
  record.message = error.message();
  record.left_queue = record.submitted;
  record.left_queue_seq = record.submit_seq;
  if (error.code() == ErrorCode::TimedOut) {
    record.outcome = Outcome::timed_out;
    return;
  }
  record.outcome = Outcome::rejected;
  record.reason = by_placement                          ? "no_device_fits"
                  : error.code() == ErrorCode::Rejected ? "queue_full"
                                                        : "invalid";
}

void SimulationLedger::left_queue(RequestId id, Outcome outcome, Clock::time_point now) {
  RequestRecord& record = record_of(id);
  record.outcome = outcome;
  record.left_queue = now;
  record.left_queue_seq = next_seq_++;
}

std::size_t SimulationLedger::started(const Batch& batch, std::size_t device,
                                      Clock::time_point start, Clock::time_point end) {
  BatchRecord b;
  b.device = device;
  b.memory_bytes = batch.memory_bytes;
  b.planned_size = batch.planned_size;
  b.start = start;
  b.end = end;
  b.seq = next_seq_++;
  const std::size_t index = report_.batches.size();
  for (const Request& request : batch.requests) {
    b.ids.push_back(request.id);
    RequestRecord& record = record_of(request.id);
    record.outcome = Outcome::running;
    record.left_queue = start;
    record.left_queue_seq = b.seq;
    record.started = start;
    record.batch = index;
  }
  report_.batches.push_back(std::move(b));
  return index;
}

void SimulationLedger::finished(std::size_t index) {
  const BatchRecord& b = report_.batches[index];
  for (const RequestId id : b.ids) {
    RequestRecord& record = record_of(id);
    record.outcome = Outcome::completed;
    record.finished = b.end;
  }
}

SimulationReport SimulationLedger::finish() {
  SimulationReport& r = report_;
  std::vector<double> waits;
  std::optional<Clock::time_point> first_submit;
  std::optional<Clock::time_point> last_finish;
  for (const RequestRecord& record : r.requests) {
    ++r.submitted;
    if (!first_submit) first_submit = record.submitted;
    switch (record.outcome) {
      case Outcome::queued:
        ++r.queued;
        break;
      case Outcome::running:
        ++r.running;
        break;
      case Outcome::completed:
        ++r.completed;
        waits.push_back(seconds_between(record.submitted, *record.started));
        if (!last_finish || *record.finished > *last_finish) last_finish = record.finished;
        break;
      case Outcome::rejected:
        ++r.rejected;
        ++r.rejections[record.reason];
        break;
      case Outcome::cancelled:
        ++r.cancelled;
        break;
      case Outcome::timed_out:
        ++r.timed_out;
        break;
    }
  }
  if (first_submit && last_finish) {
    r.makespan_s = seconds_between(*first_submit, *last_finish);
    if (r.makespan_s > 0)
      r.throughput_per_hour = 3600.0 * static_cast<double>(r.completed) / r.makespan_s;
  }
  std::sort(waits.begin(), waits.end());
  r.wait_p50_s = percentile(waits, 0.50);
  r.wait_p95_s = percentile(waits, 0.95);
  r.wait_p99_s = percentile(waits, 0.99);
  r.wait_max_s = waits.empty() ? 0 : waits.back();
  if (!r.batches.empty()) {
    double sizes = 0;
    double fill = 0;
    for (const BatchRecord& b : r.batches) {
      sizes += static_cast<double>(b.ids.size());
      fill += static_cast<double>(b.ids.size()) / static_cast<double>(b.planned_size);
    }
    r.mean_batch_size = sizes / static_cast<double>(r.batches.size());
    r.batch_fill = fill / static_cast<double>(r.batches.size());
  }
  return std::move(report_);
}

}  // namespace detail
}  // namespace apo::sched

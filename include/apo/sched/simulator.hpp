#pragma once

/// @file
/// @brief A deterministic discrete-event simulator: replays a trace of submits and cancels on a
/// FakeClock through any scheduler and batcher, placing batches on simulated devices, and reports
/// throughput, queue waits, batch fill and rejections, with a record of every request and batch.

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "apo/batch/batch.hpp"
#include "apo/core/clock.hpp"
#include "apo/core/error.hpp"
#include "apo/sched/dispatcher.hpp"
#include "apo/sched/placement.hpp"
#include "apo/sched/scheduler.hpp"

namespace apo::sched {

/// @brief One of the guide's eight workflows as the simulator models it on the guide's
/// reference card (an RTX 4090 with a 20 GiB budget).
struct WorkflowProfile {
  std::string_view name;
  int width = 0;
  int height = 0;
  int frames = 1;
  int alternate_width = 0;  ///< a second shape with the same pixel count (another aspect ratio)
  int alternate_height = 0;
  /// One request at 30 steps: the guide's expected times (video 90–120 s, image 15–25 s).
  double service_s = 0;
  /// Device memory one request adds to a batch (activations and latents; an assumption).
  std::int64_t memory_bytes = 0;
  /// Each further request in a batch adds this fraction of service_s (an assumption: image
  /// models leave the GPU partly idle at batch 1, video models hardly).
  double batch_cost = 1.0;
};

/// @brief hunyuan_t2v, hunyuan_i2v, wan_inpaint, wan_alpha, newbie_anime, qwen_relight,
/// qwen_edit, qwen_layered (the guide's WorkflowBenchmark list).
std::span<const WorkflowProfile> guide_workflows();

/// @brief The profile of that name, or nullptr.
const WorkflowProfile* find_workflow(std::string_view name);

/// @brief Sampling steps of a quality level, from the guide's profiles (15, 30, 75).
int steps_for(QualityLevel quality);

/// @brief A batch's service time under the guide profiles: service_s × steps ÷ 30 ×
/// (1 + batch_cost × (size − 1)). Throws Error(InvalidArgument) for a workflow not in
/// guide_workflows().
Clock::duration guide_service_time(const Batch& batch);

/// @brief How a trace is drawn.
struct TraceOptions {
  std::size_t requests = 1000;
  /// Poisson arrivals at this mean rate.
  double arrivals_per_s = 0.03;
  std::uint64_t seed = 1;
  /// Weight of each guide workflow, in guide_workflows() order; empty: equal.
  std::vector<double> workflow_weights;
  /// Weights of speed_first, balanced, quality_first.
  std::array<double, 3> quality_weights{0.3, 0.5, 0.2};
  /// Share of requests in the workflow's alternate shape.
  double alternate_shape_fraction = 0.25;
  /// Priorities are drawn evenly from 0 to priority_levels − 1.
  std::size_t priority_levels = 10;
  /// Share of requests given a deadline `deadline_after` after their arrival.
  double deadline_fraction = 0.0;
  Clock::duration deadline_after = std::chrono::minutes(30);
  /// Share of requests cancelled `cancel_after` after their arrival (if still queued then).
  double cancel_fraction = 0.0;
  Clock::duration cancel_after = std::chrono::minutes(5);

  /// @brief Throws Error(InvalidArgument) naming the first setting out of range.
  void validate() const;
};

/// @brief One event of a trace: a submit of `request`, or a cancel of `request.id`.
struct TraceEvent {
  enum class Kind { submit, cancel };
  Kind kind = Kind::submit;
  Clock::time_point at{};  ///< on the simulator's FakeClock, which starts at time_point{}
  Request request;
};

/// @brief A trace drawn from `options`: ids 1 to options.requests in arrival order, events
/// sorted by time. The same options give the same trace on every platform.
std::vector<TraceEvent> make_trace(const TraceOptions& options);

/// @brief Devices, placement and service times of a simulation.
struct SimulationOptions {
  std::vector<DeviceSpec> devices{{Device::cuda(0), 20 * GiB}};
  PlacementOptions placement;
  /// Service time of a batch on a device; unset: guide_service_time.
  std::function<Clock::duration(const Batch&, std::size_t device)> service_time;
  /// Stop at this time after the start; requests still queued or running then are reported so.
  std::optional<Clock::duration> horizon;
};

/// @brief How a request ended (or where it was when the simulation stopped).
enum class Outcome { queued, running, completed, rejected, cancelled, timed_out };

/// @brief One submitted request. Sequence numbers order every event of the run, so
/// "queued when batch b formed" is submit_seq < b.seq < left_queue_seq.
struct RequestRecord {
  Request request;  ///< as submitted (submit_time set)
  Outcome outcome = Outcome::queued;
  std::string reason;   ///< for rejected requests: "queue_full", "no_device_fits" or "invalid"
  std::string message;  ///< for rejected requests: the error's message
  Clock::time_point submitted{};
  std::optional<Clock::time_point> left_queue;  ///< dispatched, cancelled or timed out
  std::optional<Clock::time_point> started;
  std::optional<Clock::time_point> finished;
  std::optional<std::size_t> batch;  ///< index into SimulationReport::batches
  std::uint64_t submit_seq = 0;
  std::optional<std::uint64_t> left_queue_seq;
};

/// @brief One batch that ran.
struct BatchRecord {
  std::vector<RequestId> ids;
  std::size_t device = 0;
  std::int64_t memory_bytes = 0;
  std::size_t planned_size = 0;
  Clock::time_point start{};
  Clock::time_point end{};
  std::uint64_t seq = 0;
};

/// @brief What a simulation measured.
struct SimulationReport {
  std::size_t submitted = 0;
  std::size_t completed = 0;
  std::size_t rejected = 0;
  std::size_t cancelled = 0;
  std::size_t timed_out = 0;
  std::size_t queued = 0;                         ///< still queued at the end (horizon reached)
  std::size_t running = 0;                        ///< still running at the end
  std::map<std::string, std::size_t> rejections;  ///< by reason
  double makespan_s = 0;                          ///< first submit to last completion
  double throughput_per_hour = 0;                 ///< completed requests per hour of makespan
  /// Queue wait (submit to start of service) of completed requests, nearest-rank percentiles.
  double wait_p50_s = 0;
  double wait_p95_s = 0;
  double wait_p99_s = 0;
  double wait_max_s = 0;
  double mean_batch_size = 0;
  /// Mean of size ÷ planned size over batches: how full batches were against the batcher's aim.
  double batch_fill = 0;
  std::vector<RequestRecord> requests;  ///< in submit order
  std::vector<BatchRecord> batches;     ///< in start order
};

namespace detail {

/// @brief The simulator's bookkeeping (compiled; the template below only drives the policies).
class SimulationLedger {
 public:
  explicit SimulationLedger(std::size_t expected_requests);

  std::size_t submitted(const Request& request, Clock::time_point now);
  void refused(std::size_t record, const Error& error, bool by_placement);
  void left_queue(RequestId id, Outcome outcome, Clock::time_point now);
  std::size_t started(const Batch& batch, std::size_t device, Clock::time_point start,
                      Clock::time_point end);
  void finished(std::size_t batch);
  /// @brief Marks what is still queued or running, and computes the figures.
  SimulationReport finish();

 private:
  RequestRecord& record_of(RequestId id);

  SimulationReport report_;
  std::unordered_map<RequestId, std::size_t> by_id_;
  std::optional<std::size_t> displaced_;  ///< the id's earlier record, until the submit succeeds
  std::uint64_t next_seq_ = 0;
};

}  // namespace detail

/// @brief Replays `trace` through the scheduler that `make_scheduler(const Clock&)` builds on
/// the simulator's FakeClock and through `batcher`, on `options.devices`, with the engine's
/// Dispatcher.
///
/// Each step moves the clock to the next event (an arrival or cancel, a batch's end, a
/// request deadline, a batcher's fill deadline), then: completes the batches due, applies the
/// trace's events due (a submit is first admitted by placement: a request no device can hold is
/// rejected), and runs a dispatch round. A device's worker starts a placed batch at once.
/// Deterministic: the same inputs give the same report. Single-threaded; separate simulations
/// may run on separate threads.
template <class MakeScheduler, batch::Batcher B>
SimulationReport simulate(const std::vector<TraceEvent>& trace, MakeScheduler&& make_scheduler,
                          B& batcher, const SimulationOptions& options) {
  FakeClock clock;
  auto scheduler = std::forward<MakeScheduler>(make_scheduler)(static_cast<const Clock&>(clock));
  static_assert(Scheduler<decltype(scheduler)>, "make_scheduler must build a Scheduler");
  Placement placement(make_ledgers(options.devices), options.placement);
  Dispatcher dispatcher(scheduler, batcher, placement);
  detail::SimulationLedger ledger(trace.size());

  struct Running {
    Clock::time_point start;
    Clock::time_point end;
    std::size_t device;
    std::size_t record;
    Batch batch;
  };
  std::vector<Running> running;
  const auto ends_first = [](const Running& a, const Running& b) {
    return a.end != b.end ? a.end < b.end : a.record < b.record;
  };
  const Clock::time_point origin = clock.now();
  std::size_t next_event = 0;

  for (;;) {
    const Clock::time_point now = clock.now();

    std::sort(running.begin(), running.end(), ends_first);
    std::size_t done = 0;
    for (; done < running.size() && running[done].end <= now; ++done) {
      Running& r = running[done];
      dispatcher.complete(r.device, r.batch, r.end - r.start);
      ledger.finished(r.record);
    }
    running.erase(running.begin(), running.begin() + static_cast<std::ptrdiff_t>(done));

    for (; next_event < trace.size() && trace[next_event].at <= now; ++next_event) {
      const TraceEvent& event = trace[next_event];
      if (event.kind == TraceEvent::Kind::cancel) {
        if (std::optional<Request> cancelled = dispatcher.cancel(event.request.id)) {
          ledger.left_queue(cancelled->id, Outcome::cancelled, now);
        }
        continue;
      }
      const std::size_t record = ledger.submitted(event.request, now);
      bool admitted = false;
      try {
        placement.admit(event.request);
        admitted = true;
        dispatcher.submit(event.request);
      } catch (const Error& error) {
        ledger.refused(record, error, !admitted);
      }
    }

    DispatchRound round = dispatcher.dispatch();
    for (const Request& request : round.timed_out) {
      ledger.left_queue(request.id, Outcome::timed_out, now);
    }
    for (const Placed& placed : round.placed) {
      std::optional<Batch> batch = placement.try_take(placed.device);
      const Clock::duration service =
          std::max(Clock::duration::zero(), options.service_time
                                                ? options.service_time(*batch, placed.device)
                                                : guide_service_time(*batch));
      const std::size_t record = ledger.started(*batch, placed.device, now, now + service);
      running.push_back({now, now + service, placed.device, record, std::move(*batch)});
    }

    std::optional<Clock::time_point> next;
    const auto consider = [&](std::optional<Clock::time_point> time) {
      if (time && *time >= now && (!next || *time < *next)) next = time;
    };
    if (next_event < trace.size()) consider(trace[next_event].at);
    for (const Running& r : running) consider(r.end);  // a batch of no time ends at once
    if (round.wake_at && *round.wake_at > now) consider(round.wake_at);
    if (!next) break;
    if (options.horizon && *next - origin > *options.horizon) break;
    clock.advance(*next - now);
  }
  return ledger.finish();
}

}  // namespace apo::sched

#pragma once

/// @file
/// @brief WorkflowEngine<Quantization, MemoryPool, Batcher, Scheduler>: requests in, results out.
///
/// submit(request) → the scheduler (priority with aging, grouping key) → the batcher (a batch
/// size from the memory ledger and throughput history) → placement (a device with room) → a
/// worker of that device: model leases from the cache (loaded and stored as the quantization
/// policy plans, within the device's ledger) → Workflow::run(batch, context) → results, one per
/// request, through the ticket's future and the callbacks. docs/engine.md has the design.

#include <atomic>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "apo/batch/batch.hpp"
#include "apo/batch/fixed_batcher.hpp"
#include "apo/batch/memory_aware_batcher.hpp"
#include "apo/core/clock.hpp"
#include "apo/core/config.hpp"
#include "apo/core/machine.hpp"
#include "apo/engine/detail/engine_core.hpp"
#include "apo/engine/result.hpp"
#include "apo/engine/workflow.hpp"
#include "apo/memory/arena_pool.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/monitor/trace.hpp"
#include "apo/quant/policy.hpp"
#include "apo/sched/dispatcher.hpp"
#include "apo/sched/fifo_scheduler.hpp"
#include "apo/sched/placement.hpp"
#include "apo/sched/priority_scheduler.hpp"

namespace apo::engine {

/// @brief How the engine makes and tends a device's activation pool of type P: specialize it for
/// a pool type to make it an ActivationPool.
template <class P>
struct ActivationPoolTraits;

/// @brief The caching pool: grows on demand within the device's ledger, keeps freed blocks for
/// the next batch, and gives its cache back when the device needs room (release()).
template <>
struct ActivationPoolTraits<memory::CachingPool> {
  static constexpr std::string_view name = "CachingPool";
  static std::shared_ptr<memory::CachingPool> make(memory::AnyResource upstream,
                                                   std::int64_t /*budget_bytes*/) {
    return std::make_shared<memory::CachingPool>(std::move(upstream));
  }
  static std::int64_t release(memory::CachingPool& pool) { return pool.release(); }
  static std::int64_t reserved_bytes(const memory::CachingPool& pool) {
    return pool.bytes_reserved();
  }
};

/// @brief The arena: a quarter of the device's budget reserved at start and handed out by a bump
/// pointer, rewound when a batch has freed everything. For workflows whose allocations are
/// stack-like within a batch (every block of a batch stays until the batch ends, so its
/// capacity must hold a batch's total, not its peak). It cannot give memory back.
template <>
struct ActivationPoolTraits<memory::ArenaPool> {
  static constexpr std::string_view name = "ArenaPool";
  static std::shared_ptr<memory::ArenaPool> make(memory::AnyResource upstream,
                                                 std::int64_t budget_bytes) {
    return std::make_shared<memory::ArenaPool>(std::move(upstream),
                                               std::max<std::int64_t>(budget_bytes / 4, 1));
  }
  static std::int64_t release(memory::ArenaPool& /*pool*/) { return 0; }
  static std::int64_t reserved_bytes(const memory::ArenaPool& pool) {
    return pool.stats().capacity_bytes;
  }
};

/// @brief A memory pool the engine can back a device's activations with.
///
/// Contract: P is a MemoryResource; ActivationPoolTraits<P>::make(upstream, budget) builds one
/// over `upstream` (which charges the device's ledger); release(pool) gives cached memory back
/// to the upstream and returns the bytes (0 when it cannot); reserved_bytes(pool) is what the
/// pool holds from the upstream. The engine calls release when a device runs out of memory and
/// in the memory manager's cleanup passes.
template <class P>
concept ActivationPool = memory::MemoryResource<P> &&
    requires(memory::AnyResource upstream, std::int64_t budget, P& pool, const P& const_pool) {
  { ActivationPoolTraits<P>::make(upstream, budget) } -> std::same_as<std::shared_ptr<P>>;
  { ActivationPoolTraits<P>::release(pool) } -> std::same_as<std::int64_t>;
  { ActivationPoolTraits<P>::reserved_bytes(const_pool) } -> std::same_as<std::int64_t>;
  { ActivationPoolTraits<P>::name } -> std::convertible_to<std::string_view>;
};

static_assert(ActivationPool<memory::CachingPool>);
static_assert(ActivationPool<memory::ArenaPool>);

namespace detail {

/// @brief The policy object of type Q for a configuration: Q::from_config(config) where Q has
/// one, otherwise Q().
template <quant::QuantizationPolicy Q>
Q quantization_from_config(const Config& config) {
  if constexpr (requires {
                  { Q::from_config(config) } -> std::same_as<Q>;
                }) {
    return Q::from_config(config);
  } else {
    return Q();
  }
}

/// @brief A name for messages and for EngineStats: the policies' own where they have one.
template <class T>
constexpr std::string_view policy_name() {
  if constexpr (std::same_as<T, quant::ConfiguredPrecision>)
    return "ConfiguredPrecision";
  else if constexpr (std::same_as<T, quant::DynamicPrecision>)
    return "DynamicPrecision";
  else if constexpr (std::same_as<T, batch::MemoryAwareBatcher>)
    return "MemoryAwareBatcher";
  else if constexpr (std::same_as<T, batch::FixedBatcher>)
    return "FixedBatcher";
  else if constexpr (std::same_as<T, sched::PriorityScheduler>)
    return "PriorityScheduler";
  else if constexpr (std::same_as<T, sched::FifoScheduler>)
    return "FifoScheduler";
  else if constexpr (requires { ActivationPoolTraits<T>::name; })
    return ActivationPoolTraits<T>::name;
  else
    return "custom";
}

}  // namespace detail

/// @brief The engine: four policies composed at compile time.
///
/// - Q (QuantizationPolicy) decides how each layer of a loading model is stored.
/// - P (ActivationPool) types the pool that backs each device's activations.
/// - B (Batcher) sizes batches; S (Scheduler) orders requests and forms batches of one key.
///
/// Threads: one dispatcher (forms and places batches, ends timed-out requests), and
/// scheduling.batches_per_device workers per device (config: parallel_execution puts every CUDA
/// device to work; system_optimization.cpu_affinity pins the workers, max_cpu_threads sets
/// their ATen threads). Every accepted request gets exactly one Result; shutdown() and the
/// destructor end every request and join every thread. Thread-safe.
template <quant::QuantizationPolicy Q = quant::ConfiguredPrecision,
          ActivationPool P = memory::CachingPool, batch::Batcher B = batch::MemoryAwareBatcher,
          sched::Scheduler S = sched::PriorityScheduler>
class WorkflowEngine {
 public:
  using Quantization = Q;
  using MemoryPool = P;
  using Batcher = B;
  using Scheduler = S;

  /// @brief An engine for `config` on `machine` (default: this machine, probed), on `clock`
  /// (which must outlive it). Starts its threads.
  /// @throws apo::Error InvalidArgument or InvalidConfig for settings it cannot run with
  explicit WorkflowEngine(const Config& config, const Clock& clock = SteadyClock::instance(),
                          std::optional<MachineInfo> machine = std::nullopt)
      : core_(config, clock, machine ? std::move(*machine) : probe_machine(), make_parts(config)),
        batcher_(typename B::Options(B::Options::from_config(core_.config()))),
        scheduler_(clock, typename S::Options(S::Options::from_config(core_.config()))),
        placement_(core_.ledgers(), sched::PlacementOptions::from_config(core_.config())),
        dispatcher_(scheduler_, batcher_, placement_,
                    [this](batch::GroupKeyView key, std::size_t device) {
                      return core_.extra_bytes(key, device);
                    }) {
    for (std::size_t device = 0; device < placement_.device_count(); ++device) {
      for (std::size_t w = 0; w < core_.workers_per_device(); ++w) {
        workers_.emplace_back(
            [this, device](std::stop_token stop) { worker_loop(std::move(stop), device); });
      }
    }
    dispatcher_thread_ = std::jthread([this] { dispatch_loop(); });
  }

  /// @brief Cancels what is left and joins every thread.
  ~WorkflowEngine() { shutdown(ShutdownMode::cancel); }

  WorkflowEngine(const WorkflowEngine&) = delete;
  WorkflowEngine& operator=(const WorkflowEngine&) = delete;

  /// @brief Registers a workflow under its name. @throws Error(InvalidArgument) for a name taken
  void add_workflow(std::shared_ptr<Workflow> workflow) {
    core_.workflows().add(std::move(workflow));
  }

  /// @brief Submits a request; the engine assigns its id (Ticket::id). A request that cannot be
  /// run at all throws (InvalidArgument for a bad field or input, NotFound for an unknown
  /// workflow) and is not accepted. An accepted one ends exactly once: ok, or rejected (queue
  /// full, shutting down), timed out, cancelled, out of memory (it can never fit, or did not
  /// after the engine released what it could) or failed.
  Ticket submit(Request request, Callbacks callbacks = {}) {
    const detail::EngineCore::Accepted accepted = core_.accept(request, std::move(callbacks));
    if (!accepted.queue) return accepted.ticket;
    const RequestId id = request.id;
    try {
      dispatcher_.submit(std::move(request));
    } catch (const Error& error) {
      if (error.code() == ErrorCode::Rejected) {
        core_.end(
            id, Status::rejected,
            stopping_ ? "the engine is shutting down: it takes no new requests" : error.message());
      } else if (error.code() == ErrorCode::TimedOut) {
        core_.end(id, Status::timed_out, error.message());
      } else {
        core_.forget(id);
        throw;
      }
    }
    return accepted.ticket;
  }

  /// @brief Cancels a request: a queued one ends Cancelled now, a running one at its next step.
  /// Returns false when it has already ended (or never existed).
  bool cancel(RequestId id) {
    if (dispatcher_.cancel(id)) {
      core_.end(id, Status::cancelled, "cancelled while queued");
      return true;
    }
    return core_.request_cancel(id);
  }

  /// @brief Stops taking requests (later submits end Rejected), ends every request (drain: runs
  /// them all; cancel: cancels them) and joins the threads. Idempotent.
  void shutdown(ShutdownMode mode = ShutdownMode::drain) {
    const std::lock_guard lifecycle(lifecycle_);
    if (shut_down_) return;
    stopping_ = true;
    dispatcher_.set_draining(true);
    scheduler_.close();
    if (mode == ShutdownMode::cancel) {
      for (const RequestId id : core_.outstanding()) cancel(id);
    }
    if (dispatcher_thread_.joinable()) dispatcher_thread_.join();
    for (auto& worker : workers_) worker.request_stop();
    for (auto& worker : workers_) worker.join();
    shut_down_ = true;
  }

  /// @brief Turns adaptive quality on: requests that leave their sampling unset take it from the
  /// controller's current settings (over their quality level's), and every result is reported
  /// to it (its compute time per request and its judged quality). nullptr turns it off.
  /// Thread-safe; requests already accepted keep the sampling they were given.
  void set_quality_controller(std::shared_ptr<tune::AdaptiveQualityController> controller) {
    core_.set_quality_controller(std::move(controller));
  }

  /// @brief Reports to `monitor` (nullptr: to none): every result as it ends (its workflow,
  /// times, peak memory and quality), and at each of the monitor's samples each device's ledger
  /// and the queue. The engine detaches itself when it is destroyed. Thread-safe.
  void set_monitor(std::shared_ptr<monitor::PerformanceMonitor> monitor) {
    core_.set_monitor(std::move(monitor));
  }

  EngineStats stats() const { return core_.stats(); }
  std::size_t device_count() const noexcept { return placement_.device_count(); }
  Device device(std::size_t index) const { return placement_.device(index); }
  /// @brief The ledger of a device, as it stands.
  memory::LedgerSnapshot memory(std::size_t device) const {
    return placement_.ledger(device)->snapshot();
  }
  models::ModelCache& models() noexcept { return core_.model_cache(); }
  const Config& config() const noexcept { return core_.config(); }
  /// @brief "ConfiguredPrecision, CachingPool, MemoryAwareBatcher, PriorityScheduler".
  const std::string& policies() const noexcept { return core_.policies(); }

 private:
  // What the compiled half needs of the policies.
  static detail::EngineParts make_parts(const Config& config) {
    detail::EngineParts parts;
    parts.quantization = models::planner_of(detail::quantization_from_config<Q>(config));
    parts.pools = [](memory::AnyResource upstream, std::int64_t budget) {
      std::shared_ptr<P> pool = ActivationPoolTraits<P>::make(std::move(upstream), budget);
      return detail::DevicePool{pool, [pool] { return ActivationPoolTraits<P>::release(*pool); },
                                [pool] { return ActivationPoolTraits<P>::reserved_bytes(*pool); }};
    };
    parts.policies =
        fmt::format("{}, {}, {}, {}", detail::policy_name<Q>(), detail::policy_name<P>(),
                    detail::policy_name<B>(), detail::policy_name<S>());
    return parts;
  }

  std::size_t in_flight() const {
    std::size_t batches = 0;
    for (std::size_t d = 0; d < placement_.device_count(); ++d) {
      batches += placement_.load(d).in_flight;
    }
    return batches;
  }

  void dispatch_loop() {
    monitor::Tracer::global().name_thread("engine dispatcher");
    std::optional<RequestId> reclaimed_for;  // the blocked head memory was last freed for
    for (;;) {
      sched::DispatchRound round = dispatcher_.dispatch();
      trace_round(round);
      for (const Request& request : round.timed_out) {
        core_.end(request.id, Status::timed_out, "its deadline passed while it was queued");
      }
      if (round.blocked && in_flight() == 0) {
        // Nothing runs that could free memory: free what the devices cache, once, then give up
        // on the head.
        const sched::BlockedOnMemory blocked = *round.blocked;
        if (reclaimed_for != blocked.head) {
          reclaimed_for = blocked.head;
          for (std::size_t d = 0; d < placement_.device_count(); ++d) {
            core_.reclaim(d, blocked.needed_bytes);
          }
          continue;
        }
        reclaimed_for.reset();
        if (dispatcher_.cancel(blocked.head)) {
          std::string devices;
          for (std::size_t d = 0; d < placement_.device_count(); ++d) {
            devices += (d ? "; " : "") + placement_.ledger(d)->describe();
          }
          core_.end(blocked.head, Status::out_of_memory,
                    fmt::format("needs an estimated {} plus its models; the most any device "
                                "had room for was {} with nothing else running ({})",
                                format_bytes(blocked.needed_bytes),
                                format_bytes(blocked.largest_room_bytes), devices));
        }
        continue;
      }
      if (!round.blocked) reclaimed_for.reset();
      // Closed and empty is final: no submit can queue after close().
      if (scheduler_.closed() && scheduler_.size() == 0 && in_flight() == 0) break;
      dispatcher_.wait(round.wake_at);
    }
  }

  // Scheduling in the trace: each batch placed (an instant on the dispatcher's thread) and the
  // queue's length then (a counter; rounds that place nothing add nothing).
  void trace_round(const sched::DispatchRound& round) {
    monitor::Tracer& tracer = monitor::Tracer::global();
    if (!tracer.enabled() || round.placed.empty()) return;
    for (const sched::Placed& placed : round.placed) {
      tracer.instant("schedule batch", "scheduling",
                     monitor::trace_arg("device", static_cast<double>(placed.device)) + "," +
                         monitor::trace_arg("requests", static_cast<double>(placed.batch_size)));
    }
    tracer.counter("queue", "requests", static_cast<double>(scheduler_.size()));
  }

  void worker_loop(std::stop_token stop, std::size_t device) {
    core_.setup_worker_thread(device);
    while (std::optional<batch::Batch> batch = placement_.take(device, stop)) {
      const Clock::time_point start = core_.clock().now();
      try {
        core_.run(device, *batch);
      } catch (const std::exception& e) {
        // The core ends every request itself; this is the net under a bug in it.
        for (const Request& request : batch->requests) {
          core_.end(request.id, Status::failed, std::string("engine: ") + e.what());
        }
      }
      dispatcher_.complete(device, *batch, core_.clock().now() - start);
      core_.reconcile(device);
    }
  }

  detail::EngineCore core_;
  B batcher_;
  S scheduler_;
  sched::Placement placement_;
  sched::Dispatcher<S, B> dispatcher_;
  std::mutex lifecycle_;
  bool shut_down_ = false;
  std::atomic<bool> stopping_{false};
  std::vector<std::jthread> workers_;
  std::jthread dispatcher_thread_;
};

/// @brief The common engine: the configuration's precision, a caching pool, the memory-aware
/// batcher and the priority scheduler.
using Engine = WorkflowEngine<>;

}  // namespace apo::engine

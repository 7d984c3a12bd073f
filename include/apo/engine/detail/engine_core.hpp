#pragma once

/// @file
/// @brief The compiled half of the WorkflowEngine: everything that does not depend on the
/// policy types (ledgers, model cache, memory manager, the book of requests and their results,
/// running a batch with out-of-memory recovery). The template half (workflow_engine.hpp) owns
/// the scheduler, the batcher, placement and the threads.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "apo/batch/batch.hpp"
#include "apo/core/clock.hpp"
#include "apo/core/config.hpp"
#include "apo/core/machine.hpp"
#include "apo/engine/result.hpp"
#include "apo/engine/workflow.hpp"
#include "apo/memory/ledger.hpp"
#include "apo/models/model_cache.hpp"

namespace apo::tune {
class AdaptiveQualityController;
}  // namespace apo::tune
namespace apo::monitor {
class PerformanceMonitor;
}  // namespace apo::monitor

namespace apo::engine::detail {

/// @brief A device's activation pool, as the compiled half sees it.
struct DevicePool {
  memory::AnyResource resource;
  std::function<std::int64_t()> release;         ///< gives the cache back; returns the bytes
  std::function<std::int64_t()> reserved_bytes;  ///< what the pool holds from the device
};

/// @brief Makes the pool of a device over `upstream` (charged to the device's ledger), for a
/// device of `budget_bytes`.
using PoolFactory =
    std::function<DevicePool(memory::AnyResource upstream, std::int64_t budget_bytes)>;

/// @brief What the template half hands the compiled half.
struct EngineParts {
  models::QuantizationPlanner quantization;
  PoolFactory pools;
  std::string policies;  ///< "ConfiguredPrecision, CachingPool, MemoryAwareBatcher, ..."
};

class EngineCore {
 public:
  /// @brief Ledgers, pools, the model cache and the memory manager for `config` on `machine`.
  /// Throws Error(InvalidArgument) for a configuration the engine cannot run.
  EngineCore(Config config, const Clock& clock, MachineInfo machine, EngineParts parts);
  ~EngineCore();
  EngineCore(const EngineCore&) = delete;
  EngineCore& operator=(const EngineCore&) = delete;

  const Config& config() const noexcept;
  const Clock& clock() const noexcept;
  const std::string& policies() const noexcept;
  const std::vector<std::shared_ptr<memory::MemoryLedger>>& ledgers() const noexcept;
  WorkflowRegistry& workflows() noexcept;
  models::ModelCache& model_cache() noexcept;

  /// @brief Checks a submitted request (throws Error(InvalidArgument or NotFound) for one that
  /// is not accepted), resolves its sampling, stamps its id and memory estimate, and books it.
  /// `queue` is false when it ended at once (it can never fit): its ticket is then ready.
  struct Accepted {
    Ticket ticket;
    bool queue = true;
  };
  Accepted accept(Request& request, Callbacks callbacks);
  /// @brief Unbooks a request the scheduler refused as invalid: it was never accepted.
  void forget(RequestId id) noexcept;
  /// @brief Ends a request that is not running (refused, timed out, cancelled while queued, or a
  /// batch that failed outside the workflow).
  void end(RequestId id, Status status, std::string message);
  /// @brief Asks a request that left the queue to stop: it ends Cancelled when its batch starts
  /// or at its next step. Returns false for a request that has already ended.
  bool request_cancel(RequestId id);
  /// @brief The ids of every request not yet ended.
  std::vector<RequestId> outstanding() const;

  /// @brief Weights a batch of `key` still needs loaded on `device` (placement leaves room).
  std::int64_t extra_bytes(batch::GroupKeyView key, std::size_t device) const;
  /// @brief Frees what can be freed on a device for `wanted_bytes`: the pool's cache, idle
  /// models (demoted where offload allows), torch's cache. Returns the bytes freed.
  std::int64_t reclaim(std::size_t device, std::int64_t wanted_bytes);

  /// @brief Runs `batch` on `device` to its end, splitting it on running out of memory, and
  /// delivers every request's result.
  void run(std::size_t device, const batch::Batch& batch);
  /// @brief Tells a device's ledger what its allocator holds (torch's statistics on CUDA),
  /// after a batch completed.
  void reconcile(std::size_t device);
  /// @brief Prepares the calling thread as a worker of `device` (CPU affinity, ATen threads).
  void setup_worker_thread(std::size_t device);
  std::size_t workers_per_device() const noexcept;

  EngineStats stats() const;

  /// @brief Turns adaptive quality on (a controller) or off (nullptr); see WorkflowEngine.
  void set_quality_controller(std::shared_ptr<tune::AdaptiveQualityController> controller);
  std::shared_ptr<tune::AdaptiveQualityController> quality_controller() const;
  /// @brief Reports to a monitor (nullptr: none); see WorkflowEngine::set_monitor.
  void set_monitor(std::shared_ptr<monitor::PerformanceMonitor> monitor);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace apo::engine::detail

#pragma once

/// @file
/// @brief AnyEngine: one of a fixed set of WorkflowEngine instantiations, picked from the
/// configuration at run time (scheduling.queue_policy and scheduling.batch_policy); what the C
/// ABI and Python use. The instantiations are compiled once, in apo's library.

#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "apo/core/clock.hpp"
#include "apo/core/config.hpp"
#include "apo/core/machine.hpp"
#include "apo/engine/result.hpp"
#include "apo/engine/workflow.hpp"
#include "apo/engine/workflow_engine.hpp"
#include "apo/memory/ledger.hpp"

namespace apo::engine {

extern template class WorkflowEngine<quant::ConfiguredPrecision, memory::CachingPool,
                                     batch::MemoryAwareBatcher, sched::PriorityScheduler>;
extern template class WorkflowEngine<quant::ConfiguredPrecision, memory::CachingPool,
                                     batch::FixedBatcher, sched::PriorityScheduler>;
extern template class WorkflowEngine<quant::ConfiguredPrecision, memory::CachingPool,
                                     batch::MemoryAwareBatcher, sched::FifoScheduler>;
extern template class WorkflowEngine<quant::ConfiguredPrecision, memory::CachingPool,
                                     batch::FixedBatcher, sched::FifoScheduler>;

/// @brief A WorkflowEngine whose batcher and scheduler follow the configuration: priority or
/// fifo queue, memory-aware or fixed batches; the configured precision and a caching pool.
/// Same members and guarantees as WorkflowEngine.
class AnyEngine {
 public:
  explicit AnyEngine(const Config& config, const Clock& clock = SteadyClock::instance(),
                     std::optional<MachineInfo> machine = std::nullopt);
  ~AnyEngine();
  AnyEngine(AnyEngine&&) noexcept;
  AnyEngine& operator=(AnyEngine&&) noexcept;

  void add_workflow(std::shared_ptr<Workflow> workflow);
  Ticket submit(Request request, Callbacks callbacks = {});
  bool cancel(RequestId id);
  void shutdown(ShutdownMode mode = ShutdownMode::drain);
  void set_quality_controller(std::shared_ptr<tune::AdaptiveQualityController> controller);
  void set_monitor(std::shared_ptr<monitor::PerformanceMonitor> monitor);
  EngineStats stats() const;
  std::size_t device_count() const;
  Device device(std::size_t index) const;
  memory::LedgerSnapshot memory(std::size_t device) const;
  models::ModelCache& models();
  const Config& config() const;
  const std::string& policies() const;

 private:
  class Interface;
  template <class E>
  class Holder;
  std::unique_ptr<Interface> impl_;
};

}  // namespace apo::engine

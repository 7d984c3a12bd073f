// The instantiations of WorkflowEngine that AnyEngine chooses from, compiled here once.

#include "apo/engine/any_engine.hpp"

namespace apo::engine {

template class WorkflowEngine<quant::ConfiguredPrecision, memory::CachingPool,
                              batch::MemoryAwareBatcher, sched::PriorityScheduler>;
template class WorkflowEngine<quant::ConfiguredPrecision, memory::CachingPool, batch::FixedBatcher,
                              sched::PriorityScheduler>;
template class WorkflowEngine<quant::ConfiguredPrecision, memory::CachingPool,
                              batch::MemoryAwareBatcher, sched::FifoScheduler>;
template class WorkflowEngine<quant::ConfiguredPrecision, memory::CachingPool, batch::FixedBatcher,
                              sched::FifoScheduler>;

class AnyEngine::Interface {
 public:
  virtual ~Interface() = default;
  virtual void add_workflow(std::shared_ptr<Workflow> workflow) = 0;
  virtual Ticket submit(Request request, Callbacks callbacks) = 0;
  virtual bool cancel(RequestId id) = 0;
  virtual void shutdown(ShutdownMode mode) = 0;
  virtual void set_quality_controller(
      std::shared_ptr<tune::AdaptiveQualityController> controller) = 0;
  virtual void set_monitor(std::shared_ptr<monitor::PerformanceMonitor> monitor) = 0;
  virtual EngineStats stats() const = 0;
  virtual std::size_t device_count() const = 0;
  virtual Device device(std::size_t index) const = 0;
  virtual memory::LedgerSnapshot memory(std::size_t device) const = 0;
  virtual models::ModelCache& models() = 0;
  virtual const Config& config() const = 0;
  virtual const std::string& policies() const = 0;
};

template <class E>
class AnyEngine::Holder final : public AnyEngine::Interface {
 public:
  Holder(const Config& config, const Clock& clock, std::optional<MachineInfo> machine)
      : engine_(config, clock, std::move(machine)) {}
  void add_workflow(std::shared_ptr<Workflow> workflow) override {
    engine_.add_workflow(std::move(workflow));
  }
  Ticket submit(Request request, Callbacks callbacks) override {
    return engine_.submit(std::move(request), std::move(callbacks));
  }
  bool cancel(RequestId id) override { return engine_.cancel(id); }
  void shutdown(ShutdownMode mode) override { engine_.shutdown(mode); }
  void set_quality_controller(
      std::shared_ptr<tune::AdaptiveQualityController> controller) override {
    engine_.set_quality_controller(std::move(controller));
  }
  void set_monitor(std::shared_ptr<monitor::PerformanceMonitor> monitor) override {
    engine_.set_monitor(std::move(monitor));
  }
  EngineStats stats() const override { return engine_.stats(); }
  std::size_t device_count() const override { return engine_.device_count(); }
  Device device(std::size_t index) const override { return engine_.device(index); }
  memory::LedgerSnapshot memory(std::size_t device) const override {
    return engine_.memory(device);
  }
  models::ModelCache& models() override { return engine_.models(); }
  const Config& config() const override { return engine_.config(); }
  const std::string& policies() const override { return engine_.policies(); }

 private:
  E engine_;
};

namespace {

template <class B, class S>
using Configured = WorkflowEngine<quant::ConfiguredPrecision, memory::CachingPool, B, S>;

}  // namespace

AnyEngine::AnyEngine(const Config& config, const Clock& clock, std::optional<MachineInfo> machine) {
  const bool fifo = config.scheduling.queue_policy == QueuePolicy::fifo;
  const bool fixed = config.scheduling.batch_policy == BatchPolicy::fixed;
  using MemoryAware = batch::MemoryAwareBatcher;
  using Fixed = batch::FixedBatcher;
  using Priority = sched::PriorityScheduler;
  using Fifo = sched::FifoScheduler;
  if (fifo && fixed) {
    impl_ = std::make_unique<Holder<Configured<Fixed, Fifo>>>(config, clock, std::move(machine));
  } else if (fifo) {
    impl_ =
        std::make_unique<Holder<Configured<MemoryAware, Fifo>>>(config, clock, std::move(machine));
  } else if (fixed) {
    impl_ =
        std::make_unique<Holder<Configured<Fixed, Priority>>>(config, clock, std::move(machine));
  } else {
    impl_ = std::make_unique<Holder<Configured<MemoryAware, Priority>>>(config, clock,
                                                                        std::move(machine));
  }
}

AnyEngine::~AnyEngine() = default;
AnyEngine::AnyEngine(AnyEngine&&) noexcept = default;
AnyEngine& AnyEngine::operator=(AnyEngine&&) noexcept = default;

void AnyEngine::add_workflow(std::shared_ptr<Workflow> workflow) {
  impl_->add_workflow(std::move(workflow));
}
Ticket AnyEngine::submit(Request request, Callbacks callbacks) {
  return impl_->submit(std::move(request), std::move(callbacks));
}
bool AnyEngine::cancel(RequestId id) {
  return impl_->cancel(id);
}
void AnyEngine::shutdown(ShutdownMode mode) {
  impl_->shutdown(mode);
}
EngineStats AnyEngine::stats() const {
  return impl_->stats();
}
std::size_t AnyEngine::device_count() const {
  return impl_->device_count();
}
Device AnyEngine::device(std::size_t index) const {
  return impl_->device(index);
}
memory::LedgerSnapshot AnyEngine::memory(std::size_t device) const {
  return impl_->memory(device);
}
void AnyEngine::set_quality_controller(
    std::shared_ptr<tune::AdaptiveQualityController> controller) {
  impl_->set_quality_controller(std::move(controller));
}
void AnyEngine::set_monitor(std::shared_ptr<monitor::PerformanceMonitor> monitor) {
  impl_->set_monitor(std::move(monitor));
}

models::ModelCache& AnyEngine::models() {
  return impl_->models();
}
const Config& AnyEngine::config() const {
  return impl_->config();
}
const std::string& AnyEngine::policies() const {
  return impl_->policies();
}

}  // namespace apo::engine

// An engine reporting to a PerformanceMonitor: each result as a request record, and its ledgers
// and queue in every sample, until it detaches.

#include "apo_catch.hpp"

#include "apo/core/clock.hpp"
#include "apo/engine/workflow_engine.hpp"
#include "apo/monitor/performance_monitor.hpp"
#include "engine_test_support.hpp"

TEST_CASE("an engine reports its results, ledgers and queue to a monitor until it is gone",
          "[engine][monitor]") {
  using namespace engine_test;
  ScratchDir dir;
  apo::FakeClock clock;
  Probe probe;
  TestWorkflow::Options options;
  options.encoder = write_model(dir.path, "encoder", 1, 1);
  options.dit = write_model(dir.path, "dit", 1, 2);
  options.probe = &probe;

  // The machine's side of each sample is left empty: what the engine adds is what is checked.
  auto monitor = std::make_shared<apo::monitor::PerformanceMonitor>(
      apo::Monitoring{}, 90.0, clock, [] { return apo::monitor::Sample{}; });
  {
    apo::engine::Engine engine(engine_config(64_MiB, dir.path), clock, cpu_machine());
    engine.add_workflow(std::make_shared<TestWorkflow>(options));
    engine.set_monitor(monitor);

    probe.hold();
    const auto running = engine.submit(request("a", 1));
    REQUIRE(probe.wait_for_batches(1));
    const auto queued = engine.submit(request("b", 2));
    const apo::monitor::Sample busy = monitor->sample_now();
    REQUIRE(busy.devices.size() == 1);
    CHECK(busy.devices[0].device == "cpu");
    CHECK(busy.devices[0].total_bytes == engine.memory(0).budget_bytes);
    // The two models are resident and the running batch holds its estimate.
    CHECK(*busy.devices[0].allocated_bytes > 0);
    CHECK(busy.running == 1);
    CHECK(busy.queued == 1);
    CHECK(busy.busy());
    probe.release();
    CHECK(result_of(running).ok());
    CHECK(result_of(queued).ok());

    const auto records = monitor->requests();
    REQUIRE(records.size() == 2);
    for (const auto& recorded : records) {
      CHECK(recorded.record.workflow == "test_t2i");
      CHECK(recorded.record.ok);
      CHECK(recorded.record.quality == 0.9);
      CHECK(recorded.record.peak_memory_bytes > 0);
    }
    const apo::monitor::Sample idle = monitor->sample_now();
    CHECK(idle.running == 0);
    CHECK(idle.queued == 0);
  }
  // The engine detached itself: samples no longer read it.
  const apo::monitor::Sample after = monitor->sample_now();
  CHECK(after.devices.empty());
  CHECK_FALSE(after.running.has_value());
}

// The engine's spans in the Chrome trace: a run with monitoring.enable_tracing records
// scheduling, model acquisition, each stage and out-of-memory retries, as JSON a viewer loads.

#include "apo_catch.hpp"

#include <set>

#include <nlohmann/json.hpp>

#include "apo/core/clock.hpp"
#include "apo/engine/workflow_engine.hpp"
#include "apo/monitor/trace.hpp"
#include "engine_test_support.hpp"

TEST_CASE("an engine with tracing on records its scheduling, loads, stages and OOM retries",
          "[engine][trace]") {
  using namespace engine_test;
  ScratchDir dir;
  apo::FakeClock clock;
  Probe probe;
  TestWorkflow::Options options;
  options.encoder = write_model(dir.path, "encoder", 1, 1);
  options.dit = write_model(dir.path, "dit", 1, 2);
  options.probe = &probe;
  TestWorkflow::Options splits = options;
  splits.name = "torch_oom";
  splits.torch_oom_above = 1;

  apo::Config config = engine_config(64_MiB, dir.path);
  config.monitoring.enable_tracing = true;
  apo::monitor::Tracer::global().stop();
  {
    apo::engine::Engine engine(config, clock, cpu_machine());
    REQUIRE(apo::monitor::Tracer::global().enabled());
    engine.add_workflow(std::make_shared<TestWorkflow>(options));
    engine.add_workflow(std::make_shared<TestWorkflow>(splits));
    // Hold the worker so that the next two requests form one batch, which runs out of memory.
    probe.hold();
    const auto holder = engine.submit(request("hold", 1));
    REQUIRE(probe.wait_for_batches(1));
    const auto first = engine.submit(request("a", 2, "torch_oom"));
    const auto second = engine.submit(request("b", 3, "torch_oom"));
    probe.release();
    CHECK(result_of(holder).ok());
    CHECK(result_of(first).ok());
    CHECK(result_of(second).ok());
  }
  apo::monitor::Tracer::global().stop();

  const nlohmann::json trace = nlohmann::json::parse(apo::monitor::Tracer::global().to_json());
  std::multiset<std::string> names;
  std::set<std::string> threads;
  for (const auto& event : trace["traceEvents"]) {
    names.insert(event["name"].get<std::string>());
    if (event["name"] == "thread_name") threads.insert(event["args"]["name"].get<std::string>());
    if (event["name"] == "batch") {
      CHECK(event["ph"] == "X");
      CHECK(event["args"]["device"] == "cpu");
    }
  }
  CHECK(names.count("schedule batch") >= 2);
  CHECK(names.count("queue") >= 1);
  // The holder's batch, the pair that ran out of memory, then each half alone.
  CHECK(names.count("batch") == 4);
  CHECK(names.count("out of memory") == 1);
  CHECK(names.count("acquire model") == 8);
  CHECK(names.count("encode") == 3);
  CHECK(names.count("denoise") == 3);
  CHECK(names.count("decode") == 3);
  CHECK(threads.count("engine dispatcher") == 1);
  CHECK(threads.count("engine worker cpu") == 1);
}

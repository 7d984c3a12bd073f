#include "apo_catch.hpp"

#include <filesystem>
#include <fstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "apo/core/error.hpp"
#include "apo/monitor/trace.hpp"

namespace trace_test {

using apo::monitor::Span;
using apo::monitor::Tracer;

// The global tracer is shared by every test in the binary: each test starts and stops it.
struct TracingOn {
  explicit TracingOn(std::size_t max_events = Tracer::kDefaultMaxEvents) {
    Tracer::global().start(max_events);
  }
  ~TracingOn() { Tracer::global().stop(); }
};

const nlohmann::json* find_event(const nlohmann::json& trace, const std::string& name) {
  for (const auto& event : trace["traceEvents"]) {
    if (event["name"] == name) return &event;
  }
  return nullptr;
}

}  // namespace trace_test

TEST_CASE("spans record nothing while tracing is off", "[trace]") {
  apo::monitor::Tracer::global().stop();
  const std::size_t before = apo::monitor::Tracer::global().events().size();
  {
    apo::monitor::Span span("off", "test");
    CHECK_FALSE(span.active());
    span.arg("ignored", 1.0);
  }
  apo::monitor::Tracer::global().instant("off", "test");
  CHECK(apo::monitor::Tracer::global().events().size() == before);
}

TEST_CASE("the trace is Chrome trace-event JSON with spans, instants, counters and threads",
          "[trace]") {
  trace_test::TracingOn on;
  auto& tracer = apo::monitor::Tracer::global();
  tracer.name_thread("test main");
  {
    apo::monitor::Span outer("batch", "engine");
    outer.arg("workflow", "qwen_edit \"quoted\"").arg("size", 4.0);
    { apo::monitor::Span inner("step", "sampling"); }
  }
  tracer.instant("oom_split", "engine", apo::monitor::trace_arg("halves", 2.0));
  tracer.counter("ledger", "used_bytes", 1024.0);
  std::thread worker([&] {
    tracer.name_thread("worker");
    apo::monitor::Span span("decode", "engine");
  });
  worker.join();

  const nlohmann::json trace = nlohmann::json::parse(tracer.to_json());
  REQUIRE(trace.contains("traceEvents"));
  CHECK(trace["displayTimeUnit"] == "ms");

  const auto* batch = trace_test::find_event(trace, "batch");
  const auto* step = trace_test::find_event(trace, "step");
  REQUIRE(batch != nullptr);
  REQUIRE(step != nullptr);
  CHECK((*batch)["ph"] == "X");
  CHECK((*batch)["cat"] == "engine");
  CHECK((*batch)["args"]["workflow"] == "qwen_edit \"quoted\"");
  CHECK((*batch)["args"]["size"] == 4.0);
  // Nesting: the step lies inside the batch on the same thread.
  CHECK((*step)["tid"] == (*batch)["tid"]);
  CHECK((*step)["ts"].get<std::int64_t>() >= (*batch)["ts"].get<std::int64_t>());
  CHECK((*step)["ts"].get<std::int64_t>() + (*step)["dur"].get<std::int64_t>() <=
        (*batch)["ts"].get<std::int64_t>() + (*batch)["dur"].get<std::int64_t>());

  const auto* oom = trace_test::find_event(trace, "oom_split");
  REQUIRE(oom != nullptr);
  CHECK((*oom)["ph"] == "i");
  CHECK((*oom)["args"]["halves"] == 2.0);
  const auto* ledger = trace_test::find_event(trace, "ledger");
  REQUIRE(ledger != nullptr);
  CHECK((*ledger)["ph"] == "C");
  CHECK((*ledger)["args"]["used_bytes"] == 1024.0);

  const auto* decode = trace_test::find_event(trace, "decode");
  REQUIRE(decode != nullptr);
  CHECK((*decode)["tid"] != (*batch)["tid"]);
  int thread_names = 0;
  for (const auto& event : trace["traceEvents"]) {
    if (event["name"] == "thread_name") {
      ++thread_names;
      CHECK(event["ph"] == "M");
      if (event["tid"] == (*decode)["tid"]) CHECK(event["args"]["name"] == "worker");
    }
  }
  CHECK(thread_names >= 2);
}

TEST_CASE("a full trace drops new events and counts them", "[trace]") {
  trace_test::TracingOn on(3);
  for (int i = 0; i < 5; ++i) apo::monitor::Span span("tick", "test");
  CHECK(apo::monitor::Tracer::global().events().size() == 3);
  CHECK(apo::monitor::Tracer::global().dropped() == 2);
  const auto trace = nlohmann::json::parse(apo::monitor::Tracer::global().to_json());
  CHECK(trace["otherData"]["dropped_events"] == 2);
}

TEST_CASE("start clears the previous trace; write puts it in a file", "[trace]") {
  {
    trace_test::TracingOn on;
    apo::monitor::Span span("first", "test");
  }
  trace_test::TracingOn on;
  { apo::monitor::Span span("second", "test"); }
  const auto events = apo::monitor::Tracer::global().events();
  REQUIRE(events.size() == 1);
  CHECK(events[0].name == "second");

  const auto path = std::filesystem::temp_directory_path() / "apo_trace_test.json";
  apo::monitor::Tracer::global().write(path);
  std::ifstream file(path);
  const auto parsed = nlohmann::json::parse(file);
  CHECK(trace_test::find_event(parsed, "second") != nullptr);
  std::filesystem::remove(path);
  CHECK_THROWS_AS(apo::monitor::Tracer::global().write("/nonexistent-dir/trace.json"), apo::Error);
}

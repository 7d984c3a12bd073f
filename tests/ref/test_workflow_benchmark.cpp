// WorkflowBenchmark: a short real run (statistics consistent with the values, progress), the JSON
// round trip, the comparison's directions and threshold, and its errors.

#include "apo_catch.hpp"

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "apo/core/error.hpp"
#include "apo/ref/workflow_benchmark.hpp"
#include "ref_test_support.hpp"

namespace workflow_benchmark_test {

namespace fs = std::filesystem;
namespace ref = apo::ref;

using ref_test::kModels;

// A report with one workflow whose metrics have the given means (one value each).
ref::WorkflowBenchmarkReport synthetic(double wall_s, double peak_bytes, double judge,
                                       int failed = 0) {
  ref::WorkflowBenchmarkReport report;
  report.iterations = 1;
  report.seed = 7;
  report.configuration = "synthetic";
  report.cache_clearing = "none";
  ref::WorkflowBenchmarkResult w;
  w.workflow = "qwen_edit";
  w.runs = 2;
  w.failed = failed;
  w.metrics["wall_seconds"] = ref::MetricStats::of({wall_s});
  w.metrics["peak_memory_bytes"] = ref::MetricStats::of({peak_bytes});
  w.metrics["judge_score"] = ref::MetricStats::of({judge});
  w.metrics["gpu_utilization_percent"] = ref::MetricStats::of({50.0});
  report.workflows.push_back(w);
  return report;
}

const ref::BenchmarkChange& change_of(const std::vector<ref::BenchmarkChange>& changes,
                                      const std::string& metric) {
  for (const ref::BenchmarkChange& c : changes) {
    if (c.metric == metric) return c;
  }
  throw apo::Error(apo::ErrorCode::NotFound, metric, "test");
}

}  // namespace workflow_benchmark_test

TEST_CASE("MetricStats summarises values as numpy does", "[workflow_benchmark]") {
  const auto s = apo::ref::MetricStats::of({2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0});
  CHECK(s.mean == Approx(5.0));
  CHECK(s.std == Approx(2.0));  // population standard deviation
  CHECK(s.min == 2.0);
  CHECK(s.max == 9.0);
  CHECK(s.values.size() == 8);
  const auto none = apo::ref::MetricStats::of({});
  CHECK(none.mean == 0.0);
  CHECK(none.values.empty());
}

TEST_CASE("WorkflowBenchmark runs workflows from a cold start and summarises each metric",
          "[workflow_benchmark]") {
  using namespace workflow_benchmark_test;
  ref::WorkflowBenchmarkOptions options;
  options.workflows = {"newbie_anime", "qwen_edit"};
  options.iterations = 1;
  options.models_dir = kModels;
  options.config = ref_test::engine_config();
  std::vector<ref::WorkflowBenchmarkProgress> seen;
  options.on_progress = [&](const ref::WorkflowBenchmarkProgress& p) { seen.push_back(p); };
  const ref::WorkflowBenchmarkReport report = ref::WorkflowBenchmark(options).run();

  REQUIRE(report.workflows.size() == 2);
  CHECK(report.workflows[0].workflow == "newbie_anime");
  CHECK(report.workflows[1].workflow == "qwen_edit");
  CHECK(report.iterations == 1);
  CHECK_FALSE(report.machine_json.empty());
  CHECK(report.wall_seconds > 0);
  for (const ref::WorkflowBenchmarkResult& w : report.workflows) {
    INFO(w.workflow);
    CHECK(w.runs == 1);
    CHECK(w.failed == 0);
    for (const char* metric :
         {"wall_seconds", "model_load_seconds", "peak_memory_bytes", "judge_score"}) {
      INFO(metric);
      REQUIRE(w.metrics.count(metric) == 1);
      const ref::MetricStats& s = w.metrics.at(metric);
      REQUIRE(s.values.size() == 1);
      // One value: it is the mean, the min and the max, with no spread.
      CHECK(s.mean == s.values[0]);
      CHECK(s.min == s.values[0]);
      CHECK(s.max == s.values[0]);
      CHECK(s.std == 0.0);
    }
    CHECK(w.metrics.at("wall_seconds").mean > 0);
    CHECK(w.metrics.at("wall_seconds").mean >= w.metrics.at("model_load_seconds").mean);
    // A new engine per run: every run loads its models.
    CHECK(w.metrics.at("model_load_seconds").mean > 0);
    CHECK(w.metrics.at("peak_memory_bytes").mean > 0);
    const double judge = w.metrics.at("judge_score").mean;
    CHECK(judge >= 0.0);
    CHECK(judge <= 1.0);
    // No GPU here: the metric is left out, not written as zero.
    CHECK(w.metrics.count("gpu_utilization_percent") == 0);
  }
  // The warm-up run (iteration 0), then before each run, then once as each workflow ends.
  REQUIRE(seen.size() == 5);
  CHECK(seen[0].workflow == "newbie_anime");
  CHECK(seen[0].iteration == 0);
  CHECK(seen[1].iteration == 1);
  CHECK(seen[1].done == 0);
  CHECK(seen[1].total == 2);
  CHECK(seen[2].iteration == 2);
  CHECK(seen[2].done == 1);
  CHECK(seen[4].workflow == "qwen_edit");
  CHECK(seen[4].done == 2);
  CHECK(report.warmup_runs == 1);

  // The JSON round trip keeps everything compare() and the plot read.
  const std::string json = report.to_json();
  CHECK(json.find(std::string(ref::kWorkflowBenchmarkSchema)) != std::string::npos);
  const ref::WorkflowBenchmarkReport back = ref::WorkflowBenchmarkReport::from_json(json);
  CHECK(back.iterations == report.iterations);
  CHECK(back.warmup_runs == report.warmup_runs);
  CHECK(back.seed == report.seed);
  CHECK(back.configuration == report.configuration);
  CHECK(back.cache_clearing == report.cache_clearing);
  REQUIRE(back.workflows.size() == 2);
  for (std::size_t i = 0; i < 2; ++i) {
    CHECK(back.workflows[i].workflow == report.workflows[i].workflow);
    CHECK(back.workflows[i].runs == report.workflows[i].runs);
    REQUIRE(back.workflows[i].metrics.size() == report.workflows[i].metrics.size());
    for (const auto& [name, stats] : report.workflows[i].metrics) {
      INFO(name);
      CHECK(back.workflows[i].metrics.at(name).values == stats.values);
      CHECK(back.workflows[i].metrics.at(name).mean == Approx(stats.mean));
    }
  }
  // Against itself: no change, no regression.
  const auto same = ref::compare(json, json, 0.0);
  CHECK_FALSE(ref::has_regression(same));
  for (const auto& c : same) CHECK(c.relative_change == 0.0);
}

TEST_CASE("compare flags regressions in each metric's direction, beyond the threshold",
          "[workflow_benchmark]") {
  using namespace workflow_benchmark_test;
  const auto before = synthetic(10.0, 1000.0, 0.8);

  SECTION("slower, larger and worse is a regression in each") {
    const auto changes = ref::compare(before, synthetic(12.0, 1300.0, 0.6), 0.1);
    CHECK(ref::has_regression(changes));
    CHECK(change_of(changes, "wall_seconds").regression);
    CHECK(change_of(changes, "wall_seconds").relative_change == Approx(0.2));
    CHECK(change_of(changes, "peak_memory_bytes").regression);
    CHECK(change_of(changes, "judge_score").regression);
    CHECK(change_of(changes, "judge_score").relative_change == Approx(-0.25));
  }
  SECTION("faster, smaller and better is an improvement, not a regression") {
    const auto changes = ref::compare(before, synthetic(8.0, 700.0, 0.95), 0.1);
    CHECK_FALSE(ref::has_regression(changes));
    CHECK(change_of(changes, "wall_seconds").improvement);
    CHECK(change_of(changes, "peak_memory_bytes").improvement);
    CHECK(change_of(changes, "judge_score").improvement);
  }
  SECTION("changes within the threshold are neither") {
    const auto changes = ref::compare(before, synthetic(10.9, 1050.0, 0.75), 0.1);
    CHECK_FALSE(ref::has_regression(changes));
    CHECK_FALSE(change_of(changes, "wall_seconds").improvement);
    // The same change passes a tighter threshold.
    CHECK(change_of(ref::compare(before, synthetic(10.9, 1000.0, 0.8), 0.05), "wall_seconds")
              .regression);
  }
  SECTION("a change within the runs' spread is noise, not a regression") {
    auto spread_before = before;
    auto spread_after = before;
    spread_before.workflows[0].metrics["wall_seconds"] = apo::ref::MetricStats::of({8, 10, 12});
    spread_after.workflows[0].metrics["wall_seconds"] = apo::ref::MetricStats::of({10, 11.5, 13});
    const auto noisy = ref::compare(spread_before, spread_after, 0.1);
    CHECK(change_of(noisy, "wall_seconds").relative_change == Approx(0.15));
    CHECK_FALSE(change_of(noisy, "wall_seconds").regression);
    spread_after.workflows[0].metrics["wall_seconds"] = apo::ref::MetricStats::of({12, 13, 14});
    CHECK(change_of(ref::compare(spread_before, spread_after, 0.1), "wall_seconds").regression);
  }
  SECTION("GPU utilization is reported but never flagged") {
    auto after = synthetic(10.0, 1000.0, 0.8);
    after.workflows[0].metrics["gpu_utilization_percent"] = apo::ref::MetricStats::of({5.0});
    const auto changes = ref::compare(before, after, 0.1);
    CHECK(change_of(changes, "gpu_utilization_percent").relative_change == Approx(-0.9));
    CHECK_FALSE(ref::has_regression(changes));
  }
  SECTION("more failed runs is a regression") {
    const auto changes = ref::compare(before, synthetic(10.0, 1000.0, 0.8, 1), 0.1);
    CHECK(change_of(changes, "failed_runs").regression);
    CHECK(ref::has_regression(changes));
  }
  SECTION("workflows in only one benchmark are not compared") {
    auto after = synthetic(20.0, 1000.0, 0.8);
    after.workflows[0].workflow = "wan_alpha";
    CHECK(ref::compare(before, after, 0.1).empty());
  }
  SECTION("a negative threshold is refused") {
    CHECK_THROWS_AS(ref::compare(before, before, -0.1), apo::Error);
  }
}

TEST_CASE("WorkflowBenchmark errors name the value at fault", "[workflow_benchmark]") {
  using namespace workflow_benchmark_test;
  ref::WorkflowBenchmarkOptions options;
  options.workflows = {"qwen_edit", "sdxl_turbo"};
  try {
    ref::WorkflowBenchmark benchmark(options);
    FAIL("an unknown workflow was accepted");
  } catch (const apo::Error& error) {
    CHECK(error.code() == apo::ErrorCode::InvalidArgument);
    const std::string message = error.what();
    CHECK(message.find("sdxl_turbo") != std::string::npos);
    CHECK(message.find("hunyuan_t2v") != std::string::npos);  // the valid ones are listed
  }
  options.workflows = {};
  options.iterations = 0;
  CHECK_THROWS_AS(ref::WorkflowBenchmark(options), apo::Error);
  options.iterations = 1;
  options.warmup_runs = -1;
  CHECK_THROWS_AS(ref::WorkflowBenchmark(options), apo::Error);

  CHECK_THROWS_WITH(ref::WorkflowBenchmarkReport::from_json("{\"schema\": \"other/1\"}"),
                    Catch::Contains("other/1"));
  CHECK_THROWS_WITH(ref::WorkflowBenchmarkReport::from_json("not json"),
                    Catch::Contains("not JSON"));
  const std::string bad = R"({"schema": "apo.workflow_benchmark/1", "config": {"iterations": 1,
      "seed": 1, "configuration": "", "cache_clearing": ""}, "workflows": [{"workflow": "x",
      "runs": 1, "failed": 0, "metrics": {"wall_seconds": {"values": ["fast"]}}}]})";
  CHECK_THROWS_WITH(ref::WorkflowBenchmarkReport::from_json(bad),
                    Catch::Contains("workflows[0].metrics.wall_seconds.values"));
}

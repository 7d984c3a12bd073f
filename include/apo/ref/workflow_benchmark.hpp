#pragma once

/// @file
/// @brief The guide's WorkflowBenchmark: each of the eight reference workflows (or a chosen
/// subset) run a number of times from a cold start, with wall time, peak memory, judge score and
/// GPU utilization recorded per run and summarised (mean, standard deviation, min, max); the
/// results as JSON ("apo.workflow_benchmark/1"), and a comparison of two such files that flags
/// regressions beyond a threshold, for CI.

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apo/core/config.hpp"
#include "apo/core/machine.hpp"

namespace apo::ref {

/// @brief The schema tag every results file carries.
inline constexpr std::string_view kWorkflowBenchmarkSchema = "apo.workflow_benchmark/1";

/// @brief Which way a metric improves; `neither` is reported but never flagged: model load time
/// (a part of the wall time, which is flagged), process RSS growth (allocator and thread-pool
/// noise of a few MiB; the ledger peak is the memory that is flagged) and GPU utilization
/// (neither high nor low is better in itself).
enum class MetricDirection { lower_is_better, higher_is_better, neither };

/// @brief A metric the benchmark records per run.
struct BenchmarkMetric {
  std::string_view name;  ///< the key in the JSON
  std::string_view unit;
  MetricDirection direction;
  std::string_view description;
};

/// @brief The metrics, in the order tables and plots show them. Metrics a machine cannot measure
/// (GPU utilization without NVML; RSS growth without /proc/self/clear_refs) are left out of a
/// workflow's results rather than written as zeros.
inline constexpr std::array<BenchmarkMetric, 6> kBenchmarkMetrics{{
    {"wall_seconds", "s", MetricDirection::lower_is_better,
     "submit to result, models loaded from disk (the engine is new for each run)"},
    {"model_load_seconds", "s", MetricDirection::neither,
     "the part of the wall time spent acquiring models (Result::timings.model_load)"},
    {"peak_memory_bytes", "bytes", MetricDirection::lower_is_better,
     "the most the engine's memory ledger held on the request's device while it ran "
     "(Result::peak_memory_bytes)"},
    {"rss_growth_bytes", "bytes", MetricDirection::neither,
     "the process's peak resident set during the run (VmHWM, reset before it through "
     "/proc/self/clear_refs) less its resident set at the start"},
    {"judge_score", "score", MetricDirection::higher_is_better,
     "the judge's score of the output against its prompt, in [0, 1] (Result::quality)"},
    {"gpu_utilization_percent", "%", MetricDirection::neither,
     "NVML's GPU utilization of the request's device, mean of samples every 100 ms over the run"},
}};

/// @brief The metric called `name`, or nullptr.
const BenchmarkMetric* find_benchmark_metric(std::string_view name) noexcept;

/// @brief A metric's values over the runs and their summary. `std` is the population standard
/// deviation (numpy.std's default, as the guide computes it).
struct MetricStats {
  std::vector<double> values;
  double mean = 0;
  double std = 0;
  double min = 0;
  double max = 0;

  /// @brief The summary of `values` (all zeros for none).
  static MetricStats of(std::vector<double> values);
};

/// @brief One workflow's part of a benchmark.
struct WorkflowBenchmarkResult {
  std::string workflow;
  int runs = 0;                       ///< runs attempted
  int failed = 0;                     ///< runs that did not end ok (left out of the metrics)
  std::vector<std::string> failures;  ///< "iteration 2: message"
  /// By metric name (kBenchmarkMetrics); a metric not measured on this machine is absent.
  std::map<std::string, MetricStats> metrics;
};

/// @brief A whole benchmark, as written to and read from JSON.
struct WorkflowBenchmarkReport {
  std::string machine_json;  ///< apo::to_json(probe_machine()), or what the file held
  int iterations = 0;
  int warmup_runs = 0;
  std::uint64_t seed = 0;
  std::string configuration;   ///< precision, slicing, batch policy in a sentence
  std::string cache_clearing;  ///< what was cleared before each run, on this machine
  std::vector<WorkflowBenchmarkResult> workflows;
  double wall_seconds = 0;  ///< the whole benchmark

  /// @brief The results as JSON: {"schema", "machine", "config": {iterations, warmup_runs, seed,
  /// configuration, cache_clearing}, "metrics": {name: {unit, better, description}},
  /// "workflows": [{workflow, runs, failed, failures, metrics: {name: {mean, std, min, max,
  /// values}}}], "wall_seconds"}. "better" is "lower", "higher" or "neither".
  std::string to_json(int indent = 2) const;
  /// @brief Reads what to_json writes.
  /// @throws apo::Error InvalidArgument naming the field at fault (wrong schema, missing or
  /// mistyped fields, malformed JSON)
  static WorkflowBenchmarkReport from_json(std::string_view text);
  /// @brief The workflow called `name`, or nullptr.
  const WorkflowBenchmarkResult* find(std::string_view name) const noexcept;
};

/// @brief Where a benchmark stands: called before each run.
struct WorkflowBenchmarkProgress {
  std::string workflow;
  /// 1-based, the run about to start; 0 for a warm-up run; iterations + 1 once the workflow ends
  int iteration = 0;
  int iterations = 0;
  int done = 0;   ///< runs ended over all workflows
  int total = 0;  ///< runs in the benchmark
};

struct WorkflowBenchmarkOptions {
  /// The workflows to run (kWorkflowNames); empty: all eight.
  std::vector<std::string> workflows;
  int iterations = 5;
  /// Untimed runs of the first workflow's first request before measuring, so that one-time
  /// costs of the process (torch's thread pools, the first reads of the model files) are not
  /// charged to the first workflow.
  int warmup_runs = 1;
  std::filesystem::path models_dir;  ///< empty: default_models_dir()
  /// The configuration; unset: the one apo recommends for this machine.
  std::optional<Config> config;
  /// Seed of the requests: iteration k of a workflow runs request k of demo_trace(seed), so two
  /// benchmarks with the same seed and iterations run the same requests.
  std::uint64_t seed = 1;
  std::function<void(const WorkflowBenchmarkProgress&)> on_progress;
};

/// @brief The guide's benchmark suite over the reference workflows. Before each run, caches are
/// cleared: a new engine (its model cache, memory pool and batch history empty, so every run
/// loads its models from disk) and, where torch has a CUDA device, torch's caching allocator
/// emptied. The operating system's page cache is not dropped: on the CPU "cleared" means the
/// engine's caches, and model files are read from memory after the first run.
class WorkflowBenchmark {
 public:
  /// @throws apo::Error InvalidArgument for an unknown workflow (listing the valid ones),
  /// iterations below 1 or negative warm-up runs
  explicit WorkflowBenchmark(WorkflowBenchmarkOptions options);

  /// @brief Runs every workflow `iterations` times, one run at a time.
  /// @throws apo::Error NotFound / Corrupt for missing or broken model files
  WorkflowBenchmarkReport run() const;

  const WorkflowBenchmarkOptions& options() const noexcept { return options_; }

 private:
  WorkflowBenchmarkOptions options_;
};

/// @brief How one metric of one workflow changed between two benchmarks (means).
struct BenchmarkChange {
  std::string workflow;
  std::string metric;  ///< a kBenchmarkMetrics name, or "failed_runs"
  std::string unit;
  MetricDirection direction = MetricDirection::neither;
  double before = 0;
  double after = 0;
  /// (after - before) / |before|; +-infinity when before is 0 and after is not, 0 when both are.
  double relative_change = 0;
  bool regression = false;   ///< worse by more than the threshold
  bool improvement = false;  ///< better by more than the threshold
};

/// @brief The changes of every metric of every workflow both benchmarks ran. A change is a
/// regression when it is worse than `threshold` (a fraction: 0.1 is 10%) in the metric's
/// direction (time and memory up, judge score down) and the difference of the means exceeds the
/// larger standard deviation of the two (a change within the runs' own spread is noise);
/// metrics of direction `neither` are never flagged. A larger fraction of failed runs after than
/// before is always a regression
/// ("failed_runs", listed when either benchmark had failures).
/// @throws apo::Error InvalidArgument for a negative threshold
std::vector<BenchmarkChange> compare(const WorkflowBenchmarkReport& before,
                                     const WorkflowBenchmarkReport& after, double threshold);
/// @brief compare() on two results files' contents.
std::vector<BenchmarkChange> compare(std::string_view before_json, std::string_view after_json,
                                     double threshold);

/// @brief Whether any change is a regression.
bool has_regression(const std::vector<BenchmarkChange>& changes) noexcept;

}  // namespace apo::ref

#include "bench_commands.hpp"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string_view>

#include <fmt/format.h>

#include "apo/core/config.hpp"
#include "apo/core/error.hpp"
#include "apo/core/machine.hpp"
#include "apo/ref/workflow_benchmark.hpp"
#include "apo/ref/workflows.hpp"
#include "apo/tune/presets.hpp"
#include "progress.hpp"

namespace apo::cli {

namespace {

constexpr int kExitRegression = 1;
constexpr int kExitUsage = 2;

std::string read_text(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Error(ErrorCode::NotFound, fmt::format("cannot open {}", path), "bench");
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

// A metric's value in the unit a reader wants: MiB for bytes.
std::string value_text(const std::string& unit, double value) {
  if (unit == "bytes") return fmt::format("{:.1f} MiB", value / (1 << 20));
  if (unit == "s") return fmt::format("{:.2f} s", value);
  if (unit == "%") return fmt::format("{:.0f}%", value);
  return fmt::format("{:.3f}", value);
}

std::string mean_text(const ref::WorkflowBenchmarkResult& w, const std::string& metric,
                      const std::string& unit) {
  const auto it = w.metrics.find(metric);
  return it == w.metrics.end() ? std::string("-") : value_text(unit, it->second.mean);
}

void print_table(const ref::WorkflowBenchmarkReport& report) {
  fmt::print("\n{:<14} {:>5} {:>16} {:>8} {:>8} {:>8} {:>11} {:>11} {:>6} {:>5}\n", "workflow",
             "ok", "time mean±std s", "min s", "max s", "load s", "peak", "RSS growth", "judge",
             "GPU");
  for (const ref::WorkflowBenchmarkResult& w : report.workflows) {
    const auto time = w.metrics.find("wall_seconds");
    std::string mean_std = "-", min = "-", max = "-";
    if (time != w.metrics.end()) {
      mean_std = fmt::format("{:.2f} ± {:.2f}", time->second.mean, time->second.std);
      min = fmt::format("{:.2f}", time->second.min);
      max = fmt::format("{:.2f}", time->second.max);
    }
    const auto judge = w.metrics.find("judge_score");
    fmt::print(
        "{:<14} {:>5} {:>16} {:>8} {:>8} {:>8} {:>11} {:>11} {:>6} {:>5}\n", w.workflow,
        fmt::format("{}/{}", w.runs - w.failed, w.runs), mean_std, min, max,
        w.metrics.count("model_load_seconds")
            ? fmt::format("{:.2f}", w.metrics.at("model_load_seconds").mean)
            : std::string("-"),
        mean_text(w, "peak_memory_bytes", "bytes"), mean_text(w, "rss_growth_bytes", "bytes"),
        judge == w.metrics.end() ? std::string("-") : fmt::format("{:.3f}", judge->second.mean),
        mean_text(w, "gpu_utilization_percent", "%"));
  }
  fmt::print("\n{} run(s) of each workflow (after {} warm-up run(s)) in {:.1f} s; {}\n",
             report.iterations, report.warmup_runs, report.wall_seconds, report.configuration);
  fmt::print("before each run: {}\n", report.cache_clearing);
  for (const ref::WorkflowBenchmarkResult& w : report.workflows) {
    for (const std::string& failure : w.failures) fmt::print("FAILED {} {}\n", w.workflow, failure);
  }
}

// Benchmarks with other seeds or iteration counts ran other requests: their judge scores (and,
// less so, times) differ for that reason alone.
void warn_if_other_requests(const ref::WorkflowBenchmarkReport& before,
                            const ref::WorkflowBenchmarkReport& after) {
  if (before.seed == after.seed && before.iterations == after.iterations) return;
  fmt::print(
      "note: the benchmarks ran different requests (seed {} and {} iterations before, seed {} and "
      "{} after): judge scores are not comparable\n",
      before.seed, before.iterations, after.seed, after.iterations);
}

// Prints the changes; returns the exit code (1 when one is a regression).
int print_changes(const std::vector<ref::BenchmarkChange>& changes, double threshold) {
  fmt::print("{:<14} {:<24} {:>12} {:>12} {:>9}\n", "workflow", "metric", "before", "after",
             "change");
  int regressions = 0;
  for (const ref::BenchmarkChange& c : changes) {
    const std::string change = std::isfinite(c.relative_change)
                                   ? fmt::format("{:+.1f}%", 100 * c.relative_change)
                                   : std::string(c.relative_change > 0 ? "+inf" : "-inf");
    const char* verdict = c.regression ? "  REGRESSION" : c.improvement ? "  improved" : "";
    fmt::print("{:<14} {:<24} {:>12} {:>12} {:>9}{}\n", c.workflow, c.metric,
               value_text(c.unit, c.before), value_text(c.unit, c.after), change, verdict);
    if (c.regression) ++regressions;
  }
  if (changes.empty()) fmt::print("(no workflow in both files)\n");
  fmt::print("\n{} regression(s) beyond {:.0f}%\n", regressions, 100 * threshold);
  return regressions > 0 ? kExitRegression : 0;
}

}  // namespace

void BenchCommands::add(CLI::App& app) {
  std::string names;
  for (std::string_view name : ref::kWorkflowNames)
    names += (names.empty() ? "" : ", ") + std::string(name);
  bench_ = app.add_subcommand(
      "bench",
      "Benchmark the reference workflows (the guide's WorkflowBenchmark): time, memory, judge "
      "score per workflow over several cold-start runs");
  bench_->add_option("workflows", workflows_, "Workflows to run (default: all): " + names);
  bench_->add_option("-n,--iterations", iterations_, "Runs of each workflow")
      ->capture_default_str();
  bench_->add_option("--json", json_path_, "Write the results as JSON to FILE");
  bench_->add_option("--compare", compare_path_,
                     "Compare with an earlier results file; exit 1 on a regression");
  bench_
      ->add_option("--threshold", threshold_,
                   "Relative change that counts as a regression (0.1: 10%)")
      ->capture_default_str();
  bench_
      ->add_option("--warmup", warmup_runs_, "Untimed runs of the first workflow before measuring")
      ->capture_default_str();
  bench_->add_option("--seed", seed_, "Seed of the requests")->capture_default_str();
  bench_->add_option("--config", config_files_,
                     "Configuration files over the one recommended for this machine (repeatable)");
  bench_->add_option("--set", overrides_, "An override key.path=value, applied last (repeatable)");
  trace_.add(bench_);

  compare_ = bench_->add_subcommand(
      "compare", "Compare two results files; exit 1 when a metric regressed beyond the threshold");
  compare_->add_option("before", compare_before_, "The earlier results (JSON)")->required();
  compare_->add_option("after", compare_after_, "The later results (JSON)")->required();
  compare_
      ->add_option("--threshold", threshold_,
                   "Relative change that counts as a regression (0.1: 10%)")
      ->capture_default_str();
}

std::optional<int> BenchCommands::run() {
  if (compare_ && *compare_) return run_compare(compare_before_, compare_after_);
  if (bench_ && *bench_) return run_benchmark();
  return std::nullopt;
}

int BenchCommands::run_compare(const std::string& before_path, const std::string& after_path) {
  ref::WorkflowBenchmarkReport before, after;
  std::vector<ref::BenchmarkChange> changes;
  // Exit 1 means a regression to CI: a file that cannot be read or a bad threshold is a usage
  // error (2).
  try {
    before = ref::WorkflowBenchmarkReport::from_json(read_text(before_path));
    after = ref::WorkflowBenchmarkReport::from_json(read_text(after_path));
    changes = ref::compare(before, after, threshold_);
  } catch (const Error& error) {
    fmt::print(stderr, "apo: {}\n", error.what());
    return kExitUsage;
  }
  fmt::print("{} -> {}\n", before_path, after_path);
  warn_if_other_requests(before, after);
  return print_changes(changes, threshold_);
}

int BenchCommands::run_benchmark() {
  ref::WorkflowBenchmarkOptions options;
  options.workflows = workflows_;
  options.iterations = iterations_;
  options.warmup_runs = warmup_runs_;
  options.seed = seed_;
  if (!config_files_.empty() || !overrides_.empty()) {
    // Layered as `apo recommend` and `apo config show` layer: the recommendation, then files,
    // then overrides; bad files raise ConfigError, which main() reports line by line.
    ConfigLoader loader = tune::config_loader();
    loader.preset_json(to_json(tune::recommend(probe_machine()).loaded.config), "recommended");
    for (const std::string& file : config_files_) loader.file(file);
    for (const std::string& assignment : overrides_) loader.set(assignment);
    options.config = loader.load().config;
  }
  ProgressBar bar("runs");
  options.on_progress = [&bar](const ref::WorkflowBenchmarkProgress& p) {
    bar.show("bench", p.done, p.total,
             p.iteration == 0 ? p.workflow + " warm-up"
             : p.iteration <= p.iterations
                 ? fmt::format("{} {}/{}", p.workflow, p.iteration, p.iterations)
                 : p.workflow + " done");
  };
  std::optional<ref::WorkflowBenchmark> benchmark;
  std::optional<ref::WorkflowBenchmarkReport> before;
  try {
    benchmark.emplace(options);
    // Read the earlier results (and check the threshold) now: a bad file should not cost a
    // whole benchmark first.
    if (compare_path_) {
      before = ref::WorkflowBenchmarkReport::from_json(read_text(*compare_path_));
      (void)ref::compare(*before, *before, threshold_);
    }
  } catch (const Error& error) {
    fmt::print(stderr, "apo: {}\n", error.what());
    return kExitUsage;
  }
  trace_.start();
  const ref::WorkflowBenchmarkReport report = benchmark->run();
  bar.finish();
  trace_.finish();
  print_table(report);
  if (json_path_) {
    std::ofstream file(*json_path_);
    file << report.to_json() << "\n";
    if (!file) throw Error(ErrorCode::Io, fmt::format("cannot write {}", *json_path_), "bench");
    fmt::print("results in {}\n", *json_path_);
  }
  if (!before) return 0;
  fmt::print("\ncompared with {}:\n", *compare_path_);
  warn_if_other_requests(*before, report);
  return print_changes(ref::compare(*before, report, threshold_), threshold_);
}

}  // namespace apo::cli

// WorkflowBenchmark: the reference workflows run from a cold start, measured per run and
// summarised; its JSON form and the comparison of two benchmarks.

#include "apo/ref/workflow_benchmark.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <fstream>
#include <limits>
#include <mutex>
#include <numeric>
#include <thread>

#include "../core/nvml.hpp"
#include "apo/core/error.hpp"
#include "apo/engine/any_engine.hpp"
#include "apo/memory/torch_allocator.hpp"
#include "apo/ref/demo.hpp"
#include "apo/ref/workflows.hpp"
#include "apo/tune/presets.hpp"

namespace apo::ref {

namespace {

using Json = nlohmann::ordered_json;

constexpr std::string_view kContext = "workflow benchmark";

std::string_view direction_name(MetricDirection direction) {
  switch (direction) {
    case MetricDirection::lower_is_better:
      return "lower";
    case MetricDirection::higher_is_better:
      return "higher";
    default:
      return "neither";
  }
}

// A field of /proc/self/status ("VmRSS:    1234 kB") in bytes; nullopt where absent.
std::optional<std::int64_t> proc_status_bytes(std::string_view field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.starts_with(field) && line.size() > field.size() && line[field.size()] == ':') {
      return std::stoll(line.substr(field.size() + 1)) * 1024;
    }
  }
  return std::nullopt;
}

// The process's peak resident set over a stretch of time: Linux resets VmHWM to the current
// resident set when "5" is written to /proc/self/clear_refs (since 4.0). Where that fails the
// high-water mark is the process's whole life, which says nothing about one run: unmeasured.
class RssPeak {
 public:
  RssPeak() {
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";
    clear.flush();
    if (!clear) return;
    start_ = proc_status_bytes("VmRSS");
  }
  std::optional<double> growth_bytes() const {
    if (!start_) return std::nullopt;
    const auto peak = proc_status_bytes("VmHWM");
    if (!peak) return std::nullopt;
    return static_cast<double>(std::max<std::int64_t>(0, *peak - *start_));
  }

 private:
  std::optional<std::int64_t> start_;
};

// Samples NVML's utilization of every CUDA device every 100 ms while it lives; owns its thread.
class GpuSampler {
 public:
  GpuSampler(const detail::Nvml& nvml, const std::vector<CudaDeviceInfo>& devices)
      : nvml_(nvml), devices_(devices), samples_(devices.size()) {
    if (!nvml_.ok() || devices_.empty()) return;
    thread_ = std::thread([this] {
      std::unique_lock lock(mutex_);
      while (!stop_) {
        lock.unlock();
        std::vector<std::optional<int>> readings;
        for (const CudaDeviceInfo& device : devices_) {
          readings.push_back(nvml_.telemetry(device.pci_bus_id).utilization_percent);
        }
        lock.lock();
        for (std::size_t i = 0; i < readings.size(); ++i) {
          if (readings[i]) samples_[i].push_back(*readings[i]);
        }
        wake_.wait_for(lock, std::chrono::milliseconds(100), [this] { return stop_; });
      }
    });
  }
  ~GpuSampler() { stop(); }
  GpuSampler(const GpuSampler&) = delete;
  GpuSampler& operator=(const GpuSampler&) = delete;

  void stop() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  // The mean utilization of the CUDA device with this index; nullopt without samples.
  std::optional<double> mean_percent(int cuda_index) {
    stop();
    for (std::size_t i = 0; i < devices_.size(); ++i) {
      if (devices_[i].index != cuda_index || samples_[i].empty()) continue;
      const double sum = std::accumulate(samples_[i].begin(), samples_[i].end(), 0.0);
      return sum / static_cast<double>(samples_[i].size());
    }
    return std::nullopt;
  }

 private:
  const detail::Nvml& nvml_;
  const std::vector<CudaDeviceInfo>& devices_;
  std::vector<std::vector<int>> samples_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

double seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

std::string configuration_sentence(const Config& config) {
  return fmt::format("{} weights{}, attention slicing {}, {} batches up to {}, {} queue",
                     to_string(config.performance.model_precision),
                     config.performance.enable_quantization ? " (quantization on)" : "",
                     config.attention.enable_attention_slicing ? "on" : "off",
                     to_string(config.scheduling.batch_policy), config.performance.max_batch_size,
                     to_string(config.scheduling.queue_policy));
}

// Reading JSON: each accessor names the field at fault.
[[noreturn]] void bad_field(const std::string& path, std::string_view expected) {
  throw Error(ErrorCode::InvalidArgument,
              fmt::format("benchmark results: \"{}\" is missing or not {}", path, expected),
              std::string(kContext));
}

const Json& member(const Json& object, const std::string& key, const std::string& path) {
  if (!object.is_object() || !object.contains(key)) bad_field(path, "present");
  return object.at(key);
}

double number_at(const Json& object, const std::string& key, const std::string& path) {
  const Json& value = member(object, key, path);
  if (!value.is_number()) bad_field(path, "a number");
  return value.get<double>();
}

std::string string_at(const Json& object, const std::string& key, const std::string& path) {
  const Json& value = member(object, key, path);
  if (!value.is_string()) bad_field(path, "a string");
  return value.get<std::string>();
}

int int_at(const Json& object, const std::string& key, const std::string& path) {
  const Json& value = member(object, key, path);
  if (!value.is_number_integer()) bad_field(path, "an integer");
  return value.get<int>();
}

double relative_change(double before, double after) {
  if (before == after) return 0.0;
  if (before == 0) {
    return after > 0 ? std::numeric_limits<double>::infinity()
                     : -std::numeric_limits<double>::infinity();
  }
  return (after - before) / std::abs(before);
}

}  // namespace

const BenchmarkMetric* find_benchmark_metric(std::string_view name) noexcept {
  for (const BenchmarkMetric& metric : kBenchmarkMetrics) {
    if (metric.name == name) return &metric;
  }
  return nullptr;
}

MetricStats MetricStats::of(std::vector<double> values) {
  MetricStats stats;
  stats.values = std::move(values);
  if (stats.values.empty()) return stats;
  const double n = static_cast<double>(stats.values.size());
  stats.mean = std::accumulate(stats.values.begin(), stats.values.end(), 0.0) / n;
  double squares = 0;
  for (double v : stats.values) squares += (v - stats.mean) * (v - stats.mean);
  stats.std = std::sqrt(squares / n);
  const auto [low, high] = std::minmax_element(stats.values.begin(), stats.values.end());
  stats.min = *low;
  stats.max = *high;
  return stats;
}

const WorkflowBenchmarkResult* WorkflowBenchmarkReport::find(std::string_view name) const noexcept {
  for (const WorkflowBenchmarkResult& w : workflows) {
    if (w.workflow == name) return &w;
  }
  return nullptr;
}

std::string WorkflowBenchmarkReport::to_json(int indent) const {
  Json metrics = Json::object();
  for (const BenchmarkMetric& metric : kBenchmarkMetrics) {
    metrics[std::string(metric.name)] = {{"unit", metric.unit},
                                         {"better", direction_name(metric.direction)},
                                         {"description", metric.description}};
  }
  Json list = Json::array();
  for (const WorkflowBenchmarkResult& w : workflows) {
    Json values = Json::object();
    // In kBenchmarkMetrics' order, not the map's.
    for (const BenchmarkMetric& metric : kBenchmarkMetrics) {
      const auto it = w.metrics.find(std::string(metric.name));
      if (it == w.metrics.end()) continue;
      const MetricStats& s = it->second;
      values[std::string(metric.name)] = {
          {"mean", s.mean}, {"std", s.std}, {"min", s.min}, {"max", s.max}, {"values", s.values}};
    }
    list.push_back({{"workflow", w.workflow},
                    {"runs", w.runs},
                    {"failed", w.failed},
                    {"failures", w.failures},
                    {"metrics", values}});
  }
  Json machine = Json::object();
  if (!machine_json.empty()) machine = Json::parse(machine_json);
  const Json out{{"schema", kWorkflowBenchmarkSchema},
                 {"machine", machine},
                 {"config",
                  {{"iterations", iterations},
                   {"warmup_runs", warmup_runs},
                   {"seed", seed},
                   {"configuration", configuration},
                   {"cache_clearing", cache_clearing}}},
                 {"metrics", metrics},
                 {"workflows", list},
                 {"wall_seconds", wall_seconds}};
  return out.dump(indent);
}

WorkflowBenchmarkReport WorkflowBenchmarkReport::from_json(std::string_view text) {
  Json root;
  try {
    root = Json::parse(text);
  } catch (const nlohmann::json::parse_error& error) {
    throw Error(ErrorCode::InvalidArgument,
                fmt::format("benchmark results are not JSON: {}", error.what()),
                std::string(kContext));
  }
  if (!root.is_object()) bad_field("(top level)", "an object");
  const std::string schema = string_at(root, "schema", "schema");
  if (schema != kWorkflowBenchmarkSchema) {
    throw Error(ErrorCode::InvalidArgument,
                fmt::format("benchmark results: schema \"{}\", expected \"{}\"", schema,
                            kWorkflowBenchmarkSchema),
                std::string(kContext));
  }
  WorkflowBenchmarkReport report;
  if (root.contains("machine")) report.machine_json = root.at("machine").dump();
  const Json& config = member(root, "config", "config");
  report.iterations = int_at(config, "iterations", "config.iterations");
  if (config.contains("warmup_runs")) {
    report.warmup_runs = int_at(config, "warmup_runs", "config.warmup_runs");
  }
  const Json& seed = member(config, "seed", "config.seed");
  if (!seed.is_number_unsigned()) bad_field("config.seed", "a non-negative integer");
  report.seed = seed.get<std::uint64_t>();
  report.configuration = string_at(config, "configuration", "config.configuration");
  report.cache_clearing = string_at(config, "cache_clearing", "config.cache_clearing");
  if (root.contains("wall_seconds"))
    report.wall_seconds = number_at(root, "wall_seconds", "wall_seconds");
  const Json& workflows = member(root, "workflows", "workflows");
  if (!workflows.is_array()) bad_field("workflows", "an array");
  for (std::size_t i = 0; i < workflows.size(); ++i) {
    const Json& item = workflows[i];
    const std::string at = fmt::format("workflows[{}]", i);
    WorkflowBenchmarkResult w;
    w.workflow = string_at(item, "workflow", at + ".workflow");
    w.runs = int_at(item, "runs", at + ".runs");
    w.failed = int_at(item, "failed", at + ".failed");
    if (item.contains("failures")) {
      const Json& failures = item.at("failures");
      if (!failures.is_array()) bad_field(at + ".failures", "an array");
      for (const Json& f : failures) {
        if (!f.is_string()) bad_field(at + ".failures", "an array of strings");
        w.failures.push_back(f.get<std::string>());
      }
    }
    const Json& metrics = member(item, "metrics", at + ".metrics");
    if (!metrics.is_object()) bad_field(at + ".metrics", "an object");
    for (const auto& [name, stats] : metrics.items()) {
      const std::string path = at + ".metrics." + name;
      const Json& values = member(stats, "values", path + ".values");
      if (!values.is_array()) bad_field(path + ".values", "an array");
      MetricStats s;
      for (const Json& v : values) {
        if (!v.is_number()) bad_field(path + ".values", "an array of numbers");
        s.values.push_back(v.get<double>());
      }
      s.mean = number_at(stats, "mean", path + ".mean");
      s.std = number_at(stats, "std", path + ".std");
      s.min = number_at(stats, "min", path + ".min");
      s.max = number_at(stats, "max", path + ".max");
      w.metrics[name] = std::move(s);
    }
    report.workflows.push_back(std::move(w));
  }
  return report;
}

WorkflowBenchmark::WorkflowBenchmark(WorkflowBenchmarkOptions options)
    : options_(std::move(options)) {
  if (options_.iterations < 1) {
    throw Error(ErrorCode::InvalidArgument,
                fmt::format("{} iterations: expected at least 1", options_.iterations),
                std::string(kContext));
  }
  if (options_.warmup_runs < 0) {
    throw Error(ErrorCode::InvalidArgument,
                fmt::format("{} warm-up runs: expected 0 or more", options_.warmup_runs),
                std::string(kContext));
  }
  if (options_.workflows.empty()) {
    for (std::string_view name : kWorkflowNames) options_.workflows.emplace_back(name);
  }
  for (const std::string& name : options_.workflows) {
    if (std::find(kWorkflowNames.begin(), kWorkflowNames.end(), name) == kWorkflowNames.end()) {
      throw Error(ErrorCode::InvalidArgument,
                  fmt::format("unknown workflow \"{}\" (expected one of {})", name,
                              fmt::join(kWorkflowNames, ", ")),
                  std::string(kContext));
    }
  }
}

WorkflowBenchmarkReport WorkflowBenchmark::run() const {
  const auto start = std::chrono::steady_clock::now();
  const std::filesystem::path models_dir =
      options_.models_dir.empty() ? default_models_dir() : options_.models_dir;
  const MachineInfo machine = probe_machine();
  const Config config = options_.config ? *options_.config : tune::recommend(machine).loaded.config;

  WorkflowBenchmarkReport report;
  report.machine_json = apo::to_json(machine);
  report.iterations = options_.iterations;
  report.warmup_runs = options_.warmup_runs;
  report.seed = options_.seed;
  report.configuration = configuration_sentence(config);
  const bool gpus = !machine.cuda_devices.empty();
  report.cache_clearing =
      gpus ? "a new engine per run (model cache, memory pool, batch history) and torch's CUDA "
             "caching allocator emptied; the OS page cache is kept"
           : "a new engine per run (model cache, memory pool, batch history); no CUDA device, so "
             "no device cache; the OS page cache is kept, so model files are read from memory";

  const detail::Nvml nvml;
  const std::vector<DemoRequest> trace = demo_trace(models_dir, options_.seed, options_.iterations);
  // One run: a new engine, the request, its measurements.
  auto run_once =
      [&](const Request& request,
          std::map<std::string, std::vector<double>>& values) -> std::optional<std::string> {
    memory::release_torch_device_cache();
    const RssPeak rss;
    GpuSampler sampler(nvml, machine.cuda_devices);
    engine::AnyEngine engine(config);
    ReferenceWorkflowOptions workflow_options;
    workflow_options.models_dir = models_dir;
    workflow_options.config = config;
    for (auto& workflow : make_reference_workflows(workflow_options)) {
      engine.add_workflow(workflow);
    }
    const auto submitted = std::chrono::steady_clock::now();
    const engine::Result outcome = engine.submit(request).wait();
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - submitted).count();
    engine.shutdown();
    if (!outcome.ok()) {
      return fmt::format("{}: {}", to_string(outcome.status), outcome.message);
    }
    values["wall_seconds"].push_back(wall);
    values["model_load_seconds"].push_back(seconds(outcome.timings.model_load));
    values["peak_memory_bytes"].push_back(static_cast<double>(outcome.peak_memory_bytes));
    if (const auto growth = rss.growth_bytes()) values["rss_growth_bytes"].push_back(*growth);
    if (outcome.quality) values["judge_score"].push_back(*outcome.quality);
    if (outcome.decisions.device.is_cuda()) {
      if (const auto gpu = sampler.mean_percent(outcome.decisions.device.index)) {
        values["gpu_utilization_percent"].push_back(*gpu);
      }
    }
    return std::nullopt;
  };

  const int total = static_cast<int>(options_.workflows.size()) * options_.iterations;
  int done = 0;
  auto progress = [&](const std::string& workflow, int iteration) {
    if (options_.on_progress) {
      options_.on_progress({workflow, iteration, options_.iterations, done, total});
    }
  };

  // Warm-up: one-time costs of the process (torch's thread pools, the first reads of the model
  // files) would otherwise be charged to the first workflow's first run.
  for (int k = 0; k < options_.warmup_runs; ++k) {
    for (const DemoRequest& item : trace) {
      if (item.request.workflow != options_.workflows.front()) continue;
      progress(item.request.workflow, 0);
      std::map<std::string, std::vector<double>> discarded;
      (void)run_once(item.request, discarded);
      break;
    }
  }

  for (const std::string& name : options_.workflows) {
    WorkflowBenchmarkResult result;
    result.workflow = name;
    std::map<std::string, std::vector<double>> values;
    int iteration = 0;
    for (const DemoRequest& item : trace) {
      if (item.request.workflow != name) continue;
      ++iteration;
      progress(name, iteration);
      const std::optional<std::string> failure = run_once(item.request, values);
      ++result.runs;
      ++done;
      if (failure) {
        ++result.failed;
        result.failures.push_back(fmt::format("iteration {}: {}", iteration, *failure));
      }
    }
    progress(name, iteration + 1);
    // A metric measured in only some runs would summarise a different set of runs than the
    // others: keep only those measured in every run that ended ok.
    const std::size_t ok = static_cast<std::size_t>(result.runs - result.failed);
    for (auto& [metric, list] : values) {
      if (list.size() == ok) result.metrics[metric] = MetricStats::of(std::move(list));
    }
    report.workflows.push_back(std::move(result));
  }
  report.wall_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

std::vector<BenchmarkChange> compare(const WorkflowBenchmarkReport& before,
                                     const WorkflowBenchmarkReport& after, double threshold) {
  if (!(threshold >= 0)) {
    throw Error(
        ErrorCode::InvalidArgument,
        fmt::format("threshold {}: expected a fraction of 0 or more (0.1 is 10%)", threshold),
        std::string(kContext));
  }
  std::vector<BenchmarkChange> changes;
  for (const WorkflowBenchmarkResult& a : after.workflows) {
    const WorkflowBenchmarkResult* b = before.find(a.workflow);
    if (!b) continue;
    for (const BenchmarkMetric& metric : kBenchmarkMetrics) {
      const auto bm = b->metrics.find(std::string(metric.name));
      const auto am = a.metrics.find(std::string(metric.name));
      if (bm == b->metrics.end() || am == a.metrics.end()) continue;
      BenchmarkChange change;
      change.workflow = a.workflow;
      change.metric = metric.name;
      change.unit = metric.unit;
      change.direction = metric.direction;
      change.before = bm->second.mean;
      change.after = am->second.mean;
      change.relative_change = relative_change(change.before, change.after);
      const double worse =
          metric.direction == MetricDirection::lower_is_better    ? change.relative_change
          : metric.direction == MetricDirection::higher_is_better ? -change.relative_change
                                                                  : 0.0;
      // A difference within the runs' own spread is noise, whatever its size relative to the mean.
      const double spread = std::max(bm->second.std, am->second.std);
      const bool beyond_noise = std::abs(change.after - change.before) > spread;
      change.regression = worse > threshold && beyond_noise;
      change.improvement = -worse > threshold && beyond_noise;
      changes.push_back(std::move(change));
    }
    const double failed_before = b->runs > 0 ? static_cast<double>(b->failed) / b->runs : 0.0;
    const double failed_after = a.runs > 0 ? static_cast<double>(a.failed) / a.runs : 0.0;
    if (failed_before != 0 || failed_after != 0) {
      BenchmarkChange change;
      change.workflow = a.workflow;
      change.metric = "failed_runs";
      change.unit = "fraction";
      change.direction = MetricDirection::lower_is_better;
      change.before = failed_before;
      change.after = failed_after;
      change.relative_change = relative_change(failed_before, failed_after);
      change.regression = failed_after > failed_before;
      change.improvement = failed_after < failed_before;
      changes.push_back(std::move(change));
    }
  }
  return changes;
}

std::vector<BenchmarkChange> compare(std::string_view before_json, std::string_view after_json,
                                     double threshold) {
  return compare(WorkflowBenchmarkReport::from_json(before_json),
                 WorkflowBenchmarkReport::from_json(after_json), threshold);
}

bool has_regression(const std::vector<BenchmarkChange>& changes) noexcept {
  return std::any_of(changes.begin(), changes.end(),
                     [](const BenchmarkChange& c) { return c.regression; });
}

}  // namespace apo::ref

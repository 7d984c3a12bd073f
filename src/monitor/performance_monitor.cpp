#include "apo/monitor/performance_monitor.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <exception>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apo/core/error.hpp"
#include "apo/core/units.hpp"
#include "apo/monitor/system_metrics.hpp"

namespace apo::monitor {

namespace {

double seconds_since_epoch(Clock::time_point time) {
  return std::chrono::duration<double>(time.time_since_epoch()).count();
}

std::optional<Statistics> statistics_of(std::vector<double> values) {
  if (values.empty()) return std::nullopt;
  std::sort(values.begin(), values.end());
  Statistics s;
  s.count = values.size();
  double sum = 0;
  for (double v : values) sum += v;
  s.mean = sum / static_cast<double>(values.size());
  s.min = values.front();
  s.max = values.back();
  // Nearest rank: the smallest value with at least 95% of the values at or below it.
  const auto rank = static_cast<std::size_t>(std::ceil(0.95 * static_cast<double>(values.size())));
  s.p95 = values[std::max<std::size_t>(rank, 1) - 1];
  return s;
}

/// A least-squares line through (time, value) points; nullopt with fewer than two points or no
/// time between them.
std::optional<Trend> trend_of(std::string metric,
                              const std::vector<std::pair<Clock::time_point, double>>& points) {
  if (points.size() < 2) return std::nullopt;
  const double t0 = seconds_since_epoch(points.front().first);
  double mean_t = 0;
  double mean_v = 0;
  double t_min = 0;
  double t_max = 0;
  for (const auto& [time, value] : points) {
    const double t = seconds_since_epoch(time) - t0;
    mean_t += t;
    mean_v += value;
    t_min = std::min(t_min, t);
    t_max = std::max(t_max, t);
  }
  const auto n = static_cast<double>(points.size());
  mean_t /= n;
  mean_v /= n;
  double covariance = 0;
  double variance = 0;
  for (const auto& [time, value] : points) {
    const double dt = seconds_since_epoch(time) - t0 - mean_t;
    covariance += dt * (value - mean_v);
    variance += dt * dt;
  }
  if (variance <= 0) return std::nullopt;
  Trend trend;
  trend.metric = std::move(metric);
  trend.points = points.size();
  trend.span_seconds = t_max - t_min;
  const double slope_per_second = covariance / variance;
  trend.slope_per_minute = slope_per_second * 60.0;
  const double change = slope_per_second * trend.span_seconds;
  const double scale = std::abs(mean_v);
  const bool steady = scale > 0 ? std::abs(change) < Trend::kSteadyChange * scale : change == 0;
  trend.direction = steady       ? TrendDirection::steady
                    : change > 0 ? TrendDirection::rising
                                 : TrendDirection::falling;
  return trend;
}

/// The device whose memory is fullest in a sample.
const DeviceSample* fullest_device(const Sample& sample) {
  const DeviceSample* fullest = nullptr;
  for (const DeviceSample& device : sample.devices) {
    const auto ratio = device.memory_used_ratio();
    if (ratio && (!fullest || *ratio > *fullest->memory_used_ratio())) fullest = &device;
  }
  return fullest;
}

/// The busiest device's utilization in a sample.
std::optional<double> busiest_utilization(const Sample& sample) {
  std::optional<double> busiest;
  for (const DeviceSample& device : sample.devices) {
    if (device.utilization_ratio) {
      busiest = std::max(busiest.value_or(0.0), *device.utilization_ratio);
    }
  }
  return busiest;
}

void merge_engine_reading(Sample& sample, EngineReading reading) {
  for (DeviceSample& engine_device : reading.devices) {
    auto same =
        std::find_if(sample.devices.begin(), sample.devices.end(),
                     [&](const DeviceSample& d) { return d.device == engine_device.device; });
    if (same == sample.devices.end()) {
      sample.devices.push_back(std::move(engine_device));
      continue;
    }
    // The engine's ledger counts apo's own memory, which is what apo's settings change; NVML's
    // figure is the whole device's.
    if (engine_device.allocated_bytes) same->allocated_bytes = engine_device.allocated_bytes;
    if (engine_device.reserved_bytes) same->reserved_bytes = engine_device.reserved_bytes;
    if (engine_device.total_bytes) same->total_bytes = engine_device.total_bytes;
    if (!engine_device.name.empty()) same->name = engine_device.name;
    if (engine_device.utilization_ratio) same->utilization_ratio = engine_device.utilization_ratio;
    if (engine_device.temperature_c) same->temperature_c = engine_device.temperature_c;
    if (engine_device.power_w) same->power_w = engine_device.power_w;
  }
  sample.queued = reading.queued;
  sample.running = reading.running;
}

template <class T>
void keep_last(std::deque<T>& history, std::size_t size) {
  while (history.size() > size) history.pop_front();
}

nlohmann::ordered_json statistics_json(const std::optional<Statistics>& s) {
  if (!s) return nullptr;
  return {
      {"count", s->count}, {"mean", s->mean}, {"min", s->min}, {"max", s->max}, {"p95", s->p95}};
}

}  // namespace

PerformanceMonitor::PerformanceMonitor(const Monitoring& settings, double target_generation_time_s,
                                       Clock& clock, SampleSource source)
    : settings_(settings),
      target_generation_time_s_(target_generation_time_s),
      clock_(clock),
      source_(std::move(source)),
      wake_(clock, thread_mutex_) {
  if (!(settings.sample_interval_s > 0) || !std::isfinite(settings.sample_interval_s)) {
    fail(ErrorCode::InvalidArgument, "monitoring.sample_interval_s must be positive, not {}",
         settings.sample_interval_s);
  }
  if (settings.history_size < 1 || settings.summary_window < 1 ||
      settings.alert_hysteresis_samples < 1) {
    fail(ErrorCode::InvalidArgument,
         "monitoring.history_size ({}), summary_window ({}) and alert_hysteresis_samples ({}) "
         "must be at least 1",
         settings.history_size, settings.summary_window, settings.alert_hysteresis_samples);
  }
  if (!(target_generation_time_s > 0)) {
    fail(ErrorCode::InvalidArgument, "target_generation_time must be positive, not {}",
         target_generation_time_s);
  }
  if (!source_) source_ = SystemSampler();
  for (std::size_t i = 0; i < kAlertKinds; ++i) {
    alerts_[i].last.kind = EnumTraits<AlertKind>::entries[i].value;
    alerts_[i].last.active = false;
  }
}

PerformanceMonitor::~PerformanceMonitor() {
  stop();
}

void PerformanceMonitor::start() {
  const std::lock_guard lifecycle(lifecycle_mutex_);
  if (thread_.joinable()) return;
  {
    const std::lock_guard lock(thread_mutex_);
    stopping_ = false;
  }
  // The first deadline is fixed here, not in the thread, so that a FakeClock advanced right
  // after start() always reaches it.
  const auto interval = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(settings_.sample_interval_s));
  thread_ = std::thread(&PerformanceMonitor::sampler_loop, this, clock_.now() + interval);
}

void PerformanceMonitor::stop() {
  const std::lock_guard lifecycle(lifecycle_mutex_);
  if (!thread_.joinable()) return;
  {
    const std::lock_guard lock(thread_mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

bool PerformanceMonitor::running() const {
  const std::lock_guard lifecycle(lifecycle_mutex_);
  return thread_.joinable();
}

void PerformanceMonitor::sampler_loop(Clock::time_point deadline) {
  const auto interval = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(settings_.sample_interval_s));
  while (true) {
    {
      std::unique_lock lock(thread_mutex_);
      if (wake_.wait_until(lock, deadline, [this] { return stopping_; })) return;
    }
    // The next deadline is set from the time of waking, before sampling: a FakeClock advanced
    // as soon as the sample is seen then still lands on it.
    deadline += interval;
    // After a stall (a suspended machine), skip the samples missed rather than burst them.
    if (const auto now = clock_.now(); deadline <= now) deadline = now + interval;
    try {
      sample_now();
    } catch (const std::exception& error) {
      const std::lock_guard lock(mutex_);
      last_error_ = error.what();
    }
  }
}

Sample PerformanceMonitor::sample_now() {
  Sample sample;
  std::vector<Alert> changes;
  std::vector<std::shared_ptr<const AlertCallback>> callbacks;
  {
    const std::lock_guard sampling(sampling_mutex_);
    sample = source_();
    sample.time = clock_.now();
    if (engine_source_) merge_engine_reading(sample, engine_source_());

    const std::lock_guard lock(mutex_);
    samples_.push_back(sample);
    keep_last(samples_, static_cast<std::size_t>(settings_.history_size));
    ++samples_taken_;
    changes = evaluate_alerts(sample);
    if (!changes.empty()) callbacks = callbacks_;
  }
  for (const Alert& alert : changes) {
    for (const auto& callback : callbacks) (*callback)(alert);
  }
  return sample;
}

void PerformanceMonitor::vote(AlertKind kind, bool condition, double value, double threshold,
                              std::string message, Clock::time_point time,
                              std::vector<Alert>& changes) {
  AlertState& state = alerts_[static_cast<std::size_t>(kind)];
  if (condition == state.active) {
    state.streak = 0;
    if (state.active) {  // the active alert shows the latest figures, and keeps its raise time
      state.last.value = value;
      state.last.message = std::move(message);
    }
    return;
  }
  if (++state.streak < settings_.alert_hysteresis_samples) return;
  state.active = condition;
  state.streak = 0;
  state.last = Alert{kind, condition, std::move(message), value, threshold, time};
  changes.push_back(state.last);
}

std::vector<Alert> PerformanceMonitor::evaluate_alerts(const Sample& sample) {
  std::vector<Alert> changes;
  const Clock::time_point time = sample.time;

  if (const DeviceSample* device = fullest_device(sample)) {
    const double ratio = *device->memory_used_ratio();
    const std::int64_t used =
        std::max(device->allocated_bytes.value_or(0), device->reserved_bytes.value_or(0));
    vote(AlertKind::vram_pressure, ratio > settings_.vram_alert_fraction, ratio,
         settings_.vram_alert_fraction,
         fmt::format("{} uses {:.1f}% of its memory ({} of {}); the limit is {:.0f}%",
                     device->device, ratio * 100, format_bytes(used),
                     format_bytes(*device->total_bytes), settings_.vram_alert_fraction * 100),
         time, changes);
  }

  if (sample.ram_used_ratio) {
    const double ratio = *sample.ram_used_ratio;
    vote(AlertKind::ram_pressure, ratio > settings_.ram_alert_fraction, ratio,
         settings_.ram_alert_fraction,
         fmt::format("host RAM is {:.1f}% used{}; the limit is {:.0f}%", ratio * 100,
                     sample.ram_total_bytes
                         ? fmt::format(" (of {})", format_bytes(*sample.ram_total_bytes))
                         : std::string(),
                     settings_.ram_alert_fraction * 100),
         time, changes);
  }

  // Only a busy engine can under-use its GPU; an idle one votes to clear.
  if (const auto utilization = busiest_utilization(sample)) {
    const double threshold = settings_.low_gpu_utilization_fraction;
    vote(AlertKind::low_gpu_utilization, sample.busy() && *utilization < threshold, *utilization,
         threshold,
         fmt::format("GPU utilization {:.0f}% with {} request(s) running; the floor is {:.0f}%",
                     *utilization * 100, sample.running.value_or(0), threshold * 100),
         time, changes);
  }

  // Requests finished since the previous sample vote on generation time; an interval without
  // any leaves the alert as it is.
  const std::uint64_t fresh =
      std::min<std::uint64_t>(requests_recorded_ - requests_judged_, requests_.size());
  requests_judged_ = requests_recorded_;
  double sum = 0;
  int ok = 0;
  for (auto it = requests_.end() - static_cast<std::ptrdiff_t>(fresh); it != requests_.end();
       ++it) {
    if (!it->record.ok) continue;
    sum += it->record.total_seconds;
    ++ok;
  }
  if (ok > 0) {
    const double mean = sum / ok;
    vote(AlertKind::slow_generation, mean > target_generation_time_s_, mean,
         target_generation_time_s_,
         fmt::format("{} request(s) took {:.1f} s on average; the target is {:.1f} s", ok, mean,
                     target_generation_time_s_),
         time, changes);
  }
  return changes;
}

void PerformanceMonitor::set_engine_source(EngineReadingSource source) {
  EngineReadingSource old;
  {
    const std::lock_guard sampling(sampling_mutex_);
    old = std::exchange(engine_source_, std::move(source));
  }
  // `old` is destroyed here, outside the lock: its captures may be heavy to release.
}

void PerformanceMonitor::record_request(RequestRecord record) {
  if (!std::isfinite(record.total_seconds) || record.total_seconds < 0 ||
      !std::isfinite(record.compute_seconds) || record.compute_seconds < 0) {
    fail(ErrorCode::InvalidArgument,
         "request of workflow \"{}\": times must be finite and not negative (total {} s, "
         "compute {} s)",
         record.workflow, record.total_seconds, record.compute_seconds);
  }
  if (record.quality && !std::isfinite(*record.quality)) {
    fail(ErrorCode::InvalidArgument, "request of workflow \"{}\": quality {} is not finite",
         record.workflow, *record.quality);
  }
  const Clock::time_point time = clock_.now();
  const std::lock_guard lock(mutex_);
  WorkflowCounters& counters = counters_[record.workflow];
  if (record.ok) {
    ++counters.ok;
    counters.generation_seconds_sum += record.total_seconds;
    counters.compute_seconds_sum += record.compute_seconds;
    for (std::size_t i = 0; i < kGenerationSecondsBuckets.size(); ++i) {
      if (record.total_seconds <= kGenerationSecondsBuckets[i]) {
        ++counters.bucket_counts[i];
        break;
      }
    }
  } else {
    ++counters.failed;
  }
  requests_.push_back({std::move(record), time});
  keep_last(requests_, static_cast<std::size_t>(settings_.history_size));
  ++requests_recorded_;
}

void PerformanceMonitor::on_alert(AlertCallback callback) {
  if (!callback) return;
  const std::lock_guard lock(mutex_);
  callbacks_.push_back(std::make_shared<const AlertCallback>(std::move(callback)));
}

std::vector<Alert> PerformanceMonitor::active_alerts() const {
  const std::lock_guard lock(mutex_);
  std::vector<Alert> active;
  for (const AlertState& state : alerts_) {
    if (state.active) active.push_back(state.last);
  }
  return active;
}

std::vector<Sample> PerformanceMonitor::samples() const {
  const std::lock_guard lock(mutex_);
  return {samples_.begin(), samples_.end()};
}

std::vector<RecordedRequest> PerformanceMonitor::requests() const {
  const std::lock_guard lock(mutex_);
  return {requests_.begin(), requests_.end()};
}

std::uint64_t PerformanceMonitor::samples_taken() const {
  const std::lock_guard lock(mutex_);
  return samples_taken_;
}

std::optional<std::string> PerformanceMonitor::last_error() const {
  const std::lock_guard lock(mutex_);
  return last_error_;
}

MetricsSnapshot PerformanceMonitor::metrics_snapshot() const {
  MetricsSnapshot snapshot;
  snapshot.time = clock_.now();
  const std::lock_guard lock(mutex_);
  if (!samples_.empty()) snapshot.latest = samples_.back();
  snapshot.samples_taken = samples_taken_;
  snapshot.workflows = counters_;
  for (const AlertState& state : alerts_) {
    if (state.active) snapshot.active_alerts.push_back(state.last);
  }
  return snapshot;
}

Report PerformanceMonitor::report() const {
  Report report;
  report.time = clock_.now();
  report.target_generation_time_s = target_generation_time_s_;
  std::vector<Sample> samples;
  std::vector<RecordedRequest> requests;
  {
    const std::lock_guard lock(mutex_);
    const auto window = static_cast<std::size_t>(settings_.summary_window);
    samples.assign(samples_.end() - static_cast<std::ptrdiff_t>(std::min(window, samples_.size())),
                   samples_.end());
    requests.assign(
        requests_.end() - static_cast<std::ptrdiff_t>(std::min(window, requests_.size())),
        requests_.end());
    for (const AlertState& state : alerts_) {
      if (state.active) report.active_alerts.push_back(state.last);
    }
  }
  report.samples = samples.size();
  report.requests = requests.size();

  // Samples.
  std::vector<double> device_memory, gpu_utilization, ram, cpu, rss;
  std::vector<std::pair<Clock::time_point, double>> device_memory_points, ram_points;
  for (const Sample& sample : samples) {
    if (const DeviceSample* device = fullest_device(sample)) {
      device_memory.push_back(*device->memory_used_ratio());
      device_memory_points.emplace_back(sample.time, device_memory.back());
    }
    if (const auto utilization = busiest_utilization(sample); utilization && sample.busy()) {
      gpu_utilization.push_back(*utilization);
    }
    if (sample.ram_used_ratio) {
      ram.push_back(*sample.ram_used_ratio);
      ram_points.emplace_back(sample.time, *sample.ram_used_ratio);
    }
    if (sample.cpu_busy_ratio) cpu.push_back(*sample.cpu_busy_ratio);
    if (sample.process_resident_bytes) {
      rss.push_back(static_cast<double>(*sample.process_resident_bytes));
    }
  }
  report.device_memory_ratio = statistics_of(device_memory);
  report.gpu_utilization_ratio = statistics_of(gpu_utilization);
  report.ram_used_ratio = statistics_of(ram);
  report.cpu_busy_ratio = statistics_of(cpu);
  report.process_resident_bytes = statistics_of(rss);

  // Requests, overall and per workflow (in order of first appearance in the window).
  struct Series {
    std::size_t requests = 0;
    std::size_t failed = 0;
    std::vector<double> generation, compute, peak, quality;
  };
  Series overall;
  std::vector<std::pair<std::string, Series>> per_workflow;
  std::vector<std::pair<Clock::time_point, double>> generation_points, quality_points;
  for (const RecordedRequest& recorded : requests) {
    const RequestRecord& r = recorded.record;
    auto it = std::find_if(per_workflow.begin(), per_workflow.end(),
                           [&](const auto& entry) { return entry.first == r.workflow; });
    if (it == per_workflow.end()) it = per_workflow.insert(per_workflow.end(), {r.workflow, {}});
    for (Series* series : {&overall, &it->second}) {
      ++series->requests;
      if (!r.ok) {
        ++series->failed;
        continue;
      }
      series->generation.push_back(r.total_seconds);
      series->compute.push_back(r.compute_seconds);
      series->peak.push_back(static_cast<double>(r.peak_memory_bytes));
      if (r.quality) series->quality.push_back(*r.quality);
    }
    if (r.ok) {
      generation_points.emplace_back(recorded.time, r.total_seconds);
      if (r.quality) quality_points.emplace_back(recorded.time, *r.quality);
    }
  }
  report.failed = overall.failed;
  report.generation_seconds = statistics_of(overall.generation);
  report.compute_seconds = statistics_of(overall.compute);
  report.peak_memory_bytes = statistics_of(overall.peak);
  report.quality = statistics_of(overall.quality);
  for (auto& [workflow, series] : per_workflow) {
    report.workflows.push_back({workflow, series.requests, series.failed,
                                statistics_of(series.generation), statistics_of(series.compute),
                                statistics_of(series.peak), statistics_of(series.quality)});
  }

  // Trends.
  const Trend* quality_trend = nullptr;
  for (auto& [metric, points] : {std::pair{"device_memory_ratio", &device_memory_points},
                                 std::pair{"ram_used_ratio", &ram_points},
                                 std::pair{"generation_seconds", &generation_points},
                                 std::pair{"quality", &quality_points}}) {
    if (auto trend = trend_of(metric, *points)) report.trends.push_back(std::move(*trend));
  }
  for (const Trend& trend : report.trends) {
    if (trend.metric == "quality") quality_trend = &trend;
  }

  // Recommendations, after the guide's strategy table.
  const auto alert_active = [&](AlertKind kind) {
    return std::any_of(report.active_alerts.begin(), report.active_alerts.end(),
                       [&](const Alert& a) { return a.kind == kind; });
  };
  const auto add = [&](AlertKind kind, std::string key, std::string value, std::string reason) {
    report.recommendations.push_back(
        {std::string(to_string(kind)), std::move(key), std::move(value), std::move(reason)});
  };

  if (alert_active(AlertKind::vram_pressure) ||
      (report.device_memory_ratio &&
       report.device_memory_ratio->mean > settings_.vram_alert_fraction)) {
    const std::string seen =
        report.device_memory_ratio
            ? fmt::format("device memory averaged {:.0f}% (peak {:.0f}%) over {} samples",
                          report.device_memory_ratio->mean * 100,
                          report.device_memory_ratio->max * 100, report.device_memory_ratio->count)
            : std::string("the VRAM alert is active");
    add(AlertKind::vram_pressure, "performance_optimization.model_precision", "\"fp8\"",
        seen +
            ": fp8 weights take half the memory of fp16 (the guide: quantization saves 30-50% "
            "of memory at minimal quality cost)");
    add(AlertKind::vram_pressure, "attention_optimization.enable_attention_slicing", "true",
        seen +
            ": sliced attention lowers the activation peak (the guide: 20-40% less memory, "
            "somewhat slower)");
    add(AlertKind::vram_pressure, "memory_optimization.enable_cpu_offload", "true",
        seen +
            ": models not in use wait in host memory instead of on the device (slower model "
            "switches)");
  }
  if (alert_active(AlertKind::ram_pressure) ||
      (report.ram_used_ratio && report.ram_used_ratio->mean > settings_.ram_alert_fraction)) {
    const std::string seen =
        report.ram_used_ratio
            ? fmt::format("host RAM averaged {:.0f}% used (limit {:.0f}%)",
                          report.ram_used_ratio->mean * 100, settings_.ram_alert_fraction * 100)
            : std::string("the RAM alert is active");
    add(AlertKind::ram_pressure, "system_optimization.memory_pool_size_gb", "lower",
        seen + ": a smaller host tier keeps fewer models cached in RAM");
    add(AlertKind::ram_pressure, "storage_optimization.preload_models", "false",
        seen + ": preloading fills RAM with models that may not be used");
  }
  if (alert_active(AlertKind::low_gpu_utilization) ||
      (report.gpu_utilization_ratio &&
       report.gpu_utilization_ratio->mean < settings_.low_gpu_utilization_fraction)) {
    const std::string seen =
        report.gpu_utilization_ratio
            ? fmt::format("the GPU ran {:.0f}% of the time while requests were running",
                          report.gpu_utilization_ratio->mean * 100)
            : std::string("the low GPU utilization alert is active");
    add(AlertKind::low_gpu_utilization, "performance_optimization.batch_size", "higher",
        seen +
            ": larger batches keep it fed (the guide: batch processing is 50-100% faster; "
            "performance_optimization.max_batch_size caps the dynamic batcher)");
  }
  if (alert_active(AlertKind::slow_generation) ||
      (report.generation_seconds && report.generation_seconds->mean > target_generation_time_s_)) {
    const std::string seen =
        report.generation_seconds
            ? fmt::format(
                  "requests took {:.1f} s on average (p95 {:.1f} s) against a target of "
                  "{:.1f} s",
                  report.generation_seconds->mean, report.generation_seconds->p95,
                  target_generation_time_s_)
            : std::string("the slow generation alert is active");
    add(AlertKind::slow_generation, "profile_name", "\"speed_first\"",
        seen +
            ": the speed_first profile (apo config show --preset speed_first) uses fp8, 15 "
            "steps and the lightning LoRA");
    add(AlertKind::slow_generation, "generation.enable_lightning_lora", "true",
        seen +
            ": the lightning LoRA needs far fewer steps (the guide: 70-85% faster, slight "
            "quality cost)");
  }
  if (quality_trend && quality_trend->direction == TrendDirection::falling) {
    report.recommendations.push_back(
        {"falling_quality", "profile_name", "\"quality_first\"",
         fmt::format("quality fell by {:.3f} per minute over {} requests (mean {:.2f}): the "
                     "quality_first profile runs more steps and the refinement pass",
                     -quality_trend->slope_per_minute, quality_trend->points,
                     report.quality ? report.quality->mean : 0.0)});
  }
  return report;
}

std::string to_json(const Report& report, int indent) {
  nlohmann::ordered_json out;
  out["time_s"] = seconds_since_epoch(report.time);
  out["target_generation_time_s"] = report.target_generation_time_s;
  out["window"] = {
      {"samples", report.samples}, {"requests", report.requests}, {"failed", report.failed}};
  out["summary"] = {
      {"generation_seconds", statistics_json(report.generation_seconds)},
      {"compute_seconds", statistics_json(report.compute_seconds)},
      {"peak_memory_bytes", statistics_json(report.peak_memory_bytes)},
      {"quality", statistics_json(report.quality)},
      {"device_memory_ratio", statistics_json(report.device_memory_ratio)},
      {"gpu_utilization_ratio", statistics_json(report.gpu_utilization_ratio)},
      {"ram_used_ratio", statistics_json(report.ram_used_ratio)},
      {"cpu_busy_ratio", statistics_json(report.cpu_busy_ratio)},
      {"process_resident_bytes", statistics_json(report.process_resident_bytes)},
  };
  auto& workflows = out["workflows"] = nlohmann::ordered_json::array();
  for (const WorkflowSummary& w : report.workflows) {
    workflows.push_back({{"workflow", w.workflow},
                         {"requests", w.requests},
                         {"failed", w.failed},
                         {"generation_seconds", statistics_json(w.generation_seconds)},
                         {"compute_seconds", statistics_json(w.compute_seconds)},
                         {"peak_memory_bytes", statistics_json(w.peak_memory_bytes)},
                         {"quality", statistics_json(w.quality)}});
  }
  auto& trends = out["trends"] = nlohmann::ordered_json::array();
  for (const Trend& t : report.trends) {
    trends.push_back({{"metric", t.metric},
                      {"direction", to_string(t.direction)},
                      {"slope_per_minute", t.slope_per_minute},
                      {"points", t.points},
                      {"span_s", t.span_seconds}});
  }
  auto& alerts = out["active_alerts"] = nlohmann::ordered_json::array();
  for (const Alert& a : report.active_alerts) {
    alerts.push_back({{"kind", to_string(a.kind)},
                      {"message", a.message},
                      {"value", a.value},
                      {"threshold", a.threshold},
                      {"since_s", seconds_since_epoch(a.time)}});
  }
  auto& recommendations = out["recommendations"] = nlohmann::ordered_json::array();
  for (const Recommendation& r : report.recommendations) {
    recommendations.push_back(
        {{"trigger", r.trigger}, {"key", r.key}, {"value", r.value}, {"reason", r.reason}});
  }
  return out.dump(indent);
}

}  // namespace apo::monitor

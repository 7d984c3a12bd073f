#include "apo/monitor/metrics_export.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace apo::monitor {

namespace {

/// A sample value as the text format writes it: Go's ParseFloat reads fmt's shortest round-trip
/// form; NaN and the infinities have their own spellings.
std::string format_value(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", value);
}

/// HELP text escapes only backslash and line feed.
std::string escape_help(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

using Labels = std::vector<std::pair<std::string_view, std::string>>;

/// Writes families one at a time: the HELP and TYPE lines once, then its samples.
class Exposition {
 public:
  void family(std::string_view name, std::string_view type, std::string_view help) {
    text_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, escape_help(help), name, type);
  }
  void sample(std::string_view name, const Labels& labels, double value) {
    text_ += name;
    if (!labels.empty()) {
      text_ += '{';
      for (std::size_t i = 0; i < labels.size(); ++i) {
        if (i > 0) text_ += ',';
        text_ += fmt::format("{}=\"{}\"", labels[i].first, escape_label_value(labels[i].second));
      }
      text_ += '}';
    }
    text_ += ' ';
    text_ += format_value(value);
    text_ += '\n';
  }
  /// A gauge family over the devices that have the reading.
  void device_gauge(std::string_view name, std::string_view help, const Sample& sample,
                    const std::function<std::optional<double>(const DeviceSample&)>& read) {
    bool any = false;
    for (const DeviceSample& device : sample.devices) any = any || read(device).has_value();
    if (!any) return;
    family(name, "gauge", help);
    for (const DeviceSample& device : sample.devices) {
      if (const auto value = read(device)) sample_line(name, device, *value);
    }
  }
  void gauge(std::string_view name, std::string_view help, std::optional<double> value) {
    if (!value) return;
    family(name, "gauge", help);
    sample(name, {}, *value);
  }
  std::string take() { return std::move(text_); }

 private:
  void sample_line(std::string_view name, const DeviceSample& device, double value) {
    sample(name, {{"device", device.device}}, value);
  }

  std::string text_;
};

std::optional<double> as_double(const std::optional<std::int64_t>& value) {
  if (!value) return std::nullopt;
  return static_cast<double>(*value);
}

double seconds_since_epoch(Clock::time_point time) {
  return std::chrono::duration<double>(time.time_since_epoch()).count();
}

}  // namespace

std::string escape_label_value(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string to_prometheus(const MetricsSnapshot& snapshot,
                          const std::optional<EngineCounters>& engine) {
  Exposition out;
  if (snapshot.latest) {
    const Sample& s = *snapshot.latest;
    if (!s.devices.empty()) {
      out.family("apo_device_info", "gauge", "The devices sampled, with their names");
      for (const DeviceSample& d : s.devices) {
        out.sample("apo_device_info", {{"device", d.device}, {"name", d.name}}, 1.0);
      }
    }
    out.device_gauge("apo_device_memory_allocated_bytes",
                     "Device memory in use (the engine's ledger, or NVML's used memory)", s,
                     [](const DeviceSample& d) { return as_double(d.allocated_bytes); });
    out.device_gauge("apo_device_memory_reserved_bytes",
                     "Device memory reserved (the engine's pool, or NVML's used memory)", s,
                     [](const DeviceSample& d) { return as_double(d.reserved_bytes); });
    out.device_gauge("apo_device_memory_total_bytes", "Device memory capacity or budget", s,
                     [](const DeviceSample& d) { return as_double(d.total_bytes); });
    out.device_gauge("apo_device_memory_used_ratio", "max(allocated, reserved) / total", s,
                     [](const DeviceSample& d) { return d.memory_used_ratio(); });
    out.device_gauge("apo_gpu_utilization_ratio", "Share of time a kernel ran on the GPU (NVML)", s,
                     [](const DeviceSample& d) { return d.utilization_ratio; });
    out.device_gauge("apo_gpu_temperature_celsius", "GPU temperature (NVML)", s,
                     [](const DeviceSample& d) { return d.temperature_c; });
    out.device_gauge("apo_gpu_power_watts", "GPU power draw (NVML)", s,
                     [](const DeviceSample& d) { return d.power_w; });
    out.gauge("apo_host_memory_total_bytes", "Host RAM", as_double(s.ram_total_bytes));
    out.gauge("apo_host_memory_used_ratio", "Host RAM in use: 1 - MemAvailable / MemTotal",
              s.ram_used_ratio);
    out.gauge("apo_process_resident_memory_bytes", "Resident memory of the apo process",
              as_double(s.process_resident_bytes));
    out.gauge("apo_cpu_busy_ratio", "Share of the machine's CPU time busy since the last sample",
              s.cpu_busy_ratio);
    out.gauge("apo_process_cpu_ratio",
              "Share of the machine's CPU time this process used since the last sample",
              s.process_cpu_ratio);
    if (!engine) {
      out.gauge("apo_engine_queued_requests", "Requests waiting in the engine",
                s.queued ? std::optional<double>(*s.queued) : std::nullopt);
      out.gauge("apo_engine_running_requests", "Requests the engine is running",
                s.running ? std::optional<double>(*s.running) : std::nullopt);
    }
  }
  out.family("apo_monitor_samples_total", "counter", "Samples the monitor has taken");
  out.sample("apo_monitor_samples_total", {}, static_cast<double>(snapshot.samples_taken));

  if (engine) {
    const std::pair<std::string_view, std::uint64_t> counters[] = {
        {"submitted", engine->submitted}, {"completed", engine->completed},
        {"failed", engine->failed},       {"cancelled", engine->cancelled},
        {"rejected", engine->rejected},
    };
    for (const auto& [what, value] : counters) {
      const std::string name = fmt::format("apo_engine_requests_{}_total", what);
      out.family(name, "counter", fmt::format("Requests the engine has {}", what));
      out.sample(name, {}, static_cast<double>(value));
    }
    out.family("apo_engine_queued_requests", "gauge", "Requests waiting in the engine");
    out.sample("apo_engine_queued_requests", {}, static_cast<double>(engine->queued));
    out.family("apo_engine_running_requests", "gauge", "Requests the engine is running");
    out.sample("apo_engine_running_requests", {}, static_cast<double>(engine->running));
  }

  if (!snapshot.workflows.empty()) {
    out.family("apo_requests_total", "counter", "Finished requests by workflow and outcome");
    for (const auto& [workflow, c] : snapshot.workflows) {
      out.sample("apo_requests_total", {{"workflow", workflow}, {"outcome", "ok"}},
                 static_cast<double>(c.ok));
      out.sample("apo_requests_total", {{"workflow", workflow}, {"outcome", "failed"}},
                 static_cast<double>(c.failed));
    }
    out.family("apo_generation_seconds", "histogram",
               "Time from submission to completion of successful requests");
    for (const auto& [workflow, c] : snapshot.workflows) {
      std::uint64_t cumulative = 0;
      for (std::size_t i = 0; i < kGenerationSecondsBuckets.size(); ++i) {
        cumulative += c.bucket_counts[i];
        out.sample("apo_generation_seconds_bucket",
                   {{"workflow", workflow}, {"le", format_value(kGenerationSecondsBuckets[i])}},
                   static_cast<double>(cumulative));
      }
      out.sample("apo_generation_seconds_bucket", {{"workflow", workflow}, {"le", "+Inf"}},
                 static_cast<double>(c.ok));
      out.sample("apo_generation_seconds_sum", {{"workflow", workflow}}, c.generation_seconds_sum);
      out.sample("apo_generation_seconds_count", {{"workflow", workflow}},
                 static_cast<double>(c.ok));
    }
    out.family("apo_compute_seconds_total", "counter",
               "Time successful requests spent in their workflow");
    for (const auto& [workflow, c] : snapshot.workflows) {
      out.sample("apo_compute_seconds_total", {{"workflow", workflow}}, c.compute_seconds_sum);
    }
  }

  out.family("apo_alert_active", "gauge", "1 while an alert of this kind is raised");
  for (const auto& entry : EnumTraits<AlertKind>::entries) {
    const bool active = std::any_of(snapshot.active_alerts.begin(), snapshot.active_alerts.end(),
                                    [&](const Alert& a) { return a.kind == entry.value; });
    out.sample("apo_alert_active", {{"kind", std::string(entry.name)}}, active ? 1.0 : 0.0);
  }
  return out.take();
}

std::string to_metrics_json(const MetricsSnapshot& snapshot,
                            const std::optional<EngineCounters>& engine, int indent) {
  using Json = nlohmann::ordered_json;
  const auto optional_json = [](const auto& value) -> Json {
    if (!value) return nullptr;
    return *value;
  };
  Json out;
  out["time_s"] = seconds_since_epoch(snapshot.time);
  out["samples_taken"] = snapshot.samples_taken;
  if (snapshot.latest) {
    const Sample& s = *snapshot.latest;
    Json devices = Json::array();
    for (const DeviceSample& d : s.devices) {
      devices.push_back({{"device", d.device},
                         {"name", d.name},
                         {"allocated_bytes", optional_json(d.allocated_bytes)},
                         {"reserved_bytes", optional_json(d.reserved_bytes)},
                         {"total_bytes", optional_json(d.total_bytes)},
                         {"memory_used_ratio", optional_json(d.memory_used_ratio())},
                         {"utilization_ratio", optional_json(d.utilization_ratio)},
                         {"temperature_celsius", optional_json(d.temperature_c)},
                         {"power_watts", optional_json(d.power_w)}});
    }
    out["sample"] = {{"time_s", seconds_since_epoch(s.time)},
                     {"devices", devices},
                     {"host_memory_total_bytes", optional_json(s.ram_total_bytes)},
                     {"host_memory_used_ratio", optional_json(s.ram_used_ratio)},
                     {"process_resident_memory_bytes", optional_json(s.process_resident_bytes)},
                     {"cpu_busy_ratio", optional_json(s.cpu_busy_ratio)},
                     {"process_cpu_ratio", optional_json(s.process_cpu_ratio)},
                     {"queued", optional_json(s.queued)},
                     {"running", optional_json(s.running)}};
  } else {
    out["sample"] = nullptr;
  }
  if (engine) {
    out["engine"] = {{"submitted", engine->submitted}, {"completed", engine->completed},
                     {"failed", engine->failed},       {"cancelled", engine->cancelled},
                     {"rejected", engine->rejected},   {"queued", engine->queued},
                     {"running", engine->running}};
  }
  Json workflows = Json::object();
  for (const auto& [workflow, c] : snapshot.workflows) {
    Json buckets = Json::array();
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < kGenerationSecondsBuckets.size(); ++i) {
      cumulative += c.bucket_counts[i];
      buckets.push_back({{"le", kGenerationSecondsBuckets[i]}, {"count", cumulative}});
    }
    workflows[workflow] = {{"ok", c.ok},
                           {"failed", c.failed},
                           {"generation_seconds_sum", c.generation_seconds_sum},
                           {"compute_seconds_sum", c.compute_seconds_sum},
                           {"generation_seconds_buckets", buckets}};
  }
  out["workflows"] = workflows;
  Json alerts = Json::array();
  for (const Alert& a : snapshot.active_alerts) {
    alerts.push_back({{"kind", to_string(a.kind)},
                      {"message", a.message},
                      {"value", a.value},
                      {"threshold", a.threshold},
                      {"since_s", seconds_since_epoch(a.time)}});
  }
  out["active_alerts"] = alerts;
  return out.dump(indent);
}

MetricsResponse metrics_response(std::string_view path, const MetricsSnapshot& snapshot,
                                 const std::optional<EngineCounters>& engine) {
  if (path == "/metrics") {
    return {200, std::string(kPrometheusContentType), to_prometheus(snapshot, engine)};
  }
  if (path == "/metrics.json") {
    return {200, "application/json", to_metrics_json(snapshot, engine)};
  }
  return {404, "text/plain; charset=utf-8", "not found: try /metrics or /metrics.json\n"};
}

}  // namespace apo::monitor

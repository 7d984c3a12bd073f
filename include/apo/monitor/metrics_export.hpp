#pragma once

/// @file
/// @brief The monitor's metrics for scrapers: Prometheus text exposition format 0.0.4 and the
/// same figures as JSON, and the routing of the `apo serve-metrics` endpoint (kept free of any
/// HTTP library, so that it is tested without a socket).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "apo/monitor/performance_monitor.hpp"

namespace apo::monitor {

/// @brief The engine's own counters, as plain numbers (an engine above monitor/ fills them).
struct EngineCounters {
  std::uint64_t submitted = 0;
  std::uint64_t completed = 0;
  std::uint64_t failed = 0;
  std::uint64_t cancelled = 0;
  std::uint64_t rejected = 0;
  std::int64_t queued = 0;
  std::int64_t running = 0;
};

/// @brief The Content-Type of the text exposition format.
inline constexpr std::string_view kPrometheusContentType =
    "text/plain; version=0.0.4; charset=utf-8";

/// @brief A label value escaped for the text format: backslash, double quote and line feed
/// become \\, \" and \n.
std::string escape_label_value(std::string_view value);

/// @brief The snapshot in Prometheus text exposition format 0.0.4: every family with # HELP and
/// # TYPE, names apo_*, units in the names (_bytes, _seconds, _ratio, _celsius, _watts).
/// Families: the latest sample's device, host and engine gauges; requests per workflow and
/// outcome (counter); generation time per workflow (histogram); alerts (apo_alert_active{kind},
/// one series per kind, 1 when active); the engine's counters when given.
std::string to_prometheus(const MetricsSnapshot& snapshot,
                          const std::optional<EngineCounters>& engine = std::nullopt);

/// @brief The same figures as JSON.
std::string to_metrics_json(const MetricsSnapshot& snapshot,
                            const std::optional<EngineCounters>& engine = std::nullopt,
                            int indent = 2);

/// @brief An HTTP answer of the metrics endpoint.
struct MetricsResponse {
  int status = 200;
  std::string content_type;
  std::string body;
};

/// @brief The answer to a GET of `path`: /metrics (text format), /metrics.json, or 404.
MetricsResponse metrics_response(std::string_view path, const MetricsSnapshot& snapshot,
                                 const std::optional<EngineCounters>& engine = std::nullopt);

}  // namespace apo::monitor

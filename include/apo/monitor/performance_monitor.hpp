#pragma once

/// @file
/// @brief The guide's PerformanceMonitor: samples the machine and the engine at an interval,
/// keeps a bounded history of samples and finished requests, raises and clears alerts with
/// hysteresis, and reports summaries, trends and configuration recommendations.

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "apo/core/clock.hpp"
#include "apo/core/config.hpp"
#include "apo/core/enum_names.hpp"
#include "apo/monitor/sample.hpp"

namespace apo::monitor {

/// @brief What an alert is about.
enum class AlertKind : std::uint8_t {
  vram_pressure,        ///< a device's memory in use passed vram_alert_fraction of its total
  ram_pressure,         ///< host RAM in use passed ram_alert_fraction
  low_gpu_utilization,  ///< the engine was busy and the GPU ran under low_gpu_utilization_fraction
  slow_generation,      ///< requests took longer than target_generation_time on average
};

}  // namespace apo::monitor

template <>
struct apo::EnumTraits<apo::monitor::AlertKind> {
  static constexpr std::string_view noun = "alert kind";
  static constexpr std::array<EnumEntry<apo::monitor::AlertKind>, 4> entries{{
      {apo::monitor::AlertKind::vram_pressure, "vram_pressure"},
      {apo::monitor::AlertKind::ram_pressure, "ram_pressure"},
      {apo::monitor::AlertKind::low_gpu_utilization, "low_gpu_utilization"},
      {apo::monitor::AlertKind::slow_generation, "slow_generation"},
  }};
};

namespace apo::monitor {

inline constexpr std::size_t kAlertKinds = EnumTraits<AlertKind>::entries.size();

/// @brief An alert raised or cleared. `value` and `threshold` are the figures of the sample that
/// flipped it (a ratio, or seconds for slow_generation); the message repeats them in words.
struct Alert {
  AlertKind kind = AlertKind::vram_pressure;
  bool active = true;  ///< true: raised; false: cleared
  std::string message;
  double value = 0;
  double threshold = 0;
  Clock::time_point time{};
};

/// @brief mean, min, max and 95th percentile (nearest rank) of a series.
struct Statistics {
  std::size_t count = 0;
  double mean = 0;
  double min = 0;
  double max = 0;
  double p95 = 0;
};

/// @brief Which way a series moves over the summary window.
enum class TrendDirection : std::uint8_t { rising, falling, steady };

}  // namespace apo::monitor

template <>
struct apo::EnumTraits<apo::monitor::TrendDirection> {
  static constexpr std::string_view noun = "trend direction";
  static constexpr std::array<EnumEntry<apo::monitor::TrendDirection>, 3> entries{{
      {apo::monitor::TrendDirection::rising, "rising"},
      {apo::monitor::TrendDirection::falling, "falling"},
      {apo::monitor::TrendDirection::steady, "steady"},
  }};
};

namespace apo::monitor {

/// @brief A least-squares line through a series against time. Steady when the line moves less
/// than kSteadyChange of the series' mean magnitude across the window's span.
struct Trend {
  std::string metric;  ///< "device_memory_ratio", "ram_used_ratio", "generation_seconds", "quality"
  double slope_per_minute = 0;
  TrendDirection direction = TrendDirection::steady;
  std::size_t points = 0;
  double span_seconds = 0;

  static constexpr double kSteadyChange = 0.05;
};

/// @brief A configuration change that addresses what the monitor saw, after the guide's
/// strategy table.
struct Recommendation {
  std::string trigger;  ///< an AlertKind name, or "falling_quality"
  std::string key;  ///< the config key to change: "attention_optimization.enable_attention_slicing"
  std::string value;   ///< the value to set it to, as JSON text ("true", "\"fp8\""), or a direction
  std::string reason;  ///< why, with the figures and the guide's expected effect
};

/// @brief Requests of one workflow within the summary window.
struct WorkflowSummary {
  std::string workflow;
  std::size_t requests = 0;
  std::size_t failed = 0;
  std::optional<Statistics> generation_seconds;  ///< successful requests only
  std::optional<Statistics> compute_seconds;
  std::optional<Statistics> peak_memory_bytes;
  std::optional<Statistics> quality;
};

/// @brief The monitor's report: summaries over the last summary_window samples and requests,
/// trends, the active alerts and recommendations.
struct Report {
  Clock::time_point time{};
  double target_generation_time_s = 0;
  std::size_t samples = 0;   ///< samples in the window
  std::size_t requests = 0;  ///< requests in the window
  std::size_t failed = 0;
  std::optional<Statistics> generation_seconds;
  std::optional<Statistics> compute_seconds;
  std::optional<Statistics> peak_memory_bytes;
  std::optional<Statistics> quality;
  std::optional<Statistics> device_memory_ratio;    ///< highest device's ratio in each sample
  std::optional<Statistics> gpu_utilization_ratio;  ///< busy samples, busiest device
  std::optional<Statistics> ram_used_ratio;
  std::optional<Statistics> cpu_busy_ratio;
  std::optional<Statistics> process_resident_bytes;
  std::vector<WorkflowSummary> workflows;
  std::vector<Trend> trends;
  std::vector<Alert> active_alerts;
  std::vector<Recommendation> recommendations;
};

/// @brief The report as JSON (statistics as {count, mean, min, max, p95}, times in seconds on
/// the monitor's clock).
std::string to_json(const Report& report, int indent = 2);

/// @brief Upper bounds, in seconds, of the generation-time histogram's buckets (the guide's
/// targets: under 30 s for an image, under 2 min for a video).
inline constexpr std::array<double, 10> kGenerationSecondsBuckets{1,  2,  5,   10,  20,
                                                                  30, 60, 120, 300, 600};

/// @brief Running totals of one workflow's requests since the monitor started (never trimmed
/// with the history, as metrics counters must only grow).
struct WorkflowCounters {
  std::uint64_t ok = 0;
  std::uint64_t failed = 0;
  double generation_seconds_sum = 0;  ///< successful requests
  double compute_seconds_sum = 0;
  /// Successful requests at or under each bound of kGenerationSecondsBuckets (not cumulative).
  std::array<std::uint64_t, kGenerationSecondsBuckets.size()> bucket_counts{};
};

/// @brief What metrics export needs, taken at one moment.
struct MetricsSnapshot {
  Clock::time_point time{};
  std::optional<Sample> latest;
  std::uint64_t samples_taken = 0;
  std::map<std::string, WorkflowCounters> workflows;
  std::vector<Alert> active_alerts;
};

/// @brief Samples the machine and the engine, records requests, alerts and reports.
///
/// Threads: every member may be called from any thread. The sampler thread (start/stop) and
/// sample_now() take samples one at a time. Alert callbacks run on the thread that took the
/// sample, with no lock of the monitor held (they may call the monitor); callbacks of samples
/// taken concurrently (sample_now beside the sampler) may run concurrently. A callback must not
/// call stop() or destroy the monitor (the sampler thread cannot join itself).
class PerformanceMonitor {
 public:
  using AlertCallback = std::function<void(const Alert&)>;

  /// @brief A monitor of `settings`, judging generation times against
  /// `target_generation_time_s`, timing with `clock` (which must outlive it), reading samples
  /// from `source` (a SystemSampler of this machine by default). Throws apo::Error
  /// (InvalidArgument) for settings out of their ranges.
  PerformanceMonitor(const Monitoring& settings, double target_generation_time_s, Clock& clock,
                     SampleSource source = {});
  ~PerformanceMonitor();
  PerformanceMonitor(const PerformanceMonitor&) = delete;
  PerformanceMonitor& operator=(const PerformanceMonitor&) = delete;

  /// @brief Starts the sampler thread: a sample every sample_interval_s on the clock, the first
  /// one interval after start. No-op when running.
  void start();
  /// @brief Stops and joins the sampler thread; no-op when not running.
  void stop();
  bool running() const;

  /// @brief Takes one sample now, on the calling thread, and evaluates the alerts. Errors of the
  /// sample source propagate (the sampler thread keeps them in last_error() instead).
  Sample sample_now();

  /// @brief Sets (or, with an empty function, clears) where engine readings come from. Waits
  /// for a sample in progress: once it returns the old source is never called again, so an
  /// engine detaches this way before it is destroyed.
  void set_engine_source(EngineReadingSource source);

  /// @brief Records a finished request, stamped with the clock's time.
  void record_request(RequestRecord record);

  /// @brief Adds a callback told of every alert raised and cleared.
  void on_alert(AlertCallback callback);

  std::vector<Alert> active_alerts() const;
  /// @brief Samples and requests of the bounded history, oldest first.
  std::vector<Sample> samples() const;
  std::vector<RecordedRequest> requests() const;
  /// @brief Samples taken since construction (the history keeps the last history_size).
  std::uint64_t samples_taken() const;
  /// @brief The last error of the sampler thread's sample source, if any.
  std::optional<std::string> last_error() const;

  Report report() const;
  MetricsSnapshot metrics_snapshot() const;

  const Monitoring& settings() const noexcept { return settings_; }
  double target_generation_time_s() const noexcept { return target_generation_time_s_; }

 private:
  struct AlertState {
    bool active = false;
    int streak = 0;  ///< consecutive samples disagreeing with `active`
    Alert last;
  };

  void sampler_loop(Clock::time_point first);
  std::vector<Alert> evaluate_alerts(const Sample& sample);
  void vote(AlertKind kind, bool condition, double value, double threshold, std::string message,
            Clock::time_point time, std::vector<Alert>& changes);

  const Monitoring settings_;
  const double target_generation_time_s_;
  Clock& clock_;
  SampleSource source_;

  // Serializes samples, and guards engine_source_ (so clearing it waits for a sample).
  mutable std::mutex sampling_mutex_;
  EngineReadingSource engine_source_;

  // Guards the history, alerts, counters and callbacks.
  mutable std::mutex mutex_;
  std::deque<Sample> samples_;            ///< the last history_size
  std::deque<RecordedRequest> requests_;  ///< the last history_size
  std::uint64_t samples_taken_ = 0;
  std::uint64_t requests_recorded_ = 0;
  std::uint64_t requests_judged_ = 0;  ///< requests already counted by slow_generation
  std::map<std::string, WorkflowCounters> counters_;
  std::array<AlertState, kAlertKinds> alerts_{};
  std::vector<std::shared_ptr<const AlertCallback>> callbacks_;
  std::optional<std::string> last_error_;

  // The sampler thread.
  mutable std::mutex thread_mutex_;
  ClockCondition wake_;
  bool stopping_ = false;
  std::thread thread_;
  mutable std::mutex lifecycle_mutex_;  ///< serializes start and stop
};

}  // namespace apo::monitor

#pragma once

/// @file
/// @brief Profiling spans written as Chrome trace-event JSON, which Perfetto (ui.perfetto.dev)
/// and chrome://tracing open: where a request's time went, thread by thread — scheduling, model
/// loads, each denoising step, decoding, out-of-memory retries.
///
/// Off by default. A Span made while tracing is off costs one relaxed atomic load and records
/// nothing, so spans stay in the code paths that matter; bench_engine measures what they cost
/// when on.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace apo::monitor {

/// @brief One trace event, in the trace-event format's terms.
struct TraceEvent {
  std::string name;
  std::string category;
  char phase = 'X';          ///< 'X' complete (a span), 'i' instant, 'C' counter
  std::int64_t ts_us = 0;    ///< start, in microseconds since the trace started
  std::int64_t dur_us = 0;   ///< 'X' only
  std::uint32_t thread = 0;  ///< apo's number for the thread that recorded it
  std::string args_json;     ///< a JSON object's members without braces, or empty
};

/// @brief The process's trace: events recorded from any thread while it is on.
///
/// Bounded: past `max_events` events it drops new ones and counts them (dropped()), so a trace
/// left on never grows without bound. Thread-safe. Time is real time (steady_clock): a trace
/// shows what the machine did, whatever clock the engine was given.
class Tracer {
 public:
  static constexpr std::size_t kDefaultMaxEvents = 1'000'000;

  /// @brief The process-wide tracer that Span records into.
  static Tracer& global();

  /// @brief Clears the events and starts recording; the trace's time 0 is now.
  void start(std::size_t max_events = kDefaultMaxEvents);
  /// @brief Stops recording; the events stay until the next start().
  void stop();
  bool enabled() const noexcept { return enabled_.load(std::memory_order_relaxed); }

  /// @brief Records a span from `begin` to `end`.
  void complete(std::string_view name, std::string_view category,
                std::chrono::steady_clock::time_point begin,
                std::chrono::steady_clock::time_point end, std::string args_json = {});
  /// @brief Records a moment (an out-of-memory split, a cache eviction).
  void instant(std::string_view name, std::string_view category, std::string args_json = {});
  /// @brief Records a counter's value (memory in use, queue length) as a track of its own.
  void counter(std::string_view name, std::string_view series, double value);

  /// @brief Names the calling thread in the trace ("engine worker 0").
  void name_thread(std::string_view name);

  std::vector<TraceEvent> events() const;
  std::size_t dropped() const;

  /// @brief {"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}, with a
  /// thread_name metadata event for each named thread.
  std::string to_json() const;
  /// @brief Writes to_json() to `path`.
  /// @throws apo::Error Io when the file cannot be written
  void write(const std::filesystem::path& path) const;

 private:
  std::int64_t since_start_us(std::chrono::steady_clock::time_point time) const;
  void record(TraceEvent event, std::chrono::steady_clock::time_point begin);

  std::atomic<bool> enabled_{false};
  mutable std::mutex mutex_;
  std::chrono::steady_clock::time_point origin_{};
  std::size_t max_events_ = kDefaultMaxEvents;
  std::size_t dropped_ = 0;
  std::vector<TraceEvent> events_;
  std::vector<std::pair<std::uint32_t, std::string>> thread_names_;
};

/// @brief A span of the global trace from construction to destruction; nothing when tracing is
/// off at construction. `name` and `category` must outlive the span (string literals do).
class Span {
 public:
  Span(std::string_view name, std::string_view category) noexcept;
  ~Span();
  Span(const Span&) = delete;
  Span& operator=(const Span&) = delete;

  bool active() const noexcept { return active_; }
  /// @brief Adds an argument shown with the span (nothing when inactive).
  Span& arg(std::string_view key, double value);
  Span& arg(std::string_view key, std::string_view value);

 private:
  std::string_view name_;
  std::string_view category_;
  std::chrono::steady_clock::time_point begin_{};
  std::string args_json_;
  bool active_ = false;
};

/// @brief A JSON object member `"key": value` for TraceEvent::args_json (string escaped).
std::string trace_arg(std::string_view key, std::string_view value);
std::string trace_arg(std::string_view key, double value);

}  // namespace apo::monitor

#include "apo/monitor/trace.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apo/core/error.hpp"

namespace apo::monitor {

namespace {

// Small, stable numbers read better in a trace viewer than the OS's thread ids.
std::uint32_t this_thread_number() {
  static std::atomic<std::uint32_t> next{1};
  thread_local const std::uint32_t number = next.fetch_add(1, std::memory_order_relaxed);
  return number;
}

std::string json_string(std::string_view text) {
  // Names and arguments are nearly always plain: quote them directly, and leave escaping
  // (quotes, backslashes, control bytes, invalid UTF-8) to nlohmann-json.
  const bool plain = std::all_of(text.begin(), text.end(), [](char c) {
    const auto byte = static_cast<unsigned char>(c);
    return byte >= 0x20 && byte < 0x80 && c != '"' && c != '\\';
  });
  if (plain) {
    std::string quoted;
    quoted.reserve(text.size() + 2);
    quoted += '"';
    quoted += text;
    quoted += '"';
    return quoted;
  }
  return nlohmann::json(std::string(text))
      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string number_text(double value) {
  // JSON has no NaN or infinity.
  return std::isfinite(value) ? fmt::format("{}", value) : std::string("null");
}

}  // namespace

std::string trace_arg(std::string_view key, std::string_view value) {
  return json_string(key) + ":" + json_string(value);
}

std::string trace_arg(std::string_view key, double value) {
  return json_string(key) + ":" + number_text(value);
}

Tracer& Tracer::global() {
  static Tracer tracer;
  return tracer;
}

void Tracer::start(std::size_t max_events) {
  std::lock_guard lock(mutex_);
  events_.clear();
  dropped_ = 0;
  max_events_ = max_events;
  origin_ = std::chrono::steady_clock::now();
  enabled_.store(true, std::memory_order_relaxed);
}

void Tracer::stop() {
  enabled_.store(false, std::memory_order_relaxed);
}

std::int64_t Tracer::since_start_us(std::chrono::steady_clock::time_point time) const {
  return std::chrono::duration_cast<std::chrono::microseconds>(time - origin_).count();
}

void Tracer::record(TraceEvent event, std::chrono::steady_clock::time_point begin) {
  event.thread = this_thread_number();
  std::lock_guard lock(mutex_);
  // Checked again under the lock: start() may have cleared the trace since the caller looked.
  if (!enabled()) return;
  if (events_.size() >= max_events_) {
    ++dropped_;
    return;
  }
  event.ts_us = since_start_us(begin);
  events_.push_back(std::move(event));
}

void Tracer::complete(std::string_view name, std::string_view category,
                      std::chrono::steady_clock::time_point begin,
                      std::chrono::steady_clock::time_point end, std::string args_json) {
  if (!enabled()) return;
  TraceEvent event{std::string(name), std::string(category), 'X', 0, 0, 0, std::move(args_json)};
  event.dur_us = std::chrono::duration_cast<std::chrono::microseconds>(end - begin).count();
  record(std::move(event), begin);
}

void Tracer::instant(std::string_view name, std::string_view category, std::string args_json) {
  if (!enabled()) return;
  record({std::string(name), std::string(category), 'i', 0, 0, 0, std::move(args_json)},
         std::chrono::steady_clock::now());
}

void Tracer::counter(std::string_view name, std::string_view series, double value) {
  if (!enabled()) return;
  record({std::string(name), "counter", 'C', 0, 0, 0, trace_arg(series, value)},
         std::chrono::steady_clock::now());
}

void Tracer::name_thread(std::string_view name) {
  const std::uint32_t thread = this_thread_number();
  std::lock_guard lock(mutex_);
  for (auto& [number, known] : thread_names_) {
    if (number == thread) {
      known = std::string(name);
      return;
    }
  }
  thread_names_.emplace_back(thread, std::string(name));
}

std::vector<TraceEvent> Tracer::events() const {
  std::lock_guard lock(mutex_);
  return events_;
}

std::size_t Tracer::dropped() const {
  std::lock_guard lock(mutex_);
  return dropped_;
}

std::string Tracer::to_json() const {
  std::vector<TraceEvent> events;
  std::vector<std::pair<std::uint32_t, std::string>> names;
  std::size_t dropped = 0;
  {
    std::lock_guard lock(mutex_);
    events = events_;
    names = thread_names_;
    dropped = dropped_;
  }
  const int pid = static_cast<int>(::getpid());
  std::string out = "{\"traceEvents\":[\n";
  bool first = true;
  const auto separate = [&] {
    if (!first) out += ",\n";
    first = false;
  };
  separate();
  out += fmt::format(
      R"({{"name":"process_name","ph":"M","pid":{},"tid":0,"args":{{"name":"apo"}}}})", pid);
  for (const auto& [thread, name] : names) {
    separate();
    out += fmt::format(R"({{"name":"thread_name","ph":"M","pid":{},"tid":{},"args":{{{}}}}})", pid,
                       thread, trace_arg("name", name));
  }
  for (const TraceEvent& event : events) {
    separate();
    out += fmt::format(R"({{"name":{},"cat":{},"ph":"{}","ts":{},"pid":{},"tid":{})",
                       json_string(event.name), json_string(event.category), event.phase,
                       event.ts_us, pid, event.thread);
    if (event.phase == 'X') out += fmt::format(R"(,"dur":{})", event.dur_us);
    if (event.phase == 'i') out += R"(,"s":"t")";
    if (!event.args_json.empty()) out += ",\"args\":{" + event.args_json + "}";
    out += "}";
  }
  out += fmt::format("\n],\"displayTimeUnit\":\"ms\",\"otherData\":{{\"dropped_events\":{}}}}}\n",
                     dropped);
  return out;
}

void Tracer::write(const std::filesystem::path& path) const {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  if (!file) throw Error(ErrorCode::Io, fmt::format("cannot write the trace to {}", path.string()));
  file << to_json();
  if (!file.flush()) {
    throw Error(ErrorCode::Io, fmt::format("cannot write the trace to {}", path.string()));
  }
}

Span::Span(std::string_view name, std::string_view category) noexcept
    : name_(name), category_(category) {
  if (Tracer::global().enabled()) {
    active_ = true;
    begin_ = std::chrono::steady_clock::now();
  }
}

Span::~Span() {
  if (!active_) return;
  try {
    Tracer::global().complete(name_, category_, begin_, std::chrono::steady_clock::now(),
                              std::move(args_json_));
  } catch (...) {
    // A span that cannot be recorded (out of memory) is lost; the traced work is not.
  }
}

Span& Span::arg(std::string_view key, double value) {
  if (!active_) return *this;
  if (!args_json_.empty()) args_json_ += ",";
  args_json_ += trace_arg(key, value);
  return *this;
}

Span& Span::arg(std::string_view key, std::string_view value) {
  if (!active_) return *this;
  if (!args_json_.empty()) args_json_ += ",";
  args_json_ += trace_arg(key, value);
  return *this;
}

}  // namespace apo::monitor

#include "apo_catch.hpp"

#include <cmath>
#include <cstdlib>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apo/core/clock.hpp"
#include "apo/monitor/metrics_export.hpp"
#include "apo/monitor/performance_monitor.hpp"

namespace metrics_export_test {

using namespace std::chrono_literals;

/// One sample line of the text format, parsed.
struct Line {
  std::string name;
  std::map<std::string, std::string> labels;  ///< values unescaped
  double value = 0;
};

/// Parses `{a="x",b="y"} value` after a metric name, undoing the escapes; fails the test on any
/// deviation from the 0.0.4 grammar.
Line parse_sample(const std::string& text) {
  static const std::regex name_pattern("^[a-zA-Z_:][a-zA-Z0-9_:]*");
  static const std::regex label_name_pattern("^[a-zA-Z_][a-zA-Z0-9_]*");
  Line line;
  std::smatch match;
  REQUIRE(std::regex_search(text, match, name_pattern));
  line.name = match.str();
  std::size_t i = line.name.size();
  if (i < text.size() && text[i] == '{') {
    ++i;
    while (text.at(i) != '}') {
      const std::string rest = text.substr(i);
      REQUIRE(std::regex_search(rest, match, label_name_pattern));
      const std::string label = match.str();
      i += label.size();
      REQUIRE(text.substr(i, 2) == "=\"");
      i += 2;
      std::string value;
      while (text.at(i) != '"') {
        if (text[i] == '\\') {
          const char escaped = text.at(i + 1);
          REQUIRE((escaped == '\\' || escaped == '"' || escaped == 'n'));
          value += escaped == 'n' ? '\n' : escaped;
          i += 2;
        } else {
          REQUIRE(text[i] != '\n');
          value += text[i++];
        }
      }
      ++i;  // closing quote
      REQUIRE(line.labels.count(label) == 0);
      line.labels[label] = value;
      if (text.at(i) == ',') ++i;
    }
    ++i;  // closing brace
  }
  REQUIRE(text.at(i) == ' ');
  const std::string value = text.substr(i + 1);
  if (value == "+Inf" || value == "-Inf" || value == "NaN") {
    line.value = value == "NaN" ? std::nan("") : (value[0] == '+' ? 1 : -1) * HUGE_VAL;
  } else {
    char* end = nullptr;
    line.value = std::strtod(value.c_str(), &end);
    REQUIRE(end == value.c_str() + value.size());  // no timestamp, nothing trailing
  }
  return line;
}

/// The exposition checked line by line: every family announced once by HELP then TYPE before
/// its samples, samples of a family together, names apo_*. Returns the samples.
std::vector<Line> check_exposition(const std::string& text) {
  REQUIRE(!text.empty());
  REQUIRE(text.back() == '\n');
  std::istringstream in(text);
  std::string raw;
  std::set<std::string> families;
  std::map<std::string, std::string> types;
  std::string current;
  std::string pending_help;
  std::vector<Line> samples;
  while (std::getline(in, raw)) {
    REQUIRE(!raw.empty());
    if (raw.rfind("# HELP ", 0) == 0) {
      const std::string name = raw.substr(7, raw.find(' ', 7) - 7);
      REQUIRE(families.insert(name).second);  // each family once
      REQUIRE(name.rfind("apo_", 0) == 0);
      pending_help = name;
      continue;
    }
    if (raw.rfind("# TYPE ", 0) == 0) {
      std::istringstream words(raw.substr(7));
      std::string name, type, extra;
      words >> name >> type;
      REQUIRE_FALSE(words >> extra);
      REQUIRE(name == pending_help);  // HELP then TYPE of the same family
      REQUIRE((type == "counter" || type == "gauge" || type == "histogram"));
      types[name] = type;
      current = name;
      pending_help.clear();
      continue;
    }
    REQUIRE(raw[0] != '#');
    Line line = parse_sample(raw);
    // A sample belongs to the family announced last (histograms add _bucket, _sum, _count).
    const bool belongs = line.name == current ||
                         (types[current] == "histogram" &&
                          (line.name == current + "_bucket" || line.name == current + "_sum" ||
                           line.name == current + "_count"));
    INFO(raw);
    REQUIRE(belongs);
    if (types[current] == "counter") {
      REQUIRE(line.name.size() > 6);
      REQUIRE(line.name.substr(line.name.size() - 6) == "_total");
    }
    samples.push_back(std::move(line));
  }
  return samples;
}

std::vector<Line> named(const std::vector<Line>& samples, const std::string& name) {
  std::vector<Line> out;
  for (const Line& line : samples) {
    if (line.name == name) out.push_back(line);
  }
  return out;
}

/// A monitor with one full sample, two workflows (one with characters to escape) and an alert.
struct Scene {
  apo::FakeClock clock;
  apo::monitor::PerformanceMonitor monitor;

  Scene()
      : monitor(settings(), 10.0, clock, [] {
          apo::monitor::Sample s;
          apo::monitor::DeviceSample d;
          d.device = "cuda:0";
          d.name = "Test \"GPU\"";
          d.allocated_bytes = 900;
          d.reserved_bytes = 950;
          d.total_bytes = 1000;
          d.utilization_ratio = 0.5;
          d.temperature_c = 61;
          d.power_w = 250.5;
          s.devices.push_back(d);
          s.ram_total_bytes = 1 << 30;
          s.ram_used_ratio = 0.25;
          s.process_resident_bytes = 123456;
          s.cpu_busy_ratio = 0.125;
          s.process_cpu_ratio = 0.0625;
          return s;
        }) {
    for (double seconds : {0.5, 3.0, 3.0, 45.0, 700.0}) {
      apo::monitor::RequestRecord r;
      r.workflow = "wan";
      r.total_seconds = seconds;
      r.compute_seconds = 1.0;
      monitor.record_request(r);
    }
    apo::monitor::RequestRecord odd;
    odd.workflow = "my \"odd\"\\workflow\nname";
    odd.ok = false;
    monitor.record_request(odd);
    for (int i = 0; i < 3; ++i) {
      clock.advance(5s);
      monitor.sample_now();  // VRAM at 95%: raised on the third
    }
  }

  static apo::Monitoring settings() {
    apo::Monitoring m;
    m.alert_hysteresis_samples = 3;
    return m;
  }
};

TEST_CASE("label values are escaped per the text format", "[metrics_export]") {
  CHECK(apo::monitor::escape_label_value("plain") == "plain");
  CHECK(apo::monitor::escape_label_value("a\"b") == "a\\\"b");
  CHECK(apo::monitor::escape_label_value("a\\b") == "a\\\\b");
  CHECK(apo::monitor::escape_label_value("a\nb") == "a\\nb");
  CHECK(apo::monitor::escape_label_value("\\\"\n") == "\\\\\\\"\\n");
}

TEST_CASE("the exposition is well-formed text format 0.0.4", "[metrics_export]") {
  Scene scene;
  const std::string text = apo::monitor::to_prometheus(scene.monitor.metrics_snapshot());
  const std::vector<Line> samples = check_exposition(text);

  const auto allocated = named(samples, "apo_device_memory_allocated_bytes");
  REQUIRE(allocated.size() == 1);
  CHECK(allocated[0].labels.at("device") == "cuda:0");
  CHECK(allocated[0].value == 900);
  CHECK(named(samples, "apo_device_memory_used_ratio")[0].value == Approx(0.95));
  CHECK(named(samples, "apo_device_info")[0].labels.at("name") == "Test \"GPU\"");
  CHECK(named(samples, "apo_gpu_utilization_ratio")[0].value == 0.5);
  CHECK(named(samples, "apo_gpu_temperature_celsius")[0].value == 61);
  CHECK(named(samples, "apo_gpu_power_watts")[0].value == 250.5);
  CHECK(named(samples, "apo_host_memory_used_ratio")[0].value == 0.25);
  CHECK(named(samples, "apo_process_resident_memory_bytes")[0].value == 123456);
  CHECK(named(samples, "apo_cpu_busy_ratio")[0].value == 0.125);
  CHECK(named(samples, "apo_monitor_samples_total")[0].value == 3);
  CHECK(named(samples, "apo_engine_queued_requests").empty());  // no engine attached

  // Requests per workflow and outcome, the odd name unescaped intact.
  std::map<std::pair<std::string, std::string>, double> requests;
  for (const Line& line : named(samples, "apo_requests_total")) {
    requests[{line.labels.at("workflow"), line.labels.at("outcome")}] = line.value;
  }
  CHECK(requests.at({"wan", "ok"}) == 5);
  CHECK(requests.at({"wan", "failed"}) == 0);
  CHECK(requests.at({"my \"odd\"\\workflow\nname", "failed"}) == 1);
  CHECK_THAT(text, Catch::Contains("workflow=\"my \\\"odd\\\"\\\\workflow\\nname\""));

  // The histogram: cumulative buckets, +Inf equal to the count, the sum of the times.
  std::vector<Line> buckets;
  for (const Line& line : named(samples, "apo_generation_seconds_bucket")) {
    if (line.labels.at("workflow") == "wan") buckets.push_back(line);
  }
  REQUIRE(buckets.size() == apo::monitor::kGenerationSecondsBuckets.size() + 1);
  for (std::size_t i = 1; i < buckets.size(); ++i) CHECK(buckets[i].value >= buckets[i - 1].value);
  CHECK(buckets[0].labels.at("le") == "1");
  CHECK(buckets[0].value == 1);  // 0.5 s
  CHECK(buckets[2].labels.at("le") == "5");
  CHECK(buckets[2].value == 3);                   // and the two 3 s
  CHECK(buckets[buckets.size() - 2].value == 4);  // 700 s is over the last bound
  CHECK(buckets.back().labels.at("le") == "+Inf");
  CHECK(buckets.back().value == 5);
  double wan_count = -1;
  double wan_sum = -1;
  for (const Line& line : samples) {
    if (line.labels.count("workflow") && line.labels.at("workflow") == "wan") {
      if (line.name == "apo_generation_seconds_count") wan_count = line.value;
      if (line.name == "apo_generation_seconds_sum") wan_sum = line.value;
    }
  }
  CHECK(wan_count == 5);
  CHECK(wan_sum == Approx(751.5));

  // One series per alert kind, 1 for the raised one.
  const auto alerts = named(samples, "apo_alert_active");
  REQUIRE(alerts.size() == apo::EnumTraits<apo::monitor::AlertKind>::entries.size());
  for (const Line& line : alerts) {
    CHECK(line.value == (line.labels.at("kind") == "vram_pressure" ? 1 : 0));
  }
}

TEST_CASE("engine counters and an empty monitor export well-formed too", "[metrics_export]") {
  apo::FakeClock clock;
  apo::monitor::PerformanceMonitor monitor(apo::Monitoring{}, 30.0, clock,
                                           [] { return apo::monitor::Sample{}; });
  const auto empty = check_exposition(apo::monitor::to_prometheus(monitor.metrics_snapshot()));
  CHECK(named(empty, "apo_monitor_samples_total")[0].value == 0);
  CHECK(named(empty, "apo_requests_total").empty());

  apo::monitor::EngineCounters engine;
  engine.submitted = 10;
  engine.completed = 7;
  engine.failed = 1;
  engine.queued = 2;
  engine.running = 1;
  monitor.sample_now();
  const auto samples =
      check_exposition(apo::monitor::to_prometheus(monitor.metrics_snapshot(), engine));
  CHECK(named(samples, "apo_engine_requests_submitted_total")[0].value == 10);
  CHECK(named(samples, "apo_engine_requests_completed_total")[0].value == 7);
  CHECK(named(samples, "apo_engine_requests_failed_total")[0].value == 1);
  CHECK(named(samples, "apo_engine_queued_requests")[0].value == 2);
  CHECK(named(samples, "apo_engine_running_requests")[0].value == 1);
  CHECK(named(samples, "apo_host_memory_used_ratio").empty());  // absent readings: no series
}

TEST_CASE("the JSON export carries the same figures", "[metrics_export]") {
  Scene scene;
  const auto json =
      nlohmann::json::parse(apo::monitor::to_metrics_json(scene.monitor.metrics_snapshot()));
  CHECK(json["samples_taken"] == 3);
  CHECK(json["sample"]["devices"][0]["device"] == "cuda:0");
  CHECK(json["sample"]["devices"][0]["allocated_bytes"] == 900);
  CHECK(json["sample"]["host_memory_used_ratio"] == 0.25);
  CHECK(json["sample"]["queued"].is_null());
  CHECK(json["workflows"]["wan"]["ok"] == 5);
  CHECK(json["workflows"]["wan"]["generation_seconds_buckets"][0]["count"] == 1);
  CHECK(json["workflows"]["my \"odd\"\\workflow\nname"]["failed"] == 1);
  REQUIRE(json["active_alerts"].size() == 1);
  CHECK(json["active_alerts"][0]["kind"] == "vram_pressure");
  CHECK(json.count("engine") == 0);
}

TEST_CASE("the endpoint answers /metrics, /metrics.json and 404", "[metrics_export]") {
  Scene scene;
  const auto snapshot = scene.monitor.metrics_snapshot();
  const auto text = apo::monitor::metrics_response("/metrics", snapshot);
  CHECK(text.status == 200);
  CHECK(text.content_type.rfind("text/plain; version=0.0.4", 0) == 0);
  CHECK(text.body == apo::monitor::to_prometheus(snapshot));
  const auto json = apo::monitor::metrics_response("/metrics.json", snapshot);
  CHECK(json.status == 200);
  CHECK(json.content_type == "application/json");
  CHECK(nlohmann::json::parse(json.body)["samples_taken"] == 3);
  CHECK(apo::monitor::metrics_response("/", snapshot).status == 404);
}

}  // namespace metrics_export_test

#include "apo_catch.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "apo/core/clock.hpp"
#include "apo/core/error.hpp"
#include "apo/monitor/performance_monitor.hpp"

namespace performance_monitor_test {

using apo::monitor::Alert;
using apo::monitor::AlertKind;
using apo::monitor::DeviceSample;
using apo::monitor::PerformanceMonitor;
using apo::monitor::Sample;
using namespace std::chrono_literals;

/// The sample the monitor reads next; tests change it between samples.
struct Feed {
  std::mutex mutex;
  Sample next;

  apo::monitor::SampleSource source() {
    return [this] {
      const std::lock_guard lock(mutex);
      return next;
    };
  }
  void set(Sample sample) {
    const std::lock_guard lock(mutex);
    next = std::move(sample);
  }
};

apo::Monitoring settings(int history = 1000, int window = 100) {
  apo::Monitoring m;
  m.history_size = history;
  m.summary_window = window;
  m.alert_hysteresis_samples = 3;
  return m;
}

Sample with_device(double used_ratio, std::optional<double> utilization = std::nullopt) {
  Sample s;
  DeviceSample d;
  d.device = "cuda:0";
  d.name = "Test GPU";
  d.total_bytes = 1000;
  d.allocated_bytes = static_cast<std::int64_t>(used_ratio * 1000);
  d.reserved_bytes = d.allocated_bytes;
  d.utilization_ratio = utilization;
  s.devices.push_back(d);
  return s;
}

Sample with_ram(double ratio) {
  Sample s;
  s.ram_used_ratio = ratio;
  s.ram_total_bytes = 64LL << 30;
  return s;
}

apo::monitor::RequestRecord request(std::string workflow, double seconds,
                                    std::optional<double> quality = std::nullopt, bool ok = true) {
  apo::monitor::RequestRecord r;
  r.workflow = std::move(workflow);
  r.ok = ok;
  r.total_seconds = seconds;
  r.compute_seconds = seconds * 0.8;
  r.peak_memory_bytes = 1 << 20;
  r.quality = quality;
  return r;
}

bool has_alert(const PerformanceMonitor& monitor, AlertKind kind) {
  const auto alerts = monitor.active_alerts();
  return std::any_of(alerts.begin(), alerts.end(), [&](const Alert& a) { return a.kind == kind; });
}

bool recommends(const apo::monitor::Report& report, const std::string& key,
                const std::string& value) {
  return std::any_of(report.recommendations.begin(), report.recommendations.end(),
                     [&](const auto& r) { return r.key == key && r.value == value; });
}

/// Waits (real time) until `done()` or five seconds pass; returns done().
template <class Done>
bool eventually(Done done) {
  const auto until = std::chrono::steady_clock::now() + 5s;
  while (!done() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
  return done();
}

TEST_CASE("the history keeps the last history_size samples and requests", "[performance_monitor]") {
  apo::FakeClock clock;
  Feed feed;
  PerformanceMonitor monitor(settings(5), 30.0, clock, feed.source());
  for (int i = 0; i < 8; ++i) {
    clock.advance(1s);
    monitor.sample_now();
    monitor.record_request(request("w" + std::to_string(i), 1.0));
  }
  const auto samples = monitor.samples();
  REQUIRE(samples.size() == 5);
  CHECK(monitor.samples_taken() == 8);
  CHECK(samples.front().time == apo::Clock::time_point(4s));  // samples 4..8 kept
  CHECK(samples.back().time == apo::Clock::time_point(8s));
  const auto requests = monitor.requests();
  REQUIRE(requests.size() == 5);
  CHECK(requests.front().record.workflow == "w3");
  CHECK(requests.back().record.workflow == "w7");
  // Counters for metrics are not trimmed with the history.
  CHECK(monitor.metrics_snapshot().workflows.size() == 8);
}

TEST_CASE("a VRAM alert is raised after N agreeing samples, does not flap, clears after N",
          "[performance_monitor]") {
  apo::FakeClock clock;
  Feed feed;
  PerformanceMonitor monitor(settings(), 30.0, clock, feed.source());
  std::vector<Alert> told;
  monitor.on_alert([&](const Alert& alert) { told.push_back(alert); });

  // Interrupted streaks never raise.
  for (double ratio : {0.9, 0.9, 0.5, 0.9, 0.9, 0.5}) {
    feed.set(with_device(ratio));
    monitor.sample_now();
  }
  CHECK(told.empty());
  CHECK_FALSE(has_alert(monitor, AlertKind::vram_pressure));

  feed.set(with_device(0.9));
  monitor.sample_now();
  monitor.sample_now();
  CHECK(told.empty());
  clock.advance(7s);
  monitor.sample_now();
  REQUIRE(told.size() == 1);
  CHECK(told[0].kind == AlertKind::vram_pressure);
  CHECK(told[0].active);
  CHECK(told[0].time == apo::Clock::time_point(7s));
  CHECK(told[0].value == Approx(0.9));
  CHECK(told[0].threshold == Approx(0.8));
  CHECK_THAT(told[0].message, Catch::Contains("cuda:0") && Catch::Contains("90.0%"));
  CHECK(has_alert(monitor, AlertKind::vram_pressure));

  // Two good samples, then a bad one: still raised, nothing told.
  for (double ratio : {0.5, 0.5, 0.95, 0.5, 0.5}) {
    feed.set(with_device(ratio));
    monitor.sample_now();
  }
  CHECK(told.size() == 1);
  CHECK(has_alert(monitor, AlertKind::vram_pressure));

  monitor.sample_now();  // the third 0.5 in a row
  REQUIRE(told.size() == 2);
  CHECK_FALSE(told[1].active);
  CHECK(told[1].kind == AlertKind::vram_pressure);
  CHECK(monitor.active_alerts().empty());
}

TEST_CASE("reserved memory counts toward VRAM pressure", "[performance_monitor]") {
  apo::FakeClock clock;
  Feed feed;
  PerformanceMonitor monitor(settings(), 30.0, clock, feed.source());
  Sample sample = with_device(0.2);
  sample.devices[0].reserved_bytes = 850;  // the pool holds more than is allocated
  feed.set(sample);
  for (int i = 0; i < 3; ++i) monitor.sample_now();
  CHECK(has_alert(monitor, AlertKind::vram_pressure));
}

TEST_CASE("a RAM alert follows ram_alert_fraction", "[performance_monitor]") {
  apo::FakeClock clock;
  Feed feed;
  PerformanceMonitor monitor(settings(), 30.0, clock, feed.source());
  feed.set(with_ram(0.65));
  for (int i = 0; i < 5; ++i) monitor.sample_now();
  CHECK_FALSE(has_alert(monitor, AlertKind::ram_pressure));
  feed.set(with_ram(0.75));
  for (int i = 0; i < 3; ++i) monitor.sample_now();
  REQUIRE(has_alert(monitor, AlertKind::ram_pressure));
  CHECK_THAT(monitor.active_alerts()[0].message, Catch::Contains("75.0%"));
}

TEST_CASE("low GPU utilization alerts only while the engine is busy", "[performance_monitor]") {
  apo::FakeClock clock;
  Feed feed;
  feed.set(with_device(0.3, 0.2));
  PerformanceMonitor monitor(settings(), 30.0, clock, feed.source());
  for (int i = 0; i < 5; ++i) monitor.sample_now();  // idle: no engine at all
  CHECK_FALSE(has_alert(monitor, AlertKind::low_gpu_utilization));

  std::atomic<int> running{1};
  monitor.set_engine_source([&] {
    apo::monitor::EngineReading reading;
    reading.running = running;
    reading.queued = 4;
    return reading;
  });
  monitor.sample_now();
  monitor.sample_now();
  CHECK_FALSE(has_alert(monitor, AlertKind::low_gpu_utilization));
  const Sample third = monitor.sample_now();
  CHECK(third.busy());
  CHECK(third.queued == 4);
  REQUIRE(has_alert(monitor, AlertKind::low_gpu_utilization));

  running = 0;  // idle again: the alert clears after N samples
  for (int i = 0; i < 3; ++i) monitor.sample_now();
  CHECK_FALSE(has_alert(monitor, AlertKind::low_gpu_utilization));

  running = 1;  // busy and well used: no alert
  feed.set(with_device(0.3, 0.95));
  for (int i = 0; i < 5; ++i) monitor.sample_now();
  CHECK_FALSE(has_alert(monitor, AlertKind::low_gpu_utilization));
}

TEST_CASE("the engine's readings replace the device memory of the sample source",
          "[performance_monitor]") {
  apo::FakeClock clock;
  Feed feed;
  feed.set(with_device(0.5, 0.7));
  PerformanceMonitor monitor(settings(), 30.0, clock, feed.source());
  monitor.set_engine_source([] {
    apo::monitor::EngineReading reading;
    DeviceSample gpu;
    gpu.device = "cuda:0";
    gpu.allocated_bytes = 100;
    gpu.reserved_bytes = 200;
    DeviceSample cpu;
    cpu.device = "cpu";
    cpu.allocated_bytes = 5;
    cpu.total_bytes = 10;
    reading.devices = {gpu, cpu};
    reading.running = 2;
    return reading;
  });
  const Sample merged = monitor.sample_now();
  REQUIRE(merged.devices.size() == 2);
  CHECK(merged.devices[0].allocated_bytes == 100);
  CHECK(merged.devices[0].reserved_bytes == 200);
  CHECK(merged.devices[0].total_bytes == 1000);  // kept from the source
  CHECK(merged.devices[0].utilization_ratio == Approx(0.7));
  CHECK(merged.devices[0].name == "Test GPU");
  CHECK(merged.devices[1].device == "cpu");
  CHECK(merged.running == 2);

  monitor.set_engine_source({});
  const Sample alone = monitor.sample_now();
  CHECK(alone.devices.size() == 1);
  CHECK_FALSE(alone.running);
}

TEST_CASE("clearing the engine source waits for a sample in progress", "[performance_monitor]") {
  apo::FakeClock clock;
  Feed feed;
  PerformanceMonitor monitor(settings(), 30.0, clock, feed.source());
  std::mutex mutex;
  std::condition_variable changed;
  bool in_source = false;
  bool release = false;
  monitor.set_engine_source([&] {
    std::unique_lock lock(mutex);
    in_source = true;
    changed.notify_all();
    changed.wait(lock, [&] { return release; });
    return apo::monitor::EngineReading{};
  });
  std::thread sampler([&] { monitor.sample_now(); });
  {
    std::unique_lock lock(mutex);
    changed.wait(lock, [&] { return in_source; });
  }
  std::atomic<bool> cleared{false};
  std::thread detacher([&] {
    monitor.set_engine_source({});
    cleared = true;
  });
  std::this_thread::sleep_for(50ms);
  const bool cleared_early = cleared;
  {
    const std::lock_guard lock(mutex);
    release = true;
  }
  changed.notify_all();
  sampler.join();
  detacher.join();
  CHECK_FALSE(cleared_early);
  CHECK(cleared);
  CHECK_FALSE(monitor.sample_now().running);  // the source is gone
}

TEST_CASE("generation time over target raises slow_generation; idle intervals do not vote",
          "[performance_monitor]") {
  apo::FakeClock clock;
  Feed feed;
  PerformanceMonitor monitor(settings(), 10.0, clock, feed.source());
  int told = 0;
  monitor.on_alert([&](const Alert& alert) {
    if (alert.kind == AlertKind::slow_generation) ++told;
  });
  for (int i = 0; i < 3; ++i) {
    monitor.record_request(request("wan", 15.0));
    monitor.record_request(request("wan", 25.0));
    monitor.record_request(request("wan", 1.0, std::nullopt, false));  // failures do not count
    monitor.sample_now();
  }
  REQUIRE(has_alert(monitor, AlertKind::slow_generation));
  CHECK(told == 1);
  CHECK(monitor.active_alerts()[0].value == Approx(20.0));
  CHECK_THAT(monitor.active_alerts()[0].message, Catch::Contains("20.0 s"));

  for (int i = 0; i < 10; ++i) monitor.sample_now();  // no requests: the alert stays
  CHECK(has_alert(monitor, AlertKind::slow_generation));

  for (int i = 0; i < 3; ++i) {
    monitor.record_request(request("wan", 5.0));
    monitor.sample_now();
  }
  CHECK_FALSE(has_alert(monitor, AlertKind::slow_generation));
  CHECK(told == 2);
}

TEST_CASE("the sampler thread samples at each interval of the clock", "[performance_monitor]") {
  apo::FakeClock clock;
  Feed feed;
  feed.set(with_ram(0.5));
  PerformanceMonitor monitor(settings(), 30.0, clock, feed.source());
  monitor.start();
  CHECK(monitor.running());
  monitor.start();  // no-op
  clock.advance(4s);
  clock.advance(1s);
  REQUIRE(eventually([&] { return monitor.samples_taken() == 1; }));
  clock.advance(5s);
  REQUIRE(eventually([&] { return monitor.samples_taken() == 2; }));
  clock.advance(3s);
  std::this_thread::sleep_for(20ms);
  CHECK(monitor.samples_taken() == 2);  // the next is due at 15 s
  const auto samples = monitor.samples();
  REQUIRE(samples.size() == 2);
  CHECK(samples[0].time == apo::Clock::time_point(5s));
  CHECK(samples[1].time == apo::Clock::time_point(10s));
  monitor.stop();
  CHECK_FALSE(monitor.running());
  monitor.stop();  // no-op
  clock.advance(60s);
  std::this_thread::sleep_for(10ms);
  CHECK(monitor.samples_taken() == 2);

  // Restartable, and the destructor joins a running thread.
  monitor.start();
  clock.advance(5s);
  REQUIRE(eventually([&] { return monitor.samples_taken() == 3; }));
}

TEST_CASE("the sampler thread keeps the source's errors and goes on", "[performance_monitor]") {
  apo::FakeClock clock;
  std::atomic<int> calls{0};
  PerformanceMonitor monitor(settings(), 30.0, clock, [&]() -> Sample {
    if (calls++ == 0) throw apo::Error(apo::ErrorCode::Corrupt, "bad line", "/proc/meminfo");
    return with_ram(0.1);
  });
  monitor.start();
  clock.advance(5s);
  REQUIRE(eventually([&] { return monitor.last_error().has_value(); }));
  CHECK_THAT(*monitor.last_error(), Catch::Contains("/proc/meminfo"));
  clock.advance(5s);
  REQUIRE(eventually([&] { return monitor.samples_taken() == 1; }));
}

TEST_CASE("callbacks run without the monitor's lock", "[performance_monitor]") {
  apo::FakeClock clock;
  Feed feed;
  feed.set(with_ram(0.9));
  PerformanceMonitor monitor(settings(), 30.0, clock, feed.source());
  std::size_t seen_active = 0;
  monitor.on_alert([&](const Alert&) {
    seen_active = monitor.active_alerts().size();  // would deadlock under the lock
    monitor.set_engine_source({});
    (void)monitor.report();
  });
  for (int i = 0; i < 3; ++i) monitor.sample_now();
  CHECK(seen_active == 1);
}

TEST_CASE("the report summarizes the last summary_window samples and requests only",
          "[performance_monitor]") {
  apo::FakeClock clock;
  Feed feed;
  PerformanceMonitor monitor(settings(100, 4), 300.0, clock, feed.source());
  for (double seconds : {100.0, 200.0, 10.0, 20.0, 30.0, 40.0}) {
    monitor.record_request(request(seconds < 25 ? "image" : "video", seconds, 0.8));
  }
  monitor.record_request(request("video", 1.0, std::nullopt, false));
  for (double ratio : {0.99, 0.99, 0.2, 0.3, 0.4, 0.5}) {
    feed.set(with_device(ratio));
    clock.advance(5s);
    monitor.sample_now();
  }
  const apo::monitor::Report report = monitor.report();
  CHECK(report.samples == 4);
  CHECK(report.requests == 4);
  CHECK(report.failed == 1);
  REQUIRE(report.generation_seconds);
  CHECK(report.generation_seconds->count == 3);  // 20, 30, 40 (the failure has no time)
  CHECK(report.generation_seconds->mean == Approx(30.0));
  CHECK(report.generation_seconds->min == Approx(20.0));
  CHECK(report.generation_seconds->max == Approx(40.0));
  CHECK(report.generation_seconds->p95 == Approx(40.0));
  REQUIRE(report.device_memory_ratio);
  CHECK(report.device_memory_ratio->count == 4);
  CHECK(report.device_memory_ratio->max == Approx(0.5));  // the 0.99 samples are outside
  CHECK(report.device_memory_ratio->mean == Approx(0.35));
  REQUIRE(report.workflows.size() == 2);
  CHECK(report.workflows[0].workflow == "image");
  CHECK(report.workflows[0].requests == 1);
  CHECK(report.workflows[1].workflow == "video");
  CHECK(report.workflows[1].requests == 3);
  CHECK(report.workflows[1].failed == 1);
  REQUIRE(report.quality);
  CHECK(report.quality->mean == Approx(0.8));
  CHECK(report.recommendations.empty());  // under every limit

  const auto json = nlohmann::json::parse(apo::monitor::to_json(report));
  CHECK(json["window"]["samples"] == 4);
  CHECK(json["summary"]["generation_seconds"]["mean"] == Approx(30.0));
  CHECK(json["summary"]["gpu_utilization_ratio"].is_null());
  CHECK(json["workflows"].size() == 2);
  CHECK(json["recommendations"].empty());
}

TEST_CASE("trends say rising, falling or steady per minute", "[performance_monitor]") {
  apo::FakeClock clock;
  Feed feed;
  PerformanceMonitor monitor(settings(), 300.0, clock, feed.source());
  const double qualities[] = {0.9, 0.85, 0.8, 0.75};
  for (int i = 0; i < 4; ++i) {
    Sample sample = with_device(0.1 + 0.1 * i);  // +0.1 a minute
    sample.ram_used_ratio = 0.5;
    feed.set(sample);
    monitor.sample_now();
    monitor.record_request(request("image", 10.0, qualities[i]));
    clock.advance(60s);
  }
  const apo::monitor::Report report = monitor.report();
  const auto trend = [&](const std::string& metric) {
    const auto it = std::find_if(report.trends.begin(), report.trends.end(),
                                 [&](const auto& t) { return t.metric == metric; });
    REQUIRE(it != report.trends.end());
    return *it;
  };
  CHECK(trend("device_memory_ratio").direction == apo::monitor::TrendDirection::rising);
  CHECK(trend("device_memory_ratio").slope_per_minute == Approx(0.1));
  CHECK(trend("device_memory_ratio").points == 4);
  CHECK(trend("ram_used_ratio").direction == apo::monitor::TrendDirection::steady);
  CHECK(trend("generation_seconds").direction == apo::monitor::TrendDirection::steady);
  CHECK(trend("quality").direction == apo::monitor::TrendDirection::falling);
  CHECK(trend("quality").slope_per_minute == Approx(-0.05));
  CHECK(recommends(report, "profile_name", "\"quality_first\""));
}

TEST_CASE("each pressure brings its recommendations", "[performance_monitor]") {
  apo::FakeClock clock;
  SECTION("VRAM") {
    Feed feed;
    feed.set(with_device(0.9));
    PerformanceMonitor monitor(settings(), 30.0, clock, feed.source());
    monitor.sample_now();  // sustained over the window even before the alert
    const auto report = monitor.report();
    CHECK(recommends(report, "performance_optimization.model_precision", "\"fp8\""));
    CHECK(recommends(report, "attention_optimization.enable_attention_slicing", "true"));
    CHECK(recommends(report, "memory_optimization.enable_cpu_offload", "true"));
    CHECK(report.recommendations.size() == 3);
    CHECK_THAT(report.recommendations[0].reason, Catch::Contains("90%"));
  }
  SECTION("RAM") {
    Feed feed;
    feed.set(with_ram(0.85));
    PerformanceMonitor monitor(settings(), 30.0, clock, feed.source());
    monitor.sample_now();
    const auto report = monitor.report();
    CHECK(recommends(report, "system_optimization.memory_pool_size_gb", "lower"));
    CHECK(recommends(report, "storage_optimization.preload_models", "false"));
  }
  SECTION("low GPU utilization while busy") {
    Feed feed;
    Sample sample = with_device(0.3, 0.25);
    sample.running = 1;
    feed.set(sample);
    PerformanceMonitor monitor(settings(), 30.0, clock, feed.source());
    monitor.sample_now();
    const auto report = monitor.report();
    CHECK(recommends(report, "performance_optimization.batch_size", "higher"));
    REQUIRE(report.gpu_utilization_ratio);
    CHECK(report.gpu_utilization_ratio->mean == Approx(0.25));
  }
  SECTION("low GPU utilization while idle is no pressure") {
    Feed feed;
    feed.set(with_device(0.3, 0.0));
    PerformanceMonitor monitor(settings(), 30.0, clock, feed.source());
    monitor.sample_now();
    CHECK(monitor.report().recommendations.empty());
  }
  SECTION("generation time over target") {
    Feed feed;
    PerformanceMonitor monitor(settings(), 30.0, clock, feed.source());
    monitor.record_request(request("wan", 45.0));
    const auto report = monitor.report();
    CHECK(recommends(report, "profile_name", "\"speed_first\""));
    CHECK(recommends(report, "generation.enable_lightning_lora", "true"));
    CHECK_THAT(report.recommendations[0].reason, Catch::Contains("45.0 s"));
  }
}

TEST_CASE("settings out of range are rejected", "[performance_monitor]") {
  apo::FakeClock clock;
  Feed feed;
  apo::Monitoring bad = settings();
  bad.sample_interval_s = 0;
  CHECK_THROWS_AS(PerformanceMonitor(bad, 30.0, clock, feed.source()), apo::Error);
  bad = settings();
  bad.alert_hysteresis_samples = 0;
  CHECK_THROWS_AS(PerformanceMonitor(bad, 30.0, clock, feed.source()), apo::Error);
  CHECK_THROWS_AS(PerformanceMonitor(settings(), 0.0, clock, feed.source()), apo::Error);
  PerformanceMonitor monitor(settings(), 30.0, clock, feed.source());
  CHECK_THROWS_AS(monitor.record_request(request("x", -1.0)), apo::Error);
}

TEST_CASE("the sampler, recorders and readers race freely", "[performance_monitor]") {
  apo::Monitoring m = settings(50, 20);
  m.sample_interval_s = 0.001;
  m.alert_hysteresis_samples = 1;
  std::atomic<int> n{0};
  PerformanceMonitor monitor(m, 1.0, apo::SteadyClock::instance(), [&] {
    const int i = n++;
    Sample s = with_device(i % 2 ? 0.9 : 0.1, 0.5);
    s.ram_used_ratio = 0.5;
    return s;
  });
  std::atomic<int> told{0};
  monitor.on_alert([&](const Alert&) { ++told; });
  monitor.start();
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        monitor.record_request(request("w" + std::to_string(t), i % 3, 0.5));
        if (i % 10 == 0) {
          (void)monitor.report();
          (void)monitor.metrics_snapshot();
          monitor.set_engine_source(i % 20 ? apo::monitor::EngineReadingSource{} : [] {
            return apo::monitor::EngineReading{{}, 1, 1};
          });
          monitor.sample_now();
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  monitor.stop();
  CHECK(monitor.requests().size() == 50);
  CHECK(monitor.samples().size() <= 50);
  CHECK(monitor.samples_taken() >= 60);
  CHECK(told > 0);
}

}  // namespace performance_monitor_test

#include "apo_catch.hpp"

#include <atomic>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "apo/core/config.hpp"
#include "apo/core/error.hpp"
#include "apo/tune/adaptive_quality.hpp"

namespace adaptive_test {

using apo::tune::AdaptiveQualityController;
using apo::tune::AdaptiveQualityOptions;
using apo::tune::QualityAction;
using apo::tune::QualitySettings;

// A simulated workload: a batch takes seconds_per_step × steps × (0.4 + 0.6 × batch) — a fixed
// share that batching amortizes — and the controller sees the time per generation, the batch's
// time over its size.
struct Workload {
  double seconds_per_step;
  double operator()(const QualitySettings& s) const {
    return seconds_per_step * s.num_inference_steps * (0.4 + 0.6 * s.batch_size) / s.batch_size;
  }
};

bool within_bounds(const QualitySettings& s, const AdaptiveQualityOptions& o) {
  const bool steps_ok = s.enable_lightning_lora ? s.num_inference_steps == o.lightning_steps
                                                : s.num_inference_steps >= o.min_steps &&
                                                      s.num_inference_steps <= o.max_steps;
  return steps_ok && s.guidance_scale >= o.min_guidance && s.guidance_scale <= o.max_guidance &&
         s.batch_size >= o.min_batch_size && s.batch_size <= o.max_batch_size;
}

// The changes in a history, as +1 (raise) and −1 (reduce).
std::vector<int> change_directions(const std::vector<apo::tune::QualityRecord>& history) {
  std::vector<int> directions;
  for (const auto& record : history)
    if (record.after != record.before)
      directions.push_back(record.action == QualityAction::reduce_for_speed ? -1 : +1);
  return directions;
}

}  // namespace adaptive_test

using namespace adaptive_test;

TEST_CASE("the controller converges into the target band", "[adaptive]") {
  const AdaptiveQualityOptions options;  // target 120 s: band 96–144 s
  struct Case {
    double seconds_per_step;
    QualitySettings start;
  };
  for (const Case c : {Case{6.0, {50, 7.5, false, 1}}, Case{1.5, {15, 5.0, false, 1}},
                       Case{2.5, {75, 9.0, false, 2}}, Case{12.0, {30, 7.5, false, 1}}}) {
    CAPTURE(c.seconds_per_step, c.start.num_inference_steps);
    AdaptiveQualityController controller(c.start, options);
    const Workload workload{c.seconds_per_step};
    QualitySettings settings = controller.settings();
    for (int i = 0; i < 80; ++i) settings = controller.observe(workload(settings), 0.9);
    const std::vector<apo::tune::QualityRecord> history = controller.history();
    for (std::size_t i = history.size() - 20; i < history.size(); ++i) {
      CAPTURE(i, history[i].reason);
      CHECK(history[i].after == history[i].before);  // settled
      if (!history[i].after.enable_lightning_lora) {
        CHECK(history[i].time_s >= 96.0);
      }
      CHECK(history[i].time_s <= 144.0);
    }
    CHECK(within_bounds(settings, options));
  }
}

TEST_CASE("noisy timings near a boundary do not make it oscillate", "[adaptive]") {
  const AdaptiveQualityOptions options;
  for (const double centre : {0.82, 1.0, 1.15, 1.25}) {
    CAPTURE(centre);
    // Time ∝ steps, centred at `centre` × target at 30 steps, ±12% uniform noise.
    std::mt19937 random(42);
    std::uniform_real_distribution<double> noise(0.88, 1.12);
    AdaptiveQualityController controller({30, 7.5, false, 1}, options);
    QualitySettings settings = controller.settings();
    for (int i = 0; i < 500; ++i) {
      const double time_s = centre * options.target_time_s * settings.num_inference_steps / 30.0;
      settings = controller.observe(time_s * noise(random), 0.9);
    }
    const std::vector<int> directions = change_directions(controller.history());
    CAPTURE(directions);
    CHECK(directions.size() <= 2);
    for (std::size_t i = 1; i < directions.size(); ++i) CHECK(directions[i] == directions[0]);
  }
}

TEST_CASE("the controller keeps its settings within bounds", "[adaptive]") {
  AdaptiveQualityOptions options;
  SECTION("always too slow: the floor, then lightning") {
    AdaptiveQualityController controller({40, 8.0, false, 1}, options);
    for (int i = 0; i < 100; ++i) controller.observe(10 * options.target_time_s, 0.9);
    for (const auto& record : controller.history()) CHECK(within_bounds(record.after, options));
    CHECK(controller.settings() == QualitySettings{4, 5.0, true, 4});
    // Lightning is the last rung: steps reached their floor of 15 before it came on.
    bool saw_floor = false;
    for (const auto& record : controller.history())
      if (record.after.enable_lightning_lora && !record.before.enable_lightning_lora)
        saw_floor = record.before.num_inference_steps == options.min_steps;
    CHECK(saw_floor);
  }
  SECTION("always fast: the ceiling") {
    AdaptiveQualityController controller({4, 5.0, true, 3}, options);
    for (int i = 0; i < 100; ++i) controller.observe(1.0, 0.9);
    for (const auto& record : controller.history()) CHECK(within_bounds(record.after, options));
    CHECK(controller.settings() == QualitySettings{75, 9.0, false, 3});
  }
  SECTION("with lightning on, only the batch size is left to raise") {
    AdaptiveQualityController controller({4, 7.0, true, 2}, options);
    for (int i = 0; i < 30; ++i) controller.observe(10 * options.target_time_s);
    CHECK(controller.settings() == QualitySettings{4, 7.0, true, 4});
    bool at_bound = false;
    for (const auto& record : controller.history())
      at_bound = at_bound || record.reason.find("at their bound") != std::string::npos;
    CHECK(at_bound);
  }
  SECTION("initial settings are brought into the bounds") {
    const AdaptiveQualityController controller({100, 12.0, false, 9}, options);
    CHECK(controller.settings() == QualitySettings{75, 9.0, false, 4});
  }
}

TEST_CASE("low quality raises quality, unless that makes it too slow", "[adaptive]") {
  const AdaptiveQualityOptions options;
  SECTION("time does not depend on the settings: raise to the ceiling") {
    AdaptiveQualityController controller({20, 6.0, false, 1}, options);
    for (int i = 0; i < 60; ++i) controller.observe(110.0, 0.5);
    CHECK(controller.settings() == QualitySettings{75, 9.0, false, 1});
    for (const auto& record : controller.history())
      if (record.after != record.before) CHECK(record.action == QualityAction::increase_quality);
  }
  SECTION("time ∝ steps: raise while the predicted time fits") {
    AdaptiveQualityController controller({20, 6.0, false, 1}, options);
    QualitySettings settings = controller.settings();
    for (int i = 0; i < 60; ++i)
      settings = controller.observe(5.0 * settings.num_inference_steps, 0.5);
    // 25 steps take 125 s; 30 would take 150 s, over 1.2 × 120.
    CHECK(settings.num_inference_steps == 25);
    bool held_back = false;
    for (const auto& record : controller.history())
      held_back = held_back || record.reason.find("would take about") != std::string::npos;
    CHECK(held_back);
  }
  SECTION("too slow wins over low quality (the guide's order)") {
    AdaptiveQualityController controller({30, 7.5, false, 1}, options);
    for (int i = 0; i < 3; ++i) controller.observe(200.0, 0.5);
    CHECK(controller.settings() == QualitySettings{25, 7.0, false, 2});
    CHECK(controller.history().back().action == QualityAction::reduce_for_speed);
  }
  SECTION("lightning comes off first") {
    AdaptiveQualityController controller({4, 5.0, true, 4}, options);
    for (int i = 0; i < 3; ++i) controller.observe(20.0, 0.5);
    CHECK(controller.settings() == QualitySettings{15, 5.0, false, 4});
  }
}

TEST_CASE("hysteresis: a change needs agreeing observations, then it settles", "[adaptive]") {
  AdaptiveQualityOptions options;
  options.confirmations = 3;
  options.settle_observations = 2;
  AdaptiveQualityController controller({30, 7.5, false, 1}, options);
  controller.observe(200.0);
  controller.observe(200.0);
  controller.observe(100.0);  // in the band: the streak starts again
  controller.observe(200.0);
  controller.observe(200.0);
  CHECK(controller.settings() == QualitySettings{30, 7.5, false, 1});
  controller.observe(200.0);
  CHECK(controller.settings() == QualitySettings{25, 7.0, false, 2});
  controller.observe(200.0);  // settling
  controller.observe(200.0);  // settling
  controller.observe(200.0);
  controller.observe(200.0);
  CHECK(controller.settings() == QualitySettings{25, 7.0, false, 2});
  controller.observe(200.0);
  CHECK(controller.settings() == QualitySettings{20, 6.5, false, 3});
}

TEST_CASE("the history records each observation and decision", "[adaptive]") {
  AdaptiveQualityOptions options;
  options.history_limit = 5;
  AdaptiveQualityController controller({30, 7.5, false, 1}, options);
  for (int i = 0; i < 3; ++i) controller.observe(300.0, 0.85);
  std::vector<apo::tune::QualityRecord> history = controller.history();
  REQUIRE(history.size() == 3);
  CHECK(history[0].index == 0);
  CHECK(history[0].time_s == 300.0);
  CHECK(history[0].quality == 0.85);
  CHECK(history[0].action == QualityAction::keep);
  CHECK_THAT(history[0].reason, Catch::Contains("1 of 3"));
  CHECK(history[2].action == QualityAction::reduce_for_speed);
  CHECK(history[2].before == QualitySettings{30, 7.5, false, 1});
  CHECK(history[2].after == QualitySettings{25, 7.0, false, 2});
  CHECK_THAT(history[2].reason, Catch::Contains("too slow") && Catch::Contains("25 steps"));
  for (int i = 0; i < 4; ++i) controller.observe(100.0);
  history = controller.history();
  REQUIRE(history.size() == 5);  // the oldest two dropped
  CHECK(history.front().index == 2);
  CHECK(!history.back().quality.has_value());
}

TEST_CASE("observe is thread-safe", "[adaptive]") {
  AdaptiveQualityController controller({30, 7.5, false, 1}, {});
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&controller, &failures, t] {
      for (int i = 0; i < 200; ++i) {
        const QualitySettings s = controller.observe(t % 2 == 0 ? 200.0 : 50.0, 0.9);
        if (s.batch_size < 1 || s.batch_size > 4) ++failures;
      }
    });
  for (std::thread& thread : threads) thread.join();
  CHECK(failures == 0);
  const auto history = controller.history();
  REQUIRE(history.size() == 800);
  for (std::size_t i = 0; i < history.size(); ++i) CHECK(history[i].index == i);
  for (std::size_t i = 1; i < history.size(); ++i) CHECK(history[i].before == history[i - 1].after);
}

TEST_CASE("the controller rejects bad options and observations", "[adaptive]") {
  AdaptiveQualityOptions options;
  options.target_time_s = 0;
  CHECK_THROWS_AS(AdaptiveQualityController({}, options), apo::Error);
  options = {};
  options.fast_factor = 1.5;
  CHECK_THROWS_AS(AdaptiveQualityController({}, options), apo::Error);
  options = {};
  options.min_steps = 80;
  CHECK_THROWS_AS(AdaptiveQualityController({}, options), apo::Error);
  options = {};
  options.confirmations = 0;
  CHECK_THROWS_AS(AdaptiveQualityController({}, options), apo::Error);

  AdaptiveQualityController controller({}, {});
  CHECK_THROWS_AS(controller.observe(-1.0), apo::Error);
  CHECK_THROWS_AS(controller.observe(std::nan("")), apo::Error);
  CHECK_THROWS_AS(controller.observe(10.0, 1.5), apo::Error);
  CHECK(controller.history().empty());
}

TEST_CASE("settings and options come from a configuration", "[adaptive]") {
  apo::Config config;
  config.target_generation_time_s = 45.0;
  config.generation.num_inference_steps = 20;
  config.generation.guidance_scale = 6.0;
  config.performance.batch_size = 3;
  CHECK(AdaptiveQualityOptions::from_config(config).target_time_s == 45.0);
  const QualitySettings settings = QualitySettings::from_config(config);
  CHECK(settings == QualitySettings{20, 6.0, false, 3});
  apo::GenerationSettings generation;
  QualitySettings{4, 5.0, true, 2}.apply_to(generation);
  CHECK(generation.num_inference_steps == 4);
  CHECK(generation.guidance_scale == 5.0);
  CHECK(generation.enable_lightning_lora);
}

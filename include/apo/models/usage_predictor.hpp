#pragma once

/// @file
/// @brief The guide's PreloadingStrategy made concrete: records which models are used by which
/// workflow at which hour of day and estimates the probability that a model is wanted at a
/// given hour, so the model cache can warm models before anyone asks.

#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "apo/core/clock.hpp"

namespace apo::models {

struct UsagePredictorOptions {
  /// Old habits fade: a use counts half after this long (the guide keeps all history forever).
  std::chrono::hours half_life{24 * 7};
  /// Uses in the neighbouring hours count this much (people do not keep to the minute).
  double neighbour_hour_weight = 0.5;
  /// Below this much (decayed) evidence for an hour, predict nothing rather than guess.
  double min_evidence = 3.0;
};

/// @brief A model worth preloading, with the probability and the workflow most likely to want it.
struct UsagePrediction {
  std::string model;
  std::string workflow;
  double probability = 0;
};

/// @brief Counts of (model, workflow, hour of day) with exponential decay on the given clock.
/// probability(m, h) is the decayed share of the requests around hour h that used m;
/// probability(m, h, w) the same among workflow w's requests. Thread-safe.
class UsagePredictor {
 public:
  explicit UsagePredictor(const Clock& clock, UsagePredictorOptions options = {});

  /// @brief Records one request of `workflow` that used `models`, at the clock's current time
  /// and local hour of day.
  void record(std::string_view workflow, std::span<const std::string> models);
  /// @brief The same at an explicit hour of day (0-23).
  void record(std::string_view workflow, std::span<const std::string> models, int hour);

  /// @brief P(a request around `hour` uses `model`), optionally among `workflow`'s requests; 0
  /// when there is too little evidence.
  double probability(std::string_view model, int hour,
                     std::optional<std::string_view> workflow = std::nullopt) const;

  /// @brief Every model whose overall probability at `hour` exceeds `threshold`, most probable
  /// first, each with the workflow that used it most around that hour.
  std::vector<UsagePrediction> predict(int hour, double threshold) const;

  /// @brief The local hour of day (0-23) of the clock's wall time.
  int current_hour() const;

 private:
  // A count that halves every half-life: stored as its value at `at`.
  struct Decayed {
    double value = 0;
    Clock::time_point at{};
  };
  double decayed(const Decayed& d, Clock::time_point now) const;
  void add(Decayed& d, Clock::time_point now) const;
  double around(const std::map<int, Decayed>& by_hour, int hour, Clock::time_point now) const;

  const Clock& clock_;
  UsagePredictorOptions options_;
  mutable std::mutex mutex_;
  // Uses by (model, workflow) and hour; requests by workflow and hour, and by hour alone.
  std::map<std::pair<std::string, std::string>, std::map<int, Decayed>, std::less<>> uses_;
  std::map<std::string, std::map<int, Decayed>, std::less<>> workflow_requests_;
  std::map<int, Decayed> requests_;
};

}  // namespace apo::models

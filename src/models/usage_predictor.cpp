#include "apo/models/usage_predictor.hpp"

#include <algorithm>
#include <cmath>
#include <ctime>

#include "apo/core/error.hpp"

namespace apo::models {

namespace {

void check_hour(int hour) {
  if (hour < 0 || hour > 23) fail(ErrorCode::InvalidArgument, "hour {} is not 0-23", hour);
}

}  // namespace

UsagePredictor::UsagePredictor(const Clock& clock, UsagePredictorOptions options)
    : clock_(clock), options_(options) {
  if (options_.half_life.count() <= 0) {
    fail(ErrorCode::InvalidArgument, "usage predictor half-life must be positive");
  }
}

int UsagePredictor::current_hour() const {
  const std::time_t seconds = std::chrono::system_clock::to_time_t(clock_.wall_now());
  std::tm local{};
  localtime_r(&seconds, &local);
  return local.tm_hour;
}

double UsagePredictor::decayed(const Decayed& d, Clock::time_point now) const {
  const double age_h = std::chrono::duration<double, std::ratio<3600>>(now - d.at).count();
  return d.value * std::exp2(-age_h / static_cast<double>(options_.half_life.count()));
}

void UsagePredictor::add(Decayed& d, Clock::time_point now) const {
  d.value = decayed(d, now) + 1.0;
  d.at = now;
}

double UsagePredictor::around(const std::map<int, Decayed>& by_hour, int hour,
                              Clock::time_point now) const {
  double total = 0;
  for (const int offset : {-1, 0, 1}) {
    const auto it = by_hour.find((hour + offset + 24) % 24);
    if (it == by_hour.end()) continue;
    total += decayed(it->second, now) * (offset == 0 ? 1.0 : options_.neighbour_hour_weight);
  }
  return total;
}

void UsagePredictor::record(std::string_view workflow, std::span<const std::string> models) {
  record(workflow, models, current_hour());
}

void UsagePredictor::record(std::string_view workflow, std::span<const std::string> models,
                            int hour) {
  check_hour(hour);
  const auto now = clock_.now();
  std::lock_guard lock(mutex_);
  add(requests_[hour], now);
  add(workflow_requests_[std::string(workflow)][hour], now);
  for (const std::string& model : models) {
    add(uses_[{model, std::string(workflow)}][hour], now);
  }
}

double UsagePredictor::probability(std::string_view model, int hour,
                                   std::optional<std::string_view> workflow) const {
  check_hour(hour);
  const auto now = clock_.now();
  std::lock_guard lock(mutex_);
  double requests = 0;
  if (workflow) {
    const auto it = workflow_requests_.find(*workflow);
    if (it != workflow_requests_.end()) requests = around(it->second, hour, now);
  } else {
    requests = around(requests_, hour, now);
  }
  if (requests < options_.min_evidence) return 0.0;
  double uses = 0;
  for (const auto& [key, by_hour] : uses_) {
    if (key.first != model || (workflow && key.second != *workflow)) continue;
    uses += around(by_hour, hour, now);
  }
  return std::min(1.0, uses / requests);
}

std::vector<UsagePrediction> UsagePredictor::predict(int hour, double threshold) const {
  check_hour(hour);
  const auto now = clock_.now();
  std::lock_guard lock(mutex_);
  const double requests = around(requests_, hour, now);
  if (requests < options_.min_evidence) return {};
  // Overall probability per model (a rare workflow's own certainty would overstate it), and the
  // workflow that used the model most around this hour.
  std::map<std::string, std::pair<double, UsagePrediction>> by_model;
  for (const auto& [key, by_hour] : uses_) {
    const double uses = around(by_hour, hour, now);
    auto& [total, prediction] = by_model[key.first];
    total += uses;
    if (prediction.model.empty() || uses > prediction.probability) {
      prediction = {key.first, key.second, uses};
    }
  }
  std::vector<UsagePrediction> out;
  for (auto& [model, entry] : by_model) {
    const double p = std::min(1.0, entry.first / requests);
    if (p > threshold) out.push_back({model, entry.second.workflow, p});
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.probability != b.probability ? a.probability > b.probability : a.model < b.model;
  });
  return out;
}

}  // namespace apo::models

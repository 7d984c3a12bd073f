#include "apo/tune/adaptive_quality.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

#include <fmt/format.h>

#include "apo/core/error.hpp"

namespace apo::tune {

QualitySettings QualitySettings::from_config(const Config& config) {
  return {.num_inference_steps = config.generation.num_inference_steps,
          .guidance_scale = config.generation.guidance_scale,
          .enable_lightning_lora = config.generation.enable_lightning_lora,
          .batch_size = config.performance.batch_size};
}

void QualitySettings::apply_to(GenerationSettings& generation) const {
  generation.num_inference_steps = num_inference_steps;
  generation.guidance_scale = guidance_scale;
  generation.enable_lightning_lora = enable_lightning_lora;
}

AdaptiveQualityOptions AdaptiveQualityOptions::from_config(const Config& config) {
  AdaptiveQualityOptions options;
  options.target_time_s = config.target_generation_time_s;
  return options;
}

namespace {

void check_options(const AdaptiveQualityOptions& o) {
  auto require = [](bool ok, std::string_view what) {
    if (!ok) fail(ErrorCode::InvalidArgument, "AdaptiveQualityOptions: {}", what);
  };
  require(std::isfinite(o.target_time_s) && o.target_time_s > 0,
          fmt::format("target_time_s {} must be positive", o.target_time_s));
  require(o.quality_threshold >= 0 && o.quality_threshold <= 1,
          fmt::format("quality_threshold {} is outside [0, 1]", o.quality_threshold));
  require(
      o.fast_factor > 0 && o.fast_factor < o.slow_factor,
      fmt::format("need 0 < fast_factor ({}) < slow_factor ({})", o.fast_factor, o.slow_factor));
  require(o.lightning_steps >= 1 && o.min_steps >= 1 && o.min_steps <= o.max_steps,
          fmt::format("steps bounds: lightning {}, min {}, max {}", o.lightning_steps, o.min_steps,
                      o.max_steps));
  require(o.step_change >= 1, fmt::format("step_change {} must be at least 1", o.step_change));
  require(o.min_guidance <= o.max_guidance && o.guidance_change >= 0,
          fmt::format("guidance bounds [{}, {}], change {}", o.min_guidance, o.max_guidance,
                      o.guidance_change));
  require(o.min_batch_size >= 1 && o.min_batch_size <= o.max_batch_size,
          fmt::format("batch bounds [{}, {}]", o.min_batch_size, o.max_batch_size));
  require(o.confirmations >= 1,
          fmt::format("confirmations {} must be at least 1", o.confirmations));
  require(o.settle_observations >= 0,
          fmt::format("settle_observations {} must not be negative", o.settle_observations));
  require(o.history_limit >= 1, "history_limit must be at least 1");
}

QualitySettings bounded(QualitySettings settings, const AdaptiveQualityOptions& o) {
  if (!settings.enable_lightning_lora)
    settings.num_inference_steps =
        std::clamp(settings.num_inference_steps, o.min_steps, o.max_steps);
  settings.guidance_scale = std::clamp(settings.guidance_scale, o.min_guidance, o.max_guidance);
  settings.batch_size = std::clamp(settings.batch_size, o.min_batch_size, o.max_batch_size);
  return settings;
}

std::string describe(const QualitySettings& s) {
  return fmt::format("{} steps{}, guidance {:g}, batch {}", s.num_inference_steps,
                     s.enable_lightning_lora ? " (lightning)" : "", s.guidance_scale, s.batch_size);
}

}  // namespace

AdaptiveQualityController::AdaptiveQualityController(QualitySettings initial,
                                                     AdaptiveQualityOptions options)
    : options_((check_options(options), std::move(options))),
      settings_(bounded(initial, options_)) {}

QualitySettings AdaptiveQualityController::settings() const {
  const std::lock_guard lock(mutex_);
  return settings_;
}

std::vector<QualityRecord> AdaptiveQualityController::history() const {
  const std::lock_guard lock(mutex_);
  return {history_.begin(), history_.end()};
}

QualitySettings AdaptiveQualityController::observe(double time_s, std::optional<double> quality) {
  if (!std::isfinite(time_s) || time_s <= 0)
    fail(ErrorCode::InvalidArgument, "AdaptiveQualityController: time {} s must be positive",
         time_s);
  if (quality && !(*quality >= 0 && *quality <= 1))
    fail(ErrorCode::InvalidArgument, "AdaptiveQualityController: quality {} is outside [0, 1]",
         *quality);
  const std::lock_guard lock(mutex_);
  QualityRecord record = decide(time_s, quality);
  settings_ = record.after;
  history_.push_back(std::move(record));
  if (history_.size() > options_.history_limit) history_.pop_front();
  return settings_;
}

// One ladder rung down: the guide's steps − 5, guidance − 0.5, batch + 1 (bounded); lightning
// when the steps have nothing left; then only the batch.
std::optional<QualitySettings> AdaptiveQualityController::reduced(const QualitySettings& s) const {
  QualitySettings next = s;
  if (s.enable_lightning_lora) {
    // Lightning's steps are fixed; a larger batch is the one lever left.
    next.batch_size = std::min(options_.max_batch_size, s.batch_size + 1);
    if (next == s) return std::nullopt;
    return next;
  }
  next.num_inference_steps =
      std::max(options_.min_steps, s.num_inference_steps - options_.step_change);
  next.guidance_scale =
      std::max(options_.min_guidance, s.guidance_scale - options_.guidance_change);
  next.batch_size = std::min(options_.max_batch_size, s.batch_size + 1);
  // Only fewer steps make a generation faster; guidance and batch follow the steps down.
  if (next.num_inference_steps < s.num_inference_steps) return next;
  next.enable_lightning_lora = true;
  next.num_inference_steps = options_.lightning_steps;
  return next;
}

// One rung up, the reverse: lightning off (back to the floor of steps), then steps + 5 and
// guidance + 0.5.
std::optional<QualitySettings> AdaptiveQualityController::raised(const QualitySettings& s) const {
  QualitySettings next = s;
  if (s.enable_lightning_lora) {
    next.enable_lightning_lora = false;
    next.num_inference_steps = options_.min_steps;
    return next;
  }
  next.num_inference_steps =
      std::min(options_.max_steps, s.num_inference_steps + options_.step_change);
  next.guidance_scale =
      std::min(options_.max_guidance, s.guidance_scale + options_.guidance_change);
  if (next == s) return std::nullopt;
  return next;
}

QualityRecord AdaptiveQualityController::decide(double time_s, std::optional<double> quality) {
  const AdaptiveQualityOptions& o = options_;
  QualityRecord record{.index = observations_++,
                       .time_s = time_s,
                       .quality = quality,
                       .action = QualityAction::keep,
                       .before = settings_,
                       .after = settings_,
                       .reason = {}};
  const double slow_s = o.target_time_s * o.slow_factor, fast_s = o.target_time_s * o.fast_factor;

  // The guide's rules in its order: time first, then quality, then spare time.
  Signal signal = Signal::in_band;
  if (time_s > slow_s)
    signal = Signal::slow;
  else if (quality && *quality < o.quality_threshold)
    signal = Signal::low_quality;
  else if (time_s < fast_s)
    signal = Signal::fast;
  const std::string observed = fmt::format(
      "{:.3g} s against a band of {:.3g}–{:.3g} s{}", time_s, fast_s, slow_s,
      quality ? fmt::format(", quality {:.3g} (threshold {:.3g})", *quality, o.quality_threshold)
              : std::string());

  if (settle_left_ > 0) {
    --settle_left_;
    streak_ = 0;
    record.reason = fmt::format("{}: settling after the last change ({} more to ignore)", observed,
                                settle_left_);
    return record;
  }
  if (signal == Signal::in_band) {
    streak_ = 0;
    record.reason = observed + ": within the band, quality met: keep";
    return record;
  }
  if (signal == streak_signal_ && streak_ > 0) {
    ++streak_;
    streak_time_sum_s_ += time_s;
  } else {
    streak_signal_ = signal;
    streak_ = 1;
    streak_time_sum_s_ = time_s;
  }
  const char* rule = signal == Signal::slow          ? "too slow"
                     : signal == Signal::low_quality ? "quality under the threshold"
                                                     : "faster than needed";
  record.action = signal == Signal::slow          ? QualityAction::reduce_for_speed
                  : signal == Signal::low_quality ? QualityAction::increase_quality
                                                  : QualityAction::increase_if_possible;
  if (streak_ < o.confirmations) {
    record.reason = fmt::format("{}: {}, {} of {} observations needed: waiting", observed, rule,
                                streak_, o.confirmations);
    record.action = QualityAction::keep;
    return record;
  }

  const double mean_time_s = streak_time_sum_s_ / streak_;
  const std::optional<QualitySettings> next =
      signal == Signal::slow ? reduced(settings_) : raised(settings_);
  streak_ = 0;
  if (!next) {
    record.action = QualityAction::keep;
    record.reason =
        fmt::format("{}: {}, but the settings are at their bound: keep", observed, rule);
    return record;
  }
  if (signal != Signal::slow) {
    // A raise must not make the next generations too slow: time ∝ steps.
    const double predicted_s =
        mean_time_s * next->num_inference_steps / settings_.num_inference_steps;
    if (predicted_s > slow_s) {
      record.action = QualityAction::keep;
      record.reason = fmt::format("{}: {}, but {} would take about {:.3g} s (over {:.3g} s): keep",
                                  observed, rule, describe(*next), predicted_s, slow_s);
      return record;
    }
  }
  record.after = *next;
  settle_left_ = o.settle_observations;
  record.reason =
      fmt::format("{}: {} over {} observations (mean {:.3g} s): {} → {}", observed, rule,
                  o.confirmations, mean_time_s, describe(record.before), describe(record.after));
  return record;
}

}  // namespace apo::tune

#pragma once

/// @file
/// @brief The guide's AdaptiveQualityController: it watches generation times and quality scores
/// and steers steps, guidance, the lightning LoRA and batch size towards a time target.
///
/// The guide's rules, in its order: slower than 1.2 × target → trade quality for speed; quality
/// under the threshold → raise quality; faster than 0.8 × target → raise quality if possible;
/// otherwise keep. What apo adds, and why:
/// - Hysteresis. A change needs `confirmations` consecutive observations that point the same way,
///   and it is made from their mean time; after a change, `settle_observations` observations are
///   recorded but not acted on (in a batching engine they may still come from the old settings).
/// - A predicted time for raises. Time is taken as proportional to the denoising steps (the
///   denoiser calls dominate), and a raise is made only when the predicted time stays under
///   slow_factor × target, so a raise cannot undo the reduction before it: no limit cycle.
/// - A ladder instead of all four changes at once. The guide's reduction switches the lightning
///   LoRA on together with the other changes; lightning runs at 4 steps, so that alone is a
///   ~4–7× jump that overshoots any band. Here one reduction is steps − 5 (not below 15),
///   guidance − 0.5 (not below 5) and batch + 1 (not above 4), as the guide's; lightning is
///   switched on only when the steps have nothing left to give (after it, only batch + 1 is
///   left). Raising undoes it in reverse: lightning off first (back to 15 steps), then steps + 5
///   and guidance + 0.5. Batch size is left alone by raises: it does not change a picture.
///
/// Times are seconds per generation as the engine reports them for a request (a batch's wall time
/// divided by its size when batched): the guide raises the batch size to go faster, which only
/// amortized time rewards.

#include <array>
#include <cstddef>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apo/core/config.hpp"

namespace apo::tune {

/// @brief The settings the controller steers.
struct QualitySettings {
  int num_inference_steps = 30;
  double guidance_scale = 7.5;
  bool enable_lightning_lora = false;
  int batch_size = 1;

  /// @brief The generation block's steps, guidance and lightning, and the performance block's
  /// batch size.
  static QualitySettings from_config(const Config& config);
  /// @brief Writes steps, guidance and lightning into a generation block.
  void apply_to(GenerationSettings& generation) const;

  friend bool operator==(const QualitySettings&, const QualitySettings&) = default;
};

/// @brief Targets, bounds and hysteresis.
struct AdaptiveQualityOptions {
  double target_time_s = 120.0;  ///< the guide's default; from_config takes the profile's
  double quality_threshold = 0.8;
  double slow_factor = 1.2;  ///< slower than slow_factor × target: reduce quality
  double fast_factor = 0.8;  ///< faster than fast_factor × target: raise quality if possible

  int min_steps = 15;  ///< the guide's floor without lightning
  int max_steps = 75;
  int lightning_steps = 4;  ///< the steps the lightning LoRA was distilled for
  int step_change = 5;
  double min_guidance = 5.0;
  double max_guidance = 9.0;
  double guidance_change = 0.5;
  int min_batch_size = 1;
  int max_batch_size = 4;

  int confirmations = 3;             ///< consecutive observations that must agree before a change
  int settle_observations = 2;       ///< observations ignored after a change
  std::size_t history_limit = 1000;  ///< oldest records are dropped beyond this

  /// @brief The guide's defaults with the profile's target_generation_time.
  static AdaptiveQualityOptions from_config(const Config& config);
};

/// @brief What the controller decided on an observation.
enum class QualityAction {
  keep,                  ///< in the band, or waiting (confirming, settling), or at a bound
  reduce_for_speed,      ///< too slow
  increase_quality,      ///< quality under the threshold
  increase_if_possible,  ///< fast enough to afford more quality
};

/// @brief One observation and what came of it.
struct QualityRecord {
  std::size_t index = 0;  ///< observation number, from 0
  double time_s = 0;
  std::optional<double> quality;
  QualityAction action = QualityAction::keep;
  QualitySettings before;
  QualitySettings after;  ///< equal to `before` unless the action changed something
  std::string reason;     ///< a sentence: which rule, the figures, and why (not) changed
};

/// @brief Steers QualitySettings from observed times and quality scores. observe() is
/// thread-safe; so are settings() and history().
class AdaptiveQualityController {
 public:
  /// `initial` is first brought into the bounds: guidance and batch size always, steps when
  /// lightning is off (with lightning on, the steps are the LoRA's and are left as given).
  /// @throws apo::Error InvalidArgument: options out of range (target ≤ 0, threshold outside
  /// [0, 1], fast_factor ≥ slow_factor, empty bounds, confirmations < 1, settle < 0)
  explicit AdaptiveQualityController(QualitySettings initial, AdaptiveQualityOptions options = {});

  /// @brief Records one generation: its time in seconds and, when judged, its quality in [0, 1].
  /// Returns the settings to use from now on.
  /// @throws apo::Error InvalidArgument: time not finite and positive, quality outside [0, 1]
  QualitySettings observe(double time_s, std::optional<double> quality = std::nullopt);

  QualitySettings settings() const;
  const AdaptiveQualityOptions& options() const noexcept { return options_; }
  /// @brief The recorded observations, oldest first (at most history_limit).
  std::vector<QualityRecord> history() const;

 private:
  enum class Signal { in_band, slow, low_quality, fast };

  QualityRecord decide(double time_s, std::optional<double> quality);
  std::optional<QualitySettings> reduced(const QualitySettings& settings) const;
  std::optional<QualitySettings> raised(const QualitySettings& settings) const;

  const AdaptiveQualityOptions options_;
  mutable std::mutex mutex_;
  QualitySettings settings_;
  std::deque<QualityRecord> history_;
  std::size_t observations_ = 0;
  Signal streak_signal_ = Signal::in_band;
  int streak_ = 0;
  double streak_time_sum_s_ = 0;
  int settle_left_ = 0;
};

}  // namespace apo::tune

template <>
struct apo::EnumTraits<apo::tune::QualityAction> {
  static constexpr std::string_view noun = "quality action";
  static constexpr std::array<EnumEntry<tune::QualityAction>, 4> entries{{
      {tune::QualityAction::keep, "keep"},
      {tune::QualityAction::reduce_for_speed, "reduce_for_speed"},
      {tune::QualityAction::increase_quality, "increase_quality"},
      {tune::QualityAction::increase_if_possible, "increase_if_possible"},
  }};
};

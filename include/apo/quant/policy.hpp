#pragma once

/// @file
/// @brief Quantization policies: how each layer of a model is stored when it loads. The engine's
/// first template parameter; the model cache asks its policy for a StoragePlan for every model it
/// reads from disk.

#include <concepts>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "apo/core/settings.hpp"
#include "apo/quant/format.hpp"
#include "apo/quant/precision.hpp"
#include "apo/quant/quantizer.hpp"
#include "apo/quant/state_dict.hpp"

namespace apo {
struct Config;
}  // namespace apo

namespace apo::quant {

/// @brief What a policy is told about a model that is about to load.
struct LoadRequest {
  std::string_view model;  ///< its file, for messages
  /// The precision the model reference asks for (a workflow keeping its VAE at fp32, say); it
  /// wins over the policy's own choice.
  std::optional<Precision> requested;
  /// Room for the model's weights on the device it loads to, in bytes.
  std::int64_t available_bytes = 0;
};

/// @brief How a model's weights are stored: which tensors are quantized, to what, and the bytes
/// that takes, with the reason.
struct StoragePlan {
  QuantizationRules rules;  ///< rules.spec is the format; none keeps every tensor as stored
  std::int64_t weight_bytes = 0;
  std::string reason;
};

/// @brief Decides how each layer of a loading model is stored.
///
/// Contract: `p.plan(weights, request)` looks at the model's tensors (mapped views, not yet read)
/// and returns a plan whose rules select the tensors to quantize and the format, and whose
/// weight_bytes is the size once stored (an estimate that the cache corrects after loading).
/// A precision requested by the model reference wins. Deterministic for the same inputs; const
/// and safe to call from several threads at once. Throws apo::Error for a model it cannot plan
/// (no floating-point weights is not an error: the plan keeps them as stored).
template <class P>
concept QuantizationPolicy = std::copy_constructible<P> &&
    requires(const P& policy, const NamedTensors& weights, const LoadRequest& request) {
  { policy.plan(weights, request) } -> std::same_as<StoragePlan>;
};

/// @brief Plans with `settings` (a fixed format, or "auto": the best measured format that fits
/// the settings' share of the available bytes), quantizing what `rules` select. The one
/// implementation behind every policy below.
StoragePlan plan_storage(const NamedTensors& weights, const LoadRequest& request,
                         const PrecisionSettings& settings, const QuantizationRules& rules);

/// @brief The configuration's policy: performance_optimization.model_precision (a format, or
/// "auto" with enable_quantization and quantization_memory_fraction), keeping the layers of
/// apo's default keep patterns and of performance_optimization.keep_full_precision.
class ConfiguredPrecision {
 public:
  ConfiguredPrecision() : ConfiguredPrecision(PrecisionSettings(), QuantizationRules()) {}
  ConfiguredPrecision(PrecisionSettings settings, QuantizationRules rules)
      : settings_(settings), rules_(std::move(rules)) {}
  static ConfiguredPrecision from_config(const Config& config);

  StoragePlan plan(const NamedTensors& weights, const LoadRequest& request) const {
    return plan_storage(weights, request, settings_, rules_);
  }
  const PrecisionSettings& settings() const noexcept { return settings_; }
  const QuantizationRules& rules() const noexcept { return rules_; }

 private:
  PrecisionSettings settings_;
  QuantizationRules rules_;
};
static_assert(QuantizationPolicy<ConfiguredPrecision>);

/// @brief Every quantizable layer in the format of the Quantizer Q (fp8 E4M3 per row, say), the
/// layers `rules` keep left as stored.
template <Quantizer Q>
class FixedPrecision {
 public:
  explicit FixedPrecision(QuantizationRules rules = {}, Q quantizer = Q())
      : rules_(std::move(rules)), spec_(quantizer.spec()) {
    rules_.spec = spec_;
  }

  StoragePlan plan(const NamedTensors& weights, const LoadRequest& request) const {
    PrecisionSettings settings;
    settings.precision = precision_of(spec_.format);
    settings.allow_8bit = true;
    StoragePlan plan = plan_storage(weights, request, settings, rules_);
    // Keep Q's scaling (per tensor or per row) unless the request named another precision.
    if (!request.requested && plan.rules.spec.format == spec_.format) plan.rules.spec = spec_;
    return plan;
  }
  QuantSpec spec() const noexcept { return spec_; }

 private:
  QuantizationRules rules_;
  QuantSpec spec_;
};
static_assert(QuantizationPolicy<FixedPrecision<Fp8E4M3>>);

/// @brief The guide's DynamicQuantizer: the highest-quality format (by measured worst-case SNR)
/// whose weights fit in `memory_fraction` of the room the device has when the model loads.
class DynamicPrecision {
 public:
  /// @brief Chooses among every format, 8-bit ones included, within `memory_fraction` of the
  /// room (default: performance_optimization.quantization_memory_fraction's default).
  explicit DynamicPrecision(double memory_fraction = PrecisionSettings().memory_fraction,
                            QuantizationRules rules = {})
      : rules_(std::move(rules)) {
    settings_.precision = Precision::automatic;
    settings_.allow_8bit = true;
    settings_.memory_fraction = memory_fraction;
  }

  StoragePlan plan(const NamedTensors& weights, const LoadRequest& request) const {
    return plan_storage(weights, request, settings_, rules_);
  }

 private:
  PrecisionSettings settings_;
  QuantizationRules rules_;
};
static_assert(QuantizationPolicy<DynamicPrecision>);

}  // namespace apo::quant

// Dynamic precision choice: real bytes per element, quality measured on reference tensors.

#include "apo/quant/precision.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "apo/core/config.hpp"
#include "apo/core/units.hpp"
#include "apo/quant/kernels.hpp"
#include "apo/quant/policy.hpp"
#include "internal.hpp"

namespace apo::quant {

const FormatQuality& QualityTable::at(QuantSpec spec) const {
  for (const FormatQuality& f : formats) {
    if (f.spec == spec) return f;
  }
  fail(ErrorCode::NotFound, "the quality table (measured on {}) has no entry for {}", measured_on,
       to_string(spec));
}

NamedTensors reference_weights() {
  constexpr std::int64_t kRows = 256;
  constexpr std::int64_t kCols = 1024;
  constexpr double kStd = 0.02;  // typical init scale of transformer weights
  auto gen = at::make_generator<at::CPUGeneratorImpl>(20240607);
  NamedTensors tensors;
  tensors.emplace_back("gaussian_row_scaled", at::randn({kRows, kCols}, gen) *
                                                  at::exp(at::randn({kRows, 1}, gen) * 0.5) * kStd);
  // Student t with 4 degrees of freedom: z / sqrt(chi2_4 / 4).
  const at::Tensor chi2 = at::randn({4, kRows, kCols}, gen).square().sum(0);
  tensors.emplace_back("heavy_tailed", at::randn({kRows, kCols}, gen) / (chi2 / 4).sqrt() * kStd);
  at::Tensor outliers = at::randn({kRows, kCols}, gen) * kStd;
  for (std::int64_t column : {3, 97, 500, 1001}) outliers.select(1, column).mul_(20.0);
  tensors.emplace_back("outlier_channels", outliers);
  return tensors;
}

QualityTable measure_quality(const NamedTensors& tensors, const std::vector<QuantSpec>& specs,
                             std::string measured_on) {
  if (tensors.empty())
    fail(ErrorCode::InvalidArgument, "measure_quality needs at least one tensor");
  QualityTable table;
  table.measured_on = std::move(measured_on);
  for (QuantSpec spec : specs) {
    FormatQuality quality;
    quality.spec = spec;
    quality.snr_db = std::numeric_limits<double>::infinity();
    double snr_sum = 0;
    for (const auto& [name, tensor] : tensors) {
      const detail::ErrorStats stats = detail::error_stats(tensor, quantize(tensor, spec, name));
      quality.snr_db = std::min(quality.snr_db, stats.snr_db);
      quality.cosine_similarity = std::min(quality.cosine_similarity, stats.cosine_similarity);
      snr_sum += stats.snr_db;
      if (stats.amax > 0) {
        quality.max_relative_error =
            std::max(quality.max_relative_error, stats.max_abs_error / stats.amax);
      }
    }
    quality.mean_snr_db = snr_sum / static_cast<double>(tensors.size());
    table.formats.push_back(quality);
  }
  return table;
}

std::vector<QuantSpec> candidate_specs() {
  return {{QFormat::none, Scaling::none},        {QFormat::fp16, Scaling::none},
          {QFormat::bf16, Scaling::none},        {QFormat::int8, Scaling::per_row},
          {QFormat::fp8_e4m3, Scaling::per_row}, {QFormat::fp8_e5m2, Scaling::per_row}};
}

const QualityTable& reference_quality() {
  static const QualityTable table =
      measure_quality(reference_weights(), candidate_specs(), "apo's reference tensors");
  return table;
}

ModelFootprint footprint_of(const NamedTensors& state_dict, const QuantizationRules& rules) {
  ModelFootprint footprint;
  const detail::TensorSelection selection(rules);
  const bool per_row = traits(rules.spec.format).scaled && rules.spec.scaling == Scaling::per_row;
  std::map<at::ScalarType, std::int64_t> elements_by_dtype;
  for (const auto& [name, tensor] : state_dict) {
    if (!tensor.defined() || !tensor.is_floating_point()) continue;
    footprint.parameter_count += tensor.numel();
    elements_by_dtype[tensor.scalar_type()] += tensor.numel();
    if (per_row && selection.keep_reason(name, tensor).empty()) {
      footprint.scale_rows += scaling_rows(tensor.sizes());
    }
  }
  if (!elements_by_dtype.empty()) {
    footprint.source_dtype =
        std::max_element(elements_by_dtype.begin(), elements_by_dtype.end(),
                         [](const auto& a, const auto& b) { return a.second < b.second; })
            ->first;
  }
  return footprint;
}

PrecisionChoice choose_precision(const PrecisionRequest& request, const QualityTable& quality) {
  const ModelFootprint& model = request.model;
  if (model.parameter_count <= 0) {
    fail(ErrorCode::InvalidArgument, "parameter_count must be positive, not {}",
         model.parameter_count);
  }
  if (request.available_bytes <= 0) {
    fail(ErrorCode::InvalidArgument, "available_bytes must be positive, not {}",
         request.available_bytes);
  }
  if (!(request.memory_fraction > 0 && request.memory_fraction <= 1)) {
    fail(ErrorCode::InvalidArgument, "memory_fraction must be in (0, 1], not {}",
         request.memory_fraction);
  }
  if (!at::isFloatingType(model.source_dtype)) {
    fail(ErrorCode::InvalidArgument, "source dtype {} is not floating point",
         c10::toString(model.source_dtype));
  }
  PrecisionChoice choice;
  choice.budget_bytes = static_cast<std::int64_t>(static_cast<double>(request.available_bytes) *
                                                  request.memory_fraction);
  const std::int64_t source_bytes = element_bytes(QFormat::none, model.source_dtype);
  for (QuantSpec spec : candidate_specs()) {
    const std::int64_t per_element = element_bytes(spec.format, model.source_dtype);
    // A cast to a format no smaller than the source saves nothing over keeping it.
    if (spec.format != QFormat::none && !traits(spec.format).scaled &&
        per_element >= source_bytes) {
      continue;
    }
    CandidateFormat c;
    c.spec = spec;
    c.weight_bytes = model.parameter_count * per_element +
                     (spec.scaling == Scaling::per_row ? 4 * model.scale_rows : 0);
    const FormatQuality& q = quality.at(spec);
    c.snr_db = spec.format == QFormat::none ? std::numeric_limits<double>::infinity() : q.snr_db;
    c.cosine_similarity = spec.format == QFormat::none ? 1.0 : q.cosine_similarity;
    c.fits = c.weight_bytes <= choice.budget_bytes;
    c.allowed = request.allow_8bit || !traits(spec.format).scaled;
    choice.candidates.push_back(c);
  }
  std::stable_sort(choice.candidates.begin(), choice.candidates.end(),
                   [](const CandidateFormat& a, const CandidateFormat& b) {
                     if (a.snr_db != b.snr_db) return a.snr_db > b.snr_db;
                     return a.weight_bytes < b.weight_bytes;
                   });
  const CandidateFormat* chosen = nullptr;
  std::vector<std::string> too_big;
  for (const CandidateFormat& c : choice.candidates) {
    if (!c.allowed) continue;
    if (c.fits) {
      chosen = &c;
      break;
    }
    too_big.push_back(fmt::format("{} needs {}", to_string(c.spec), format_bytes(c.weight_bytes)));
  }
  const std::string budget_text =
      fmt::format("{:.0f}% of {} ({})", request.memory_fraction * 100,
                  format_bytes(request.available_bytes), format_bytes(choice.budget_bytes));
  if (chosen != nullptr) {
    choice.fits = true;
    choice.reason = fmt::format("{}: {} of weights fit within {}", to_string(chosen->spec),
                                format_bytes(chosen->weight_bytes), budget_text);
    if (!too_big.empty()) {
      choice.reason +=
          fmt::format("; higher-quality formats do not fit ({})", fmt::join(too_big, ", "));
    }
  } else {
    for (const CandidateFormat& c : choice.candidates) {
      if (c.allowed && (chosen == nullptr || c.weight_bytes < chosen->weight_bytes)) chosen = &c;
    }
    choice.fits = false;
    choice.reason =
        fmt::format("nothing fits within {}; the smallest format, {}, needs {}", budget_text,
                    to_string(chosen->spec), format_bytes(chosen->weight_bytes));
  }
  choice.spec = chosen->spec;
  choice.weight_bytes = chosen->weight_bytes;
  if (chosen->spec.format != QFormat::none) {
    choice.reason +=
        fmt::format("; measured on {}: worst SNR {:.1f} dB, lowest cosine similarity {:.6f}",
                    quality.measured_on, chosen->snr_db, chosen->cosine_similarity);
  }
  if (!request.allow_8bit)
    choice.reason += "; 8-bit formats are off (enable_quantization is false)";
  return choice;
}

PrecisionSettings::PrecisionSettings() : PrecisionSettings(Config{}) {}

PrecisionSettings::PrecisionSettings(const Config& config)
    : precision(config.performance.model_precision),
      allow_8bit(config.performance.enable_quantization),
      memory_fraction(config.performance.quantization_memory_fraction) {}

PrecisionSettings PrecisionSettings::from_config(const Config& config) {
  return PrecisionSettings(config);
}

PrecisionChoice choose_precision(const PrecisionSettings& settings, const ModelFootprint& model,
                                 std::int64_t available_bytes, const QualityTable& quality) {
  PrecisionRequest request;
  request.model = model;
  request.available_bytes = available_bytes;
  request.memory_fraction = settings.memory_fraction;
  request.allow_8bit = settings.allow_8bit;
  const std::optional<QFormat> configured = format_of(settings.precision);
  if (!configured) return choose_precision(request, quality);

  request.allow_8bit = true;  // a configured 8-bit precision quantizes regardless
  PrecisionChoice choice = choose_precision(request, quality);
  const QuantSpec spec{*configured, traits(*configured).scaled ? Scaling::per_row : Scaling::none};
  choice.spec = spec;
  choice.weight_bytes = model.parameter_count * element_bytes(spec.format, model.source_dtype) +
                        (spec.scaling == Scaling::per_row ? 4 * model.scale_rows : 0);
  choice.fits = choice.weight_bytes <= choice.budget_bytes;
  choice.reason = fmt::format("performance_optimization.model_precision is {}: {} of weights",
                              to_string(settings.precision), format_bytes(choice.weight_bytes));
  if (!choice.fits) {
    choice.reason +=
        fmt::format(", more than the budget of {:.0f}% of {} ({})", request.memory_fraction * 100,
                    format_bytes(available_bytes), format_bytes(choice.budget_bytes));
  }
  return choice;
}

StoragePlan plan_storage(const NamedTensors& weights, const LoadRequest& request,
                         const PrecisionSettings& settings, const QuantizationRules& rules) {
  StoragePlan plan;
  plan.rules = rules;
  std::int64_t stored_bytes = 0;
  for (const auto& [name, tensor] : weights) {
    if (tensor.defined()) stored_bytes += static_cast<std::int64_t>(tensor.nbytes());
  }
  const Precision precision = request.requested.value_or(settings.precision);
  const ModelFootprint footprint = footprint_of(weights, rules);
  if (precision == Precision::fp32 || footprint.parameter_count == 0) {
    plan.rules.spec = {};
    plan.weight_bytes = stored_bytes;
    plan.reason = footprint.parameter_count == 0 ? "no floating-point weights: kept as stored"
                                                 : "fp32 asked: kept as stored";
    return plan;
  }
  PrecisionSettings chosen = settings;
  chosen.precision = precision;
  const PrecisionChoice choice =
      choose_precision(chosen, footprint, std::max<std::int64_t>(request.available_bytes, 1));
  plan.rules.spec = choice.spec;
  plan.reason = request.requested ? fmt::format("{} asked by the model reference; {}",
                                                to_string(precision), choice.reason)
                                  : choice.reason;
  // The bytes once stored: selected tensors in the chosen format (with their scales), the
  // tensors the rules keep as they are.
  const detail::TensorSelection selection(plan.rules);
  const bool per_row = traits(choice.spec.format).scaled && choice.spec.scaling == Scaling::per_row;
  plan.weight_bytes = 0;
  for (const auto& [name, tensor] : weights) {
    if (!tensor.defined()) continue;
    const bool quantized = choice.spec.format != QFormat::none && tensor.is_floating_point() &&
                           selection.keep_reason(name, tensor).empty();
    if (!quantized) {
      plan.weight_bytes += static_cast<std::int64_t>(tensor.nbytes());
      continue;
    }
    plan.weight_bytes += tensor.numel() * element_bytes(choice.spec.format, tensor.scalar_type());
    if (per_row) plan.weight_bytes += 4 * scaling_rows(tensor.sizes());
    if (choice.spec.scaling == Scaling::per_tensor) plan.weight_bytes += 4;
  }
  return plan;
}

ConfiguredPrecision ConfiguredPrecision::from_config(const Config& config) {
  QuantizationRules rules;
  rules.min_elements = config.performance.quantization_min_elements;
  for (const std::string& pattern : config.performance.keep_full_precision) {
    rules.keep_patterns.push_back(pattern);
  }
  return ConfiguredPrecision(PrecisionSettings::from_config(config), std::move(rules));
}

}  // namespace apo::quant

#pragma once

/// @file
/// @brief Dynamic precision choice (the guide's DynamicQuantizer, corrected): given a model's
/// size and the memory at hand, the highest-quality format whose weights fit, and why.
///
/// Bytes are real bytes per element (fp32 4, fp16 and bf16 2, fp8 and int8 1, plus 4 bytes per
/// row for per-row scales); the guide's "int8 = 0.25 of fp16" is wrong, int8 is half of fp16.
/// Quality is measured: each format's SNR and cosine similarity on reference tensors, not the
/// guide's constant quality factors.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "apo/core/settings.hpp"
#include "apo/quant/format.hpp"
#include "apo/quant/state_dict.hpp"

namespace apo {
struct Config;
}  // namespace apo

namespace apo::quant {

/// @brief Measured quality of one format.
struct FormatQuality {
  QuantSpec spec;
  /// The worst (lowest) SNR over the tensors: one badly quantized layer spoils a model, so the
  /// ranking uses the worst case. +infinity for exact formats.
  double snr_db = 0;
  double mean_snr_db = 0;         ///< mean over the tensors
  double cosine_similarity = 1;   ///< the lowest over the tensors
  double max_relative_error = 0;  ///< max |x - x'| / amax(x) over the tensors
};

/// @brief Quality of several formats on one set of tensors.
struct QualityTable {
  std::vector<FormatQuality> formats;
  std::string measured_on;  ///< what the tensors were ("reference tensors", a model's name)

  /// @brief The entry of `spec`; throws apo::Error(NotFound) if it was not measured.
  const FormatQuality& at(QuantSpec spec) const;
};

/// @brief Deterministic synthetic weights shaped like a diffusion model's (fixed seed): a
/// Gaussian matrix with log-normal row scales, a heavy-tailed one (Student t, 4 degrees of
/// freedom) and one with a few outlier input channels 20x larger, each 256 x 1024 float32.
NamedTensors reference_weights();

/// @brief Quantizes every tensor to every spec and records the worst and mean SNR and the lowest
/// cosine similarity.
QualityTable measure_quality(const NamedTensors& tensors, const std::vector<QuantSpec>& specs,
                             std::string measured_on);

/// @brief The specs precision choice considers: none, fp16, bf16, and per-row int8, fp8_e4m3
/// and fp8_e5m2.
std::vector<QuantSpec> candidate_specs();

/// @brief measure_quality(reference_weights(), candidate_specs()), computed once per process.
const QualityTable& reference_quality();

/// @brief What precision choice needs to know of a model.
struct ModelFootprint {
  std::int64_t parameter_count = 0;
  at::ScalarType source_dtype = at::ScalarType::Float;
  /// Rows of the tensors that would be quantized: per-row scales cost 4 bytes each.
  std::int64_t scale_rows = 0;
};

/// @brief The footprint of a state dict: floating-point elements, the dtype most of them have,
/// and the rows of the tensors `rules` would quantize.
ModelFootprint footprint_of(const NamedTensors& state_dict, const QuantizationRules& rules = {});

/// @brief One format as precision choice saw it.
struct CandidateFormat {
  QuantSpec spec;
  std::int64_t weight_bytes = 0;
  double snr_db = 0;
  double cosine_similarity = 1;
  bool fits = false;
  bool allowed = true;  ///< false for 8-bit formats when quantization is disabled
};

/// @brief The format chosen and why.
struct PrecisionChoice {
  QuantSpec spec;
  std::int64_t weight_bytes = 0;
  std::int64_t budget_bytes = 0;            ///< memory_fraction of the available bytes
  bool fits = false;                        ///< false when nothing fits: then the smallest format
  std::vector<CandidateFormat> candidates;  ///< best quality first
  std::string reason;
};

/// @brief The question precision choice answers.
struct PrecisionRequest {
  ModelFootprint model;
  std::int64_t available_bytes = 0;
  double memory_fraction = 0.8;  ///< performance_optimization.quantization_memory_fraction
  bool allow_8bit = true;        ///< performance_optimization.enable_quantization
};

/// @brief The highest-quality candidate (by measured worst-case SNR) whose weights fit within
/// memory_fraction x available_bytes; if none fits, the smallest, with fits = false. Throws
/// apo::Error(InvalidArgument) for a non-positive parameter count or available bytes, a
/// fraction outside (0, 1], or a non-floating source dtype.
PrecisionChoice choose_precision(const PrecisionRequest& request,
                                 const QualityTable& quality = reference_quality());

/// @brief The precision settings of a configuration (performance_optimization).
struct PrecisionSettings {
  /// @brief The defaults of Config{} (the configuration schema is their one source).
  PrecisionSettings();
  static PrecisionSettings from_config(const Config& config);

  Precision precision;     ///< model_precision: a format, or "auto"
  bool allow_8bit;         ///< enable_quantization (for "auto")
  double memory_fraction;  ///< quantization_memory_fraction

 private:
  explicit PrecisionSettings(const Config& config);
};

/// @brief The configured choice: `settings.precision` if it names a format (per-row scales for
/// fp8 and int8), otherwise ("auto") choose_precision with the settings' 8-bit switch and memory
/// fraction.
PrecisionChoice choose_precision(const PrecisionSettings& settings, const ModelFootprint& model,
                                 std::int64_t available_bytes,
                                 const QualityTable& quality = reference_quality());

}  // namespace apo::quant

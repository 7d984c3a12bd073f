#pragma once

/// @file
/// @brief Model-level quantization: which tensors of a state dict to quantize, which to keep,
/// and a report of what it cost in quality and saved in bytes.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "apo/quant/format.hpp"
#include "apo/quant/qtensor.hpp"

namespace apo::quant {

/// @brief A state dict: names and tensors, in order.
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

/// @brief Names (ECMAScript regular expressions, searched anywhere in the name) of tensors kept
/// in their source dtype by default: biases, norms, embeddings (token, positional, patch, time),
/// and the input and output projections (the layers diffusers' layerwise casting also skips).
std::vector<std::string> default_keep_patterns();

/// @brief Which tensors to quantize, and how.
struct QuantizationRules {
  QuantSpec spec{QFormat::fp8_e4m3, Scaling::per_row};
  /// A tensor is quantized only if its name matches one of these: the weights of linear and
  /// convolution layers (which are also required to have two or more dimensions).
  std::vector<std::string> quantize_patterns{R"(\.weight$)"};
  /// ... and none of these.
  std::vector<std::string> keep_patterns = default_keep_patterns();
  /// ... and it has at least this many elements: smaller tensors save little.
  std::int64_t min_elements = kQuantizeMinElements;
  /// Measure SNR, cosine similarity and max abs error of each quantized tensor (one dequantize
  /// per tensor, freed before the next).
  bool measure_error = true;
};

/// @brief What happened to one tensor.
struct TensorReport {
  std::string name;
  bool quantized = false;
  std::string reason;  ///< why kept, or "quantized"
  QuantSpec spec;      ///< format none for kept tensors
  at::ScalarType original_dtype = at::ScalarType::Float;
  std::vector<std::int64_t> shape;
  std::int64_t bytes_before = 0;
  std::int64_t bytes_after = 0;  ///< data plus scales
  /// 10 log10(sum x^2 / sum (x - x')^2); +infinity when exact (kept tensors), and for an
  /// all-zero tensor.
  double snr_db = 0;
  double cosine_similarity = 1;  ///< of x and x'
  double max_abs_error = 0;
};

/// @brief The report of a quantize_state_dict call.
struct QuantizationReport {
  std::vector<TensorReport> tensors;
  std::int64_t bytes_before = 0;
  std::int64_t bytes_after = 0;
  int quantized_count = 0;
  int kept_count = 0;
  double min_snr_db = 0;             ///< over quantized tensors (+infinity if none)
  double mean_snr_db = 0;            ///< over quantized tensors with finite SNR
  double min_cosine_similarity = 1;  ///< over quantized tensors
  double max_abs_error = 0;          ///< over all tensors

  /// @brief One line per tensor and a totals line, for terminals and logs.
  std::string to_table() const;
  /// @brief {"tensors": [...], "totals": {...}}; infinite SNR is written as null.
  std::string to_json() const;
};

/// @brief A quantized state dict: every input tensor, in order (kept ones as format none,
/// holding the input tensor itself), and the report.
struct QuantizedStateDict {
  std::vector<QTensor> tensors;
  QuantizationReport report;
};

/// @brief Quantizes the tensors `rules` select and keeps the rest. Throws apo::Error naming the
/// tensor for NaN or infinity in a tensor it quantizes, and naming the pattern for an invalid
/// regular expression. Non-floating tensors (integer buffers) are kept. `on_progress`, when set,
/// is called after each tensor with (input bytes done, input bytes in all).
QuantizedStateDict quantize_state_dict(
    const NamedTensors& state_dict, const QuantizationRules& rules = {},
    const std::function<void(std::int64_t done_bytes, std::int64_t total_bytes)>& on_progress = {});

/// @brief The key prefix of the diffusion model in a ComfyUI checkpoint: "model.diffusion_model."
/// when any tensor name starts with it (a full checkpoint with text encoder and VAE), otherwise ""
/// (a diffusion-model-only file, as ComfyUI's diffusion model loader reads).
std::string comfyui_diffusion_prefix(const NamedTensors& state_dict);

/// @brief A state dict in ComfyUI's own scaled-fp8 layout, and the report of its quantization.
struct ComfyUIExport {
  NamedTensors tensors;
  QuantizationReport report;
  std::string prefix;  ///< the diffusion model's key prefix that was used
};

/// @brief ComfyUI's scaled-fp8 checkpoint layout (comfy/model_detection.py reads the marker,
/// comfy/ops.py scaled_fp8_ops the scales): under the diffusion model's prefix, every linear
/// weight (a floating-point 2-d ".weight"; ComfyUI makes every Linear of such a model fp8) is
/// stored in `format` with one float32 scale, a 0-d tensor "<layer>.scale_weight" beside it;
/// "<prefix>scaled_fp8", a 2-element tensor of `format`'s dtype, names the format (two elements:
/// ComfyUI computes in the model's dtype rather than quantizing activations to fp8, whose range
/// it does not scale). Everything else (convolutions, norms, biases, the text encoder and VAE)
/// is kept as it is, in order. Tensors matching `keep_patterns` are kept too. Throws
/// apo::Error(InvalidArgument) for a format other than fp8_e4m3 or fp8_e5m2 (ComfyUI's layout
/// has no int8), for a state dict that already has the marker, and for no linear weight found.
ComfyUIExport comfyui_scaled_fp8(
    const NamedTensors& state_dict, QFormat format = QFormat::fp8_e4m3,
    const std::vector<std::string>& keep_patterns = {},
    const std::function<void(std::int64_t done_bytes, std::int64_t total_bytes)>& on_progress = {});

}  // namespace apo::quant

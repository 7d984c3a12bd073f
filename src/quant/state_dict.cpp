// quantize_state_dict: selection by name patterns, dimensions and size; error measurement; the
// report as a table and as JSON.

#include "apo/quant/state_dict.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <mutex>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apo/core/units.hpp"
#include "apo/quant/kernels.hpp"
#include "internal.hpp"

namespace apo::quant {

namespace detail {

ErrorStats error_stats(const at::Tensor& x, const QTensor& q) {
  const at::Tensor xf = x.to(at::kFloat);
  const at::Tensor restored = q.dequantize(at::kFloat);
  const at::Tensor diff = xf - restored;
  const double signal = at::sum(xf * xf, at::kDouble).item<double>();
  const double noise = at::sum(diff * diff, at::kDouble).item<double>();
  const double restored_energy = at::sum(restored * restored, at::kDouble).item<double>();
  const double dot = at::sum(xf * restored, at::kDouble).item<double>();
  ErrorStats stats;
  stats.snr_db =
      noise == 0 ? std::numeric_limits<double>::infinity() : 10.0 * std::log10(signal / noise);
  if (signal == 0 && restored_energy == 0) {
    stats.cosine_similarity = 1;
  } else if (signal == 0 || restored_energy == 0) {
    stats.cosine_similarity = 0;
  } else {
    stats.cosine_similarity = dot / std::sqrt(signal * restored_energy);
  }
  stats.max_abs_error = diff.abs().max().item<double>();
  stats.amax = xf.abs().max().item<double>();
  return stats;
}

}  // namespace detail

std::vector<std::string> default_keep_patterns() {
  return {
      R"((^|\.)bias$)",  // biases
      R"(norm)",         // LayerNorm, GroupNorm, RMSNorm and AdaNorm weights (norm1, norm_q, ...)
      R"(embed)",        // token, positional, patch, time and caption embeddings
      // The first and last projections: where quantization error is not averaged out.
      R"((^|\.)(proj_in|proj_out|conv_in|conv_out|img_in|txt_in|final_layer|head|lm_head)\.)",
  };
}

namespace detail {

TensorSelection::TensorSelection(const QuantizationRules& rules)
    : quantize_patterns_(compile(rules.quantize_patterns, "quantize")),
      keep_patterns_(compile(rules.keep_patterns, "keep")),
      min_elements_(rules.min_elements) {}

namespace {

/// The compiled form of `text`, compiled once per process. Compiling under one lock also keeps
/// std::regex's compiler off libstdc++'s locale caches (ctype<char>::narrow fills them without
/// synchronization) from two threads at once: the model cache plans loads concurrently.
std::shared_ptr<const std::regex> compiled_pattern(const std::string& text) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::shared_ptr<const std::regex>> compiled;
  const std::lock_guard lock(mutex);
  auto& slot = compiled[text];
  if (!slot) {
    slot = std::make_shared<const std::regex>(text, std::regex::ECMAScript | std::regex::optimize);
  }
  return slot;
}

}  // namespace

std::vector<TensorSelection::Pattern> TensorSelection::compile(
    const std::vector<std::string>& patterns, std::string_view what) {
  std::vector<Pattern> compiled;
  for (const std::string& text : patterns) {
    try {
      compiled.push_back({text, compiled_pattern(text)});
    } catch (const std::regex_error& e) {
      fail(ErrorCode::InvalidArgument, "{} pattern '{}' is not a valid regular expression: {}",
           what, text, e.what());
    }
  }
  return compiled;
}

const TensorSelection::Pattern* TensorSelection::first_match(const std::vector<Pattern>& patterns,
                                                             const std::string& name) {
  for (const Pattern& p : patterns) {
    if (std::regex_search(name, *p.regex)) return &p;
  }
  return nullptr;
}

std::string TensorSelection::keep_reason(const std::string& name, const at::Tensor& t) const {
  if (!t.is_floating_point()) {
    return fmt::format("dtype {} is not floating point", c10::toString(t.scalar_type()));
  }
  if (const Pattern* p = first_match(keep_patterns_, name)) {
    return fmt::format("matches keep pattern '{}'", p->text);
  }
  if (first_match(quantize_patterns_, name) == nullptr) return "matches no quantize pattern";
  if (t.dim() < 2) {
    return fmt::format("{}-d: only weights of linear and convolution layers are quantized",
                       t.dim());
  }
  if (t.numel() < min_elements_) {
    return fmt::format("{} elements, fewer than min_elements = {}", t.numel(), min_elements_);
  }
  return {};
}

}  // namespace detail

QuantizedStateDict quantize_state_dict(
    const NamedTensors& state_dict, const QuantizationRules& rules,
    const std::function<void(std::int64_t done_bytes, std::int64_t total_bytes)>& on_progress) {
  const detail::TensorSelection selection(rules);
  std::int64_t total_bytes = 0;
  for (const auto& entry : state_dict) {
    if (entry.second.defined()) total_bytes += static_cast<std::int64_t>(entry.second.nbytes());
  }
  QuantizedStateDict result;
  QuantizationReport& report = result.report;
  double snr_sum = 0;
  int snr_count = 0;
  report.min_snr_db = std::numeric_limits<double>::infinity();
  for (const auto& [name, tensor] : state_dict) {
    if (!tensor.defined()) {
      detail::fail_tensor(ErrorCode::InvalidArgument, name, "tensor is undefined");
    }
    TensorReport entry;
    entry.name = name;
    entry.original_dtype = tensor.scalar_type();
    entry.shape.assign(tensor.sizes().begin(), tensor.sizes().end());
    entry.bytes_before = static_cast<std::int64_t>(tensor.nbytes());
    entry.reason = selection.keep_reason(name, tensor);
    if (entry.reason.empty()) {
      QTensor q = quantize(tensor, rules.spec, name);
      entry.quantized = true;
      entry.reason = "quantized";
      entry.spec = rules.spec;
      entry.bytes_after = q.bytes();
      if (rules.measure_error) {
        const detail::ErrorStats stats = detail::error_stats(tensor, q);
        entry.snr_db = stats.snr_db;
        entry.cosine_similarity = stats.cosine_similarity;
        entry.max_abs_error = stats.max_abs_error;
        report.min_snr_db = std::min(report.min_snr_db, stats.snr_db);
        report.min_cosine_similarity =
            std::min(report.min_cosine_similarity, stats.cosine_similarity);
        report.max_abs_error = std::max(report.max_abs_error, stats.max_abs_error);
        if (std::isfinite(stats.snr_db)) {
          snr_sum += stats.snr_db;
          ++snr_count;
        }
      }
      ++report.quantized_count;
      result.tensors.push_back(std::move(q));
    } else {
      entry.spec = {QFormat::none, Scaling::none};
      entry.bytes_after = entry.bytes_before;
      entry.snr_db = std::numeric_limits<double>::infinity();
      ++report.kept_count;
      result.tensors.push_back(QTensor::from_parts(name, tensor, {}, QFormat::none, Scaling::none,
                                                   tensor.scalar_type()));
    }
    report.bytes_before += entry.bytes_before;
    report.bytes_after += entry.bytes_after;
    report.tensors.push_back(std::move(entry));
    if (on_progress) on_progress(report.bytes_before, total_bytes);
  }
  report.mean_snr_db = snr_count > 0 ? snr_sum / snr_count : report.min_snr_db;
  return result;
}

std::string comfyui_diffusion_prefix(const NamedTensors& state_dict) {
  constexpr std::string_view kCheckpointPrefix = "model.diffusion_model.";
  for (const auto& entry : state_dict) {
    if (entry.first.starts_with(kCheckpointPrefix)) return std::string(kCheckpointPrefix);
  }
  return {};
}

ComfyUIExport comfyui_scaled_fp8(
    const NamedTensors& state_dict, QFormat format, const std::vector<std::string>& keep_patterns,
    const std::function<void(std::int64_t done_bytes, std::int64_t total_bytes)>& on_progress) {
  if (format != QFormat::fp8_e4m3 && format != QFormat::fp8_e5m2) {
    fail(ErrorCode::InvalidArgument,
         "ComfyUI's scaled-fp8 layout stores fp8_e4m3 or fp8_e5m2 weights, not {}",
         to_string(format));
  }
  ComfyUIExport out;
  out.prefix = comfyui_diffusion_prefix(state_dict);
  const std::string marker = out.prefix + "scaled_fp8";
  // The linear weights: ComfyUI's scaled_fp8 operations replace Linear only, and every one.
  NamedTensors linear;
  for (const auto& [name, tensor] : state_dict) {
    if (name == marker) {
      detail::fail_tensor(ErrorCode::InvalidArgument, name,
                          "the state dict is already in ComfyUI's scaled-fp8 layout");
    }
    if (tensor.defined() && name.starts_with(out.prefix) && name.ends_with(".weight") &&
        tensor.dim() == 2 && tensor.is_floating_point()) {
      linear.emplace_back(name, tensor);
    }
  }
  if (linear.empty()) {
    fail(ErrorCode::InvalidArgument, "no linear (2-d) weight under the prefix '{}' to quantize",
         out.prefix);
  }
  QuantizationRules rules;
  rules.spec = {format, Scaling::per_tensor};
  rules.quantize_patterns = {"."};
  rules.keep_patterns = keep_patterns;
  rules.min_elements = 0;
  QuantizedStateDict quantized = quantize_state_dict(linear, rules, on_progress);
  std::unordered_map<std::string, const QTensor*> by_name;
  for (const QTensor& q : quantized.tensors) {
    if (q.format() != QFormat::none) by_name.emplace(q.name(), &q);
  }
  constexpr std::string_view kWeight = ".weight";
  for (const auto& [name, tensor] : state_dict) {
    const auto found = by_name.find(name);
    if (found == by_name.end()) {
      out.tensors.emplace_back(name, tensor);
      continue;
    }
    const QTensor& q = *found->second;
    out.tensors.emplace_back(name, q.data());
    const std::string layer = name.substr(0, name.size() - kWeight.size());
    // A 0-d float32 scale: the shape of the parameter ComfyUI creates for it.
    out.tensors.emplace_back(layer + ".scale_weight", q.scales().to(at::kFloat).reshape({}));
  }
  out.tensors.emplace_back(marker,
                           at::zeros({2}, at::kFloat).to(storage_dtype(format, at::kFloat)));
  out.report = std::move(quantized.report);
  return out;
}

std::string QuantizationReport::to_table() const {
  std::string out =
      fmt::format("{:<48} {:<20} {:>12} {:>12} {:>9} {:>10} {:>11}  {}\n", "tensor", "format",
                  "before", "after", "SNR dB", "cosine", "max |err|", "note");
  for (const TensorReport& t : tensors) {
    out += fmt::format("{:<48} {:<20} {:>12} {:>12} {:>9.2f} {:>10.6f} {:>11.3g}  {}\n", t.name,
                       to_string(t.spec), format_bytes(t.bytes_before), format_bytes(t.bytes_after),
                       t.snr_db, t.cosine_similarity, t.max_abs_error, t.reason);
  }
  const double saved =
      bytes_before > 0
          ? 100.0 * (1.0 - static_cast<double>(bytes_after) / static_cast<double>(bytes_before))
          : 0.0;
  out += fmt::format(
      "total: {} quantized, {} kept; {} -> {} ({:.1f}% less); SNR min {:.2f} dB, mean {:.2f} dB; "
      "cosine min {:.6f}; max |err| {:.3g}\n",
      quantized_count, kept_count, format_bytes(bytes_before), format_bytes(bytes_after), saved,
      min_snr_db, mean_snr_db, min_cosine_similarity, max_abs_error);
  return out;
}

std::string QuantizationReport::to_json() const {
  auto number = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); };
  nlohmann::json list = nlohmann::json::array();
  for (const TensorReport& t : tensors) {
    list.push_back({{"name", t.name},
                    {"quantized", t.quantized},
                    {"reason", t.reason},
                    {"format", to_string(t.spec.format)},
                    {"scaling", to_string(t.spec.scaling)},
                    {"original_dtype", c10::toString(t.original_dtype)},
                    {"shape", t.shape},
                    {"bytes_before", t.bytes_before},
                    {"bytes_after", t.bytes_after},
                    {"snr_db", number(t.snr_db)},
                    {"cosine_similarity", t.cosine_similarity},
                    {"max_abs_error", t.max_abs_error}});
  }
  const nlohmann::json totals = {{"bytes_before", bytes_before},
                                 {"bytes_after", bytes_after},
                                 {"quantized_count", quantized_count},
                                 {"kept_count", kept_count},
                                 {"min_snr_db", number(min_snr_db)},
                                 {"mean_snr_db", number(mean_snr_db)},
                                 {"min_cosine_similarity", min_cosine_similarity},
                                 {"max_abs_error", max_abs_error}};
  return nlohmann::json{{"tensors", list}, {"totals", totals}}.dump(2);
}

}  // namespace apo::quant

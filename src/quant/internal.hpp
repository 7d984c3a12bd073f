#pragma once

// Helpers shared by the quant translation units: errors that name a tensor, dtype mapping, and
// the unchecked kernel entry points qlinear uses for activations.

#include <ATen/core/Tensor.h>

#include <memory>
#include <regex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "apo/core/error.hpp"
#include "apo/quant/format.hpp"
#include "apo/quant/kernels.hpp"
#include "apo/quant/qtensor.hpp"
#include "apo/quant/state_dict.hpp"
#include "cpu_rows.hpp"

namespace apo::quant::detail {

/// The name to show for a tensor: its name, or a placeholder when the caller gave none.
inline std::string display_name(std::string_view name) {
  return name.empty() ? std::string("(unnamed tensor)") : std::string(name);
}

/// Throws apo::Error(code, message, context = the tensor's name).
template <class... Args>
[[noreturn]] void fail_tensor(ErrorCode code, std::string_view name,
                              fmt::format_string<Args...> format, Args&&... args) {
  throw Error(code, fmt::format(format, std::forward<Args>(args)...), display_name(name));
}

/// "[4, 8]"
std::string shape_text(at::IntArrayRef shape);

/// Elem of a float32, float16 or bfloat16 dtype; throws otherwise.
Elem elem_of(at::ScalarType dtype, std::string_view name);

/// Code of a scaled format.
Code code_of(QFormat format);

/// Checks that `x` is a tensor apo can quantize (defined, floating, float32/16/bf16, non-empty,
/// on the CPU or a CUDA device apo was built for) and that `spec` is coherent.
void check_quantizable(const at::Tensor& x, QuantSpec spec, std::string_view name);

/// How far a QTensor's dequantized values are from the tensor it came from.
struct ErrorStats {
  double snr_db = 0;  ///< +infinity when exact
  double cosine_similarity = 1;
  double max_abs_error = 0;
  double amax = 0;  ///< max |x|
};

/// Dequantizes `q` once (float32) and compares it with `x`, accumulating in float64.
ErrorStats error_stats(const at::Tensor& x, const QTensor& q);

/// The selection of quantize_state_dict: compiled patterns and the size threshold.
class TensorSelection {
 public:
  /// Throws apo::Error(InvalidArgument) naming an invalid pattern.
  explicit TensorSelection(const QuantizationRules& rules);

  /// Why `tensor` is kept, or empty if it is to be quantized.
  std::string keep_reason(const std::string& name, const at::Tensor& tensor) const;

 private:
  struct Pattern {
    std::string text;
    std::shared_ptr<const std::regex> regex;  ///< shared by every selection with this text
  };
  static std::vector<Pattern> compile(const std::vector<std::string>& patterns,
                                      std::string_view what);
  static const Pattern* first_match(const std::vector<Pattern>& patterns, const std::string& name);

  std::vector<Pattern> quantize_patterns_;
  std::vector<Pattern> keep_patterns_;
  std::int64_t min_elements_;
};

#ifdef APO_WITH_CUDA
/// Codes and scales of a CUDA tensor for a scaled spec, without validation or synchronization:
/// for activations, which are not checked on every call. A row (or, per tensor, the tensor)
/// holding NaN or infinity gets a NaN scale and NaN codes, so what is computed from it comes out
/// NaN rather than finite values from a clamped NaN.
std::pair<at::Tensor, at::Tensor> quantize_unchecked_cuda(const at::Tensor& x, QuantSpec spec);

/// torch's current CUDA stream of `device`, as a cudaStream_t.
void* current_cuda_stream(at::Device device);
#endif

}  // namespace apo::quant::detail

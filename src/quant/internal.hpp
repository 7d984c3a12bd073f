#pragma once

// Helpers shared by the quant translation units: errors that name a tensor, dtype mapping, and
// the unchecked kernel entry points qlinear uses for activations.

#include <ATen/core/Tensor.h>

#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "apo/core/error.hpp"
#include "apo/quant/format.hpp"
#include "apo/quant/kernels.hpp"
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

#ifdef APO_WITH_CUDA
/// Codes and scales of a CUDA tensor for a scaled spec, without validation or synchronization
/// (NaN stays NaN): for activations, which are not checked on every call.
std::pair<at::Tensor, at::Tensor> quantize_unchecked_cuda(const at::Tensor& x, QuantSpec spec);

/// The current CUDA stream of `device`, as a cudaStream_t.
void* current_cuda_stream(at::Device device);
#endif

}  // namespace apo::quant::detail

// The torch operators torch.ops.apo.quantize, .dequantize and .qlinear: registered when libapo
// loads (Python: `import apo`), with CPU and CUDA kernels and Meta kernels for shape inference
// (torch.compile's fake tensors). A fragment, so that other areas may add apo:: operators.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#include "apo/quant/kernels.hpp"
#include "apo/quant/qlinear.hpp"
#include "apo/quant/qtensor.hpp"
#include "internal.hpp"

namespace apo::quant {
namespace {

QFormat format_from(c10::string_view name, std::string_view tensor) {
  const auto format = parse_enum<QFormat>(name);
  if (!format) {
    detail::fail_tensor(
        ErrorCode::InvalidArgument, tensor,
        "unknown format '{}'; expected none, fp16, bf16, fp8_e4m3, fp8_e5m2 or int8",
        std::string(name));
  }
  return *format;
}

// A QTensor from an operator's arguments: the scaling follows from the scale's size (one value:
// per tensor; one per row: per row).
QTensor weight_from(const at::Tensor& data, const std::optional<at::Tensor>& scale,
                    c10::string_view format_name, at::ScalarType original, std::string name) {
  const QFormat format = format_from(format_name, name);
  if (!traits(format).scaled) {
    return QTensor::from_parts(std::move(name), data, scale.value_or(at::Tensor()), format,
                               Scaling::none,
                               format == QFormat::none ? data.scalar_type() : original);
  }
  const bool single = scale && scale->defined() && scale->numel() == 1;
  return QTensor::from_parts(std::move(name), data, scale.value_or(at::Tensor()), format,
                             single ? Scaling::per_tensor : Scaling::per_row, original);
}

QuantSpec spec_from(c10::string_view format_name, std::optional<c10::string_view> scaling_name) {
  const QFormat format = format_from(format_name, "x");
  if (!scaling_name) return {format, traits(format).scaled ? Scaling::per_row : Scaling::none};
  const auto scaling = parse_enum<Scaling>(*scaling_name);
  if (!scaling) {
    detail::fail_tensor(ErrorCode::InvalidArgument, "x",
                        "unknown scaling '{}'; expected none, per_tensor or per_row",
                        std::string(*scaling_name));
  }
  return {format, *scaling};
}

std::tuple<at::Tensor, at::Tensor> quantize_op(const at::Tensor& x, c10::string_view format,
                                               std::optional<c10::string_view> scaling) {
  const QTensor q = quantize(x, spec_from(format, scaling), "x");
  return {q.data(),
          q.scales().defined() ? q.scales() : at::empty({0}, x.options().dtype(at::kFloat))};
}

at::Tensor dequantize_op(const at::Tensor& data, const std::optional<at::Tensor>& scale,
                         c10::string_view format, at::ScalarType dtype) {
  return weight_from(data, scale, format, dtype, "data").dequantize(dtype);
}

at::Tensor qlinear_op(const at::Tensor& x, const at::Tensor& weight,
                      const std::optional<at::Tensor>& weight_scale, c10::string_view format,
                      const std::optional<at::Tensor>& bias) {
  const at::ScalarType original = x.is_floating_point() ? x.scalar_type() : at::kFloat;
  return qlinear(x, weight_from(weight, weight_scale, format, original, "weight"), bias);
}

// Meta kernels: shapes and dtypes only.
std::tuple<at::Tensor, at::Tensor> quantize_meta(const at::Tensor& x, c10::string_view format,
                                                 std::optional<c10::string_view> scaling) {
  const QuantSpec spec = spec_from(format, scaling);
  const std::int64_t scales = spec.scaling == Scaling::per_row      ? scaling_rows(x.sizes())
                              : spec.scaling == Scaling::per_tensor ? 1
                                                                    : 0;
  return {at::empty(x.sizes(), x.options().dtype(storage_dtype(spec.format, x.scalar_type()))),
          at::empty({scales}, x.options().dtype(at::kFloat))};
}

at::Tensor dequantize_meta(const at::Tensor& data, const std::optional<at::Tensor>&,
                           c10::string_view, at::ScalarType dtype) {
  return at::empty(data.sizes(), data.options().dtype(dtype));
}

at::Tensor qlinear_meta(const at::Tensor& x, const at::Tensor& weight,
                        const std::optional<at::Tensor>&, c10::string_view,
                        const std::optional<at::Tensor>&) {
  std::vector<std::int64_t> shape(x.sizes().begin(), x.sizes().end());
  if (!shape.empty() && weight.dim() == 2) shape.back() = weight.size(0);
  return at::empty(shape, x.options());
}

}  // namespace
}  // namespace apo::quant

TORCH_LIBRARY_FRAGMENT(apo, m) {
  m.def("quantize(Tensor x, str format, str? scaling=None) -> (Tensor, Tensor)");
  m.def("dequantize(Tensor data, Tensor? scale, str format, ScalarType dtype) -> Tensor");
  m.def(
      "qlinear(Tensor x, Tensor weight, Tensor? weight_scale, str format, Tensor? bias=None) -> "
      "Tensor");
}

TORCH_LIBRARY_IMPL(apo, CPU, m) {
  m.impl("quantize", &apo::quant::quantize_op);
  m.impl("dequantize", &apo::quant::dequantize_op);
  m.impl("qlinear", &apo::quant::qlinear_op);
}

TORCH_LIBRARY_IMPL(apo, CUDA, m) {
  m.impl("quantize", &apo::quant::quantize_op);
  m.impl("dequantize", &apo::quant::dequantize_op);
  m.impl("qlinear", &apo::quant::qlinear_op);
}

TORCH_LIBRARY_IMPL(apo, Meta, m) {
  m.impl("quantize", &apo::quant::quantize_meta);
  m.impl("dequantize", &apo::quant::dequantize_meta);
  m.impl("qlinear", &apo::quant::qlinear_meta);
}

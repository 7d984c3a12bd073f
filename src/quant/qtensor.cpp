// QTensor: construction with invariant checks, sizes, dequantization.

#include "apo/quant/qtensor.hpp"

#include <ATen/ATen.h>

#include "apo/quant/kernels.hpp"
#include "internal.hpp"

namespace apo::quant {

std::int64_t scaling_rows(at::IntArrayRef shape) {
  return shape.size() >= 2 ? shape[0] : 1;
}

at::ScalarType storage_dtype(QFormat format, at::ScalarType source) {
  switch (format) {
    case QFormat::none:
      return source;
    case QFormat::fp16:
      return at::kHalf;
    case QFormat::bf16:
      return at::kBFloat16;
    case QFormat::fp8_e4m3:
      return at::kFloat8_e4m3fn;
    case QFormat::fp8_e5m2:
      return at::kFloat8_e5m2;
    case QFormat::int8:
      return at::kChar;
  }
  return source;
}

std::int64_t element_bytes(QFormat format, at::ScalarType source) {
  return static_cast<std::int64_t>(c10::elementSize(storage_dtype(format, source)));
}

QTensor QTensor::from_parts(std::string name, at::Tensor data, at::Tensor scales, QFormat format,
                            Scaling scaling, at::ScalarType original_dtype) {
  using detail::fail_tensor;
  const FormatTraits t = traits(format);
  const std::string_view format_name = to_string(format);
  if (!data.defined()) fail_tensor(ErrorCode::InvalidArgument, name, "data is undefined");
  const at::ScalarType expected = storage_dtype(format, original_dtype);
  if (data.scalar_type() != expected) {
    fail_tensor(ErrorCode::InvalidArgument, name,
                "data has dtype {}, but format {} with original dtype {} stores {}",
                c10::toString(data.scalar_type()), format_name, c10::toString(original_dtype),
                c10::toString(expected));
  }
  if (format != QFormat::none && !at::isFloatingType(original_dtype)) {
    fail_tensor(ErrorCode::InvalidArgument, name,
                "original dtype {} is not floating point; only format none keeps such tensors",
                c10::toString(original_dtype));
  }
  if (format != QFormat::none && data.numel() == 0) {
    fail_tensor(ErrorCode::InvalidArgument, name, "data is empty (shape {})",
                detail::shape_text(data.sizes()));
  }
  const std::int64_t rows = scaling_rows(data.sizes());
  if (!t.scaled) {
    if (scaling != Scaling::none) {
      fail_tensor(ErrorCode::InvalidArgument, name, "format {} takes no scales, but scaling is {}",
                  format_name, to_string(scaling));
    }
    if (scales.defined() && scales.numel() > 0) {
      fail_tensor(ErrorCode::InvalidArgument, name,
                  "format {} takes no scales, but scales of shape {} were given", format_name,
                  detail::shape_text(scales.sizes()));
    }
    scales = at::Tensor();
  } else {
    if (scaling == Scaling::none) {
      fail_tensor(ErrorCode::InvalidArgument, name,
                  "format {} needs per_tensor or per_row scaling, not none", format_name);
    }
    const std::int64_t expected_scales = scaling == Scaling::per_row ? rows : 1;
    if (!scales.defined()) {
      fail_tensor(ErrorCode::InvalidArgument, name,
                  "format {} with {} scaling needs scales of shape [{}], but none were given",
                  format_name, to_string(scaling), expected_scales);
    }
    if (scales.scalar_type() != at::kFloat) {
      fail_tensor(ErrorCode::InvalidArgument, name, "scales have dtype {}; expected Float",
                  c10::toString(scales.scalar_type()));
    }
    // Per tensor accepts [] and [1]; per row accepts [rows] and the [rows, 1] of _scaled_mm.
    const bool shape_ok = scales.numel() == expected_scales &&
                          (scaling == Scaling::per_tensor
                               ? scales.dim() <= 1
                               : scales.dim() == 1 || (scales.dim() == 2 && scales.size(1) == 1));
    if (!shape_ok) {
      fail_tensor(ErrorCode::InvalidArgument, name,
                  "scales have shape {}; {} scaling of a {} tensor needs [{}]",
                  detail::shape_text(scales.sizes()), to_string(scaling),
                  detail::shape_text(data.sizes()), expected_scales);
    }
    if (scales.device() != data.device()) {
      fail_tensor(ErrorCode::InvalidArgument, name, "scales are on {} but data is on {}",
                  scales.device().str(), data.device().str());
    }
    scales = scales.reshape({expected_scales}).contiguous();
  }
  QTensor q;
  q.name_ = std::move(name);
  q.data_ = data.contiguous();
  q.scales_ = std::move(scales);
  q.spec_ = {format, scaling};
  q.original_dtype_ = original_dtype;
  q.rows_ = rows;
  q.row_length_ = rows > 0 ? data.numel() / rows : 0;
  return q;
}

std::int64_t QTensor::bytes() const {
  std::int64_t total = static_cast<std::int64_t>(data_.nbytes());
  if (scales_.defined()) total += static_cast<std::int64_t>(scales_.nbytes());
  return total;
}

std::int64_t QTensor::original_bytes() const {
  return data_.numel() * static_cast<std::int64_t>(c10::elementSize(original_dtype_));
}

at::Tensor QTensor::dequantize(std::optional<at::ScalarType> dtype) const {
  return apo::quant::dequantize(*this, dtype);
}

void QTensor::expect_format(QFormat expected, std::string_view who) const {
  if (spec_.format != expected) {
    detail::fail_tensor(ErrorCode::InvalidArgument, name_,
                        "{} dequantizes {} tensors, but this one is stored as {}", who,
                        to_string(expected), to_string(spec_.format));
  }
}

}  // namespace apo::quant

#pragma once

/// @file
/// @brief QTensor: a weight stored in a QFormat, with its scales, the dtype and shape it came
/// from, and its name for error messages.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "apo/quant/format.hpp"

namespace apo::quant {

/// @brief A quantized tensor.
///
/// - `data` has the original shape, is contiguous and holds: the source dtype (none), Half
///   (fp16), BFloat16 (bf16), Float8_e4m3fn, Float8_e5m2 or Char (int8).
/// - `scales` is float32 on the data's device: [rows] per row, [1] per tensor, undefined for
///   unscaled formats. Element i decodes as code(i) * scale(row of i). rows = size(0) for
///   tensors of two or more dimensions, otherwise 1.
/// - Invariants are checked on construction, so a QTensor from a file is as safe as one from
///   quantize().
class QTensor {
 public:
  /// @brief Builds a QTensor from its parts, checking that they agree; throws apo::Error
  /// (InvalidArgument, naming the tensor) on a wrong dtype, shape, device or scaling.
  static QTensor from_parts(std::string name, at::Tensor data, at::Tensor scales, QFormat format,
                            Scaling scaling, at::ScalarType original_dtype);

  const std::string& name() const noexcept { return name_; }
  const at::Tensor& data() const noexcept { return data_; }
  /// @brief Undefined for unscaled formats.
  const at::Tensor& scales() const noexcept { return scales_; }
  QFormat format() const noexcept { return spec_.format; }
  Scaling scaling() const noexcept { return spec_.scaling; }
  QuantSpec spec() const noexcept { return spec_; }
  at::ScalarType original_dtype() const noexcept { return original_dtype_; }
  at::IntArrayRef shape() const { return data_.sizes(); }
  at::Device device() const { return data_.device(); }
  std::int64_t numel() const { return data_.numel(); }
  /// @brief Rows of the scaling view: size(0) for dim >= 2, else 1.
  std::int64_t rows() const noexcept { return rows_; }
  /// @brief Elements per row: numel / rows.
  std::int64_t row_length() const noexcept { return row_length_; }

  /// @brief Bytes held: data plus scales.
  std::int64_t bytes() const;
  /// @brief Bytes of the same tensor in its original dtype.
  std::int64_t original_bytes() const;

  /// @brief The weight back in `dtype` (default: the original dtype; float32, float16 or
  /// bfloat16), on the same device, by the fused dequantization kernel.
  at::Tensor dequantize(std::optional<at::ScalarType> dtype = std::nullopt) const;

  /// @brief Throws apo::Error(InvalidArgument) naming this tensor, `who` and the expected format
  /// when the format is not `expected`.
  void expect_format(QFormat expected, std::string_view who) const;

 private:
  QTensor() = default;

  std::string name_;
  at::Tensor data_;
  at::Tensor scales_;
  QuantSpec spec_;
  at::ScalarType original_dtype_ = at::ScalarType::Float;
  std::int64_t rows_ = 0;
  std::int64_t row_length_ = 0;
};

/// @brief Rows of the scaling view of a tensor of this shape: size(0) for dim >= 2, else 1.
std::int64_t scaling_rows(at::IntArrayRef shape);

/// @brief The storage dtype of a format; for none, `source`.
at::ScalarType storage_dtype(QFormat format, at::ScalarType source);

/// @brief Real bytes per element of a format for a tensor of dtype `source` (fp32 4, fp16 and
/// bf16 2, fp8 and int8 1; none: the source's size). Scales are extra (4 bytes per row or per
/// tensor).
std::int64_t element_bytes(QFormat format, at::ScalarType source);

}  // namespace apo::quant

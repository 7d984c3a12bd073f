#pragma once

/// @file
/// @brief Weight formats and scalings: what each format stores, its largest finite value, its
/// real size per element and the error bound every quantizer of it keeps.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "apo/core/enum_names.hpp"
#include "apo/core/settings.hpp"

namespace apo::quant {

/// @brief How a weight is stored. `none` keeps the source dtype.
enum class QFormat : std::uint8_t { none, fp16, bf16, fp8_e4m3, fp8_e5m2, int8 };

/// @brief Where scales apply. Unscaled formats (none, fp16, bf16) use `none`; fp8 and int8 use
/// one scale for the whole tensor or one per row (the first dimension; a 0-d or 1-d tensor is one
/// row).
enum class Scaling : std::uint8_t { none, per_tensor, per_row };

/// @brief A format and its scaling: the run-time form of a Quantizer policy.
struct QuantSpec {
  QFormat format = QFormat::none;
  Scaling scaling = Scaling::none;
  friend bool operator==(const QuantSpec&, const QuantSpec&) = default;
};

/// @brief What a format is, in numbers.
///
/// The error bound: quantizing x and dequantizing to fp32 gives x' with
/// |x - x'| <= relative_error * |x| + absolute_error * scale (scale = 1 for unscaled formats),
/// up to fp32 rounding of the division by the scale and of the product with it. relative_error
/// is half an ulp of the format's normal range; absolute_error is half its smallest step
/// (subnormal spacing, or one integer step for int8).
struct FormatTraits {
  int element_bytes;     ///< bytes per stored element; 0 for none (the source dtype's size)
  float max_value;       ///< largest finite magnitude stored; 0 for none (the source's)
  float relative_error;  ///< see above
  float absolute_error;  ///< see above, in units of the scale
  bool scaled;           ///< true for fp8 and int8: values are divided by a scale first
};

/// @brief The numbers of a format (OCP OFP8 v1.0 for the fp8 ones: E4M3 max 448 = S.1111.110,
/// E5M2 max 57344 = S.11110.11).
constexpr FormatTraits traits(QFormat format) noexcept {
  switch (format) {
    case QFormat::none:
      return {0, 0.0f, 0.0f, 0.0f, false};
    case QFormat::fp16:
      return {2, 65504.0f, 0x1p-11f, 0x1p-25f, false};
    case QFormat::bf16:
      return {2, 0x1.fep127f, 0x1p-8f, 0x1p-134f, false};
    case QFormat::fp8_e4m3:
      return {1, 448.0f, 0x1p-4f, 0x1p-10f, true};
    case QFormat::fp8_e5m2:
      return {1, 57344.0f, 0x1p-3f, 0x1p-17f, true};
    case QFormat::int8:
      return {1, 127.0f, 0.0f, 0.5f, true};
  }
  return {0, 0.0f, 0.0f, 0.0f, false};
}

/// @brief Scales use amax clamped to [kAmaxFloor, kAmaxCeiling]. The floor gives an all-zero row
/// a positive scale (torchao's float8 training path floors amax at the same 1e-12); the ceiling,
/// 2^-12 below float32's largest value, keeps max_value * scale finite when a tensor holds values
/// near float32's limit.
inline constexpr float kAmaxFloor = 1e-12f;
inline constexpr float kAmaxCeiling = 0x1.fffp127f;

}  // namespace apo::quant

namespace apo {

template <>
struct EnumTraits<quant::QFormat> {
  static constexpr std::string_view noun = "weight format";
  static constexpr std::array<EnumEntry<quant::QFormat>, 7> entries{{
      {quant::QFormat::none, "none"},
      {quant::QFormat::fp16, "fp16"},
      {quant::QFormat::bf16, "bf16"},
      {quant::QFormat::fp8_e4m3, "fp8_e4m3"},
      {quant::QFormat::fp8_e5m2, "fp8_e5m2"},
      {quant::QFormat::int8, "int8"},
      {quant::QFormat::fp8_e4m3, "fp8"},  // "fp8" means E4M3, the weight format
  }};
};

template <>
struct EnumTraits<quant::Scaling> {
  static constexpr std::string_view noun = "scaling";
  static constexpr std::array<EnumEntry<quant::Scaling>, 3> entries{{
      {quant::Scaling::none, "none"},
      {quant::Scaling::per_tensor, "per_tensor"},
      {quant::Scaling::per_row, "per_row"},
  }};
};

}  // namespace apo

namespace apo::quant {

using apo::to_string;

/// @brief "fp8_e4m3 per_row"; just the format's name for unscaled formats.
inline std::string to_string(QuantSpec spec) {
  std::string text(to_string(spec.format));
  if (spec.scaling != Scaling::none) text.append(" ").append(to_string(spec.scaling));
  return text;
}

/// @brief The format a configured precision stores weights in; fp32 keeps the source (none).
/// Empty for `automatic`, which precision choice (precision.hpp) resolves.
constexpr std::optional<QFormat> format_of(Precision precision) noexcept {
  switch (precision) {
    case Precision::fp32:
      return QFormat::none;
    case Precision::fp16:
      return QFormat::fp16;
    case Precision::bf16:
      return QFormat::bf16;
    case Precision::fp8_e4m3:
      return QFormat::fp8_e4m3;
    case Precision::fp8_e5m2:
      return QFormat::fp8_e5m2;
    case Precision::int8:
      return QFormat::int8;
    case Precision::automatic:
      return std::nullopt;
  }
  return std::nullopt;
}

/// @brief The configured precision that stores weights in `format` (none: fp32, kept as stored).
constexpr Precision precision_of(QFormat format) noexcept {
  switch (format) {
    case QFormat::none:
      return Precision::fp32;
    case QFormat::fp16:
      return Precision::fp16;
    case QFormat::bf16:
      return Precision::bf16;
    case QFormat::fp8_e4m3:
      return Precision::fp8_e4m3;
    case QFormat::fp8_e5m2:
      return Precision::fp8_e5m2;
    case QFormat::int8:
      return Precision::int8;
  }
  return Precision::fp32;
}

}  // namespace apo::quant

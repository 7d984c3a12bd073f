#pragma once

/// @file
/// @brief The Quantizer policy concept and its implementations: NoQuant, Fp16, Bf16, Fp8E4M3,
/// Fp8E5M2 and Int8.

#include <ATen/core/Tensor.h>

#include <concepts>
#include <string_view>

#include "apo/core/error.hpp"
#include "apo/quant/format.hpp"
#include "apo/quant/kernels.hpp"
#include "apo/quant/qtensor.hpp"

namespace apo::quant {

/// @brief A way to store weights in fewer bytes.
///
/// Contract, for a quantizer `q` of type Q and a tensor `t`:
/// - `Q::format` is the QFormat it produces and `q.spec()` its format and scaling.
/// - `q.quantize(t, name)` accepts float32, float16 and bfloat16 tensors of any shape and
///   strides, on the CPU or (in CUDA builds) a CUDA device, and returns a QTensor of
///   `q.spec()` with t's shape, device and dtype as the original dtype. It is deterministic:
///   the same input gives the same bits, on every thread count and kernel.
/// - Each element of `q.dequantize(q.quantize(t, name))` in float32 lies within the format's
///   error bound (FormatTraits) of t; zero stays zero; nothing becomes NaN or infinite: scales
///   are amax / max_value with amax clamped to [kAmaxFloor, kAmaxCeiling], and values are clamped to the format's
///   range before the cast.
/// - Bad input throws apo::Error naming `name`, never quantizes silently and never crashes:
///   InvalidArgument for an undefined, empty or non-floating tensor and for NaN or infinity
///   anywhere in it; Unsupported for another dtype or device. `q.dequantize(x)` throws
///   InvalidArgument naming the tensor when x was stored in another format.
/// - Const member functions may be called from several threads at once.
template <class Q>
concept Quantizer = std::copyable<Q> && requires(const Q& q, const at::Tensor& t,
                                                 const QTensor& x, std::string_view name) {
  { Q::format } -> std::convertible_to<QFormat>;
  { q.spec() } -> std::same_as<QuantSpec>;
  { q.quantize(t, name) } -> std::same_as<QTensor>;
  { q.dequantize(x) } -> std::same_as<at::Tensor>;
};

/// @brief Formats without scales: none keeps the source dtype; fp16 and bf16 are rounding casts
/// (fp16 rejects tensors beyond its range of +-65504 instead of turning them into infinity).
template <QFormat F>
class CastQuantizer {
  static_assert(!traits(F).scaled, "CastQuantizer is for unscaled formats");

 public:
  static constexpr QFormat format = F;

  QuantSpec spec() const noexcept { return {F, Scaling::none}; }

  /// @brief See the Quantizer contract.
  QTensor quantize(const at::Tensor& t, std::string_view name) const {
    return apo::quant::quantize(t, spec(), name);
  }

  /// @brief See the Quantizer contract.
  at::Tensor dequantize(const QTensor& x) const {
    x.expect_format(F, dequantizer_name());
    return x.dequantize();
  }

 private:
  static constexpr std::string_view dequantizer_name() noexcept {
    return F == QFormat::none ? "NoQuant" : F == QFormat::fp16 ? "Fp16" : "Bf16";
  }
};

/// @brief Formats with scales (fp8 and int8), per tensor or per row (the default, as torchao's
/// Float8WeightOnlyConfig and Int8WeightOnlyConfig).
template <QFormat F>
class ScaledQuantizer {
  static_assert(traits(F).scaled, "ScaledQuantizer is for fp8 and int8");

 public:
  static constexpr QFormat format = F;

  /// @brief Throws apo::Error(InvalidArgument) for Scaling::none.
  explicit ScaledQuantizer(Scaling scaling = Scaling::per_row) : scaling_(scaling) {
    if (scaling == Scaling::none) {
      fail(ErrorCode::InvalidArgument, "{} needs per_tensor or per_row scaling, not none",
           to_string(F));
    }
  }

  QuantSpec spec() const noexcept { return {F, scaling_}; }

  /// @brief See the Quantizer contract.
  QTensor quantize(const at::Tensor& t, std::string_view name) const {
    return apo::quant::quantize(t, spec(), name);
  }

  /// @brief See the Quantizer contract.
  at::Tensor dequantize(const QTensor& x) const {
    x.expect_format(F, dequantizer_name());
    return x.dequantize();
  }

 private:
  static constexpr std::string_view dequantizer_name() noexcept {
    return F == QFormat::fp8_e4m3 ? "Fp8E4M3" : F == QFormat::fp8_e5m2 ? "Fp8E5M2" : "Int8";
  }

  Scaling scaling_;
};

/// @brief Keeps weights as they are (still checked for NaN and infinity).
using NoQuant = CastQuantizer<QFormat::none>;
static_assert(Quantizer<NoQuant>);

/// @brief IEEE half: 2 bytes, 11 significant bits, range +-65504.
using Fp16 = CastQuantizer<QFormat::fp16>;
static_assert(Quantizer<Fp16>);

/// @brief bfloat16: 2 bytes, 8 significant bits, float32's range.
using Bf16 = CastQuantizer<QFormat::bf16>;
static_assert(Quantizer<Bf16>);

/// @brief OCP E4M3FN with scales: 1 byte, 4 significant bits, +-448 after scaling.
using Fp8E4M3 = ScaledQuantizer<QFormat::fp8_e4m3>;
static_assert(Quantizer<Fp8E4M3>);

/// @brief OCP E5M2 with scales: 1 byte, 3 significant bits, +-57344 after scaling.
using Fp8E5M2 = ScaledQuantizer<QFormat::fp8_e5m2>;
static_assert(Quantizer<Fp8E5M2>);

/// @brief Symmetric int8 with scales: codes -127..127 (never -128), scale = amax / 127.
using Int8 = ScaledQuantizer<QFormat::int8>;
static_assert(Quantizer<Int8>);

}  // namespace apo::quant

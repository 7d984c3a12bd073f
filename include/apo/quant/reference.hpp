#pragma once

/// @file
/// @brief The quantization math of kernels.hpp written as a chain of libtorch ops (abs, amax,
/// clamp, div, round, to): the oracle the fused kernels are tested against bit for bit, and the
/// baseline bench_quant measures them against. No validation: NaN goes in, NaN comes out.

#include <ATen/core/Tensor.h>

#include "apo/quant/format.hpp"

namespace apo::quant::reference {

/// @brief Codes and scales as the chain computes them.
struct Quantized {
  at::Tensor data;    ///< storage dtype of the format, x's shape
  at::Tensor scales;  ///< float32 [rows] or [1]; undefined for unscaled formats
};

/// @brief clamp(amax, kAmaxFloor, kAmaxCeiling) / max_value, per row ([rows]) or per tensor
/// ([1]).
at::Tensor scales(const at::Tensor& x, QuantSpec spec);

/// @brief clamp(x / scale) cast to the format (round(...) first for int8); for unscaled
/// formats, x.to(storage dtype).
Quantized quantize(const at::Tensor& x, QuantSpec spec);

/// @brief data.to(float32) * scale, cast to `dtype`.
at::Tensor dequantize(const at::Tensor& data, const at::Tensor& scales, QuantSpec spec,
                      at::ScalarType dtype);

}  // namespace apo::quant::reference

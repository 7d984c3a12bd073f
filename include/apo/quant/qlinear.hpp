#pragma once

/// @file
/// @brief qlinear: y = x W^T + b with W stored quantized, and the torch operator
/// torch.ops.apo.qlinear that exposes it to Python hosts.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

#include "apo/quant/qtensor.hpp"

namespace apo::quant {

/// @brief How qlinear computes.
enum class QLinearPath {
  direct,         ///< W is already in x's dtype (unscaled format): one GEMM, nothing decoded
  tiled,          ///< decode W a tile of rows at a time into one reused buffer, GEMM per tile
  cuda_scaled_mm  ///< fp8 on a CUDA device of sm >= 8.9: x quantized to E4M3, at::_scaled_mm
};

/// @brief Tuning for qlinear.
struct QLinearOptions {
  /// Bytes of the decode buffer; 0 picks 1/32 of the dequantized weight, at most 8 MiB (a
  /// dequantized weight of at most 1 MiB is decoded whole).
  std::int64_t tile_bytes = 0;
  /// Lets fp8 weights on CUDA use at::_scaled_mm where the device supports it.
  bool allow_scaled_mm = true;
};

/// @brief What qlinear will do for these arguments, and why.
struct QLinearPlan {
  QLinearPath path = QLinearPath::tiled;
  std::int64_t tile_rows = 0;        ///< rows of W per tile (tiled path)
  std::int64_t workspace_bytes = 0;  ///< the decode buffer (tiled) or the quantized x (scaled_mm)
  std::string reason;                ///< one line: why this path
};

/// @brief The plan qlinear follows; throws like qlinear on bad arguments.
QLinearPlan plan_qlinear(const at::Tensor& x, const QTensor& w,
                         const QLinearOptions& options = {});

/// @brief y = x W^T + b: x [..., in] (float32, float16 or bfloat16), W [out, in] quantized, b
/// [out] or none; y [..., out] in x's dtype, on x's device. On the CPU the dequantized weight
/// never exists whole: rows are decoded tile by tile into one buffer (plan_qlinear tells its
/// size). On CUDA, fp8 weights use at::_scaled_mm where the device has sm >= 8.9 and in and out
/// are multiples of 16 (per-row weight scales also need sm >= 9.0, bfloat16 x and E4M3);
/// otherwise the tiled path runs with the CUDA dequantization kernel. Throws
/// apo::Error(InvalidArgument) naming W for mismatched shapes, dtypes or devices.
at::Tensor qlinear(const at::Tensor& x, const QTensor& w,
                   const std::optional<at::Tensor>& bias = std::nullopt,
                   const QLinearOptions& options = {});

}  // namespace apo::quant

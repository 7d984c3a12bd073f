#pragma once

/// @file
/// @brief The fused quantization kernels behind every Quantizer: scales in one pass, codes in
/// one pass (per row, the row is still in cache for the second), dequantization in one pass. CPU
/// kernels are vectorized (AVX2 on x86-64 when the CPU has it, otherwise portable code over
/// ATen's Vectorized) and multithreaded with at::parallel_for; CUDA tensors go to CUDA kernels
/// when apo is built with CUDA.
///
/// Numerics (the same in every kernel, and in reference.hpp's chain of libtorch ops):
///   scale = clamp(amax, kAmaxFloor, kAmaxCeiling) / max_value   (fp32, per row or per tensor)
///   code  = cast(clamp(x / scale, -max_value, max_value))   round to nearest, ties to even
///   x'    = float(code) * scale, then cast to the output dtype (round to nearest even)

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string_view>

#include "apo/quant/qtensor.hpp"

namespace apo::quant {

/// @brief Which CPU kernel runs: the best this CPU has, or one named (for tests and
/// benchmarks that compare them).
enum class CpuKernel { best, avx2, portable };

/// @brief Whether this build and CPU can run `kernel` (portable and best always can).
bool cpu_kernel_available(CpuKernel kernel);

/// @brief The name of the kernel that `best` picks on this machine ("avx2" or "portable").
std::string_view best_cpu_kernel_name();

/// @brief Quantizes `x` (float32, float16 or bfloat16; CPU or CUDA; non-empty; finite) to
/// `spec`. `name` appears in every error. Throws apo::Error: InvalidArgument for an undefined,
/// empty, non-floating or non-finite tensor (naming the first bad element), or a spec whose
/// scaling does not fit its format; Unsupported for another dtype or device.
QTensor quantize(const at::Tensor& x, QuantSpec spec, std::string_view name,
                 CpuKernel kernel = CpuKernel::best);

/// @brief The weight back in `dtype` (default: its original dtype). Same as QTensor::dequantize
/// with a choice of CPU kernel.
at::Tensor dequantize(const QTensor& q, std::optional<at::ScalarType> dtype = std::nullopt,
                      CpuKernel kernel = CpuKernel::best);

/// @brief Dequantizes rows [row_begin, row_end) of a 2-d QTensor into `out`, a contiguous
/// [row_end - row_begin, row_length] tensor of float32, float16 or bfloat16 on q's device.
/// qlinear uses it to decode one tile of the weight into a reused buffer.
void dequantize_rows_into(const QTensor& q, std::int64_t row_begin, std::int64_t row_end,
                          at::Tensor& out, CpuKernel kernel = CpuKernel::best);

/// @brief Scales only (the first pass): float32 [rows] or [1]. Validates like quantize().
at::Tensor compute_scales(const at::Tensor& x, QuantSpec spec, std::string_view name,
                          CpuKernel kernel = CpuKernel::best);

}  // namespace apo::quant

#pragma once

// Row kernels: the single-threaded inner loops of the CPU quantization kernels, over one
// contiguous run of elements with one scale. cpu_kernels.cpp splits tensors into runs and runs
// them on ATen's thread pool. Two sets exist: portable (cpu_rows_portable.cpp) and AVX2
// (cpu_rows_avx2.cpp, x86-64 only, chosen at run time when the CPU has AVX2 and F16C). This
// header is plain C++ so that the AVX2 file needs nothing else.

#include <cstdint>

namespace apo::quant::detail {

/// Element types the kernels read and write.
enum class Elem : int { f32 = 0, f16 = 1, bf16 = 2 };
inline constexpr int kElemCount = 3;

/// Scaled code formats.
enum class Code : int { e4m3 = 0, e5m2 = 1, int8 = 2 };
inline constexpr int kCodeCount = 3;

/// max |x| over n elements; +infinity if any element is NaN or infinite.
using AmaxFn = float (*)(const void* x, std::int64_t n);
/// codes[i] = encode(clamp(x[i] / scale, -max, max)); x is finite.
using EncodeFn = void (*)(const void* x, std::int64_t n, float scale, void* codes);
/// out[i] = cast(decode(codes[i]) * scale).
using DecodeFn = void (*)(const void* codes, std::int64_t n, float scale, void* out);

struct RowKernels {
  const char* name;
  AmaxFn amax[kElemCount];
  EncodeFn encode[kElemCount][kCodeCount];  // [input][code]
  DecodeFn decode[kCodeCount][kElemCount];  // [code][output]
};

const RowKernels& portable_row_kernels();

/// The AVX2 set, or nullptr where it was not compiled (not x86-64, or not GCC/Clang).
const RowKernels* avx2_row_kernels();

/// Whether this CPU runs the AVX2 set (AVX2 and F16C).
bool cpu_runs_avx2();

}  // namespace apo::quant::detail

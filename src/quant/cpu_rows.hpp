#pragma once

// Row kernels: the single-threaded inner loops of the CPU quantization kernels,
// over one contiguous run of elements with one scale. kernels.cpp splits
// tensors into runs and runs them on ATen's thread pool. One lane-generic
// implementation (cpu_rows_generic.hpp over the element algorithms of
// codec_lanes.hpp) is instantiated for three lane sets: portable (one lane, the
// code the CUDA kernels run too; cpu_rows_portable.cpp), AVX2
// (cpu_rows_avx2.cpp) and AVX-512 (cpu_rows_avx512.cpp); the x86 ones are
// chosen at run time by what the CPU has. This header is plain C++ so that the
// vector files need nothing else.

#include <cstdint>

#include "codec.hpp"

namespace apo::quant::detail {

/// max |x| over n elements; +infinity if any element is NaN or infinite.
using AmaxFn = float (*)(const void* x, std::int64_t n);
/// codes[i] = encode(clamp(x[i] / scale, -max, max)); x is finite. `next`, if
/// not null, is the next row (n elements, same type): it is prefetched while
/// this row is encoded, so that its amax pass reads from cache and memory
/// traffic overlaps the arithmetic.
using EncodeFn = void (*)(const void* x, std::int64_t n, float scale, void* codes,
                          const void* next);
/// out[i] = cast(decode(codes[i]) * scale).
using DecodeFn = void (*)(const void* codes, std::int64_t n, float scale, void* out);

struct RowKernels {
  const char* name;
  AmaxFn amax[kElemCount];
  EncodeFn encode[kElemCount][kCodeCount];  // [input][code]
  DecodeFn decode[kCodeCount][kElemCount];  // [code][output]
};

const RowKernels& portable_row_kernels();

/// The AVX2 set, or nullptr where it was not compiled (not x86-64, or not
/// GCC/Clang).
const RowKernels* avx2_row_kernels();

/// Whether this CPU runs the AVX2 set (AVX2 and F16C).
bool cpu_runs_avx2();

/// The AVX-512 set, or nullptr where it was not compiled.
const RowKernels* avx512_row_kernels();

/// Whether this CPU runs the AVX-512 set (AVX-512 F, BW, VL and DQ).
bool cpu_runs_avx512();

}  // namespace apo::quant::detail

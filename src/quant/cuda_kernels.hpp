#pragma once

// Launchers of the CUDA quantization kernels (cuda_kernels.cu). Plain C++17 so that nvcc
// compiles the kernels without libtorch's headers; kernels.cpp passes raw pointers and the
// current stream. Each returns nullptr on success, else the CUDA error's text.

#include <cstdint>

#include "cpu_rows.hpp"

namespace apo::quant::cuda {

using detail::Code;
using detail::Elem;

/// amax[s] = max |x| over segment s = [s * segment, min((s + 1) * segment, n)); +infinity when
/// the segment holds NaN or infinity.
const char* segment_amax(const void* x, Elem elem, std::int64_t n, std::int64_t segment,
                         float* amax, void* stream);

/// codes[i] = encode(clamp(x[i] / scales[per_row ? i / row_length : 0])).
const char* encode(const void* x, Elem elem, std::int64_t n, std::int64_t row_length,
                   const float* scales, bool per_row, Code code, void* codes, void* stream);

/// out[i] = cast(decode(codes[i]) * scales[per_row ? (first_row + i / row_length) : 0]).
const char* decode(const void* codes, Code code, std::int64_t n, std::int64_t row_length,
                   std::int64_t first_row, const float* scales, bool per_row, void* out,
                   Elem elem, void* stream);

/// The device's compute capability as major * 10 + minor, or -1 on error.
int compute_capability(int device);

}  // namespace apo::quant::cuda

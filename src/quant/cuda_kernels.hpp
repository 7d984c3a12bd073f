#pragma once

// Launchers of the CUDA quantization kernels (cuda_kernels.cu). Plain C++17 so
// that nvcc compiles the kernels without libtorch's headers; kernels.cpp passes
// raw pointers and the current stream. Each returns an empty string on success,
// else the failure with the kernel's name. Launch errors are always reported;
// in debug builds (NDEBUG undefined) each launcher also waits for its kernel,
// so that a fault is reported by the kernel that caused it.
//
// Layout: `rows` rows of `row_length` contiguous elements, one scale per row
// (per-tensor scaling is one row of every element). The arithmetic per element
// is codec.hpp's, split into tiles as cuda_tiles.hpp says.

#include <cstdint>
#include <string>

#include "codec.hpp"

namespace apo::quant::cuda {

using detail::Code;
using detail::Elem;

/// amax[r] = max |x| over row r, +infinity when the row holds NaN or infinity.
/// `amax` holds `rows` floats; it is overwritten.
std::string amax(const void* x, Elem elem, std::int64_t rows, std::int64_t row_length, float* amax,
                 void* stream);

/// scales[r] = clamp(amax[r], floor, ceiling) / code max (NaN where amax[r] is
/// not finite) and codes[i] = encode(x[i] / scales[row of i]), NaN codes for
/// NaN (fp8).
std::string encode(const void* x, Elem elem, std::int64_t rows, std::int64_t row_length,
                   const float* amax, float amax_floor, float amax_ceiling, Code code,
                   float* scales, void* codes, void* stream);

/// out[i] = cast(decode(codes[i]) * scales[row of i]).
std::string decode(const void* codes, Code code, std::int64_t rows, std::int64_t row_length,
                   const float* scales, void* out, Elem elem, void* stream);

/// The device's compute capability as major * 10 + minor, or -1 on error.
int compute_capability(int device);

}  // namespace apo::quant::cuda

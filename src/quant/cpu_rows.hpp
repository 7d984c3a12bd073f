#pragma once

// Row kernels: the single-threaded inner loops of the CPU quantization kernels, over one
// contiguous run of elements with one scale. cpu_kernels.cpp splits tensors into runs and runs
// them on ATen's thread pool. Three sets exist: portable (cpu_rows_portable.cpp), AVX2
// (cpu_rows_avx2.cpp) and AVX-512 (cpu_rows_avx512.cpp); the x86 ones are chosen at run time by
// what the CPU has. This header is plain C++ so that the vector files need nothing else.

#include <cstdint>

namespace apo::quant::detail {

/// Element types the kernels read and write.
enum class Elem : int { f32 = 0, f16 = 1, bf16 = 2 };
inline constexpr int kElemCount = 3;

/// Scaled code formats.
enum class Code : int { e4m3 = 0, e5m2 = 1, int8 = 2 };
inline constexpr int kCodeCount = 3;

/// The type an Elem is stored as (16-bit floats as their bits).
template <Elem E>
struct ElemStorage {
  using type = std::uint16_t;
};
template <>
struct ElemStorage<Elem::f32> {
  using type = float;
};
template <Elem E>
using elem_storage_t = typename ElemStorage<E>::type;

/// The largest magnitude a code holds (OCP OFP8 E4M3 448, E5M2 57344; symmetric int8 127).
template <Code C>
constexpr float code_max() {
  return C == Code::e4m3 ? 448.0f : C == Code::e5m2 ? 57344.0f : 127.0f;
}

/// The float whose magnitude bits, in the Elem's own format, are `bits`; +infinity for the bits
/// of an infinity or a NaN. Vector amax kernels take the integer max of magnitude bits (which
/// orders floats by magnitude and puts NaN and infinity above every finite value) and convert
/// once at the end.
template <Elem E>
inline float magnitude_from_bits(std::uint32_t bits) {
  constexpr float kInfinity = __builtin_inff();
  std::uint32_t f32;
  if constexpr (E == Elem::f32) {
    if (bits > 0x7F7FFFFFu) return kInfinity;
    f32 = bits;
  } else if constexpr (E == Elem::bf16) {
    if (bits >= 0x7F80u) return kInfinity;
    f32 = bits << 16;
  } else {
    if (bits >= 0x7C00u) return kInfinity;
    if (bits < 0x0400u) return static_cast<float>(bits) * 0x1p-24f;  // subnormal half
    f32 = ((bits >> 10) + 112u) << 23 | (bits & 0x3FFu) << 13;
  }
  float value;
  __builtin_memcpy(&value, &f32, sizeof value);
  return value;
}

/// max |x| over n elements; +infinity if any element is NaN or infinite.
using AmaxFn = float (*)(const void* x, std::int64_t n);
/// codes[i] = encode(clamp(x[i] / scale, -max, max)); x is finite. `next`, if not null, is the
/// next row (n elements, same type): it is prefetched while this row is encoded, so that its amax
/// pass reads from cache and memory traffic overlaps the arithmetic.
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

/// The AVX2 set, or nullptr where it was not compiled (not x86-64, or not GCC/Clang).
const RowKernels* avx2_row_kernels();

/// Whether this CPU runs the AVX2 set (AVX2 and F16C).
bool cpu_runs_avx2();

/// The AVX-512 set, or nullptr where it was not compiled.
const RowKernels* avx512_row_kernels();

/// Whether this CPU runs the AVX-512 set (AVX-512 F, BW, VL and DQ).
bool cpu_runs_avx512();

}  // namespace apo::quant::detail

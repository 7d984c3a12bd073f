#pragma once

// Element codecs shared by the CPU row kernels and the CUDA kernels: the same source compiles
// with g++ (host) and nvcc (host and device), so the CPU tests that hold this code bit-exact with
// PyTorch also hold the CUDA kernels' arithmetic. Plain C++17, no library calls, no CUDA headers.
//
// This header: scalar conversions (16-bit floats on their bits), the magnitude rule of amax, the
// scale rule, and ScalarLanes, the one-lane set that the portable CPU kernels and the CUDA
// kernels run the lane-generic algorithms of codec_lanes.hpp on. It holds no templates over lane
// sets, so the x86 row kernels include it before switching their instruction set on (see
// cpu_rows_generic.hpp).

#include <cstddef>
#include <cstdint>

// Forced inline: the element functions are a few instructions each, and a call in the middle of
// a vector loop would cost more than the work.
#if defined(__CUDACC__)
#define APO_HD __host__ __device__ __forceinline__
#define APO_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define APO_HD inline __attribute__((always_inline))
#define APO_UNROLL
#else
#define APO_HD inline
#define APO_UNROLL
#endif

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
APO_HD constexpr float code_max() {
  return C == Code::e4m3 ? 448.0f : C == Code::e5m2 ? 57344.0f : 127.0f;
}

namespace codec {

// ---- bits ---------------------------------------------------------------------------------------

APO_HD std::uint32_t bits_of(float value) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(value);
#else
  std::uint32_t bits;
  __builtin_memcpy(&bits, &value, sizeof bits);
  return bits;
#endif
}

APO_HD float float_of(std::uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float value;
  __builtin_memcpy(&value, &bits, sizeof value);
  return value;
#endif
}

inline constexpr std::uint32_t kInfinityBits = 0x7F800000u;
inline constexpr std::uint32_t kQuietNanBits = 0x7FC00000u;
inline constexpr float kFloatMax = 3.40282347e+38f;

// ---- 16-bit floats ------------------------------------------------------------------------------

/// IEEE half bits -> float, exactly, without branches (c10's fp16_ieee_to_fp32_value: NaN stays
/// NaN, quieted). Normal halves: the exponent and mantissa shifted into a float's fields, then
/// rebiased by a multiplication by 2^-112; subnormals: the mantissa placed in the low bits of
/// 0.5's mantissa, minus 0.5.
APO_HD float half_to_float(std::uint32_t h) {
  const std::uint32_t w = (h & 0xFFFFu) << 16;
  const std::uint32_t sign = w & 0x80000000u;
  const std::uint32_t two_w = w + w;
  const float normalized = float_of((two_w >> 4) + (0xE0u << 23)) * 0x1p-112f;
  const float denormalized = float_of((two_w >> 17) | (126u << 23)) - 0.5f;
  const std::uint32_t magnitude = two_w < (1u << 27) ? bits_of(denormalized) : bits_of(normalized);
  return float_of(sign | magnitude);
}

/// float -> IEEE half bits, round to nearest even, overflow to infinity, NaN -> 0x7E00 | sign
/// (c10::Half's conversion).
APO_HD std::uint16_t float_to_half(float value) {
  // Every case computed, then selected: no branches, so that loops over it vectorize.
  const std::uint32_t bits = bits_of(value);
  const std::uint32_t sign = (bits >> 16) & 0x8000u;
  const std::uint32_t a = bits & 0x7FFFFFFFu;
  // Below 2^-14 (subnormal halves): steps of 2^-24, the ulp of 0.5, so the FPU rounds.
  const std::uint32_t subnormal = bits_of(float_of(a) + 0.5f) - bits_of(0.5f);
  // Otherwise rebias the exponent (127 -> 15) and round the 13 dropped bits to nearest even.
  const std::uint32_t normal = (a - (112u << 23) + 0xFFFu + ((a >> 13) & 1u)) >> 13;
  std::uint32_t h = a < 0x38800000u ? subnormal : normal;
  h = a >= 0x477FF000u ? 0x7C00u : h;  // 65520 and above round to infinity
  h = a > kInfinityBits ? 0x7E00u : h;
  return static_cast<std::uint16_t>(sign | h);
}

/// bfloat16 bits -> float, exactly.
APO_HD float bf16_to_float(std::uint32_t b) {
  return float_of(b << 16);
}

/// float -> bfloat16 bits, round to nearest even, NaN -> 0x7FC0 (c10::BFloat16's conversion).
APO_HD std::uint16_t float_to_bf16(float value) {
  const std::uint32_t bits = bits_of(value);
  const std::uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return static_cast<std::uint16_t>((bits & 0x7FFFFFFFu) > kInfinityBits ? 0x7FC0u : rounded);
}

/// An element of type E as a float.
template <Elem E>
APO_HD float to_float(elem_storage_t<E> v) {
  if constexpr (E == Elem::f32) {
    return v;
  } else if constexpr (E == Elem::f16) {
    return half_to_float(v);
  } else {
    return bf16_to_float(v);
  }
}

/// A float rounded to an element of type E.
template <Elem E>
APO_HD elem_storage_t<E> from_float(float v) {
  if constexpr (E == Elem::f32) {
    return v;
  } else if constexpr (E == Elem::f16) {
    return float_to_half(v);
  } else {
    return float_to_bf16(v);
  }
}

/// The magnitude bits of an element in its own format (sign cleared): their integer max is the
/// element of largest magnitude, with infinity and NaN above every finite value.
template <Elem E>
APO_HD std::uint32_t magnitude_bits(elem_storage_t<E> v) {
  if constexpr (E == Elem::f32) {
    return bits_of(v) & 0x7FFFFFFFu;
  } else {
    return v & 0x7FFFu;
  }
}

/// The float whose magnitude bits, in the Elem's own format, are `bits`; +infinity for the bits
/// of an infinity or a NaN. Amax kernels take the integer max of magnitude bits and convert once.
template <Elem E>
APO_HD float magnitude_from_bits(std::uint32_t bits) {
  const float infinity = float_of(kInfinityBits);
  if constexpr (E == Elem::f32) {
    return bits > 0x7F7FFFFFu ? infinity : float_of(bits);
  } else if constexpr (E == Elem::bf16) {
    return bits >= 0x7F80u ? infinity : bf16_to_float(bits);
  } else {
    return bits >= 0x7C00u ? infinity : half_to_float(bits);
  }
}

/// The scale of a row or tensor: clamp(amax, floor, ceiling) / max_value (IEEE division), or NaN
/// when amax is not finite, so that a row holding NaN or infinity encodes as NaN codes and its
/// results come out NaN instead of finite garbage. `floor` and `ceiling` are kAmaxFloor and
/// kAmaxCeiling (apo/quant/format.hpp), passed in so that this header needs no other.
APO_HD float scale_from_amax(float amax, float max_value, float floor, float ceiling) {
  if (!(amax <= kFloatMax)) return float_of(kQuietNanBits);
  const float clamped = amax < floor ? floor : (amax > ceiling ? ceiling : amax);
  return clamped / max_value;
}

// ---- one lane -----------------------------------------------------------------------------------

/// The one-lane set: the portable CPU kernels and the CUDA kernels. NaN-aware: clamp keeps NaN,
/// fp8 codes of NaN are NaN codes, the int8 code of NaN is 0 (int8 has no NaN; the checked paths
/// reject NaN before encoding, and the unchecked path only encodes fp8).
struct ScalarLanes {
  using F = float;
  using I = std::uint32_t;
  using H = std::uint32_t;  // 16-bit values, in a 32-bit lane here
  using M = bool;
  static constexpr int kLanes = 1;
  static constexpr bool kNanAware = true;

  template <Elem E>
  APO_HD static F load(const elem_storage_t<E>* p) {
    return to_float<E>(*p);
  }
  template <Elem E>
  APO_HD static void store(elem_storage_t<E>* p, F v) {
    *p = from_float<E>(v);
  }
  APO_HD static F fsplat(float v) { return v; }
  APO_HD static I isplat(std::uint32_t v) { return v; }
  APO_HD static I as_int(F v) { return bits_of(v); }
  APO_HD static F as_float(I v) { return float_of(v); }
  APO_HD static F fadd(F a, F b) { return a + b; }
  APO_HD static F fmul(F a, F b) { return a * b; }
  APO_HD static F fdiv(F a, F b) { return a / b; }
  /// NaN stays NaN (the comparisons are false for it).
  APO_HD static F clamp(F v, F lo, F hi) { return v < lo ? lo : (v > hi ? hi : v); }
  APO_HD static I iand(I a, I b) { return a & b; }
  APO_HD static I ior(I a, I b) { return a | b; }
  APO_HD static I iadd(I a, I b) { return a + b; }
  APO_HD static I isub(I a, I b) { return a - b; }
  template <int K>
  APO_HD static I srl(I a) {
    return a >> K;
  }
  template <int K>
  APO_HD static I sll(I a) {
    return a << K;
  }
  APO_HD static M lt(I a, I b) { return a < b; }
  APO_HD static M eq(I a, I b) { return a == b; }
  APO_HD static I select(M m, I a, I b) { return m ? a : b; }
  APO_HD static F select(M m, F a, F b) { return m ? a : b; }
  /// Round to nearest even of a value within [-127, 127] (adding 1.5 * 2^23 leaves the integer
  /// in the low mantissa bits, rounded by the FPU); NaN gives 0.
  APO_HD static I round_to_int(F v) {
    if (!(v == v)) return 0;
    const float shifted = v + 12582912.0f;
    return static_cast<I>(static_cast<std::int32_t>(bits_of(shifted) - bits_of(12582912.0f)));
  }
  APO_HD static F to_float_signed(I v) { return static_cast<float>(static_cast<std::int32_t>(v)); }
  APO_HD static H hsplat(std::uint32_t v) { return v; }
  APO_HD static H hand(H a, H b) { return a & b; }
  APO_HD static H hor(H a, H b) { return a | b; }
  template <int K>
  APO_HD static H hsll(H a) {
    return (a << K) & 0xFFFFu;
  }
  APO_HD static M heq(H a, H b) { return a == b; }
  APO_HD static F half_to_float(H h) { return codec::half_to_float(h); }
};

}  // namespace codec
}  // namespace apo::quant::detail

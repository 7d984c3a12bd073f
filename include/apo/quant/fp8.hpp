#pragma once

/// @file
/// @brief The scalar fp8 codec (OCP OFP8 v1.0, E4M3FN and E5M2): the reference that the vector
/// and CUDA kernels are tested against, bit for bit.
///
/// Encoding rounds to nearest, ties to even, and saturates: a finite value beyond the largest
/// normal becomes the largest normal of its sign (what torchao gets by clamping before the cast,
/// and what PyTorch's eager E4M3 cast does since 2.12). NaN encodes as the canonical NaN of its
/// sign (0x7F / 0xFF). Decoding is exact: every code has a float value.

#include <cstdint>
#include <cstring>
#include <limits>

namespace apo::quant::fp8 {

namespace detail {

inline std::uint32_t bits_of(float value) noexcept {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

inline float float_of(std::uint32_t bits) noexcept {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// Rounds a float of magnitude bits `a` (sign cleared, below the format's smallest normal) to a
// multiple of the subnormal step by adding 2^k, where floats near 2^k are spaced one step apart:
// the FPU's own round-to-nearest-even does the rounding, and the low bits are then the code.
inline std::uint32_t subnormal_code(std::uint32_t a, float magic) noexcept {
  return bits_of(float_of(a) + magic) - bits_of(magic);
}

}  // namespace detail

/// @brief Largest finite E4M3 value (S.1111.110).
inline constexpr float kE4M3Max = 448.0f;
/// @brief Largest finite E5M2 value (S.11110.11).
inline constexpr float kE5M2Max = 57344.0f;

/// @brief float -> E4M3FN code: round to nearest even, saturate at +-448, NaN -> 0x7F | sign.
inline std::uint8_t encode_e4m3(float value) noexcept {
  const std::uint32_t bits = detail::bits_of(value);
  const std::uint32_t sign = (bits >> 24) & 0x80u;
  const std::uint32_t a = bits & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return static_cast<std::uint8_t>(sign | 0x7Fu);
  if (a >= detail::bits_of(kE4M3Max)) return static_cast<std::uint8_t>(sign | 0x7Eu);
  if (a < (121u << 23)) {  // below 2^-6, the smallest normal: steps of 2^-9 = ulp of 2^14
    return static_cast<std::uint8_t>(sign | detail::subnormal_code(a, 0x1p14f));
  }
  // Rebias the exponent (127 -> 7) and round the 20 dropped mantissa bits to nearest even.
  const std::uint32_t rounded = a - (120u << 23) + 0x7FFFFu + ((a >> 20) & 1u);
  return static_cast<std::uint8_t>(sign | (rounded >> 20));
}

/// @brief float -> E5M2 code: round to nearest even, saturate at +-57344, NaN -> 0x7F | sign.
inline std::uint8_t encode_e5m2(float value) noexcept {
  const std::uint32_t bits = detail::bits_of(value);
  const std::uint32_t sign = (bits >> 24) & 0x80u;
  const std::uint32_t a = bits & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return static_cast<std::uint8_t>(sign | 0x7Fu);
  if (a >= detail::bits_of(kE5M2Max)) return static_cast<std::uint8_t>(sign | 0x7Bu);
  if (a < (113u << 23)) {  // below 2^-14: steps of 2^-16 = ulp of 2^7
    return static_cast<std::uint8_t>(sign | detail::subnormal_code(a, 0x1p7f));
  }
  const std::uint32_t rounded = a - (112u << 23) + 0xFFFFFu + ((a >> 21) & 1u);
  return static_cast<std::uint8_t>(sign | (rounded >> 21));
}

/// @brief E4M3FN code -> float. 0x7F and 0xFF are NaN; there is no infinity.
inline float decode_e4m3(std::uint8_t code) noexcept {
  const std::uint32_t magnitude = code & 0x7Fu;
  float value;
  if (magnitude == 0x7Fu) {
    value = std::numeric_limits<float>::quiet_NaN();
  } else if (magnitude < 8u) {
    value = static_cast<float>(magnitude) * 0x1p-9f;
  } else {
    value = detail::float_of((magnitude << 20) + (120u << 23));
  }
  return detail::float_of(detail::bits_of(value) | (static_cast<std::uint32_t>(code & 0x80u) << 24));
}

/// @brief E5M2 code -> float. Exponent 31 with mantissa 0 is infinity, otherwise NaN.
inline float decode_e5m2(std::uint8_t code) noexcept {
  const std::uint32_t magnitude = code & 0x7Fu;
  float value;
  if (magnitude >= 0x7Cu) {
    value = magnitude == 0x7Cu ? std::numeric_limits<float>::infinity()
                               : std::numeric_limits<float>::quiet_NaN();
  } else if (magnitude < 4u) {
    value = static_cast<float>(magnitude) * 0x1p-16f;
  } else {
    value = detail::float_of((magnitude << 21) + (112u << 23));
  }
  return detail::float_of(detail::bits_of(value) | (static_cast<std::uint32_t>(code & 0x80u) << 24));
}

}  // namespace apo::quant::fp8

#pragma once

// The lane-generic element algorithms: encode one vector of values, decode one vector of codes,
// written once against a lane set V. The sets: codec::ScalarLanes (codec.hpp; the portable CPU
// kernels and the CUDA kernels) and the AVX2 and AVX-512 sets (cpu_rows_avx2.cpp,
// cpu_rows_avx512.cpp), which include this header inside their instruction-set region.
//
// A lane set V provides: F (floats), I (32-bit integers), H (16-bit integers, as many lanes as
// F), M (a lane mask), kLanes, kNanAware (whether clamp keeps NaN and encode gives NaN codes for
// it: the CPU paths reject NaN before encoding, the CUDA activation path does not), and fsplat,
// isplat, as_int, as_float, fadd, fmul, fdiv, clamp, iand, ior, iadd, isub, srl<k>, sll<k>, lt
// (on values below 2^31), eq, select (of I and of F), round_to_int (nearest even),
// to_float_signed; hsplat, hand, hor, hsll<k>, heq, half_to_float (H lanes as IEEE halves).
//
// Only templates over V live here: each instruction set gets its own instantiations, compiled
// with its own target, and nothing shared with baseline code.

#include "codec.hpp"

namespace apo::quant::detail::codec {

/// The codes (in 32-bit lanes: 0..255 for fp8, -127..127 as two's complement for int8) of
/// x / scale, clamped to the code's range. fp8: round to nearest even on the float's bits (OCP
/// OFP8, the same result as torch's saturating cast); subnormal codes by adding a power of two
/// whose ulp is the subnormal step, so that the FPU rounds. NaN-aware lane sets give NaN codes for
/// NaN. The division is IEEE division, not a reciprocal multiply: bit-identical to x / scale in
/// the reference chain of libtorch ops.
template <Code C, class V>
APO_HD typename V::I encode(typename V::F x, typename V::F scale) {
  using I = typename V::I;
  const typename V::F y =
      V::clamp(V::fdiv(x, scale), V::fsplat(-code_max<C>()), V::fsplat(code_max<C>()));
  if constexpr (C == Code::int8) {
    return V::round_to_int(y);
  } else {
    constexpr int kShift = C == Code::e4m3 ? 20 : 21;               // float mantissa bits dropped
    constexpr std::uint32_t kRebias = C == Code::e4m3 ? 120 : 112;  // 127 - the code's bias
    constexpr std::uint32_t kSmallestNormal = C == Code::e4m3 ? 121 : 113;  // biased exponent
    const float magic = C == Code::e4m3 ? 0x1p14f : 0x1p7f;  // its ulp is the subnormal step
    const I bits = V::as_int(y);
    const I sign = V::template srl<24>(V::iand(bits, V::isplat(0x80000000u)));
    const I a = V::iand(bits, V::isplat(0x7FFFFFFFu));
    const I odd = V::iand(V::template srl<kShift>(a), V::isplat(1));
    const I normal = V::template srl<kShift>(
        V::iadd(V::iadd(a, V::isplat(((1u << kShift) / 2 - 1) - (kRebias << 23))), odd));
    const typename V::F m = V::fsplat(magic);
    const I subnormal = V::isub(V::as_int(V::fadd(V::as_float(a), m)), V::as_int(m));
    I code = V::select(V::lt(a, V::isplat(kSmallestNormal << 23)), subnormal, normal);
    if constexpr (V::kNanAware) {
      code = V::select(V::lt(V::isplat(kInfinityBits), a), V::isplat(0x7F), code);
    }
    return V::ior(code, sign);
  }
}

/// The values of fp8 codes given in 16-bit lanes (zero-extended bytes). The codes are moved into
/// an IEEE half's fields and converted as halves: E5M2 is exactly the high byte of a half
/// (infinities and NaN included); E4M3 read that way is its value times 2^-8 (subnormals
/// included), and only its NaN codes S.1111.111 need a select.
template <Code C, class V>
APO_HD typename V::F decode_fp8(typename V::H c) {
  using H = typename V::H;
  if constexpr (C == Code::e5m2) {
    return V::half_to_float(V::template hsll<8>(c));
  } else {
    const H magnitude = V::hand(c, V::hsplat(0x7F));
    const H sign = V::template hsll<8>(V::hand(c, V::hsplat(0x80)));
    const H half = V::hor(V::template hsll<7>(magnitude), sign);
    const typename V::F value = V::fmul(V::half_to_float(half), V::fsplat(256.0f));
    return V::select(V::heq(magnitude, V::hsplat(0x7F)), V::as_float(V::isplat(kQuietNanBits)),
                     value);
  }
}

/// The values of int8 codes given in 32-bit lanes (sign-extended).
template <class V>
APO_HD typename V::F decode_int8(typename V::I c) {
  return V::to_float_signed(c);
}

/// The code byte of element x with `scale`: what the CUDA encode kernel computes per element.
template <Elem E, Code C, class V = ScalarLanes>
APO_HD std::uint8_t encode_element(elem_storage_t<E> x, float scale) {
  return static_cast<std::uint8_t>(encode<C, V>(to_float<E>(x), scale));
}

/// The element that code byte `code` with `scale` decodes to: what the CUDA decode kernel
/// computes per element.
template <Code C, Elem E, class V = ScalarLanes>
APO_HD elem_storage_t<E> decode_element(std::uint8_t code, float scale) {
  float value;
  if constexpr (C == Code::int8) {
    value = decode_int8<V>(
        static_cast<std::uint32_t>(static_cast<std::int32_t>(static_cast<std::int8_t>(code))));
  } else {
    value = decode_fp8<C, V>(code);
  }
  return from_float<E>(value * scale);
}

}  // namespace apo::quant::detail::codec

// Portable row kernels: the arithmetic (abs, max, division, clamp, rounding, scaling) runs on
// ATen's Vectorized<float> in the library's baseline instruction set (NEON on aarch64, generic
// lanes the compiler vectorizes elsewhere); the fp8 bit packing uses the scalar codec of
// apo/quant/fp8.hpp. Used where the AVX2 set cannot run, and as the second implementation the
// tests hold the AVX2 one to.

#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <array>
#include <cmath>
#include <cstring>
#include <limits>

#include "apo/quant/fp8.hpp"
#include "cpu_rows.hpp"

namespace apo::quant::detail {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr std::int64_t kLanes = Vec::size();

template <Elem E>
struct Storage;
template <>
struct Storage<Elem::f32> {
  using type = float;
  static float load(float v) { return v; }
  static float store(float v) { return v; }
};
template <>
struct Storage<Elem::f16> {
  using type = std::uint16_t;
  static float load(std::uint16_t bits) { return c10::Half(bits, c10::Half::from_bits()); }
  static std::uint16_t store(float v) { return c10::Half(v).x; }
};
template <>
struct Storage<Elem::bf16> {
  using type = std::uint16_t;
  static float load(std::uint16_t bits) { return c10::BFloat16(bits, c10::BFloat16::from_bits()); }
  static std::uint16_t store(float v) { return c10::BFloat16(v).x; }
};

template <Code C>
constexpr float code_max() {
  return C == Code::e4m3 ? 448.0f : C == Code::e5m2 ? 57344.0f : 127.0f;
}

// Loads up to kLanes elements as floats; missing lanes are zero.
template <Elem E>
Vec load_block(const typename Storage<E>::type* x, std::int64_t count) {
  if constexpr (E == Elem::f32) {
    return Vec::loadu(x, count);
  } else {
    alignas(64) float block[kLanes] = {};
    for (std::int64_t j = 0; j < count; ++j) block[j] = Storage<E>::load(x[j]);
    return Vec::loadu(block);
  }
}

template <Elem E>
float amax_portable(const void* input, std::int64_t n) {
  const auto* x = static_cast<const typename Storage<E>::type*>(input);
  // at::vec::maximum propagates NaN, and infinity is its own maximum: one check at the end.
  Vec acc(0.0f);
  for (std::int64_t i = 0; i < n; i += kLanes) {
    acc = at::vec::maximum(acc, load_block<E>(x + i, std::min(kLanes, n - i)).abs());
  }
  alignas(64) float lanes[kLanes];
  acc.store(lanes);
  float result = 0.0f;
  for (float lane : lanes) {
    if (!(lane <= std::numeric_limits<float>::max())) return std::numeric_limits<float>::infinity();
    result = std::max(result, lane);
  }
  return result;
}

template <Elem E, Code C>
void encode_portable(const void* input, std::int64_t n, float scale, void* output) {
  const auto* x = static_cast<const typename Storage<E>::type*>(input);
  auto* out = static_cast<std::uint8_t*>(output);
  const Vec s(scale);
  const Vec lo(-code_max<C>());
  const Vec hi(code_max<C>());
  alignas(64) float block[kLanes];
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const std::int64_t count = std::min(kLanes, n - i);
    Vec y = at::vec::clamp(load_block<E>(x + i, count) / s, lo, hi);
    if constexpr (C == Code::int8) y = y.round();
    y.store(block);
    for (std::int64_t j = 0; j < count; ++j) {
      if constexpr (C == Code::e4m3) {
        out[i + j] = fp8::encode_e4m3(block[j]);
      } else if constexpr (C == Code::e5m2) {
        out[i + j] = fp8::encode_e5m2(block[j]);
      } else {
        out[i + j] = static_cast<std::uint8_t>(static_cast<std::int8_t>(block[j]));
      }
    }
  }
}

template <Code C>
const std::array<float, 256>& decode_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int code = 0; code < 256; ++code) {
      const auto c = static_cast<std::uint8_t>(code);
      t[code] = C == Code::e4m3   ? fp8::decode_e4m3(c)
                : C == Code::e5m2 ? fp8::decode_e5m2(c)
                                  : static_cast<float>(static_cast<std::int8_t>(c));
    }
    return t;
  }();
  return table;
}

template <Code C, Elem E>
void decode_portable(const void* input, std::int64_t n, float scale, void* output) {
  const auto* codes = static_cast<const std::uint8_t*>(input);
  auto* out = static_cast<typename Storage<E>::type*>(output);
  const auto& table = decode_table<C>();
  const Vec s(scale);
  alignas(64) float block[kLanes];
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const std::int64_t count = std::min(kLanes, n - i);
    for (std::int64_t j = 0; j < count; ++j) block[j] = table[codes[i + j]];
    (Vec::loadu(block, count) * s).store(block);
    for (std::int64_t j = 0; j < count; ++j) out[i + j] = Storage<E>::store(block[j]);
  }
}

template <Elem E>
constexpr EncodeFn encoder(Code c) {
  return c == Code::e4m3   ? &encode_portable<E, Code::e4m3>
         : c == Code::e5m2 ? &encode_portable<E, Code::e5m2>
                           : &encode_portable<E, Code::int8>;
}

template <Code C>
constexpr DecodeFn decoder(Elem e) {
  return e == Elem::f32   ? &decode_portable<C, Elem::f32>
         : e == Elem::f16 ? &decode_portable<C, Elem::f16>
                          : &decode_portable<C, Elem::bf16>;
}

const RowKernels kPortable = {
    "portable",
    {&amax_portable<Elem::f32>, &amax_portable<Elem::f16>, &amax_portable<Elem::bf16>},
    {
        {encoder<Elem::f32>(Code::e4m3), encoder<Elem::f32>(Code::e5m2),
         encoder<Elem::f32>(Code::int8)},
        {encoder<Elem::f16>(Code::e4m3), encoder<Elem::f16>(Code::e5m2),
         encoder<Elem::f16>(Code::int8)},
        {encoder<Elem::bf16>(Code::e4m3), encoder<Elem::bf16>(Code::e5m2),
         encoder<Elem::bf16>(Code::int8)},
    },
    {
        {decoder<Code::e4m3>(Elem::f32), decoder<Code::e4m3>(Elem::f16),
         decoder<Code::e4m3>(Elem::bf16)},
        {decoder<Code::e5m2>(Elem::f32), decoder<Code::e5m2>(Elem::f16),
         decoder<Code::e5m2>(Elem::bf16)},
        {decoder<Code::int8>(Elem::f32), decoder<Code::int8>(Elem::f16),
         decoder<Code::int8>(Elem::bf16)},
    },
};

}  // namespace

const RowKernels& portable_row_kernels() { return kPortable; }

}  // namespace apo::quant::detail

// AVX2 + F16C row kernels. Each function carries its own target attribute instead of the file
// being compiled with -mavx2: inline functions from headers stay baseline code, so nothing
// compiled for AVX2 can be picked by the linker for a caller on a CPU without it. That is also
// why these are intrinsics rather than ATen's Vectorized, whose AVX2 form needs the whole
// translation unit compiled for AVX2.
//
// Layout of every loop: 32 elements per step (four 8-lane vectors), and a tail of fewer than 32
// elements run through the same code on a zero-padded copy, so the tail rounds exactly like the
// body.

#include "cpu_rows.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#include <algorithm>
#include <cfloat>
#include <cstring>
#include <limits>

#define APO_AVX2 __attribute__((target("avx2,f16c")))

namespace apo::quant::detail {
namespace {

constexpr std::int64_t kStep = 32;

template <Elem E>
struct ElemTraits;
template <>
struct ElemTraits<Elem::f32> {
  using type = float;
};
template <>
struct ElemTraits<Elem::f16> {
  using type = std::uint16_t;
};
template <>
struct ElemTraits<Elem::bf16> {
  using type = std::uint16_t;
};

// ---- loads and stores of 8 lanes --------------------------------------------------------------

template <Elem E>
APO_AVX2 inline __m256 load8(const typename ElemTraits<E>::type* p) {
  if constexpr (E == Elem::f32) {
    return _mm256_loadu_ps(p);
  } else if constexpr (E == Elem::f16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
}

template <Elem E>
APO_AVX2 inline void store8(typename ElemTraits<E>::type* p, __m256 v) {
  if constexpr (E == Elem::f32) {
    _mm256_storeu_ps(p, v);
  } else if constexpr (E == Elem::f16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    // Round to nearest even as c10::BFloat16 does; NaN becomes the canonical 0x7FC0.
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(
        _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7FFF)), lsb), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), nan);
    const __m256i packed = _mm256_packus_epi32(rounded, _mm256_setzero_si256());
    const __m256i ordered = _mm256_permute4x64_epi64(packed, 0b00001000);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(ordered));
  }
}

// ---- amax ---------------------------------------------------------------------------------------

struct AmaxState {
  __m256 acc[4];
  __m256 bad;
};

template <Elem E>
APO_AVX2 inline void amax_step(const typename ElemTraits<E>::type* p, AmaxState& state) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256 finite_max = _mm256_set1_ps(FLT_MAX);
  for (int k = 0; k < 4; ++k) {
    const __m256 a = _mm256_and_ps(load8<E>(p + 8 * k), abs_mask);
    state.acc[k] = _mm256_max_ps(state.acc[k], a);
    // Not (a <= FLT_MAX): true for infinity and, being unordered, for NaN.
    state.bad = _mm256_or_ps(state.bad, _mm256_cmp_ps(a, finite_max, _CMP_NLE_UQ));
  }
}

template <Elem E>
APO_AVX2 float amax_avx2(const void* input, std::int64_t n) {
  using T = typename ElemTraits<E>::type;
  const T* x = static_cast<const T*>(input);
  AmaxState state;
  for (auto& acc : state.acc) acc = _mm256_setzero_ps();
  state.bad = _mm256_setzero_ps();
  std::int64_t i = 0;
  for (; i + kStep <= n; i += kStep) amax_step<E>(x + i, state);
  if (i < n) {
    T tail[kStep] = {};
    std::memcpy(tail, x + i, static_cast<std::size_t>(n - i) * sizeof(T));
    amax_step<E>(tail, state);
  }
  if (_mm256_movemask_ps(state.bad) != 0) return std::numeric_limits<float>::infinity();
  const __m256 m = _mm256_max_ps(_mm256_max_ps(state.acc[0], state.acc[1]),
                                 _mm256_max_ps(state.acc[2], state.acc[3]));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  return *std::max_element(lanes, lanes + 8);
}

// ---- encode -------------------------------------------------------------------------------------

// y is clamped to the format's range and finite. Mirrors fp8::encode_e4m3 lane by lane.
APO_AVX2 inline __m256i encode_e4m3_8(__m256 y) {
  const __m256i bits = _mm256_castps_si256(y);
  const __m256i sign = _mm256_srli_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(INT32_MIN)), 24);
  const __m256i a = _mm256_and_si256(bits, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(a, 20), _mm256_set1_epi32(1));
  const __m256i normal = _mm256_srli_epi32(
      _mm256_add_epi32(_mm256_add_epi32(a, _mm256_set1_epi32(0x7FFFF - (120 << 23))), odd), 20);
  const __m256 magic = _mm256_set1_ps(0x1p14f);
  const __m256i subnormal = _mm256_sub_epi32(
      _mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(a), magic)), _mm256_castps_si256(magic));
  const __m256i is_subnormal = _mm256_cmpgt_epi32(_mm256_set1_epi32(121 << 23), a);
  return _mm256_or_si256(_mm256_blendv_epi8(normal, subnormal, is_subnormal), sign);
}

APO_AVX2 inline __m256i encode_e5m2_8(__m256 y) {
  const __m256i bits = _mm256_castps_si256(y);
  const __m256i sign = _mm256_srli_epi32(_mm256_and_si256(bits, _mm256_set1_epi32(INT32_MIN)), 24);
  const __m256i a = _mm256_and_si256(bits, _mm256_set1_epi32(0x7FFFFFFF));
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(a, 21), _mm256_set1_epi32(1));
  const __m256i normal = _mm256_srli_epi32(
      _mm256_add_epi32(_mm256_add_epi32(a, _mm256_set1_epi32(0xFFFFF - (112 << 23))), odd), 21);
  const __m256 magic = _mm256_set1_ps(0x1p7f);
  const __m256i subnormal = _mm256_sub_epi32(
      _mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(a), magic)), _mm256_castps_si256(magic));
  const __m256i is_subnormal = _mm256_cmpgt_epi32(_mm256_set1_epi32(113 << 23), a);
  return _mm256_or_si256(_mm256_blendv_epi8(normal, subnormal, is_subnormal), sign);
}

APO_AVX2 inline __m256i encode_int8_8(__m256 y) {
  return _mm256_cvtps_epi32(_mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// Four vectors of 8 int32 lanes -> 32 bytes in order. The packs work within 128-bit lanes, so
// the dwords come out as c0lo c1lo c2lo c3lo | c0hi c1hi c2hi c3hi and the permute restores
// c0lo c0hi c1lo c1hi ...
template <bool Signed>
APO_AVX2 inline __m256i pack32(__m256i c0, __m256i c1, __m256i c2, __m256i c3) {
  __m256i bytes;
  if constexpr (Signed) {
    bytes = _mm256_packs_epi16(_mm256_packs_epi32(c0, c1), _mm256_packs_epi32(c2, c3));
  } else {
    bytes = _mm256_packus_epi16(_mm256_packus_epi32(c0, c1), _mm256_packus_epi32(c2, c3));
  }
  return _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

template <Code C>
constexpr float code_max() {
  return C == Code::e4m3 ? 448.0f : C == Code::e5m2 ? 57344.0f : 127.0f;
}

template <Elem E, Code C>
APO_AVX2 inline void encode_step(const typename ElemTraits<E>::type* p, __m256 scale,
                                 std::uint8_t* q) {
  const __m256 hi = _mm256_set1_ps(code_max<C>());
  const __m256 lo = _mm256_set1_ps(-code_max<C>());
  __m256i c[4];
  for (int k = 0; k < 4; ++k) {
    // Division, not a reciprocal multiply: bit-identical to x / scale in the reference chain.
    const __m256 y = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(load8<E>(p + 8 * k), scale), lo), hi);
    if constexpr (C == Code::e4m3) {
      c[k] = encode_e4m3_8(y);
    } else if constexpr (C == Code::e5m2) {
      c[k] = encode_e5m2_8(y);
    } else {
      c[k] = encode_int8_8(y);
    }
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q),
                      pack32<C == Code::int8>(c[0], c[1], c[2], c[3]));
}

template <Elem E, Code C>
APO_AVX2 void encode_avx2(const void* input, std::int64_t n, float scale, void* output) {
  using T = typename ElemTraits<E>::type;
  const T* x = static_cast<const T*>(input);
  auto* out = static_cast<std::uint8_t*>(output);
  const __m256 s = _mm256_set1_ps(scale);
  std::int64_t i = 0;
  for (; i + kStep <= n; i += kStep) encode_step<E, C>(x + i, s, out + i);
  if (i < n) {
    T tail[kStep] = {};
    std::uint8_t codes[kStep];
    const auto count = static_cast<std::size_t>(n - i);
    std::memcpy(tail, x + i, count * sizeof(T));
    encode_step<E, C>(tail, s, codes);
    std::memcpy(out + i, codes, count);
  }
}

// ---- decode -------------------------------------------------------------------------------------

template <Code C>
APO_AVX2 inline __m256 decode8(const std::uint8_t* p) {
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  if constexpr (C == Code::int8) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
  } else if constexpr (C == Code::e5m2) {
    // E5M2 is the high byte of an IEEE half: F16C converts it exactly, infinities and NaN too.
    return _mm256_cvtph_ps(_mm_unpacklo_epi8(_mm_setzero_si128(), bytes));
  } else {
    // E4M3's exponent and mantissa, shifted into an IEEE half's fields, read as a half 2^8 too
    // small (bias 15 instead of 7), subnormals included; F16C converts, a power of two rescales.
    // Only the NaN codes S.1111.111 need a blend.
    const __m128i c = _mm_cvtepu8_epi16(bytes);
    const __m128i magnitude = _mm_and_si128(c, _mm_set1_epi16(0x7F));
    const __m128i sign = _mm_slli_epi16(_mm_and_si128(c, _mm_set1_epi16(0x80)), 8);
    const __m128i half = _mm_or_si128(_mm_slli_epi16(magnitude, 7), sign);
    const __m256 value = _mm256_mul_ps(_mm256_cvtph_ps(half), _mm256_set1_ps(256.0f));
    const __m256 nan = _mm256_castsi256_ps(
        _mm256_cvtepi16_epi32(_mm_cmpeq_epi16(magnitude, _mm_set1_epi16(0x7F))));
    return _mm256_blendv_ps(value, _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN()), nan);
  }
}

template <Code C, Elem E>
APO_AVX2 inline void decode_step(const std::uint8_t* p, __m256 scale,
                                 typename ElemTraits<E>::type* q) {
  for (int k = 0; k < 4; ++k) store8<E>(q + 8 * k, _mm256_mul_ps(decode8<C>(p + 8 * k), scale));
}

template <Code C, Elem E>
APO_AVX2 void decode_avx2(const void* input, std::int64_t n, float scale, void* output) {
  using T = typename ElemTraits<E>::type;
  const auto* codes = static_cast<const std::uint8_t*>(input);
  T* out = static_cast<T*>(output);
  const __m256 s = _mm256_set1_ps(scale);
  std::int64_t i = 0;
  for (; i + kStep <= n; i += kStep) decode_step<C, E>(codes + i, s, out + i);
  if (i < n) {
    std::uint8_t tail[kStep] = {};
    T values[kStep];
    const auto count = static_cast<std::size_t>(n - i);
    std::memcpy(tail, codes + i, count);
    decode_step<C, E>(tail, s, values);
    std::memcpy(out + i, values, count * sizeof(T));
  }
}

template <Elem E>
constexpr EncodeFn encoders_for(Code c) {
  return c == Code::e4m3   ? &encode_avx2<E, Code::e4m3>
         : c == Code::e5m2 ? &encode_avx2<E, Code::e5m2>
                           : &encode_avx2<E, Code::int8>;
}

template <Code C>
constexpr DecodeFn decoders_for(Elem e) {
  return e == Elem::f32   ? &decode_avx2<C, Elem::f32>
         : e == Elem::f16 ? &decode_avx2<C, Elem::f16>
                          : &decode_avx2<C, Elem::bf16>;
}

const RowKernels kAvx2 = {
    "avx2",
    {&amax_avx2<Elem::f32>, &amax_avx2<Elem::f16>, &amax_avx2<Elem::bf16>},
    {
        {encoders_for<Elem::f32>(Code::e4m3), encoders_for<Elem::f32>(Code::e5m2),
         encoders_for<Elem::f32>(Code::int8)},
        {encoders_for<Elem::f16>(Code::e4m3), encoders_for<Elem::f16>(Code::e5m2),
         encoders_for<Elem::f16>(Code::int8)},
        {encoders_for<Elem::bf16>(Code::e4m3), encoders_for<Elem::bf16>(Code::e5m2),
         encoders_for<Elem::bf16>(Code::int8)},
    },
    {
        {decoders_for<Code::e4m3>(Elem::f32), decoders_for<Code::e4m3>(Elem::f16),
         decoders_for<Code::e4m3>(Elem::bf16)},
        {decoders_for<Code::e5m2>(Elem::f32), decoders_for<Code::e5m2>(Elem::f16),
         decoders_for<Code::e5m2>(Elem::bf16)},
        {decoders_for<Code::int8>(Elem::f32), decoders_for<Code::int8>(Elem::f16),
         decoders_for<Code::int8>(Elem::bf16)},
    },
};

}  // namespace

const RowKernels* avx2_row_kernels() { return &kAvx2; }

bool cpu_runs_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
}

}  // namespace apo::quant::detail

#else

namespace apo::quant::detail {

const RowKernels* avx2_row_kernels() { return nullptr; }
bool cpu_runs_avx2() { return false; }

}  // namespace apo::quant::detail

#endif

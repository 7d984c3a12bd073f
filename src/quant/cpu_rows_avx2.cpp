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
#include <cstring>
#include <limits>

#define APO_AVX2 __attribute__((target("avx2,f16c")))

namespace apo::quant::detail {
namespace {

constexpr std::int64_t kStep = 32;

template <Elem E>
using Storage = elem_storage_t<E>;

// ---- loads and stores of 8 lanes --------------------------------------------------------------

template <Elem E>
APO_AVX2 inline __m256 load8(const Storage<E>* p) {
  if constexpr (E == Elem::f32) {
    return _mm256_loadu_ps(p);
  } else if constexpr (E == Elem::f16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else {
    const __m256i wide =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
}

template <Elem E>
APO_AVX2 inline void store8(Storage<E>* p, __m256 v) {
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

// amax as the integer max of magnitude bits (see magnitude_from_bits): float32 in 32-bit
// lanes, 16-bit floats in their own 16-bit lanes, without converting them.
template <Elem E>
APO_AVX2 inline void amax_step(const Storage<E>* p, __m256i acc[4]) {
  if constexpr (E == Elem::f32) {
    const __m256i magnitude_mask = _mm256_set1_epi32(0x7FFFFFFF);
    for (int k = 0; k < 4; ++k) {
      const __m256i bits = _mm256_castps_si256(_mm256_loadu_ps(p + 8 * k));
      acc[k] = _mm256_max_epu32(acc[k], _mm256_and_si256(bits, magnitude_mask));
    }
  } else {
    const __m256i magnitude_mask = _mm256_set1_epi16(0x7FFF);
    for (int k = 0; k < 2; ++k) {
      const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16 * k));
      acc[k] = _mm256_max_epu16(acc[k], _mm256_and_si256(bits, magnitude_mask));
    }
  }
}

template <Elem E>
APO_AVX2 float amax_avx2(const void* input, std::int64_t n) {
  const auto* x = static_cast<const Storage<E>*>(input);
  __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                    _mm256_setzero_si256()};
  std::int64_t i = 0;
  for (; i + kStep <= n; i += kStep) amax_step<E>(x + i, acc);
  if (i < n) {
    Storage<E> tail[kStep] = {};
    std::memcpy(tail, x + i, static_cast<std::size_t>(n - i) * sizeof(Storage<E>));
    amax_step<E>(tail, acc);
  }
  alignas(32) Storage<E> lanes[4][32 / sizeof(Storage<E>)];
  for (int k = 0; k < 4; ++k) _mm256_store_si256(reinterpret_cast<__m256i*>(lanes[k]), acc[k]);
  std::uint32_t largest = 0;
  for (const auto& lane : lanes) {
    for (Storage<E> v : lane) {
      std::uint32_t bits;
      if constexpr (E == Elem::f32) {
        std::memcpy(&bits, &v, sizeof bits);
      } else {
        bits = v;
      }
      largest = std::max(largest, bits);
    }
  }
  return magnitude_from_bits<E>(largest);
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
  const __m256i subnormal =
      _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(a), magic)),
                       _mm256_castps_si256(magic));
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
  const __m256i subnormal =
      _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(a), magic)),
                       _mm256_castps_si256(magic));
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

// One prefetch per cache line of the next row, for the kStep elements at the same offset.
template <Elem E>
APO_AVX2 inline void prefetch_step(const Storage<E>* next) {
  constexpr std::size_t kBytes = kStep * sizeof(Storage<E>);
  const char* line = reinterpret_cast<const char*>(next);
  for (std::size_t offset = 0; offset < kBytes; offset += 64) {
    _mm_prefetch(line + offset, _MM_HINT_T0);
  }
}

template <Elem E, Code C>
APO_AVX2 inline void encode_step(const Storage<E>* p, __m256 scale, std::uint8_t* q) {
  const __m256 hi = _mm256_set1_ps(code_max<C>());
  const __m256 lo = _mm256_set1_ps(-code_max<C>());
  __m256i c[4];
  for (int k = 0; k < 4; ++k) {
    // Division, not a reciprocal multiply: bit-identical to x / scale in the reference chain.
    const __m256 y =
        _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(load8<E>(p + 8 * k), scale), lo), hi);
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
APO_AVX2 void encode_avx2(const void* input, std::int64_t n, float scale, void* output,
                          const void* next_row) {
  const auto* x = static_cast<const Storage<E>*>(input);
  const auto* next = static_cast<const Storage<E>*>(next_row);
  auto* out = static_cast<std::uint8_t*>(output);
  const __m256 s = _mm256_set1_ps(scale);
  std::int64_t i = 0;
  if (next != nullptr) {
    for (; i + kStep <= n; i += kStep) {
      prefetch_step<E>(next + i);
      encode_step<E, C>(x + i, s, out + i);
    }
  }
  for (; i + kStep <= n; i += kStep) encode_step<E, C>(x + i, s, out + i);
  if (i < n) {
    Storage<E> tail[kStep] = {};
    std::uint8_t codes[kStep];
    const auto count = static_cast<std::size_t>(n - i);
    std::memcpy(tail, x + i, count * sizeof(Storage<E>));
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
APO_AVX2 inline void decode_step(const std::uint8_t* p, __m256 scale, Storage<E>* q) {
  for (int k = 0; k < 4; ++k) store8<E>(q + 8 * k, _mm256_mul_ps(decode8<C>(p + 8 * k), scale));
}

template <Code C, Elem E>
APO_AVX2 void decode_avx2(const void* input, std::int64_t n, float scale, void* output) {
  using T = Storage<E>;
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

const RowKernels* avx2_row_kernels() {
  return &kAvx2;
}

bool cpu_runs_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
}

}  // namespace apo::quant::detail

#else

namespace apo::quant::detail {

const RowKernels* avx2_row_kernels() {
  return nullptr;
}
bool cpu_runs_avx2() {
  return false;
}

}  // namespace apo::quant::detail

#endif

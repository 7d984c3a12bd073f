// AVX-512 row kernels (F, BW, VL, DQ): the AVX2 kernels' arithmetic on 16 lanes, with mask
// registers for the blends and vpmov* for the narrowing stores. Function-level target
// attributes, as in cpu_rows_avx2.cpp and for the same reason. On CPUs with full-width AVX-512
// units this halves the instructions per element of the compute-bound fp8 encoder.
//
// Every loop takes 32 elements per step (two 16-lane vectors); a tail of fewer runs through the
// same code on a zero-padded copy.

#include "cpu_rows.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>

#define APO_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c")))

namespace apo::quant::detail {
namespace {

constexpr std::int64_t kStep = 32;

template <Elem E>
using Storage = elem_storage_t<E>;

// ---- loads and stores of 16 lanes -------------------------------------------------------------

template <Elem E>
APO_AVX512 inline __m512 load16(const Storage<E>* p) {
  if constexpr (E == Elem::f32) {
    return _mm512_loadu_ps(p);
  } else if constexpr (E == Elem::f16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  } else {
    const __m512i wide =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
}

template <Elem E>
APO_AVX512 inline void store16(Storage<E>* p, __m512 v) {
  if constexpr (E == Elem::f32) {
    _mm512_storeu_ps(p, v);
  } else if constexpr (E == Elem::f16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    // Round to nearest even as c10::BFloat16 does; NaN becomes the canonical 0x7FC0.
    const __m512i bits = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), lsb), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(rounded));
  }
}

// ---- amax: integer max of magnitude bits, 16-bit floats in 16-bit lanes (as in the AVX2 file)
// ----

// The all-lanes masked forms of max: GCC 12's _mm512_max_epu32/16 pass an undefined source to
// the same builtins and warn (GCC bug 105593); the instruction is the same.
template <Elem E>
APO_AVX512 inline void amax_step(const Storage<E>* p, __m512i acc[2]) {
  if constexpr (E == Elem::f32) {
    const __m512i magnitude_mask = _mm512_set1_epi32(0x7FFFFFFF);
    for (int k = 0; k < 2; ++k) {
      const __m512i bits = _mm512_castps_si512(_mm512_loadu_ps(p + 16 * k));
      acc[k] =
          _mm512_mask_max_epu32(acc[k], 0xFFFF, acc[k], _mm512_and_si512(bits, magnitude_mask));
    }
  } else {
    const __m512i bits = _mm512_loadu_si512(p);
    acc[0] = _mm512_mask_max_epu16(acc[0], 0xFFFFFFFF, acc[0],
                                   _mm512_and_si512(bits, _mm512_set1_epi16(0x7FFF)));
  }
}

template <Elem E>
APO_AVX512 float amax_avx512(const void* input, std::int64_t n) {
  const auto* x = static_cast<const Storage<E>*>(input);
  __m512i acc[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
  std::int64_t i = 0;
  for (; i + kStep <= n; i += kStep) amax_step<E>(x + i, acc);
  if (i < n) {
    Storage<E> tail[kStep] = {};
    std::memcpy(tail, x + i, static_cast<std::size_t>(n - i) * sizeof(Storage<E>));
    amax_step<E>(tail, acc);
  }
  alignas(64) Storage<E> lanes[2][64 / sizeof(Storage<E>)];
  for (int k = 0; k < 2; ++k) _mm512_store_si512(lanes[k], acc[k]);
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

// The code of 16 values y = x / scale (finite): fp8::encode_e4m3 / encode_e5m2 lane by lane on
// the clamped magnitude, then the sign; int8 rounds to nearest even. 32-bit lanes out.
template <Code C>
APO_AVX512 inline __m512i encode16(__m512 y) {
  if constexpr (C == Code::int8) {
    const __m512 clamped =
        _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(-127.0f)), _mm512_set1_ps(127.0f));
    return _mm512_cvt_roundps_epi32(clamped, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  } else {
    constexpr int kShift = C == Code::e4m3 ? 20 : 21;  // float mantissa bits dropped
    constexpr int kRebias = C == Code::e4m3 ? 120 : 112;
    constexpr int kSmallestNormal = C == Code::e4m3 ? 121 : 113;  // biased float exponents
    const float magic = C == Code::e4m3 ? 0x1p14f : 0x1p7f;       // ulp = the subnormal step
    const __m512i bits = _mm512_castps_si512(y);
    // Clamp the magnitude: integer min on the bits is float min for non-negative floats.
    __m512i a = _mm512_and_si512(bits, _mm512_set1_epi32(0x7FFFFFFF));
    a = _mm512_min_epu32(a, _mm512_castps_si512(_mm512_set1_ps(code_max<C>())));
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(a, kShift), _mm512_set1_epi32(1));
    const __m512i normal = _mm512_srli_epi32(
        _mm512_add_epi32(
            _mm512_add_epi32(a, _mm512_set1_epi32(((1 << kShift) / 2 - 1) - (kRebias << 23))), odd),
        kShift);
    const __m512 m = _mm512_set1_ps(magic);
    const __m512i subnormal = _mm512_sub_epi32(
        _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(a), m)), _mm512_castps_si512(m));
    const __mmask16 is_subnormal =
        _mm512_cmplt_epu32_mask(a, _mm512_set1_epi32(kSmallestNormal << 23));
    const __m512i code = _mm512_mask_mov_epi32(normal, is_subnormal, subnormal);
    // code | ((bits >> 24) & 0x80)
    return _mm512_ternarylogic_epi32(code, _mm512_srli_epi32(bits, 24), _mm512_set1_epi32(0x80),
                                     0xF8);
  }
}

template <Elem E>
APO_AVX512 inline void prefetch_step(const Storage<E>* next) {
  constexpr std::size_t kBytes = kStep * sizeof(Storage<E>);
  const char* line = reinterpret_cast<const char*>(next);
  for (std::size_t offset = 0; offset < kBytes; offset += 64) {
    _mm_prefetch(line + offset, _MM_HINT_T0);
  }
}

template <Elem E, Code C>
APO_AVX512 inline void encode_step(const Storage<E>* p, __m512 scale, std::uint8_t* q) {
  for (int k = 0; k < 2; ++k) {
    // Division, not a reciprocal multiply: bit-identical to x / scale in the reference chain.
    const __m512i code = encode16<C>(_mm512_div_ps(load16<E>(p + 16 * k), scale));
    // Codes are 0..255 (fp8) or -127..127 (int8): truncating to the low byte is exact.
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * k), _mm512_cvtepi32_epi8(code));
  }
}

template <Elem E, Code C>
APO_AVX512 void encode_avx512(const void* input, std::int64_t n, float scale, void* output,
                              const void* next_row) {
  const auto* x = static_cast<const Storage<E>*>(input);
  const auto* next = static_cast<const Storage<E>*>(next_row);
  auto* out = static_cast<std::uint8_t*>(output);
  const __m512 s = _mm512_set1_ps(scale);
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
APO_AVX512 inline __m512 decode16(const std::uint8_t* p) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (C == Code::int8) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
  } else if constexpr (C == Code::e5m2) {
    // E5M2 is the high byte of an IEEE half.
    return _mm512_cvtph_ps(_mm256_slli_epi16(_mm256_cvtepu8_epi16(bytes), 8));
  } else {
    // E4M3 shifted into a half's fields is the value times 2^-8 (see cpu_rows_avx2.cpp).
    const __m256i c = _mm256_cvtepu8_epi16(bytes);
    const __m256i magnitude = _mm256_and_si256(c, _mm256_set1_epi16(0x7F));
    const __m256i sign = _mm256_slli_epi16(_mm256_and_si256(c, _mm256_set1_epi16(0x80)), 8);
    const __m256i half = _mm256_or_si256(_mm256_slli_epi16(magnitude, 7), sign);
    const __m512 value = _mm512_mul_ps(_mm512_cvtph_ps(half), _mm512_set1_ps(256.0f));
    const __mmask16 nan = _mm256_cmpeq_epi16_mask(magnitude, _mm256_set1_epi16(0x7F));
    return _mm512_mask_mov_ps(value, nan, _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()));
  }
}

template <Code C, Elem E>
APO_AVX512 inline void decode_step(const std::uint8_t* p, __m512 scale, Storage<E>* q) {
  for (int k = 0; k < 2; ++k) store16<E>(q + 16 * k, _mm512_mul_ps(decode16<C>(p + 16 * k), scale));
}

template <Code C, Elem E>
APO_AVX512 void decode_avx512(const void* input, std::int64_t n, float scale, void* output) {
  const auto* codes = static_cast<const std::uint8_t*>(input);
  auto* out = static_cast<Storage<E>*>(output);
  const __m512 s = _mm512_set1_ps(scale);
  std::int64_t i = 0;
  for (; i + kStep <= n; i += kStep) decode_step<C, E>(codes + i, s, out + i);
  if (i < n) {
    std::uint8_t tail[kStep] = {};
    Storage<E> values[kStep];
    const auto count = static_cast<std::size_t>(n - i);
    std::memcpy(tail, codes + i, count);
    decode_step<C, E>(tail, s, values);
    std::memcpy(out + i, values, count * sizeof(Storage<E>));
  }
}

template <Elem E>
constexpr EncodeFn encoders_for(Code c) {
  return c == Code::e4m3   ? &encode_avx512<E, Code::e4m3>
         : c == Code::e5m2 ? &encode_avx512<E, Code::e5m2>
                           : &encode_avx512<E, Code::int8>;
}

template <Code C>
constexpr DecodeFn decoders_for(Elem e) {
  return e == Elem::f32   ? &decode_avx512<C, Elem::f32>
         : e == Elem::f16 ? &decode_avx512<C, Elem::f16>
                          : &decode_avx512<C, Elem::bf16>;
}

const RowKernels kAvx512 = {
    "avx512",
    {&amax_avx512<Elem::f32>, &amax_avx512<Elem::f16>, &amax_avx512<Elem::bf16>},
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

const RowKernels* avx512_row_kernels() {
  return &kAvx512;
}

bool cpu_runs_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("f16c");
}

}  // namespace apo::quant::detail

#else

namespace apo::quant::detail {

const RowKernels* avx512_row_kernels() {
  return nullptr;
}
bool cpu_runs_avx512() {
  return false;
}

}  // namespace apo::quant::detail

#endif

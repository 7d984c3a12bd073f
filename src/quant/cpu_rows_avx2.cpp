// AVX2 + F16C lane set for the lane-generic row kernels (cpu_rows_generic.hpp): 8 float lanes,
// 16-bit floats converted by F16C (half) or by shifts (bfloat16). The file is not compiled with
// -mavx2: the target is switched on only around the lane set and the generic templates, after
// every other header, so inline functions from headers stay baseline code and nothing compiled
// for AVX2 can be picked by the linker for a caller on a CPU without it (every function compiled
// for AVX2 here is a template over a lane set of this file's anonymous namespace).

#include "cpu_rows.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,f16c")
#endif

#include "cpu_rows_generic.hpp"

namespace apo::quant::detail {
namespace {

struct Avx2Lanes {
  using F = __m256;
  using I = __m256i;
  using H = __m128i;  // 8 lanes of 16 bits
  using M = __m256i;
  static constexpr int kLanes = 8;
  static constexpr bool kNanAware = false;

  template <Elem E>
  static F load(const elem_storage_t<E>* p) {
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
  static void store(elem_storage_t<E>* p, F v) {
    if constexpr (E == Elem::f32) {
      _mm256_storeu_ps(p, v);
    } else if constexpr (E == Elem::f16) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                       _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    } else {
      // codec::float_to_bf16 lane by lane: nearest even, NaN -> 0x7FC0.
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

  static F fsplat(float v) { return _mm256_set1_ps(v); }
  static I isplat(std::uint32_t v) { return _mm256_set1_epi32(static_cast<int>(v)); }
  static I as_int(F v) { return _mm256_castps_si256(v); }
  static F as_float(I v) { return _mm256_castsi256_ps(v); }
  static F fadd(F a, F b) { return _mm256_add_ps(a, b); }
  static F fmul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fdiv(F a, F b) { return _mm256_div_ps(a, b); }
  static F clamp(F v, F lo, F hi) { return _mm256_min_ps(_mm256_max_ps(v, lo), hi); }
  static I iand(I a, I b) { return _mm256_and_si256(a, b); }
  static I ior(I a, I b) { return _mm256_or_si256(a, b); }
  static I iadd(I a, I b) { return _mm256_add_epi32(a, b); }
  static I isub(I a, I b) { return _mm256_sub_epi32(a, b); }
  template <int K>
  static I srl(I a) {
    return _mm256_srli_epi32(a, K);
  }
  template <int K>
  static I sll(I a) {
    return _mm256_slli_epi32(a, K);
  }
  static M lt(I a, I b) { return _mm256_cmpgt_epi32(b, a); }
  static M eq(I a, I b) { return _mm256_cmpeq_epi32(a, b); }
  static I select(M m, I a, I b) { return _mm256_blendv_epi8(b, a, m); }
  static F select(M m, F a, F b) { return _mm256_blendv_ps(b, a, _mm256_castsi256_ps(m)); }
  static I round_to_int(F v) {
    return _mm256_cvtps_epi32(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static F to_float_signed(I v) { return _mm256_cvtepi32_ps(v); }
  static H hsplat(std::uint32_t v) { return _mm_set1_epi16(static_cast<short>(v)); }
  static H hand(H a, H b) { return _mm_and_si128(a, b); }
  static H hor(H a, H b) { return _mm_or_si128(a, b); }
  template <int K>
  static H hsll(H a) {
    return _mm_slli_epi16(a, K);
  }
  static M heq(H a, H b) { return _mm256_cvtepi16_epi32(_mm_cmpeq_epi16(a, b)); }
  static F half_to_float(H h) { return _mm256_cvtph_ps(h); }

  static H load_codes16(const std::uint8_t* p) {
    return _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  }
  template <bool Signed>
  static I load_codes(const std::uint8_t* p) {
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return Signed ? _mm256_cvtepi8_epi32(bytes) : _mm256_cvtepu8_epi32(bytes);
  }

  // Four vectors of 8 int32 lanes -> 32 bytes in order. The packs work within 128-bit lanes, so
  // the dwords come out as c0lo c1lo c2lo c3lo | c0hi c1hi c2hi c3hi and the permute restores
  // c0lo c0hi c1lo c1hi ...
  template <bool Signed>
  static void store_codes(std::uint8_t* q, const I (&c)[4]) {
    __m256i bytes;
    if constexpr (Signed) {
      bytes = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
    } else {
      bytes = _mm256_packus_epi16(_mm256_packus_epi32(c[0], c[1]), _mm256_packus_epi32(c[2], c[3]));
    }
    _mm256_storeu_si256(
        reinterpret_cast<__m256i*>(q),
        _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }

  // amax: the integer max of magnitude bits, float32 in 32-bit lanes, 16-bit floats in their own
  // 16-bit lanes without converting them.
  template <Elem E>
  struct AmaxAcc {
    __m256i v[4];
  };
  template <Elem E>
  static AmaxAcc<E> amax_init() {
    return {{_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
             _mm256_setzero_si256()}};
  }
  template <Elem E>
  static void amax_step(const elem_storage_t<E>* p, AmaxAcc<E>& acc) {
    if constexpr (E == Elem::f32) {
      const __m256i mask = _mm256_set1_epi32(0x7FFFFFFF);
      for (int k = 0; k < 4; ++k) {
        const __m256i bits = _mm256_castps_si256(_mm256_loadu_ps(p + 8 * k));
        acc.v[k] = _mm256_max_epu32(acc.v[k], _mm256_and_si256(bits, mask));
      }
    } else {
      const __m256i mask = _mm256_set1_epi16(0x7FFF);
      for (int k = 0; k < 2; ++k) {
        const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16 * k));
        acc.v[k] = _mm256_max_epu16(acc.v[k], _mm256_and_si256(bits, mask));
      }
    }
  }
  template <Elem E>
  static std::uint32_t amax_reduce(const AmaxAcc<E>& acc) {
    alignas(32) elem_storage_t<E> lanes[4][32 / sizeof(elem_storage_t<E>)];
    for (int k = 0; k < 4; ++k) _mm256_store_si256(reinterpret_cast<__m256i*>(lanes[k]), acc.v[k]);
    std::uint32_t largest = 0;
    for (const auto& lane : lanes) {
      for (elem_storage_t<E> v : lane) {
        const std::uint32_t bits = codec::magnitude_bits<E>(v);
        largest = bits > largest ? bits : largest;
      }
    }
    return largest;
  }
};

constexpr RowKernels kAvx2 = rows::row_kernels<Avx2Lanes>("avx2");

}  // namespace
}  // namespace apo::quant::detail

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace apo::quant::detail {

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

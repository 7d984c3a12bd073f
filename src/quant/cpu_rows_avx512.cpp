// AVX-512 lane set (F, BW, VL, DQ) for the lane-generic row kernels (cpu_rows_generic.hpp): 16
// float lanes, mask registers for the selects, vpmov* for the narrowing stores. On CPUs with
// full-width AVX-512 units this halves the instructions per element of the compute-bound fp8
// encoder. The target is switched on around the lane set only, as in cpu_rows_avx2.cpp and for
// the same reason.

#include "cpu_rows.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#if defined(__clang__)
#pragma clang attribute push( \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c")
// GCC 12 warns inside its own AVX-512 intrinsics (their "undefined" sources, GCC bug 105593) when
// they are inlined into functions compiled under a target pragma.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "cpu_rows_generic.hpp"

namespace apo::quant::detail {
namespace {

struct Avx512Lanes {
  using F = __m512;
  using I = __m512i;
  using H = __m256i;  // 16 lanes of 16 bits
  using M = __mmask16;
  static constexpr int kLanes = 16;
  static constexpr bool kNanAware = false;

  template <Elem E>
  static F load(const elem_storage_t<E>* p) {
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
  static void store(elem_storage_t<E>* p, F v) {
    if constexpr (E == Elem::f32) {
      _mm512_storeu_ps(p, v);
    } else if constexpr (E == Elem::f16) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                          _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    } else {
      // codec::float_to_bf16 lane by lane: nearest even, NaN -> 0x7FC0.
      const __m512i bits = _mm512_castps_si512(v);
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
      __m512i rounded = _mm512_srli_epi32(
          _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), lsb), 16);
      const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7FC0));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(rounded));
    }
  }

  static F fsplat(float v) { return _mm512_set1_ps(v); }
  static I isplat(std::uint32_t v) { return _mm512_set1_epi32(static_cast<int>(v)); }
  static I as_int(F v) { return _mm512_castps_si512(v); }
  static F as_float(I v) { return _mm512_castsi512_ps(v); }
  static F fadd(F a, F b) { return _mm512_add_ps(a, b); }
  static F fmul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fdiv(F a, F b) { return _mm512_div_ps(a, b); }
  static F clamp(F v, F lo, F hi) { return _mm512_min_ps(_mm512_max_ps(v, lo), hi); }
  static I iand(I a, I b) { return _mm512_and_si512(a, b); }
  static I ior(I a, I b) { return _mm512_or_si512(a, b); }
  static I iadd(I a, I b) { return _mm512_add_epi32(a, b); }
  static I isub(I a, I b) { return _mm512_sub_epi32(a, b); }
  template <int K>
  static I srl(I a) {
    return _mm512_srli_epi32(a, K);
  }
  template <int K>
  static I sll(I a) {
    return _mm512_slli_epi32(a, K);
  }
  static M lt(I a, I b) { return _mm512_cmplt_epi32_mask(a, b); }
  static M eq(I a, I b) { return _mm512_cmpeq_epi32_mask(a, b); }
  static I select(M m, I a, I b) { return _mm512_mask_mov_epi32(b, m, a); }
  static F select(M m, F a, F b) { return _mm512_mask_mov_ps(b, m, a); }
  static I round_to_int(F v) {
    return _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static F to_float_signed(I v) { return _mm512_cvtepi32_ps(v); }
  static H hsplat(std::uint32_t v) { return _mm256_set1_epi16(static_cast<short>(v)); }
  static H hand(H a, H b) { return _mm256_and_si256(a, b); }
  static H hor(H a, H b) { return _mm256_or_si256(a, b); }
  template <int K>
  static H hsll(H a) {
    return _mm256_slli_epi16(a, K);
  }
  static M heq(H a, H b) { return _mm256_cmpeq_epi16_mask(a, b); }
  static F half_to_float(H h) { return _mm512_cvtph_ps(h); }

  static H load_codes16(const std::uint8_t* p) {
    return _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }

  template <bool Signed>
  static I load_codes(const std::uint8_t* p) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return Signed ? _mm512_cvtepi8_epi32(bytes) : _mm512_cvtepu8_epi32(bytes);
  }

  // Codes are 0..255 (fp8) or -127..127 (int8): truncating each lane to its low byte is exact.
  template <bool Signed>
  static void store_codes(std::uint8_t* q, const I (&c)[2]) {
    for (int k = 0; k < 2; ++k) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * k), _mm512_cvtepi32_epi8(c[k]));
    }
  }

  // amax: the integer max of magnitude bits, 16-bit floats in 16-bit lanes. The all-lanes masked
  // forms of max: GCC 12's _mm512_max_epu32/16 pass an undefined source to the same builtins and
  // warn (GCC bug 105593); the instruction is the same.
  template <Elem E>
  struct AmaxAcc {
    __m512i v[2];
  };
  template <Elem E>
  static AmaxAcc<E> amax_init() {
    return {{_mm512_setzero_si512(), _mm512_setzero_si512()}};
  }
  template <Elem E>
  static void amax_step(const elem_storage_t<E>* p, AmaxAcc<E>& acc) {
    if constexpr (E == Elem::f32) {
      const __m512i mask = _mm512_set1_epi32(0x7FFFFFFF);
      for (int k = 0; k < 2; ++k) {
        const __m512i bits = _mm512_castps_si512(_mm512_loadu_ps(p + 16 * k));
        acc.v[k] = _mm512_mask_max_epu32(acc.v[k], 0xFFFF, acc.v[k], _mm512_and_si512(bits, mask));
      }
    } else {
      const __m512i bits = _mm512_loadu_si512(p);
      acc.v[0] = _mm512_mask_max_epu16(acc.v[0], 0xFFFFFFFF, acc.v[0],
                                       _mm512_and_si512(bits, _mm512_set1_epi16(0x7FFF)));
    }
  }
  template <Elem E>
  static std::uint32_t amax_reduce(const AmaxAcc<E>& acc) {
    alignas(64) elem_storage_t<E> lanes[2][64 / sizeof(elem_storage_t<E>)];
    for (int k = 0; k < 2; ++k) _mm512_store_si512(lanes[k], acc.v[k]);
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

constexpr RowKernels kAvx512 = rows::row_kernels<Avx512Lanes>("avx512");

}  // namespace
}  // namespace apo::quant::detail

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

namespace apo::quant::detail {

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

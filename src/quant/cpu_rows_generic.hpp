#pragma once

// The row loops of the CPU kernels, written once over a lane set V (see codec_lanes.hpp for the
// element algorithms and what V provides). Beyond those, a row-loop lane set provides:
//   load<E>(p), store<E>(p, F)           kLanes elements as floats, and back (nearest even)
//   load_codes<Signed>(p)                kLanes code bytes in 32-bit lanes (int8: sign-extended)
//   load_codes16(p)                      kLanes code bytes in 16-bit lanes (fp8)
//   decode_fp8_lookup<C>(p) (optional)   kLanes fp8 codes' values by table
//   store_codes<Signed>(q, c)            kStep / kLanes vectors of codes as kStep bytes
//   AmaxAcc<E>, amax_init<E>(),          the integer max of magnitude bits over kStep elements
//   amax_step<E>(p, acc), amax_reduce<E>(acc)
//
// Every loop takes kStep elements per step; a tail of fewer runs through the same code on a
// zero-padded copy, so that the tail rounds exactly like the body.
//
// The x86 files include this header (and codec_lanes.hpp) between a push and a pop of their
// target, after every other header: every function here is a template over V, so each
// instruction set gets its own instantiations and none is shared with baseline code. Standard
// library calls are avoided for the same reason (builtins instead).

#include "codec_lanes.hpp"
#include "cpu_rows.hpp"

// The steps are inlined into the row loops whatever the compiler's size limits say: a call per
// 32 elements would cost as much as the step itself.
#define APO_ROW_STEP inline __attribute__((always_inline))

namespace apo::quant::detail::rows {

inline constexpr std::int64_t kStep = 32;

template <class V, Elem E>
float amax(const void* input, std::int64_t n) {
  using T = elem_storage_t<E>;
  const auto* x = static_cast<const T*>(input);
  typename V::template AmaxAcc<E> acc = V::template amax_init<E>();
  std::int64_t i = 0;
  for (; i + kStep <= n; i += kStep) V::template amax_step<E>(x + i, acc);
  if (i < n) {
    T tail[kStep] = {};
    __builtin_memcpy(tail, x + i, static_cast<std::size_t>(n - i) * sizeof(T));
    V::template amax_step<E>(tail, acc);
  }
  return codec::magnitude_from_bits<E>(V::template amax_reduce<E>(acc));
}

// One prefetch per cache line of the next row, for the kStep elements at the same offset.
template <class V, Elem E>
APO_ROW_STEP void prefetch_step(const elem_storage_t<E>* next) {
  constexpr std::size_t kBytes = kStep * sizeof(elem_storage_t<E>);
  const char* line = reinterpret_cast<const char*>(next);
  for (std::size_t offset = 0; offset < kBytes; offset += 64) {
    __builtin_prefetch(line + offset, 0, 3);
  }
}

template <class V, Elem E, Code C>
APO_ROW_STEP void encode_step(const elem_storage_t<E>* p, typename V::F scale, std::uint8_t* q) {
  constexpr int kVectors = static_cast<int>(kStep) / V::kLanes;
  typename V::I codes[kVectors];
  for (int k = 0; k < kVectors; ++k) {
    codes[k] = codec::encode<C, V>(V::template load<E>(p + k * V::kLanes), scale);
  }
  V::template store_codes<C == Code::int8>(q, codes);
}

template <class V, Elem E, Code C>
void encode(const void* input, std::int64_t n, float scale, void* output, const void* next_row) {
  using T = elem_storage_t<E>;
  const auto* x = static_cast<const T*>(input);
  const auto* next = static_cast<const T*>(next_row);
  auto* out = static_cast<std::uint8_t*>(output);
  const typename V::F s = V::fsplat(scale);
  std::int64_t i = 0;
  if (next != nullptr) {
    for (; i + kStep <= n; i += kStep) {
      prefetch_step<V, E>(next + i);
      encode_step<V, E, C>(x + i, s, out + i);
    }
  }
  for (; i + kStep <= n; i += kStep) encode_step<V, E, C>(x + i, s, out + i);
  if (i < n) {
    T tail[kStep] = {};
    std::uint8_t codes[kStep];
    const auto count = static_cast<std::size_t>(n - i);
    __builtin_memcpy(tail, x + i, count * sizeof(T));
    encode_step<V, E, C>(tail, s, codes);
    __builtin_memcpy(out + i, codes, count);
  }
}

// The values of kLanes codes. A lane set may look fp8 codes up (decode_fp8_lookup<C>, a table
// filled by the same algorithm) where a lookup is cheaper than the arithmetic: the one-lane set.
template <class V, Code C>
APO_ROW_STEP typename V::F decode_codes(const std::uint8_t* p) {
  if constexpr (C == Code::int8) {
    return codec::decode_int8<V>(V::template load_codes<true>(p));
  } else if constexpr (requires { V::template decode_fp8_lookup<C>(p); }) {
    return V::template decode_fp8_lookup<C>(p);
  } else {
    return codec::decode_fp8<C, V>(V::load_codes16(p));
  }
}

template <class V, Code C, Elem E>
APO_ROW_STEP void decode_step(const std::uint8_t* p, typename V::F scale, elem_storage_t<E>* q) {
  for (int k = 0; k < static_cast<int>(kStep) / V::kLanes; ++k) {
    V::template store<E>(q + k * V::kLanes, V::fmul(decode_codes<V, C>(p + k * V::kLanes), scale));
  }
}

template <class V, Code C, Elem E>
void decode(const void* input, std::int64_t n, float scale, void* output) {
  using T = elem_storage_t<E>;
  const auto* codes = static_cast<const std::uint8_t*>(input);
  auto* out = static_cast<T*>(output);
  const typename V::F s = V::fsplat(scale);
  std::int64_t i = 0;
  for (; i + kStep <= n; i += kStep) decode_step<V, C, E>(codes + i, s, out + i);
  if (i < n) {
    std::uint8_t tail[kStep] = {};
    T values[kStep];
    const auto count = static_cast<std::size_t>(n - i);
    __builtin_memcpy(tail, codes + i, count);
    decode_step<V, C, E>(tail, s, values);
    __builtin_memcpy(out + i, values, count * sizeof(T));
  }
}

/// The kernel table of lane set V.
template <class V>
constexpr RowKernels row_kernels(const char* name) {
  return {
      name,
      {&amax<V, Elem::f32>, &amax<V, Elem::f16>, &amax<V, Elem::bf16>},
      {
          {&encode<V, Elem::f32, Code::e4m3>, &encode<V, Elem::f32, Code::e5m2>,
           &encode<V, Elem::f32, Code::int8>},
          {&encode<V, Elem::f16, Code::e4m3>, &encode<V, Elem::f16, Code::e5m2>,
           &encode<V, Elem::f16, Code::int8>},
          {&encode<V, Elem::bf16, Code::e4m3>, &encode<V, Elem::bf16, Code::e5m2>,
           &encode<V, Elem::bf16, Code::int8>},
      },
      {
          {&decode<V, Code::e4m3, Elem::f32>, &decode<V, Code::e4m3, Elem::f16>,
           &decode<V, Code::e4m3, Elem::bf16>},
          {&decode<V, Code::e5m2, Elem::f32>, &decode<V, Code::e5m2, Elem::f16>,
           &decode<V, Code::e5m2, Elem::bf16>},
          {&decode<V, Code::int8, Elem::f32>, &decode<V, Code::int8, Elem::f16>,
           &decode<V, Code::int8, Elem::bf16>},
      },
  };
}

}  // namespace apo::quant::detail::rows

#undef APO_ROW_STEP

// Portable row kernels: the lane-generic row loops (cpu_rows_generic.hpp) on one lane, with the
// scalar code the CUDA kernels run per element (codec.hpp, codec_lanes.hpp), so that the tests
// holding these kernels bit-exact with PyTorch hold the CUDA kernels' arithmetic too. fp8 codes
// decode through a 256-entry table per format, filled by that same code. Used where the AVX2 set
// cannot run, and as the second implementation the tests hold the vector sets to.

#include <array>

#include "cpu_rows_generic.hpp"

namespace apo::quant::detail {
namespace {

template <Code C>
std::array<float, 256> fp8_values() {
  std::array<float, 256> values{};
  for (std::uint32_t code = 0; code < 256; ++code) {
    values[code] = codec::decode_fp8<C, codec::ScalarLanes>(code);
  }
  return values;
}

const std::array<float, 256> kE4M3Values = fp8_values<Code::e4m3>();
const std::array<float, 256> kE5M2Values = fp8_values<Code::e5m2>();

// One lane, plus what the row loops need: code bytes in and out, a table lookup for fp8 codes
// (a scalar load instead of the conversion through a half), and amax over a step.
struct PortableLanes : codec::ScalarLanes {
  static H load_codes16(const std::uint8_t* p) { return *p; }
  template <bool Signed>
  static I load_codes(const std::uint8_t* p) {
    return Signed ? static_cast<I>(static_cast<std::int32_t>(static_cast<std::int8_t>(*p))) : *p;
  }
  template <Code C>
  static F decode_fp8_lookup(const std::uint8_t* p) {
    return (C == Code::e4m3 ? kE4M3Values : kE5M2Values)[*p];
  }
  template <bool Signed>
  static void store_codes(std::uint8_t* q, const I (&codes)[rows::kStep]) {
    for (std::int64_t k = 0; k < rows::kStep; ++k) q[k] = static_cast<std::uint8_t>(codes[k]);
  }

  template <Elem E>
  using AmaxAcc = std::uint32_t;
  template <Elem E>
  static AmaxAcc<E> amax_init() {
    return 0;
  }
  template <Elem E>
  static void amax_step(const elem_storage_t<E>* p, AmaxAcc<E>& acc) {
    for (std::int64_t k = 0; k < rows::kStep; ++k) {
      const std::uint32_t bits = codec::magnitude_bits<E>(p[k]);
      acc = bits > acc ? bits : acc;
    }
  }
  template <Elem E>
  static std::uint32_t amax_reduce(AmaxAcc<E> acc) {
    return acc;
  }
};

constexpr RowKernels kPortable = rows::row_kernels<PortableLanes>("portable");

}  // namespace

const RowKernels& portable_row_kernels() {
  return kPortable;
}

}  // namespace apo::quant::detail

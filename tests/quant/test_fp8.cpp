// The fp8 codec and the kernels' encoders against the OCP OFP8 spec and PyTorch, bit for bit:
// all 256 codes of each format decode as the spec says; encoding matches PyTorch's own float8
// conversion of the same clamped values for every fp16 and bf16 value, a large random fp32
// set, every boundary and every subnormal.

#include <ATen/ATen.h>

#include "apo_catch.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "apo/quant/fp8.hpp"
#include "apo/quant/kernels.hpp"
#include "quant_test_support.hpp"

namespace q = apo::quant;
using q::CpuKernel;
using q::QFormat;
using q::Scaling;

namespace {

struct Fp8Format {
  QFormat format;
  at::ScalarType dtype;
  int exponent_bits;
  int mantissa_bits;
  int bias;
  bool has_infinity;  // E5M2 is IEEE-like; E4M3FN ("finite") has only NaN at S.1111.111
  float max_value;
};

const Fp8Format kE4M3{QFormat::fp8_e4m3, at::kFloat8_e4m3fn, 4, 3, 7, false, 448.0f};
const Fp8Format kE5M2{QFormat::fp8_e5m2, at::kFloat8_e5m2, 5, 2, 15, true, 57344.0f};

// The value of a code by the spec's formula, written independently of the codec.
double spec_value(const Fp8Format& f, int code) {
  const int sign = code >> 7;
  const int exponent = (code >> f.mantissa_bits) & ((1 << f.exponent_bits) - 1);
  const int mantissa = code & ((1 << f.mantissa_bits) - 1);
  const int max_exponent = (1 << f.exponent_bits) - 1;
  double value;
  if (f.has_infinity && exponent == max_exponent) {
    value = mantissa == 0 ? std::numeric_limits<double>::infinity()
                          : std::numeric_limits<double>::quiet_NaN();
  } else if (!f.has_infinity && exponent == max_exponent &&
             mantissa == (1 << f.mantissa_bits) - 1) {
    value = std::numeric_limits<double>::quiet_NaN();
  } else if (exponent == 0) {
    value = std::ldexp(mantissa, 1 - f.bias - f.mantissa_bits);
  } else {
    value = std::ldexp((1 << f.mantissa_bits) + mantissa, exponent - f.bias - f.mantissa_bits);
  }
  return sign ? -value : value;
}

float codec_decode(const Fp8Format& f, std::uint8_t code) {
  return f.format == QFormat::fp8_e4m3 ? q::fp8::decode_e4m3(code) : q::fp8::decode_e5m2(code);
}

std::uint8_t codec_encode(const Fp8Format& f, float value) {
  return f.format == QFormat::fp8_e4m3 ? q::fp8::encode_e4m3(value) : q::fp8::encode_e5m2(value);
}

bool same(double a, double b) {
  return (std::isnan(a) && std::isnan(b)) || (a == b && std::signbit(a) == std::signbit(b));
}

// Codes -> float32 through the vector decoder: a per-tensor QTensor with scale 1.
at::Tensor kernel_decode(const Fp8Format& f, const at::Tensor& codes, CpuKernel kernel) {
  const auto qt = q::QTensor::from_parts("codes", codes.view(f.dtype), at::ones({1}), f.format,
                                         Scaling::per_tensor, at::kFloat);
  return q::dequantize(qt, at::kFloat, kernel);
}

// Encodes `values` (already within +-max, and holding +-max so that the scale is exactly 1)
// through the fused kernel, and through PyTorch's cast; returns both codes as uint8.
std::pair<at::Tensor, at::Tensor> kernel_and_torch(const Fp8Format& f, const at::Tensor& values,
                                                   CpuKernel kernel) {
  const auto qt = q::quantize(values, {f.format, Scaling::per_tensor}, "sweep", kernel);
  REQUIRE(qt.scales().item<float>() == 1.0f);
  const at::Tensor torch_codes = values.to(at::kFloat).to(f.dtype).view(at::kByte);
  return {qt.data().view(at::kByte), torch_codes};
}

// `values` clamped to the format's range the way torchao does before its cast, plus +-max so
// the per-tensor scale is exactly 1.
at::Tensor clamped_with_max(const at::Tensor& values, float max_value) {
  const at::Tensor clamped = values.clamp(-max_value, max_value);
  const at::Tensor ends = at::tensor({max_value, -max_value}, at::kFloat).to(values.scalar_type());
  return at::cat({clamped, ends});
}

}  // namespace

TEST_CASE("all 256 codes of each fp8 format decode as the OCP spec says", "[quant][fp8]") {
  for (const Fp8Format& f : {kE4M3, kE5M2}) {
    std::vector<std::uint8_t> all(256);
    for (int c = 0; c < 256; ++c) all[c] = static_cast<std::uint8_t>(c);
    const at::Tensor codes = at::from_blob(all.data(), {256}, at::kByte).clone();
    const at::Tensor by_torch = codes.view(f.dtype).to(at::kFloat);
    std::vector<at::Tensor> by_kernel;
    for (CpuKernel kernel : q::test::cpu_kernels())
      by_kernel.push_back(kernel_decode(f, codes, kernel));
    int nan_codes = 0;
    for (int c = 0; c < 256; ++c) {
      INFO(q::to_string(f.format) << " code 0x" << std::hex << c);
      const double expected = spec_value(f, c);
      nan_codes += std::isnan(expected) ? 1 : 0;
      CHECK(same(codec_decode(f, static_cast<std::uint8_t>(c)), expected));
      CHECK(same(by_torch[c].item<float>(), expected));
      for (const at::Tensor& k : by_kernel) CHECK(same(k[c].item<float>(), expected));
    }
    // The spec's special values: E4M3FN has NaN only at S.1111.111; E5M2 has 6 NaNs and +-inf.
    CHECK(nan_codes == (f.has_infinity ? 6 : 2));
    CHECK(codec_decode(f, f.has_infinity ? 0x7C : 0x7E) == (f.has_infinity ? INFINITY : 448.0f));
    CHECK(codec_decode(f, f.has_infinity ? 0x7B : 0x7E) == f.max_value);
    CHECK(codec_decode(f, 0x01) == static_cast<float>(f.has_infinity ? 0x1p-16 : 0x1p-9));
  }
}

TEST_CASE("the codec encodes every fp16 and bf16 value like PyTorch's cast of the clamped value",
          "[quant][fp8]") {
  for (const Fp8Format& f : {kE4M3, kE5M2}) {
    for (at::ScalarType source : {at::kHalf, at::kBFloat16}) {
      const at::Tensor values = q::test::all_finite_16bit(source).to(at::kFloat);
      const at::Tensor clamped = values.clamp(-f.max_value, f.max_value);
      const at::Tensor expected = clamped.to(f.dtype).view(at::kByte);
      const auto* x = values.const_data_ptr<float>();
      const auto* e = expected.const_data_ptr<std::uint8_t>();
      std::int64_t mismatches = 0;
      for (std::int64_t i = 0; i < values.numel(); ++i) {
        // The codec saturates by itself: it takes the unclamped value.
        if (codec_encode(f, x[i]) != e[i]) ++mismatches;
      }
      INFO(q::to_string(f.format) << " from " << c10::toString(source));
      CHECK(values.numel() > 60000);
      CHECK(mismatches == 0);
    }
  }
}

TEST_CASE("the fused kernels encode every fp16 and bf16 value like PyTorch's cast",
          "[quant][fp8]") {
  for (const Fp8Format& f : {kE4M3, kE5M2}) {
    for (at::ScalarType source : {at::kHalf, at::kBFloat16}) {
      const at::Tensor values = clamped_with_max(q::test::all_finite_16bit(source), f.max_value);
      for (CpuKernel kernel : q::test::cpu_kernels()) {
        const auto [ours, torch_codes] = kernel_and_torch(f, values, kernel);
        const auto diff = q::test::bit_diff(ours.view(f.dtype), torch_codes.view(f.dtype), values);
        INFO(q::to_string(f.format) << " from " << c10::toString(source) << ", "
                                    << q::test::kernel_name(kernel) << " kernel: " << diff.text);
        CHECK(diff.mismatches == 0);
      }
    }
  }
}

TEST_CASE("the fused kernels encode random fp32, every boundary and every subnormal like PyTorch",
          "[quant][fp8]") {
  // Random bit patterns cover every exponent; boundaries are each representable value, each
  // midpoint between neighbours (ties) and the floats just either side of it.
  const std::int64_t random_count = q::test::sanitizer_build() ? (1 << 16) : (1 << 22);
  std::mt19937 rng(20240607);
  std::vector<float> random_values;
  random_values.reserve(static_cast<std::size_t>(random_count));
  while (static_cast<std::int64_t>(random_values.size()) < random_count) {
    const std::uint32_t bits = rng();
    float v;
    std::memcpy(&v, &bits, sizeof v);
    if (std::isfinite(v)) random_values.push_back(v);
  }
  // Every fp32 subnormal, both signs (strided under sanitizers).
  const std::int64_t stride = q::test::sweep_stride(4099);
  std::vector<float> subnormals;
  for (std::uint32_t bits = 1; bits < (1u << 23); bits += static_cast<std::uint32_t>(stride)) {
    float v;
    std::memcpy(&v, &bits, sizeof v);
    subnormals.push_back(v);
    subnormals.push_back(-v);
  }
  for (const Fp8Format& f : {kE4M3, kE5M2}) {
    std::vector<float> boundaries;
    std::vector<float> representable;
    for (int c = 0; c < 128; ++c) {
      const float v = codec_decode(f, static_cast<std::uint8_t>(c));
      if (std::isfinite(v)) representable.push_back(v);
    }
    for (std::size_t i = 0; i < representable.size(); ++i) {
      const float v = representable[i];
      boundaries.insert(boundaries.end(),
                        {v, std::nextafter(v, 0.0f), std::nextafter(v, INFINITY)});
      if (i + 1 < representable.size()) {
        const float mid = (v + representable[i + 1]) / 2;  // exact in fp32
        boundaries.insert(boundaries.end(),
                          {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, INFINITY)});
      }
    }
    // Beyond the largest normal: saturates to it after the clamp.
    boundaries.insert(boundaries.end(), {f.max_value * 1.03125f, f.max_value * 2, 3e38f});
    const std::size_t positive = boundaries.size();
    for (std::size_t i = 0; i < positive; ++i) boundaries.push_back(-boundaries[i]);

    const struct {
      const char* name;
      const std::vector<float>& values;
    } sets[] = {{"random fp32", random_values},
                {"boundaries", boundaries},
                {"fp32 subnormals", subnormals}};
    for (const auto& set : sets) {
      const at::Tensor raw =
          at::from_blob(const_cast<float*>(set.values.data()),
                        {static_cast<std::int64_t>(set.values.size())}, at::kFloat)
              .clone();
      const at::Tensor values = clamped_with_max(raw, f.max_value);
      for (CpuKernel kernel : q::test::cpu_kernels()) {
        const auto [ours, torch_codes] = kernel_and_torch(f, values, kernel);
        const auto diff = q::test::bit_diff(ours.view(f.dtype), torch_codes.view(f.dtype), values);
        INFO(q::to_string(f.format) << ", " << set.name << " (" << values.numel() << " values), "
                                    << q::test::kernel_name(kernel) << " kernel: " << diff.text);
        CHECK(diff.mismatches == 0);
      }
      // The scalar codec on the unclamped values agrees too (it saturates by itself).
      const at::Tensor expected = values.to(f.dtype).view(at::kByte);
      std::int64_t codec_mismatches = 0;
      const auto* e = expected.const_data_ptr<std::uint8_t>();
      for (std::int64_t i = 0; i < raw.numel(); ++i) {
        if (codec_encode(f, raw.const_data_ptr<float>()[i]) != e[i]) ++codec_mismatches;
      }
      INFO(set.name);
      CHECK(codec_mismatches == 0);
    }
  }
}

TEST_CASE("the codec saturates and keeps NaN", "[quant][fp8]") {
  CHECK(q::fp8::encode_e4m3(464.0f) == 0x7E);  // PyTorch before 2.12 made this NaN-adjacent
  CHECK(q::fp8::encode_e4m3(1e30f) == 0x7E);
  CHECK(q::fp8::encode_e4m3(-INFINITY) == 0xFE);
  CHECK((q::fp8::encode_e4m3(NAN) & 0x7F) == 0x7F);
  CHECK(q::fp8::encode_e5m2(60000.0f) == 0x7B);
  CHECK(q::fp8::encode_e5m2(INFINITY) == 0x7B);
  CHECK((q::fp8::encode_e5m2(NAN) & 0x7F) == 0x7F);
  CHECK(q::fp8::encode_e4m3(-0.0f) == 0x80);
  // Ties round to even: 0.5 * 2^-9 (between codes 0 and 1) goes to 0; 1.5 * 2^-9 to 2.
  CHECK(q::fp8::encode_e4m3(0x1p-10f) == 0x00);
  CHECK(q::fp8::encode_e4m3(0x3p-10f) == 0x02);
  // 17 lies between 16 (code 0x58) and 18 (0x59): the tie goes to the even mantissa, 16.
  CHECK(q::fp8::encode_e4m3(17.0f) == 0x58);
}

TEST_CASE("int8 encoding matches round-half-even then clamp for every fp16 and bf16 value",
          "[quant][fp8]") {
  for (at::ScalarType source : {at::kHalf, at::kBFloat16}) {
    const at::Tensor values = clamped_with_max(q::test::all_finite_16bit(source), 127.0f);
    const at::Tensor expected = values.to(at::kFloat).round().to(at::kChar);
    for (CpuKernel kernel : q::test::cpu_kernels()) {
      const auto qt = q::quantize(values, {QFormat::int8, Scaling::per_tensor}, "sweep", kernel);
      REQUIRE(qt.scales().item<float>() == 1.0f);
      const auto diff = q::test::bit_diff(qt.data(), expected, values);
      INFO(c10::toString(source) << ", " << q::test::kernel_name(kernel) << ": " << diff.text);
      CHECK(diff.mismatches == 0);
    }
  }
}

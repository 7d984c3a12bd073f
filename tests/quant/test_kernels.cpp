// The fused CPU kernels against the same math written as a chain of libtorch ops
// (apo/quant/reference.hpp), bit for bit, and QTensor's checks on its parts.

#include <ATen/ATen.h>

#include "apo_catch.hpp"

#include <string>

#include "apo/core/error.hpp"
#include "apo/quant/kernels.hpp"
#include "apo/quant/qtensor.hpp"
#include "apo/quant/reference.hpp"
#include "quant_test_support.hpp"

namespace q = apo::quant;
using q::CpuKernel;
using q::QFormat;
using q::Scaling;

namespace {

const q::QuantSpec kScaledSpecs[] = {
    {QFormat::fp8_e4m3, Scaling::per_row}, {QFormat::fp8_e4m3, Scaling::per_tensor},
    {QFormat::fp8_e5m2, Scaling::per_row}, {QFormat::fp8_e5m2, Scaling::per_tensor},
    {QFormat::int8, Scaling::per_row},     {QFormat::int8, Scaling::per_tensor},
};

std::string describe(q::QuantSpec spec, at::ScalarType dtype, CpuKernel kernel) {
  return std::string(q::to_string(spec.format)) + " " + std::string(q::to_string(spec.scaling)) +
         " from " + c10::toString(dtype) + ", " + q::test::kernel_name(kernel) + " kernel";
}

template <class F>
void expect_error(F&& f, apo::ErrorCode code, const std::string& context, const std::string& part) {
  try {
    f();
    FAIL("no error; expected one mentioning '" << part << "'");
  } catch (const apo::Error& e) {
    INFO(e.what());
    CHECK(e.code() == code);
    CHECK(e.context() == context);
    CHECK(std::string(e.what()).find(part) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("fused quantize and dequantize match the libtorch chain bit for bit",
          "[quant][kernels]") {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(42);
  // Odd sizes exercise the vector tails and runs that cross rows; the scale spread exercises
  // subnormal codes.
  at::Tensor base = at::randn({37, 1029}, gen) * at::exp(at::randn({37, 1}, gen) * 3.0);
  base[5].zero_();
  base[6].mul_(1e-6);  // in float16, a row of subnormals: its amax is a subnormal too
  for (at::ScalarType dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
    const at::Tensor x = base.to(dtype);
    for (q::QuantSpec spec : kScaledSpecs) {
      const auto expected = q::reference::quantize(x, spec);
      for (CpuKernel kernel : q::test::cpu_kernels()) {
        INFO(describe(spec, dtype, kernel));
        const q::QTensor qt = q::quantize(x, spec, "w", kernel);
        const auto scales = q::test::bit_diff(qt.scales(), expected.scales);
        INFO("scales: " << scales.text);
        CHECK(scales.mismatches == 0);
        CHECK(q::test::bit_diff(q::compute_scales(x, spec, "w", kernel), expected.scales)
                  .mismatches == 0);
        const auto codes = q::test::bit_diff(qt.data(), expected.data, x);
        INFO("codes: " << codes.text);
        CHECK(codes.mismatches == 0);
        for (at::ScalarType out : {at::kFloat, at::kHalf, at::kBFloat16}) {
          const at::Tensor ours = q::dequantize(qt, out, kernel);
          const at::Tensor theirs =
              q::reference::dequantize(expected.data, expected.scales, spec, out);
          const auto values = q::test::bit_diff(ours, theirs);
          INFO("dequantize to " << c10::toString(out) << ": " << values.text);
          CHECK(values.mismatches == 0);
        }
      }
    }
  }
}

TEST_CASE("an all-zero row gets a positive scale and decodes to zeros", "[quant][kernels]") {
  at::Tensor x = at::randn({4, 100});
  x[2].zero_();
  for (q::QuantSpec spec : kScaledSpecs) {
    const q::QTensor qt = q::quantize(at::zeros({3, 40}), spec, "zeros");
    CHECK((qt.scales() > 0).all().item<bool>());
    CHECK((qt.dequantize() == 0).all().item<bool>());
    const q::QTensor mixed = q::quantize(x, spec, "mixed");
    CHECK((mixed.scales() > 0).all().item<bool>());
    CHECK(at::isfinite(mixed.dequantize()).all().item<bool>());
    CHECK((mixed.dequantize()[2] == 0).all().item<bool>());
  }
}

TEST_CASE("unscaled formats are rounding casts, checked for range", "[quant][kernels]") {
  const at::Tensor x = at::randn({16, 33});
  CHECK(q::quantize(x, {QFormat::fp16, Scaling::none}, "w").data().equal(x.to(at::kHalf)));
  CHECK(q::quantize(x, {QFormat::bf16, Scaling::none}, "w").data().equal(x.to(at::kBFloat16)));
  const q::QTensor kept = q::quantize(x, {QFormat::none, Scaling::none}, "w");
  CHECK(kept.data().data_ptr() == x.data_ptr());  // none holds the input itself
  at::Tensor wide = x.clone();
  wide[3][4] = 70000.0f;
  expect_error(
      [&] {
        (void)q::quantize(wide, {QFormat::fp16, Scaling::none}, "w");
      },
      apo::ErrorCode::InvalidArgument, "w", "beyond fp16's largest finite value 65504");
  // bf16 saturates at its largest finite value instead of rounding float32's largest to inf.
  wide[3][4] = std::numeric_limits<float>::max();
  const at::Tensor restored = q::quantize(wide, {QFormat::bf16, Scaling::none}, "w").dequantize();
  CHECK(std::isfinite(restored[3][4].item<float>()));
}

TEST_CASE("dequantizing rows into a buffer gives the rows of the whole", "[quant][kernels]") {
  const at::Tensor x = at::randn({50, 70});
  for (q::QuantSpec spec : {q::QuantSpec{QFormat::fp8_e4m3, Scaling::per_row},
                            q::QuantSpec{QFormat::int8, Scaling::per_tensor},
                            q::QuantSpec{QFormat::bf16, Scaling::none}}) {
    const q::QTensor qt = q::quantize(x, spec, "w");
    const at::Tensor whole = qt.dequantize(at::kFloat);
    at::Tensor buffer = at::empty({16, 70});
    for (std::int64_t r = 0; r < 50; r += 16) {
      const std::int64_t n = std::min<std::int64_t>(16, 50 - r);
      at::Tensor tile = buffer.narrow(0, 0, n);
      q::dequantize_rows_into(qt, r, r + n, tile);
      CHECK(tile.equal(whole.narrow(0, r, n)));
    }
    at::Tensor wrong = at::empty({3, 70});
    expect_error([&] { q::dequantize_rows_into(qt, 0, 4, wrong); }, apo::ErrorCode::InvalidArgument,
                 "w", "contiguous tensor of 280 elements");
    expect_error([&] { q::dequantize_rows_into(qt, 40, 60, wrong); },
                 apo::ErrorCode::InvalidArgument, "w", "rows [40, 60) are not within [0, 50)");
  }
}

TEST_CASE("QTensor::from_parts checks that its parts agree", "[quant][kernels]") {
  const at::Tensor codes = at::zeros({4, 8}, at::kFloat8_e4m3fn);
  const at::Tensor ok = at::ones({4});
  CHECK_NOTHROW(
      q::QTensor::from_parts("w", codes, ok, QFormat::fp8_e4m3, Scaling::per_row, at::kFloat));
  CHECK(q::QTensor::from_parts("w", codes, ok.view({4, 1}), QFormat::fp8_e4m3, Scaling::per_row,
                               at::kFloat)
            .scales()
            .sizes() == at::IntArrayRef{4});
  using apo::ErrorCode;
  expect_error(
      [&] {
        q::QTensor::from_parts("w", codes, at::ones({3}), QFormat::fp8_e4m3, Scaling::per_row,
                               at::kFloat);
      },
      ErrorCode::InvalidArgument, "w",
      "scales have shape [3]; per_row scaling of a [4, 8] tensor needs [4]");
  expect_error(
      [&] {
        q::QTensor::from_parts("w", codes, at::ones({4}), QFormat::fp8_e4m3, Scaling::per_tensor,
                               at::kFloat);
      },
      ErrorCode::InvalidArgument, "w", "needs [1]");
  expect_error(
      [&] {
        q::QTensor::from_parts("w", codes, at::ones({4}, at::kDouble), QFormat::fp8_e4m3,
                               Scaling::per_row, at::kFloat);
      },
      ErrorCode::InvalidArgument, "w", "scales have dtype Double; expected Float");
  expect_error(
      [&] {
        q::QTensor::from_parts("w", codes, {}, QFormat::fp8_e4m3, Scaling::per_row, at::kFloat);
      },
      ErrorCode::InvalidArgument, "w", "needs scales of shape [4]");
  expect_error(
      [&] {
        q::QTensor::from_parts("w", codes, ok, QFormat::fp8_e5m2, Scaling::per_row, at::kFloat);
      },
      ErrorCode::InvalidArgument, "w", "data has dtype Float8_e4m3fn, but format fp8_e5m2");
  expect_error(
      [&] { q::QTensor::from_parts("w", codes, ok, QFormat::fp8_e4m3, Scaling::none, at::kFloat); },
      ErrorCode::InvalidArgument, "w", "needs per_tensor or per_row scaling");
  expect_error(
      [&] {
        q::QTensor::from_parts("w", at::zeros({4, 8}, at::kHalf), ok, QFormat::fp16, Scaling::none,
                               at::kFloat);
      },
      ErrorCode::InvalidArgument, "w", "format fp16 takes no scales");
  expect_error(
      [&] {
        q::QTensor::from_parts("w", at::zeros({0, 8}, at::kChar), at::ones({0}), QFormat::int8,
                               Scaling::per_row, at::kFloat);
      },
      ErrorCode::InvalidArgument, "w", "empty");
  expect_error(
      [&] {
        (void)q::dequantize(q::quantize(at::randn({2, 2}), {QFormat::int8, Scaling::per_row}, "w"),
                            at::kDouble);
      },
      ErrorCode::Unsupported, "w", "dtype Double is not supported");
}

TEST_CASE("the kernels a machine runs are named", "[quant][kernels]") {
  CHECK(q::cpu_kernel_available(CpuKernel::portable));
  CHECK(q::cpu_kernel_available(CpuKernel::best));
  const std::string best(q::best_cpu_kernel_name());
  const std::string expected = q::cpu_kernel_available(CpuKernel::avx512) ? "avx512"
                               : q::cpu_kernel_available(CpuKernel::avx2) ? "avx2"
                                                                          : "portable";
  CHECK(best == expected);
  for (CpuKernel k : {CpuKernel::avx2, CpuKernel::avx512}) {
    if (!q::cpu_kernel_available(k)) {
      CHECK_THROWS_AS(q::quantize(at::randn({2, 2}), {QFormat::int8, Scaling::per_row}, "w", k),
                      apo::Error);
    }
  }
}

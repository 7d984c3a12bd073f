// qlinear against dequantize-then-linear: results (the test says by how much they differ),
// tiling, peak extra memory, plans and bad arguments.

#include <ATen/ATen.h>

#include "apo_catch.hpp"

#include <string>

#include "apo/core/error.hpp"
#include "apo/quant/kernels.hpp"
#include "apo/quant/qlinear.hpp"
#include "cpu_allocation_counter.hpp"
#include "quant_test_support.hpp"

namespace q = apo::quant;
using q::QFormat;
using q::Scaling;

namespace {

// max |a - b| relative to max |b|.
double relative_gap(const at::Tensor& a, const at::Tensor& b) {
  const double scale = std::max(b.abs().max().item<double>(), 1e-30);
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() / scale;
}

template <class F>
void expect_error(F&& f, const std::string& part) {
  try {
    f();
    FAIL("no error; expected one mentioning '" << part << "'");
  } catch (const apo::Error& e) {
    INFO(e.what());
    CHECK(e.code() == apo::ErrorCode::InvalidArgument);
    CHECK(e.context() == "blocks.0.ff.weight");
    CHECK(std::string(e.what()).find(part) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("qlinear equals dequantize-then-linear", "[quant][qlinear]") {
  const at::Tensor w = at::randn({200, 96}) * 0.05;
  const at::Tensor bias = at::randn({200});
  const q::QuantSpec specs[] = {
      {QFormat::fp8_e4m3, Scaling::per_row}, {QFormat::fp8_e4m3, Scaling::per_tensor},
      {QFormat::fp8_e5m2, Scaling::per_row}, {QFormat::int8, Scaling::per_row},
      {QFormat::int8, Scaling::per_tensor},  {QFormat::bf16, Scaling::none},
      {QFormat::fp16, Scaling::none},        {QFormat::none, Scaling::none}};
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const at::Tensor x = at::randn({3, 7, 96}).to(dtype);
    for (q::QuantSpec spec : specs) {
      const q::QTensor qw = q::quantize(w, spec, "blocks.0.ff.weight");
      const at::Tensor expected = at::linear(x, qw.dequantize(dtype), bias.to(dtype));
      for (std::int64_t tile_bytes : {std::int64_t{0}, std::int64_t{96 * 4 * 3}}) {
        const at::Tensor y = q::qlinear(x, qw, bias, {.tile_bytes = tile_bytes});
        CHECK(y.sizes() == at::IntArrayRef{3, 7, 200});
        CHECK(y.scalar_type() == dtype);
        const double gap = relative_gap(y, expected);
        INFO(q::to_string(spec) << ", x " << c10::toString(dtype) << ", tile_bytes " << tile_bytes
                                << ": max |qlinear - dequantize+linear| / max |y| = " << gap);
        // The same products summed in another blocking order: float32 rounding apart.
        CHECK(gap <= (dtype == at::kFloat ? 1e-6 : 1e-2));
      }
      const at::Tensor no_bias = q::qlinear(x, qw);
      CHECK(relative_gap(no_bias, at::linear(x, qw.dequantize(dtype))) <=
            (dtype == at::kFloat ? 1e-6 : 1e-2));
    }
  }
}

TEST_CASE("qlinear plans: direct for a weight in x's dtype, tiles otherwise", "[quant][qlinear]") {
  const at::Tensor x = at::randn({4, 512});
  const q::QTensor bf16 = q::quantize(at::randn({1024, 512}), {QFormat::bf16, Scaling::none}, "w");
  CHECK(q::plan_qlinear(x.to(at::kBFloat16), bf16).path == q::QLinearPath::direct);
  const q::QLinearPlan cast = q::plan_qlinear(x, bf16);
  CHECK(cast.path == q::QLinearPath::tiled);

  const q::QTensor fp8 =
      q::quantize(at::randn({1024, 512}), {QFormat::fp8_e4m3, Scaling::per_row}, "w");
  const q::QLinearPlan plan = q::plan_qlinear(x, fp8);
  CHECK(plan.path == q::QLinearPath::tiled);
  const std::int64_t whole = 1024 * 512 * 4;  // the dequantized weight, 2 MiB
  CHECK(plan.workspace_bytes == plan.tile_rows * 512 * 4);
  CHECK(plan.workspace_bytes * 32 <= whole);
  CHECK(plan.tile_rows % 16 == 0);
  CHECK(plan.reason.find("rows at a time") != std::string::npos);
  // Small weights are decoded whole: the buffer is at most 1 MiB.
  const q::QTensor small =
      q::quantize(at::randn({64, 512}), {QFormat::int8, Scaling::per_row}, "w");
  CHECK(q::plan_qlinear(x, small).tile_rows == 64);
}

TEST_CASE("qlinear's peak extra memory is below 10% of the dequantized weight",
          "[quant][qlinear]") {
  const at::Tensor w = at::randn({1024, 1024});
  const at::Tensor x = at::randn({64, 1024});
  const std::int64_t dequantized = 1024 * 1024 * 4;
  const std::int64_t output = 64 * 1024 * 4;
  for (q::QuantSpec spec : {q::QuantSpec{QFormat::fp8_e4m3, Scaling::per_row},
                            q::QuantSpec{QFormat::int8, Scaling::per_tensor}}) {
    const q::QTensor qw = q::quantize(w, spec, "w");
    std::int64_t qlinear_peak = 0;
    std::int64_t chain_peak = 0;
    at::Tensor y;
    at::Tensor expected;
    {
      q::test::CpuAllocationCounter::Scope scope;
      y = q::qlinear(x, qw);
      qlinear_peak = scope.peak_bytes();
    }
    {
      q::test::CpuAllocationCounter::Scope scope;
      expected = at::linear(x, qw.dequantize(at::kFloat));
      chain_peak = scope.peak_bytes();
    }
    INFO(q::to_string(spec) << ": qlinear peak " << qlinear_peak << " B, dequantize+linear peak "
                            << chain_peak << " B, output " << output << " B, dequantized weight "
                            << dequantized << " B");
    CHECK(qlinear_peak - output < dequantized / 10);
    CHECK(chain_peak - output >= dequantized);
    CHECK(relative_gap(y, expected) <= 1e-6);
  }
}

TEST_CASE("qlinear rejects arguments that do not fit, naming the weight", "[quant][qlinear]") {
  const q::QTensor w =
      q::quantize(at::randn({32, 16}), {QFormat::int8, Scaling::per_row}, "blocks.0.ff.weight");
  expect_error(
      [&] {
        (void)q::qlinear(at::randn({4, 15}), w);
      },
      "x has 15 input features (shape [4, 15]), but the weight of shape [32, 16] expects 16");
  expect_error(
      [&] {
        (void)q::qlinear(at::randn({4, 16}), w, at::randn({31}));
      },
      "the bias must be a floating-point [32] tensor");
  expect_error([&] { (void)q::qlinear(at::ones({4, 16}, at::kInt), w); }, "x has dtype Int");
  const q::QTensor conv =
      q::quantize(at::randn({8, 4, 3, 3}), {QFormat::int8, Scaling::per_row}, "blocks.0.ff.weight");
  expect_error([&] { (void)q::qlinear(at::randn({4, 36}), conv); }, "needs a 2-d weight");
  CHECK(q::qlinear(at::randn({0, 16}), w).sizes() == at::IntArrayRef{0, 32});
}

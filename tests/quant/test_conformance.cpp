// The one conformance suite of the Quantizer concept: every policy, at every scaling it has,
// keeps the contract written on apo::quant::Quantizer.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "apo_catch.hpp"

#include <string>
#include <thread>
#include <vector>

#include "apo/core/error.hpp"
#include "apo/quant/quantizer.hpp"
#include "quant_test_support.hpp"

namespace q = apo::quant;
using q::QFormat;
using q::Scaling;

namespace {

template <class Q>
std::vector<Q> instances() {
  if constexpr (q::traits(Q::format).scaled) {
    return {Q(Scaling::per_tensor), Q(Scaling::per_row)};
  } else {
    return {Q()};
  }
}

// Weights with rows of very different magnitude, an all-zero row, exact zeros and a few
// outliers: what per-row scaling is for.
at::Tensor weights(at::IntArrayRef shape, at::ScalarType dtype, std::uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor x = at::randn(shape, gen, at::kFloat);
  const std::int64_t rows = q::scaling_rows(shape);
  at::Tensor rows_view = x.view({rows, -1});
  rows_view.mul_(at::exp(at::randn({rows, 1}, gen) * 2.0));
  rows_view.index_put_({at::indexing::Slice(), 0}, 0.0);
  if (rows > 2) rows_view[1].zero_();
  rows_view.view(-1)[rows_view.numel() / 2] = 300.0;
  return x.to(dtype);
}

// |x - x'| <= relative * |x| + absolute * scale, with room for the fp32 rounding of the division
// by the scale and of the product with it (a few ulps of |x|).
void check_error_bound(const at::Tensor& x, const at::Tensor& restored, const q::QTensor& qt) {
  const q::FormatTraits t = q::traits(qt.format());
  const at::Tensor xf = x.to(at::kFloat).to(at::kDouble).reshape({qt.rows(), -1});
  const at::Tensor rf = restored.to(at::kDouble).reshape({qt.rows(), -1});
  at::Tensor scale = at::ones({qt.rows(), 1}, at::kDouble);
  if (qt.scales().defined()) {
    scale = qt.scales().to(at::kDouble).reshape({-1, 1}).expand({qt.rows(), 1});
  }
  const at::Tensor bound = xf.abs() * (t.relative_error + 0x1p-21) + scale * t.absolute_error;
  const at::Tensor excess = (xf - rf).abs() - bound;
  const double worst = excess.max().item<double>();
  INFO("worst excess over the bound: " << worst);
  CHECK(worst <= 0.0);
}

}  // namespace

TEMPLATE_TEST_CASE("Quantizer conformance", "[quant][conformance]", q::NoQuant, q::Fp16, q::Bf16,
                   q::Fp8E4M3, q::Fp8E5M2, q::Int8) {
  const std::vector<std::vector<std::int64_t>> shapes{
      {64, 96}, {8, 3, 3, 5}, {1000}, {1, 1}, {33, 129}};
  for (const TestType& quantizer : instances<TestType>()) {
    const q::QuantSpec spec = quantizer.spec();
    REQUIRE(spec.format == TestType::format);
    INFO(q::to_string(spec.format) << " " << q::to_string(spec.scaling));

    SECTION("round trip: shape, dtype, bytes, error bound, zeros, finiteness") {
      for (at::ScalarType dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
        for (std::size_t s = 0; s < shapes.size(); ++s) {
          INFO(c10::toString(dtype) << " shape " << s);
          const at::Tensor x = weights(shapes[s], dtype, 7 + s);
          const q::QTensor qt = quantizer.quantize(x, "blocks.0.attn.to_q.weight");
          CHECK(qt.name() == "blocks.0.attn.to_q.weight");
          CHECK(qt.spec() == spec);
          CHECK(qt.shape() == x.sizes());
          CHECK(qt.original_dtype() == dtype);
          CHECK(qt.device() == x.device());
          const std::int64_t scale_count =
              spec.scaling == Scaling::per_row ? qt.rows() : spec.scaling == Scaling::per_tensor;
          CHECK(qt.bytes() == x.numel() * q::element_bytes(spec.format, dtype) + 4 * scale_count);
          CHECK(qt.original_bytes() == x.numel() * static_cast<std::int64_t>(x.element_size()));

          const at::Tensor restored = quantizer.dequantize(qt);
          CHECK(restored.scalar_type() == dtype);
          CHECK(restored.sizes() == x.sizes());
          const at::Tensor restored32 = qt.dequantize(at::kFloat);
          CHECK(at::isfinite(restored32).all().item<bool>());
          check_error_bound(x, restored32, qt);
          CHECK((restored32.masked_select(x == 0) == 0).all().item<bool>());
        }
      }
    }

    SECTION("deterministic across calls, CPU kernels, thread counts and strides") {
      const at::Tensor x = weights({48, 80}, at::kFloat, 3);
      const q::QTensor first = quantizer.quantize(x, "w");
      CHECK(q::test::bit_diff(quantizer.quantize(x, "w").data(), first.data()).mismatches == 0);
      for (q::CpuKernel kernel : q::test::cpu_kernels()) {
        const q::QTensor other = q::quantize(x, spec, "w", kernel);
        const auto diff = q::test::bit_diff(other.data(), first.data(), x);
        INFO(q::test::kernel_name(kernel) << ": " << diff.text);
        CHECK(diff.mismatches == 0);
        const auto restored = q::test::bit_diff(q::dequantize(other, at::kFloat, kernel),
                                                first.dequantize(at::kFloat));
        INFO("dequantize: " << restored.text);
        CHECK(restored.mismatches == 0);
      }
      const int threads = at::get_num_threads();
      at::set_num_threads(1);
      const q::QTensor single = quantizer.quantize(x, "w");
      at::set_num_threads(threads);
      CHECK(q::test::bit_diff(single.data(), first.data()).mismatches == 0);
      // A transposed (non-contiguous) view quantizes like its contiguous copy.
      const at::Tensor xt = x.t();
      CHECK(q::test::bit_diff(quantizer.quantize(xt, "w").data(),
                              quantizer.quantize(xt.contiguous(), "w").data())
                .mismatches == 0);
    }

    SECTION("extreme magnitudes saturate instead of overflowing") {
      const at::Tensor tiny = at::full({4, 64}, 1e-30f);
      const at::Tensor restored_tiny = quantizer.dequantize(quantizer.quantize(tiny, "tiny"));
      CHECK(at::isfinite(restored_tiny).all().item<bool>());
      if (spec.format != QFormat::fp16) {
        at::Tensor huge = at::randn({4, 64}) * 1e37;
        huge[0][0] = std::numeric_limits<float>::max();
        huge[1][1] = -std::numeric_limits<float>::max();
        const q::QTensor qt = quantizer.quantize(huge, "huge");
        const at::Tensor restored = qt.dequantize(at::kFloat);
        CHECK(at::isfinite(restored).all().item<bool>());
        check_error_bound(huge, restored, qt);
      }
    }

    SECTION("bad input is an apo::Error naming the tensor") {
      auto expect_error = [&](const at::Tensor& t, apo::ErrorCode code, const std::string& part) {
        try {
          (void)quantizer.quantize(t, "unet.mid.weight");
          FAIL("no error for " << part);
        } catch (const apo::Error& e) {
          INFO(e.what());
          CHECK(e.code() == code);
          CHECK(e.context() == "unet.mid.weight");
          CHECK(std::string(e.what()).find(part) != std::string::npos);
        }
      };
      expect_error(at::Tensor(), apo::ErrorCode::InvalidArgument, "undefined");
      expect_error(at::empty({0, 16}), apo::ErrorCode::InvalidArgument, "empty");
      expect_error(at::ones({4, 4}, at::kInt), apo::ErrorCode::InvalidArgument, "floating");
      expect_error(at::ones({4, 4}, at::kDouble), apo::ErrorCode::Unsupported, "Double");
      expect_error(at::empty({4, 4}, at::TensorOptions().device(at::kMeta)),
                   apo::ErrorCode::Unsupported, "tensor is on meta");
      at::Tensor with_nan = at::randn({4, 8});
      with_nan[2][5] = std::numeric_limits<float>::quiet_NaN();
      expect_error(with_nan, apo::ErrorCode::InvalidArgument,
                   "NaN or infinite value (first: nan at [2, 5])");
      at::Tensor bf16_nan = at::randn({3, 40}).to(at::kBFloat16);
      bf16_nan[0][39] = std::numeric_limits<float>::quiet_NaN();
      expect_error(bf16_nan, apo::ErrorCode::InvalidArgument, "first: nan at [0, 39]");
      at::Tensor with_inf = at::randn({4, 8}).to(at::kHalf);
      with_inf[3][0] = -std::numeric_limits<float>::infinity();
      with_inf[3][7] = std::numeric_limits<float>::infinity();
      expect_error(with_inf, apo::ErrorCode::InvalidArgument,
                   "2 NaN or infinite values (first: -inf at [3, 0])");
    }

    SECTION("a QTensor of another format is refused by name") {
      const at::Tensor x = at::randn({8, 8});
      const q::QTensor other = TestType::format == QFormat::int8
                                   ? q::Fp8E4M3().quantize(x, "other.weight")
                                   : q::Int8().quantize(x, "other.weight");
      try {
        (void)quantizer.dequantize(other);
        FAIL("no error");
      } catch (const apo::Error& e) {
        CHECK(e.code() == apo::ErrorCode::InvalidArgument);
        CHECK(e.context() == "other.weight");
        CHECK(std::string(e.what()).find(std::string(q::to_string(TestType::format))) !=
              std::string::npos);
      }
    }

    SECTION("const calls from several threads give the same bits") {
      const at::Tensor x = weights({64, 256}, at::kBFloat16, 11);
      const q::QTensor expected = quantizer.quantize(x, "shared");
      std::vector<at::Tensor> results(4);
      std::vector<std::thread> threads;
      for (std::size_t i = 0; i < results.size(); ++i) {
        threads.emplace_back([&, i] { results[i] = quantizer.quantize(x, "shared").data(); });
      }
      for (auto& t : threads) t.join();
      for (const at::Tensor& r : results)
        CHECK(q::test::bit_diff(r, expected.data()).mismatches == 0);
    }
  }
}

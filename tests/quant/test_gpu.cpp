// The CUDA kernels against the CPU kernels (themselves bit-exact with PyTorch), qlinear's CUDA
// paths against dequantize-then-linear, and the torch operators on CUDA tensors. Tagged [gpu]:
// without a CUDA device ctest reports them skipped; benchmarks/gpu/run.sh runs them on a GPU
// machine. Each REQUIREs a CUDA device, so run by hand it fails rather than passes where there is
// none. The kernels' arithmetic and work split also run on the CPU in test_codec.cpp.

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "apo_catch.hpp"

#include <limits>
#include <string>
#include <utility>

#include "apo/core/error.hpp"
#include "apo/core/machine.hpp"
#include "apo/quant/kernels.hpp"
#include "apo/quant/qlinear.hpp"
#include "apo/quant/reference.hpp"
#include "quant_test_support.hpp"

namespace q = apo::quant;
using q::QFormat;
using q::Scaling;

namespace {

const at::Device kGpu(at::kCUDA, 0);

int gpu_compute_capability() {
  const apo::MachineInfo machine = apo::probe_machine();
  REQUIRE_FALSE(machine.cuda_devices.empty());
  return machine.cuda_devices.front().compute_capability();
}

const q::QuantSpec kScaledSpecs[] = {
    {QFormat::fp8_e4m3, Scaling::per_row}, {QFormat::fp8_e4m3, Scaling::per_tensor},
    {QFormat::fp8_e5m2, Scaling::per_row}, {QFormat::fp8_e5m2, Scaling::per_tensor},
    {QFormat::int8, Scaling::per_row},     {QFormat::int8, Scaling::per_tensor},
};

double relative_gap(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kCPU).to(at::kDouble);
  const at::Tensor y = b.to(at::kCPU).to(at::kDouble);
  return (x - y).abs().max().item<double>() / std::max(y.abs().max().item<double>(), 1e-30);
}

}  // namespace

TEST_CASE("CUDA quantize and dequantize match the CPU kernels bit for bit", "[quant][gpu]") {
  REQUIRE(at::hasCUDA());
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  at::Tensor base = at::randn({129, 1031}, gen) * at::exp(at::randn({129, 1}, gen) * 3.0);
  base[7].zero_();
  for (at::ScalarType dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
    const at::Tensor x = base.to(dtype);
    for (q::QuantSpec spec : kScaledSpecs) {
      const q::QTensor cpu = q::quantize(x, spec, "w");
      const q::QTensor gpu = q::quantize(x.to(kGpu), spec, "w");
      CHECK(gpu.device() == kGpu);
      const auto scales = q::test::bit_diff(gpu.scales().cpu(), cpu.scales());
      const auto codes = q::test::bit_diff(gpu.data().cpu(), cpu.data(), x);
      INFO(q::to_string(spec) << " from " << c10::toString(dtype) << ": scales " << scales.text
                              << "; codes " << codes.text);
      CHECK(scales.mismatches == 0);
      CHECK(codes.mismatches == 0);
      for (at::ScalarType out : {at::kFloat, at::kHalf, at::kBFloat16}) {
        const auto values = q::test::bit_diff(gpu.dequantize(out).cpu(), cpu.dequantize(out));
        INFO("dequantize to " << c10::toString(out) << ": " << values.text);
        CHECK(values.mismatches == 0);
      }
    }
  }
}

TEST_CASE("CUDA encoders match PyTorch on every fp16 and bf16 value", "[quant][gpu]") {
  REQUIRE(at::hasCUDA());
  for (auto [format, dtype, max_value] :
       {std::tuple{QFormat::fp8_e4m3, at::kFloat8_e4m3fn, 448.0f},
        std::tuple{QFormat::fp8_e5m2, at::kFloat8_e5m2, 57344.0f}}) {
    for (at::ScalarType source : {at::kHalf, at::kBFloat16}) {
      const at::Tensor values =
          at::cat({q::test::all_finite_16bit(source).clamp(-max_value, max_value),
                   at::tensor({max_value, -max_value}).to(source)});
      const q::QTensor gpu = q::quantize(values.to(kGpu), {format, Scaling::per_tensor}, "sweep");
      REQUIRE(gpu.scales().cpu().item<float>() == 1.0f);
      const auto diff =
          q::test::bit_diff(gpu.data().cpu(), values.to(at::kFloat).to(dtype), values);
      INFO(q::to_string(format) << " from " << c10::toString(source) << ": " << diff.text);
      CHECK(diff.mismatches == 0);
    }
  }
}

TEST_CASE("CUDA quantize reports NaN by tensor name", "[quant][gpu]") {
  REQUIRE(at::hasCUDA());
  at::Tensor x = at::randn({8, 64});
  x[5][9] = std::numeric_limits<float>::quiet_NaN();
  try {
    (void)q::quantize(x.to(kGpu), {QFormat::fp8_e4m3, Scaling::per_row},
                      "blocks.1.attn.to_v.weight");
    FAIL("no error");
  } catch (const apo::Error& e) {
    CHECK(e.context() == "blocks.1.attn.to_v.weight");
    CHECK(std::string(e.what()).find("first: nan at [5, 9]") != std::string::npos);
  }
}

TEST_CASE("qlinear on CUDA: _scaled_mm where the device has fp8 GEMMs, tiles otherwise",
          "[quant][gpu]") {
  REQUIRE(at::hasCUDA());
  const int capability = gpu_compute_capability();
  const at::Tensor w = at::randn({512, 256}) * 0.05;
  const at::Tensor bias = at::randn({512});
  for (at::ScalarType dtype : {at::kBFloat16, at::kFloat}) {
    const at::Tensor x = at::randn({64, 256}).to(dtype).to(kGpu);
    for (q::QuantSpec spec : {q::QuantSpec{QFormat::fp8_e4m3, Scaling::per_tensor},
                              q::QuantSpec{QFormat::fp8_e4m3, Scaling::per_row},
                              q::QuantSpec{QFormat::fp8_e5m2, Scaling::per_tensor},
                              q::QuantSpec{QFormat::int8, Scaling::per_row}}) {
      const q::QTensor qw = q::quantize(w.to(kGpu), spec, "w");
      const q::QLinearPlan plan = q::plan_qlinear(x, qw);
      const at::Tensor y = q::qlinear(x, qw, bias.to(kGpu));
      const at::Tensor expected = at::linear(x, qw.dequantize(dtype), bias.to(kGpu).to(dtype));
      const double gap = relative_gap(y, expected);
      INFO(q::to_string(spec) << ", x " << c10::toString(dtype) << ", sm " << capability << ": "
                              << plan.reason
                              << "; max |qlinear - dequantize+linear| / max |y| = " << gap);
      CHECK(y.device() == kGpu);
      CHECK(y.scalar_type() == dtype);
      const bool fp8_gemm =
          capability >= 89 && spec.format != QFormat::int8 &&
          (spec.scaling == Scaling::per_tensor ||
           (capability >= 90 && dtype == at::kBFloat16 && spec.format == QFormat::fp8_e4m3));
      CHECK((plan.path == q::QLinearPath::cuda_scaled_mm) == fp8_gemm);
      // _scaled_mm also quantizes x to E4M3 (about 2^-4 relative error per element); the tiled
      // path only rounds differently.
      CHECK(gap <= (fp8_gemm ? 0.08 : (dtype == at::kFloat ? 1e-5 : 2e-2)));
      const at::Tensor tiled = q::qlinear(x, qw, bias.to(kGpu), {.allow_scaled_mm = false});
      CHECK(relative_gap(tiled, expected) <= (dtype == at::kFloat ? 1e-5 : 2e-2));
    }
  }
}

TEST_CASE("the torch operators run on CUDA tensors", "[quant][gpu]") {
  REQUIRE(at::hasCUDA());
  const auto quantize =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("apo::quantize", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, c10::string_view,
                                                    std::optional<c10::string_view>)>();
  const auto qlinear =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("apo::qlinear", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            c10::string_view, const std::optional<at::Tensor>&)>();
  const at::Tensor w = at::randn({64, 128});
  const auto [codes, scale] = quantize.call(w.to(kGpu), "fp8_e4m3", std::nullopt);
  const q::QTensor reference = q::quantize(w, {QFormat::fp8_e4m3, Scaling::per_row}, "w");
  CHECK(q::test::bit_diff(codes.cpu(), reference.data()).mismatches == 0);
  const at::Tensor x = at::randn({16, 128}).to(kGpu);
  const at::Tensor y = qlinear.call(x, codes, scale, "fp8_e4m3", std::nullopt);
  CHECK(relative_gap(y, at::linear(x, reference.dequantize().to(kGpu))) <= 0.08);
}

TEST_CASE("CUDA kernels match the CPU kernels on long rows, one row and unaligned pointers",
          "[quant][gpu]") {
  REQUIRE(at::hasCUDA());
  // Few long rows are split across warps; rows of whole 16-element groups take the 16-byte
  // path; a view one element in takes the element path.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  for (auto [rows, length] : {std::pair<std::int64_t, std::int64_t>{3, 1 << 20},
                              {1, (1 << 22) + 3},
                              {4096, 4096},
                              {777, 48}}) {
    const at::Tensor base = at::randn({rows, length}, gen);
    for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
      const at::Tensor padded = at::cat({at::zeros({1}), base.flatten()}).to(dtype).to(kGpu);
      for (bool aligned : {true, false}) {
        const at::Tensor x = aligned ? base.to(dtype).to(kGpu)
                                     : padded.narrow(0, 1, base.numel()).view(base.sizes());
        for (q::QuantSpec spec : kScaledSpecs) {
          const q::QTensor cpu = q::quantize(x.cpu(), spec, "w");
          const q::QTensor gpu = q::quantize(x, spec, "w");
          const auto codes = q::test::bit_diff(gpu.data().cpu(), cpu.data());
          const auto scales = q::test::bit_diff(gpu.scales().cpu(), cpu.scales());
          const auto values = q::test::bit_diff(gpu.dequantize().cpu(), cpu.dequantize());
          INFO(rows << " x " << length << " " << c10::toString(dtype) << " " << q::to_string(spec)
                    << (aligned ? "" : " unaligned") << ": codes " << codes.text << "; scales "
                    << scales.text << "; values " << values.text);
          CHECK(codes.mismatches == 0);
          CHECK(scales.mismatches == 0);
          CHECK(values.mismatches == 0);
        }
      }
    }
  }
}

TEST_CASE("qlinear through _scaled_mm gives NaN rows for activations holding NaN", "[quant][gpu]") {
  REQUIRE(at::hasCUDA());
  const int capability = gpu_compute_capability();
  if (capability < 89) {
    WARN("sm " << capability << " has no fp8 GEMM: the _scaled_mm path does not run here");
    return;
  }
  const q::QTensor w =
      q::quantize(at::randn({256, 512}).to(kGpu), {QFormat::fp8_e4m3, Scaling::per_tensor}, "w");
  at::Tensor x = at::randn({32, 512}).to(at::kBFloat16);
  x[5][100] = std::numeric_limits<float>::quiet_NaN();
  const at::Tensor x_gpu = x.to(kGpu);
  REQUIRE(q::plan_qlinear(x_gpu, w).path == q::QLinearPath::cuda_scaled_mm);
  const at::Tensor y = q::qlinear(x_gpu, w).cpu();
  // One scale for the whole activation: NaN anywhere makes the whole result NaN, never finite
  // values computed from a clamped NaN.
  CHECK(y.isnan().all().item<bool>());
  if (capability >= 90) {
    const q::QTensor rowwise =
        q::quantize(at::randn({256, 512}).to(kGpu), {QFormat::fp8_e4m3, Scaling::per_row}, "w");
    const at::Tensor y_rows = q::qlinear(x_gpu, rowwise).cpu();
    CHECK(y_rows[5].isnan().all().item<bool>());
    CHECK_FALSE(y_rows.narrow(0, 0, 5).isnan().any().item<bool>());
    CHECK_FALSE(y_rows.narrow(0, 6, 26).isnan().any().item<bool>());
  }
}

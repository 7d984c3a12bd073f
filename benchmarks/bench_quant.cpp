// bench_quant: the fused quantization kernels against what a careful PyTorch user runs instead.
//   - quantize / dequantize against the eager chain written with care: amax in the input's own
//     dtype (amax and amin, no temporary), one conversion to float32, in-place ops; and,
//     for int8, against ATen's native at::quantize_per_channel / at::quantize_per_tensor;
//   - bandwidth against the fastest copy of the same bytes this machine does (the larger of a
//     parallel at::copy_ and a memcpy split over ATen's threads);
//   - qlinear against dequantize + linear, and for int8 in bfloat16 against ATen's
//     at::_weight_int8pack_mm (no dequantized copy), in time and peak extra memory.
// Every candidate's output is checked against its baseline's before a time is reported.
// 4096 x 4096 float32 and bfloat16 weights (1024 x 1024 with --quick), CPU tensors; the CUDA
// kernels are exercised by the [gpu] tests.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <malloc.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "../tests/support/cpu_allocation_counter.hpp"
#include "apo/monitor/benchmark.hpp"
#include "apo/quant/kernels.hpp"
#include "apo/quant/qlinear.hpp"

namespace bench = apo::bench;
namespace q = apo::quant;
using bench::Better;
using q::QFormat;
using q::Scaling;

namespace {

constexpr double kGB = 1e9;

// --- The careful eager chain ---------------------------------------------------------------

at::Tensor as_rows(const at::Tensor& x, q::QuantSpec spec) {
  const std::int64_t rows = spec.scaling == Scaling::per_row ? q::scaling_rows(x.sizes()) : 1;
  return x.reshape({rows, -1});
}

// A float32 tensor holding the format's largest value: ATen divides by it exactly (the fused
// kernels divide, as torchao's float8 recipe does).
at::Tensor format_max(q::QFormat format) {
  return at::full({1}, q::traits(format).max_value, at::kFloat);
}

// max |x| per row in x's own dtype, as max(max x, -min x): ATen's amax and amin are vectorized
// single passes with no temporary, several times faster here than abs().amax() or the infinity
// norm; a maximum of magnitudes is exact in any dtype.
at::Tensor careful_scales(const at::Tensor& rows, q::QuantSpec spec) {
  const at::Tensor amax = at::maximum(rows.amax(1), rows.amin(1).neg_());
  return at::div(amax.to(at::kFloat).clamp_(q::kAmaxFloor, q::kAmaxCeiling),
                 format_max(spec.format));
}

struct Quantized {
  at::Tensor codes;
  at::Tensor scales;
};

// One conversion to float32, then clamp and round in place. bf16 is converted first and divided
// in place (ATen's mixed-dtype division is slower than the two passes); float32 is divided into
// a new tensor (its input must not change).
Quantized careful_quantize(const at::Tensor& x, q::QuantSpec spec) {
  const at::Tensor rows = as_rows(x, spec);
  const at::Tensor scales = careful_scales(rows, spec);
  const float max_value = q::traits(spec.format).max_value;
  at::Tensor y = rows.scalar_type() == at::kFloat ? at::div(rows, scales.unsqueeze(1))
                                                  : rows.to(at::kFloat).div_(scales.unsqueeze(1));
  y.clamp_(-max_value, max_value);
  if (spec.format == QFormat::int8) y.round_();
  return {y.to(q::storage_dtype(spec.format, x.scalar_type())).view(x.sizes()), scales};
}

at::Tensor careful_dequantize(const at::Tensor& codes, const at::Tensor& scales,
                              at::ScalarType dtype) {
  const std::int64_t rows = scales.numel();
  const at::Tensor codes_2d = codes.reshape({rows, -1});
  // int8 promotes to float32 inside the multiplication (one pass); ATen does not promote fp8,
  // so it is converted first and scaled in place.
  at::Tensor y = codes.scalar_type() == at::kChar
                     ? at::mul(codes_2d, scales.unsqueeze(1))
                     : codes_2d.to(at::kFloat).mul_(scales.unsqueeze(1));
  return (dtype == at::kFloat ? y : y.to(dtype)).view(codes.sizes());
}

// ATen's own int8 quantization (zero points 0: symmetric, as apo's int8). It multiplies by the
// reciprocal of the scale, so a few codes differ from a division by one step.
struct NativeInt8 {
  at::Tensor zero_points;
  at::Tensor operator()(const at::Tensor& x, q::QuantSpec spec) const {
    const at::Tensor rows = as_rows(x, spec);
    const at::Tensor scales = careful_scales(rows, spec);
    const at::Tensor input = rows.to(at::kFloat);  // the quantizer takes float32 only
    if (spec.scaling == Scaling::per_tensor) {
      return at::quantize_per_tensor(input, scales.item<double>(), 0, at::kQInt8);
    }
    return at::quantize_per_channel(input, scales, zero_points, 0, at::kQInt8);
  }
};

// --- Checks ---------------------------------------------------------------------------------

bool bit_equal(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return false;
  const auto bytes = [](const at::Tensor& t) { return t.contiguous().view(at::kByte); };
  return at::equal(bytes(a), bytes(b));
}

// Codes (int8) that differ from apo's by more than one step, and how many differ at all.
std::pair<std::int64_t, std::int64_t> code_steps(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor gap = (a.to(at::kInt) - b.to(at::kInt)).abs();
  return {(gap > 1).sum().item<std::int64_t>(), (gap > 0).sum().item<std::int64_t>()};
}

// Largest |a - b| over the largest |b|: GEMM results in different summation orders.
double relative_gap(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor a32 = a.to(at::kFloat);
  const at::Tensor b32 = b.to(at::kFloat);
  return (a32 - b32).abs().max().item<double>() / b32.abs().max().item<double>();
}

// --- The copy roof --------------------------------------------------------------------------

// Copies the same bytes two ways, as fast as this machine copies: at::copy_ (parallel over
// ATen's threads) and a memcpy split into one piece per thread.
class Copies {
 public:
  explicit Copies(std::int64_t bytes) : src_(at::randn({bytes / 4})), dst_(at::empty_like(src_)) {}
  std::int64_t bytes() const { return static_cast<std::int64_t>(src_.nbytes()); }
  void aten() { dst_.copy_(src_); }
  void memcpy_split() {
    const auto* from = static_cast<const char*>(src_.const_data_ptr());
    auto* to = static_cast<char*>(dst_.mutable_data_ptr());
    const std::int64_t threads = at::get_num_threads();
    const std::int64_t piece = (bytes() + threads - 1) / threads;
    at::parallel_for(0, threads, 1, [&](std::int64_t t0, std::int64_t t1) {
      for (std::int64_t t = t0; t < t1; ++t) {
        const std::int64_t begin = t * piece;
        const std::int64_t end = std::min(bytes(), begin + piece);
        if (begin < end)
          std::memcpy(to + begin, from + begin, static_cast<std::size_t>(end - begin));
      }
    });
    bench::do_not_optimize(to[0]);
  }

 private:
  at::Tensor src_;
  at::Tensor dst_;
};

std::string dtype_name(at::ScalarType dtype) {
  return dtype == at::kFloat ? "fp32" : "bf16";
}

}  // namespace

int main(int argc, char** argv) {
  // glibc maps blocks above its mmap threshold afresh and unmaps them on free, so every 64 MiB
  // result would be page-faulted in and zeroed by the kernel, for both sides. Keep freed memory
  // in the heap, as a caching allocator would.
  bench::check_output(
      mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1 && mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1,
      "mallopt refused the thresholds");
  const bench::Options options = bench::parse_options(
      argc, argv,
      "bench_quant: fused quantization kernels and qlinear against careful libtorch chains, "
      "ATen's int8 quantizers and _weight_int8pack_mm");
  const std::int64_t n = options.quick ? 1024 : 4096;
  const std::int64_t tokens = options.quick ? 64 : 256;
  const std::string size = std::to_string(n) + "x" + std::to_string(n);
  bench::Report report("bench_quant");
  const std::string kernel(q::best_cpu_kernel_name());
  const std::string threads = std::to_string(at::get_num_threads()) + " threads";
  const NativeInt8 native_int8{at::zeros({n}, at::kLong)};

  const q::QuantSpec specs[] = {
      {QFormat::fp8_e4m3, Scaling::per_row}, {QFormat::fp8_e4m3, Scaling::per_tensor},
      {QFormat::fp8_e5m2, Scaling::per_row}, {QFormat::int8, Scaling::per_row},
      {QFormat::int8, Scaling::per_tensor},
  };
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const at::Tensor w = (at::randn({n, n}) * 0.02).to(dtype);
    const std::int64_t in_bytes = static_cast<std::int64_t>(w.nbytes());

    Copies copies(in_bytes);
    const std::vector<double> copy_t = bench::interleaved_medians(
        {[&] { copies.aten(); }, [&] { copies.memcpy_split(); }}, 15, 1.0);
    const double copy_s = std::min(copy_t[0], copy_t[1]);
    const double copy_gbps = 2.0 * static_cast<double>(in_bytes) / copy_s / kGB;
    std::printf("copy roof, %s %s: at::copy_ %.1f GB/s, memcpy over %s %.1f GB/s (in + out)\n",
                size.c_str(), dtype_name(dtype).c_str(),
                2.0 * static_cast<double>(in_bytes) / copy_t[0] / kGB, threads.c_str(),
                2.0 * static_cast<double>(in_bytes) / copy_t[1] / kGB);

    for (q::QuantSpec spec : specs) {
      const std::string name = q::to_string(spec) + " " + size + " " + dtype_name(dtype);
      const q::QTensor qw = q::quantize(w, spec, "w");
      const Quantized chain = careful_quantize(w, spec);
      bench::check_output(bit_equal(qw.scales(), chain.scales) && bit_equal(qw.data(), chain.codes),
                          "quantize " + name + ": apo and the careful chain differ");
      bench::check_output(
          bit_equal(qw.dequantize(dtype), careful_dequantize(chain.codes, chain.scales, dtype)),
          "dequantize " + name + ": apo and the careful chain differ");
      const bool int8 = spec.format == QFormat::int8;
      if (int8) {
        const auto [far, near] =
            code_steps(qw.data(), native_int8(w, spec).int_repr().view(w.sizes()));
        bench::check_output(far == 0, "quantize " + name + ": ATen's int8 codes differ by > 1");
        std::printf("%s: %lld of %lld codes of ATen's quantizer one step from apo's\n",
                    name.c_str(), static_cast<long long>(near), static_cast<long long>(w.numel()));
      }

      std::vector<std::function<void()>> runs{
          [&] { bench::do_not_optimize(q::quantize(w, spec, "w")); },
          [&] { bench::do_not_optimize(careful_quantize(w, spec)); },
          [&] { bench::do_not_optimize(qw.dequantize(dtype)); },
          [&] { bench::do_not_optimize(careful_dequantize(qw.data(), qw.scales(), dtype)); },
      };
      if (int8) runs.push_back([&] { bench::do_not_optimize(native_int8(w, spec)); });
      const std::vector<double> t = bench::interleaved_medians(runs);

      // Bytes a kernel must move (its input and its output) per second, against the copy's read
      // and write of the weight's bytes.
      const double moved = static_cast<double>(in_bytes + qw.bytes());
      report.add({"quantize " + name + " (fused " + kernel + " vs careful eager chain)", "time",
                  t[0] * 1e3, "ms", t[1] * 1e3, Better::lower});
      if (int8) {
        report.add({"quantize " + name + " (fused " + kernel + " vs ATen quantize_per_" +
                        (spec.scaling == Scaling::per_row ? "channel" : "tensor") + ")",
                    "time", t[0] * 1e3, "ms", t[4] * 1e3, Better::lower});
      }
      report.add(
          {"quantize " + name + " (bytes in + out per second vs fastest copy, " + threads + ")",
           "bandwidth", moved / t[0] / kGB, "GB/s", copy_gbps, Better::higher});
      report.add({"dequantize " + name + " (fused " + kernel + " vs careful eager chain)", "time",
                  t[2] * 1e3, "ms", t[3] * 1e3, Better::lower});
      report.add(
          {"dequantize " + name + " (bytes in + out per second vs fastest copy, " + threads + ")",
           "bandwidth", moved / t[2] / kGB, "GB/s", copy_gbps, Better::higher});
    }

    // qlinear: x [tokens, n] in the weight's dtype.
    for (q::QuantSpec spec : {q::QuantSpec{QFormat::fp8_e4m3, Scaling::per_row},
                              q::QuantSpec{QFormat::int8, Scaling::per_row}}) {
      const std::string name = q::to_string(spec) + " " + size + " " + dtype_name(dtype) + ", x " +
                               std::to_string(tokens) + "x" + std::to_string(n);
      const q::QTensor qw = q::quantize(w, spec, "w");
      const at::Tensor x = at::randn({tokens, n}).to(dtype);
      // ATen's int8 weight-only GEMM is fast on the CPU for bfloat16 only (float32 and float16
      // take a path about 10x slower than dequantize + linear); there it is the baseline.
      const bool int8pack = spec.format == QFormat::int8 && dtype == at::kBFloat16;
      const at::Tensor pack_scales = qw.scales().to(dtype);
      const auto dequantize_linear = [&] { return at::linear(x, qw.dequantize(dtype)); };
      const auto int8pack_mm = [&] { return at::_weight_int8pack_mm(x, qw.data(), pack_scales); };

      const at::Tensor ours = q::qlinear(x, qw);
      const double gap = relative_gap(ours, dequantize_linear());
      // Both sum the same products in different orders: within a few roundings of x's dtype.
      const double tolerance = dtype == at::kFloat ? 1e-5 : 2e-2;
      bench::check_output(gap <= tolerance, "qlinear " + name +
                                                ": differs from dequantize + "
                                                "linear by " +
                                                std::to_string(gap));
      if (int8pack) {
        const double pack_gap = relative_gap(ours, int8pack_mm());
        bench::check_output(pack_gap <= tolerance, "qlinear " + name +
                                                       ": differs from _weight_int8pack_mm by " +
                                                       std::to_string(pack_gap));
      }

      std::vector<std::function<void()>> runs{[&] { bench::do_not_optimize(q::qlinear(x, qw)); },
                                              [&] { bench::do_not_optimize(dequantize_linear()); }};
      if (int8pack) runs.push_back([&] { bench::do_not_optimize(int8pack_mm()); });
      const std::vector<double> t = bench::interleaved_medians(runs);
      report.add({"qlinear " + name + " (vs dequantize + linear)", "time", t[0] * 1e3, "ms",
                  t[1] * 1e3, Better::lower});
      if (int8pack) {
        report.add({"qlinear " + name + " (vs at::_weight_int8pack_mm)", "time", t[0] * 1e3, "ms",
                    t[2] * 1e3, Better::lower});
      }

      const std::int64_t output = tokens * n * static_cast<std::int64_t>(x.element_size());
      const std::int64_t dequantized = n * n * static_cast<std::int64_t>(x.element_size());
      const auto peak_extra = [&](auto&& run) {
        q::test::CpuAllocationCounter::Scope scope;
        bench::do_not_optimize(run());
        return scope.peak_bytes() - output;
      };
      const std::int64_t qlinear_peak = peak_extra([&] { return q::qlinear(x, qw); });
      report.add({"qlinear " + name + " peak extra memory (vs dequantize + linear)",
                  "peak_extra_memory", static_cast<double>(qlinear_peak), "bytes",
                  static_cast<double>(peak_extra(dequantize_linear)), Better::lower});
      if (int8pack) {
        report.add({"qlinear " + name + " peak extra memory (vs at::_weight_int8pack_mm)",
                    "peak_extra_memory", static_cast<double>(qlinear_peak), "bytes",
                    static_cast<double>(peak_extra(int8pack_mm)), Better::lower});
      }
      report.add({"qlinear " + name + " peak extra memory / dequantized weight", "peak_extra_share",
                  100.0 * static_cast<double>(qlinear_peak) / static_cast<double>(dequantized), "%",
                  std::nullopt, Better::lower});
    }
  }
  return bench::finish(report, options);
}

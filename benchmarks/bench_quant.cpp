// bench_quant: the fused quantization kernels against the same math as a chain of libtorch ops,
// their bandwidth against a plain memory copy of the same bytes, dequantization, and qlinear
// against dequantize-then-matmul (time and peak extra memory). 4096 x 4096 float32 and bfloat16
// weights (1024 x 1024 with --quick). CPU tensors; the CUDA kernels are exercised by the [gpu]
// tests.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <malloc.h>

#include <cstring>
#include <string>

#include "../tests/quant/cpu_allocation_counter.hpp"
#include "apo/monitor/benchmark.hpp"
#include "apo/quant/kernels.hpp"
#include "apo/quant/qlinear.hpp"
#include "apo/quant/reference.hpp"

namespace bench = apo::bench;
namespace q = apo::quant;
using bench::Better;
using q::QFormat;
using q::Scaling;

namespace {

constexpr double kGB = 1e9;

// Copies `bytes` bytes on every ATen thread, as the kernels run: the machine's copy bandwidth.
double copy_seconds(std::int64_t bytes) {
  const at::Tensor src = at::randn({bytes / 4});
  at::Tensor dst = at::empty_like(src);
  const auto* from = static_cast<const char*>(src.const_data_ptr());
  auto* to = static_cast<char*>(dst.mutable_data_ptr());
  return bench::median_seconds([&] {
    at::parallel_for(0, bytes, 1 << 20, [&](std::int64_t begin, std::int64_t end) {
      std::memcpy(to + begin, from + begin, static_cast<std::size_t>(end - begin));
    });
    bench::do_not_optimize(to[0]);
  });
}

std::string dtype_name(at::ScalarType dtype) { return dtype == at::kFloat ? "fp32" : "bf16"; }

}  // namespace

int main(int argc, char** argv) {
  // glibc returns blocks above its mmap threshold to the OS on free, so every 64 MiB result
  // would be page-faulted in afresh and the kernel's page zeroing would dominate every
  // measurement. Keep freed memory in the heap, as a caching allocator would.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  const bench::Options options = bench::parse_options(
      argc, argv, "bench_quant: fused quantization kernels and qlinear against libtorch chains");
  const std::int64_t n = options.quick ? 1024 : 4096;
  const std::int64_t tokens = options.quick ? 64 : 256;
  const std::string size = std::to_string(n) + "x" + std::to_string(n);
  bench::Report report("bench_quant");
  const std::string kernel(q::best_cpu_kernel_name());
  const std::string threads = std::to_string(at::get_num_threads()) + " threads";

  const q::QuantSpec specs[] = {
      {QFormat::fp8_e4m3, Scaling::per_row}, {QFormat::fp8_e4m3, Scaling::per_tensor},
      {QFormat::fp8_e5m2, Scaling::per_row}, {QFormat::int8, Scaling::per_row},
      {QFormat::int8, Scaling::per_tensor},
  };
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const at::Tensor w = (at::randn({n, n}) * 0.02).to(dtype);
    const std::int64_t in_bytes = static_cast<std::int64_t>(w.nbytes());
    // The machine's limit: reading and writing the weight's bytes once each.
    const double copy_s = copy_seconds(in_bytes);
    const double copy_gbps = 2.0 * static_cast<double>(in_bytes) / copy_s / kGB;
    report.add({"memcpy " + size + " " + dtype_name(dtype) + " (" + threads + ")", "bandwidth",
                copy_gbps, "GB/s", std::nullopt, Better::higher});

    for (q::QuantSpec spec : specs) {
      const std::string name = q::to_string(spec) + " " + size + " " + dtype_name(dtype);
      const double fused_s =
          bench::median_seconds([&] { bench::do_not_optimize(q::quantize(w, spec, "w")); });
      const double chain_s =
          bench::median_seconds([&] { bench::do_not_optimize(q::reference::quantize(w, spec)); });
      report.add({"quantize " + name + " (fused " + kernel + " vs libtorch chain)", "time",
                  fused_s * 1e3, "ms", chain_s * 1e3, Better::lower});
      const q::QTensor qw = q::quantize(w, spec, "w");
      const double moved = static_cast<double>(in_bytes + qw.bytes());
      report.add({"quantize " + name + " (bytes in + out per second vs memcpy)", "bandwidth",
                  moved / fused_s / kGB, "GB/s", copy_gbps, Better::higher});

      const double dq_fused_s = bench::median_seconds([&] { bench::do_not_optimize(qw.dequantize()); });
      const double dq_chain_s = bench::median_seconds([&] {
        bench::do_not_optimize(q::reference::dequantize(qw.data(), qw.scales(), spec, dtype));
      });
      report.add({"dequantize " + name + " (fused " + kernel + " vs libtorch chain)", "time",
                  dq_fused_s * 1e3, "ms", dq_chain_s * 1e3, Better::lower});
      report.add({"dequantize " + name + " (bytes in + out per second vs memcpy)", "bandwidth",
                  (moved) / dq_fused_s / kGB, "GB/s", copy_gbps, Better::higher});
    }

    // qlinear: x [tokens, n] in the weight's dtype against dequantize-then-linear.
    for (q::QuantSpec spec : {q::QuantSpec{QFormat::fp8_e4m3, Scaling::per_row},
                              q::QuantSpec{QFormat::int8, Scaling::per_row}}) {
      const std::string name = q::to_string(spec) + " " + size + " " + dtype_name(dtype) +
                               ", x " + std::to_string(tokens) + "x" + std::to_string(n);
      const q::QTensor qw = q::quantize(w, spec, "w");
      const at::Tensor x = at::randn({tokens, n}).to(dtype);
      const double qlinear_s = bench::median_seconds([&] { bench::do_not_optimize(q::qlinear(x, qw)); });
      const double chain_s = bench::median_seconds(
          [&] { bench::do_not_optimize(at::linear(x, qw.dequantize(dtype))); });
      report.add({"qlinear " + name + " (vs dequantize + linear)", "time", qlinear_s * 1e3, "ms",
                  chain_s * 1e3, Better::lower});

      const std::int64_t output = tokens * n * static_cast<std::int64_t>(x.element_size());
      const std::int64_t dequantized = n * n * static_cast<std::int64_t>(x.element_size());
      std::int64_t qlinear_peak = 0;
      std::int64_t chain_peak = 0;
      {
        q::test::CpuAllocationCounter::Scope scope;
        bench::do_not_optimize(q::qlinear(x, qw));
        qlinear_peak = scope.peak_bytes() - output;
      }
      {
        q::test::CpuAllocationCounter::Scope scope;
        bench::do_not_optimize(at::linear(x, qw.dequantize(dtype)));
        chain_peak = scope.peak_bytes() - output;
      }
      report.add({"qlinear " + name + " peak extra memory (vs dequantize + linear)",
                  "peak_extra_memory", static_cast<double>(qlinear_peak), "bytes",
                  static_cast<double>(chain_peak), Better::lower});
      report.add({"qlinear " + name + " peak extra memory / dequantized weight",
                  "peak_extra_share", 100.0 * static_cast<double>(qlinear_peak) /
                                          static_cast<double>(dequantized),
                  "%", std::nullopt, Better::lower});
    }
  }
  return bench::finish(report, options);
}

// bench_quant: the fused quantization kernels against the same math as a chain of libtorch ops,
// their bandwidth against a plain memory copy of the same bytes, dequantization, and qlinear
// against dequantize-then-matmul (time and peak extra memory). 4096 x 4096 float32 and bfloat16
// weights (1024 x 1024 with --quick). CPU tensors; the CUDA kernels are exercised by the [gpu]
// tests.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

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

// Median seconds of each run, measured round-robin (after one warm-up each) until every run has
// run `min_runs` times and `min_total_s` have passed. Candidate and baseline then see the same
// machine load, which on a shared machine moves by more than the differences measured.
std::vector<double> interleaved_medians(const std::vector<std::function<void()>>& runs,
                                        int min_runs = 7, double min_total_s = 0.5) {
  using clock = std::chrono::steady_clock;
  for (const auto& run : runs) run();
  std::vector<std::vector<double>> times(runs.size());
  const auto start = clock::now();
  while (static_cast<int>(times[0].size()) < min_runs ||
         std::chrono::duration<double>(clock::now() - start).count() < min_total_s) {
    for (std::size_t i = 0; i < runs.size(); ++i) {
      const auto t0 = clock::now();
      runs[i]();
      times[i].push_back(std::chrono::duration<double>(clock::now() - t0).count());
    }
    if (times[0].size() >= 200) break;
  }
  std::vector<double> medians;
  for (auto& t : times) {
    std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
    medians.push_back(t[t.size() / 2]);
  }
  return medians;
}

// Copies a buffer of `bytes` on every ATen thread, as the kernels run: the machine's limit.
class Copy {
 public:
  explicit Copy(std::int64_t bytes) : src_(at::randn({bytes / 4})), dst_(at::empty_like(src_)) {}
  std::int64_t bytes() const { return static_cast<std::int64_t>(src_.nbytes()); }
  void operator()() {
    const auto* from = static_cast<const char*>(src_.const_data_ptr());
    auto* to = static_cast<char*>(dst_.mutable_data_ptr());
    at::parallel_for(0, bytes(), 1 << 20, [&](std::int64_t begin, std::int64_t end) {
      std::memcpy(to + begin, from + begin, static_cast<std::size_t>(end - begin));
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
    Copy copy(in_bytes);
    for (q::QuantSpec spec : specs) {
      const std::string name = q::to_string(spec) + " " + size + " " + dtype_name(dtype);
      const q::QTensor qw = q::quantize(w, spec, "w");
      const std::vector<double> t = interleaved_medians({
          [&] { bench::do_not_optimize(q::quantize(w, spec, "w")); },
          [&] { bench::do_not_optimize(q::reference::quantize(w, spec)); },
          [&] { bench::do_not_optimize(qw.dequantize()); },
          [&] {
            bench::do_not_optimize(q::reference::dequantize(qw.data(), qw.scales(), spec, dtype));
          },
          [&] { copy(); },
      });
      // Bytes a kernel must move (its input and its output) per second, against the copy's
      // read and write of the weight's bytes.
      const double moved = static_cast<double>(in_bytes + qw.bytes());
      const double copy_gbps = 2.0 * static_cast<double>(in_bytes) / t[4] / kGB;
      report.add({"quantize " + name + " (fused " + kernel + " vs libtorch chain)", "time",
                  t[0] * 1e3, "ms", t[1] * 1e3, Better::lower});
      report.add({"quantize " + name + " (bytes in + out per second vs memcpy, " + threads + ")",
                  "bandwidth", moved / t[0] / kGB, "GB/s", copy_gbps, Better::higher});
      report.add({"dequantize " + name + " (fused " + kernel + " vs libtorch chain)", "time",
                  t[2] * 1e3, "ms", t[3] * 1e3, Better::lower});
      report.add({"dequantize " + name + " (bytes in + out per second vs memcpy, " + threads + ")",
                  "bandwidth", moved / t[2] / kGB, "GB/s", copy_gbps, Better::higher});
    }

    // qlinear: x [tokens, n] in the weight's dtype against dequantize-then-linear.
    for (q::QuantSpec spec : {q::QuantSpec{QFormat::fp8_e4m3, Scaling::per_row},
                              q::QuantSpec{QFormat::int8, Scaling::per_row}}) {
      const std::string name = q::to_string(spec) + " " + size + " " + dtype_name(dtype) + ", x " +
                               std::to_string(tokens) + "x" + std::to_string(n);
      const q::QTensor qw = q::quantize(w, spec, "w");
      const at::Tensor x = at::randn({tokens, n}).to(dtype);
      const std::vector<double> t = interleaved_medians({
          [&] { bench::do_not_optimize(q::qlinear(x, qw)); },
          [&] { bench::do_not_optimize(at::linear(x, qw.dequantize(dtype))); },
      });
      report.add({"qlinear " + name + " (vs dequantize + linear)", "time", t[0] * 1e3, "ms",
                  t[1] * 1e3, Better::lower});

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
      report.add({"qlinear " + name + " peak extra memory / dequantized weight", "peak_extra_share",
                  100.0 * static_cast<double>(qlinear_peak) / static_cast<double>(dequantized), "%",
                  std::nullopt, Better::lower});
    }
  }
  return bench::finish(report, options);
}

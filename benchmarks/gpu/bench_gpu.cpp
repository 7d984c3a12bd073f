// bench_gpu: apo's CUDA paths on a GPU, each against what a user would otherwise run, measured in
// the same run with CUDA events on torch's current stream, candidate and baseline interleaved:
//   - the quantization kernels against the device's memory bandwidth (a device-to-device copy of
//     the same bytes) and against the chain of torch ops they replace (outputs compared first);
//   - fp8 qlinear through at::_scaled_mm against a bf16 matmul, on large and on skinny shapes;
//   - a CachingPool over CudaDeviceResource against torch's caching allocator;
//   - weight streaming against resident weights and against copying each block on demand.
// Needs a CUDA device and apo built with CUDA (benchmarks/gpu/run.sh builds and runs it).

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "apo/core/units.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/memory/cuda_resources.hpp"
#include "apo/memory/torch_allocator.hpp"
#include "apo/models/weight_streaming.hpp"
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
const at::Device kGpu(at::kCUDA, 0);

cudaStream_t current_stream() {
  const c10::impl::VirtualGuardImpl guard(c10::DeviceType::CUDA);
  return reinterpret_cast<cudaStream_t>(guard.getStream(kGpu).native_handle());
}

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(fmt::format("{}: {}", what, cudaGetErrorString(status)));
  }
}

// Milliseconds per call of each run, measured with events on the current stream: rounds of
// `calls` calls each, the runs interleaved round by round, the median round kept.
std::vector<double> gpu_ms(const std::vector<std::function<void()>>& runs, int calls = 10,
                           int rounds = 7) {
  const cudaStream_t stream = current_stream();
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");
  for (const auto& run : runs) run();  // warm-up: kernels loaded, pools filled
  check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  std::vector<std::vector<double>> times(runs.size());
  for (int r = 0; r < rounds; ++r) {
    for (std::size_t i = 0; i < runs.size(); ++i) {
      check(cudaEventRecord(start, stream), "cudaEventRecord");
      for (int c = 0; c < calls; ++c) runs[i]();
      check(cudaEventRecord(stop, stream), "cudaEventRecord");
      check(cudaEventSynchronize(stop), "cudaEventSynchronize");
      float ms = 0;
      check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
      times[i].push_back(ms / calls);
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::vector<double> medians;
  for (auto& t : times) {
    std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
    medians.push_back(t[t.size() / 2]);
  }
  return medians;
}

std::string dtype_name(at::ScalarType dtype) {
  return dtype == at::kFloat ? "fp32" : "bf16";
}

double relative_gap(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.to(at::kDouble);
  const at::Tensor y = b.to(at::kDouble);
  return ((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item<double>();
}

[[noreturn]] void mismatch(const std::string& what) {
  throw std::runtime_error("output check failed: " + what);
}

// ---- quantization kernels --------------------------------------------------------------------

void quant_kernels(bench::Report& report, bool quick) {
  const std::int64_t n = quick ? 4096 : 8192;
  const std::string size = fmt::format("{}x{}", n, n);
  for (at::ScalarType dtype : {at::kBFloat16, at::kFloat}) {
    const at::Tensor w = (at::randn({n, n}, at::TensorOptions().device(kGpu)) * 0.02).to(dtype);
    const std::int64_t in_bytes = static_cast<std::int64_t>(w.nbytes());
    at::Tensor copy_target = at::empty_like(w);
    for (q::QuantSpec spec : {q::QuantSpec{QFormat::fp8_e4m3, Scaling::per_row},
                              q::QuantSpec{QFormat::fp8_e4m3, Scaling::per_tensor},
                              q::QuantSpec{QFormat::int8, Scaling::per_row}}) {
      const std::string name = fmt::format("{} {} {}", q::to_string(spec), size, dtype_name(dtype));
      const q::QTensor qw = q::quantize(w, spec, "w");
      const auto chain = q::reference::quantize(w, spec);
      if (!at::equal(qw.data().view(at::kByte), chain.data.view(at::kByte)) ||
          !at::equal(qw.scales(), chain.scales)) {
        mismatch("quantize " + name + " differs from the torch chain");
      }
      if (!at::equal(qw.dequantize(),
                     q::reference::dequantize(chain.data, chain.scales, spec, dtype))) {
        mismatch("dequantize " + name + " differs from the torch chain");
      }
      const std::vector<double> ms = gpu_ms({
          [&] { bench::do_not_optimize(q::quantize(w, spec, "w")); },
          [&] { bench::do_not_optimize(q::reference::quantize(w, spec)); },
          [&] { bench::do_not_optimize(qw.dequantize()); },
          [&] {
            bench::do_not_optimize(q::reference::dequantize(qw.data(), qw.scales(), spec, dtype));
          },
          [&] { copy_target.copy_(w); },
      });
      const double moved = static_cast<double>(in_bytes + qw.bytes());
      const double copy_gbps = 2.0 * static_cast<double>(in_bytes) / (ms[4] * 1e-3) / kGB;
      report.add({"quantize " + name + " (apo kernels vs torch chain)", "time", ms[0], "ms", ms[1],
                  Better::lower});
      report.add({"quantize " + name + " (bytes in + out per second vs device copy)", "bandwidth",
                  moved / (ms[0] * 1e-3) / kGB, "GB/s", copy_gbps, Better::higher});
      report.add({"dequantize " + name + " (apo kernels vs torch chain)", "time", ms[2], "ms",
                  ms[3], Better::lower});
      report.add({"dequantize " + name + " (bytes in + out per second vs device copy)", "bandwidth",
                  moved / (ms[2] * 1e-3) / kGB, "GB/s", copy_gbps, Better::higher});
    }
  }
}

// ---- fp8 qlinear ------------------------------------------------------------------------------

void fp8_qlinear(bench::Report& report, bool quick) {
  const std::int64_t k = quick ? 4096 : 8192;
  const std::int64_t n = k;
  for (std::int64_t m : {quick ? std::int64_t{4096} : std::int64_t{8192}, std::int64_t{16}}) {
    const at::Tensor x = at::randn({m, k}, at::TensorOptions().device(kGpu)).to(at::kBFloat16);
    const at::Tensor w_dense =
        (at::randn({n, k}, at::TensorOptions().device(kGpu)) * 0.02).to(at::kBFloat16);
    for (Scaling scaling : {Scaling::per_tensor, Scaling::per_row}) {
      const q::QTensor w = q::quantize(w_dense, {QFormat::fp8_e4m3, scaling}, "w");
      const q::QLinearPlan plan = q::plan_qlinear(x, w);
      const std::string name = fmt::format("fp8_e4m3 {} qlinear, x {}x{} bf16, W {}x{}",
                                           q::to_string(scaling), m, k, n, k);
      if (plan.path != q::QLinearPath::cuda_scaled_mm) {
        std::fprintf(stderr, "%s: not _scaled_mm here (%s); skipped\n", name.c_str(),
                     plan.reason.c_str());
        continue;
      }
      const at::Tensor w_bf16 = w.dequantize(at::kBFloat16);
      const double gap = relative_gap(q::qlinear(x, w), at::linear(x, w_bf16));
      if (!(gap <= 0.08)) mismatch(fmt::format("{}: relative gap {} to bf16 linear", name, gap));
      const std::vector<double> ms = gpu_ms({
          [&] { bench::do_not_optimize(q::qlinear(x, w)); },
          [&] { bench::do_not_optimize(at::linear(x, w_dense)); },
      });
      const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * k;
      report.add({name + " (vs bf16 linear)", "time", ms[0], "ms", ms[1], Better::lower});
      report.add({name + " throughput", "throughput", flops / (ms[0] * 1e-3) / 1e12, "TFLOP/s",
                  flops / (ms[1] * 1e-3) / 1e12, Better::higher});
    }
  }
}

// ---- device pool ------------------------------------------------------------------------------

void device_pool(bench::Report& report) {
  auto pool = std::make_shared<apo::memory::CachingPool>(apo::memory::CudaDeviceResource{});
  const apo::memory::AnyResource resource(pool);
  // A diffusion step's mix: many small activations, some large ones.
  std::mt19937 rng(7);
  std::vector<std::int64_t> sizes;
  for (int i = 0; i < 256; ++i) {
    const int exponent = std::uniform_int_distribution<int>(10, 26)(rng);  // 1 KiB .. 64 MiB
    sizes.push_back((std::int64_t{1} << exponent) +
                    std::uniform_int_distribution<int>(0, 4095)(rng));
  }
  std::vector<at::Tensor> live;
  live.reserve(sizes.size());
  auto cycle = [&](bool apo_pool) {
    for (std::int64_t bytes : sizes) {
      live.push_back(apo_pool
                         ? apo::memory::empty_from(resource, {bytes}, at::kByte)
                         : at::empty({bytes}, at::TensorOptions().device(kGpu).dtype(at::kByte)));
    }
    live.clear();
  };
  cycle(true);
  // The memory must be usable before its speed counts.
  const at::Tensor probe = apo::memory::empty_from(resource, {1 << 20}, at::kFloat).fill_(2.0f);
  if (probe.sum().item<double>() != 2.0 * (1 << 20)) mismatch("pooled device memory");
  const std::vector<double> seconds = {
      bench::median_seconds([&] { cycle(true); }, 20, 0.5),
      bench::median_seconds([&] { cycle(false); }, 20, 0.5),
  };
  const double per_us = 1e6 / static_cast<double>(sizes.size());
  report.add(
      {"allocate + free, 256 mixed sizes 1 KiB..64 MiB (CachingPool over CudaDeviceResource "
       "vs torch's caching allocator)",
       "time", seconds[0] * per_us, "us", seconds[1] * per_us, Better::lower});
}

// ---- weight streaming -------------------------------------------------------------------------

void weight_streaming(bench::Report& report, bool quick) {
  using apo::models::WeightStreamer;
  const int blocks_count = quick ? 8 : 24;
  const std::int64_t width = 3072;
  const std::int64_t tokens = 4096;
  std::map<std::string, at::Tensor> host;
  std::vector<std::pair<std::string, std::int64_t>> order;
  for (int b = 0; b < blocks_count; ++b) {
    for (const char* part : {"attn.qkv", "attn.out", "ffn.0", "ffn.2"}) {
      const std::string name = fmt::format("blocks.{}.{}.weight", b, part);
      at::Tensor w = (at::randn({width, width}) * (1.0 / 64)).to(at::kBFloat16);
      order.emplace_back(name, static_cast<std::int64_t>(w.nbytes()));
      host.emplace(name, std::move(w));
    }
  }
  auto blocks = apo::models::group_into_blocks(order);
  std::int64_t total = 0;
  for (const auto& b : blocks) total += b.bytes;
  const auto plan = apo::models::plan_weight_streaming(blocks, total / 3, 1);
  WeightStreamer streamer(host, blocks, plan, apo::Device::cuda(0),
                          apo::models::StreamingMemory::plain(apo::Device::cuda(0)));
  std::map<std::string, at::Tensor> resident;
  std::map<std::string, at::Tensor> pinned;
  for (const auto& [name, w] : host) {
    resident.emplace(name, w.to(kGpu));
    pinned.emplace(name, w.pin_memory());
  }
  const at::Tensor x =
      at::randn({tokens, width}, at::TensorOptions().device(kGpu)).to(at::kBFloat16);
  auto block_forward = [&](at::Tensor y, const std::vector<std::string>& names,
                           const std::function<at::Tensor(const std::string&)>& weight) {
    for (const auto& name : names) y = at::linear(y, weight(name)).tanh_();
    return y;
  };
  at::Tensor out_streamed;
  at::Tensor out_resident;
  at::Tensor out_demand;
  auto streamed_pass = [&] {
    at::Tensor y = x;
    for (std::size_t b = 0; b < blocks.size(); ++b) {
      const auto& w = streamer.enter(b);
      y = block_forward(y, blocks[b].weights, [&](const std::string& n) { return w.at(n); });
      streamer.leave(b);
    }
    out_streamed = y;
  };
  auto resident_pass = [&] {
    at::Tensor y = x;
    for (const auto& block : blocks) {
      y = block_forward(y, block.weights, [&](const std::string& n) { return resident.at(n); });
    }
    out_resident = y;
  };
  // What a user without prefetching runs: pinned host weights copied on the compute stream as
  // each block comes up.
  auto demand_pass = [&] {
    at::Tensor y = x;
    for (const auto& block : blocks) {
      std::map<std::string, at::Tensor> on_device;
      for (const auto& n : block.weights) on_device.emplace(n, pinned.at(n).to(kGpu, true));
      y = block_forward(y, block.weights, [&](const std::string& n) { return on_device.at(n); });
    }
    out_demand = y;
  };
  streamed_pass();
  resident_pass();
  demand_pass();
  // The same weights through the same GEMMs: equal up to the GEMMs' own choices.
  if (!(relative_gap(out_streamed, out_resident) <= 1e-3) ||
      !(relative_gap(out_demand, out_resident) <= 1e-3)) {
    mismatch("streamed, resident and on-demand passes differ");
  }
  const std::vector<double> ms = gpu_ms({streamed_pass, resident_pass, demand_pass}, 3, 5);
  const std::string name = fmt::format(
      "{} blocks of 4 x {}x{} bf16 ({} streamed of {}, {} per pass), x {}x{}", blocks.size(), width,
      width, apo::format_bytes(plan.streamed_bytes_per_pass(blocks)), apo::format_bytes(total),
      plan.streamed.size(), tokens, width);
  report.add({"weight streaming, " + name + " (vs copying each block on demand)", "time", ms[0],
              "ms", ms[2], Better::lower});
  report.add({"weight streaming, " + name + " (vs all weights resident)", "time", ms[0], "ms",
              ms[1], Better::lower});
}

}  // namespace

int main(int argc, char** argv) {
  const bench::Options options = bench::parse_options(
      argc, argv, "bench_gpu: apo's CUDA kernels, fp8 qlinear, device pool and weight streaming");
  if (!apo::memory::cuda_device_available() || !at::hasCUDA()) {
    std::fprintf(stderr, "bench_gpu: needs a CUDA device and torch with CUDA; none here\n");
    return 77;
  }
  bench::Report report("bench_gpu");
  int status = 0;
  const std::pair<const char*, std::function<void()>> parts[] = {
      {"quantization kernels", [&] { quant_kernels(report, options.quick); }},
      {"fp8 qlinear", [&] { fp8_qlinear(report, options.quick); }},
      {"device pool", [&] { device_pool(report); }},
      {"weight streaming", [&] { weight_streaming(report, options.quick); }},
  };
  for (const auto& [what, run] : parts) {
    try {
      run();
    } catch (const std::exception& e) {
      // One part failing leaves the others' figures standing; the exit status says it failed.
      std::fprintf(stderr, "bench_gpu: %s failed: %s\n", what, e.what());
      status = 1;
    }
  }
  const int finished = bench::finish(report, options);
  return status != 0 ? status : finished;
}

// bench_workflows: the eight reference workflows on the committed models through the engine.
// - the demo's mixed trace through the engine (memory-aware batches, priority queue, models
//   kept resident) against the loop a user writes with the same pipeline: one request at a
//   time in arrival order, models loaded once and kept (the engine with fixed batches of 1, FIFO);
// - batch 4 against batch 1, per workflow;
// - sliced against full attention (time, peak memory);
// - fp8 and int8 weights against bf16 (time, weight memory, judge score, SSIM against fp32).

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "apo/core/config.hpp"
#include "apo/engine/any_engine.hpp"
#include "apo/monitor/benchmark.hpp"
#include "apo/ref/demo.hpp"
#include "apo/ref/judge.hpp"
#include "apo/ref/workflows.hpp"

namespace {

using apo::Request;
using apo::bench::Better;
using apo::engine::Result;
using steady = std::chrono::steady_clock;

struct Run {
  std::vector<Result> results;
  double seconds = 0.0;
  std::int64_t weights_bytes = 0;
};

apo::Config base_config() {
  apo::Config config;
  config.performance.max_memory_usage_gib = 8.0;
  config.performance.model_precision = apo::Precision::bf16;
  config.performance.max_batch_size = 8;
  config.scheduling.max_queue_delay_ms = 0;
  config.attention.enable_attention_slicing = false;
  config.storage.model_cache_path = apo::ref::default_models_dir().string();
  config.storage.temp_path =
      (std::filesystem::temp_directory_path() / "apo-bench-workflows").string();
  return config;
}

Run run(const apo::Config& config, const std::vector<Request>& requests) {
  apo::engine::AnyEngine engine(config);
  apo::ref::ReferenceWorkflowOptions options;
  options.models_dir = apo::ref::default_models_dir();
  options.config = config;
  for (auto& workflow : apo::ref::make_reference_workflows(options)) engine.add_workflow(workflow);
  // Models load before the clock starts: both sides of each comparison keep them resident.
  for (std::string_view name : apo::ref::kWorkflowNames) {
    for (const Request& r : requests) {
      if (r.workflow != name) continue;
      Request warm = r;
      warm.steps = 1;
      apo::bench::check_output(engine.submit(warm).wait().ok(), "warm-up of " + r.workflow);
      break;
    }
  }
  Run out;
  const auto start = steady::now();
  std::vector<apo::engine::Ticket> tickets;
  for (const Request& r : requests) tickets.push_back(engine.submit(r));
  for (const auto& ticket : tickets) {
    out.results.push_back(ticket.wait());
    apo::bench::check_output(out.results.back().ok(), "request: " + out.results.back().message);
  }
  out.seconds = std::chrono::duration<double>(steady::now() - start).count();
  out.weights_bytes = engine.memory(0).weights_bytes;
  engine.shutdown();
  return out;
}

apo::Config one_at_a_time(apo::Config config) {
  config.scheduling.batch_policy = apo::BatchPolicy::fixed;
  config.scheduling.queue_policy = apo::QueuePolicy::fifo;
  config.performance.batch_size = 1;
  return config;
}

apo::Config fixed_batches(apo::Config config, int size) {
  config.scheduling.batch_policy = apo::BatchPolicy::fixed;
  config.performance.batch_size = size;
  return config;
}

at::Tensor picture(const Result& result) {
  const auto video = result.outputs.find("video");
  return video != result.outputs.end() ? video->second : result.outputs.at("image");
}

std::vector<Request> requests_of(const std::vector<apo::ref::DemoRequest>& trace,
                                 std::string_view workflow, int steps) {
  std::vector<Request> out;
  for (const auto& item : trace) {
    if (item.request.workflow != workflow) continue;
    Request r = item.request;
    r.steps = steps;
    out.push_back(r);
  }
  return out;
}

double mean_quality(const Run& run) {
  double sum = 0;
  for (const Result& r : run.results) sum += r.quality.value_or(0.0);
  return sum / static_cast<double>(run.results.size());
}

std::int64_t peak(const Run& run) {
  std::int64_t most = 0;
  for (const Result& r : run.results) most = std::max(most, r.peak_memory_bytes);
  return most;
}

}  // namespace

int main(int argc, char** argv) {
  const apo::bench::Options options = apo::bench::parse_options(
      argc, argv, "The reference workflows through the engine against a user's loop");
  const int per_workflow = options.quick ? 2 : 4;
  const int steps = options.quick ? 6 : 20;
  const auto models = apo::ref::default_models_dir();
  const auto trace = apo::ref::demo_trace(models, 7, per_workflow);
  apo::bench::Report report("bench_workflows");

  // 1. The mixed trace: the engine against the one-at-a-time loop.
  {
    std::vector<Request> requests;
    for (const auto& item : trace) {
      Request r = item.request;
      r.steps = steps;
      requests.push_back(r);
    }
    const Run engine = run(base_config(), requests);
    const Run loop = run(one_at_a_time(base_config()), requests);
    for (std::size_t i = 0; i < requests.size(); ++i) {
      apo::bench::check_output(
          at::allclose(picture(engine.results[i]), picture(loop.results[i]), 1e-3, 1e-3),
          "engine and loop pictures of " + requests[i].workflow);
    }
    const double count = static_cast<double>(requests.size());
    report.add(
        {fmt::format("mixed trace, {} requests of 8 workflows, {} steps", requests.size(), steps),
         "throughput", 3600.0 * count / engine.seconds, "req/h", 3600.0 * count / loop.seconds,
         Better::higher});
  }

  // 2. Batch 4 against batch 1, per workflow (4 requests each).
  for (std::string_view workflow : apo::ref::kWorkflowNames) {
    std::vector<Request> requests = requests_of(trace, workflow, steps);
    while (requests.size() < 4) requests.push_back(requests.front());
    requests.resize(4);
    const Run batched = run(fixed_batches(base_config(), 4), requests);
    const Run single = run(fixed_batches(base_config(), 1), requests);
    report.add({fmt::format("{}: batch 4 vs batch 1", workflow), "throughput",
                3600.0 * 4 / batched.seconds, "req/h", 3600.0 * 4 / single.seconds,
                Better::higher});
  }

  // 3. Sliced against full attention.
  for (std::string_view workflow : {"hunyuan_t2v", "newbie_anime"}) {
    const std::vector<Request> requests = requests_of(trace, workflow, steps);
    apo::Config sliced = fixed_batches(base_config(), static_cast<int>(requests.size()));
    sliced.attention.enable_attention_slicing = true;
    sliced.attention.slice_size = 1;
    const Run with = run(sliced, requests);
    const Run without =
        run(fixed_batches(base_config(), static_cast<int>(requests.size())), requests);
    for (std::size_t i = 0; i < requests.size(); ++i) {
      apo::bench::check_output(
          at::allclose(picture(with.results[i]), picture(without.results[i]), 1e-3, 1e-3),
          "sliced and full attention pictures");
    }
    const std::string name =
        fmt::format("{} batch {}: sliced vs full attention", workflow, requests.size());
    report.add({name, "time", with.seconds * 1e3, "ms", without.seconds * 1e3, Better::lower});
    report.add({name, "peak_memory", static_cast<double>(peak(with)), "bytes",
                static_cast<double>(peak(without)), Better::lower});
  }

  // 4. fp8 and int8 weights against bf16, each scored against float32.
  for (std::string_view workflow : {"newbie_anime", "hunyuan_t2v"}) {
    std::vector<Request> requests = requests_of(trace, workflow, 30);
    apo::Config fp32 = base_config();
    fp32.performance.model_precision = apo::Precision::fp32;
    const Run reference = run(fp32, requests);
    apo::Config bf16_config = base_config();
    const Run bf16 = run(bf16_config, requests);
    for (apo::Precision precision : {apo::Precision::fp8_e4m3, apo::Precision::int8}) {
      apo::Config config = base_config();
      config.performance.model_precision = precision;
      config.performance.enable_quantization = true;
      // These DiTs' layers are small: the default threshold would quantize only adaLN.
      config.performance.quantization_min_elements = 1024;
      const Run quantized = run(config, requests);
      double ssim = 0;
      for (std::size_t i = 0; i < requests.size(); ++i) {
        ssim += apo::ref::ssim(picture(quantized.results[i]), picture(reference.results[i]));
      }
      ssim /= static_cast<double>(requests.size());
      double bf16_ssim = 0;
      for (std::size_t i = 0; i < requests.size(); ++i) {
        bf16_ssim += apo::ref::ssim(picture(bf16.results[i]), picture(reference.results[i]));
      }
      bf16_ssim /= static_cast<double>(requests.size());
      const std::string name =
          fmt::format("{}: {} vs bf16 weights", workflow, apo::to_string(precision));
      report.add({name, "time", quantized.seconds * 1e3, "ms", bf16.seconds * 1e3, Better::lower});
      report.add({name, "weights_memory", static_cast<double>(quantized.weights_bytes), "bytes",
                  static_cast<double>(bf16.weights_bytes), Better::lower});
      report.add({name, "judge_score", mean_quality(quantized), "score", mean_quality(bf16),
                  Better::higher});
      report.add({name, "ssim_vs_fp32", ssim, "ssim", bf16_ssim, Better::higher});
    }
  }
  return apo::bench::finish(report, options);
}

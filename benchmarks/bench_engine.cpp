// bench_engine: what the engine costs per request against a direct call, what it gains on a
// mixed trace of workflows that load real model files against the loop a user would otherwise
// write (FIFO, one request at a time, models loaded for each, nothing shared), and what
// monitoring and tracing cost it.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <vector>

#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include "apo/core/config.hpp"
#include "apo/core/machine.hpp"
#include "apo/engine/workflow_engine.hpp"
#include "apo/models/model.hpp"
#include "apo/models/safetensors.hpp"
#include "apo/monitor/benchmark.hpp"
#include "apo/monitor/performance_monitor.hpp"
#include "apo/monitor/trace.hpp"
#include "apo/quant/policy.hpp"

namespace {

namespace fs = std::filesystem;
using apo::Request;
using apo::RequestId;
using apo::bench::Better;
using apo::engine::Context;
using apo::engine::ModelNeed;
using apo::engine::Outputs;
using steady = std::chrono::steady_clock;
using namespace apo::literals;

double micros(steady::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

double median(std::vector<double> values) {
  std::nth_element(values.begin(), values.begin() + values.size() / 2, values.end());
  return values[values.size() / 2];
}

apo::Config engine_config(const fs::path& dir, std::int64_t budget) {
  apo::Config config;
  config.performance.max_memory_usage_gib = apo::bytes_to_gib(budget);
  config.scheduling.max_queue_delay_ms = 0;
  config.storage.model_cache_path = dir.string();
  config.storage.temp_path = (dir / "tmp").string();
  return config;
}

// ---------------------------------------------------------------------------------------------
// 1. Overhead: a workflow that does almost nothing, through the engine and called directly.

Outputs trivial_work() {
  return {{"image", at::zeros({3, 8, 8})}};
}

class TrivialWorkflow : public apo::engine::Workflow {
 public:
  std::string name() const override { return "trivial"; }
  std::vector<ModelNeed> models(const Request&) const override { return {}; }
  std::int64_t memory_estimate(const Request&) const override { return 64_KiB; }
  std::vector<Outputs> run(std::span<const Request> batch, Context&) override {
    const auto start = steady::now();
    std::vector<Outputs> outputs;
    for (std::size_t i = 0; i < batch.size(); ++i) outputs.push_back(trivial_work());
    const auto end = steady::now();
    const std::lock_guard lock(mutex_);
    starts_[batch.front().id] = start;
    ends_[batch.front().id] = end;
    return outputs;
  }
  std::pair<steady::time_point, steady::time_point> times(RequestId id) {
    const std::lock_guard lock(mutex_);
    return {starts_.at(id), ends_.at(id)};
  }

 private:
  std::mutex mutex_;
  std::map<RequestId, steady::time_point> starts_;
  std::map<RequestId, steady::time_point> ends_;
};

void measure_overhead(apo::bench::Report& report, const fs::path& dir, bool quick) {
  const int requests = quick ? 200 : 2000;
  auto workflow = std::make_shared<TrivialWorkflow>();
  apo::engine::Engine engine(engine_config(dir, 1_GiB));
  engine.add_workflow(workflow);
  std::vector<double> round_trip, to_start, to_result, direct;
  for (int i = 0; i < requests; ++i) {
    // The same work called directly, as a program without the engine would, in turn with it.
    const auto t0 = steady::now();
    apo::bench::do_not_optimize(trivial_work().size());
    direct.push_back(micros(steady::now() - t0));

    Request request;
    request.workflow = "trivial";
    request.width = 64;
    request.height = 64;
    const auto submitted = steady::now();
    const apo::engine::Ticket ticket = engine.submit(std::move(request));
    const apo::engine::Result& result = ticket.wait();
    const auto returned = steady::now();
    apo::bench::check_output(result.ok(), "trivial request: " + result.message);
    const auto [start, end] = workflow->times(ticket.id());
    round_trip.push_back(micros(returned - submitted));
    to_start.push_back(micros(start - submitted));
    to_result.push_back(micros(returned - end));
  }
  engine.shutdown();
  report.add({"trivial workflow: submit to result vs a direct call", "time", median(round_trip),
              "us", median(direct), Better::lower});
  report.add({"trivial workflow: submit to workflow start", "time", median(to_start), "us",
              std::nullopt, Better::lower});
  report.add({"trivial workflow: workflow end to result", "time", median(to_result), "us",
              std::nullopt, Better::lower});
}

// ---------------------------------------------------------------------------------------------
// 2. A mixed trace: three workflows share a text encoder and a VAE, each has its own DiT.

constexpr std::int64_t kDim = 1024;

fs::path write_model(const fs::path& dir, const std::string& name, int layers, int seed) {
  at::manual_seed(seed);
  std::vector<apo::models::NamedTensor> tensors;
  for (int l = 0; l < layers; ++l) {
    tensors.push_back({fmt::format("blocks.{}.proj.weight", l),
                       at::randn({kDim, kDim}) / std::sqrt(static_cast<double>(kDim))});
  }
  const fs::path path = dir / (name + ".safetensors");
  apo::models::save_safetensors(path, tensors);
  return path;
}

struct TraceModels {
  fs::path encoder, vae;
  std::vector<fs::path> dits;
};

// The work of one batch, the same for the engine and the loop: encode the prompts, denoise for
// `steps` through the DiT's layers, decode through the VAE's.
std::vector<at::Tensor> generate(std::span<const Request> batch, const apo::models::Model& encoder,
                                 const apo::models::Model& dit, const apo::models::Model& vae) {
  const auto dense = [](const apo::models::Model& model) {
    std::vector<at::Tensor> layers;
    for (const auto& w : model.weights()) layers.push_back(w.dequantize(at::kFloat));
    return layers;
  };
  const auto n = static_cast<std::int64_t>(batch.size());
  const std::int64_t tokens = batch.front().width / 8;
  std::vector<at::Tensor> rows;
  for (const Request& r : batch) {
    rows.push_back(at::randn({tokens, kDim}, at::detail::createCPUGenerator(r.seed)));
  }
  at::Tensor x = at::stack(rows);  // [n, tokens, dim]
  for (const at::Tensor& w : dense(encoder)) x = at::gelu(at::matmul(x, w.t()));
  const std::vector<at::Tensor> dit_layers = dense(dit);
  for (int s = 0; s < batch.front().steps.value_or(4); ++s) {
    for (const at::Tensor& w : dit_layers) x = at::tanh(at::matmul(x, w.t()));
  }
  for (const at::Tensor& w : dense(vae)) x = at::sigmoid(at::matmul(x, w.t()));
  std::vector<at::Tensor> out;
  for (std::int64_t i = 0; i < n; ++i) out.push_back(x[i].mean(0));
  return out;
}

class TraceWorkflow : public apo::engine::Workflow {
 public:
  TraceWorkflow(std::string name, fs::path encoder, fs::path dit, fs::path vae)
      : name_(std::move(name)),
        encoder_(std::move(encoder)),
        dit_(std::move(dit)),
        vae_(std::move(vae)) {}
  std::string name() const override { return name_; }
  std::vector<ModelNeed> models(const Request&) const override {
    return {{"encoder", {encoder_, apo::models::ModelKind::text_encoder, {}, {}}, false},
            {"dit", {dit_, apo::models::ModelKind::diffusion, {}, {}}, true},
            {"vae", {vae_, apo::models::ModelKind::vae, {}, {}}, false}};
  }
  std::int64_t memory_estimate(const Request& r) const override {
    return 8 * (r.width / 8) * kDim * 4;  // a few activations of [tokens, dim] in fp32
  }
  std::vector<Outputs> run(std::span<const Request> batch, Context& context) override {
    std::vector<at::Tensor> images;
    {
      auto stage = context.stage(apo::engine::Stage::denoise);
      images =
          generate(batch, context.model("encoder"), context.model("dit"), context.model("vae"));
    }
    context.step(1, 1);
    std::vector<Outputs> outputs;
    for (at::Tensor& image : images) outputs.push_back({{"image", image}});
    return outputs;
  }

 private:
  std::string name_;
  fs::path encoder_, dit_, vae_;
};

std::vector<Request> make_trace(int count, int workflows) {
  std::mt19937 random(11);
  std::vector<Request> trace;
  for (int i = 0; i < count; ++i) {
    Request r;
    r.workflow = fmt::format("mix_{}", random() % workflows);
    r.width = random() % 4 == 0 ? 384 : 256;  // two shapes: 48 or 32 tokens
    r.height = r.width;
    r.steps = 4;
    r.seed = static_cast<std::uint64_t>(i + 1);
    trace.push_back(r);
  }
  return trace;
}

void measure_trace(apo::bench::Report& report, const fs::path& dir, bool quick) {
  const int workflows = 3;
  const int count = quick ? 9 : 36;
  TraceModels models;
  models.encoder = write_model(dir, "umt5", quick ? 2 : 8, 1);
  models.vae = write_model(dir, "vae", quick ? 2 : 4, 2);
  for (int w = 0; w < workflows; ++w) {
    models.dits.push_back(write_model(dir, fmt::format("dit_{}", w), quick ? 3 : 12, 3 + w));
  }
  const std::vector<Request> trace = make_trace(count, workflows);
  const auto dit_of = [&](const Request& r) {
    return models.dits[static_cast<std::size_t>(r.workflow.back() - '0')];
  };

  // The loop a user would write without the engine: each request in arrival order, its models
  // read from the file (warm in the page cache) and stored as the engine stores them (fp16).
  const auto rules = [] {
    apo::quant::QuantizationRules r;
    r.spec = {apo::quant::QFormat::fp16, apo::quant::Scaling::none};
    r.measure_error = false;
    return r;
  }();
  const auto load = [&](const fs::path& path, apo::models::ModelKind kind) {
    return apo::models::Model(path.string(), kind, apo::Precision::fp16,
                              apo::models::read_model_weights(path, rules));
  };
  std::vector<at::Tensor> naive_images(trace.size());
  const auto naive_start = steady::now();
  for (std::size_t i = 0; i < trace.size(); ++i) {
    const auto encoder = load(models.encoder, apo::models::ModelKind::text_encoder);
    const auto dit = load(dit_of(trace[i]), apo::models::ModelKind::diffusion);
    const auto vae = load(models.vae, apo::models::ModelKind::vae);
    naive_images[i] = generate(std::span<const Request>(&trace[i], 1), encoder, dit, vae)[0];
  }
  const double naive_s = std::chrono::duration<double>(steady::now() - naive_start).count();

  // A stronger loop, as ComfyUI runs a queue: the models of the last workflow stay loaded and are
  // reloaded only when the workflow changes; still one request at a time, nothing shared.
  std::vector<at::Tensor> kept_images(trace.size());
  int kept_loads = 0;
  const auto kept_start = steady::now();
  {
    std::string loaded_for;
    std::optional<apo::models::Model> encoder, dit, vae;
    for (std::size_t i = 0; i < trace.size(); ++i) {
      if (trace[i].workflow != loaded_for) {
        encoder.reset();
        dit.reset();
        vae.reset();
        encoder.emplace(load(models.encoder, apo::models::ModelKind::text_encoder));
        dit.emplace(load(dit_of(trace[i]), apo::models::ModelKind::diffusion));
        vae.emplace(load(models.vae, apo::models::ModelKind::vae));
        loaded_for = trace[i].workflow;
        kept_loads += 3;
      }
      kept_images[i] = generate(std::span<const Request>(&trace[i], 1), *encoder, *dit, *vae)[0];
    }
  }
  const double kept_s = std::chrono::duration<double>(steady::now() - kept_start).count();

  // The engine: the same requests submitted as they arrive (a backlog), shared and cached
  // models, grouping and batching.
  apo::engine::Engine engine(engine_config(dir, 1_GiB));
  for (int w = 0; w < workflows; ++w) {
    engine.add_workflow(std::make_shared<TraceWorkflow>(fmt::format("mix_{}", w), models.encoder,
                                                        models.dits[static_cast<std::size_t>(w)],
                                                        models.vae));
  }
  std::vector<apo::engine::Ticket> tickets;
  const auto engine_start = steady::now();
  for (const Request& r : trace) tickets.push_back(engine.submit(r));
  std::vector<at::Tensor> engine_images;
  double batch_sizes = 0;
  for (const auto& ticket : tickets) {
    const apo::engine::Result& result = ticket.wait();
    apo::bench::check_output(result.ok(), "mixed trace request: " + result.message);
    engine_images.push_back(result.outputs.at("image"));
    batch_sizes += static_cast<double>(result.decisions.batch_size);
  }
  const double engine_s = std::chrono::duration<double>(steady::now() - engine_start).count();
  const auto cache = engine.models().stats();
  engine.shutdown();

  // All did the same work: the images agree (batching changes only the order of float sums).
  for (std::size_t i = 0; i < trace.size(); ++i) {
    apo::bench::check_output(at::allclose(engine_images[i], naive_images[i], 1e-4, 1e-5) &&
                                 at::equal(kept_images[i], naive_images[i]),
                             fmt::format("mixed trace request {}: the three images agree", i));
  }
  const std::string label = fmt::format("{} requests, {} workflows, 2 shapes", count, workflows);
  report.add({"mixed trace throughput, engine vs load-per-request FIFO loop (" + label + ")",
              "throughput", 3600.0 * count / engine_s, "req/h", 3600.0 * count / naive_s,
              Better::higher});
  report.add({"mixed trace throughput, engine vs keep-last-models FIFO loop (" + label + ")",
              "throughput", 3600.0 * count / engine_s, "req/h", 3600.0 * count / kept_s,
              Better::higher});
  report.add({"mixed trace: model loads, engine vs load-per-request loop", "count",
              static_cast<double>(cache.loads), "loads", 3.0 * count, Better::lower});
  report.add({"mixed trace: model loads, engine vs keep-last-models loop", "count",
              static_cast<double>(cache.loads), "loads", static_cast<double>(kept_loads),
              Better::lower});
  report.add({"mixed trace: mean batch size in the engine", "size",
              batch_sizes / static_cast<double>(count), "requests", std::nullopt, Better::higher});
}

// ---------------------------------------------------------------------------------------------
// 3. Monitoring's cost: the same engine work with a PerformanceMonitor (sampling 100 times as
// often as the guide's 5 s), tracing, or both on, against both off, interleaved in one run: on
// real work (the mixed trace) and on a workflow that does nothing (the engine's own cost alone,
// where watching weighs most).

// What runs beside the engine in a measured run.
struct Watching {
  bool monitor = false;  // a PerformanceMonitor sampling every 50 ms, told of every result
  bool trace = false;    // the Chrome trace
};

// Runs `requests` through a fresh engine with `watching` on, and checks every result; returns
// the seconds from the first submit to the last result (setting up is not timed).
double run_engine_once(const apo::Config& config, const std::vector<Request>& requests,
                       const std::function<void(apo::engine::Engine&)>& add_workflows,
                       Watching watching) {
  // Every run builds the monitor (its machine probe); only a watched one runs it.
  apo::Monitoring settings;
  settings.sample_interval_s = 0.05;
  settings.history_size = std::max(settings.history_size, static_cast<int>(requests.size()));
  auto monitor = std::make_shared<apo::monitor::PerformanceMonitor>(
      settings, config.target_generation_time_s, apo::SteadyClock::instance());
  if (watching.monitor) monitor->start();
  if (watching.trace) apo::monitor::Tracer::global().start();
  double seconds = 0;
  {
    apo::engine::Engine engine(config);
    add_workflows(engine);
    if (watching.monitor) engine.set_monitor(monitor);
    std::vector<apo::engine::Ticket> tickets;
    const auto start = steady::now();
    for (const Request& r : requests) tickets.push_back(engine.submit(r));
    for (const auto& ticket : tickets) ticket.wait();
    seconds = std::chrono::duration<double>(steady::now() - start).count();
    for (const auto& ticket : tickets) {
      apo::bench::check_output(ticket.wait().ok(),
                               "monitored engine request: " + ticket.wait().message);
    }
    engine.shutdown();
  }
  if (watching.trace) {
    apo::monitor::Tracer::global().stop();
    apo::bench::check_output(!apo::monitor::Tracer::global().events().empty(),
                             "the trace has spans");
  }
  if (watching.monitor) {
    monitor->stop();
    apo::bench::check_output(monitor->requests().size() == requests.size(),
                             "the monitor recorded every request");
  }
  return seconds;
}

// Median seconds of each of `runs`, run in turn `rounds` times after a warm-up of each.
std::vector<double> interleaved_runs(const std::vector<std::function<double()>>& runs, int rounds) {
  for (const auto& run : runs) run();
  std::vector<std::vector<double>> seconds(runs.size());
  for (int i = 0; i < rounds; ++i) {
    for (std::size_t r = 0; r < runs.size(); ++r) seconds[r].push_back(runs[r]());
  }
  std::vector<double> medians;
  for (auto& s : seconds) medians.push_back(median(s));
  return medians;
}

void measure_monitoring(apo::bench::Report& report, const fs::path& dir, bool quick) {
  const int workflows = 3;
  const int count = quick ? 6 : 24;
  TraceModels models;
  models.encoder = write_model(dir, "mon_umt5", 2, 1);
  models.vae = write_model(dir, "mon_vae", 2, 2);
  for (int w = 0; w < workflows; ++w) {
    models.dits.push_back(write_model(dir, fmt::format("mon_dit_{}", w), quick ? 2 : 6, 3 + w));
  }
  const std::vector<Request> trace_requests = make_trace(count, workflows);
  const auto add_trace_workflows = [&](apo::engine::Engine& engine) {
    for (int w = 0; w < workflows; ++w) {
      engine.add_workflow(std::make_shared<TraceWorkflow>(fmt::format("mix_{}", w), models.encoder,
                                                          models.dits[static_cast<std::size_t>(w)],
                                                          models.vae));
    }
  };
  const int trivial_count = quick ? 500 : 10000;
  std::vector<Request> trivial(static_cast<std::size_t>(trivial_count));
  for (Request& r : trivial) {
    r.workflow = "trivial";
    r.width = 64;
    r.height = 64;
  }
  const auto add_trivial = [](apo::engine::Engine& engine) {
    engine.add_workflow(std::make_shared<TrivialWorkflow>());
  };
  apo::Config config = engine_config(dir, 1_GiB);
  config.scheduling.max_queue_size = trivial_count;  // the whole backlog is submitted at once
  const int rounds = quick ? 3 : 15;
  const Watching off{}, monitor{true, false}, trace{false, true}, both{true, true};
  const auto mixed = [&](Watching watching) {
    return [&, watching] {
      return run_engine_once(config, trace_requests, add_trace_workflows, watching);
    };
  };
  const auto tiny = [&](Watching watching) {
    return [&, watching] { return run_engine_once(config, trivial, add_trivial, watching); };
  };
  const std::vector<double> mixed_s = interleaved_runs({mixed(off), mixed(both)}, rounds);
  const std::vector<double> tiny_s =
      interleaved_runs({tiny(off), tiny(monitor), tiny(trace), tiny(both)}, rounds);
  report.add(
      {fmt::format("mixed trace throughput ({} requests), monitoring and tracing on vs off", count),
       "throughput", 3600.0 * count / mixed_s[1], "req/h", 3600.0 * count / mixed_s[0],
       Better::higher});
  const char* watched[] = {"", "monitoring", "tracing", "monitoring and tracing"};
  for (std::size_t i = 1; i < 4; ++i) {
    report.add({fmt::format("trivial workflow throughput ({} requests), {} on vs off",
                            trivial_count, watched[i]),
                "throughput", trivial_count / tiny_s[i], "req/s", trivial_count / tiny_s[0],
                Better::higher});
  }
}

}  // namespace

int main(int argc, char** argv) {
  const auto options = apo::bench::parse_options(
      argc, argv,
      "bench_engine: engine overhead per request, and a mixed trace against a "
      "load-per-request loop");
  const fs::path dir = fs::temp_directory_path() / fmt::format("apo_bench_engine_{}", getpid());
  fs::create_directories(dir);
  apo::bench::Report report("bench_engine");
  try {
    measure_overhead(report, dir, options.quick);
    measure_trace(report, dir, options.quick);
    measure_monitoring(report, dir, options.quick);
  } catch (...) {
    fs::remove_all(dir);
    throw;
  }
  fs::remove_all(dir);
  return apo::bench::finish(report, options);
}

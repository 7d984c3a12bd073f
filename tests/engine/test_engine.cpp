// The engine end to end on the fake clock: small workflows doing real tensor work with real model
// files, through the scheduler, the batcher, placement, the model cache and the ledger.

#include "apo_catch.hpp"

#include <sched.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <mutex>
#include <set>
#include <thread>

#include "apo/core/clock.hpp"
#include "apo/core/error.hpp"
#include "apo/engine/any_engine.hpp"
#include "apo/engine/workflow_engine.hpp"
#include "apo/tune/adaptive_quality.hpp"
#include "engine_test_support.hpp"

using apo::FakeClock;
using apo::engine::Callbacks;
using apo::engine::Engine;
using apo::engine::Result;
using apo::engine::ShutdownMode;
using apo::engine::Status;
using apo::engine::Ticket;
using namespace engine_test;

namespace {

struct Fixture {
  ScratchDir dir;
  fs::path encoder = write_model(dir.path, "encoder", 1, 1);
  fs::path dit = write_model(dir.path, "dit", 1, 2);
  FakeClock clock;
  Probe probe;

  TestWorkflow::Options workflow() {
    TestWorkflow::Options options;
    options.encoder = encoder;
    options.dit = dit;
    options.probe = &probe;
    return options;
  }
};

bool contains(const std::vector<std::string>& lines, std::string_view text) {
  for (const auto& line : lines) {
    if (line.find(text) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("a request runs end to end: models, progress, outputs, timings, decisions", "[engine]") {
  Fixture f;
  Engine engine(engine_config(64_MiB, f.dir.path), f.clock, cpu_machine());
  engine.add_workflow(std::make_shared<TestWorkflow>(f.workflow()));
  CHECK(engine.policies() ==
        "ConfiguredPrecision, CachingPool, MemoryAwareBatcher, PriorityScheduler");

  std::mutex mutex;
  std::vector<std::pair<int, int>> progress;
  int results_seen = 0;
  Callbacks callbacks;
  callbacks.on_progress = [&](RequestId, int step, int steps) {
    const std::lock_guard lock(mutex);
    progress.emplace_back(step, steps);
  };
  callbacks.on_result = [&](const Result&) {
    const std::lock_guard lock(mutex);
    ++results_seen;
  };
  const Ticket ticket = engine.submit(request("a red circle", 7), callbacks);
  CHECK(ticket.id() >= 1);
  const Result result = result_of(ticket);
  REQUIRE(result.status == Status::ok);
  CHECK(result.id == ticket.id());
  REQUIRE(result.outputs.count("image") == 1);
  const at::Tensor image = result.outputs.at("image");
  CHECK(image.sizes() == at::IntArrayRef({3, 8, 8}));
  CHECK(image.device().is_cpu());
  CHECK(at::isfinite(image).all().item<bool>());
  CHECK(result.quality == 0.9);
  {
    const std::lock_guard lock(mutex);
    CHECK(progress == std::vector<std::pair<int, int>>{{1, 4}, {2, 4}, {3, 4}, {4, 4}});
    CHECK(results_seen == 1);
  }
  // What the engine chose, and why: the CPU, one request, both models in fp16 (the default).
  CHECK(result.decisions.device == apo::Device::cpu());
  CHECK(result.decisions.batch_size == 1);
  REQUIRE(result.decisions.precisions.size() == 2);
  for (const auto& [path, spec] : result.decisions.precisions) {
    CHECK(spec.format == apo::quant::QFormat::fp16);
  }
  CHECK(contains(result.decisions.reasons, "device cpu"));
  CHECK(contains(result.decisions.reasons, "model_precision is fp16"));
  CHECK(contains(result.decisions.reasons, "attention slicing off"));
  CHECK(result.peak_memory_bytes > 0);
  CHECK(result.peak_memory_bytes <= 64_MiB);

  // The same request again gives the same image, with the models resident (no second load).
  const Result again = result_of(engine.submit(request("a red circle", 7)));
  REQUIRE(again.ok());
  CHECK(at::equal(again.outputs.at("image"), image));
  CHECK(engine.models().stats().loads == 2);
  const auto stats = engine.stats();
  CHECK(stats.submitted == 2);
  CHECK(stats.completed == 2);
}

TEST_CASE("bad requests are refused at submit and are not accepted", "[engine]") {
  Fixture f;
  Engine engine(engine_config(64_MiB, f.dir.path), f.clock, cpu_machine());
  engine.add_workflow(std::make_shared<TestWorkflow>(f.workflow()));
  const auto code_of = [&](Request r) {
    try {
      engine.submit(std::move(r));
    } catch (const apo::Error& e) {
      return e.code();
    }
    return apo::ErrorCode::Internal;
  };
  CHECK(code_of(request("x", 1, "no_such_workflow")) == apo::ErrorCode::NotFound);
  Request odd = request("x", 1);
  odd.width = 60;  // the workflow's own check
  CHECK(code_of(odd) == apo::ErrorCode::InvalidArgument);
  Request nan_image = request("x", 1);
  nan_image.image = at::full({3, 64, 64}, std::nan(""));
  CHECK(code_of(nan_image) == apo::ErrorCode::InvalidArgument);
  Request bad_priority = request("x", 1);
  bad_priority.priority = 99;  // the scheduler's levels are 0 to 9
  CHECK(code_of(bad_priority) == apo::ErrorCode::InvalidArgument);
  CHECK(engine.stats().submitted == 0);
  CHECK_THROWS_AS(engine.add_workflow(std::make_shared<TestWorkflow>(f.workflow())), apo::Error);
}

TEST_CASE("dispatch follows priority and groups requests of one key", "[engine]") {
  Fixture f;
  Engine engine(engine_config(64_MiB, f.dir.path), f.clock, cpu_machine());
  engine.add_workflow(std::make_shared<TestWorkflow>(f.workflow()));
  f.probe.hold();
  const Ticket first = engine.submit(request("first", 1));
  REQUIRE(f.probe.wait_for_batches(1));  // the worker is busy with it

  std::vector<Ticket> low, high;
  for (int i = 0; i < 3; ++i) low.push_back(engine.submit(request("low", 10 + i)));
  for (int i = 0; i < 3; ++i) {
    Request r = request("high", 20 + i);
    r.priority = 9;
    r.width = 128;  // another key
    high.push_back(engine.submit(std::move(r)));
  }
  f.probe.release();
  for (const auto& t : high) CHECK(result_of(t).ok());
  for (const auto& t : low) CHECK(result_of(t).ok());
  CHECK(result_of(first).ok());
  const auto batches = f.probe.batches();
  REQUIRE(batches.size() == 3);
  // After the first: the three high ones together, then the three low ones together.
  CHECK(std::set<RequestId>(batches[1].begin(), batches[1].end()) ==
        std::set<RequestId>{high[0].id(), high[1].id(), high[2].id()});
  CHECK(std::set<RequestId>(batches[2].begin(), batches[2].end()) ==
        std::set<RequestId>{low[0].id(), low[1].id(), low[2].id()});
  // Batching does not change what a request makes.
  const Result alone = result_of(engine.submit(request("low", 11)));
  CHECK(at::allclose(alone.outputs.at("image"), result_of(low[1]).outputs.at("image"), 1e-6, 1e-6));
}

TEST_CASE("batches are sized by the ledger: resident weights and estimates share one budget",
          "[engine][memory]") {
  Fixture f;
  auto workflow = f.workflow();
  workflow.estimate_bytes = 10_MiB;
  // The models take 256 KiB in fp16; 40 MiB leaves room for three requests of 10 MiB, not four.
  Engine engine(engine_config(40_MiB, f.dir.path), f.clock, cpu_machine());
  engine.add_workflow(std::make_shared<TestWorkflow>(workflow));
  f.probe.hold();
  std::vector<Ticket> tickets;
  tickets.push_back(engine.submit(request("first", 1)));
  REQUIRE(f.probe.wait_for_batches(1));
  for (int i = 0; i < 7; ++i) tickets.push_back(engine.submit(request("next", 2 + i)));
  f.probe.release();
  std::vector<Result> results;
  for (const auto& t : tickets) results.push_back(result_of(t));
  for (const auto& r : results) CHECK(r.ok());
  std::vector<std::size_t> sizes;
  for (const auto& b : f.probe.batches()) sizes.push_back(b.size());
  CHECK(sizes == std::vector<std::size_t>{1, 3, 3, 1});
  CHECK(contains(results[1].decisions.reasons, "sized by the memory free"));
  engine.shutdown();  // every batch completed: nothing is reserved any more
  const auto memory = engine.memory(0);
  CHECK(memory.peak_used_bytes <= memory.budget_bytes);
  CHECK(memory.weights_bytes > 0);
  CHECK(memory.batches_bytes == 0);  // nothing in flight
}

TEST_CASE("deadlines and the queue bound end requests as the scheduler's contract says",
          "[engine]") {
  Fixture f;
  auto config = engine_config(64_MiB, f.dir.path);
  config.scheduling.max_queue_size = 2;
  Engine engine(config, f.clock, cpu_machine());
  engine.add_workflow(std::make_shared<TestWorkflow>(f.workflow()));
  f.probe.hold();
  const Ticket running = engine.submit(request("running", 1));
  REQUIRE(f.probe.wait_for_batches(1));

  Request late = request("late", 5);
  late.deadline = f.clock.now();
  CHECK(result_of(engine.submit(late)).status == Status::timed_out);
  Request soon = request("soon", 2);
  soon.deadline = f.clock.now() + 10s;
  const Ticket expiring = engine.submit(soon);
  const Ticket waiting = engine.submit(request("waiting", 3));
  const Result full = result_of(engine.submit(request("full", 4)));  // a third queued: refused
  CHECK(full.status == Status::rejected);
  CHECK(full.message.find("queue full") != std::string::npos);

  // The fake clock passes the deadline: the dispatcher wakes and ends the request.
  CHECK_FALSE(expiring.ready());
  f.clock.advance(11s);
  const Result expired = result_of(expiring);
  CHECK(expired.status == Status::timed_out);
  CHECK(expired.timings.queue_wait >= 11s);
  f.probe.release();
  CHECK(result_of(waiting).ok());
  CHECK(result_of(running).ok());
  CHECK(result_of(waiting).timings.queue_wait >= 11s);
}

TEST_CASE("cancel ends a queued request at once and a running one at its next step", "[engine]") {
  Fixture f;
  Engine engine(engine_config(64_MiB, f.dir.path), f.clock, cpu_machine());
  engine.add_workflow(std::make_shared<TestWorkflow>(f.workflow()));
  f.probe.hold();
  std::atomic<int> steps_seen{0};
  Callbacks counting;
  counting.on_progress = [&](RequestId, int, int) { ++steps_seen; };
  const Ticket running = engine.submit(request("running", 1), counting);
  REQUIRE(f.probe.wait_for_batches(1));
  const Ticket queued = engine.submit(request("queued", 2));

  CHECK(engine.cancel(queued.id()));
  const Result cancelled_queued = result_of(queued);
  CHECK(cancelled_queued.status == Status::cancelled);
  CHECK(engine.cancel(running.id()));
  f.probe.release();
  const Result cancelled_running = result_of(running);
  CHECK(cancelled_running.status == Status::cancelled);
  CHECK(steps_seen == 0);                    // it stopped at its first step
  CHECK_FALSE(engine.cancel(running.id()));  // already ended
  CHECK_FALSE(engine.cancel(12345));
  // The engine goes on.
  CHECK(result_of(engine.submit(request("after", 3))).ok());
  CHECK(engine.stats().cancelled == 2);
}

TEST_CASE("shutdown ends every request: drain runs them, cancel cancels them", "[engine]") {
  for (const ShutdownMode mode : {ShutdownMode::drain, ShutdownMode::cancel}) {
    INFO((mode == ShutdownMode::drain ? "drain" : "cancel"));
    Fixture f;
    auto config = engine_config(64_MiB, f.dir.path);
    config.scheduling.max_queue_delay_ms = 60'000;  // batches wait to fill; draining does not
    Engine engine(config, f.clock, cpu_machine());
    engine.add_workflow(std::make_shared<TestWorkflow>(f.workflow()));
    f.probe.hold();
    std::vector<Ticket> tickets;
    for (int i = 0; i < 4; ++i) tickets.push_back(engine.submit(request("busy", 1 + i)));
    f.clock.advance(61s);  // the first batch fills its time and runs
    REQUIRE(f.probe.wait_for_batches(1));
    for (int i = 0; i < 3; ++i) tickets.push_back(engine.submit(request("queued", 10 + i)));

    std::thread stopper([&] { engine.shutdown(mode); });
    std::this_thread::sleep_for(50ms);
    f.probe.release();
    stopper.join();
    const Status expected = mode == ShutdownMode::drain ? Status::ok : Status::cancelled;
    for (const auto& t : tickets) {
      REQUIRE(t.ready());
      CHECK(t.wait().status == expected);
    }
    const Result after = result_of(engine.submit(request("late", 99)));
    CHECK(after.status == Status::rejected);
    engine.shutdown(mode);  // idempotent
  }
}

TEST_CASE("running out of memory splits the batch and retries; the engine keeps serving",
          "[engine][memory]") {
  Fixture f;
  SECTION("activations larger than their estimate pass the ledger: split in halves") {
    auto workflow = f.workflow();
    workflow.estimate_bytes = 1_MiB;   // what the workflow claims
    workflow.allocate_bytes = 12_MiB;  // what each request really allocates per step
    workflow.probe = nullptr;
    Engine engine(engine_config(48_MiB, f.dir.path), f.clock, cpu_machine());
    engine.add_workflow(std::make_shared<TestWorkflow>(workflow));
    // Hold the worker with a first request so the next eight form one batch.
    auto held = f.workflow();
    held.name = "holder";
    engine.add_workflow(std::make_shared<TestWorkflow>(held));
    f.probe.hold();
    const Ticket holder = engine.submit(request("hold", 1, "holder"));
    REQUIRE(f.probe.wait_for_batches(1));
    std::vector<Ticket> tickets;
    for (int i = 0; i < 8; ++i) tickets.push_back(engine.submit(request("big", 10 + i)));
    f.probe.release();
    CHECK(result_of(holder).ok());
    for (const auto& t : tickets) {
      const Result r = result_of(t);
      CHECK(r.status == Status::ok);
      CHECK(r.decisions.batch_size <= 2);  // 8 > 4 > 2: each step of the way ran out
      CHECK(contains(r.decisions.reasons, "split from a batch of"));
    }
    CHECK(engine.stats().oom_splits >= 3);
    const auto memory = engine.memory(0);
    CHECK(memory.peak_used_bytes <= memory.budget_bytes);
  }
  SECTION("a workflow that throws torch's OutOfMemoryError is split down to one") {
    auto workflow = f.workflow();
    workflow.torch_oom_above = 1;
    workflow.name = "torch_oom";
    auto held = f.workflow();
    Engine engine(engine_config(64_MiB, f.dir.path), f.clock, cpu_machine());
    engine.add_workflow(std::make_shared<TestWorkflow>(workflow));
    engine.add_workflow(std::make_shared<TestWorkflow>(held));
    f.probe.hold();
    const Ticket holder = engine.submit(request("hold", 1));
    REQUIRE(f.probe.wait_for_batches(1));
    std::vector<Ticket> tickets;
    for (int i = 0; i < 4; ++i) tickets.push_back(engine.submit(request("x", 10 + i, "torch_oom")));
    f.probe.release();
    CHECK(result_of(holder).ok());
    for (const auto& t : tickets) CHECK(result_of(t).ok());
    CHECK(engine.stats().oom_splits == 3);  // 4 -> 2 + 2 -> 1 + 1 + 1 + 1
  }
  SECTION("a request that can never fit ends out of memory, naming what it needed") {
    auto too_big = f.workflow();
    too_big.name = "too_big";
    too_big.estimate_bytes = 80_MiB;
    auto always_short = f.workflow();
    always_short.name = "always_short";
    always_short.probe = nullptr;
    always_short.allocate_bytes = 100_MiB;  // claims 1 MiB, needs 100 MiB even alone
    Engine engine(engine_config(64_MiB, f.dir.path), f.clock, cpu_machine());
    engine.add_workflow(std::make_shared<TestWorkflow>(too_big));
    engine.add_workflow(std::make_shared<TestWorkflow>(always_short));
    engine.add_workflow(std::make_shared<TestWorkflow>(f.workflow()));

    const Result never = result_of(engine.submit(request("x", 1, "too_big")));
    CHECK(never.status == Status::out_of_memory);
    CHECK(never.message.find("80.00 MiB of activations") != std::string::npos);
    CHECK(never.message.find("cpu 64.00 MiB") != std::string::npos);

    const Result short_alone = result_of(engine.submit(request("x", 2, "always_short")));
    CHECK(short_alone.status == Status::out_of_memory);
    CHECK(short_alone.message.find("even alone it did not fit") != std::string::npos);
    CHECK(short_alone.message.find("cpu:") != std::string::npos);  // the ledger's account
    CHECK(contains(short_alone.decisions.reasons, "attention slicing on"));
    // The engine keeps serving.
    CHECK(result_of(engine.submit(request("fine", 3))).ok());
    const auto memory = engine.memory(0);
    CHECK(memory.peak_used_bytes <= memory.budget_bytes);
  }
}

TEST_CASE("a failing workflow fails its requests and nothing else", "[engine]") {
  Fixture f;
  auto broken = f.workflow();
  broken.name = "broken";
  broken.fail = true;
  broken.probe = nullptr;
  Engine engine(engine_config(64_MiB, f.dir.path), f.clock, cpu_machine());
  engine.add_workflow(std::make_shared<TestWorkflow>(broken));
  engine.add_workflow(std::make_shared<TestWorkflow>(f.workflow()));
  const Result failed = result_of(engine.submit(request("x", 1, "broken")));
  CHECK(failed.status == Status::failed);
  CHECK(failed.message.find("told to fail") != std::string::npos);
  CHECK(result_of(engine.submit(request("x", 1))).ok());
  // A model file that is gone refuses the requests that need it at submit.
  auto missing = f.workflow();
  missing.name = "missing";
  missing.dit = f.dir.path / "gone.safetensors";
  engine.add_workflow(std::make_shared<TestWorkflow>(missing));
  CHECK_THROWS_AS(engine.submit(request("x", 1, "missing")), apo::Error);
}

TEST_CASE("the quantization policy decides how models are stored; LoRAs change the weights",
          "[engine][quant]") {
  Fixture f;
  auto config = engine_config(64_MiB, f.dir.path);
  config.performance.model_precision = apo::Precision::fp8_e4m3;
  config.performance.keep_full_precision = {"^blocks\\.0\\.attn\\.qkv\\.weight$"};
  apo::engine::AnyEngine engine(config, f.clock, cpu_machine());
  engine.add_workflow(std::make_shared<TestWorkflow>(f.workflow()));
  const Result kept = result_of(engine.submit(request("x", 3)));
  REQUIRE(kept.ok());
  // The configuration keeps the only matrix at full precision: nothing is quantized.
  for (const auto& [path, spec] : kept.decisions.precisions) {
    CHECK(spec.format == apo::quant::QFormat::none);
  }

  auto fp8_config = engine_config(64_MiB, f.dir.path);
  fp8_config.performance.model_precision = apo::Precision::fp8_e4m3;
  apo::engine::AnyEngine fp8(fp8_config, f.clock, cpu_machine());
  fp8.add_workflow(std::make_shared<TestWorkflow>(f.workflow()));
  const Result quantized = result_of(fp8.submit(request("x", 3)));
  REQUIRE(quantized.ok());
  for (const auto& [path, spec] : quantized.decisions.precisions) {
    CHECK(spec ==
          apo::quant::QuantSpec{apo::quant::QFormat::fp8_e4m3, apo::quant::Scaling::per_row});
  }
  CHECK(contains(quantized.decisions.reasons, "model_precision is fp8_e4m3"));
  // fp8 weights change the output a little, not much.
  CHECK(at::allclose(quantized.outputs.at("image"), kept.outputs.at("image"), 0.0, 0.1));

  // A LoRA on the diffusion model is its own group, and changes what it makes.
  Request with_lora = request("x", 3);
  with_lora.loras = {{write_lora(f.dir.path, "style", 4), 1.0}};
  const Result styled = result_of(engine.submit(with_lora));
  REQUIRE(styled.ok());
  CHECK_FALSE(at::allclose(styled.outputs.at("image"), kept.outputs.at("image"), 1e-4, 1e-4));
  CHECK(result_of(engine.submit(request("x", 3)))
            .outputs.at("image")
            .equal(kept.outputs.at("image")));  // the base weights came back exactly
}

namespace {

// Records the CPU affinity and ATen thread count of the thread its batches run on.
class ThreadProbe : public TestWorkflow {
 public:
  using TestWorkflow::TestWorkflow;
  std::vector<Outputs> run(std::span<const Request> batch, Context& context) override {
    cpu_set_t cores;
    CPU_ZERO(&cores);
    sched_getaffinity(0, sizeof(cores), &cores);
    cores_seen = CPU_COUNT(&cores);
    first_core_set = CPU_ISSET(first_core, &cores);
    threads_seen = at::get_num_threads();
    return TestWorkflow::run(batch, context);
  }
  int first_core = 0;
  std::atomic<int> cores_seen{0};
  std::atomic<bool> first_core_set{false};
  std::atomic<int> threads_seen{0};
};

}  // namespace

TEST_CASE("workers run pinned to system_optimization.cpu_affinity with max_cpu_threads",
          "[engine][threads]") {
  Fixture f;
  cpu_set_t mine;
  CPU_ZERO(&mine);
  sched_getaffinity(0, sizeof(mine), &mine);
  int first = 0;
  while (!CPU_ISSET(first, &mine)) ++first;
  auto config = engine_config(64_MiB, f.dir.path);
  config.system.cpu_affinity = std::vector<int>{first};
  config.system.max_cpu_threads = 1;
  auto options = f.workflow();
  options.probe = nullptr;
  auto probe = std::make_shared<ThreadProbe>(options);
  probe->first_core = first;
  Engine engine(config, f.clock, cpu_machine());
  engine.add_workflow(probe);
  CHECK(result_of(engine.submit(request("x", 1))).ok());
  CHECK(probe->cores_seen == 1);
  CHECK(probe->first_core_set);
  CHECK(probe->threads_seen == 1);
}

TEST_CASE("with adaptive quality on, results steer the sampling of later requests", "[engine]") {
  Fixture f;
  // The real clock: the controller learns from the time requests take.
  Engine engine(engine_config(64_MiB, f.dir.path), apo::SteadyClock::instance(), cpu_machine());
  engine.add_workflow(std::make_shared<TestWorkflow>(f.workflow()));
  apo::tune::QualitySettings start;
  start.num_inference_steps = 20;
  start.guidance_scale = 6.0;
  apo::tune::AdaptiveQualityOptions options;
  options.target_time_s = 60.0;  // every request takes milliseconds: "fast"
  auto controller = std::make_shared<apo::tune::AdaptiveQualityController>(start, options);
  engine.set_quality_controller(controller);

  auto unset = [](std::uint64_t seed) {
    Request r = request("a red circle", seed);
    r.steps.reset();
    r.guidance.reset();
    return r;
  };
  for (std::uint64_t seed = 0; seed < static_cast<std::uint64_t>(options.confirmations); ++seed) {
    const Result result = result_of(engine.submit(unset(seed)));
    INFO(result.message);
    REQUIRE(result.ok());
  }
  const auto history = controller->history();
  REQUIRE(history.size() == static_cast<std::size_t>(options.confirmations));
  CHECK(history.back().action == apo::tune::QualityAction::increase_if_possible);
  const apo::tune::QualitySettings now = controller->settings();
  CHECK(now.num_inference_steps > start.num_inference_steps);

  // A request that leaves its sampling unset now runs with the controller's settings: its
  // picture is the one of a request that asks for them.
  const Result adapted = result_of(engine.submit(unset(42)));
  Request explicit_request = request("a red circle", 42);
  explicit_request.steps = now.num_inference_steps;
  explicit_request.guidance = now.guidance_scale;
  engine.set_quality_controller(nullptr);
  const Result asked = result_of(engine.submit(explicit_request));
  REQUIRE(adapted.ok());
  REQUIRE(asked.ok());
  CHECK(at::equal(adapted.outputs.at("image"), asked.outputs.at("image")));
}

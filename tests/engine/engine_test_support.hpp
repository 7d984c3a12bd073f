#pragma once

// What the engine tests share: model files written by the test, a workflow that does real
// tensor work with them (and can be held, made to run out of memory, or to fail), and an
// engine configuration for this machine's CPU with a small, exact budget.

#include <c10/util/Exception.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "apo/core/config.hpp"
#include "apo/core/error.hpp"
#include "apo/core/machine.hpp"
#include "apo/core/units.hpp"
#include "apo/engine/result.hpp"
#include "apo/engine/workflow.hpp"
#include "apo/models/safetensors.hpp"

namespace engine_test {

namespace fs = std::filesystem;
using apo::Request;
using apo::RequestId;
using apo::engine::Context;
using apo::engine::ModelNeed;
using apo::engine::Outputs;
using namespace apo::literals;
using namespace std::chrono_literals;

inline constexpr int kDim = 256;  // 65,536 weights per matrix: what the rules quantize

struct ScratchDir {
  fs::path path = fs::temp_directory_path() / fmt::format("apo_engine_{}", std::random_device{}());
  ScratchDir() { fs::create_directories(path); }
  ~ScratchDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
};

// A model of `layers` [kDim, kDim] float32 matrices named like a DiT's ("blocks.N.attn.qkv").
inline fs::path write_model(const fs::path& dir, const std::string& name, int layers, int seed) {
  at::manual_seed(seed);
  std::vector<apo::models::NamedTensor> tensors;
  for (int l = 0; l < layers; ++l) {
    tensors.push_back({fmt::format("blocks.{}.attn.qkv.weight", l),
                       at::randn({kDim, kDim}) / std::sqrt(static_cast<double>(kDim))});
    tensors.push_back({fmt::format("blocks.{}.attn.qkv.bias", l), at::zeros({kDim})});
  }
  const fs::path path = dir / (name + ".safetensors");
  apo::models::save_safetensors(path, tensors);
  return path;
}

// A LoRA for the first block of write_model's models.
inline fs::path write_lora(const fs::path& dir, const std::string& name, int seed) {
  at::manual_seed(seed);
  const fs::path path = dir / (name + ".safetensors");
  apo::models::save_safetensors(
      path, std::vector<apo::models::NamedTensor>{
                {"diffusion_model.blocks.0.attn.qkv.lora_A.weight", at::randn({4, kDim}) * 0.2},
                {"diffusion_model.blocks.0.attn.qkv.lora_B.weight", at::randn({kDim, 4}) * 0.2},
            });
  return path;
}

// What a test sees of its workflow's runs, and how it holds one.
class Probe {
 public:
  // Batches enter() blocks until release() while held.
  void hold() {
    const std::lock_guard lock(mutex_);
    held_ = true;
  }
  void release() {
    {
      const std::lock_guard lock(mutex_);
      held_ = false;
    }
    changed_.notify_all();
  }
  void enter(std::vector<RequestId> ids) {
    std::unique_lock lock(mutex_);
    batches_.push_back(std::move(ids));
    ++waiting_;
    changed_.notify_all();
    changed_.wait(lock, [&] { return !held_; });
    --waiting_;
  }
  // Waits (real time, bounded) until `count` batches have entered; false on timeout.
  bool wait_for_batches(std::size_t count, std::chrono::seconds limit = 30s) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, limit, [&] { return batches_.size() >= count; });
  }
  std::vector<std::vector<RequestId>> batches() const {
    const std::lock_guard lock(mutex_);
    return batches_;
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  bool held_ = false;
  int waiting_ = 0;
  std::vector<std::vector<RequestId>> batches_;
};

// A small diffusion-like workflow: a text "encoder" turns the prompt into a vector, a DiT
// matrix (with the request's LoRAs) denoises a seeded latent for `steps` steps, and a sigmoid
// "decodes" it into a 3x8x8 image. Each request's output depends on its prompt, seed and
// sampling only, never on its batch companions.
class TestWorkflow : public apo::engine::Workflow {
 public:
  struct Options {
    std::string name = "test_t2i";
    fs::path encoder;
    fs::path dit;
    std::int64_t estimate_bytes = 1_MiB;
    // Activations each request really allocates per step (through torch, so through the pool).
    std::int64_t allocate_bytes = 0;
    // Throw torch's OutOfMemoryError for batches larger than this (0: never).
    std::size_t torch_oom_above = 0;
    bool fail = false;  // throw a plain error
    Probe* probe = nullptr;
  };

  explicit TestWorkflow(Options options) : options_(std::move(options)) {}

  std::string name() const override { return options_.name; }

  std::vector<ModelNeed> models(const Request&) const override {
    return {{"encoder", {options_.encoder, apo::models::ModelKind::text_encoder, {}, {}}, false},
            {"dit", {options_.dit, apo::models::ModelKind::diffusion, {}, {}}, true}};
  }

  std::int64_t memory_estimate(const Request&) const override { return options_.estimate_bytes; }

  void check(const Request& request) const override {
    if (request.width % 8 != 0 || request.height % 8 != 0) {
      throw apo::Error(apo::ErrorCode::InvalidArgument,
                       fmt::format("width and height must be multiples of 8, got {}x{}",
                                   request.width, request.height),
                       options_.name);
    }
  }

  std::vector<Outputs> run(std::span<const Request> batch, Context& context) override {
    std::vector<RequestId> ids;
    for (const Request& r : batch) ids.push_back(r.id);
    if (options_.probe) options_.probe->enter(ids);
    if (options_.fail) throw std::runtime_error("the test workflow was told to fail");
    if (options_.torch_oom_above > 0 && batch.size() > options_.torch_oom_above) {
      C10_THROW_ERROR(OutOfMemoryError, "CUDA out of memory (test: batch too large)");
    }
    const auto n = static_cast<std::int64_t>(batch.size());
    at::Tensor encoder;
    at::Tensor dit;
    {
      auto stage = context.stage(apo::engine::Stage::encode);
      encoder = context.model("encoder").dense("blocks.0.attn.qkv.weight", at::kFloat);
      dit = context.model("dit").dense("blocks.0.attn.qkv.weight", at::kFloat);
    }
    // Per request: the prompt's embedding plus seeded noise.
    std::vector<at::Tensor> rows;
    for (const Request& r : batch) {
      at::Tensor tokens = at::zeros({kDim});
      for (std::size_t i = 0; i < r.prompt.size(); ++i) {
        tokens[static_cast<std::int64_t>(i % kDim)] += static_cast<double>(r.prompt[i]) / 128.0;
      }
      at::Tensor noise = at::randn({kDim}, at::detail::createCPUGenerator(r.seed));
      rows.push_back(noise + at::matmul(encoder, tokens));
    }
    at::Tensor x = at::stack(rows);
    const int steps = batch.front().steps.value_or(4);
    {
      auto stage = context.stage(apo::engine::Stage::denoise);
      for (int s = 0; s < steps; ++s) {
        if (options_.allocate_bytes > 0) {
          at::Tensor scratch = at::empty({n * options_.allocate_bytes / 4}, at::kFloat);
          scratch.fill_(1.0f);
          x = x + scratch.sum() * 0.0;
        }
        x = at::tanh(at::matmul(x, dit.t()) * batch.front().guidance.value_or(1.0));
        context.step(s + 1, steps);
      }
    }
    std::vector<Outputs> outputs;
    auto stage = context.stage(apo::engine::Stage::decode);
    for (std::int64_t i = 0; i < n; ++i) {
      outputs.push_back({{"image", at::sigmoid(x[i].narrow(0, 0, 192)).view({3, 8, 8})}});
      context.set_quality(static_cast<std::size_t>(i), 0.9);
    }
    return outputs;
  }

 private:
  Options options_;
};

// A machine with 16 GiB of RAM, 2 cores and no CUDA device.
inline apo::MachineInfo cpu_machine() {
  apo::MachineInfo machine;
  machine.cpu.logical_cores = 2;
  machine.cpu.usable_cores = {0, 1};
  machine.memory.total_bytes = 16_GiB;
  machine.memory.available_bytes = 12_GiB;
  return machine;
}

// The CPU's budget (and the host tier's) is `budget_bytes`; batches form at once. Workers run
// ATen on one thread, as every test does under TSan (tests/support), which cannot see into
// libgomp.
inline apo::Config engine_config(std::int64_t budget_bytes, const fs::path& dir) {
  apo::Config config;
  config.performance.max_memory_usage_gib = apo::bytes_to_gib(budget_bytes);
  config.system.max_cpu_threads = 1;
  config.scheduling.max_queue_delay_ms = 0;
  config.system.io_threads = 2;
  config.storage.model_cache_path = dir.string();
  config.storage.temp_path = (dir / "tmp").string();
  config.memory.cleanup_interval_s = 3600;
  return config;
}

inline Request request(std::string prompt, std::uint64_t seed, std::string workflow = "test_t2i") {
  Request r;
  r.workflow = std::move(workflow);
  r.prompt = std::move(prompt);
  r.seed = seed;
  r.width = 64;
  r.height = 64;
  r.steps = 4;
  r.guidance = 1.5;
  return r;
}

// The result of a ticket, waiting at most `limit` of real time (a test fails, never hangs).
template <class Ticket>
apo::engine::Result result_of(const Ticket& ticket, std::chrono::seconds limit = 60s) {
  const auto result = ticket.wait_for(limit);
  if (!result) {
    throw apo::Error(
        apo::ErrorCode::TimedOut,
        fmt::format("no result for request {} within {} s", ticket.id(), limit.count()), "test");
  }
  return *result;
}

}  // namespace engine_test

#pragma once

/// @file
/// @brief The Workflow interface (what a generation pipeline tells the engine and how the engine
/// runs it), the Context a batch runs in (the only way a workflow reaches the engine), and the
/// registry of workflows by name.

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "apo/core/clock.hpp"
#include "apo/core/config.hpp"
#include "apo/core/device.hpp"
#include "apo/engine/result.hpp"
#include "apo/memory/resource.hpp"
#include "apo/models/model_cache.hpp"
#include "apo/monitor/trace.hpp"
#include "apo/request/request.hpp"

namespace apo::engine {

/// @brief A model a workflow needs for a request, under the name the workflow uses for it.
struct ModelNeed {
  std::string role;  ///< "text_encoder", "vae", "dit", ...
  models::ModelRef ref;
  /// Merge the request's LoRAs into this model (its diffusion model).
  bool takes_loras = false;
};

class Context;

/// @brief Fills the sampling a request leaves unset (steps, guidance, sampler) from the
/// generation settings of its quality level: what Workflow::resolve does by default.
void fill_sampling(Request& request, const GenerationSettings& level);

/// @brief A generation pipeline the engine can run.
///
/// Contract:
/// - `name()` is fixed for the workflow's life; requests name it.
/// - `models(request)` lists the models a request needs; requests of one batch share a grouping
///   key (model, LoRAs, shape, sampling), so the engine acquires the batch's models once, from
///   its first request. The engine loads them (and LoRAs) before run().
/// - `memory_estimate(request)` is the device memory one request adds to a batch beyond the
///   models (activations, latents, decoder buffers), in bytes: the engine, not the caller,
///   sizes batches and admits requests by it. An estimate below the truth costs an
///   out-of-memory retry; above it, smaller batches.
/// - `resolve(request, level)` runs at submit, first: it fills what the request leaves unset
///   (steps, guidance, sampler) from the workflow's own configuration and `level`, the
///   generation settings of the request's quality level, and may add what its settings call
///   for (a lightning LoRA). Values the caller set are kept. By default: fill_sampling.
/// - `check(request)` throws Error(InvalidArgument) for a request it cannot run (a missing input
///   image, an input of the wrong size); the engine calls it at submit.
/// - `run(batch, context)` produces one Outputs per request, in order, with CPU tensors. It
///   reaches the engine only through the context: the device, the activation pool, the models,
///   progress and cancellation (Context::step, at least once per sampling step). It may throw:
///   apo::Error or torch's OutOfMemoryError when memory runs out (the engine splits the batch
///   and retries), Error(Cancelled) from Context::step, anything else to fail the batch.
/// - Several batches may run at once on different devices (and on one device with several
///   workers): run() must be safe to call concurrently.
class Workflow {
 public:
  virtual ~Workflow() = default;
  virtual std::string name() const = 0;
  virtual std::vector<ModelNeed> models(const Request& request) const = 0;
  virtual std::int64_t memory_estimate(const Request& request) const = 0;
  virtual void resolve(Request& request, const GenerationSettings& level) const {
    fill_sampling(request, level);
  }
  virtual void check(const Request& /*request*/) const {}
  virtual std::vector<Outputs> run(std::span<const Request> batch, Context& context) = 0;
};

namespace detail {
/// @brief What a context needs of the engine while a batch runs (implemented by the engine).
class RunControl {
 public:
  virtual bool cancel_requested(RequestId id) const = 0;
  /// @brief The request was cancelled while running: it ends Cancelled now.
  virtual void end_cancelled(RequestId id) = 0;
  virtual void progress(RequestId id, int step, int steps) = 0;

 protected:
  ~RunControl() = default;
};
}  // namespace detail

/// @brief Everything a batch may use of the engine while it runs: its device, the device's
/// activation pool, the leases on its models, the compute stream, the engine's choices
/// (attention slicing), progress and cancellation, stage timings and quality scores. Made by
/// the engine for one run of one batch; not thread-safe.
class Context {
 public:
  /// @brief Set up by the engine.
  struct Setup {
    Device device;
    memory::AnyResource pool;
    std::map<std::string, models::Lease, std::less<>> leases;  ///< by role
    std::uintptr_t stream = 0;
    bool attention_slicing = false;
    int slice_size = 1;
    const Clock* clock = nullptr;
  };

  Context(Setup setup, std::span<const Request> requests, detail::RunControl& control);

  Device device() const noexcept { return setup_.device; }
  /// @brief Activation memory on the device, charged to its ledger. On the CPU the engine also
  /// routes torch's allocations on the running thread here while run() executes.
  const memory::AnyResource& pool() const noexcept { return setup_.pool; }
  /// @brief The model the workflow listed under `role`. @throws Error(NotFound)
  const models::Model& model(std::string_view role) const;
  /// @brief Its lease: for a model that streams (Lease::streamed), Lease::streamer().
  const models::Lease& lease(std::string_view role) const;
  /// @brief The CUDA stream to run on (0: the current one); unused on the CPU.
  std::uintptr_t stream() const noexcept { return setup_.stream; }
  std::span<const Request> requests() const noexcept { return requests_; }

  /// @brief Whether to slice attention (attention_optimization, or the engine's last resort
  /// against running out of memory), and the slice size.
  bool attention_slicing() const noexcept { return setup_.attention_slicing; }
  int slice_size() const noexcept { return setup_.slice_size; }

  /// @brief Reports step `step` of `steps` for every request still running, and is the point
  /// where cancellation takes effect: a request cancelled since the last step ends Cancelled
  /// now; when every request of the batch is cancelled this throws Error(Cancelled).
  void step(int step, int steps);
  /// @brief Whether request `index` of the batch was cancelled while running (its outputs will
  /// be dropped; the workflow may stop computing them).
  bool cancelled(std::size_t index) const;

  /// @brief Times a stage until the returned timer is destroyed; stages add up over a run.
  class StageTimer {
   public:
    StageTimer(Context& context, Stage stage);
    ~StageTimer();
    StageTimer(const StageTimer&) = delete;
    StageTimer& operator=(const StageTimer&) = delete;

   private:
    Context& context_;
    Stage stage_;
    Clock::time_point start_;
    monitor::Span span_;  // the stage in the trace, when tracing is on
  };
  StageTimer stage(Stage stage) { return StageTimer(*this, stage); }

  /// @brief Scores request `index`'s output in [0, 1] (a judge's verdict).
  void set_quality(std::size_t index, double score);

  // For the engine.
  Clock::duration stage_time(Stage stage) const;
  std::optional<double> quality(std::size_t index) const;
  const std::map<std::string, models::Lease, std::less<>>& leases() const noexcept {
    return setup_.leases;
  }

 private:
  Setup setup_;
  std::span<const Request> requests_;
  detail::RunControl& control_;
  std::vector<bool> dropped_;
  std::vector<std::optional<double>> quality_;
  std::array<Clock::duration, 4> stage_times_{};
};

/// @brief Workflows by name. Thread-safe.
class WorkflowRegistry {
 public:
  /// @brief Throws Error(InvalidArgument) for a null workflow, an empty name or a name taken.
  void add(std::shared_ptr<Workflow> workflow);
  /// @brief The workflow of this name, or nullptr.
  std::shared_ptr<Workflow> find(std::string_view name) const;
  std::vector<std::string> names() const;

 private:
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<Workflow>, std::less<>> workflows_;
};

}  // namespace apo::engine

#pragma once

/// @file
/// @brief ModelCache: models resident in a device tier (a byte budget per device) and a host
/// tier (a byte budget), loaded from the disk tier on demand, quantized on load, shared where
/// the guide's rules allow, evicted least-recently-used within a threshold of each budget, and
/// preloaded from a usage prediction. The guide's SequentialModelManager is ModelCache with a
/// device budget and its eviction threshold (examples/cpp/sequential_models.cpp).
///
/// Tiers and moves:
/// - acquire(ref, device) returns a Lease that keeps the model resident on that device. A hit
///   costs a lookup; a model in the host tier is promoted (a copy); otherwise it is read from
///   disk (and quantized) on a loader thread.
/// - When a device's use would pass eviction_threshold × budget, the least-recently-used
///   unleased models there are evicted: demoted to the host tier while its budget allows (so
///   the next load is a copy, not a disk read), else dropped. Host-tier eviction drops. A leased
///   model is never evicted. A model that fits no tier fails with OutOfMemory naming the sizes.
/// - Concurrent acquires of one model load it once; identical requests resolve to one resident
///   instance.
/// - LoRAs named in an acquire are merged into the resident weights while the lease lives and
///   removed (the base weights restored exactly) when a lease with other LoRAs needs the model:
///   leases of one instance always agree on its LoRAs; a different set waits for them.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "apo/core/clock.hpp"
#include "apo/core/config.hpp"
#include "apo/core/machine.hpp"
#include "apo/models/model.hpp"
#include "apo/models/usage_predictor.hpp"
#include "apo/models/weight_streaming.hpp"

namespace apo::models {

/// @brief How a ModelCache behaves; from_config reads it from a configuration.
struct ModelCacheOptions {
  /// Byte budget of each device tier (CUDA devices); the CPU "device" is the host tier.
  std::vector<std::pair<c10::Device, std::int64_t>> device_budgets;
  std::int64_t host_budget_bytes = 0;
  /// Evict when use would pass this share of a budget (memory_optimization.eviction_threshold).
  double eviction_threshold = 0.8;
  /// memory_optimization.enable_model_sharing: off, nothing is shared between workflows.
  bool share_models = true;
  /// memory_optimization.enable_cpu_offload: evicted device models move to the host tier.
  bool demote_to_host = true;
  /// memory_optimization.enable_sequential_cpu_offload: a model larger than its device's budget
  /// stays in the host tier and streams its weights (Lease::streamer) instead of failing.
  bool stream_when_too_large = false;
  /// storage_optimization.preload_models: keep a host copy of every model read from disk, so
  /// the next load is a copy (the guide's advice for slow disks).
  bool keep_host_copy = false;
  /// Weight precision when a ModelRef sets none; quantization rules (keep patterns etc.).
  Precision precision = Precision::fp16;
  bool allow_8bit = false;  ///< performance_optimization.enable_quantization, for "auto"
  double quantization_memory_fraction = 0.8;
  quant::QuantizationRules rules;
  /// Loader threads (system_optimization.io_threads); with async_io off, loads run one at a time.
  int io_threads = 4;
  bool async_io = true;
  /// Where relative model paths are found (storage_optimization.model_cache_path).
  std::filesystem::path model_root;
  /// Where quantized conversions of models are kept, so that the next cold load reads the
  /// smaller file instead of quantizing again (storage_optimization.temp_path/apo-converted:
  /// the guide puts temp_path on the fast disk); empty: none kept.
  std::filesystem::path converted_models;
  /// Read-ahead while loading from disk (storage_optimization.io_buffer_size_mb).
  std::int64_t io_buffer_bytes = 64 << 20;

  /// @brief Budgets from the configuration and the machine: each CUDA device gets
  /// max_memory_usage_gb ("auto": the rule of tune/presets.hpp), the host tier
  /// memory_pool_size_gb ("auto": half of the host's RAM).
  static ModelCacheOptions from_config(const Config& config, const MachineInfo& machine);
};

/// @brief Counters over a cache's life.
struct CacheStats {
  std::int64_t hits = 0;         ///< acquires served by a resident instance
  std::int64_t misses = 0;       ///< acquires that loaded or promoted
  std::int64_t loads = 0;        ///< reads from disk
  std::int64_t promotions = 0;   ///< host tier to device tier copies
  std::int64_t demotions = 0;    ///< device tier to host tier moves on eviction
  std::int64_t evictions = 0;    ///< instances removed from a tier
  std::int64_t bytes_read = 0;   ///< from disk
  std::int64_t bytes_moved = 0;  ///< between tiers
  double load_seconds = 0;       ///< spent reading, quantizing and moving
  std::int64_t lora_applications = 0;
  std::int64_t conversions_written = 0;  ///< quantized copies saved under converted_models
  std::int64_t conversions_read = 0;     ///< cold loads served by such a copy
};

/// @brief One resident instance, for inspection.
struct ResidentModel {
  std::string path;
  ModelKind kind;
  Precision precision;
  c10::Device device{c10::kCPU};
  std::string scope;  ///< "" when shared; the workflow when sharing is off
  std::int64_t bytes = 0;
  int leases = 0;
  std::vector<LoraRequest> loras;
};

namespace detail {
struct CacheState;
struct Instance;
}  // namespace detail

/// @brief Keeps a model resident while it lives. Move-only. Using a lease after its cache was
/// destroyed raises apo::Error(InvalidArgument), not a crash.
class Lease {
 public:
  Lease() = default;
  Lease(Lease&&) noexcept;
  Lease& operator=(Lease&&) noexcept;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease();

  explicit operator bool() const noexcept { return instance_ != nullptr; }
  /// @brief The model, with this lease's LoRAs merged.
  /// @throws apo::Error InvalidArgument for an empty lease or one whose cache is gone
  const Model& model() const;
  const Model* operator->() const { return &model(); }
  /// @brief Whether the model lives in the host tier and streams to the device
  /// (ModelCacheOptions::stream_when_too_large).
  bool streamed() const noexcept;
  /// @brief A weight streamer for the device this lease was asked for, planned within its
  /// budget (streamed leases only).
  std::unique_ptr<WeightStreamer> streamer(std::uintptr_t compute_stream = 0) const;
  /// @brief Lets go early (the destructor does it otherwise).
  void release() noexcept;

 private:
  friend class ModelCache;
  Lease(std::shared_ptr<detail::CacheState> state, std::shared_ptr<detail::Instance> instance,
        c10::Device device);
  std::shared_ptr<detail::CacheState> state_;
  std::shared_ptr<detail::Instance> instance_;
  c10::Device device_{c10::kCPU};
};

class ModelCache {
 public:
  explicit ModelCache(ModelCacheOptions options, const Clock& clock = SteadyClock::instance());
  /// @brief Waits for loads in flight; leases still held keep their models alive but refuse use.
  ~ModelCache();
  ModelCache(const ModelCache&) = delete;
  ModelCache& operator=(const ModelCache&) = delete;

  /// @brief The model resident on `device` (CPU: the host tier), loading it if needed, with
  /// `loras` merged while the lease lives. Blocks until it is ready.
  /// @throws apo::Error NotFound, Corrupt (the file), OutOfMemory (no tier can hold it),
  /// InvalidArgument (a device without a budget)
  Lease acquire(const ModelRef& ref, c10::Device device, std::vector<LoraRequest> loras = {});
  /// @brief The same on a loader thread.
  std::future<Lease> acquire_async(ModelRef ref, c10::Device device,
                                   std::vector<LoraRequest> loras = {});

  /// @brief Warms the host tier with the models `predictor` expects around `hour` with a
  /// probability above `threshold` (storage_optimization.preload_threshold), in the
  /// background, into free room only (nothing is evicted for a guess). Returns the paths it
  /// started and a future that is ready when they are loaded.
  struct Preload {
    std::vector<std::string> models;
    std::shared_future<void> done;
  };
  Preload preload(const UsagePredictor& predictor, int hour, double threshold);

  /// @brief Drops every unleased instance from every tier and returns the host pool's free memory
  /// to the system; returns the bytes the instances held (a MemoryManager cleanup hook).
  std::int64_t release_unused();

  CacheStats stats() const;
  std::vector<ResidentModel> residents() const;
  /// @brief Bytes held in a tier (CPU: the host tier), reservations for loads in flight included.
  std::int64_t used_bytes(c10::Device device) const;
  const ModelCacheOptions& options() const noexcept;

 private:
  Lease acquire_now(const ModelRef& ref, c10::Device device, std::vector<LoraRequest> loras);
  std::optional<Lease> take(std::unique_lock<std::mutex>& lock,
                            const std::shared_ptr<detail::Instance>& instance,
                            const std::vector<LoraRequest>& loras, c10::Device device);
  std::shared_ptr<detail::CacheState> state_;
};

}  // namespace apo::models

#pragma once

/// @file
/// @brief ModelCache: models resident in a device tier (one per device, charged to its memory
/// ledger) and a host tier (charged to the host ledger), loaded from the disk tier on demand,
/// stored as the quantization policy plans, shared where the guide's rules allow, evicted
/// least-recently-used within a threshold of each ledger's budget, and preloaded from a usage
/// prediction. The guide's SequentialModelManager is ModelCache with a device ledger and its
/// eviction threshold (examples/cpp/sequential_models.cpp).
///
/// Tiers and moves:
/// - acquire(ref, device) returns a Lease that keeps the model resident on that device. A hit
///   costs a lookup; a model in the host tier is promoted (a copy); otherwise it is read from
///   disk (and quantized) on a loader thread.
/// - When a ledger's use (weights, and whatever else shares it: activations, batches) would pass
///   eviction_threshold × budget, the least-recently-used unleased models of that tier are
///   evicted: demoted to the host tier while its ledger allows (so the next load is a copy, not a
///   disk read), else dropped. Host-tier eviction drops. A leased model is never evicted. A model
///   that fits no tier fails with OutOfMemory naming the sizes and the ledger.
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

#include "apo/core/clock.hpp"
#include "apo/core/device.hpp"
#include "apo/memory/ledger.hpp"
#include "apo/memory/resource.hpp"
#include "apo/models/model.hpp"
#include "apo/models/usage_predictor.hpp"
#include "apo/models/weight_streaming.hpp"
#include "apo/quant/policy.hpp"

namespace apo {
struct Config;
}  // namespace apo

namespace apo::models {

/// @brief Decides how each loading model is stored (a quantization policy, type-erased: the
/// engine passes its own).
using QuantizationPlanner =
    std::function<quant::StoragePlan(const quant::NamedTensors&, const quant::LoadRequest&)>;

/// @brief The planner that asks `policy`.
template <quant::QuantizationPolicy P>
QuantizationPlanner planner_of(P policy) {
  return [policy = std::move(policy)](const quant::NamedTensors& weights,
                                      const quant::LoadRequest& request) {
    return policy.plan(weights, request);
  };
}

/// @brief How a ModelCache behaves. from_config reads the behaviour from a configuration; the
/// ledgers (the memory each tier may use) come from whoever owns the devices: the engine.
struct ModelCacheOptions {
  /// @brief The defaults of Config{} (the configuration schema is their one source).
  ModelCacheOptions();
  static ModelCacheOptions from_config(const Config& config);

  /// The ledger of each device tier: a CUDA device, or the CPU where it computes. The cache
  /// charges the weights it keeps there.
  std::vector<std::shared_ptr<memory::MemoryLedger>> device_ledgers;
  /// The host tier's ledger: host memory for models offloaded from devices (and copies kept
  /// for the next load). When it is also a device ledger (the CPU computes), host tier and
  /// device tier are one.
  std::shared_ptr<memory::MemoryLedger> host_ledger;
  /// Host memory for host-tier copies (pinned when serving CUDA, so copies to devices run at full
  /// speed); unset: a caching pool over plain host memory.
  std::optional<memory::AnyResource> host_memory;
  /// Evict when a ledger's use would pass this share of its budget
  /// (memory_optimization.eviction_threshold).
  double eviction_threshold;
  /// memory_optimization.enable_model_sharing: off, nothing is shared between workflows.
  bool share_models;
  /// memory_optimization.enable_cpu_offload: evicted device models move to the host tier.
  bool demote_to_host;
  /// memory_optimization.enable_sequential_cpu_offload: a model larger than its device's budget
  /// stays in the host tier and streams its weights (Lease::streamer) instead of failing.
  bool stream_when_too_large;
  /// storage_optimization.preload_models: keep a host copy of every model read from disk, so
  /// the next load is a copy (the guide's advice for slow disks).
  bool keep_host_copy;
  /// How each model read from disk is stored (performance_optimization's precision settings).
  QuantizationPlanner quantization;
  /// Loader threads (system_optimization.io_threads); with async_io off, loads run one at a time.
  int io_threads;
  bool async_io;
  /// Where relative model paths are found (storage_optimization.model_cache_path).
  std::filesystem::path model_root;
  /// Where quantized conversions of models are kept, so that the next cold load reads the
  /// smaller file instead of quantizing again (storage_optimization.temp_path/apo-converted:
  /// the guide puts temp_path on the fast disk); empty: none kept.
  std::filesystem::path converted_models;
  /// Read-ahead while loading from disk (storage_optimization.io_buffer_size_mb).
  std::int64_t io_buffer_bytes;

 private:
  explicit ModelCacheOptions(const Config& config);
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
  Precision precision;    ///< asked for
  quant::QuantSpec spec;  ///< what the weights are stored in
  Device device;
  bool host_tier = false;  ///< in the host tier (offloaded), not a device tier
  std::string scope;       ///< "" when shared; the workflow when sharing is off
  std::int64_t bytes = 0;
  int leases = 0;
  std::vector<LoraRequest> loras;
};

namespace detail {
struct CacheState;
struct Instance;
struct Tier;
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
  /// @brief Why its weights are stored as they are (the quantization policy's reason).
  std::string storage_reason() const;
  /// @brief A weight streamer for the device this lease was asked for, planned within the room
  /// its ledger has; its slots are charged to that ledger as staging (streamed leases only).
  std::unique_ptr<WeightStreamer> streamer(std::uintptr_t compute_stream = 0) const;
  /// @brief Lets go early (the destructor does it otherwise).
  void release() noexcept;

 private:
  friend class ModelCache;
  Lease(std::shared_ptr<detail::CacheState> state, std::shared_ptr<detail::Instance> instance,
        Device device);
  std::shared_ptr<detail::CacheState> state_;
  std::shared_ptr<detail::Instance> instance_;
  Device device_;
};

class ModelCache {
 public:
  explicit ModelCache(ModelCacheOptions options, const Clock& clock = SteadyClock::instance());
  /// @brief Waits for loads in flight; leases still held keep their models alive but refuse use.
  ~ModelCache();
  ModelCache(const ModelCache&) = delete;
  ModelCache& operator=(const ModelCache&) = delete;

  /// @brief The model resident on `device` (the CPU without a ledger of its own: the host tier),
  /// loading it if needed, with `loras` merged while the lease lives. Blocks until it is ready.
  /// @throws apo::Error NotFound, Corrupt (the file), OutOfMemory (no tier can hold it),
  /// InvalidArgument (a device without a ledger)
  Lease acquire(const ModelRef& ref, Device device, std::vector<LoraRequest> loras = {});
  /// @brief The same on a loader thread.
  std::future<Lease> acquire_async(ModelRef ref, Device device,
                                   std::vector<LoraRequest> loras = {});
  /// @brief The model in the host tier (offloaded: for a later promotion, not for compute on a
  /// device), loading it if needed.
  Lease acquire_host(const ModelRef& ref);

  /// @brief Bytes `ref` would take on `device` if it were loaded now (its storage plan), and
  /// whether it is already resident there; reads only the file's header.
  struct Footprint {
    std::int64_t bytes = 0;
    bool resident = false;
  };
  Footprint footprint(const ModelRef& ref, Device device) const;

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
  /// @brief Evicts unleased instances from `device`'s tier, least recently used first (demoted
  /// to the host tier where offload allows), until `bytes` are free in its ledger or nothing is
  /// left to evict; returns the bytes evicted. What the engine does before giving up on memory.
  std::int64_t make_room(Device device, std::int64_t bytes);

  CacheStats stats() const;
  std::vector<ResidentModel> residents() const;
  /// @brief Weight bytes the cache holds in `device`'s tier (the CPU without a ledger of its
  /// own: the host tier), loads in flight included.
  std::int64_t used_bytes(Device device) const;
  /// @brief Weight bytes the cache holds in the host tier.
  std::int64_t host_used_bytes() const;
  const ModelCacheOptions& options() const noexcept;

 private:
  Lease acquire_now(const ModelRef& ref, detail::Tier& wanted, Device device,
                    std::vector<LoraRequest> loras);
  std::optional<Lease> take(std::unique_lock<std::mutex>& lock,
                            const std::shared_ptr<detail::Instance>& instance,
                            const std::vector<LoraRequest>& loras, Device device);
  std::shared_ptr<detail::CacheState> state_;
};

}  // namespace apo::models

// ModelCache: tiers over memory ledgers, leases, sharing, eviction, loading, LoRA switching and
// preloading.

#include "apo/models/model_cache.hpp"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "apo/core/config.hpp"
#include "apo/core/error.hpp"
#include "apo/core/units.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/memory/cuda_resources.hpp"
#include "apo/memory/host_resource.hpp"
#include "apo/models/lora.hpp"
#include "apo/models/safetensors.hpp"
#include "apo/quant/kernels.hpp"

namespace apo::models {

using memory::LedgerUse;

namespace detail {

// What makes two requests the same model: the file, the precision asked for (unset: the
// quantization policy's choice), and the scope ("" when shared, else the workflow).
struct Identity {
  std::string path;
  std::optional<Precision> precision;
  std::string scope;
  friend bool operator==(const Identity&, const Identity&) = default;
};

struct Tier;

struct Instance {
  enum class State { loading, ready, failed, gone };

  Identity id;
  ModelKind kind;
  Tier* tier = nullptr;
  State state = State::loading;
  std::shared_ptr<Model> model;
  std::int64_t bytes = 0;  // charged to the tier's ledger (the estimate while loading)
  int leases = 0;
  Clock::time_point last_used{};
  std::exception_ptr error;
  // A host instance standing in for a device it does not fit: the device's ledger, for its
  // streamer's slots.
  std::shared_ptr<memory::MemoryLedger> stream_ledger;
  std::string storage_reason;  // the quantization policy's, or how it came here
  // LoRAs merged now, the original weights they replaced (on the host), and whether a switch is
  // in progress (nobody else may use or switch the instance meanwhile).
  std::vector<LoraRequest> loras;
  std::map<std::string, quant::QTensor> originals;
  bool switching = false;
};

// A tier: the models the cache keeps in one ledger's memory.
struct Tier {
  std::shared_ptr<memory::MemoryLedger> ledger;
  std::optional<Device> device;  // the device it computes for; unset: the host tier alone
  bool host = false;             // holds models offloaded from devices
  std::int64_t used = 0;         // weights charged to the ledger by this cache
  std::vector<std::shared_ptr<Instance>> instances;

  std::string name() const { return device ? device->str() + " tier" : "host tier"; }
};

// Loader threads with a queue; joined on destruction.
class LoaderPool {
 public:
  explicit LoaderPool(int threads) {
    for (int t = 0; t < threads; ++t) workers_.emplace_back([this] { run(); });
  }
  ~LoaderPool() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_all();
    for (auto& worker : workers_) worker.join();
  }
  void submit(std::function<void()> task) {
    {
      std::lock_guard lock(mutex_);
      tasks_.push_back(std::move(task));
    }
    ready_.notify_one();
  }

 private:
  void run() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock lock(mutex_);
        ready_.wait(lock, [&] { return stopping_ || !tasks_.empty(); });
        if (tasks_.empty()) return;  // stopping, and every queued task has run
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

struct ModelMutation {
  static quant::QTensor& weight(Model& model, std::string_view name) {
    return model.mutable_weight(name);
  }
};

// Pinned host memory when the cache serves CUDA devices (copies to them then run at full
// speed), plain host memory otherwise.
memory::AnyResource default_host_memory(const ModelCacheOptions& options) {
  const bool serves_cuda =
      std::any_of(options.device_ledgers.begin(), options.device_ledgers.end(),
                  [](const auto& ledger) { return ledger && ledger->device().is_cuda(); });
  if (serves_cuda && memory::cuda_device_available()) {
    return std::make_shared<memory::CachingPool>(memory::PinnedHostResource());
  }
  return std::make_shared<memory::CachingPool>(memory::HostResource());
}

struct CacheState {
  CacheState(ModelCacheOptions o, const Clock& c)
      : options(std::move(o)),
        clock(c),
        host_memory(options.host_memory ? *options.host_memory : default_host_memory(options)) {}

  ModelCacheOptions options;
  const Clock& clock;
  mutable std::mutex mutex;
  std::condition_variable changed;
  std::vector<std::unique_ptr<Tier>> tiers;  // stable addresses: instances point at them
  Tier* host = nullptr;
  CacheStats stats;
  bool closed = false;
  // Host-tier copies come from here (pinned when CUDA devices are in use), so tier moves reuse
  // memory instead of faulting fresh pages in.
  memory::AnyResource host_memory;
  std::map<std::string, std::shared_ptr<const LoraAdapter>> adapters;
  // Planned bytes of (file, precision asked), for footprint(): planning reads the header.
  mutable std::map<std::pair<std::string, int>, std::int64_t> planned;
  std::unique_ptr<LoaderPool> pool;  // last member: its threads stop before the rest goes

  // The tier that computes on `device`; the CPU without a ledger of its own is the host tier.
  Tier* find_tier(Device device) const {
    for (const auto& tier : tiers) {
      if (tier->device == device) return tier.get();
    }
    return device.is_cpu() ? host : nullptr;
  }
  Tier& tier_for(Device device) const {
    Tier* tier = find_tier(device);
    if (tier == nullptr) {
      fail(ErrorCode::InvalidArgument, "the model cache has no ledger for {}", device.str());
    }
    return *tier;
  }
};

}  // namespace detail

using detail::CacheState;
using detail::Identity;
using detail::Instance;
using detail::Tier;

namespace {

std::shared_ptr<Instance> find(Tier& tier, const Identity& id) {
  for (auto& inst : tier.instances) {
    if (inst->id == id && inst->state != Instance::State::gone) return inst;
  }
  return nullptr;
}

// Bytes per element of what an instance stores (kept tensors count as fp32).
int stored_bytes_per_element(const Instance& inst) {
  return bytes_per_element(quant::precision_of(inst.model->spec().format));
}

// Text encoders and VAEs serve every workflow: a resident copy of the same file stored at a
// precision at least as good as the one asked for will do.
std::shared_ptr<Instance> find_shareable(Tier& tier, const Identity& id) {
  std::shared_ptr<Instance> best;
  for (auto& inst : tier.instances) {
    if (inst->state != Instance::State::ready || inst->id.path != id.path ||
        !inst->id.scope.empty())
      continue;
    if (!shared_between_workflows(inst->kind)) continue;
    if (id.precision && stored_bytes_per_element(*inst) < bytes_per_element(*id.precision)) {
      continue;
    }
    if (!best || inst->last_used > best->last_used) best = inst;
  }
  return best;
}

void remove(Tier& tier, const std::shared_ptr<Instance>& inst) {
  tier.instances.erase(std::remove(tier.instances.begin(), tier.instances.end(), inst),
                       tier.instances.end());
  tier.used -= inst->bytes;
  tier.ledger->release(LedgerUse::weights, inst->bytes);
}

// Puts the merged weights back: the originals were kept on the host, bit for bit.
void restore_originals(Instance& inst) {
  for (auto& [name, original] : inst.originals) {
    const c10::Device device = inst.model->device().to_torch();
    detail::ModelMutation::weight(*inst.model, name) = quant::QTensor::from_parts(
        original.name(), original.data().to(device),
        original.scales().defined() ? original.scales().to(device) : at::Tensor(),
        original.format(), original.scaling(), original.original_dtype());
  }
  inst.originals.clear();
  inst.loras.clear();
}

// How a model will be stored and what that takes.
struct LoadPlan {
  quant::QuantizationRules rules;
  std::int64_t bytes = 0;
  std::string reason;
};

LoadPlan plan_load(const ModelCacheOptions& options, const std::filesystem::path& path,
                   std::optional<Precision> requested, std::int64_t available_bytes) {
  const SafetensorsFile file = SafetensorsFile::open(path);
  std::int64_t file_bytes = 0;
  for (const auto& entry : file.tensors()) file_bytes += entry.bytes();
  if (file.metadata().count(std::string(kQuantizationMetadataKey)) != 0) {
    LoadPlan plan;
    plan.rules.spec = {};
    plan.bytes = file_bytes;
    plan.reason = "quantized by apo: loaded as stored";
    return plan;
  }
  quant::NamedTensors views;
  for (const auto& entry : file.tensors()) views.emplace_back(entry.name, file.view(entry.name));
  const quant::LoadRequest request{path.native(), requested, available_bytes};
  quant::StoragePlan plan = options.quantization(views, request);
  return {std::move(plan.rules), std::max<std::int64_t>(plan.weight_bytes, 0),
          std::move(plan.reason)};
}

std::filesystem::path resolve(const ModelCacheOptions& options, const ModelRef& ref) {
  std::filesystem::path path = ref.path;
  if (path.is_relative() && !options.model_root.empty()) path = options.model_root / path;
  return path;
}

}  // namespace

ModelCacheOptions::ModelCacheOptions() : ModelCacheOptions(Config{}) {}

ModelCacheOptions::ModelCacheOptions(const Config& config)
    : eviction_threshold(config.memory.eviction_threshold),
      share_models(config.memory.enable_model_sharing),
      demote_to_host(config.memory.enable_cpu_offload),
      stream_when_too_large(config.memory.enable_sequential_cpu_offload),
      keep_host_copy(config.storage.preload_models),
      quantization(planner_of(quant::ConfiguredPrecision::from_config(config))),
      io_threads(config.system.io_threads),
      async_io(config.storage.async_io),
      model_root(config.storage.model_cache_path),
      converted_models(std::filesystem::path(config.storage.temp_path) / "apo-converted"),
      io_buffer_bytes(std::int64_t{config.storage.io_buffer_size_mb} << 20) {}

ModelCacheOptions ModelCacheOptions::from_config(const Config& config) {
  return ModelCacheOptions(config);
}

// ---------------------------------------------------------------------------------------------
// Lease

Lease::Lease(std::shared_ptr<CacheState> state, std::shared_ptr<Instance> instance, Device device)
    : state_(std::move(state)), instance_(std::move(instance)), device_(device) {}

Lease::Lease(Lease&& other) noexcept
    : state_(std::move(other.state_)),
      instance_(std::move(other.instance_)),
      device_(other.device_) {}

Lease& Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    release();
    state_ = std::move(other.state_);
    instance_ = std::move(other.instance_);
    device_ = other.device_;
  }
  return *this;
}

Lease::~Lease() {
  release();
}

void Lease::release() noexcept {
  if (!instance_) return;
  {
    std::lock_guard lock(state_->mutex);
    --instance_->leases;
    instance_->last_used = state_->clock.now();
  }
  state_->changed.notify_all();
  instance_.reset();
  state_.reset();
}

const Model& Lease::model() const {
  if (!instance_) fail(ErrorCode::InvalidArgument, "empty lease");
  std::lock_guard lock(state_->mutex);
  if (state_->closed) {
    fail(ErrorCode::InvalidArgument, "lease of {} used after its ModelCache was destroyed",
         instance_->id.path);
  }
  return *instance_->model;
}

bool Lease::streamed() const noexcept {
  return instance_ && instance_->stream_ledger != nullptr;
}

std::string Lease::storage_reason() const {
  if (!instance_) fail(ErrorCode::InvalidArgument, "empty lease");
  std::lock_guard lock(state_->mutex);
  return instance_->storage_reason;
}

std::unique_ptr<WeightStreamer> Lease::streamer(std::uintptr_t compute_stream) const {
  const Model& m = model();
  if (!instance_->stream_ledger) {
    fail(ErrorCode::InvalidArgument, "{} is resident on {}: it needs no streaming", m.path(),
         m.device().str());
  }
  std::vector<std::pair<std::string, std::int64_t>> order;
  std::map<std::string, at::Tensor> host;
  for (const quant::QTensor& w : m.weights()) {
    // The streamer moves dense tensors: quantized weights stream dequantized (their scales
    // would have to travel beside them).
    at::Tensor dense = w.format() == quant::QFormat::none ? w.data() : w.dequantize();
    order.emplace_back(w.name(), static_cast<std::int64_t>(dense.nbytes()));
    host.emplace(w.name(), std::move(dense));
  }
  const std::shared_ptr<memory::MemoryLedger>& ledger = instance_->stream_ledger;
  auto blocks = group_into_blocks(order);
  auto plan = plan_weight_streaming(blocks, ledger->room(LedgerUse::staging));
  StreamingMemory memory = StreamingMemory::plain(device_);
  memory.device = memory::LedgerResource(std::move(memory.device), ledger, LedgerUse::staging);
  memory.host = state_->host_memory;
  return std::make_unique<WeightStreamer>(host, std::move(blocks), std::move(plan), device_,
                                          std::move(memory), compute_stream);
}

// ---------------------------------------------------------------------------------------------
// ModelCache

ModelCache::ModelCache(ModelCacheOptions options, const Clock& clock)
    : state_(std::make_shared<CacheState>(std::move(options), clock)) {
  CacheState& s = *state_;
  const ModelCacheOptions& o = s.options;
  if (o.eviction_threshold <= 0 || o.eviction_threshold > 1) {
    fail(ErrorCode::InvalidArgument, "eviction threshold {} is outside (0, 1]",
         o.eviction_threshold);
  }
  if (!o.host_ledger) fail(ErrorCode::InvalidArgument, "the model cache needs a host ledger");
  if (!o.quantization) fail(ErrorCode::InvalidArgument, "the model cache needs a quantization");
  for (const auto& ledger : o.device_ledgers) {
    if (!ledger) fail(ErrorCode::InvalidArgument, "a null device ledger");
    if (s.find_tier(ledger->device()) != nullptr && s.find_tier(ledger->device()) != s.host) {
      fail(ErrorCode::InvalidArgument, "two ledgers for {}", ledger->device().str());
    }
    auto tier = std::make_unique<Tier>();
    tier->ledger = ledger;
    tier->device = ledger->device();
    tier->host = ledger == o.host_ledger;
    if (tier->host) s.host = tier.get();
    s.tiers.push_back(std::move(tier));
  }
  if (s.host == nullptr) {
    if (o.host_ledger->device() != Device::cpu()) {
      fail(ErrorCode::InvalidArgument, "the host ledger is for {}, not the cpu",
           o.host_ledger->device().str());
    }
    auto tier = std::make_unique<Tier>();
    tier->ledger = o.host_ledger;
    tier->host = true;
    s.host = tier.get();
    s.tiers.push_back(std::move(tier));
  }
  s.pool = std::make_unique<detail::LoaderPool>(o.async_io ? std::max(1, o.io_threads) : 1);
}

ModelCache::~ModelCache() {
  state_->pool.reset();  // runs what is queued, then joins
  std::lock_guard lock(state_->mutex);
  state_->closed = true;
  // The ledgers outlive the cache: give back what its models held there. Instances still
  // leased keep their memory until the leases end, unaccounted, as they refuse use.
  for (auto& tier : state_->tiers) {
    tier->ledger->release(LedgerUse::weights, tier->used);
    tier->used = 0;
  }
}

const ModelCacheOptions& ModelCache::options() const noexcept {
  return state_->options;
}

Lease ModelCache::acquire(const ModelRef& ref, Device device, std::vector<LoraRequest> loras) {
  return acquire_async(ref, device, std::move(loras)).get();
}

std::future<Lease> ModelCache::acquire_async(ModelRef ref, Device device,
                                             std::vector<LoraRequest> loras) {
  Tier& wanted = state_->tier_for(device);  // a device without a ledger is an error at once
  auto task = std::make_shared<std::packaged_task<Lease()>>(
      [this, ref = std::move(ref), &wanted, device, loras = std::move(loras)]() mutable {
        return acquire_now(ref, wanted, device, std::move(loras));
      });
  std::future<Lease> result = task->get_future();
  state_->pool->submit([task] { (*task)(); });
  return result;
}

Lease ModelCache::acquire_host(const ModelRef& ref) {
  Tier& host = *state_->host;
  auto task = std::make_shared<std::packaged_task<Lease()>>(
      [this, &ref, &host] { return acquire_now(ref, host, Device::cpu(), {}); });
  std::future<Lease> result = task->get_future();
  state_->pool->submit([task] { (*task)(); });
  return result.get();
}

namespace {

void reserve(CacheState& s, Tier& tier, std::int64_t bytes, const std::string& what);

// Removes `victim` from `tier`; demotes it to the host tier when offload allows and it has room.
void evict(CacheState& s, Tier& tier, const std::shared_ptr<Instance>& victim) {
  remove(tier, victim);
  victim->state = Instance::State::gone;
  ++s.stats.evictions;
  Tier& host = *s.host;
  if (tier.host || !s.options.demote_to_host || victim->stream_ledger) return;
  if (find(host, victim->id)) return;  // the host already has it
  try {
    reserve(s, host, victim->bytes, victim->id.path);
  } catch (const Error&) {
    return;  // no room on the host: dropped
  }
  restore_originals(*victim);
  auto demoted = std::make_shared<Instance>();
  demoted->id = victim->id;
  demoted->kind = victim->kind;
  demoted->tier = &host;
  try {
    demoted->model = std::make_shared<Model>(victim->model->to(Device::cpu(), &s.host_memory));
  } catch (...) {
    host.used -= victim->bytes;
    host.ledger->release(LedgerUse::weights, victim->bytes);
    return;  // dropped
  }
  // The copy may differ from the reservation (the device's allocator rounds differently).
  demoted->bytes = victim->bytes;
  demoted->storage_reason = victim->storage_reason;
  demoted->state = Instance::State::ready;
  demoted->last_used = victim->last_used;
  host.instances.push_back(demoted);
  ++s.stats.demotions;
  s.stats.bytes_moved += demoted->bytes;
}

// Evicts least-recently-used unleased instances of `tier` while `short_of_room()` holds and
// there is one; returns the bytes evicted.
template <class ShortOfRoom>
std::int64_t evict_while(CacheState& s, Tier& tier, ShortOfRoom short_of_room) {
  std::int64_t evicted = 0;
  while (short_of_room()) {
    std::shared_ptr<Instance> victim;
    for (auto& inst : tier.instances) {
      if (inst->state != Instance::State::ready || inst->leases > 0 || inst->switching) continue;
      if (!victim || inst->last_used < victim->last_used) victim = inst;
    }
    if (!victim) break;
    evicted += victim->bytes;
    evict(s, tier, victim);
  }
  return evicted;
}

// Evicts while the ledger's use plus `bytes` would pass the eviction threshold.
std::int64_t evict_for(CacheState& s, Tier& tier, std::int64_t bytes) {
  const auto limit = static_cast<std::int64_t>(s.options.eviction_threshold *
                                               static_cast<double>(tier.ledger->budget_bytes()));
  return evict_while(s, tier, [&] { return tier.ledger->snapshot().used_bytes + bytes > limit; });
}

// Makes room in `tier` (evicting within the threshold) and charges `bytes` of weights to its
// ledger, or throws OutOfMemory naming the sizes and the ledger.
void reserve(CacheState& s, Tier& tier, std::int64_t bytes, const std::string& what) {
  const std::int64_t budget = tier.ledger->budget_bytes();
  if (bytes > budget) {
    fail(ErrorCode::OutOfMemory, "{} needs {}, more than the {} budget of {}", what,
         format_bytes(bytes), tier.name(), format_bytes(budget));
  }
  evict_for(s, tier, bytes);
  if (!tier.ledger->try_charge(LedgerUse::weights, bytes)) {
    std::int64_t leased = 0;
    for (auto& inst : tier.instances) {
      leased += inst->leases > 0 || inst->state == Instance::State::loading ? inst->bytes : 0;
    }
    fail(ErrorCode::OutOfMemory,
         "{} needs {}; the {} holds {} of weights ({} leased or loading); {}", what,
         format_bytes(bytes), tier.name(), format_bytes(tier.used), format_bytes(leased),
         tier.ledger->describe());
  }
  tier.used += bytes;
}

// Moves the charge of an instance from its estimate to what it really holds.
void settle(Tier& tier, Instance& inst, std::int64_t bytes) {
  if (bytes > inst.bytes) {
    // The plan underestimated: the memory is held already, so the ledger must know it.
    tier.ledger->charge_held(LedgerUse::weights, bytes - inst.bytes);
  } else {
    tier.ledger->release(LedgerUse::weights, inst.bytes - bytes);
  }
  tier.used += bytes - inst.bytes;
  inst.bytes = bytes;
}

std::shared_ptr<const LoraAdapter> adapter_for(CacheState& s, const std::filesystem::path& path) {
  {
    std::lock_guard lock(s.mutex);
    if (auto it = s.adapters.find(path.string()); it != s.adapters.end()) return it->second;
  }
  auto adapter = std::make_shared<const LoraAdapter>(LoraAdapter::load(path));
  std::lock_guard lock(s.mutex);
  return s.adapters.emplace(path.string(), std::move(adapter)).first->second;
}

// Replaces the instance's LoRAs with `loras` (the caller holds it alone: switching is set).
void switch_loras(CacheState& s, Instance& inst, const std::vector<LoraRequest>& loras) {
  restore_originals(inst);
  std::vector<std::string> names;
  for (const quant::QTensor& w : inst.model->weights()) names.push_back(w.name());
  for (const LoraRequest& request : loras) {
    const auto adapter = adapter_for(s, request.path);
    const LoraBinding binding = adapter->bind(names);
    if (binding.targets.empty()) {
      fail(ErrorCode::InvalidArgument, "LoRA {} matches none of the weights of {}", adapter->name(),
           inst.id.path);
    }
    for (const LoraTarget& target : binding.targets) {
      quant::QTensor& weight = detail::ModelMutation::weight(*inst.model, target.weight);
      if (inst.originals.count(target.weight) == 0) {
        inst.originals.emplace(
            target.weight,
            quant::QTensor::from_parts(
                weight.name(), weight.data().cpu().clone(),
                weight.scales().defined() ? weight.scales().cpu().clone() : at::Tensor(),
                weight.format(), weight.scaling(), weight.original_dtype()));
      }
      const at::Tensor delta =
          target.layer->delta(request.strength, weight.shape()).to(weight.device());
      const at::Tensor merged = weight.dequantize(at::kFloat).add_(delta);
      // Quantized weights are re-quantized in their own format; others keep their dtype.
      weight =
          weight.format() == quant::QFormat::none
              ? quant::QTensor::from_parts(weight.name(), merged.to(weight.original_dtype()), {},
                                           quant::QFormat::none, quant::Scaling::none,
                                           weight.original_dtype())
              : quant::quantize(merged.to(weight.original_dtype()), weight.spec(), weight.name());
    }
  }
  inst.loras = loras;
  std::lock_guard lock(s.mutex);
  ++s.stats.lora_applications;
}

// Where the quantized conversion of `path` under `rules` is kept: the name carries a hash of the
// source's identity (path, size, modification time) and of the rules, so a changed source or a
// different format never reads a stale copy.
std::filesystem::path converted_path(const ModelCacheOptions& options,
                                     const std::filesystem::path& path,
                                     const quant::QuantizationRules& rules) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  const auto modified = std::filesystem::last_write_time(path, ec).time_since_epoch().count();
  std::string identity = fmt::format("{}|{}|{}|{}|{}", path.string(), size, modified,
                                     quant::to_string(rules.spec), rules.min_elements);
  for (const auto& p : rules.quantize_patterns) identity += "|q:" + p;
  for (const auto& p : rules.keep_patterns) identity += "|k:" + p;
  return options.converted_models / fmt::format("{}.{:016x}.safetensors", path.stem().string(),
                                                std::hash<std::string>{}(identity));
}

// Reads a model from disk, quantizing it by `rules`; with converted_models set, a quantized
// conversion is read from there when it exists and saved there when it does not.
std::vector<quant::QTensor> read_from_disk(CacheState& s, const std::filesystem::path& path,
                                           const quant::QuantizationRules& rules) {
  const ModelCacheOptions& o = s.options;
  if (rules.spec.format == quant::QFormat::none || o.converted_models.empty()) {
    return read_model_weights(path, rules, o.io_buffer_bytes);
  }
  const std::filesystem::path converted = converted_path(o, path, rules);
  if (std::filesystem::exists(converted)) {
    try {
      auto weights = read_model_weights(converted, rules, o.io_buffer_bytes);
      std::lock_guard lock(s.mutex);
      ++s.stats.conversions_read;
      return weights;
    } catch (const Error&) {
      std::error_code ignored;
      std::filesystem::remove(converted, ignored);  // damaged: convert again
    }
  }
  auto weights = read_model_weights(path, rules, o.io_buffer_bytes);
  try {
    std::filesystem::create_directories(o.converted_models);
    write_model_weights(converted, weights);
    std::lock_guard lock(s.mutex);
    ++s.stats.conversions_written;
  } catch (const std::exception&) {
    // A full or read-only temp_path costs only the next conversion.
  }
  return weights;
}

// Keeps a host copy of a model read from disk (storage_optimization.preload_models), if there is
// room; otherwise the next load reads the disk again.
void keep_on_host(CacheState& s, const Identity& id, ModelKind kind, std::shared_ptr<Model> model,
                  const std::string& storage_reason) {
  Tier& host = *s.host;
  try {
    reserve(s, host, model->bytes(), id.path);
  } catch (const Error&) {
    return;
  }
  auto kept = std::make_shared<Instance>();
  kept->id = id;
  kept->kind = kind;
  kept->tier = &host;
  kept->bytes = model->bytes();
  kept->storage_reason = storage_reason;
  kept->model = std::move(model);
  kept->state = Instance::State::ready;
  kept->last_used = s.clock.now();
  host.instances.push_back(kept);
}

// Bytes the unleased, ready instances of a tier hold: what eviction could free.
std::int64_t evictable_bytes(const Tier& tier) {
  std::int64_t bytes = 0;
  for (const auto& inst : tier.instances) {
    if (inst->state == Instance::State::ready && inst->leases == 0 && !inst->switching) {
      bytes += inst->bytes;
    }
  }
  return bytes;
}

}  // namespace

// Takes a lease on a ready instance once its LoRAs agree with `loras` (switching them when it is
// free); nullopt after waiting, so the caller looks again.
std::optional<Lease> ModelCache::take(std::unique_lock<std::mutex>& lock,
                                      const std::shared_ptr<Instance>& inst,
                                      const std::vector<LoraRequest>& loras, Device device) {
  CacheState& s = *state_;
  const bool same = inst->loras == loras && !inst->switching;
  if (!same && (inst->leases > 0 || inst->switching)) {
    s.changed.wait(lock);
    return std::nullopt;
  }
  ++inst->leases;
  inst->last_used = s.clock.now();
  if (!same) {
    inst->switching = true;
    lock.unlock();
    try {
      switch_loras(s, *inst, loras);
    } catch (...) {
      lock.lock();
      inst->switching = false;
      --inst->leases;
      s.changed.notify_all();
      throw;
    }
    lock.lock();
    inst->switching = false;
    s.changed.notify_all();
  }
  return Lease(state_, inst, device);
}

Lease ModelCache::acquire_now(const ModelRef& ref, Tier& wanted, Device device,
                              std::vector<LoraRequest> loras) {
  CacheState& s = *state_;
  std::filesystem::path path = resolve(s.options, ref);
  if (!std::filesystem::exists(path))
    throw Error(ErrorCode::NotFound, "no such model file", path.string());
  path = std::filesystem::canonical(path);
  const Identity id{path.string(), ref.precision,
                    s.options.share_models ? std::string() : ref.workflow};
  Tier& host = *s.host;

  std::unique_lock lock(s.mutex);
  bool counted = false;
  for (;;) {
    std::shared_ptr<Instance> inst = find(wanted, id);
    if (!inst && !wanted.host) {
      // A model streamed to this device lives in the host tier.
      if (auto streamed = find(host, id); streamed && streamed->stream_ledger == wanted.ledger) {
        inst = streamed;
      }
    }
    if (!inst && s.options.share_models && shared_between_workflows(ref.kind)) {
      inst = find_shareable(wanted, id);
    }
    if (inst && inst->state == Instance::State::loading) {
      s.changed.wait(lock);
      continue;
    }
    if (inst && inst->state == Instance::State::failed) std::rethrow_exception(inst->error);
    if (inst) {
      if (!counted) ++s.stats.hits;
      counted = true;
      if (auto lease = take(lock, inst, loras, device)) return std::move(*lease);
      continue;
    }

    // A miss: promote from the host tier, or read from disk.
    if (!counted) ++s.stats.misses;
    counted = true;
    std::shared_ptr<Instance> source;
    if (!wanted.host) {
      source = find(host, id);
      if (source && (source->state != Instance::State::ready || source->stream_ledger)) {
        source.reset();
      }
    }
    // The room a model could have here: what is free, and what eviction could free.
    const std::int64_t available =
        wanted.ledger->room(LedgerUse::weights) + evictable_bytes(wanted);
    lock.unlock();
    LoadPlan plan = source ? LoadPlan{{}, source->model->bytes(), source->storage_reason}
                           : plan_load(s.options, path, ref.precision, available);
    lock.lock();
    if (find(wanted, id)) continue;  // someone else started it meanwhile
    Tier* tier = &wanted;
    if (plan.bytes > wanted.ledger->budget_bytes() && !wanted.host &&
        s.options.stream_when_too_large) {
      tier = &host;  // lives in the host tier, streams to the device
      source.reset();
      if (find(host, id)) continue;
    }
    reserve(s, *tier, plan.bytes, path.string());
    auto created = std::make_shared<Instance>();
    created->id = id;
    created->kind = ref.kind;
    created->tier = tier;
    created->bytes = plan.bytes;
    created->storage_reason = plan.reason;
    if (tier != &wanted) created->stream_ledger = wanted.ledger;
    tier->instances.push_back(created);
    if (source) ++source->leases;  // not evicted while it is copied
    lock.unlock();

    std::shared_ptr<Model> model;
    std::shared_ptr<Model> host_copy;
    const auto start = std::chrono::steady_clock::now();
    std::exception_ptr error;
    const Device target = tier->device.value_or(Device::cpu());
    try {
      if (source) {
        model = std::make_shared<Model>(source->model->to(target, &s.host_memory));
      } else {
        auto loaded = std::make_shared<Model>(path.string(), ref.kind,
                                              ref.precision.value_or(Precision::automatic),
                                              read_from_disk(s, path, plan.rules));
        if (target.is_cpu()) {
          model = loaded;
        } else {
          model = std::make_shared<Model>(loaded->to(target, &s.host_memory));
          if (s.options.keep_host_copy) host_copy = std::move(loaded);
        }
      }
    } catch (...) {
      error = std::current_exception();
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    lock.lock();
    if (source) --source->leases;
    if (error) {
      remove(*tier, created);
      created->state = Instance::State::failed;
      created->error = error;
      s.changed.notify_all();
      std::rethrow_exception(error);
    }
    settle(*tier, *created, model->bytes());
    created->model = std::move(model);
    created->state = Instance::State::ready;
    created->last_used = s.clock.now();
    s.stats.load_seconds += seconds;
    if (source) {
      ++s.stats.promotions;
      s.stats.bytes_moved += created->bytes;
    } else {
      ++s.stats.loads;
      s.stats.bytes_read += created->bytes;
      if (!target.is_cpu()) s.stats.bytes_moved += created->bytes;
    }
    if (host_copy && !find(host, id)) {
      keep_on_host(s, id, ref.kind, std::move(host_copy), created->storage_reason);
    }
    s.changed.notify_all();
    if (auto lease = take(lock, created, loras, device)) return std::move(*lease);
  }
}

ModelCache::Footprint ModelCache::footprint(const ModelRef& ref, Device device) const {
  CacheState& s = *state_;
  const std::filesystem::path path = resolve(s.options, ref);
  std::error_code ec;
  const std::filesystem::path canonical = std::filesystem::canonical(path, ec);
  if (ec) throw Error(ErrorCode::NotFound, "no such model file", path.string());
  const Identity id{canonical.string(), ref.precision,
                    s.options.share_models ? std::string() : ref.workflow};
  const auto key = std::make_pair(id.path, ref.precision ? static_cast<int>(*ref.precision) : -1);
  Tier& tier = s.tier_for(device);
  const auto resident = [&] {
    const auto here = find(tier, id);
    if (here && here->state != Instance::State::failed) return true;
    return s.options.share_models && shared_between_workflows(ref.kind) &&
           find_shareable(tier, id) != nullptr;
  };
  {
    std::lock_guard lock(s.mutex);
    if (const auto planned = s.planned.find(key); planned != s.planned.end()) {
      return {planned->second, resident()};
    }
  }
  const std::int64_t bytes =
      plan_load(s.options, canonical, ref.precision, tier.ledger->budget_bytes()).bytes;
  std::lock_guard lock(s.mutex);
  s.planned[key] = bytes;
  return {bytes, resident()};
}

ModelCache::Preload ModelCache::preload(const UsagePredictor& predictor, int hour,
                                        double threshold) {
  Preload result;
  std::vector<std::shared_future<void>> loads;
  for (const UsagePrediction& prediction : predictor.predict(hour, threshold)) {
    ModelRef ref;
    ref.path = prediction.model;
    ref.workflow = prediction.workflow;
    const std::filesystem::path path = resolve(state_->options, ref);
    if (!std::filesystem::exists(path)) continue;
    {
      // Guesses go into free room only.
      std::lock_guard lock(state_->mutex);
      const Tier& host = *state_->host;
      const auto limit = static_cast<std::int64_t>(
          state_->options.eviction_threshold * static_cast<double>(host.ledger->budget_bytes()));
      const auto file_bytes = static_cast<std::int64_t>(std::filesystem::file_size(path));
      if (host.ledger->snapshot().used_bytes + file_bytes > limit) continue;
    }
    result.models.push_back(prediction.model);
    auto task = std::make_shared<std::packaged_task<Lease()>>(
        [this, ref] { return acquire_now(ref, *state_->host, Device::cpu(), {}); });
    std::future<Lease> lease = task->get_future();
    state_->pool->submit([task] { (*task)(); });
    loads.push_back(std::async(std::launch::deferred, [l = std::make_shared<std::future<Lease>>(
                                                           std::move(lease))]() mutable {
                      try {
                        l->get();  // loaded; the lease ends here, leaving the model warm
                      } catch (const Error&) {
                        // A failed guess costs nothing more.
                      }
                    }).share());
  }
  result.done = std::async(std::launch::deferred, [loads] {
                  for (const auto& load : loads) load.wait();
                }).share();
  return result;
}

std::int64_t ModelCache::release_unused() {
  std::lock_guard lock(state_->mutex);
  std::int64_t freed = 0;
  for (auto& tier : state_->tiers) {
    std::vector<std::shared_ptr<Instance>> idle;
    for (auto& inst : tier->instances) {
      if (inst->state == Instance::State::ready && inst->leases == 0 && !inst->switching)
        idle.push_back(inst);
    }
    for (auto& inst : idle) {
      freed += inst->bytes;
      remove(*tier, inst);
      inst->state = Instance::State::gone;
      ++state_->stats.evictions;
    }
  }
  state_->changed.notify_all();
  // What the dropped models held goes back to the system, not just to the pool.
  if (auto* pool = state_->host_memory.target<memory::CachingPool>()) pool->release();
  return freed;
}

std::int64_t ModelCache::make_room(Device device, std::int64_t bytes) {
  std::lock_guard lock(state_->mutex);
  Tier& tier = state_->tier_for(device);
  // Under the whole budget, not the threshold: this is for someone who needs the room now.
  const std::int64_t evicted =
      evict_while(*state_, tier, [&] { return tier.ledger->room(LedgerUse::weights) < bytes; });
  state_->changed.notify_all();
  return evicted;
}

CacheStats ModelCache::stats() const {
  std::lock_guard lock(state_->mutex);
  return state_->stats;
}

std::vector<ResidentModel> ModelCache::residents() const {
  std::lock_guard lock(state_->mutex);
  std::vector<ResidentModel> out;
  for (const auto& tier : state_->tiers) {
    for (const auto& inst : tier->instances) {
      if (inst->state != Instance::State::ready) continue;
      out.push_back({inst->id.path, inst->kind, inst->id.precision.value_or(Precision::automatic),
                     inst->model->spec(), inst->model->device(), tier->host && !tier->device,
                     inst->id.scope, inst->bytes, inst->leases, inst->loras});
    }
  }
  return out;
}

std::int64_t ModelCache::used_bytes(Device device) const {
  std::lock_guard lock(state_->mutex);
  return state_->tier_for(device).used;
}

std::int64_t ModelCache::host_used_bytes() const {
  std::lock_guard lock(state_->mutex);
  return state_->host->used;
}

}  // namespace apo::models

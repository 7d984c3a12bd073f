// ModelCache: tiers, leases, sharing, eviction, loading, LoRA switching and preloading.

#include "apo/models/model_cache.hpp"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "apo/core/error.hpp"
#include "apo/core/units.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/memory/cuda_resources.hpp"
#include "apo/memory/host_resource.hpp"
#include "apo/models/lora.hpp"
#include "apo/models/safetensors.hpp"
#include "apo/quant/kernels.hpp"
#include "apo/quant/precision.hpp"
#include "apo/tune/presets.hpp"

namespace apo::models {

namespace detail {

// What makes two requests the same model: the file, the precision asked for, and the scope
// ("" when shared, else the workflow).
struct Identity {
  std::string path;
  Precision precision;
  std::string scope;
  friend bool operator==(const Identity&, const Identity&) = default;
};

struct Instance {
  enum class State { loading, ready, failed, gone };

  Identity id;
  ModelKind kind;
  c10::Device tier{c10::kCPU};  // cpu: the host tier
  State state = State::loading;
  std::shared_ptr<Model> model;
  std::int64_t bytes = 0;  // counted in the tier (the estimate while loading)
  int leases = 0;
  Clock::time_point last_used{};
  std::exception_ptr error;
  bool streamed = false;  // a host instance standing in for a device it does not fit
  std::int64_t stream_budget = 0;
  // LoRAs merged now, the original weights they replaced (on the host), and whether a switch is
  // in progress (nobody else may use or switch the instance meanwhile).
  std::vector<LoraRequest> loras;
  std::map<std::string, quant::QTensor> originals;
  bool switching = false;
};

struct Tier {
  std::int64_t budget = 0;
  std::int64_t used = 0;
  std::vector<std::shared_ptr<Instance>> instances;
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
std::shared_ptr<memory::CachingPool> make_host_pool(const ModelCacheOptions& options) {
  const bool serves_cuda = std::any_of(options.device_budgets.begin(), options.device_budgets.end(),
                                       [](const auto& budget) { return budget.first.is_cuda(); });
  if (serves_cuda && memory::cuda_device_available()) {
    return std::make_shared<memory::CachingPool>(memory::PinnedHostResource());
  }
  return std::make_shared<memory::CachingPool>(memory::HostResource());
}

struct CacheState {
  CacheState(ModelCacheOptions o, const Clock& c)
      : options(std::move(o)),
        clock(c),
        host_pool(make_host_pool(options)),
        host_memory(host_pool) {}

  ModelCacheOptions options;
  const Clock& clock;
  mutable std::mutex mutex;
  std::condition_variable changed;
  std::map<std::string, Tier> tiers;  // by device string: "cpu", "cuda:0"
  CacheStats stats;
  bool closed = false;
  // Host-tier and cpu:0 copies come from this pool (pinned when CUDA devices are in use), so
  // tier moves reuse memory instead of faulting fresh pages in.
  std::shared_ptr<memory::CachingPool> host_pool;
  memory::AnyResource host_memory;
  std::map<std::string, std::shared_ptr<const LoraAdapter>> adapters;
  std::unique_ptr<LoaderPool> pool;  // last member: its threads stop before the rest goes

  // The tier a device's models live in: "cpu" is the host tier; "cpu:0" is a device tier in host
  // memory when it has a budget (CPU engines, and tests of tiering without a GPU).
  c10::Device tier_of(c10::Device device) const {
    if (device.is_cpu()) {
      return device.index() == 0 && tiers.count("cpu:0") != 0 ? c10::Device(c10::kCPU, 0)
                                                              : c10::Device(c10::kCPU);
    }
    return c10::Device(device.type(), std::max<c10::DeviceIndex>(device.index(), 0));
  }

  Tier& tier(c10::Device device) {
    const auto it = tiers.find(device.str());
    if (it == tiers.end()) {
      fail(ErrorCode::InvalidArgument, "the model cache has no budget for {}", device.str());
    }
    return it->second;
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

// Text encoders and VAEs serve every workflow: a resident copy of the same file at a precision
// at least as good as the one asked for will do.
std::shared_ptr<Instance> find_shareable(Tier& tier, const Identity& id) {
  std::shared_ptr<Instance> best;
  for (auto& inst : tier.instances) {
    if (inst->state != Instance::State::ready || inst->id.path != id.path ||
        !inst->id.scope.empty())
      continue;
    if (!shared_between_workflows(inst->kind)) continue;
    if (apo::bytes_per_element(inst->id.precision) < apo::bytes_per_element(id.precision)) continue;
    if (!best || inst->last_used > best->last_used) best = inst;
  }
  return best;
}

void remove(Tier& tier, const std::shared_ptr<Instance>& inst) {
  tier.instances.erase(std::remove(tier.instances.begin(), tier.instances.end(), inst),
                       tier.instances.end());
  tier.used -= inst->bytes;
}

// Puts the merged weights back: the originals were kept on the host, bit for bit.
void restore_originals(Instance& inst) {
  for (auto& [name, original] : inst.originals) {
    const c10::Device device = inst.model->device();
    detail::ModelMutation::weight(*inst.model, name) = quant::QTensor::from_parts(
        original.name(), original.data().to(device),
        original.scales().defined() ? original.scales().to(device) : at::Tensor(),
        original.format(), original.scaling(), original.original_dtype());
  }
  inst.originals.clear();
  inst.loras.clear();
}

bool is_host(c10::Device tier) {
  return tier.is_cpu() && tier.index() < 0;
}

std::string describe_tier(c10::Device tier) {
  return is_host(tier) ? std::string("host tier") : tier.str() + " tier";
}

// The model's real size once loaded at `precision` into room `available_bytes`, and the spec.
struct LoadPlan {
  quant::QuantSpec spec;
  std::int64_t bytes = 0;
  std::string reason;
};

LoadPlan plan_load(const ModelCacheOptions& options, const std::filesystem::path& path,
                   Precision precision, std::int64_t available_bytes) {
  const SafetensorsFile file = SafetensorsFile::open(path);
  std::int64_t file_bytes = 0;
  for (const auto& entry : file.tensors()) file_bytes += entry.bytes();
  if (file.metadata().count(std::string(kQuantizationMetadataKey)) != 0 ||
      precision == Precision::fp32) {
    return {{}, file_bytes, "as stored"};
  }
  quant::NamedTensors views;
  for (const auto& entry : file.tensors()) views.emplace_back(entry.name, file.view(entry.name));
  PerformanceOptimization performance;
  performance.model_precision = precision;
  performance.enable_quantization = options.allow_8bit;
  performance.quantization_memory_fraction = options.quantization_memory_fraction;
  const quant::ModelFootprint footprint = quant::footprint_of(views, options.rules);
  if (footprint.parameter_count == 0) return {{}, file_bytes, "no floating-point weights"};
  const auto choice =
      quant::choose_precision(performance, footprint, std::max<std::int64_t>(available_bytes, 1));
  // Tensors the rules keep are stored as they are; the choice counts every parameter.
  return {choice.spec, std::max(choice.weight_bytes, std::int64_t{0}), choice.reason};
}

}  // namespace

ModelCacheOptions ModelCacheOptions::from_config(const Config& config, const MachineInfo& machine) {
  ModelCacheOptions options;
  for (const auto& device : machine.cuda_devices) {
    const double gib = config.performance.max_memory_usage_gib.value_or(
        tune::device_memory_budget_gib(device.total_bytes));
    options.device_budgets.emplace_back(
        c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device.index)), gib_to_bytes(gib));
  }
  options.host_budget_bytes = gib_to_bytes(
      config.system.memory_pool_size_gib.value_or(bytes_to_gib(machine.memory.total_bytes) / 2));
  options.eviction_threshold = config.memory.eviction_threshold;
  options.share_models = config.memory.enable_model_sharing;
  options.demote_to_host = config.memory.enable_cpu_offload;
  options.stream_when_too_large = config.memory.enable_sequential_cpu_offload;
  options.keep_host_copy = config.storage.preload_models;
  options.precision = config.performance.model_precision;
  options.allow_8bit = config.performance.enable_quantization;
  options.quantization_memory_fraction = config.performance.quantization_memory_fraction;
  options.io_threads = config.system.io_threads;
  options.async_io = config.storage.async_io;
  options.model_root = config.storage.model_cache_path;
  options.converted_models = std::filesystem::path(config.storage.temp_path) / "apo-converted";
  options.io_buffer_bytes = std::int64_t{config.storage.io_buffer_size_mb} << 20;
  return options;
}

// ---------------------------------------------------------------------------------------------
// Lease

Lease::Lease(std::shared_ptr<CacheState> state, std::shared_ptr<Instance> instance,
             c10::Device device)
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
  return instance_ && instance_->streamed;
}

std::unique_ptr<WeightStreamer> Lease::streamer(std::uintptr_t compute_stream) const {
  const Model& m = model();
  if (!instance_->streamed) {
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
  auto blocks = group_into_blocks(order);
  auto plan = plan_weight_streaming(blocks, instance_->stream_budget);
  return std::make_unique<WeightStreamer>(host, std::move(blocks), std::move(plan), device_,
                                          compute_stream);
}

// ---------------------------------------------------------------------------------------------
// ModelCache

ModelCache::ModelCache(ModelCacheOptions options, const Clock& clock)
    : state_(std::make_shared<CacheState>(std::move(options), clock)) {
  ModelCacheOptions& o = state_->options;
  if (o.eviction_threshold <= 0 || o.eviction_threshold > 1) {
    fail(ErrorCode::InvalidArgument, "eviction threshold {} is outside (0, 1]",
         o.eviction_threshold);
  }
  if (o.host_budget_bytes <= 0)
    fail(ErrorCode::InvalidArgument, "the host tier needs a positive budget");
  state_->tiers["cpu"].budget = o.host_budget_bytes;
  for (const auto& [device, budget] : o.device_budgets) {
    const bool host_device = device.is_cpu() && device.index() == 0;
    if ((!device.is_cuda() && !host_device) || budget <= 0) {
      fail(ErrorCode::InvalidArgument,
           "device budget {} for {}: expected a CUDA device (or cpu:0) and a positive budget",
           budget, device.str());
    }
    const c10::Device tier(device.type(), std::max<c10::DeviceIndex>(device.index(), 0));
    state_->tiers[tier.str()].budget = budget;
  }
  state_->pool = std::make_unique<detail::LoaderPool>(o.async_io ? std::max(1, o.io_threads) : 1);
}

ModelCache::~ModelCache() {
  state_->pool.reset();  // runs what is queued, then joins
  std::lock_guard lock(state_->mutex);
  state_->closed = true;
}

const ModelCacheOptions& ModelCache::options() const noexcept {
  return state_->options;
}

Lease ModelCache::acquire(const ModelRef& ref, c10::Device device, std::vector<LoraRequest> loras) {
  return acquire_async(ref, device, std::move(loras)).get();
}

std::future<Lease> ModelCache::acquire_async(ModelRef ref, c10::Device device,
                                             std::vector<LoraRequest> loras) {
  auto task = std::make_shared<std::packaged_task<Lease()>>(
      [this, ref = std::move(ref), device, loras = std::move(loras)]() mutable {
        return acquire_now(ref, device, std::move(loras));
      });
  std::future<Lease> result = task->get_future();
  state_->pool->submit([task] { (*task)(); });
  return result;
}

namespace {

// Evicts least-recently-used unleased instances of `tier` until `bytes` more stay within the
// threshold; demotes device instances to the host tier when allowed and there is room.
void make_room(CacheState& s, c10::Device tier_device, std::int64_t bytes, const std::string& what,
               bool may_evict);

void evict(CacheState& s, c10::Device tier_device, const std::shared_ptr<Instance>& victim) {
  Tier& tier = s.tier(tier_device);
  remove(tier, victim);
  victim->state = Instance::State::gone;
  ++s.stats.evictions;
  if (is_host(tier_device) || !s.options.demote_to_host || victim->streamed) return;
  Tier& host = s.tier(c10::Device(c10::kCPU));
  if (find(host, victim->id)) return;  // the host already has it
  try {
    make_room(s, c10::Device(c10::kCPU), victim->bytes, victim->id.path, true);
  } catch (const Error&) {
    return;  // no room on the host: dropped
  }
  restore_originals(*victim);
  auto demoted = std::make_shared<Instance>();
  demoted->id = victim->id;
  demoted->kind = victim->kind;
  demoted->model =
      std::make_shared<Model>(victim->model->to(c10::Device(c10::kCPU), &s.host_memory));
  demoted->bytes = demoted->model->bytes();
  demoted->state = Instance::State::ready;
  demoted->last_used = victim->last_used;
  host.instances.push_back(demoted);
  host.used += demoted->bytes;
  ++s.stats.demotions;
  s.stats.bytes_moved += demoted->bytes;
}

void make_room(CacheState& s, c10::Device tier_device, std::int64_t bytes, const std::string& what,
               bool may_evict) {
  Tier& tier = s.tier(tier_device);
  if (bytes > tier.budget) {
    fail(ErrorCode::OutOfMemory, "{} needs {}, more than the {} budget of {}", what,
         format_bytes(bytes), describe_tier(tier_device), format_bytes(tier.budget));
  }
  const auto limit =
      static_cast<std::int64_t>(s.options.eviction_threshold * static_cast<double>(tier.budget));
  while (may_evict && tier.used + bytes > limit) {
    std::shared_ptr<Instance> victim;
    for (auto& inst : tier.instances) {
      if (inst->state != Instance::State::ready || inst->leases > 0 || inst->switching) continue;
      if (!victim || inst->last_used < victim->last_used) victim = inst;
    }
    if (!victim) break;
    evict(s, tier_device, victim);
  }
  if (tier.used + bytes > (may_evict ? tier.budget : limit)) {
    std::int64_t leased = 0;
    for (auto& inst : tier.instances)
      leased += inst->leases > 0 || inst->state == Instance::State::loading ? inst->bytes : 0;
    fail(ErrorCode::OutOfMemory, "{} needs {}; the {} holds {} of {} ({} leased or loading)", what,
         format_bytes(bytes), describe_tier(tier_device), format_bytes(tier.used),
         format_bytes(tier.budget), format_bytes(leased));
  }
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
void keep_on_host(CacheState& s, const Identity& id, ModelKind kind, std::shared_ptr<Model> model) {
  try {
    make_room(s, c10::Device(c10::kCPU), model->bytes(), id.path, true);
  } catch (const Error&) {
    return;
  }
  auto kept = std::make_shared<Instance>();
  kept->id = id;
  kept->kind = kind;
  kept->bytes = model->bytes();
  kept->model = std::move(model);
  kept->state = Instance::State::ready;
  kept->last_used = s.clock.now();
  Tier& host = s.tier(c10::Device(c10::kCPU));
  host.instances.push_back(kept);
  host.used += kept->bytes;
}

}  // namespace

// Takes a lease on a ready instance once its LoRAs agree with `loras` (switching them when it is
// free); nullopt after waiting, so the caller looks again.
std::optional<Lease> ModelCache::take(std::unique_lock<std::mutex>& lock,
                                      const std::shared_ptr<Instance>& inst,
                                      const std::vector<LoraRequest>& loras, c10::Device device) {
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

Lease ModelCache::acquire_now(const ModelRef& ref, c10::Device device,
                              std::vector<LoraRequest> loras) {
  CacheState& s = *state_;
  std::filesystem::path path = ref.path;
  if (path.is_relative() && !s.options.model_root.empty()) path = s.options.model_root / path;
  if (!std::filesystem::exists(path))
    throw Error(ErrorCode::NotFound, "no such model file", path.string());
  path = std::filesystem::canonical(path);
  const Precision precision = ref.precision.value_or(s.options.precision);
  const Identity id{path.string(), precision,
                    s.options.share_models ? std::string() : ref.workflow};
  const c10::Device wanted = s.tier_of(device);
  const c10::Device host_device(c10::kCPU);

  std::unique_lock lock(s.mutex);
  s.tier(wanted);  // a device without a budget is an error
  bool counted = false;
  for (;;) {
    std::shared_ptr<Instance> inst = find(s.tier(wanted), id);
    if (!inst && !is_host(wanted)) {
      // A model streamed to this device lives in the host tier.
      if (auto host = find(s.tier(host_device), id); host && host->streamed) inst = host;
    }
    if (!inst && s.options.share_models && shared_between_workflows(ref.kind)) {
      inst = find_shareable(s.tier(wanted), id);
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
    if (!is_host(wanted)) {
      source = find(s.tier(host_device), id);
      if (source && (source->state != Instance::State::ready || source->streamed)) source.reset();
    }
    lock.unlock();
    const LoadPlan plan = source ? LoadPlan{{}, source->model->bytes(), "promoted"}
                                 : plan_load(s.options, path, precision, s.tier(wanted).budget);
    lock.lock();
    if (find(s.tier(wanted), id)) continue;  // someone else started it meanwhile
    c10::Device tier_device = wanted;
    bool streamed = false;
    if (plan.bytes > s.tier(wanted).budget && !is_host(wanted) && s.options.stream_when_too_large) {
      streamed = true;  // lives in the host tier, streams to the device
      tier_device = host_device;
      source.reset();
      if (find(s.tier(host_device), id)) continue;
    }
    make_room(s, tier_device, plan.bytes, path.string(), true);
    auto created = std::make_shared<Instance>();
    created->id = id;
    created->kind = ref.kind;
    created->tier = tier_device;
    created->bytes = plan.bytes;
    created->streamed = streamed;
    created->stream_budget = streamed ? s.tier(wanted).budget : 0;
    Tier& tier = s.tier(tier_device);
    tier.instances.push_back(created);
    tier.used += created->bytes;
    if (source) ++source->leases;  // not evicted while it is copied
    lock.unlock();

    std::shared_ptr<Model> model;
    std::shared_ptr<Model> host_copy;
    const auto start = std::chrono::steady_clock::now();
    std::exception_ptr error;
    try {
      if (source) {
        model = std::make_shared<Model>(source->model->to(tier_device, &s.host_memory));
      } else {
        quant::QuantizationRules rules = s.options.rules;
        rules.spec = plan.spec;
        auto host = std::make_shared<Model>(path.string(), ref.kind, precision,
                                            read_from_disk(s, path, rules));
        if (is_host(tier_device)) {
          model = host;
        } else {
          model = std::make_shared<Model>(host->to(tier_device, &s.host_memory));
          if (s.options.keep_host_copy) host_copy = std::move(host);
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
      remove(tier, created);
      created->state = Instance::State::failed;
      created->error = error;
      s.changed.notify_all();
      std::rethrow_exception(error);
    }
    tier.used += model->bytes() - created->bytes;
    created->bytes = model->bytes();
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
      if (!is_host(tier_device)) s.stats.bytes_moved += created->bytes;
    }
    if (host_copy && !find(s.tier(host_device), id))
      keep_on_host(s, id, ref.kind, std::move(host_copy));
    s.changed.notify_all();
    if (auto lease = take(lock, created, loras, device)) return std::move(*lease);
  }
}

ModelCache::Preload ModelCache::preload(const UsagePredictor& predictor, int hour,
                                        double threshold) {
  Preload result;
  std::vector<std::shared_future<void>> loads;
  for (const UsagePrediction& prediction : predictor.predict(hour, threshold)) {
    ModelRef ref;
    ref.path = prediction.model;
    ref.workflow = prediction.workflow;
    std::filesystem::path path = ref.path;
    if (path.is_relative() && !state_->options.model_root.empty())
      path = state_->options.model_root / path;
    if (!std::filesystem::exists(path)) continue;
    {
      // Guesses go into free room only.
      std::lock_guard lock(state_->mutex);
      const Tier& host = state_->tier(c10::Device(c10::kCPU));
      const auto limit = static_cast<std::int64_t>(state_->options.eviction_threshold *
                                                   static_cast<double>(host.budget));
      std::int64_t file_bytes = static_cast<std::int64_t>(std::filesystem::file_size(path));
      if (host.used + file_bytes > limit) continue;
    }
    result.models.push_back(prediction.model);
    auto lease = acquire_async(ref, c10::Device(c10::kCPU));
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
  for (auto& [name, tier] : state_->tiers) {
    std::vector<std::shared_ptr<Instance>> idle;
    for (auto& inst : tier.instances) {
      if (inst->state == Instance::State::ready && inst->leases == 0 && !inst->switching)
        idle.push_back(inst);
    }
    for (auto& inst : idle) {
      freed += inst->bytes;
      remove(tier, inst);
      inst->state = Instance::State::gone;
      ++state_->stats.evictions;
    }
  }
  state_->changed.notify_all();
  // What the dropped models held goes back to the system, not just to the pool.
  state_->host_pool->release();
  return freed;
}

CacheStats ModelCache::stats() const {
  std::lock_guard lock(state_->mutex);
  return state_->stats;
}

std::vector<ResidentModel> ModelCache::residents() const {
  std::lock_guard lock(state_->mutex);
  std::vector<ResidentModel> out;
  for (const auto& [name, tier] : state_->tiers) {
    for (const auto& inst : tier.instances) {
      if (inst->state != Instance::State::ready) continue;
      out.push_back({inst->id.path, inst->kind, inst->id.precision, inst->model->device(),
                     inst->id.scope, inst->bytes, inst->leases, inst->loras});
    }
  }
  return out;
}

std::int64_t ModelCache::used_bytes(c10::Device device) const {
  std::lock_guard lock(state_->mutex);
  return state_->tier(state_->tier_of(device)).used;
}

}  // namespace apo::models

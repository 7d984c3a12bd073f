// The compiled half of the WorkflowEngine: devices, ledgers and pools, the model cache, the book
// of requests (exactly one result each), and running a batch with out-of-memory recovery.

#include "apo/engine/detail/engine_core.hpp"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <exception>
#include <future>
#include <mutex>
#include <unordered_map>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "apo/core/current_error.hpp"
#include "apo/core/error.hpp"
#include "apo/core/units.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/memory/cuda_resources.hpp"
#include "apo/memory/host_resource.hpp"
#include "apo/memory/memory_manager.hpp"
#include "apo/memory/torch_allocator.hpp"
#include "apo/monitor/performance_monitor.hpp"
#include "apo/monitor/trace.hpp"
#include "apo/tune/adaptive_quality.hpp"
#include "apo/tune/presets.hpp"

namespace apo::engine::detail {

using memory::LedgerUse;

namespace {

// A request on its way: its promise, callbacks, and where it is.
struct Entry {
  std::promise<Result> promise;
  Callbacks callbacks;
  Clock::time_point submitted{};
  batch::GroupKey key;
  bool running = false;
  bool cancel = false;
};

// The models a group of requests needs, counted by the requests not yet ended.
struct KeyNeeds {
  std::vector<ModelNeed> needs;
  std::size_t requests = 0;
};

struct DeviceState {
  Device device;
  std::shared_ptr<memory::MemoryLedger> ledger;
  DevicePool pool;
};

Clock::duration since(const Clock& clock, Clock::time_point start) {
  return clock.now() - start;
}

std::string describe_limit(batch::BatchLimit limit) {
  switch (limit) {
    case batch::BatchLimit::queued:
      return "the requests queued";
    case batch::BatchLimit::memory:
      return "the memory free";
    case batch::BatchLimit::throughput:
      return "the group's throughput history";
    case batch::BatchLimit::max_batch_size:
      return "performance_optimization.max_batch_size";
    case batch::BatchLimit::fixed_size:
      return "performance_optimization.batch_size";
  }
  return "?";
}

// Outputs leave the batch's pool: what a caller keeps must not hold the device's activation
// memory, and must be on the CPU.
Outputs detach(Outputs outputs) {
  for (auto& [name, tensor] : outputs) {
    if (!tensor.defined()) continue;
    tensor = tensor.device().is_cpu() ? tensor.clone() : tensor.to(at::kCPU);
  }
  return outputs;
}

}  // namespace

struct EngineCore::State final : RunControl {
  State(Config c, const Clock& k, MachineInfo m, EngineParts p)
      : config(std::move(c)), clock(k), machine(std::move(m)), parts(std::move(p)) {}

  Config config;
  const Clock& clock;
  MachineInfo machine;
  EngineParts parts;
  std::vector<DeviceState> devices;
  std::vector<std::shared_ptr<memory::MemoryLedger>> ledgers;
  std::shared_ptr<memory::MemoryLedger> host_ledger;
  std::unique_ptr<models::ModelCache> cache;
  std::unique_ptr<memory::MemoryManager> manager;
  std::vector<memory::CleanupRegistration> cleanups;
  WorkflowRegistry workflows;
  std::array<GenerationSettings, 3> generation;  // by QualityLevel
  std::mutex controller_mutex;
  std::shared_ptr<tune::AdaptiveQualityController> controller;  // optional
  std::mutex monitor_mutex;
  std::shared_ptr<monitor::PerformanceMonitor> monitor;  // optional
  std::size_t workers_per_device = 1;
  std::atomic<RequestId> next_id{1};

  mutable std::mutex mutex;  // guards what follows
  std::unordered_map<RequestId, Entry> book;
  std::unordered_map<batch::GroupKey, KeyNeeds, batch::GroupKeyHash, batch::GroupKeyEqual> needs;
  EngineStats stats;

  // RunControl
  bool cancel_requested(RequestId id) const override {
    const std::lock_guard lock(mutex);
    const auto found = book.find(id);
    return found == book.end() || found->second.cancel;
  }
  void end_cancelled(RequestId id) override {
    Result result;
    result.id = id;
    result.status = Status::cancelled;
    result.message = "cancelled";
    deliver(std::move(result));
  }
  void progress(RequestId id, int step, int steps) override {
    ProgressCallback callback;
    {
      const std::lock_guard lock(mutex);
      const auto found = book.find(id);
      if (found == book.end()) return;
      callback = found->second.callbacks.on_progress;
    }
    if (!callback) return;
    try {
      callback(id, step, steps);
    } catch (...) {
      // A caller's callback cannot stop the batch.
    }
  }

  // Ends a request once: the first delivery wins, later ones find nothing. A request that never
  // ran spent all its time waiting.
  bool deliver(Result result, bool ran = true) {
    Entry entry;
    {
      const std::lock_guard lock(mutex);
      const auto found = book.find(result.id);
      if (found == book.end()) return false;
      entry = std::move(found->second);
      book.erase(found);
      if (const auto key = needs.find(batch::GroupKeyView(entry.key)); key != needs.end()) {
        if (--key->second.requests == 0) needs.erase(key);
      }
      switch (result.status) {
        case Status::ok:
          ++stats.completed;
          break;
        case Status::cancelled:
          ++stats.cancelled;
          break;
        case Status::timed_out:
          ++stats.timed_out;
          break;
        case Status::rejected:
          ++stats.rejected;
          break;
        case Status::out_of_memory:
          ++stats.out_of_memory;
          break;
        case Status::failed:
          ++stats.failed;
          break;
      }
    }
    result.timings.total = clock.now() - entry.submitted;
    if (!ran) result.timings.queue_wait = result.timings.total;
    report_to_monitor(entry.key.workflow, result);
    if (entry.callbacks.on_result) {
      try {
        entry.callbacks.on_result(result);
      } catch (...) {
        // The result is delivered through the future regardless.
      }
    }
    entry.promise.set_value(std::move(result));
    return true;
  }

  void report_to_monitor(const std::string& workflow, const Result& result) {
    std::shared_ptr<monitor::PerformanceMonitor> observer;
    {
      const std::lock_guard lock(monitor_mutex);
      observer = monitor;
    }
    if (!observer) return;
    const auto seconds = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
    try {
      observer->record_request(
          {.workflow = workflow,
           .ok = result.ok(),
           .total_seconds = seconds(result.timings.total),
           .compute_seconds =
               seconds(result.timings.encode + result.timings.denoise + result.timings.decode),
           .peak_memory_bytes = result.peak_memory_bytes,
           .quality = result.quality});
    } catch (...) {
      // Monitoring never costs a request its result.
    }
  }

  // The engine's side of a monitor's sample: each device's ledger and the queue.
  monitor::EngineReading engine_reading() const {
    monitor::EngineReading reading;
    for (const auto& ledger : ledgers) {
      const memory::LedgerSnapshot figures = ledger->snapshot();
      monitor::DeviceSample device;
      device.device = figures.device.str();
      device.allocated_bytes = figures.used_bytes;
      device.reserved_bytes = figures.weights_bytes + figures.staging_bytes + figures.pool_bytes +
                              figures.untracked_bytes;
      device.total_bytes = figures.budget_bytes;
      reading.devices.push_back(std::move(device));
    }
    const std::lock_guard lock(mutex);
    for (const auto& [id, entry] : book) ++(entry.running ? reading.running : reading.queued);
    return reading;
  }

  DeviceState& device(std::size_t index) {
    if (index >= devices.size()) {
      fail(ErrorCode::InvalidArgument, "device index {} out of range ({} devices)", index,
           devices.size());
    }
    return devices[index];
  }

  std::vector<ModelNeed> needs_of(const Workflow& workflow, const Request& request) const {
    std::vector<ModelNeed> list = workflow.models(request);
    for (ModelNeed& need : list) need.ref.workflow = workflow.name();
    return list;
  }

  std::int64_t reclaim(DeviceState& device, std::int64_t wanted) {
    std::int64_t freed = device.pool.release ? device.pool.release() : 0;
    if (device.device.is_cuda()) {
      freed += memory::release_torch_device_cache();
      if (const auto reserved = memory::torch_reserved_bytes(device.device)) {
        device.ledger->observe(*reserved);
      }
    }
    freed += cache->make_room(device.device, wanted);
    return freed;
  }

  // Runs requests of one batch, splitting them on running out of memory; the batch's
  // reservation in the ledger stays whole until it completes, so that halves never wait for room.
  std::vector<Result> execute(std::size_t index, std::span<const Request> requests,
                              Clock::time_point started, bool slicing,
                              std::vector<std::string> reasons);
};

// ---------------------------------------------------------------------------------------------

EngineCore::EngineCore(Config config, const Clock& clock, MachineInfo machine, EngineParts parts)
    : state_(
          std::make_unique<State>(std::move(config), clock, std::move(machine), std::move(parts))) {
  State& s = *state_;
  if (!s.parts.quantization || !s.parts.pools) {
    fail(ErrorCode::InvalidArgument, "engine: a quantization policy and a pool factory are needed");
  }
  // monitoring.enable_tracing turns the process's trace on; the host writes it out
  // (monitor::Tracer::write).
  if (s.config.monitoring.enable_tracing && !monitor::Tracer::global().enabled()) {
    monitor::Tracer::global().start();
  }
  // One ledger per device from the one budget rule; the CPU's is also the host tier's.
  const tune::MemoryBudgets budgets = tune::memory_budgets(s.config, s.machine);
  for (const auto& [device, bytes] : budgets.devices) {
    auto ledger = std::make_shared<memory::MemoryLedger>(device, bytes);
    memory::AnyResource upstream = memory::HostResource();
    if (device.is_cuda()) {
      memory::CudaDeviceOptions cuda;
      cuda.device = device.index;
      upstream = memory::CudaDeviceResource(cuda);
    }
    DevicePool pool =
        s.parts.pools(memory::LedgerResource(std::move(upstream), ledger, LedgerUse::pool), bytes);
    s.devices.push_back({device, ledger, std::move(pool)});
    s.ledgers.push_back(std::move(ledger));
  }
  s.host_ledger = budgets.cpu_computes()
                      ? s.ledgers.front()
                      : std::make_shared<memory::MemoryLedger>(Device::cpu(), budgets.host_bytes);

  models::ModelCacheOptions cache = models::ModelCacheOptions::from_config(s.config);
  cache.device_ledgers = s.ledgers;
  cache.host_ledger = s.host_ledger;
  cache.quantization = s.parts.quantization;
  s.cache = std::make_unique<models::ModelCache>(std::move(cache), s.clock);

  // Sampling of each quality level: the configuration's own for its profile, the profile preset
  // over the configuration for the others.
  for (const auto& entry : EnumTraits<QualityLevel>::entries) {
    GenerationSettings& generation = s.generation[static_cast<std::size_t>(entry.value)];
    if (entry.name == s.config.profile_name) {
      generation = s.config.generation;
      continue;
    }
    const tune::Preset* preset = tune::find_preset(entry.name);
    generation = tune::config_loader()
                     .text(to_json(s.config), "engine configuration")
                     .text(std::string(preset->json), "preset " + std::string(entry.name))
                     .load()
                     .config.generation;
  }

  s.workers_per_device = static_cast<std::size_t>(s.config.scheduling.batches_per_device);

  s.manager = std::make_unique<memory::MemoryManager>(
      memory::MemoryManagerOptions::from_config(s.config), s.clock);
  for (DeviceState& device : s.devices) {
    const DevicePool pool = device.pool;
    const auto high_water = static_cast<std::int64_t>(
        s.config.memory.eviction_threshold * static_cast<double>(device.ledger->budget_bytes()));
    if (pool.release) {
      s.cleanups.push_back(s.manager->add_hook(
          "activation pool of " + device.device.str(),
          [pool, high_water](const memory::CleanupContext& context) -> std::int64_t {
            const bool due = context.aggressive ||
                             context.reason == memory::CleanupReason::requested ||
                             (pool.reserved_bytes && pool.reserved_bytes() > high_water);
            return due ? pool.release() : 0;
          }));
    }
    if (device.device.is_cuda() && s.cleanups.size() == s.devices.size()) {
      s.cleanups.push_back(
          s.manager->add_hook("torch device cache", memory::torch_device_cache_hook()));
    }
  }
  s.manager->start();
}

EngineCore::~EngineCore() {
  set_monitor(nullptr);
  state_->manager->stop();
}

const Config& EngineCore::config() const noexcept {
  return state_->config;
}
const Clock& EngineCore::clock() const noexcept {
  return state_->clock;
}
const std::string& EngineCore::policies() const noexcept {
  return state_->parts.policies;
}
const std::vector<std::shared_ptr<memory::MemoryLedger>>& EngineCore::ledgers() const noexcept {
  return state_->ledgers;
}
WorkflowRegistry& EngineCore::workflows() noexcept {
  return state_->workflows;
}
models::ModelCache& EngineCore::model_cache() noexcept {
  return *state_->cache;
}
std::size_t EngineCore::workers_per_device() const noexcept {
  return state_->workers_per_device;
}

EngineCore::Accepted EngineCore::accept(Request& request, Callbacks callbacks) {
  State& s = *state_;
  const std::shared_ptr<Workflow> workflow = s.workflows.find(request.workflow);
  if (!workflow) {
    const auto names = s.workflows.names();
    throw Error(ErrorCode::NotFound,
                fmt::format("no workflow named \"{}\" (registered: {})", request.workflow,
                            names.empty() ? std::string("none")
                                          : fmt::format("{}", fmt::join(names, ", "))),
                "submit");
  }
  request.id = s.next_id.fetch_add(1);
  // Sampling the request leaves unset comes from the workflow and the request's quality level,
  // as the adaptive quality controller (when on) has adjusted it.
  GenerationSettings level = s.generation[static_cast<std::size_t>(request.quality)];
  if (const auto controller = quality_controller()) controller->settings().apply_to(level);
  workflow->resolve(request, level);
  fill_sampling(request, level);
  validate(request);
  workflow->check(request);
  request.memory_estimate_bytes = workflow->memory_estimate(request);
  if (request.memory_estimate_bytes < 0) {
    fail(ErrorCode::Internal, "workflow {} estimated {} bytes for {}", workflow->name(),
         request.memory_estimate_bytes, describe(request));
  }
  std::vector<ModelNeed> needs = s.needs_of(*workflow, request);

  // Could it ever run? Its estimate and its models must fit one device.
  std::optional<std::string> never_fits;
  {
    std::vector<std::string> weights;
    std::int64_t weight_bytes = 0;
    bool fits_somewhere = false;
    std::string budgets;
    for (std::size_t d = 0; d < s.devices.size(); ++d) {
      const DeviceState& device = s.devices[d];
      std::int64_t bytes = 0;
      weights.clear();
      for (const ModelNeed& need : needs) {
        const auto footprint = s.cache->footprint(need.ref, device.device);
        const bool streams = s.cache->options().stream_when_too_large &&
                             footprint.bytes > device.ledger->budget_bytes();
        if (streams) continue;  // it would stream from the host tier
        bytes += footprint.bytes;
        weights.push_back(
            fmt::format("{} {}", need.ref.path.filename().string(), format_bytes(footprint.bytes)));
      }
      weight_bytes = bytes;
      if (request.memory_estimate_bytes + bytes <= device.ledger->budget_bytes()) {
        fits_somewhere = true;
        break;
      }
      budgets += fmt::format("{}{} {}", budgets.empty() ? "" : ", ", device.device.str(),
                             format_bytes(device.ledger->budget_bytes()));
    }
    if (!fits_somewhere) {
      never_fits = fmt::format(
          "needs {} of activations and {} of weights ({}), more than any device's budget ({})",
          format_bytes(request.memory_estimate_bytes), format_bytes(weight_bytes),
          weights.empty() ? std::string("none") : fmt::format("{}", fmt::join(weights, ", ")),
          budgets);
    }
  }

  Accepted accepted;
  {
    const std::lock_guard lock(s.mutex);
    Entry entry;
    entry.callbacks = std::move(callbacks);
    entry.submitted = s.clock.now();
    entry.key = batch::group_key(request);
    accepted.ticket = Ticket(request.id, entry.promise.get_future().share());
    KeyNeeds& key_needs = s.needs[entry.key];
    if (key_needs.requests++ == 0) key_needs.needs = std::move(needs);
    s.book.emplace(request.id, std::move(entry));
    ++s.stats.submitted;
  }
  if (never_fits) {
    end(request.id, Status::out_of_memory, *never_fits);
    accepted.queue = false;
  }
  return accepted;
}

void EngineCore::forget(RequestId id) noexcept {
  State& s = *state_;
  const std::lock_guard lock(s.mutex);
  const auto found = s.book.find(id);
  if (found == s.book.end()) return;
  if (const auto key = s.needs.find(batch::GroupKeyView(found->second.key)); key != s.needs.end()) {
    if (--key->second.requests == 0) s.needs.erase(key);
  }
  s.book.erase(found);
  --s.stats.submitted;
}

void EngineCore::end(RequestId id, Status status, std::string message) {
  Result result;
  result.id = id;
  result.status = status;
  result.message = std::move(message);
  state_->deliver(std::move(result), /*ran=*/false);
}

bool EngineCore::request_cancel(RequestId id) {
  const std::lock_guard lock(state_->mutex);
  const auto found = state_->book.find(id);
  if (found == state_->book.end()) return false;
  found->second.cancel = true;
  return true;
}

std::vector<RequestId> EngineCore::outstanding() const {
  const std::lock_guard lock(state_->mutex);
  std::vector<RequestId> ids;
  ids.reserve(state_->book.size());
  for (const auto& [id, entry] : state_->book) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

std::int64_t EngineCore::extra_bytes(batch::GroupKeyView key, std::size_t device) const {
  State& s = *state_;
  std::vector<ModelNeed> needs;
  {
    const std::lock_guard lock(s.mutex);
    const auto found = s.needs.find(key);
    if (found == s.needs.end()) return 0;
    needs = found->second.needs;
  }
  const Device where = s.devices.at(device).device;
  std::int64_t bytes = 0;
  for (const ModelNeed& need : needs) {
    try {
      const auto footprint = s.cache->footprint(need.ref, where);
      if (!footprint.resident) bytes += footprint.bytes;
    } catch (const Error&) {
      // A model that cannot be planned fails its batch when it loads; placement needs no room
      // for it.
    }
  }
  return bytes;
}

std::int64_t EngineCore::reclaim(std::size_t device, std::int64_t wanted_bytes) {
  return state_->reclaim(state_->device(device), wanted_bytes);
}

void EngineCore::setup_worker_thread(std::size_t device) {
  State& s = *state_;
  const DeviceState& d = s.device(device);
  monitor::Tracer::global().name_thread("engine worker " + d.device.str());
  if (s.config.system.cpu_affinity) {
    cpu_set_t cores;
    CPU_ZERO(&cores);
    for (const int core : *s.config.system.cpu_affinity) {
      if (core >= 0 && core < CPU_SETSIZE) CPU_SET(core, &cores);
    }
    // Threads this worker starts (ATen's OpenMP team) inherit its cores.
    pthread_setaffinity_np(pthread_self(), sizeof(cores), &cores);
  }
  if (d.device.is_cpu() && s.config.system.max_cpu_threads.get()) {
    const int threads = *s.config.system.max_cpu_threads.get();
    const int workers = static_cast<int>(s.workers_per_device);
    at::set_num_threads(std::max(1, threads / std::max(1, workers)));
  }
}

EngineStats EngineCore::stats() const {
  const std::lock_guard lock(state_->mutex);
  EngineStats stats = state_->stats;
  for (const auto& [id, entry] : state_->book) {
    ++(entry.running ? stats.running : stats.queued);
  }
  return stats;
}

// ---------------------------------------------------------------------------------------------
// Running a batch

void EngineCore::run(std::size_t device_index, const batch::Batch& batch) {
  State& s = *state_;
  const Clock::time_point started = s.clock.now();
  // Requests cancelled between leaving the queue and now end here; the rest are running.
  std::vector<Request> live;
  std::vector<RequestId> dropped;
  {
    const std::lock_guard lock(s.mutex);
    for (const Request& request : batch.requests) {
      const auto found = s.book.find(request.id);
      if (found == s.book.end()) continue;
      if (found->second.cancel) {
        dropped.push_back(request.id);
        continue;
      }
      found->second.running = true;
      live.push_back(request);
    }
    ++s.stats.batches;
  }
  for (const RequestId id : dropped)
    end(id, Status::cancelled, "cancelled before its batch started");
  if (!live.empty()) {
    std::vector<std::string> reasons;
    reasons.push_back(fmt::format("device {}: placement's choice of {} device(s) ({})",
                                  s.devices[device_index].device.str(), s.devices.size(),
                                  s.devices[device_index].ledger->describe()));
    reasons.push_back(fmt::format("batch of {} (planned {}): sized by {}", live.size(),
                                  batch.planned_size, describe_limit(batch.limit)));
    const bool slicing = s.config.attention.enable_attention_slicing;
    reasons.push_back(
        fmt::format("attention slicing {}: attention_optimization", slicing ? "on" : "off"));
    std::vector<Result> results =
        s.execute(device_index, live, started, slicing, std::move(reasons));
    for (Result& result : results) s.deliver(std::move(result));
  }
}

void EngineCore::reconcile(std::size_t device) {
  // On CUDA, torch's allocator holds the activations: its statistics are what the device uses.
  const DeviceState& d = state_->device(device);
  if (const auto reserved = memory::torch_reserved_bytes(d.device)) d.ledger->observe(*reserved);
}

namespace {

// What ended a run early.
struct Failure {
  Status status = Status::failed;
  std::string message;
};

}  // namespace

std::vector<Result> EngineCore::State::execute(std::size_t index, std::span<const Request> requests,
                                               Clock::time_point started, bool slicing,
                                               std::vector<std::string> reasons) {
  DeviceState& dev = devices[index];
  const std::shared_ptr<Workflow> workflow = workflows.find(requests.front().workflow);
  std::int64_t estimate = 0;
  for (const Request& request : requests) estimate += request.memory_estimate_bytes;

  std::optional<Failure> failure;
  std::vector<Result> results;
  memory::MemoryLedger::PeakWindow window = dev.ledger->open_window();
  monitor::Span batch_span("batch", "engine");
  batch_span.arg("workflow", workflow->name())
      .arg("requests", static_cast<double>(requests.size()))
      .arg("device", dev.device.str());
  try {
    Context::Setup setup{.device = dev.device,
                         .pool = dev.pool.resource,
                         .leases = {},
                         .stream = 0,
                         .attention_slicing = slicing,
                         .slice_size = config.attention.slice_size,
                         .clock = &clock};
    const Clock::time_point load_start = clock.now();
    for (const ModelNeed& need : needs_of(*workflow, requests.front())) {
      monitor::Span acquire_span("acquire model", "models");
      acquire_span.arg("role", need.role).arg("model", need.ref.path.filename().string());
      setup.leases.emplace(need.role,
                           cache->acquire(need.ref, dev.device,
                                          need.takes_loras ? requests.front().loras
                                                           : std::vector<models::LoraRequest>{}));
    }
    const Clock::duration model_load = since(clock, load_start);
    Context context(std::move(setup), requests, *this);
    std::vector<Outputs> outputs;
    {
      // On the CPU, torch's allocations of this thread come from the device's pool, and so
      // count against its ledger.
      std::optional<memory::CpuAllocationScope> scope;
      if (dev.device.is_cpu()) scope.emplace(context.pool());
      outputs = workflow->run(requests, context);
    }
    if (outputs.size() != requests.size()) {
      fail(ErrorCode::Internal, "workflow {} returned {} outputs for {} requests", workflow->name(),
           outputs.size(), requests.size());
    }
    std::vector<std::pair<std::string, quant::QuantSpec>> precisions;
    std::vector<std::string> storage;
    for (const auto& [role, lease] : context.leases()) {
      precisions.emplace_back(lease->path(), lease->spec());
      storage.push_back(fmt::format("{} ({}): {}", role,
                                    std::filesystem::path(lease->path()).filename().string(),
                                    lease.storage_reason()));
    }
    for (const models::LoraRequest& lora : requests.front().loras) {
      storage.push_back(fmt::format("LoRA {} merged at strength {}", lora.path.filename().string(),
                                    lora.strength));
    }
    for (std::size_t i = 0; i < requests.size(); ++i) {
      Result result;
      result.id = requests[i].id;
      result.status = Status::ok;
      result.outputs = detach(std::move(outputs[i]));
      result.timings.queue_wait = started - requests[i].submit_time;
      result.timings.model_load = model_load + context.stage_time(Stage::model_load);
      result.timings.encode = context.stage_time(Stage::encode);
      result.timings.denoise = context.stage_time(Stage::denoise);
      result.timings.decode = context.stage_time(Stage::decode);
      result.quality = context.quality(i);
      result.decisions.device = dev.device;
      result.decisions.batch_size = requests.size();
      result.decisions.precisions = precisions;
      result.decisions.attention_slicing = slicing;
      result.decisions.slice_size = slicing ? config.attention.slice_size : 0;
      result.decisions.reasons = reasons;
      for (const std::string& line : storage) result.decisions.reasons.push_back(line);
      results.push_back(std::move(result));
    }
    // The controller learns each generation's own time: the batch's compute over its size.
    std::shared_ptr<tune::AdaptiveQualityController> controller;
    {
      const std::lock_guard lock(controller_mutex);
      controller = this->controller;
    }
    // (A batch that took no measurable time on the engine's clock tells it nothing.)
    const Clock::duration compute = context.stage_time(Stage::encode) +
                                    context.stage_time(Stage::denoise) +
                                    context.stage_time(Stage::decode);
    if (controller && compute > Clock::duration::zero()) {
      const double per_request_s =
          std::chrono::duration<double>(compute).count() / static_cast<double>(requests.size());
      for (const Result& result : results) controller->observe(per_request_s, result.quality);
    }
  } catch (...) {
    // The hosts' mapping: torch's out-of-memory errors (device and CPU) and bad_alloc split the
    // batch like apo's own.
    ErrorReport report = current_error_report();
    failure = Failure{report.code == ErrorCode::OutOfMemory ? Status::out_of_memory
                      : report.code == ErrorCode::Cancelled ? Status::cancelled
                                                            : Status::failed,
                      std::move(report.message)};
  }
  if (!failure) {
    for (Result& result : results) result.peak_memory_bytes = window.peak_bytes();
    return results;
  }

  if (failure->status == Status::out_of_memory) {
    // Release what the device caches, then retry smaller: halves, then one request with
    // attention slicing, before giving up.
    const std::int64_t freed = reclaim(dev, estimate);
    monitor::Tracer::global().instant(
        "out of memory", "engine",
        monitor::trace_arg("requests", static_cast<double>(requests.size())) + "," +
            monitor::trace_arg("released_bytes", static_cast<double>(freed)));
    if (requests.size() > 1) {
      {
        const std::lock_guard lock(mutex);
        ++stats.oom_splits;
      }
      const std::size_t half = requests.size() / 2;
      std::vector<std::string> split = reasons;
      split.push_back(
          fmt::format("split from a batch of {} after running out of memory ({} released): {}",
                      requests.size(), format_bytes(freed), failure->message));
      std::vector<Result> first =
          execute(index, requests.subspan(0, half), started, slicing, split);
      std::vector<Result> second = execute(index, requests.subspan(half), started, slicing, split);
      std::move(second.begin(), second.end(), std::back_inserter(first));
      return first;
    }
    if (!slicing) {
      reasons.push_back("attention slicing on: the request ran out of memory without it (" +
                        failure->message + ")");
      return execute(index, requests, started, true, std::move(reasons));
    }
    failure->message = fmt::format(
        "{} needs an estimated {} of activations beside its models; even alone it did not fit "
        "after releasing {} ({}): {}",
        describe(requests.front()), format_bytes(estimate), format_bytes(freed),
        dev.ledger->describe(), failure->message);
  }
  results.clear();
  for (const Request& request : requests) {
    Result result;
    result.id = request.id;
    result.status = failure->status;
    result.message = failure->message;
    result.timings.queue_wait = started - request.submit_time;
    result.peak_memory_bytes = window.peak_bytes();
    result.decisions.device = dev.device;
    result.decisions.batch_size = requests.size();
    result.decisions.attention_slicing = slicing;
    result.decisions.reasons = reasons;
    results.push_back(std::move(result));
  }
  return results;
}

void EngineCore::set_quality_controller(
    std::shared_ptr<tune::AdaptiveQualityController> controller) {
  const std::lock_guard lock(state_->controller_mutex);
  state_->controller = std::move(controller);
}

void EngineCore::set_monitor(std::shared_ptr<monitor::PerformanceMonitor> observer) {
  std::shared_ptr<monitor::PerformanceMonitor> previous;
  {
    const std::lock_guard lock(state_->monitor_mutex);
    previous = std::exchange(state_->monitor, observer);
  }
  // Detaching waits for a sample in progress, so no sample reads this engine once it is gone.
  if (previous && previous != observer) previous->set_engine_source({});
  if (observer) {
    observer->set_engine_source([state = state_.get()] { return state->engine_reading(); });
  }
}

std::shared_ptr<tune::AdaptiveQualityController> EngineCore::quality_controller() const {
  const std::lock_guard lock(state_->controller_mutex);
  return state_->controller;
}

}  // namespace apo::engine::detail

namespace apo::engine {

// ---------------------------------------------------------------------------------------------
// Context and the registry

void fill_sampling(Request& request, const GenerationSettings& level) {
  if (!request.steps) request.steps = level.num_inference_steps;
  if (!request.guidance) request.guidance = level.guidance_scale;
  if (!request.sampler) {
    request.sampler = level.use_fast_scheduler           ? Sampler::euler_ancestral
                      : level.use_high_quality_scheduler ? Sampler::ddim
                                                         : Sampler::euler;
  }
}

Context::Context(Setup setup, std::span<const Request> requests, detail::RunControl& control)
    : setup_(std::move(setup)),
      requests_(requests),
      control_(control),
      dropped_(requests.size(), false),
      quality_(requests.size()) {
  if (setup_.clock == nullptr) setup_.clock = &SteadyClock::instance();
}

const models::Model& Context::model(std::string_view role) const {
  return lease(role).model();
}

const models::Lease& Context::lease(std::string_view role) const {
  const auto found = setup_.leases.find(role);
  if (found == setup_.leases.end()) {
    throw Error(ErrorCode::NotFound,
                fmt::format("no model under the role \"{}\" (the workflow lists {} models)", role,
                            setup_.leases.size()),
                "context");
  }
  return found->second;
}

void Context::step(int step, int steps) {
  bool any_left = false;
  for (std::size_t i = 0; i < requests_.size(); ++i) {
    if (dropped_[i]) continue;
    const RequestId id = requests_[i].id;
    if (control_.cancel_requested(id)) {
      dropped_[i] = true;
      control_.end_cancelled(id);
      continue;
    }
    any_left = true;
    control_.progress(id, step, steps);
  }
  if (!any_left) {
    throw Error(ErrorCode::Cancelled, "every request of the batch was cancelled", "context");
  }
}

bool Context::cancelled(std::size_t index) const {
  return index < dropped_.size() && dropped_[index];
}

void Context::set_quality(std::size_t index, double score) {
  if (index >= quality_.size() || !(score >= 0.0 && score <= 1.0)) {
    fail(ErrorCode::InvalidArgument, "quality {} for request {} of {}: expected 0 to 1", score,
         index, quality_.size());
  }
  quality_[index] = score;
}

Clock::duration Context::stage_time(Stage stage) const {
  return stage_times_[static_cast<std::size_t>(stage)];
}

std::optional<double> Context::quality(std::size_t index) const {
  return index < quality_.size() ? quality_[index] : std::nullopt;
}

namespace {
constexpr std::array<std::string_view, 4> kStageNames{"model_load", "encode", "denoise", "decode"};
}  // namespace

Context::StageTimer::StageTimer(Context& context, Stage stage)
    : context_(context),
      stage_(stage),
      start_(context.setup_.clock->now()),
      span_(kStageNames[static_cast<std::size_t>(stage)], "stage") {}

Context::StageTimer::~StageTimer() {
  context_.stage_times_[static_cast<std::size_t>(stage_)] += context_.setup_.clock->now() - start_;
}

void WorkflowRegistry::add(std::shared_ptr<Workflow> workflow) {
  if (!workflow) fail(ErrorCode::InvalidArgument, "a null workflow");
  std::string name = workflow->name();
  if (name.empty()) fail(ErrorCode::InvalidArgument, "a workflow with an empty name");
  const std::lock_guard lock(mutex_);
  if (!workflows_.emplace(name, std::move(workflow)).second) {
    fail(ErrorCode::InvalidArgument, "a workflow named \"{}\" is already registered", name);
  }
}

std::shared_ptr<Workflow> WorkflowRegistry::find(std::string_view name) const {
  const std::lock_guard lock(mutex_);
  const auto found = workflows_.find(name);
  return found == workflows_.end() ? nullptr : found->second;
}

std::vector<std::string> WorkflowRegistry::names() const {
  const std::lock_guard lock(mutex_);
  std::vector<std::string> names;
  for (const auto& [name, workflow] : workflows_) names.push_back(name);
  return names;
}

}  // namespace apo::engine

// The C ABI over the C++ library, second part: the engine, workflows written in C, requests,
// tickets and results, the model cache and the performance monitor.

#include "capi_internal.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apo/core/config.hpp"
#include "apo/engine/any_engine.hpp"
#include "apo/engine/workflow.hpp"
#include "apo/models/model_cache.hpp"
#include "apo/monitor/performance_monitor.hpp"
#ifdef APO_WITH_REFERENCE
#include "apo/ref/workflows.hpp"
#endif

namespace apo::capi {

// Version 1 of each struct, frozen: fields may be appended, never moved. The library reads (and
// writes) only what the caller's struct_size covers.
constexpr std::size_t kApoEngineOptionsV1Size = 8;
static_assert(offsetof(apo_engine_options, destroy_mode) == 4);
static_assert(sizeof(apo_engine_options) >= kApoEngineOptionsV1Size);

constexpr std::size_t kApoRequestInfoV1Size = 88;
static_assert(offsetof(apo_request_info, quality) == 4);
static_assert(offsetof(apo_request_info, request_id) == 8);
static_assert(offsetof(apo_request_info, workflow) == 16);
static_assert(offsetof(apo_request_info, prompt) == 24);
static_assert(offsetof(apo_request_info, negative_prompt) == 32);
static_assert(offsetof(apo_request_info, width) == 40);
static_assert(offsetof(apo_request_info, height) == 44);
static_assert(offsetof(apo_request_info, frames) == 48);
static_assert(offsetof(apo_request_info, steps) == 52);
static_assert(offsetof(apo_request_info, guidance) == 56);
static_assert(offsetof(apo_request_info, seed) == 64);
static_assert(offsetof(apo_request_info, priority) == 72);
static_assert(offsetof(apo_request_info, inputs) == 76);
static_assert(offsetof(apo_request_info, strength) == 80);
static_assert(sizeof(apo_request_info) >= kApoRequestInfoV1Size);

constexpr std::size_t kApoWorkflowCallbacksV1Size = 80;
static_assert(offsetof(apo_workflow_callbacks, name) == 8);
static_assert(offsetof(apo_workflow_callbacks, model_roles) == 16);
static_assert(offsetof(apo_workflow_callbacks, model_paths) == 24);
static_assert(offsetof(apo_workflow_callbacks, model_kinds) == 32);
static_assert(offsetof(apo_workflow_callbacks, model_count) == 40);
static_assert(offsetof(apo_workflow_callbacks, user_data) == 48);
static_assert(offsetof(apo_workflow_callbacks, memory_estimate) == 56);
static_assert(offsetof(apo_workflow_callbacks, run) == 64);
static_assert(offsetof(apo_workflow_callbacks, destroy_user_data) == 72);
static_assert(sizeof(apo_workflow_callbacks) >= kApoWorkflowCallbacksV1Size);

constexpr std::size_t kApoRequestOptionsV1Size = 120;
static_assert(offsetof(apo_request_options, quality) == 4);
static_assert(offsetof(apo_request_options, workflow) == 8);
static_assert(offsetof(apo_request_options, prompt) == 16);
static_assert(offsetof(apo_request_options, negative_prompt) == 24);
static_assert(offsetof(apo_request_options, width) == 32);
static_assert(offsetof(apo_request_options, height) == 36);
static_assert(offsetof(apo_request_options, frames) == 40);
static_assert(offsetof(apo_request_options, steps) == 44);
static_assert(offsetof(apo_request_options, guidance) == 48);
static_assert(offsetof(apo_request_options, seed) == 56);
static_assert(offsetof(apo_request_options, priority) == 64);
static_assert(offsetof(apo_request_options, deadline_ms) == 68);
static_assert(offsetof(apo_request_options, strength) == 72);
static_assert(offsetof(apo_request_options, image) == 80);
static_assert(offsetof(apo_request_options, mask) == 88);
static_assert(offsetof(apo_request_options, first_frame) == 96);
static_assert(offsetof(apo_request_options, on_progress) == 104);
static_assert(offsetof(apo_request_options, progress_user_data) == 112);
static_assert(sizeof(apo_request_options) >= kApoRequestOptionsV1Size);

constexpr std::size_t kApoResultInfoV1Size = 112;
static_assert(offsetof(apo_result_info, status) == 4);
static_assert(offsetof(apo_result_info, request_id) == 8);
static_assert(offsetof(apo_result_info, message) == 16);
static_assert(offsetof(apo_result_info, device) == 24);
static_assert(offsetof(apo_result_info, queue_wait_s) == 32);
static_assert(offsetof(apo_result_info, model_load_s) == 40);
static_assert(offsetof(apo_result_info, encode_s) == 48);
static_assert(offsetof(apo_result_info, denoise_s) == 56);
static_assert(offsetof(apo_result_info, decode_s) == 64);
static_assert(offsetof(apo_result_info, total_s) == 72);
static_assert(offsetof(apo_result_info, peak_memory_bytes) == 80);
static_assert(offsetof(apo_result_info, quality) == 88);
static_assert(offsetof(apo_result_info, has_quality) == 96);
static_assert(offsetof(apo_result_info, batch_size) == 100);
static_assert(offsetof(apo_result_info, output_count) == 104);
static_assert(sizeof(apo_result_info) >= kApoResultInfoV1Size);

constexpr std::size_t kApoModelOptionsV1Size = 40;
static_assert(offsetof(apo_model_options, device_index) == 4);
static_assert(offsetof(apo_model_options, path) == 8);
static_assert(offsetof(apo_model_options, kind) == 16);
static_assert(offsetof(apo_model_options, precision) == 24);
static_assert(offsetof(apo_model_options, workflow) == 32);
static_assert(sizeof(apo_model_options) >= kApoModelOptionsV1Size);

static_assert(static_cast<int>(QualityLevel::speed_first) == APO_QUALITY_SPEED_FIRST);
static_assert(static_cast<int>(QualityLevel::balanced) == APO_QUALITY_BALANCED);
static_assert(static_cast<int>(QualityLevel::quality_first) == APO_QUALITY_QUALITY_FIRST);
static_assert(kInputImage == 1 && kInputMask == 2 && kInputFirstFrame == 4);

namespace {

// ---- Objects behind the handles -------------------------------------------------------------

struct EngineObject {
  EngineObject(const Config& config, engine::ShutdownMode mode)
      : engine(config), destroy_mode(mode) {}
  engine::AnyEngine engine;
  const engine::ShutdownMode destroy_mode;
};

struct TicketObject {
  engine::Ticket ticket;
  std::weak_ptr<EngineObject> engine;
  // The result's device as text, made once the result is in (the result itself never changes).
  mutable std::once_flag device_once;
  mutable std::string device;
};

struct MonitorObject {
  std::shared_ptr<monitor::PerformanceMonitor> monitor;
  ~MonitorObject() { monitor->stop(); }
};

struct LeaseObject {
  models::Lease lease;
};

// One run of a C workflow's batch, for the run-context functions. `finished` is set (under the
// mutex) when the run callback returns, so a call racing with the end sees a dead context, never
// a dangling engine::Context.
struct RunState {
  RunState(engine::Context& context, std::size_t requests) : context(&context), outputs(requests) {}
  std::mutex mutex;
  engine::Context* context;
  bool finished = false;
  std::vector<engine::Outputs> outputs;
  std::exception_ptr cancelled;  // Context::step's Error(Cancelled), rethrown after the run
  std::string error;
};

template <class Object>
HandleTable<Object>& table(HandleType type, const char* name) {
  // Never destroyed: handles a program leaks must not be torn down after libtorch at exit.
  static auto* instance = new HandleTable<Object>(type, name);
  return *instance;
}
HandleTable<EngineObject>& engines() {
  return table<EngineObject>(HandleType::engine, "apo_engine");
}
HandleTable<TicketObject>& tickets() {
  return table<TicketObject>(HandleType::ticket, "apo_ticket");
}
HandleTable<RunState>& run_contexts() {
  return table<RunState>(HandleType::run_context, "apo_run_context");
}
HandleTable<LeaseObject>& leases() {
  return table<LeaseObject>(HandleType::model_lease, "apo_model_lease");
}
HandleTable<MonitorObject>& monitors() {
  return table<MonitorObject>(HandleType::monitor, "apo_monitor");
}

// ---- Run contexts ----------------------------------------------------------------------------

// Runs `body` on the live run state of `context`, holding its mutex.
template <class Body>
apo_status with_run(apo_run_context* context, Body&& body) noexcept {
  return guarded([&] {
    const auto state = lookup(run_contexts(), context, "context");
    const std::lock_guard lock(state->mutex);
    require(!state->finished, "context is not a live apo_run_context (its run has returned)");
    body(*state);
  });
}

void check_index(const RunState& state, std::size_t index) {
  if (index >= state.outputs.size()) {
    fail(ErrorCode::InvalidArgument, "index {} is past the batch's {} request(s)", index,
         state.outputs.size());
  }
}

// ---- Workflows written in C ------------------------------------------------------------------

apo_request_info info_of(const Request& request) {
  apo_request_info info{};
  info.struct_size = sizeof(apo_request_info);
  info.quality = static_cast<std::int32_t>(request.quality);
  info.request_id = request.id;
  info.workflow = request.workflow.c_str();
  info.prompt = request.prompt.c_str();
  info.negative_prompt = request.negative_prompt.c_str();
  info.width = request.width;
  info.height = request.height;
  info.frames = request.frames;
  info.steps = request.steps.value_or(0);
  info.guidance = request.guidance.value_or(std::numeric_limits<double>::quiet_NaN());
  info.seed = request.seed;
  info.priority = request.priority;
  info.inputs = request.inputs();
  info.strength = request.strength;
  return info;
}

struct CWorkflowParts {
  std::string name;
  std::vector<engine::ModelNeed> models;
};

CWorkflowParts parts_of(const apo_workflow_callbacks& callbacks) {
  CWorkflowParts parts;
  parts.name = callbacks.name;
  require(!parts.name.empty(), "callbacks->name is empty");
  if (callbacks.model_count > 0) {
    require(callbacks.model_roles != nullptr && callbacks.model_paths != nullptr,
            "callbacks->model_roles or model_paths is NULL but model_count is not 0");
  }
  for (std::size_t i = 0; i < callbacks.model_count; ++i) {
    require(callbacks.model_roles[i] != nullptr && callbacks.model_paths[i] != nullptr,
            "callbacks->model_roles or model_paths has a NULL entry");
    engine::ModelNeed need;
    need.role = callbacks.model_roles[i];
    need.ref.path = callbacks.model_paths[i];
    need.ref.workflow = parts.name;
    const char* kind = callbacks.model_kinds == nullptr ? nullptr : callbacks.model_kinds[i];
    if (kind != nullptr) {
      const auto parsed = parse_enum<models::ModelKind>(kind);
      if (!parsed) {
        fail(ErrorCode::InvalidArgument,
             "callbacks->model_kinds[{}] \"{}\" is not one of text_encoder, vae, diffusion, "
             "lora, other",
             i, kind);
      }
      need.ref.kind = *parsed;
    }
    parts.models.push_back(std::move(need));
  }
  return parts;
}

// engine::Workflow over a struct of C callbacks. Owns the user data: destroy_user_data runs when
// the engine drops the workflow.
class CWorkflow final : public engine::Workflow {
 public:
  CWorkflow(CWorkflowParts parts, const apo_workflow_callbacks& callbacks) noexcept
      : parts_(std::move(parts)),
        user_data_(callbacks.user_data),
        memory_estimate_(callbacks.memory_estimate),
        run_(callbacks.run),
        destroy_(callbacks.destroy_user_data) {}
  ~CWorkflow() override {
    if (destroy_ != nullptr) destroy_(user_data_);
  }
  CWorkflow(const CWorkflow&) = delete;
  CWorkflow& operator=(const CWorkflow&) = delete;

  std::string name() const override { return parts_.name; }

  std::vector<engine::ModelNeed> models(const Request& /*request*/) const override {
    return parts_.models;
  }

  std::int64_t memory_estimate(const Request& request) const override {
    if (memory_estimate_ == nullptr) return 0;
    const apo_request_info info = info_of(request);
    const std::int64_t bytes = memory_estimate_(user_data_, &info);
    if (bytes < 0) {
      fail(ErrorCode::InvalidArgument, "workflow {}'s memory_estimate returned {} bytes",
           parts_.name, bytes);
    }
    return bytes;
  }

  std::vector<engine::Outputs> run(std::span<const Request> batch,
                                   engine::Context& context) override {
    std::vector<apo_request_info> infos;
    infos.reserve(batch.size());
    for (const Request& request : batch) infos.push_back(info_of(request));
    auto state = std::make_shared<RunState>(context, batch.size());
    const std::uintptr_t handle = run_contexts().add(state);
    apo_status status = APO_STATUS_INTERNAL;
    try {
      status =
          run_(user_data_, handle_pointer<apo_run_context>(handle), infos.data(), infos.size());
    } catch (...) {
      // A C callback cannot throw; a C++ one compiled into it might.
      status = APO_STATUS_INTERNAL;
      state->error = "the run callback threw an exception";
    }
    run_contexts().remove(handle);
    {
      const std::lock_guard lock(state->mutex);
      state->finished = true;
    }
    if (state->cancelled) std::rethrow_exception(state->cancelled);
    if (status == APO_STATUS_OK) return std::move(state->outputs);
    std::string message = state->error.empty() ? fmt::format("workflow {}'s run returned {}",
                                                             parts_.name, apo_status_name(status))
                                               : state->error;
    const int code = static_cast<int>(status);
    const bool known = code >= static_cast<int>(ErrorCode::InvalidArgument) &&
                       code <= static_cast<int>(ErrorCode::Internal);
    throw Error(known ? static_cast<ErrorCode>(code) : ErrorCode::Internal, std::move(message),
                "workflow " + parts_.name);
  }

 private:
  const CWorkflowParts parts_;
  void* const user_data_;
  std::int64_t (*const memory_estimate_)(void*, const apo_request_info*);
  apo_status (*const run_)(void*, apo_run_context*, const apo_request_info*, std::size_t);
  void (*const destroy_)(void*);
};

// ---- Requests and results ----------------------------------------------------------------------

at::Tensor input_copy(const DLManagedTensorVersioned* tensor, const char* argument) {
  if (tensor == nullptr) return {};
  return borrow_tensor(tensor, argument).clone(at::MemoryFormat::Contiguous);
}

Request request_of(const apo_request_options& options) {
  require(options.workflow != nullptr, "options->workflow is NULL");
  Request request;
  request.workflow = options.workflow;
  if (options.prompt != nullptr) request.prompt = options.prompt;
  if (options.negative_prompt != nullptr) request.negative_prompt = options.negative_prompt;
  request.width = options.width;
  request.height = options.height;
  request.frames = options.frames;
  if (options.steps < 0) fail(ErrorCode::InvalidArgument, "options->steps is {}", options.steps);
  if (options.steps > 0) request.steps = options.steps;
  if (!std::isnan(options.guidance)) request.guidance = options.guidance;
  request.seed = options.seed;
  request.priority = options.priority;
  const int quality = options.quality;
  if (quality < APO_QUALITY_SPEED_FIRST || quality > APO_QUALITY_QUALITY_FIRST) {
    fail(ErrorCode::InvalidArgument, "options->quality is {}, not an apo_quality_level", quality);
  }
  request.quality = static_cast<QualityLevel>(options.quality);
  if (options.deadline_ms > 0) {
    request.deadline =
        SteadyClock::instance().now() + std::chrono::milliseconds(options.deadline_ms);
  }
  request.strength = options.strength;
  request.image = input_copy(options.image, "options->image");
  request.mask = input_copy(options.mask, "options->mask");
  request.first_frame = input_copy(options.first_frame, "options->first_frame");
  return request;
}

apo_status status_of(engine::Status status) {
  const auto code = engine::error_code(status);
  return code ? static_cast<apo_status>(*code) : APO_STATUS_OK;
}

double seconds(Clock::duration duration) {
  return std::chrono::duration<double>(duration).count();
}

// The result of a ticket whose result is in, or NOT_READY.
template <class Body>
apo_status with_result(const apo_ticket* ticket, Body&& body) noexcept {
  std::shared_ptr<TicketObject> object;
  apo_status status = guarded([&] { object = lookup(tickets(), ticket, "ticket"); });
  if (status != APO_STATUS_OK) return status;
  int ready = 0;
  status = guarded([&] { ready = object->ticket.ready() ? 1 : 0; });
  if (status != APO_STATUS_OK) return status;
  if (ready == 0) {
    return set_error(APO_STATUS_NOT_READY,
                     "the ticket's result is not in yet (apo_ticket_poll, apo_ticket_wait)");
  }
  return guarded([&] { body(*object, object->ticket.wait()); });
}

nlohmann::json json_of(const models::CacheStats& stats) {
  return {{"hits", stats.hits},
          {"misses", stats.misses},
          {"loads", stats.loads},
          {"promotions", stats.promotions},
          {"demotions", stats.demotions},
          {"evictions", stats.evictions},
          {"bytes_read", stats.bytes_read},
          {"bytes_moved", stats.bytes_moved},
          {"load_seconds", stats.load_seconds},
          {"lora_applications", stats.lora_applications},
          {"conversions_written", stats.conversions_written},
          {"conversions_read", stats.conversions_read}};
}

}  // namespace
}  // namespace apo::capi

using namespace apo::capi;
namespace engine = apo::engine;

extern "C" {

void apo_engine_options_init(apo_engine_options* options) {
  if (options == nullptr) return;
  *options = apo_engine_options{};
  options->struct_size = sizeof(apo_engine_options);
  options->destroy_mode = APO_SHUTDOWN_CANCEL;
}

apo_status apo_engine_create(const apo_config* config, const apo_engine_options* options,
                             apo_engine** out_engine) {
  return guarded([&] {
    require(out_engine != nullptr, "out_engine is NULL");
    engine::ShutdownMode mode = engine::ShutdownMode::cancel;
    if (options != nullptr) {
      require_struct(options, kApoEngineOptionsV1Size, "options");
      const int destroy_mode = options->destroy_mode;
      require(destroy_mode == APO_SHUTDOWN_CANCEL || destroy_mode == APO_SHUTDOWN_DRAIN,
              "options->destroy_mode is not an apo_shutdown_mode");
      if (options->destroy_mode == APO_SHUTDOWN_DRAIN) mode = engine::ShutdownMode::drain;
    }
    const apo::Config effective = config == nullptr ? apo::Config{} : *config_of(config);
    auto object = std::make_shared<EngineObject>(effective, mode);
    *out_engine = handle_pointer<apo_engine>(engines().add(std::move(object)));
  });
}

apo_status apo_engine_shutdown(apo_engine* engine, apo_shutdown_mode mode) {
  return guarded([&] {
    const auto object = lookup(engines(), engine, "engine");
    const int raw_mode = enum_value(mode);
    require(raw_mode == APO_SHUTDOWN_CANCEL || raw_mode == APO_SHUTDOWN_DRAIN,
            "mode is not an apo_shutdown_mode");
    object->engine.shutdown(mode == APO_SHUTDOWN_DRAIN ? engine::ShutdownMode::drain
                                                       : engine::ShutdownMode::cancel);
  });
}

void apo_engine_destroy(apo_engine* engine) {
  try {
    std::shared_ptr<EngineObject> object = engines().remove(handle_value(engine));
    if (object == nullptr) return;
    // Shut down here, on the caller's thread: the last reference may be dropped by another
    // caller's thread, which must not be left joining the engine's threads.
    object->engine.shutdown(object->destroy_mode);
  } catch (...) {
    // Releasing never fails; the engine's destructor ends what shutdown could not.
  }
}

apo_status apo_engine_stats_json(apo_engine* engine, char** out_json) {
  return guarded([&] {
    const auto object = lookup(engines(), engine, "engine");
    require(out_json != nullptr, "out_json is NULL");
    const engine::EngineStats stats = object->engine.stats();
    nlohmann::json devices = nlohmann::json::array();
    for (std::size_t i = 0; i < object->engine.device_count(); ++i) {
      const apo::memory::LedgerSnapshot memory = object->engine.memory(i);
      devices.push_back({{"device", object->engine.device(i).str()},
                         {"budget_bytes", memory.budget_bytes},
                         {"used_bytes", memory.used_bytes},
                         {"peak_used_bytes", memory.peak_used_bytes}});
    }
    const nlohmann::json json{{"submitted", stats.submitted},
                              {"completed", stats.completed},
                              {"cancelled", stats.cancelled},
                              {"timed_out", stats.timed_out},
                              {"rejected", stats.rejected},
                              {"out_of_memory", stats.out_of_memory},
                              {"failed", stats.failed},
                              {"batches", stats.batches},
                              {"oom_splits", stats.oom_splits},
                              {"queued", stats.queued},
                              {"running", stats.running},
                              {"policies", object->engine.policies()},
                              {"devices", devices}};
    *out_json = copy_string(json.dump(2));
  });
}

apo_status apo_engine_add_reference_workflows(apo_engine* engine, const char* models_dir) {
  return guarded([&] {
    const auto object = lookup(engines(), engine, "engine");
#ifdef APO_WITH_REFERENCE
    apo::ref::ReferenceWorkflowOptions options;
    // A relative directory means the caller's working directory, not the model cache's root.
    options.models_dir = models_dir == nullptr ? apo::ref::default_models_dir()
                                               : std::filesystem::absolute(models_dir);
    options.config = object->engine.config();
    for (auto& workflow : apo::ref::make_reference_workflows(options)) {
      object->engine.add_workflow(std::move(workflow));
    }
#else
    (void)models_dir;
    (void)object;
    throw apo::Error(apo::ErrorCode::Unsupported,
                     "this build of apo has no reference workflows (APO_WITH_REFERENCE=OFF)");
#endif
  });
}

void apo_workflow_callbacks_init(apo_workflow_callbacks* callbacks) {
  if (callbacks == nullptr) return;
  *callbacks = apo_workflow_callbacks{};
  callbacks->struct_size = sizeof(apo_workflow_callbacks);
}

apo_status apo_engine_add_workflow(apo_engine* engine, const apo_workflow_callbacks* callbacks) {
  apo_status status = guarded([&] {
    require_struct(callbacks, kApoWorkflowCallbacksV1Size, "callbacks");
    require(callbacks->name != nullptr, "callbacks->name is NULL");
    require(callbacks->run != nullptr, "callbacks->run is NULL");
  });
  if (status != APO_STATUS_OK) return status;
  // From here on apo owns the user data: every failure path destroys it, through the workflow's
  // destructor once the workflow exists.
  std::shared_ptr<engine::Workflow> workflow;
  status =
      guarded([&] { workflow = std::make_shared<CWorkflow>(parts_of(*callbacks), *callbacks); });
  if (status != APO_STATUS_OK) {
    if (callbacks->destroy_user_data != nullptr) callbacks->destroy_user_data(callbacks->user_data);
    return status;
  }
  return guarded([&] {
    const auto object = lookup(engines(), engine, "engine");
    object->engine.add_workflow(std::move(workflow));
  });
}

apo_status apo_run_step(apo_run_context* context, int32_t step, int32_t steps) {
  apo_status status = APO_STATUS_OK;
  const apo_status call = with_run(context, [&](RunState& state) {
    if (state.cancelled) {
      status = APO_STATUS_CANCELLED;
      return;
    }
    try {
      state.context->step(step, steps);
    } catch (const apo::Error& error) {
      if (error.code() != apo::ErrorCode::Cancelled) throw;
      state.cancelled = std::current_exception();
      status = APO_STATUS_CANCELLED;
    }
  });
  if (call != APO_STATUS_OK) return call;
  if (status == APO_STATUS_CANCELLED) {
    return set_error(APO_STATUS_CANCELLED, "every request of the batch was cancelled");
  }
  return APO_STATUS_OK;
}

apo_status apo_run_cancelled(apo_run_context* context, size_t index, int* out_cancelled) {
  return with_run(context, [&](RunState& state) {
    check_index(state, index);
    require(out_cancelled != nullptr, "out_cancelled is NULL");
    *out_cancelled = state.context->cancelled(index) ? 1 : 0;
  });
}

apo_status apo_run_set_output(apo_run_context* context, size_t index, const char* name,
                              DLManagedTensorVersioned* tensor) {
  // Take the tensor first: it is consumed whatever else is wrong.
  at::Tensor output;
  const apo_status taken = guarded([&] { output = consume_tensor(tensor, "tensor"); });
  return with_run(context, [&](RunState& state) {
    if (taken != APO_STATUS_OK) throw apo::Error(apo::ErrorCode::InvalidArgument, apo_last_error());
    check_index(state, index);
    require(name != nullptr, "name is NULL");
    require(name[0] != '\0', "name is empty");
    state.outputs[index][name] = std::move(output);
  });
}

apo_status apo_run_input(apo_run_context* context, size_t index, const char* name,
                         DLManagedTensorVersioned** out_tensor) {
  return with_run(context, [&](RunState& state) {
    check_index(state, index);
    require(name != nullptr, "name is NULL");
    require(out_tensor != nullptr, "out_tensor is NULL");
    const apo::Request& request = state.context->requests()[index];
    const std::string_view which(name);
    const at::Tensor* input = which == "image"         ? &request.image
                              : which == "mask"        ? &request.mask
                              : which == "first_frame" ? &request.first_frame
                                                       : nullptr;
    if (input == nullptr) {
      apo::fail(apo::ErrorCode::InvalidArgument,
                "name \"{}\" is not one of image, mask, first_frame", which);
    }
    if (!input->defined()) {
      apo::fail(apo::ErrorCode::NotFound, "request {} has no {}", request.id, which);
    }
    *out_tensor = export_tensor(*input, true);
  });
}

apo_status apo_run_model_weight(apo_run_context* context, const char* role, const char* name,
                                DLManagedTensorVersioned** out_tensor) {
  return with_run(context, [&](RunState& state) {
    require(role != nullptr, "role is NULL");
    require(name != nullptr, "name is NULL");
    require(out_tensor != nullptr, "out_tensor is NULL");
    *out_tensor = export_tensor(state.context->model(role).dense(name).cpu(), false);
  });
}

apo_status apo_run_set_quality(apo_run_context* context, size_t index, double score) {
  return with_run(context, [&](RunState& state) {
    check_index(state, index);
    require(score >= 0 && score <= 1, "score is not in [0, 1]");
    state.context->set_quality(index, score);
  });
}

apo_status apo_run_set_error(apo_run_context* context, const char* message) {
  return with_run(context, [&](RunState& state) {
    require(message != nullptr, "message is NULL");
    state.error = message;
  });
}

void apo_request_options_init(apo_request_options* options) {
  if (options == nullptr) return;
  *options = apo_request_options{};
  options->struct_size = sizeof(apo_request_options);
  options->quality = APO_QUALITY_BALANCED;
  options->width = 1024;
  options->height = 1024;
  options->frames = 1;
  options->guidance = std::numeric_limits<double>::quiet_NaN();
  options->strength = 1.0;
}

apo_status apo_engine_submit(apo_engine* engine, const apo_request_options* options,
                             apo_ticket** out_ticket) {
  return guarded([&] {
    const auto object = lookup(engines(), engine, "engine");
    require_struct(options, kApoRequestOptionsV1Size, "options");
    require(out_ticket != nullptr, "out_ticket is NULL");
    apo::Request request = request_of(*options);
    engine::Callbacks callbacks;
    if (options->on_progress != nullptr) {
      callbacks.on_progress = [fn = options->on_progress, user_data = options->progress_user_data](
                                  apo::RequestId id, int step, int steps) {
        fn(user_data, id, step, steps);
      };
    }
    auto ticket = std::make_shared<TicketObject>();
    ticket->engine = object;
    ticket->ticket = object->engine.submit(std::move(request), std::move(callbacks));
    *out_ticket = handle_pointer<apo_ticket>(tickets().add(std::move(ticket)));
  });
}

apo_status apo_ticket_id(const apo_ticket* ticket, uint64_t* out_id) {
  return guarded([&] {
    const auto object = lookup(tickets(), ticket, "ticket");
    require(out_id != nullptr, "out_id is NULL");
    *out_id = object->ticket.id();
  });
}

apo_status apo_ticket_poll(const apo_ticket* ticket, int* out_ready) {
  return guarded([&] {
    const auto object = lookup(tickets(), ticket, "ticket");
    require(out_ready != nullptr, "out_ready is NULL");
    *out_ready = object->ticket.ready() ? 1 : 0;
  });
}

apo_status apo_ticket_wait(const apo_ticket* ticket, uint32_t timeout_ms) {
  bool ready = false;
  const apo_status status = guarded([&] {
    const auto object = lookup(tickets(), ticket, "ticket");
    if (timeout_ms == UINT32_MAX) {
      object->ticket.wait();
      ready = true;
    } else {
      ready = object->ticket.future().wait_for(std::chrono::milliseconds(timeout_ms)) ==
              std::future_status::ready;
    }
  });
  if (status != APO_STATUS_OK) return status;
  if (!ready) {
    return set_error(APO_STATUS_TIMED_OUT,
                     fmt::format("the result did not come within {} ms", timeout_ms));
  }
  return APO_STATUS_OK;
}

apo_status apo_ticket_cancel(apo_ticket* ticket) {
  return guarded([&] {
    const auto object = lookup(tickets(), ticket, "ticket");
    if (const auto owner = object->engine.lock()) owner->engine.cancel(object->ticket.id());
  });
}

void apo_ticket_free(apo_ticket* ticket) {
  try {
    tickets().remove(handle_value(ticket));
  } catch (...) {
    // Releasing never fails; a handle that is not live is ignored.
  }
}

apo_status apo_ticket_result(const apo_ticket* ticket, apo_result_info* info) {
  return with_result(ticket, [&](const TicketObject& object, const engine::Result& result) {
    require_struct(info, kApoResultInfoV1Size, "info");
    std::call_once(object.device_once, [&] {
      object.device = result.decisions.batch_size == 0 ? "" : result.decisions.device.str();
    });
    apo_result_info full{};
    full.status = status_of(result.status);
    full.request_id = result.id;
    full.message = result.message.c_str();
    full.device = object.device.c_str();
    full.queue_wait_s = seconds(result.timings.queue_wait);
    full.model_load_s = seconds(result.timings.model_load);
    full.encode_s = seconds(result.timings.encode);
    full.denoise_s = seconds(result.timings.denoise);
    full.decode_s = seconds(result.timings.decode);
    full.total_s = seconds(result.timings.total);
    full.peak_memory_bytes = result.peak_memory_bytes;
    full.has_quality = result.quality ? 1 : 0;
    full.quality = result.quality.value_or(0.0);
    full.batch_size = static_cast<std::uint32_t>(result.decisions.batch_size);
    full.output_count = result.outputs.size();
    // Fill what both sides know, and keep the caller's struct_size.
    const std::size_t size = std::min<std::size_t>(info->struct_size, sizeof full);
    std::memcpy(reinterpret_cast<char*>(info) + sizeof(std::uint32_t),
                reinterpret_cast<const char*>(&full) + sizeof(std::uint32_t),
                size - sizeof(std::uint32_t));
  });
}

apo_status apo_ticket_output_name(const apo_ticket* ticket, size_t index, const char** out_name) {
  return with_result(ticket, [&](const TicketObject&, const engine::Result& result) {
    require(out_name != nullptr, "out_name is NULL");
    if (index >= result.outputs.size()) {
      apo::fail(apo::ErrorCode::InvalidArgument, "index {} is past the result's {} output(s)",
                index, result.outputs.size());
    }
    *out_name =
        std::next(result.outputs.begin(), static_cast<std::ptrdiff_t>(index))->first.c_str();
  });
}

apo_status apo_ticket_output(const apo_ticket* ticket, const char* name,
                             DLManagedTensorVersioned** out_tensor) {
  return with_result(ticket, [&](const TicketObject&, const engine::Result& result) {
    require(name != nullptr, "name is NULL");
    require(out_tensor != nullptr, "out_tensor is NULL");
    const auto found = result.outputs.find(name);
    if (found == result.outputs.end()) {
      apo::fail(apo::ErrorCode::NotFound, "the result has no output \"{}\"", name);
    }
    *out_tensor = export_tensor(found->second, true);
  });
}

void apo_model_options_init(apo_model_options* options) {
  if (options == nullptr) return;
  *options = apo_model_options{};
  options->struct_size = sizeof(apo_model_options);
}

apo_status apo_engine_acquire_model(apo_engine* engine, const apo_model_options* options,
                                    apo_model_lease** out_lease) {
  return guarded([&] {
    const auto object = lookup(engines(), engine, "engine");
    require_struct(options, kApoModelOptionsV1Size, "options");
    require(out_lease != nullptr, "out_lease is NULL");
    require(options->path != nullptr, "options->path is NULL");
    if (options->device_index >= object->engine.device_count()) {
      apo::fail(apo::ErrorCode::InvalidArgument,
                "options->device_index {} is past the engine's {} device(s)", options->device_index,
                object->engine.device_count());
    }
    apo::models::ModelRef ref;
    ref.path = options->path;
    if (options->kind != nullptr) {
      const auto kind = apo::parse_enum<apo::models::ModelKind>(options->kind);
      if (!kind) {
        apo::fail(apo::ErrorCode::InvalidArgument,
                  "options->kind \"{}\" is not one of text_encoder, vae, diffusion, lora, other",
                  options->kind);
      }
      ref.kind = *kind;
    }
    if (options->precision != nullptr) {
      const auto precision = apo::parse_enum<apo::Precision>(options->precision);
      if (!precision) {
        apo::fail(apo::ErrorCode::InvalidArgument,
                  "options->precision \"{}\" is not one of fp32, fp16, bf16, fp8_e4m3, "
                  "fp8_e5m2, int8, auto",
                  options->precision);
      }
      ref.precision = *precision;
    }
    if (options->workflow != nullptr) ref.workflow = options->workflow;
    auto lease = std::make_shared<LeaseObject>();
    lease->lease =
        object->engine.models().acquire(ref, object->engine.device(options->device_index));
    *out_lease = handle_pointer<apo_model_lease>(leases().add(std::move(lease)));
  });
}

apo_status apo_model_lease_weight(const apo_model_lease* lease, const char* name,
                                  DLManagedTensorVersioned** out_tensor) {
  return guarded([&] {
    const auto object = lookup(leases(), lease, "lease");
    require(name != nullptr, "name is NULL");
    require(out_tensor != nullptr, "out_tensor is NULL");
    *out_tensor = export_tensor(object->lease.model().dense(name).cpu(), false);
  });
}

void apo_model_lease_release(apo_model_lease* lease) {
  try {
    leases().remove(handle_value(lease));
  } catch (...) {
    // Releasing never fails; a handle that is not live is ignored.
  }
}

apo_status apo_engine_models_json(apo_engine* engine, char** out_json) {
  return guarded([&] {
    const auto object = lookup(engines(), engine, "engine");
    require(out_json != nullptr, "out_json is NULL");
    apo::models::ModelCache& cache = object->engine.models();
    nlohmann::json residents = nlohmann::json::array();
    for (const apo::models::ResidentModel& model : cache.residents()) {
      residents.push_back({{"path", model.path},
                           {"kind", apo::to_string(model.kind)},
                           {"precision", apo::to_string(model.precision)},
                           {"storage", apo::quant::to_string(model.spec)},
                           {"device", model.device.str()},
                           {"host_tier", model.host_tier},
                           {"scope", model.scope},
                           {"bytes", model.bytes},
                           {"leases", model.leases}});
    }
    const nlohmann::json json{{"stats", json_of(cache.stats())},
                              {"host_used_bytes", cache.host_used_bytes()},
                              {"residents", residents}};
    *out_json = copy_string(json.dump(2));
  });
}

apo_status apo_monitor_create(const apo_config* config, int start_sampler,
                              apo_monitor** out_monitor) {
  return guarded([&] {
    require(out_monitor != nullptr, "out_monitor is NULL");
    const apo::Config effective = config == nullptr ? apo::Config{} : *config_of(config);
    auto object = std::make_shared<MonitorObject>();
    object->monitor = std::make_shared<apo::monitor::PerformanceMonitor>(
        effective.monitoring, effective.target_generation_time_s, apo::SteadyClock::instance());
    if (start_sampler != 0) object->monitor->start();
    *out_monitor = handle_pointer<apo_monitor>(monitors().add(std::move(object)));
  });
}

apo_status apo_engine_attach_monitor(apo_engine* engine, apo_monitor* monitor) {
  return guarded([&] {
    const auto object = lookup(engines(), engine, "engine");
    if (monitor == nullptr) {
      object->engine.set_monitor(nullptr);
      return;
    }
    object->engine.set_monitor(lookup(monitors(), monitor, "monitor")->monitor);
  });
}

apo_status apo_monitor_sample(apo_monitor* monitor) {
  return guarded([&] { lookup(monitors(), monitor, "monitor")->monitor->sample_now(); });
}

apo_status apo_monitor_report_json(apo_monitor* monitor, char** out_json) {
  return guarded([&] {
    const auto object = lookup(monitors(), monitor, "monitor");
    require(out_json != nullptr, "out_json is NULL");
    *out_json = copy_string(apo::monitor::to_json(object->monitor->report()));
  });
}

void apo_monitor_free(apo_monitor* monitor) {
  try {
    monitors().remove(handle_value(monitor));
  } catch (...) {
    // Releasing never fails; a handle that is not live is ignored.
  }
}

}  // extern "C"

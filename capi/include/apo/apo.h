/*
 * apo's C ABI (C99): configurations, the engine (workflows written in C or the reference ones,
 * requests, tickets, results), the model cache, the performance monitor and the quantizers, with
 * tensors crossing as DLPack. Stable and append-only: functions, enum values and struct fields
 * (at the end of a struct) are only ever added; APO_ABI_VERSION changes only if that promise
 * is ever broken.
 *
 * Rules that hold for every function:
 * - Status: every call that can fail returns apo_status; apo_last_error() then has the message
 *   for this thread. A failed call leaves its output parameters untouched. No C++ exception ever
 *   crosses the boundary.
 * - Handles (apo_config*, apo_engine*, apo_ticket*, ...) are opaque pointer-sized values that
 *   encode a slot of a per-type table and the slot's generation; apo never dereferences them.
 *   NULL, a handle already freed, and a handle of another type are reported as
 *   APO_STATUS_INVALID_ARGUMENT and never followed. Freeing a handle bumps its slot's generation,
 *   so a stale handle stays invalid even when the slot is reused. Any other value (garbage) is
 *   detected as long as it does not happen to decode to a live slot and generation of that type.
 *   Freeing a handle while another thread is inside a call that uses it is safe: the object
 *   lives until that call returns.
 * - Release functions (*_free, *_destroy, *_release) return void and ignore NULL and stale
 *   handles.
 * - Structs begin with uint32_t struct_size. For a struct the caller passes in, set it to
 *   sizeof the struct (the *_init functions do, and set every field to its default): apo reads
 *   only the fields it knows, so a newer, larger struct is accepted (the fields apo does not
 *   know are ignored); one smaller than version 1 of the struct is APO_STATUS_INVALID_ARGUMENT.
 *   For a struct apo fills in (apo_result_info), apo writes min(struct_size, its own size) bytes.
 * - Strings are UTF-8. Strings apo returns through char** are the caller's: free them with
 *   apo_string_free. Strings apo returns through const char** are owned by the handle named.
 * - Tensors cross as DLPack (DLManagedTensorVersioned, DLPack 1.x): include dlpack.h yourself
 *   (libtorch ships it as ATen/dlpack.h). Each function says whether it borrows a tensor (apo
 *   copies what it keeps; the caller still owns it) or consumes it (apo calls its deleter, in
 *   every case, also when the call fails). Tensors apo returns are the caller's: call their
 *   deleter. Only CPU tensors are accepted in this version.
 * - Threads: every function may be called from any thread unless its comment says otherwise.
 *   Callbacks (workflow callbacks, progress) run on the engine's threads; they must not destroy
 *   the engine that called them.
 */
#ifndef APO_APO_H
#define APO_APO_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#if defined(APO_BUILDING_LIBRARY)
#define APO_API __declspec(dllexport)
#else
#define APO_API __declspec(dllimport)
#endif
#else
#define APO_API __attribute__((visibility("default")))
#endif

/* The version of the ABI this header describes; apo_abi_version() gives the library's. */
#define APO_ABI_VERSION 1

#ifdef __cplusplus
extern "C" {
#endif

struct DLManagedTensorVersioned;

/* Status codes; the values 1 to 12 equal apo::ErrorCode (NOT_READY is the ABI's own). */
typedef enum apo_status {
  APO_STATUS_OK = 0,
  APO_STATUS_INVALID_ARGUMENT = 1,
  APO_STATUS_INVALID_CONFIG = 2,
  APO_STATUS_NOT_FOUND = 3,
  APO_STATUS_IO = 4,
  APO_STATUS_CORRUPT = 5,
  APO_STATUS_UNSUPPORTED = 6,
  APO_STATUS_OUT_OF_MEMORY = 7,
  APO_STATUS_CANCELLED = 8,
  APO_STATUS_TIMED_OUT = 9,
  APO_STATUS_REJECTED = 10,
  APO_STATUS_INTERNAL = 11,
  /* A request's workflow (or a model file it read) failed; its message says how. */
  APO_STATUS_WORKFLOW_FAILED = 12,
  /* The result of a ticket is not in yet (apo_ticket_result before it is ready). */
  APO_STATUS_NOT_READY = 13
} apo_status;

/* The library's version, "MAJOR.MINOR.PATCH". */
APO_API const char* apo_version(void);

/* The library's ABI version: compare it with APO_ABI_VERSION, the header's. */
APO_API uint32_t apo_abi_version(void);

/* The status's name, "INVALID_CONFIG"; "UNKNOWN" for a value this library does not know. */
APO_API const char* apo_status_name(apo_status status);

/* The message of the last failed call on this thread ("" when none has failed). The pointer is
 * valid until the next apo call on this thread. */
APO_API const char* apo_last_error(void);

/* Frees a string returned by apo. NULL is ignored. */
APO_API void apo_string_free(char* text);

/* ---- Configuration ---------------------------------------------------------------------- */

typedef struct apo_config apo_config;

typedef struct apo_config_options {
  uint32_t struct_size;       /* sizeof(apo_config_options) */
  const char* const* presets; /* preset names applied before the file or text; may be NULL */
  size_t preset_count;
  const char* const* overrides; /* "key.path=value", applied last; may be NULL */
  size_t override_count;
  int check_machine; /* nonzero: also check memory and cores against this machine */
} apo_config_options;

/* Sets every field to its default: no presets, no overrides, no machine check. NULL is
 * ignored. */
APO_API void apo_config_options_init(apo_config_options* options);

/* Loads a configuration file (JSON, comments allowed) over the built-in defaults. options may
 * be NULL. On APO_STATUS_INVALID_CONFIG, apo_last_error() lists every problem, one per line, as
 * "FILE:LINE: key.path: what is wrong". */
APO_API apo_status apo_config_load_file(const char* path, const apo_config_options* options,
                                        apo_config** out_config);

/* As apo_config_load_file, from text; source_name (may be NULL) names it in messages. */
APO_API apo_status apo_config_load_string(const char* json, const char* source_name,
                                          const apo_config_options* options,
                                          apo_config** out_config);

/* The effective configuration as canonical JSON; free it with apo_string_free. */
APO_API apo_status apo_config_to_json(const apo_config* config, char** out_json);

/* Frees a configuration. */
APO_API void apo_config_free(apo_config* config);

/* ---- Machine ------------------------------------------------------------------------------ */

/* This machine (CPU, memory, CUDA devices, NVML) as JSON; free it with apo_string_free. */
APO_API apo_status apo_probe_json(char** out_json);

/* ---- Engine ------------------------------------------------------------------------------- */

typedef struct apo_engine apo_engine;

/* How an engine ends the requests it still holds when it shuts down. */
typedef enum apo_shutdown_mode {
  APO_SHUTDOWN_CANCEL = 0, /* queued ones end CANCELLED now, running ones at their next step */
  APO_SHUTDOWN_DRAIN = 1   /* every queued and running request runs to its end first */
} apo_shutdown_mode;

typedef struct apo_engine_options {
  uint32_t struct_size;
  int32_t destroy_mode; /* an apo_shutdown_mode: what apo_engine_destroy does; default CANCEL */
} apo_engine_options;

/* Sets every field to its default. NULL is ignored. */
APO_API void apo_engine_options_init(apo_engine_options* options);

/* Starts an engine for `config` (NULL: the built-in defaults) on this machine. options may be
 * NULL. The engine's threads start here. */
APO_API apo_status apo_engine_create(const apo_config* config, const apo_engine_options* options,
                                     apo_engine** out_engine);

/* Stops taking requests (later submits end REJECTED), ends every request it holds (mode) and
 * joins the engine's threads. Idempotent. Must not be called from a callback of this engine. */
APO_API apo_status apo_engine_shutdown(apo_engine* engine, apo_shutdown_mode mode);

/* Shuts the engine down as its options' destroy_mode says and frees it. Tickets of its
 * requests stay valid (each has its result: those still queued or running end CANCELLED, or
 * run to their end with DRAIN). A call using the engine on another thread meanwhile finishes
 * first or fails cleanly. Must not be called from a callback of this engine. */
APO_API void apo_engine_destroy(apo_engine* engine);

/* The engine's counters (submitted, completed, cancelled, ..., queued, running), its devices
 * and its policies as JSON; free it with apo_string_free. */
APO_API apo_status apo_engine_stats_json(apo_engine* engine, char** out_json);

/* Adds the guide's eight reference workflows (hunyuan_t2v, hunyuan_i2v, wan_inpaint, wan_alpha,
 * newbie_anime, qwen_edit, qwen_relight, qwen_layered) on the reference models in models_dir
 * (NULL: $APO_REFERENCE_MODELS, else the source tree's assets/reference). A build without
 * them (APO_WITH_REFERENCE=OFF, as the sanitizer presets) returns APO_STATUS_UNSUPPORTED. */
APO_API apo_status apo_engine_add_reference_workflows(apo_engine* engine, const char* models_dir);

/* ---- Workflows written in C --------------------------------------------------------------- */

/* A request, as a workflow's callbacks see it. apo fills it in; struct_size is apo's size of it:
 * read only the fields below struct_size. Strings and the struct are valid during the callback
 * only. */
typedef struct apo_request_info {
  uint32_t struct_size;
  int32_t quality; /* an apo_quality_level */
  uint64_t request_id;
  const char* workflow;
  const char* prompt;
  const char* negative_prompt;
  int32_t width;
  int32_t height;
  int32_t frames;
  int32_t steps;   /* 0 when unset (memory_estimate runs before sampling is resolved) */
  double guidance; /* NaN when unset */
  uint64_t seed;
  int32_t priority;
  uint32_t inputs; /* bits: 1 image, 2 mask, 4 first frame (apo_run_input gives them) */
  double strength;
} apo_request_info;

/* The context of one run of a C workflow: a handle valid only while its run callback runs. Its
 * functions are for the thread running the callback (or threads it waits for). */
typedef struct apo_run_context apo_run_context;

typedef struct apo_workflow_callbacks {
  uint32_t struct_size;
  const char* name; /* the name requests give; copied */
  /* The models every request of the workflow needs, as three parallel arrays of model_count
   * entries (copied): the role the workflow names the model by, its file (relative paths are
   * found under storage_optimization.model_cache_path) and its kind ("text_encoder", "vae",
   * "diffusion", "lora" or "other"; model_kinds may be NULL: all "other"). The engine loads them
   * before run; apo_run_model_weight reads them. model_count may be 0. */
  const char* const* model_roles;
  const char* const* model_paths;
  const char* const* model_kinds;
  size_t model_count;
  void* user_data; /* passed to every callback */
  /* Device memory one request adds to a batch beyond the models, in bytes (NULL: 0). Called at
   * submit, on the submitting thread. A negative value fails the submit. */
  int64_t (*memory_estimate)(void* user_data, const apo_request_info* request);
  /* Runs a batch of `count` requests: for each, set its outputs with apo_run_set_output, call
   * apo_run_step at each step, and return APO_STATUS_OK. Any other status fails the batch:
   * APO_STATUS_OUT_OF_MEMORY makes the engine split the batch and retry (a request that runs out
   * alone ends OUT_OF_MEMORY), APO_STATUS_CANCELLED (after apo_run_step said so) ends the
   * requests cancelled, others end them WORKFLOW_FAILED with the message given to
   * apo_run_set_error. Called on the engine's worker threads, possibly several batches at once:
   * it must be thread-safe. Required. */
  apo_status (*run)(void* user_data, apo_run_context* context, const apo_request_info* requests,
                    size_t count);
  /* Called once when the engine drops the workflow (engine destroyed), or before
   * apo_engine_add_workflow returns an error after it validated this struct. May be NULL. */
  void (*destroy_user_data)(void* user_data);
} apo_workflow_callbacks;

/* Sets every field to its default (NULL, 0). NULL is ignored. */
APO_API void apo_workflow_callbacks_init(apo_workflow_callbacks* callbacks);

/* Registers a workflow made of C callbacks. From a call with a valid struct on, apo owns
 * user_data (see destroy_user_data). Fails with INVALID_ARGUMENT for a missing name or run, or a
 * name already taken. */
APO_API apo_status apo_engine_add_workflow(apo_engine* engine,
                                           const apo_workflow_callbacks* callbacks);

/* Reports step `step` of `steps` for the batch's requests (their progress callbacks) and is
 * where cancellation takes effect. Returns APO_STATUS_CANCELLED when every request of the batch
 * was cancelled: the run should return APO_STATUS_CANCELLED then. */
APO_API apo_status apo_run_step(apo_run_context* context, int32_t step, int32_t steps);

/* Whether request `index` of the batch was cancelled while running (its outputs will be
 * dropped; the run may skip it). */
APO_API apo_status apo_run_cancelled(apo_run_context* context, size_t index, int* out_cancelled);

/* Sets output `name` ("image", ...) of request `index`, replacing one set before. Consumes
 * `tensor` (in every case). */
APO_API apo_status apo_run_set_output(apo_run_context* context, size_t index, const char* name,
                                      struct DLManagedTensorVersioned* tensor);

/* The input `name` ("image", "mask" or "first_frame") of request `index` as a new DLPack
 * tensor the caller owns (a view of apo's copy: do not write to it). NOT_FOUND when the request
 * has none. */
APO_API apo_status apo_run_input(apo_run_context* context, size_t index, const char* name,
                                 struct DLManagedTensorVersioned** out_tensor);

/* The weight `name` of the model the workflow listed under `role`, dequantized to its source
 * dtype, as a new DLPack tensor the caller owns. */
APO_API apo_status apo_run_model_weight(apo_run_context* context, const char* role,
                                        const char* name,
                                        struct DLManagedTensorVersioned** out_tensor);

/* Scores request `index`'s output in [0, 1] (apo_result_info.quality). */
APO_API apo_status apo_run_set_quality(apo_run_context* context, size_t index, double score);

/* The message the requests end with when the run returns a failure status (copied). */
APO_API apo_status apo_run_set_error(apo_run_context* context, const char* message);

/* ---- Requests and tickets ----------------------------------------------------------------- */

typedef enum apo_quality_level {
  APO_QUALITY_SPEED_FIRST = 0,
  APO_QUALITY_BALANCED = 1,
  APO_QUALITY_QUALITY_FIRST = 2
} apo_quality_level;

typedef struct apo_ticket apo_ticket;

/* Called with (request, step, steps) as the request's workflow advances, on an engine worker
 * thread, while the engine is inside the run: keep it short, and do not destroy the engine from
 * it. Calls for one request come one at a time, in order. */
typedef void (*apo_progress_fn)(void* user_data, uint64_t request_id, int32_t step, int32_t steps);

typedef struct apo_request_options {
  uint32_t struct_size;
  int32_t quality;             /* an apo_quality_level; default BALANCED */
  const char* workflow;        /* required */
  const char* prompt;          /* NULL: "" */
  const char* negative_prompt; /* NULL: "" */
  int32_t width;               /* pixels; default 1024 */
  int32_t height;              /* pixels; default 1024 */
  int32_t frames;              /* 1 for an image; default 1 */
  int32_t steps;               /* 0: unset (the quality level and configuration decide) */
  double guidance;             /* NaN: unset (the default) */
  uint64_t seed;               /* default 0 */
  int32_t priority;            /* larger runs first; default 0 */
  uint32_t deadline_ms;        /* ends TIMED_OUT if still queued this long after submit; 0: none */
  double strength;             /* how much of the input image is repainted; default 1 */
  /* Optional inputs, borrowed: apo copies them during apo_engine_submit; the caller still owns
   * them (and may free them once submit returns). Images are float [channels, height, width]
   * in [0, 1]; a mask is [height, width] or [1, height, width]. NULL: none. */
  const struct DLManagedTensorVersioned* image;
  const struct DLManagedTensorVersioned* mask;
  const struct DLManagedTensorVersioned* first_frame;
  apo_progress_fn on_progress; /* NULL: none */
  void* progress_user_data;
} apo_request_options;

/* Sets every field to its default (above). NULL is ignored. */
APO_API void apo_request_options_init(apo_request_options* options);

/* Submits a request. A request that cannot run at all fails here (INVALID_ARGUMENT for a bad
 * field or input, NOT_FOUND for an unknown workflow); an accepted one gives a ticket that ends
 * exactly once: OK, or REJECTED (queue full, shutting down), TIMED_OUT, CANCELLED,
 * OUT_OF_MEMORY or WORKFLOW_FAILED. Free the ticket with apo_ticket_free. */
APO_API apo_status apo_engine_submit(apo_engine* engine, const apo_request_options* options,
                                     apo_ticket** out_ticket);

/* The engine's id of the ticket's request. */
APO_API apo_status apo_ticket_id(const apo_ticket* ticket, uint64_t* out_id);

/* Whether the result is in: *out_ready is 1 or 0. */
APO_API apo_status apo_ticket_poll(const apo_ticket* ticket, int* out_ready);

/* Waits up to timeout_ms for the result (UINT32_MAX: for ever): APO_STATUS_OK when it is in,
 * APO_STATUS_TIMED_OUT when it did not come in time. */
APO_API apo_status apo_ticket_wait(const apo_ticket* ticket, uint32_t timeout_ms);

/* Cancels the request: a queued one ends CANCELLED now, a running one at its next step. OK also
 * when it has already ended (its result says how) or its engine is gone. */
APO_API apo_status apo_ticket_cancel(apo_ticket* ticket);

/* Frees a ticket; its request runs on (cancel it first to stop it). */
APO_API void apo_ticket_free(apo_ticket* ticket);

/* How a request ended. Filled in by apo_ticket_result (set struct_size first). */
typedef struct apo_result_info {
  uint32_t struct_size;
  int32_t status; /* an apo_status: OK, CANCELLED, TIMED_OUT, REJECTED, OUT_OF_MEMORY or
                     WORKFLOW_FAILED */
  uint64_t request_id;
  const char* message; /* "" when OK; owned by the ticket */
  const char* device;  /* "cpu", "cuda:0" ("" if it never ran); owned by the ticket */
  /* Where its time went, in seconds: */
  double queue_wait_s; /* submit to the start of its batch */
  double model_load_s;
  double encode_s;
  double denoise_s;
  double decode_s;
  double total_s;            /* submit to result */
  int64_t peak_memory_bytes; /* the most its device's ledger held while it ran */
  double quality;            /* in [0, 1] when has_quality */
  int32_t has_quality;
  uint32_t batch_size; /* requests in its batch (0 if it never ran) */
  uint64_t output_count;
} apo_result_info;

/* The result, once it is in (APO_STATUS_NOT_READY before). The call succeeds whatever status the
 * request ended with: that is info->status. */
APO_API apo_status apo_ticket_result(const apo_ticket* ticket, apo_result_info* info);

/* The name of output `index` (< output_count), owned by the ticket. */
APO_API apo_status apo_ticket_output_name(const apo_ticket* ticket, size_t index,
                                          const char** out_name);

/* Output `name` as a new DLPack tensor the caller owns: a view of the result's CPU tensor (no
 * copy; marked read-only, as every such view shares the memory). NOT_FOUND for a name the result
 * does not have. */
APO_API apo_status apo_ticket_output(const apo_ticket* ticket, const char* name,
                                     struct DLManagedTensorVersioned** out_tensor);

/* ---- Model cache -------------------------------------------------------------------------- */

typedef struct apo_model_lease apo_model_lease;

typedef struct apo_model_options {
  uint32_t struct_size;
  uint32_t device_index; /* the engine's device (apo_engine_stats_json lists them); default 0 */
  const char* path; /* required; relative paths are under storage_optimization.model_cache_path */
  const char* kind; /* "text_encoder", "vae", "diffusion", "lora", "other" (NULL: other) */
  const char* precision; /* "fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8", "auto";
                            NULL: the configuration's */
  const char* workflow;  /* for the sharing rules; NULL: "" */
} apo_model_options;

/* Sets every field to its default. NULL is ignored. */
APO_API void apo_model_options_init(apo_model_options* options);

/* Keeps a model resident on a device of the engine while the lease lives, loading it if needed
 * (blocks until it is ready). */
APO_API apo_status apo_engine_acquire_model(apo_engine* engine, const apo_model_options* options,
                                            apo_model_lease** out_lease);

/* The leased model's weight `name`, dequantized to its source dtype, as a new DLPack tensor the
 * caller owns. */
APO_API apo_status apo_model_lease_weight(const apo_model_lease* lease, const char* name,
                                          struct DLManagedTensorVersioned** out_tensor);

/* Lets the model go (it may then be evicted). */
APO_API void apo_model_lease_release(apo_model_lease* lease);

/* The engine's model cache as JSON: its counters (hits, misses, loads, evictions, bytes read,
 * ...) and its resident models; free it with apo_string_free. */
APO_API apo_status apo_engine_models_json(apo_engine* engine, char** out_json);

/* ---- Performance monitor ------------------------------------------------------------------ */

typedef struct apo_monitor apo_monitor;

/* A performance monitor of `config`'s monitoring block (NULL: the defaults), sampling this
 * machine. It samples when asked (apo_monitor_sample) and, with start_sampler nonzero, on a
 * thread of its own every monitoring.sample_interval seconds. */
APO_API apo_status apo_monitor_create(const apo_config* config, int start_sampler,
                                      apo_monitor** out_monitor);

/* Reports the engine's requests and readings to `monitor` from now on (NULL: to none). */
APO_API apo_status apo_engine_attach_monitor(apo_engine* engine, apo_monitor* monitor);

/* Takes one sample now (the machine and the attached engines). */
APO_API apo_status apo_monitor_sample(apo_monitor* monitor);

/* The monitor's report (summaries, per-workflow figures, trends, alerts, recommendations) as
 * JSON; free it with apo_string_free. */
APO_API apo_status apo_monitor_report_json(apo_monitor* monitor, char** out_json);

/* Stops the monitor's sampler and frees it (an engine it is attached to keeps it until it is
 * detached or the engine is destroyed). */
APO_API void apo_monitor_free(apo_monitor* monitor);

/* ---- Quantization ------------------------------------------------------------------------- */

/* Quantizes `tensor` (borrowed; float32, float16 or bfloat16, CPU, finite, non-empty) to
 * `format` ("fp16", "bf16", "fp8_e4m3" (alias "fp8"), "fp8_e5m2", "int8" or "none") with
 * `scaling` ("per_row" (NULL: the default for fp8 and int8), "per_tensor"; unscaled formats
 * take NULL or "none"). *out_data gets the codes (same shape; float16, bfloat16, float8 or
 * int8); *out_scales the float32 scales ([rows] per row: rows is size(0) for two or more
 * dimensions, else 1; [1] per tensor), or NULL for an unscaled format. Both are the caller's. */
APO_API apo_status apo_quantize(const struct DLManagedTensorVersioned* tensor, const char* format,
                                const char* scaling, struct DLManagedTensorVersioned** out_data,
                                struct DLManagedTensorVersioned** out_scales);

/* Decodes what apo_quantize gave (borrowed; scales NULL for unscaled formats) into a new tensor
 * of `dtype` ("float32" (NULL), "float16" or "bfloat16") that the caller owns. */
APO_API apo_status apo_dequantize(const struct DLManagedTensorVersioned* data,
                                  const struct DLManagedTensorVersioned* scales, const char* format,
                                  const char* scaling, const char* dtype,
                                  struct DLManagedTensorVersioned** out_tensor);

#ifdef __cplusplus
}
#endif

#endif /* APO_APO_H */

/* The C ABI from a C99 program: every entry point, its error paths and its happy paths, with a
 * tiny workflow written in C (capi_test_support.h) so that the engine's paths run in seconds. */
#define _POSIX_C_SOURCE 200809L

#include <math.h>

#include "capi_test_support.h"

#define VAE_PATH APO_TEST_DATA_DIR "/../../assets/reference/vae.safetensors"

static int contains(const char* text, const char* part) {
  return text != NULL && strstr(text, part) != NULL;
}

static void test_version_and_names(void) {
  CHECK(strlen(apo_version()) >= 5);
  CHECK(apo_abi_version() == APO_ABI_VERSION);
  CHECK(strcmp(apo_status_name(APO_STATUS_OK), "OK") == 0);
  CHECK(strcmp(apo_status_name(APO_STATUS_INVALID_CONFIG), "INVALID_CONFIG") == 0);
  CHECK(strcmp(apo_status_name(APO_STATUS_WORKFLOW_FAILED), "WORKFLOW_FAILED") == 0);
  CHECK(strcmp(apo_status_name(APO_STATUS_NOT_READY), "NOT_READY") == 0);
  CHECK(strcmp(apo_status_name((apo_status)999), "UNKNOWN") == 0);
}

static void test_load_string_and_json(void) {
  apo_config* config = NULL;
  char* json = NULL;
  apo_status status =
      apo_config_load_string("{\"performance_optimization\": {\"batch_size\": 3}}  # a comment",
                             "inline.json", NULL, &config);
  CHECK(status == APO_STATUS_OK);
  CHECK(config != NULL);
  CHECK(apo_config_to_json(config, &json) == APO_STATUS_OK);
  CHECK(json != NULL && contains(json, "\"batch_size\": 3"));
  apo_string_free(json);
  apo_config_free(config);
}

static void test_invalid_config(void) {
  apo_config* config = (apo_config*)0x1; /* a failed call leaves outputs untouched */
  apo_status status = apo_config_load_string(
      "{\n  \"performance_optimization\": {\"batch_size\": 0}\n}", "bad.json", NULL, &config);
  CHECK(status == APO_STATUS_INVALID_CONFIG);
  CHECK(config == (apo_config*)0x1);
  CHECK(
      contains(apo_last_error(), "bad.json:2: performance_optimization.batch_size: out of range"));

  status = apo_config_load_string("{\"a\": ", NULL, NULL, &config);
  CHECK(status == APO_STATUS_INVALID_CONFIG);
  CHECK(contains(apo_last_error(), "<string>:1:"));
}

static void test_load_file(void) {
  apo_config* config = NULL;
  CHECK(apo_config_load_file(APO_TEST_DATA_DIR "/guide/rtx3080.json", NULL, &config) ==
        APO_STATUS_OK);
  apo_config_free(config);

  config = NULL;
  CHECK(apo_config_load_file(APO_TEST_DATA_DIR "/no_such_file.json", NULL, &config) ==
        APO_STATUS_INVALID_CONFIG);
  CHECK(config == NULL);
  CHECK(contains(apo_last_error(), "no_such_file.json: no such file"));
}

static void test_options(void) {
  const char* presets[] = {"rtx4090", "speed_first"};
  const char* overrides[] = {"performance_optimization.batch_size=5"};
  const char* bad_presets[] = {"rtx4900"};
  const char* null_entry[] = {NULL};
  apo_config_options options;
  apo_config* config = NULL;
  char* json = NULL;
  struct {
    apo_config_options options;
    char newer_fields[32];
  } larger;

  apo_config_options_init(&options);
  CHECK(options.struct_size == sizeof(apo_config_options));
  options.presets = presets;
  options.preset_count = 2;
  options.overrides = overrides;
  options.override_count = 1;
  CHECK(apo_config_load_string("{}", NULL, &options, &config) == APO_STATUS_OK);
  CHECK(apo_config_to_json(config, &json) == APO_STATUS_OK);
  CHECK(contains(json, "\"batch_size\": 5"));
  CHECK(contains(json, "\"profile_name\": \"speed_first\""));
  apo_string_free(json);
  apo_config_free(config);

  /* A newer caller's larger struct: accepted, the fields apo does not know ignored. */
  larger.options = options;
  larger.options.struct_size = sizeof larger;
  memset(larger.newer_fields, 0x7f, sizeof larger.newer_fields);
  CHECK(apo_config_load_string("{}", NULL, &larger.options, &config) == APO_STATUS_OK);
  apo_config_free(config);

  options.presets = bad_presets;
  options.preset_count = 1;
  CHECK(apo_config_load_string("{}", NULL, &options, &config) == APO_STATUS_INVALID_CONFIG);
  CHECK(contains(apo_last_error(), "did you mean \"rtx4090\""));

  options.presets = NULL; /* NULL with a count */
  CHECK(apo_config_load_string("{}", NULL, &options, &config) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "options->presets is NULL"));
  options.presets = null_entry;
  CHECK(apo_config_load_string("{}", NULL, &options, &config) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "NULL entry"));

  apo_config_options_init(&options);
  options.overrides = NULL;
  options.override_count = 1;
  CHECK(apo_config_load_string("{}", NULL, &options, &config) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "options->overrides is NULL"));

  apo_config_options_init(&options);
  options.struct_size = 4;
  CHECK(apo_config_load_string("{}", NULL, &options, &config) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "struct_size is 4, smaller than version 1"));

  /* The machine check: a core that no machine has. */
  apo_config_options_init(&options);
  options.check_machine = 1;
  CHECK(apo_config_load_string("{\"system_optimization\": {\"cpu_affinity\": [65000]}}", NULL,
                               &options, &config) == APO_STATUS_INVALID_CONFIG);
  CHECK(contains(apo_last_error(), "no such core"));
}

static void test_null_and_stale_handles(void) {
  apo_config* config = NULL;
  apo_config* reused = NULL;
  char* json = NULL;
  CHECK(apo_config_load_string(NULL, NULL, NULL, &config) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "json is NULL"));
  CHECK(apo_config_load_file(NULL, NULL, &config) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_config_load_string("{}", NULL, NULL, NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "out_config is NULL"));
  CHECK(apo_config_to_json(NULL, &json) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "config is NULL"));

  CHECK(apo_config_load_string("{}", NULL, NULL, &config) == APO_STATUS_OK);
  CHECK(apo_config_to_json(config, NULL) == APO_STATUS_INVALID_ARGUMENT);
  apo_config_free(config);
  /* The handle is stale now: reported, not followed. Freeing it again is ignored. */
  CHECK(apo_config_to_json(config, &json) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "not a live apo_config"));
  apo_config_free(config);
  apo_config_free(NULL);

  /* The next config takes the freed slot with a new generation: the old handle stays stale. */
  CHECK(apo_config_load_string("{}", NULL, NULL, &reused) == APO_STATUS_OK);
  CHECK(reused != config);
  CHECK(apo_config_to_json(config, &json) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_config_to_json(reused, &json) == APO_STATUS_OK);
  apo_string_free(json);
  json = NULL;
  apo_config_free(config); /* stale: must not free the new one */
  CHECK(apo_config_to_json(reused, &json) == APO_STATUS_OK);
  apo_string_free(json);
  json = NULL;

  /* A value that was never a handle, and an address. */
  {
    int not_a_config = 0;
    CHECK(apo_config_to_json((const apo_config*)&not_a_config, &json) ==
          APO_STATUS_INVALID_ARGUMENT);
    CHECK(apo_config_to_json((const apo_config*)(uintptr_t)0x1234, &json) ==
          APO_STATUS_INVALID_ARGUMENT);
  }
  apo_config_free(reused);
  apo_string_free(NULL);
  apo_config_options_init(NULL);
  apo_engine_options_init(NULL);
  apo_workflow_callbacks_init(NULL);
  apo_request_options_init(NULL);
  apo_model_options_init(NULL);
  apo_engine_destroy(NULL);
  apo_ticket_free(NULL);
  apo_model_lease_release(NULL);
  apo_monitor_free(NULL);
}

static void test_probe(void) {
  char* json = NULL;
  CHECK(apo_probe_json(&json) == APO_STATUS_OK);
  CHECK(json != NULL && contains(json, "\"logical_cores\""));
  apo_string_free(json);
  CHECK(apo_probe_json(NULL) == APO_STATUS_INVALID_ARGUMENT);
}

static void test_engine_create_errors(void) {
  apo_engine* engine = (apo_engine*)0x1;
  apo_config* config = NULL;
  apo_engine_options options;
  char* json = NULL;

  CHECK(apo_engine_create(NULL, NULL, NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "out_engine is NULL"));
  apo_engine_options_init(&options);
  CHECK(options.destroy_mode == APO_SHUTDOWN_CANCEL);
  options.struct_size = 2;
  CHECK(apo_engine_create(NULL, &options, &engine) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "struct_size"));
  apo_engine_options_init(&options);
  options.destroy_mode = 7;
  CHECK(apo_engine_create(NULL, &options, &engine) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "destroy_mode"));
  CHECK(engine == (apo_engine*)0x1);

  /* A freed config. */
  CHECK(apo_config_load_string("{}", NULL, NULL, &config) == APO_STATUS_OK);
  apo_config_free(config);
  CHECK(apo_engine_create(config, NULL, &engine) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "not a live apo_config"));

  /* Every engine function on NULL, on a handle of another type, and on a destroyed engine. */
  engine = make_engine(APO_SHUTDOWN_CANCEL);
  CHECK(apo_engine_stats_json(engine, &json) == APO_STATUS_OK);
  CHECK(contains(json, "\"submitted\": 0") && contains(json, "\"cpu\""));
  apo_string_free(json);
  json = NULL;
  CHECK(apo_engine_stats_json(engine, NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_engine_models_json(engine, NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_engine_shutdown(engine, (apo_shutdown_mode)5) == APO_STATUS_INVALID_ARGUMENT);
#ifdef APO_WITH_REFERENCE
  CHECK(apo_engine_add_reference_workflows(engine, "/no/such/dir") == APO_STATUS_NOT_FOUND);
#else /* the sanitizer builds leave the reference workflows out */
  CHECK(apo_engine_add_reference_workflows(engine, "/no/such/dir") == APO_STATUS_UNSUPPORTED);
  CHECK(contains(apo_last_error(), "APO_WITH_REFERENCE=OFF"));
#endif
  CHECK(apo_engine_stats_json((apo_engine*)config, &json) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "not a live apo_engine"));
  apo_engine_destroy(engine);
  CHECK(apo_engine_stats_json(engine, &json) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_engine_models_json(engine, &json) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_engine_shutdown(engine, APO_SHUTDOWN_DRAIN) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_engine_add_reference_workflows(engine, NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_engine_attach_monitor(engine, NULL) == APO_STATUS_INVALID_ARGUMENT);
  apo_engine_destroy(engine); /* stale: ignored */
  CHECK(apo_engine_stats_json(NULL, &json) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "engine is NULL"));
}

static void test_add_workflow_errors(void) {
  apo_engine* engine = make_engine(APO_SHUTDOWN_CANCEL);
  tiny_state state;
  apo_workflow_callbacks callbacks;
  const char* roles[] = {"vae"};
  const char* paths[] = {VAE_PATH};
  const char* bad_kinds[] = {"toaster"};
  tiny_init(&state);

  CHECK(apo_engine_add_workflow(engine, NULL) == APO_STATUS_INVALID_ARGUMENT);
  callbacks = tiny_callbacks("tiny", &state);
  callbacks.struct_size = 8;
  CHECK(apo_engine_add_workflow(engine, &callbacks) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "struct_size"));
  callbacks = tiny_callbacks(NULL, &state);
  CHECK(apo_engine_add_workflow(engine, &callbacks) == APO_STATUS_INVALID_ARGUMENT);
  callbacks = tiny_callbacks("tiny", &state);
  callbacks.run = NULL;
  CHECK(apo_engine_add_workflow(engine, &callbacks) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "callbacks->run is NULL"));
  /* The struct was invalid: apo did not take the user data. */
  CHECK(tiny_read(&state, &state.destroyed) == 0);

  /* Valid structs: from here on every failure destroys the user data. */
  callbacks = tiny_callbacks("", &state);
  CHECK(apo_engine_add_workflow(engine, &callbacks) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(tiny_read(&state, &state.destroyed) == 1);
  callbacks = tiny_callbacks("tiny", &state);
  callbacks.model_count = 1; /* with NULL arrays */
  CHECK(apo_engine_add_workflow(engine, &callbacks) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(tiny_read(&state, &state.destroyed) == 2);
  callbacks.model_roles = roles;
  callbacks.model_paths = paths;
  callbacks.model_kinds = bad_kinds;
  CHECK(apo_engine_add_workflow(engine, &callbacks) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "toaster"));
  CHECK(tiny_read(&state, &state.destroyed) == 3);
  callbacks = tiny_callbacks("tiny", &state);
  CHECK(apo_engine_add_workflow((apo_engine*)(uintptr_t)0x99, &callbacks) ==
        APO_STATUS_INVALID_ARGUMENT);
  CHECK(tiny_read(&state, &state.destroyed) == 4);

  CHECK(apo_engine_add_workflow(engine, &callbacks) == APO_STATUS_OK);
  CHECK(apo_engine_add_workflow(engine, &callbacks) == APO_STATUS_INVALID_ARGUMENT); /* taken */
  CHECK(tiny_read(&state, &state.destroyed) == 5);
  apo_engine_destroy(engine);
  CHECK(tiny_read(&state, &state.destroyed) == 6); /* the registered one, with its engine */
}

static apo_status record_progress_status = APO_STATUS_OK;
static pthread_mutex_t progress_mutex = PTHREAD_MUTEX_INITIALIZER;
static int progress_calls = 0;
static int progress_last_steps = 0;

static void record_progress(void* user_data, uint64_t request_id, int32_t step, int32_t steps) {
  (void)user_data;
  (void)request_id;
  (void)step;
  pthread_mutex_lock(&progress_mutex);
  ++progress_calls;
  progress_last_steps = steps;
  pthread_mutex_unlock(&progress_mutex);
}

static int progress_count(void) {
  int calls;
  pthread_mutex_lock(&progress_mutex);
  calls = progress_calls;
  pthread_mutex_unlock(&progress_mutex);
  return calls;
}

static void test_requests_and_results(void) {
  apo_engine* engine = make_engine(APO_SHUTDOWN_CANCEL);
  tiny_state state;
  apo_workflow_callbacks callbacks;
  apo_request_options options;
  apo_ticket* ticket = NULL;
  apo_ticket* stale = NULL;
  apo_result_info info;
  DLManagedTensorVersioned* tensor = NULL;
  const char* name = NULL;
  uint64_t id = 0;
  int ready = -1;
  char* json = NULL;
  struct {
    apo_request_options options;
    char newer_fields[40];
  } larger_options;
  struct {
    apo_result_info info;
    unsigned char newer_fields[16];
  } larger_info;
  size_t i;

  tiny_init(&state);
  callbacks = tiny_callbacks("tiny", &state);
  CHECK(apo_engine_add_workflow(engine, &callbacks) == APO_STATUS_OK);

  /* Defaults of the request options. */
  apo_request_options_init(&options);
  CHECK(options.struct_size == sizeof options && options.width == 1024 && options.frames == 1);
  CHECK(isnan(options.guidance) && options.strength == 1.0 && options.steps == 0);
  CHECK(options.quality == APO_QUALITY_BALANCED);

  /* Submit errors. */
  options = tiny_request("tiny", "", 7);
  CHECK(apo_engine_submit(NULL, &options, &ticket) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_engine_submit(engine, NULL, &ticket) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_engine_submit(engine, &options, NULL) == APO_STATUS_INVALID_ARGUMENT);
  options.struct_size = 16;
  CHECK(apo_engine_submit(engine, &options, &ticket) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "struct_size is 16"));
  options = tiny_request("no_such_workflow", "", 7);
  CHECK(apo_engine_submit(engine, &options, &ticket) == APO_STATUS_NOT_FOUND);
  CHECK(contains(apo_last_error(), "no_such_workflow"));
  options = tiny_request(NULL, "", 7);
  CHECK(apo_engine_submit(engine, &options, &ticket) == APO_STATUS_INVALID_ARGUMENT);
  options = tiny_request("tiny", "", 7);
  options.width = -3;
  CHECK(apo_engine_submit(engine, &options, &ticket) == APO_STATUS_INVALID_ARGUMENT);
  options = tiny_request("tiny", "", 7);
  options.steps = -1;
  CHECK(apo_engine_submit(engine, &options, &ticket) == APO_STATUS_INVALID_ARGUMENT);
  options = tiny_request("tiny", "", 7);
  options.quality = 9;
  CHECK(apo_engine_submit(engine, &options, &ticket) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "apo_quality_level"));
  options = tiny_request("tiny", "negative estimate", 7);
  CHECK(apo_engine_submit(engine, &options, &ticket) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "memory_estimate returned -1"));
  CHECK(ticket == NULL);

  /* The happy path, from a newer caller's larger struct, with progress. */
  larger_options.options = tiny_request("tiny", "", 7);
  larger_options.options.struct_size = sizeof larger_options;
  larger_options.options.on_progress = record_progress;
  larger_options.options.steps = 2;
  larger_options.options.guidance = 3.5;
  memset(larger_options.newer_fields, 0x5a, sizeof larger_options.newer_fields);
  CHECK(apo_engine_submit(engine, &larger_options.options, &ticket) == APO_STATUS_OK);
  CHECK(apo_ticket_id(ticket, &id) == APO_STATUS_OK && id > 0);
  CHECK(apo_ticket_id(ticket, NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_ticket_poll(ticket, NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_ticket_wait(ticket, 30000) == APO_STATUS_OK);
  CHECK(apo_ticket_poll(ticket, &ready) == APO_STATUS_OK && ready == 1);
  CHECK(progress_count() == 2);
  CHECK(progress_last_steps == 2);
  (void)record_progress_status;

  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  CHECK(apo_ticket_result(ticket, NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_ticket_result(ticket, &info) == APO_STATUS_OK);
  CHECK(info.status == APO_STATUS_OK);
  CHECK(info.request_id == id);
  CHECK(strcmp(info.message, "") == 0);
  CHECK(strcmp(info.device, "cpu") == 0);
  CHECK(info.total_s >= info.queue_wait_s && info.total_s > 0);
  CHECK(info.has_quality == 1 && info.quality == 0.5);
  CHECK(info.batch_size == 1);
  CHECK(info.output_count == 1);
  info.struct_size = 8; /* too small */
  CHECK(apo_ticket_result(ticket, &info) == APO_STATUS_INVALID_ARGUMENT);
  /* A larger result struct: apo fills its own fields and leaves the rest alone. */
  memset(&larger_info, 0xee, sizeof larger_info);
  larger_info.info.struct_size = sizeof larger_info;
  CHECK(apo_ticket_result(ticket, &larger_info.info) == APO_STATUS_OK);
  CHECK(larger_info.info.struct_size == sizeof larger_info);
  CHECK(larger_info.info.status == APO_STATUS_OK && larger_info.info.output_count == 1);
  for (i = 0; i < sizeof larger_info.newer_fields; ++i) {
    CHECK(larger_info.newer_fields[i] == 0xee);
  }

  CHECK(apo_ticket_output_name(ticket, 0, &name) == APO_STATUS_OK && strcmp(name, "image") == 0);
  CHECK(apo_ticket_output_name(ticket, 1, &name) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_ticket_output_name(ticket, 0, NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_ticket_output(ticket, "image", &tensor) == APO_STATUS_OK);
  CHECK(tensor != NULL && tensor->dl_tensor.ndim == 3 && numel_of(tensor) == 4);
  CHECK(tensor->dl_tensor.dtype.code == kDLFloat && tensor->dl_tensor.dtype.bits == 32);
  CHECK(float_at(tensor, 0) == 7.0f && float_at(tensor, 3) == 10.0f);
  CHECK((tensor->flags & DLPACK_FLAG_BITMASK_READ_ONLY) != 0);
  delete_tensor(tensor);
  tensor = NULL;
  CHECK(apo_ticket_output(ticket, "alpha", &tensor) == APO_STATUS_NOT_FOUND);
  CHECK(apo_ticket_output(ticket, NULL, &tensor) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_ticket_output(ticket, "image", NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_ticket_cancel(ticket) == APO_STATUS_OK); /* already ended: fine */
  CHECK(apo_engine_stats_json(engine, &json) == APO_STATUS_OK);
  CHECK(contains(json, "\"completed\": 1"));
  apo_string_free(json);

  /* Stale tickets: freed, then the slot reused by the next ticket with a new generation. */
  stale = ticket;
  apo_ticket_free(ticket);
  CHECK(apo_ticket_poll(stale, &ready) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "not a live apo_ticket"));
  options = tiny_request("tiny", "", 8);
  CHECK(apo_engine_submit(engine, &options, &ticket) == APO_STATUS_OK);
  CHECK(ticket != stale);
  CHECK(apo_ticket_wait(stale, 10) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_ticket_result(stale, &info) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_ticket_output(stale, "image", &tensor) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_ticket_output_name(stale, 0, &name) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_ticket_cancel(stale) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_ticket_id(stale, &id) == APO_STATUS_INVALID_ARGUMENT);
  apo_ticket_free(stale); /* stale: must not free the new ticket */
  CHECK(apo_ticket_wait(ticket, 30000) == APO_STATUS_OK);
  /* A handle of another type where a ticket belongs. */
  CHECK(apo_ticket_poll((apo_ticket*)engine, &ready) == APO_STATUS_INVALID_ARGUMENT);
  apo_ticket_free(ticket);

  /* A result before it is in: NOT_READY; a wait that times out: TIMED_OUT; then cancel. */
  options = tiny_request("tiny", "slow", 9);
  CHECK(apo_engine_submit(engine, &options, &ticket) == APO_STATUS_OK);
  CHECK(apo_ticket_wait(ticket, 20) == APO_STATUS_TIMED_OUT);
  CHECK(contains(apo_last_error(), "within 20 ms"));
  info.struct_size = sizeof info;
  CHECK(apo_ticket_result(ticket, &info) == APO_STATUS_NOT_READY);
  CHECK(apo_ticket_output(ticket, "image", &tensor) == APO_STATUS_NOT_READY);
  while (tiny_read(&state, &state.running) == 0) sleep_ms(1);
  CHECK(apo_ticket_cancel(ticket) == APO_STATUS_OK);
  CHECK(apo_ticket_wait(ticket, UINT32_MAX) == APO_STATUS_OK);
  CHECK(apo_ticket_result(ticket, &info) == APO_STATUS_OK);
  CHECK(info.status == APO_STATUS_CANCELLED);
  CHECK(info.output_count == 0);
  apo_ticket_free(ticket);

  /* A workflow that runs out of memory, even alone. */
  options = tiny_request("tiny", "oom", 10);
  CHECK(run_to_end(engine, &options, &ticket) == APO_STATUS_OUT_OF_MEMORY);
  CHECK(apo_ticket_result(ticket, &info) == APO_STATUS_OK);
  CHECK(contains(info.message, "did not fit"));
  apo_ticket_free(ticket);

  /* A workflow that fails, with its message; and one that returns a status apo lacks. */
  options = tiny_request("tiny", "fail", 11);
  CHECK(run_to_end(engine, &options, &ticket) == APO_STATUS_WORKFLOW_FAILED);
  CHECK(apo_ticket_result(ticket, &info) == APO_STATUS_OK);
  CHECK(contains(info.message, "the tiny workflow failed on purpose"));
  apo_ticket_free(ticket);
  options = tiny_request("tiny", "strange", 12);
  CHECK(run_to_end(engine, &options, &ticket) == APO_STATUS_WORKFLOW_FAILED);
  CHECK(apo_ticket_result(ticket, &info) == APO_STATUS_OK);
  CHECK(contains(info.message, "returned UNKNOWN"));
  apo_ticket_free(ticket);

  /* A deadline that passes while the request waits behind a slow one. */
  options = tiny_request("tiny", "slow", 13);
  CHECK(apo_engine_submit(engine, &options, &stale) == APO_STATUS_OK);
  while (tiny_read(&state, &state.running) == 0) sleep_ms(1);
  options = tiny_request("tiny", "", 14);
  options.width = 16; /* another shape: not batched with the slow one */
  options.deadline_ms = 1;
  CHECK(apo_engine_submit(engine, &options, &ticket) == APO_STATUS_OK);
  sleep_ms(20);
  CHECK(apo_ticket_cancel(stale) == APO_STATUS_OK);
  CHECK(apo_ticket_wait(ticket, 30000) == APO_STATUS_OK);
  CHECK(apo_ticket_result(ticket, &info) == APO_STATUS_OK);
  CHECK(info.status == APO_STATUS_TIMED_OUT);
  apo_ticket_free(ticket);
  apo_ticket_free(stale);

  apo_engine_destroy(engine);
  CHECK(tiny_read(&state, &state.destroyed) == 1);
}

static void test_inputs_and_run_context(void) {
  apo_engine* engine = make_engine(APO_SHUTDOWN_CANCEL);
  tiny_state state;
  apo_workflow_callbacks callbacks;
  apo_request_options options;
  apo_ticket* ticket = NULL;
  DLManagedTensorVersioned* image;
  DLManagedTensorVersioned* out = NULL;
  const int64_t shape[3] = {3, 8, 8};
  const char* roles[] = {"vae"};
  const char* paths[] = {VAE_PATH};
  const char* kinds[] = {"vae"};
  int deleted_before;

  tiny_init(&state);
  callbacks = tiny_callbacks("tiny", &state);
  callbacks.model_roles = roles;
  callbacks.model_paths = paths;
  callbacks.model_kinds = kinds;
  callbacks.model_count = 1;
  CHECK(apo_engine_add_workflow(engine, &callbacks) == APO_STATUS_OK);

  /* An input image is borrowed: the caller frees it right after submit. */
  image = make_tensor(3, shape, 0.0f);
  {
    int64_t k;
    float* data = (float*)image->dl_tensor.data;
    for (k = 0; k < 3 * 8 * 8; ++k) data[k] = (float)k / 192.0f;
  }
  options = tiny_request("tiny", "echo", 1);
  options.image = image;
  deleted_before = deleted_count();
  CHECK(apo_engine_submit(engine, &options, &ticket) == APO_STATUS_OK);
  CHECK(deleted_count() == deleted_before); /* borrowed: not deleted by apo */
  delete_tensor(image);
  CHECK(apo_ticket_wait(ticket, 30000) == APO_STATUS_OK);
  CHECK(apo_ticket_output(ticket, "echo", &out) == APO_STATUS_OK);
  CHECK(out != NULL && numel_of(out) == 3 * 8 * 8 && float_at(out, 191) == 191.0f / 192.0f);
  delete_tensor(out);
  out = NULL;
  apo_ticket_free(ticket);

  /* A bad input: DLPack of another major version; NaN in an image. */
  image = make_tensor(3, shape, 0.0f);
  image->version.major = 2;
  options.image = image;
  CHECK(apo_engine_submit(engine, &options, &ticket) == APO_STATUS_UNSUPPORTED);
  CHECK(contains(apo_last_error(), "DLPack 2."));
  image->version.major = DLPACK_MAJOR_VERSION;
  image->dl_tensor.device.device_type = kDLCUDA;
  CHECK(apo_engine_submit(engine, &options, &ticket) == APO_STATUS_UNSUPPORTED);
  image->dl_tensor.device.device_type = kDLCPU;
  ((float*)image->dl_tensor.data)[5] = NAN;
  CHECK(apo_engine_submit(engine, &options, &ticket) == APO_STATUS_INVALID_ARGUMENT);
  delete_tensor(image);

  /* The echo workflow without an image: apo_run_input says NOT_FOUND and the request fails. */
  options = tiny_request("tiny", "echo", 2);
  CHECK(run_to_end(engine, &options, &ticket) == APO_STATUS_WORKFLOW_FAILED);
  apo_ticket_free(ticket);

  /* A model weight through the run context. */
  options = tiny_request("tiny", "weight", 3);
  CHECK(run_to_end(engine, &options, &ticket) == APO_STATUS_OK);
  CHECK(apo_ticket_output(ticket, "weight", &out) == APO_STATUS_OK);
  CHECK(out != NULL && numel_of(out) == 64);
  delete_tensor(out);
  out = NULL;
  apo_ticket_free(ticket);

  apo_engine_destroy(engine);
  CHECK(tiny_read(&state, &state.destroyed) == 1);
}

/* A run callback that checks every run-context function's errors, then keeps its context for
 * after the run. */
static apo_run_context* kept_context = NULL;

static apo_status probing_run(void* user_data, apo_run_context* context,
                              const apo_request_info* requests, size_t count) {
  DLManagedTensorVersioned* tensor = NULL;
  const int64_t shape[1] = {2};
  int cancelled = -1;
  int deleted_before;
  (void)user_data;
  (void)requests;
  CHECK(count == 1);
  CHECK(apo_run_step(NULL, 1, 1) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_run_step(context, 1, 1) == APO_STATUS_OK);
  CHECK(apo_run_cancelled(context, 0, &cancelled) == APO_STATUS_OK && cancelled == 0);
  CHECK(apo_run_cancelled(context, 1, &cancelled) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_run_cancelled(context, 0, NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_run_input(context, 0, "image", &tensor) == APO_STATUS_NOT_FOUND);
  CHECK(apo_run_input(context, 0, "sound", &tensor) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_run_input(context, 3, "image", &tensor) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_run_input(context, 0, "image", NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_run_model_weight(context, "vae", "x", &tensor) == APO_STATUS_NOT_FOUND);
  CHECK(apo_run_model_weight(context, NULL, "x", &tensor) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_run_set_quality(context, 0, 1.5) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_run_set_quality(context, 1, 0.5) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_run_set_error(context, NULL) == APO_STATUS_INVALID_ARGUMENT);
  /* set_output consumes the tensor on every path. */
  deleted_before = deleted_count();
  CHECK(apo_run_set_output(context, 5, "image", make_tensor(1, shape, 0)) ==
        APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_run_set_output(context, 0, NULL, make_tensor(1, shape, 0)) ==
        APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_run_set_output(NULL, 0, "image", make_tensor(1, shape, 0)) ==
        APO_STATUS_INVALID_ARGUMENT);
  tensor = make_tensor(1, shape, 0);
  tensor->dl_tensor.ndim = -1;
  CHECK(apo_run_set_output(context, 0, "image", tensor) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(deleted_count() == deleted_before + 4);
  CHECK(apo_run_set_output(context, 0, "image", NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_run_set_output(context, 0, "image", make_tensor(1, shape, 1)) == APO_STATUS_OK);
  CHECK(apo_run_set_output(context, 0, "image", make_tensor(1, shape, 2)) == APO_STATUS_OK);
  CHECK(deleted_count() == deleted_before + 5); /* the replaced output */
  kept_context = context;
  return APO_STATUS_OK;
}

static void test_run_context_errors(void) {
  apo_engine* engine = make_engine(APO_SHUTDOWN_CANCEL);
  apo_workflow_callbacks callbacks;
  apo_request_options options;
  apo_ticket* ticket = NULL;
  DLManagedTensorVersioned* tensor = NULL;
  const int64_t shape[1] = {2};
  const char* roles[] = {"vae"};
  const char* paths[] = {VAE_PATH};
  int deleted_before;

  apo_workflow_callbacks_init(&callbacks);
  callbacks.name = "probing";
  callbacks.run = probing_run;
  callbacks.model_roles = roles;
  callbacks.model_paths = paths;
  callbacks.model_count = 1;
  CHECK(apo_engine_add_workflow(engine, &callbacks) == APO_STATUS_OK);
  options = tiny_request("probing", "", 1);
  CHECK(run_to_end(engine, &options, &ticket) == APO_STATUS_OK);
  CHECK(apo_ticket_output(ticket, "image", &tensor) == APO_STATUS_OK);
  CHECK(tensor != NULL && float_at(tensor, 0) == 2.0f);
  delete_tensor(tensor);
  apo_ticket_free(ticket);

  /* The context is dead once its run returned. */
  CHECK(kept_context != NULL);
  CHECK(apo_run_step(kept_context, 1, 1) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "not a live apo_run_context"));
  CHECK(apo_run_set_error(kept_context, "late") == APO_STATUS_INVALID_ARGUMENT);
  deleted_before = deleted_count();
  CHECK(apo_run_set_output(kept_context, 0, "image", make_tensor(1, shape, 0)) ==
        APO_STATUS_INVALID_ARGUMENT);
  CHECK(deleted_count() == deleted_before + 1);
  apo_engine_destroy(engine);
}

static void test_destroy_with_requests_in_flight(void) {
  tiny_state state;
  apo_workflow_callbacks callbacks;
  apo_request_options options;
  apo_ticket* tickets[4];
  apo_result_info info;
  apo_engine* engine;
  int k;

  /* Cancel mode: what is queued or running ends CANCELLED; tickets outlive the engine. */
  tiny_init(&state);
  engine = make_engine(APO_SHUTDOWN_CANCEL);
  callbacks = tiny_callbacks("tiny", &state);
  CHECK(apo_engine_add_workflow(engine, &callbacks) == APO_STATUS_OK);
  for (k = 0; k < 4; ++k) {
    options = tiny_request("tiny", "slow", (uint64_t)k);
    options.width = 8 * (k + 1); /* four batches */
    CHECK(apo_engine_submit(engine, &options, &tickets[k]) == APO_STATUS_OK);
  }
  while (tiny_read(&state, &state.running) == 0) sleep_ms(1);
  apo_engine_destroy(engine);
  CHECK(tiny_read(&state, &state.destroyed) == 1);
  for (k = 0; k < 4; ++k) {
    CHECK(apo_ticket_wait(tickets[k], 0) == APO_STATUS_OK);
    info.struct_size = sizeof info;
    CHECK(apo_ticket_result(tickets[k], &info) == APO_STATUS_OK);
    CHECK(info.status == APO_STATUS_CANCELLED);
    CHECK(apo_ticket_cancel(tickets[k]) == APO_STATUS_OK); /* its engine is gone: fine */
    apo_ticket_free(tickets[k]);
  }

  /* Drain mode: every request runs to its end first. */
  tiny_init(&state);
  engine = make_engine(APO_SHUTDOWN_DRAIN);
  callbacks = tiny_callbacks("tiny", &state);
  CHECK(apo_engine_add_workflow(engine, &callbacks) == APO_STATUS_OK);
  for (k = 0; k < 4; ++k) {
    options = tiny_request("tiny", "", (uint64_t)k);
    CHECK(apo_engine_submit(engine, &options, &tickets[k]) == APO_STATUS_OK);
  }
  apo_engine_destroy(engine);
  for (k = 0; k < 4; ++k) {
    info.struct_size = sizeof info;
    CHECK(apo_ticket_result(tickets[k], &info) == APO_STATUS_OK);
    CHECK(info.status == APO_STATUS_OK);
    apo_ticket_free(tickets[k]);
  }

  /* After an explicit shutdown, submits end REJECTED. */
  tiny_init(&state);
  engine = make_engine(APO_SHUTDOWN_CANCEL);
  callbacks = tiny_callbacks("tiny", &state);
  CHECK(apo_engine_add_workflow(engine, &callbacks) == APO_STATUS_OK);
  CHECK(apo_engine_shutdown(engine, APO_SHUTDOWN_DRAIN) == APO_STATUS_OK);
  options = tiny_request("tiny", "", 1);
  CHECK(run_to_end(engine, &options, NULL) == APO_STATUS_REJECTED);
  apo_engine_destroy(engine);
}

static void test_models(void) {
  apo_engine* engine = make_engine(APO_SHUTDOWN_CANCEL);
  apo_model_options options;
  apo_model_lease* lease = NULL;
  DLManagedTensorVersioned* weight = NULL;
  char* json = NULL;

  apo_model_options_init(&options);
  CHECK(options.struct_size == sizeof options && options.device_index == 0);
  CHECK(apo_engine_acquire_model(engine, &options, &lease) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "options->path is NULL"));
  options.path = VAE_PATH;
  options.kind = "vae";
  options.precision = "fp32";
  CHECK(apo_engine_acquire_model(NULL, &options, &lease) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_engine_acquire_model(engine, NULL, &lease) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_engine_acquire_model(engine, &options, NULL) == APO_STATUS_INVALID_ARGUMENT);
  options.struct_size = 4;
  CHECK(apo_engine_acquire_model(engine, &options, &lease) == APO_STATUS_INVALID_ARGUMENT);
  options.struct_size = sizeof options;
  options.device_index = 9;
  CHECK(apo_engine_acquire_model(engine, &options, &lease) == APO_STATUS_INVALID_ARGUMENT);
  options.device_index = 0;
  options.kind = "toaster";
  CHECK(apo_engine_acquire_model(engine, &options, &lease) == APO_STATUS_INVALID_ARGUMENT);
  options.kind = "vae";
  options.precision = "fp7";
  CHECK(apo_engine_acquire_model(engine, &options, &lease) == APO_STATUS_INVALID_ARGUMENT);
  options.precision = "fp32";
  options.path = APO_TEST_DATA_DIR "/no_such_model.safetensors";
  CHECK(apo_engine_acquire_model(engine, &options, &lease) == APO_STATUS_NOT_FOUND);
  CHECK(lease == NULL);

  options.path = VAE_PATH;
  CHECK(apo_engine_acquire_model(engine, &options, &lease) == APO_STATUS_OK);
  CHECK(apo_model_lease_weight(lease, "decoder.conv_in.bias", &weight) == APO_STATUS_OK);
  CHECK(weight != NULL && numel_of(weight) == 64);
  delete_tensor(weight);
  CHECK(apo_model_lease_weight(lease, "no.such.weight", &weight) == APO_STATUS_NOT_FOUND);
  CHECK(apo_model_lease_weight(lease, NULL, &weight) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_model_lease_weight(lease, "decoder.conv_in.bias", NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_engine_models_json(engine, &json) == APO_STATUS_OK);
  CHECK(contains(json, "\"loads\": 1") && contains(json, "\"leases\": 1"));
  apo_string_free(json);
  apo_model_lease_release(lease);
  CHECK(apo_model_lease_weight(lease, "decoder.conv_in.bias", &weight) ==
        APO_STATUS_INVALID_ARGUMENT);
  apo_model_lease_release(lease); /* stale: ignored */
  CHECK(apo_engine_models_json(engine, &json) == APO_STATUS_OK);
  CHECK(contains(json, "\"leases\": 0"));
  apo_string_free(json);

  /* A lease that outlives its engine stays safe to release. */
  CHECK(apo_engine_acquire_model(engine, &options, &lease) == APO_STATUS_OK);
  apo_engine_destroy(engine);
  apo_model_lease_release(lease);
}

static void test_monitor(void) {
  apo_engine* engine = make_engine(APO_SHUTDOWN_CANCEL);
  apo_monitor* monitor = NULL;
  tiny_state state;
  apo_workflow_callbacks callbacks;
  apo_request_options options;
  char* json = NULL;

  CHECK(apo_monitor_create(NULL, 0, NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_monitor_create(NULL, 0, &monitor) == APO_STATUS_OK);
  CHECK(apo_engine_attach_monitor(engine, (apo_monitor*)engine) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_engine_attach_monitor(engine, monitor) == APO_STATUS_OK);
  tiny_init(&state);
  callbacks = tiny_callbacks("tiny", &state);
  CHECK(apo_engine_add_workflow(engine, &callbacks) == APO_STATUS_OK);
  options = tiny_request("tiny", "", 1);
  CHECK(run_to_end(engine, &options, NULL) == APO_STATUS_OK);
  CHECK(apo_monitor_sample(monitor) == APO_STATUS_OK);
  CHECK(apo_monitor_report_json(monitor, &json) == APO_STATUS_OK);
  CHECK(contains(json, "\"requests\": 1") && contains(json, "\"tiny\""));
  apo_string_free(json);
  CHECK(apo_monitor_report_json(monitor, NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_engine_attach_monitor(engine, NULL) == APO_STATUS_OK);
  apo_monitor_free(monitor);
  CHECK(apo_monitor_sample(monitor) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_monitor_report_json(monitor, &json) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_engine_attach_monitor(engine, monitor) == APO_STATUS_INVALID_ARGUMENT);

  /* A monitor with its sampler thread, freed while still attached to an engine. */
  CHECK(apo_monitor_create(NULL, 1, &monitor) == APO_STATUS_OK);
  CHECK(apo_engine_attach_monitor(engine, monitor) == APO_STATUS_OK);
  apo_monitor_free(monitor);
  CHECK(run_to_end(engine, &options, NULL) == APO_STATUS_OK);
  apo_engine_destroy(engine);
}

static void test_quantize(void) {
  const int64_t shape[2] = {4, 8};
  DLManagedTensorVersioned* input = make_tensor(2, shape, -16.0f);
  DLManagedTensorVersioned* data = NULL;
  DLManagedTensorVersioned* scales = NULL;
  DLManagedTensorVersioned* decoded = NULL;
  int64_t k;

  /* int8 per row: codes [4, 8], scales [4]; back within half a step. */
  CHECK(apo_quantize(input, "int8", NULL, &data, &scales) == APO_STATUS_OK);
  CHECK(data != NULL && data->dl_tensor.dtype.code == kDLInt && data->dl_tensor.dtype.bits == 8);
  CHECK(numel_of(data) == 32);
  CHECK(scales != NULL && numel_of(scales) == 4 && scales->dl_tensor.dtype.code == kDLFloat);
  CHECK(apo_dequantize(data, scales, "int8", "per_row", NULL, &decoded) == APO_STATUS_OK);
  CHECK(decoded != NULL && numel_of(decoded) == 32);
  for (k = 0; k < 32; ++k) {
    CHECK(fabsf(float_at(decoded, k) - float_at(input, k)) <= 0.5f * float_at(scales, k / 8));
  }
  delete_tensor(decoded);
  decoded = NULL;
  CHECK(apo_dequantize(data, scales, "int8", "per_row", "float16", &decoded) == APO_STATUS_OK);
  CHECK(decoded->dl_tensor.dtype.bits == 16);
  delete_tensor(decoded);
  decoded = NULL;
  CHECK(apo_dequantize(data, NULL, "int8", "per_row", NULL, &decoded) ==
        APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_dequantize(data, scales, "int8", "per_row", "float64", &decoded) ==
        APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_dequantize(data, scales, "fp8_e4m3", "per_row", NULL, &decoded) ==
        APO_STATUS_INVALID_ARGUMENT);
  delete_tensor(data);
  delete_tensor(scales);

  /* fp8 per tensor: one scale. */
  CHECK(apo_quantize(input, "fp8_e4m3", "per_tensor", &data, &scales) == APO_STATUS_OK);
  CHECK(data->dl_tensor.dtype.bits == 8 && numel_of(scales) == 1);
  CHECK(apo_dequantize(data, scales, "fp8", "per_tensor", NULL, &decoded) == APO_STATUS_OK);
  CHECK(fabsf(float_at(decoded, 31) - float_at(input, 31)) <= 1.0f);
  delete_tensor(decoded);
  decoded = NULL;
  delete_tensor(data);
  delete_tensor(scales);

  /* bf16 has no scales. */
  CHECK(apo_quantize(input, "bf16", NULL, &data, &scales) == APO_STATUS_OK);
  CHECK(scales == NULL && data->dl_tensor.dtype.code == kDLBfloat);
  CHECK(apo_dequantize(data, NULL, "bf16", NULL, NULL, &decoded) == APO_STATUS_OK);
  CHECK(float_at(decoded, 3) == float_at(input, 3));
  delete_tensor(decoded);
  decoded = NULL;
  delete_tensor(data);
  data = NULL;

  /* Errors: NULLs, names, a tensor apo cannot take, NaN. */
  CHECK(apo_quantize(NULL, "int8", NULL, &data, &scales) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_quantize(input, NULL, NULL, &data, &scales) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_quantize(input, "int4", NULL, &data, &scales) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "int4"));
  CHECK(apo_quantize(input, "int8", "per_block", &data, &scales) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_quantize(input, "int8", "none", &data, &scales) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_quantize(input, "int8", NULL, NULL, &scales) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_quantize(input, "int8", NULL, &data, NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_dequantize(NULL, NULL, "int8", NULL, NULL, &decoded) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_dequantize(input, NULL, "none", NULL, NULL, NULL) == APO_STATUS_INVALID_ARGUMENT);
  input->dl_tensor.dtype.bits = 7;
  CHECK(apo_quantize(input, "int8", NULL, &data, &scales) == APO_STATUS_UNSUPPORTED);
  input->dl_tensor.dtype.bits = 32;
  input->dl_tensor.dtype.lanes = 4;
  CHECK(apo_quantize(input, "int8", NULL, &data, &scales) == APO_STATUS_UNSUPPORTED);
  input->dl_tensor.dtype.lanes = 1;
  input->dl_tensor.shape = NULL;
  CHECK(apo_quantize(input, "int8", NULL, &data, &scales) == APO_STATUS_INVALID_ARGUMENT);
  input->dl_tensor.shape = ((test_tensor*)input->manager_ctx)->shape;
  ((float*)input->dl_tensor.data)[3] = NAN;
  CHECK(apo_quantize(input, "int8", NULL, &data, &scales) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(data == NULL);
  delete_tensor(input);
}

int main(void) {
  test_version_and_names();
  test_load_string_and_json();
  test_invalid_config();
  test_load_file();
  test_options();
  test_null_and_stale_handles();
  test_probe();
  test_engine_create_errors();
  test_add_workflow_errors();
  test_requests_and_results();
  test_inputs_and_run_context();
  test_run_context_errors();
  test_destroy_with_requests_in_flight();
  test_models();
  test_monitor();
  test_quantize();
  if (failures != 0) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("C ABI: all checks passed\n");
  return 0;
}

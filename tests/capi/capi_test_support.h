/* What the C tests of the ABI share: a CHECK macro, DLPack tensors made by hand, and a tiny
 * workflow written in C whose behaviour each request picks by its prompt. */
#ifndef APO_CAPI_TEST_SUPPORT_H
#define APO_CAPI_TEST_SUPPORT_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ATen/dlpack.h>

#include "apo/apo.h"

static int failures = 0;

#define CHECK(condition)                                                            \
  do {                                                                              \
    if (!(condition)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #condition); \
      fprintf(stderr, "  last error: %s\n", apo_last_error());                      \
      ++failures;                                                                   \
    }                                                                               \
  } while (0)

static inline void sleep_ms(long ms) {
  struct timespec pause;
  pause.tv_sec = ms / 1000;
  pause.tv_nsec = (ms % 1000) * 1000000L;
  nanosleep(&pause, NULL);
}

/* Tensors deleted by their deleter so far (deleters may run on the engine's threads). */
static pthread_mutex_t tensor_mutex = PTHREAD_MUTEX_INITIALIZER;
static int tensors_deleted = 0;

static inline int deleted_count(void) {
  int count;
  pthread_mutex_lock(&tensor_mutex);
  count = tensors_deleted;
  pthread_mutex_unlock(&tensor_mutex);
  return count;
}

/* A float32 CPU tensor of up to 4 dimensions, its shape and data in one allocation. */
typedef struct test_tensor {
  DLManagedTensorVersioned managed;
  int64_t shape[4];
  float data[1]; /* numel elements follow */
} test_tensor;

static inline void test_tensor_delete(DLManagedTensorVersioned* self) {
  free(self->manager_ctx);
  pthread_mutex_lock(&tensor_mutex);
  ++tensors_deleted;
  pthread_mutex_unlock(&tensor_mutex);
}

static inline DLManagedTensorVersioned* make_tensor(int ndim, const int64_t* shape, float fill) {
  int64_t numel = 1;
  int64_t i;
  test_tensor* t;
  for (i = 0; i < ndim; ++i) numel *= shape[i];
  t = (test_tensor*)calloc(1, sizeof(test_tensor) + (size_t)numel * sizeof(float));
  if (t == NULL) abort();
  t->managed.version.major = DLPACK_MAJOR_VERSION;
  t->managed.version.minor = DLPACK_MINOR_VERSION;
  t->managed.manager_ctx = t;
  t->managed.deleter = test_tensor_delete;
  t->managed.dl_tensor.data = t->data;
  t->managed.dl_tensor.device.device_type = kDLCPU;
  t->managed.dl_tensor.ndim = ndim;
  t->managed.dl_tensor.dtype.code = kDLFloat;
  t->managed.dl_tensor.dtype.bits = 32;
  t->managed.dl_tensor.dtype.lanes = 1;
  t->managed.dl_tensor.shape = t->shape;
  for (i = 0; i < ndim; ++i) t->shape[i] = shape[i];
  for (i = 0; i < numel; ++i) t->data[i] = fill + (float)i;
  return &t->managed;
}

static inline void delete_tensor(DLManagedTensorVersioned* tensor) {
  if (tensor != NULL && tensor->deleter != NULL) tensor->deleter(tensor);
}

static inline int64_t numel_of(const DLManagedTensorVersioned* tensor) {
  int64_t numel = 1;
  int32_t i;
  for (i = 0; i < tensor->dl_tensor.ndim; ++i) numel *= tensor->dl_tensor.shape[i];
  return numel;
}

static inline float float_at(const DLManagedTensorVersioned* tensor, int64_t index) {
  return (
      (const float*)((const char*)tensor->dl_tensor.data + tensor->dl_tensor.byte_offset))[index];
}

/* The tiny workflow. A request's prompt picks what its batch does:
 *   ""/other  two steps, output "image" [1, 2, 2] filled from the seed, quality 0.5
 *   "oom"     reports APO_STATUS_OUT_OF_MEMORY
 *   "fail"    reports APO_STATUS_WORKFLOW_FAILED with a message
 *   "strange" returns a status value no apo_status has
 *   "slow"    steps every millisecond for up to 10 s, until cancelled
 *   "echo"    outputs its input image as "echo"
 *   "weight"  outputs the weight decoder.conv_in.bias of its model "vae" as "weight"
 */
typedef struct tiny_state {
  pthread_mutex_t mutex;
  int batches;
  int running; /* batches inside run now */
  int destroyed;
  int64_t memory_estimates;
} tiny_state;

static inline void tiny_init(tiny_state* state) {
  memset(state, 0, sizeof *state);
  pthread_mutex_init(&state->mutex, NULL);
}

static inline int tiny_read(tiny_state* state, const int* field) {
  int value;
  pthread_mutex_lock(&state->mutex);
  value = *field;
  pthread_mutex_unlock(&state->mutex);
  return value;
}

static inline int64_t tiny_memory_estimate(void* user_data, const apo_request_info* request) {
  tiny_state* state = (tiny_state*)user_data;
  pthread_mutex_lock(&state->mutex);
  ++state->memory_estimates;
  pthread_mutex_unlock(&state->mutex);
  if (strcmp(request->prompt, "negative estimate") == 0) return -1;
  return 4096;
}

static inline apo_status tiny_outputs(apo_run_context* context, const apo_request_info* requests,
                                      size_t count) {
  size_t i;
  int32_t step;
  const int64_t shape[3] = {1, 2, 2};
  for (step = 1; step <= 2; ++step) {
    apo_status status = apo_run_step(context, step, 2);
    if (status != APO_STATUS_OK) return status;
  }
  for (i = 0; i < count; ++i) {
    apo_status status =
        apo_run_set_output(context, i, "image", make_tensor(3, shape, (float)requests[i].seed));
    if (status != APO_STATUS_OK) return status;
    status = apo_run_set_quality(context, i, 0.5);
    if (status != APO_STATUS_OK) return status;
  }
  return APO_STATUS_OK;
}

static inline apo_status tiny_run(void* user_data, apo_run_context* context,
                                  const apo_request_info* requests, size_t count) {
  tiny_state* state = (tiny_state*)user_data;
  const char* prompt = requests[0].prompt;
  apo_status result = APO_STATUS_OK;
  size_t i;
  pthread_mutex_lock(&state->mutex);
  ++state->batches;
  ++state->running;
  pthread_mutex_unlock(&state->mutex);
  if (requests[0].struct_size < sizeof(apo_request_info)) {
    result = APO_STATUS_INTERNAL;
  } else if (strcmp(prompt, "oom") == 0) {
    result = APO_STATUS_OUT_OF_MEMORY;
  } else if (strcmp(prompt, "fail") == 0) {
    apo_run_set_error(context, "the tiny workflow failed on purpose");
    result = APO_STATUS_WORKFLOW_FAILED;
  } else if (strcmp(prompt, "strange") == 0) {
    result = (apo_status)999;
  } else if (strcmp(prompt, "slow") == 0) {
    int32_t step;
    for (step = 1; step <= 10000; ++step) {
      result = apo_run_step(context, step, 10000);
      if (result != APO_STATUS_OK) break;
      sleep_ms(1);
    }
    if (result == APO_STATUS_OK) result = tiny_outputs(context, requests, count);
  } else if (strcmp(prompt, "echo") == 0) {
    for (i = 0; i < count && result == APO_STATUS_OK; ++i) {
      DLManagedTensorVersioned* image = NULL;
      result = apo_run_input(context, i, "image", &image);
      if (result == APO_STATUS_OK) result = apo_run_set_output(context, i, "echo", image);
    }
  } else if (strcmp(prompt, "weight") == 0) {
    for (i = 0; i < count && result == APO_STATUS_OK; ++i) {
      DLManagedTensorVersioned* weight = NULL;
      result = apo_run_model_weight(context, "vae", "decoder.conv_in.bias", &weight);
      if (result == APO_STATUS_OK) result = apo_run_set_output(context, i, "weight", weight);
    }
  } else {
    result = tiny_outputs(context, requests, count);
  }
  pthread_mutex_lock(&state->mutex);
  --state->running;
  pthread_mutex_unlock(&state->mutex);
  return result;
}

static inline void tiny_destroy(void* user_data) {
  tiny_state* state = (tiny_state*)user_data;
  pthread_mutex_lock(&state->mutex);
  ++state->destroyed;
  pthread_mutex_unlock(&state->mutex);
}

static inline apo_workflow_callbacks tiny_callbacks(const char* name, tiny_state* state) {
  apo_workflow_callbacks callbacks;
  apo_workflow_callbacks_init(&callbacks);
  callbacks.name = name;
  callbacks.user_data = state;
  callbacks.memory_estimate = tiny_memory_estimate;
  callbacks.run = tiny_run;
  callbacks.destroy_user_data = tiny_destroy;
  return callbacks;
}

/* An engine that runs each request as soon as it comes (no batching delay), on one ATen thread. */
static const char* const kEngineConfig =
    "{\"scheduling\": {\"max_queue_delay_ms\": 0},"
    " \"system_optimization\": {\"max_cpu_threads\": 1},"
    " \"performance_optimization\": {\"max_memory_usage_gb\": 4, \"model_precision\": \"fp32\"},"
    " \"memory_optimization\": {\"cleanup_interval_s\": 3600}}";

static inline apo_engine* make_engine(apo_shutdown_mode destroy_mode) {
  apo_config* config = NULL;
  apo_engine* engine = NULL;
  apo_engine_options options;
  apo_engine_options_init(&options);
  options.destroy_mode = destroy_mode;
  CHECK(apo_config_load_string(kEngineConfig, "engine.json", NULL, &config) == APO_STATUS_OK);
  CHECK(apo_engine_create(config, &options, &engine) == APO_STATUS_OK);
  apo_config_free(config); /* the engine keeps its own copy */
  return engine;
}

static inline apo_request_options tiny_request(const char* workflow, const char* prompt,
                                               uint64_t seed) {
  apo_request_options options;
  apo_request_options_init(&options);
  options.workflow = workflow;
  options.prompt = prompt;
  options.width = 8;
  options.height = 8;
  options.seed = seed;
  return options;
}

/* Submits, waits up to 30 s, and gives the result's status (-1 when something failed). */
static inline int run_to_end(apo_engine* engine, const apo_request_options* options,
                             apo_ticket** out) {
  apo_ticket* ticket = NULL;
  apo_result_info info;
  if (apo_engine_submit(engine, options, &ticket) != APO_STATUS_OK) return -1;
  if (apo_ticket_wait(ticket, 30000) != APO_STATUS_OK) return -1;
  memset(&info, 0, sizeof info);
  info.struct_size = sizeof info;
  if (apo_ticket_result(ticket, &info) != APO_STATUS_OK) return -1;
  if (out != NULL) {
    *out = ticket;
  } else {
    apo_ticket_free(ticket);
  }
  return info.status;
}

#endif /* APO_CAPI_TEST_SUPPORT_H */

/* The C ABI under threads: threads submit, poll, read and free tickets at once, and one thread
 * frees handles (a ticket, a config, the engine) that the others are using. Nothing may crash,
 * and every call on a handle freed under it must fail cleanly (INVALID_ARGUMENT). Meant to run
 * under ASan and TSan too. */
#define _POSIX_C_SOURCE 200809L

#include "capi_test_support.h"

enum { kThreads = 4, kRequestsPerThread = 20 };

typedef struct shared_handles {
  apo_engine* engine;
  apo_ticket* shared_ticket; /* freed by one thread while the others use it */
  apo_config* shared_config; /* likewise */
  int index;
  int unexpected; /* statuses no call should give */
} shared_handles;

static pthread_mutex_t unexpected_mutex = PTHREAD_MUTEX_INITIALIZER;

static void expect(shared_handles* shared, int condition, const char* what, apo_status status) {
  if (condition) return;
  pthread_mutex_lock(&unexpected_mutex);
  ++shared->unexpected;
  fprintf(stderr, "thread %d: %s gave %s: %s\n", shared->index, what, apo_status_name(status),
          apo_last_error());
  pthread_mutex_unlock(&unexpected_mutex);
}

static void* worker(void* argument) {
  shared_handles* shared = (shared_handles*)argument;
  int k;
  for (k = 0; k < kRequestsPerThread; ++k) {
    apo_request_options options = tiny_request("tiny", "", (uint64_t)(shared->index * 1000 + k));
    apo_ticket* ticket = NULL;
    apo_result_info info;
    DLManagedTensorVersioned* image = NULL;
    int ready = 0;
    char* json = NULL;
    /* The shared handles, which another thread frees at some point. */
    apo_status status = apo_ticket_poll(shared->shared_ticket, &ready);
    expect(shared, status == APO_STATUS_OK || status == APO_STATUS_INVALID_ARGUMENT,
           "poll of the shared ticket", status);
    status = apo_ticket_cancel(shared->shared_ticket);
    expect(shared, status == APO_STATUS_OK || status == APO_STATUS_INVALID_ARGUMENT,
           "cancel of the shared ticket", status);
    status = apo_config_to_json(shared->shared_config, &json);
    expect(shared, status == APO_STATUS_OK || status == APO_STATUS_INVALID_ARGUMENT,
           "to_json of the shared config", status);
    apo_string_free(json);
    if (shared->index == 0 && k == kRequestsPerThread / 2) {
      apo_ticket_free(shared->shared_ticket);
      apo_config_free(shared->shared_config);
    }
    status = apo_engine_submit(shared->engine, &options, &ticket);
    expect(shared, status == APO_STATUS_OK, "submit", status);
    if (status == APO_STATUS_OK) {
      while ((status = apo_ticket_poll(ticket, &ready)) == APO_STATUS_OK && !ready) sleep_ms(1);
      expect(shared, status == APO_STATUS_OK, "poll", status);
      memset(&info, 0, sizeof info);
      info.struct_size = sizeof info;
      status = apo_ticket_result(ticket, &info);
      expect(shared, status == APO_STATUS_OK, "result", status);
      if (info.status == APO_STATUS_OK) {
        status = apo_ticket_output(ticket, "image", &image);
        expect(shared, status == APO_STATUS_OK, "output", status);
        if (status == APO_STATUS_OK) {
          expect(shared, float_at(image, 0) == (float)(shared->index * 1000 + k), "output value",
                 status);
          delete_tensor(image);
        }
      }
      apo_ticket_free(ticket);
      apo_ticket_free(ticket); /* twice: the second is stale */
    }
  }
  return NULL;
}

/* Submits and polls until the engine is destroyed under it. */
static void* submitter_until_gone(void* argument) {
  shared_handles* shared = (shared_handles*)argument;
  for (;;) {
    apo_request_options options = tiny_request("tiny", "", 1);
    apo_ticket* ticket = NULL;
    apo_status status = apo_engine_submit(shared->engine, &options, &ticket);
    if (status == APO_STATUS_INVALID_ARGUMENT) break; /* the engine is gone */
    expect(shared, status == APO_STATUS_OK, "submit to a dying engine", status);
    if (status == APO_STATUS_OK) {
      status = apo_ticket_wait(ticket, 30000);
      expect(shared, status == APO_STATUS_OK, "wait on a dying engine", status);
      apo_ticket_free(ticket);
    }
  }
  return NULL;
}

int main(void) {
  tiny_state state;
  apo_workflow_callbacks callbacks;
  apo_request_options options;
  apo_ticket* shared_ticket = NULL;
  apo_config* shared_config = NULL;
  pthread_t threads[kThreads];
  shared_handles shared[kThreads];
  apo_engine* engine = make_engine(APO_SHUTDOWN_CANCEL);
  int t;
  int unexpected = 0;

  tiny_init(&state);
  callbacks = tiny_callbacks("tiny", &state);
  CHECK(apo_engine_add_workflow(engine, &callbacks) == APO_STATUS_OK);
  options = tiny_request("tiny", "slow", 99);
  options.width = 64; /* its own batch */
  CHECK(apo_engine_submit(engine, &options, &shared_ticket) == APO_STATUS_OK);
  CHECK(apo_config_load_string("{}", NULL, NULL, &shared_config) == APO_STATUS_OK);

  for (t = 0; t < kThreads; ++t) {
    shared[t].engine = engine;
    shared[t].shared_ticket = shared_ticket;
    shared[t].shared_config = shared_config;
    shared[t].index = t;
    shared[t].unexpected = 0;
    CHECK(pthread_create(&threads[t], NULL, worker, &shared[t]) == 0);
  }
  for (t = 0; t < kThreads; ++t) pthread_join(threads[t], NULL);
  for (t = 0; t < kThreads; ++t) unexpected += shared[t].unexpected;
  CHECK(unexpected == 0);

  /* The engine destroyed while threads submit to it and wait on its tickets. */
  for (t = 0; t < kThreads; ++t) {
    shared[t].unexpected = 0;
    CHECK(pthread_create(&threads[t], NULL, submitter_until_gone, &shared[t]) == 0);
  }
  sleep_ms(50);
  apo_engine_destroy(engine);
  for (t = 0; t < kThreads; ++t) pthread_join(threads[t], NULL);
  unexpected = 0;
  for (t = 0; t < kThreads; ++t) unexpected += shared[t].unexpected;
  CHECK(unexpected == 0);
  CHECK(tiny_read(&state, &state.destroyed) == 1);

  if (failures != 0) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("C ABI threads: all checks passed\n");
  return 0;
}

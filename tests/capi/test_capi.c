/* The C ABI from a C99 program: every entry point, including every error path. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apo/apo.h"

static int failures = 0;

#define CHECK(condition)                                                            \
  do {                                                                              \
    if (!(condition)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #condition); \
      ++failures;                                                                   \
    }                                                                               \
  } while (0)

static int contains(const char* text, const char* part) {
  return strstr(text, part) != NULL;
}

static void test_version_and_names(void) {
  CHECK(strlen(apo_version()) >= 5);
  CHECK(strcmp(apo_status_name(APO_STATUS_OK), "OK") == 0);
  CHECK(strcmp(apo_status_name(APO_STATUS_INVALID_CONFIG), "INVALID_CONFIG") == 0);
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
  apo_config_options options;
  apo_config* config = NULL;
  char* json = NULL;

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

  options.presets = bad_presets;
  options.preset_count = 1;
  CHECK(apo_config_load_string("{}", NULL, &options, &config) == APO_STATUS_INVALID_CONFIG);
  CHECK(contains(apo_last_error(), "did you mean \"rtx4090\""));

  options.presets = NULL; /* NULL with a count */
  CHECK(apo_config_load_string("{}", NULL, &options, &config) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "options->presets is NULL"));

  apo_config_options_init(&options);
  options.struct_size = 4;
  CHECK(apo_config_load_string("{}", NULL, &options, &config) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "struct_size"));

  /* The machine check: a core that no machine has. */
  apo_config_options_init(&options);
  options.check_machine = 1;
  CHECK(apo_config_load_string("{\"system_optimization\": {\"cpu_affinity\": [65000]}}", NULL,
                               &options, &config) == APO_STATUS_INVALID_CONFIG);
  CHECK(contains(apo_last_error(), "no such core"));
}

static void test_null_and_stale_handles(void) {
  apo_config* config = NULL;
  char* json = NULL;
  CHECK(apo_config_load_string(NULL, NULL, NULL, &config) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "json is NULL"));
  CHECK(apo_config_load_file(NULL, NULL, &config) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(apo_config_load_string("{}", NULL, NULL, NULL) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "out_config is NULL"));
  CHECK(apo_config_to_json(NULL, &json) == APO_STATUS_INVALID_ARGUMENT);

  CHECK(apo_config_load_string("{}", NULL, NULL, &config) == APO_STATUS_OK);
  CHECK(apo_config_to_json(config, NULL) == APO_STATUS_INVALID_ARGUMENT);
  apo_config_free(config);
  /* The handle is stale now: reported, not followed. Freeing it again is ignored. */
  CHECK(apo_config_to_json(config, &json) == APO_STATUS_INVALID_ARGUMENT);
  CHECK(contains(apo_last_error(), "not a live apo_config"));
  apo_config_free(config);
  apo_config_free(NULL);
  {
    int not_a_config = 0;
    CHECK(apo_config_to_json((const apo_config*)&not_a_config, &json) ==
          APO_STATUS_INVALID_ARGUMENT);
  }
  apo_string_free(NULL);
  apo_config_options_init(NULL);
}

static void test_probe(void) {
  char* json = NULL;
  CHECK(apo_probe_json(&json) == APO_STATUS_OK);
  CHECK(json != NULL && contains(json, "\"logical_cores\""));
  apo_string_free(json);
  CHECK(apo_probe_json(NULL) == APO_STATUS_INVALID_ARGUMENT);
}

int main(void) {
  test_version_and_names();
  test_load_string_and_json();
  test_invalid_config();
  test_load_file();
  test_options();
  test_null_and_stale_handles();
  test_probe();
  if (failures != 0) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("C ABI: all checks passed\n");
  return 0;
}

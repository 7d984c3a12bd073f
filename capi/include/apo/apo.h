/*
 * apo's C ABI (C99). Stable and append-only: functions and enum values are only ever added.
 *
 * Rules that hold for every function:
 * - Handles are opaque. A NULL, freed or foreign handle is reported as
 *   APO_STATUS_INVALID_ARGUMENT, never followed.
 * - Every call that can fail returns apo_status; apo_last_error() then has the message for this
 *   thread. A failed call leaves its output parameters untouched.
 * - Release functions return void and accept NULL.
 * - Option structs begin with uint32_t struct_size: set it to sizeof the struct (the *_init
 *   functions do), so that later versions can append fields.
 * - Strings are UTF-8. Strings apo returns are freed with apo_string_free.
 */
#ifndef APO_APO_H
#define APO_APO_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define APO_API __declspec(dllexport)
#else
#define APO_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes; the non-zero values equal apo::ErrorCode. */
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
  APO_STATUS_INTERNAL = 11
} apo_status;

/* The library's version, "MAJOR.MINOR.PATCH". */
APO_API const char* apo_version(void);

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

/* Sets every field to its default: no presets, no overrides, no machine check. */
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

/* Frees a configuration. NULL, and a handle already freed, are ignored. */
APO_API void apo_config_free(apo_config* config);

/* ---- Machine ------------------------------------------------------------------------------ */

/* This machine (CPU, memory, CUDA devices, NVML) as JSON; free it with apo_string_free. */
APO_API apo_status apo_probe_json(char** out_json);

#ifdef __cplusplus
}
#endif

#endif /* APO_APO_H */

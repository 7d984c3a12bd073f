/* Probe the machine and load a configuration through the C ABI. */
#include <stdio.h>

#include "apo/apo.h"

int main(int argc, char** argv) {
  char* json = NULL;
  apo_config* config = NULL;
  if (apo_probe_json(&json) != APO_STATUS_OK) {
    fprintf(stderr, "probe failed: %s\n", apo_last_error());
    return 1;
  }
  printf("%s\n", json);
  apo_string_free(json);

  if (argc > 1) {
    apo_status status = apo_config_load_file(argv[1], NULL, &config);
    if (status != APO_STATUS_OK) {
      fprintf(stderr, "%s:\n%s\n", apo_status_name(status), apo_last_error());
      return 1;
    }
    apo_config_to_json(config, &json);
    printf("%s\n", json);
    apo_string_free(json);
    apo_config_free(config);
  }
  return 0;
}

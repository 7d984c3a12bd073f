/* Generates a picture with a reference workflow, end to end through the C ABI: an engine, the
 * eight reference workflows on the committed models, one small request, and its output read
 * back as a DLPack tensor (its shape and a checksum printed).
 *
 *   example_generate_c [MODELS_DIR [WORKFLOW [STEPS]]]
 *
 * MODELS_DIR defaults to $APO_REFERENCE_MODELS or the source tree's assets/reference. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ATen/dlpack.h> /* DLPack's header, as libtorch ships it */

#include "apo/apo.h"

static int fail(const char* what, apo_status status) {
  fprintf(stderr, "%s: %s: %s\n", what, apo_status_name(status), apo_last_error());
  return 1;
}

int main(int argc, char** argv) {
  const char* models_dir = argc > 1 ? argv[1] : NULL;
  const char* workflow = argc > 2 ? argv[2] : "newbie_anime";
  const int steps = argc > 3 ? atoi(argv[3]) : 4;
  apo_config* config = NULL;
  apo_engine* engine = NULL;
  apo_ticket* ticket = NULL;
  apo_request_options request;
  apo_result_info result;
  apo_status status;
  int code = 0;
  size_t i;

  if (apo_abi_version() != APO_ABI_VERSION) {
    fprintf(stderr, "libapo has ABI %u, this program was built for %d\n",
            (unsigned)apo_abi_version(), APO_ABI_VERSION);
    return 1;
  }
  /* Full-precision weights and one ATen thread keep the run small and its checksum stable. */
  status = apo_config_load_string(
      "{\"performance_optimization\": {\"model_precision\": \"fp32\", \"max_memory_usage_gb\": 4},"
      " \"system_optimization\": {\"max_cpu_threads\": 1},"
      " \"scheduling\": {\"max_queue_delay_ms\": 0}}",
      "generate.json", NULL, &config);
  if (status != APO_STATUS_OK) return fail("config", status);
  status = apo_engine_create(config, NULL, &engine);
  apo_config_free(config);
  if (status != APO_STATUS_OK) return fail("engine", status);
  status = apo_engine_add_reference_workflows(engine, models_dir);
  if (status != APO_STATUS_OK) {
    apo_engine_destroy(engine);
    return fail("reference workflows", status);
  }

  apo_request_options_init(&request);
  request.workflow = workflow;
  request.prompt = "a large red circle in the centre, blue background";
  request.width = 64; /* the reference image model's size */
  request.height = 64;
  request.steps = steps;
  request.seed = 7;
  status = apo_engine_submit(engine, &request, &ticket);
  if (status != APO_STATUS_OK) {
    apo_engine_destroy(engine);
    return fail("submit", status);
  }
  apo_ticket_wait(ticket, UINT32_MAX);

  memset(&result, 0, sizeof result);
  result.struct_size = sizeof result;
  apo_ticket_result(ticket, &result);
  printf("request %llu: %s %s\n", (unsigned long long)result.request_id,
         apo_status_name((apo_status)result.status), result.message);
  printf("on %s in %.3f s (denoise %.3f s, decode %.3f s), peak %lld bytes", result.device,
         result.total_s, result.denoise_s, result.decode_s, (long long)result.peak_memory_bytes);
  if (result.has_quality) printf(", judged %.3f", result.quality);
  printf("\n");
  if (result.status != APO_STATUS_OK) code = 1;

  for (i = 0; i < result.output_count; ++i) {
    const char* name = NULL;
    DLManagedTensorVersioned* tensor = NULL;
    double sum = 0;
    int64_t numel = 1;
    int32_t d;
    apo_ticket_output_name(ticket, i, &name);
    status = apo_ticket_output(ticket, name, &tensor);
    if (status != APO_STATUS_OK) {
      code = fail("output", status);
      continue;
    }
    printf("output \"%s\": shape [", name);
    for (d = 0; d < tensor->dl_tensor.ndim; ++d) {
      printf("%s%lld", d ? ", " : "", (long long)tensor->dl_tensor.shape[d]);
      numel *= tensor->dl_tensor.shape[d];
    }
    printf("]");
    if (tensor->dl_tensor.dtype.code == kDLFloat && tensor->dl_tensor.dtype.bits == 32) {
      const float* data =
          (const float*)((const char*)tensor->dl_tensor.data + tensor->dl_tensor.byte_offset);
      int64_t k;
      for (k = 0; k < numel; ++k) {
        /* Element k in row-major order, through the strides (NULL strides: contiguous). */
        int64_t rest = k, offset = 0;
        for (d = tensor->dl_tensor.ndim - 1; d >= 0; --d) {
          const int64_t size = tensor->dl_tensor.shape[d];
          const int64_t index = rest % size;
          rest /= size;
          offset += index * (tensor->dl_tensor.strides ? tensor->dl_tensor.strides[d]
                                                       : (d == tensor->dl_tensor.ndim - 1 ? 1 : 0));
        }
        if (tensor->dl_tensor.strides == NULL) offset = k;
        sum += data[offset];
      }
      printf(", float32, sum %.6f, mean %.6f", sum, sum / (double)numel);
    }
    printf("\n");
    tensor->deleter(tensor);
  }
  if (result.output_count == 0) code = 1;

  apo_ticket_free(ticket);
  apo_engine_destroy(engine);
  return code;
}

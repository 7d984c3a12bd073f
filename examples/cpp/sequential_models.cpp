// The guide's SequentialModelManager ("load models one at a time to minimize peak memory; unload
// the least used when 80% of max_memory_gb is reached") is a ModelCache configuration, not a
// class of its own: one device budget, the 80% eviction threshold, and no host tier to demote to.
//
//   example_sequential_models MODEL.safetensors [MODEL.safetensors ...]
#include <cstdio>

#include <apo/core/units.hpp>
#include <apo/models/model_cache.hpp>

int main(int argc, char** argv) {
  using namespace apo::literals;
  apo::models::ModelCacheOptions options;
  // max_memory_gb = 16 on the GPU; without one, a device tier in host memory stands in.
  const bool gpu = !apo::probe_machine().cuda_devices.empty();
  const c10::Device device = gpu ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU, 0);
  options.device_budgets = {{device, 16_GiB}};
  options.eviction_threshold = 0.8;  // unload the least used above 80%
  options.demote_to_host = false;    // unloading drops the model: load on demand next time
  options.host_budget_bytes = 1_GiB;  // the loader's staging only
  options.precision = apo::Precision::fp16;
  apo::models::ModelCache cache(options);

  for (int i = 1; i < argc; ++i) {
    try {
      // load_model_on_demand(model_name): the lease keeps it resident while it is used.
      const apo::models::Lease lease = cache.acquire({argv[i], apo::models::ModelKind::diffusion,
                                                      std::nullopt, "example"},
                                                     device);
      std::printf("%s: %zu weights, %s on %s; %s in use\n", argv[i], lease->weights().size(),
                  apo::format_bytes(lease->bytes()).c_str(), device.str().c_str(),
                  apo::format_bytes(cache.used_bytes(device)).c_str());
    } catch (const apo::Error& error) {
      std::fprintf(stderr, "%s\n", error.what());
      return 1;
    }
  }
  const auto stats = cache.stats();
  std::printf("loads %lld, evictions %lld\n", static_cast<long long>(stats.loads),
              static_cast<long long>(stats.evictions));
  return 0;
}

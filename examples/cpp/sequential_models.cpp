// The guide's SequentialModelManager ("load models one at a time to minimize peak memory; unload
// the least used when 80% of max_memory_gb is reached") is a ModelCache configuration, not a
// class of its own: one device ledger, the 80% eviction threshold, and no demotion to the host.
//
//   example_sequential_models MODEL.safetensors [MODEL.safetensors ...]
#include <cstdio>
#include <memory>

#include <apo/core/error.hpp>
#include <apo/core/machine.hpp>
#include <apo/core/units.hpp>
#include <apo/models/model_cache.hpp>

int main(int argc, char** argv) {
  using namespace apo::literals;
  apo::models::ModelCacheOptions options;
  // max_memory_gb = 16 on the GPU, or on the CPU when there is none.
  const bool gpu = !apo::probe_machine().cuda_devices.empty();
  const apo::Device device = gpu ? apo::Device::cuda(0) : apo::Device::cpu();
  const auto ledger = std::make_shared<apo::memory::MemoryLedger>(device, 16_GiB);
  options.device_ledgers = {ledger};
  // On the GPU the host tier is only the loader's staging; on the CPU the device is the host.
  options.host_ledger =
      gpu ? std::make_shared<apo::memory::MemoryLedger>(apo::Device::cpu(), 1_GiB) : ledger;
  options.eviction_threshold = 0.8;  // unload the least used above 80%
  options.demote_to_host = false;    // unloading drops the model: load on demand next time
  apo::quant::PrecisionSettings fp16;
  fp16.precision = apo::Precision::fp16;
  options.quantization = apo::models::planner_of(
      apo::quant::ConfiguredPrecision(fp16, apo::quant::QuantizationRules()));
  apo::models::ModelCache cache(options);

  for (int i = 1; i < argc; ++i) {
    try {
      // load_model_on_demand(model_name): the lease keeps it resident while it is used.
      const apo::models::Lease lease = cache.acquire(
          {argv[i], apo::models::ModelKind::diffusion, std::nullopt, "example"}, device);
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

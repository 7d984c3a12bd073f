#include "apo_catch.hpp"

#include <string>

#include "apo/core/config.hpp"
#include "apo/tune/presets.hpp"

using namespace apo::literals;

namespace {

apo::MachineInfo machine_with(std::string gpu_name, std::int64_t memory_bytes, int cc = 89) {
  apo::MachineInfo machine;
  machine.cpu.logical_cores = 16;
  for (int core = 0; core < 16; ++core) machine.cpu.usable_cores.push_back(core);
  machine.memory.total_bytes = 64_GiB;
  if (!gpu_name.empty()) {
    apo::CudaDeviceInfo device;
    device.name = std::move(gpu_name);
    device.total_bytes = memory_bytes;
    device.compute_capability_major = cc / 10;
    device.compute_capability_minor = cc % 10;
    machine.cuda_devices.push_back(device);
  } else {
    machine.memory.total_bytes = memory_bytes;
    machine.cuda_status = "no CUDA device";
  }
  return machine;
}

// What nvidia-smi reports for these cards, in MiB.
constexpr std::int64_t kRtx4090 = 24564_MiB;
constexpr std::int64_t kRtx4060Ti = 16380_MiB;
constexpr std::int64_t kRtx3080 = 10240_MiB;
constexpr std::int64_t kH100 = 81559_MiB;

}  // namespace

TEST_CASE("every preset loads, and kinds are as documented", "[presets]") {
  int hardware = 0, profiles = 0, workflows = 0;
  for (const auto& preset : apo::tune::presets()) {
    INFO(preset.name);
    CHECK_NOTHROW(apo::tune::config_loader().preset(std::string(preset.name)).load());
    CHECK(apo::tune::find_preset(preset.name) == &preset);
    hardware += preset.kind == apo::tune::PresetKind::hardware;
    profiles += preset.kind == apo::tune::PresetKind::profile;
    workflows += preset.kind == apo::tune::PresetKind::workflow;
  }
  CHECK(hardware == 3);
  CHECK(profiles == 3);
  CHECK(workflows == 8);
  CHECK(apo::tune::find_preset("rtx5090") == nullptr);
}

TEST_CASE("the memory budget rule gives the guide's figures", "[presets]") {
  CHECK(apo::tune::device_memory_budget_gib(kRtx4090) == 20.0);
  CHECK(apo::tune::device_memory_budget_gib(kRtx4060Ti) == 13.0);
  CHECK(apo::tune::device_memory_budget_gib(kRtx3080) == 7.5);
  CHECK(apo::tune::device_memory_budget_gib(kH100) == 69.0);
  CHECK(apo::tune::device_memory_budget_gib(512_MiB) == 0.5);
  CHECK(apo::tune::host_memory_budget_gib(24_GiB) == 16.5);
}

TEST_CASE("named cards get the guide's presets with a budget from their memory", "[presets]") {
  SECTION("RTX 4090") {
    const auto rec = apo::tune::recommend(machine_with("NVIDIA GeForce RTX 4090", kRtx4090));
    CHECK(rec.hardware == "rtx4090");
    const apo::Config& c = rec.loaded.config;
    CHECK(c.performance.max_memory_usage_gib == apo::Auto<double>(20.0));
    CHECK(c.performance.model_precision == apo::Precision::fp16);
    CHECK(c.performance.batch_size == 2);
    REQUIRE(rec.expected.has_value());
    CHECK(rec.expected->video.min_s == 90);
    CHECK(rec.expected->videos_per_hour().max_s == 40);
  }
  SECTION("RTX 4060 Ti is not mistaken for another card") {
    const auto rec = apo::tune::recommend(machine_with("NVIDIA GeForce RTX 4060 Ti", kRtx4060Ti));
    CHECK(rec.hardware == "rtx4060ti");
    CHECK(rec.loaded.config.performance.max_memory_usage_gib == apo::Auto<double>(13.0));
    CHECK(rec.loaded.config.attention.slice_size == 2);
  }
  SECTION("RTX 3080 Laptop with 16 GB gets its real budget, not the desktop card's") {
    const auto rec =
        apo::tune::recommend(machine_with("NVIDIA GeForce RTX 3080 Laptop GPU", 16_GiB, 86));
    CHECK(rec.hardware == "rtx3080");
    CHECK(rec.loaded.config.performance.max_memory_usage_gib == apo::Auto<double>(13.0));
    CHECK(rec.loaded.config.memory.enable_cpu_offload);
  }
}

TEST_CASE("other devices get the automatic tier for their memory", "[presets]") {
  SECTION("H100: bf16, batch 4, no slicing") {
    const auto rec = apo::tune::recommend(machine_with("NVIDIA H100 80GB HBM3", kH100, 90));
    CHECK(rec.hardware == "auto");
    const apo::Config& c = rec.loaded.config;
    CHECK(c.performance.model_precision == apo::Precision::bf16);
    CHECK(c.performance.batch_size == 4);
    CHECK(c.performance.max_memory_usage_gib == apo::Auto<double>(69.0));
    CHECK_FALSE(c.attention.enable_attention_slicing);
    CHECK_FALSE(rec.expected.has_value());
  }
  SECTION("an 8 GB card: fp8, sequential offload, slicing 1") {
    const auto rec = apo::tune::recommend(machine_with("NVIDIA GeForce RTX 4060", 8_GiB));
    const apo::Config& c = rec.loaded.config;
    CHECK(c.performance.model_precision == apo::Precision::fp8_e4m3);
    CHECK(c.performance.enable_quantization);
    CHECK(c.memory.enable_sequential_cpu_offload);
    CHECK(c.attention.enable_attention_slicing);
    CHECK(c.attention.slice_size == 1);
    CHECK(c.performance.max_memory_usage_gib == apo::Auto<double>(6.0));  // 0.88 x 8 - 1.2
  }
  SECTION("no GPU: the CPU preset with 70% of RAM") {
    const auto rec = apo::tune::recommend(machine_with("", 24_GiB));
    CHECK(rec.hardware == "auto");
    CHECK(rec.loaded.config.performance.max_memory_usage_gib == apo::Auto<double>(16.5));
    CHECK(rec.loaded.config.performance.batch_size == 1);
  }
}

TEST_CASE("a profile's wishes yield to the hardware's limits", "[presets]") {
  SECTION("speed_first on an RTX 3080: fp8 and batch 1, not batch 4") {
    const auto rec =
        apo::tune::recommend(machine_with("NVIDIA GeForce RTX 3080", kRtx3080, 86), "speed_first");
    const apo::Config& c = rec.loaded.config;
    CHECK(c.profile_name == "speed_first");
    CHECK(c.generation.num_inference_steps == 15);
    CHECK(c.performance.model_precision == apo::Precision::fp8_e4m3);
    CHECK(c.performance.batch_size == 1);
    CHECK(c.attention.enable_attention_slicing);
  }
  SECTION("quality_first on an RTX 3080 keeps fp8: fp16 would not fit") {
    const auto rec = apo::tune::recommend(machine_with("NVIDIA GeForce RTX 3080", kRtx3080, 86),
                                          "quality_first", "hunyuan_quality");
    const apo::Config& c = rec.loaded.config;
    CHECK(c.performance.model_precision == apo::Precision::fp8_e4m3);
    CHECK(c.performance.enable_quantization);
    CHECK(c.generation.num_inference_steps == 75);
    CHECK(c.hunyuan.scheduler == apo::Sampler::ddim);
  }
  SECTION("speed_first on an RTX 4090: fp8 from the profile, batch 2 from the card") {
    const auto rec =
        apo::tune::recommend(machine_with("NVIDIA GeForce RTX 4090", kRtx4090), "speed_first");
    CHECK(rec.loaded.config.performance.model_precision == apo::Precision::fp8_e4m3);
    CHECK(rec.loaded.config.performance.batch_size == 2);
  }
  SECTION("quality_first on an H100 keeps batch 1") {
    const auto rec = apo::tune::recommend(machine_with("NVIDIA H100", kH100, 90), "quality_first");
    CHECK(rec.loaded.config.performance.batch_size == 1);
    CHECK(rec.loaded.config.performance.model_precision == apo::Precision::bf16);
  }
}

TEST_CASE("recommend rejects unknown or misplaced preset names", "[presets]") {
  const auto machine = machine_with("NVIDIA GeForce RTX 4090", kRtx4090);
  CHECK_THROWS_AS(apo::tune::recommend(machine, "fastest"), apo::ConfigError);
  CHECK_THROWS_AS(apo::tune::recommend(machine, "hunyuan_speed"), apo::ConfigError);
  CHECK_THROWS_AS(apo::tune::recommend(machine, std::nullopt, "balanced"), apo::ConfigError);
}

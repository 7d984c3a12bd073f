// The guide's presets as JSON layers, the automatic rule, and recommend().

#include "apo/tune/presets.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace apo::tune {

namespace {

// Hardware presets: the guide's blocks as printed, except where docs/config.md says otherwise.
constexpr std::string_view kRtx4090 = R"({
    "performance_optimization": {
        "strategy": "balanced",
        "model_precision": "fp16",
        "enable_quantization": false,
        "max_memory_usage_gb": 20.0,
        "batch_size": 2,
        "parallel_execution": true
    },
    "memory_optimization": {
        "enable_attention_slicing": false,
        "enable_cpu_offload": false,
        "enable_model_sharing": true,
        "aggressive_cleanup": false
    }
})";

constexpr std::string_view kRtx3080 = R"({
    "performance_optimization": {
        "strategy": "memory_first",
        "model_precision": "fp8",
        "enable_quantization": true,
        "max_memory_usage_gb": 7.5,  # the guide says 14.0 for "16GB"; an RTX 3080 has 10 GB
        "batch_size": 1,
        "parallel_execution": false
    },
    "memory_optimization": {
        "enable_attention_slicing": true,
        "attention_slice_size": 1,
        "enable_cpu_offload": true,
        "enable_sequential_cpu_offload": false,
        "aggressive_cleanup": true
    }
})";

constexpr std::string_view kRtx4060Ti = R"({
    "performance_optimization": {
        "strategy": "balanced",
        "model_precision": "fp8",
        "enable_quantization": true,
        "max_memory_usage_gb": 13.0,
        "batch_size": 1,
        "parallel_execution": false
    },
    "memory_optimization": {
        "enable_attention_slicing": true,
        "attention_slice_size": 2,
        "enable_cpu_offload": false,
        "enable_model_sharing": true,
        "aggressive_cleanup": true
    }
})";

// Profiles, as printed in the guide.
constexpr std::string_view kSpeedFirst = R"({
    "profile_name": "speed_first",
    "target_generation_time": 30,  // seconds
    "acceptable_quality_loss": 0.15,
    "settings": {
        "model_precision": "fp8",
        "num_inference_steps": 15,
        "guidance_scale": 6.0,
        "enable_lightning_lora": true,
        "batch_size": 4,
        "enable_attention_slicing": true,
        "use_fast_scheduler": true
    }
})";

constexpr std::string_view kBalanced = R"({
    "profile_name": "balanced",
    "target_generation_time": 90,  // seconds
    "acceptable_quality_loss": 0.05,
    "settings": {
        "model_precision": "fp16",
        "num_inference_steps": 30,
        "guidance_scale": 7.5,
        "enable_lightning_lora": false,
        "batch_size": 2,
        "enable_attention_slicing": false,
        "use_fast_scheduler": false
    }
})";

constexpr std::string_view kQualityFirst = R"({
    "profile_name": "quality_first",
    "target_generation_time": 300,  // seconds
    "acceptable_quality_loss": 0.0,
    "settings": {
        "model_precision": "fp16",
        "num_inference_steps": 75,
        "guidance_scale": 9.0,
        "enable_lightning_lora": false,
        "batch_size": 1,
        "enable_refinement": true,
        "use_high_quality_scheduler": true
    }
})";

// Workflow presets: the guide's JSON (HunyuanVideo) and its Python dicts as JSON blocks.
constexpr std::string_view kHunyuanSpeed = R"({
    "hunyuan_optimization": {
        "enable_fast_sampling": true,
        "num_inference_steps": 25,  # Reduced from 50
        "guidance_scale": 7.0,      # Slightly reduced
        "enable_cfg_rescale": false,
        "scheduler": "euler_ancestral",  # Faster scheduler
        "enable_attention_slicing": true,
        "attention_slice_size": 2
    }
})";

constexpr std::string_view kHunyuanQuality = R"({
    "hunyuan_optimization": {
        "enable_fast_sampling": false,
        "num_inference_steps": 75,  # Increased for quality
        "guidance_scale": 8.5,      # Higher guidance
        "enable_cfg_rescale": true,
        "cfg_rescale_multiplier": 0.7,
        "scheduler": "ddim",        # Higher quality scheduler
        "enable_temporal_consistency": true
    }
})";

constexpr std::string_view kWanLightning = R"({
    "wan_optimization": {
        "use_lightning_lora": true,
        "lightning_steps": 4,
        "lightning_guidance_scale": 1.0,  # the guide says 5.0; distilled LoRAs run without CFG
        "enable_noise_scheduling": true,
        "noise_schedule": "linear"
    }
})";

constexpr std::string_view kWanInpainting = R"({
    "wan_optimization": {
        "dual_guidance_strength": 0.8,
        "inpaint_strength": 0.7,
        "preserve_structure": true,
        "enable_edge_enhancement": true
    }
})";

constexpr std::string_view kNewBieSpeed = R"({
    "newbie_optimization": {
        "num_inference_steps": 20,
        "guidance_scale": 7.0,
        "enable_karras_sigmas": true,
        "scheduler": "dpm_solver_multistep",
        "enable_vae_slicing": true
    }
})";

constexpr std::string_view kNewBieQuality = R"({
    "newbie_optimization": {
        "num_inference_steps": 50,
        "guidance_scale": 9.0,
        "enable_karras_sigmas": false,
        "scheduler": "ddim",
        "enable_attention_refinement": true,
        "refinement_steps": 10
    }
})";

constexpr std::string_view kQwenRelighting = R"({
    "qwen_optimization": {
        "use_lightning_lora": true,
        "lightning_steps": 4,
        "preserve_structure_strength": 0.9,
        "lighting_blend_mode": "soft_light"
    }
})";

constexpr std::string_view kQwenLayered = R"({
    "qwen_optimization": {
        "layer_generation_strategy": "sequential",
        "enable_layer_caching": true,
        "compositing_optimization": true,
        "max_concurrent_layers": 2
    }
})";

const std::array<Preset, 14> kPresets{{
    {"rtx4090", PresetKind::hardware, "NVIDIA RTX 4090 (24 GB): optimal settings", kRtx4090,
     "RTX 4090", 24 * GiB, ExpectedPerformance{{90, 120}, {15, 25}}},
    {"rtx3080", PresetKind::hardware, "NVIDIA RTX 3080 (10 GB): memory-optimized settings",
     kRtx3080, "RTX 3080", 10 * GiB, ExpectedPerformance{{150, 200}, {25, 35}}},
    {"rtx4060ti", PresetKind::hardware, "NVIDIA RTX 4060 Ti (16 GB): balanced settings", kRtx4060Ti,
     "RTX 4060 Ti", 16 * GiB, std::nullopt},
    {"speed_first",
     PresetKind::profile,
     "fast drafts: fp8, 15 steps, lightning LoRA",
     kSpeedFirst,
     {},
     0,
     std::nullopt},
    {"balanced",
     PresetKind::profile,
     "the default: fp16, 30 steps",
     kBalanced,
     {},
     0,
     std::nullopt},
    {"quality_first",
     PresetKind::profile,
     "finals: fp16, 75 steps, refinement",
     kQualityFirst,
     {},
     0,
     std::nullopt},
    {"hunyuan_speed",
     PresetKind::workflow,
     "HunyuanVideo, speed-optimized",
     kHunyuanSpeed,
     {},
     0,
     std::nullopt},
    {"hunyuan_quality",
     PresetKind::workflow,
     "HunyuanVideo, quality-optimized",
     kHunyuanQuality,
     {},
     0,
     std::nullopt},
    {"wan_lightning",
     PresetKind::workflow,
     "Wan video, 4-step lightning LoRA",
     kWanLightning,
     {},
     0,
     std::nullopt},
    {"wan_inpainting",
     PresetKind::workflow,
     "Wan video inpainting",
     kWanInpainting,
     {},
     0,
     std::nullopt},
    {"newbie_speed",
     PresetKind::workflow,
     "NewBie anime images, speed-optimized",
     kNewBieSpeed,
     {},
     0,
     std::nullopt},
    {"newbie_quality",
     PresetKind::workflow,
     "NewBie anime images, quality-optimized",
     kNewBieQuality,
     {},
     0,
     std::nullopt},
    {"qwen_relighting",
     PresetKind::workflow,
     "Qwen image relighting, lightning LoRA",
     kQwenRelighting,
     {},
     0,
     std::nullopt},
    {"qwen_layered",
     PresetKind::workflow,
     "Qwen layered generation",
     kQwenLayered,
     {},
     0,
     std::nullopt},
}};

bool contains_ignoring_case(std::string_view text, std::string_view part) {
  if (part.empty()) return false;
  const auto it =
      std::search(text.begin(), text.end(), part.begin(), part.end(), [](char a, char b) {
        return std::tolower(static_cast<unsigned char>(a)) ==
               std::tolower(static_cast<unsigned char>(b));
      });
  return it != text.end();
}

// The automatic tiers, by device memory: the named presets' settings extended to every size.
struct Tier {
  double min_gib;
  std::string_view strategy;
  bool quantize;  // fp8 weights
  int batch_size;
  bool parallel;
  int slice_size;  // 0: no attention slicing
  bool cpu_offload;
  bool sequential_offload;
  bool aggressive_cleanup;
};

constexpr std::array<Tier, 5> kTiers{{
    {40, "balanced", false, 4, true, 0, false, false, false},    // A100, H100, H200, RTX 6000
    {20, "balanced", false, 2, true, 0, false, false, false},    // like the RTX 4090
    {14, "balanced", true, 1, false, 2, false, false, true},     // like the RTX 4060 Ti 16 GB
    {10, "memory_first", true, 1, false, 1, true, false, true},  // like the RTX 3080
    {0, "memory_first", true, 1, false, 1, true, true, true},    // 8 GB cards and smaller
}};

std::string tier_json(const Tier& tier, std::string_view precision, double budget_gib) {
  return fmt::format(
      R"({{
    "performance_optimization": {{
        "strategy": "{}",
        "model_precision": "{}",
        "enable_quantization": {},
        "max_memory_usage_gb": {},
        "batch_size": {},
        "parallel_execution": {}
    }},
    "memory_optimization": {{
        "enable_cpu_offload": {},
        "enable_sequential_cpu_offload": {},
        "enable_model_sharing": true,
        "aggressive_cleanup": {}
    }},
    "attention_optimization": {{
        "enable_attention_slicing": {},
        "slice_size": {}
    }}
}})",
      tier.strategy, precision, tier.quantize, budget_gib, tier.batch_size, tier.parallel,
      tier.cpu_offload, tier.sequential_offload, tier.aggressive_cleanup, tier.slice_size > 0,
      std::max(tier.slice_size, 1));
}

const Tier& tier_for(std::int64_t total_bytes) {
  const double gib = bytes_to_gib(total_bytes);
  for (const Tier& tier : kTiers) {
    if (gib >= tier.min_gib) return tier;
  }
  return kTiers.back();
}

const Preset* named_preset_for(const CudaDeviceInfo& device) {
  // Longest match first, so "RTX 4060 Ti" is not taken for a plainer name.
  const Preset* best = nullptr;
  for (const Preset& preset : kPresets) {
    if (preset.kind != PresetKind::hardware) continue;
    if (!contains_ignoring_case(device.name, preset.device_match)) continue;
    if (best == nullptr || preset.device_match.size() > best->device_match.size()) best = &preset;
  }
  return best;
}

const Preset& preset_of_kind(const std::string& name, PresetKind kind) {
  const Preset* preset = find_preset(name);
  if (preset == nullptr || preset->kind != kind) {
    std::vector<std::string_view> names;
    for (const Preset& p : kPresets) {
      if (p.kind == kind) names.push_back(p.name);
    }
    throw ConfigError({{{"<presets>", 0, 0},
                        "",
                        fmt::format("unknown {} \"{}\" (expected one of {})", to_string(kind), name,
                                    fmt::join(names, ", "))}});
  }
  return *preset;
}

}  // namespace

std::span<const Preset> presets() {
  return kPresets;
}

const Preset* find_preset(std::string_view name) {
  for (const Preset& preset : kPresets) {
    if (preset.name == name) return &preset;
  }
  return nullptr;
}

const PresetCatalog& preset_catalog() {
  class Catalog final : public PresetCatalog {
   public:
    std::optional<std::string_view> find(std::string_view name) const override {
      const Preset* preset = find_preset(name);
      return preset ? std::optional<std::string_view>(preset->json) : std::nullopt;
    }
    std::vector<std::string_view> names() const override {
      std::vector<std::string_view> names;
      for (const Preset& preset : kPresets) names.push_back(preset.name);
      return names;
    }
  };
  static const Catalog catalog;
  return catalog;
}

double device_memory_budget_gib(std::int64_t total_bytes) {
  const double budget = 0.88 * bytes_to_gib(total_bytes) - 1.2;
  return std::max(0.5, std::round(budget * 2.0) / 2.0);
}

double host_memory_budget_gib(std::int64_t total_bytes) {
  return std::max(0.5, std::floor(0.7 * bytes_to_gib(total_bytes) * 2.0) / 2.0);
}

MemoryBudgets memory_budgets(const Config& config, const MachineInfo& machine) {
  MemoryBudgets budgets;
  const Auto<double>& device_gib = config.performance.max_memory_usage_gib;
  for (const CudaDeviceInfo& cuda : machine.cuda_devices) {
    budgets.devices.emplace_back(
        Device::cuda(cuda.index),
        gib_to_bytes(device_gib.value_or(device_memory_budget_gib(cuda.total_bytes))));
    if (!config.performance.parallel_execution) break;
  }
  const double host_rule = host_memory_budget_gib(machine.memory.total_bytes);
  if (budgets.devices.empty()) {
    const std::int64_t cpu = gib_to_bytes(device_gib.value_or(host_rule));
    budgets.devices.emplace_back(Device::cpu(), cpu);
    budgets.host_bytes = cpu;
  } else {
    budgets.host_bytes = gib_to_bytes(config.system.memory_pool_size_gib.value_or(host_rule));
  }
  return budgets;
}

std::string automatic_device_preset(const CudaDeviceInfo& device) {
  const Tier& tier = tier_for(device.total_bytes);
  // bf16 where the tensor cores have it (Ampere and newer) for the big tier: the DiT video and
  // image models ship in bf16. The guide's smaller cards keep its fp16 / fp8 choices.
  std::string_view precision = "fp16";
  if (tier.quantize) {
    precision = "fp8";
  } else if (tier.min_gib >= 40 && device.compute_capability() >= 80) {
    precision = "bf16";
  }
  return tier_json(tier, precision, device_memory_budget_gib(device.total_bytes));
}

std::string automatic_cpu_preset(const MachineInfo& machine) {
  return fmt::format(
      R"({{
    "performance_optimization": {{
        "strategy": "memory_first",
        "model_precision": "bf16",
        "enable_quantization": false,
        "max_memory_usage_gb": {},
        "batch_size": 1,
        "parallel_execution": false
    }},
    "memory_optimization": {{
        "enable_cpu_offload": false,
        "aggressive_cleanup": true
    }},
    "attention_optimization": {{
        "enable_attention_slicing": true,
        "slice_size": 1
    }}
}})",
      host_memory_budget_gib(machine.memory.total_bytes));
}

Recommendation recommend(const MachineInfo& machine, std::optional<std::string> profile,
                         std::optional<std::string> workflow) {
  Recommendation result;
  ConfigLoader hardware_only = config_loader();
  ConfigLoader full = config_loader();
  auto both = [&](auto&& add) {
    add(hardware_only);
    add(full);
  };

  if (machine.cuda_devices.empty()) {
    result.hardware = "auto";
    const std::string layer = automatic_cpu_preset(machine);
    both([&](ConfigLoader& l) { l.preset_json(layer, "automatic preset (CPU)"); });
    result.reasons.push_back(
        fmt::format("no CUDA device ({}): the CPU preset, with {:.1f} GiB of the host's {} (70%)",
                    machine.cuda_status, host_memory_budget_gib(machine.memory.total_bytes),
                    format_bytes(machine.memory.total_bytes)));
  } else {
    const CudaDeviceInfo& device = machine.cuda_devices.front();
    const double budget = device_memory_budget_gib(device.total_bytes);
    const std::string budget_layer =
        fmt::format(R"({{"performance_optimization": {{"max_memory_usage_gb": {}}}}})", budget);
    if (const Preset* named = named_preset_for(device)) {
      result.hardware = std::string(named->name);
      result.expected = named->expected;
      both([&](ConfigLoader& l) { l.preset(result.hardware); });
      result.reasons.push_back(
          fmt::format("device 0 is \"{}\": the guide's {} preset", device.name, named->name));
    } else {
      result.hardware = "auto";
      const std::string layer = automatic_device_preset(device);
      both(
          [&](ConfigLoader& l) { l.preset_json(layer, "automatic preset (" + device.name + ")"); });
      result.reasons.push_back(fmt::format(
          "device 0 is \"{}\" ({}, compute capability {}.{}): the automatic preset for its "
          "memory tier",
          device.name, format_bytes(device.total_bytes), device.compute_capability_major,
          device.compute_capability_minor));
    }
    both([&](ConfigLoader& l) { l.preset_json(budget_layer, "memory budget of " + device.name); });
    result.reasons.push_back(
        fmt::format("memory budget {:.1f} GiB = 0.88 x {} - 1.2 GiB, rounded to 0.5 GiB", budget,
                    format_bytes(device.total_bytes)));
    if (machine.cuda_devices.size() > 1) {
      result.reasons.push_back(
          fmt::format("{} CUDA devices: the budget applies to each; presets follow device 0",
                      machine.cuda_devices.size()));
    }
  }

  if (profile) {
    const Preset& p = preset_of_kind(*profile, PresetKind::profile);
    full.preset(std::string(p.name));
    result.reasons.push_back(fmt::format("profile {}: {}", p.name, p.summary));
  }
  if (workflow) {
    const Preset& w = preset_of_kind(*workflow, PresetKind::workflow);
    full.preset(std::string(w.name));
    result.reasons.push_back(fmt::format("workflow {}: {}", w.name, w.summary));
  }

  result.loaded = full.load();
  if (profile) {
    // The hardware's limits win over the profile's wishes.
    const Config hardware = hardware_only.load().config;
    const Config& wished = result.loaded.config;
    std::vector<std::string> limits;
    // The profile may ask for fewer bytes per weight; at equal size the hardware's format wins
    // (bf16 where the card and the models want it).
    const Precision precision = apo::bytes_per_element(wished.performance.model_precision) <
                                        apo::bytes_per_element(hardware.performance.model_precision)
                                    ? wished.performance.model_precision
                                    : hardware.performance.model_precision;
    if (precision != wished.performance.model_precision) {
      limits.push_back(fmt::format(R"("model_precision": "{}")", to_string(precision)));
    }
    if (apo::bytes_per_element(precision) == 1 && !wished.performance.enable_quantization) {
      limits.push_back(R"("enable_quantization": true)");
    }
    if (hardware.performance.batch_size < wished.performance.batch_size) {
      limits.push_back(fmt::format(R"("batch_size": {})", hardware.performance.batch_size));
    }
    std::string attention;
    if (hardware.attention.enable_attention_slicing && !wished.attention.enable_attention_slicing) {
      attention = fmt::format(
          R"(, "attention_optimization": {{"enable_attention_slicing": true, "slice_size": {}}})",
          hardware.attention.slice_size);
    }
    if (!limits.empty() || !attention.empty()) {
      const std::string layer = fmt::format(R"({{"performance_optimization": {{{}}}{}}})",
                                            fmt::join(limits, ", "), attention);
      result.loaded =
          full.preset_json(layer, "limits of the " + result.hardware + " preset").load();
      result.reasons.push_back(
          "the hardware's limits win over the profile: the more frugal precision, the smaller "
          "batch, attention slicing if either asks");
    }
  }
  return result;
}

}  // namespace apo::tune

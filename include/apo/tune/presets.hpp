#pragma once

/// @file
/// @brief Presets: the guide's hardware presets (RTX 4090, 3080, 4060 Ti), profiles
/// (speed_first, balanced, quality_first) and workflow presets, the automatic rule for any other
/// device, and recommend(), which picks the layers for a machine. See docs/config.md for the rule
/// and for the places where the guide's numbers were corrected.

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "apo/core/config.hpp"
#include "apo/core/device.hpp"
#include "apo/core/machine.hpp"

namespace apo::tune {

enum class PresetKind { hardware, profile, workflow };

}  // namespace apo::tune

template <>
struct apo::EnumTraits<apo::tune::PresetKind> {
  static constexpr std::string_view noun = "preset kind";
  static constexpr std::array<EnumEntry<tune::PresetKind>, 3> entries{{
      {tune::PresetKind::hardware, "hardware"},
      {tune::PresetKind::profile, "profile"},
      {tune::PresetKind::workflow, "workflow"},
  }};
};

namespace apo::tune {

/// @brief A time range in seconds, as the guide gives expected performance.
struct SecondsRange {
  double min_s = 0;
  double max_s = 0;
};

/// @brief What the guide expects of a card with its preset.
struct ExpectedPerformance {
  SecondsRange video;
  SecondsRange image;

  /// @brief Videos per hour at batch size 1, derived from the video times (the guide's own
  /// "batch throughput" figures do not follow from its times; docs/config.md).
  SecondsRange videos_per_hour() const { return {3600.0 / video.max_s, 3600.0 / video.min_s}; }
};

/// @brief A named configuration layer in the guide's JSON.
struct Preset {
  std::string_view name;
  PresetKind kind;
  std::string_view summary;
  std::string_view json;
  /// Hardware presets: the CUDA device name they apply to ("RTX 4090"), case-insensitively.
  std::string_view device_match;
  /// Hardware presets: the memory of the card they were written for.
  std::int64_t nominal_memory_bytes = 0;
  std::optional<ExpectedPerformance> expected;
};

/// @brief Every preset, hardware first, then profiles, then workflows.
std::span<const Preset> presets();

/// @brief The preset of this name, or nullptr.
const Preset* find_preset(std::string_view name);

/// @brief Every preset as a catalog for ConfigLoader::preset.
const PresetCatalog& preset_catalog();

/// @brief A ConfigLoader that knows apo's presets by name.
inline ConfigLoader config_loader() {
  return ConfigLoader(preset_catalog());
}

/// @brief Device memory apo uses by default on a CUDA device of `total_bytes`:
/// 0.88 × total − 1.2 GiB (ComfyUI's weight budget, which gives the guide's 20 GiB on a 24 GiB
/// card and 13 GiB on 16 GiB), rounded to the nearest 0.5 GiB, at least 0.5 GiB.
double device_memory_budget_gib(std::int64_t total_bytes);

/// @brief Host memory apo uses by default when it runs on the CPU: 70% of RAM (the guide's
/// "< 70% RAM" target), rounded down to 0.5 GiB.
double host_memory_budget_gib(std::int64_t total_bytes);

/// @brief The memory apo may use on a machine: a budget per compute device, and the host tier's.
struct MemoryBudgets {
  /// Every CUDA device (only the first unless performance_optimization.parallel_execution), each
  /// with max_memory_usage_gb or, when "auto", device_memory_budget_gib; without CUDA devices,
  /// the CPU with max_memory_usage_gb or host_memory_budget_gib.
  std::vector<std::pair<Device, std::int64_t>> devices;
  /// Host memory for models offloaded from devices: system_optimization.memory_pool_size_gb or,
  /// when "auto", host_memory_budget_gib. When the CPU computes, its budget serves both (host
  /// memory is one memory), and this equals it.
  std::int64_t host_bytes = 0;
  /// Whether the CPU computes (no CUDA device), so that host tier and device are one.
  bool cpu_computes() const noexcept { return devices.size() == 1 && devices[0].first.is_cpu(); }
};

/// @brief The budgets of `config` on `machine`: the one rule for "auto" memory, used by the
/// engine to make its ledgers.
MemoryBudgets memory_budgets(const Config& config, const MachineInfo& machine);

/// @brief The automatic preset for a CUDA device that no named preset matches, by memory tier
/// and compute capability (docs/config.md has the table), as a JSON layer.
std::string automatic_device_preset(const CudaDeviceInfo& device);

/// @brief The automatic preset for a machine without a CUDA device.
std::string automatic_cpu_preset(const MachineInfo& machine);

/// @brief The configuration apo recommends for a machine, with the layers it used and why.
struct Recommendation {
  std::string hardware;              ///< a preset name, or "auto"
  std::vector<std::string> reasons;  ///< one sentence per decision
  LoadedConfig loaded;
  std::optional<ExpectedPerformance> expected;
};

/// @brief Picks the hardware preset for the first CUDA device (by name, else the automatic
/// rule; the CPU rule without one), sets the memory budget from the device, then applies the
/// profile and workflow presets when given. Hardware limits win over a profile: the more frugal
/// precision, the smaller batch, and slicing if either asks for it.
/// @throws ConfigError for an unknown profile or workflow name, or one of the wrong kind.
Recommendation recommend(const MachineInfo& machine, std::optional<std::string> profile = {},
                         std::optional<std::string> workflow = {});

}  // namespace apo::tune

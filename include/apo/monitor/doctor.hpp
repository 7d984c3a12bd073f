#pragma once

/// @file
/// @brief `apo doctor`: reads the system settings the guide's "System-Level Optimizations" tune
/// (CPU governor, open-file limit, swappiness, GPU persistence mode and power limit), the
/// locked-memory limit and transparent huge pages, and the free disk where models and
/// temporaries live, and says for each what was found, what apo wants and why, and the command
/// that would change it. It only reads; it never changes the system.

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apo/core/enum_names.hpp"
#include "apo/core/units.hpp"

namespace apo::monitor {

/// @brief How a setting compares with what apo wants.
enum class CheckStatus : std::uint8_t {
  ok,       ///< as apo wants it
  warn,     ///< apo runs, slower or with less headroom than it could
  fail,     ///< apo will fail or stall (a disk nearly full)
  unknown,  ///< not readable here (not exposed, missing, malformed): the message says which
};

}  // namespace apo::monitor

template <>
struct apo::EnumTraits<apo::monitor::CheckStatus> {
  static constexpr std::string_view noun = "check status";
  static constexpr std::array<EnumEntry<monitor::CheckStatus>, 4> entries{{
      {monitor::CheckStatus::ok, "ok"},
      {monitor::CheckStatus::warn, "warn"},
      {monitor::CheckStatus::fail, "fail"},
      {monitor::CheckStatus::unknown, "unknown"},
  }};
};

namespace apo::monitor {

/// @brief One check's result.
struct Finding {
  std::string check;  ///< "swappiness", "gpu 0 power limit", "free disk (models)"
  CheckStatus status = CheckStatus::unknown;
  std::string found;   ///< "vm.swappiness is 60"
  std::string wanted;  ///< what apo wants and why, one sentence
  std::string fix;     ///< the command(s) that would change it, one per line; empty when ok
};

/// @brief What NVML says of one GPU's persistence mode and power limits.
struct GpuPowerReading {
  int index = 0;     ///< NVML's (and nvidia-smi -i's) index
  std::string name;  ///< "NVIDIA GeForce RTX 4090"
  std::optional<bool> persistence_mode;
  std::optional<double> power_limit_w;
  std::optional<double> max_power_limit_w;
};

/// @brief The GPUs NVML sees, or why it cannot be asked.
struct GpuReading {
  bool available = false;  ///< NVML loaded and initialized
  std::string status;      ///< why not, when not available
  std::vector<GpuPowerReading> gpus;
};

/// @brief Reads the GPUs; injectable so tests can fake them.
using GpuReader = std::function<GpuReading()>;

/// @brief NVML through the driver's libnvidia-ml.so.1 (dlopen'ed): no GPUs, and a status saying
/// why, where there is no NVIDIA driver.
GpuReading read_gpus_with_nvml();

/// @brief What run_doctor reads and what it compares with.
struct DoctorOptions {
  /// Where /proc and /sys are read from: "/" on a real machine, a fixture tree in tests.
  std::filesystem::path root = "/";
  /// Where models live: free disk is checked there. Empty: $APO_REFERENCE_MODELS when set, else
  /// not checked (the command line passes the reference models' directory).
  std::filesystem::path models_path;
  /// Where temporaries go. Empty: std::filesystem::temp_directory_path().
  std::filesystem::path temp_path;
  /// Below this free space a path warns: room for one more large checkpoint and its quantized
  /// copy (a 13B-parameter video model is about 13 GiB in fp8, 26 GiB in bf16).
  std::int64_t min_free_disk_bytes = 20 * GiB;
  /// Below this free space a path fails: writes of a single model file would not fit.
  std::int64_t critical_free_disk_bytes = 1 * GiB;
  /// The guide's `ulimit -n 65536`.
  std::int64_t min_open_files = 65536;
  /// The guide sets 1; anything up to this keeps the kernel from swapping resident weights.
  int max_swappiness = 10;
  /// Locked (pinned) memory the process may hold: the guide's memory_pool_size_gb of 8.
  std::int64_t min_locked_memory_bytes = 8 * GiB;
  /// NVML by default; tests inject fakes.
  GpuReader gpu_reader = read_gpus_with_nvml;
};

/// @brief Runs every check and returns one finding per check (per GPU for the GPU checks), in a
/// fixed order: CPU governor, open files, swappiness, locked memory, transparent huge pages,
/// GPUs, free disk. Never throws for what it reads: missing or malformed files are findings with
/// status unknown.
std::vector<Finding> run_doctor(const DoctorOptions& options = {});

/// @brief A table for people: status, check, found, and the fix under each finding that has one.
std::string format_findings(const std::vector<Finding>& findings);

/// @brief {"findings": [{"check", "status", "found", "wanted", "fix"}], "worst": status}.
std::string findings_to_json(const std::vector<Finding>& findings);

/// @brief The worst status among the findings (fail > warn > unknown > ok); ok when empty.
CheckStatus worst_status(const std::vector<Finding>& findings);

}  // namespace apo::monitor

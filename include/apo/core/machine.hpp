#pragma once

/// @file
/// @brief What this machine has: CPU, host memory and CUDA devices, with NVML telemetry where
/// the driver's library is present. No GPU, no CUDA in the build or no NVML are normal answers,
/// reported in the status strings, never errors.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace apo {

struct CpuInfo {
  std::string model;              ///< "AMD EPYC 7B13", or "unknown"
  int logical_cores = 0;          ///< online logical CPUs
  std::vector<int> usable_cores;  ///< the CPUs this process may run on (its affinity mask)
};

struct HostMemoryInfo {
  std::int64_t total_bytes = 0;
  std::int64_t available_bytes = 0;
};

/// @brief Live readings from NVML; each is unset when NVML cannot give it.
struct GpuTelemetry {
  std::optional<int> utilization_percent;
  std::optional<int> memory_utilization_percent;
  std::optional<int> temperature_c;
  std::optional<double> power_w;
  std::optional<double> power_limit_w;
};

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  std::string pci_bus_id;  ///< "0000:01:00.0"
  std::int64_t total_bytes = 0;
  /// Free memory as NVML reports it; without NVML, the runtime's figure for the current device
  /// and total_bytes (an upper bound) for the others, which are not asked because asking would
  /// create a CUDA context on each.
  std::int64_t free_bytes = 0;
  int compute_capability_major = 0;
  int compute_capability_minor = 0;
  int sm_count = 0;
  /// Result of running a small apo kernel on the device (probe with run_kernel_check): "ok" or
  /// the CUDA error, e.g. when apo was not built for this architecture. Unset when not run.
  std::optional<std::string> kernel_check;
  GpuTelemetry telemetry;

  int compute_capability() const noexcept {
    return compute_capability_major * 10 + compute_capability_minor;
  }
};

struct MachineInfo {
  CpuInfo cpu;
  HostMemoryInfo memory;
  bool cuda_built = false;  ///< apo was built with its CUDA kernels
  std::string cuda_status;  ///< "2 devices", "no CUDA driver", "built without CUDA", ...
  std::vector<CudaDeviceInfo> cuda_devices;
  std::string nvml_status;  ///< "ok", "libnvidia-ml.so.1 not found", ...
  std::string torch_version;
  std::string apo_version;
};

struct ProbeOptions {
  /// Launch a small kernel on each CUDA device to check that apo's kernels run there.
  bool run_kernel_check = false;
};

/// @brief Host memory alone, cheaply (no device query): for budgets and allocation limits.
HostMemoryInfo read_host_memory();

/// @brief Reads this machine. Never throws for missing hardware or drivers.
MachineInfo probe_machine(const ProbeOptions& options = {});

/// @brief The probe as JSON (what `apo probe --json` prints).
std::string to_json(const MachineInfo& machine, int indent = 2);

}  // namespace apo

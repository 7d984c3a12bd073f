#pragma once

// NVML, loaded at run time with dlopen so that apo needs neither the library nor its header to
// build or run: a machine without an NVIDIA driver simply has no NVML.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "apo/core/machine.hpp"

namespace apo::detail {

class Nvml {
 public:
  /// Loads libnvidia-ml.so.1 and initializes it; status() says why when that failed.
  Nvml();
  ~Nvml();
  Nvml(const Nvml&) = delete;
  Nvml& operator=(const Nvml&) = delete;

  bool ok() const noexcept { return initialized_; }
  const std::string& status() const noexcept { return status_; }

  /// Number of GPUs NVML sees (0 when not ok()).
  int device_count() const;

  /// Readings of the GPU at this PCI bus id ("0000:01:00.0"); empty when unknown.
  GpuTelemetry telemetry(const std::string& pci_bus_id) const;

  /// Free memory of the GPU at this PCI bus id, as NVML counts it (no CUDA context needed);
  /// nullopt when unknown.
  std::optional<std::int64_t> free_memory_bytes(const std::string& pci_bus_id) const;

  /// What `nvidia-smi -pm` and `-pl` set on one GPU; a reading the driver refuses stays empty.
  struct PowerSettings {
    std::string name;                      ///< "NVIDIA H100 80GB HBM3"
    std::optional<bool> persistence_mode;  ///< Linux only
    std::optional<double> power_limit_w;   ///< the limit set now
    std::optional<double> min_power_limit_w;
    std::optional<double> max_power_limit_w;
  };
  /// Settings of the GPU at this NVML index (nvidia-smi's -i); nullopt when there is none.
  std::optional<PowerSettings> power_settings(int index) const;

 private:
  struct Api;
  void* library_ = nullptr;
  Api* api_ = nullptr;
  bool initialized_ = false;
  std::string status_;
};

}  // namespace apo::detail

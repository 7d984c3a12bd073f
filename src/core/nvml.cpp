#include "nvml.hpp"

#include <dlfcn.h>

namespace apo::detail {

namespace {

// The few NVML declarations apo uses, as the NVML API documents them.
using nvmlReturn_t = int;
using nvmlDevice_t = struct nvmlDevice_st*;
struct nvmlUtilization_t {
  unsigned int gpu;
  unsigned int memory;
};
struct nvmlMemory_t {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
constexpr nvmlReturn_t kNvmlSuccess = 0;
constexpr int kNvmlTemperatureGpu = 0;

}  // namespace

struct Nvml::Api {
  nvmlReturn_t (*init)();
  nvmlReturn_t (*shutdown)();
  const char* (*error_string)(nvmlReturn_t);
  nvmlReturn_t (*device_count)(unsigned int*);
  nvmlReturn_t (*handle_by_pci_bus_id)(const char*, nvmlDevice_t*);
  nvmlReturn_t (*utilization)(nvmlDevice_t, nvmlUtilization_t*);
  nvmlReturn_t (*temperature)(nvmlDevice_t, int, unsigned int*);
  nvmlReturn_t (*power_usage)(nvmlDevice_t, unsigned int*);
  nvmlReturn_t (*power_limit)(nvmlDevice_t, unsigned int*);
  nvmlReturn_t (*memory_info)(nvmlDevice_t, nvmlMemory_t*);
  // Optional: power_settings() reads what it can when a driver lacks one of these.
  nvmlReturn_t (*handle_by_index)(unsigned int, nvmlDevice_t*);
  nvmlReturn_t (*name)(nvmlDevice_t, char*, unsigned int);
  nvmlReturn_t (*persistence_mode)(nvmlDevice_t, int*);
  nvmlReturn_t (*management_limit)(nvmlDevice_t, unsigned int*);
  nvmlReturn_t (*limit_constraints)(nvmlDevice_t, unsigned int*, unsigned int*);
};

namespace {

template <class F>
bool load_symbol(void* library, const char* name, F& out) {
  out = reinterpret_cast<F>(dlsym(library, name));
  return out != nullptr;
}

}  // namespace

Nvml::Nvml() {
  library_ = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (library_ == nullptr) {
    status_ = "libnvidia-ml.so.1 not found (no NVIDIA driver)";
    return;
  }
  api_ = new Api{};
  const bool loaded =
      load_symbol(library_, "nvmlInit_v2", api_->init) &&
      load_symbol(library_, "nvmlShutdown", api_->shutdown) &&
      load_symbol(library_, "nvmlErrorString", api_->error_string) &&
      load_symbol(library_, "nvmlDeviceGetCount_v2", api_->device_count) &&
      load_symbol(library_, "nvmlDeviceGetHandleByPciBusId_v2", api_->handle_by_pci_bus_id) &&
      load_symbol(library_, "nvmlDeviceGetUtilizationRates", api_->utilization) &&
      load_symbol(library_, "nvmlDeviceGetTemperature", api_->temperature) &&
      load_symbol(library_, "nvmlDeviceGetPowerUsage", api_->power_usage) &&
      load_symbol(library_, "nvmlDeviceGetEnforcedPowerLimit", api_->power_limit) &&
      load_symbol(library_, "nvmlDeviceGetMemoryInfo", api_->memory_info);
  load_symbol(library_, "nvmlDeviceGetHandleByIndex_v2", api_->handle_by_index);
  load_symbol(library_, "nvmlDeviceGetName", api_->name);
  load_symbol(library_, "nvmlDeviceGetPersistenceMode", api_->persistence_mode);
  load_symbol(library_, "nvmlDeviceGetPowerManagementLimit", api_->management_limit);
  load_symbol(library_, "nvmlDeviceGetPowerManagementLimitConstraints", api_->limit_constraints);
  if (!loaded) {
    status_ = "libnvidia-ml.so.1 lacks a function apo needs (driver too old)";
    return;
  }
  if (const nvmlReturn_t rc = api_->init(); rc != kNvmlSuccess) {
    status_ = std::string("nvmlInit failed: ") + api_->error_string(rc);
    return;
  }
  initialized_ = true;
  status_ = "ok";
}

Nvml::~Nvml() {
  if (initialized_) api_->shutdown();
  delete api_;
  if (library_ != nullptr) dlclose(library_);
}

int Nvml::device_count() const {
  unsigned int count = 0;
  if (!initialized_ || api_->device_count(&count) != kNvmlSuccess) return 0;
  return static_cast<int>(count);
}

GpuTelemetry Nvml::telemetry(const std::string& pci_bus_id) const {
  GpuTelemetry readings;
  nvmlDevice_t device = nullptr;
  if (!initialized_ || api_->handle_by_pci_bus_id(pci_bus_id.c_str(), &device) != kNvmlSuccess) {
    return readings;
  }
  if (nvmlUtilization_t utilization{}; api_->utilization(device, &utilization) == kNvmlSuccess) {
    readings.utilization_percent = static_cast<int>(utilization.gpu);
    readings.memory_utilization_percent = static_cast<int>(utilization.memory);
  }
  if (unsigned int celsius = 0;
      api_->temperature(device, kNvmlTemperatureGpu, &celsius) == kNvmlSuccess) {
    readings.temperature_c = static_cast<int>(celsius);
  }
  if (unsigned int milliwatts = 0; api_->power_usage(device, &milliwatts) == kNvmlSuccess) {
    readings.power_w = milliwatts / 1000.0;
  }
  if (unsigned int milliwatts = 0; api_->power_limit(device, &milliwatts) == kNvmlSuccess) {
    readings.power_limit_w = milliwatts / 1000.0;
  }
  return readings;
}

std::optional<std::int64_t> Nvml::free_memory_bytes(const std::string& pci_bus_id) const {
  nvmlDevice_t device = nullptr;
  nvmlMemory_t memory{};
  if (!initialized_ || api_->handle_by_pci_bus_id(pci_bus_id.c_str(), &device) != kNvmlSuccess ||
      api_->memory_info(device, &memory) != kNvmlSuccess) {
    return std::nullopt;
  }
  return static_cast<std::int64_t>(memory.free);
}

std::optional<Nvml::PowerSettings> Nvml::power_settings(int index) const {
  nvmlDevice_t device = nullptr;
  if (!initialized_ || index < 0 || api_->handle_by_index == nullptr ||
      api_->handle_by_index(static_cast<unsigned int>(index), &device) != kNvmlSuccess) {
    return std::nullopt;
  }
  PowerSettings settings;
  // NVML_DEVICE_NAME_V2_BUFFER_SIZE is 96.
  if (char name[96] = {};
      api_->name != nullptr && api_->name(device, name, sizeof name) == kNvmlSuccess) {
    settings.name = name;
  }
  // nvmlEnableState_t: NVML_FEATURE_DISABLED = 0, NVML_FEATURE_ENABLED = 1.
  if (int mode = 0;
      api_->persistence_mode != nullptr && api_->persistence_mode(device, &mode) == kNvmlSuccess) {
    settings.persistence_mode = mode != 0;
  }
  if (unsigned int milliwatts = 0; api_->management_limit != nullptr &&
                                   api_->management_limit(device, &milliwatts) == kNvmlSuccess) {
    settings.power_limit_w = milliwatts / 1000.0;
  }
  if (unsigned int low = 0, high = 0;
      api_->limit_constraints != nullptr &&
      api_->limit_constraints(device, &low, &high) == kNvmlSuccess) {
    settings.min_power_limit_w = low / 1000.0;
    settings.max_power_limit_w = high / 1000.0;
  }
  return settings;
}

}  // namespace apo::detail

// probe_machine(): CPU, host memory, CUDA devices and NVML telemetry.

#include "apo/core/machine.hpp"

#include <sched.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include <torch/version.h>
#include <nlohmann/json.hpp>

#include "apo/version.hpp"
#include "cuda_devices.hpp"
#include "nvml.hpp"

namespace apo {

namespace {

std::string trim(std::string text) {
  const auto first = text.find_first_not_of(" \t");
  const auto last = text.find_last_not_of(" \t\r\n");
  return first == std::string::npos ? std::string() : text.substr(first, last - first + 1);
}

CpuInfo read_cpu() {
  CpuInfo cpu;
  cpu.model = "unknown";
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      if (const auto colon = line.find(':'); colon != std::string::npos) {
        cpu.model = trim(line.substr(colon + 1));
      }
      break;
    }
  }
  cpu.logical_cores = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  cpu_set_t mask;
  CPU_ZERO(&mask);
  if (sched_getaffinity(0, sizeof(mask), &mask) == 0) {
    for (int core = 0; core < CPU_SETSIZE; ++core) {
      if (CPU_ISSET(core, &mask)) cpu.usable_cores.push_back(core);
    }
  } else {
    for (int core = 0; core < cpu.logical_cores; ++core) cpu.usable_cores.push_back(core);
  }
  return cpu;
}

}  // namespace

HostMemoryInfo read_host_memory() {
  HostMemoryInfo memory;
  std::ifstream meminfo("/proc/meminfo");
  for (std::string line; std::getline(meminfo, line);) {
    auto kib_of = [&](const char* key) -> std::int64_t {
      if (line.rfind(key, 0) != 0) return -1;
      return std::stoll(line.substr(std::char_traits<char>::length(key))) * 1024;
    };
    if (const auto total = kib_of("MemTotal:"); total >= 0) memory.total_bytes = total;
    if (const auto available = kib_of("MemAvailable:"); available >= 0) {
      memory.available_bytes = available;
    }
  }
  if (memory.total_bytes == 0) {
    const long pages = sysconf(_SC_PHYS_PAGES);
    const long available = sysconf(_SC_AVPHYS_PAGES);
    const long page = sysconf(_SC_PAGE_SIZE);
    memory.total_bytes = static_cast<std::int64_t>(pages) * page;
    memory.available_bytes = static_cast<std::int64_t>(available) * page;
  }
  return memory;
}

namespace {

template <class T>
nlohmann::json optional_json(const std::optional<T>& value) {
  return value ? nlohmann::json(*value) : nlohmann::json(nullptr);
}

}  // namespace

MachineInfo probe_machine(const ProbeOptions& options) {
  MachineInfo machine;
  machine.cpu = read_cpu();
  machine.memory = read_host_memory();
  machine.torch_version = TORCH_VERSION;
  machine.apo_version = APO_VERSION_STRING;

  const detail::Nvml nvml;
  machine.nvml_status = nvml.status();
#if APO_WITH_CUDA
  machine.cuda_built = true;
  detail::CudaQuery query = detail::query_cuda_devices(options.run_kernel_check);
  machine.cuda_devices = std::move(query.devices);
  machine.cuda_status = std::move(query.status);
  for (auto& device : machine.cuda_devices) {
    device.telemetry = nvml.telemetry(device.pci_bus_id);
    // NVML reads free memory without a CUDA context; the runtime asked only the current device.
    if (const auto free = nvml.free_memory_bytes(device.pci_bus_id)) {
      device.free_bytes = *free;
    } else if (device.free_bytes < 0) {
      device.free_bytes = device.total_bytes;
    }
  }
#else
  (void)options;
  machine.cuda_status = "apo was built without CUDA";
  if (const int gpus = nvml.device_count(); gpus > 0) {
    machine.cuda_status += " (NVML sees " + std::to_string(gpus) +
                           " NVIDIA GPU(s): rebuild with -DAPO_ENABLE_CUDA=ON to use them)";
  }
#endif
  return machine;
}

std::string to_json(const MachineInfo& machine, int indent) {
  nlohmann::ordered_json out;
  out["apo_version"] = machine.apo_version;
  out["torch_version"] = machine.torch_version;
  out["cpu"] = {{"model", machine.cpu.model},
                {"logical_cores", machine.cpu.logical_cores},
                {"usable_cores", machine.cpu.usable_cores}};
  out["memory"] = {{"total_bytes", machine.memory.total_bytes},
                   {"available_bytes", machine.memory.available_bytes}};
  out["cuda"] = {{"built", machine.cuda_built},
                 {"status", machine.cuda_status},
                 {"devices", nlohmann::ordered_json::array()}};
  for (const auto& d : machine.cuda_devices) {
    out["cuda"]["devices"].push_back(
        {{"index", d.index},
         {"name", d.name},
         {"pci_bus_id", d.pci_bus_id},
         {"total_bytes", d.total_bytes},
         {"free_bytes", d.free_bytes},
         {"compute_capability", std::to_string(d.compute_capability_major) + "." +
                                    std::to_string(d.compute_capability_minor)},
         {"sm_count", d.sm_count},
         {"kernel_check", optional_json(d.kernel_check)},
         {"telemetry",
          {{"utilization_percent", optional_json(d.telemetry.utilization_percent)},
           {"memory_utilization_percent", optional_json(d.telemetry.memory_utilization_percent)},
           {"temperature_c", optional_json(d.telemetry.temperature_c)},
           {"power_w", optional_json(d.telemetry.power_w)},
           {"power_limit_w", optional_json(d.telemetry.power_limit_w)}}}});
  }
  out["nvml"] = {{"status", machine.nvml_status}};
  return out.dump(indent);
}

}  // namespace apo

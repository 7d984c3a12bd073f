#pragma once

/// @file
/// @brief What the PerformanceMonitor records: samples of the machine and the engine, and
/// finished requests. Plain structs, so that the engine (above monitor/) feeds the monitor
/// without the monitor knowing it.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "apo/core/clock.hpp"

namespace apo::monitor {

/// @brief One device's readings. Memory comes from the engine's ledger (allocated: bytes in
/// use; reserved: bytes its pool holds) or, without an engine, from NVML (both: the device's
/// used memory, all processes together). total_bytes is the device's capacity, or the budget
/// the engine may use of it.
struct DeviceSample {
  std::string device;  ///< "cuda:0", "cpu"
  std::string name;    ///< "NVIDIA H200"; may be empty
  std::optional<std::int64_t> allocated_bytes;
  std::optional<std::int64_t> reserved_bytes;
  std::optional<std::int64_t> total_bytes;
  std::optional<double> utilization_ratio;  ///< share of time a kernel ran (NVML)
  std::optional<double> temperature_c;
  std::optional<double> power_w;

  /// @brief max(allocated, reserved) / total, when both are known and total > 0.
  std::optional<double> memory_used_ratio() const noexcept {
    if (!total_bytes || *total_bytes <= 0) return std::nullopt;
    const std::optional<std::int64_t> used = allocated_bytes && reserved_bytes
                                                 ? std::max(*allocated_bytes, *reserved_bytes)
                                             : allocated_bytes ? allocated_bytes
                                                               : reserved_bytes;
    if (!used) return std::nullopt;
    return static_cast<double>(*used) / static_cast<double>(*total_bytes);
  }
};

/// @brief One reading of the machine and the engine; every reading is optional, since a
/// machine without a GPU, NVML or an attached engine has none of them.
struct Sample {
  Clock::time_point time{};  ///< stamped by the monitor
  std::vector<DeviceSample> devices;
  std::optional<std::int64_t> ram_total_bytes;
  std::optional<double> ram_used_ratio;  ///< 1 - available / total
  std::optional<std::int64_t> process_resident_bytes;
  std::optional<double> cpu_busy_ratio;     ///< whole machine, since the previous sample
  std::optional<double> process_cpu_ratio;  ///< this process, share of all CPUs
  std::optional<int> queued;                ///< requests waiting in the engine
  std::optional<int> running;               ///< requests the engine is running

  /// @brief The engine was running requests when the sample was taken.
  bool busy() const noexcept { return running.value_or(0) > 0; }
};

/// @brief What the engine tells the monitor at each sample: the memory of the devices it uses
/// (from its ledgers, and torch's allocator statistics on CUDA) and its queue.
struct EngineReading {
  std::vector<DeviceSample> devices;
  int queued = 0;
  int running = 0;
};

using EngineReadingSource = std::function<EngineReading()>;
using SampleSource = std::function<Sample()>;

/// @brief One finished request, as the engine reports it.
struct RequestRecord {
  std::string workflow;
  bool ok = true;
  double total_seconds = 0;    ///< submit to completion
  double compute_seconds = 0;  ///< time in the workflow itself
  std::int64_t peak_memory_bytes = 0;
  std::optional<double> quality;  ///< the judge's score in [0, 1], when measured
};

/// @brief A RequestRecord with the time the monitor recorded it.
struct RecordedRequest {
  RequestRecord record;
  Clock::time_point time{};
};

}  // namespace apo::monitor

#pragma once

/// @file
/// @brief Readings of this machine for the PerformanceMonitor: host memory, the process's
/// resident memory and CPU time from /proc (under a root directory that tests point at a
/// fixture tree), and, where NVML is present, each CUDA device's utilization, temperature, power
/// and memory. A missing file or device gives an unset reading; a file that contradicts its
/// format is an apo::Error naming the file.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>

#include "apo/core/machine.hpp"
#include "apo/monitor/sample.hpp"

namespace apo::monitor {

/// @brief The machine's CPU time since boot, summed over every CPU (/proc/stat's "cpu" line),
/// in clock ticks.
struct CpuTimes {
  std::int64_t total_ticks = 0;
  std::int64_t idle_ticks = 0;  ///< idle + iowait
};

/// @brief This process's CPU time (/proc/self/stat utime + stime), in clock ticks.
struct ProcessCpuTimes {
  std::int64_t user_ticks = 0;
  std::int64_t system_ticks = 0;
  std::int64_t total_ticks() const noexcept { return user_ticks + system_ticks; }
};

/// @brief Reads /proc under a root directory ("/" on a live system). Each reader returns nullopt
/// when its file is absent and throws apo::Error (ErrorCode::Corrupt, context: the file) when
/// the file is there but malformed.
class ProcReader {
 public:
  explicit ProcReader(std::filesystem::path root = "/");

  /// @brief MemTotal and MemAvailable of /proc/meminfo (MemFree + Buffers + Cached on kernels
  /// older than 3.14, which lack MemAvailable).
  std::optional<HostMemoryInfo> host_memory() const;
  /// @brief VmRSS of /proc/self/status, or the resident pages of /proc/self/statm.
  std::optional<std::int64_t> process_resident_bytes() const;
  /// @brief The aggregate "cpu" line of /proc/stat.
  std::optional<CpuTimes> cpu_times() const;
  /// @brief utime and stime of /proc/self/stat.
  std::optional<ProcessCpuTimes> process_cpu_times() const;

  const std::filesystem::path& root() const noexcept { return root_; }

 private:
  std::filesystem::path root_;
};

/// @brief The share of the machine's CPU time that was busy between two readings; nullopt when
/// no time passed between them (or the counters went backwards).
std::optional<double> cpu_busy_ratio(const CpuTimes& before, const CpuTimes& after) noexcept;

/// @brief The share of the machine's CPU time (all CPUs) this process used between two
/// readings; nullopt when no time passed between the machine's readings.
std::optional<double> process_cpu_ratio(const ProcessCpuTimes& before, const ProcessCpuTimes& after,
                                        const CpuTimes& cpu_before,
                                        const CpuTimes& cpu_after) noexcept;

/// @brief The default sample source of a PerformanceMonitor: /proc and NVML readings of this
/// machine. CPU ratios are measured since the previous call (the first call: since
/// construction). Copies share their state; calls must not overlap (the monitor serializes them).
class SystemSampler {
 public:
  struct Options {
    /// Where /proc is found: "/" on a live system, a fixture tree in tests.
    std::filesystem::path proc_root = "/";
    /// Ask NVML about the CUDA devices (off: host readings only, and no device probe).
    bool read_gpus = true;
  };

  SystemSampler();
  explicit SystemSampler(Options options);

  /// @brief Takes one reading. Sample::time is left for the monitor to stamp; queued and running
  /// are unset (they come from the engine).
  Sample operator()();

  /// @brief Why GPU readings are absent ("ok" when NVML answered): the NVML or CUDA status.
  const std::string& gpu_status() const noexcept;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace apo::monitor

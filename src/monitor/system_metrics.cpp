#include "apo/monitor/system_metrics.hpp"

#include <unistd.h>

#include <charconv>
#include <fstream>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "../core/nvml.hpp"
#include "apo/core/error.hpp"

namespace apo::monitor {

namespace {

/// The whole file, or nullopt when it does not exist. /proc files report a size of 0, so they
/// are read to their end rather than by their size; a cap keeps a wrong root from reading a
/// huge regular file.
std::optional<std::string> read_proc_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code error;
    if (!std::filesystem::exists(path, error)) return std::nullopt;
    throw Error(ErrorCode::Io, "cannot be opened", path.string());
  }
  constexpr std::size_t kMaxBytes = 1 << 20;
  std::string text;
  char buffer[4096];
  while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
    text.append(buffer, static_cast<std::size_t>(in.gcount()));
    if (text.size() > kMaxBytes) {
      throw Error(ErrorCode::Corrupt, fmt::format("larger than {} bytes", kMaxBytes),
                  path.string());
    }
  }
  return text;
}

[[noreturn]] void malformed(const std::filesystem::path& path, const std::string& what) {
  throw Error(ErrorCode::Corrupt, what, path.string());
}

std::optional<std::int64_t> parse_int(std::string_view text) {
  std::int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

std::vector<std::string_view> split_whitespace(std::string_view text) {
  std::vector<std::string_view> words;
  std::size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t' || text[i] == '\n')) ++i;
    const std::size_t start = i;
    while (i < text.size() && text[i] != ' ' && text[i] != '\t' && text[i] != '\n') ++i;
    if (i > start) words.push_back(text.substr(start, i - start));
  }
  return words;
}

/// The value of a "Key:   1234 kB" line of meminfo or status, in bytes; nullopt when the key
/// is absent; throws when the line is there but unreadable.
std::optional<std::int64_t> kib_field(const std::filesystem::path& path, std::string_view text,
                                      std::string_view key) {
  std::size_t line_start = 0;
  while (line_start < text.size()) {
    std::size_t line_end = text.find('\n', line_start);
    if (line_end == std::string_view::npos) line_end = text.size();
    const std::string_view line = text.substr(line_start, line_end - line_start);
    line_start = line_end + 1;
    if (line.size() <= key.size() || line.substr(0, key.size()) != key || line[key.size()] != ':') {
      continue;
    }
    const auto words = split_whitespace(line.substr(key.size() + 1));
    const auto value = words.empty() ? std::nullopt : parse_int(words[0]);
    if (!value || *value < 0 || words.size() > 2 || (words.size() == 2 && words[1] != "kB")) {
      malformed(path, fmt::format("{}: expected \"<number> kB\", got \"{}\"", key, line));
    }
    if (*value > std::numeric_limits<std::int64_t>::max() / 1024) {
      malformed(path, fmt::format("{}: {} kB is out of range", key, *value));
    }
    return *value * 1024;
  }
  return std::nullopt;
}

}  // namespace

ProcReader::ProcReader(std::filesystem::path root) : root_(std::move(root)) {}

std::optional<HostMemoryInfo> ProcReader::host_memory() const {
  const auto path = root_ / "proc/meminfo";
  const auto text = read_proc_file(path);
  if (!text) return std::nullopt;
  const auto total = kib_field(path, *text, "MemTotal");
  if (!total || *total <= 0) malformed(path, "no MemTotal line with a positive size");
  std::optional<std::int64_t> available = kib_field(path, *text, "MemAvailable");
  if (!available) {
    const auto free = kib_field(path, *text, "MemFree");
    if (!free) malformed(path, "neither MemAvailable nor MemFree");
    available = *free + kib_field(path, *text, "Buffers").value_or(0) +
                kib_field(path, *text, "Cached").value_or(0);
  }
  return HostMemoryInfo{*total, std::min(*available, *total)};
}

std::optional<std::int64_t> ProcReader::process_resident_bytes() const {
  const auto status_path = root_ / "proc/self/status";
  if (const auto text = read_proc_file(status_path)) {
    if (auto rss = kib_field(status_path, *text, "VmRSS")) return rss;
  }
  // Kernel threads and some containers have no VmRSS; statm counts pages.
  const auto statm_path = root_ / "proc/self/statm";
  const auto text = read_proc_file(statm_path);
  if (!text) return std::nullopt;
  const auto words = split_whitespace(*text);
  const auto pages = words.size() >= 2 ? parse_int(words[1]) : std::nullopt;
  if (!pages || *pages < 0) {
    malformed(statm_path, "expected \"size resident ...\" in pages");
  }
  return *pages * static_cast<std::int64_t>(sysconf(_SC_PAGESIZE));
}

std::optional<CpuTimes> ProcReader::cpu_times() const {
  const auto path = root_ / "proc/stat";
  const auto text = read_proc_file(path);
  if (!text) return std::nullopt;
  const std::string_view all(*text);
  const std::string_view line = all.substr(0, all.find('\n'));
  const auto words = split_whitespace(line);
  // cpu user nice system idle [iowait irq softirq steal guest guest_nice]
  if (words.size() < 5 || words[0] != "cpu") {
    malformed(path, "the first line is not \"cpu <user> <nice> <system> <idle> ...\"");
  }
  CpuTimes times;
  // guest and guest_nice (fields 9 and 10) are already inside user and nice.
  for (std::size_t i = 1; i < words.size() && i <= 8; ++i) {
    const auto ticks = parse_int(words[i]);
    if (!ticks || *ticks < 0) {
      malformed(path, fmt::format("field {} of the cpu line, \"{}\", is not a count", i, words[i]));
    }
    times.total_ticks += *ticks;
    if (i == 4 || i == 5) times.idle_ticks += *ticks;  // idle, iowait
  }
  return times;
}

std::optional<ProcessCpuTimes> ProcReader::process_cpu_times() const {
  const auto path = root_ / "proc/self/stat";
  const auto text = read_proc_file(path);
  if (!text) return std::nullopt;
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so fields are counted
  // from its last closing parenthesis; utime and stime are fields 14 and 15.
  const std::size_t close = text->rfind(')');
  if (close == std::string::npos) malformed(path, "no \"(comm)\" field");
  const auto words = split_whitespace(std::string_view(*text).substr(close + 1));
  constexpr std::size_t kUtime = 14 - 3;
  constexpr std::size_t kStime = 15 - 3;
  const auto user = words.size() > kStime ? parse_int(words[kUtime]) : std::nullopt;
  const auto system = words.size() > kStime ? parse_int(words[kStime]) : std::nullopt;
  if (!user || !system || *user < 0 || *system < 0) {
    malformed(path, "fields 14 and 15 (utime, stime) are missing or not counts");
  }
  return ProcessCpuTimes{*user, *system};
}

std::optional<double> cpu_busy_ratio(const CpuTimes& before, const CpuTimes& after) noexcept {
  const std::int64_t total = after.total_ticks - before.total_ticks;
  const std::int64_t idle = after.idle_ticks - before.idle_ticks;
  if (total <= 0 || idle < 0 || idle > total) return std::nullopt;
  return 1.0 - static_cast<double>(idle) / static_cast<double>(total);
}

std::optional<double> process_cpu_ratio(const ProcessCpuTimes& before, const ProcessCpuTimes& after,
                                        const CpuTimes& cpu_before,
                                        const CpuTimes& cpu_after) noexcept {
  const std::int64_t total = cpu_after.total_ticks - cpu_before.total_ticks;
  const std::int64_t used = after.total_ticks() - before.total_ticks();
  if (total <= 0 || used < 0) return std::nullopt;
  // The two files are read a moment apart: clamp the rounding that puts the process above all.
  return std::min(1.0, static_cast<double>(used) / static_cast<double>(total));
}

struct SystemSampler::State {
  ProcReader proc;
  std::optional<CpuTimes> cpu;
  std::optional<ProcessCpuTimes> process_cpu;
  std::unique_ptr<detail::Nvml> nvml;
  std::vector<CudaDeviceInfo> devices;
  std::string gpu_status;
};

SystemSampler::SystemSampler() : SystemSampler(Options{}) {}

SystemSampler::SystemSampler(Options options) : state_(std::make_shared<State>()) {
  state_->proc = ProcReader(options.proc_root);
  state_->cpu = state_->proc.cpu_times();
  state_->process_cpu = state_->proc.process_cpu_times();
  if (!options.read_gpus) {
    state_->gpu_status = "not asked";
    return;
  }
  MachineInfo machine = probe_machine();
  state_->devices = std::move(machine.cuda_devices);
  if (state_->devices.empty()) {
    state_->gpu_status = machine.cuda_status;
    return;
  }
  state_->nvml = std::make_unique<detail::Nvml>();
  state_->gpu_status = state_->nvml->status();
}

const std::string& SystemSampler::gpu_status() const noexcept {
  return state_->gpu_status;
}

Sample SystemSampler::operator()() {
  State& s = *state_;
  Sample sample;
  if (const auto memory = s.proc.host_memory()) {
    sample.ram_total_bytes = memory->total_bytes;
    sample.ram_used_ratio = 1.0 - static_cast<double>(memory->available_bytes) /
                                      static_cast<double>(memory->total_bytes);
  }
  sample.process_resident_bytes = s.proc.process_resident_bytes();
  const auto cpu = s.proc.cpu_times();
  const auto process_cpu = s.proc.process_cpu_times();
  if (cpu && s.cpu) {
    sample.cpu_busy_ratio = cpu_busy_ratio(*s.cpu, *cpu);
    if (process_cpu && s.process_cpu) {
      sample.process_cpu_ratio = process_cpu_ratio(*s.process_cpu, *process_cpu, *s.cpu, *cpu);
    }
  }
  s.cpu = cpu;
  s.process_cpu = process_cpu;

  for (const CudaDeviceInfo& info : s.devices) {
    DeviceSample device;
    device.device = fmt::format("cuda:{}", info.index);
    device.name = info.name;
    device.total_bytes = info.total_bytes;
    if (s.nvml && s.nvml->ok()) {
      const GpuTelemetry telemetry = s.nvml->telemetry(info.pci_bus_id);
      if (telemetry.utilization_percent) {
        device.utilization_ratio = *telemetry.utilization_percent / 100.0;
      }
      if (telemetry.temperature_c) device.temperature_c = *telemetry.temperature_c;
      device.power_w = telemetry.power_w;
      if (const auto free = s.nvml->free_memory_bytes(info.pci_bus_id)) {
        device.allocated_bytes = device.reserved_bytes = info.total_bytes - *free;
      }
    }
    sample.devices.push_back(std::move(device));
  }
  return sample;
}

}  // namespace apo::monitor

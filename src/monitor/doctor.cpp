// apo doctor: one function per check, each reading files under the options' root (or NVML, or
// statvfs) and turning what it read into a Finding. Nothing here writes.

#include "apo/monitor/doctor.hpp"

#include <sys/statvfs.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <limits>
#include <map>
#include <regex>
#include <variant>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "../core/nvml.hpp"

namespace apo::monitor {

namespace {

// The files checked are a few lines each; a larger one is not what the kernel writes.
constexpr std::streamsize kMaxFileBytes = 64 * 1024;

/// The file's text, or nullopt when it cannot be opened.
std::optional<std::string> read_small_file(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return std::nullopt;
  std::string text(static_cast<std::size_t>(kMaxFileBytes), '\0');
  file.read(text.data(), kMaxFileBytes);
  text.resize(static_cast<std::size_t>(file.gcount()));
  return text;
}

std::string_view trim(std::string_view text) {
  const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!text.empty() && space(text.front())) text.remove_prefix(1);
  while (!text.empty() && space(text.back())) text.remove_suffix(1);
  return text;
}

std::optional<std::int64_t> parse_integer(std::string_view text) {
  std::int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return value;
}

/// The path below the root: root "/" reads the machine's own /proc and /sys.
std::filesystem::path under_root(const DoctorOptions& options, std::string_view relative) {
  return options.root / std::filesystem::path(relative);
}

/// The shown form of a file read: the path on the machine ("/proc/sys/vm/swappiness"), or the
/// fixture's path when the root is not "/".
std::string shown(const DoctorOptions& options, std::string_view relative) {
  return under_root(options, relative).lexically_normal().string();
}

Finding unknown(std::string check, std::string found, std::string wanted) {
  return {std::move(check), CheckStatus::unknown, std::move(found), std::move(wanted), {}};
}

// ---- CPU frequency governor ---------------------------------------------------------------

constexpr std::string_view kGovernorWanted =
    "performance: the guide pins the governor so that tokenizing, sampling and host-side copies "
    "between GPU steps run at full clock instead of waiting for the governor to ramp up";

Finding check_governor(const DoctorOptions& options) {
  const std::string check = "cpu governor";
  const std::filesystem::path cpus = under_root(options, "sys/devices/system/cpu");
  std::error_code error;
  std::filesystem::directory_iterator entries(cpus, error);
  if (error) {
    return unknown(check, fmt::format("not exposed ({} cannot be read)", cpus.string()),
                   std::string(kGovernorWanted));
  }
  static const std::regex cpu_name("cpu[0-9]+");
  std::map<std::string, int> governors;  // governor -> CPUs
  int cpus_read = 0;
  for (const auto& entry : entries) {
    if (!std::regex_match(entry.path().filename().string(), cpu_name)) continue;
    const std::filesystem::path file = entry.path() / "cpufreq" / "scaling_governor";
    const std::optional<std::string> text = read_small_file(file);
    if (!text) continue;  // a CPU without cpufreq (offline, or the platform hides it)
    const std::string_view governor = trim(*text);
    const bool word = !governor.empty() && governor.size() <= 32 &&
                      std::all_of(governor.begin(), governor.end(), [](char c) {
                        return std::islower(static_cast<unsigned char>(c)) || c == '_' || c == '-';
                      });
    if (!word) {
      return unknown(check, fmt::format("{} is not a governor's name", file.string()),
                     std::string(kGovernorWanted));
    }
    ++governors[std::string(governor)];
    ++cpus_read;
  }
  if (cpus_read == 0) {
    return unknown(check,
                   "not exposed: no cpufreq/scaling_governor (virtual machines usually hide it; "
                   "the host's setting applies)",
                   std::string(kGovernorWanted));
  }
  std::string found;
  for (const auto& [governor, count] : governors) {
    found +=
        fmt::format("{}{} on {} of {} CPUs", found.empty() ? "" : ", ", governor, count, cpus_read);
  }
  const bool all_performance = governors.size() == 1 && governors.begin()->first == "performance";
  return {check, all_performance ? CheckStatus::ok : CheckStatus::warn, found,
          std::string(kGovernorWanted),
          all_performance ? ""
                          : "echo performance | sudo tee "
                            "/sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"};
}

// ---- /proc/self/limits --------------------------------------------------------------------

struct Limit {
  std::optional<std::int64_t> soft;  ///< nullopt: unlimited
  std::optional<std::int64_t> hard;
};

std::string limit_text(const std::optional<std::int64_t>& value, bool bytes) {
  if (!value) return "unlimited";
  return bytes ? format_bytes(*value) : std::to_string(*value);
}

/// The soft and hard value of one line of /proc/self/limits ("Max open files  1024  4096
/// files"), or a message saying why not.
std::variant<Limit, std::string> read_limit(const DoctorOptions& options, std::string_view name) {
  const std::string path = shown(options, "proc/self/limits");
  const std::optional<std::string> text = read_small_file(under_root(options, "proc/self/limits"));
  if (!text) return fmt::format("{} cannot be read", path);
  std::size_t at = 0;
  while (at < text->size()) {
    std::size_t end = text->find('\n', at);
    if (end == std::string::npos) end = text->size();
    const std::string_view line = std::string_view(*text).substr(at, end - at);
    at = end + 1;
    if (!line.starts_with(name) || line.size() == name.size() || line[name.size()] != ' ') {
      continue;
    }
    std::vector<std::string_view> fields;
    std::string_view rest = line.substr(name.size());
    while (!(rest = trim(rest)).empty()) {
      const std::size_t space = rest.find_first_of(" \t");
      fields.push_back(rest.substr(0, space));
      rest = space == std::string_view::npos ? std::string_view{} : rest.substr(space);
    }
    if (fields.size() < 2) return fmt::format("'{}' in {} has no soft and hard value", name, path);
    Limit limit;
    for (int i = 0; i < 2; ++i) {
      std::optional<std::int64_t>& value = i == 0 ? limit.soft : limit.hard;
      if (fields[static_cast<std::size_t>(i)] == "unlimited") continue;
      value = parse_integer(fields[static_cast<std::size_t>(i)]);
      if (!value || *value < 0) {
        return fmt::format("'{}' of '{}' in {} is not a number",
                           fields[static_cast<std::size_t>(i)], name, path);
      }
    }
    return limit;
  }
  return fmt::format("no '{}' line in {}", name, path);
}

constexpr std::string_view kOpenFilesWanted =
    "at least {} (the guide's ulimit -n 65536): memory-mapped model shards, cached files and a "
    "server's sockets each hold a descriptor, and running out fails a load mid-request";

Finding check_open_files(const DoctorOptions& options) {
  const std::string check = "open files";
  const std::string wanted = fmt::format(fmt::runtime(kOpenFilesWanted), options.min_open_files);
  const auto read = read_limit(options, "Max open files");
  if (const auto* message = std::get_if<std::string>(&read)) {
    return unknown(check, *message, wanted);
  }
  const Limit limit = std::get<Limit>(read);
  const std::string found = fmt::format(
      "soft limit {}, hard limit {}", limit_text(limit.soft, false), limit_text(limit.hard, false));
  if (!limit.soft || *limit.soft >= options.min_open_files) {
    return {check, CheckStatus::ok, found, wanted, {}};
  }
  std::string fix =
      fmt::format("ulimit -n {}   # in the shell that starts apo", options.min_open_files);
  if (limit.hard && *limit.hard < options.min_open_files) {
    fix = fmt::format("ulimit -n {}   # after raising the hard limit, in a new login",
                      options.min_open_files);
  }
  fix += fmt::format("\necho '* - nofile {}' | sudo tee -a /etc/security/limits.conf   # lasting",
                     options.min_open_files);
  return {check, CheckStatus::warn, found, wanted, fix};
}

constexpr std::string_view kLockedWanted =
    "unlimited or at least {}: page-locked (pinned) host memory, which makes host-to-GPU copies "
    "of offloaded weights fast and asynchronous, is bounded by this limit wherever the kernel "
    "accounts it (mlock, registered buffers, RDMA), and containers often start at 64 KiB";

Finding check_locked_memory(const DoctorOptions& options) {
  const std::string check = "locked memory";
  const std::string wanted =
      fmt::format(fmt::runtime(kLockedWanted), format_bytes(options.min_locked_memory_bytes));
  const auto read = read_limit(options, "Max locked memory");
  if (const auto* message = std::get_if<std::string>(&read)) {
    return unknown(check, *message, wanted);
  }
  const Limit limit = std::get<Limit>(read);
  const std::string found = fmt::format("soft limit {}, hard limit {}",
                                        limit_text(limit.soft, true), limit_text(limit.hard, true));
  if (!limit.soft || *limit.soft >= options.min_locked_memory_bytes) {
    return {check, CheckStatus::ok, found, wanted, {}};
  }
  return {check, CheckStatus::warn, found, wanted,
          "ulimit -l unlimited   # in the shell that starts apo (needs the hard limit)\n"
          "echo '* - memlock unlimited' | sudo tee -a /etc/security/limits.conf   # lasting\n"
          "docker run --ulimit memlock=-1 ...   # in a container"};
}

// ---- vm.swappiness and transparent huge pages --------------------------------------------

constexpr std::string_view kSwappinessWanted =
    "at most {} (the guide sets 1): weights kept in host RAM for offloading must not be swapped "
    "out, or moving them back to the GPU stalls on disk";

Finding check_swappiness(const DoctorOptions& options) {
  const std::string check = "swappiness";
  const std::string wanted = fmt::format(fmt::runtime(kSwappinessWanted), options.max_swappiness);
  const std::string path = shown(options, "proc/sys/vm/swappiness");
  const std::optional<std::string> text =
      read_small_file(under_root(options, "proc/sys/vm/swappiness"));
  if (!text) return unknown(check, fmt::format("{} cannot be read", path), wanted);
  const std::string_view value_text = trim(*text);
  const std::optional<std::int64_t> value = parse_integer(value_text);
  // The kernel accepts 0 to 200.
  if (!value || *value < 0 || *value > 200) {
    return unknown(
        check,
        fmt::format("'{}' in {} is not a swappiness (0 to 200)", value_text.substr(0, 40), path),
        wanted);
  }
  const std::string found = fmt::format("vm.swappiness is {}", *value);
  if (*value <= options.max_swappiness) return {check, CheckStatus::ok, found, wanted, {}};
  return {check, CheckStatus::warn, found, wanted,
          "echo 1 | sudo tee /proc/sys/vm/swappiness\n"
          "echo 'vm.swappiness=1' | sudo tee /etc/sysctl.d/99-apo.conf   # lasting"};
}

constexpr std::string_view kHugePagesWanted =
    "madvise or always: large host buffers (offloaded weights, staging copies) then get 2 MiB "
    "pages and fewer TLB misses while gigabytes are copied; never forgoes that";

Finding check_huge_pages(const DoctorOptions& options) {
  const std::string check = "transparent huge pages";
  const std::string wanted(kHugePagesWanted);
  const std::string path = shown(options, "sys/kernel/mm/transparent_hugepage/enabled");
  const std::optional<std::string> text =
      read_small_file(under_root(options, "sys/kernel/mm/transparent_hugepage/enabled"));
  if (!text) return unknown(check, fmt::format("{} cannot be read", path), wanted);
  // "always [madvise] never": the bracketed one is in force.
  const std::size_t open = text->find('[');
  const std::size_t close = open == std::string::npos ? open : text->find(']', open);
  const std::string value =
      close == std::string::npos ? std::string() : text->substr(open + 1, close - open - 1);
  if (value != "always" && value != "madvise" && value != "never") {
    return unknown(check,
                   fmt::format("{} names no mode in brackets ('{}')", path,
                               trim(std::string_view(*text).substr(0, 60))),
                   wanted);
  }
  const std::string found = fmt::format("transparent huge pages: {}", value);
  if (value != "never") return {check, CheckStatus::ok, found, wanted, {}};
  return {check, CheckStatus::warn, found, wanted,
          "echo madvise | sudo tee /sys/kernel/mm/transparent_hugepage/enabled"};
}

// ---- GPUs ---------------------------------------------------------------------------------

constexpr std::string_view kPersistenceWanted =
    "on (the guide's nvidia-smi -pm 1): the driver stays initialized between processes, so each "
    "apo start skips seconds of GPU initialization";
constexpr std::string_view kPowerWanted =
    "the board's maximum (the guide's nvidia-smi -pl): a lower cap throttles clocks through long "
    "denoising loops";

void check_gpus(const DoctorOptions& options, std::vector<Finding>& findings) {
  GpuReading reading;
  try {
    reading = options.gpu_reader ? options.gpu_reader() : GpuReading{false, "no GPU reader", {}};
  } catch (const std::exception& error) {
    reading = {false, fmt::format("reading the GPUs failed: {}", error.what()), {}};
  }
  if (!reading.available) {
    findings.push_back(unknown("gpu", fmt::format("NVML not available: {}", reading.status),
                               std::string(kPersistenceWanted)));
    return;
  }
  if (reading.gpus.empty()) {
    findings.push_back(unknown("gpu", "NVML sees no GPU", std::string(kPersistenceWanted)));
    return;
  }
  for (const GpuPowerReading& gpu : reading.gpus) {
    const std::string who = gpu.name.empty() ? fmt::format("gpu {}", gpu.index)
                                             : fmt::format("gpu {} ({})", gpu.index, gpu.name);
    const std::string persistence_check = fmt::format("gpu {} persistence mode", gpu.index);
    if (!gpu.persistence_mode) {
      findings.push_back(unknown(persistence_check,
                                 fmt::format("{}: the driver does not report it", who),
                                 std::string(kPersistenceWanted)));
    } else if (*gpu.persistence_mode) {
      findings.push_back({persistence_check,
                          CheckStatus::ok,
                          fmt::format("{}: persistence mode on", who),
                          std::string(kPersistenceWanted),
                          {}});
    } else {
      findings.push_back(
          {persistence_check, CheckStatus::warn, fmt::format("{}: persistence mode off", who),
           std::string(kPersistenceWanted), fmt::format("sudo nvidia-smi -i {} -pm 1", gpu.index)});
    }

    const std::string power_check = fmt::format("gpu {} power limit", gpu.index);
    if (!gpu.power_limit_w || !gpu.max_power_limit_w || !std::isfinite(*gpu.power_limit_w) ||
        !std::isfinite(*gpu.max_power_limit_w)) {
      findings.push_back(
          unknown(power_check, fmt::format("{}: the driver does not report its power limits", who),
                  std::string(kPowerWanted)));
      continue;
    }
    const std::string found = fmt::format("{}: power limit {:.0f} W of at most {:.0f} W", who,
                                          *gpu.power_limit_w, *gpu.max_power_limit_w);
    // Limits are set in whole watts; a fraction below the maximum is the same setting.
    if (*gpu.power_limit_w + 1.0 >= *gpu.max_power_limit_w) {
      findings.push_back({power_check, CheckStatus::ok, found, std::string(kPowerWanted), {}});
    } else {
      findings.push_back({power_check, CheckStatus::warn, found, std::string(kPowerWanted),
                          fmt::format("sudo nvidia-smi -i {} -pl {:.0f}", gpu.index,
                                      std::floor(*gpu.max_power_limit_w))});
    }
  }
}

// ---- free disk ----------------------------------------------------------------------------

Finding check_free_disk(const DoctorOptions& options, const std::string& what,
                        const std::filesystem::path& path) {
  const std::string check = fmt::format("free disk ({})", what);
  const std::string wanted = fmt::format(
      "at least {} free: room for one more large checkpoint and its quantized copy (a "
      "13B-parameter video model is about 13 GiB in fp8); under {} writing a model file fails",
      format_bytes(options.min_free_disk_bytes), format_bytes(options.critical_free_disk_bytes));
  // A path still to be made is measured where it would be made: its nearest existing parent.
  std::error_code error;
  std::filesystem::path measured = std::filesystem::absolute(path, error);
  if (error) return unknown(check, fmt::format("{}: {}", path.string(), error.message()), wanted);
  while (!std::filesystem::exists(measured, error) && measured.has_parent_path() &&
         measured.parent_path() != measured) {
    measured = measured.parent_path();
  }
  struct statvfs stats {};
  if (statvfs(measured.c_str(), &stats) != 0) {
    return unknown(check, fmt::format("{} cannot be measured (statvfs failed)", measured.string()),
                   wanted);
  }
  // f_bavail: what an unprivileged process may still write.
  const auto free_bytes = static_cast<std::int64_t>(std::min<unsigned long long>(
      static_cast<unsigned long long>(stats.f_bavail) * stats.f_frsize,
      static_cast<unsigned long long>(std::numeric_limits<std::int64_t>::max())));
  const std::string where = measured == path ? path.string()
                                             : fmt::format("{} (not there yet; measured at {})",
                                                           path.string(), measured.string());
  const std::string found = fmt::format("{} free at {}", format_bytes(free_bytes), where);
  if (free_bytes >= options.min_free_disk_bytes) return {check, CheckStatus::ok, found, wanted, {}};
  return {check,
          free_bytes < options.critical_free_disk_bytes ? CheckStatus::fail : CheckStatus::warn,
          found, wanted,
          fmt::format("df -h {}   # then free space there, or point storage_optimization.{} at a "
                      "larger disk",
                      measured.string(), what == "models" ? "model_cache_path" : "temp_path")};
}

/// A check that throws (a bug, or a filesystem error past the checks above) is a finding too.
template <class Check>
Finding guarded(const std::string& name, Check&& check) {
  try {
    return check();
  } catch (const std::exception& error) {
    return unknown(name, fmt::format("the check failed: {}", error.what()), "");
  }
}

int severity(CheckStatus status) {
  switch (status) {
    case CheckStatus::ok:
      return 0;
    case CheckStatus::unknown:
      return 1;
    case CheckStatus::warn:
      return 2;
    case CheckStatus::fail:
      return 3;
  }
  return 3;
}

}  // namespace

GpuReading read_gpus_with_nvml() {
  const detail::Nvml nvml;
  GpuReading reading{nvml.ok(), nvml.status(), {}};
  if (!nvml.ok()) return reading;
  for (int i = 0; i < nvml.device_count(); ++i) {
    const std::optional<detail::Nvml::PowerSettings> settings = nvml.power_settings(i);
    GpuPowerReading gpu;
    gpu.index = i;
    if (settings) {
      gpu.name = settings->name;
      gpu.persistence_mode = settings->persistence_mode;
      gpu.power_limit_w = settings->power_limit_w;
      gpu.max_power_limit_w = settings->max_power_limit_w;
    }
    reading.gpus.push_back(std::move(gpu));
  }
  return reading;
}

std::vector<Finding> run_doctor(const DoctorOptions& options) {
  std::vector<Finding> findings;
  findings.push_back(guarded("cpu governor", [&] { return check_governor(options); }));
  findings.push_back(guarded("open files", [&] { return check_open_files(options); }));
  findings.push_back(guarded("swappiness", [&] { return check_swappiness(options); }));
  findings.push_back(guarded("locked memory", [&] { return check_locked_memory(options); }));
  findings.push_back(guarded("transparent huge pages", [&] { return check_huge_pages(options); }));
  check_gpus(options, findings);

  std::filesystem::path models = options.models_path;
  if (models.empty()) {
    if (const char* dir = std::getenv("APO_REFERENCE_MODELS"); dir != nullptr && *dir != '\0') {
      models = dir;
    }
  }
  if (!models.empty()) {
    findings.push_back(
        guarded("free disk (models)", [&] { return check_free_disk(options, "models", models); }));
  }
  findings.push_back(guarded("free disk (temp)", [&] {
    const std::filesystem::path temp =
        options.temp_path.empty() ? std::filesystem::temp_directory_path() : options.temp_path;
    return check_free_disk(options, "temp", temp);
  }));
  return findings;
}

CheckStatus worst_status(const std::vector<Finding>& findings) {
  CheckStatus worst = CheckStatus::ok;
  for (const Finding& finding : findings) {
    if (severity(finding.status) > severity(worst)) worst = finding.status;
  }
  return worst;
}

std::string format_findings(const std::vector<Finding>& findings) {
  std::size_t check_width = 5;
  for (const Finding& finding : findings) check_width = std::max(check_width, finding.check.size());
  std::string text = fmt::format("{:<8} {:<{}}  {}\n", "status", "check", check_width, "found");
  std::map<CheckStatus, int> counts;
  for (const Finding& finding : findings) {
    ++counts[finding.status];
    text += fmt::format("{:<8} {:<{}}  {}\n", apo::to_string(finding.status), finding.check,
                        check_width, finding.found);
    if (finding.status == CheckStatus::ok) continue;
    const std::string indent(9 + check_width + 2, ' ');
    if (!finding.wanted.empty()) text += fmt::format("{}want: {}\n", indent, finding.wanted);
    std::string_view fix = finding.fix;
    std::string_view label = "fix:  ";
    while (!fix.empty()) {
      const std::size_t end = fix.find('\n');
      text += fmt::format("{}{}{}\n", indent, label, fix.substr(0, end));
      label = "      ";
      fix = end == std::string_view::npos ? std::string_view{} : fix.substr(end + 1);
    }
  }
  text += fmt::format("\n{} ok, {} warn, {} fail, {} unknown\n", counts[CheckStatus::ok],
                      counts[CheckStatus::warn], counts[CheckStatus::fail],
                      counts[CheckStatus::unknown]);
  return text;
}

std::string findings_to_json(const std::vector<Finding>& findings) {
  nlohmann::json list = nlohmann::json::array();
  for (const Finding& finding : findings) {
    list.push_back({{"check", finding.check},
                    {"status", std::string(apo::to_string(finding.status))},
                    {"found", finding.found},
                    {"wanted", finding.wanted},
                    {"fix", finding.fix}});
  }
  return nlohmann::json{{"findings", list},
                        {"worst", std::string(apo::to_string(worst_status(findings)))}}
      .dump(2);
}

}  // namespace apo::monitor

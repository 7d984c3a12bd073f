// apo doctor on fixture trees of /proc and /sys (tests/data/doctor) and a fake NVML.

#include "apo_catch.hpp"

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "apo/monitor/doctor.hpp"

namespace doctor_test {

using apo::monitor::CheckStatus;
using apo::monitor::Finding;

std::filesystem::path fixture(const std::string& name) {
  return std::filesystem::path(APO_TEST_DATA_DIR) / "doctor" / name;
}

apo::monitor::GpuReading tuned_gpus() {
  return {true, "ok", {{0, "NVIDIA GeForce RTX 4090", true, 450.0, 450.0}}};
}

apo::monitor::GpuReading untuned_gpus() {
  return {true,
          "ok",
          {{0, "NVIDIA GeForce RTX 4090", false, 350.0, 450.0},
           {1, "NVIDIA GeForce RTX 3090", false, 280.0, 350.0}}};
}

/// Options over a fixture tree, with disk checks at the test data directory that never warn
/// unless a test asks.
apo::monitor::DoctorOptions options_for(const std::string& tree,
                                        apo::monitor::GpuReader gpus = tuned_gpus) {
  apo::monitor::DoctorOptions options;
  options.root = fixture(tree);
  options.models_path = APO_TEST_DATA_DIR;
  options.temp_path = APO_TEST_DATA_DIR;
  options.min_free_disk_bytes = 0;
  options.critical_free_disk_bytes = 0;
  options.gpu_reader = std::move(gpus);
  return options;
}

const Finding& finding(const std::vector<Finding>& findings, const std::string& check) {
  for (const Finding& f : findings) {
    if (f.check == check) return f;
  }
  FAIL("no finding for " << check);
  throw;  // unreachable: FAIL throws
}

}  // namespace doctor_test

TEST_CASE("doctor: a tuned machine is all ok", "[monitor][doctor]") {
  using namespace doctor_test;
  const auto findings = apo::monitor::run_doctor(options_for("tuned"));
  std::vector<std::string> checks;
  for (const Finding& f : findings) {
    checks.push_back(f.check);
    INFO(f.check << ": " << f.found);
    CHECK(f.status == CheckStatus::ok);
    CHECK(f.fix.empty());
    CHECK_FALSE(f.wanted.empty());
  }
  CHECK(checks == std::vector<std::string>{"cpu governor", "open files", "swappiness",
                                           "locked memory", "transparent huge pages",
                                           "gpu 0 persistence mode", "gpu 0 power limit",
                                           "free disk (models)", "free disk (temp)"});
  CHECK(finding(findings, "cpu governor").found == "performance on 2 of 2 CPUs");
  CHECK(finding(findings, "open files").found == "soft limit 1048576, hard limit 1048576");
  CHECK(finding(findings, "swappiness").found == "vm.swappiness is 1");
  CHECK(finding(findings, "locked memory").found == "soft limit unlimited, hard limit unlimited");
  CHECK(finding(findings, "transparent huge pages").found == "transparent huge pages: madvise");
  CHECK(apo::monitor::worst_status(findings) == CheckStatus::ok);
}

TEST_CASE("doctor: an untuned machine warns on each check with its command", "[monitor][doctor]") {
  using namespace doctor_test;
  const auto findings = apo::monitor::run_doctor(options_for("untuned", untuned_gpus));
  for (const Finding& f : findings) {
    if (f.check.starts_with("free disk")) continue;
    INFO(f.check << ": " << f.found);
    CHECK(f.status == CheckStatus::warn);
    CHECK_FALSE(f.fix.empty());
  }
  const Finding& governor = finding(findings, "cpu governor");
  CHECK(governor.found == "performance on 1 of 3 CPUs, powersave on 2 of 3 CPUs");
  CHECK(governor.fix ==
        "echo performance | sudo tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor");

  const Finding& files = finding(findings, "open files");
  CHECK(files.found == "soft limit 1024, hard limit 4096");
  CHECK_THAT(files.fix, Catch::Contains("ulimit -n 65536") &&
                            Catch::Contains("'* - nofile 65536' | sudo tee -a "
                                            "/etc/security/limits.conf"));
  CHECK_THAT(files.wanted, Catch::Contains("65536"));

  const Finding& swappiness = finding(findings, "swappiness");
  CHECK(swappiness.found == "vm.swappiness is 60");
  CHECK_THAT(swappiness.fix, Catch::StartsWith("echo 1 | sudo tee /proc/sys/vm/swappiness"));

  const Finding& locked = finding(findings, "locked memory");
  CHECK(locked.found == "soft limit 64.00 KiB, hard limit 64.00 KiB");
  CHECK_THAT(locked.fix, Catch::Contains("ulimit -l unlimited") && Catch::Contains("memlock=-1"));
  CHECK_THAT(locked.wanted, Catch::Contains("pinned"));

  const Finding& pages = finding(findings, "transparent huge pages");
  CHECK(pages.found == "transparent huge pages: never");
  CHECK(pages.fix == "echo madvise | sudo tee /sys/kernel/mm/transparent_hugepage/enabled");

  CHECK(finding(findings, "gpu 0 persistence mode").fix == "sudo nvidia-smi -i 0 -pm 1");
  CHECK(finding(findings, "gpu 1 persistence mode").fix == "sudo nvidia-smi -i 1 -pm 1");
  const Finding& power = finding(findings, "gpu 1 power limit");
  CHECK(power.found == "gpu 1 (NVIDIA GeForce RTX 3090): power limit 280 W of at most 350 W");
  CHECK(power.fix == "sudo nvidia-smi -i 1 -pl 350");
  CHECK(finding(findings, "gpu 0 power limit").fix == "sudo nvidia-smi -i 0 -pl 450");
  CHECK(apo::monitor::worst_status(findings) == CheckStatus::warn);
}

TEST_CASE("doctor: missing files are unknown, never failures", "[monitor][doctor]") {
  using namespace doctor_test;
  const auto findings = apo::monitor::run_doctor(options_for("no such tree"));
  for (const std::string check :
       {"cpu governor", "open files", "swappiness", "locked memory", "transparent huge pages"}) {
    INFO(check);
    CHECK(finding(findings, check).status == CheckStatus::unknown);
    CHECK(finding(findings, check).fix.empty());
  }
  CHECK_THAT(finding(findings, "swappiness").found,
             Catch::Contains("proc/sys/vm/swappiness cannot be read"));
  CHECK_THAT(finding(findings, "cpu governor").found, Catch::StartsWith("not exposed"));

  // A virtual machine: CPUs without cpufreq.
  const auto vm = apo::monitor::run_doctor(options_for("vm"));
  CHECK(finding(vm, "cpu governor").status == CheckStatus::unknown);
  CHECK_THAT(finding(vm, "cpu governor").found, Catch::Contains("virtual machines"));
  CHECK(apo::monitor::worst_status(vm) == CheckStatus::unknown);
}

TEST_CASE("doctor: malformed files are unknown with a message", "[monitor][doctor]") {
  using namespace doctor_test;
  const auto findings = apo::monitor::run_doctor(options_for("malformed"));
  CHECK(finding(findings, "open files").status == CheckStatus::unknown);
  CHECK_THAT(finding(findings, "open files").found,
             Catch::Contains("'lots' of 'Max open files'") && Catch::Contains("not a number"));
  CHECK(finding(findings, "locked memory").status == CheckStatus::unknown);
  CHECK_THAT(finding(findings, "locked memory").found,
             Catch::Contains("no 'Max locked memory' line"));
  CHECK(finding(findings, "swappiness").status == CheckStatus::unknown);
  CHECK_THAT(finding(findings, "swappiness").found, Catch::Contains("'sixty'"));
  CHECK(finding(findings, "transparent huge pages").status == CheckStatus::unknown);
  CHECK_THAT(finding(findings, "transparent huge pages").found,
             Catch::Contains("no mode in brackets"));
  CHECK(finding(findings, "cpu governor").status == CheckStatus::unknown);
  CHECK_THAT(finding(findings, "cpu governor").found, Catch::Contains("not a governor's name"));
}

TEST_CASE("doctor: GPUs as NVML reports them, or why it cannot", "[monitor][doctor]") {
  using namespace doctor_test;
  const auto none = apo::monitor::run_doctor(options_for("tuned", [] {
    return apo::monitor::GpuReading{false, "libnvidia-ml.so.1 not found (no NVIDIA driver)", {}};
  }));
  CHECK(finding(none, "gpu").status == CheckStatus::unknown);
  CHECK_THAT(finding(none, "gpu").found, Catch::Contains("libnvidia-ml.so.1 not found"));

  const auto silent = apo::monitor::run_doctor(options_for("tuned", [] {
    return apo::monitor::GpuReading{true, "ok", {{0, "", std::nullopt, 300.0, std::nullopt}}};
  }));
  CHECK(finding(silent, "gpu 0 persistence mode").status == CheckStatus::unknown);
  CHECK(finding(silent, "gpu 0 power limit").status == CheckStatus::unknown);

  const auto throwing = apo::monitor::run_doctor(
      options_for("tuned", []() -> apo::monitor::GpuReading { throw std::runtime_error("boom"); }));
  CHECK_THAT(finding(throwing, "gpu").found, Catch::Contains("boom"));

  // Within a watt of the maximum is the maximum.
  const auto close = apo::monitor::run_doctor(options_for("tuned", [] {
    return apo::monitor::GpuReading{true, "ok", {{0, "A", true, 449.5, 450.0}}};
  }));
  CHECK(finding(close, "gpu 0 power limit").status == CheckStatus::ok);

  // The real NVML where there is one; here, without a driver, it says why not.
  const apo::monitor::GpuReading real = apo::monitor::read_gpus_with_nvml();
  if (!real.available) CHECK_FALSE(real.status.empty());
}

TEST_CASE("doctor: free disk warns under the threshold and fails when nearly full",
          "[monitor][doctor]") {
  using namespace doctor_test;
  auto options = options_for("tuned");
  options.min_free_disk_bytes = std::int64_t{1} << 62;  // more than any disk
  auto findings = apo::monitor::run_doctor(options);
  CHECK(finding(findings, "free disk (models)").status == CheckStatus::warn);
  CHECK_THAT(finding(findings, "free disk (models)").fix, Catch::StartsWith("df -h "));
  CHECK_THAT(finding(findings, "free disk (temp)").fix, Catch::Contains("temp_path"));

  options.critical_free_disk_bytes = options.min_free_disk_bytes;
  findings = apo::monitor::run_doctor(options);
  CHECK(finding(findings, "free disk (temp)").status == CheckStatus::fail);
  CHECK(apo::monitor::worst_status(findings) == CheckStatus::fail);

  // A path still to be made is measured at its nearest existing parent.
  options = options_for("tuned");
  options.models_path = std::filesystem::path(APO_TEST_DATA_DIR) / "not" / "made" / "yet";
  findings = apo::monitor::run_doctor(options);
  CHECK(finding(findings, "free disk (models)").status == CheckStatus::ok);
  CHECK_THAT(finding(findings, "free disk (models)").found,
             Catch::Contains("not there yet; measured at " + std::string(APO_TEST_DATA_DIR)));
}

TEST_CASE("doctor: the table and the JSON carry every finding", "[monitor][doctor]") {
  using namespace doctor_test;
  const auto findings = apo::monitor::run_doctor(options_for("untuned", untuned_gpus));
  const std::string table = apo::monitor::format_findings(findings);
  CHECK_THAT(table, Catch::Contains("warn     swappiness"));
  CHECK_THAT(table, Catch::Contains("fix:  echo 1 | sudo tee /proc/sys/vm/swappiness"));
  CHECK_THAT(table, Catch::Contains("want: at most 10"));
  CHECK_THAT(table, Catch::Contains("2 ok, 9 warn, 0 fail, 0 unknown"));

  const auto json = nlohmann::json::parse(apo::monitor::findings_to_json(findings));
  REQUIRE(json["findings"].size() == findings.size());
  CHECK(json["worst"] == "warn");
  CHECK(json["findings"][2]["check"] == "swappiness");
  CHECK(json["findings"][2]["status"] == "warn");
  CHECK(json["findings"][2]["found"] == "vm.swappiness is 60");
  CHECK(apo::parse_enum<CheckStatus>("unknown") == CheckStatus::unknown);
}

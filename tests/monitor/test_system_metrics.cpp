#include "apo_catch.hpp"

#include <unistd.h>

#include <filesystem>
#include <string>

#include "apo/core/error.hpp"
#include "apo/monitor/system_metrics.hpp"

namespace system_metrics_test {

std::filesystem::path fixture(const std::string& name) {
  return std::filesystem::path(APO_TEST_DATA_DIR) / "monitor" / name;
}

/// Runs `read` and returns the apo::Error it throws (fails the test when it throws none).
template <class Read>
apo::Error error_of(Read read) {
  try {
    read();
  } catch (const apo::Error& error) {
    return error;
  }
  FAIL("no apo::Error thrown");
  return apo::Error(apo::ErrorCode::Internal, "unreachable");
}

TEST_CASE("ProcReader reads meminfo, status and stat of a fixture tree", "[system_metrics]") {
  const apo::monitor::ProcReader proc(fixture("proc_ok"));
  const auto memory = proc.host_memory();
  REQUIRE(memory);
  CHECK(memory->total_bytes == 16384000LL * 1024);
  CHECK(memory->available_bytes == 4096000LL * 1024);
  CHECK(proc.process_resident_bytes() == 524288LL * 1024);
  const auto cpu = proc.cpu_times();
  REQUIRE(cpu);
  CHECK(cpu->total_ticks == 10000);  // user nice system idle iowait
  CHECK(cpu->idle_ticks == 8500);
  const auto process = proc.process_cpu_times();
  REQUIRE(process);  // the command name holds spaces and parentheses
  CHECK(process->user_ticks == 300);
  CHECK(process->system_ticks == 100);
}

TEST_CASE("CPU ratios come from two readings", "[system_metrics]") {
  const apo::monitor::ProcReader before(fixture("proc_ok"));
  const apo::monitor::ProcReader after(fixture("proc_ok_later"));
  const auto cpu0 = *before.cpu_times();
  const auto cpu1 = *after.cpu_times();
  // 1500 ticks passed, 700 of them idle.
  CHECK(apo::monitor::cpu_busy_ratio(cpu0, cpu1) == Approx(800.0 / 1500));
  CHECK(apo::monitor::process_cpu_ratio(*before.process_cpu_times(), *after.process_cpu_times(),
                                        cpu0, cpu1) == Approx(300.0 / 1500));
  CHECK_FALSE(apo::monitor::cpu_busy_ratio(cpu0, cpu0));  // no time passed
  CHECK_FALSE(apo::monitor::cpu_busy_ratio(cpu1, cpu0));  // counters went backwards
}

TEST_CASE("ProcReader falls back on old kernels' files", "[system_metrics]") {
  const apo::monitor::ProcReader proc(fixture("proc_old_kernel"));
  const auto memory = proc.host_memory();
  REQUIRE(memory);
  CHECK(memory->total_bytes == 8192000LL * 1024);
  CHECK(memory->available_bytes == (1000000LL + 200000 + 1000000) * 1024);  // free+buffers+cached
  // No VmRSS in status: statm's resident pages.
  CHECK(proc.process_resident_bytes() == 300LL * sysconf(_SC_PAGESIZE));
  CHECK_FALSE(proc.cpu_times());  // no /proc/stat there
}

TEST_CASE("missing /proc files are absent readings", "[system_metrics]") {
  const apo::monitor::ProcReader proc(fixture("proc_missing"));
  CHECK_FALSE(proc.host_memory());
  CHECK_FALSE(proc.process_resident_bytes());
  CHECK_FALSE(proc.cpu_times());
  CHECK_FALSE(proc.process_cpu_times());

  apo::monitor::SystemSampler::Options options;
  options.proc_root = fixture("proc_missing");
  options.read_gpus = false;
  apo::monitor::SystemSampler sampler(options);
  const apo::monitor::Sample sample = sampler();
  CHECK_FALSE(sample.ram_used_ratio);
  CHECK_FALSE(sample.process_resident_bytes);
  CHECK_FALSE(sample.cpu_busy_ratio);
  CHECK(sample.devices.empty());
}

TEST_CASE("malformed /proc files are errors naming the file", "[system_metrics]") {
  const apo::monitor::ProcReader proc(fixture("proc_malformed"));
  const auto meminfo = error_of([&] { proc.host_memory(); });
  CHECK(meminfo.code() == apo::ErrorCode::Corrupt);
  CHECK_THAT(meminfo.what(), Catch::Contains("meminfo") && Catch::Contains("MemTotal"));
  const auto stat = error_of([&] { proc.cpu_times(); });
  CHECK_THAT(stat.what(), Catch::Contains("proc/stat") && Catch::Contains("cpu"));
  const auto self_stat = error_of([&] { proc.process_cpu_times(); });
  CHECK_THAT(self_stat.what(), Catch::Contains("self/stat"));
  const auto status = error_of([&] { proc.process_resident_bytes(); });
  CHECK_THAT(status.what(), Catch::Contains("status") && Catch::Contains("VmRSS"));
}

TEST_CASE("SystemSampler reads the fixture tree and this machine", "[system_metrics]") {
  apo::monitor::SystemSampler::Options options;
  options.proc_root = fixture("proc_ok");
  options.read_gpus = false;
  apo::monitor::SystemSampler fixed(options);
  const apo::monitor::Sample sample = fixed();
  REQUIRE(sample.ram_used_ratio);
  CHECK(*sample.ram_used_ratio == Approx(0.75));
  CHECK(sample.ram_total_bytes == 16384000LL * 1024);
  CHECK(sample.process_resident_bytes == 524288LL * 1024);
  CHECK_FALSE(sample.cpu_busy_ratio);  // the tree does not move: no CPU time passed
  CHECK_FALSE(sample.busy());

  // The live /proc, with whatever GPUs there are (none on CI: the readings are then absent).
  apo::monitor::SystemSampler live;
  const apo::monitor::Sample now = live();
  REQUIRE(now.ram_used_ratio);
  CHECK(*now.ram_used_ratio > 0.0);
  CHECK(*now.ram_used_ratio < 1.0);
  REQUIRE(now.process_resident_bytes);
  CHECK(*now.process_resident_bytes > 0);
  CHECK_FALSE(live.gpu_status().empty());
  for (const auto& device : now.devices) {
    CHECK(device.device.rfind("cuda:", 0) == 0);
    CHECK(device.total_bytes.value_or(0) > 0);
  }
}

}  // namespace system_metrics_test

#include <ATen/Context.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include "apo_catch.hpp"

#include <chrono>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "apo/core/clock.hpp"
#include "apo/core/error.hpp"
#include "apo/core/machine.hpp"
#include "apo/core/units.hpp"

using namespace apo::literals;

TEST_CASE("Error carries code, message and context", "[error]") {
  const apo::Error plain(apo::ErrorCode::NotFound, "no such model");
  CHECK(plain.code() == apo::ErrorCode::NotFound);
  CHECK(std::string(plain.what()) == "no such model");

  const apo::Error located(apo::ErrorCode::Corrupt, "header length 9e9 exceeds the file",
                           "model.safetensors");
  CHECK(std::string(located.what()) == "model.safetensors: header length 9e9 exceeds the file");
  CHECK(located.message() == "header length 9e9 exceeds the file");
  CHECK(located.context() == "model.safetensors");
  CHECK(apo::to_string(apo::ErrorCode::OutOfMemory) == "OutOfMemory");

  CHECK_THROWS_MATCHES(apo::fail(apo::ErrorCode::Rejected, "queue full ({} requests)", 64),
                       apo::Error, Catch::Message("queue full (64 requests)"));
}

TEST_CASE("byte literals and conversions", "[units]") {
  STATIC_REQUIRE(1_KiB == 1024);
  STATIC_REQUIRE(3_MiB == 3 * 1024 * 1024);
  STATIC_REQUIRE(24_GiB == 24LL * 1024 * 1024 * 1024);
  STATIC_REQUIRE(apo::gib_to_bytes(1.5) == 1536_MiB);
  STATIC_REQUIRE(apo::gib_to_bytes(-1.0) == 0);
  CHECK(apo::bytes_to_gib(6_GiB) == 6.0);
  CHECK(apo::gib_to_bytes(1e300) == std::numeric_limits<std::int64_t>::max());
  CHECK(apo::format_bytes(512) == "512 B");
  CHECK(apo::format_bytes(1536) == "1.50 KiB");
  CHECK(apo::format_bytes(24_GiB) == "24.00 GiB");
}

TEST_CASE("FakeClock moves only when advanced, and never backwards", "[clock]") {
  apo::FakeClock clock;
  const auto start = clock.now();
  CHECK(clock.now() == start);
  clock.advance(std::chrono::milliseconds(250));
  CHECK(clock.now() - start == std::chrono::milliseconds(250));
  clock.advance(std::chrono::milliseconds(-100));
  CHECK(clock.now() - start == std::chrono::milliseconds(250));

  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) clock.advance(std::chrono::nanoseconds(1));
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(clock.now() - start == std::chrono::milliseconds(250) + std::chrono::nanoseconds(4000));
}

TEST_CASE("FakeClock's wall time moves with it from its origin", "[clock]") {
  const auto origin =
      std::chrono::sys_days{std::chrono::year{2026} / 11 / 26} + std::chrono::hours(9);
  apo::FakeClock clock(origin);
  CHECK(clock.wall_now() == origin);
  clock.advance(std::chrono::hours(3));
  CHECK(clock.wall_now() == origin + std::chrono::hours(3));
}

TEST_CASE("SteadyClock is monotonic", "[clock]") {
  const apo::Clock& clock = apo::SteadyClock::instance();
  const auto a = clock.now();
  const auto b = clock.now();
  CHECK(b >= a);
}

TEST_CASE("the probe reads this machine", "[probe]") {
  const apo::MachineInfo machine = apo::probe_machine();
  CHECK(machine.cpu.logical_cores >= 1);
  CHECK_FALSE(machine.cpu.usable_cores.empty());
  CHECK_FALSE(machine.cpu.model.empty());
  CHECK(machine.memory.total_bytes > 0);
  CHECK(machine.memory.available_bytes > 0);
  CHECK(machine.memory.available_bytes <= machine.memory.total_bytes);
  CHECK_FALSE(machine.cuda_status.empty());
  CHECK_FALSE(machine.nvml_status.empty());
  CHECK_FALSE(machine.torch_version.empty());

  const auto json = nlohmann::json::parse(apo::to_json(machine));
  CHECK(json["cpu"]["logical_cores"] == machine.cpu.logical_cores);
  CHECK(json["memory"]["total_bytes"] == machine.memory.total_bytes);
  CHECK(json["cuda"]["devices"].size() == machine.cuda_devices.size());
}

TEST_CASE("the probe finds the GPU and apo's kernels run on it", "[probe][gpu]") {
  const apo::MachineInfo machine = apo::probe_machine({.run_kernel_check = true});
  REQUIRE(machine.cuda_built);
  REQUIRE_FALSE(machine.cuda_devices.empty());
  for (const auto& device : machine.cuda_devices) {
    INFO(device.name);
    CHECK_FALSE(device.name.empty());
    CHECK(device.total_bytes > 1_GiB);
    CHECK(device.free_bytes > 0);
    CHECK(device.free_bytes <= device.total_bytes);
    CHECK(device.compute_capability() >= 70);
    CHECK(device.sm_count > 0);
    CHECK(device.pci_bus_id.size() >= 12);
    CHECK(device.kernel_check == std::optional<std::string>("ok"));
  }
  CHECK(machine.nvml_status == "ok");
  CHECK(machine.cuda_devices[0].telemetry.temperature_c.has_value());
  CHECK(machine.cuda_devices[0].telemetry.power_w.has_value());
}

TEST_CASE("the probe leaves the current CUDA device as it was", "[probe][gpu]") {
  REQUIRE(at::hasCUDA());
  // The query makes each device current only for the kernel check, and gives the caller's back.
  const c10::impl::VirtualGuardImpl guard(c10::DeviceType::CUDA);
  const int last = static_cast<int>(guard.deviceCount()) - 1;
  const c10::Device before = guard.exchangeDevice(c10::Device(c10::DeviceType::CUDA, last));
  (void)apo::probe_machine({.run_kernel_check = true});
  CHECK(guard.getDevice().index() == last);
  guard.setDevice(before);
}

// apo::Device (one spelling of a device) and the clock that can be waited on.

#include "apo_catch.hpp"

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "apo/core/clock.hpp"
#include "apo/core/device.hpp"

using apo::Device;
using namespace std::chrono_literals;

TEST_CASE("a device is the CPU or a CUDA device by index", "[core][device]") {
  CHECK(Device::parse("cpu") == Device::cpu());
  CHECK(Device::parse("cuda") == Device::cuda(0));
  CHECK(Device::parse("cuda:3") == Device::cuda(3));
  CHECK_FALSE(Device::parse("cuda:"));
  CHECK_FALSE(Device::parse("cuda:x"));
  CHECK_FALSE(Device::parse("mps"));
  CHECK_FALSE(Device::parse("cuda:99999999"));
  CHECK(Device::cuda(1).str() == "cuda:1");
  CHECK(Device::cpu().str() == "cpu");
  CHECK(Device::cuda(2).to_torch() == c10::Device(c10::kCUDA, 2));
  CHECK(Device::from_torch(c10::Device(c10::kCUDA)) == Device::cuda(0));
  CHECK(Device::from_torch(c10::Device(c10::kCPU)) == Device::cpu());
  CHECK_FALSE(Device::from_torch(c10::Device(c10::kMeta)));
  CHECK(Device::cpu() < Device::cuda(0));
  CHECK(std::hash<Device>{}(Device::cuda(1)) != std::hash<Device>{}(Device::cuda(2)));
}

TEST_CASE("a fake clock wakes a waiter when it passes the waiter's time", "[core][clock]") {
  apo::FakeClock clock;
  std::mutex mutex;
  apo::ClockCondition condition(clock, mutex);
  const auto deadline = clock.now() + 10s;
  std::atomic<bool> returned{false};
  bool ready = false;
  bool got = true;  // Catch's assertions stay on this thread: they are not thread-safe
  std::thread waiter([&] {
    std::unique_lock lock(mutex);
    got = condition.wait_until(lock, deadline, [&] { return ready; });
    returned = true;
  });
  clock.advance(9s);
  std::this_thread::sleep_for(30ms);
  CHECK_FALSE(returned);  // 9 s of fake time is not 10, however long real time waits
  clock.advance(1s);
  waiter.join();
  CHECK(returned);
  CHECK_FALSE(got);  // the time came, not the condition
  CHECK(clock.real_time_of(deadline) == std::nullopt);
}

TEST_CASE("a condition wakes its waiter before the time; a real clock times out in real time",
          "[core][clock]") {
  apo::FakeClock clock;
  std::mutex mutex;
  apo::ClockCondition condition(clock, mutex);
  bool ready = false;
  bool got = false;
  std::thread waiter([&] {
    std::unique_lock lock(mutex);
    got = condition.wait_until(lock, std::nullopt, [&] { return ready; });
  });
  {
    const std::lock_guard lock(mutex);
    ready = true;
  }
  condition.notify_all();
  waiter.join();
  CHECK(got);

  apo::SteadyClock& steady = apo::SteadyClock::instance();
  apo::ClockCondition real(steady, mutex);
  std::unique_lock lock(mutex);
  const auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(real.wait_until(lock, steady.now() + 20ms, [] { return false; }));
  CHECK(std::chrono::steady_clock::now() - start >= 20ms);
}

// Placement across devices: room, the guide's score, worker queues, rejection with a reason.

#include "apo_catch.hpp"

#include <chrono>
#include <thread>

#include "apo/batch/fixed_batcher.hpp"
#include "apo/batch/memory_aware_batcher.hpp"
#include "apo/core/clock.hpp"
#include "apo/core/config.hpp"
#include "apo/core/machine.hpp"
#include "apo/sched/placement.hpp"
#include "apo/sched/priority_scheduler.hpp"
#include "sched_test_support.hpp"

using apo::Error;
using apo::ErrorCode;
using apo::FakeClock;
using apo::batch::Batch;
using apo::batch::FixedBatcher;
using apo::batch::MemoryAwareBatcher;
using apo::sched::DeviceSpec;
using apo::sched::Placement;
using apo::sched::PlacementOptions;
using apo::sched::PriorityScheduler;
using namespace sched_test;
using namespace apo::literals;

TEST_CASE("placement across devices", "[sched][placement]") {
  SECTION("the device with room and the lowest score") {
    Placement placement({{"cuda:0", 20_GiB}, {"cuda:1", 20_GiB}, {"cuda:2", 8_GiB}});
    // All idle and empty: equal scores, the first wins.
    CHECK(placement.choose(4_GiB) == 0u);
    // Memory pressure: cuda:0 has 12 of 20 GiB used by others.
    placement.report(0, 12_GiB);
    CHECK(placement.choose(4_GiB) == 1u);
    CHECK(placement.load(0).memory_pressure() == Approx(0.6));
    // Utilization (as NVML reports it) adds to the score.
    placement.report(1, 0, 0.9);
    CHECK(placement.choose(4_GiB) == 2u);  // 0 + 0 beats 0.9 + 0 and 0 + 0.6
    // Only devices with room count: 10 GiB fits neither cuda:0 (8 free) nor cuda:2 (8).
    CHECK(placement.choose(10_GiB) == 1u);
    CHECK_FALSE(placement.choose(21_GiB));

    // Weights: ignore utilization entirely.
    PlacementOptions memory_only;
    memory_only.utilization_weight = 0;
    Placement weighted({{"cuda:0", 20_GiB}, {"cuda:1", 20_GiB}}, memory_only);
    weighted.report(0, 0, 1.0);
    weighted.report(1, 2_GiB, 0.0);
    CHECK(weighted.choose(1_GiB) == 0u);
  }
  SECTION("a request no device can hold is rejected with the reason") {
    const Placement placement({{"cuda:0", 20_GiB}, {"cuda:1", 12_GiB}});
    placement.admit(request(1, "hunyuan_t2v", 0, 20_GiB));
    CHECK_THROWS_MATCHES(placement.admit(request(2, "hunyuan_t2v", 0, 24_GiB)), Error,
                         Catch::Predicate<Error>([](const Error& e) {
                           return e.code() == ErrorCode::Rejected &&
                                  e.message().find("24.00 GiB") != std::string::npos &&
                                  e.message().find("cuda:0 20.00 GiB") != std::string::npos &&
                                  e.message().find("cuda:1 12.00 GiB") != std::string::npos &&
                                  e.context().starts_with("request 2 (hunyuan_t2v");
                         }));
  }
  SECTION("bad devices and indexes are refused") {
    CHECK_THROWS_AS(Placement({}), Error);
    CHECK_THROWS_AS(Placement({{"cuda:0", 0}}), Error);
    PlacementOptions bad;
    bad.batches_per_device = 0;
    CHECK_THROWS_AS(Placement({{"cuda:0", 1_GiB}}, bad), Error);
    Placement placement({{"cuda:0", 1_GiB}});
    CHECK_THROWS_AS(placement.load(3), Error);
    CHECK_THROWS_AS(placement.report(0, -1), Error);
    CHECK_THROWS_AS(placement.report(0, 0, 1.5), Error);
    CHECK_THROWS_AS(placement.complete(0, Batch{}), Error);  // nothing was placed
  }
  SECTION("dispatch forms batches for the room there is, one queue per device") {
    FakeClock clock;
    PriorityScheduler scheduler(clock);
    apo::batch::MemoryAwareBatcherOptions options;
    options.max_queue_delay = std::chrono::milliseconds(0);
    const MemoryAwareBatcher batcher(options);
    Placement placement({{"cuda:0", 20_GiB}, {"cuda:1", 12_GiB}});

    for (int i = 1; i <= 12; ++i) scheduler.submit(request(i, "qwen_edit", 0, 4_GiB));
    // First batch: sized for the largest free memory (20 GiB: 5 of 4 GiB), to cuda:0.
    auto first = placement.dispatch(scheduler, batcher);
    REQUIRE(first.device == 0u);
    CHECK(first.batch_size == 5);
    CHECK(placement.load(0).reserved_bytes == 20_GiB);
    CHECK(placement.load(0).in_flight == 1);
    // cuda:0 is at its one batch: the next goes to cuda:1, sized for 12 GiB.
    auto second = placement.dispatch(scheduler, batcher);
    REQUIRE(second.device == 1u);
    CHECK(second.batch_size == 3);
    // No device has room: nothing is formed, the queue keeps its order.
    auto third = placement.dispatch(scheduler, batcher);
    CHECK_FALSE(third.device);
    CHECK(scheduler.size() == 4);

    // Workers take from their own device's queue.
    auto on_one = placement.try_take(1);
    REQUIRE(on_one);
    CHECK(on_one->size() == 3);
    auto on_zero = placement.try_take(0);
    REQUIRE(on_zero);
    CHECK(on_zero->size() == 5);
    CHECK_FALSE(placement.try_take(0));
    placement.complete(0, *on_zero);
    CHECK(placement.load(0).reserved_bytes == 0);
    auto again = placement.dispatch(scheduler, batcher);
    CHECK(again.device == 0u);
    CHECK(again.batch_size == 4);
    CHECK(scheduler.size() == 0);
  }
  SECTION("several batches per device share its memory") {
    FakeClock clock;
    PriorityScheduler scheduler(clock);
    const FixedBatcher batcher(2);
    PlacementOptions two;
    two.batches_per_device = 2;
    Placement placement({{"cuda:0", 10_GiB}}, two);
    for (int i = 1; i <= 6; ++i) scheduler.submit(request(i, "qwen_edit", 0, 3_GiB));
    CHECK(placement.dispatch(scheduler, batcher).batch_size == 2);  // 6 of 10 GiB
    CHECK(placement.load(0).utilization == Approx(0.5));
    // 4 GiB left: one more request fits beside the first batch.
    CHECK(placement.dispatch(scheduler, batcher).batch_size == 1);
    CHECK_FALSE(placement.dispatch(scheduler, batcher).device);  // two in flight
    CHECK(placement.load(0).reserved_bytes == 9_GiB);
  }
  SECTION("a worker blocks until its device has a batch, and stops on request") {
    FakeClock clock;
    PriorityScheduler scheduler(clock);
    const FixedBatcher batcher(1);
    Placement placement({{"cuda:0", 8_GiB}});
    std::optional<Batch> taken;
    std::jthread worker([&](std::stop_token stop) { taken = placement.take(0, stop); });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    scheduler.submit(request(1));
    REQUIRE(placement.dispatch(scheduler, batcher).device == 0u);
    worker.join();
    REQUIRE(taken);
    CHECK(taken->requests.at(0).id == 1);

    std::optional<Batch> none = Batch{};
    std::jthread idle([&](std::stop_token stop) { none = placement.take(0, stop); });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    idle.request_stop();
    idle.join();
    CHECK_FALSE(none);
  }
  SECTION("the devices of a machine") {
    apo::MachineInfo machine;
    machine.memory.total_bytes = 64_GiB;
    apo::Config config;
    auto host = Placement::devices_for(machine, config);
    REQUIRE(host.size() == 1);
    CHECK(host[0].name == "cpu");
    CHECK(host[0].budget_bytes > 0);

    machine.cuda_devices.resize(2);
    machine.cuda_devices[0].index = 0;
    machine.cuda_devices[0].total_bytes = 24_GiB;
    machine.cuda_devices[1].index = 1;
    machine.cuda_devices[1].total_bytes = 16_GiB;
    config.performance.parallel_execution = false;
    CHECK(Placement::devices_for(machine, config).size() == 1);
    config.performance.parallel_execution = true;
    auto gpus = Placement::devices_for(machine, config);
    REQUIRE(gpus.size() == 2);
    CHECK(gpus[0].name == "cuda:0");
    CHECK(gpus[0].budget_bytes == 20_GiB);  // the tune rule: 0.88 x 24 - 1.2, to 0.5 GiB
    CHECK(gpus[1].budget_bytes == 13_GiB);
    config.performance.max_memory_usage_gib = 10.0;
    CHECK(Placement::devices_for(machine, config)[1].budget_bytes == 10_GiB);

    config.scheduling.batches_per_device = 3;
    config.scheduling.memory_pressure_weight = 2.0;
    const auto options = PlacementOptions::from_config(config);
    CHECK(options.batches_per_device == 3);
    CHECK(options.memory_pressure_weight == 2.0);
  }
}

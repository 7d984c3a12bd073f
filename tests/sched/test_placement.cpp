// Placement across devices: room, the guide's score, worker queues, rejection with a reason.

#include "apo_catch.hpp"

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "apo/batch/fixed_batcher.hpp"
#include "apo/batch/memory_aware_batcher.hpp"
#include "apo/core/clock.hpp"
#include "apo/core/config.hpp"
#include "apo/core/error.hpp"
#include "apo/sched/placement.hpp"
#include "apo/sched/priority_scheduler.hpp"
#include "sched_test_support.hpp"

using apo::Error;
using apo::ErrorCode;
using apo::FakeClock;
using apo::batch::Batch;
using apo::batch::FixedBatcher;
using apo::batch::MemoryAwareBatcher;
using apo::memory::LedgerUse;
using apo::sched::DeviceSpec;
using apo::sched::Placement;
using apo::sched::PlacementOptions;
using apo::sched::PriorityScheduler;
using namespace sched_test;
using namespace apo::literals;

namespace {

std::vector<std::shared_ptr<apo::memory::MemoryLedger>> ledgers(std::vector<std::int64_t> budgets) {
  std::vector<DeviceSpec> specs;
  for (std::size_t i = 0; i < budgets.size(); ++i) {
    specs.push_back({apo::Device::cuda(static_cast<int>(i)), budgets[i]});
  }
  return apo::sched::make_ledgers(specs);
}

}  // namespace

TEST_CASE("placement across devices", "[sched][placement]") {
  SECTION("the device with room and the lowest score") {
    auto devices = ledgers({20_GiB, 20_GiB, 8_GiB});
    Placement placement(devices);
    // All idle and empty: equal scores, the first wins.
    CHECK(placement.choose(4_GiB) == 0u);
    // Memory pressure: cuda:0 has 12 of 20 GiB of resident weights.
    devices[0]->charge(LedgerUse::weights, 12_GiB, "resident models");
    CHECK(placement.choose(4_GiB) == 1u);
    CHECK(placement.load(0).memory_pressure() == Approx(0.6));
    // Utilization (as NVML reports it) adds to the score.
    placement.report_utilization(1, 0.9);
    CHECK(placement.choose(4_GiB) == 2u);  // 0 + 0 beats 0.9 + 0 and 0 + 0.6
    // Only devices with room count: 10 GiB fits neither cuda:0 (8 free) nor cuda:2 (8).
    CHECK(placement.choose(10_GiB) == 1u);
    CHECK_FALSE(placement.choose(21_GiB));
    // A cached activation pool serves batches: it does not take their room.
    devices[2]->charge(LedgerUse::pool, 6_GiB, "activation pool");
    CHECK(placement.load(2).room_bytes == 8_GiB);

    // Weights: ignore utilization entirely.
    PlacementOptions memory_only;
    memory_only.utilization_weight = 0;
    auto weighted_devices = ledgers({20_GiB, 20_GiB});
    Placement weighted(weighted_devices, memory_only);
    weighted.report_utilization(0, 1.0);
    weighted.report_utilization(1, 0.0);
    weighted_devices[1]->charge(LedgerUse::weights, 2_GiB, "resident models");
    CHECK(weighted.choose(1_GiB) == 0u);
  }
  SECTION("a request no device can hold is rejected with the reason") {
    const Placement placement(ledgers({20_GiB, 12_GiB}));
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
    CHECK_THROWS_AS(Placement({nullptr}), Error);
    CHECK_THROWS_AS(apo::sched::make_ledgers({{apo::Device::cuda(0), 0}}), Error);
    auto twice = ledgers({1_GiB});
    twice.push_back(twice.front());
    CHECK_THROWS_AS(Placement(twice), Error);
    PlacementOptions bad;
    bad.batches_per_device = 0;
    CHECK_THROWS_AS(Placement(ledgers({1_GiB}), bad), Error);
    Placement placement(ledgers({1_GiB}));
    CHECK_THROWS_AS(placement.load(3), Error);
    CHECK_THROWS_AS(placement.report_utilization(0, 1.5), Error);
    CHECK_THROWS_AS(placement.complete(0, Batch{}), Error);  // nothing was placed
  }
  SECTION("dispatch forms batches for the room there is, one queue per device") {
    FakeClock clock;
    PriorityScheduler scheduler(clock);
    apo::batch::MemoryAwareBatcherOptions options;
    options.max_queue_delay = std::chrono::milliseconds(0);
    const MemoryAwareBatcher batcher(options);
    auto devices = ledgers({20_GiB, 12_GiB});
    Placement placement(devices);

    for (int i = 1; i <= 12; ++i) scheduler.submit(request(i, "qwen_edit", 0, 4_GiB));
    // First batch: both idle and empty, cuda:0 wins the tie; sized for its 20 GiB (5 of 4 GiB).
    auto first = placement.dispatch(scheduler, batcher);
    REQUIRE(first.device == 0u);
    CHECK(first.batch_size == 5);
    CHECK(placement.load(0).memory.batches_bytes == 20_GiB);
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
    CHECK(placement.load(0).memory.batches_bytes == 0);
    auto again = placement.dispatch(scheduler, batcher);
    CHECK(again.device == 0u);
    CHECK(again.batch_size == 4);
    CHECK(scheduler.size() == 0);
  }
  SECTION("resident weights and extra bytes leave less room; a head that fits nowhere blocks") {
    FakeClock clock;
    PriorityScheduler scheduler(clock);
    const FixedBatcher batcher(8);
    auto devices = ledgers({10_GiB});
    Placement placement(devices);
    devices[0]->charge(LedgerUse::weights, 4_GiB, "resident models");
    for (int i = 1; i <= 4; ++i) scheduler.submit(request(i, "qwen_edit", 0, 2_GiB));
    // The batch's models need 2 GiB more there: 6 - 2 = 4 GiB for requests.
    const apo::sched::ExtraBytes extra = [](apo::batch::GroupKeyView, std::size_t) {
      return std::int64_t{2_GiB};
    };
    const auto placed = placement.dispatch(scheduler, batcher, extra);
    REQUIRE(placed.device == 0u);
    CHECK(placed.batch_size == 2);
    CHECK(devices[0]->snapshot().batches_bytes == 4_GiB);
    placement.complete(0, *placement.try_take(0));
    // With 9 GiB of weights resident, no request fits: blocked, naming the head.
    devices[0]->charge(LedgerUse::weights, 5_GiB, "more models");
    const auto blocked = placement.dispatch(scheduler, batcher);
    CHECK_FALSE(blocked.device);
    REQUIRE(blocked.blocked);
    CHECK(blocked.blocked->head == 3);
    CHECK(blocked.blocked->needed_bytes == 2_GiB);
    CHECK(blocked.blocked->largest_room_bytes == 1_GiB);
    CHECK(devices[0]->snapshot().batches_bytes == 0);  // the reservation was given back
    CHECK(scheduler.size() == 2);
  }
  SECTION("several batches per device share its memory") {
    FakeClock clock;
    PriorityScheduler scheduler(clock);
    const FixedBatcher batcher(2);
    PlacementOptions two;
    two.batches_per_device = 2;
    Placement placement(ledgers({10_GiB}), two);
    for (int i = 1; i <= 6; ++i) scheduler.submit(request(i, "qwen_edit", 0, 3_GiB));
    CHECK(placement.dispatch(scheduler, batcher).batch_size == 2);  // 6 of 10 GiB
    CHECK(placement.load(0).utilization == Approx(0.5));
    // 4 GiB left: one more request fits beside the first batch.
    CHECK(placement.dispatch(scheduler, batcher).batch_size == 1);
    CHECK_FALSE(placement.dispatch(scheduler, batcher).device);  // two in flight
    CHECK(placement.load(0).memory.batches_bytes == 9_GiB);
  }
  SECTION("a worker blocks until its device has a batch, and stops on request") {
    FakeClock clock;
    PriorityScheduler scheduler(clock);
    const FixedBatcher batcher(1);
    Placement placement(ledgers({8_GiB}));
    std::atomic<bool> returned{false};
    std::optional<Batch> taken;
    std::jthread worker([&](std::stop_token stop) {
      taken = placement.take(0, stop);
      returned = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK_FALSE(returned);  // nothing to take yet: the worker waits
    scheduler.submit(request(1));
    REQUIRE(placement.dispatch(scheduler, batcher).device == 0u);
    worker.join();
    REQUIRE(taken);
    CHECK(taken->requests.at(0).id == 1);

    std::atomic<bool> idle_returned{false};
    std::optional<Batch> none = Batch{};
    std::jthread idle([&](std::stop_token stop) {
      none = placement.take(0, stop);
      idle_returned = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK_FALSE(idle_returned);
    idle.request_stop();
    idle.join();
    CHECK_FALSE(none);
  }
  SECTION("options come from the config") {
    apo::Config config;
    config.scheduling.batches_per_device = 3;
    config.scheduling.memory_pressure_weight = 2.0;
    const auto options = PlacementOptions::from_config(config);
    CHECK(options.batches_per_device == 3);
    CHECK(options.memory_pressure_weight == 2.0);
  }
}

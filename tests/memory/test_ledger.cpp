// MemoryLedger: one budget over weights, staging, the activation pool and batch estimates; and
// LedgerResource, which charges a pool's segments to it.

#include "apo_catch.hpp"

#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "apo/core/error.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/memory/host_resource.hpp"
#include "apo/memory/ledger.hpp"

using apo::Device;
using apo::Error;
using apo::ErrorCode;
using apo::memory::LedgerUse;
using apo::memory::MemoryLedger;
using namespace apo::literals;

TEST_CASE("a ledger bounds weights, staging and max(pool, batches) by one budget",
          "[memory][ledger]") {
  MemoryLedger ledger(Device::cuda(0), 10_GiB);
  CHECK(ledger.device() == Device::cuda(0));
  ledger.charge(LedgerUse::weights, 4_GiB, "a model");
  CHECK(ledger.room(LedgerUse::weights) == 6_GiB);
  ledger.charge(LedgerUse::batches, 3_GiB, "a batch");
  CHECK(ledger.snapshot().used_bytes == 7_GiB);
  // The pool grows into what the batch estimates promised without using more.
  CHECK(ledger.room(LedgerUse::pool) == 6_GiB);
  ledger.charge(LedgerUse::pool, 2_GiB, "activations");
  CHECK(ledger.snapshot().used_bytes == 7_GiB);
  ledger.charge(LedgerUse::pool, 2_GiB, "more activations");  // past the estimates
  CHECK(ledger.snapshot().used_bytes == 8_GiB);
  // A cached pool serves the next batch.
  ledger.release(LedgerUse::batches, 3_GiB);
  CHECK(ledger.snapshot().used_bytes == 8_GiB);
  CHECK(ledger.room(LedgerUse::batches) == 6_GiB);
  CHECK(ledger.room(LedgerUse::weights) == 2_GiB);

  // A charge past the budget changes nothing and names everything.
  try {
    ledger.charge(LedgerUse::weights, 3_GiB, "wan2.2.safetensors");
    FAIL("charged past the budget");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::OutOfMemory);
    const std::string what = e.what();
    CHECK(what.find("wan2.2.safetensors") != std::string::npos);
    CHECK(what.find("3.00 GiB more for weights") != std::string::npos);
    CHECK(what.find("cuda:0: 8.00 GiB of 10.00 GiB used") != std::string::npos);
    CHECK(what.find("activation pool 4.00 GiB") != std::string::npos);
  }
  CHECK(ledger.snapshot().weights_bytes == 4_GiB);
  CHECK_FALSE(ledger.try_charge(LedgerUse::staging, 3_GiB));
  CHECK(ledger.try_charge(LedgerUse::staging, 2_GiB));
  CHECK(ledger.snapshot().free_bytes() == 0);
  CHECK_THROWS_AS(ledger.charge(LedgerUse::weights, -1, "negative"), Error);
  CHECK_THROWS_AS(MemoryLedger(Device::cpu(), 0), Error);
  // Releasing more than is charged stops at zero.
  ledger.release(LedgerUse::staging, 5_GiB);
  CHECK(ledger.snapshot().staging_bytes == 0);
}

TEST_CASE("the allocator's reading is the floor: untracked memory counts", "[memory][ledger]") {
  MemoryLedger ledger(Device::cuda(0), 10_GiB);
  ledger.charge(LedgerUse::weights, 4_GiB, "a model");
  ledger.observe(6_GiB);  // torch holds 2 GiB the ledger was not told about
  CHECK(ledger.snapshot().untracked_bytes == 2_GiB);
  CHECK(ledger.snapshot().used_bytes == 6_GiB);
  CHECK(ledger.room(LedgerUse::batches) == 4_GiB);
  ledger.observe(3_GiB);  // below the charges: nothing untracked
  CHECK(ledger.snapshot().untracked_bytes == 0);
  // Memory already held is charged even past the budget, so that nothing hides it.
  ledger.charge_held(LedgerUse::weights, 8_GiB);
  CHECK(ledger.snapshot().used_bytes == 12_GiB);
  CHECK(ledger.room(LedgerUse::weights) == 0);
}

TEST_CASE("peak windows see the highest use while they are open", "[memory][ledger]") {
  MemoryLedger ledger(Device::cpu(), 1_GiB);
  ledger.charge(LedgerUse::weights, 100_MiB, "model");
  auto window = ledger.open_window();
  CHECK(window.peak_bytes() == 100_MiB);
  ledger.charge(LedgerUse::pool, 300_MiB, "pool");
  ledger.release(LedgerUse::pool, 300_MiB);
  CHECK(window.peak_bytes() == 400_MiB);
  auto later = ledger.open_window();
  CHECK(later.peak_bytes() == 100_MiB);
  CHECK(ledger.snapshot().peak_used_bytes == 400_MiB);
}

TEST_CASE("a caching pool over a LedgerResource stays within the ledger", "[memory][ledger]") {
  auto ledger = std::make_shared<MemoryLedger>(Device::cpu(), 64_MiB);
  ledger->charge(LedgerUse::weights, 30_MiB, "resident models");
  auto pool = std::make_shared<apo::memory::CachingPool>(
      apo::memory::LedgerResource(apo::memory::HostResource(), ledger));
  void* a = pool->allocate(20_MiB);
  CHECK(ledger->snapshot().pool_bytes == pool->bytes_reserved());
  // 30 + 20 + 20 > 64: the pool releases its cache, retries, and refuses.
  CHECK_THROWS_MATCHES(pool->allocate(20_MiB), Error, Catch::Predicate<Error>([](const Error& e) {
                         return e.code() == ErrorCode::OutOfMemory;
                       }));
  pool->deallocate(a, 20_MiB);
  void* b = pool->allocate(30_MiB);  // the freed block's segment goes back first
  CHECK(ledger->snapshot().used_bytes <= 64_MiB);
  pool->deallocate(b, 30_MiB);
  pool->release();
  CHECK(ledger->snapshot().pool_bytes == 0);
  CHECK_THROWS_AS(apo::memory::LedgerResource(apo::memory::HostResource(), nullptr), Error);
}

TEST_CASE("charges from many threads never pass the budget", "[memory][ledger][threads]") {
  MemoryLedger ledger(Device::cpu(), 100_MiB);
  std::atomic<bool> over{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 random(static_cast<unsigned>(t));
      const LedgerUse uses[] = {LedgerUse::weights, LedgerUse::staging, LedgerUse::pool,
                                LedgerUse::batches};
      for (int i = 0; i < 2000; ++i) {
        const LedgerUse use = uses[random() % 4];
        const std::int64_t bytes = static_cast<std::int64_t>(1 + random() % 30) * 1_MiB;
        if (ledger.try_charge(use, bytes)) {
          if (ledger.snapshot().used_bytes > 100_MiB) over = true;
          ledger.release(use, bytes);
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK_FALSE(over);
  CHECK(ledger.snapshot().used_bytes == 0);
  CHECK(ledger.snapshot().peak_used_bytes <= 100_MiB);
}

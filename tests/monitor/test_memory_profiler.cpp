// MemoryProfiler: snapshots of ledgers and pools, their differences, and the text and JSON forms.

#include "apo_catch.hpp"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "apo/core/error.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/memory/host_resource.hpp"
#include "apo/memory/ledger.hpp"
#include "apo/memory/statistics_adaptor.hpp"
#include "apo/monitor/memory_profiler.hpp"

namespace memory_profiler_test {

using namespace apo::literals;

/// A profiler of apo's own figures only: the process and torch figures move on their own.
apo::monitor::MemoryProfiler quiet_profiler() {
  return apo::monitor::MemoryProfiler({.process_figures = false, .torch_device_figures = false});
}

const apo::monitor::MemoryChange& change_of(const apo::monitor::MemoryDiff& diff,
                                            const std::string& name) {
  for (const auto& change : diff.changes) {
    if (change.name == name) return change;
  }
  FAIL("no change named " << name);
  throw;  // unreachable: FAIL throws
}

}  // namespace memory_profiler_test

TEST_CASE("a snapshot diff of a ledger shows each charge exactly", "[monitor][memory_profiler]") {
  using apo::memory::LedgerUse;
  using namespace memory_profiler_test;
  auto profiler = quiet_profiler();
  auto ledger = std::make_shared<apo::memory::MemoryLedger>(apo::Device::cpu(), 10_GiB);
  profiler.add_ledger("cpu", ledger);

  profiler.take_snapshot("empty");
  ledger->charge(LedgerUse::weights, 3_GiB, "a model");
  ledger->charge(LedgerUse::batches, 512_MiB, "a batch");
  profiler.take_snapshot("loaded");
  const auto diff = profiler.diff("empty", "loaded");

  CHECK(diff.before_label == "empty");
  CHECK(diff.after_label == "loaded");
  CHECK(change_of(diff, "cpu/weights_bytes").delta == 3_GiB);
  CHECK(change_of(diff, "cpu/weights_bytes").before == 0);
  CHECK(change_of(diff, "cpu/weights_bytes").after == 3_GiB);
  CHECK(change_of(diff, "cpu/batches_bytes").delta == 512_MiB);
  CHECK(change_of(diff, "cpu/used_bytes").delta == 3_GiB + 512_MiB);
  CHECK(change_of(diff, "cpu/free_bytes").delta == -(3_GiB + 512_MiB));
  CHECK(change_of(diff, "cpu/staging_bytes").delta == 0);
  CHECK(change_of(diff, "cpu/budget_bytes").after == 10_GiB);

  // The largest |delta| first; ties (used and free move by the same amount) in name order.
  REQUIRE(diff.changes.size() == 9);
  CHECK(diff.changes[0].name == "cpu/free_bytes");
  CHECK(diff.changes[1].name == "cpu/peak_used_bytes");
  CHECK(diff.changes[2].name == "cpu/used_bytes");
  CHECK(diff.changes[3].name == "cpu/weights_bytes");
  CHECK(diff.changes[4].name == "cpu/batches_bytes");
  for (std::size_t i = 1; i < diff.changes.size(); ++i) {
    CHECK(std::abs(diff.changes[i - 1].delta) >= std::abs(diff.changes[i].delta));
  }

  // Releases show as negative deltas the other way round.
  ledger->release(LedgerUse::weights, 1_GiB);
  profiler.take_snapshot("one freed");
  CHECK(change_of(profiler.diff("loaded", "one freed"), "cpu/weights_bytes").delta == -1_GiB);
  CHECK(change_of(profiler.diff("loaded", "one freed"), "cpu/peak_used_bytes").delta == 0);
}

TEST_CASE("a snapshot diff of a caching pool shows its allocations and cache",
          "[monitor][memory_profiler]") {
  using namespace memory_profiler_test;
  auto profiler = quiet_profiler();
  auto pool = std::make_shared<apo::memory::CachingPool>(apo::memory::HostResource{});
  profiler.add_pool("activations", pool);

  profiler.take_snapshot("before");
  void* block = pool->allocate(16_MiB);  // over half a shared segment: a segment of its own
  profiler.take_snapshot("allocated");
  pool->deallocate(block, 16_MiB);
  profiler.take_snapshot("freed");
  pool->release();
  profiler.take_snapshot("released");

  const auto allocated = profiler.diff("before", "allocated");
  CHECK(change_of(allocated, "activations/in_use_bytes").delta == 16_MiB);
  CHECK(change_of(allocated, "activations/requested_bytes").delta == 16_MiB);
  CHECK(change_of(allocated, "activations/reserved_bytes").delta == 16_MiB);
  CHECK(change_of(allocated, "activations/live_allocations").delta == 1);
  CHECK(change_of(allocated, "activations/allocations").delta == 1);
  CHECK(change_of(allocated, "activations/upstream_allocations").delta == 1);

  const auto freed = profiler.diff("allocated", "freed");
  CHECK(change_of(freed, "activations/in_use_bytes").delta == -16_MiB);
  CHECK(change_of(freed, "activations/cached_bytes").delta == 16_MiB);
  CHECK(change_of(freed, "activations/reserved_bytes").delta == 0);

  const auto released = profiler.diff("freed", "released");
  CHECK(change_of(released, "activations/reserved_bytes").delta == -16_MiB);
  CHECK(change_of(released, "activations/peak_reserved_bytes").delta == 0);

  // analyze_memory_usage: one diff per consecutive pair.
  const auto steps = profiler.consecutive_diffs();
  REQUIRE(steps.size() == 3);
  CHECK(steps[0].before_label == "before");
  CHECK(steps[2].after_label == "released");
}

TEST_CASE("a statistics adaptor under a ledger resource is counted too",
          "[monitor][memory_profiler]") {
  using namespace memory_profiler_test;
  auto profiler = quiet_profiler();
  auto ledger = std::make_shared<apo::memory::MemoryLedger>(apo::Device::cpu(), 1_GiB);
  auto counted = std::make_shared<apo::memory::StatisticsAdaptor>(
      apo::memory::LedgerResource(apo::memory::HostResource{}, ledger));
  profiler.add_ledger("ledger", ledger);
  profiler.add_pool("counted", counted);
  profiler.take_snapshot("a");
  void* p = counted->allocate(3_MiB);
  profiler.take_snapshot("b");
  counted->deallocate(p, 3_MiB);
  const auto diff = profiler.diff("a", "b");
  CHECK(change_of(diff, "counted/current_bytes").delta == 3_MiB);
  CHECK(change_of(diff, "counted/allocations").delta == 1);
  CHECK(change_of(diff, "ledger/pool_bytes").delta == 3_MiB);
}

TEST_CASE("unknown and repeated labels are errors that name them", "[monitor][memory_profiler]") {
  using namespace memory_profiler_test;
  auto profiler = quiet_profiler();
  profiler.take_snapshot("start");
  try {
    (void)profiler.diff("start", "finish");
    FAIL("diff of an unknown label");
  } catch (const apo::Error& error) {
    CHECK(error.code() == apo::ErrorCode::NotFound);
    CHECK_THAT(error.what(), Catch::Contains("'finish'") && Catch::Contains("'start'"));
  }
  CHECK_THROWS_WITH(profiler.snapshot("nope"), Catch::Contains("'nope'"));
  CHECK_THROWS_WITH(profiler.take_snapshot("start"), Catch::Contains("'start' was taken"));
  CHECK_THROWS_AS(profiler.take_snapshot(""), apo::Error);
  profiler.clear();
  CHECK_NOTHROW(profiler.take_snapshot("start"));
  CHECK(profiler.snapshots().size() == 1);
}

TEST_CASE("sources: names are checked, dead sources and late ones have one side",
          "[monitor][memory_profiler]") {
  using namespace memory_profiler_test;
  auto profiler = quiet_profiler();
  profiler.add_provider("fixed", [] {
    return apo::monitor::MemoryFigures{{"a_bytes", 100}, {"things", 7}};
  });
  CHECK_THROWS_AS(profiler.add_provider("fixed", [] { return apo::monitor::MemoryFigures{}; }),
                  apo::Error);
  CHECK_THROWS_AS(profiler.add_provider("a/b", [] { return apo::monitor::MemoryFigures{}; }),
                  apo::Error);
  CHECK_THROWS_AS(profiler.add_provider("process", [] { return apo::monitor::MemoryFigures{}; }),
                  apo::Error);
  CHECK_THROWS_AS(profiler.add_provider("empty", {}), apo::Error);

  auto ledger = std::make_shared<apo::memory::MemoryLedger>(apo::Device::cpu(), 1_GiB);
  profiler.add_ledger("short-lived", ledger);
  profiler.take_snapshot("one");
  ledger.reset();  // held weakly: its figures end with it
  profiler.add_provider("late", [] { return apo::monitor::MemoryFigures{{"x_bytes", 5}}; });
  profiler.take_snapshot("two");

  const auto diff = profiler.diff("one", "two");
  const auto& gone = change_of(diff, "short-lived/budget_bytes");
  CHECK(gone.before == 1_GiB);
  CHECK_FALSE(gone.after.has_value());
  CHECK(gone.delta == -1_GiB);
  const auto& late = change_of(diff, "late/x_bytes");
  CHECK_FALSE(late.before.has_value());
  CHECK(late.delta == 5);
  CHECK(change_of(diff, "fixed/things").delta == 0);
  CHECK(diff.changes.front().name == "short-lived/budget_bytes");

  CHECK(profiler.remove_provider("late"));
  CHECK_FALSE(profiler.remove_provider("late"));
  CHECK_FALSE(profiler.take_snapshot("three").figure("late/x_bytes").has_value());
}

TEST_CASE("a diff renders as a MiB table and as JSON", "[monitor][memory_profiler]") {
  using namespace memory_profiler_test;
  apo::monitor::MemorySnapshot before{"a", {{"pool/in_use_bytes", 1_MiB}, {"pool/count", 2}}};
  apo::monitor::MemorySnapshot after{
      "b", {{"pool/in_use_bytes", 3_MiB + 512_KiB}, {"pool/count", 2}, {"new/x_bytes", 1_MiB}}};
  const auto diff = apo::monitor::diff_snapshots(before, after);
  const std::string text = apo::monitor::format_diff(diff);
  CHECK_THAT(text, Catch::Contains("memory from 'a' to 'b'"));
  CHECK_THAT(text, Catch::Contains("pool/in_use_bytes") && Catch::Contains("1.00") &&
                       Catch::Contains("3.50") && Catch::Contains("+2.50"));
  CHECK_THAT(text, !Catch::Contains("pool/count"));  // unchanged
  CHECK(apo::monitor::format_diff(diff, 1).find("new/x_bytes") == std::string::npos);

  const auto json = nlohmann::json::parse(apo::monitor::diff_to_json(diff));
  CHECK(json["before"] == "a");
  CHECK(json["after"] == "b");
  REQUIRE(json["changes"].size() == 3);
  CHECK(json["changes"][0]["name"] == "pool/in_use_bytes");
  CHECK(json["changes"][0]["delta"] == 2_MiB + 512_KiB);
  CHECK(json["changes"][0]["unit"] == "bytes");
  CHECK(json["changes"][1]["name"] == "new/x_bytes");
  CHECK(json["changes"][1]["before"].is_null());
  CHECK(json["changes"][2]["unit"] == "count");

  const auto snapshot = nlohmann::json::parse(apo::monitor::snapshot_to_json(after));
  CHECK(snapshot["figures"]["pool/count"] == 2);
}

TEST_CASE("the process's resident set comes from /proc/self/status", "[monitor][memory_profiler]") {
  using namespace memory_profiler_test;
  const auto parsed = apo::monitor::parse_proc_status(
      "Name:\tapo\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\nThreads:\t4\n");
  REQUIRE(parsed.size() == 2);
  CHECK(parsed[0] == std::pair<std::string, std::int64_t>{"rss_bytes", 100 * apo::MiB});
  CHECK(parsed[1] == std::pair<std::string, std::int64_t>{"peak_rss_bytes", 200 * apo::MiB});
  CHECK(apo::monitor::parse_proc_status("VmRSS:\t garbage kB\nVmHWM: 12 MB\n").empty());
  CHECK(apo::monitor::parse_proc_status("").empty());

  apo::monitor::MemoryProfiler profiler;  // the real file, on Linux
  const auto snapshot = profiler.take_snapshot("now");
  REQUIRE(snapshot.figure("process/rss_bytes").has_value());
  CHECK(*snapshot.figure("process/rss_bytes") > 1_MiB);
  CHECK(*snapshot.figure("process/peak_rss_bytes") >= *snapshot.figure("process/rss_bytes"));
}

TEST_CASE("snapshots from many threads keep every label once", "[monitor][memory_profiler]") {
  using namespace memory_profiler_test;
  auto profiler = quiet_profiler();
  auto ledger = std::make_shared<apo::memory::MemoryLedger>(apo::Device::cpu(), 1_GiB);
  profiler.add_ledger("cpu", ledger);
  std::vector<std::thread> threads;
  std::atomic<int> duplicates{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        ledger->charge(apo::memory::LedgerUse::batches, 1_KiB, "test");
        profiler.take_snapshot("t" + std::to_string(t) + "-" + std::to_string(i));
        try {
          profiler.take_snapshot("shared-" + std::to_string(i));
        } catch (const apo::Error&) {
          duplicates.fetch_add(1);
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(profiler.snapshots().size() == 4 * 50 + 50);
  CHECK(duplicates.load() == 3 * 50);
  CHECK(profiler.diff("t0-0", "t0-49").changes.size() == 9);
}

#include "apo_catch.hpp"

#include <nlohmann/json.hpp>

#include "apo/monitor/benchmark.hpp"

TEST_CASE("ratio says how many times better, whichever way the metric improves", "[bench]") {
  using apo::bench::Better;
  apo::bench::Result faster{"quantize", "time", 2.0, "ms", 8.0, Better::lower};
  CHECK(faster.ratio() == 4.0);
  apo::bench::Result wider{"copy", "bandwidth", 30.0, "GB/s", 10.0, Better::higher};
  CHECK(wider.ratio() == 3.0);
  apo::bench::Result worse{"quantize", "time", 8.0, "ms", 2.0, Better::lower};
  CHECK(worse.ratio() == 0.25);
  apo::bench::Result alone{"quantize", "time", 8.0, "ms", std::nullopt, Better::lower};
  CHECK_FALSE(alone.ratio().has_value());
}

TEST_CASE("the report's JSON follows the benchmark contract", "[bench]") {
  apo::bench::Report report("bench_test");
  report.add({"case a", "time", 1.5, "ms", 3.0, apo::bench::Better::lower});
  report.add({"case b", "peak", 100, "bytes", std::nullopt, apo::bench::Better::lower});
  const auto json = nlohmann::json::parse(report.to_json());
  CHECK(json["benchmark"] == "bench_test");
  CHECK(json["machine"]["cpu"]["logical_cores"].get<int>() >= 1);
  REQUIRE(json["results"].size() == 2);
  CHECK(json["results"][0]["case"] == "case a");
  CHECK(json["results"][0]["metric"] == "time");
  CHECK(json["results"][0]["value"] == 1.5);
  CHECK(json["results"][0]["unit"] == "ms");
  CHECK(json["results"][0]["baseline"] == 3.0);
  CHECK(json["results"][0]["ratio"] == 2.0);
  CHECK(json["results"][1]["baseline"].is_null());
  CHECK(json["results"][1]["ratio"].is_null());
}

TEST_CASE("median_seconds runs at least the asked number of times", "[bench]") {
  int runs = 0;
  const double seconds = apo::bench::median_seconds([&] { ++runs; }, 7, 0.0);
  CHECK(runs >= 8);  // one warm-up plus seven
  CHECK(seconds >= 0.0);
}

TEST_CASE("interleaved_medians runs every candidate in turn, as often as asked", "[bench]") {
  std::vector<int> order;
  const auto medians = apo::bench::interleaved_medians(
      {[&] { order.push_back(0); }, [&] { order.push_back(1); }}, 5, 0.0);
  REQUIRE(medians.size() == 2);
  REQUIRE(order.size() == 12);  // one warm-up each, then five rounds of both
  for (std::size_t i = 0; i < order.size(); ++i) CHECK(order[i] == static_cast<int>(i % 2));
  CHECK(apo::bench::interleaved_medians({[] {}}, 3, 0.0, 2).size() == 1);  // max_rounds caps
}

// quantize_state_dict's progress callback: called after each tensor with input bytes done and in
// all, rising to the total.

#include <ATen/ATen.h>

#include "apo_catch.hpp"

#include <cstdint>
#include <utility>
#include <vector>

#include "apo/quant/state_dict.hpp"

TEST_CASE("quantize_state_dict reports progress in input bytes", "[quant][state_dict]") {
  const apo::quant::NamedTensors state{
      {"blocks.0.linear.weight", at::randn({256, 256})},
      {"blocks.0.linear.bias", at::randn({256})},
      {"blocks.1.linear.weight", at::randn({128, 256})},
  };
  std::vector<std::pair<std::int64_t, std::int64_t>> calls;
  const auto result = apo::quant::quantize_state_dict(
      state, {}, [&](std::int64_t done, std::int64_t total) { calls.emplace_back(done, total); });
  const std::int64_t total = (256 * 256 + 256 + 128 * 256) * 4;
  REQUIRE(calls.size() == state.size());
  CHECK(calls[0] == std::pair<std::int64_t, std::int64_t>{256 * 256 * 4, total});
  for (std::size_t i = 1; i < calls.size(); ++i) CHECK(calls[i].first > calls[i - 1].first);
  CHECK(calls.back().first == total);
  CHECK(result.report.bytes_before == total);
}

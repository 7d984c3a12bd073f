#include "apo_catch.hpp"

#include <string>
#include <vector>

#include "apo/core/clock.hpp"
#include "apo/core/error.hpp"
#include "apo/models/usage_predictor.hpp"

using apo::models::UsagePredictor;
using namespace std::chrono_literals;

namespace {
const std::vector<std::string> kVideo{"umt5_xxl", "wan_vae", "wan2.2_t2v"};
const std::vector<std::string> kImage{"qwen_vl", "qwen_vae", "qwen_image"};
}  // namespace

TEST_CASE("the predictor learns what is used at which hour", "[preload]") {
  apo::FakeClock clock;
  UsagePredictor predictor(clock);
  // Mornings are for video, evenings for images.
  for (int day = 0; day < 5; ++day) {
    for (int i = 0; i < 4; ++i) predictor.record("wan_t2v", kVideo, 9);
    for (int i = 0; i < 4; ++i) predictor.record("qwen_edit", kImage, 20);
    predictor.record("qwen_edit", kImage, 9);
    clock.advance(24h);
  }
  CHECK(predictor.probability("wan2.2_t2v", 9) == Approx(0.8));
  CHECK(predictor.probability("qwen_image", 9) == Approx(0.2));
  CHECK(predictor.probability("qwen_image", 9, "qwen_edit") == Approx(1.0));
  CHECK(predictor.probability("wan2.2_t2v", 20) == Approx(0.0));
  // A neighbouring hour borrows half the evidence; far hours have none.
  CHECK(predictor.probability("wan2.2_t2v", 10) == Approx(0.8));
  CHECK(predictor.probability("wan2.2_t2v", 3) == 0.0);

  // Preloading follows the overall probability: qwen_edit is certain to want its models, but it
  // is rare in the morning.
  const auto morning = predictor.predict(9, 0.3);
  REQUIRE(morning.size() == 3);
  for (const auto& p : morning) {
    CHECK(p.probability == Approx(0.8));
    CHECK(p.workflow == "wan_t2v");
  }
  CHECK(morning[0].model == "umt5_xxl");  // ties in name order
  const auto evening = predictor.predict(20, 0.3);
  REQUIRE(evening.size() == 3);
  CHECK(evening[0].workflow == "qwen_edit");
  CHECK(predictor.predict(9, 0.9).empty());
}

TEST_CASE("old habits fade with the half-life", "[preload]") {
  apo::FakeClock clock;
  UsagePredictor predictor(clock,
                           {.half_life = 24h, .neighbour_hour_weight = 0.0, .min_evidence = 0.1});
  for (int i = 0; i < 8; ++i) predictor.record("wan_t2v", kVideo, 9);
  clock.advance(48h);  // the video habit is now worth a quarter
  for (int i = 0; i < 2; ++i) predictor.record("qwen_edit", kImage, 9);
  // 8 x 0.25 = 2 video requests against 2 image requests.
  CHECK(predictor.probability("wan2.2_t2v", 9) == Approx(0.5));
  CHECK(predictor.probability("qwen_image", 9) == Approx(0.5));
}

TEST_CASE("too little evidence predicts nothing", "[preload]") {
  apo::FakeClock clock;
  UsagePredictor predictor(clock);
  predictor.record("wan_t2v", kVideo, 9);
  CHECK(predictor.probability("wan2.2_t2v", 9) == 0.0);
  CHECK(predictor.predict(9, 0.3).empty());
}

TEST_CASE("the current hour comes from the clock's wall time", "[preload]") {
  apo::FakeClock clock(std::chrono::sys_days{std::chrono::year{2026} / 11 / 26});
  UsagePredictor predictor(clock);
  const int start = predictor.current_hour();
  clock.advance(5h);
  CHECK(predictor.current_hour() == (start + 5) % 24);
  for (int i = 0; i < 4; ++i) predictor.record("wan_t2v", kVideo);
  CHECK(predictor.probability("wan_vae", (start + 5) % 24) == Approx(1.0));
  CHECK_THROWS_AS(predictor.probability("wan_vae", 24), apo::Error);
}

// Dynamic precision choice: real bytes, measured quality, the config's knobs, and the reasons.

#include <ATen/ATen.h>

#include "apo_catch.hpp"

#include <cmath>
#include <string>

#include "apo/core/error.hpp"
#include "apo/core/units.hpp"
#include "apo/quant/precision.hpp"

namespace q = apo::quant;
using apo::GiB;
using q::QFormat;
using q::Scaling;

namespace {

const q::QuantSpec kInt8{QFormat::int8, Scaling::per_row};
const q::QuantSpec kE4M3{QFormat::fp8_e4m3, Scaling::per_row};
const q::QuantSpec kE5M2{QFormat::fp8_e5m2, Scaling::per_row};

const q::CandidateFormat& candidate(const q::PrecisionChoice& choice, q::QuantSpec spec) {
  for (const auto& c : choice.candidates) {
    if (c.spec == spec) return c;
  }
  FAIL("no candidate " << q::to_string(spec));
  throw;
}

// A 12-billion-parameter transformer (Flux-sized) stored in fp32.
q::ModelFootprint flux_like(at::ScalarType dtype = at::kFloat) {
  return {12'000'000'000, dtype, 0};
}

}  // namespace

TEST_CASE("quality factors are measured on the reference tensors", "[quant][precision]") {
  const q::QualityTable& table = q::reference_quality();
  CHECK(table.measured_on == "apo's reference tensors");
  REQUIRE(table.formats.size() == q::candidate_specs().size());
  const double fp16 = table.at({QFormat::fp16, Scaling::none}).snr_db;
  const double bf16 = table.at({QFormat::bf16, Scaling::none}).snr_db;
  const double int8 = table.at(kInt8).snr_db;
  const double e4m3 = table.at(kE4M3).snr_db;
  const double e5m2 = table.at(kE5M2).snr_db;
  INFO("SNR dB: fp16 " << fp16 << ", bf16 " << bf16 << ", int8 " << int8 << ", e4m3 " << e4m3
                       << ", e5m2 " << e5m2);
  // Each extra mantissa bit is worth about 6 dB: fp16 (11 bits) > bf16 (8) > e4m3 (4) > e5m2 (3).
  CHECK(fp16 > bf16 + 15);
  CHECK(bf16 > e4m3 + 15);
  CHECK(e4m3 > e5m2 + 4);
  // Per-row int8 beats E4M3 on plain Gaussian rows (42 vs 32 dB) but loses on the tensor with
  // outlier input channels, whose amax sets every row's step: the worst case ranks E4M3 first.
  CHECK(e4m3 > int8);
  CHECK(table.at(kInt8).mean_snr_db > int8);
  CHECK(e4m3 > 25);
  CHECK(table.at({QFormat::none, Scaling::none}).snr_db == INFINITY);
  CHECK(table.at(kE4M3).cosine_similarity > 0.999);
  CHECK(table.at(kE4M3).cosine_similarity < 1.0);
  // Measured, so measuring again gives the same numbers.
  const q::QualityTable again =
      q::measure_quality(q::reference_weights(), q::candidate_specs(), "again");
  CHECK(again.at(kE4M3).snr_db == table.at(kE4M3).snr_db);
  CHECK_THROWS_AS(table.at({QFormat::int8, Scaling::per_tensor}), apo::Error);
}

TEST_CASE("bytes are real bytes per element: int8 is half of fp16, not a quarter",
          "[quant][precision]") {
  const q::PrecisionChoice choice = q::choose_precision({flux_like(), 1000 * GiB});
  CHECK(candidate(choice, {QFormat::none, Scaling::none}).weight_bytes == 48'000'000'000);
  CHECK(candidate(choice, {QFormat::fp16, Scaling::none}).weight_bytes == 24'000'000'000);
  CHECK(candidate(choice, {QFormat::bf16, Scaling::none}).weight_bytes == 24'000'000'000);
  CHECK(candidate(choice, kInt8).weight_bytes == 12'000'000'000);
  CHECK(candidate(choice, kE4M3).weight_bytes == 12'000'000'000);
  CHECK(candidate(choice, kInt8).weight_bytes * 2 ==
        candidate(choice, {QFormat::fp16, Scaling::none}).weight_bytes);
  // Per-row scales cost 4 bytes a row.
  const q::PrecisionChoice with_rows =
      q::choose_precision({{12'000'000'000, at::kFloat, 1000}, 1000 * GiB});
  CHECK(candidate(with_rows, kInt8).weight_bytes == 12'000'004'000);
}

TEST_CASE("the highest-quality format that fits within the fraction is chosen, with a reason",
          "[quant][precision]") {
  SECTION("everything fits: the source dtype") {
    const q::PrecisionChoice c = q::choose_precision({flux_like(), 80 * GiB});
    CHECK(c.spec == q::QuantSpec{QFormat::none, Scaling::none});
    CHECK(c.fits);
    CHECK(c.budget_bytes == static_cast<std::int64_t>(80 * GiB * 0.8));
  }
  SECTION("fp32 does not fit, 16-bit does: fp16, which measures better than bf16") {
    const q::PrecisionChoice c = q::choose_precision({flux_like(), 40 * GiB});
    CHECK(c.spec == q::QuantSpec{QFormat::fp16, Scaling::none});
    CHECK(c.reason.find("higher-quality formats do not fit (none needs") != std::string::npos);
  }
  SECTION("only 8 bits fit: the 8-bit format with the best measured worst-case SNR, E4M3") {
    const q::PrecisionChoice c = q::choose_precision({flux_like(), 24 * GiB});
    CHECK(c.spec == kE4M3);
    CHECK(c.fits);
    CHECK(c.weight_bytes == 12'000'000'000);
    INFO(c.reason);
    CHECK(c.reason.find("fit within 80% of 24.00 GiB (19.20 GiB)") != std::string::npos);
    CHECK(c.reason.find("measured on apo's reference tensors: worst SNR") != std::string::npos);
  }
  SECTION("nothing fits: the smallest, flagged") {
    const q::PrecisionChoice c = q::choose_precision({flux_like(), 8 * GiB});
    CHECK_FALSE(c.fits);
    CHECK(c.weight_bytes == 12'000'000'000);
    CHECK(c.reason.find("nothing fits") != std::string::npos);
  }
  SECTION("8-bit formats off") {
    const q::PrecisionChoice c = q::choose_precision({flux_like(), 24 * GiB, 0.8, false});
    CHECK_FALSE(c.fits);
    CHECK(c.spec.format == QFormat::fp16);
    CHECK(c.reason.find("8-bit formats are off") != std::string::npos);
  }
  SECTION("a bf16 model never 'chooses' fp16 over keeping bf16") {
    const q::PrecisionChoice c = q::choose_precision({flux_like(at::kBFloat16), 40 * GiB});
    CHECK(c.spec == q::QuantSpec{QFormat::none, Scaling::none});
    for (const auto& cand : c.candidates) CHECK(cand.spec.format != QFormat::fp16);
  }
}

TEST_CASE("the config's precision, quantization switch and fraction drive the choice",
          "[quant][precision]") {
  q::PrecisionSettings config;
  config.precision = apo::Precision::automatic;
  config.allow_8bit = true;
  config.memory_fraction = 0.8;
  CHECK(q::choose_precision(config, flux_like(), 32 * GiB).spec.format ==
        QFormat::fp16);          // 25.6 GiB budget
  config.memory_fraction = 0.5;  // 16 GiB budget: fp16's 22.4 GiB does not fit
  CHECK(q::traits(q::choose_precision(config, flux_like(), 32 * GiB).spec.format).scaled);
  config.precision = apo::Precision::fp8_e4m3;
  const q::PrecisionChoice fixed = q::choose_precision(config, flux_like(), 32 * GiB);
  CHECK(fixed.spec == kE4M3);
  CHECK(fixed.fits);
  CHECK(fixed.reason.find("model_precision is fp8_e4m3") != std::string::npos);
  config.precision = apo::Precision::fp32;
  const q::PrecisionChoice too_big = q::choose_precision(config, flux_like(), 32 * GiB);
  CHECK_FALSE(too_big.fits);
  CHECK(too_big.reason.find("more than the budget") != std::string::npos);
}

TEST_CASE("footprint_of counts a state dict's parameters and scale rows", "[quant][precision]") {
  const q::NamedTensors state{{"blocks.0.attn.to_q.weight", at::zeros({512, 256})},
                              {"blocks.0.attn.to_k.weight", at::zeros({512, 256}, at::kBFloat16)},
                              {"blocks.0.ff.weight", at::zeros({1024, 256}, at::kBFloat16)},
                              {"blocks.0.norm.weight", at::zeros({256})},
                              {"ids", at::zeros({77}, at::kLong)}};
  const q::ModelFootprint f = q::footprint_of(state);
  CHECK(f.parameter_count == 512 * 256 * 2 + 1024 * 256 + 256);
  CHECK(f.source_dtype == at::kBFloat16);
  CHECK(f.scale_rows == 512 + 512 + 1024);
}

TEST_CASE("precision choice rejects impossible requests", "[quant][precision]") {
  CHECK_THROWS_AS(q::choose_precision({{0, at::kFloat, 0}, GiB}), apo::Error);
  CHECK_THROWS_AS(q::choose_precision({flux_like(), 0}), apo::Error);
  CHECK_THROWS_AS(q::choose_precision({flux_like(), GiB, 1.5}), apo::Error);
  CHECK_THROWS_AS(q::choose_precision({{10, at::kInt, 0}, GiB}), apo::Error);
}

TEST_CASE("format names and the config's precisions map to formats", "[quant][precision]") {
  CHECK(apo::parse_enum<QFormat>("fp8") == QFormat::fp8_e4m3);
  CHECK(apo::parse_enum<QFormat>("int8") == QFormat::int8);
  CHECK_FALSE(apo::parse_enum<QFormat>("int4").has_value());
  CHECK(apo::parse_enum<Scaling>("per_row") == Scaling::per_row);
  CHECK(q::to_string(kE4M3) == "fp8_e4m3 per_row");
  CHECK(q::to_string(q::QuantSpec{QFormat::bf16, Scaling::none}) == "bf16");
  CHECK(q::format_of(apo::Precision::fp8_e5m2) == QFormat::fp8_e5m2);
  CHECK(q::format_of(apo::Precision::fp32) == QFormat::none);
  CHECK_FALSE(q::format_of(apo::Precision::automatic).has_value());
}

// quantize_state_dict: what it selects by default and by user patterns, its report, its errors.

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>
#include "apo_catch.hpp"

#include <cmath>
#include <string>

#include "apo/core/error.hpp"
#include "apo/quant/state_dict.hpp"

namespace q = apo::quant;
using q::QFormat;
using q::Scaling;

namespace {

// The shapes of a small DiT block, with the names diffusers gives them.
q::NamedTensors dit_like() {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  auto w = [&](std::vector<std::int64_t> shape) { return at::randn(shape, gen) * 0.02; };
  return {
      {"pos_embed.proj.weight", w({256, 4, 2, 2})},
      {"pos_embed.proj.bias", w({256})},
      {"time_embedding.linear_1.weight", w({512, 256})},
      {"transformer_blocks.0.norm1.linear.weight", w({1536, 256})},
      {"transformer_blocks.0.attn.to_q.weight", w({256, 256})},
      {"transformer_blocks.0.attn.to_q.bias", w({256})},
      {"transformer_blocks.0.attn.norm_q.weight", w({64})},
      {"transformer_blocks.0.ff.net.0.proj.weight", w({1024, 256}).to(at::kBFloat16)},
      {"transformer_blocks.0.ff.net.2.weight", w({256, 1024}).to(at::kBFloat16)},
      {"transformer_blocks.0.conv.weight", w({128, 64, 3, 3})},
      {"transformer_blocks.0.small.weight", w({16, 16})},
      {"proj_out.weight", w({16, 256})},
      {"position_ids", at::arange(77, at::kLong)},
  };
}

const q::TensorReport& entry(const q::QuantizationReport& report, const std::string& name) {
  for (const auto& t : report.tensors) {
    if (t.name == name) return t;
  }
  FAIL("no report entry for " << name);
  throw;
}

}  // namespace

TEST_CASE("quantize_state_dict quantizes linear and conv weights and keeps the rest",
          "[quant][state_dict]") {
  const q::NamedTensors state = dit_like();
  const q::QuantizedStateDict result = q::quantize_state_dict(state);
  const q::QuantizationReport& report = result.report;
  REQUIRE(result.tensors.size() == state.size());
  REQUIRE(report.tensors.size() == state.size());
  for (std::size_t i = 0; i < state.size(); ++i) {
    CHECK(result.tensors[i].name() == state[i].first);
    CHECK(report.tensors[i].name == state[i].first);
  }
  for (const char* name :
       {"transformer_blocks.0.attn.to_q.weight", "transformer_blocks.0.ff.net.0.proj.weight",
        "transformer_blocks.0.ff.net.2.weight", "transformer_blocks.0.conv.weight"}) {
    INFO(name);
    const q::TensorReport& t = entry(report, name);
    CHECK(t.quantized);
    CHECK(t.spec == q::QuantSpec{QFormat::fp8_e4m3, Scaling::per_row});
    CHECK(t.bytes_after < t.bytes_before);
    CHECK(t.snr_db > 25.0);  // E4M3 per row: about 31 dB on Gaussian weights
    CHECK(t.snr_db < 40.0);
    CHECK(t.cosine_similarity > 0.999);
    CHECK(t.max_abs_error > 0);
  }
  const struct {
    const char* name;
    const char* reason;
  } kept[] = {
      {"pos_embed.proj.weight", "keep pattern 'embed'"},
      {"pos_embed.proj.bias", "keep pattern '(^|\\.)bias$'"},
      {"time_embedding.linear_1.weight", "keep pattern 'embed'"},
      {"transformer_blocks.0.norm1.linear.weight", "keep pattern 'norm'"},
      {"transformer_blocks.0.attn.to_q.bias", "bias"},
      {"transformer_blocks.0.attn.norm_q.weight", "keep pattern 'norm'"},
      {"transformer_blocks.0.small.weight", "256 elements, fewer than min_elements = 65536"},
      {"proj_out.weight", "proj_out"},
      {"position_ids", "dtype Long is not floating point"},
  };
  for (const auto& k : kept) {
    INFO(k.name);
    const q::TensorReport& t = entry(report, k.name);
    CHECK_FALSE(t.quantized);
    CHECK(t.reason.find(k.reason) != std::string::npos);
    CHECK(t.bytes_after == t.bytes_before);
    CHECK(std::isinf(t.snr_db));
  }
  // Kept tensors are the inputs themselves, not copies.
  CHECK(result.tensors.back().data().data_ptr() == state.back().second.data_ptr());

  CHECK(report.quantized_count == 4);
  CHECK(report.kept_count == 9);
  std::int64_t before = 0;
  std::int64_t after = 0;
  for (const auto& t : report.tensors) {
    before += t.bytes_before;
    after += t.bytes_after;
  }
  CHECK(report.bytes_before == before);
  CHECK(report.bytes_after == after);
  // to_q: 256 x 256 fp32 (256 KiB) -> 64 KiB of codes plus 256 scales.
  CHECK(entry(report, "transformer_blocks.0.attn.to_q.weight").bytes_after == 256 * 256 + 4 * 256);
  CHECK(report.min_snr_db > 25.0);
  CHECK(report.mean_snr_db >= report.min_snr_db);
  CHECK(report.min_cosine_similarity > 0.999);

  const auto json = nlohmann::json::parse(report.to_json());
  CHECK(json["tensors"].size() == state.size());
  CHECK(json["totals"]["quantized_count"] == 4);
  CHECK(json["tensors"][0]["snr_db"].is_null());  // kept: exact
  CHECK(json["tensors"][4]["format"] == "fp8_e4m3");
  const std::string table = report.to_table();
  CHECK(table.find("transformer_blocks.0.attn.to_q.weight") != std::string::npos);
  CHECK(table.find("total: 4 quantized, 9 kept") != std::string::npos);
}

TEST_CASE("a user's patterns and threshold replace the defaults", "[quant][state_dict]") {
  q::QuantizationRules rules;
  rules.spec = {QFormat::int8, Scaling::per_tensor};
  rules.keep_patterns = {"attn"};
  rules.min_elements = 1;
  rules.measure_error = false;
  const q::QuantizationReport report = q::quantize_state_dict(dit_like(), rules).report;
  CHECK(entry(report, "transformer_blocks.0.norm1.linear.weight").quantized);
  CHECK(entry(report, "transformer_blocks.0.small.weight").quantized);
  CHECK(entry(report, "proj_out.weight").quantized);
  CHECK_FALSE(entry(report, "transformer_blocks.0.attn.to_q.weight").quantized);
  CHECK_FALSE(entry(report, "transformer_blocks.0.attn.norm_q.weight").quantized);
  CHECK(entry(report, "pos_embed.proj.weight").quantized);
  CHECK(entry(report, "pos_embed.proj.bias").reason == "matches no quantize pattern");
  CHECK(entry(report, "proj_out.weight").spec == q::QuantSpec{QFormat::int8, Scaling::per_tensor});
  CHECK(entry(report, "proj_out.weight").snr_db == 0);  // not measured
}

TEST_CASE("quantize_state_dict errors name the tensor or the pattern", "[quant][state_dict]") {
  q::NamedTensors state = dit_like();
  state[4].second[3][7] = std::numeric_limits<float>::quiet_NaN();  // attn.to_q.weight
  try {
    (void)q::quantize_state_dict(state);
    FAIL("no error");
  } catch (const apo::Error& e) {
    CHECK(e.context() == "transformer_blocks.0.attn.to_q.weight");
    CHECK(std::string(e.what()).find("NaN or infinite value (first: nan at [3, 7])") !=
          std::string::npos);
  }
  // NaN in a kept tensor is left alone: it is not quantized.
  q::NamedTensors kept_nan = dit_like();
  kept_nan[1].second[0] = std::numeric_limits<float>::quiet_NaN();  // a bias
  CHECK_NOTHROW(q::quantize_state_dict(kept_nan));

  q::QuantizationRules rules;
  rules.keep_patterns = {"norm", "(unclosed"};
  try {
    (void)q::quantize_state_dict(dit_like(), rules);
    FAIL("no error");
  } catch (const apo::Error& e) {
    CHECK(e.code() == apo::ErrorCode::InvalidArgument);
    CHECK(std::string(e.what()).find(
              "keep pattern '(unclosed' is not a valid regular expression") != std::string::npos);
  }
}

#include "apo_catch.hpp"

#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "apo/core/error.hpp"
#include "apo/models/lora.hpp"

using apo::models::LoraAdapter;

namespace {

const std::vector<std::string> kWeights{
    "blocks.0.self_attn.q.weight", "blocks.0.self_attn.q.bias", "blocks.0.self_attn.k.weight",
    "blocks.0.ffn.0.weight",       "patch_embedding.weight",
};

std::map<std::string, at::Tensor> pair(const std::string& base, const std::string& down,
                                       const std::string& up, std::int64_t out, std::int64_t in,
                                       std::int64_t rank) {
  return {{base + down, at::randn({rank, in})}, {base + up, at::randn({out, rank})}};
}

}  // namespace

TEST_CASE("LoRA layouts of ComfyUI, kohya/musubi and diffusers bind to the same weights",
          "[lora]") {
  at::manual_seed(1);
  struct Layout {
    std::string name, q, k;
    std::string down, up;
  };
  const std::vector<Layout> layouts{
      {"comfy DiT", "diffusion_model.blocks.0.self_attn.q", "diffusion_model.blocks.0.self_attn.k",
       ".lora_A.weight", ".lora_B.weight"},
      {"kohya/musubi", "lora_unet_blocks_0_self_attn_q", "lora_unet_blocks_0_self_attn_k",
       ".lora_down.weight", ".lora_up.weight"},
      {"diffusers/PEFT", "transformer.blocks.0.self_attn.q", "transformer.blocks.0.self_attn.k",
       ".lora_A.weight", ".lora_B.weight"},
      {"plain", "blocks.0.self_attn.q", "blocks.0.self_attn.k", ".lora_down.weight",
       ".lora_up.weight"},
  };
  for (const auto& layout : layouts) {
    INFO(layout.name);
    auto tensors = pair(layout.q, layout.down, layout.up, 32, 16, 4);
    tensors.merge(pair(layout.k, layout.down, layout.up, 32, 16, 4));
    tensors.emplace(layout.q + ".alpha", at::tensor(2.0));
    const auto adapter = LoraAdapter::from_tensors(layout.name, tensors);
    REQUIRE(adapter.layers().size() == 2);
    const auto binding = adapter.bind(kWeights);
    CHECK(binding.unmatched.empty());
    REQUIRE(binding.targets.size() == 2);
    std::vector<std::string> targets{binding.targets[0].weight, binding.targets[1].weight};
    std::sort(targets.begin(), targets.end());
    const std::vector<std::string> expected{"blocks.0.self_attn.k.weight",
                                            "blocks.0.self_attn.q.weight"};
    CHECK(targets == expected);
  }
}

TEST_CASE("a model whose weights carry ComfyUI's prefix binds too; strangers stay unmatched",
          "[lora]") {
  const std::vector<std::string> prefixed{"model.diffusion_model.blocks.0.self_attn.q.weight"};
  auto tensors =
      pair("lora_unet_blocks_0_self_attn_q", ".lora_down.weight", ".lora_up.weight", 8, 8, 2);
  tensors.merge(pair("lora_te_text_model_encoder_layers_0_mlp_fc1", ".lora_down.weight",
                     ".lora_up.weight", 8, 8, 2));
  const auto binding = LoraAdapter::from_tensors("x", tensors).bind(prefixed);
  REQUIRE(binding.targets.size() == 1);
  CHECK(binding.targets[0].weight == prefixed[0]);
  const std::vector<std::string> unmatched{"lora_te_text_model_encoder_layers_0_mlp_fc1"};
  CHECK(binding.unmatched == unmatched);
}

TEST_CASE("the delta is strength x alpha / rank x up . down", "[lora]") {
  at::manual_seed(2);
  auto tensors = pair("blocks.0.self_attn.q", ".lora_A.weight", ".lora_B.weight", 6, 5, 3);
  tensors.emplace("blocks.0.self_attn.q.alpha", at::tensor(1.5));
  const auto adapter = LoraAdapter::from_tensors("x", tensors);
  const auto& layer = adapter.layers()[0];
  const at::Tensor expected = 0.8 * (1.5 / 3.0) * at::matmul(layer.up, layer.down);
  CHECK(at::allclose(layer.delta(0.8, {6, 5}), expected, 1e-5, 1e-6));
  // Without alpha, alpha is the rank: the scale is the strength.
  tensors.erase("blocks.0.self_attn.q.alpha");
  const auto plain = LoraAdapter::from_tensors("x", tensors);
  CHECK(at::allclose(plain.layers()[0].delta(1.0, {6, 5}), at::matmul(layer.up, layer.down), 1e-5,
                     1e-6));
  CHECK_THROWS_AS(layer.delta(1.0, {5, 6}), apo::Error);
}

TEST_CASE("convolution LoRAs reshape to the kernel", "[lora]") {
  std::map<std::string, at::Tensor> tensors{
      {"patch_embedding.lora_down.weight", at::randn({2, 3, 2, 2})},
      {"patch_embedding.lora_up.weight", at::randn({8, 2, 1, 1})},
  };
  const auto adapter = LoraAdapter::from_tensors("conv", tensors);
  const std::vector<std::int64_t> kernel{8, 3, 2, 2};
  CHECK(adapter.layers()[0].delta(1.0, kernel).sizes().vec() == kernel);
}

TEST_CASE("files that are not LoRAs are refused with the key at fault", "[lora]") {
  auto code_of = [](const std::map<std::string, at::Tensor>& tensors) {
    try {
      LoraAdapter::from_tensors("bad.safetensors", tensors);
    } catch (const apo::Error& e) {
      return e.code();
    }
    return apo::ErrorCode::Internal;
  };
  using apo::ErrorCode;
  CHECK(code_of({}) == ErrorCode::Corrupt);
  CHECK(code_of({{"blocks.0.weight", at::ones({2, 2})}}) == ErrorCode::Corrupt);
  CHECK(code_of({{"a.lora_down.weight", at::ones({2, 4})}}) == ErrorCode::Corrupt);
  CHECK(code_of({{"a.lora_down.weight", at::ones({2, 4})},
                 {"a.lora_up.weight", at::ones({4, 3})}}) == ErrorCode::Corrupt);
  CHECK(code_of({{"a.lora_down.weight", at::ones({2, 4})},
                 {"a.lora_up.weight", at::ones({4, 2})},
                 {"a.alpha", at::ones({2})}}) == ErrorCode::Corrupt);
  CHECK(code_of({{"a.hada_w1_a", at::ones({2, 4})}}) == ErrorCode::Unsupported);
}

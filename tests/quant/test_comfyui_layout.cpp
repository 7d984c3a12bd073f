// comfyui_scaled_fp8: ComfyUI's own scaled-fp8 checkpoint layout (fp8 linear weights, a 0-d
// scale_weight beside each, the scaled_fp8 marker), what it keeps, and what it rejects.

#include <ATen/ATen.h>

#include "apo_catch.hpp"

#include <map>
#include <string>

#include "apo/core/error.hpp"
#include "apo/quant/state_dict.hpp"

namespace comfyui_layout_test {

namespace q = apo::quant;

// A miniature SD1.5 checkpoint: UNet (conv, linear attention and time embedding, norm), a text
// encoder linear and a VAE conv outside the diffusion model.
q::NamedTensors checkpoint() {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(13);
  auto w = [&](std::vector<std::int64_t> shape) { return at::randn(shape, gen) * 0.05; };
  return {
      {"model.diffusion_model.input_blocks.0.0.weight", w({32, 4, 3, 3})},
      {"model.diffusion_model.input_blocks.0.0.bias", w({32})},
      {"model.diffusion_model.time_embed.0.weight", w({128, 32})},
      {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
       w({32, 768}).to(at::kHalf)},
      {"model.diffusion_model.input_blocks.1.1.norm.weight", w({32})},
      {"model.diffusion_model.input_blocks.1.1.proj_in.weight", w({32, 32, 1, 1})},
      {"cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight", w({64, 32})},
      {"first_stage_model.decoder.conv_in.weight", w({8, 4, 3, 3})},
  };
}

std::map<std::string, at::Tensor> by_name(const q::NamedTensors& tensors) {
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, tensor] : tensors) out.emplace(name, tensor);
  return out;
}

}  // namespace comfyui_layout_test

using namespace comfyui_layout_test;

TEST_CASE(
    "comfyui layout: linear weights in fp8 with a 0-d scale_weight, the marker, the rest kept",
    "[quant][comfyui]") {
  const q::NamedTensors input = checkpoint();
  const q::ComfyUIExport out = q::comfyui_scaled_fp8(input, q::QFormat::fp8_e4m3);
  CHECK(out.prefix == "model.diffusion_model.");
  const auto t = by_name(out.tensors);
  const auto in = by_name(input);

  for (const std::string layer :
       {"model.diffusion_model.time_embed.0",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k"}) {
    INFO(layer);
    const at::Tensor data = t.at(layer + ".weight");
    const at::Tensor scale = t.at(layer + ".scale_weight");
    CHECK(data.scalar_type() == at::kFloat8_e4m3fn);
    CHECK(data.sizes() == in.at(layer + ".weight").sizes());
    CHECK(scale.dim() == 0);
    CHECK(scale.scalar_type() == at::kFloat);
    // ComfyUI's forward: weight.to(dtype) * scale_weight. It restores the source within fp8's
    // relative error (2^-4) of the tensor's largest value.
    const at::Tensor source = in.at(layer + ".weight").to(at::kFloat);
    const at::Tensor restored = data.to(at::kFloat) * scale;
    const double amax = source.abs().max().item<double>();
    CHECK((restored - source).abs().max().item<double>() <= amax / 16 + 1e-7);
    CHECK(scale.item<double>() == Approx(amax / 448.0).epsilon(1e-5));
  }
  // Not linear, or not the diffusion model's: exactly as they were.
  for (const std::string name :
       {"model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.0.0.bias",
        "model.diffusion_model.input_blocks.1.1.norm.weight",
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
        "first_stage_model.decoder.conv_in.weight"}) {
    INFO(name);
    CHECK(t.at(name).scalar_type() == in.at(name).scalar_type());
    CHECK(at::equal(t.at(name), in.at(name)));
  }
  const at::Tensor marker = t.at("model.diffusion_model.scaled_fp8");
  CHECK(marker.scalar_type() == at::kFloat8_e4m3fn);
  CHECK(marker.numel() == 2);
  // Inputs in order, each scale right after its weight, the marker last.
  CHECK(out.tensors.size() == input.size() + 3);
  CHECK(out.tensors.front().first == input.front().first);
  CHECK(out.tensors.back().first == "model.diffusion_model.scaled_fp8");
  CHECK(out.report.quantized_count == 2);
  CHECK(out.report.bytes_after < out.report.bytes_before);
}

TEST_CASE("comfyui layout: a diffusion-model-only file, E5M2, keep patterns", "[quant][comfyui]") {
  q::NamedTensors input;
  for (const auto& [name, tensor] : checkpoint()) {
    constexpr std::string_view prefix = "model.diffusion_model.";
    if (name.starts_with(prefix)) input.emplace_back(name.substr(prefix.size()), tensor);
  }
  const q::ComfyUIExport out = q::comfyui_scaled_fp8(input, q::QFormat::fp8_e5m2, {"time_embed"});
  CHECK(out.prefix.empty());
  const auto t = by_name(out.tensors);
  CHECK(t.at("scaled_fp8").scalar_type() == at::kFloat8_e5m2);
  CHECK(t.at("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight").scalar_type() ==
        at::kFloat8_e5m2);
  CHECK(t.at("time_embed.0.weight").scalar_type() == at::kFloat);
  CHECK(t.count("time_embed.0.scale_weight") == 0);
}

TEST_CASE("comfyui layout: rejects int8, a file already in the layout, and no linear weight",
          "[quant][comfyui]") {
  const q::NamedTensors input = checkpoint();
  CHECK_THROWS_WITH(q::comfyui_scaled_fp8(input, q::QFormat::int8),
                    Catch::Contains("fp8_e4m3 or fp8_e5m2 weights, not int8"));
  const q::ComfyUIExport once = q::comfyui_scaled_fp8(input);
  CHECK_THROWS_WITH(q::comfyui_scaled_fp8(once.tensors), Catch::Contains("already"));
  const q::NamedTensors convs = {{"model.diffusion_model.conv.weight", at::ones({4, 4, 3, 3})}};
  CHECK_THROWS_AS(q::comfyui_scaled_fp8(convs), apo::Error);
}

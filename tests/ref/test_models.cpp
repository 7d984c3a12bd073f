#include "apo_catch.hpp"

#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include "apo/core/error.hpp"
#include "apo/models/lora.hpp"
#include "apo/models/model.hpp"
#include "apo/models/safetensors.hpp"
#include "apo/quant/state_dict.hpp"
#include "apo/ref/image_io.hpp"
#include "apo/ref/judge.hpp"
#include "apo/ref/models.hpp"
#include "apo/ref/sampling.hpp"
#include "apo/ref/world.hpp"

namespace models_test {

namespace fs = std::filesystem;
using namespace apo::ref;

const fs::path kAssets = fs::path(APO_TEST_DATA_DIR) / ".." / ".." / "assets" / "reference";

/// A committed model file read as apo holds it: quantized to `spec` (every linear and
/// convolution weight the default keep patterns allow, however small), or as stored.
apo::models::Model load_model(std::string_view file, apo::quant::QuantSpec spec = {}) {
  apo::quant::QuantizationRules rules;
  rules.spec = spec;
  rules.min_elements = 0;
  rules.measure_error = false;
  const fs::path path = kAssets / file;
  return apo::models::Model(path.string(), apo::models::ModelKind::other, apo::Precision::fp32,
                            apo::models::read_model_weights(path, rules));
}

TextEncoding encode(const std::vector<std::string>& captions) {
  static const apo::models::Model model = load_model(files::text_encoder);
  const TextEncoderConfig config = read_text_encoder_config(kAssets / files::text_encoder);
  return encode_text(config, ModelWeights(model), tokenize(captions));
}

at::Tensor randn(at::IntArrayRef shape, std::uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen);
}

double relative_error(const at::Tensor& a, const at::Tensor& b) {
  return ((a - b).norm() / b.norm()).item<double>();
}

struct TempDir {
  fs::path path = fs::temp_directory_path() / fmt::format("apo_models_{}", std::random_device{}());
  TempDir() { fs::create_directories(path); }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

TEST_CASE("text encoder: token features, mask and pooled vector; empty captions work", "[models]") {
  at::NoGradGuard no_grad;
  const TextEncoderConfig config = read_text_encoder_config(kAssets / files::text_encoder);
  CHECK(config.vocab_size == static_cast<int>(vocabulary().size()));
  CHECK(config.max_tokens == kCaptionTokens);
  const TextEncoding text = encode({"a small red circle on the left, blue background", ""});
  CHECK(text.tokens.sizes() == at::IntArrayRef{2, kCaptionTokens + 1, config.width});
  CHECK(text.mask.sizes() == at::IntArrayRef{2, kCaptionTokens + 1});
  CHECK(text.pooled.sizes() == at::IntArrayRef{2, config.width});
  // The start token is always attended: the empty caption (CFG's unconditional input) has one
  // real token and finite features.
  CHECK(text.mask.select(1, 0).all().item<bool>());
  CHECK(text.mask[1].sum().item<std::int64_t>() == 1);
  CHECK(text.tokens.isfinite().all().item<bool>());
  CHECK(text.pooled.isfinite().all().item<bool>());
  CHECK_THROWS_AS(
      encode_text(config, TensorWeights(), at::zeros({1, kCaptionTokens + 1}, at::kLong)),
      apo::Error);
}

TEST_CASE("VAE: 64x64 RGBA to 4x16x16 latents and back, close to the input", "[models]") {
  at::NoGradGuard no_grad;
  const apo::models::Model model = load_model(files::vae);
  const VaeConfig config = read_vae_config(kAssets / files::vae);
  const ModelWeights weights(model);
  std::vector<at::Tensor> images;
  for (std::uint64_t seed = 0; seed < 4; ++seed) images.push_back(render_image(sample_scene(seed)));
  const at::Tensor batch = at::stack(images);
  const at::Tensor latents = vae_encode(config, weights, batch);
  CHECK(latents.sizes() == at::IntArrayRef{4, 4, 16, 16});
  // Scaled to about unit variance for the diffusion models.
  CHECK(latents.std().item<double>() > 0.5);
  CHECK(latents.std().item<double>() < 2.0);
  const at::Tensor decoded = vae_decode(config, weights, latents);
  CHECK(decoded.sizes() == batch.sizes());
  CHECK(decoded.min().item<double>() >= 0.0);
  CHECK(decoded.max().item<double>() <= 1.0);
  CHECK((decoded - batch).abs().mean().item<double>() < 0.05);
  // Clips go through frame by frame.
  const at::Tensor clip = render_clip(sample_scene(7, true)).unsqueeze(0);
  const at::Tensor clip_latents = vae_encode(config, weights, clip);
  CHECK(clip_latents.sizes() == at::IntArrayRef{1, 8, 4, 16, 16});
  CHECK(vae_decode(config, weights, clip_latents).sizes() == clip.sizes());
}

TEST_CASE("VAE: slicing and tiling decode the same pixels as the plain decode", "[models]") {
  at::NoGradGuard no_grad;
  const apo::models::Model model = load_model(files::vae);
  const VaeConfig config = read_vae_config(kAssets / files::vae);
  const ModelWeights weights(model);
  std::vector<at::Tensor> images;
  for (std::uint64_t seed = 10; seed < 13; ++seed)
    images.push_back(render_image(sample_scene(seed)));
  const at::Tensor latents = vae_encode(config, weights, at::stack(images));
  const at::Tensor plain = vae_decode(config, weights, latents);
  const at::Tensor sliced = vae_decode(config, weights, latents, {.slicing = true});
  CHECK((sliced - plain).abs().max().item<double>() < 1e-4);
  const at::Tensor tiled = vae_decode(config, weights, latents, {.tiling = true});
  const at::Tensor both = vae_decode(config, weights, latents, {.slicing = true, .tiling = true});
  CHECK((tiled - plain).abs().mean().item<double>() < 0.01);
  CHECK((tiled - plain).abs().max().item<double>() < 0.15);
  CHECK((both - tiled).abs().max().item<double>() < 1e-4);
  CHECK_THROWS_AS(
      vae_decode(config, weights, latents, {.tiling = true, .tile_latents = 4, .tile_overlap = 4}),
      apo::Error);
}

TEST_CASE("image and video DiT: velocity shaped like the latents; sliced attention = full",
          "[models]") {
  at::NoGradGuard no_grad;
  const TextEncoding text =
      encode({"a large blue star in the centre, yellow background, warm light",
              "a small green square on the right, gray background"});
  for (const auto file : {files::image_dit, files::video_dit}) {
    INFO(file);
    const apo::models::Model model = load_model(file);
    const DitConfig config = read_dit_config(kAssets / file);
    const ModelWeights weights(model);
    const at::Tensor x =
        config.frames > 0 ? randn({2, config.frames, 4, 16, 16}, 1) : randn({2, 4, 16, 16}, 1);
    const at::Tensor t = at::tensor({0.3f, 0.8f});
    const at::Tensor v = dit_forward(config, weights, x, t, text);
    CHECK(v.sizes() == x.sizes());
    CHECK(v.isfinite().all().item<bool>());
    CHECK(v.abs().mean().item<double>() > 0.1);  // trained: not the zero-initialised output
    const at::Tensor sliced =
        dit_forward(config, weights, x, t, text, {.slicing = true, .slice_size = 1});
    CHECK((sliced - v).abs().max().item<double>() < 1e-4);
    CHECK_THROWS_AS(dit_forward(config, weights, x.slice(1, 0, 2), t, text), apo::Error);
  }
}

TEST_CASE("DiTs over fp8 and int8 weights (ModelWeights, qlinear) stay close to bf16", "[models]") {
  at::NoGradGuard no_grad;
  const TextEncoding text = encode({"a medium pink triangle at the top, black background"});
  for (const auto file : {files::image_dit, files::video_dit}) {
    const DitConfig config = read_dit_config(kAssets / file);
    const apo::models::Model reference = load_model(file);
    const at::Tensor x =
        config.frames > 0 ? randn({1, config.frames, 4, 16, 16}, 2) : randn({1, 4, 16, 16}, 2);
    const at::Tensor t = at::tensor({0.5f});
    const at::Tensor expected = dit_forward(config, ModelWeights(reference), x, t, text);
    for (const auto format : {apo::quant::QFormat::fp8_e4m3, apo::quant::QFormat::int8}) {
      INFO(file << " " << apo::quant::to_string(format));
      const apo::models::Model model = load_model(file, {format, apo::quant::Scaling::per_row});
      CHECK(model.weight("blocks.0.mlp.fc1.weight").format() == format);
      const at::Tensor v = dit_forward(config, ModelWeights(model), x, t, text);
      CHECK(relative_error(v, expected) < 0.1);
    }
  }
}

TEST_CASE("lightning LoRAs bind every layer to the DiT's weights; unmerged = merged", "[models]") {
  at::NoGradGuard no_grad;
  const std::vector<std::pair<std::string_view, std::string_view>> pairs{
      {files::image_lightning, files::image_dit}, {files::video_lightning, files::video_dit}};
  for (const auto& [lora_file, dit_file] : pairs) {
    INFO(lora_file);
    const auto adapter = apo::models::LoraAdapter::load(kAssets / lora_file);
    const apo::models::Model model = load_model(dit_file);
    const DitConfig config = read_dit_config(kAssets / dit_file);
    std::vector<std::string> names;
    for (const auto& w : model.weights()) names.push_back(w.name());
    const auto binding = adapter.bind(names);
    CHECK(binding.unmatched.empty());
    CHECK(binding.targets.size() == dit_lora_modules(config).size());
    CHECK(read_config_json(kAssets / lora_file, "lora").find("\"steps\":4") != std::string::npos);

    // The same layers applied unmerged (LoraWeights) and merged into the weights.
    std::map<std::string, at::Tensor> merged;
    for (const auto& w : model.weights()) merged[w.name()] = w.dequantize(at::kFloat);
    std::map<std::string, LoraFactors> layers;
    for (const auto& target : binding.targets) {
      auto& weight = merged[target.weight];
      weight = weight + target.layer->delta(1.0, weight.sizes());
      layers[target.weight.substr(0, target.weight.size() - 7)] = {
          target.layer->down.to(at::kFloat), target.layer->up.to(at::kFloat),
          target.layer->alpha.value_or(static_cast<double>(target.layer->rank()))};
    }
    const TextEncoding text = encode({"a small white cross at the bottom left, red background"});
    const at::Tensor x =
        config.frames > 0 ? randn({1, config.frames, 4, 16, 16}, 3) : randn({1, 4, 16, 16}, 3);
    const at::Tensor t = at::tensor({0.7f});
    const ModelWeights base(model);
    const at::Tensor unmerged = dit_forward(config, LoraWeights(base, layers), x, t, text);
    const at::Tensor with_merged = dit_forward(config, TensorWeights(merged), x, t, text);
    CHECK(relative_error(unmerged, with_merged) < 1e-4);
    CHECK(relative_error(dit_forward(config, base, x, t, text), with_merged) > 1e-3);
  }
}

TEST_CASE("model files without a valid configuration are Corrupt, naming the file", "[models]") {
  TempDir dir;
  const std::vector<apo::models::NamedTensor> tensors{{"x.weight", at::zeros({2, 2})}};
  const auto expect_corrupt = [&](const fs::path& path, auto read) {
    try {
      read(path);
      FAIL("no error for " << path);
    } catch (const apo::Error& e) {
      CHECK(e.code() == apo::ErrorCode::Corrupt);
      CHECK_THAT(std::string(e.what()), Catch::Contains(path.filename().string()));
    }
  };
  const fs::path none = dir.path / "no_metadata.safetensors";
  apo::models::save_safetensors(none, tensors);
  expect_corrupt(none, [](const fs::path& p) { return read_dit_config(p); });
  expect_corrupt(none, [](const fs::path& p) { return read_vae_config(p); });

  const fs::path bad_json = dir.path / "bad_json.safetensors";
  apo::models::save_safetensors(
      bad_json, tensors,
      {{std::string(kKindMetadataKey), "vae"}, {std::string(kConfigMetadataKey), "{not json"}});
  expect_corrupt(bad_json, [](const fs::path& p) { return read_vae_config(p); });

  const fs::path missing_field = dir.path / "missing_field.safetensors";
  apo::models::save_safetensors(missing_field, tensors,
                                {{std::string(kKindMetadataKey), "image_dit"},
                                 {std::string(kConfigMetadataKey), R"({"latent_channels": 4})"}});
  expect_corrupt(missing_field, [](const fs::path& p) { return read_dit_config(p); });

  const fs::path wrong_kind = dir.path / "wrong_kind.safetensors";
  apo::models::save_safetensors(
      wrong_kind, tensors,
      {{std::string(kKindMetadataKey), "vae"},
       {std::string(kConfigMetadataKey), to_json(TextEncoderConfig{10, 4})}});
  expect_corrupt(wrong_kind, [](const fs::path& p) { return read_text_encoder_config(p); });

  const fs::path out_of_range = dir.path / "out_of_range.safetensors";
  DitConfig bad;
  bad.patch = 3;  // does not divide the latent size
  apo::models::save_safetensors(out_of_range, tensors,
                                {{std::string(kKindMetadataKey), "image_dit"},
                                 {std::string(kConfigMetadataKey), to_json(bad)}});
  expect_corrupt(out_of_range, [](const fs::path& p) { return read_dit_config(p); });

  CHECK_THROWS_AS(read_dit_config(dir.path / "absent.safetensors"), apo::Error);
}

TEST_CASE("configurations survive JSON", "[models]") {
  DitConfig video;
  video.frames = 8;
  video.patch = 4;
  const DitConfig back = dit_config_from_json(to_json(video), "test");
  CHECK(back.frames == 8);
  CHECK(back.patch == 4);
  CHECK(back.tokens_per_frame() == 16);
  VaeConfig vae;
  vae.scale_factor = 0.75;
  CHECK(vae_config_from_json(to_json(vae), "test").scale_factor == Approx(0.75));
  CHECK(vae_config_from_json(to_json(vae), "test").widths == vae.widths);
}

/// Weights of a DiT with a lightning LoRA merged in (as the model cache merges it).
std::map<std::string, at::Tensor> with_lora(const apo::models::Model& model,
                                            std::string_view lora) {
  std::map<std::string, at::Tensor> merged;
  std::vector<std::string> names;
  for (const auto& w : model.weights()) {
    merged[w.name()] = w.dequantize(at::kFloat);
    names.push_back(w.name());
  }
  const auto adapter = apo::models::LoraAdapter::load(kAssets / lora);
  for (const auto& target : adapter.bind(names).targets) {
    auto& weight = merged[target.weight];
    weight = weight + target.layer->delta(1.0, weight.sizes());
  }
  return merged;
}

/// Latents sampled by flow Euler over the linear schedule, with CFG when guidance > 1.
at::Tensor generate(const DitConfig& config, const Weights& dit, const std::string& caption_text,
                    std::uint64_t seed, int steps, double guidance) {
  const at::Tensor noise =
      config.frames > 0 ? randn({1, config.frames, 4, 16, 16}, seed) : randn({1, 4, 16, 16}, seed);
  const TextEncoding text = encode({caption_text, ""});
  const TextEncoding cond{text.tokens.slice(0, 0, 1), text.mask.slice(0, 0, 1),
                          text.pooled.slice(0, 0, 1)};
  const std::vector<double> schedule = sigmas({.steps = steps});
  const VelocityModel velocity = [&](const at::Tensor& xt, double t) {
    if (guidance == 1.0) return dit_forward(config, dit, xt, at::full({1}, t), cond);
    const at::Tensor v = dit_forward(config, dit, at::cat({xt, xt}), at::full({2}, t), text);
    return v.slice(0, 1) + guidance * (v.slice(0, 0, 1) - v.slice(0, 1));
  };
  return sample(flow_denoiser(velocity), noise * schedule[0], schedule);
}

// The quality figures of the committed models (minutes on 2 cores): run by hand with
// `apo_ref_tests "[.quality]"`; samples go to $TMPDIR/ref_samples.
TEST_CASE("quality of the committed reference models", "[.quality]") {
  at::NoGradGuard no_grad;
  const fs::path out = fs::temp_directory_path() / "ref_samples";
  fs::create_directories(out);
  const VaeConfig vae_config = read_vae_config(kAssets / files::vae);
  const apo::models::Model vae = load_model(files::vae);
  const ModelWeights vae_weights(vae);
  const apo::quant::QuantSpec fp8{apo::quant::QFormat::fp8_e4m3, apo::quant::Scaling::per_row};
  const apo::quant::QuantSpec int8{apo::quant::QFormat::int8, apo::quant::Scaling::per_row};
  struct Kind {
    std::string_view dit, lora;
    int count;
  };
  for (const Kind kind : {Kind{files::image_dit, files::image_lightning, 32},
                          Kind{files::video_dit, files::video_lightning, 16}}) {
    const DitConfig config = read_dit_config(kAssets / kind.dit);
    const bool video = config.frames > 0;
    const apo::models::Model full = load_model(kind.dit);
    const apo::models::Model as_fp8 = load_model(kind.dit, fp8);
    const apo::models::Model as_int8 = load_model(kind.dit, int8);
    const TensorWeights lightning(with_lora(full, kind.lora));
    std::map<std::string, double> sums;
    for (int i = 0; i < kind.count; ++i) {
      const Scene scene = sample_scene(900000 + i, video);
      const std::string text = caption(scene);
      const auto run = [&](const Weights& weights, int steps, double guidance) {
        return vae_decode(vae_config, vae_weights,
                          generate(config, weights, text, i, steps, guidance))[0];
      };
      const auto judge = [&](const at::Tensor& x) {
        return video ? judge_clip(x, text).score : judge_image(x, text).score;
      };
      const at::Tensor reference = run(ModelWeights(full), 30, 4.5);
      const at::Tensor light = run(lightning, 4, 1.0);
      const at::Tensor f8 = run(ModelWeights(as_fp8), 30, 4.5);
      const at::Tensor i8 = run(ModelWeights(as_int8), 30, 4.5);
      sums["full"] += judge(reference);
      sums["lightning"] += judge(light);
      sums["fp8"] += judge(f8);
      sums["int8"] += judge(i8);
      sums["fp8 ssim"] += ssim(f8, reference);
      sums["int8 ssim"] += ssim(i8, reference);
      if (i < 8) {
        const std::string stem = fmt::format("{}_{:02d}", video ? "clip" : "image", i);
        if (video) {
          write_gif(out / (stem + "_full.gif"), reference, 120, 2);
          write_gif(out / (stem + "_lightning.gif"), light, 120, 2);
        } else {
          write_png(out / (stem + "_full.png"), reference);
          write_png(out / (stem + "_lightning.png"), light);
        }
      }
    }
    for (const auto& [name, sum] : sums) {
      std::printf("%s %s: %.3f\n", video ? "video" : "image", name.c_str(), sum / kind.count);
    }
  }
}

}  // namespace models_test

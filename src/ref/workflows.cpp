// The guide's eight workflows on the reference models. One pipeline (text encoding, guided
// sampling, decoding) serves them all; each workflow says which model it samples, what it starts
// from (noise, an input image noised to its strength, a first frame) and what it does with the
// result (alpha, compositing, blending), and honours its block of the configuration.

#include "apo/ref/workflows.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <utility>

#include "apo/core/error.hpp"
#include "apo/models/model.hpp"
#include "apo/ref/judge.hpp"
#include "apo/ref/models.hpp"
#include "apo/ref/sampling.hpp"
#include "apo/ref/world.hpp"

namespace apo::ref {

namespace {

using engine::Context;
using engine::ModelNeed;
using engine::Outputs;
using engine::Stage;

// Images and clips from the world are RGBA: a 3-channel input gets the alpha the world would
// give it, 1 where the colour differs clearly from the border's (the background).
at::Tensor as_rgba(const at::Tensor& image) {
  at::Tensor rgb = image.to(at::kFloat).cpu();
  if (rgb.size(0) == 4) return rgb;
  if (rgb.size(0) == 1) rgb = rgb.expand({3, rgb.size(1), rgb.size(2)});
  const at::Tensor border =
      at::cat({rgb.select(1, 0), rgb.select(1, -1), rgb.select(2, 0), rgb.select(2, -1)}, 1);
  const at::Tensor background = std::get<0>(border.median(1)).view({3, 1, 1});
  const at::Tensor alpha = ((rgb - background).abs().sum(0, true) > 0.15).to(at::kFloat);
  return at::cat({rgb, alpha}, 0);
}

at::Generator generator_for(std::uint64_t seed) {
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

// Noise of each request from its own seed (the salt keeps streams of one seed apart), so that
// a request's picture does not depend on the batch it ran in.
at::Tensor request_noise(std::span<const apo::Request> batch, at::IntArrayRef item_shape,
                         std::uint64_t salt) {
  std::vector<at::Tensor> items;
  items.reserve(batch.size());
  for (const apo::Request& request : batch) {
    items.push_back(at::randn(item_shape,
                              generator_for(request.seed * 0x9E3779B97F4A7C15ULL + salt),
                              at::TensorOptions().dtype(at::kFloat)));
  }
  return at::stack(items);
}

TextEncoding concat(const TextEncoding& a, const TextEncoding& b) {
  return {at::cat({a.tokens, b.tokens}), at::cat({a.mask, b.mask}), at::cat({a.pooled, b.pooled})};
}

// Blurs [N, C, H, W] with a box of side 2r+1 (edge-replicated): low frequencies for relighting.
at::Tensor box_blur(const at::Tensor& x, int radius) {
  const int side = 2 * radius + 1;
  const at::Tensor padded = at::replication_pad2d(x, {radius, radius, radius, radius});
  return at::avg_pool2d(padded, {side, side}, {1, 1});
}

// The sampling one batch runs with (its requests share it: it is part of the grouping key).
struct SamplingPlan {
  int steps = 30;
  double guidance = 7.5;
  Sampler sampler = Sampler::euler;
  NoiseSchedule schedule = NoiseSchedule::linear;
  double cfg_rescale = 0.0;
  bool vae_slicing = false;
};

// What a generation starts from and how it is steered besides the text.
struct Start {
  at::Tensor latents;      ///< x0 of img2img (scaled latents); undefined: pure noise
  double strength = 1.0;   ///< how much of the schedule runs
  at::Tensor keep_mask;    ///< latent-resolution [B, 1, h, w], 1 where `latents` are kept
  double structure = 0.0;  ///< pull of the x0 estimate towards `latents` where kept (dual guidance)
  bool first_frame = false;  ///< video: frame 0 of `latents` is kept through sampling
};

/// Files, configurations and the choices every workflow shares.
struct Shared {
  ReferenceWorkflowOptions options;
  TextEncoderConfig text;
  VaeConfig vae;
  DitConfig image_dit;
  DitConfig video_dit;

  std::filesystem::path file(std::string_view name) const { return options.models_dir / name; }
};

/// One reference workflow: the pipeline, with hooks for what differs.
class ReferenceWorkflow : public engine::Workflow {
 public:
  ReferenceWorkflow(std::shared_ptr<const Shared> shared, std::string name, bool video)
      : shared_(std::move(shared)), name_(std::move(name)), video_(video) {}

  std::string name() const override { return name_; }

  std::vector<ModelNeed> models(const apo::Request& /*request*/) const override {
    // The text encoder and the VAE are small and sensitive: they stay as stored (bf16); the
    // diffusion model follows the configured precision and takes the request's LoRAs.
    std::vector<ModelNeed> needs;
    needs.push_back({"text_encoder",
                     {shared_->file(files::text_encoder), models::ModelKind::text_encoder,
                      Precision::bf16, name_},
                     false});
    needs.push_back({"vae",
                     {shared_->file(files::vae), models::ModelKind::vae, Precision::bf16, name_},
                     false});
    needs.push_back({"dit",
                     {shared_->file(video_ ? files::video_dit : files::image_dit),
                      models::ModelKind::diffusion, std::nullopt, name_},
                     true});
    return needs;
  }

  std::int64_t memory_estimate(const apo::Request& request) const override {
    // Activations of one request: the DiT's widest tensors (the MLP's 4x width, attention
    // scores) per token for both halves of classifier-free guidance, plus the decoder's
    // full-resolution feature maps, in float32.
    const DitConfig& dit = video_ ? shared_->video_dit : shared_->image_dit;
    const std::int64_t frames = video_ ? dit.frames : 1;
    const std::int64_t tokens = dit.tokens_per_frame() * frames;
    const std::int64_t halves = request.guidance.value_or(2.0) > 1.0 ? 2 : 1;
    const std::int64_t dit_bytes =
        halves * tokens * (dit.width * (4 + 2 * dit.mlp_ratio) + dit.heads * tokens) * 4;
    const std::int64_t side = static_cast<std::int64_t>(dit.latent_size) * kVaeDownsampling;
    const std::int64_t widest =
        *std::max_element(shared_->vae.widths.begin(), shared_->vae.widths.end());
    const std::int64_t decode_bytes = frames * side * side * widest * 3 * 4;
    return (dit_bytes + decode_bytes) * layers(request);
  }

  void resolve(apo::Request& request, const GenerationSettings& level) const override {
    const bool lightning = uses_lightning(level);
    if (lightning && !request.steps) {
      const std::filesystem::path lora =
          shared_->file(video_ ? files::video_lightning : files::image_lightning);
      const bool present = std::any_of(request.loras.begin(), request.loras.end(),
                                       [&](const auto& l) { return l.path == lora; });
      if (!present) request.loras.push_back({lora, 1.0});
      request.steps = lightning_steps();
      if (!request.guidance) request.guidance = lightning_guidance();
      if (!request.sampler) request.sampler = Sampler::euler;
    }
    resolve_block(request);
    engine::fill_sampling(request, level);
  }

  void check(const apo::Request& request) const override {
    const DitConfig& dit = video_ ? shared_->video_dit : shared_->image_dit;
    const int side = dit.latent_size * kVaeDownsampling;
    if (request.width != side || request.height != side) {
      throw Error(ErrorCode::InvalidArgument,
                  fmt::format("{} makes {}x{} pictures, not {}x{}", name_, side, side,
                              request.width, request.height),
                  "request");
    }
    const int frames = video_ ? dit.frames : 1;
    if (request.frames != frames) {
      throw Error(ErrorCode::InvalidArgument,
                  fmt::format("{} makes {} frame(s), not {}", name_, frames, request.frames),
                  "request");
    }
    // The prompt must be a caption of the world (the text encoder knows only its words).
    (void)parse_caption(request.prompt);
    if (!request.negative_prompt.empty()) (void)caption_tokens(request.negative_prompt);
    check_inputs(request, side);
  }

  std::vector<Outputs> run(std::span<const apo::Request> batch, Context& context) override {
    c10::InferenceMode inference;
    return generate(batch, context);
  }

 protected:
  virtual bool uses_lightning(const GenerationSettings& level) const {
    return level.enable_lightning_lora;
  }
  virtual int lightning_steps() const { return 4; }
  virtual double lightning_guidance() const { return 1.0; }
  /// Fills the request's unset sampling from the workflow's block.
  virtual void resolve_block(apo::Request& /*request*/) const {}
  /// Workflow-specific checks of the inputs (their presence and size).
  virtual void check_inputs(const apo::Request& /*request*/, int /*side*/) const {}
  /// Layers generated per request (qwen_layered: more than one).
  virtual std::int64_t layers(const apo::Request& /*request*/) const { return 1; }
  /// The batch's outputs.
  virtual std::vector<Outputs> generate(std::span<const apo::Request> batch, Context& context) = 0;
  /// The sampling plan of a batch from its first request, plus the workflow's extras.
  virtual SamplingPlan plan(const apo::Request& request) const {
    SamplingPlan p;
    p.steps = request.steps.value_or(30);
    p.guidance = request.guidance.value_or(7.5);
    p.sampler = request.sampler.value_or(Sampler::euler);
    return p;
  }

  static void require_image(const apo::Request& request, const at::Tensor& image,
                            std::string_view what, int side) {
    if (!image.defined()) {
      throw Error(ErrorCode::InvalidArgument,
                  fmt::format("{} needs an input {}", request.workflow, what), "request");
    }
    if (image.dim() != 3 || image.size(1) != side || image.size(2) != side) {
      throw Error(ErrorCode::InvalidArgument,
                  fmt::format("{} needs a {}x{} {}, got shape {}", request.workflow, side, side,
                              what, fmt::join(image.sizes(), "x")),
                  "request");
    }
  }

  /// Encodes prompts (and negative prompts for guidance) of `captions`/`negatives`.
  TextEncoding encode(Context& context, const std::vector<std::string>& captions,
                      const std::vector<std::string>& negatives, bool guided) const {
    const ModelWeights weights(context.model("text_encoder"));
    const AttentionOptions attention = attention_options(context);
    TextEncoding cond = encode_text(shared_->text, weights, tokenize(captions), attention);
    if (!guided) return cond;
    return concat(cond, encode_text(shared_->text, weights, tokenize(negatives), attention));
  }

  AttentionOptions attention_options(const Context& context) const {
    return {context.attention_slicing(), context.slice_size()};
  }

  at::Tensor encode_images(Context& context, const at::Tensor& images) const {
    const ModelWeights weights(context.model("vae"));
    return vae_encode(shared_->vae, weights, images);
  }

  at::Tensor decode(Context& context, const at::Tensor& latents, const SamplingPlan& plan) const {
    auto timer = context.stage(Stage::decode);
    const ModelWeights weights(context.model("vae"));
    VaeDecodeOptions options;
    options.slicing = plan.vae_slicing;
    return vae_decode(shared_->vae, weights, latents, options);
  }

  /// Samples latents for `captions` (one per batch item) from noise or from `start`.
  at::Tensor sample_latents(Context& context, std::span<const apo::Request> requests,
                            const std::vector<std::string>& captions,
                            const std::vector<std::string>& negatives, const SamplingPlan& plan,
                            const Start& start, std::uint64_t salt) const {
    const bool guided = plan.guidance != 1.0;
    TextEncoding text;
    {
      auto timer = context.stage(Stage::encode);
      text = encode(context, captions, negatives, guided);
    }
    auto timer = context.stage(Stage::denoise);
    const DitConfig& dit = video_ ? shared_->video_dit : shared_->image_dit;
    std::vector<std::int64_t> item{dit.latent_channels, dit.latent_size, dit.latent_size};
    if (video_) item.insert(item.begin(), dit.frames);
    const at::Tensor noise = request_noise(requests, item, salt);

    const ModelWeights weights(context.model("dit"));
    const AttentionOptions attention = attention_options(context);
    const Denoiser both = flow_denoiser([&](const at::Tensor& x_t, double t) {
      const at::Tensor times = at::full({x_t.size(0)}, t, x_t.options());
      return dit_forward(dit, weights, x_t, times, text, attention);
    });
    Denoiser denoiser = [&](const at::Tensor& x, double sigma) {
      at::Tensor x0;
      if (guided) {
        const auto halves = both(at::cat({x, x}), sigma).chunk(2);
        x0 = guided_x0(halves[0], halves[1], plan);
      } else {
        x0 = both(x, sigma);
      }
      if (start.structure > 0.0 && start.keep_mask.defined()) {
        x0 = x0 + start.structure * start.keep_mask * (start.latents - x0);
      }
      return x0;
    };

    ScheduleOptions schedule;
    schedule.steps = plan.steps;
    schedule.schedule = plan.schedule;
    std::vector<double> sigmas = ref::sigmas(schedule);
    if (start.latents.defined() && !start.first_frame) {
      sigmas = sigmas_for_strength(sigmas, start.strength);
    }
    at::Tensor x = noise * sigmas.front();
    if (start.latents.defined() && !start.first_frame) x = x + start.latents;

    SamplerOptions options;
    options.sampler = plan.sampler;
    for (const apo::Request& r : requests) {
      options.item_generators.push_back(
          generator_for(r.seed * 0x9E3779B97F4A7C15ULL + salt + 1000));
    }
    const int steps = static_cast<int>(sigmas.size()) - 1;
    options.on_step = [&context](int step, int total) { context.step(step, total); };
    if (start.first_frame) {
      // Frame 0 follows the given frame noised to each σ; the others attend to it.
      options.after_step = [&](const at::Tensor& value, double sigma) {
        at::Tensor out = value.clone();
        out.select(1, 0).copy_(start.latents.select(1, 0) + sigma * noise.select(1, 0));
        return out;
      };
      x.select(1, 0).copy_(start.latents.select(1, 0) + sigmas.front() * noise.select(1, 0));
    } else if (start.keep_mask.defined()) {
      // Inpainting: outside the mask the input, noised to σ, is put back after each step.
      options.after_step = [&](const at::Tensor& value, double sigma) {
        return start.keep_mask * (start.latents + sigma * noise) + (1.0 - start.keep_mask) * value;
      };
    }
    if (steps == 0) return start.latents;
    return sample(denoiser, x, sigmas, options);
  }

  static at::Tensor guided_x0(const at::Tensor& conditional, const at::Tensor& unconditional,
                              const SamplingPlan& plan) {
    return guided(conditional, unconditional, plan.guidance, plan.cfg_rescale);
  }

  void judge(Context& context, std::size_t index, const at::Tensor& output,
             const std::string& caption) const {
    if (!shared_->options.judge_outputs) return;
    const JudgeReport report = video_ ? judge_clip(output, caption) : judge_image(output, caption);
    context.set_quality(index, report.score);
  }

  /// One output per request: its picture from `pictures` ([B, C, H, W] or clips [B, T, C, H, W])
  /// with its first `channels` channels, judged against its prompt.
  std::vector<Outputs> outputs_of(Context& context, std::span<const apo::Request> batch,
                                  const at::Tensor& pictures, std::int64_t channels,
                                  const std::string& name = "image") const {
    std::vector<Outputs> outputs(batch.size());
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const at::Tensor picture =
          pictures[static_cast<std::int64_t>(i)].narrow(-3, 0, channels).contiguous();
      judge(context, i, picture, batch[i].prompt);
      outputs[i][name] = picture;
    }
    return outputs;
  }

  /// The batch's input images, RGBA: [B, 4, H, W].
  static at::Tensor input_images(std::span<const apo::Request> batch) {
    std::vector<at::Tensor> images;
    for (const apo::Request& r : batch) images.push_back(as_rgba(r.image));
    return at::stack(images);
  }

  static std::vector<std::string> prompts(std::span<const apo::Request> batch) {
    std::vector<std::string> out;
    for (const apo::Request& r : batch) out.push_back(r.prompt);
    return out;
  }
  static std::vector<std::string> negatives(std::span<const apo::Request> batch) {
    std::vector<std::string> out;
    for (const apo::Request& r : batch) out.push_back(r.negative_prompt);
    return out;
  }

  std::shared_ptr<const Shared> shared_;
  std::string name_;
  bool video_;
};

// ---------------------------------------------------------------------------------------------
// hunyuan_t2v, hunyuan_i2v: the video model

class HunyuanWorkflow final : public ReferenceWorkflow {
 public:
  HunyuanWorkflow(std::shared_ptr<const Shared> shared, bool from_image)
      : ReferenceWorkflow(std::move(shared), from_image ? "hunyuan_i2v" : "hunyuan_t2v", true),
        from_image_(from_image) {}

 protected:
  const HunyuanOptimization& block() const { return shared_->options.config.hunyuan; }

  void resolve_block(apo::Request& request) const override {
    if (!request.steps && block().num_inference_steps) request.steps = block().num_inference_steps;
    if (!request.guidance && block().guidance_scale) request.guidance = block().guidance_scale;
    if (!request.sampler) {
      if (block().scheduler) {
        request.sampler = block().scheduler;
      } else if (block().enable_fast_sampling) {
        request.sampler = Sampler::euler_ancestral;
      }
    }
  }

  void check_inputs(const apo::Request& request, int side) const override {
    if (from_image_) require_image(request, request.first_frame, "first_frame", side);
  }

  SamplingPlan plan(const apo::Request& request) const override {
    SamplingPlan p = ReferenceWorkflow::plan(request);
    if (block().enable_cfg_rescale) p.cfg_rescale = block().cfg_rescale_multiplier;
    p.vae_slicing = true;  // a clip decodes frame by frame
    return p;
  }

  std::vector<Outputs> generate(std::span<const apo::Request> batch, Context& context) override {
    const SamplingPlan p = plan(batch.front());
    Start start;
    if (from_image_) {
      auto timer = context.stage(Stage::encode);
      std::vector<at::Tensor> frames;
      for (const apo::Request& r : batch) frames.push_back(as_rgba(r.first_frame));
      start.latents = encode_images(context, at::stack(frames)).unsqueeze(1);  // [B, 1, C, h, w]
      start.first_frame = true;
    }
    at::Tensor latents =
        sample_latents(context, batch, prompts(batch), negatives(batch), p, start, /*salt=*/1);
    if (block().enable_temporal_consistency) latents = temporally_consistent(latents);
    const at::Tensor clips = decode(context, latents, p);
    if (from_image_) {
      // The clip starts from exactly the frame given.
      for (std::size_t i = 0; i < batch.size(); ++i) {
        clips[static_cast<std::int64_t>(i)][0].copy_(as_rgba(batch[i].first_frame));
      }
    }
    return outputs_of(context, batch, clips, 3, "video");
  }

  // The guide's temporal consistency: what stays fixed in a scene (the background) should not
  // flicker. Each frame's latent is pulled towards the clip's mean by where the clip moves
  // least (a per-location weight from the temporal variance), which removes flicker without
  // damping the motion.
  static at::Tensor temporally_consistent(const at::Tensor& latents) {
    const at::Tensor mean = latents.mean(1, true);
    const at::Tensor variance =
        latents.var(1, /*unbiased=*/false, /*keepdim=*/true).mean(2, true);  // [B, 1, 1, h, w]
    const at::Tensor still = at::exp(-variance / (variance.mean({3, 4}, true) + 1e-6));
    return latents + 0.5 * still * (mean - latents);
  }

 private:
  bool from_image_;
};

// ---------------------------------------------------------------------------------------------
// wan_inpaint, wan_alpha

class WanWorkflow : public ReferenceWorkflow {
 public:
  using ReferenceWorkflow::ReferenceWorkflow;

 protected:
  const WanOptimization& block() const { return shared_->options.config.wan; }
  bool uses_lightning(const GenerationSettings& level) const override {
    return block().use_lightning_lora || level.enable_lightning_lora;
  }
  int lightning_steps() const override { return block().lightning_steps; }
  double lightning_guidance() const override { return block().lightning_guidance_scale; }
  SamplingPlan plan(const apo::Request& request) const override {
    SamplingPlan p = ReferenceWorkflow::plan(request);
    if (block().enable_noise_scheduling) p.schedule = block().noise_schedule;
    return p;
  }
};

class WanInpaint final : public WanWorkflow {
 public:
  explicit WanInpaint(std::shared_ptr<const Shared> shared)
      : WanWorkflow(std::move(shared), "wan_inpaint", false) {}

 protected:
  void check_inputs(const apo::Request& request, int side) const override {
    require_image(request, request.image, "image", side);
    const at::Tensor& mask = request.mask;
    if (!mask.defined() || mask.size(-1) != side || mask.size(-2) != side ||
        (mask.dim() == 3 && mask.size(0) != 1)) {
      throw Error(ErrorCode::InvalidArgument,
                  fmt::format("wan_inpaint needs a {}x{} mask (1 where it repaints)", side, side),
                  "request");
    }
  }

  std::vector<Outputs> generate(std::span<const apo::Request> batch, Context& context) override {
    const SamplingPlan p = plan(batch.front());
    std::vector<at::Tensor> masks;
    for (const apo::Request& r : batch) {
      masks.push_back(r.mask.to(at::kFloat).cpu().view({1, r.height, r.width}).clamp(0, 1));
    }
    const at::Tensor image = input_images(batch);
    const at::Tensor mask = at::stack(masks);  // [B, 1, H, W], 1 = repaint
    Start start;
    {
      auto timer = context.stage(Stage::encode);
      start.latents = encode_images(context, image);
    }
    // A latent is repainted where any of its pixels is; the rest is kept.
    start.keep_mask = 1.0 - at::max_pool2d(mask, {kVaeDownsampling, kVaeDownsampling});
    // The request's strength where it asks for less than all; else the configured one.
    start.strength =
        batch.front().strength < 1.0 ? batch.front().strength : block().inpaint_strength;
    // Dual guidance: the text steers inside the mask, the input image (by this strength) outside.
    start.structure = block().dual_guidance_strength;
    const at::Tensor latents =
        sample_latents(context, batch, prompts(batch), negatives(batch), p, start, 2);
    at::Tensor out = decode(context, latents, p);
    if (block().enable_edge_enhancement) {
      // Unsharp masking of the repainted region restores the edges the decoder softens.
      const at::Tensor blurred = box_blur(out, 1);
      out = (out + 0.6 * mask * (out - blurred)).clamp(0, 1);
    }
    if (block().preserve_structure) {
      // Outside a feathered mask the picture is exactly the input.
      const at::Tensor feather = box_blur(mask, 2).clamp(0, 1);
      out = feather * out + (1.0 - feather) * image;
    }
    return outputs_of(context, batch, out, 3);
  }
};

class WanAlpha final : public WanWorkflow {
 public:
  explicit WanAlpha(std::shared_ptr<const Shared> shared)
      : WanWorkflow(std::move(shared), "wan_alpha", false) {}

 protected:
  std::vector<Outputs> generate(std::span<const apo::Request> batch, Context& context) override {
    const SamplingPlan p = plan(batch.front());
    const at::Tensor latents =
        sample_latents(context, batch, prompts(batch), negatives(batch), p, Start{}, 3);
    // Straight alpha: the shapes opaque, the background clear.
    return outputs_of(context, batch, decode(context, latents, p), 4);
  }
};

// ---------------------------------------------------------------------------------------------
// newbie_anime

class NewBieAnime final : public ReferenceWorkflow {
 public:
  explicit NewBieAnime(std::shared_ptr<const Shared> shared)
      : ReferenceWorkflow(std::move(shared), "newbie_anime", false) {}

 protected:
  const NewBieOptimization& block() const { return shared_->options.config.newbie; }
  void resolve_block(apo::Request& request) const override {
    if (!request.steps && block().num_inference_steps) request.steps = block().num_inference_steps;
    if (!request.guidance && block().guidance_scale) request.guidance = block().guidance_scale;
    if (!request.sampler && block().scheduler) request.sampler = block().scheduler;
  }
  SamplingPlan plan(const apo::Request& request) const override {
    SamplingPlan p = ReferenceWorkflow::plan(request);
    if (block().enable_karras_sigmas) p.schedule = NoiseSchedule::karras;
    p.vae_slicing = block().enable_vae_slicing;
    return p;
  }
  std::vector<Outputs> generate(std::span<const apo::Request> batch, Context& context) override {
    const SamplingPlan p = plan(batch.front());
    const at::Tensor latents =
        sample_latents(context, batch, prompts(batch), negatives(batch), p, Start{}, 4);
    return outputs_of(context, batch, decode(context, latents, p), 3);
  }
};

// ---------------------------------------------------------------------------------------------
// qwen_edit, qwen_relight, qwen_layered

class QwenWorkflow : public ReferenceWorkflow {
 public:
  using ReferenceWorkflow::ReferenceWorkflow;

 protected:
  const QwenOptimization& block() const { return shared_->options.config.qwen; }
  bool uses_lightning(const GenerationSettings& level) const override {
    return block().use_lightning_lora || level.enable_lightning_lora;
  }
  int lightning_steps() const override { return block().lightning_steps; }
};

class QwenEdit final : public QwenWorkflow {
 public:
  explicit QwenEdit(std::shared_ptr<const Shared> shared)
      : QwenWorkflow(std::move(shared), "qwen_edit", false) {}

 protected:
  void check_inputs(const apo::Request& request, int side) const override {
    require_image(request, request.image, "image", side);
  }
  std::vector<Outputs> generate(std::span<const apo::Request> batch, Context& context) override {
    const SamplingPlan p = plan(batch.front());
    Start start;
    {
      auto timer = context.stage(Stage::encode);
      start.latents = encode_images(context, input_images(batch));
    }
    start.strength = batch.front().strength;
    const at::Tensor latents =
        sample_latents(context, batch, prompts(batch), negatives(batch), p, start, 5);
    return outputs_of(context, batch, decode(context, latents, p), 3);
  }
};

class QwenRelight final : public QwenWorkflow {
 public:
  explicit QwenRelight(std::shared_ptr<const Shared> shared)
      : QwenWorkflow(std::move(shared), "qwen_relight", false) {}

 protected:
  void check_inputs(const apo::Request& request, int side) const override {
    require_image(request, request.image, "image", side);
  }
  std::vector<Outputs> generate(std::span<const apo::Request> batch, Context& context) override {
    const SamplingPlan p = plan(batch.front());
    const at::Tensor image = input_images(batch);
    Start start;
    {
      auto timer = context.stage(Stage::encode);
      start.latents = encode_images(context, image);
    }
    // The model repaints the picture under the light the prompt names...
    start.strength = batch.front().strength < 1.0 ? batch.front().strength : kRelightStrength;
    const at::Tensor latents =
        sample_latents(context, batch, prompts(batch), negatives(batch), p, start, 6);
    const at::Tensor relit = decode(context, latents, p).narrow(1, 0, 3);
    // ...and the input keeps its structure: the light change (relit against the input, low
    // frequencies, centred on grey) is blended onto the input in the configured mode, and the
    // result leans on that by preserve_structure_strength, on the model's repaint by the rest.
    const at::Tensor original = image.narrow(1, 0, 3);
    const at::Tensor light =
        (0.5 + box_blur(relit, kLightRadius) - box_blur(original, kLightRadius)).clamp(0, 1);
    const at::Tensor kept = blend_images(original, light, block().lighting_blend_mode);
    const double s = block().preserve_structure_strength;
    return outputs_of(context, batch, (s * kept + (1.0 - s) * relit).clamp(0, 1), 3);
  }

 private:
  static constexpr double kRelightStrength = 0.6;
  static constexpr int kLightRadius = 6;
};

class QwenLayered final : public QwenWorkflow {
 public:
  explicit QwenLayered(std::shared_ptr<const Shared> shared)
      : QwenWorkflow(std::move(shared), "qwen_layered", false) {}

 protected:
  std::int64_t layers(const apo::Request& request) const override {
    // The background and each shape; at most max_concurrent_layers at once.
    const CaptionSpec spec = parse_caption(request.prompt);
    return std::min<std::int64_t>(static_cast<std::int64_t>(spec.shapes.size()) + 1,
                                  block().max_concurrent_layers);
  }

  std::vector<Outputs> generate(std::span<const apo::Request> batch, Context& context) override {
    const SamplingPlan p = plan(batch.front());
    // Every request's layers in order: the background first, then its shapes.
    struct Layer {
      std::size_t request;
      std::size_t index;  // in its request: 0 the background, then the shapes
      std::string caption;
      std::string key;
      at::Tensor rgba;
    };
    std::vector<Layer> layers;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const CaptionSpec spec = parse_caption(batch[i].prompt);
      CaptionSpec background = spec;
      background.shapes.clear();
      std::vector<std::string> captions{caption(background)};
      for (const ShapeCaption& shape : spec.shapes) {
        CaptionSpec one = background;
        one.shapes = {shape};
        captions.push_back(caption(one));
      }
      for (std::size_t l = 0; l < captions.size(); ++l) {
        layers.push_back({i,
                          l,
                          captions[l],
                          fmt::format("{}|{}|{}|{}|{}|{}|{}|{}", captions[l], batch[i].seed, l,
                                      p.steps, p.guidance, static_cast<int>(p.sampler),
                                      batch[i].negative_prompt, context.model("dit").path()),
                          {}});
      }
    }
    // Layer caching: a layer made before (same caption, seed, sampling, model) is reused.
    const bool caching = block().enable_layer_caching;
    if (caching) {
      for (Layer& layer : layers) layer.rgba = cache_find(layer.key);
    }
    std::vector<std::size_t> to_make;
    for (std::size_t l = 0; l < layers.size(); ++l) {
      if (!layers[l].rgba.defined()) to_make.push_back(l);
    }
    // Layers go through the model max_concurrent_layers at a time (all at once in parallel).
    const std::size_t group = block().layer_generation_strategy == LayerStrategy::parallel
                                  ? std::max<std::size_t>(to_make.size(), 1)
                                  : static_cast<std::size_t>(block().max_concurrent_layers);
    for (std::size_t first = 0; first < to_make.size(); first += group) {
      const std::size_t count = std::min(group, to_make.size() - first);
      std::vector<apo::Request> requests;
      std::vector<std::string> captions, negatives;
      for (std::size_t k = 0; k < count; ++k) {
        const Layer& layer = layers[to_make[first + k]];
        apo::Request r = batch[layer.request];
        r.seed = r.seed * 31 + layer.index;  // each layer its own noise, whatever the batch
        requests.push_back(r);
        captions.push_back(layer.caption);
        negatives.push_back(r.negative_prompt);
      }
      const at::Tensor latents =
          sample_latents(context, requests, captions, negatives, p, Start{}, 7);
      const at::Tensor rgba = decode(context, latents, p);
      for (std::size_t k = 0; k < count; ++k) {
        Layer& layer = layers[to_make[first + k]];
        layer.rgba = rgba[static_cast<std::int64_t>(k)].contiguous();
        if (caching) cache_store(layer.key, layer.rgba);
      }
    }
    // Composite: each request's background, then its shape layers over it by their alpha.
    std::vector<Outputs> outputs(batch.size());
    std::vector<std::vector<at::Tensor>> stacks(batch.size());
    for (const Layer& layer : layers) stacks[layer.request].push_back(layer.rgba);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      at::Tensor picture = stacks[i].front().narrow(0, 0, 3);
      for (std::size_t l = 1; l < stacks[i].size(); ++l) {
        picture = composite_over(picture, stacks[i][l]);
      }
      picture = picture.contiguous();
      judge(context, i, picture, batch[i].prompt);
      outputs[i]["image"] = picture;
      outputs[i]["layers"] = at::stack(stacks[i]);
    }
    return outputs;
  }

 private:
  static constexpr std::size_t kCachedLayers = 256;

  at::Tensor cache_find(const std::string& key) {
    std::lock_guard lock(cache_mutex_);
    const auto it = cache_.find(key);
    if (it == cache_.end()) return {};
    order_.splice(order_.begin(), order_, it->second.second);
    return it->second.first;
  }
  void cache_store(const std::string& key, const at::Tensor& rgba) {
    std::lock_guard lock(cache_mutex_);
    if (cache_.count(key) != 0) return;
    order_.push_front(key);
    cache_.emplace(key, std::make_pair(rgba, order_.begin()));
    if (cache_.size() > kCachedLayers) {
      cache_.erase(order_.back());
      order_.pop_back();
    }
  }

  std::mutex cache_mutex_;
  std::list<std::string> order_;  // most recent first
  std::map<std::string, std::pair<at::Tensor, std::list<std::string>::iterator>> cache_;
};

}  // namespace

std::filesystem::path default_models_dir() {
  if (const char* dir = std::getenv("APO_REFERENCE_MODELS"); dir != nullptr && *dir != '\0') {
    return dir;
  }
  return APO_REFERENCE_MODELS_DIR;
}

std::vector<std::shared_ptr<engine::Workflow>> make_reference_workflows(
    const ReferenceWorkflowOptions& options) {
  auto shared = std::make_shared<Shared>();
  shared->options = options;
  if (shared->options.models_dir.empty()) shared->options.models_dir = default_models_dir();
  shared->text = read_text_encoder_config(shared->file(files::text_encoder));
  shared->vae = read_vae_config(shared->file(files::vae));
  shared->image_dit = read_dit_config(shared->file(files::image_dit));
  shared->video_dit = read_dit_config(shared->file(files::video_dit));
  std::shared_ptr<const Shared> s = shared;
  return {std::make_shared<HunyuanWorkflow>(s, false),
          std::make_shared<HunyuanWorkflow>(s, true),
          std::make_shared<WanInpaint>(s),
          std::make_shared<WanAlpha>(s),
          std::make_shared<NewBieAnime>(s),
          std::make_shared<QwenEdit>(s),
          std::make_shared<QwenRelight>(s),
          std::make_shared<QwenLayered>(s)};
}

at::Tensor blend_images(const at::Tensor& base, const at::Tensor& blend, BlendMode mode) {
  switch (mode) {
    case BlendMode::normal:
      return blend;
    case BlendMode::multiply:
      return base * blend;
    case BlendMode::screen:
      return base + blend - base * blend;
    case BlendMode::overlay:
      return at::where(base <= 0.5, 2.0 * base * blend, 1.0 - 2.0 * (1.0 - base) * (1.0 - blend));
    case BlendMode::soft_light: {
      const at::Tensor d =
          at::where(base <= 0.25, ((16.0 * base - 12.0) * base + 4.0) * base, at::sqrt(base));
      return at::where(blend <= 0.5, base - (1.0 - 2.0 * blend) * base * (1.0 - base),
                       base + (2.0 * blend - 1.0) * (d - base));
    }
  }
  throw Error(ErrorCode::InvalidArgument, "unknown blend mode", "blend_images");
}

at::Tensor composite_over(const at::Tensor& below, const at::Tensor& layer) {
  const at::Tensor alpha = layer.narrow(-3, 3, 1);
  return layer.narrow(-3, 0, 3) * alpha + below.narrow(-3, 0, 3) * (1.0 - alpha);
}

}  // namespace apo::ref

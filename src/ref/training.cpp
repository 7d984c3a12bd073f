// Training the reference models on the procedural world: VAE, then the text encoder jointly with
// the image DiT, then the video DiT, then the two lightning LoRAs (reflow on teacher samples).

#include "apo/ref/training.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <numbers>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>
#include <nlohmann/json.hpp>

#include "apo/core/error.hpp"
#include "apo/models/safetensors.hpp"
#include "apo/ref/models.hpp"
#include "apo/ref/sampling.hpp"
#include "apo/ref/world.hpp"

namespace apo::ref {

namespace training_impl {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
using Params = std::map<std::string, at::Tensor>;

/// The full schedule (scale 1); TrainOptions::scale shrinks steps and data.
struct Schedule {
  int images = 12000;     ///< rendered training images (64×64)
  int clips = 2000;       ///< rendered training clips (8 frames of 64×64)
  int vae_images = 4096;  ///< images the VAE trains on (random 32×32 crops)
  int vae_steps = 1200;
  int vae_batch = 16;
  int image_steps = 3000;
  int image_batch = 48;
  int video_steps = 1500;
  int video_batch = 12;
  int image_pairs = 768;  ///< teacher samples for the image lightning LoRA
  int image_lora_steps = 400;
  int image_lora_batch = 48;
  int video_pairs = 160;  ///< teacher samples for the video lightning LoRA
  int video_lora_steps = 250;
  int video_lora_batch = 12;
};

constexpr int kFrames = 8;
constexpr int kImageSize = 64;
constexpr int kVaeCrop = 32;
constexpr int kLoraRank = 16;
constexpr double kCaptionDropout = 0.1;
constexpr double kTeacherGuidance = 4.5;
constexpr int kTeacherSteps = 30;
constexpr double kKlWeight = 1e-5;
constexpr double kEmaDecay = 0.998;

int scaled(int full, double scale, int minimum) {
  return std::max(minimum, static_cast<int>(std::lround(full * scale)));
}

Schedule scaled_schedule(double scale) {
  const Schedule f;
  Schedule s;
  s.images = scaled(f.images, scale, 32);
  s.clips = scaled(f.clips, scale, 8);
  s.vae_images = std::min(s.images, scaled(f.vae_images, scale, 16));
  s.vae_steps = scaled(f.vae_steps, scale, 2);
  s.vae_batch = std::min(f.vae_batch, s.vae_images);
  s.image_steps = scaled(f.image_steps, scale, 2);
  s.image_batch = std::min(f.image_batch, s.images);
  s.video_steps = scaled(f.video_steps, scale, 2);
  s.video_batch = std::min(f.video_batch, s.clips);
  s.image_pairs = scaled(f.image_pairs, scale, 8);
  s.image_lora_steps = scaled(f.image_lora_steps, scale, 2);
  s.image_lora_batch = std::min(f.image_lora_batch, s.image_pairs);
  s.video_pairs = scaled(f.video_pairs, scale, 4);
  s.video_lora_steps = scaled(f.video_lora_steps, scale, 2);
  s.video_lora_batch = std::min(f.video_lora_batch, s.video_pairs);
  return s;
}

/// splitmix64: the seed of scene `index` of a stream, well spread for any training seed.
std::uint64_t scene_seed(std::uint64_t seed, std::uint64_t stream, std::uint64_t index) {
  std::uint64_t z = seed * 0x9E3779B97F4A7C15ULL + stream * 0xD1B54A32D192ED03ULL + index;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

/// Linear warmup, then cosine decay to 10% of the peak.
double learning_rate(double peak, int step, int steps, int warmup) {
  if (step < warmup) return peak * (step + 1) / warmup;
  const double progress = static_cast<double>(step - warmup) / std::max(1, steps - warmup);
  return peak * (0.1 + 0.9 * 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
}

std::vector<at::Tensor> trainable(Params& params) {
  std::vector<at::Tensor> list;
  for (auto& [name, tensor] : params) {
    tensor.requires_grad_(true);
    list.push_back(tensor);
  }
  return list;
}

Params detached_copy(const Params& params) {
  Params copy;
  for (const auto& [name, tensor] : params) copy[name] = tensor.detach().clone();
  return copy;
}

void ema_update(Params& ema, const Params& params, double decay) {
  at::NoGradGuard no_grad;
  for (auto& [name, tensor] : ema) tensor.mul_(decay).add_(params.at(name).detach(), 1.0 - decay);
}

/// One optimisation stage: AdamW with warmup and cosine decay, gradient clipping, progress.
class Stage {
 public:
  Stage(std::string name, std::vector<at::Tensor> params, double peak_lr, int steps,
        const TrainOptions& options)
      : name_(std::move(name)),
        params_(std::move(params)),
        optimizer_(params_, torch::optim::AdamWOptions(peak_lr).betas({0.9, 0.99}).weight_decay(0)),
        peak_lr_(peak_lr),
        steps_(steps),
        options_(options),
        start_(Clock::now()) {}

  /// Applies the gradient of `loss` for step `step`.
  void step(int step, const at::Tensor& loss) {
    for (auto& group : optimizer_.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(group.options())
          .lr(learning_rate(peak_lr_, step, steps_, std::max(1, std::min(100, steps_ / 10))));
    }
    optimizer_.zero_grad();
    loss.backward();
    torch::nn::utils::clip_grad_norm_(params_, 1.0);
    optimizer_.step();
    const double value = loss.item<double>();
    smoothed_ = step == 0 ? value : 0.98 * smoothed_ + 0.02 * value;
    if (options_.on_progress && (step % 10 == 0 || step + 1 == steps_)) {
      options_.on_progress({name_, step + 1, steps_, smoothed_, seconds_since(start_)});
    }
  }

  TrainStageReport report() const { return {name_, steps_, smoothed_, seconds_since(start_)}; }

 private:
  std::string name_;
  std::vector<at::Tensor> params_;
  torch::optim::AdamW optimizer_;
  double peak_lr_;
  int steps_;
  const TrainOptions& options_;
  Clock::time_point start_;
  double smoothed_ = 0.0;
};

/// The rendered datasets: images (pixels kept only for the VAE's share) and clips, as latents.
struct ImageData {
  at::Tensor latents;  ///< [N, 4, 16, 16], scaled
  at::Tensor tokens;   ///< [N, kCaptionTokens]
};
struct ClipData {
  at::Tensor latents;  ///< [N, T, 4, 16, 16], scaled
  at::Tensor tokens;
};

at::Tensor render_images(std::uint64_t seed, int first, int count) {
  std::vector<at::Tensor> images;
  images.reserve(static_cast<std::size_t>(count));
  for (int i = first; i < first + count; ++i) {
    images.push_back(render_image(sample_scene(scene_seed(seed, 1, i), false), kImageSize));
  }
  return at::stack(images);
}

std::vector<std::string> image_captions(std::uint64_t seed, int first, int count, bool clip) {
  std::vector<std::string> captions;
  for (int i = first; i < first + count; ++i) {
    captions.push_back(caption(sample_scene(scene_seed(seed, clip ? 2 : 1, i), clip)));
  }
  return captions;
}

/// Zeroes about `rate` of the rows: the empty caption, the unconditional input of CFG.
at::Tensor drop_captions(const at::Tensor& tokens, double rate, at::Generator& gen) {
  const at::Tensor keep = at::rand({tokens.size(0), 1}, gen).ge(rate);
  return tokens * keep.to(at::kLong);
}

// ---------------------------------------------------------------------------------------------
// Files

json stage_json(const TrainStageReport& r) {
  return {
      {"stage", r.stage}, {"steps", r.steps}, {"final_loss", r.final_loss}, {"seconds", r.seconds}};
}

void save(const std::filesystem::path& path, const Params& params, std::string_view kind,
          const std::string& config, const json& training, TrainReport& report) {
  std::vector<models::NamedTensor> tensors;
  for (const auto& [name, tensor] : params) {
    tensors.push_back({name, tensor.detach().to(at::kBFloat16).contiguous()});
  }
  models::save_safetensors(path, tensors,
                           {{std::string(kKindMetadataKey), std::string(kind)},
                            {std::string(kConfigMetadataKey), config},
                            {std::string(kTrainingMetadataKey), training.dump()}});
  report.files.push_back(path);
}

void save_lora(const std::filesystem::path& path, const std::map<std::string, LoraFactors>& lora,
               const json& config, const json& training, TrainReport& report) {
  std::vector<models::NamedTensor> tensors;
  for (const auto& [module, f] : lora) {
    tensors.push_back({module + ".lora_down.weight", f.down.detach().to(at::kBFloat16)});
    tensors.push_back({module + ".lora_up.weight", f.up.detach().to(at::kBFloat16)});
    tensors.push_back({module + ".alpha", at::full({}, f.alpha, at::kFloat)});
  }
  models::save_safetensors(path, tensors,
                           {{std::string(kKindMetadataKey), "lora"},
                            {std::string(kConfigMetadataKey), config.dump()},
                            {std::string(kTrainingMetadataKey), training.dump()}});
  report.files.push_back(path);
}

// ---------------------------------------------------------------------------------------------
// Stages

struct Trainer {
  const TrainOptions& options;
  Schedule schedule;
  at::Generator gen;
  TrainReport report;
  json made;  ///< seed, scale, schedule: goes into every file's metadata

  TextEncoderConfig text_config;
  VaeConfig vae_config;
  DitConfig image_config;
  DitConfig video_config;
  Params text_params, vae_params, image_params, video_params;

  ImageData images;
  ClipData clips;

  json training_record(const TrainStageReport& stage) const {
    json j = made;
    j["stage"] = stage_json(stage);
    return j;
  }

  void train_vae() {
    const Schedule& s = schedule;
    vae_params = init_vae(vae_config, gen);
    const at::Tensor pixels = render_images(options.seed, 0, s.vae_images);
    Stage stage("vae", trainable(vae_params), 1e-3, s.vae_steps, options);
    const TensorWeights w(vae_params);
    for (int step = 0; step < s.vae_steps; ++step) {
      const at::Tensor idx = at::randint(s.vae_images, {s.vae_batch}, gen);
      // Crops aligned to the latent grid: the convolutional VAE learns the same maps as on the
      // whole image at a quarter of the cost.
      const auto max_cell = (kImageSize - kVaeCrop) / kVaeDownsampling;
      const std::int64_t y = at::randint(max_cell + 1, {1}, gen).item<std::int64_t>() * 4;
      const std::int64_t x = at::randint(max_cell + 1, {1}, gen).item<std::int64_t>() * 4;
      const at::Tensor batch =
          pixels.index_select(0, idx).slice(2, y, y + kVaeCrop).slice(3, x, x + kVaeCrop);
      const VaeMoments m = vae_moments(vae_config, w, batch);
      const at::Tensor z = m.mean + at::exp(0.5 * m.logvar) * at::randn(m.mean.sizes(), gen);
      const at::Tensor recon = vae_decode_raw(vae_config, w, z);
      const at::Tensor kl = 0.5 * (m.mean.pow(2) + m.logvar.exp() - 1.0 - m.logvar).mean();
      const at::Tensor diff = recon - batch;
      const at::Tensor loss = diff.pow(2).mean() + 0.1 * diff.abs().mean() + kKlWeight * kl;
      stage.step(step, loss);
    }
    // Latents of unit variance for the diffusion models.
    {
      at::NoGradGuard no_grad;
      const at::Tensor sample = pixels.slice(0, 0, std::min<std::int64_t>(512, s.vae_images));
      const at::Tensor mean = vae_moments(vae_config, TensorWeights(vae_params), sample).mean;
      vae_config.scale_factor = 1.0 / mean.std().item<double>();
    }
    const TrainStageReport r = stage.report();
    report.stages.push_back(r);
    save(options.output_dir / files::vae, vae_params, "vae", to_json(vae_config),
         training_record(r), report);
  }

  void encode_datasets() {
    const auto start = Clock::now();
    at::NoGradGuard no_grad;
    const TensorWeights w(vae_params);
    constexpr int kChunk = 256;
    std::vector<at::Tensor> latents;
    for (int first = 0; first < schedule.images; first += kChunk) {
      const int count = std::min(kChunk, schedule.images - first);
      latents.push_back(vae_encode(vae_config, w, render_images(options.seed, first, count)));
    }
    images.latents = at::cat(latents);
    images.tokens = tokenize(image_captions(options.seed, 0, schedule.images, false));
    latents.clear();
    for (int first = 0; first < schedule.clips; first += kChunk / kFrames) {
      const int count = std::min(kChunk / kFrames, schedule.clips - first);
      std::vector<at::Tensor> frames;
      for (int i = first; i < first + count; ++i) {
        frames.push_back(
            render_clip(sample_scene(scene_seed(options.seed, 2, i), true), kFrames, kImageSize));
      }
      latents.push_back(vae_encode(vae_config, w, at::stack(frames)));
    }
    clips.latents = at::cat(latents);
    clips.tokens = tokenize(image_captions(options.seed, 0, schedule.clips, true));
    report.stages.push_back({"encode", 0, 0.0, seconds_since(start)});
    if (options.on_progress) {
      options.on_progress({"encode", 1, 1, 0.0, seconds_since(start)});
    }
  }

  /// Rectified-flow loss of `model` on latents x0 with captions `tokens`.
  template <class Model>
  at::Tensor flow_loss(const at::Tensor& x0, const at::Tensor& noise, Model&& model) {
    // Logit-normal t (SD3): most steps where the picture takes shape, some near both ends.
    const at::Tensor t = at::sigmoid(at::randn({x0.size(0)}, gen));
    std::vector<std::int64_t> view(static_cast<std::size_t>(x0.dim()), 1);
    view[0] = x0.size(0);
    const at::Tensor tv = t.view(view);
    const at::Tensor xt = (1 - tv) * x0 + tv * noise;
    return (model(xt, t) - (noise - x0)).pow(2).mean();
  }

  void train_image_dit() {
    const Schedule& s = schedule;
    text_params = init_text_encoder(text_config, gen);
    image_params = init_dit(image_config, gen);
    std::vector<at::Tensor> params = trainable(text_params);
    for (auto& p : trainable(image_params)) params.push_back(p);
    Params text_ema = detached_copy(text_params);
    Params image_ema = detached_copy(image_params);
    Stage stage("image_dit", params, 8e-4, s.image_steps, options);
    const TensorWeights tw(text_params);
    const TensorWeights dw(image_params);
    for (int step = 0; step < s.image_steps; ++step) {
      const at::Tensor idx = at::randint(s.images, {s.image_batch}, gen);
      const at::Tensor x0 = images.latents.index_select(0, idx);
      const at::Tensor tokens =
          drop_captions(images.tokens.index_select(0, idx), kCaptionDropout, gen);
      const at::Tensor noise = at::randn(x0.sizes(), gen);
      const TextEncoding text = encode_text(text_config, tw, tokens);
      stage.step(step, flow_loss(x0, noise, [&](const at::Tensor& xt, const at::Tensor& t) {
                   return dit_forward(image_config, dw, xt, t, text);
                 }));
      const double decay = std::min(kEmaDecay, (1.0 + step) / (10.0 + step));
      ema_update(text_ema, text_params, decay);
      ema_update(image_ema, image_params, decay);
    }
    text_params = std::move(text_ema);
    image_params = std::move(image_ema);
    const TrainStageReport r = stage.report();
    report.stages.push_back(r);
    save(options.output_dir / files::text_encoder, text_params, "text_encoder",
         to_json(text_config), training_record(r), report);
    save(options.output_dir / files::image_dit, image_params, "image_dit", to_json(image_config),
         training_record(r), report);
  }

  void train_video_dit() {
    const Schedule& s = schedule;
    video_params = init_dit(video_config, gen);
    // The spatial blocks, cross-attention and conditioning start from the image DiT's; the
    // patch embedding (another patch size) and the temporal layers start fresh.
    for (auto& [name, tensor] : video_params) {
      const auto it = image_params.find(name);
      if (it != image_params.end() && it->second.sizes() == tensor.sizes()) {
        tensor = it->second.detach().clone();
      }
    }
    Params video_ema = detached_copy(video_params);
    Stage stage("video_dit", trainable(video_params), 5e-4, s.video_steps, options);
    const TensorWeights tw(text_params);
    const TensorWeights dw(video_params);
    for (int step = 0; step < s.video_steps; ++step) {
      const at::Tensor idx = at::randint(s.clips, {s.video_batch}, gen);
      const at::Tensor x0 = clips.latents.index_select(0, idx);
      const at::Tensor tokens =
          drop_captions(clips.tokens.index_select(0, idx), kCaptionDropout, gen);
      const at::Tensor noise = at::randn(x0.sizes(), gen);
      TextEncoding text;
      {
        at::NoGradGuard no_grad;
        text = encode_text(text_config, tw, tokens);
      }
      stage.step(step, flow_loss(x0, noise, [&](const at::Tensor& xt, const at::Tensor& t) {
                   return dit_forward(video_config, dw, xt, t, text);
                 }));
      ema_update(video_ema, video_params, std::min(kEmaDecay, (1.0 + step) / (10.0 + step)));
    }
    video_params = std::move(video_ema);
    const TrainStageReport r = stage.report();
    report.stages.push_back(r);
    save(options.output_dir / files::video_dit, video_params, "video_dit", to_json(video_config),
         training_record(r), report);
  }

  /// Teacher samples: 30 Euler steps with CFG from noise, in chunks.
  at::Tensor teacher_samples(const DitConfig& config, const Params& params, const at::Tensor& noise,
                             const at::Tensor& tokens, int chunk) {
    at::NoGradGuard no_grad;
    const TensorWeights tw(text_params);
    const TensorWeights dw(params);
    const std::vector<double> schedule_sigmas = sigmas({.steps = kTeacherSteps});
    std::vector<at::Tensor> out;
    for (std::int64_t first = 0; first < noise.size(0); first += chunk) {
      const auto last = std::min<std::int64_t>(first + chunk, noise.size(0));
      const at::Tensor tok = tokens.slice(0, first, last);
      const auto n = tok.size(0);
      const TextEncoding both = encode_text(text_config, tw, at::cat({tok, at::zeros_like(tok)}));
      const VelocityModel velocity = [&](const at::Tensor& xt, double t) {
        const at::Tensor v =
            dit_forward(config, dw, at::cat({xt, xt}), at::full({2 * n}, t, at::kFloat), both);
        const at::Tensor vc = v.slice(0, 0, n);
        const at::Tensor vu = v.slice(0, n);
        return vu + kTeacherGuidance * (vc - vu);
      };
      out.push_back(sample(flow_denoiser(velocity),
                           noise.slice(0, first, last) * schedule_sigmas[0], schedule_sigmas));
    }
    return at::cat(out);
  }

  /// Distils a lightning LoRA by reflow: the student (base + LoRA, guidance 1) learns the
  /// straight path from each noise to the teacher's sample from it, so a few steps suffice.
  void train_lightning(const std::string& name, const DitConfig& config, const Params& base,
                       const at::Tensor& tokens, int pairs, int steps, int batch, int chunk,
                       const std::filesystem::path& file, std::string_view base_kind) {
    const auto start = Clock::now();
    const at::Tensor latent_shape_example = config.frames > 0 ? clips.latents : images.latents;
    std::vector<std::int64_t> shape(latent_shape_example.sizes().begin(),
                                    latent_shape_example.sizes().end());
    shape[0] = pairs;
    const at::Tensor noise = at::randn(shape, gen);
    const at::Tensor pair_tokens = tokens.slice(0, 0, pairs);
    const at::Tensor targets = teacher_samples(config, base, noise, pair_tokens, chunk);
    const double teacher_seconds = seconds_since(start);

    std::map<std::string, LoraFactors> lora;
    std::vector<at::Tensor> params;
    for (const std::string& module : dit_lora_modules(config)) {
      const at::Tensor& weight = base.at(module + ".weight");
      const double bound = 1.0 / std::sqrt(static_cast<double>(weight.size(1)));
      LoraFactors f{at::empty({kLoraRank, weight.size(1)}).uniform_(-bound, bound, gen),
                    at::zeros({weight.size(0), kLoraRank}), static_cast<double>(kLoraRank)};
      f.down.requires_grad_(true);
      f.up.requires_grad_(true);
      params.push_back(f.down);
      params.push_back(f.up);
      lora[module] = f;
    }
    const TensorWeights tw(text_params);
    const TensorWeights bw(base);
    const LoraWeights student(bw, lora);
    Stage stage(name, params, 1e-3, steps, options);
    for (int step = 0; step < steps; ++step) {
      const at::Tensor idx = at::randint(pairs, {batch}, gen);
      const at::Tensor x0 = targets.index_select(0, idx);
      const at::Tensor eps = noise.index_select(0, idx);
      TextEncoding text;
      {
        at::NoGradGuard no_grad;
        text = encode_text(text_config, tw, pair_tokens.index_select(0, idx));
      }
      // Uniform t: a few-step sampler visits the whole range evenly.
      const at::Tensor t = at::rand({batch}, gen);
      std::vector<std::int64_t> view(static_cast<std::size_t>(x0.dim()), 1);
      view[0] = batch;
      const at::Tensor tv = t.view(view);
      const at::Tensor xt = (1 - tv) * x0 + tv * eps;
      const at::Tensor loss =
          (dit_forward(config, student, xt, t, text) - (eps - x0)).pow(2).mean();
      stage.step(step, loss);
    }
    TrainStageReport r = stage.report();
    r.seconds = seconds_since(start);
    report.stages.push_back(r);
    json record = training_record(r);
    record["teacher"] = {{"samples", pairs},
                         {"steps", kTeacherSteps},
                         {"guidance", kTeacherGuidance},
                         {"sampler", "euler"},
                         {"seconds", teacher_seconds}};
    const json config_json = {{"base", base_kind},   {"rank", kLoraRank}, {"alpha", kLoraRank},
                              {"steps", 4},          {"guidance", 1.0},   {"sampler", "euler"},
                              {"schedule", "linear"}};
    save_lora(file, lora, config_json, record, report);
  }
};

}  // namespace training_impl

TrainReport train_reference(const TrainOptions& options) {
  using namespace training_impl;
  if (!(options.scale > 0.0) || options.scale > 1.0) {
    fail(ErrorCode::InvalidArgument, "train_reference: scale must be in (0, 1], got {}",
         options.scale);
  }
  if (options.threads < 0) {
    fail(ErrorCode::InvalidArgument, "train_reference: threads must be >= 0, got {}",
         options.threads);
  }
  if (options.output_dir.empty()) {
    fail(ErrorCode::InvalidArgument, "train_reference: no output directory");
  }
  std::error_code ec;
  std::filesystem::create_directories(options.output_dir, ec);
  if (ec) {
    fail(ErrorCode::Io, "train_reference: cannot create {}: {}", options.output_dir.string(),
         ec.message());
  }
  const int old_threads = at::get_num_threads();
  if (options.threads > 0) at::set_num_threads(options.threads);
  const auto start = Clock::now();

  at::manual_seed(options.seed);
  Trainer trainer{options, scaled_schedule(options.scale),
                  at::make_generator<at::CPUGeneratorImpl>(options.seed)};
  const Schedule& s = trainer.schedule;
  trainer.made = {{"seed", options.seed},
                  {"scale", options.scale},
                  {"threads", at::get_num_threads()},
                  {"images", s.images},
                  {"clips", s.clips},
                  {"recipe",
                   "VAE (KL, random 32x32 crops); text encoder + image DiT jointly (rectified "
                   "flow, logit-normal t, 10% caption dropout, EMA); video DiT from the image "
                   "DiT's blocks; lightning LoRAs by reflow on 30-step CFG 4.5 teacher samples"}};
  trainer.text_config = {static_cast<int>(vocabulary().size()), kCaptionTokens};
  trainer.video_config.frames = kFrames;
  trainer.video_config.patch = 4;

  trainer.train_vae();
  trainer.encode_datasets();
  trainer.train_image_dit();
  trainer.train_video_dit();
  trainer.train_lightning("image_lightning", trainer.image_config, trainer.image_params,
                          trainer.images.tokens, s.image_pairs, s.image_lora_steps,
                          s.image_lora_batch, 256, options.output_dir / files::image_lightning,
                          "image_dit");
  trainer.train_lightning("video_lightning", trainer.video_config, trainer.video_params,
                          trainer.clips.tokens, s.video_pairs, s.video_lora_steps,
                          s.video_lora_batch, 32, options.output_dir / files::video_lightning,
                          "video_dit");

  TrainReport& report = trainer.report;
  report.seconds = seconds_since(start);
  json stages = json::array();
  for (const auto& stage : report.stages) stages.push_back(stage_json(stage));
  json record = trainer.made;
  record["stages"] = stages;
  record["seconds"] = report.seconds;
  record["machine"] = {{"hardware_threads", std::thread::hardware_concurrency()},
                       {"torch_threads", at::get_num_threads()}};
  json written = json::array();
  for (const auto& file : report.files) written.push_back(file.filename().string());
  record["files"] = written;
  const std::filesystem::path json_path = options.output_dir / "training.json";
  std::ofstream out(json_path);
  out << record.dump(2) << "\n";
  if (!out) fail(ErrorCode::Io, "train_reference: cannot write {}", json_path.string());
  report.files.push_back(json_path);
  if (options.threads > 0) at::set_num_threads(old_threads);
  return report;
}

}  // namespace apo::ref

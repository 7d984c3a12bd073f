// The reference models: weight sources, the text encoder, the VAE and the DiTs, one definition
// for training (TensorWeights over trainable tensors) and inference (ModelWeights).

#include "apo/ref/models.hpp"

#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "apo/core/error.hpp"
#include "apo/models/model.hpp"
#include "apo/models/safetensors.hpp"

namespace apo::ref {

namespace models_impl {

std::string weight_name(std::string_view layer) {
  return fmt::format("{}.weight", layer);
}
std::string bias_name(std::string_view layer) {
  return fmt::format("{}.bias", layer);
}
std::string shape_text(at::IntArrayRef sizes) {
  return fmt::format("[{}]", fmt::join(sizes, ", "));
}

}  // namespace models_impl

// ---------------------------------------------------------------------------------------------
// Weight sources

ModelWeights::ModelWeights(const models::Model& model, quant::QLinearOptions options)
    : model_(&model), options_(options) {}

at::Tensor ModelWeights::tensor(std::string_view name) const {
  return model_->weight(name).dequantize(at::kFloat);
}

at::Tensor ModelWeights::linear(std::string_view name, const at::Tensor& x) const {
  const quant::QTensor& weight = model_->weight(models_impl::weight_name(name));
  std::optional<at::Tensor> bias;
  if (const quant::QTensor* b = model_->find(models_impl::bias_name(name))) {
    bias = b->dequantize(at::kFloat);
  }
  if (weight.format() == quant::QFormat::none) {
    return at::linear(x, weight.dequantize(at::kFloat), bias);
  }
  return quant::qlinear(x, weight, bias, options_);
}

bool ModelWeights::contains(std::string_view name) const {
  return model_->find(name) != nullptr;
}

TensorWeights::TensorWeights(std::map<std::string, at::Tensor> tensors)
    : tensors_(std::move(tensors)) {}

at::Tensor TensorWeights::tensor(std::string_view name) const {
  const auto it = tensors_.find(std::string(name));
  if (it == tensors_.end()) fail(ErrorCode::NotFound, "no tensor '{}' in the weights", name);
  return it->second;
}

at::Tensor TensorWeights::linear(std::string_view name, const at::Tensor& x) const {
  const std::string bias = models_impl::bias_name(name);
  const auto it = tensors_.find(bias);
  return at::linear(x, tensor(models_impl::weight_name(name)),
                    it == tensors_.end() ? at::Tensor() : it->second);
}

bool TensorWeights::contains(std::string_view name) const {
  return tensors_.contains(std::string(name));
}

LoraWeights::LoraWeights(const Weights& base, std::map<std::string, LoraFactors> layers,
                         double strength)
    : base_(&base), layers_(layers.begin(), layers.end()), strength_(strength) {
  for (const auto& [module, factors] : layers_) {
    if (factors.down.dim() != 2 || factors.up.dim() != 2 ||
        factors.up.size(1) != factors.down.size(0)) {
      fail(ErrorCode::InvalidArgument,
           "LoRA layer '{}': down and up are not [rank, in], [out, rank]", module);
    }
  }
}

at::Tensor LoraWeights::tensor(std::string_view name) const {
  return base_->tensor(name);
}

at::Tensor LoraWeights::linear(std::string_view name, const at::Tensor& x) const {
  at::Tensor y = base_->linear(name, x);
  const auto it = layers_.find(name);
  if (it == layers_.end()) return y;
  const LoraFactors& f = it->second;
  const double scale = strength_ * f.alpha / static_cast<double>(f.down.size(0));
  return y + at::linear(at::linear(x, f.down), f.up) * scale;
}

bool LoraWeights::contains(std::string_view name) const {
  return base_->contains(name);
}

// ---------------------------------------------------------------------------------------------
// Building blocks

namespace models_impl {

/// Multi-head attention of xq [N, Lq, D] over xkv [N, Lk, Dkv] with the projections
/// "<prefix>.q/.k/.v/.o".
at::Tensor attend(const Weights& w, std::string_view prefix, const at::Tensor& xq,
                  const at::Tensor& xkv, int heads, const at::Tensor& key_mask,
                  const AttentionOptions& options) {
  const auto n = xq.size(0);
  const auto lq = xq.size(1);
  const auto lk = xkv.size(1);
  const at::Tensor q = w.linear(fmt::format("{}.q", prefix), xq);
  const auto d = q.size(2);
  const auto split = [&](const at::Tensor& t, std::int64_t l) {
    return t.view({n, l, heads, d / heads}).transpose(1, 2);
  };
  const at::Tensor k = w.linear(fmt::format("{}.k", prefix), xkv);
  const at::Tensor v = w.linear(fmt::format("{}.v", prefix), xkv);
  const at::Tensor o = attention(split(q, lq), split(k, lk), split(v, lk), options, key_mask);
  return w.linear(fmt::format("{}.o", prefix), o.transpose(1, 2).reshape({n, lq, d}));
}

at::Tensor mlp(const Weights& w, std::string_view prefix, const at::Tensor& x) {
  return w.linear(fmt::format("{}.fc2", prefix),
                  at::gelu(w.linear(fmt::format("{}.fc1", prefix), x), "tanh"));
}

at::Tensor layer_norm(const Weights& w, std::string_view prefix, const at::Tensor& x) {
  return at::layer_norm(x, {x.size(-1)}, w.tensor(weight_name(prefix)), w.tensor(bias_name(prefix)),
                        1e-5);
}

at::Tensor conv(const Weights& w, std::string_view prefix, const at::Tensor& x,
                std::int64_t stride = 1) {
  return at::conv2d(x, w.tensor(weight_name(prefix)), w.tensor(bias_name(prefix)), {stride, stride},
                    {1, 1});
}

/// GroupNorm over channel groups and space (the encoder's).
at::Tensor group_norm(const Weights& w, std::string_view prefix, const at::Tensor& x, int groups) {
  return at::group_norm(x, groups, w.tensor(weight_name(prefix)), w.tensor(bias_name(prefix)),
                        1e-5);
}

/// Normalizes channel groups at each position (the decoder's): no statistics over space, so a
/// decoded tile does not depend on what lies outside its receptive field.
at::Tensor position_norm(const Weights& w, std::string_view prefix, const at::Tensor& x,
                         int groups) {
  const auto n = x.size(0);
  const auto c = x.size(1);
  const auto h = x.size(2);
  const auto wd = x.size(3);
  const at::Tensor g = x.view({n, groups, c / groups, h, wd});
  const at::Tensor mean = g.mean(2, true);
  const at::Tensor var = (g - mean).pow(2).mean(2, true);
  const at::Tensor normed = ((g - mean) * at::rsqrt(var + 1e-5)).view({n, c, h, wd});
  return normed * w.tensor(weight_name(prefix)).view({1, c, 1, 1}) +
         w.tensor(bias_name(prefix)).view({1, c, 1, 1});
}

/// Fixed sin-cos embedding of positions [P] into [P, dim].
at::Tensor sincos(const at::Tensor& positions, std::int64_t dim) {
  const std::int64_t half = dim / 2;
  const at::Tensor freqs =
      at::exp(at::arange(half, at::kFloat) * (-std::log(10000.0) / static_cast<double>(half)));
  const at::Tensor angles = positions.to(at::kFloat).unsqueeze(1) * freqs.unsqueeze(0);
  return at::cat({at::sin(angles), at::cos(angles)}, 1);
}

/// 2-D sin-cos position embedding of a grid side × side, [side², dim] (rows then columns).
at::Tensor sincos_2d(std::int64_t side, std::int64_t dim) {
  const at::Tensor coords = at::arange(side, at::kFloat);
  const at::Tensor row = sincos(coords, dim / 2).repeat_interleave(side, 0);
  const at::Tensor col = sincos(coords, dim / 2).repeat({side, 1});
  return at::cat({row, col}, 1);
}

at::Tensor modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  return at::layer_norm(x, {x.size(-1)}, {}, {}, 1e-6) * (1 + scale.unsqueeze(1)) +
         shift.unsqueeze(1);
}

}  // namespace models_impl

using namespace models_impl;

// ---------------------------------------------------------------------------------------------
// Text encoder

TextEncoding encode_text(const TextEncoderConfig& config, const Weights& w,
                         const at::Tensor& token_ids, const AttentionOptions& attention_options) {
  if (token_ids.dim() != 2 || token_ids.scalar_type() != at::kLong ||
      token_ids.size(1) > config.max_tokens || token_ids.size(0) < 1) {
    fail(ErrorCode::InvalidArgument,
         "text encoder: token ids must be int64 [B, L] with B >= 1 and L <= {}, got {} {}",
         config.max_tokens, shape_text(token_ids.sizes()), c10::toString(token_ids.scalar_type()));
  }
  if (token_ids.numel() > 0 && (token_ids.min().item<std::int64_t>() < 0 ||
                                token_ids.max().item<std::int64_t>() >= config.vocab_size)) {
    fail(ErrorCode::InvalidArgument, "text encoder: token ids outside the vocabulary [0, {})",
         config.vocab_size);
  }
  const auto b = token_ids.size(0);
  const auto l = token_ids.size(1);
  const auto d = config.width;
  const at::Tensor start = w.tensor("start_embed").view({1, 1, d}).expand({b, 1, d});
  at::Tensor x = at::cat({start, at::embedding(w.tensor("token_embed.weight"), token_ids)}, 1) +
                 w.tensor("pos_embed").slice(0, 0, l + 1).unsqueeze(0);
  const at::Tensor mask =
      at::cat({at::ones({b, 1}, token_ids.options().dtype(at::kBool)), token_ids.ne(0)}, 1);
  for (int i = 0; i < config.layers; ++i) {
    const std::string p = fmt::format("layers.{}", i);
    const at::Tensor h = layer_norm(w, p + ".norm1", x);
    x = x + attend(w, p + ".attn", h, h, config.heads, mask, attention_options);
    x = x + mlp(w, p + ".mlp", layer_norm(w, p + ".norm2", x));
  }
  x = layer_norm(w, "final_norm", x);
  const at::Tensor m = mask.unsqueeze(-1).to(x.scalar_type());
  const at::Tensor pooled = (x * m).sum(1) / m.sum(1);
  return {x, mask, pooled};
}

// ---------------------------------------------------------------------------------------------
// VAE

namespace models_impl {

void check_vae_config(const VaeConfig& config) {
  if (config.widths.size() != 3) {
    fail(ErrorCode::InvalidArgument, "VAE: widths must have 3 entries, got {}",
         config.widths.size());
  }
}

at::Tensor vae_res(const Weights& w, std::string_view p, const at::Tensor& x, int groups,
                   bool decoder) {
  const auto norm = [&](std::string_view name, const at::Tensor& t) {
    const std::string full = fmt::format("{}.{}", p, name);
    return decoder ? position_norm(w, full, t, groups) : group_norm(w, full, t, groups);
  };
  at::Tensor h = conv(w, fmt::format("{}.conv1", p), at::silu(norm("norm1", x)));
  h = conv(w, fmt::format("{}.conv2", p), at::silu(norm("norm2", h)));
  return x + h;
}

at::Tensor upsample(const at::Tensor& x) {
  return at::upsample_nearest2d(x, {x.size(2) * 2, x.size(3) * 2});
}

}  // namespace models_impl

VaeMoments vae_moments(const VaeConfig& config, const Weights& w, const at::Tensor& images) {
  check_vae_config(config);
  if (images.dim() != 4 || images.size(1) != config.channels || images.size(2) % 4 != 0 ||
      images.size(3) % 4 != 0) {
    fail(ErrorCode::InvalidArgument,
         "VAE encode: images must be [N, {}, H, W] with H and W multiples of 4, got {}",
         config.channels, shape_text(images.sizes()));
  }
  const int g = config.groups;
  at::Tensor h = conv(w, "encoder.conv_in", images * 2 - 1);
  h = conv(w, "encoder.down1.conv", at::silu(group_norm(w, "encoder.down1.norm", h, g)), 2);
  h = conv(w, "encoder.down2.conv", at::silu(group_norm(w, "encoder.down2.norm", h, g)), 2);
  h = vae_res(w, "encoder.res", h, g, false);
  h = conv(w, "encoder.conv_out", at::silu(group_norm(w, "encoder.norm_out", h, g)));
  const auto parts = h.chunk(2, 1);
  return {parts[0], parts[1].clamp(-30.0, 20.0)};
}

at::Tensor vae_encode(const VaeConfig& config, const Weights& w, const at::Tensor& images) {
  if (images.dim() == 5) {
    const auto n = images.size(0);
    const auto t = images.size(1);
    const at::Tensor latents = vae_encode(config, w, images.flatten(0, 1));
    return latents.view({n, t, latents.size(1), latents.size(2), latents.size(3)});
  }
  return vae_moments(config, w, images).mean * config.scale_factor;
}

at::Tensor vae_decode_raw(const VaeConfig& config, const Weights& w,
                          const at::Tensor& unscaled_latents) {
  check_vae_config(config);
  const int g = config.groups;
  at::Tensor h = conv(w, "decoder.conv_in", unscaled_latents);
  h = vae_res(w, "decoder.res", h, g, true);
  h = conv(w, "decoder.up1.conv", upsample(at::silu(position_norm(w, "decoder.up1.norm", h, g))));
  h = conv(w, "decoder.up2.conv", upsample(at::silu(position_norm(w, "decoder.up2.norm", h, g))));
  h = conv(w, "decoder.conv_out", at::silu(position_norm(w, "decoder.norm_out", h, g)));
  return (h + 1) * 0.5;
}

namespace models_impl {

/// Tile origins along a side of `size` latents: every `stride`, the last flush with the end.
std::vector<std::int64_t> tile_starts(std::int64_t size, std::int64_t tile, std::int64_t stride) {
  std::vector<std::int64_t> starts;
  for (std::int64_t s = 0;; s += stride) {
    if (s + tile >= size) {
      starts.push_back(std::max<std::int64_t>(size - tile, 0));
      break;
    }
    starts.push_back(s);
  }
  return starts;
}

/// Blend weights rising linearly over `pixels` (and, flipped, falling): a tile fades in where it
/// overlaps the previous one and out where it overlaps the next.
at::Tensor rising(std::int64_t pixels) {
  return (at::arange(pixels, at::kFloat) + 0.5) / static_cast<double>(pixels);
}

/// Blend weights of a tile of `pixels` along one side with overlaps `before` and `after`.
at::Tensor side_weights(std::int64_t pixels, std::int64_t before, std::int64_t after) {
  at::Tensor weight = at::ones({pixels}, at::kFloat);
  if (before > 0) weight.slice(0, 0, before).mul_(rising(before));
  if (after > 0) weight.slice(0, pixels - after).mul_(rising(after).flip(0));
  return weight;
}

at::Tensor decode_tiled(const VaeConfig& config, const Weights& w, const at::Tensor& z,
                        const VaeDecodeOptions& options) {
  const std::int64_t tile = options.tile_latents;
  const std::int64_t stride = options.tile_latents - options.tile_overlap;
  const auto h = z.size(2);
  const auto wd = z.size(3);
  const auto ys = tile_starts(h, tile, stride);
  const auto xs = tile_starts(wd, tile, stride);
  const std::int64_t f = kVaeDownsampling;
  at::Tensor out = at::zeros({z.size(0), config.channels, h * f, wd * f}, z.options());
  at::Tensor total = at::zeros({h * f, wd * f}, z.options());
  for (std::size_t iy = 0; iy < ys.size(); ++iy) {
    for (std::size_t ix = 0; ix < xs.size(); ++ix) {
      const auto th = std::min(tile, h);
      const auto tw = std::min(tile, wd);
      const at::Tensor piece =
          vae_decode_raw(config, w, z.slice(2, ys[iy], ys[iy] + th).slice(3, xs[ix], xs[ix] + tw));
      // Overlap with the neighbour: the previous tile's end minus this one's start.
      const auto before_y = iy > 0 ? (ys[iy - 1] + th - ys[iy]) * f : 0;
      const auto after_y = iy + 1 < ys.size() ? (ys[iy] + th - ys[iy + 1]) * f : 0;
      const auto before_x = ix > 0 ? (xs[ix - 1] + tw - xs[ix]) * f : 0;
      const auto after_x = ix + 1 < xs.size() ? (xs[ix] + tw - xs[ix + 1]) * f : 0;
      const at::Tensor wy = side_weights(th * f, before_y, after_y);
      const at::Tensor wx = side_weights(tw * f, before_x, after_x);
      const at::Tensor weight = (wy.unsqueeze(1) * wx.unsqueeze(0)).to(z.options());
      out.slice(2, ys[iy] * f, (ys[iy] + th) * f)
          .slice(3, xs[ix] * f, (xs[ix] + tw) * f)
          .add_(piece * weight);
      total.slice(0, ys[iy] * f, (ys[iy] + th) * f)
          .slice(1, xs[ix] * f, (xs[ix] + tw) * f)
          .add_(weight);
    }
  }
  return out / total;
}

}  // namespace models_impl

at::Tensor vae_decode(const VaeConfig& config, const Weights& w, const at::Tensor& latents,
                      const VaeDecodeOptions& options) {
  if (latents.dim() == 5) {
    const auto n = latents.size(0);
    const auto t = latents.size(1);
    const at::Tensor images = vae_decode(config, w, latents.flatten(0, 1), options);
    return images.view({n, t, images.size(1), images.size(2), images.size(3)});
  }
  if (latents.dim() != 4 || latents.size(1) != config.latent_channels) {
    fail(ErrorCode::InvalidArgument, "VAE decode: latents must be [N, {}, h, w], got {}",
         config.latent_channels, shape_text(latents.sizes()));
  }
  if (options.tiling && (options.tile_latents < 2 || options.tile_overlap < 1 ||
                         options.tile_overlap >= options.tile_latents)) {
    fail(ErrorCode::InvalidArgument,
         "VAE decode: tiles of {} latents with an overlap of {} (need 1 <= overlap < tile)",
         options.tile_latents, options.tile_overlap);
  }
  const at::Tensor z = latents.to(at::kFloat) / config.scale_factor;
  const auto decode = [&](const at::Tensor& part) {
    return options.tiling ? decode_tiled(config, w, part, options)
                          : vae_decode_raw(config, w, part);
  };
  if (!options.slicing || z.size(0) == 1) return decode(z).clamp(0.0, 1.0);
  std::vector<at::Tensor> images;
  images.reserve(static_cast<std::size_t>(z.size(0)));
  for (std::int64_t i = 0; i < z.size(0); ++i) {
    images.push_back(decode(z.slice(0, i, i + 1)).clamp(0.0, 1.0));
  }
  return at::cat(images, 0);
}

// ---------------------------------------------------------------------------------------------
// DiT

namespace models_impl {

constexpr std::int64_t kTimeFrequencies = 256;

at::Tensor timestep_embedding(const Weights& w, const at::Tensor& t) {
  const at::Tensor e = sincos(t.to(at::kFloat) * 1000.0, kTimeFrequencies);
  return w.linear("t_embed.fc2", at::silu(w.linear("t_embed.fc1", e)));
}

}  // namespace models_impl

at::Tensor dit_forward(const DitConfig& config, const Weights& w, const at::Tensor& x_in,
                       const at::Tensor& t, const TextEncoding& text,
                       const AttentionOptions& attention_options) {
  const bool video = config.frames > 0;
  const int c = config.latent_channels;
  const int s = config.latent_size;
  const int p = config.patch;
  const bool shape_ok =
      video ? (x_in.dim() == 5 && x_in.size(1) == config.frames && x_in.size(2) == c &&
               x_in.size(3) == s && x_in.size(4) == s)
            : (x_in.dim() == 4 && x_in.size(1) == c && x_in.size(2) == s && x_in.size(3) == s);
  if (!shape_ok) {
    fail(ErrorCode::InvalidArgument, "DiT: latents must be {}[B, {}, {}, {}], got {}",
         video ? fmt::format("[B, {}, ...] clips of ", config.frames) : std::string(), c, s, s,
         shape_text(x_in.sizes()));
  }
  const auto b = x_in.size(0);
  if (t.dim() != 1 || t.size(0) != b || text.tokens.size(0) != b || text.pooled.size(0) != b) {
    fail(ErrorCode::InvalidArgument,
         "DiT: t {} and the text encoding (batch {}) must match the latents' batch {}",
         shape_text(t.sizes()), text.tokens.size(0), b);
  }
  const std::int64_t frames = video ? config.frames : 1;
  const std::int64_t g = s / p;
  const std::int64_t tokens = g * g;
  const std::int64_t d = config.width;

  // Patchify: [B·T, C, h, w] → [B·T, tokens, C·p·p].
  const at::Tensor x = x_in.to(at::kFloat).reshape({b * frames, c, g, p, g, p});
  at::Tensor h =
      w.linear("x_embed", x.permute({0, 2, 4, 1, 3, 5}).reshape({b * frames, tokens, c * p * p}));
  h = h + sincos_2d(g, d).to(h.device()).unsqueeze(0);
  h = h.view({b, frames * tokens, d});
  if (video) {
    const at::Tensor frame_pos = sincos(at::arange(frames, at::kFloat), d);
    h = h + frame_pos.repeat_interleave(tokens, 0).to(h.device()).unsqueeze(0);
  }

  const at::Tensor cond = at::silu(timestep_embedding(w, t) + w.linear("text_proj", text.pooled));
  const auto within_frames = [&](const at::Tensor& a) {
    return a.reshape({b * frames, tokens, d});
  };
  const auto across_frames = [&](const at::Tensor& a) {
    return a.reshape({b, frames, tokens, d}).transpose(1, 2).reshape({b * tokens, frames, d});
  };
  const auto from_across = [&](const at::Tensor& a) {
    return a.reshape({b, tokens, frames, d}).transpose(1, 2).reshape({b, frames * tokens, d});
  };

  for (int i = 0; i < config.depth; ++i) {
    const std::string pre = fmt::format("blocks.{}", i);
    const auto mod = w.linear(pre + ".modulation", cond).chunk(9, 1);
    // Spatial self-attention (within each frame).
    at::Tensor a = within_frames(modulate(h, mod[0], mod[1]));
    a = attend(w, pre + ".attn", a, a, config.heads, {}, attention_options);
    h = h + mod[2].unsqueeze(1) * a.reshape({b, frames * tokens, d});
    if (video) {
      const auto tmod = w.linear(pre + ".temporal_modulation", cond).chunk(3, 1);
      at::Tensor ta = across_frames(modulate(h, tmod[0], tmod[1]));
      ta = attend(w, pre + ".temporal", ta, ta, config.heads, {}, attention_options);
      h = h + tmod[2].unsqueeze(1) * from_across(ta);
    }
    const at::Tensor q = modulate(h, mod[3], mod[4]);
    h = h + mod[5].unsqueeze(1) * attend(w, pre + ".cross", q, text.tokens, config.heads, text.mask,
                                         attention_options);
    h = h + mod[8].unsqueeze(1) * mlp(w, pre + ".mlp", modulate(h, mod[6], mod[7]));
  }
  const auto fmod = w.linear("final_layer.modulation", cond).chunk(2, 1);
  at::Tensor out = w.linear("final_layer.linear", modulate(h, fmod[0], fmod[1]));
  // Unpatchify: [B, T·tokens, p·p·C] → [B·T, C, h, w].
  out = out.reshape({b * frames, g, g, c, p, p})
            .permute({0, 3, 1, 4, 2, 5})
            .reshape({b * frames, c, s, s});
  return video ? out.view({b, frames, c, s, s}) : out;
}

std::vector<std::string> dit_lora_modules(const DitConfig& config) {
  std::vector<std::string> modules;
  for (int i = 0; i < config.depth; ++i) {
    std::vector<std::string> groups{"attn", "cross"};
    if (config.frames > 0) groups.emplace_back("temporal");
    for (const auto& group : groups) {
      for (const char* proj : {"q", "k", "v", "o"}) {
        modules.push_back(fmt::format("blocks.{}.{}.{}", i, group, proj));
      }
    }
    modules.push_back(fmt::format("blocks.{}.mlp.fc1", i));
    modules.push_back(fmt::format("blocks.{}.mlp.fc2", i));
    modules.push_back(fmt::format("blocks.{}.modulation", i));
  }
  return modules;
}

// ---------------------------------------------------------------------------------------------
// Configurations

namespace models_impl {

using nlohmann::json;

/// A field of a configuration read from a file: present, of the right type, in range.
template <class T>
T field(const json& j, const char* key, std::string_view file, T min_value) {
  if (!j.contains(key)) fail(ErrorCode::Corrupt, "{}: configuration has no '{}'", file, key);
  const json& v = j.at(key);
  if constexpr (std::is_integral_v<T>) {
    if (!v.is_number_integer()) {
      fail(ErrorCode::Corrupt, "{}: configuration field '{}' is not an integer", file, key);
    }
  } else {
    if (!v.is_number()) {
      fail(ErrorCode::Corrupt, "{}: configuration field '{}' is not a number", file, key);
    }
  }
  const T value = v.get<T>();
  if (!(value >= min_value) || value > T(1 << 20)) {
    fail(ErrorCode::Corrupt, "{}: configuration field '{}' = {} is out of range", file, key, value);
  }
  return value;
}

json parse(std::string_view text, std::string_view file) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    fail(ErrorCode::Corrupt, "{}: configuration metadata is not a JSON object", file);
  }
  return j;
}

void check_divides(std::string_view file, const char* what, int a, int b) {
  if (a % b != 0) fail(ErrorCode::Corrupt, "{}: {} ({}) is not a multiple of {}", file, what, a, b);
}

}  // namespace models_impl

std::string to_json(const TextEncoderConfig& c) {
  return json{{"vocab_size", c.vocab_size}, {"max_tokens", c.max_tokens},
              {"width", c.width},           {"layers", c.layers},
              {"heads", c.heads},           {"mlp_ratio", c.mlp_ratio}}
      .dump();
}

std::string to_json(const VaeConfig& c) {
  return json{{"channels", c.channels},
              {"latent_channels", c.latent_channels},
              {"widths", c.widths},
              {"groups", c.groups},
              {"scale_factor", c.scale_factor}}
      .dump();
}

std::string to_json(const DitConfig& c) {
  return json{{"latent_channels", c.latent_channels},
              {"latent_size", c.latent_size},
              {"patch", c.patch},
              {"width", c.width},
              {"depth", c.depth},
              {"heads", c.heads},
              {"mlp_ratio", c.mlp_ratio},
              {"text_width", c.text_width},
              {"frames", c.frames}}
      .dump();
}

TextEncoderConfig text_encoder_config_from_json(std::string_view text, std::string_view file) {
  const json j = parse(text, file);
  TextEncoderConfig c;
  c.vocab_size = field<int>(j, "vocab_size", file, 2);
  c.max_tokens = field<int>(j, "max_tokens", file, 1);
  c.width = field<int>(j, "width", file, 2);
  c.layers = field<int>(j, "layers", file, 0);
  c.heads = field<int>(j, "heads", file, 1);
  c.mlp_ratio = field<int>(j, "mlp_ratio", file, 1);
  check_divides(file, "width", c.width, c.heads);
  return c;
}

VaeConfig vae_config_from_json(std::string_view text, std::string_view file) {
  const json j = parse(text, file);
  VaeConfig c;
  c.channels = field<int>(j, "channels", file, 1);
  c.latent_channels = field<int>(j, "latent_channels", file, 1);
  c.groups = field<int>(j, "groups", file, 1);
  c.scale_factor = field<double>(j, "scale_factor", file, 1e-6);
  if (!j.contains("widths") || !j.at("widths").is_array() || j.at("widths").size() != 3) {
    fail(ErrorCode::Corrupt, "{}: configuration field 'widths' is not an array of 3", file);
  }
  c.widths.clear();
  for (const json& v : j.at("widths")) {
    if (!v.is_number_integer() || v.get<int>() < 1 || v.get<int>() > (1 << 16)) {
      fail(ErrorCode::Corrupt, "{}: configuration field 'widths' holds a bad width", file);
    }
    c.widths.push_back(v.get<int>());
    check_divides(file, "a VAE width", c.widths.back(), c.groups);
  }
  return c;
}

DitConfig dit_config_from_json(std::string_view text, std::string_view file) {
  const json j = parse(text, file);
  DitConfig c;
  c.latent_channels = field<int>(j, "latent_channels", file, 1);
  c.latent_size = field<int>(j, "latent_size", file, 1);
  c.patch = field<int>(j, "patch", file, 1);
  c.width = field<int>(j, "width", file, 4);
  c.depth = field<int>(j, "depth", file, 0);
  c.heads = field<int>(j, "heads", file, 1);
  c.mlp_ratio = field<int>(j, "mlp_ratio", file, 1);
  c.text_width = field<int>(j, "text_width", file, 1);
  c.frames = field<int>(j, "frames", file, 0);
  check_divides(file, "latent_size", c.latent_size, c.patch);
  check_divides(file, "width", c.width, c.heads);
  check_divides(file, "width", c.width, 4);  // the 2-D sin-cos embedding splits it in four
  return c;
}

std::string read_config_json(const std::filesystem::path& path, std::string_view expected_kind) {
  const models::SafetensorsFile file = models::SafetensorsFile::open(path);
  const auto& metadata = file.metadata();
  const auto kind = metadata.find(std::string(kKindMetadataKey));
  if (kind == metadata.end()) {
    fail(ErrorCode::Corrupt, "{}: no '{}' metadata: not an apo reference model", path.string(),
         kKindMetadataKey);
  }
  if (kind->second != expected_kind) {
    fail(ErrorCode::Corrupt, "{}: holds a reference '{}', expected '{}'", path.string(),
         kind->second, expected_kind);
  }
  const auto config = metadata.find(std::string(kConfigMetadataKey));
  if (config == metadata.end()) {
    fail(ErrorCode::Corrupt, "{}: no '{}' metadata", path.string(), kConfigMetadataKey);
  }
  return config->second;
}

TextEncoderConfig read_text_encoder_config(const std::filesystem::path& path) {
  return text_encoder_config_from_json(read_config_json(path, "text_encoder"), path.string());
}

VaeConfig read_vae_config(const std::filesystem::path& path) {
  return vae_config_from_json(read_config_json(path, "vae"), path.string());
}

DitConfig read_dit_config(const std::filesystem::path& path) {
  const models::SafetensorsFile file = models::SafetensorsFile::open(path);
  const auto kind = file.metadata().find(std::string(kKindMetadataKey));
  const bool video = kind != file.metadata().end() && kind->second == "video_dit";
  const DitConfig config = dit_config_from_json(
      read_config_json(path, video ? "video_dit" : "image_dit"), path.string());
  if ((config.frames > 0) != video) {
    fail(ErrorCode::Corrupt, "{}: a {} with frames = {}", path.string(),
         video ? "video_dit" : "image_dit", config.frames);
  }
  return config;
}

// ---------------------------------------------------------------------------------------------
// Initialisation

namespace models_impl {

struct Init {
  at::Generator gen;
  std::map<std::string, at::Tensor> t;

  /// Xavier-uniform weight [out, in] and a zero bias.
  void linear(const std::string& name, std::int64_t in, std::int64_t out, bool zero = false) {
    const double bound = std::sqrt(6.0 / static_cast<double>(in + out));
    t[weight_name(name)] =
        zero ? at::zeros({out, in}) : at::empty({out, in}).uniform_(-bound, bound, gen);
    t[bias_name(name)] = at::zeros({out});
  }
  void conv(const std::string& name, std::int64_t in, std::int64_t out) {
    const double bound = std::sqrt(6.0 / static_cast<double>((in + out) * 9));
    t[weight_name(name)] = at::empty({out, in, 3, 3}).uniform_(-bound, bound, gen);
    t[bias_name(name)] = at::zeros({out});
  }
  void norm(const std::string& name, std::int64_t width) {
    t[weight_name(name)] = at::ones({width});
    t[bias_name(name)] = at::zeros({width});
  }
  at::Tensor normal(at::IntArrayRef shape, double std) {
    return at::empty(shape).normal_(0.0, std, gen);
  }
  void attention(const std::string& p, std::int64_t d, std::int64_t d_kv) {
    linear(p + ".q", d, d);
    linear(p + ".k", d_kv, d);
    linear(p + ".v", d_kv, d);
    linear(p + ".o", d, d);
  }
  void mlp(const std::string& p, std::int64_t d, std::int64_t ratio) {
    linear(p + ".fc1", d, d * ratio);
    linear(p + ".fc2", d * ratio, d);
  }
};

}  // namespace models_impl

std::map<std::string, at::Tensor> init_text_encoder(const TextEncoderConfig& c,
                                                    at::Generator generator) {
  Init init{std::move(generator), {}};
  const std::int64_t d = c.width;
  init.t["token_embed.weight"] = init.normal({c.vocab_size, d}, 0.02);
  init.t["start_embed"] = init.normal({d}, 0.02);
  init.t["pos_embed"] = init.normal({c.max_tokens + 1, d}, 0.02);
  for (int i = 0; i < c.layers; ++i) {
    const std::string p = fmt::format("layers.{}", i);
    init.norm(p + ".norm1", d);
    init.attention(p + ".attn", d, d);
    init.norm(p + ".norm2", d);
    init.mlp(p + ".mlp", d, c.mlp_ratio);
  }
  init.norm("final_norm", d);
  return init.t;
}

std::map<std::string, at::Tensor> init_vae(const VaeConfig& c, at::Generator generator) {
  check_vae_config(c);
  Init init{std::move(generator), {}};
  const std::int64_t w0 = c.widths[0], w1 = c.widths[1], w2 = c.widths[2];
  const auto res = [&](const std::string& p, std::int64_t width) {
    init.norm(p + ".norm1", width);
    init.conv(p + ".conv1", width, width);
    init.norm(p + ".norm2", width);
    init.conv(p + ".conv2", width, width);
  };
  init.conv("encoder.conv_in", c.channels, w0);
  init.norm("encoder.down1.norm", w0);
  init.conv("encoder.down1.conv", w0, w1);
  init.norm("encoder.down2.norm", w1);
  init.conv("encoder.down2.conv", w1, w2);
  res("encoder.res", w2);
  init.norm("encoder.norm_out", w2);
  init.conv("encoder.conv_out", w2, 2 * c.latent_channels);
  init.conv("decoder.conv_in", c.latent_channels, w2);
  res("decoder.res", w2);
  init.norm("decoder.up1.norm", w2);
  init.conv("decoder.up1.conv", w2, w1);
  init.norm("decoder.up2.norm", w1);
  init.conv("decoder.up2.conv", w1, w0);
  init.norm("decoder.norm_out", w0);
  init.conv("decoder.conv_out", w0, c.channels);
  return init.t;
}

std::map<std::string, at::Tensor> init_dit(const DitConfig& c, at::Generator generator) {
  Init init{std::move(generator), {}};
  const std::int64_t d = c.width;
  const std::int64_t patch_dim = static_cast<std::int64_t>(c.latent_channels) * c.patch * c.patch;
  init.linear("x_embed", patch_dim, d);
  init.t["t_embed.fc1.weight"] = init.normal({d, kTimeFrequencies}, 0.02);
  init.t["t_embed.fc1.bias"] = at::zeros({d});
  init.t["t_embed.fc2.weight"] = init.normal({d, d}, 0.02);
  init.t["t_embed.fc2.bias"] = at::zeros({d});
  init.linear("text_proj", c.text_width, d);
  for (int i = 0; i < c.depth; ++i) {
    const std::string p = fmt::format("blocks.{}", i);
    // adaLN-zero: every residual branch starts closed.
    init.linear(p + ".modulation", d, 9 * d, true);
    init.attention(p + ".attn", d, d);
    if (c.frames > 0) {
      init.linear(p + ".temporal_modulation", d, 3 * d, true);
      init.attention(p + ".temporal", d, d);
    }
    init.attention(p + ".cross", d, c.text_width);
    init.mlp(p + ".mlp", d, c.mlp_ratio);
  }
  init.linear("final_layer.modulation", d, 2 * d, true);
  init.linear("final_layer.linear", d, patch_dim, true);
  return init.t;
}

}  // namespace apo::ref

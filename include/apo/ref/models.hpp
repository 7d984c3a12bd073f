#pragma once

/// @file
/// @brief The reference models, defined once for training and inference: a text encoder over the
/// caption vocabulary, an image VAE (RGBA 64×64 ↔ 4×16×16 latents), an image DiT and a video DiT
/// (rectified flow, adaLN-zero conditioning, cross-attention to the text tokens), and the weight
/// sources their forward passes read parameters through.
///
/// A forward pass takes its configuration and a Weights: TensorWeights over trainable tensors
/// while training, ModelWeights over an apo::models::Model (weights possibly fp8 or int8, linear
/// layers through quant::qlinear) at inference, LoraWeights for an unmerged LoRA on top of
/// either. Each model file carries its configuration as JSON in its safetensors metadata
/// (kConfigMetadataKey), so inference builds from the file alone.

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include "apo/quant/qlinear.hpp"
#include "apo/ref/attention.hpp"

namespace apo::models {
class Model;
}  // namespace apo::models

namespace apo::ref {

// ---------------------------------------------------------------------------------------------
// Weight sources

/// @brief Where a forward pass reads its parameters: dense tensors by name, and linear layers
/// ("<name>.weight" [out, in] and an optional "<name>.bias").
class Weights {
 public:
  virtual ~Weights() = default;
  /// @brief The tensor of this name in float32 (or its trainable dtype).
  /// @throws apo::Error NotFound naming the tensor
  virtual at::Tensor tensor(std::string_view name) const = 0;
  /// @brief y = x Wᵀ + b for the layer `name`.
  /// @throws apo::Error NotFound naming the weight
  virtual at::Tensor linear(std::string_view name, const at::Tensor& x) const = 0;
  /// @brief Whether a tensor of this name exists.
  virtual bool contains(std::string_view name) const = 0;
};

/// @brief Weights of an apo::models::Model: linear layers run quant::qlinear on quantized weights
/// (plain at::linear on unquantized ones, in float32); other tensors are dequantized to float32.
/// Holds a reference: the model must outlive it (build one per lease).
class ModelWeights final : public Weights {
 public:
  explicit ModelWeights(const models::Model& model, quant::QLinearOptions options = {});
  at::Tensor tensor(std::string_view name) const override;
  at::Tensor linear(std::string_view name, const at::Tensor& x) const override;
  bool contains(std::string_view name) const override;

 private:
  const models::Model* model_;
  quant::QLinearOptions options_;
};

/// @brief Weights held as named tensors (trainable ones while training).
class TensorWeights final : public Weights {
 public:
  TensorWeights() = default;
  explicit TensorWeights(std::map<std::string, at::Tensor> tensors);
  at::Tensor tensor(std::string_view name) const override;
  at::Tensor linear(std::string_view name, const at::Tensor& x) const override;
  bool contains(std::string_view name) const override;

  const std::map<std::string, at::Tensor>& tensors() const noexcept { return tensors_; }
  std::map<std::string, at::Tensor>& tensors() noexcept { return tensors_; }

 private:
  std::map<std::string, at::Tensor> tensors_;
};

/// @brief One LoRA pair on the linear layer "<module>.weight": delta = scale · up · down.
struct LoraFactors {
  at::Tensor down;  ///< [rank, in]
  at::Tensor up;    ///< [out, rank]
  double alpha = 0;
};

/// @brief A base Weights with LoRA pairs added to some linear layers, unmerged:
/// linear(x) = base(x) + strength · alpha / rank · (x downᵀ) upᵀ. Trains the lightning LoRAs;
/// holds a reference to `base`.
class LoraWeights final : public Weights {
 public:
  LoraWeights(const Weights& base, std::map<std::string, LoraFactors> layers,
              double strength = 1.0);
  at::Tensor tensor(std::string_view name) const override;
  at::Tensor linear(std::string_view name, const at::Tensor& x) const override;
  bool contains(std::string_view name) const override;

  const std::map<std::string, LoraFactors, std::less<>>& layers() const noexcept { return layers_; }

 private:
  const Weights* base_;
  std::map<std::string, LoraFactors, std::less<>> layers_;
  double strength_;
};

// ---------------------------------------------------------------------------------------------
// Files

/// @brief Metadata key of the model's configuration (JSON) in its safetensors file.
inline constexpr std::string_view kConfigMetadataKey = "apo.reference.config";
/// @brief Metadata key of the model's kind: "text_encoder", "vae", "image_dit", "video_dit",
/// "lora".
inline constexpr std::string_view kKindMetadataKey = "apo.reference.kind";
/// @brief Metadata key of how the model was made (JSON: seed, steps, losses, seconds).
inline constexpr std::string_view kTrainingMetadataKey = "apo.reference.training";

/// @brief The names of the committed reference files.
namespace files {
inline constexpr std::string_view text_encoder = "text_encoder.safetensors";
inline constexpr std::string_view vae = "vae.safetensors";
inline constexpr std::string_view image_dit = "image_dit.safetensors";
inline constexpr std::string_view video_dit = "video_dit.safetensors";
inline constexpr std::string_view image_lightning = "image_lightning.safetensors";
inline constexpr std::string_view video_lightning = "video_lightning.safetensors";
}  // namespace files

/// @brief Reads the kind and configuration JSON a reference model file carries.
/// @throws apo::Error NotFound (no file), Corrupt naming the file (no such metadata, bad JSON,
/// a kind other than `expected_kind`)
std::string read_config_json(const std::filesystem::path& path, std::string_view expected_kind);

// ---------------------------------------------------------------------------------------------
// Text encoder

/// @brief Token embedding, a learned start token (always attended, so an empty caption never
/// masks a whole row), learned positions, pre-LN transformer layers, a final LayerNorm.
struct TextEncoderConfig {
  int vocab_size = 0;  ///< token ids 0..vocab_size-1; 0 is padding
  int max_tokens = 0;  ///< caption tokens (the start token comes on top)
  int width = 128;
  int layers = 2;
  int heads = 4;
  int mlp_ratio = 4;
};

/// @brief Token features of a batch of captions.
struct TextEncoding {
  at::Tensor tokens;  ///< [B, 1 + L, width], the start token first
  at::Tensor mask;    ///< bool [B, 1 + L], true = a real token (the start token always is)
  at::Tensor pooled;  ///< [B, width]: the mean over real tokens
};

/// @brief Encodes token ids (int64 [B, L], 0-padded, L <= max_tokens).
/// @throws apo::Error InvalidArgument (ids of the wrong shape or outside the vocabulary)
TextEncoding encode_text(const TextEncoderConfig& config, const Weights& weights,
                         const at::Tensor& token_ids, const AttentionOptions& attention = {});

// ---------------------------------------------------------------------------------------------
// VAE

/// @brief A convolutional KL autoencoder: images [N, channels, H, W] in [0, 1] ↔ latents
/// [N, latent_channels, H/4, W/4]. The encoder normalizes with GroupNorm; the decoder normalizes
/// channel groups per position (no statistics over space), so that a tile decodes like the
/// same region of the whole.
struct VaeConfig {
  int channels = 4;
  int latent_channels = 4;
  std::vector<int> widths{32, 64, 64};  ///< at full, 1/2 and 1/4 resolution
  int groups = 8;
  /// Latents are multiplied by this after encoding (1/std of the training latents) and divided
  /// before decoding, so the diffusion models see unit variance.
  double scale_factor = 1.0;
};

/// @brief The downsampling factor of the VAE (4).
inline constexpr int kVaeDownsampling = 4;

/// @brief The encoder's posterior, unscaled: mean and log-variance [N, latent_channels, h, w].
struct VaeMoments {
  at::Tensor mean;
  at::Tensor logvar;
};

/// @brief The posterior of images [N, channels, H, W] (H, W multiples of 4), unscaled.
VaeMoments vae_moments(const VaeConfig& config, const Weights& weights, const at::Tensor& images);

/// @brief Deterministic latents: the posterior mean times scale_factor. Accepts [N, C, H, W] and
/// clips [N, T, C, H, W].
at::Tensor vae_encode(const VaeConfig& config, const Weights& weights, const at::Tensor& images);

/// @brief The guide's VAE slicing and tiling.
struct VaeDecodeOptions {
  bool slicing = false;  ///< decode one image (or frame) at a time
  bool tiling = false;   ///< decode overlapping latent tiles, blended linearly over the overlap
  int tile_latents = 8;  ///< tile side in latent pixels
  int tile_overlap = 4;  ///< overlap of neighbouring tiles in latent pixels (< tile_latents)
};

/// @brief Images in [0, 1] from scaled latents: [N, latent_channels, h, w] → [N, channels, 4h,
/// 4w], or clips [N, T, ...] → [N, T, ...]. Slicing and tiling give (nearly) the same pixels as
/// the plain decode with lower peak memory.
/// @throws apo::Error InvalidArgument (wrong shape, tile options out of range)
at::Tensor vae_decode(const VaeConfig& config, const Weights& weights, const at::Tensor& latents,
                      const VaeDecodeOptions& options = {});

/// @brief The decoder output before the clamp to [0, 1] (the training loss sees it).
at::Tensor vae_decode_raw(const VaeConfig& config, const Weights& weights,
                          const at::Tensor& unscaled_latents);

// ---------------------------------------------------------------------------------------------
// DiT

/// @brief A diffusion transformer over latents predicting the rectified-flow velocity
/// v = ε − x0 for x_t = (1 − t)·x0 + t·ε. frames = 0: an image model over [B, C, h, w];
/// frames > 0: a video model over [B, frames, C, h, w] with spatial attention within each frame,
/// temporal attention across frames at each location, and a frame position embedding.
struct DitConfig {
  int latent_channels = 4;
  int latent_size = 16;  ///< h = w of the latents
  int patch = 2;
  int width = 128;
  int depth = 4;
  int heads = 4;
  int mlp_ratio = 2;
  int text_width = 128;
  int frames = 0;

  int tokens_per_frame() const { return (latent_size / patch) * (latent_size / patch); }
};

/// @brief The velocity for latents x at flow times t ([B] in [0, 1]) given the text encoding
/// (its batch equals x's). All attention goes through ref::attention with `attention`.
/// @throws apo::Error InvalidArgument (shapes that do not fit the configuration)
at::Tensor dit_forward(const DitConfig& config, const Weights& weights, const at::Tensor& x,
                       const at::Tensor& t, const TextEncoding& text,
                       const AttentionOptions& attention = {});

/// @brief Names of the DiT's linear layers a lightning LoRA adapts (attention and MLP
/// projections of every block), without ".weight".
std::vector<std::string> dit_lora_modules(const DitConfig& config);

// ---------------------------------------------------------------------------------------------
// Configurations in files and parameter initialisation

std::string to_json(const TextEncoderConfig& config);
std::string to_json(const VaeConfig& config);
std::string to_json(const DitConfig& config);
/// @brief Parse a configuration; `file` names the source in errors.
/// @throws apo::Error Corrupt naming `file` and the field at fault
TextEncoderConfig text_encoder_config_from_json(std::string_view json, std::string_view file);
VaeConfig vae_config_from_json(std::string_view json, std::string_view file);
DitConfig dit_config_from_json(std::string_view json, std::string_view file);

/// @brief The configuration stored in a model file. @throws like read_config_json
TextEncoderConfig read_text_encoder_config(const std::filesystem::path& path);
VaeConfig read_vae_config(const std::filesystem::path& path);
/// @brief Either DiT ("image_dit" or "video_dit").
DitConfig read_dit_config(const std::filesystem::path& path);

/// @brief Freshly initialised parameters (float32), drawn from `generator`.
std::map<std::string, at::Tensor> init_text_encoder(const TextEncoderConfig& config,
                                                    at::Generator generator);
std::map<std::string, at::Tensor> init_vae(const VaeConfig& config, at::Generator generator);
std::map<std::string, at::Tensor> init_dit(const DitConfig& config, at::Generator generator);

}  // namespace apo::ref

#pragma once

/// @file
/// @brief LoRA adapters (the guide's Lightning LoRA): low-rank pairs read from the key layouts
/// that ComfyUI, kohya/musubi and diffusers/PEFT write, bound to a model's weight names, and the
/// weight deltas they add.
///
/// A layer's delta is strength × alpha / rank × up · down (for a convolution, the same on the
/// flattened kernels, reshaped back). alpha defaults to the rank when the file has none.

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

namespace apo::models {

/// @brief One low-rank pair: `down` is [rank, in, ...], `up` is [out, rank, ...].
struct LoraLayer {
  std::string module;  ///< the module as the file names it: "lora_unet_blocks_0_self_attn_q"
  at::Tensor down;
  at::Tensor up;
  std::optional<double> alpha;

  std::int64_t rank() const { return down.size(0); }
  /// @brief strength × alpha / rank × up · down, shaped like the target weight, in float32.
  at::Tensor delta(double strength, at::IntArrayRef weight_shape) const;
};

/// @brief A LoRA layer matched to the model weight it changes.
struct LoraTarget {
  const LoraLayer* layer;
  std::string weight;  ///< the model's weight name: "blocks.0.self_attn.q.weight"
};

/// @brief The result of matching an adapter to a model's weights.
struct LoraBinding {
  std::vector<LoraTarget> targets;
  std::vector<std::string> unmatched;  ///< layers no weight of the model matches
};

class LoraAdapter {
 public:
  /// @brief Reads a LoRA safetensors file (compressed ones too).
  /// @throws apo::Error NotFound, Corrupt (a file that is not a LoRA: no pairs, a pair missing
  /// its other half, shapes that do not chain, LoHa/LoKr layers apo does not merge)
  static LoraAdapter load(const std::filesystem::path& path);
  /// @brief Builds an adapter from named tensors in any of the supported layouts.
  static LoraAdapter from_tensors(std::string name,
                                  const std::map<std::string, at::Tensor>& tensors);

  const std::string& name() const noexcept { return name_; }
  const std::vector<LoraLayer>& layers() const noexcept { return layers_; }

  /// @brief Matches each layer to one of `weight_names`, trying the layouts in turn: the module
  /// name plus ".weight"; without a known prefix ("diffusion_model.", "transformer.", "unet.",
  /// "base_model.model.", ...); and kohya's underscore form ("lora_unet_" + dots as
  /// underscores).
  LoraBinding bind(const std::vector<std::string>& weight_names) const;

 private:
  std::string name_;
  std::vector<LoraLayer> layers_;
};

}  // namespace apo::models

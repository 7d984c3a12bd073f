#pragma once

/// @file
/// @brief How a model is asked for: its file, its kind (which decides sharing), the precision
/// wanted, and the LoRAs to apply. Light on purpose: requests and workflows name models with it.

#include <array>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "apo/core/enum_names.hpp"
#include "apo/core/settings.hpp"

namespace apo::models {

/// @brief What a model is for; decides what may be shared (the guide's SharedModelManager).
enum class ModelKind { text_encoder, vae, diffusion, lora, other };

}  // namespace apo::models

template <>
struct apo::EnumTraits<apo::models::ModelKind> {
  static constexpr std::string_view noun = "model kind";
  static constexpr std::array<EnumEntry<models::ModelKind>, 5> entries{{
      {models::ModelKind::text_encoder, "text_encoder"},
      {models::ModelKind::vae, "vae"},
      {models::ModelKind::diffusion, "diffusion"},
      {models::ModelKind::lora, "lora"},
      {models::ModelKind::other, "other"},
  }};
};

namespace apo::models {

using apo::to_string;

/// @brief Text encoders and VAEs serve every workflow; other kinds are shared only when the
/// very same file, precision and device are asked for.
constexpr bool shared_between_workflows(ModelKind kind) noexcept {
  return kind == ModelKind::text_encoder || kind == ModelKind::vae;
}

/// @brief A request for a model.
struct ModelRef {
  /// The file; a relative path is found under storage_optimization.model_cache_path.
  std::filesystem::path path;
  ModelKind kind = ModelKind::other;
  /// The weight precision; unset: the quantization policy decides (by default
  /// performance_optimization.model_precision).
  std::optional<Precision> precision;
  /// The workflow asking, for the sharing rules.
  std::string workflow;
};

/// @brief A LoRA to apply while a lease is held, with its strength.
struct LoraRequest {
  std::filesystem::path path;
  double strength = 1.0;

  friend bool operator==(const LoraRequest&, const LoraRequest&) = default;
};

}  // namespace apo::models

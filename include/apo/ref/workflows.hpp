#pragma once

/// @file
/// @brief The guide's eight workflows on the reference models: hunyuan_t2v and hunyuan_i2v (the
/// video model), wan_inpaint, wan_alpha, newbie_anime, qwen_edit, qwen_relight and qwen_layered
/// (the image model), as engine::Workflow implementations that honour their blocks of the
/// configuration.

#include <array>
#include <filesystem>
#include <memory>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

#include "apo/core/config.hpp"
#include "apo/engine/workflow.hpp"

namespace apo::ref {

/// @brief The workflows' names, as requests give them.
inline constexpr std::array<std::string_view, 8> kWorkflowNames{
    "hunyuan_t2v",  "hunyuan_i2v", "wan_inpaint",  "wan_alpha",
    "newbie_anime", "qwen_edit",   "qwen_relight", "qwen_layered"};

struct ReferenceWorkflowOptions {
  /// The reference model files (see default_models_dir).
  std::filesystem::path models_dir;
  /// The configuration whose workflow blocks (hunyuan_optimization, wan_optimization,
  /// newbie_optimization, qwen_optimization) the workflows honour.
  Config config;
  /// Score each output against its prompt with the judge (Result::quality).
  bool judge_outputs = true;
};

/// @brief Where the reference models are: $APO_REFERENCE_MODELS when set, else the source tree's
/// assets/reference, where they are committed.
std::filesystem::path default_models_dir();

/// @brief The eight workflows, in kWorkflowNames' order, sharing the model files and their
/// configurations (read once here).
/// @throws apo::Error NotFound / Corrupt for missing or broken model files
std::vector<std::shared_ptr<engine::Workflow>> make_reference_workflows(
    const ReferenceWorkflowOptions& options);

/// @brief Blends `blend` onto `base` (images in [0, 1], same shape) in the given mode, the
/// formulas of the W3C compositing specification (soft light: its piecewise form).
at::Tensor blend_images(const at::Tensor& base, const at::Tensor& blend, BlendMode mode);

/// @brief Straight-alpha "over": `layer` ([4, H, W]) over `below` ([3 or 4, H, W]).
at::Tensor composite_over(const at::Tensor& below, const at::Tensor& layer);

}  // namespace apo::ref

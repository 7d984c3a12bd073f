#include "apo/request/request.hpp"

#include <cmath>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "apo/core/error.hpp"

namespace apo {

std::string describe(const Request& request) {
  if (request.frames > 1) {
    return fmt::format("request {} ({} {}x{}x{}, {})", request.id, request.workflow, request.width,
                       request.height, request.frames, to_string(request.quality));
  }
  return fmt::format("request {} ({} {}x{}, {})", request.id, request.workflow, request.width,
                     request.height, to_string(request.quality));
}

namespace {

// An image input: floating point, [C, H, W] with 1, 3 or 4 channels, finite.
std::optional<std::string> image_problem(const at::Tensor& image, std::string_view what) {
  if (!at::isFloatingType(image.scalar_type())) {
    return fmt::format("{} must be a floating-point tensor, got {}", what,
                       c10::toString(image.scalar_type()));
  }
  if (image.dim() != 3 || (image.size(0) != 1 && image.size(0) != 3 && image.size(0) != 4)) {
    return fmt::format("{} must be [channels, height, width] with 1, 3 or 4 channels, got {}", what,
                       fmt::join(image.sizes(), "x"));
  }
  if (image.size(1) < 1 || image.size(1) > kMaxSidePixels || image.size(2) < 1 ||
      image.size(2) > kMaxSidePixels) {
    return fmt::format("{} is {}x{} pixels (each side 1 to {})", what, image.size(2), image.size(1),
                       kMaxSidePixels);
  }
  if (!at::isfinite(image).all().item<bool>()) {
    return fmt::format("{} holds NaN or infinity", what);
  }
  return std::nullopt;
}

std::optional<std::string> mask_problem(const at::Tensor& mask) {
  if (!at::isFloatingType(mask.scalar_type())) {
    return fmt::format("mask must be a floating-point tensor, got {}",
                       c10::toString(mask.scalar_type()));
  }
  const bool shaped = mask.dim() == 2 || (mask.dim() == 3 && mask.size(0) == 1);
  if (!shaped) {
    return fmt::format("mask must be [height, width] or [1, height, width], got {}",
                       fmt::join(mask.sizes(), "x"));
  }
  if (!at::isfinite(mask).all().item<bool>()) return std::string("mask holds NaN or infinity");
  return std::nullopt;
}

}  // namespace

void validate(const Request& request) {
  const auto bad = [&](std::string message) {
    throw Error(ErrorCode::InvalidArgument, std::move(message),
                fmt::format("request {}", request.id));
  };
  if (request.workflow.empty()) bad("workflow is empty");
  if (request.workflow.size() > kMaxNameBytes) {
    bad(fmt::format("workflow name is {} bytes (at most {})", request.workflow.size(),
                    kMaxNameBytes));
  }
  if (request.model.size() > kMaxNameBytes) {
    bad(fmt::format("model name is {} bytes (at most {})", request.model.size(), kMaxNameBytes));
  }
  if (request.prompt.size() > kMaxPromptBytes || request.negative_prompt.size() > kMaxPromptBytes) {
    bad(fmt::format("prompts may be at most {} bytes", kMaxPromptBytes));
  }
  if (request.width < 1 || request.width > kMaxSidePixels) {
    bad(fmt::format("width must be 1 to {}, got {}", kMaxSidePixels, request.width));
  }
  if (request.height < 1 || request.height > kMaxSidePixels) {
    bad(fmt::format("height must be 1 to {}, got {}", kMaxSidePixels, request.height));
  }
  if (request.frames < 1 || request.frames > kMaxFrames) {
    bad(fmt::format("frames must be 1 to {}, got {}", kMaxFrames, request.frames));
  }
  if (request.steps && (*request.steps < kSteps.min || *request.steps > kSteps.max)) {
    bad(fmt::format("steps must be {} to {}, got {}", kSteps.min, kSteps.max, *request.steps));
  }
  if (request.guidance &&
      !(*request.guidance >= kGuidance.min && *request.guidance <= kGuidance.max)) {
    bad(fmt::format("guidance must be {} to {}, got {}", kGuidance.min, kGuidance.max,
                    *request.guidance));
  }
  if (!(request.strength >= 0.0 && request.strength <= 1.0)) {
    bad(fmt::format("strength must be 0 to 1, got {}", request.strength));
  }
  if (request.loras.size() > kMaxLoras) {
    bad(fmt::format("{} LoRAs (at most {})", request.loras.size(), kMaxLoras));
  }
  for (const auto& lora : request.loras) {
    if (lora.path.empty()) bad("a LoRA has an empty path");
    if (!std::isfinite(lora.strength)) {
      bad(fmt::format("LoRA {} has strength {}", lora.path.string(), lora.strength));
    }
  }
  if (request.priority < 0) bad(fmt::format("priority must be >= 0, got {}", request.priority));
  if (request.memory_estimate_bytes < 0) {
    bad(fmt::format("memory_estimate_bytes must be >= 0, got {}", request.memory_estimate_bytes));
  }
  if (request.image.defined()) {
    if (auto problem = image_problem(request.image, "image")) bad(*problem);
  }
  if (request.first_frame.defined()) {
    if (auto problem = image_problem(request.first_frame, "first_frame")) bad(*problem);
  }
  if (request.mask.defined()) {
    if (auto problem = mask_problem(request.mask)) bad(*problem);
  }
}

}  // namespace apo

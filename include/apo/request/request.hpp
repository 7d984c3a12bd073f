#pragma once

/// @file
/// @brief apo::Request: one generation a caller asks for, with its inputs, as the scheduler, the
/// batcher, placement and the engine see it. The vocabulary layer below batch/, sched/ and
/// engine/: it includes only core/ and the light model reference.

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

#include "apo/core/clock.hpp"
#include "apo/core/enum_names.hpp"
#include "apo/core/settings.hpp"
#include "apo/models/model_ref.hpp"

namespace apo {

/// @brief Identifies a request among those an engine holds. The engine assigns it: unique among
/// the requests queued and running (ids are never reused in an engine's life).
using RequestId = std::uint64_t;

/// @brief The quality a request asks for: the guide's three profiles. The engine resolves the
/// steps, guidance and sampler a request leaves unset from its level.
enum class QualityLevel { speed_first, balanced, quality_first };

template <>
struct EnumTraits<QualityLevel> {
  static constexpr std::string_view noun = "quality level";
  static constexpr std::array<EnumEntry<QualityLevel>, 3> entries{{
      {QualityLevel::speed_first, "speed_first"},
      {QualityLevel::balanced, "balanced"},
      {QualityLevel::quality_first, "quality_first"},
  }};
};

/// @brief Largest width or height a request may ask for, in pixels.
inline constexpr int kMaxSidePixels = 16384;
/// @brief Most frames a video request may ask for.
inline constexpr int kMaxFrames = 10000;
/// @brief Longest workflow or model name, in bytes.
inline constexpr std::size_t kMaxNameBytes = 4096;
/// @brief Longest prompt, in bytes.
inline constexpr std::size_t kMaxPromptBytes = 1 << 16;
/// @brief Most LoRAs one request may apply.
inline constexpr std::size_t kMaxLoras = 16;

/// @brief Which optional inputs a request carries, as bits (part of its grouping key: requests
/// batch together only with the same kinds of input).
enum InputBits : std::uint8_t {
  kInputImage = 1,
  kInputMask = 2,
  kInputFirstFrame = 4,
};

/// @brief One generation: what to make (workflow, prompt, inputs, shape, sampling), how urgent
/// it is (priority, deadline), and what the engine stamps on it as it comes in (id, submit time,
/// memory estimate).
///
/// Images are float tensors in [0, 1], [channels, height, width] with 1, 3 or 4 channels, on any
/// device; a mask is [height, width] or [1, height, width], 1 where the image is repainted.
/// Workflows say which inputs they need and at what size (Workflow::check).
struct Request {
  std::string workflow;  ///< "hunyuan_t2v", "qwen_edit", ...
  std::string prompt;
  std::string negative_prompt;
  at::Tensor image;        ///< the input image (edit, relight, inpaint, img2img); undefined: none
  at::Tensor mask;         ///< the inpainting mask; undefined: none
  at::Tensor first_frame;  ///< the first frame of an image-to-video clip; undefined: none
  /// How much of the input image is repainted: 1 starts from noise, 0 keeps the input.
  double strength = 1.0;
  /// LoRAs merged into the workflow's diffusion model while the request runs.
  std::vector<models::LoraRequest> loras;
  /// The diffusion model file, where the workflow lets callers choose one; empty: its own.
  std::string model;

  int width = 1024;
  int height = 1024;
  int frames = 1;  ///< 1 for an image
  /// Sampling; unset: the engine resolves them from `quality` and the configuration.
  std::optional<int> steps;
  std::optional<double> guidance;
  std::optional<Sampler> sampler;
  QualityLevel quality = QualityLevel::balanced;

  /// Larger runs first. A scheduler accepts 0 to its priority levels − 1.
  int priority = 0;
  std::uint64_t seed = 0;
  /// The request ends TimedOut if it is still queued at this time; unset: no deadline.
  std::optional<Clock::time_point> deadline;

  /// Stamped by the engine (a caller's value is overwritten): see RequestId.
  RequestId id = 0;
  /// Stamped by the scheduler from its clock at submit.
  Clock::time_point submit_time{};
  /// Device memory one request of this shape adds to a batch (activations, latents), in bytes;
  /// the engine sets it from the workflow's estimate. 0: unknown (batches are then sized by
  /// count alone).
  std::int64_t memory_estimate_bytes = 0;

  /// @brief The InputBits of the inputs present.
  std::uint8_t inputs() const noexcept {
    return static_cast<std::uint8_t>((image.defined() ? kInputImage : 0) |
                                     (mask.defined() ? kInputMask : 0) |
                                     (first_frame.defined() ? kInputFirstFrame : 0));
  }
};

/// @brief "request 17 (hunyuan_t2v 1280x720x129, balanced)": for messages.
std::string describe(const Request& request);

/// @brief Throws Error(InvalidArgument) naming the first field of `request` that no workflow
/// could accept (sizes, sampling out of range, a negative priority, malformed or non-finite
/// input tensors); the context is "request ID".
void validate(const Request& request);

}  // namespace apo

#pragma once

/// @file
/// @brief apo::engine::Request: one generation a caller asks for, as the scheduler, the batcher
/// and the engine see it.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "apo/core/clock.hpp"
#include "apo/core/config.hpp"
#include "apo/core/error.hpp"
#include "apo/core/units.hpp"

namespace apo {
namespace engine {

/// @brief Identifies a request among those an engine holds; the caller (or the engine) chooses it.
using RequestId = std::uint64_t;

/// @brief The quality a request asks for: the guide's three profiles. Requests batch together only
/// at the same level, since the level sets steps, guidance and sampler.
enum class QualityLevel { speed_first, balanced, quality_first };

}  // namespace engine

template <>
struct EnumTraits<engine::QualityLevel> {
  static constexpr std::string_view noun = "quality level";
  static constexpr std::array<EnumEntry<engine::QualityLevel>, 3> entries{{
      {engine::QualityLevel::speed_first, "speed_first"},
      {engine::QualityLevel::balanced, "balanced"},
      {engine::QualityLevel::quality_first, "quality_first"},
  }};
};

namespace engine {

/// @brief Largest width or height a request may ask for, in pixels.
inline constexpr int kMaxSidePixels = 16384;
/// @brief Most frames a video request may ask for.
inline constexpr int kMaxFrames = 10000;
/// @brief Longest workflow name, in bytes.
inline constexpr std::size_t kMaxWorkflowNameBytes = 256;

/// @brief One generation: what to run (workflow, shape, sampling), how urgent it is (priority,
/// deadline) and what it costs (memory estimate).
///
/// The grouping key (workflow, width × height × frames, quality level) decides which requests
/// may share a batch. `submit_time` is stamped by the scheduler from its clock; a caller's value
/// is overwritten.
struct Request {
  RequestId id = 0;
  std::string workflow;  ///< "hunyuan_t2v", "qwen_edit", ...
  int width = 1024;
  int height = 1024;
  int frames = 1;  ///< 1 for an image
  int steps = 30;
  double guidance = 7.5;
  QualityLevel quality = QualityLevel::balanced;
  /// Larger runs first. A scheduler accepts 0 to its priority levels − 1.
  int priority = 0;
  std::uint64_t seed = 0;
  /// The request ends TimedOut if it is still queued at this time; unset: no deadline.
  std::optional<Clock::time_point> deadline;
  Clock::time_point submit_time{};
  /// Device memory one request of this shape adds to a batch (activations, latents), in bytes;
  /// 0 when unknown (the batcher then sizes batches by count alone).
  std::int64_t memory_estimate_bytes = 0;
};

/// @brief "request 17 (hunyuan_t2v 1280x720x129, balanced)": for messages.
inline std::string describe(const Request& request) {
  if (request.frames > 1) {
    return fmt::format("request {} ({} {}x{}x{}, {})", request.id, request.workflow, request.width,
                       request.height, request.frames, to_string(request.quality));
  }
  return fmt::format("request {} ({} {}x{}, {})", request.id, request.workflow, request.width,
                     request.height, to_string(request.quality));
}

/// @brief Throws Error(InvalidArgument) naming the first field of `request` that no workflow
/// could accept; the context is describe(request)'s "request ID".
inline void validate(const Request& request) {
  const auto bad = [&](std::string message) {
    throw Error(ErrorCode::InvalidArgument, std::move(message),
                fmt::format("request {}", request.id));
  };
  if (request.workflow.empty()) bad("workflow is empty");
  if (request.workflow.size() > kMaxWorkflowNameBytes) {
    bad(fmt::format("workflow name is {} bytes (at most {})", request.workflow.size(),
                    kMaxWorkflowNameBytes));
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
  if (request.steps < kSteps.min || request.steps > kSteps.max) {
    bad(fmt::format("steps must be {} to {}, got {}", kSteps.min, kSteps.max, request.steps));
  }
  if (!(request.guidance >= kGuidance.min && request.guidance <= kGuidance.max)) {
    bad(fmt::format("guidance must be {} to {}, got {}", kGuidance.min, kGuidance.max,
                    request.guidance));
  }
  if (request.priority < 0) bad(fmt::format("priority must be >= 0, got {}", request.priority));
  if (request.memory_estimate_bytes < 0) {
    bad(fmt::format("memory_estimate_bytes must be >= 0, got {}", request.memory_estimate_bytes));
  }
}

}  // namespace engine
}  // namespace apo

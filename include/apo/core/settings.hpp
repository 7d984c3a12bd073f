#pragma once

/// @file
/// @brief The vocabulary of settings: the enumerations a configuration names (strategy,
/// precision, sampler, ...), with their names, and the numeric ranges that requests and
/// configurations share. Light on purpose: requests, models and options include this, not the
/// whole configuration (config.hpp).

#include <array>
#include <limits>
#include <string_view>

#include "apo/core/enum_names.hpp"

namespace apo {

/// @brief How the engine trades memory, speed and quality.
enum class Strategy { speed_first, balanced, memory_first, quality_first };

/// @brief Weight precision. `automatic` ("auto") lets the engine choose from the memory it has.
enum class Precision { fp32, fp16, bf16, fp8_e4m3, fp8_e5m2, int8, automatic };

/// @brief Bytes one weight element takes in `precision` (fp32 4, fp16 and bf16 2, fp8 and int8
/// 1): how frugal two precisions are. 0 for "auto", which is chosen later to fit.
constexpr int bytes_per_element(Precision precision) noexcept {
  switch (precision) {
    case Precision::fp32:
      return 4;
    case Precision::fp16:
    case Precision::bf16:
      return 2;
    case Precision::fp8_e4m3:
    case Precision::fp8_e5m2:
    case Precision::int8:
      return 1;
    case Precision::automatic:
      return 0;
  }
  return 0;
}

/// @brief Samplers ("scheduler" in the guide's diffusers wording).
enum class Sampler {
  euler,
  euler_ancestral,
  heun,
  ddim,
  ddpm,
  dpm_solver_multistep,
  dpmpp_2m,
  dpmpp_2m_sde,
  unipc,
  lcm,
  flow_match_euler,
};

enum class NoiseSchedule { linear, cosine, karras, exponential };
/// @brief How queued requests are ordered: arrival order, or priority with aging.
enum class QueuePolicy { fifo, priority };
/// @brief How batch sizes are chosen: a fixed size, or from memory and throughput history.
enum class BatchPolicy { fixed, memory_aware };
enum class BlendMode { normal, soft_light, overlay, multiply, screen };
enum class LayerStrategy { sequential, parallel };

template <>
struct EnumTraits<Strategy> {
  static constexpr std::string_view noun = "strategy";
  static constexpr std::array<EnumEntry<Strategy>, 4> entries{{
      {Strategy::speed_first, "speed_first"},
      {Strategy::balanced, "balanced"},
      {Strategy::memory_first, "memory_first"},
      {Strategy::quality_first, "quality_first"},
  }};
};

template <>
struct EnumTraits<Precision> {
  static constexpr std::string_view noun = "precision";
  static constexpr std::array<EnumEntry<Precision>, 8> entries{{
      {Precision::fp32, "fp32"},
      {Precision::fp16, "fp16"},
      {Precision::bf16, "bf16"},
      {Precision::fp8_e4m3, "fp8_e4m3"},
      {Precision::fp8_e5m2, "fp8_e5m2"},
      {Precision::int8, "int8"},
      {Precision::automatic, "auto"},
      {Precision::fp8_e4m3, "fp8"},  // the guide's "fp8": E4M3 is the weight format
  }};
};

template <>
struct EnumTraits<Sampler> {
  static constexpr std::string_view noun = "scheduler";
  static constexpr std::array<EnumEntry<Sampler>, 11> entries{{
      {Sampler::euler, "euler"},
      {Sampler::euler_ancestral, "euler_ancestral"},
      {Sampler::heun, "heun"},
      {Sampler::ddim, "ddim"},
      {Sampler::ddpm, "ddpm"},
      {Sampler::dpm_solver_multistep, "dpm_solver_multistep"},
      {Sampler::dpmpp_2m, "dpmpp_2m"},
      {Sampler::dpmpp_2m_sde, "dpmpp_2m_sde"},
      {Sampler::unipc, "unipc"},
      {Sampler::lcm, "lcm"},
      {Sampler::flow_match_euler, "flow_match_euler"},
  }};
};

template <>
struct EnumTraits<NoiseSchedule> {
  static constexpr std::string_view noun = "noise schedule";
  static constexpr std::array<EnumEntry<NoiseSchedule>, 4> entries{{
      {NoiseSchedule::linear, "linear"},
      {NoiseSchedule::cosine, "cosine"},
      {NoiseSchedule::karras, "karras"},
      {NoiseSchedule::exponential, "exponential"},
  }};
};

template <>
struct EnumTraits<BlendMode> {
  static constexpr std::string_view noun = "blend mode";
  static constexpr std::array<EnumEntry<BlendMode>, 5> entries{{
      {BlendMode::normal, "normal"},
      {BlendMode::soft_light, "soft_light"},
      {BlendMode::overlay, "overlay"},
      {BlendMode::multiply, "multiply"},
      {BlendMode::screen, "screen"},
  }};
};

template <>
struct EnumTraits<LayerStrategy> {
  static constexpr std::string_view noun = "layer strategy";
  static constexpr std::array<EnumEntry<LayerStrategy>, 2> entries{{
      {LayerStrategy::sequential, "sequential"},
      {LayerStrategy::parallel, "parallel"},
  }};
};

template <>
struct EnumTraits<QueuePolicy> {
  static constexpr std::string_view noun = "queue policy";
  static constexpr std::array<EnumEntry<QueuePolicy>, 2> entries{{
      {QueuePolicy::fifo, "fifo"},
      {QueuePolicy::priority, "priority"},
  }};
};

template <>
struct EnumTraits<BatchPolicy> {
  static constexpr std::string_view noun = "batch policy";
  static constexpr std::array<EnumEntry<BatchPolicy>, 2> entries{{
      {BatchPolicy::fixed, "fixed"},
      {BatchPolicy::memory_aware, "memory_aware"},
  }};
};

/// @brief Inclusive bounds on a number (the minimum may be exclusive).
struct Range {
  double min = -std::numeric_limits<double>::infinity();
  double max = std::numeric_limits<double>::infinity();
  bool min_exclusive = false;
};

/// @brief Tensors with fewer elements stay unquantized by default: they save little.
inline constexpr int kQuantizeMinElements = 65536;

inline constexpr Range kPositive{0.0, std::numeric_limits<double>::infinity(), true};
inline constexpr Range kFraction{0.0, 1.0, true};  ///< (0, 1]
inline constexpr Range kUnitInterval{0.0, 1.0};    ///< [0, 1]
inline constexpr Range kSteps{1.0, 1000.0};
inline constexpr Range kGuidance{0.0, 50.0};

}  // namespace apo

#pragma once

/// @file
/// @brief apo::Device: the one spelling of "where work and memory live" across memory resources,
/// the model cache, placement and the engine. "cpu" or "cuda:N"; torch's c10::Device only at the
/// edge where tensors are made.

#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include <c10/core/Device.h>

#include "apo/core/enum_names.hpp"

namespace apo {

/// @brief Kinds of device apo computes on.
enum class DeviceKind : std::uint8_t { cpu, cuda };

template <>
struct EnumTraits<DeviceKind> {
  static constexpr std::string_view noun = "device kind";
  static constexpr std::array<EnumEntry<DeviceKind>, 2> entries{{
      {DeviceKind::cpu, "cpu"},
      {DeviceKind::cuda, "cuda"},
  }};
};

/// @brief A device: the CPU (index 0, the one host) or a CUDA device by index. Ordered and
/// hashable, so it keys maps of per-device state.
struct Device {
  DeviceKind kind = DeviceKind::cpu;
  int index = 0;

  static constexpr Device cpu() noexcept { return {DeviceKind::cpu, 0}; }
  static constexpr Device cuda(int index) noexcept { return {DeviceKind::cuda, index}; }

  constexpr bool is_cpu() const noexcept { return kind == DeviceKind::cpu; }
  constexpr bool is_cuda() const noexcept { return kind == DeviceKind::cuda; }

  /// @brief "cpu" or "cuda:1".
  std::string str() const {
    return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index);
  }

  /// @brief The same device as torch names it (CUDA with its index; the CPU without one).
  c10::Device to_torch() const {
    return is_cpu() ? c10::Device(c10::DeviceType::CPU)
                    : c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
  }

  /// @brief The device of a torch tensor: CPU, or CUDA (an unset index means device 0); nullopt
  /// for any other kind (MPS, XLA, ...), which apo does not run on.
  static std::optional<Device> from_torch(c10::Device device) noexcept {
    if (device.is_cpu()) return cpu();
    if (device.is_cuda()) return cuda(device.has_index() ? device.index() : 0);
    return std::nullopt;
  }

  /// @brief Parses "cpu", "cuda" (device 0) or "cuda:N"; nullopt for anything else.
  static std::optional<Device> parse(std::string_view text) noexcept {
    if (text == "cpu") return cpu();
    if (text == "cuda") return cuda(0);
    constexpr std::string_view prefix = "cuda:";
    if (!text.starts_with(prefix) || text.size() == prefix.size() || text.size() > 9) {
      return std::nullopt;
    }
    int index = 0;
    for (const char c : text.substr(prefix.size())) {
      if (c < '0' || c > '9') return std::nullopt;
      index = index * 10 + (c - '0');
    }
    return cuda(index);
  }

  friend constexpr bool operator==(const Device&, const Device&) = default;
  friend constexpr auto operator<=>(const Device&, const Device&) = default;
};

}  // namespace apo

template <>
struct std::hash<apo::Device> {
  std::size_t operator()(const apo::Device& device) const noexcept {
    return std::hash<int>{}(device.index * 2 + static_cast<int>(device.kind));
  }
};

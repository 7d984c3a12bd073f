#pragma once

/// @file
/// @brief Byte counts: constants, literals and conversions. Memory is counted in bytes as
/// std::int64_t everywhere in apo; configuration files speak GiB (see gib_to_bytes).

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include <fmt/format.h>

namespace apo {

inline constexpr std::int64_t KiB = std::int64_t{1} << 10;
inline constexpr std::int64_t MiB = std::int64_t{1} << 20;
inline constexpr std::int64_t GiB = std::int64_t{1} << 30;

namespace literals {

namespace detail {
consteval std::int64_t scale_bytes(unsigned long long count, std::int64_t unit) {
  if (count > static_cast<unsigned long long>(std::numeric_limits<std::int64_t>::max() / unit)) {
    throw "byte literal overflows std::int64_t";  // a compile error: consteval cannot throw
  }
  return static_cast<std::int64_t>(count) * unit;
}
}  // namespace detail

consteval std::int64_t operator""_B(unsigned long long n) {
  return detail::scale_bytes(n, 1);
}
consteval std::int64_t operator""_KiB(unsigned long long n) {
  return detail::scale_bytes(n, KiB);
}
consteval std::int64_t operator""_MiB(unsigned long long n) {
  return detail::scale_bytes(n, MiB);
}
consteval std::int64_t operator""_GiB(unsigned long long n) {
  return detail::scale_bytes(n, GiB);
}

}  // namespace literals

/// @brief GiB (as configs write them: "max_memory_usage_gb": 20.0) to bytes, rounded down.
/// Configs' "gb" means GiB: a "24 GB" card reports 24 GiB, and nvidia-smi counts in MiB.
constexpr std::int64_t gib_to_bytes(double gib) noexcept {
  const double bytes = gib * static_cast<double>(GiB);
  if (!(bytes > 0)) return 0;
  if (bytes >= static_cast<double>(std::numeric_limits<std::int64_t>::max())) {
    return std::numeric_limits<std::int64_t>::max();
  }
  return static_cast<std::int64_t>(bytes);
}

constexpr double bytes_to_gib(std::int64_t bytes) noexcept {
  return static_cast<double>(bytes) / static_cast<double>(GiB);
}

/// @brief "512 B", "1.50 KiB", "24.00 GiB": for messages and tables.
inline std::string format_bytes(std::int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (std::abs(value) >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  if (unit == 0) return fmt::format("{} B", bytes);
  return fmt::format("{:.2f} {}", value, units[unit]);
}

}  // namespace apo

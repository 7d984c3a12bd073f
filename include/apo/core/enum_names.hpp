#pragma once

/// @file
/// @brief Names of enumerations: one table per enumeration (EnumTraits), read by to_string and
/// parse_enum, by the configuration loader and by error messages. The one naming mechanism in
/// apo: an enumeration gets its names by specializing EnumTraits, never by a switch.

#include <array>
#include <optional>
#include <string_view>

namespace apo {

template <class E>
struct EnumEntry {
  E value;
  std::string_view name;
};

/// @brief Names of an enumeration: `noun` for messages and `entries`, where the first entry of a
/// value is its canonical name and later ones are accepted aliases.
template <class E>
struct EnumTraits;

template <class E>
concept NamedEnum = requires {
  EnumTraits<E>::entries;
  EnumTraits<E>::noun;
};

/// @brief The canonical name of an enumerator ("fp8_e4m3"); "?" for a value without a name.
template <NamedEnum E>
constexpr std::string_view to_string(E value) noexcept {
  for (const auto& entry : EnumTraits<E>::entries) {
    if (entry.value == value) return entry.name;
  }
  return "?";
}

/// @brief The enumerator with this name or alias, if any.
template <NamedEnum E>
constexpr std::optional<E> parse_enum(std::string_view name) noexcept {
  for (const auto& entry : EnumTraits<E>::entries) {
    if (entry.name == name) return entry.value;
  }
  return std::nullopt;
}

}  // namespace apo

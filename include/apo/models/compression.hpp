#pragma once

/// @file
/// @brief Whole-file compression of model files: zstd (apo's choice: fast to decompress,
/// multithreaded to compress) and xz (the guide's lzma advice, for comparison). Compressed files
/// are standard .zst / .xz streams: the `zstd` and `xz` tools read them too.

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "apo/core/enum_names.hpp"

namespace apo::models {

enum class Codec { zstd, xz };

}  // namespace apo::models

/// @brief "zstd" or "xz"; "zst" and "lzma" are accepted too.
template <>
struct apo::EnumTraits<apo::models::Codec> {
  static constexpr std::string_view noun = "codec";
  static constexpr std::array<EnumEntry<models::Codec>, 4> entries{{
      {models::Codec::zstd, "zstd"},
      {models::Codec::xz, "xz"},
      {models::Codec::zstd, "zst"},
      {models::Codec::xz, "lzma"},
  }};
};

namespace apo::models {

using apo::to_string;

/// @brief The codec whose magic bytes start `first_bytes`, if any.
std::optional<Codec> detect_codec(std::span<const std::byte> first_bytes) noexcept;
/// @brief The usual file name suffix: ".zst" or ".xz".
std::string_view file_suffix(Codec codec) noexcept;

struct CompressionOptions {
  Codec codec = Codec::zstd;
  /// zstd 1-19 (default 3); xz 0-9 (the guide's default 6).
  std::optional<int> level;
  /// Worker threads; 0 means one per core.
  int threads = 0;
  /// Called as the input is handed to the encoder, with (bytes handed, input bytes), and once
  /// more at the end with both equal; unset: not called. With worker threads the encoder takes
  /// input a few megabytes ahead of what it has compressed.
  std::function<void(std::int64_t done_bytes, std::int64_t total_bytes)> on_progress;
};

struct CompressionReport {
  std::int64_t input_bytes = 0;
  std::int64_t output_bytes = 0;
  double seconds = 0;
  /// output / input, as the guide prints it.
  double ratio() const noexcept {
    return input_bytes > 0 ? static_cast<double>(output_bytes) / input_bytes : 0.0;
  }
};

/// @brief Compresses `input` into `output` (written to a temporary name, then renamed).
/// @throws apo::Error NotFound, Io, InvalidArgument (a level out of range)
CompressionReport compress_file(const std::filesystem::path& input,
                                const std::filesystem::path& output,
                                const CompressionOptions& options);

/// @brief Compresses bytes in memory.
std::vector<std::byte> compress(std::span<const std::byte> input,
                                const CompressionOptions& options);

/// @brief Decompresses a whole stream. Never produces more than `max_output_bytes`: a stream
/// that would is refused with OutOfMemory, whatever sizes it claims. xz streams of several
/// blocks (what the multithreaded encoder writes) decode on one thread per core where liblzma
/// is 5.4 or newer; zstd decodes on one thread (its format has no parallel decoding).
/// @throws apo::Error Corrupt (a damaged or truncated stream, with `name`), OutOfMemory
std::vector<std::byte> decompress(std::span<const std::byte> input, Codec codec,
                                  std::int64_t max_output_bytes, const std::string& name);

}  // namespace apo::models

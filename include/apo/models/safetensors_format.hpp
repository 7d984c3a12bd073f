#pragma once

/// @file
/// @brief The safetensors format without libtorch: dtypes, the header and its validating parser.
///
/// A safetensors file is an 8-byte little-endian header length N, N bytes of JSON describing each
/// tensor ({"dtype", "shape", "data_offsets": [begin, end]} relative to the data section, plus an
/// optional "__metadata__" object of strings), then the data section. Model files are data: apo
/// reads nothing else from them and never unpickles.

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace apo::models {

/// @brief Element types, spelled as safetensors spells them.
enum class DType : std::uint8_t {
  BOOL,
  U8,
  I8,
  I16,
  U16,
  I32,
  U32,
  I64,
  U64,
  F16,
  BF16,
  F32,
  F64,
  F8_E4M3,
  F8_E5M2,
};

/// @brief "F32", "BF16", "F8_E4M3", ...
std::string_view to_string(DType dtype) noexcept;
/// @brief The dtype of this safetensors name, if apo knows it.
std::optional<DType> parse_dtype(std::string_view name) noexcept;
/// @brief Bytes per element.
std::int64_t element_size(DType dtype) noexcept;

/// @brief One tensor of a file: its offsets are relative to the data section.
struct TensorEntry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::int64_t data_begin = 0;
  std::int64_t data_end = 0;

  std::int64_t bytes() const noexcept { return data_end - data_begin; }
  std::int64_t numel() const noexcept { return bytes() / element_size(dtype); }
};

/// @brief A validated header.
struct SafetensorsHeader {
  std::int64_t header_bytes = 0;     ///< N: the JSON's length
  std::int64_t data_bytes = 0;       ///< the data section's length
  std::vector<TensorEntry> tensors;  ///< in data order
  std::map<std::string, std::string> metadata;

  /// @brief Where the data section starts in the file.
  std::int64_t data_offset() const noexcept { return 8 + header_bytes; }
};

/// @brief The largest header apo reads (the safetensors reference implementation's limit).
inline constexpr std::int64_t kMaxHeaderBytes = 100'000'000;

/// @brief Validates and parses a header before anything trusts it: the length is at most
/// kMaxHeaderBytes and within the file; the JSON is an object of known dtypes and non-negative
/// shapes; each tensor's bytes equal shape × element size; offsets lie inside the data section,
/// do not overlap and leave no holes; names are unique; metadata maps strings to strings.
/// @param file_prefix the file's first bytes, at least 8 + N of them (all of it is fine)
/// @param file_bytes the whole file's length
/// @param file_name names the file in messages
/// @throws apo::Error Corrupt, with the file and the byte offset at fault
SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file_prefix,
                                           std::int64_t file_bytes, const std::string& file_name);

/// @brief The length N from the first 8 bytes, checked against kMaxHeaderBytes and the file.
/// @throws apo::Error Corrupt
std::int64_t read_header_length(std::span<const std::byte> first_bytes, std::int64_t file_bytes,
                                const std::string& file_name);

/// @brief The header JSON for these entries and metadata (entries in data order; the writer
/// pads it with spaces to a multiple of 8 bytes so the data section stays aligned).
std::string serialize_safetensors_header(const std::vector<TensorEntry>& entries,
                                         const std::map<std::string, std::string>& metadata);

}  // namespace apo::models

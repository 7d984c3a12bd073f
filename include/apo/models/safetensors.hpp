#pragma once

/// @file
/// @brief Reading safetensors files as tensors that view a memory mapping (no copy), or as owned
/// copies, and writing files the official `safetensors` package reads back exactly.

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

#include "apo/models/compression.hpp"
#include "apo/models/safetensors_format.hpp"

namespace apo::models {

/// @brief The bytes of a file: a read-only-by-contract memory mapping, or a buffer holding a
/// decompressed file. Views of it keep it alive.
class FileBytes;

/// @brief An open safetensors file. Copies share the mapping; the file stays mapped while any
/// copy or any tensor viewing it lives. Thread-safe to read from many threads.
class SafetensorsFile {
 public:
  /// @brief Maps `path` and validates its header. Files compressed with zstd or xz (see
  /// compression.hpp) are recognized by their magic bytes and decompressed into memory.
  /// @throws apo::Error NotFound (no file), Io (unreadable), Corrupt (bad header, with the offset),
  /// OutOfMemory (a compressed file larger than the host can hold)
  static SafetensorsFile open(const std::filesystem::path& path);

  const std::string& path() const noexcept;
  const SafetensorsHeader& header() const noexcept;
  const std::vector<TensorEntry>& tensors() const noexcept { return header().tensors; }
  const std::map<std::string, std::string>& metadata() const noexcept { return header().metadata; }
  /// @brief The entry of this name, or nullptr.
  const TensorEntry* find(std::string_view name) const;
  /// @brief Bytes of the file as stored (the compressed size for a compressed file).
  std::int64_t stored_bytes() const noexcept;
  /// @brief The codec the file was compressed with, if any.
  std::optional<Codec> codec() const noexcept;

  /// @brief A CPU tensor that views the file's bytes without copying. Views of one file share
  /// memory with each other (use copy() to own the data); the file on disk never changes, as the
  /// mapping is copy-on-write. Data not aligned to its element size in the file (a header whose
  /// length is not a multiple of 8) is copied instead.
  /// @throws apo::Error NotFound when no tensor has this name
  at::Tensor view(std::string_view name) const;
  /// @brief A CPU tensor that owns a copy of the data.
  at::Tensor copy(std::string_view name) const;
  /// @brief Asks the kernel to start reading `bytes` of the data section from `data_begin`
  /// (madvise WILLNEED), so a copy made later finds them in memory; nothing for files held in
  /// memory.
  void prefetch(std::int64_t data_begin, std::int64_t bytes) const noexcept;

 private:
  struct State;
  explicit SafetensorsFile(std::shared_ptr<const State> state) : state_(std::move(state)) {}
  const TensorEntry& entry(std::string_view name) const;
  std::shared_ptr<const State> state_;
};

/// @brief A tensor to write, with its name.
struct NamedTensor {
  std::string name;
  at::Tensor tensor;
};

/// @brief Writes a safetensors file: tensors sorted by element size (largest first) then name so
/// every tensor is aligned, the header padded to 8 bytes. Tensors may live on any device and
/// need not be contiguous. Writes a temporary file beside `path` and renames it, so a failed
/// write never leaves a partial file under the final name.
/// @throws apo::Error InvalidArgument (duplicate or empty names, an undefined tensor, a dtype
/// safetensors cannot hold), Io (the write failed)
void save_safetensors(const std::filesystem::path& path, std::span<const NamedTensor> tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// @brief The safetensors dtype of a torch dtype.
/// @throws apo::Error Unsupported for dtypes safetensors has no name for
DType dtype_of(at::ScalarType scalar_type);
/// @brief The torch dtype of a safetensors dtype.
at::ScalarType scalar_type_of(DType dtype);

}  // namespace apo::models

#pragma once

// The bytes of a file, mapped or held in memory, and a temporary file that becomes the real one
// only on commit. Private to src/models.

#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "apo/models/safetensors.hpp"

namespace apo::models {

class FileBytes {
 public:
  /// Maps a file copy-on-write: readers see the file, writers only their private pages.
  /// @throws apo::Error NotFound, Io
  static std::shared_ptr<const FileBytes> map(const std::filesystem::path& path);
  /// Holds bytes already in memory (a decompressed file).
  static std::shared_ptr<const FileBytes> hold(std::vector<std::byte> bytes);

  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;
  ~FileBytes();

  std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  const std::byte* data() const noexcept { return data_; }
  std::size_t size() const noexcept { return size_; }
  /// Starts reading [offset, offset + bytes) of a mapped file in the background.
  void will_need(std::size_t offset, std::size_t bytes) const noexcept;

 private:
  FileBytes() = default;
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  bool mapped_ = false;
  std::vector<std::byte> held_;
};

/// Writes to "<final>.tmp.<pid>" and renames it to the final path on commit(); a temporary file
/// that is never committed is removed.
class TemporaryFile {
 public:
  explicit TemporaryFile(std::filesystem::path final_path);
  ~TemporaryFile();
  TemporaryFile(const TemporaryFile&) = delete;
  TemporaryFile& operator=(const TemporaryFile&) = delete;

  /// @throws apo::Error Io naming the file (a full disk, say)
  void write(std::span<const std::byte> bytes);
  void commit();

 private:
  std::filesystem::path final_path_;
  std::filesystem::path temporary_path_;
  int fd_ = -1;
};

}  // namespace apo::models

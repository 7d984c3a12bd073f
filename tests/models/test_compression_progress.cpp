// compress_file's progress callback: bytes handed to the encoder, never falling, ending at the
// input's size, for both codecs.

#include "apo_catch.hpp"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "apo/models/compression.hpp"

namespace compression_progress_test {

namespace fs = std::filesystem;

// A file of `bytes` bytes, half of them compressible, in a fresh folder under the temp dir.
fs::path scratch_file(std::int64_t bytes) {
  const fs::path dir = fs::temp_directory_path() / "apo_compression_progress_test";
  fs::create_directories(dir);
  const fs::path path = dir / "input.bin";
  std::ofstream out(path, std::ios::binary);
  std::uint32_t state = 12345;
  for (std::int64_t i = 0; i < bytes; ++i) {
    state = state * 1664525u + 1013904223u;
    out.put(static_cast<char>(i % 2 == 0 ? state >> 24 : 0));
  }
  return path;
}

}  // namespace compression_progress_test

TEST_CASE("compress_file reports progress in input bytes", "[compression]") {
  using namespace compression_progress_test;
  const std::int64_t size = 3 << 20;
  const fs::path input = scratch_file(size);
  for (const auto codec : {apo::models::Codec::zstd, apo::models::Codec::xz}) {
    INFO(apo::models::to_string(codec));
    std::vector<std::int64_t> done;
    apo::models::CompressionOptions options;
    options.codec = codec;
    options.level = codec == apo::models::Codec::xz ? 0 : 1;
    options.threads = 2;
    options.on_progress = [&](std::int64_t bytes, std::int64_t total) {
      CHECK(total == size);
      done.push_back(bytes);
    };
    const fs::path output = input.string() + std::string(apo::models::file_suffix(codec));
    const auto report = apo::models::compress_file(input, output, options);
    CHECK(report.input_bytes == size);
    REQUIRE_FALSE(done.empty());
    for (std::size_t i = 1; i < done.size(); ++i) CHECK(done[i] >= done[i - 1]);
    CHECK(done.back() == size);
  }
  fs::remove_all(input.parent_path());
}

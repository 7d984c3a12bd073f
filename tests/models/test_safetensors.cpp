#include "apo_catch.hpp"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "apo/core/error.hpp"
#include "apo/models/compression.hpp"
#include "apo/models/safetensors.hpp"

namespace fs = std::filesystem;
using apo::models::NamedTensor;
using apo::models::SafetensorsFile;

namespace {

// A scratch directory removed at the end of the test.
struct ScratchDir {
  fs::path path;
  ScratchDir() {
    path =
        fs::temp_directory_path() / ("apo_safetensors_" + std::to_string(std::random_device{}()));
    fs::create_directories(path);
  }
  ~ScratchDir() { fs::remove_all(path); }
  fs::path operator/(const std::string& name) const { return path / name; }
};

// A file from a header string and data bytes, exactly as given.
void write_raw(const fs::path& path, const std::string& header, const std::string& data,
               std::optional<std::uint64_t> claimed_length = std::nullopt) {
  std::ofstream out(path, std::ios::binary);
  const std::uint64_t length = claimed_length.value_or(header.size());
  out.write(reinterpret_cast<const char*>(&length), 8);
  out << header << data;
}

std::string corrupt_message(const fs::path& path) {
  try {
    SafetensorsFile::open(path);
  } catch (const apo::Error& error) {
    CHECK(error.code() == apo::ErrorCode::Corrupt);
    CHECK(error.context() == path.string());
    return error.message();
  }
  FAIL("opened a corrupt file: " << path);
  return {};
}

std::vector<NamedTensor> sample_tensors() {
  at::manual_seed(7);
  return {
      {"blocks.0.attn.qkv.weight", at::randn({64, 48})},
      {"blocks.0.attn.qkv.bias", at::randn({64}).to(at::kHalf)},
      {"blocks.0.norm.weight", at::randn({48}).to(at::kBFloat16)},
      {"scaled.fp8", at::randn({16, 16}).to(at::kFloat8_e4m3fn)},
      {"scaled.fp8_e5m2", at::randn({4, 4}).to(at::kFloat8_e5m2)},
      {"ids", at::arange(10, at::kLong)},
      {"mask", at::randn({7}) > 0},
      {"u16", at::arange(5, at::kInt).to(at::kUInt16)},
      {"f64", at::randn({3, 3}, at::kDouble)},
      {"scalar", at::tensor(3.5f)},
      {"empty", at::empty({0, 4})},
      {"transposed", at::randn({8, 6}).t()},  // not contiguous: the writer makes it so
  };
}

bool same(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const auto x = a.contiguous();
  const auto y = b.contiguous();
  return x.nbytes() == 0 || std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

}  // namespace

TEST_CASE("safetensors round trip: every dtype, views and copies", "[safetensors]") {
  ScratchDir dir;
  const auto tensors = sample_tensors();
  const std::map<std::string, std::string> metadata{{"format", "pt"}, {"modelspec.title", "x"}};
  apo::models::save_safetensors(dir / "model.safetensors", tensors, metadata);

  const auto file = SafetensorsFile::open(dir / "model.safetensors");
  CHECK(file.metadata() == metadata);
  CHECK(file.tensors().size() == tensors.size());
  CHECK(file.header().header_bytes % 8 == 0);
  for (const auto& t : tensors) {
    INFO(t.name);
    const auto* entry = file.find(t.name);
    REQUIRE(entry != nullptr);
    CHECK(entry->bytes() == t.tensor.nbytes());
    // Every tensor is aligned to its element size, so it can be viewed in place.
    CHECK(entry->data_begin % apo::models::element_size(entry->dtype) == 0);
    const at::Tensor view = file.view(t.name);
    const at::Tensor copy = file.copy(t.name);
    CHECK(same(view, t.tensor));
    CHECK(same(copy, t.tensor));
    if (t.tensor.numel() > 0) {
      CHECK(file.view(t.name).data_ptr() == view.data_ptr());  // both view the mapping
      CHECK(copy.data_ptr() != view.data_ptr());
    }
  }
  CHECK(file.find("missing") == nullptr);
  CHECK_THROWS_MATCHES(
      file.view("missing"), apo::Error,
      Catch::Message((dir / "model.safetensors").string() + ": no tensor named 'missing'"));
}

TEST_CASE("views keep the mapping alive and never write to the file", "[safetensors]") {
  ScratchDir dir;
  const auto path = dir / "model.safetensors";
  apo::models::save_safetensors(path, std::vector<NamedTensor>{{"w", at::ones({1024})}});
  const auto bytes_before = fs::file_size(path);
  at::Tensor view;
  {
    const auto file = SafetensorsFile::open(path);
    view = file.view("w");
  }
  CHECK(view.sum().item<float>() == 1024.0f);  // the file object is gone, the view is not
  view.mul_(3);                                // copy-on-write: only this process's pages
  CHECK(view.sum().item<float>() == 3072.0f);
  CHECK(SafetensorsFile::open(path).view("w").sum().item<float>() == 1024.0f);
  CHECK(fs::file_size(path) == bytes_before);
}

TEST_CASE("a header whose length is not a multiple of 8 is read, copying unaligned data",
          "[safetensors]") {
  ScratchDir dir;
  const auto path = dir / "odd.safetensors";
  std::string data(16, '\0');
  const float values[4] = {1.f, 2.f, 3.f, 4.f};
  std::memcpy(data.data(), values, 16);
  write_raw(path, R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data);
  const auto file = SafetensorsFile::open(path);
  const at::Tensor x = file.view("x");
  CHECK(x[3].item<float>() == 4.f);
}

TEST_CASE("corrupt files are rejected with the file and the offset", "[safetensors]") {
  ScratchDir dir;
  const auto path = dir / "bad.safetensors";
  const std::string f32x4(16, '\0');
  struct Case {
    std::string header;
    std::string data;
    std::optional<std::uint64_t> claimed;
    std::string message;
  };
  const std::vector<Case> cases{
      {"", "", 0, "header is not valid JSON"},
      {"{}", "", 1'000'000'000,
       "header length 1000000000 at offset 0 exceeds the 100000000-byte limit"},
      {"{}", "", 4096, "header length 4096 at offset 0 runs past the end of the"},
      {"[1, 2]", "", {}, "header: expected a JSON object at offset 8"},
      {R"({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]})",
       f32x4,
       {},
       "header is not valid JSON (file offset"},
      {R"({"x":{"dtype":"F17","shape":[4],"data_offsets":[0,16]}})",
       f32x4,
       {},
       "header: tensor 'x': unknown dtype \"F17\""},
      {R"({"x":{"dtype":"F32","shape":[5],"data_offsets":[0,16]}})",
       f32x4,
       {},
       "header: tensor 'x': shape [5] of F32 needs 20 bytes, but data_offsets [0, 16] hold 16"},
      {R"({"x":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})",
       f32x4,
       {},
       "shape entry -4 is not a non-negative integer"},
      {R"({"x":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}})",
       f32x4,
       {},
       "needs too many bytes"},
      {R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,32]}})",
       f32x4,
       {},
       "data_offsets [0, 32] run past the data section (16 bytes; file offset"},
      {R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}})",
       f32x4,
       {},
       "data_offsets [16, 0] end before they begin"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       std::string(12, '\0'),
       {},
       "tensor 'b' at data offset 4 overlaps 'a', which ends at 8"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
       f32x4,
       {},
       "8 unused bytes before tensor 'a'"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
       f32x4,
       {},
       "8 bytes after the last tensor are not described by the header"},
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
       std::string(8, '\0'),
       {},
       "header: 'a' appears twice"},
      {R"({"__metadata__":{"k":1}})", "", {}, "header: __metadata__[\"k\"] is not a string"},
      {R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16],"extra":1}})",
       f32x4,
       {},
       "unknown field \"extra\""},
      {R"({"x":{"dtype":"F32","shape":[4]}})", f32x4, {}, "data_offsets missing"},
  };
  for (const auto& c : cases) {
    INFO(c.header);
    write_raw(path, c.header, c.data, c.claimed);
    CHECK_THAT(corrupt_message(path), Catch::Contains(c.message));
  }
  std::ofstream(path, std::ios::binary) << "abc";
  CHECK_THAT(corrupt_message(path), Catch::Contains("3 bytes is too short"));
}

TEST_CASE("missing files and directories are reported, not crashed on", "[safetensors]") {
  ScratchDir dir;
  CHECK_THROWS_MATCHES(SafetensorsFile::open(dir / "none.safetensors"), apo::Error,
                       Catch::Predicate<apo::Error>([](const apo::Error& e) {
                         return e.code() == apo::ErrorCode::NotFound;
                       }));
  CHECK_THROWS_MATCHES(SafetensorsFile::open(dir.path), apo::Error,
                       Catch::Predicate<apo::Error>(
                           [](const apo::Error& e) { return e.code() == apo::ErrorCode::Io; }));
}

TEST_CASE("the writer refuses what safetensors cannot hold", "[safetensors]") {
  ScratchDir dir;
  const auto path = dir / "out.safetensors";
  auto code_of = [&](std::vector<NamedTensor> tensors) {
    try {
      apo::models::save_safetensors(path, tensors);
    } catch (const apo::Error& e) {
      return e.code();
    }
    return apo::ErrorCode::Internal;
  };
  CHECK(code_of({{"a", at::ones({1})}, {"a", at::ones({1})}}) == apo::ErrorCode::InvalidArgument);
  CHECK(code_of({{"", at::ones({1})}}) == apo::ErrorCode::InvalidArgument);
  CHECK(code_of({{"__metadata__", at::ones({1})}}) == apo::ErrorCode::InvalidArgument);
  CHECK(code_of({{"a", at::Tensor()}}) == apo::ErrorCode::InvalidArgument);
  CHECK(code_of({{"c", at::ones({2}, at::kComplexFloat)}}) == apo::ErrorCode::Unsupported);
  CHECK_FALSE(fs::exists(path));  // nothing half-written under the final name
}

TEST_CASE("compressed files load transparently", "[safetensors][compression]") {
  ScratchDir dir;
  const auto tensors = sample_tensors();
  const auto plain = dir / "model.safetensors";
  apo::models::save_safetensors(plain, tensors, {{"format", "pt"}});
  for (const auto codec : {apo::models::Codec::zstd, apo::models::Codec::xz}) {
    INFO(apo::models::to_string(codec));
    const auto packed = dir / ("model.safetensors" + std::string(apo::models::file_suffix(codec)));
    const auto report = apo::models::compress_file(plain, packed, {.codec = codec, .threads = 2});
    CHECK(report.input_bytes == static_cast<std::int64_t>(fs::file_size(plain)));
    CHECK(report.output_bytes == static_cast<std::int64_t>(fs::file_size(packed)));
    const auto file = SafetensorsFile::open(packed);
    CHECK(file.codec() == codec);
    CHECK(file.stored_bytes() == report.output_bytes);
    CHECK(file.metadata().at("format") == "pt");
    for (const auto& t : tensors) CHECK(same(file.view(t.name), t.tensor));
  }
}

TEST_CASE("damaged compressed streams are Corrupt and bombs are refused", "[compression]") {
  std::vector<std::byte> input(1 << 20);
  for (std::size_t i = 0; i < input.size(); ++i) input[i] = static_cast<std::byte>(i % 251);
  for (const auto codec : {apo::models::Codec::zstd, apo::models::Codec::xz}) {
    INFO(apo::models::to_string(codec));
    const auto packed = apo::models::compress(input, {.codec = codec});
    CHECK(apo::models::detect_codec(packed) == codec);
    CHECK((apo::models::decompress(packed, codec, 1 << 21, "x") == input));

    auto truncated = packed;
    truncated.resize(truncated.size() / 2);
    CHECK_THROWS_MATCHES(apo::models::decompress(truncated, codec, 1 << 21, "x"), apo::Error,
                         Catch::Predicate<apo::Error>([](const apo::Error& e) {
                           return e.code() == apo::ErrorCode::Corrupt && e.context() == "x";
                         }));
    auto damaged = packed;
    for (std::size_t i = 40; i < damaged.size(); i += 97) damaged[i] ^= std::byte{0x5a};
    CHECK_THROWS_AS(apo::models::decompress(damaged, codec, 1 << 21, "x"), apo::Error);

    // Whatever the stream claims, nothing past the limit is produced.
    CHECK_THROWS_MATCHES(apo::models::decompress(packed, codec, 1 << 19, "x"), apo::Error,
                         Catch::Predicate<apo::Error>([](const apo::Error& e) {
                           return e.code() == apo::ErrorCode::OutOfMemory;
                         }));
  }
  CHECK_THROWS_AS(apo::models::compress(input, {.codec = apo::models::Codec::zstd, .level = 40}),
                  apo::Error);
  CHECK_THROWS_AS(apo::models::compress(input, {.codec = apo::models::Codec::xz, .level = 10}),
                  apo::Error);
}

TEST_CASE("xz streams of several blocks decode whole, and their damage is Corrupt",
          "[compression]") {
  // xz level 0 closes a block every MiB: the multithreaded decoder has blocks to share out.
  std::vector<std::byte> input(5 << 20);
  std::uint32_t state = 1;
  for (auto& b : input) {
    state = state * 1664525u + 1013904223u;
    b = static_cast<std::byte>((state >> 24) & 0x3f);  // compressible, not trivially
  }
  const auto packed =
      apo::models::compress(input, {.codec = apo::models::Codec::xz, .level = 0, .threads = 2});
  CHECK((apo::models::decompress(packed, apo::models::Codec::xz, 6 << 20, "x") == input));
  auto truncated = packed;
  truncated.resize(truncated.size() * 2 / 3);
  CHECK_THROWS_MATCHES(apo::models::decompress(truncated, apo::models::Codec::xz, 6 << 20, "x"),
                       apo::Error, Catch::Predicate<apo::Error>([](const apo::Error& e) {
                         return e.code() == apo::ErrorCode::Corrupt;
                       }));
  CHECK_THROWS_MATCHES(apo::models::decompress(packed, apo::models::Codec::xz, 3 << 20, "x"),
                       apo::Error, Catch::Predicate<apo::Error>([](const apo::Error& e) {
                         return e.code() == apo::ErrorCode::OutOfMemory;
                       }));
}

TEST_CASE("random damage to a valid file never crashes the reader", "[safetensors]") {
  ScratchDir dir;
  const auto good = dir / "good.safetensors";
  apo::models::save_safetensors(good, sample_tensors(), {{"format", "pt"}});
  std::ifstream in(good, std::ios::binary);
  const std::string original((std::istreambuf_iterator<char>(in)), {});
  const auto path = dir / "mutant.safetensors";
  const std::uint64_t header_length = [&] {
    std::uint64_t n = 0;
    std::memcpy(&n, original.data(), 8);
    return n;
  }();
  std::mt19937 rng(99);
  for (int round = 0; round < 1500; ++round) {
    std::string bytes = original;
    // Mostly damage the header, where the parser is; sometimes the length or the size.
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      switch (rng() % 4) {
        case 0:
          bytes[8 + rng() % header_length] = static_cast<char>(rng());
          break;
        case 1:
          bytes[rng() % 8] = static_cast<char>(rng());
          break;
        case 2:
          bytes.resize(rng() % bytes.size());
          break;
        default:
          bytes[8 + rng() % header_length] = "{}[]\",:0123456789-e"[rng() % 19];
          break;
      }
      if (bytes.size() < 8) break;
    }
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    try {
      const auto file = SafetensorsFile::open(path);
      for (const auto& entry : file.tensors()) {
        const at::Tensor t = file.view(entry.name);
        CHECK(t.nbytes() == static_cast<std::size_t>(entry.bytes()));
      }
    } catch (const apo::Error& error) {
      CHECK((error.code() == apo::ErrorCode::Corrupt || error.code() == apo::ErrorCode::Io));
    }
  }
}

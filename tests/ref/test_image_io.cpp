#include "apo_catch.hpp"

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "apo/core/error.hpp"
#include "apo/ref/image_io.hpp"
#include "apo/ref/world.hpp"

namespace image_io_test {

namespace fs = std::filesystem;
using namespace apo::ref;

struct TempDir {
  fs::path path =
      fs::temp_directory_path() / fmt::format("apo_image_io_{}", std::random_device{}());
  TempDir() { fs::create_directories(path); }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

apo::ErrorCode code_of(auto&& f) {
  try {
    f();
  } catch (const apo::Error& e) {
    return e.code();
  }
  return apo::ErrorCode::Internal;  // nothing thrown
}

// Values exactly on the 8-bit grid, so that a PNG round trip is exact.
at::Tensor on_grid(at::IntArrayRef sizes) {
  return at::randint(0, 256, sizes, at::kFloat).div(255.0);
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace image_io_test

TEST_CASE("PNG round trips are exact at 8 bits", "[image_io]") {
  using namespace image_io_test;
  TempDir dir;
  at::manual_seed(3);
  for (const std::int64_t channels : {1, 3, 4}) {
    const at::Tensor image = on_grid({channels, 37, 64});
    const fs::path path = dir.path / fmt::format("c{}.png", channels);
    write_png(path, image);
    const at::Tensor back = read_png(path);
    REQUIRE(back.sizes() == image.sizes());
    CHECK(back.scalar_type() == at::kFloat);
    CHECK(at::equal(back, image));
  }
  // A rendered RGBA scene keeps its alpha; values round to the nearest 8-bit step.
  const at::Tensor scene = render_image(sample_scene(11));
  write_png(dir.path / "scene.png", scene);
  const at::Tensor back = read_png(dir.path / "scene.png");
  CHECK((back - scene).abs().max().item<float>() <= 0.5f / 255.0f + 1e-6f);
  // Out-of-range values clamp; doubles and halves are accepted.
  write_png(dir.path / "clamped.png", at::full({3, 8, 8}, 2.0, at::kDouble));
  CHECK(read_png(dir.path / "clamped.png").min().item<float>() == 1.0f);
}

TEST_CASE("PNG errors: missing, corrupt, truncated, unwritable, bad tensors", "[image_io]") {
  using namespace image_io_test;
  TempDir dir;
  CHECK(code_of([&] { read_png(dir.path / "missing.png"); }) == apo::ErrorCode::NotFound);
  write_bytes(dir.path / "text.png", "this is not a PNG file at all");
  CHECK(code_of([&] { read_png(dir.path / "text.png"); }) == apo::ErrorCode::Corrupt);
  write_bytes(dir.path / "empty.png", "");
  CHECK(code_of([&] { read_png(dir.path / "empty.png"); }) == apo::ErrorCode::Corrupt);
  write_png(dir.path / "good.png", on_grid({3, 32, 32}));
  const std::string good = read_bytes(dir.path / "good.png");
  // Cut anywhere, or a byte flipped in the header or the data: an error, never a crash.
  for (const std::size_t cut : {9ul, 20ul, 40ul, good.size() / 2, good.size() - 13}) {
    write_bytes(dir.path / "cut.png", good.substr(0, cut));
    CHECK(code_of([&] { read_png(dir.path / "cut.png"); }) == apo::ErrorCode::Corrupt);
  }
  for (const std::size_t at_byte : {16ul, 20ul, 24ul, 40ul, good.size() / 2}) {
    std::string bad = good;
    bad[at_byte] = static_cast<char>(bad[at_byte] ^ 0x5a);
    write_bytes(dir.path / "flipped.png", bad);
    CHECK(code_of([&] { read_png(dir.path / "flipped.png"); }) == apo::ErrorCode::Corrupt);
  }
  CHECK(code_of([&] {
          write_png(dir.path / "no" / "such" / "dir.png", on_grid({3, 8, 8}));
        }) == apo::ErrorCode::Io);
  CHECK(code_of([&] {
          write_png(dir.path / "bad.png", at::zeros({2, 8, 8}));
        }) == apo::ErrorCode::InvalidArgument);
  CHECK(code_of([&] {
          write_png(dir.path / "bad.png", at::zeros({8, 8}));
        }) == apo::ErrorCode::InvalidArgument);
  CHECK(code_of([&] {
          write_png(dir.path / "bad.png", at::full({3, 8, 8}, NAN));
        }) == apo::ErrorCode::InvalidArgument);
  CHECK(code_of([&] {
          write_png(dir.path / "bad.png", at::zeros({3, 8, 8}, at::kByte));
        }) == apo::ErrorCode::InvalidArgument);
}

TEST_CASE("Animated GIFs: frames, looping, alpha over a checkerboard", "[image_io]") {
  using namespace image_io_test;
  TempDir dir;
  const at::Tensor clip = render_clip(sample_scene(21, true), 8, 64);
  const fs::path path = dir.path / "clip.gif";
  write_gif(path, clip.narrow(1, 0, 3), 120, 1);
  const at::Tensor back = read_gif(path);
  REQUIRE(back.sizes() == at::IntArrayRef({8, 3, 64, 64}));
  // 256 colours a frame: close, not exact.
  CHECK((back - clip.narrow(1, 0, 3)).abs().mean().item<double>() < 0.02);
  CHECK((back - clip.narrow(1, 0, 3)).abs().max().item<double>() < 0.15);
  // The loop extension is there.
  CHECK(read_bytes(path).find("NETSCAPE2.0") != std::string::npos);

  // RGBA: transparent pixels show the checkerboard; enlarged by nearest neighbour.
  write_gif(dir.path / "alpha.gif", clip, 100, 2);
  const at::Tensor alpha = read_gif(dir.path / "alpha.gif");
  REQUIRE(alpha.sizes() == at::IntArrayRef({8, 3, 128, 128}));
  const at::Tensor checker = clip.select(1, 3).eq(0);  // [8, 64, 64]: background only
  const at::Tensor small = alpha.index({at::indexing::Slice(), at::indexing::Slice(),
                                        at::indexing::Slice(0, at::indexing::None, 2),
                                        at::indexing::Slice(0, at::indexing::None, 2)});
  const at::Tensor gray = small.select(1, 0);
  const at::Tensor board = at::logical_or((gray - 0.6).abs() < 0.02, (gray - 0.8).abs() < 0.02);
  CHECK(at::logical_and(checker, board).sum().item<std::int64_t>() ==
        checker.sum().item<std::int64_t>());
  // Gray clips are accepted too.
  write_gif(dir.path / "gray.gif", clip.narrow(1, 0, 1));
  CHECK(read_gif(dir.path / "gray.gif").size(0) == 8);
}

TEST_CASE("GIF errors: missing, corrupt, truncated, unwritable, bad arguments", "[image_io]") {
  using namespace image_io_test;
  TempDir dir;
  CHECK(code_of([&] { read_gif(dir.path / "missing.gif"); }) == apo::ErrorCode::NotFound);
  write_bytes(dir.path / "text.gif", "GIF89a but then nothing sensible");
  CHECK(code_of([&] { read_gif(dir.path / "text.gif"); }) == apo::ErrorCode::Corrupt);
  const at::Tensor clip = at::rand({3, 3, 16, 16});
  write_gif(dir.path / "good.gif", clip);
  const std::string good = read_bytes(dir.path / "good.gif");
  for (const std::size_t cut : {6ul, 13ul, 40ul, good.size() / 2, good.size() - 2}) {
    write_bytes(dir.path / "cut.gif", good.substr(0, cut));
    CHECK(code_of([&] { read_gif(dir.path / "cut.gif"); }) == apo::ErrorCode::Corrupt);
  }
  CHECK(code_of([&] { write_gif(dir.path / "no" / "dir" / "x.gif", clip); }) == apo::ErrorCode::Io);
  CHECK(code_of([&] { write_gif(dir.path / "x.gif", clip[0]); }) ==
        apo::ErrorCode::InvalidArgument);
  CHECK(code_of([&] {
          write_gif(dir.path / "x.gif", at::rand({2, 2, 8, 8}));
        }) == apo::ErrorCode::InvalidArgument);
  CHECK(code_of([&] { write_gif(dir.path / "x.gif", clip, -5); }) ==
        apo::ErrorCode::InvalidArgument);
  CHECK(code_of([&] { write_gif(dir.path / "x.gif", clip, 100, 0); }) ==
        apo::ErrorCode::InvalidArgument);
  CHECK(code_of([&] {
          write_gif(dir.path / "x.gif", at::full({2, 3, 8, 8}, NAN));
        }) == apo::ErrorCode::InvalidArgument);
}

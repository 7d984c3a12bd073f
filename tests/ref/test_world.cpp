#include "apo_catch.hpp"

#include <chrono>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "apo/core/error.hpp"
#include "apo/ref/world.hpp"

namespace world_test {

using namespace apo::ref;

bool throws_invalid(auto&& f) {
  try {
    f();
  } catch (const apo::Error& e) {
    return e.code() == apo::ErrorCode::InvalidArgument;
  }
  return false;
}

}  // namespace world_test

TEST_CASE("Scenes are deterministic for a seed and captions parse back", "[world]") {
  using namespace world_test;
  for (std::uint64_t seed = 0; seed < 300; ++seed) {
    const bool clip = seed % 3 == 0;
    const Scene a = sample_scene(seed, clip);
    const Scene b = sample_scene(seed, clip);
    const std::string text = caption(a);
    REQUIRE(text == caption(b));
    REQUIRE(at::equal(render_image(a, 32), render_image(b, 32)));
    const CaptionSpec spec = parse_caption(text);
    REQUIRE(spec == describe(a));
    REQUIRE(caption(spec) == text);
    REQUIRE(a.shapes.size() <= 2);
    REQUIRE((a.motion != Motion::none) == clip);
    if (clip) REQUIRE(!a.shapes.empty());
    const auto tokens = caption_tokens(text);
    REQUIRE(tokens.size() <= static_cast<std::size_t>(kCaptionTokens));
  }
  // A pinned caption: the stream and its mapping to scenes are apo's own, the same everywhere.
  CHECK(caption(sample_scene(7)) == "a medium blue cross on the right, red background, dim light");
  CHECK(caption(sample_scene(7, true)) ==
        "a medium yellow triangle at the top, black background, bright light, moving left");
  CHECK(sample_scene(7).shapes[0].offset_x == Approx(-0.027818).margin(1e-6));
  CHECK(vocabulary().size() < 80);
  CHECK(vocabulary()[0] == "<pad>");
}

TEST_CASE("Sampled scenes cover the world in the stated proportions", "[world]") {
  using namespace world_test;
  int counts[3] = {0, 0, 0};
  std::set<std::string> captions;
  std::set<ShapeKind> kinds;
  std::set<Lighting> lights;
  std::set<Motion> motions;
  const int n = 2000;
  for (int seed = 0; seed < n; ++seed) {
    const Scene scene = sample_scene(static_cast<std::uint64_t>(seed));
    ++counts[scene.shapes.size()];
    captions.insert(caption(scene));
    for (const auto& s : scene.shapes) kinds.insert(s.kind);
    lights.insert(scene.lighting);
    motions.insert(sample_scene(static_cast<std::uint64_t>(seed), true).motion);
  }
  CHECK(counts[0] > n * 0.06);
  CHECK(counts[0] < n * 0.14);
  CHECK(counts[1] > n * 0.54);
  CHECK(counts[1] < n * 0.66);
  CHECK(counts[2] > n * 0.24);
  CHECK(counts[2] < n * 0.36);
  CHECK(captions.size() > n * 0.8);  // few repeats: the world is large
  CHECK(kinds.size() == 5);
  CHECK(lights.size() == 5);
  CHECK(motions.size() == 6);
}

TEST_CASE("One caption, many pictures: details stay open", "[world]") {
  using namespace world_test;
  const CaptionSpec spec = parse_caption("a small red circle on the left, green background");
  const at::Tensor a = render_image(scene_for(spec, 1));
  const at::Tensor b = render_image(scene_for(spec, 2));
  CHECK(caption(scene_for(spec, 1)) == caption(spec));
  CHECK(caption(scene_for(spec, 2)) == caption(spec));
  CHECK(!at::allclose(a, b, 0.0, 0.01));
  CHECK((a - b).abs().mean().item<double>() > 0.005);
}

TEST_CASE("Renders: shape, range, alpha, anti-aliasing, layers", "[world]") {
  using namespace world_test;
  CaptionSpec spec = parse_caption(
      "a large blue square on the left, a small yellow star at the top right, white background, "
      "dim light");
  const Scene scene = scene_for(spec, 3);
  const at::Tensor image = render_image(scene);
  REQUIRE(image.sizes() == at::IntArrayRef({4, 64, 64}));
  REQUIRE(image.scalar_type() == at::kFloat);
  CHECK(image.min().item<float>() >= 0.0f);
  CHECK(image.max().item<float>() <= 1.0f);
  const at::Tensor alpha = image[3];
  // Alpha is the union of the shapes: 0 in the background's corner, 1 in the square.
  CHECK(alpha[0][0].item<float>() == 0.0f);
  CHECK(alpha[32][16].item<float>() == 1.0f);
  // Edges are anti-aliased: partial coverage exists.
  const auto partial = at::logical_and(alpha > 0.05, alpha < 0.95).sum().item<std::int64_t>();
  CHECK(partial > 20);
  // The masks' areas follow the size classes.
  const at::Tensor masks = shape_masks(scene);
  REQUIRE(masks.size(0) == 2);
  const double large = masks[0].sum().item<double>() / (64.0 * 64.0);
  const double small = masks[1].sum().item<double>() / (64.0 * 64.0);
  CHECK(large == Approx(3.14159 * 0.18 * 0.18).epsilon(0.15));
  CHECK(small == Approx(3.14159 * 0.085 * 0.085).epsilon(0.2));
  // Layers composite to the image: background, then each shape "over".
  at::Tensor composite = render_image(background_only(scene)).narrow(0, 0, 3).clone();
  CHECK(render_image(background_only(scene))[3].max().item<float>() == 0.0f);
  for (std::size_t i = 0; i < scene.shapes.size(); ++i) {
    const at::Tensor layer = render_shape_layer(scene, i);
    const at::Tensor a = layer.narrow(0, 3, 1);
    composite = layer.narrow(0, 0, 3) * a + composite * (1 - a);
  }
  CHECK(at::allclose(composite, image.narrow(0, 0, 3), 0.0, 1e-4));
  // Relighting keeps the geometry.
  const at::Tensor relit = render_image(with_lighting(scene, Lighting::warm));
  CHECK(at::equal(relit[3], image[3]));
  CHECK(!at::allclose(relit.narrow(0, 0, 3), image.narrow(0, 0, 3), 0.0, 0.05));
  CHECK(only_shape(scene, 1).shapes.size() == 1);
  CHECK(throws_invalid([&] { only_shape(scene, 2); }));
  CHECK(throws_invalid([&] { render_image(scene, 4); }));
  CHECK(render_image(scene, 128).sizes() == at::IntArrayRef({4, 128, 128}));
}

TEST_CASE("Clips move the shapes as the motion says", "[world]") {
  using namespace world_test;
  const auto centroid_x = [](const at::Tensor& alpha) {
    const at::Tensor xs = at::arange(alpha.size(1), at::kFloat).view({1, -1});
    return (alpha * xs).sum().item<double>() / alpha.sum().item<double>();
  };
  const auto centroid_y = [](const at::Tensor& alpha) {
    const at::Tensor ys = at::arange(alpha.size(0), at::kFloat).view({-1, 1});
    return (alpha * ys).sum().item<double>() / alpha.sum().item<double>();
  };
  const auto clip_of = [](const char* text) {
    return render_clip(scene_for(parse_caption(text), 5), 8, 64);
  };
  const at::Tensor left =
      clip_of("a medium red circle in the centre, white background, moving left");
  REQUIRE(left.sizes() == at::IntArrayRef({8, 4, 64, 64}));
  CHECK(centroid_x(left[0][3]) - centroid_x(left[7][3]) == Approx(0.2 * 64).margin(0.5));
  const at::Tensor down =
      clip_of("a medium red circle in the centre, white background, moving down");
  CHECK(centroid_y(down[7][3]) - centroid_y(down[0][3]) == Approx(0.2 * 64).margin(0.5));
  const at::Tensor grow = clip_of("a medium red circle in the centre, white background, growing");
  const double ratio = grow[7][3].sum().item<double>() / grow[0][3].sum().item<double>();
  CHECK(ratio == Approx(std::pow(1.3, 4)).epsilon(0.05));
  // The background holds still.
  CHECK(at::equal(left[0][0][0], left[7][0][0]));
  CHECK(throws_invalid([&] { render_clip(sample_scene(1, true), 0); }));
}

TEST_CASE("Captions: tokenizer and parser reject what they do not know", "[world]") {
  using namespace world_test;
  const std::vector<std::string> captions{
      "a small red circle on the left, green background, warm light",
      "blue background",
  };
  const at::Tensor tokens = tokenize(captions);
  REQUIRE(tokens.sizes() == at::IntArrayRef({2, kCaptionTokens}));
  REQUIRE(tokens.scalar_type() == at::kLong);
  CHECK(tokens[0][0].item<std::int64_t>() == 1);  // "a"
  CHECK(tokens[1][2].item<std::int64_t>() == 0);  // padding
  CHECK(tokens[0].ne(0).sum().item<std::int64_t>() == 11);
  // The longest caption fits.
  const std::string longest =
      "a medium purple triangle at the bottom right, a medium yellow star at the top left, "
      "green background, warm light, moving left";
  CHECK(caption_tokens(longest).size() <= static_cast<std::size_t>(kCaptionTokens));
  try {
    tokenize(std::vector<std::string>{"a small red hexagon on the left, blue background"});
    FAIL("an unknown word was accepted");
  } catch (const apo::Error& e) {
    CHECK(e.code() == apo::ErrorCode::InvalidArgument);
    CHECK(std::string(e.what()).find("hexagon") != std::string::npos);
  }
  CHECK(throws_invalid([&] { tokenize(std::vector<std::string>{longest}, 8); }));
  for (const char* bad : {"", "red", "a small red circle on the left",  // no background
                          "a small red circle, blue background", "blue background, blue background",
                          "a red small circle on the left, blue background",
                          "blue background, moving sideways", "blue background, neutral light",
                          "a small red circle on the left, a small red circle on the right, a "
                          "small red circle at the top, blue background"}) {
    CHECK(throws_invalid([&] { parse_caption(bad); }));
  }
  const CaptionSpec spec = parse_caption("black background, cool light, shrinking");
  CHECK(spec.shapes.empty());
  CHECK(spec.background == Colour::black);
  CHECK(spec.lighting == Lighting::cool);
  CHECK(spec.motion == Motion::shrink);
  CHECK(throws_invalid([&] {
    scene_for(parse_caption("a small red circle on the left, a small blue circle on the left, "
                            "white background"),
              1);
  }));
}

TEST_CASE("Rendering a training set is fast", "[world]") {
  using namespace world_test;
  const int n = 2000;
  const auto start = std::chrono::steady_clock::now();
  double checksum = 0.0;
  for (int i = 0; i < n; ++i) {
    checksum += render_image(sample_scene(static_cast<std::uint64_t>(i)))[0][0][0].item<float>();
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO("2000 scenes sampled and rendered at 64x64 in " << seconds << " s");
  CHECK(checksum > 0.0);
  CHECK(seconds < 5.0);  // 20k in well under a minute
}

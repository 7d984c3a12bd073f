#include "apo_catch.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include <ATen/ATen.h>

#include "apo/core/error.hpp"
#include "apo/ref/judge.hpp"
#include "apo/ref/world.hpp"

namespace judge_test {

using namespace apo::ref;

// What a generated image looks like next to its ground truth: edges softened (Gaussian blur of
// sigma 0.8 pixel) and grain (Gaussian noise of 0.03).
at::Tensor degrade(const at::Tensor& frames) {
  const at::Tensor g = at::arange(7, at::kFloat).sub(3).pow(2).div(-2 * 0.8 * 0.8).exp();
  const at::Tensor kernel = at::outer(g / g.sum(), g / g.sum()).view({1, 1, 7, 7});
  const auto h = frames.size(-2), w = frames.size(-1);
  const at::Tensor planes = frames.reshape({-1, 1, h, w});
  const at::Tensor blurred = at::conv2d(at::pad(planes, {3, 3, 3, 3}, "replicate"), kernel);
  return (blurred.view(frames.sizes()) + 0.03 * at::randn(frames.sizes())).clamp(0, 1);
}

double colour_gap(Colour a, Colour b) {
  const Rgb x = colour_value(a), y = colour_value(b);
  return std::sqrt((x.r - y.r) * (x.r - y.r) + (x.g - y.g) * (x.g - y.g) +
                   (x.b - y.b) * (x.b - y.b));
}

bool throws_invalid(auto&& f) {
  try {
    f();
  } catch (const apo::Error& e) {
    return e.code() == apo::ErrorCode::InvalidArgument;
  }
  return false;
}

struct Figures {
  double min = 1.0, sum = 0.0, max = 0.0;
  int n = 0;
  void add(double v) {
    min = std::min(min, v);
    max = std::max(max, v);
    sum += v;
    ++n;
  }
  double mean() const { return sum / n; }
};

}  // namespace judge_test

TEST_CASE("The judge passes ground truth and fails noise", "[judge]") {
  using namespace judge_test;
  at::manual_seed(0);
  Figures truth, truth_large, noise, degraded;
  for (std::uint64_t seed = 0; seed < 300; ++seed) {
    const Scene scene = sample_scene(20000 + seed);
    const std::string text = caption(scene);
    const at::Tensor image = render_image(scene);
    truth.add(judge_image(image, text).score);
    noise.add(judge_image(at::rand({3, 64, 64}), text).score);
    degraded.add(judge_image(degrade(image), text).score);
    if (seed % 10 == 0) truth_large.add(judge_image(render_image(scene, 96), text).score);
  }
  INFO("ground truth min " << truth.min << " mean " << truth.mean() << "; noise max " << noise.max
                           << "; blurred + noisy min " << degraded.min << " mean "
                           << degraded.mean());
  CHECK(truth.min >= 0.95);
  CHECK(truth_large.min >= 0.95);
  CHECK(noise.max < 0.3);
  CHECK(degraded.min >= 0.85);
  // The alpha channel is ignored: RGBA and RGB judge alike.
  const Scene scene = sample_scene(4);
  const at::Tensor rgba = render_image(scene);
  CHECK(judge_image(rgba, caption(scene)).score ==
        judge_image(rgba.narrow(0, 0, 3), caption(scene)).score);
}

TEST_CASE("A picture of another caption loses the part that differs", "[judge]") {
  using namespace judge_test;
  int cases = 0;
  for (std::uint64_t seed = 0; seed < 120; ++seed) {
    const Scene scene = sample_scene(30000 + seed);
    const std::string text = caption(scene);
    const auto check = [&](Scene wrong, const char* part) {
      const JudgeReport report = judge_image(render_image(wrong), text);
      INFO(text << " judged on: " << caption(wrong));
      CHECK(report.parts.at(part) <= 0.3);
      CHECK(report.score <= 0.65);
      ++cases;
    };
    Scene wrong = scene;
    wrong.lighting = static_cast<Lighting>((static_cast<int>(scene.lighting) + 1 + seed % 4) % 5);
    check(wrong, "lighting");
    wrong = scene;
    wrong.background = static_cast<Colour>((static_cast<int>(scene.background) + 4) % 12);
    check(wrong, "background");
    if (scene.shapes.empty()) {
      // Background only asks for an empty foreground.
      Scene added = scene;
      added.shapes.push_back(ShapeSpec{});  // a medium circle in the centre
      added.shapes[0].colour =
          colour_gap(Colour::white, scene.background) > 0.5 ? Colour::white : Colour::black;
      check(added, "shape");
      continue;
    }
    wrong = scene;
    wrong.shapes[0].kind =
        static_cast<ShapeKind>((static_cast<int>(scene.shapes[0].kind) + 1 + seed % 4) % 5);
    check(wrong, "shape");
    wrong = scene;
    wrong.shapes[0].size =
        static_cast<SizeClass>((static_cast<int>(scene.shapes[0].size) + 1 + seed % 2) % 3);
    check(wrong, "size");
    wrong = scene;
    for (int step = 1; step < 9; ++step) {
      const auto p =
          static_cast<Position>((static_cast<int>(scene.shapes[0].position) + step + seed) % 9);
      if (p != scene.shapes[0].position &&
          (scene.shapes.size() < 2 || p != scene.shapes[1].position)) {
        wrong.shapes[0].position = p;
        break;
      }
    }
    check(wrong, "position");
    wrong = scene;
    for (int step = 1; step < 12; ++step) {
      const auto c =
          static_cast<Colour>((static_cast<int>(scene.shapes[0].colour) + step + seed) % 12);
      bool far =
          colour_gap(c, scene.shapes[0].colour) > 0.4 && colour_gap(c, scene.background) > 0.4;
      if (scene.shapes.size() > 1) far = far && colour_gap(c, scene.shapes[1].colour) > 0.3;
      if (far) {
        wrong.shapes[0].colour = c;
        break;
      }
    }
    check(wrong, "colour");
  }
  CHECK(cases > 500);
}

TEST_CASE("The judge scores clips: motion and temporal consistency", "[judge]") {
  using namespace judge_test;
  at::manual_seed(1);
  Figures truth, noise, degraded, wrong_motion;
  for (std::uint64_t seed = 0; seed < 24; ++seed) {
    const Scene scene = sample_scene(40000 + seed, true);
    const std::string text = caption(scene);
    const at::Tensor clip = render_clip(scene);
    const JudgeReport report = judge_clip(clip, text);
    truth.add(report.score);
    CHECK(report.parts.count("motion") == 1);
    CHECK(report.parts.count("temporal") == 1);
    noise.add(judge_clip(at::rand({8, 3, 64, 64}), text).score);
    degraded.add(judge_clip(degrade(clip), text).score);
    Scene wrong = scene;
    wrong.motion = static_cast<Motion>(1 + (static_cast<int>(scene.motion) + seed % 5) % 6);
    const JudgeReport moved = judge_clip(render_clip(wrong), text);
    CHECK(moved.parts.at("motion") <= 0.3);
    wrong_motion.add(moved.score);
    // A frame shuffled in time breaks the motion or the consistency.
    const at::Tensor shuffled = clip.index_select(0, at::tensor({0, 6, 2, 7, 1, 5, 3, 4}));
    const JudgeReport jumbled = judge_clip(shuffled, text);
    CHECK(std::min(jumbled.parts.at("motion"), jumbled.parts.at("position")) < 0.8);
  }
  INFO("clips: ground truth min " << truth.min << " mean " << truth.mean() << "; noise max "
                                  << noise.max << "; blurred + noisy min " << degraded.min
                                  << "; wrong motion max " << wrong_motion.max);
  CHECK(truth.min >= 0.95);
  CHECK(noise.max < 0.3);
  CHECK(degraded.min >= 0.85);
  CHECK(wrong_motion.max <= 0.65);
  // A still clip of a moving caption loses the motion.
  const Scene scene = sample_scene(5, true);
  const at::Tensor still = render_image(scene).unsqueeze(0).expand({8, 4, 64, 64});
  CHECK(judge_clip(still, caption(scene)).parts.at("motion") <= 0.3);
}

TEST_CASE("The judge rejects bad input and survives odd input", "[judge]") {
  using namespace judge_test;
  const std::string text = "a small red circle on the left, blue background";
  at::Tensor image = render_image(scene_for(parse_caption(text), 1));
  at::Tensor nan = image.clone();
  nan[0][5][5] = std::numeric_limits<float>::quiet_NaN();
  CHECK(throws_invalid([&] { judge_image(nan, text); }));
  CHECK(throws_invalid([&] { judge_image(image.unsqueeze(0), text); }));
  CHECK(throws_invalid([&] { judge_image(image[0], text); }));
  CHECK(throws_invalid([&] { judge_image(image.narrow(0, 0, 2), text); }));
  CHECK(throws_invalid([&] { judge_image(at::rand({3, 16, 16}), text); }));
  CHECK(throws_invalid([&] { judge_image(image, "a small red blob, blue background"); }));
  CHECK(throws_invalid([&] { judge_clip(image, text); }));
  CHECK(throws_invalid([&] { judge_clip(image.unsqueeze(0), text); }));
  CHECK(throws_invalid([&] { judge_image(image.to(at::kLong), text); }));
  // Any tensor of the right rank gets a score in [0, 1]: flat, saturated, out of range, odd sizes.
  for (const at::Tensor& odd :
       {at::zeros({3, 64, 64}), at::ones({4, 64, 64}), at::full({3, 40, 40}, 7.0),
        at::rand({3, 33, 200}) * 4 - 2, at::rand({4, 300, 50}), image.to(at::kHalf),
        image.to(at::kDouble)}) {
    for (const char* caption_text : {text.c_str(), "white background",
                                     "a large black star in the centre, a small white cross at the "
                                     "top, gray background, dim light"}) {
      const JudgeReport report = judge_image(odd, caption_text);
      CHECK(report.score >= 0.0);
      CHECK(report.score <= 1.0);
    }
  }
  CHECK(judge_image(image.to(at::kDouble), text).score >= 0.95);
  CHECK(judge_clip(at::zeros({2, 3, 32, 32}), text).score <= 0.3);
}

TEST_CASE("SSIM and PSNR", "[judge]") {
  using namespace judge_test;
  at::manual_seed(2);
  const at::Tensor a = render_image(sample_scene(3));
  CHECK(ssim(a, a) == Approx(1.0).margin(1e-9));
  CHECK(std::isinf(psnr(a, a)));
  // Constant images: SSIM is the luminance term alone, (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1).
  const double expected = (2 * 0.2 * 0.4 + 1e-4) / (0.04 + 0.16 + 1e-4);
  CHECK(ssim(at::full({3, 32, 32}, 0.2), at::full({3, 32, 32}, 0.4)) ==
        Approx(expected).epsilon(1e-9));
  CHECK(psnr(at::full({3, 32, 32}, 0.2), at::full({3, 32, 32}, 0.3)) == Approx(20.0).epsilon(1e-6));
  // More noise, lower SSIM and PSNR; clips average over frames.
  const at::Tensor little = (a + 0.02 * at::randn(a.sizes())).clamp(0, 1);
  const at::Tensor much = (a + 0.2 * at::randn(a.sizes())).clamp(0, 1);
  CHECK(ssim(a, little) > ssim(a, much));
  CHECK(psnr(a, little) > psnr(a, much));
  const at::Tensor clip = at::stack({a, little});
  const at::Tensor other = at::stack({little, a});
  CHECK(ssim(clip, other) == Approx(ssim(a, little)).epsilon(1e-9));
  CHECK(throws_invalid([&] { ssim(a, a.narrow(1, 0, 32)); }));
  CHECK(throws_invalid([&] { ssim(a[0], a[0]); }));
  CHECK(throws_invalid([&] { psnr(a, a.narrow(0, 0, 3)); }));
}

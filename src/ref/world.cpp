#include "apo/ref/world.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <optional>
#include <sstream>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "apo/core/error.hpp"

namespace apo::ref {
namespace {

constexpr float kPi = std::numbers::pi_v<float>;

// The scene's random stream: splitmix64, and apo's own mapping to floats (the standard
// distributions' outputs are left to each library).
class SplitMix {
 public:
  explicit SplitMix(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  /// [0, 1) with 24 bits.
  float uniform() { return static_cast<float>(next() >> 40) * 0x1p-24f; }
  float uniform(float lo, float hi) { return lo + (hi - lo) * uniform(); }
  /// 0 .. n-1.
  std::size_t index(std::size_t n) {
    return static_cast<std::size_t>(((next() >> 32) * static_cast<std::uint64_t>(n)) >> 32);
  }

 private:
  std::uint64_t state_;
};

constexpr std::array<Rgb, 12> kColours{{
    {0.85f, 0.15f, 0.13f},  // red
    {0.96f, 0.55f, 0.10f},  // orange
    {0.96f, 0.88f, 0.18f},  // yellow
    {0.16f, 0.68f, 0.22f},  // green
    {0.15f, 0.80f, 0.86f},  // cyan
    {0.14f, 0.28f, 0.86f},  // blue
    {0.56f, 0.20f, 0.76f},  // purple
    {0.97f, 0.56f, 0.76f},  // pink
    {0.95f, 0.95f, 0.95f},  // white
    {0.50f, 0.50f, 0.50f},  // gray
    {0.07f, 0.07f, 0.07f},  // black
    {0.50f, 0.30f, 0.13f},  // brown
}};

// Lighting as a mix of weight w towards a light colour: affine per channel.
struct LightMix {
  float weight;
  Rgb target;
};
constexpr std::array<LightMix, 5> kLights{{
    {0.0f, {0.0f, 0.0f, 0.0f}},     // neutral
    {0.38f, {1.0f, 1.0f, 1.0f}},    // bright
    {0.48f, {0.0f, 0.0f, 0.0f}},    // dim
    {0.35f, {1.0f, 0.58f, 0.12f}},  // warm
    {0.35f, {0.12f, 0.42f, 1.0f}},  // cool
}};

// Sampling constraints, in nominal (unlit) colour distance.
constexpr float kMinShapeBackgroundDistance = 0.4f;
constexpr float kMinShapeShapeDistance = 0.3f;
// A lighting is drawn only where it changes this scene's colours visibly against every other
// lighting (mean distance over background and shapes, lit).
constexpr float kMinLightingDistance = 0.12f;
// Shapes keep this far from the image's edge and from each other.
constexpr float kMargin = 0.02f;
constexpr float kMaxJitter = 0.04f;
constexpr float kMaxScaleJitter = 1.05f;
// For clips: the most a position cell's centre may be pulled inwards when sampling.
constexpr float kMaxClipPull = 0.06f;
constexpr float kMotionDistance = 0.2f;
const float kMotionGrowth = std::log(1.3f * 1.3f);  // 1/1.3 .. 1.3 over the clip

float distance(Rgb a, Rgb b) {
  return std::sqrt((a.r - b.r) * (a.r - b.r) + (a.g - b.g) * (a.g - b.g) +
                   (a.b - b.b) * (a.b - b.b));
}

float clamp01(float v) {
  return std::clamp(v, 0.0f, 1.0f);
}

std::array<float, 2> cell_centre(Position position) {
  switch (position) {
    case Position::centre:
      return {0.5f, 0.5f};
    case Position::left:
      return {0.25f, 0.5f};
    case Position::right:
      return {0.75f, 0.5f};
    case Position::top:
      return {0.5f, 0.25f};
    case Position::bottom:
      return {0.5f, 0.75f};
    case Position::top_left:
      return {0.25f, 0.25f};
    case Position::top_right:
      return {0.75f, 0.25f};
    case Position::bottom_left:
      return {0.25f, 0.75f};
    case Position::bottom_right:
      return {0.75f, 0.75f};
  }
  return {0.5f, 0.5f};
}

float max_motion_scale(Motion motion) {
  return motion == Motion::grow || motion == Motion::shrink ? std::exp(kMotionGrowth / 2) : 1.0f;
}

// Range of the motion's displacement over the clip, per axis: {min dx, max dx, min dy, max dy}.
std::array<float, 4> motion_range(Motion motion) {
  const auto first = geometry::motion_at(motion, -0.5f);
  const auto last = geometry::motion_at(motion, 0.5f);
  return {std::min(first.dx, last.dx), std::max(first.dx, last.dx), std::min(first.dy, last.dy),
          std::max(first.dy, last.dy)};
}

// Clamps a centre so that a shape reaching `extent` stays inside the image over the motion.
std::array<float, 2> keep_inside(std::array<float, 2> centre, float extent, Motion motion) {
  const auto range = motion_range(motion);
  const auto clamp_axis = [&](float v, float lo_move, float hi_move) {
    const float lo = extent + kMargin - lo_move;
    const float hi = 1.0f - extent - kMargin - hi_move;
    return lo > hi ? 0.5f * (lo + hi) : std::clamp(v, lo, hi);
  };
  return {clamp_axis(centre[0], range[0], range[1]), clamp_axis(centre[1], range[2], range[3])};
}

// A shape's geometry in one frame.
struct Placed {
  float cx, cy, radius, rotation;
};

std::array<float, 2> base_centre(const ShapeSpec& shape, Motion motion) {
  const auto nominal = geometry::nominal_centre(shape.kind, shape.size, shape.position, motion);
  const float extent = geometry::nominal_radius(shape.size) * shape.scale *
                       geometry::reach(shape.kind) * max_motion_scale(motion);
  return keep_inside({nominal[0] + shape.offset_x, nominal[1] + shape.offset_y}, extent, motion);
}

Placed place(const ShapeSpec& shape, Motion motion, float phase) {
  const auto centre = base_centre(shape, motion);
  const auto state = geometry::motion_at(motion, phase);
  return {centre[0] + state.dx, centre[1] + state.dy,
          geometry::nominal_radius(shape.size) * shape.scale * state.scale, shape.rotation_rad};
}

// --- signed distances (negative inside), after Inigo Quilez's 2D distance functions ---------

float sd_box(float x, float y, float half) {
  const float qx = std::abs(x) - half;
  const float qy = std::abs(y) - half;
  const float ox = std::max(qx, 0.0f);
  const float oy = std::max(qy, 0.0f);
  return std::sqrt(ox * ox + oy * oy) + std::min(std::max(qx, qy), 0.0f);
}

// Equilateral triangle of half side `half`, centroid at the origin, apex up (y up).
float sd_triangle(float x, float y, float half) {
  constexpr float k = 1.7320508f;
  x = std::abs(x) - half;
  y = y + half / k;
  if (x + k * y > 0.0f) {
    const float nx = (x - k * y) / 2.0f;
    const float ny = (-k * x - y) / 2.0f;
    x = nx;
    y = ny;
  }
  x -= std::clamp(x, -2.0f * half, 0.0f);
  const float length = std::sqrt(x * x + y * y);
  return y > 0.0f ? -length : length;
}

// Five-pointed star of outer radius r, inner radius rf × r, a point up (y up).
float sd_star5(float x, float y, float r, float rf) {
  constexpr float k1x = 0.809016994f, k1y = -0.587785252f;
  constexpr float k2x = -k1x, k2y = k1y;
  x = std::abs(x);
  float d = std::max(k1x * x + k1y * y, 0.0f);
  x -= 2.0f * d * k1x;
  y -= 2.0f * d * k1y;
  d = std::max(k2x * x + k2y * y, 0.0f);
  x -= 2.0f * d * k2x;
  y -= 2.0f * d * k2y;
  x = std::abs(x);
  y -= r;
  const float bax = rf * -k1y;
  const float bay = rf * k1x - 1.0f;
  const float h = std::clamp((x * bax + y * bay) / (bax * bax + bay * bay), 0.0f, r);
  const float px = x - bax * h;
  const float py = y - bay * h;
  const float length = std::sqrt(px * px + py * py);
  return (y * bax - x * bay) >= 0.0f ? length : -length;
}

// Plus sign of arm half-length a and arm half-width b.
float sd_cross(float x, float y, float a, float b) {
  x = std::abs(x);
  y = std::abs(y);
  if (y > x) std::swap(x, y);
  const float qx = x - a;
  const float qy = y - b;
  const float k = std::max(qy, qx);
  float wx = qx, wy = qy;
  if (k <= 0.0f) {
    wx = b - x;
    wy = -k;
  }
  wx = std::max(wx, 0.0f);
  wy = std::max(wy, 0.0f);
  const float length = std::sqrt(wx * wx + wy * wy);
  return k > 0.0f ? length : -length;
}

// Shape dimensions for an area-equivalent radius of 1.
constexpr float kSquareHalf = 0.886226925f;  // sqrt(pi) / 2
constexpr float kTriangleHalf = 1.346773f;   // side s with sqrt(3)/4 s^2 = pi, halved
constexpr float kStarInner = 0.5f;           // inner radius / outer radius
constexpr float kStarOuter = 1.462135f;      // sqrt(pi / (5 sin 36° × 0.5))
constexpr float kCrossWidth = 0.38f;         // arm half-width / arm half-length
constexpr float kCrossArm = 1.129619f;       // sqrt(pi / (8 × 0.38 - 4 × 0.38^2))

float signed_distance(ShapeKind kind, float x, float y, float radius) {
  switch (kind) {
    case ShapeKind::circle:
      return std::sqrt(x * x + y * y) - radius;
    case ShapeKind::square:
      return sd_box(x, y, kSquareHalf * radius);
    case ShapeKind::triangle:
      return sd_triangle(x, -y, kTriangleHalf * radius);
    case ShapeKind::star:
      return sd_star5(x, -y, kStarOuter * radius, kStarInner);
    case ShapeKind::cross:
      return sd_cross(x, y, kCrossArm * radius, kCrossArm * kCrossWidth * radius);
  }
  return 1.0f;
}

// --- rendering ----------------------------------------------------------------------------

void check_size(int size) {
  if (size < 8 || size > 4096)
    fail(ErrorCode::InvalidArgument, "image size {} is not in 8..4096", size);
}

void check_index(const Scene& scene, std::size_t index) {
  if (index >= scene.shapes.size()) {
    fail(ErrorCode::InvalidArgument, "shape index {} is out of range for a scene of {} shapes",
         index, scene.shapes.size());
  }
}

// The unlit background, planar RGB [3, size, size].
void render_background(const Scene& scene, int size, float* out) {
  SplitMix rng(scene.texture_seed);
  struct Grating {
    float fx, fy, phase;
  };
  std::array<Grating, 2> gratings{};
  for (auto& g : gratings) {
    const float angle = rng.uniform(0.0f, 2.0f * kPi);
    const float cycles = rng.uniform(2.0f, 7.0f);
    g = {cycles * std::cos(angle), cycles * std::sin(angle), rng.uniform(0.0f, 2.0f * kPi)};
  }
  const Rgb nominal = colour_value(scene.background);
  const Rgb base{nominal.r + scene.background_shade.r, nominal.g + scene.background_shade.g,
                 nominal.b + scene.background_shade.b};
  const float gx = std::cos(scene.gradient_angle_rad);
  const float gy = std::sin(scene.gradient_angle_rad);
  const std::size_t plane = static_cast<std::size_t>(size) * size;
  const float pixel = 1.0f / static_cast<float>(size);
  for (int i = 0; i < size; ++i) {
    const float y = (static_cast<float>(i) + 0.5f) * pixel;
    for (int j = 0; j < size; ++j) {
      const float x = (static_cast<float>(j) + 0.5f) * pixel;
      const float g = scene.gradient_amount * ((x - 0.5f) * gx + (y - 0.5f) * gy);
      float t = 0.0f;
      for (const auto& grating : gratings) {
        t += std::sin(2.0f * kPi * (grating.fx * x + grating.fy * y) + grating.phase);
      }
      t *= 0.5f * scene.texture_amount;
      const float shift = 0.2f * g + t;
      const std::size_t k = static_cast<std::size_t>(i) * size + j;
      out[k] = clamp01(base.r * (1.0f + g) + shift);
      out[plane + k] = clamp01(base.g * (1.0f + g) + shift);
      out[2 * plane + k] = clamp01(base.b * (1.0f + g) + shift);
    }
  }
}

// A shape's coverage and unlit colour over its bounding box, composited "over" `rgb` and
// accumulated into the union alpha (either may be null).
void draw_shape(const ShapeSpec& shape, const Placed& placed, int size, float* rgb, float* alpha,
                float* layer_alpha) {
  const float pixel = 1.0f / static_cast<float>(size);
  const float reach = geometry::reach(shape.kind) * placed.radius + 2.0f * pixel;
  const int i0 = std::max(0, static_cast<int>(std::floor((placed.cy - reach) * size)));
  const int i1 = std::min(size - 1, static_cast<int>(std::ceil((placed.cy + reach) * size)));
  const int j0 = std::max(0, static_cast<int>(std::floor((placed.cx - reach) * size)));
  const int j1 = std::min(size - 1, static_cast<int>(std::ceil((placed.cx + reach) * size)));
  const Rgb nominal = colour_value(shape.colour);
  const Rgb base{nominal.r + shape.shade.r, nominal.g + shape.shade.g, nominal.b + shape.shade.b};
  const float cos_r = std::cos(placed.rotation);
  const float sin_r = std::sin(placed.rotation);
  const float shade_x = std::cos(shape.shading_angle_rad);
  const float shade_y = std::sin(shape.shading_angle_rad);
  const float shade_scale = 0.5f * shape.shading_amount / std::max(reach, pixel);
  const std::size_t plane = static_cast<std::size_t>(size) * size;
  for (int i = i0; i <= i1; ++i) {
    const float dy = (static_cast<float>(i) + 0.5f) * pixel - placed.cy;
    for (int j = j0; j <= j1; ++j) {
      const float dx = (static_cast<float>(j) + 0.5f) * pixel - placed.cx;
      // Into the shape's own frame: turn back by its rotation.
      const float lx = cos_r * dx + sin_r * dy;
      const float ly = -sin_r * dx + cos_r * dy;
      const float d = signed_distance(shape.kind, lx, ly, placed.radius);
      const float coverage = clamp01(0.5f - d / pixel);
      if (coverage <= 0.0f) continue;
      const std::size_t k = static_cast<std::size_t>(i) * size + j;
      if (layer_alpha != nullptr) layer_alpha[k] = coverage;
      if (alpha != nullptr) alpha[k] = 1.0f - (1.0f - alpha[k]) * (1.0f - coverage);
      if (rgb != nullptr) {
        const float m = 1.0f + shade_scale * (dx * shade_x + dy * shade_y);
        const float c[3] = {clamp01(base.r * m), clamp01(base.g * m), clamp01(base.b * m)};
        for (int ch = 0; ch < 3; ++ch) {
          float& v = rgb[ch * plane + k];
          v = coverage * c[ch] + (1.0f - coverage) * v;
        }
      }
    }
  }
}

void light(const Scene& scene, int size, float* rgb) {
  if (scene.lighting == Lighting::neutral) return;
  const auto& mix = kLights[static_cast<std::size_t>(scene.lighting)];
  const float w = std::clamp(mix.weight * scene.lighting_strength, 0.0f, 1.0f);
  const float target[3] = {mix.target.r, mix.target.g, mix.target.b};
  const std::size_t plane = static_cast<std::size_t>(size) * size;
  for (int ch = 0; ch < 3; ++ch) {
    float* p = rgb + ch * plane;
    const float add = w * target[ch];
    for (std::size_t k = 0; k < plane; ++k) p[k] = (1.0f - w) * p[k] + add;
  }
}

// One frame [4, size, size] into `out` (zeroed by the caller), at motion phase `phase`.
void render_frame(const Scene& scene, int size, float phase, float* out,
                  const std::vector<float>* background) {
  const std::size_t plane = static_cast<std::size_t>(size) * size;
  if (background != nullptr) {
    std::copy(background->begin(), background->end(), out);
  } else {
    render_background(scene, size, out);
  }
  for (const auto& shape : scene.shapes) {
    draw_shape(shape, place(shape, scene.motion, phase), size, out, out + 3 * plane, nullptr);
  }
  light(scene, size, out);
}

at::Tensor new_image(int channels, int size) {
  return at::zeros({channels, size, size}, at::kFloat);
}

// --- captions -------------------------------------------------------------------------------

constexpr std::array<std::string_view, 9> kPlacePhrases{
    "in the centre",    "on the left",        "on the right",
    "at the top",       "at the bottom",      "at the top left",
    "at the top right", "at the bottom left", "at the bottom right",
};

constexpr std::array<std::string_view, 7> kMotionPhrases{
    "", "moving left", "moving right", "moving up", "moving down", "growing", "shrinking",
};

std::vector<std::string> split_words(std::string_view text) {
  std::vector<std::string> words;
  std::string word;
  for (const char c : text) {
    if (c == ' ' || c == ',' || c == '\t' || c == '\n' || c == '\r') {
      if (!word.empty()) words.push_back(std::move(word));
      word.clear();
    } else {
      word.push_back(c);
    }
  }
  if (!word.empty()) words.push_back(std::move(word));
  return words;
}

std::string join(const std::vector<std::string>& words, std::size_t from, std::size_t to) {
  std::string out;
  for (std::size_t i = from; i < to; ++i) {
    if (!out.empty()) out += ' ';
    out += words[i];
  }
  return out;
}

std::int64_t token_id(std::string_view word) {
  const auto& words = vocabulary();
  for (std::size_t i = 1; i < words.size(); ++i) {
    if (words[i] == word) return static_cast<std::int64_t>(i);
  }
  return -1;
}

// --- sampling -------------------------------------------------------------------------------

float lighting_distance(const CaptionSpec& spec, Lighting a, Lighting b) {
  float total = distance(apply_lighting(colour_value(spec.background), a),
                         apply_lighting(colour_value(spec.background), b));
  for (const auto& shape : spec.shapes) {
    total += distance(apply_lighting(colour_value(shape.colour), a),
                      apply_lighting(colour_value(shape.colour), b));
  }
  return total / static_cast<float>(1 + spec.shapes.size());
}

float worst_lighting_distance(const CaptionSpec& spec, Lighting lighting) {
  float worst = 1e9f;
  for (const auto& entry : EnumTraits<Lighting>::entries) {
    if (entry.value != lighting)
      worst = std::min(worst, lighting_distance(spec, lighting, entry.value));
  }
  return worst;
}

bool shapes_apart(const Scene& scene) {
  if (scene.shapes.size() < 2) return true;
  const float growth = max_motion_scale(scene.motion);
  const auto a = place(scene.shapes[0], scene.motion, 0.0f);
  const auto b = place(scene.shapes[1], scene.motion, 0.0f);
  const float needed = growth * (geometry::reach(scene.shapes[0].kind) * a.radius +
                                 geometry::reach(scene.shapes[1].kind) * b.radius) +
                       kMargin;
  return std::hypot(a.cx - b.cx, a.cy - b.cy) >= needed;
}

// How far a position cell's centre is pulled inwards for this shape and motion.
float pull(const ShapeCaption& shape, Motion motion) {
  const auto cell = cell_centre(shape.position);
  const auto nominal = geometry::nominal_centre(shape.kind, shape.size, shape.position, motion);
  return std::max(std::abs(cell[0] - nominal[0]), std::abs(cell[1] - nominal[1]));
}

void draw_details(SplitMix& rng, ShapeSpec& shape) {
  shape.offset_x = rng.uniform(-kMaxJitter, kMaxJitter);
  shape.offset_y = rng.uniform(-kMaxJitter, kMaxJitter);
  shape.scale = rng.uniform(2.0f - kMaxScaleJitter, kMaxScaleJitter);
  shape.rotation_rad = rng.uniform(-0.35f, 0.35f);
  shape.shade = {rng.uniform(-0.04f, 0.04f), rng.uniform(-0.04f, 0.04f),
                 rng.uniform(-0.04f, 0.04f)};
  shape.shading_angle_rad = rng.uniform(0.0f, 2.0f * kPi);
  shape.shading_amount = rng.uniform(0.0f, 0.08f);
}

Scene details_for(const CaptionSpec& spec, SplitMix& rng) {
  Scene scene;
  scene.background = spec.background;
  scene.lighting = spec.lighting;
  scene.motion = spec.motion;
  scene.background_shade = {rng.uniform(-0.03f, 0.03f), rng.uniform(-0.03f, 0.03f),
                            rng.uniform(-0.03f, 0.03f)};
  scene.gradient_angle_rad = rng.uniform(0.0f, 2.0f * kPi);
  scene.gradient_amount = rng.uniform(0.0f, 0.16f);
  scene.texture_amount = rng.uniform(0.005f, 0.03f);
  scene.texture_seed = rng.next();
  scene.lighting_strength = rng.uniform(0.95f, 1.05f);
  for (const auto& caption : spec.shapes) {
    ShapeSpec shape;
    shape.kind = caption.kind;
    shape.colour = caption.colour;
    shape.size = caption.size;
    shape.position = caption.position;
    draw_details(rng, shape);
    scene.shapes.push_back(shape);
  }
  return scene;
}

}  // namespace

// --- colours and lighting -----------------------------------------------------------------

Rgb colour_value(Colour colour) {
  return kColours.at(static_cast<std::size_t>(colour));
}

Rgb apply_lighting(Rgb c, Lighting lighting, float strength) {
  const auto& mix = kLights.at(static_cast<std::size_t>(lighting));
  const float w = std::clamp(mix.weight * strength, 0.0f, 1.0f);
  return {(1.0f - w) * c.r + w * mix.target.r, (1.0f - w) * c.g + w * mix.target.g,
          (1.0f - w) * c.b + w * mix.target.b};
}

Rgb remove_lighting(Rgb c, Lighting lighting, float strength) {
  const auto& mix = kLights.at(static_cast<std::size_t>(lighting));
  const float w = std::clamp(mix.weight * strength, 0.0f, 0.99f);
  return {(c.r - w * mix.target.r) / (1.0f - w), (c.g - w * mix.target.g) / (1.0f - w),
          (c.b - w * mix.target.b) / (1.0f - w)};
}

// --- geometry -------------------------------------------------------------------------------

namespace geometry {

float nominal_radius(SizeClass size) {
  switch (size) {
    case SizeClass::small:
      return 0.085f;
    case SizeClass::medium:
      return 0.13f;
    case SizeClass::large:
      return 0.18f;
  }
  return 0.13f;
}

float reach(ShapeKind kind) {
  switch (kind) {
    case ShapeKind::circle:
      return 1.0f;
    case ShapeKind::square:
      return kSquareHalf * 1.41421356f;
    case ShapeKind::triangle:
      return kTriangleHalf * 2.0f / 1.7320508f;  // circumradius of side 2 × half
    case ShapeKind::star:
      return kStarOuter;
    case ShapeKind::cross:
      return kCrossArm * std::sqrt(1.0f + kCrossWidth * kCrossWidth);
  }
  return 1.0f;
}

std::array<float, 2> nominal_centre(ShapeKind kind, SizeClass size, Position position,
                                    Motion motion) {
  const float extent =
      nominal_radius(size) * kMaxScaleJitter * reach(kind) * max_motion_scale(motion);
  return keep_inside(cell_centre(position), extent, motion);
}

MotionState motion_at(Motion motion, float phase) {
  switch (motion) {
    case Motion::none:
      return {0.0f, 0.0f, 1.0f};
    case Motion::left:
      return {-kMotionDistance * phase, 0.0f, 1.0f};
    case Motion::right:
      return {kMotionDistance * phase, 0.0f, 1.0f};
    case Motion::up:
      return {0.0f, -kMotionDistance * phase, 1.0f};
    case Motion::down:
      return {0.0f, kMotionDistance * phase, 1.0f};
    case Motion::grow:
      return {0.0f, 0.0f, std::exp(kMotionGrowth * phase)};
    case Motion::shrink:
      return {0.0f, 0.0f, std::exp(-kMotionGrowth * phase)};
  }
  return {0.0f, 0.0f, 1.0f};
}

float frame_phase(int frame, int frames) {
  if (frames <= 1) return 0.0f;
  return static_cast<float>(frame) / static_cast<float>(frames - 1) - 0.5f;
}

void shape_coverage(ShapeKind kind, float cx, float cy, float radius, float rotation_rad, int width,
                    int height, float pixel, std::span<float> out) {
  if (out.size() < static_cast<std::size_t>(width) * height) {
    fail(ErrorCode::InvalidArgument, "coverage buffer of {} floats is smaller than {}x{}",
         out.size(), width, height);
  }
  const float cos_r = std::cos(rotation_rad);
  const float sin_r = std::sin(rotation_rad);
  for (int i = 0; i < height; ++i) {
    const float dy = (static_cast<float>(i) + 0.5f) * pixel - cy;
    for (int j = 0; j < width; ++j) {
      const float dx = (static_cast<float>(j) + 0.5f) * pixel - cx;
      const float lx = cos_r * dx + sin_r * dy;
      const float ly = -sin_r * dx + cos_r * dy;
      out[static_cast<std::size_t>(i) * width + j] =
          clamp01(0.5f - signed_distance(kind, lx, ly, radius) / pixel);
    }
  }
}

}  // namespace geometry

// --- scenes -----------------------------------------------------------------------------------

Scene scene_for(const CaptionSpec& spec, std::uint64_t seed) {
  if (spec.shapes.size() > 2) {
    fail(ErrorCode::InvalidArgument, "a scene holds at most two shapes, not {}",
         spec.shapes.size());
  }
  if (spec.shapes.size() == 2 && spec.shapes[0].position == spec.shapes[1].position) {
    fail(ErrorCode::InvalidArgument, "two shapes at one position ({})",
         to_string(spec.shapes[0].position));
  }
  SplitMix rng(seed ^ 0x5CE7E5CE7E5CE7E5ull);
  Scene scene = details_for(spec, rng);
  // Redraw the jitter a few times where it makes two shapes touch; a spec whose shapes cannot
  // sit apart (two large shapes in neighbouring cells) keeps its last draw.
  for (int attempt = 0; attempt < 16 && !shapes_apart(scene); ++attempt) {
    for (auto& shape : scene.shapes) draw_details(rng, shape);
  }
  return scene;
}

Scene sample_scene(std::uint64_t seed, bool clip) {
  SplitMix rng(seed);
  CaptionSpec spec;
  const float u = rng.uniform();
  const std::size_t count = clip ? (u < 0.65f ? 1 : 2) : (u < 0.1f ? 0 : (u < 0.7f ? 1 : 2));
  spec.motion = clip ? static_cast<Motion>(1 + rng.index(6)) : Motion::none;
  spec.background = static_cast<Colour>(rng.index(kColours.size()));
  for (int attempt = 0;; ++attempt) {
    spec.shapes.clear();
    for (std::size_t s = 0; s < count; ++s) {
      ShapeCaption shape;
      shape.kind = static_cast<ShapeKind>(rng.index(5));
      shape.size = static_cast<SizeClass>(rng.index(3));
      std::vector<Colour> colours;
      for (std::size_t c = 0; c < kColours.size(); ++c) {
        const auto colour = static_cast<Colour>(c);
        bool ok = distance(colour_value(colour), colour_value(spec.background)) >=
                  kMinShapeBackgroundDistance;
        for (const auto& other : spec.shapes) {
          ok = ok &&
               distance(colour_value(colour), colour_value(other.colour)) >= kMinShapeShapeDistance;
        }
        if (ok) colours.push_back(colour);
      }
      shape.colour = colours[rng.index(colours.size())];
      std::vector<Position> positions;
      for (std::size_t p = 0; p < 9; ++p) {
        const auto position = static_cast<Position>(p);
        bool ok = true;
        for (const auto& other : spec.shapes) ok = ok && other.position != position;
        shape.position = position;
        if (clip) ok = ok && pull(shape, spec.motion) <= kMaxClipPull;
        if (ok) positions.push_back(position);
      }
      if (positions.empty()) break;
      shape.position = positions[rng.index(positions.size())];
      spec.shapes.push_back(shape);
    }
    if (spec.shapes.size() == count) {
      // The lighting: a random start, then the first that shows for these colours.
      const std::size_t start = rng.index(kLights.size());
      std::optional<Lighting> chosen;
      float best = -1.0f;
      Lighting best_lighting = Lighting::neutral;
      for (std::size_t k = 0; k < kLights.size() && !chosen; ++k) {
        const auto lighting = static_cast<Lighting>((start + k) % kLights.size());
        const float margin = worst_lighting_distance(spec, lighting);
        if (margin >= kMinLightingDistance) chosen = lighting;
        if (margin > best) {
          best = margin;
          best_lighting = lighting;
        }
      }
      spec.lighting = chosen.value_or(best_lighting);
      Scene scene = scene_for(spec, rng.next());
      if (shapes_apart(scene) || attempt >= 200) return scene;
    }
  }
}

CaptionSpec describe(const Scene& scene) {
  CaptionSpec spec;
  spec.background = scene.background;
  spec.lighting = scene.lighting;
  spec.motion = scene.motion;
  for (const auto& shape : scene.shapes) {
    spec.shapes.push_back({shape.kind, shape.colour, shape.size, shape.position});
  }
  return spec;
}

std::string caption(const Scene& scene) {
  return caption(describe(scene));
}

std::string caption(const CaptionSpec& spec) {
  std::vector<std::string> clauses;
  for (const auto& shape : spec.shapes) {
    clauses.push_back(fmt::format("a {} {} {} {}", to_string(shape.size), to_string(shape.colour),
                                  to_string(shape.kind),
                                  kPlacePhrases[static_cast<std::size_t>(shape.position)]));
  }
  clauses.push_back(fmt::format("{} background", to_string(spec.background)));
  if (spec.lighting != Lighting::neutral) {
    clauses.push_back(fmt::format("{} light", to_string(spec.lighting)));
  }
  if (spec.motion != Motion::none) {
    clauses.emplace_back(kMotionPhrases[static_cast<std::size_t>(spec.motion)]);
  }
  return fmt::format("{}", fmt::join(clauses, ", "));
}

CaptionSpec parse_caption(std::string_view text) {
  for (const auto& word : split_words(text)) {
    if (token_id(word) < 0) {
      fail(ErrorCode::InvalidArgument, "unknown word '{}' in caption '{}'", word, text);
    }
  }
  CaptionSpec spec;
  bool has_background = false, has_light = false, has_motion = false;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find(',', start);
    if (end == std::string_view::npos) end = text.size();
    const auto words = split_words(text.substr(start, end - start));
    start = end + 1;
    const std::string clause = join(words, 0, words.size());
    const auto bad = [&](std::string_view why) {
      fail(ErrorCode::InvalidArgument, "caption clause '{}' {} (caption '{}')", clause, why, text);
    };
    if (words.empty()) bad("is empty");
    if (words[0] == "a") {
      if (words.size() < 5) bad("is not 'a SIZE COLOUR SHAPE PLACE'");
      const auto size = parse_enum<SizeClass>(words[1]);
      const auto colour = parse_enum<Colour>(words[2]);
      const auto kind = parse_enum<ShapeKind>(words[3]);
      if (!size || !colour || !kind) bad("is not 'a SIZE COLOUR SHAPE PLACE'");
      const std::string place = join(words, 4, words.size());
      const auto phrase = std::find(kPlacePhrases.begin(), kPlacePhrases.end(), place);
      if (phrase == kPlacePhrases.end()) bad("has no place such as 'on the left'");
      if (spec.shapes.size() == 2) bad("is a third shape; a scene holds at most two");
      spec.shapes.push_back(
          {*kind, *colour, *size, static_cast<Position>(phrase - kPlacePhrases.begin())});
    } else if (words.size() == 2 && words[1] == "background") {
      const auto colour = parse_enum<Colour>(words[0]);
      if (!colour) bad("names no colour");
      if (has_background) bad("is a second background");
      spec.background = *colour;
      has_background = true;
    } else if (words.size() == 2 && words[1] == "light") {
      const auto lighting = parse_enum<Lighting>(words[0]);
      if (!lighting || *lighting == Lighting::neutral) bad("names no light");
      if (has_light) bad("is a second light");
      spec.lighting = *lighting;
      has_light = true;
    } else {
      const auto phrase = std::find(kMotionPhrases.begin() + 1, kMotionPhrases.end(), clause);
      if (phrase == kMotionPhrases.end()) bad("does not parse");
      if (has_motion) bad("is a second motion");
      spec.motion = static_cast<Motion>(phrase - kMotionPhrases.begin());
      has_motion = true;
    }
  }
  if (!has_background) {
    fail(ErrorCode::InvalidArgument, "caption '{}' names no background ('COLOUR background')",
         text);
  }
  return spec;
}

Scene with_lighting(Scene scene, Lighting lighting) {
  scene.lighting = lighting;
  return scene;
}

Scene background_only(Scene scene) {
  scene.shapes.clear();
  return scene;
}

Scene only_shape(Scene scene, std::size_t index) {
  check_index(scene, index);
  const ShapeSpec shape = scene.shapes[index];
  scene.shapes = {shape};
  return scene;
}

// --- rendering entry points ------------------------------------------------------------------

at::Tensor render_image(const Scene& scene, int size) {
  check_size(size);
  at::Tensor image = new_image(4, size);
  render_frame(scene, size, 0.0f, image.data_ptr<float>(), nullptr);
  return image;
}

at::Tensor render_clip(const Scene& scene, int frames, int size) {
  check_size(size);
  if (frames < 1 || frames > 256)
    fail(ErrorCode::InvalidArgument, "clip of {} frames is not in 1..256", frames);
  const std::size_t plane = static_cast<std::size_t>(size) * size;
  // The background does not move: render it once.
  std::vector<float> background(4 * plane, 0.0f);
  render_background(scene, size, background.data());
  at::Tensor clip = at::zeros({frames, 4, size, size}, at::kFloat);
  float* out = clip.data_ptr<float>();
  for (int t = 0; t < frames; ++t) {
    render_frame(scene, size, geometry::frame_phase(t, frames), out + t * 4 * plane, &background);
  }
  return clip;
}

at::Tensor render_shape_layer(const Scene& scene, std::size_t index, int size) {
  check_size(size);
  check_index(scene, index);
  const std::size_t plane = static_cast<std::size_t>(size) * size;
  at::Tensor layer = new_image(4, size);
  float* out = layer.data_ptr<float>();
  const auto& shape = scene.shapes[index];
  // Colour everywhere the shape's shading reaches, so that straight-alpha edges carry the
  // shape's colour rather than black.
  std::vector<float> alpha(plane, 0.0f);
  draw_shape(shape, place(shape, scene.motion, 0.0f), size, out, nullptr, alpha.data());
  for (std::size_t k = 0; k < plane; ++k) {
    if (alpha[k] > 0.0f) {
      for (int ch = 0; ch < 3; ++ch) out[ch * plane + k] /= alpha[k];
    }
    out[3 * plane + k] = alpha[k];
  }
  light(scene, size, out);
  return layer;
}

at::Tensor shape_masks(const Scene& scene, int size) {
  check_size(size);
  const std::size_t plane = static_cast<std::size_t>(size) * size;
  at::Tensor masks =
      at::zeros({static_cast<std::int64_t>(scene.shapes.size()), size, size}, at::kFloat);
  float* out = masks.data_ptr<float>();
  for (std::size_t s = 0; s < scene.shapes.size(); ++s) {
    draw_shape(scene.shapes[s], place(scene.shapes[s], scene.motion, 0.0f), size, nullptr, nullptr,
               out + s * plane);
  }
  return masks;
}

// --- vocabulary ---------------------------------------------------------------------------------

const std::vector<std::string>& vocabulary() {
  static const std::vector<std::string> words = [] {
    std::vector<std::string> v{"<pad>", "a"};
    for (const auto& e : EnumTraits<SizeClass>::entries) v.emplace_back(e.name);
    for (const auto& e : EnumTraits<Colour>::entries) v.emplace_back(e.name);
    for (const auto& e : EnumTraits<ShapeKind>::entries) v.emplace_back(e.name);
    for (const char* w : {"in",    "on",     "at",         "the",    "centre",  "left",     "right",
                          "top",   "bottom", "background", "bright", "dim",     "warm",     "cool",
                          "light", "moving", "up",         "down",   "growing", "shrinking"}) {
      v.emplace_back(w);
    }
    return v;
  }();
  return words;
}

std::vector<std::int64_t> caption_tokens(std::string_view text) {
  std::vector<std::int64_t> ids;
  for (const auto& word : split_words(text)) {
    const std::int64_t id = token_id(word);
    if (id < 0) fail(ErrorCode::InvalidArgument, "unknown word '{}' in caption '{}'", word, text);
    ids.push_back(id);
  }
  return ids;
}

at::Tensor tokenize(std::span<const std::string> captions, int length) {
  if (length < 1) fail(ErrorCode::InvalidArgument, "token length {} is not positive", length);
  at::Tensor tokens = at::zeros({static_cast<std::int64_t>(captions.size()), length}, at::kLong);
  auto* out = tokens.data_ptr<std::int64_t>();
  for (std::size_t b = 0; b < captions.size(); ++b) {
    const auto ids = caption_tokens(captions[b]);
    if (ids.size() > static_cast<std::size_t>(length)) {
      fail(ErrorCode::InvalidArgument, "caption '{}' has {} words, more than {} tokens",
           captions[b], ids.size(), length);
    }
    std::copy(ids.begin(), ids.end(), out + b * static_cast<std::size_t>(length));
  }
  return tokens;
}

}  // namespace apo::ref

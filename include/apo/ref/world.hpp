#pragma once

/// @file
/// @brief The procedural world the reference models learn: small scenes of one or two coloured
/// shapes on a background, under a lighting, moving in clips; their captions, a renderer and the
/// caption vocabulary.
///
/// A caption fixes what it says (kinds, colours, size classes, position classes, background
/// colour, lighting, motion) and leaves the rest open: position and size jitter, rotation, shade
/// of each colour, a shading across each shape, the background's gradient and texture, the
/// lighting's exact strength. Different seeds of one caption therefore give different pictures,
/// so that sampling a model is generation, not lookup. Everything is deterministic for a seed
/// (a splitmix64 stream with apo's own mapping to floats, the same on every platform).
///
/// Coordinates are fractions of the image: x to the right, y downwards, (0.5, 0.5) the centre.
/// Rendering is anti-aliased by analytic coverage (signed distance over the pixel's width).

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

#include "apo/core/enum_names.hpp"

namespace apo::ref {

/// @brief The shapes of the world; each is distinguishable from the others at 64×64.
enum class ShapeKind : std::uint8_t { circle, square, triangle, star, cross };

/// @brief The named colours, for shapes and backgrounds.
enum class Colour : std::uint8_t {
  red,
  orange,
  yellow,
  green,
  cyan,
  blue,
  purple,
  pink,
  white,
  gray,
  black,
  brown
};

/// @brief How large a shape is: its area-equivalent radius is about 0.085, 0.13 or 0.18 of the
/// image side.
enum class SizeClass : std::uint8_t { small, medium, large };

/// @brief Where a shape is: a cell of a 3×3 grid (centres at 0.25, 0.5 and 0.75), pulled inwards
/// where the shape would otherwise leave the image.
enum class Position : std::uint8_t {
  centre,
  left,
  right,
  top,
  bottom,
  top_left,
  top_right,
  bottom_left,
  bottom_right
};

/// @brief The light over the whole scene. `neutral` is what a caption that names no light means.
enum class Lighting : std::uint8_t { neutral, bright, dim, warm, cool };

/// @brief How the shapes move over a clip; `none` for images.
enum class Motion : std::uint8_t { none, left, right, up, down, grow, shrink };

/// @brief A colour, each channel in [0, 1].
struct Rgb {
  float r = 0.0f, g = 0.0f, b = 0.0f;
  friend bool operator==(const Rgb&, const Rgb&) = default;
};

/// @brief One shape: what a caption says of it, then the details a caption leaves open.
struct ShapeSpec {
  ShapeKind kind = ShapeKind::circle;
  Colour colour = Colour::red;
  SizeClass size = SizeClass::medium;
  Position position = Position::centre;
  // Details a caption leaves open.
  float offset_x = 0.0f;        ///< jitter of the centre, fraction of the image (|.| <= 0.04)
  float offset_y = 0.0f;        ///< likewise, downwards
  float scale = 1.0f;           ///< jitter of the size class's radius (0.95 .. 1.05)
  float rotation_rad = 0.0f;    ///< turn of the shape (|.| <= 0.35; none shows on a circle)
  Rgb shade{};                  ///< added to the named colour (each channel |.| <= 0.04)
  float shading_angle_rad = 0;  ///< direction of a linear shading across the shape
  float shading_amount = 0.0f;  ///< its strength (0 .. 0.08 brightness from edge to edge)
};

/// @brief A scene: background, 0 to 2 shapes (drawn in order, later ones on top), the lighting,
/// and for clips a motion. The fields are plain so that workflows build variants (another light,
/// the background alone, one shape alone); see with_lighting, background_only, only_shape.
struct Scene {
  Colour background = Colour::gray;
  // Details a caption leaves open.
  Rgb background_shade{};           ///< added to the named colour (each channel |.| <= 0.03)
  float gradient_angle_rad = 0.0f;  ///< direction in which the background brightens
  float gradient_amount = 0.0f;     ///< brightness change across the image (0 .. 0.16)
  float texture_amount = 0.0f;      ///< amplitude of the background's texture (0 .. 0.03)
  std::uint64_t texture_seed = 0;   ///< which texture (two faint gratings)
  std::vector<ShapeSpec> shapes;    ///< 0, 1 or 2 shapes
  Lighting lighting = Lighting::neutral;
  float lighting_strength = 1.0f;  ///< jitter of the lighting's strength (0.95 .. 1.05)
  Motion motion = Motion::none;
};

/// @brief What a caption says of one shape.
struct ShapeCaption {
  ShapeKind kind = ShapeKind::circle;
  Colour colour = Colour::red;
  SizeClass size = SizeClass::medium;
  Position position = Position::centre;
  friend bool operator==(const ShapeCaption&, const ShapeCaption&) = default;
};

/// @brief What a caption says of a scene: parse_caption's result, caption's input.
struct CaptionSpec {
  std::vector<ShapeCaption> shapes;
  Colour background = Colour::gray;
  Lighting lighting = Lighting::neutral;
  Motion motion = Motion::none;
  friend bool operator==(const CaptionSpec&, const CaptionSpec&) = default;
};

/// @brief Token length of a tokenized caption (padded with 0); the longest caption has 22 words.
inline constexpr int kCaptionTokens = 24;

/// @brief A random scene, deterministic for `seed`. Images (clip = false): no shape ~10%, one
/// ~60%, two ~30%, motion none. Clips (clip = true): one shape ~65%, two ~35%, a motion other
/// than none (a clip without a shape would show no motion). Two shapes sit at different
/// positions without overlapping over the whole clip; colours are far enough apart (shape from
/// background, shape from shape) to be told apart under every lighting; the lighting is one
/// that visibly differs, for these colours, from every other lighting.
Scene sample_scene(std::uint64_t seed, bool clip = false);

/// @brief A scene that `spec` describes, with the open details drawn from `seed`: many pictures
/// of one caption. caption(scene_for(spec, s)) == caption(spec) for every seed.
/// @throws apo::Error InvalidArgument for more than two shapes or two at one position
Scene scene_for(const CaptionSpec& spec, std::uint64_t seed);

/// @brief What the caption of `scene` says.
CaptionSpec describe(const Scene& scene);

/// @brief The caption: "a small red circle on the left, a large blue square at the top, green
/// background, warm light" (", moving left" / ", growing" / ", shrinking" for clips; no light
/// phrase for neutral light). Uses only words of vocabulary().
std::string caption(const Scene& scene);
/// @brief The caption of a spec (same format).
std::string caption(const CaptionSpec& spec);

/// @brief Parses a caption back into what it says: comma-separated clauses "a SIZE COLOUR KIND
/// PLACE", "COLOUR background" (exactly one), "LIGHT light", "moving DIRECTION", "growing",
/// "shrinking"; PLACE is "in the centre", "on the left", "on the right", "at the top", "at the
/// bottom", "at the top left", ...
/// @throws apo::Error InvalidArgument naming the unknown word or the clause that does not parse
CaptionSpec parse_caption(std::string_view caption);

/// @brief The scene under another light.
Scene with_lighting(Scene scene, Lighting lighting);
/// @brief The scene without its shapes: the background layer of layered generation.
Scene background_only(Scene scene);
/// @brief The scene with only its shape number `index`.
/// @throws apo::Error InvalidArgument for an index out of range
Scene only_shape(Scene scene, std::size_t index);

/// @brief Renders a scene: [4, size, size] float32 in [0, 1]; channels 0..2 the lit RGB
/// composite (background, shapes, lighting), channel 3 the alpha, the union of the shapes'
/// coverage (0 where only background shows).
/// @throws apo::Error InvalidArgument for size < 8 or > 4096
at::Tensor render_image(const Scene& scene, int size = 64);

/// @brief Renders a clip: [frames, 4, size, size]. The motion moves the shapes by 0.2 of the image
/// over the clip (left, right, up, down) or scales them from 1/1.3 to 1.3 times (grow; shrink
/// the reverse); the captioned position and size hold at the clip's middle. The background and
/// every open detail stay fixed over the frames.
/// @throws apo::Error InvalidArgument for frames < 1 or > 256, or a bad size
at::Tensor render_clip(const Scene& scene, int frames = 8, int size = 64);

/// @brief One shape as its own layer: [4, size, size], RGB the shape's lit colour (with its
/// shading), alpha its coverage. Compositing render_image(background_only(scene)) and then each
/// layer in order ("over", straight alpha) gives render_image(scene) within float rounding.
/// @throws apo::Error InvalidArgument for an index out of range or a bad size
at::Tensor render_shape_layer(const Scene& scene, std::size_t index, int size = 64);

/// @brief Each shape's own coverage, unoccluded: [shapes, size, size] in [0, 1].
at::Tensor shape_masks(const Scene& scene, int size = 64);

/// @brief The words captions use; a word's token id is its index, id 0 ("<pad>") is padding.
/// Fewer than 80 words.
const std::vector<std::string>& vocabulary();

/// @brief Token ids of one caption: its words in order; commas separate clauses and are not
/// tokens.
/// @throws apo::Error InvalidArgument naming an unknown word
std::vector<std::int64_t> caption_tokens(std::string_view caption);

/// @brief Tokenizes captions: int64 [B, length], 0-padded.
/// @throws apo::Error InvalidArgument naming an unknown word or a caption longer than `length`
at::Tensor tokenize(std::span<const std::string> captions, int length = kCaptionTokens);

/// @brief The nominal colour of a name, before shade and lighting.
Rgb colour_value(Colour colour);
/// @brief A colour under a lighting of the given strength (1 = nominal). Lighting is affine per
/// channel (a mix towards a light colour), so it commutes with alpha compositing.
Rgb apply_lighting(Rgb colour, Lighting lighting, float strength = 1.0f);
/// @brief The inverse of apply_lighting (may leave [0, 1] for colours no light could give).
Rgb remove_lighting(Rgb colour, Lighting lighting, float strength = 1.0f);

/// @brief Geometry shared by the renderer and the judge.
namespace geometry {

/// @brief Radius of a circle with the shape's area, fraction of the image, before jitter.
float nominal_radius(SizeClass size);
/// @brief How far the shape reaches from its centre, as a multiple of its area-equivalent
/// radius (1 for a circle, more for a star).
float reach(ShapeKind kind);
/// @brief The centre of a shape at the middle of a clip (or in an image), before jitter: the
/// position cell's centre, pulled inwards so that the shape, with the motion's displacement and
/// growth, stays inside the image.
std::array<float, 2> nominal_centre(ShapeKind kind, SizeClass size, Position position,
                                    Motion motion);
/// @brief Displacement (x, y) and scale of a motion at phase u in [-0.5, 0.5] (the clip's first
/// frame is -0.5, its last +0.5).
struct MotionState {
  float dx, dy, scale;
};
MotionState motion_at(Motion motion, float phase);
/// @brief The phase of frame `frame` of `frames` (0 for a single frame).
float frame_phase(int frame, int frames);

/// @brief Anti-aliased coverage of a shape of area-equivalent radius `radius` at (cx, cy),
/// turned by `rotation_rad`, over a width × height pixel grid whose pixels are `pixel` wide
/// (fractions of the image); written row-major into `out` (width × height floats).
void shape_coverage(ShapeKind kind, float cx, float cy, float radius, float rotation_rad, int width,
                    int height, float pixel, std::span<float> out);

}  // namespace geometry
}  // namespace apo::ref

namespace apo {

template <>
struct EnumTraits<ref::ShapeKind> {
  static constexpr std::string_view noun = "shape";
  static constexpr std::array<EnumEntry<ref::ShapeKind>, 5> entries{{
      {ref::ShapeKind::circle, "circle"},
      {ref::ShapeKind::square, "square"},
      {ref::ShapeKind::triangle, "triangle"},
      {ref::ShapeKind::star, "star"},
      {ref::ShapeKind::cross, "cross"},
  }};
};

template <>
struct EnumTraits<ref::Colour> {
  static constexpr std::string_view noun = "colour";
  static constexpr std::array<EnumEntry<ref::Colour>, 12> entries{{
      {ref::Colour::red, "red"},
      {ref::Colour::orange, "orange"},
      {ref::Colour::yellow, "yellow"},
      {ref::Colour::green, "green"},
      {ref::Colour::cyan, "cyan"},
      {ref::Colour::blue, "blue"},
      {ref::Colour::purple, "purple"},
      {ref::Colour::pink, "pink"},
      {ref::Colour::white, "white"},
      {ref::Colour::gray, "gray"},
      {ref::Colour::black, "black"},
      {ref::Colour::brown, "brown"},
  }};
};

template <>
struct EnumTraits<ref::SizeClass> {
  static constexpr std::string_view noun = "size class";
  static constexpr std::array<EnumEntry<ref::SizeClass>, 3> entries{{
      {ref::SizeClass::small, "small"},
      {ref::SizeClass::medium, "medium"},
      {ref::SizeClass::large, "large"},
  }};
};

template <>
struct EnumTraits<ref::Position> {
  static constexpr std::string_view noun = "position";
  static constexpr std::array<EnumEntry<ref::Position>, 9> entries{{
      {ref::Position::centre, "centre"},
      {ref::Position::left, "left"},
      {ref::Position::right, "right"},
      {ref::Position::top, "top"},
      {ref::Position::bottom, "bottom"},
      {ref::Position::top_left, "top left"},
      {ref::Position::top_right, "top right"},
      {ref::Position::bottom_left, "bottom left"},
      {ref::Position::bottom_right, "bottom right"},
  }};
};

template <>
struct EnumTraits<ref::Lighting> {
  static constexpr std::string_view noun = "lighting";
  static constexpr std::array<EnumEntry<ref::Lighting>, 5> entries{{
      {ref::Lighting::neutral, "neutral"},
      {ref::Lighting::bright, "bright"},
      {ref::Lighting::dim, "dim"},
      {ref::Lighting::warm, "warm"},
      {ref::Lighting::cool, "cool"},
  }};
};

template <>
struct EnumTraits<ref::Motion> {
  static constexpr std::string_view noun = "motion";
  static constexpr std::array<EnumEntry<ref::Motion>, 7> entries{{
      {ref::Motion::none, "none"},
      {ref::Motion::left, "left"},
      {ref::Motion::right, "right"},
      {ref::Motion::up, "up"},
      {ref::Motion::down, "down"},
      {ref::Motion::grow, "grow"},
      {ref::Motion::shrink, "shrink"},
  }};
};

}  // namespace apo

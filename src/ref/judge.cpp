#include "apo/ref/judge.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <optional>
#include <vector>

#include <ATen/ATen.h>

#include "apo/core/error.hpp"
#include "apo/ref/world.hpp"

namespace apo::ref {
namespace {

constexpr double kPi = std::numbers::pi;
// The judge works at this side at most: finer pixels add nothing to the parts it measures.
constexpr int kMaxSide = 128;

// 1 up to `full`, falling linearly to 0 at `zero`.
double ramp(double value, double full, double zero) {
  if (value <= full) return 1.0;
  if (value >= zero) return 0.0;
  return (zero - value) / (zero - full);
}

double clamp01(double v) {
  return std::clamp(v, 0.0, 1.0);
}

double norm3(const std::array<double, 3>& v) {
  return std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
}

std::array<double, 3> as_array(Rgb c) {
  return {c.r, c.g, c.b};
}

Rgb as_rgb(const std::array<double, 3>& c) {
  return {static_cast<float>(c[0]), static_cast<float>(c[1]), static_cast<float>(c[2])};
}

double distance(const std::array<double, 3>& a, const std::array<double, 3>& b) {
  return norm3({a[0] - b[0], a[1] - b[1], a[2] - b[2]});
}

// How well a measured colour (lit) matches a named one under the caption's light: the distance
// with the light undone, so that tolerances hold under dim light as under bright.
double colour_match(const std::array<double, 3>& observed, Colour named, Lighting lighting) {
  const auto unlit = as_array(remove_lighting(as_rgb(observed), lighting));
  return ramp(distance(unlit, as_array(colour_value(named))), 0.15, 0.32);
}

// A separable Gaussian blur of one pixel's sigma (5 taps), edges clamped; h × w, row-major.
void gaussian_blur(const float* in, int w, int h, float* out) {
  constexpr float taps[5] = {0.0545f, 0.2442f, 0.4026f, 0.2442f, 0.0545f};
  std::vector<float> rows(static_cast<std::size_t>(w) * h);
  for (int i = 0; i < h; ++i) {
    for (int j = 0; j < w; ++j) {
      float sum = 0;
      for (int k = -2; k <= 2; ++k) {
        sum += taps[k + 2] * in[static_cast<std::size_t>(i) * w + std::clamp(j + k, 0, w - 1)];
      }
      rows[static_cast<std::size_t>(i) * w + j] = sum;
    }
  }
  for (int i = 0; i < h; ++i) {
    for (int j = 0; j < w; ++j) {
      float sum = 0;
      for (int k = -2; k <= 2; ++k) {
        sum += taps[k + 2] * rows[static_cast<std::size_t>(std::clamp(i + k, 0, h - 1)) * w + j];
      }
      out[static_cast<std::size_t>(i) * w + j] = sum;
    }
  }
}

// --- one frame ----------------------------------------------------------------------------------

struct ShapeMeasure {
  bool found = false;
  std::array<double, 3> colour{};  // lit, as seen
  double cx = 0, cy = 0;           // centroid, fraction of the image
  double area = 0;                 // soft area, fraction of the image
  double kind_score = 0;
};

struct FrameResult {
  std::map<std::string, double> parts;
  std::array<double, 3> background{};  // lit, as seen, at the image's centre
  std::vector<ShapeMeasure> shapes;    // one per captioned shape
};

struct Component {
  std::vector<int> pixels;
  std::array<double, 3> colour{};
  double cx = 0, cy = 0, area = 0;
  std::vector<float> coverage;  // over the box below
  int box_i0 = 0, box_j0 = 0, box_h = 0, box_w = 0;
};

class FrameJudge {
 public:
  FrameJudge(const float* rgb, int n, const CaptionSpec& spec, float phase)
      : rgb_(rgb), n_(n), plane_(static_cast<std::size_t>(n) * n), spec_(spec), phase_(phase) {}

  FrameResult run() {
    fit_background();
    raw_border_rms_ = border_rms_;
    // Grain (a generated image's noise) beyond the background's own texture: judge a smoothed
    // copy, so that single noisy pixels neither join the foreground nor move the measures.
    if (border_rms_ > 0.07) {
      smoothed_.resize(3 * plane_);
      for (int c = 0; c < 3; ++c)
        gaussian_blur(rgb_ + c * plane_, n_, n_, smoothed_.data() + c * plane_);
      rgb_ = smoothed_.data();
      fit_background();
    }
    segment();
    FrameResult result;
    // The fit's value at the image's centre.
    for (int c = 0; c < 3; ++c) result.background[c] = bg_[c][0];
    // Grain spoils every measure: it scales every part.
    const double grain = ramp(raw_border_rms_, 0.1, 0.3);
    double background = colour_match(result.background, spec_.background, spec_.lighting);

    const double image_area = static_cast<double>(plane_);
    if (spec_.shapes.empty()) {
      const double empty = ramp(static_cast<double>(component_pixels_) / image_area, 0.005, 0.035);
      result.parts = {{"background", background}, {"colour", empty}, {"shape", empty},
                      {"position", empty},        {"size", empty},   {"lighting", lighting({})}};
      for (auto& [name, value] : result.parts) value *= grain;
      return result;
    }

    match();
    // A part is its worst shape's: every captioned shape must be right.
    double colour = 1, shape = 1, position = 1, size = 1;
    double matched_pixels = 0;
    std::vector<std::array<double, 3>> shape_colours;
    if (std::find(assignment_.begin(), assignment_.end(), -1) != assignment_.end()) {
      colour = shape = position = size = 0;  // a captioned shape is missing
    }
    for (std::size_t s = 0; s < spec_.shapes.size(); ++s) {
      const auto& caption = spec_.shapes[s];
      ShapeMeasure m;
      if (assignment_[s] >= 0) {
        Component& comp = components_[static_cast<std::size_t>(assignment_[s])];
        matched_pixels += static_cast<double>(comp.pixels.size());
        m.found = true;
        m.colour = comp.colour;
        m.cx = comp.cx;
        m.cy = comp.cy;
        m.area = comp.area;
        m.kind_score = kind_score(comp, caption.kind);
        const auto expected = expected_place(caption);
        colour = std::min(colour, colour_match(m.colour, caption.colour, spec_.lighting));
        shape = std::min(shape, m.kind_score);
        position = std::min(
            position,
            ramp(std::max(std::abs(m.cx - expected[0]), std::abs(m.cy - expected[1])), 0.06, 0.16));
        size = std::min(size,
                        ramp(std::abs(std::log(std::max(m.area, 1e-9) / expected[2])), 0.15, 0.45));
        shape_colours.push_back(m.colour);
      }
      result.shapes.push_back(m);
    }
    // Foreground that no captioned shape explains spoils the background.
    const double stray = (static_cast<double>(component_pixels_) - matched_pixels) / image_area;
    background *= ramp(stray, 0.005, 0.035);
    result.parts = {
        {"background", background}, {"colour", colour}, {"shape", shape},
        {"position", position},     {"size", size},     {"lighting", lighting(shape_colours)}};
    for (auto& [name, value] : result.parts) value *= grain;
    return result;
  }

 private:
  float at(int c, int i, int j) const {
    return rgb_[static_cast<std::size_t>(c) * plane_ + static_cast<std::size_t>(i) * n_ + j];
  }
  double x_of(int j) const { return (j + 0.5) / n_; }
  double bg_at(int c, int i, int j) const {
    return bg_[c][0] + bg_[c][1] * (x_of(j) - 0.5) + bg_[c][2] * (x_of(i) - 0.5);
  }
  double residual(int i, int j) const {
    double sum = 0;
    for (int c = 0; c < 3; ++c) {
      const double d = at(c, i, j) - bg_at(c, i, j);
      sum += d * d;
    }
    return std::sqrt(sum);
  }

  // Least squares of an affine colour field over the border ring, twice: the second fit leaves
  // out pixels far from the first (a shape that touches the border).
  void fit_background() {
    const int ring = std::max(1, n_ / 32);
    std::vector<std::pair<int, int>> border;
    for (int i = 0; i < n_; ++i) {
      for (int j = 0; j < n_; ++j) {
        if (i < ring || j < ring || i >= n_ - ring || j >= n_ - ring) border.emplace_back(i, j);
      }
    }
    std::vector<char> keep(border.size(), 1);
    for (int pass = 0; pass < 2; ++pass) {
      double m[3][3] = {};
      double v[3][3] = {};
      for (std::size_t p = 0; p < border.size(); ++p) {
        if (!keep[p]) continue;
        const auto [i, j] = border[p];
        const double f[3] = {1.0, x_of(j) - 0.5, x_of(i) - 0.5};
        for (int a = 0; a < 3; ++a) {
          for (int b = 0; b < 3; ++b) m[a][b] += f[a] * f[b];
          for (int c = 0; c < 3; ++c) v[c][a] += f[a] * at(c, i, j);
        }
      }
      for (int c = 0; c < 3; ++c) solve3(m, v[c], bg_[c]);
      std::vector<double> residuals;
      for (std::size_t p = 0; p < border.size(); ++p) {
        residuals.push_back(residual(border[p].first, border[p].second));
      }
      std::vector<double> sorted = residuals;
      std::nth_element(sorted.begin(), sorted.begin() + sorted.size() / 2, sorted.end());
      const double median = sorted[sorted.size() / 2];
      double sum = 0;
      std::size_t count = 0;
      for (std::size_t p = 0; p < border.size(); ++p) {
        keep[p] = residuals[p] <= std::max(3.0 * median, 0.05);
        if (keep[p]) {
          sum += residuals[p] * residuals[p];
          ++count;
        }
      }
      // The rms over the kept pixels, but a border mostly rejected is not smooth either.
      border_rms_ = std::sqrt(sum / std::max<std::size_t>(count, 1));
      if (count < border.size() * 3 / 4) border_rms_ = std::max(border_rms_, 0.2);
    }
  }

  static void solve3(const double m[3][3], const double v[3], double out[3]) {
    // Cramer's rule; the border ring always spans the plane, so the system is well posed.
    const auto det = [](double a[3][3]) {
      return a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) -
             a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0]) +
             a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
    };
    double a[3][3];
    std::copy(&m[0][0], &m[0][0] + 9, &a[0][0]);
    const double d = det(a);
    for (int k = 0; k < 3; ++k) {
      double b[3][3];
      std::copy(&m[0][0], &m[0][0] + 9, &b[0][0]);
      for (int r = 0; r < 3; ++r) b[r][k] = v[r];
      out[k] = std::abs(d) > 1e-12 ? det(b) / d : (k == 0 ? v[0] / std::max(m[0][0], 1.0) : 0.0);
    }
  }

  // Foreground: pixels farther from the background field than half the smallest contrast the
  // caption expects; then its 8-connected components.
  void segment() {
    const auto bg_lit = as_array(apply_lighting(colour_value(spec_.background), spec_.lighting));
    double contrast = 0.2;
    for (const auto& s : spec_.shapes) {
      const auto lit = as_array(apply_lighting(colour_value(s.colour), spec_.lighting));
      contrast = std::min(contrast, distance(lit, bg_lit));
    }
    threshold_ = std::max(std::clamp(0.5 * contrast, 0.06, 0.2), 2.5 * border_rms_);
    mask_.assign(plane_, 0);
    residual_.assign(plane_, 0.0f);
    for (int i = 0; i < n_; ++i) {
      for (int j = 0; j < n_; ++j) {
        const double r = residual(i, j);
        residual_[static_cast<std::size_t>(i) * n_ + j] = static_cast<float>(r);
        if (r > threshold_) mask_[static_cast<std::size_t>(i) * n_ + j] = 1;
      }
    }
    label_.assign(plane_, -1);
    const std::size_t min_pixels = std::max<std::size_t>(4, plane_ * 3 / 1000);
    std::vector<int> stack;
    for (std::size_t start = 0; start < plane_; ++start) {
      if (!mask_[start] || label_[start] >= 0) continue;
      Component comp;
      const int id = static_cast<int>(components_.size());
      stack.assign(1, static_cast<int>(start));
      label_[start] = id;
      while (!stack.empty()) {
        const int p = stack.back();
        stack.pop_back();
        comp.pixels.push_back(p);
        const int i = p / n_, j = p % n_;
        for (int di = -1; di <= 1; ++di) {
          for (int dj = -1; dj <= 1; ++dj) {
            const int y = i + di, x = j + dj;
            if (y < 0 || x < 0 || y >= n_ || x >= n_) continue;
            const std::size_t q = static_cast<std::size_t>(y) * n_ + x;
            if (mask_[q] && label_[q] < 0) {
              label_[q] = id;
              stack.push_back(static_cast<int>(q));
            }
          }
        }
      }
      if (comp.pixels.size() >= min_pixels) {
        component_pixels_ += comp.pixels.size();
        components_.push_back(std::move(comp));
      } else {
        for (const int p : comp.pixels) label_[p] = -2;  // a speck: stray foreground
      }
    }
    // Largest first; only the largest few can be captioned shapes.
    std::sort(components_.begin(), components_.end(), [](const Component& a, const Component& b) {
      return a.pixels.size() > b.pixels.size();
    });
    if (components_.size() > 4) components_.resize(4);
    for (int id = 0; id < static_cast<int>(components_.size()); ++id) {
      for (const int p : components_[id].pixels) label_[p] = id;
    }
  }

  // Colour (median of the component's core), soft coverage (the projection of each pixel onto
  // the line from background to that colour), soft area and centroid.
  void measure(Component& comp) const {
    std::array<std::vector<float>, 3> values;
    float max_residual = 0;
    for (const int p : comp.pixels) max_residual = std::max(max_residual, residual_[p]);
    for (const int p : comp.pixels) {
      if (residual_[p] < 0.7f * max_residual) continue;
      for (int c = 0; c < 3; ++c) values[c].push_back(rgb_[c * plane_ + p]);
    }
    for (int c = 0; c < 3; ++c) {
      auto& v = values[c];
      std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
      comp.colour[c] = v[v.size() / 2];
    }
    int i0 = n_, i1 = -1, j0 = n_, j1 = -1;
    for (const int p : comp.pixels) {
      i0 = std::min(i0, p / n_);
      i1 = std::max(i1, p / n_);
      j0 = std::min(j0, p % n_);
      j1 = std::max(j1, p % n_);
    }
    // The box reaches two pixels past the mask, for edge pixels under the threshold.
    i0 = std::max(0, i0 - 2);
    j0 = std::max(0, j0 - 2);
    i1 = std::min(n_ - 1, i1 + 2);
    j1 = std::min(n_ - 1, j1 + 2);
    comp.box_i0 = i0;
    comp.box_j0 = j0;
    comp.box_h = i1 - i0 + 1;
    comp.box_w = j1 - j0 + 1;
    comp.coverage.assign(static_cast<std::size_t>(comp.box_h) * comp.box_w, 0.0f);
    const int own = label_[comp.pixels.front()];
    double sum = 0, sx = 0, sy = 0;
    for (int i = i0; i <= i1; ++i) {
      for (int j = j0; j <= j1; ++j) {
        const std::size_t p = static_cast<std::size_t>(i) * n_ + j;
        // Pixels of another component are not this one's; nor are those not near its mask.
        if (label_[p] >= 0 && label_[p] != own) continue;
        if (label_[p] != own && !near_label(i, j, own)) continue;
        double dot = 0, len2 = 0;
        for (int c = 0; c < 3; ++c) {
          const double bg = bg_at(c, i, j);
          dot += (at(c, i, j) - bg) * (comp.colour[c] - bg);
          len2 += (comp.colour[c] - bg) * (comp.colour[c] - bg);
        }
        const double a = len2 > 1e-6 ? clamp01(dot / len2) : (label_[p] == own ? 1.0 : 0.0);
        comp.coverage[static_cast<std::size_t>(i - i0) * comp.box_w + (j - j0)] =
            static_cast<float>(a);
        sum += a;
        sx += a * x_of(j);
        sy += a * x_of(i);
      }
    }
    comp.area = sum / static_cast<double>(plane_);
    comp.cx = sum > 0 ? sx / sum : 0.5;
    comp.cy = sum > 0 ? sy / sum : 0.5;
  }

  bool near_label(int i, int j, int id) const {
    for (int di = -2; di <= 2; ++di) {
      for (int dj = -2; dj <= 2; ++dj) {
        const int y = i + di, x = j + dj;
        if (y < 0 || x < 0 || y >= n_ || x >= n_) continue;
        if (label_[static_cast<std::size_t>(y) * n_ + x] == id) return true;
      }
    }
    return false;
  }

  std::array<double, 3> expected_place(const ShapeCaption& caption) const {
    const auto centre =
        geometry::nominal_centre(caption.kind, caption.size, caption.position, spec_.motion);
    const auto state = geometry::motion_at(spec_.motion, phase_);
    const double radius = geometry::nominal_radius(caption.size) * state.scale;
    return {centre[0] + state.dx, centre[1] + state.dy, kPi * radius * radius};
  }

  // Two captioned shapes in one component (touching, or joined by blurred edges): split it by
  // which expected colour explains each pixel best as a mix of that colour and the background.
  void split_merged() {
    if (spec_.shapes.size() != 2 || components_.size() != 1) return;
    std::array<std::array<double, 3>, 2> lit;
    for (int s = 0; s < 2; ++s) {
      lit[s] = as_array(apply_lighting(colour_value(spec_.shapes[s].colour), spec_.lighting));
    }
    std::array<Component, 2> parts;
    for (const int p : components_[0].pixels) {
      const int i = p / n_, j = p % n_;
      double err[2];
      for (int s = 0; s < 2; ++s) {
        double d[3], e[3], dot = 0, len2 = 0;
        for (int c = 0; c < 3; ++c) {
          const double bg = bg_at(c, i, j);
          d[c] = at(c, i, j) - bg;
          e[c] = lit[s][c] - bg;
          dot += d[c] * e[c];
          len2 += e[c] * e[c];
        }
        const double a = len2 > 1e-9 ? clamp01(dot / len2) : 0.0;
        err[s] = norm3({d[0] - a * e[0], d[1] - a * e[1], d[2] - a * e[2]});
      }
      parts[err[0] <= err[1] ? 0 : 1].pixels.push_back(p);
    }
    const std::size_t min_pixels = std::max<std::size_t>(4, plane_ * 3 / 1000);
    if (parts[0].pixels.size() < min_pixels || parts[1].pixels.size() < min_pixels) return;
    components_ = {std::move(parts[0]), std::move(parts[1])};
    for (int id = 0; id < 2; ++id) {
      for (const int p : components_[id].pixels) label_[p] = id;
    }
  }

  // Captioned shapes to components: the assignment with the least colour + place cost.
  void match() {
    split_merged();
    for (auto& comp : components_) measure(comp);
    const std::size_t k = spec_.shapes.size();
    assignment_.assign(k, -1);
    const auto cost = [&](std::size_t s, const Component& comp) {
      const auto& caption = spec_.shapes[s];
      const auto expected = expected_place(caption);
      const auto unlit = as_array(remove_lighting(as_rgb(comp.colour), spec_.lighting));
      return distance(unlit, as_array(colour_value(caption.colour))) +
             std::hypot(comp.cx - expected[0], comp.cy - expected[1]);
    };
    const int m = static_cast<int>(components_.size());
    double best = std::numeric_limits<double>::infinity();
    // At most two shapes and four components: try every assignment (-1: not found).
    for (int a = -1; a < m; ++a) {
      for (int b = -1; b < (k > 1 ? m : 0); ++b) {
        if (k > 1 && a >= 0 && a == b) continue;
        double total = 0;
        const int choice[2] = {a, b};
        for (std::size_t s = 0; s < k; ++s) {
          total += choice[s] >= 0 ? cost(s, components_[choice[s]]) : 10.0;
        }
        if (total < best) {
          best = total;
          assignment_[0] = a;
          if (k > 1) assignment_[1] = b;
        }
      }
    }
  }

  static double soft_iou(const std::vector<float>& a, const std::vector<float>& b) {
    double inter = 0, uni = 0;
    for (std::size_t p = 0; p < a.size(); ++p) {
      inter += std::min(a[p], b[p]);
      uni += std::max(a[p], b[p]);
    }
    return uni > 0 ? inter / uni : 0.0;
  }

  static void blur_into(const std::vector<float>& in, int w, int h, std::vector<float>& out) {
    gaussian_blur(in.data(), w, h, out.data());
  }

  // The overlap of the component's coverage with each kind's template at its centroid and area,
  // over the kind's rotations: 1 where the captioned kind fits clearly best.
  double kind_score(const Component& comp, ShapeKind kind) const {
    const double radius = std::sqrt(comp.area / kPi);
    if (radius <= 0) return 0.0;
    // A canvas around the centroid wide enough for every template (a star reaches 1.46 radii),
    // holding the component's coverage.
    const int half = static_cast<int>(std::ceil(1.6 * radius * n_)) + 2;
    const int ci = static_cast<int>(comp.cy * n_), cj = static_cast<int>(comp.cx * n_);
    const int i0 = std::min(ci - half, comp.box_i0), j0 = std::min(cj - half, comp.box_j0);
    const int h = std::max(ci + half, comp.box_i0 + comp.box_h) - i0;
    const int w = std::max(cj + half, comp.box_j0 + comp.box_w) - j0;
    std::vector<float> coverage(static_cast<std::size_t>(h) * w, 0.0f);
    for (int i = 0; i < comp.box_h; ++i) {
      for (int j = 0; j < comp.box_w; ++j) {
        coverage[static_cast<std::size_t>(i + comp.box_i0 - i0) * w + (j + comp.box_j0 - j0)] =
            comp.coverage[static_cast<std::size_t>(i) * comp.box_w + j];
      }
    }
    std::vector<float> templ(coverage.size()), softened(coverage.size());
    const float pixel = 1.0f / static_cast<float>(n_);
    double best_true = 0, best_other = 0;
    for (const auto& entry : EnumTraits<ShapeKind>::entries) {
      const ShapeKind candidate = entry.value;
      const double period = candidate == ShapeKind::circle     ? 0.0
                            : candidate == ShapeKind::triangle ? 2 * kPi / 3
                            : candidate == ShapeKind::star     ? 2 * kPi / 5
                                                               : kPi / 2;
      const int steps = period == 0 ? 1 : static_cast<int>(std::ceil(period / (kPi / 30)));
      double best = 0;
      for (int r = 0; r < steps; ++r) {
        const double rotation = period * r / steps;
        geometry::shape_coverage(candidate, static_cast<float>(comp.cx - j0 * pixel),
                                 static_cast<float>(comp.cy - i0 * pixel),
                                 static_cast<float>(radius), static_cast<float>(rotation), w, h,
                                 pixel, templ);
        // Sharp, and softened as a generated (or the judge's smoothed) image's edges are, by
        // one and by 1.4 pixels: the best fit counts.
        best = std::max(best, soft_iou(templ, coverage));
        blur_into(templ, w, h, softened);
        best = std::max(best, soft_iou(softened, coverage));
        blur_into(softened, w, h, templ);
        best = std::max(best, soft_iou(templ, coverage));
      }
      if (candidate == kind) {
        best_true = best;
      } else {
        best_other = std::max(best_other, best);
      }
    }
    return clamp01(0.5 + (best_true - best_other) / 0.06) * ramp(0.8 - best_true, 0.0, 0.3);
  }

  // Which light best explains the colours seen (background and shapes), against the caption's.
  double lighting(const std::vector<std::array<double, 3>>& shape_colours) const {
    std::vector<std::pair<std::array<double, 3>, Colour>> seen;
    seen.emplace_back(std::array<double, 3>{bg_[0][0], bg_[1][0], bg_[2][0]}, spec_.background);
    std::size_t next = 0;
    for (std::size_t s = 0; s < spec_.shapes.size() && next < shape_colours.size(); ++s) {
      if (assignment_.size() > s && assignment_[s] >= 0) {
        seen.emplace_back(shape_colours[next++], spec_.shapes[s].colour);
      }
    }
    const auto error = [&](Lighting lighting) {
      double total = 0;
      for (const auto& [observed, named] : seen) {
        total += distance(observed, as_array(apply_lighting(colour_value(named), lighting)));
      }
      return total / static_cast<double>(seen.size());
    };
    const double own = error(spec_.lighting);
    double other = std::numeric_limits<double>::infinity();
    for (const auto& entry : EnumTraits<Lighting>::entries) {
      if (entry.value != spec_.lighting) other = std::min(other, error(entry.value));
    }
    return clamp01(0.5 + (other - own) / 0.06) * ramp(own, 0.12, 0.3);
  }

  const float* rgb_;
  std::vector<float> smoothed_;
  double raw_border_rms_ = 0;
  int n_;
  std::size_t plane_;
  const CaptionSpec& spec_;
  float phase_;
  double bg_[3][3] = {};  // per channel: value at the centre, slope in x, slope in y
  double border_rms_ = 0;
  double threshold_ = 0;
  std::vector<char> mask_;
  std::vector<float> residual_;
  std::vector<int> label_;
  std::size_t component_pixels_ = 0;  // foreground in components larger than a speck
  std::vector<Component> components_;
  std::vector<int> assignment_;
};

// --- inputs -------------------------------------------------------------------------------------

void check_finite(const at::Tensor& t, std::string_view what) {
  if (!t.is_floating_point()) {
    fail(ErrorCode::InvalidArgument, "{} has dtype {}, not a floating type", what,
         std::string(c10::toString(t.scalar_type())));
  }
  if (!at::isfinite(t).all().item<bool>()) {
    fail(ErrorCode::InvalidArgument, "{} holds NaN or infinite values", what);
  }
}

// [T, C, H, W] -> [T, 3, N, N] float in [0, 1], N <= kMaxSide, square.
at::Tensor prepare_frames(const at::Tensor& frames, std::string_view what) {
  if (frames.size(1) != 3 && frames.size(1) != 4) {
    fail(ErrorCode::InvalidArgument, "{} has {} channels, not 3 or 4", what, frames.size(1));
  }
  if (frames.size(2) < 32 || frames.size(3) < 32) {
    fail(ErrorCode::InvalidArgument, "{} is {}x{}, smaller than 32x32", what, frames.size(2),
         frames.size(3));
  }
  check_finite(frames, what);
  at::Tensor rgb = frames.detach().to(at::kCPU, at::kFloat).narrow(1, 0, 3).clamp(0.0, 1.0);
  const std::int64_t side = std::min<std::int64_t>({kMaxSide, rgb.size(2), rgb.size(3)});
  if (rgb.size(2) != side || rgb.size(3) != side) {
    rgb = at::adaptive_avg_pool2d(rgb, {side, side});
  }
  return rgb.contiguous();
}

JudgeReport finish(std::map<std::string, double> parts) {
  double sum = 0, least = 1;
  for (const auto& [name, value] : parts) {
    sum += value;
    least = std::min(least, value);
  }
  JudgeReport report;
  report.score = 0.5 * sum / static_cast<double>(parts.size()) + 0.5 * least;
  report.parts = std::move(parts);
  return report;
}

// Slope of y against x by least squares.
double slope(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = static_cast<double>(x.size());
  double mx = 0, my = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    mx += x[i] / n;
    my += y[i] / n;
  }
  double sxy = 0, sxx = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
  }
  return sxx > 0 ? sxy / sxx : 0.0;
}

// Root mean square of y about its least-squares line in x.
double line_residual(const std::vector<double>& x, const std::vector<double>& y) {
  const double b = slope(x, y);
  const double n = static_cast<double>(x.size());
  double mx = 0, my = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    mx += x[i] / n;
    my += y[i] / n;
  }
  double sum = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double r = y[i] - (my + b * (x[i] - mx));
    sum += r * r;
  }
  return std::sqrt(sum / n);
}

double colour_spread(const std::vector<std::array<double, 3>>& colours) {
  if (colours.size() < 2) return 0.0;
  std::array<double, 3> mean{};
  for (const auto& c : colours) {
    for (int k = 0; k < 3; ++k) mean[k] += c[k] / static_cast<double>(colours.size());
  }
  double sum = 0;
  for (const auto& c : colours) sum += distance(c, mean) * distance(c, mean);
  return std::sqrt(sum / static_cast<double>(colours.size()));
}

}  // namespace

JudgeReport judge_image(const at::Tensor& image, std::string_view caption) {
  if (image.dim() != 3) {
    fail(ErrorCode::InvalidArgument, "judge_image takes [C, H, W], not a tensor of rank {}",
         image.dim());
  }
  const CaptionSpec spec = parse_caption(caption);
  const at::Tensor rgb = prepare_frames(image.unsqueeze(0), "judged image");
  FrameJudge frame(rgb.data_ptr<float>(), static_cast<int>(rgb.size(2)), spec, 0.0f);
  return finish(frame.run().parts);
}

JudgeReport judge_clip(const at::Tensor& clip, std::string_view caption) {
  if (clip.dim() != 4) {
    fail(ErrorCode::InvalidArgument, "judge_clip takes [T, C, H, W], not a tensor of rank {}",
         clip.dim());
  }
  if (clip.size(0) < 2) {
    fail(ErrorCode::InvalidArgument, "judge_clip needs at least 2 frames, not {}", clip.size(0));
  }
  const CaptionSpec spec = parse_caption(caption);
  const at::Tensor rgb = prepare_frames(clip, "judged clip");
  const int frames = static_cast<int>(rgb.size(0));
  const int n = static_cast<int>(rgb.size(2));
  const std::size_t stride = 3 * static_cast<std::size_t>(n) * n;
  std::map<std::string, double> parts;
  std::vector<FrameResult> results;
  for (int t = 0; t < frames; ++t) {
    FrameJudge frame(rgb.data_ptr<float>() + t * stride, n, spec, geometry::frame_phase(t, frames));
    results.push_back(frame.run());
    for (const auto& [name, value] : results.back().parts) parts[name] += value / frames;
  }

  // Temporal consistency: the background's colour holds; each shape is present in every frame,
  // its colour holds, and its area follows a smooth trend.
  std::vector<std::array<double, 3>> backgrounds;
  for (const auto& r : results) backgrounds.push_back(r.background);
  double temporal = ramp(colour_spread(backgrounds), 0.02, 0.08);
  double motion = 0;
  if (spec.shapes.empty()) {
    // Nothing to move: the motion is right when nothing appears.
    motion = parts["shape"];
  } else {
    const auto expected_first = geometry::motion_at(spec.motion, -0.5f);
    const auto expected_last = geometry::motion_at(spec.motion, 0.5f);
    const double want_dx = expected_last.dx - expected_first.dx;
    const double want_dy = expected_last.dy - expected_first.dy;
    // The area grows as the scale squared.
    const double want_growth = 2.0 * std::log(expected_last.scale / expected_first.scale);
    double shape_temporal = 0;
    for (std::size_t s = 0; s < spec.shapes.size(); ++s) {
      std::vector<double> phase, xs, ys, log_area;
      std::vector<std::array<double, 3>> colours;
      for (int t = 0; t < frames; ++t) {
        const auto& m = results[static_cast<std::size_t>(t)].shapes[s];
        if (!m.found) continue;
        phase.push_back(geometry::frame_phase(t, frames));
        xs.push_back(m.cx);
        ys.push_back(m.cy);
        log_area.push_back(std::log(std::max(m.area, 1e-9)));
        colours.push_back(m.colour);
      }
      const double present = static_cast<double>(phase.size()) / frames;
      if (phase.size() >= 2) {
        const double move =
            std::max(std::abs(slope(phase, xs) - want_dx), std::abs(slope(phase, ys) - want_dy));
        const double growth = std::abs(slope(phase, log_area) - want_growth);
        motion += present * std::min(ramp(move, 0.04, 0.12), ramp(growth, 0.15, 0.4));
        shape_temporal += present * ramp(colour_spread(colours), 0.02, 0.08) *
                          ramp(line_residual(phase, log_area), 0.05, 0.2);
      }
    }
    motion /= static_cast<double>(spec.shapes.size());
    temporal *= shape_temporal / static_cast<double>(spec.shapes.size());
  }
  parts["motion"] = motion;
  parts["temporal"] = temporal;
  return finish(std::move(parts));
}

// --- SSIM and PSNR
// --------------------------------------------------------------------------------

double ssim(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) {
    fail(ErrorCode::InvalidArgument, "ssim of tensors of different shapes");
  }
  if (a.dim() < 3 || a.size(-1) < 11 || a.size(-2) < 11) {
    fail(ErrorCode::InvalidArgument,
         "ssim takes [C, H, W] or [T, C, H, W] with sides >= 11, not rank {}", a.dim());
  }
  check_finite(a, "ssim input a");
  check_finite(b, "ssim input b");
  const std::int64_t h = a.size(-2), w = a.size(-1);
  const at::Tensor x = a.detach().to(at::kCPU, at::kDouble).reshape({-1, 1, h, w});
  const at::Tensor y = b.detach().to(at::kCPU, at::kDouble).reshape({-1, 1, h, w});
  const at::Tensor g = at::arange(11, at::kDouble).sub(5.0).pow(2).div(-2.0 * 1.5 * 1.5).exp();
  const at::Tensor g1 = g / g.sum();
  const at::Tensor window = at::outer(g1, g1).view({1, 1, 11, 11});
  const auto filter = [&](const at::Tensor& t) { return at::conv2d(t, window); };
  const at::Tensor mx = filter(x), my = filter(y);
  const at::Tensor sxx = filter(x * x) - mx * mx;
  const at::Tensor syy = filter(y * y) - my * my;
  const at::Tensor sxy = filter(x * y) - mx * my;
  constexpr double c1 = 0.01 * 0.01, c2 = 0.03 * 0.03;
  const at::Tensor map =
      ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2));
  // Mean per channel (and frame), then over them: every plane has the same size, so one mean.
  return map.mean().item<double>();
}

double psnr(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) {
    fail(ErrorCode::InvalidArgument, "psnr of tensors of different shapes");
  }
  if (a.numel() == 0) fail(ErrorCode::InvalidArgument, "psnr of empty tensors");
  check_finite(a, "psnr input a");
  check_finite(b, "psnr input b");
  const double mse = (a.detach().to(at::kCPU, at::kDouble) - b.detach().to(at::kCPU, at::kDouble))
                         .pow(2)
                         .mean()
                         .item<double>();
  if (mse == 0.0) return std::numeric_limits<double>::infinity();
  return -10.0 * std::log10(mse);
}

}  // namespace apo::ref

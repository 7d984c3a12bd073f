#pragma once

/// @file
/// @brief The judge: scores an image or a clip against its caption in [0, 1], measured from the
/// pixels in the renderer's parameter space, and SSIM / PSNR between two outputs.
///
/// The judge is analytic. It fits the background (an affine colour field over the image's
/// border), segments the foreground (pixels far from that field), matches the caption's shapes
/// to connected components (by colour and place), and measures each: colour (median, with the
/// caption's lighting undone), position (area centroid), size (soft area), kind (overlap with
/// each shape's template at the same centroid and area, best rotation), and the lighting (which
/// light best explains all the colours). Clips are judged frame by frame, plus the motion (the
/// centroid's trajectory and the area's trend) and temporal consistency (colour and size stable
/// between frames). A grainy image (border noise over the background's texture) is judged on a
/// smoothed copy, and grain beyond what a generated image shows scales every part down (pure
/// noise scores 0).
///
/// Parts are in [0, 1]: "background", "colour", "shape", "position", "size", "lighting", and for
/// clips "motion" and "temporal". For two shapes a part is the worse shape's. A caption
/// with no shape asks for an empty foreground: colour, shape, position and size then all say how
/// empty it is. The score is 0.5 × mean(parts) + 0.5 × min(parts): one attribute entirely wrong
/// caps the score near 0.5, so a score over 0.8 means every attribute is about right.

#include <map>
#include <string>
#include <string_view>

#include <ATen/core/Tensor.h>

namespace apo::ref {

/// @brief A judgement: the score in [0, 1] and its parts.
struct JudgeReport {
  double score = 0.0;
  std::map<std::string, double> parts;
};

/// @brief Scores an image [C, H, W] (C = 3 or 4, the alpha channel is ignored; float values in
/// [0, 1], H and W >= 32) against its caption.
/// @throws apo::Error InvalidArgument for a wrong rank, channel count or size, a NaN or infinite
/// value, or a caption parse_caption rejects
JudgeReport judge_image(const at::Tensor& image, std::string_view caption);

/// @brief Scores a clip [T, C, H, W] (T >= 2) against its caption.
/// @throws apo::Error as judge_image, and for T < 2
JudgeReport judge_clip(const at::Tensor& clip, std::string_view caption);

/// @brief SSIM (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 = 0.01, K2 = 0.03, data
/// range 1, valid region), averaged over channels and, for [T, C, H, W], over frames.
/// @throws apo::Error InvalidArgument for shapes that differ, rank < 3, or sides < 11
double ssim(const at::Tensor& a, const at::Tensor& b);

/// @brief PSNR in dB for data range 1; infinity for identical inputs.
/// @throws apo::Error InvalidArgument for shapes that differ or empty inputs
double psnr(const at::Tensor& a, const at::Tensor& b);

}  // namespace apo::ref

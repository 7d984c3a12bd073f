#pragma once

/// @file
/// @brief PNG (libpng) and animated GIF (giflib) files of images and clips.

#include <filesystem>

#include <ATen/core/Tensor.h>

namespace apo::ref {

/// @brief Writes an image [C, H, W] (C = 1 gray, 3 RGB, 4 RGBA with alpha; float, values clamped
/// to [0, 1] and rounded to 8 bits) as a PNG file.
/// @throws apo::Error InvalidArgument for a bad shape or NaN; Io when the file cannot be written
/// (a missing directory included)
void write_png(const std::filesystem::path& path, const at::Tensor& image);

/// @brief Reads a PNG file (any bit depth or colour type; palette and gray expand, 16 bits
/// reduce to 8): [C, H, W] float32 in [0, 1], C = 1 (gray), 2 (gray + alpha), 3 or 4.
/// @throws apo::Error NotFound for a missing file; Corrupt for a file libpng rejects or one larger
/// than 16384 pixels a side
at::Tensor read_png(const std::filesystem::path& path);

/// @brief Writes a clip [T, C, H, W] (C = 1, 3 or 4) as an animated GIF that loops forever
/// (NETSCAPE2.0), each frame with its own 256-colour palette (GifQuantizeBuffer), shown for
/// `frame_delay_ms` (rounded to 10 ms) and enlarged `upscale` times (nearest neighbour). Alpha
/// is composited over a gray checkerboard of 8 × upscale pixel squares, as image viewers show
/// transparency, so a GIF of an RGBA clip shows where it is transparent.
/// @throws apo::Error InvalidArgument for a bad shape, NaN, delay or upscale; Io when the file
/// cannot be written
void write_gif(const std::filesystem::path& path, const at::Tensor& clip, int frame_delay_ms = 100,
               int upscale = 1);

/// @brief Reads a GIF's frames as [T, 3, H, W] float32 in [0, 1] (each frame composed on the
/// previous ones, as a viewer shows them).
/// @throws apo::Error NotFound for a missing file; Corrupt for a file giflib rejects
at::Tensor read_gif(const std::filesystem::path& path);

}  // namespace apo::ref

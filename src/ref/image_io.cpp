#include "apo/ref/image_io.hpp"

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gif_lib.h>
#include <png.h>

#include "apo/core/error.hpp"

namespace apo::ref {
namespace {

constexpr std::uint32_t kMaxSide = 16384;

// --- tensors <-> bytes -----------------------------------------------------------------------

void check_values(const at::Tensor& t, std::string_view what) {
  if (!t.is_floating_point()) {
    fail(ErrorCode::InvalidArgument, "{} has dtype {}, not a floating type", what,
         std::string(c10::toString(t.scalar_type())));
  }
  if (t.numel() > 0 && !at::isfinite(t).all().item<bool>()) {
    fail(ErrorCode::InvalidArgument, "{} holds NaN or infinite values", what);
  }
}

// [C, H, W] float -> H × W × C bytes, rounded.
std::vector<std::uint8_t> to_bytes(const at::Tensor& image) {
  const at::Tensor bytes = image.detach()
                               .to(at::kCPU, at::kFloat)
                               .clamp(0.0, 1.0)
                               .mul(255.0)
                               .round()
                               .to(at::kByte)
                               .permute({1, 2, 0})
                               .contiguous();
  const auto* p = bytes.data_ptr<std::uint8_t>();
  return {p, p + bytes.numel()};
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

File open_file(const std::filesystem::path& path, const char* mode) {
  return File(std::fopen(path.c_str(), mode));
}

// --- libpng with setjmp ----------------------------------------------------------------------
// libpng reports errors by longjmp. The functions that call libpng between setjmp and a possible
// longjmp hold no C++ object with a destructor, so nothing is skipped when it jumps; the message
// lands in a plain buffer and the caller throws.

struct PngErrors {
  char message[256] = {0};
};

void png_error_handler(png_structp png, png_const_charp message) {
  auto* errors = static_cast<PngErrors*>(png_get_error_ptr(png));
  std::snprintf(errors->message, sizeof errors->message, "%s", message);
  png_longjmp(png, 1);
}

void png_warning_handler(png_structp, png_const_charp) {}

bool png_write_rows(png_structp png, png_infop info, std::FILE* file, std::uint32_t width,
                    std::uint32_t height, int colour_type, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_init_io(png, file);
  png_set_IHDR(png, info, width, height, 8, colour_type, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  png_write_image(png, rows);
  png_write_end(png, nullptr);
  return true;
}

struct PngHeader {
  std::uint32_t width = 0, height = 0;
  int channels = 0;
  std::size_t row_bytes = 0;
};

bool png_read_header(png_structp png, png_infop info, std::FILE* file, PngHeader* header) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_init_io(png, file);
  png_set_user_limits(png, kMaxSide, kMaxSide);
  png_read_info(png, info);
  // Everything to 8-bit gray, gray + alpha, RGB or RGBA.
  png_set_expand(png);
  png_set_scale_16(png);
  png_set_packing(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  header->width = png_get_image_width(png, info);
  header->height = png_get_image_height(png, info);
  header->channels = png_get_channels(png, info);
  header->row_bytes = png_get_rowbytes(png, info);
  return true;
}

bool png_read_rows(png_structp png, png_infop info, png_bytepp rows) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_read_image(png, rows);
  png_read_end(png, info);
  return true;
}

// --- GIF -----------------------------------------------------------------------------------------

struct MapDeleter {
  void operator()(ColorMapObject* map) const { GifFreeMapObject(map); }
};

std::string gif_error(int code) {
  const char* text = GifErrorString(code);
  return text != nullptr ? text : fmt::format("giflib error {}", code);
}

}  // namespace

void write_png(const std::filesystem::path& path, const at::Tensor& image) {
  if (image.dim() != 3 || (image.size(0) != 1 && image.size(0) != 3 && image.size(0) != 4) ||
      image.size(1) < 1 || image.size(2) < 1 || image.size(1) > kMaxSide ||
      image.size(2) > kMaxSide) {
    fail(ErrorCode::InvalidArgument,
         "PNG image {} has shape {}, not [C, H, W] with C = 1, 3 or 4 and sides in 1..{}",
         path.string(), fmt::format("{}", fmt::join(image.sizes(), ", ")), kMaxSide);
  }
  check_values(image, "PNG image " + path.string());
  const auto channels = static_cast<int>(image.size(0));
  const auto height = static_cast<std::uint32_t>(image.size(1));
  const auto width = static_cast<std::uint32_t>(image.size(2));
  std::vector<std::uint8_t> bytes = to_bytes(image);
  std::vector<png_bytep> rows(height);
  for (std::uint32_t y = 0; y < height; ++y) {
    rows[y] = bytes.data() + static_cast<std::size_t>(y) * width * channels;
  }
  const int colour_type = channels == 1   ? PNG_COLOR_TYPE_GRAY
                          : channels == 3 ? PNG_COLOR_TYPE_RGB
                                          : PNG_COLOR_TYPE_RGBA;

  File file = open_file(path, "wb");
  if (!file) {
    fail(ErrorCode::Io, "cannot open {} for writing: {}", path.string(), std::strerror(errno));
  }
  PngErrors errors;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &errors, png_error_handler,
                                            png_warning_handler);
  png_infop info = png != nullptr ? png_create_info_struct(png) : nullptr;
  if (info == nullptr) {
    png_destroy_write_struct(&png, nullptr);
    fail(ErrorCode::OutOfMemory, "libpng could not allocate its state for {}", path.string());
  }
  const bool ok = png_write_rows(png, info, file.get(), width, height, colour_type, rows.data());
  png_destroy_write_struct(&png, &info);
  const bool flushed = std::fflush(file.get()) == 0 && !std::ferror(file.get());
  if (!ok) fail(ErrorCode::Io, "writing PNG {} failed: {}", path.string(), errors.message);
  if (!flushed)
    fail(ErrorCode::Io, "writing PNG {} failed: {}", path.string(), std::strerror(errno));
}

at::Tensor read_png(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    fail(ErrorCode::NotFound, "PNG file {} does not exist", path.string());
  }
  File file = open_file(path, "rb");
  if (!file) fail(ErrorCode::Io, "cannot open {}: {}", path.string(), std::strerror(errno));
  std::uint8_t signature[8] = {0};
  if (std::fread(signature, 1, 8, file.get()) != 8 || png_sig_cmp(signature, 0, 8) != 0) {
    fail(ErrorCode::Corrupt, "{} is not a PNG file (bad signature)", path.string());
  }
  PngErrors errors;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &errors, png_error_handler,
                                           png_warning_handler);
  png_infop info = png != nullptr ? png_create_info_struct(png) : nullptr;
  if (info == nullptr) {
    png_destroy_read_struct(&png, nullptr, nullptr);
    fail(ErrorCode::OutOfMemory, "libpng could not allocate its state for {}", path.string());
  }
  png_set_sig_bytes(png, 8);
  PngHeader header;
  if (!png_read_header(png, info, file.get(), &header)) {
    png_destroy_read_struct(&png, &info, nullptr);
    fail(ErrorCode::Corrupt, "PNG {} is malformed: {}", path.string(), errors.message);
  }
  const std::size_t expected_row = static_cast<std::size_t>(header.width) * header.channels;
  if (header.channels < 1 || header.channels > 4 || header.row_bytes != expected_row) {
    png_destroy_read_struct(&png, &info, nullptr);
    fail(ErrorCode::Corrupt, "PNG {} decodes to {} channels and {} bytes a row, not 8-bit",
         path.string(), header.channels, header.row_bytes);
  }
  std::vector<std::uint8_t> bytes(expected_row * header.height);
  std::vector<png_bytep> rows(header.height);
  for (std::uint32_t y = 0; y < header.height; ++y) rows[y] = bytes.data() + y * expected_row;
  const bool ok = png_read_rows(png, info, rows.data());
  png_destroy_read_struct(&png, &info, nullptr);
  if (!ok) fail(ErrorCode::Corrupt, "PNG {} is malformed: {}", path.string(), errors.message);
  return at::from_blob(bytes.data(),
                       {static_cast<std::int64_t>(header.height),
                        static_cast<std::int64_t>(header.width), header.channels},
                       at::kByte)
      .permute({2, 0, 1})
      .to(at::kFloat)
      .div(255.0)
      .contiguous();
}

void write_gif(const std::filesystem::path& path, const at::Tensor& clip, int frame_delay_ms,
               int upscale) {
  if (clip.dim() != 4 || clip.size(0) < 1 ||
      (clip.size(1) != 1 && clip.size(1) != 3 && clip.size(1) != 4) || clip.size(2) < 1 ||
      clip.size(3) < 1) {
    fail(ErrorCode::InvalidArgument,
         "GIF clip {} has shape {}, not [T, C, H, W] with T >= 1 and C = 1, 3 or 4", path.string(),
         fmt::format("{}", fmt::join(clip.sizes(), ", ")));
  }
  if (frame_delay_ms < 0 || frame_delay_ms > 655350) {
    fail(ErrorCode::InvalidArgument, "GIF frame delay {} ms is not in 0..655350", frame_delay_ms);
  }
  if (upscale < 1 || upscale > 64 || clip.size(2) * upscale > 65535 ||
      clip.size(3) * upscale > 65535) {
    fail(ErrorCode::InvalidArgument, "GIF upscale {} is not in 1..64 or makes sides over 65535",
         upscale);
  }
  check_values(clip, "GIF clip " + path.string());

  // RGB frames at the output size: alpha over a checkerboard, gray to RGB, then enlarged.
  at::Tensor frames = clip.detach().to(at::kCPU, at::kFloat).clamp(0.0, 1.0);
  if (frames.size(1) == 1) frames = frames.expand({-1, 3, -1, -1});
  const std::int64_t height = frames.size(2), width = frames.size(3);
  if (frames.size(1) == 4) {
    const at::Tensor ys = at::arange(height).div(8, "floor").view({height, 1});
    const at::Tensor xs = at::arange(width).div(8, "floor").view({1, width});
    const at::Tensor board = ys.add(xs).remainder(2).to(at::kFloat).mul(0.2).add(0.6);
    const at::Tensor alpha = frames.narrow(1, 3, 1);
    frames = frames.narrow(1, 0, 3) * alpha + board * (1.0 - alpha);
  }
  if (upscale > 1) {
    frames = frames.repeat_interleave(upscale, 2).repeat_interleave(upscale, 3);
  }
  const auto out_h = static_cast<int>(frames.size(2));
  const auto out_w = static_cast<int>(frames.size(3));
  const at::Tensor bytes = frames.mul(255.0).round().to(at::kByte).contiguous();
  const std::size_t plane = static_cast<std::size_t>(out_h) * out_w;

  int error = 0;
  GifFileType* gif = EGifOpenFileName(path.c_str(), false, &error);
  if (gif == nullptr) {
    fail(ErrorCode::Io, "cannot open {} for writing: {} ({})", path.string(), gif_error(error),
         std::strerror(errno));
  }
  const auto abandon = [&](std::string_view step) {
    const std::string message = gif_error(gif->Error);
    EGifCloseFile(gif, &error);
    fail(ErrorCode::Io, "writing GIF {} failed at {}: {}", path.string(), step, message);
  };
  EGifSetGifVersion(gif, true);
  if (EGifPutScreenDesc(gif, out_w, out_h, 8, 0, nullptr) == GIF_ERROR) abandon("screen");
  // NETSCAPE2.0 application extension: loop forever.
  const GifByteType loop[3] = {1, 0, 0};
  if (EGifPutExtensionLeader(gif, APPLICATION_EXT_FUNC_CODE) == GIF_ERROR ||
      EGifPutExtensionBlock(gif, 11, "NETSCAPE2.0") == GIF_ERROR ||
      EGifPutExtensionBlock(gif, 3, loop) == GIF_ERROR ||
      EGifPutExtensionTrailer(gif) == GIF_ERROR) {
    abandon("loop extension");
  }
  std::vector<GifByteType> red(plane), green(plane), blue(plane), indices(plane);
  const auto* data = bytes.data_ptr<std::uint8_t>();
  for (std::int64_t t = 0; t < frames.size(0); ++t) {
    const std::uint8_t* frame = data + t * 3 * plane;
    std::copy(frame, frame + plane, red.begin());
    std::copy(frame + plane, frame + 2 * plane, green.begin());
    std::copy(frame + 2 * plane, frame + 3 * plane, blue.begin());
    std::unique_ptr<ColorMapObject, MapDeleter> map(GifMakeMapObject(256, nullptr));
    if (!map) {
      EGifCloseFile(gif, &error);
      fail(ErrorCode::OutOfMemory, "giflib could not allocate a colour map for {}", path.string());
    }
    int colours = 256;
    if (GifQuantizeBuffer(static_cast<unsigned>(out_w), static_cast<unsigned>(out_h), &colours,
                          red.data(), green.data(), blue.data(), indices.data(),
                          map->Colors) == GIF_ERROR) {
      abandon("colour quantization");
    }
    GraphicsControlBlock gcb{};
    gcb.DisposalMode = DISPOSE_DO_NOT;
    gcb.UserInputFlag = false;
    gcb.DelayTime = (frame_delay_ms + 5) / 10;
    gcb.TransparentColor = NO_TRANSPARENT_COLOR;
    GifByteType extension[4];
    EGifGCBToExtension(&gcb, extension);
    if (EGifPutExtension(gif, GRAPHICS_EXT_FUNC_CODE, 4, extension) == GIF_ERROR) {
      abandon("frame delay");
    }
    if (EGifPutImageDesc(gif, 0, 0, out_w, out_h, false, map.get()) == GIF_ERROR) {
      abandon("image descriptor");
    }
    for (int y = 0; y < out_h; ++y) {
      if (EGifPutLine(gif, indices.data() + static_cast<std::size_t>(y) * out_w, out_w) ==
          GIF_ERROR) {
        abandon("pixels");
      }
    }
  }
  if (EGifCloseFile(gif, &error) == GIF_ERROR) {
    fail(ErrorCode::Io, "writing GIF {} failed at close: {}", path.string(), gif_error(error));
  }
}

at::Tensor read_gif(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    fail(ErrorCode::NotFound, "GIF file {} does not exist", path.string());
  }
  int error = 0;
  GifFileType* gif = DGifOpenFileName(path.c_str(), &error);
  if (gif == nullptr) {
    fail(ErrorCode::Corrupt, "{} is not a GIF file: {}", path.string(), gif_error(error));
  }
  const auto corrupt = [&](const std::string& why) {
    DGifCloseFile(gif, &error);
    fail(ErrorCode::Corrupt, "GIF {} {}", path.string(), why);
  };
  if (DGifSlurp(gif) == GIF_ERROR) corrupt("is malformed: " + gif_error(gif->Error));
  const int width = gif->SWidth, height = gif->SHeight;
  if (width < 1 || height < 1 || width > static_cast<int>(kMaxSide) ||
      height > static_cast<int>(kMaxSide) || gif->ImageCount < 1) {
    corrupt(fmt::format("has a {}x{} screen and {} frames", width, height, gif->ImageCount));
  }
  const std::size_t plane = static_cast<std::size_t>(width) * height;
  // Bounded by what giflib already holds, but a float copy is 4 bytes a channel: cap it at 4 GiB.
  if (static_cast<double>(gif->ImageCount) * 3.0 * static_cast<double>(plane) > 0x1p30) {
    corrupt(
        fmt::format("has {} frames of {}x{}, too many to decode", gif->ImageCount, width, height));
  }
  at::Tensor out = at::empty({gif->ImageCount, 3, height, width}, at::kFloat);
  float* dst = out.data_ptr<float>();
  std::vector<std::uint8_t> canvas(3 * plane, 0);
  for (int t = 0; t < gif->ImageCount; ++t) {
    const SavedImage& image = gif->SavedImages[t];
    const GifImageDesc& desc = image.ImageDesc;
    const ColorMapObject* map = desc.ColorMap != nullptr ? desc.ColorMap : gif->SColorMap;
    if (map == nullptr) corrupt(fmt::format("frame {} has no colour map", t));
    if (desc.Left < 0 || desc.Top < 0 || desc.Width < 0 || desc.Height < 0 ||
        desc.Left + desc.Width > width || desc.Top + desc.Height > height) {
      corrupt(fmt::format("frame {} ({}x{} at {},{}) leaves the {}x{} screen", t, desc.Width,
                          desc.Height, desc.Left, desc.Top, width, height));
    }
    GraphicsControlBlock gcb{};
    gcb.TransparentColor = NO_TRANSPARENT_COLOR;
    DGifSavedExtensionToGCB(gif, t, &gcb);
    for (int y = 0; y < desc.Height; ++y) {
      for (int x = 0; x < desc.Width; ++x) {
        const int index = image.RasterBits[static_cast<std::size_t>(y) * desc.Width + x];
        if (index == gcb.TransparentColor) continue;
        if (index >= map->ColorCount) {
          corrupt(
              fmt::format("frame {} uses colour {} of a {}-colour map", t, index, map->ColorCount));
        }
        const std::size_t k = static_cast<std::size_t>(desc.Top + y) * width + desc.Left + x;
        canvas[k] = map->Colors[index].Red;
        canvas[plane + k] = map->Colors[index].Green;
        canvas[2 * plane + k] = map->Colors[index].Blue;
      }
    }
    float* frame = dst + static_cast<std::size_t>(t) * 3 * plane;
    for (std::size_t k = 0; k < 3 * plane; ++k) frame[k] = canvas[k] / 255.0f;
    if (gcb.DisposalMode == DISPOSE_BACKGROUND) {
      for (int y = 0; y < desc.Height; ++y) {
        for (int x = 0; x < desc.Width; ++x) {
          const std::size_t k = static_cast<std::size_t>(desc.Top + y) * width + desc.Left + x;
          canvas[k] = canvas[plane + k] = canvas[2 * plane + k] = 0;
        }
      }
    }
  }
  DGifCloseFile(gif, &error);
  return out;
}

}  // namespace apo::ref

// zstd and xz compression of model files, with bounded decompression.

#include "apo/models/compression.hpp"

#include <lzma.h>
#include <zstd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <fstream>
#include <thread>

#include <fmt/format.h>

#include "apo/core/error.hpp"
#include "file_bytes.hpp"

namespace apo::models {

namespace {

constexpr std::array<unsigned char, 4> kZstdMagic{0x28, 0xB5, 0x2F, 0xFD};
constexpr std::array<unsigned char, 6> kXzMagic{0xFD, '7', 'z', 'X', 'Z', 0x00};

int worker_threads(int requested) {
  if (requested > 0) return requested;
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

int checked_level(const CompressionOptions& options) {
  if (options.codec == Codec::zstd) {
    const int level = options.level.value_or(3);
    if (level < 1 || level > ZSTD_maxCLevel()) {
      fail(ErrorCode::InvalidArgument, "zstd level {} is out of range (expected 1 to {})", level,
           ZSTD_maxCLevel());
    }
    return level;
  }
  const int level = options.level.value_or(6);
  if (level < 0 || level > 9) {
    fail(ErrorCode::InvalidArgument, "xz level {} is out of range (expected 0 to 9)", level);
  }
  return level;
}

// Runs an lzma stream (encoder or decoder) over all of `input`, handing each output chunk to
// `sink`; returns LZMA_STREAM_END, or the first error.
template <class Sink>
lzma_ret run_lzma(lzma_stream& stream, std::span<const std::byte> input, Sink&& sink) {
  std::vector<std::byte> chunk(1 << 20);
  stream.next_in = reinterpret_cast<const std::uint8_t*>(input.data());
  stream.avail_in = input.size();
  for (;;) {
    stream.next_out = reinterpret_cast<std::uint8_t*>(chunk.data());
    stream.avail_out = chunk.size();
    const lzma_ret ret = lzma_code(&stream, LZMA_FINISH);
    sink(std::span<const std::byte>(chunk.data(), chunk.size() - stream.avail_out));
    if (ret != LZMA_OK) return ret;
  }
}

void report_progress(const CompressionOptions& options, std::int64_t done, std::size_t total) {
  if (options.on_progress) options.on_progress(done, static_cast<std::int64_t>(total));
}

// Streams `input` through a compressor, handing each output chunk to `sink`.
template <class Sink>
void compress_stream(std::span<const std::byte> input, const CompressionOptions& options,
                     Sink&& sink) {
  const int level = checked_level(options);
  if (options.codec == Codec::zstd) {
    std::vector<std::byte> chunk(1 << 20);
    std::unique_ptr<ZSTD_CCtx, decltype(&ZSTD_freeCCtx)> ctx(ZSTD_createCCtx(), ZSTD_freeCCtx);
    if (!ctx) throw std::bad_alloc();
    ZSTD_CCtx_setParameter(ctx.get(), ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(ctx.get(), ZSTD_c_checksumFlag, 1);
    // Worker threads need libzstd built with multithreading (Debian's is); without it the
    // parameter is refused and compression runs on this thread.
    ZSTD_CCtx_setParameter(ctx.get(), ZSTD_c_nbWorkers, worker_threads(options.threads));
    ZSTD_CCtx_setPledgedSrcSize(ctx.get(), input.size());
    ZSTD_inBuffer in{input.data(), input.size(), 0};
    for (bool done = false; !done;) {
      ZSTD_outBuffer out{chunk.data(), chunk.size(), 0};
      const std::size_t remaining = ZSTD_compressStream2(ctx.get(), &out, &in, ZSTD_e_end);
      if (ZSTD_isError(remaining)) {
        fail(ErrorCode::Internal, "zstd compression failed: {}", ZSTD_getErrorName(remaining));
      }
      sink(std::span<const std::byte>(chunk.data(), out.pos));
      done = remaining == 0;
      report_progress(options, static_cast<std::int64_t>(in.pos), input.size());
    }
    return;
  }
  lzma_stream stream = LZMA_STREAM_INIT;
  lzma_mt mt{};
  mt.threads = static_cast<std::uint32_t>(worker_threads(options.threads));
  mt.preset = static_cast<std::uint32_t>(level);
  mt.check = LZMA_CHECK_CRC64;
  if (lzma_stream_encoder_mt(&stream, &mt) != LZMA_OK) {
    fail(ErrorCode::Internal, "xz encoder could not start (level {}, {} threads)", level,
         mt.threads);
  }
  std::unique_ptr<lzma_stream, decltype(&lzma_end)> guard(&stream, lzma_end);
  const auto report = [&](std::span<const std::byte> chunk) {
    sink(chunk);
    report_progress(options, static_cast<std::int64_t>(stream.total_in), input.size());
  };
  if (const lzma_ret ret = run_lzma(stream, input, report); ret != LZMA_STREAM_END) {
    fail(ErrorCode::Internal, "xz compression failed (lzma error {})", +ret);
  }
}

[[noreturn]] void too_large(const std::string& name, std::int64_t limit) {
  throw Error(ErrorCode::OutOfMemory,
              fmt::format("decompresses to more than {} bytes, the most this host can hold", limit),
              name);
}

std::vector<std::byte> decompress_zstd(std::span<const std::byte> input, std::int64_t limit,
                                       const std::string& name) {
  std::vector<std::byte> output;
  const unsigned long long claimed = ZSTD_getFrameContentSize(input.data(), input.size());
  if (claimed == ZSTD_CONTENTSIZE_ERROR) {
    throw Error(ErrorCode::Corrupt, "not a zstd frame at offset 0", name);
  }
  if (claimed != ZSTD_CONTENTSIZE_UNKNOWN) {
    // A claim is only a hint: never allocate past the limit because a header said so.
    if (claimed > static_cast<unsigned long long>(limit)) too_large(name, limit);
    output.reserve(static_cast<std::size_t>(claimed));
  }
  std::unique_ptr<ZSTD_DCtx, decltype(&ZSTD_freeDCtx)> ctx(ZSTD_createDCtx(), ZSTD_freeDCtx);
  if (!ctx) throw std::bad_alloc();
  ZSTD_inBuffer in{input.data(), input.size(), 0};
  std::vector<std::byte> chunk(ZSTD_DStreamOutSize());
  for (;;) {
    ZSTD_outBuffer out{chunk.data(), chunk.size(), 0};
    const std::size_t pending = ZSTD_decompressStream(ctx.get(), &out, &in);
    if (ZSTD_isError(pending)) {
      throw Error(ErrorCode::Corrupt,
                  fmt::format("zstd stream damaged near compressed offset {}: {}", in.pos,
                              ZSTD_getErrorName(pending)),
                  name);
    }
    if (static_cast<std::int64_t>(output.size() + out.pos) > limit) too_large(name, limit);
    output.insert(output.end(), chunk.begin(),
                  chunk.begin() + static_cast<std::ptrdiff_t>(out.pos));
    if (in.pos == in.size) {
      if (pending == 0) break;  // the last frame is complete and flushed
      if (out.pos == 0) {       // the decoder wants input that does not exist
        throw Error(ErrorCode::Corrupt,
                    fmt::format("zstd stream truncated at compressed offset {}", input.size()),
                    name);
      }
    }
  }
  return output;
}

std::vector<std::byte> decompress_xz(std::span<const std::byte> input, std::int64_t limit,
                                     const std::string& name) {
  lzma_stream stream = LZMA_STREAM_INIT;
#if LZMA_VERSION >= 50040000
  // liblzma 5.4 decodes the blocks of a multithreaded encoder's stream in parallel. Above the
  // threading memory limit (block buffers, sized by the stream's headers: untrusted) it decodes
  // on one thread instead, which needs only the dictionary.
  lzma_mt mt{};
  mt.flags = LZMA_CONCATENATED;
  mt.threads = static_cast<std::uint32_t>(worker_threads(0));
  mt.memlimit_threading =
      std::min<std::uint64_t>(static_cast<std::uint64_t>(limit), lzma_physmem() / 4);
  mt.memlimit_stop = UINT64_MAX;
  if (lzma_stream_decoder_mt(&stream, &mt) != LZMA_OK) {
    fail(ErrorCode::Internal, "xz decoder could not start ({} threads)", mt.threads);
  }
#else
  if (lzma_stream_decoder(&stream, UINT64_MAX, LZMA_CONCATENATED) != LZMA_OK) {
    fail(ErrorCode::Internal, "xz decoder could not start");
  }
#endif
  std::unique_ptr<lzma_stream, decltype(&lzma_end)> guard(&stream, lzma_end);
  std::vector<std::byte> output;
  const lzma_ret ret = run_lzma(stream, input, [&](std::span<const std::byte> chunk) {
    if (static_cast<std::int64_t>(output.size() + chunk.size()) > limit) too_large(name, limit);
    output.insert(output.end(), chunk.begin(), chunk.end());
  });
  if (ret != LZMA_STREAM_END) {
    throw Error(ErrorCode::Corrupt,
                fmt::format("xz stream damaged or truncated near compressed offset {} (lzma error "
                            "{})",
                            input.size() - stream.avail_in, +ret),
                name);
  }
  return output;
}

}  // namespace

std::optional<Codec> detect_codec(std::span<const std::byte> first_bytes) noexcept {
  auto starts_with = [&](const auto& magic) {
    return first_bytes.size() >= magic.size() &&
           std::memcmp(first_bytes.data(), magic.data(), magic.size()) == 0;
  };
  if (starts_with(kZstdMagic)) return Codec::zstd;
  if (starts_with(kXzMagic)) return Codec::xz;
  return std::nullopt;
}

std::string_view file_suffix(Codec codec) noexcept {
  return codec == Codec::zstd ? ".zst" : ".xz";
}

std::vector<std::byte> compress(std::span<const std::byte> input,
                                const CompressionOptions& options) {
  std::vector<std::byte> output;
  compress_stream(input, options, [&](std::span<const std::byte> chunk) {
    output.insert(output.end(), chunk.begin(), chunk.end());
  });
  return output;
}

CompressionReport compress_file(const std::filesystem::path& input,
                                const std::filesystem::path& output,
                                const CompressionOptions& options) {
  checked_level(options);
  const auto start = std::chrono::steady_clock::now();
  const auto source = FileBytes::map(input);
  TemporaryFile target(output);
  CompressionReport report;
  report.input_bytes = static_cast<std::int64_t>(source->size());
  compress_stream(source->bytes(), options, [&](std::span<const std::byte> chunk) {
    target.write(chunk);
    report.output_bytes += static_cast<std::int64_t>(chunk.size());
  });
  target.commit();
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

std::vector<std::byte> decompress(std::span<const std::byte> input, Codec codec,
                                  std::int64_t max_output_bytes, const std::string& name) {
  return codec == Codec::zstd ? decompress_zstd(input, max_output_bytes, name)
                              : decompress_xz(input, max_output_bytes, name);
}

}  // namespace apo::models

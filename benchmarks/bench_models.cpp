// bench_models: model loading and caching.
//   1. safetensors load throughput, mapped and copied, against a plain read() of the same file
//      (the machine's limit) and against libtorch's own serialization (torch::save/torch::load)
//      of the same tensors; files in the page cache.
//   2. a warm acquire from the host tier against a cold load from disk (target >= 10x), with the
//      file dropped from the page cache before each cold load.
//   3. zstd against xz (the guide's lzma advice): ratio, compression and load speed.

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/serialize.h>

#include "apo/core/units.hpp"
#include "apo/models/compression.hpp"
#include "apo/models/model_cache.hpp"
#include "apo/models/safetensors.hpp"
#include "apo/monitor/benchmark.hpp"

namespace fs = std::filesystem;
using apo::bench::Better;
using apo::bench::Result;
using namespace apo::literals;

namespace {

// Drops a file's pages from the page cache, so the next read comes from the disk.
void drop_from_page_cache(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  ::close(fd);
}

void read_whole(const fs::path& path, std::vector<char>& buffer) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  std::size_t done = 0;
  while (done < buffer.size()) {
    const ssize_t got = ::read(fd, buffer.data() + done, buffer.size() - done);
    if (got <= 0) break;
    done += static_cast<std::size_t>(got);
  }
  ::close(fd);
}

double gb_per_s(std::int64_t bytes, double seconds) {
  return static_cast<double>(bytes) / seconds / 1e9;
}

// Reads one byte of every page, so a mapped view is really paged in.
std::int64_t touch(const at::Tensor& t) {
  const auto* bytes = static_cast<const unsigned char*>(t.data_ptr());
  std::int64_t sum = 0;
  for (std::size_t i = 0; i < t.nbytes(); i += 4096) sum += bytes[i];
  return sum;
}

}  // namespace

int main(int argc, char** argv) {
  const auto options = apo::bench::parse_options(argc, argv, "bench_models: loading and caching");
  apo::bench::Report report("bench_models");
  const fs::path dir = fs::temp_directory_path() / fmt::format("apo_bench_models_{}", ::getpid());
  fs::create_directories(dir);

  // A diffusion-model-like file: bf16 weights of [3072, 3072] (18 MiB each).
  const int tensors = options.quick ? 4 : 24;
  std::vector<apo::models::NamedTensor> weights;
  std::vector<at::Tensor> plain;
  at::manual_seed(0);
  for (int i = 0; i < tensors; ++i) {
    weights.push_back({fmt::format("blocks.{}.attn.qkv.weight", i),
                       (at::randn({3072, 3072}) * 0.02).to(at::kBFloat16)});
    plain.push_back(weights.back().tensor);
  }
  const fs::path model = dir / "model.safetensors";
  apo::models::save_safetensors(model, weights);
  const auto file_bytes = static_cast<std::int64_t>(fs::file_size(model));
  const std::string size_text = apo::format_bytes(file_bytes);

  // 1. Load throughput, page cache warm.
  std::vector<char> buffer(static_cast<std::size_t>(file_bytes));
  const double read_s = apo::bench::median_seconds([&] { read_whole(model, buffer); });
  report.add({"plain read() of the file, " + size_text, "throughput", gb_per_s(file_bytes, read_s),
              "GB/s", std::nullopt, Better::higher});
  const double mapped_s = apo::bench::median_seconds([&] {
    const auto file = apo::models::SafetensorsFile::open(model);
    std::int64_t sum = 0;
    for (const auto& e : file.tensors()) sum += touch(file.view(e.name));
    apo::bench::do_not_optimize(sum);
  });
  report.add({"safetensors mapped views (paged in) vs plain read", "throughput",
              gb_per_s(file_bytes, mapped_s), "GB/s", gb_per_s(file_bytes, read_s),
              Better::higher});
  const double copied_s = apo::bench::median_seconds([&] {
    const auto file = apo::models::SafetensorsFile::open(model);
    for (const auto& e : file.tensors()) apo::bench::do_not_optimize(file.copy(e.name).data_ptr());
  });
  report.add({"safetensors owned copies vs plain read", "throughput",
              gb_per_s(file_bytes, copied_s), "GB/s", gb_per_s(file_bytes, read_s),
              Better::higher});
  const fs::path pickled = dir / "model.pt";
  torch::save(plain, pickled.string());
  const double torch_s = apo::bench::median_seconds([&] {
    std::vector<at::Tensor> loaded;
    torch::load(loaded, pickled.string());
    apo::bench::do_not_optimize(loaded.size());
  });
  report.add({"torch::load of the same tensors", "throughput", gb_per_s(file_bytes, torch_s),
              "GB/s", std::nullopt, Better::higher});
  report.add({"safetensors owned copies vs torch::load", "time", copied_s * 1e3, "ms",
              torch_s * 1e3, Better::lower});

  // 2. Warm acquire from the host tier against a cold load from disk.
  {
    const fs::path other = dir / "other.safetensors";
    apo::models::save_safetensors(other, weights);
    // A device tier of its own in host memory stands in for a GPU: promotion is a copy.
    const apo::Device device = apo::Device::cpu();
    const auto cache_options = [&] {
      apo::models::ModelCacheOptions options;
      options.host_ledger = std::make_shared<apo::memory::MemoryLedger>(device, 4 * file_bytes);
      options.device_ledgers = {
          std::make_shared<apo::memory::MemoryLedger>(device, file_bytes * 3 / 2)};
      apo::quant::PrecisionSettings bf16;
      bf16.precision = apo::Precision::bf16;
      options.quantization = apo::models::planner_of(
          apo::quant::ConfiguredPrecision(bf16, apo::quant::QuantizationRules()));
      options.demote_to_host = true;
      return options;
    };
    const apo::models::ModelRef a{model, apo::models::ModelKind::diffusion, std::nullopt, "bench"};
    const apo::models::ModelRef b{other, apo::models::ModelKind::diffusion, std::nullopt, "bench"};
    std::vector<double> cold;
    for (int run = 0; run < 3; ++run) {
      drop_from_page_cache(model);
      apo::models::ModelCache cache(cache_options());
      const auto t0 = std::chrono::steady_clock::now();
      cache.acquire(a, device).release();
      cold.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(cold.begin(), cold.end());
    apo::models::ModelCache cache(cache_options());
    cache.acquire_host(a).release();  // both in the host tier
    cache.acquire_host(b).release();
    bool use_a = true;
    // Alternating a and b: each acquire promotes one from the host tier and evicts the other.
    const double warm_s = apo::bench::median_seconds([&] {
      cache.acquire(use_a ? a : b, device).release();
      use_a = !use_a;
    });
    const double hit_s =
        apo::bench::median_seconds([&] { cache.acquire(use_a ? b : a, device).release(); });
    report.add({"acquire: warm (host tier copy) vs cold (disk read), " + size_text, "time",
                warm_s * 1e3, "ms", cold[1] * 1e3, Better::lower});
    report.add({"acquire: resident hit vs cold (disk read)", "time", hit_s * 1e3, "ms",
                cold[1] * 1e3, Better::lower});
  }

  // 3. zstd and xz on the weights (ratio = compressed / original, lower is smaller).
  {
    std::vector<std::byte> sample(static_cast<std::size_t>(options.quick ? 8_MiB : 64_MiB));
    std::ifstream(model, std::ios::binary)
        .read(reinterpret_cast<char*>(sample.data()), static_cast<std::streamsize>(sample.size()));
    const std::string sample_text =
        apo::format_bytes(static_cast<std::int64_t>(sample.size())) + " of bf16 weights";
    struct Measured {
      double ratio, compress_mb_s, decompress_mb_s;
    };
    auto measure = [&](apo::models::Codec codec, int level) {
      std::vector<std::byte> packed;
      const double compress_s = apo::bench::median_seconds(
          [&] {
            packed = apo::models::compress(sample, {.codec = codec, .level = level, .threads = 2});
          },
          1, 0.0);
      const double decompress_s = apo::bench::median_seconds(
          [&] {
            apo::bench::do_not_optimize(
                apo::models::decompress(packed, codec, 1_GiB, "bench").size());
          },
          3, 0.0);
      const double mb = static_cast<double>(sample.size()) / 1e6;
      return Measured{static_cast<double>(packed.size()) / static_cast<double>(sample.size()),
                      mb / compress_s, mb / decompress_s};
    };
    const Measured zstd = measure(apo::models::Codec::zstd, 3);
    const Measured xz = measure(apo::models::Codec::xz, 6);
    report.add({"zstd -3 vs xz -6: compressed size, " + sample_text, "size_ratio", zstd.ratio, "x",
                xz.ratio, Better::lower});
    report.add({"zstd -3 vs xz -6: compression speed (2 threads)", "speed", zstd.compress_mb_s,
                "MB/s", xz.compress_mb_s, Better::higher});
    report.add({"zstd -3 vs xz -6: decompression (load) speed", "speed", zstd.decompress_mb_s,
                "MB/s", xz.decompress_mb_s, Better::higher});
  }

  fs::remove_all(dir);
  return apo::bench::finish(report, options);
}

// bench_models: model loading and caching, every side on ATen's threads (the same count).
//   1. safetensors loading against a parallel pread() of the same file (what the OS gives):
//      mapped views with every byte read, and owned copies; files in the page cache.
//   2. ModelCache acquire from the host tier (warm) against re-reading the file from the page
//      cache (the same cache without a host tier: what the OS gives for free); a cold load with
//      the file dropped from the page cache is a reference row.
//   3. zstd against xz (the guide's lzma advice): size, compression and load speed, xz with its
//      multithreaded decoder.
// What each side loaded is checked to be byte-identical before a time is reported. Python's
// official loaders (safetensors.torch.load_file, torch.load(mmap=True)) are measured on the same
// file by benchmarks/bench_models.py.

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include "apo/core/units.hpp"
#include "apo/models/compression.hpp"
#include "apo/models/model_cache.hpp"
#include "apo/models/safetensors.hpp"
#include "apo/monitor/benchmark.hpp"

namespace fs = std::filesystem;
using apo::bench::Better;
using apo::bench::check_output;
using apo::bench::interleaved_medians;
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

// The whole file into `buffer`, in one piece per ATen thread read in parallel.
void pread_whole(const fs::path& path, std::vector<std::byte>& buffer) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  check_output(fd >= 0, "cannot open " + path.string());
  const auto size = static_cast<std::int64_t>(buffer.size());
  const std::int64_t threads = at::get_num_threads();
  const std::int64_t piece = (size + threads - 1) / threads;
  std::atomic<bool> ok{true};
  at::parallel_for(0, threads, 1, [&](std::int64_t t0, std::int64_t t1) {
    for (std::int64_t t = t0; t < t1; ++t) {
      std::int64_t done = t * piece;
      const std::int64_t end = std::min(size, done + piece);
      while (done < end) {
        const ssize_t got = ::pread(fd, buffer.data() + done, static_cast<std::size_t>(end - done),
                                    static_cast<off_t>(done));
        if (got <= 0) {
          ok = false;
          break;
        }
        done += got;
      }
    }
  });
  ::close(fd);
  check_output(ok.load(), "pread failed on " + path.string());
}

// Reads every byte of a tensor (XOR of its 8-byte words, on ATen's threads): a mapped view is
// then really paged in and read, as a copy is.
std::uint64_t read_every_byte(const at::Tensor& t) {
  const auto* words = static_cast<const std::uint64_t*>(t.const_data_ptr());
  const auto count = static_cast<std::int64_t>(t.nbytes() / 8);
  return at::parallel_reduce(
      0, count, std::int64_t{1} << 17, std::uint64_t{0},
      [&](std::int64_t begin, std::int64_t end, std::uint64_t acc) {
        for (std::int64_t i = begin; i < end; ++i) acc ^= words[i];
        return acc;
      },
      [](std::uint64_t a, std::uint64_t b) { return a ^ b; });
}

bool same_bytes(const at::Tensor& t, const std::byte* expected) {
  return std::memcmp(t.const_data_ptr(), expected, t.nbytes()) == 0;
}

double gb_per_s(std::int64_t bytes, double seconds) {
  return static_cast<double>(bytes) / seconds / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  const auto options = apo::bench::parse_options(argc, argv, "bench_models: loading and caching");
  apo::bench::Report report("bench_models");
  const fs::path dir = fs::temp_directory_path() / fmt::format("apo_bench_models_{}", ::getpid());
  fs::create_directories(dir);
  const std::string threads = fmt::format("{} threads", at::get_num_threads());

  // A diffusion-model-like file: bf16 weights of [3072, 3072] (18 MiB each).
  const int tensors = options.quick ? 4 : 24;
  std::vector<apo::models::NamedTensor> weights;
  at::manual_seed(0);
  for (int i = 0; i < tensors; ++i) {
    weights.push_back({fmt::format("blocks.{}.attn.qkv.weight", i),
                       (at::randn({3072, 3072}) * 0.02).to(at::kBFloat16)});
  }
  const fs::path model = dir / "model.safetensors";
  apo::models::save_safetensors(model, weights);
  const auto file_bytes = static_cast<std::int64_t>(fs::file_size(model));
  const std::string size_text = apo::format_bytes(file_bytes);

  // 1. Loading, page cache warm, against a parallel pread of the file.
  {
    std::vector<std::byte> buffer(static_cast<std::size_t>(file_bytes));
    pread_whole(model, buffer);
    {
      const auto file = apo::models::SafetensorsFile::open(model);
      const std::byte* data = buffer.data() + file.header().data_offset();
      for (const auto& e : file.tensors()) {
        check_output(same_bytes(file.view(e.name), data + e.data_begin) &&
                         same_bytes(file.copy(e.name), data + e.data_begin),
                     "safetensors: " + e.name + " differs from the file's bytes");
      }
    }
    std::uint64_t checksum = 0;
    const std::vector<double> t =
        interleaved_medians({[&] { pread_whole(model, buffer); },
                             [&] {
                               const auto file = apo::models::SafetensorsFile::open(model);
                               for (const auto& e : file.tensors())
                                 checksum ^= read_every_byte(file.view(e.name));
                             },
                             [&] {
                               const auto file = apo::models::SafetensorsFile::open(model);
                               for (const auto& e : file.tensors()) {
                                 apo::bench::do_not_optimize(file.copy(e.name).data_ptr());
                               }
                             }},
                            9, 1.0);
    apo::bench::do_not_optimize(checksum);
    const double read_gbps = gb_per_s(file_bytes, t[0]);
    report.add({fmt::format("pread() of the whole file, {}, {}", size_text, threads), "throughput",
                read_gbps, "GB/s", std::nullopt, Better::higher});
    report.add({"safetensors mapped views, every byte read, vs pread()", "throughput",
                gb_per_s(file_bytes, t[1]), "GB/s", read_gbps, Better::higher});
    report.add({"safetensors owned copies vs pread()", "throughput", gb_per_s(file_bytes, t[2]),
                "GB/s", read_gbps, Better::higher});
  }

  // 2. Acquire: the host tier against re-reading the file from the page cache.
  {
    const fs::path other = dir / "other.safetensors";
    apo::models::save_safetensors(other, weights);
    // A device tier of its own in host memory stands in for a GPU: promotion is a copy. It holds
    // one model, so acquiring a and b in turn evicts the other each time.
    const apo::Device device = apo::Device::cpu();
    const auto cache_options = [&](bool host_tier) {
      apo::models::ModelCacheOptions o;
      // Without a host tier: a budget too small to hold anything (a ledger needs one).
      o.host_ledger =
          std::make_shared<apo::memory::MemoryLedger>(device, host_tier ? 4 * file_bytes : 1);
      o.device_ledgers = {std::make_shared<apo::memory::MemoryLedger>(device, file_bytes * 3 / 2)};
      apo::quant::PrecisionSettings bf16;
      bf16.precision = apo::Precision::bf16;
      o.quantization = apo::models::planner_of(
          apo::quant::ConfiguredPrecision(bf16, apo::quant::QuantizationRules()));
      o.converted_models.clear();  // every load reads the file itself, keeps no converted copy
      o.demote_to_host = host_tier;
      o.keep_host_copy = host_tier;
      return o;
    };
    const apo::models::ModelRef a{model, apo::models::ModelKind::diffusion, std::nullopt, "bench"};
    const apo::models::ModelRef b{other, apo::models::ModelKind::diffusion, std::nullopt, "bench"};

    // What each side loaded must be the file's tensors, bit for bit.
    const auto check_loaded = [&](const apo::models::Lease& lease, const std::string& what) {
      check_output(lease->weights().size() == weights.size(), what + ": weights missing");
      for (const auto& w : weights) {
        const at::Tensor loaded = lease->weight(w.name).data();
        check_output(loaded.scalar_type() == w.tensor.scalar_type() &&
                         at::equal(loaded.view(at::kShort), w.tensor.view(at::kShort)),
                     what + ": " + w.name + " differs from the file's tensor");
      }
    };

    std::vector<double> cold;
    for (int run = 0; run < 3; ++run) {
      drop_from_page_cache(model);
      apo::models::ModelCache cache(cache_options(false));
      const auto t0 = std::chrono::steady_clock::now();
      apo::models::Lease lease = cache.acquire(a, device);
      cold.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      if (run == 0) check_loaded(lease, "cold load");
    }
    std::sort(cold.begin(), cold.end());

    apo::models::ModelCache warm(cache_options(true));
    warm.acquire_host(a).release();  // both in the host tier
    warm.acquire_host(b).release();
    apo::models::ModelCache reread(cache_options(false));
    check_loaded(warm.acquire(a, device), "warm acquire");
    check_loaded(reread.acquire(a, device), "page-cache re-read");
    bool warm_a = false;  // a is resident in both now: start with b
    bool reread_a = false;
    const std::vector<double> t = interleaved_medians(
        {[&] {
           warm.acquire(warm_a ? a : b, device).release();
           warm_a = !warm_a;
         },
         [&] {
           reread.acquire(reread_a ? a : b, device).release();
           reread_a = !reread_a;
         },
         [&] { warm.acquire(warm_a ? b : a, device).release(); }},  // the one resident: a hit
        11, 2.0);
    const auto stats = warm.stats();
    check_output(stats.promotions > 0 && reread.stats().loads > 2,
                 "the caches did not promote and re-read as intended");
    report.add({"acquire: warm (host tier copy) vs re-read from the page cache, " + size_text,
                "time", t[0] * 1e3, "ms", t[1] * 1e3, Better::lower});
    report.add({"acquire: resident hit vs re-read from the page cache", "time", t[2] * 1e3, "ms",
                t[1] * 1e3, Better::lower});
    report.add({"acquire: warm (host tier copy) vs cold (dropped from the page cache; reference)",
                "time", t[0] * 1e3, "ms", cold[1] * 1e3, Better::lower});
  }

  // 3. zstd and xz on the weights (ratio = compressed / original, lower is smaller).
  {
    std::vector<std::byte> sample(static_cast<std::size_t>(options.quick ? 8_MiB : 64_MiB));
    std::ifstream(model, std::ios::binary)
        .read(reinterpret_cast<char*>(sample.data()), static_cast<std::streamsize>(sample.size()));
    const std::string sample_text =
        apo::format_bytes(static_cast<std::int64_t>(sample.size())) + " of bf16 weights";
    const int workers = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    struct Measured {
      double ratio, compress_mb_s, decompress_mb_s;
    };
    std::vector<std::byte> zstd_packed;
    std::vector<std::byte> xz_packed;
    const auto compress = [&](apo::models::Codec codec, int level, std::vector<std::byte>& out) {
      return apo::bench::median_seconds(
          [&] {
            out = apo::models::compress(
                sample, {.codec = codec, .level = level, .threads = workers, .on_progress = {}});
          },
          1, 0.0);
    };
    const double zstd_compress_s = compress(apo::models::Codec::zstd, 3, zstd_packed);
    const double xz_compress_s = compress(apo::models::Codec::xz, 6, xz_packed);
    for (const auto& [codec, packed] : {std::pair{apo::models::Codec::zstd, &zstd_packed},
                                        std::pair{apo::models::Codec::xz, &xz_packed}}) {
      check_output(apo::models::decompress(*packed, codec, 1_GiB, "bench") == sample,
                   std::string(apo::to_string(codec)) + " did not give back the bytes");
    }
    const std::vector<double> t = interleaved_medians(
        {[&] {
           apo::bench::do_not_optimize(
               apo::models::decompress(zstd_packed, apo::models::Codec::zstd, 1_GiB, "b").size());
         },
         [&] {
           apo::bench::do_not_optimize(
               apo::models::decompress(xz_packed, apo::models::Codec::xz, 1_GiB, "b").size());
         }},
        3, 0.0);
    const double mb = static_cast<double>(sample.size()) / 1e6;
    const auto ratio = [&](const std::vector<std::byte>& packed) {
      return static_cast<double>(packed.size()) / static_cast<double>(sample.size());
    };
    report.add({"zstd -3 vs xz -6: compressed size, " + sample_text, "size_ratio",
                ratio(zstd_packed), "x", ratio(xz_packed), Better::lower});
    report.add({fmt::format("zstd -3 vs xz -6: compression speed ({} threads each)", workers),
                "speed", mb / zstd_compress_s, "MB/s", mb / xz_compress_s, Better::higher});
    report.add({fmt::format("zstd -3 (1 thread) vs xz -6 (multithreaded decoder, {} threads): "
                            "decompression (load) speed",
                            workers),
                "speed", mb / t[0], "MB/s", mb / t[1], Better::higher});
  }

  fs::remove_all(dir);
  return apo::bench::finish(report, options);
}

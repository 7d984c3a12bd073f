// bench_memory: apo's CachingPool against the allocators a user would otherwise run.
//   (1) small alloc+free pairs: against glibc malloc, jemalloc and libtorch's CPU allocator;
//   (2) a denoising-loop trace of 16-256 MiB activations, every byte written: against glibc
//       malloc tuned as a caching allocator (mallopt: no mmap for these blocks, no trimming) and
//       against jemalloc configured as PyTorch's CPU tuning recipes configure it; glibc with its
//       defaults (a fresh mapping per block) is a reference row;
//   (3) a mixed trace: memory held and fragmentation against a jemalloc arena on the same trace;
//   (4) on a CUDA device, the device pool against torch's CUDA caching allocator on the
//       denoising trace (skipped, and said so, where there is none).
// Candidates and baselines run round-robin; each checks its blocks before a time is reported.
//
// jemalloc (when CMake found it) is linked into this program, so it is the process's malloc:
// libtorch's CPU allocator runs over it, as under LD_PRELOAD. glibc's allocator is called by
// its own names (__libc_malloc, __libc_free), whichever malloc the process has.

#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <fmt/format.h>

#if defined(APO_BENCH_JEMALLOC)
#include <jemalloc/jemalloc.h>
// PyTorch's CPU tuning recipes (and torch.backends.xeon's launcher) run jemalloc with large
// blocks kept in the ordinary arenas and freed pages never returned: a caching configuration.
// tcache_max is added: by default blocks above 32 KiB bypass the thread cache and cost about a
// microsecond each here. A MALLOC_CONF in the environment overrides all of it.
const char* malloc_conf =
    "oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:-1,"
    "muzzy_decay_ms:-1,tcache_max:1048576";
#endif

#include "apo/core/units.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/memory/cuda_resources.hpp"
#include "apo/memory/host_resource.hpp"
#include "apo/monitor/benchmark.hpp"

extern "C" {
void* __libc_malloc(std::size_t bytes);  // NOLINT: glibc's own entry points
void __libc_free(void* ptr);             // NOLINT
}

using namespace apo::literals;
using apo::bench::Better;
using apo::bench::check_output;
using apo::bench::do_not_optimize;
using apo::bench::interleaved_medians;
using apo::bench::Report;
using namespace apo::memory;
using apo::GiB;
using apo::KiB;
using apo::MiB;

namespace {

constexpr std::int64_t kPage = 4096;

// An allocator under test: allocate(bytes) and deallocate(ptr, bytes).
struct Allocator {
  std::string name;
  std::function<void*(std::int64_t)> allocate;
  std::function<void(void*, std::int64_t)> deallocate;
};

Allocator glibc_malloc(std::string name) {
  return {std::move(name),
          [](std::int64_t bytes) { return __libc_malloc(static_cast<std::size_t>(bytes)); },
          [](void* ptr, std::int64_t) { __libc_free(ptr); }};
}

Allocator pool_allocator(CachingPool& pool) {
  return {"CachingPool", [&pool](std::int64_t bytes) { return pool.allocate(bytes); },
          [&pool](void* ptr, std::int64_t bytes) { pool.deallocate(ptr, bytes); }};
}

std::optional<Allocator> jemalloc_allocator() {
#if defined(APO_BENCH_JEMALLOC)
  // Sized deallocation, as C++'s sized operator delete gives it.
  return Allocator{
      "jemalloc", [](std::int64_t bytes) { return mallocx(static_cast<std::size_t>(bytes), 0); },
      [](void* ptr, std::int64_t bytes) { sdallocx(ptr, static_cast<std::size_t>(bytes), 0); }};
#else
  return std::nullopt;
#endif
}

long minor_faults() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

// ---------------------------------------------------------------------------------------------
// (1) Small alloc+free pairs.

void small_pairs(Report& report, bool quick) {
  const std::int64_t sizes[] = {64, 256, 1024, 4096, 16384, 65536};
  constexpr int kSizes = 6;
  const int pairs = quick ? 60'000 : 600'000;

  CachingPool pool(HostResource{});
  std::vector<Allocator> allocators{pool_allocator(pool), glibc_malloc("glibc malloc")};
  if (auto je = jemalloc_allocator()) allocators.push_back(*je);
  std::vector<std::function<void()>> runs;
  for (const Allocator& a : allocators) {
    runs.push_back([&a, &sizes, pairs] {
      for (int i = 0; i < pairs; ++i) {
        auto* p = static_cast<char*>(a.allocate(sizes[i % kSizes]));
        p[0] = 1;  // use the block, as a caller would
        do_not_optimize(p);
        a.deallocate(p, sizes[i % kSizes]);
      }
    });
  }
  c10::Allocator* torch_cpu = c10::GetCPUAllocator();
  runs.push_back([&] {
    for (int i = 0; i < pairs; ++i) {
      c10::DataPtr data = torch_cpu->allocate(static_cast<std::size_t>(sizes[i % kSizes]));
      static_cast<char*>(data.get())[0] = 1;
      do_not_optimize(data.get());
    }
  });
  const std::vector<double> t = interleaved_medians(runs, 9, 1.0);
  const double per_pair = 1e9 / pairs;
  for (std::size_t i = 1; i < allocators.size(); ++i) {
    report.add({"alloc+free 64 B-64 KiB: CachingPool vs " + allocators[i].name, "time per pair",
                t[0] * per_pair, "ns", t[i] * per_pair, Better::lower});
  }
#if defined(APO_BENCH_JEMALLOC)
  const std::string torch_name = "torch CPU allocator (over jemalloc)";
#else
  const std::string torch_name = "torch CPU allocator (over glibc)";
#endif
  report.add({"alloc+free 64 B-64 KiB: CachingPool vs " + torch_name, "time per pair",
              t[0] * per_pair, "ns", t.back() * per_pair, Better::lower});
}

// ---------------------------------------------------------------------------------------------
// (2) A denoising loop: each step allocates the activations of a U-Net-like pass (down to 256
// MiB and back), writes them, and frees them in reverse, as the next step begins.

std::vector<std::int64_t> denoise_sizes(bool quick) {
  std::vector<std::int64_t> sizes;
  for (const std::int64_t mib : {16, 32, 64, 128, 256, 128, 64, 32, 16}) {
    sizes.push_back(mib * MiB / (quick ? 16 : 1));
  }
  return sizes;
}

// Runs `steps` denoising steps on `a`: each block is written (every byte, or one byte per page
// for `first_touch_only`) with its own value, and checked before it is freed: a block that
// overlaps another live one fails the check. Returns the minor page faults taken.
long denoise_steps(const Allocator& a, const std::vector<std::int64_t>& sizes, int steps,
                   bool first_touch_only) {
  struct Live {
    unsigned char* ptr;
    std::int64_t bytes;
    unsigned char value;
  };
  std::vector<Live> live;
  const long faults = minor_faults();
  for (int step = 0; step < steps; ++step) {
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      auto* ptr = static_cast<unsigned char*>(a.allocate(sizes[i]));
      const auto value = static_cast<unsigned char>(i + 1);
      if (first_touch_only) {
        for (std::int64_t b = 0; b < sizes[i]; b += kPage) ptr[b] = value;
      } else {
        std::memset(ptr, value, static_cast<std::size_t>(sizes[i]));
      }
      live.push_back({ptr, sizes[i], value});
    }
    for (const Live& block : live) {
      const std::int64_t last =
          first_touch_only ? (block.bytes - 1) / kPage * kPage : block.bytes - 1;
      check_output(block.ptr[0] == block.value && block.ptr[last] == block.value,
                   a.name + ": a live block was overwritten (blocks overlap)");
    }
    while (!live.empty()) {
      a.deallocate(live.back().ptr, live.back().bytes);
      live.pop_back();
    }
  }
  return minor_faults() - faults;
}

void denoise_case(Report& report, const std::vector<Allocator>& allocators, bool quick,
                  bool first_touch_only, const std::string& baseline_note) {
  const std::vector<std::int64_t> sizes = denoise_sizes(quick);
  constexpr int kSteps = 4;
  std::vector<long> faults(allocators.size(), 0);
  std::vector<std::function<void()>> runs;
  for (std::size_t i = 0; i < allocators.size(); ++i) {
    runs.push_back(
        [&, i] { faults[i] = denoise_steps(allocators[i], sizes, kSteps, first_touch_only); });
  }
  const std::vector<double> t = interleaved_medians(runs, quick ? 3 : 11, quick ? 0.2 : 3.0);
  const std::string what = first_touch_only ? "one byte per page" : "every byte written";
  for (std::size_t i = 1; i < allocators.size(); ++i) {
    report.add({fmt::format("denoise 16-256 MiB ({}): CachingPool vs {}{}", what,
                            allocators[i].name, baseline_note),
                "time per step", t[0] * 1e3 / kSteps, "ms", t[i] * 1e3 / kSteps, Better::lower});
  }
  for (std::size_t i = 0; i < allocators.size(); ++i) {
    std::printf("denoise (%s), %s: %.1f ms per step, %ld minor page faults per step (last run)\n",
                what.c_str(), allocators[i].name.c_str(), t[i] * 1e3 / kSteps, faults[i] / kSteps);
  }
}

// glibc with its defaults maps every block above its mmap threshold (at most 32 MiB) afresh and
// unmaps it on free, so each step page-faults and zeroes 600 MiB. Measured first, before the
// tuning below changes glibc for the rest of the process: a reference, not a baseline.
void denoise_glibc_defaults(Report& report, bool quick) {
  CachingPool pool(HostResource{});
  denoise_case(report, {pool_allocator(pool), glibc_malloc("glibc malloc, defaults")}, quick, false,
               " (reference)");
}

void tune_glibc() {
  // A caching configuration: no block is mmapped below 1 GiB, and freed memory at the top of
  // the heap is trimmed only past 1 GiB, so a loop's blocks are reused as they are.
  check_output(mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1 && mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1,
               "mallopt refused the thresholds");
}

void denoise_tuned(Report& report, bool quick) {
  CachingPool pool(HostResource{});
  std::vector<Allocator> allocators{pool_allocator(pool), glibc_malloc("glibc malloc, tuned")};
  if (auto je = jemalloc_allocator()) allocators.push_back(*je);
  for (const bool first_touch_only : {false, true}) {
    denoise_case(report, allocators, quick, first_touch_only, "");
  }
  std::int64_t peak = 0;
  for (const std::int64_t bytes : denoise_sizes(quick)) peak += bytes;
  report.add({"denoise 16-256 MiB: CachingPool reserved / live peak", "memory ratio",
              static_cast<double>(pool.stats().peak_bytes_reserved) / static_cast<double>(peak),
              "x", std::nullopt, Better::lower});
}

// ---------------------------------------------------------------------------------------------
// (3) Memory held on a mixed trace. Blocks are never written: the pool runs over an upstream
// that hands out address space only, jemalloc over its own arena, whose untouched pages cost no
// memory; both count the pages they would hold had the blocks been written.

class AddressSpace {
 public:
  void* allocate(std::int64_t bytes, std::int64_t alignment = kDefaultAlignment) {
    check_request(bytes, alignment, "AddressSpace");
    if (bytes == 0) return nullptr;
    next_ = align_up(next_, alignment);
    const std::int64_t start = next_;
    next_ += bytes;
    return reinterpret_cast<void*>(start);
  }
  void deallocate(void*, std::int64_t, std::int64_t = kDefaultAlignment) noexcept {}
  MemorySpace space() const noexcept { return {}; }

 private:
  std::int64_t next_ = std::int64_t{1} << 44;  // far from anything mapped; never dereferenced
};

struct TraceEvent {
  std::int64_t bytes;
  int lifetime;  // events until it is freed; -1: kept to the end (weights, caches)
};

// Long-lived weights and caches, activations of all sizes with short lives, some medium-lived
// buffers: what a workflow with several models and samplers asks of an allocator.
std::vector<TraceEvent> mixed_trace(int events, std::uint64_t seed) {
  std::mt19937_64 random(seed);
  const auto log_uniform = [&](std::int64_t lo, std::int64_t hi) {
    std::uniform_real_distribution<double> d(std::log(static_cast<double>(lo)),
                                             std::log(static_cast<double>(hi)));
    return static_cast<std::int64_t>(std::exp(d(random)));
  };
  std::vector<TraceEvent> trace;
  for (int i = 0; i < events; ++i) {
    const auto roll = random() % 1000;  // per mille
    if (roll < 3) {
      trace.push_back({log_uniform(1 * MiB, 256 * MiB), -1});
    } else if (roll < 150) {
      trace.push_back({log_uniform(4 * KiB, 64 * MiB), 100 + static_cast<int>(random() % 900)});
    } else if (roll < 600) {
      trace.push_back({log_uniform(64, 1 * MiB), 1 + static_cast<int>(random() % 20)});
    } else {
      trace.push_back({log_uniform(1 * MiB, 256 * MiB), 1 + static_cast<int>(random() % 20)});
    }
  }
  return trace;
}

struct Block {
  void* ptr;
  std::int64_t bytes;
};

// Live blocks by address, to check that no allocator hands out memory that is still live.
class LiveBlocks {
 public:
  bool add(const Block& b) {
    const auto start = reinterpret_cast<std::uintptr_t>(b.ptr);
    const auto end = start + static_cast<std::uintptr_t>(b.bytes);
    const auto next = live_.lower_bound(start);
    if (next != live_.end() && next->first < end) return false;
    if (next != live_.begin() && std::prev(next)->second > start) return false;
    live_.emplace(start, end);
    return true;
  }
  void remove(const Block& b) { live_.erase(reinterpret_cast<std::uintptr_t>(b.ptr)); }

 private:
  std::map<std::uintptr_t, std::uintptr_t> live_;
};

// Runs `trace` to its end, when every block but the long-lived ones has been freed; calls
// `sample()` after every event and returns the long-lived blocks.
template <class Sample>
std::vector<Block> run_trace(const std::vector<TraceEvent>& trace, const Allocator& a,
                             Sample&& sample) {
  std::multimap<int, Block> dying;  // event index -> block freed then
  std::vector<Block> kept;
  LiveBlocks live;
  for (int i = 0; i < static_cast<int>(trace.size()); ++i) {
    for (auto it = dying.begin(); it != dying.end() && it->first <= i; it = dying.erase(it)) {
      live.remove(it->second);
      a.deallocate(it->second.ptr, it->second.bytes);
    }
    const Block block{a.allocate(trace[i].bytes), trace[i].bytes};
    check_output(live.add(block), a.name + ": a block handed out over a live one");
    if (trace[i].lifetime < 0) {
      kept.push_back(block);
    } else {
      dying.emplace(i + trace[i].lifetime, block);
    }
    sample();
  }
  for (const auto& [when, block] : dying) a.deallocate(block.ptr, block.bytes);
  return kept;
}

#if defined(APO_BENCH_JEMALLOC)
// A jemalloc arena of its own (tcache bypassed), so that its page counts are the trace's alone.
class JemallocArena {
 public:
  JemallocArena() {
    std::size_t size = sizeof(index_);
    check_output(mallctl("arenas.create", &index_, &size, nullptr, 0) == 0,
                 "jemalloc: arenas.create failed");
  }
  ~JemallocArena() {
    mallctl(fmt::format("arena.{}.destroy", index_).c_str(), nullptr, nullptr, nullptr, 0);
  }
  JemallocArena(const JemallocArena&) = delete;
  JemallocArena& operator=(const JemallocArena&) = delete;

  Allocator allocator() const {
    const int flags = MALLOCX_ARENA(index_) | MALLOCX_TCACHE_NONE;
    return {"jemalloc arena",
            [flags](std::int64_t bytes) { return mallocx(static_cast<std::size_t>(bytes), flags); },
            [](void* ptr, std::int64_t bytes) {
              sdallocx(ptr, static_cast<std::size_t>(bytes), MALLOCX_TCACHE_NONE);
            }};
  }

  // Pages the arena holds for reuse or use: active, dirty and muzzy (the "reserved" of a pool).
  std::int64_t held_bytes() const {
    std::uint64_t epoch = 1;
    std::size_t size = sizeof(epoch);
    mallctl("epoch", &epoch, &size, &epoch, size);
    std::int64_t pages = 0;
    for (const char* stat : {"pactive", "pdirty", "pmuzzy"}) {
      std::size_t value = 0;
      size = sizeof(value);
      mallctl(fmt::format("stats.arenas.{}.{}", index_, stat).c_str(), &value, &size, nullptr, 0);
      pages += static_cast<std::int64_t>(value);
    }
    return pages * static_cast<std::int64_t>(sysconf(_SC_PAGESIZE));
  }

  void purge() const {
    mallctl(fmt::format("arena.{}.purge", index_).c_str(), nullptr, nullptr, nullptr, 0);
  }

 private:
  unsigned index_ = 0;
};
#endif

void mixed_trace_case(Report& report, bool quick) {
  const std::vector<TraceEvent> trace = mixed_trace(quick ? 4000 : 40000, 7);

  CachingPool pool(AddressSpace{});
  const std::vector<Block> kept = run_trace(trace, pool_allocator(pool), [] {});
  const PoolStats cached = pool.stats();
  pool.release();  // what a MemoryManager pass leaves
  const PoolStats released = pool.stats();

  std::printf(
      "mixed trace: %zu events; after it %zu long-lived blocks (%s) stay. CachingPool: peak %s "
      "reserved; after the trace %s, after release() %s; fragmentation %.3f, after release() "
      "%.3f\n",
      trace.size(), kept.size(), apo::format_bytes(cached.bytes_requested).c_str(),
      apo::format_bytes(cached.peak_bytes_reserved).c_str(),
      apo::format_bytes(cached.bytes_reserved).c_str(),
      apo::format_bytes(released.bytes_reserved).c_str(), cached.fragmentation(),
      released.fragmentation());
  report.add({"mixed trace: CachingPool fragmentation after release()", "fragmentation",
              released.fragmentation(), "", std::nullopt, Better::lower});

#if defined(APO_BENCH_JEMALLOC)
  const auto live = static_cast<double>(cached.bytes_requested);
  std::int64_t jemalloc_peak = 0;
  std::int64_t jemalloc_after = 0;
  std::int64_t jemalloc_purged = 0;
  {
    JemallocArena arena;
    const Allocator je = arena.allocator();
    std::int64_t event = 0;
    // Sampled every 16 events (a stats refresh costs microseconds); the peak also at the end.
    const std::vector<Block> je_kept = run_trace(trace, je, [&] {
      if (++event % 16 == 0) jemalloc_peak = std::max(jemalloc_peak, arena.held_bytes());
    });
    jemalloc_after = arena.held_bytes();
    jemalloc_peak = std::max(jemalloc_peak, jemalloc_after);
    arena.purge();
    jemalloc_purged = arena.held_bytes();
    for (const Block& b : je_kept) je.deallocate(b.ptr, b.bytes);
  }
  report.add({"mixed trace: peak memory held, CachingPool vs jemalloc arena", "peak held",
              static_cast<double>(cached.peak_bytes_reserved) / GiB, "GiB",
              static_cast<double>(jemalloc_peak) / GiB, Better::lower});
  report.add({"mixed trace: held / live after the trace, CachingPool vs jemalloc arena",
              "memory ratio", static_cast<double>(cached.bytes_reserved) / live, "x",
              static_cast<double>(jemalloc_after) / live, Better::lower});
  report.add({"mixed trace: held / live after release() vs after arena purge", "memory ratio",
              static_cast<double>(released.bytes_reserved) / live, "x",
              static_cast<double>(jemalloc_purged) / live, Better::lower});
#else
  std::printf("mixed trace against jemalloc: skipped (jemalloc not found at configure time)\n");
#endif
  for (const Block& block : kept) pool.deallocate(block.ptr, block.bytes);
}

// ---------------------------------------------------------------------------------------------
// (4) Device memory: CachingPool over CudaDeviceResource against torch's CUDA caching allocator
// on the denoising trace, every byte written by a kernel on torch's current stream, and small
// alloc+free pairs (host-side cost only). Not yet run on a GPU.

std::optional<std::string> cuda_unavailable() {
  if (!cuda_device_available()) return "no CUDA device (or apo built without CUDA)";
  if (!at::hasCUDA()) return "this libtorch was built without CUDA";
  return std::nullopt;
}

void synchronize_cuda() {
  const c10::impl::VirtualGuardImpl guard(c10::DeviceType::CUDA);
  guard.getStream(c10::Device(c10::kCUDA, 0)).synchronize();
}

void device_pool(Report& report, bool quick) {
  if (const auto reason = cuda_unavailable()) {
    std::printf("(4) device pool vs torch's CUDA caching allocator: skipped: %s\n",
                reason->c_str());
    return;
  }
  const at::TensorOptions bytes_on_gpu = at::TensorOptions().dtype(at::kByte).device(at::kCUDA, 0);
  const std::vector<std::int64_t> sizes = denoise_sizes(quick);
  constexpr int kSteps = 4;
  CachingPool pool(CudaDeviceResource{});

  // One step: allocate and fill each activation, then free them in reverse. Returns the first
  // byte of each block, read back when `check` (outside the timed runs).
  const auto torch_step = [&](bool check) {
    std::vector<at::Tensor> live;
    std::vector<int> first;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      live.push_back(at::empty({sizes[i]}, bytes_on_gpu).fill_(static_cast<int>(i + 1)));
    }
    if (check)
      for (const at::Tensor& t : live) first.push_back(t[0].item<int>());
    while (!live.empty()) live.pop_back();
    return first;
  };
  const auto pool_step = [&](bool check) {
    std::vector<std::pair<void*, std::int64_t>> live;
    std::vector<int> first;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      void* ptr = pool.allocate(sizes[i]);
      at::from_blob(ptr, {sizes[i]}, bytes_on_gpu).fill_(static_cast<int>(i + 1));
      live.emplace_back(ptr, sizes[i]);
    }
    if (check) {
      for (const auto& [ptr, bytes] : live) {
        first.push_back(at::from_blob(ptr, {bytes}, bytes_on_gpu)[0].item<int>());
      }
    }
    // Same stream for every fill: a block freed here is reused only by later work on it.
    while (!live.empty()) {
      pool.deallocate(live.back().first, live.back().second);
      live.pop_back();
    }
    return first;
  };
  std::vector<int> expected;
  for (std::size_t i = 0; i < sizes.size(); ++i) expected.push_back(static_cast<int>(i + 1));
  check_output(torch_step(true) == expected && pool_step(true) == expected,
               "CUDA denoise: a block does not hold what was written to it");
  const std::vector<double> t = interleaved_medians({[&] {
                                                       for (int s = 0; s < kSteps; ++s)
                                                         pool_step(false);
                                                       synchronize_cuda();
                                                     },
                                                     [&] {
                                                       for (int s = 0; s < kSteps; ++s)
                                                         torch_step(false);
                                                       synchronize_cuda();
                                                     }},
                                                    quick ? 3 : 11, quick ? 0.2 : 2.0);
  report.add({"CUDA denoise 16-256 MiB (every byte written): pool vs torch caching allocator",
              "time per step", t[0] * 1e3 / kSteps, "ms", t[1] * 1e3 / kSteps, Better::lower});

  const std::int64_t pair_sizes[] = {512, 64 * KiB, 1 * MiB, 16 * MiB, 64 * MiB, 256 * MiB};
  const int pairs = quick ? 20'000 : 200'000;
  c10::Allocator* torch_cuda = c10::GetAllocator(c10::DeviceType::CUDA);
  const std::vector<double> p = interleaved_medians(
      {[&] {
         for (int i = 0; i < pairs; ++i) {
           void* ptr = pool.allocate(pair_sizes[i % 6]);
           do_not_optimize(ptr);
           pool.deallocate(ptr, pair_sizes[i % 6]);
         }
       },
       [&] {
         for (int i = 0; i < pairs; ++i) {
           c10::DataPtr data = torch_cuda->allocate(static_cast<std::size_t>(pair_sizes[i % 6]));
           do_not_optimize(data.get());
         }
       }},
      quick ? 3 : 9, 1.0);
  report.add({"CUDA alloc+free 512 B-256 MiB: pool vs torch caching allocator (host side)",
              "time per pair", p[0] * 1e9 / pairs, "ns", p[1] * 1e9 / pairs, Better::lower});
}

}  // namespace

int main(int argc, char** argv) {
  const auto options = apo::bench::parse_options(
      argc, argv,
      "bench_memory: apo's CachingPool against tuned glibc malloc, jemalloc, torch's CPU "
      "allocator and torch's CUDA caching allocator");
  Report report("bench_memory");
  denoise_glibc_defaults(report, options.quick);
  tune_glibc();
  small_pairs(report, options.quick);
  denoise_tuned(report, options.quick);
  mixed_trace_case(report, options.quick);
  device_pool(report, options.quick);
  return apo::bench::finish(report, options);
}

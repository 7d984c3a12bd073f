// bench_memory: apo's CachingPool against the allocators it replaces.
//   (1) small alloc+free pairs: against malloc and libtorch's CPU allocator (ns per pair);
//   (2) a denoising-loop trace of 16-256 MiB activations, each first-touched: against malloc,
//       which maps fresh zeroed pages every time (target: 5x faster);
//   (3) a mixed trace: memory needed and fragmentation against the guide's bump pool;
//   (4) on a CUDA device, the device pool against torch's CUDA caching allocator (skipped, and
//       said so, where there is none).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <ATen/Context.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <fmt/format.h>

#include "apo/core/units.hpp"
#include "apo/memory/arena_pool.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/memory/cuda_resources.hpp"
#include "apo/memory/host_resource.hpp"
#include "apo/monitor/benchmark.hpp"

using namespace apo::literals;
using apo::bench::Better;
using apo::bench::do_not_optimize;
using apo::bench::median_seconds;
using apo::bench::Report;
using apo::bench::Result;
using namespace apo::memory;
using apo::GiB;
using apo::KiB;
using apo::MiB;

namespace {

constexpr std::int64_t kPage = 4096;

// ---------------------------------------------------------------------------------------------
// (1) Small alloc+free pairs.

void small_pairs(Report& report, bool quick) {
  const std::int64_t sizes[] = {64, 256, 1024, 4096, 16384, 65536};
  constexpr int kSizes = 6;
  const int pairs = quick ? 60'000 : 600'000;

  const auto per_pair_ns = [&](auto&& pair) {
    const double seconds = median_seconds([&] {
      for (int i = 0; i < pairs; ++i) pair(sizes[i % kSizes]);
    });
    return seconds * 1e9 / pairs;
  };

  const double malloc_ns = per_pair_ns([](std::int64_t bytes) {
    auto* p = static_cast<char*>(std::malloc(static_cast<std::size_t>(bytes)));
    p[0] = 1;  // use the block, as a caller would
    do_not_optimize(p);
    std::free(p);
  });

  c10::Allocator* torch_cpu = c10::GetCPUAllocator();
  const double torch_ns = per_pair_ns([&](std::int64_t bytes) {
    c10::DataPtr data = torch_cpu->allocate(static_cast<std::size_t>(bytes));
    static_cast<char*>(data.get())[0] = 1;
    do_not_optimize(data.get());
  });

  CachingPool pool(HostResource{});
  const double pool_ns = per_pair_ns([&](std::int64_t bytes) {
    auto* p = static_cast<char*>(pool.allocate(bytes));
    p[0] = 1;
    do_not_optimize(p);
    pool.deallocate(p, bytes);
  });

  report.add({"alloc+free 64 B-64 KiB: CachingPool vs malloc", "time per pair", pool_ns, "ns",
              malloc_ns, Better::lower});
  report.add({"alloc+free 64 B-64 KiB: CachingPool vs torch CPU allocator", "time per pair",
              pool_ns, "ns", torch_ns, Better::lower});
}

// ---------------------------------------------------------------------------------------------
// (2) A denoising loop: each step allocates the activations of a U-Net-like pass (down to 256
// MiB and back), writes them, and frees them in reverse, as the next step begins.

struct Activation {
  void* ptr;
  std::int64_t bytes;
};

// One write per page: the first touch that makes the kernel map (and zero) the page.
void first_touch(void* ptr, std::int64_t bytes) {
  auto* p = static_cast<volatile char*>(ptr);
  for (std::int64_t i = 0; i < bytes; i += kPage) p[i] = 1;
}

void full_write(void* ptr, std::int64_t bytes) {
  std::memset(ptr, 1, static_cast<std::size_t>(bytes));
}

template <class Allocate, class Free, class Touch>
void denoising_steps(const std::vector<std::int64_t>& sizes, int steps, Allocate&& allocate,
                     Free&& release, Touch&& touch) {
  std::vector<Activation> live;
  for (int step = 0; step < steps; ++step) {
    for (const std::int64_t bytes : sizes) {
      live.push_back({allocate(bytes), bytes});
      touch(live.back().ptr, bytes);
    }
    while (!live.empty()) {
      release(live.back().ptr, live.back().bytes);
      live.pop_back();
    }
  }
}

void diffusion_trace(Report& report, bool quick) {
  const std::int64_t scale = quick ? 16 : 1;
  std::vector<std::int64_t> sizes;
  for (const std::int64_t mib : {16, 32, 64, 128, 256, 128, 64, 32, 16}) {
    sizes.push_back(mib * MiB / scale);
  }
  const int steps = 4;
  std::int64_t peak = 0;
  for (const std::int64_t bytes : sizes) peak += bytes;

  for (const bool full : {false, true}) {
    const auto touch = [full](void* ptr, std::int64_t bytes) {
      full ? full_write(ptr, bytes) : first_touch(ptr, bytes);
    };
    const double malloc_s = median_seconds(
        [&] {
          denoising_steps(
              sizes, steps,
              [](std::int64_t bytes) { return std::malloc(static_cast<std::size_t>(bytes)); },
              [](void* ptr, std::int64_t) { std::free(ptr); }, touch);
        },
        3, 0.5);
    CachingPool pool(HostResource{});
    const double pool_s = median_seconds(
        [&] {
          denoising_steps(
              sizes, steps, [&](std::int64_t bytes) { return pool.allocate(bytes); },
              [&](void* ptr, std::int64_t bytes) { pool.deallocate(ptr, bytes); }, touch);
        },
        3, 0.5);
    const std::string what = full ? "write all" : "first touch";
    report.add({fmt::format("denoise 16-256 MiB ({}): CachingPool vs malloc", what),
                "time per step", pool_s * 1e3 / steps, "ms", malloc_s * 1e3 / steps,
                Better::lower});
    if (!full) {
      report.add({"denoise 16-256 MiB: CachingPool reserved / live peak", "memory ratio",
                  static_cast<double>(pool.stats().peak_bytes_reserved) / static_cast<double>(peak),
                  "x", std::nullopt, Better::lower});
    }
  }
}

// ---------------------------------------------------------------------------------------------
// (3) Fragmentation after a mixed trace. Neither pool touches its memory here, so both run over
// an upstream that hands out address space only: the trace can be as large as a real workflow's
// without the memory.

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
// buffers: what a workflow with several models and samplers asks of a pool.
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

// Runs `trace` on `allocate`/`release` to its end, when every block but the long-lived ones has
// been freed; returns those.
template <class Allocate, class Free>
std::vector<Activation> run_trace(const std::vector<TraceEvent>& trace, Allocate&& allocate,
                                  Free&& release) {
  std::multimap<int, Activation> dying;  // event index -> block freed then
  std::vector<Activation> kept;
  for (int i = 0; i < static_cast<int>(trace.size()); ++i) {
    for (auto it = dying.begin(); it != dying.end() && it->first <= i; it = dying.erase(it)) {
      release(it->second.ptr, it->second.bytes);
    }
    const Activation block{allocate(trace[i].bytes), trace[i].bytes};
    if (trace[i].lifetime < 0) {
      kept.push_back(block);
    } else {
      dying.emplace(i + trace[i].lifetime, block);
    }
  }
  for (const auto& [when, block] : dying) release(block.ptr, block.bytes);
  return kept;
}

// The guide's MemoryPool, modelled: a bump offset that resets to zero whenever a request does
// not fit, whatever still lives there. Counts the blocks it hands out over live data.
class GuideBumpPool {
 public:
  explicit GuideBumpPool(std::int64_t capacity) : capacity_(capacity) {}

  void* allocate(std::int64_t bytes) {
    if (offset_ + bytes > capacity_) offset_ = 0;  // "cleanup()": a reset under live blocks
    const std::int64_t start = offset_;
    offset_ += bytes;
    bool overlaps = false;
    for (auto it = live_.begin(); !overlaps && it != live_.end() && it->first < start + bytes;
         ++it) {
      overlaps = it->second > start;
    }
    if (overlaps) ++handed_over_live_;
    live_.emplace(start, start + bytes);
    return reinterpret_cast<void*>(start + 1);  // +1: never nullptr
  }

  void release(void* ptr, std::int64_t bytes) {
    const std::int64_t start = reinterpret_cast<std::int64_t>(ptr) - 1;
    const auto [first, last] = live_.equal_range(start);
    for (auto it = first; it != last; ++it) {
      if (it->second == start + bytes) {
        live_.erase(it);
        return;
      }
    }
  }

  // 1 - largest free block / total free, as PoolStats defines it: free memory is what no live
  // block covers; the largest free block is what it hands out next without a reset, from the
  // offset up to the first live block (or the end).
  double fragmentation() const {
    std::int64_t covered = 0;
    std::int64_t reach = 0;
    std::int64_t next_live = capacity_;
    for (const auto& [start, end] : live_) {
      covered += std::max<std::int64_t>(0, end - std::max(start, reach));
      reach = std::max(reach, end);
      if (end > offset_) next_live = std::min(next_live, std::max(start, offset_));
    }
    const std::int64_t free = capacity_ - covered;
    if (free <= 0) return 0.0;
    return 1.0 - static_cast<double>(next_live - offset_) / static_cast<double>(free);
  }

  std::int64_t handed_over_live() const { return handed_over_live_; }

 private:
  std::int64_t capacity_;
  std::int64_t offset_ = 0;
  std::multimap<std::int64_t, std::int64_t> live_;  // start -> end; blocks may overlap here
  std::int64_t handed_over_live_ = 0;
};

void fragmentation_trace(Report& report, bool quick) {
  const std::vector<TraceEvent> trace = mixed_trace(quick ? 4000 : 40000, 7);

  auto pool = std::make_shared<CachingPool>(AddressSpace{});
  const std::vector<Activation> kept = run_trace(
      trace, [&](std::int64_t bytes) { return pool->allocate(bytes); },
      [&](void* ptr, std::int64_t bytes) { pool->deallocate(ptr, bytes); });
  const PoolStats cached = pool->stats();
  pool->release();  // what a MemoryManager pass leaves
  const PoolStats released = pool->stats();

  // The bump pool done right (apo's ArenaPool): it never reuses memory under a live block, so
  // it needs as much as the trace allocates between moments when nothing is live.
  ArenaPool arena(AddressSpace{}, ArenaPool::kMaxCapacityBytes);
  run_trace(
      trace, [&](std::int64_t bytes) { return arena.allocate(bytes); },
      [&](void* ptr, std::int64_t bytes) { arena.deallocate(ptr, bytes); });

  // The guide's pool, given the memory the caching pool needed at its peak.
  GuideBumpPool guide(cached.peak_bytes_reserved);
  run_trace(
      trace, [&](std::int64_t bytes) { return guide.allocate(bytes); },
      [&](void* ptr, std::int64_t bytes) { guide.release(ptr, bytes); });

  report.add({"mixed trace: memory needed, CachingPool vs bump arena", "peak reserved",
              static_cast<double>(cached.peak_bytes_reserved) / GiB, "GiB",
              static_cast<double>(arena.stats().peak_offset_bytes) / GiB, Better::lower});
  report.add({"mixed trace: fragmentation after, pool vs guide's pool", "fragmentation",
              released.fragmentation(), "", guide.fragmentation(), Better::lower});
  report.add({"mixed trace: fragmentation, pool before release()", "fragmentation",
              cached.fragmentation(), "", std::nullopt, Better::lower});
  report.add(
      {"mixed trace: pool reserved / live after release()", "memory ratio",
       static_cast<double>(released.bytes_reserved) / static_cast<double>(released.bytes_requested),
       "x", std::nullopt, Better::lower});
  report.add({"mixed trace: blocks over live data, pool vs guide's pool", "count", 0.0, "",
              static_cast<double>(guide.handed_over_live()), Better::lower});
  std::printf(
      "mixed trace: %zu events; after it %zu long-lived blocks (%s) stay. CachingPool: peak "
      "%s reserved; after the trace %s reserved, largest free block %s; after release() %s "
      "reserved, largest free block %s\n",
      trace.size(), kept.size(), apo::format_bytes(cached.bytes_requested).c_str(),
      apo::format_bytes(cached.peak_bytes_reserved).c_str(),
      apo::format_bytes(cached.bytes_reserved).c_str(),
      apo::format_bytes(cached.largest_free_block_bytes).c_str(),
      apo::format_bytes(released.bytes_reserved).c_str(),
      apo::format_bytes(released.largest_free_block_bytes).c_str());
  for (const Activation& block : kept) pool->deallocate(block.ptr, block.bytes);
}

// ---------------------------------------------------------------------------------------------
// (4) Device memory: CachingPool over CudaDeviceResource against torch's CUDA caching allocator,
// alloc+free pairs of activation sizes. Host-side cost only; neither synchronises.

std::optional<std::string> cuda_unavailable() {
  if (!cuda_device_available()) return "no CUDA device (or apo built without CUDA)";
  if (!at::hasCUDA()) return "this libtorch was built without CUDA";
  return std::nullopt;
}

void device_pool(Report& report, bool quick) {
  if (const auto reason = cuda_unavailable()) {
    std::printf("(4) device pool vs torch's CUDA caching allocator: skipped: %s\n",
                reason->c_str());
    return;
  }
  const std::int64_t sizes[] = {512, 64 * KiB, 1 * MiB, 16 * MiB, 64 * MiB, 256 * MiB};
  constexpr int kSizes = 6;
  const int pairs = quick ? 20'000 : 200'000;
  const auto per_pair_ns = [&](auto&& pair) {
    return median_seconds([&] {
             for (int i = 0; i < pairs; ++i) pair(sizes[i % kSizes]);
           }) *
           1e9 / pairs;
  };
  c10::Allocator* torch_cuda = c10::GetAllocator(c10::DeviceType::CUDA);
  const double torch_ns = per_pair_ns([&](std::int64_t bytes) {
    c10::DataPtr data = torch_cuda->allocate(static_cast<std::size_t>(bytes));
    do_not_optimize(data.get());
  });
  CachingPool pool(CudaDeviceResource{});
  const double pool_ns = per_pair_ns([&](std::int64_t bytes) {
    void* p = pool.allocate(bytes);
    do_not_optimize(p);
    pool.deallocate(p, bytes);
  });
  report.add({"CUDA alloc+free 512 B-256 MiB: pool vs torch caching", "time per pair", pool_ns,
              "ns", torch_ns, Better::lower});
}

}  // namespace

int main(int argc, char** argv) {
  const auto options = apo::bench::parse_options(
      argc, argv,
      "bench_memory: apo's CachingPool against malloc, torch's allocators and the "
      "guide's bump pool");
  Report report("bench_memory");
  small_pairs(report, options.quick);
  diffusion_trace(report, options.quick);
  fragmentation_trace(report, options.quick);
  device_pool(report, options.quick);
  return apo::bench::finish(report, options);
}

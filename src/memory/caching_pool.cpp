// CachingPool. Bookkeeping lives on the host even when the memory is a device's, so no
// metadata is ever written into the blocks. Every container that deallocate() touches has its
// capacity reserved while allocating, so that deallocate() never allocates and cannot throw.

#include "apo/memory/caching_pool.hpp"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <utility>
#include <vector>

namespace apo::memory {

namespace {

constexpr std::int64_t kSmallGranule = 256;        // small class sizes are multiples of this
constexpr std::int64_t kPage = 4096;               // large blocks are whole pages
constexpr std::int64_t kSegmentAlignment = kPage;  // so large blocks meet kMaxAlignment
static_assert(kSegmentAlignment == kMaxAlignment);

// Size classes: 256, 512, 768, 1024, then four per power of two (1280, 1536, 1792, 2048, 2560,
// ...), each a multiple of 256, so a block wastes at most a quarter of itself.
int size_class(std::int64_t bytes) {
  if (bytes <= 1024) return static_cast<int>((bytes - 1) / kSmallGranule);
  const auto above = static_cast<std::uint64_t>(bytes - 1);
  const int exponent = std::bit_width(above) - 1;  // 2^exponent < bytes <= 2^(exponent + 1)
  const auto quarter = static_cast<int>((above - (std::uint64_t{1} << exponent)) >> (exponent - 2));
  return 4 + (exponent - 10) * 4 + quarter;
}

std::int64_t class_bytes(int index) {
  if (index < 4) return (index + 1) * kSmallGranule;
  const int exponent = 10 + (index - 4) / 4;
  const std::int64_t power = std::int64_t{1} << exponent;
  return power + (index % 4 + 1) * (power / 4);
}

struct Block {
  char* base = nullptr;
  std::int64_t size = 0;
  Block* prev = nullptr;  // neighbours in the same segment
  Block* next = nullptr;
  bool free = true;
};

// Free large blocks ordered by (size, address): the first not smaller than a request is its
// best fit, the lowest-addressed among equals.
bool by_size(const Block* a, const Block* b) {
  return a->size != b->size ? a->size < b->size : a->base < b->base;
}

// Which path serves a request; allocate and deallocate must agree.
bool is_small(std::int64_t bytes, std::int64_t alignment, const CachingPoolOptions& options) {
  return bytes <= options.small_block_limit_bytes && alignment <= kSmallGranule;
}

struct SizeClass {
  std::int64_t block_bytes = 0;
  std::int64_t total_blocks = 0;  // in all of the class's slabs; free.capacity() >= this
  std::vector<char*> free;        // last in, first out
  std::vector<char*> slabs;       // bases, ascending
};

}  // namespace

struct CachingPool::Impl {
  AnyResource upstream;
  CachingPoolOptions options;
  mutable std::mutex mutex;

  std::vector<SizeClass> classes;
  std::vector<Block*> free_large;  // sorted by_size; capacity() >= large_block_count
  std::int64_t large_block_count = 0;
  std::unordered_map<void*, Block*> live_large;
  std::vector<Block*> segments;  // the first block of each large segment

  PoolStats counters;  // largest_free_block_bytes is computed when asked
  std::atomic<std::int64_t> reserved_mirror{0};

  Impl(AnyResource upstream_in, CachingPoolOptions options_in)
      : upstream(std::move(upstream_in)), options(options_in) {
    classes.resize(static_cast<std::size_t>(size_class(options.small_block_limit_bytes) + 1));
    for (std::size_t i = 0; i < classes.size(); ++i) {
      classes[i].block_bytes = class_bytes(static_cast<int>(i));
    }
  }

  // --- upstream ------------------------------------------------------------------------------

  // Asks the upstream for a segment; on refusal (OutOfMemory or bad_alloc) releases the cache
  // and asks once more. Other errors pass through.
  char* obtain_segment(std::int64_t bytes, std::int64_t request_bytes) {
    const auto ask = [&] {
      return static_cast<char*>(upstream.allocate(bytes, kSegmentAlignment));
    };
    try {
      return ask();
    } catch (const Error& error) {
      if (error.code() != ErrorCode::OutOfMemory) throw;
    } catch (const std::bad_alloc&) {
    }
    release_locked();
    const auto refuse = [&](const char* why) {
      fail(ErrorCode::OutOfMemory,
           "CachingPool: the upstream refused a {} segment for a {} request even after the "
           "cache was released ({} in use, {} reserved): {}",
           format_bytes(bytes), format_bytes(request_bytes), format_bytes(counters.bytes_in_use),
           format_bytes(counters.bytes_reserved), why);
    };
    try {
      return ask();
    } catch (const Error& error) {
      if (error.code() != ErrorCode::OutOfMemory) throw;
      refuse(error.what());
    } catch (const std::bad_alloc& error) {
      refuse(error.what());
    }
    return nullptr;  // not reached: refuse() throws
  }

  void add_reserved(std::int64_t bytes) {
    counters.bytes_reserved += bytes;
    counters.peak_bytes_reserved = std::max(counters.peak_bytes_reserved, counters.bytes_reserved);
    reserved_mirror.store(counters.bytes_reserved, std::memory_order_relaxed);
  }

  void give_back(char* base, std::int64_t bytes) {
    upstream.deallocate(base, bytes, kSegmentAlignment);
    counters.bytes_reserved -= bytes;
    reserved_mirror.store(counters.bytes_reserved, std::memory_order_relaxed);
  }

  void note_allocation(std::int64_t block_bytes, std::int64_t request_bytes) {
    counters.bytes_in_use += block_bytes;
    counters.bytes_requested += request_bytes;
    counters.peak_bytes_in_use = std::max(counters.peak_bytes_in_use, counters.bytes_in_use);
    ++counters.live_allocations;
    ++counters.allocation_count;
  }

  void note_deallocation(std::int64_t block_bytes, std::int64_t request_bytes) noexcept {
    counters.bytes_in_use -= block_bytes;
    counters.bytes_requested -= request_bytes;
    --counters.live_allocations;
  }

  // --- small blocks --------------------------------------------------------------------------

  void* allocate_small(std::int64_t bytes) {
    SizeClass& cls = classes[static_cast<std::size_t>(size_class(bytes))];
    if (cls.free.empty()) add_slab(cls, bytes);
    char* block = cls.free.back();
    cls.free.pop_back();
    note_allocation(cls.block_bytes, bytes);
    return block;
  }

  void add_slab(SizeClass& cls, std::int64_t request_bytes) {
    const std::int64_t blocks = options.slab_bytes / cls.block_bytes;
    cls.free.reserve(static_cast<std::size_t>(cls.total_blocks + blocks));
    cls.slabs.reserve(cls.slabs.size() + 1);
    char* slab = obtain_segment(options.slab_bytes, request_bytes);
    ++counters.upstream_allocation_count;
    add_reserved(options.slab_bytes);
    cls.slabs.insert(std::upper_bound(cls.slabs.begin(), cls.slabs.end(), slab), slab);
    cls.total_blocks += blocks;
    for (std::int64_t i = blocks - 1; i >= 0; --i) cls.free.push_back(slab + i * cls.block_bytes);
  }

  void deallocate_small(void* ptr, std::int64_t bytes) noexcept {
    SizeClass& cls = classes[static_cast<std::size_t>(size_class(bytes))];
    cls.free.push_back(static_cast<char*>(ptr));  // capacity reserved by add_slab
    note_deallocation(cls.block_bytes, bytes);
  }

  std::int64_t release_slabs(SizeClass& cls) {
    if (cls.free.empty()) return 0;
    const std::int64_t per_slab = options.slab_bytes / cls.block_bytes;
    std::sort(cls.free.begin(), cls.free.end());
    std::vector<char*> empty_slabs;
    auto block = cls.free.begin();
    for (char* slab : cls.slabs) {
      block = std::lower_bound(block, cls.free.end(), slab);
      const auto end = std::lower_bound(block, cls.free.end(), slab + options.slab_bytes);
      if (end - block == per_slab) empty_slabs.push_back(slab);
      block = end;
    }
    if (empty_slabs.empty()) return 0;
    const auto in_empty_slab = [&](char* p) {
      const auto slab = std::upper_bound(empty_slabs.begin(), empty_slabs.end(), p);
      return slab != empty_slabs.begin() && p < *(slab - 1) + options.slab_bytes;
    };
    cls.free.erase(std::remove_if(cls.free.begin(), cls.free.end(), in_empty_slab), cls.free.end());
    cls.slabs.erase(std::remove_if(cls.slabs.begin(), cls.slabs.end(),
                                   [&](char* slab) {
                                     return std::binary_search(empty_slabs.begin(),
                                                               empty_slabs.end(), slab);
                                   }),
                    cls.slabs.end());
    for (char* slab : empty_slabs) give_back(slab, options.slab_bytes);
    const auto released = static_cast<std::int64_t>(empty_slabs.size());
    cls.total_blocks -= released * per_slab;
    return released * options.slab_bytes;
  }

  // --- large blocks --------------------------------------------------------------------------

  std::vector<Block*>::iterator find_free(const Block* block) {
    return std::lower_bound(free_large.begin(), free_large.end(), block, by_size);
  }

  void insert_free(Block* block) noexcept {  // capacity >= large_block_count: never allocates
    free_large.insert(find_free(block), block);
  }

  void erase_free(const Block* block) noexcept { free_large.erase(find_free(block)); }

  void* allocate_large(std::int64_t bytes) {
    const std::int64_t size = align_up(bytes, kPage);
    // What can throw happens before the bookkeeping changes, or is undone below.
    free_large.reserve(static_cast<std::size_t>(large_block_count + 2));
    auto remainder = std::make_unique<Block>();

    const Block key{nullptr, size};
    auto fit = std::lower_bound(free_large.begin(), free_large.end(), &key, by_size);
    Block* block = nullptr;
    if (fit != free_large.end()) {
      block = *fit;
      free_large.erase(fit);
    } else {
      block = new_segment(size, bytes).release();
    }
    try {
      live_large.emplace(block->base, block);
    } catch (...) {
      insert_free(block);  // the new segment, if it is one, stays cached
      throw;
    }

    if (block->size - size >= options.small_block_limit_bytes) {
      Block* rest = remainder.release();
      *rest = Block{block->base + size, block->size - size, block, block->next, true};
      if (block->next != nullptr) block->next->prev = rest;
      block->next = rest;
      block->size = size;
      ++large_block_count;
      insert_free(rest);
    }
    block->free = false;
    note_allocation(block->size, bytes);
    return block->base;
  }

  std::unique_ptr<Block> new_segment(std::int64_t size, std::int64_t request_bytes) {
    const std::int64_t segment_bytes = size < options.shared_segment_bytes / 2
                                           ? options.shared_segment_bytes
                                           : align_up(size, options.segment_granularity_bytes);
    auto head = std::make_unique<Block>();
    segments.reserve(segments.size() + 1);
    head->base = obtain_segment(segment_bytes, request_bytes);
    head->size = segment_bytes;
    segments.push_back(head.get());
    ++large_block_count;
    ++counters.upstream_allocation_count;
    add_reserved(segment_bytes);
    return head;
  }

  void deallocate_large(void* ptr, std::int64_t bytes) noexcept {
    const auto found = live_large.find(ptr);
    if (found == live_large.end()) {
      std::fprintf(stderr,
                   "apo::memory::CachingPool::deallocate: %p (%lld bytes) was not allocated by "
                   "this pool or was already deallocated\n",
                   ptr, static_cast<long long>(bytes));
      std::abort();
    }
    Block* block = found->second;
    live_large.erase(found);
    note_deallocation(block->size, bytes);
    block->free = true;
    if (Block* next = block->next; next != nullptr && next->free) {
      erase_free(next);
      merge_into(block, next);
    }
    if (Block* prev = block->prev; prev != nullptr && prev->free) {
      erase_free(prev);
      merge_into(prev, block);
      block = prev;
    }
    insert_free(block);
  }

  // Appends `second` (the next block in the segment) to `first` and deletes it.
  void merge_into(Block* first, Block* second) noexcept {
    first->size += second->size;
    first->next = second->next;
    if (second->next != nullptr) second->next->prev = first;
    delete second;
    --large_block_count;
  }

  // Gives back the free blocks that span a whole segment, compacting free_large in place.
  std::int64_t release_segments() {
    std::int64_t released = 0;
    auto kept = free_large.begin();
    for (Block* block : free_large) {
      if (block->prev != nullptr || block->next != nullptr) {
        *kept++ = block;
        continue;
      }
      give_back(block->base, block->size);
      released += block->size;
      segments.erase(std::find(segments.begin(), segments.end(), block));
      --large_block_count;
      delete block;
    }
    free_large.erase(kept, free_large.end());
    return released;
  }

  std::int64_t release_locked() {
    std::int64_t released = release_segments();
    for (SizeClass& cls : classes) released += release_slabs(cls);
    return released;
  }

  std::int64_t largest_free_block() const {
    std::int64_t largest = free_large.empty() ? 0 : free_large.back()->size;
    for (const SizeClass& cls : classes) {
      if (!cls.free.empty()) largest = std::max(largest, cls.block_bytes);
    }
    return largest;
  }
};

namespace {

void check_options(const CachingPoolOptions& o) {
  if (!is_power_of_two(o.small_block_limit_bytes) || o.small_block_limit_bytes < 1 * KiB ||
      o.small_block_limit_bytes > 64 * MiB) {
    fail(ErrorCode::InvalidArgument,
         "CachingPool: small_block_limit_bytes {} is not a power of two from 1 KiB to 64 MiB",
         o.small_block_limit_bytes);
  }
  if (o.slab_bytes % kPage != 0 || o.slab_bytes < 2 * o.small_block_limit_bytes) {
    fail(ErrorCode::InvalidArgument,
         "CachingPool: slab_bytes {} must be a multiple of 4 KiB and at least twice "
         "small_block_limit_bytes ({})",
         o.slab_bytes, o.small_block_limit_bytes);
  }
  if (o.shared_segment_bytes % kPage != 0 || o.shared_segment_bytes <= 0 ||
      o.shared_segment_bytes > kMaxAllocationBytes) {
    fail(ErrorCode::InvalidArgument,
         "CachingPool: shared_segment_bytes {} is not a positive multiple of 4 KiB",
         o.shared_segment_bytes);
  }
  if (!is_power_of_two(o.segment_granularity_bytes) || o.segment_granularity_bytes < kPage ||
      o.segment_granularity_bytes > 1 * GiB) {
    fail(ErrorCode::InvalidArgument,
         "CachingPool: segment_granularity_bytes {} is not a power of two from 4 KiB to 1 GiB",
         o.segment_granularity_bytes);
  }
}

}  // namespace

CachingPool::CachingPool(AnyResource upstream, CachingPoolOptions options) {
  check_options(options);
  impl_ = std::make_unique<Impl>(std::move(upstream), options);
}

CachingPool::~CachingPool() {
  for (Block* head : impl_->segments) {
    char* base = head->base;
    std::int64_t bytes = 0;
    for (Block* block = head; block != nullptr;) {
      bytes += block->size;
      delete std::exchange(block, block->next);
    }
    impl_->upstream.deallocate(base, bytes, kSegmentAlignment);
  }
  for (const SizeClass& cls : impl_->classes) {
    for (char* slab : cls.slabs) {
      impl_->upstream.deallocate(slab, impl_->options.slab_bytes, kSegmentAlignment);
    }
  }
}

void* CachingPool::allocate(std::int64_t bytes, std::int64_t alignment) {
  check_request(bytes, alignment, "CachingPool");
  if (bytes == 0) return nullptr;
  std::lock_guard lock(impl_->mutex);
  if (is_small(bytes, alignment, impl_->options)) return impl_->allocate_small(bytes);
  return impl_->allocate_large(bytes);
}

void CachingPool::deallocate(void* ptr, std::int64_t bytes, std::int64_t alignment) noexcept {
  if (ptr == nullptr) return;
  std::lock_guard lock(impl_->mutex);
  if (is_small(bytes, alignment, impl_->options)) {
    impl_->deallocate_small(ptr, bytes);
  } else {
    impl_->deallocate_large(ptr, bytes);
  }
}

MemorySpace CachingPool::space() const noexcept {
  return impl_->upstream.space();
}

std::int64_t CachingPool::release() {
  std::lock_guard lock(impl_->mutex);
  return impl_->release_locked();
}

PoolStats CachingPool::stats() const {
  std::lock_guard lock(impl_->mutex);
  PoolStats stats = impl_->counters;
  stats.largest_free_block_bytes = impl_->largest_free_block();
  return stats;
}

std::int64_t CachingPool::bytes_reserved() const noexcept {
  return impl_->reserved_mirror.load(std::memory_order_relaxed);
}

const AnyResource& CachingPool::upstream() const noexcept {
  return impl_->upstream;
}
const CachingPoolOptions& CachingPool::options() const noexcept {
  return impl_->options;
}

}  // namespace apo::memory

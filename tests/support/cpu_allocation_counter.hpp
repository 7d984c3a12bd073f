#pragma once

// Counts the bytes libtorch allocates on the CPU while a CpuAllocationCounter::Scope is open:
// current and peak. The qlinear tests and bench_quant measure peak extra memory with it. It wraps
// c10's CPU allocator; the wrapper lives for the whole process, so tensors allocated inside a
// scope may outlive it.

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <unordered_map>

namespace apo::quant::test {

class CpuAllocationCounter final : public c10::Allocator {
 public:
  /// Installs the counter as c10's CPU allocator until the scope closes, counting from zero.
  class Scope {
   public:
    Scope() : counter_(instance()) {
      counter_.inner_ = c10::GetCPUAllocator();
      counter_.current_ = 0;
      counter_.peak_ = 0;
      c10::SetCPUAllocator(&counter_, kPriority);
    }
    ~Scope() { c10::SetCPUAllocator(counter_.inner_, kPriority); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

    /// Bytes allocated in the scope and not yet freed (may go negative: frees of older tensors).
    std::int64_t current_bytes() const { return counter_.current_.load(); }
    /// The largest current_bytes() seen in the scope.
    std::int64_t peak_bytes() const { return counter_.peak_.load(); }

   private:
    CpuAllocationCounter& counter_;
  };

  c10::DataPtr allocate(std::size_t bytes) override {
    c10::DataPtr inner = inner_->allocate(bytes);
    void* data = inner.get();
    if (data == nullptr) return inner;
    const c10::Device device = inner.device();
    const auto counted = static_cast<std::int64_t>(bytes);
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      live_.emplace(data, Allocation{std::move(inner), counted});
    }
    const std::int64_t now = current_.fetch_add(counted) + counted;
    std::int64_t seen = peak_.load();
    while (now > seen && !peak_.compare_exchange_weak(seen, now)) {
    }
    // The context is the data pointer itself, as c10::Allocator::raw_allocate requires.
    return {data, data, &release, device};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  static constexpr std::uint8_t kPriority = 200;

  struct Allocation {
    c10::DataPtr inner;
    std::int64_t bytes;
  };

  static void release(void* data) {
    CpuAllocationCounter& counter = instance();
    c10::DataPtr inner;  // freed after the lock is released
    {
      const std::lock_guard<std::mutex> lock(counter.mutex_);
      auto it = counter.live_.find(data);
      if (it == counter.live_.end()) return;
      counter.current_.fetch_sub(it->second.bytes);
      inner = std::move(it->second.inner);
      counter.live_.erase(it);
    }
  }

  static CpuAllocationCounter& instance() {
    static CpuAllocationCounter* counter = new CpuAllocationCounter();  // outlives all tensors
    return *counter;
  }

  c10::Allocator* inner_ = nullptr;
  std::mutex mutex_;
  std::unordered_map<void*, Allocation> live_;
  std::atomic<std::int64_t> current_{0};
  std::atomic<std::int64_t> peak_{0};
};

}  // namespace apo::quant::test

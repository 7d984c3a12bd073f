#pragma once

/// @brief An injectable clock: schedulers, monitors and caches take a Clock& so tests drive time.

#include <atomic>
#include <chrono>
#include <cstdint>

namespace apo {

/// @brief A monotonic clock. Contract: now() never goes backwards and is safe to call from any
/// thread.
class Clock {
 public:
  using duration = std::chrono::nanoseconds;
  using time_point = std::chrono::time_point<std::chrono::steady_clock, duration>;

  virtual ~Clock() = default;
  virtual time_point now() const noexcept = 0;
};

/// @brief The real monotonic clock (std::chrono::steady_clock).
class SteadyClock final : public Clock {
 public:
  time_point now() const noexcept override {
    return std::chrono::time_point_cast<duration>(std::chrono::steady_clock::now());
  }

  /// @brief One shared instance for code that is not handed a clock.
  static SteadyClock& instance() noexcept {
    static SteadyClock clock;
    return clock;
  }
};

/// @brief A clock that moves only when told to, for deterministic tests. Starts at time_point{}.
class FakeClock final : public Clock {
 public:
  time_point now() const noexcept override {
    return time_point{duration{now_ns_.load(std::memory_order_acquire)}};
  }

  /// @brief Moves time forward by `step` (a negative step is ignored: time never goes back).
  void advance(duration step) noexcept {
    if (step.count() > 0) now_ns_.fetch_add(step.count(), std::memory_order_acq_rel);
  }

 private:
  std::atomic<std::int64_t> now_ns_{0};
};

}  // namespace apo

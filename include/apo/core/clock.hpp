#pragma once

/// @brief An injectable clock: schedulers, monitors and caches take a Clock& so tests drive time.

#include <atomic>
#include <chrono>
#include <cstdint>

namespace apo {

/// @brief A monotonic clock with the wall time beside it. Contract: now() never goes backwards;
/// both are safe to call from any thread. Durations and deadlines use now(); only calendar
/// questions (the hour of day a model is used) use wall_now().
class Clock {
 public:
  using duration = std::chrono::nanoseconds;
  using time_point = std::chrono::time_point<std::chrono::steady_clock, duration>;
  using wall_time = std::chrono::system_clock::time_point;

  virtual ~Clock() = default;
  virtual time_point now() const noexcept = 0;
  virtual wall_time wall_now() const noexcept = 0;
};

/// @brief The real monotonic clock (std::chrono::steady_clock).
class SteadyClock final : public Clock {
 public:
  time_point now() const noexcept override {
    return std::chrono::time_point_cast<duration>(std::chrono::steady_clock::now());
  }
  wall_time wall_now() const noexcept override { return std::chrono::system_clock::now(); }

  /// @brief One shared instance for code that is not handed a clock.
  static SteadyClock& instance() noexcept {
    static SteadyClock clock;
    return clock;
  }
};

/// @brief A clock that moves only when told to, for deterministic tests. Starts at time_point{};
/// its wall time starts at `wall_origin` (default: the Unix epoch) and moves with it.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(wall_time wall_origin = wall_time{}) : wall_origin_(wall_origin) {}

  time_point now() const noexcept override {
    return time_point{duration{now_ns_.load(std::memory_order_acquire)}};
  }
  wall_time wall_now() const noexcept override {
    return wall_origin_ + std::chrono::duration_cast<wall_time::duration>(now().time_since_epoch());
  }

  /// @brief Moves time forward by `step` (a negative step is ignored: time never goes back).
  void advance(duration step) noexcept {
    if (step.count() > 0) now_ns_.fetch_add(step.count(), std::memory_order_acq_rel);
  }

 private:
  wall_time wall_origin_;
  std::atomic<std::int64_t> now_ns_{0};
};

}  // namespace apo

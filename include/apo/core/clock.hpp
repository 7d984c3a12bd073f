#pragma once

/// @brief An injectable clock that can be waited on: schedulers, monitors, caches and the engine
/// take a Clock& so that tests drive time, and their threads sleep on a ClockCondition, which a
/// FakeClock wakes when it is advanced.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <vector>

namespace apo {

/// @brief Told when a clock that moves only on command has moved (see Clock::subscribe).
class ClockListener {
 public:
  virtual void clock_advanced() noexcept = 0;

 protected:
  ~ClockListener() = default;
};

/// @brief A monotonic clock with the wall time beside it. Contract: now() never goes backwards;
/// every member is safe to call from any thread. Durations and deadlines use now(); only
/// calendar questions (the hour of day a model is used) use wall_now().
///
/// Waiting. A thread that waits for a time on the clock asks real_time_of(t) when to wake: real
/// clocks answer t itself; a clock that moves only when told answers nullopt and instead tells
/// its subscribed listeners each time it moves. ClockCondition does both, so code that waits on
/// it needs no real-time workaround under a FakeClock.
class Clock {
 public:
  using duration = std::chrono::nanoseconds;
  using time_point = std::chrono::time_point<std::chrono::steady_clock, duration>;
  using wall_time = std::chrono::system_clock::time_point;

  virtual ~Clock() = default;
  virtual time_point now() const noexcept = 0;
  virtual wall_time wall_now() const noexcept = 0;
  /// @brief The steady-clock instant at which `time` comes on this clock, or nullopt when that
  /// is not tied to real time (the clock then notifies its listeners as it moves).
  virtual std::optional<std::chrono::steady_clock::time_point> real_time_of(
      time_point time) const noexcept = 0;
  /// @brief Registers a listener to be told when the clock moves (no-op for real clocks). The
  /// listener must unsubscribe before it is destroyed.
  virtual void subscribe(ClockListener& /*listener*/) const {}
  virtual void unsubscribe(ClockListener& /*listener*/) const noexcept {}
};

/// @brief The real monotonic clock (std::chrono::steady_clock).
class SteadyClock final : public Clock {
 public:
  time_point now() const noexcept override {
    return std::chrono::time_point_cast<duration>(std::chrono::steady_clock::now());
  }
  wall_time wall_now() const noexcept override { return std::chrono::system_clock::now(); }
  std::optional<std::chrono::steady_clock::time_point> real_time_of(
      time_point time) const noexcept override {
    return std::chrono::steady_clock::time_point(
        std::chrono::duration_cast<std::chrono::steady_clock::duration>(time.time_since_epoch()));
  }

  /// @brief One shared instance for code that is not handed a clock.
  static SteadyClock& instance() noexcept {
    static SteadyClock clock;
    return clock;
  }
};

/// @brief A clock that moves only when told to, for deterministic tests. Starts at time_point{};
/// its wall time starts at `wall_origin` (default: the Unix epoch) and moves with it. advance()
/// wakes every ClockCondition on this clock; it must not be called while holding the mutex of
/// one of them.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(wall_time wall_origin = wall_time{}) : wall_origin_(wall_origin) {}

  time_point now() const noexcept override {
    return time_point{duration{now_ns_.load(std::memory_order_acquire)}};
  }
  wall_time wall_now() const noexcept override {
    return wall_origin_ + std::chrono::duration_cast<wall_time::duration>(now().time_since_epoch());
  }
  std::optional<std::chrono::steady_clock::time_point> real_time_of(
      time_point /*time*/) const noexcept override {
    return std::nullopt;
  }
  void subscribe(ClockListener& listener) const override {
    const std::lock_guard lock(listeners_mutex_);
    listeners_.push_back(&listener);
  }
  void unsubscribe(ClockListener& listener) const noexcept override {
    // Waits for a notification in progress: the listener may be destroyed right after.
    const std::lock_guard lock(listeners_mutex_);
    listeners_.erase(std::remove(listeners_.begin(), listeners_.end(), &listener),
                     listeners_.end());
  }

  /// @brief Moves time forward by `step` (a negative step is ignored: time never goes back) and
  /// wakes the listeners.
  void advance(duration step) noexcept {
    if (step.count() > 0) now_ns_.fetch_add(step.count(), std::memory_order_acq_rel);
    const std::lock_guard lock(listeners_mutex_);
    for (ClockListener* listener : listeners_) listener->clock_advanced();
  }

  /// @brief Moves time forward to `time` if it is later than now.
  void advance_to(time_point time) noexcept { advance(time - now()); }

 private:
  wall_time wall_origin_;
  std::atomic<std::int64_t> now_ns_{0};
  mutable std::mutex listeners_mutex_;
  mutable std::vector<ClockListener*> listeners_;
};

/// @brief A condition variable over a caller's mutex whose timed waits follow a Clock: with a
/// real clock a wait until t wakes at t; with a FakeClock it wakes when the clock is advanced (or
/// notify_all is called) and returns once the clock has reached t. Construct and destroy it
/// without holding `mutex` (it subscribes to the clock then).
class ClockCondition final : private ClockListener {
 public:
  ClockCondition(const Clock& clock, std::mutex& mutex) : clock_(clock), mutex_(mutex) {
    clock_.subscribe(*this);
  }
  ~ClockCondition() { clock_.unsubscribe(*this); }
  ClockCondition(const ClockCondition&) = delete;
  ClockCondition& operator=(const ClockCondition&) = delete;

  /// @brief Wakes every waiter (they then recheck their predicate).
  void notify_all() noexcept { changed_.notify_all(); }

  /// @brief Blocks until `ready()` holds or the clock reaches `deadline` (none: no time limit).
  /// `lock` must hold the mutex given at construction, which guards what `ready` reads. Returns
  /// ready()'s last value.
  template <class Predicate>
  bool wait_until(std::unique_lock<std::mutex>& lock, std::optional<Clock::time_point> deadline,
                  Predicate ready) {
    while (!ready()) {
      if (deadline && clock_.now() >= *deadline) return false;
      const auto wake = deadline ? clock_.real_time_of(*deadline) : std::nullopt;
      if (wake) {
        changed_.wait_until(lock, *wake);
      } else {
        changed_.wait(lock);
      }
    }
    return true;
  }

  const Clock& clock() const noexcept { return clock_; }

 private:
  void clock_advanced() noexcept override {
    // Under the mutex, so that a waiter between its check and its wait cannot miss the move.
    const std::lock_guard lock(mutex_);
    changed_.notify_all();
  }

  const Clock& clock_;
  std::mutex& mutex_;
  std::condition_variable changed_;
};

}  // namespace apo

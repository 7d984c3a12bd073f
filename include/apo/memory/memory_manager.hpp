#pragma once

/// @file
/// @brief MemoryManager: the guide's periodic cleanup thread. It releases the cache
/// of pools that pass their high-water mark, runs hooks for other caches (the model cache,
/// torch's CUDA cache) on an interval, and stops and joins promptly.

#include <chrono>
#include <concepts>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "apo/core/clock.hpp"
#include "apo/core/error.hpp"

namespace apo {
struct Config;
}  // namespace apo

namespace apo::memory {

/// @brief Why a cleanup pass runs.
enum class CleanupReason {
  periodic,    ///< the interval passed
  high_water,  ///< a watched pool holds more than its high-water mark
  requested,   ///< someone called cleanup_now() or request_cleanup()
};

/// @brief What a hook is told about the pass it runs in.
struct CleanupContext {
  CleanupReason reason = CleanupReason::periodic;
  bool aggressive = false;  ///< memory_optimization.aggressive_cleanup
};

/// @brief A cache's cleanup: frees what it can spare and returns how many bytes that was (0 when
/// it cannot tell). May throw; the manager records the failure and carries on. Must not call
/// the manager's cleanup_now() (passes do not nest).
using CleanupHook = std::function<std::int64_t(const CleanupContext&)>;

/// @brief A pool the manager can watch: it reports its reservation and can release its cache.
template <class P>
concept ReleasablePool = requires(P& pool, const P& const_pool) {
  { pool.release() } -> std::same_as<std::int64_t>;
  { const_pool.bytes_reserved() }
  noexcept->std::same_as<std::int64_t>;
};

/// @brief Settings of a MemoryManager.
struct MemoryManagerOptions {
  /// @brief The defaults of Config{} (the configuration schema is their one source).
  MemoryManagerOptions();
  /// @brief The settings from a configuration's memory_optimization block.
  static MemoryManagerOptions from_config(const Config& config);

  /// Period of the full pass (memory_optimization.cleanup_interval_s; the guide: 60 s).
  std::chrono::nanoseconds cleanup_interval;
  /// Periodic passes release every watched pool, not only those above their high-water mark,
  /// and tell hooks to free all they can (memory_optimization.aggressive_cleanup).
  bool aggressive;
  /// How often the thread compares watched pools with their high-water marks (at most the
  /// cleanup interval).
  std::chrono::nanoseconds high_water_check_interval = std::chrono::seconds{1};

 private:
  explicit MemoryManagerOptions(const Config& config);
};

/// @brief The outcome of one pass.
struct CleanupReport {
  CleanupReason reason = CleanupReason::periodic;
  std::int64_t bytes_released = 0;
  int entries_run = 0;
  std::vector<std::string> failures;  ///< "name: what()" for each hook or pool that threw
};

/// @brief Counters of a MemoryManager.
struct MemoryManagerStats {
  std::int64_t periodic_passes = 0;
  std::int64_t high_water_passes = 0;
  std::int64_t requested_passes = 0;
  std::int64_t bytes_released = 0;
  std::int64_t failures = 0;
  std::string last_failure;
};

class MemoryManager;

/// @brief Keeps a hook or a watched pool registered while it lives. Destroying it (or reset())
/// unregisters it and waits for a run of it in progress on another thread, so whatever the hook
/// refers to may be destroyed right after. A hook may drop its own registration while it runs.
/// Safe to outlive the manager.
class CleanupRegistration {
 public:
  CleanupRegistration() = default;
  CleanupRegistration(CleanupRegistration&&) noexcept = default;
  CleanupRegistration& operator=(CleanupRegistration&& other) noexcept;
  CleanupRegistration(const CleanupRegistration&) = delete;
  CleanupRegistration& operator=(const CleanupRegistration&) = delete;
  ~CleanupRegistration() { reset(); }

  /// @brief Unregisters now (see the class).
  void reset() noexcept;
  explicit operator bool() const noexcept { return entry_ != nullptr; }

 private:
  friend class MemoryManager;
  struct Entry;
  struct Registry;
  CleanupRegistration(std::weak_ptr<Registry> registry, std::shared_ptr<Entry> entry)
      : registry_(std::move(registry)), entry_(std::move(entry)) {}

  std::weak_ptr<Registry> registry_;
  std::shared_ptr<Entry> entry_;
};

/// @brief Releases memory in the background. A pass runs
/// - every cleanup_interval (periodic): watched pools above their high-water mark release their
///   cache (all of them in aggressive mode), and every hook runs;
/// - when a watched pool's reservation passes its high-water mark (checked every
///   high_water_check_interval): that pool releases its cache;
/// - on request (cleanup_now, request_cleanup): every pool releases, every hook runs.
/// Time comes from the injected clock and the thread sleeps on it (ClockCondition): with a
/// FakeClock, advancing the clock wakes the thread, which then runs what came due.
/// The thread starts with start() and stops with stop() or the destructor, which wake it and
/// join it at once, whatever the interval. Passes never overlap; a hook that throws is recorded
/// and skipped, never fatal. Thread-safe.
class MemoryManager {
 public:
  /// @brief Throws InvalidArgument unless both intervals are positive. Does not start the thread.
  explicit MemoryManager(MemoryManagerOptions options,
                         const Clock& clock = SteadyClock::instance());
  /// @brief Stops and joins the thread.
  ~MemoryManager();

  MemoryManager(const MemoryManager&) = delete;
  MemoryManager& operator=(const MemoryManager&) = delete;

  /// @brief Watches `pool`: above `high_water_bytes` of reservation it releases its cache. The
  /// manager holds the pool (shared) while registered.
  template <ReleasablePool P>
  [[nodiscard]] CleanupRegistration watch(std::string name, std::shared_ptr<P> pool,
                                          std::int64_t high_water_bytes) {
    if (!pool) fail(ErrorCode::InvalidArgument, "MemoryManager::watch: {} is a null pool", name);
    if (high_water_bytes < 0) {
      fail(ErrorCode::InvalidArgument, "MemoryManager::watch: {}: high-water mark {} is negative",
           name, high_water_bytes);
    }
    return add(
        std::move(name), [pool](const CleanupContext&) { return pool->release(); },
        [pool, high_water_bytes] { return pool->bytes_reserved() > high_water_bytes; });
  }

  /// @brief Runs `hook` in periodic and requested passes.
  [[nodiscard]] CleanupRegistration add_hook(std::string name, CleanupHook hook);

  /// @brief Starts the background thread (no-op when running).
  void start();
  /// @brief Wakes the thread and joins it (no-op when stopped). Returns promptly: it never waits
  /// out an interval, only a pass already in progress.
  void stop() noexcept;
  bool running() const noexcept;

  /// @brief Runs a pass on the calling thread now.
  CleanupReport cleanup_now(CleanupReason reason = CleanupReason::requested);
  /// @brief Asks the thread for a requested pass and returns at once.
  void request_cleanup();
  /// @brief Makes the thread look at the pools now, before the next high-water check is due.
  void wake();
  /// @brief Runs the pass that is due, if any: periodic when the interval has passed on the
  /// clock, high_water when a watched pool is above its mark, requested when one was asked for.
  /// Returns whether a pass ran. The thread calls this; tests may call it directly.
  bool poll();

  MemoryManagerStats stats() const;
  const MemoryManagerOptions& options() const noexcept { return options_; }

 private:
  CleanupRegistration add(std::string name, CleanupHook clean,
                          std::function<bool()> above_high_water);
  CleanupReport run_pass(CleanupReason reason);
  void run_thread();

  MemoryManagerOptions options_;
  const Clock& clock_;
  std::shared_ptr<CleanupRegistration::Registry> registry_;

  std::mutex pass_mutex_;  // one pass at a time
  mutable std::mutex state_mutex_;
  ClockCondition wake_{clock_, state_mutex_};
  bool stop_requested_ = false;
  bool woken_ = false;
  bool cleanup_requested_ = false;
  Clock::time_point next_periodic_;
  Clock::time_point next_high_water_check_;
  MemoryManagerStats stats_;

  mutable std::mutex lifecycle_mutex_;  // start(), stop() and thread_
  std::thread thread_;
};

}  // namespace apo::memory

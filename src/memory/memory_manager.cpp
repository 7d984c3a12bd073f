#include "apo/memory/memory_manager.hpp"

#include <algorithm>
#include <exception>

#include "apo/core/config.hpp"
#include "apo/memory/caching_pool.hpp"

namespace apo::memory {

static_assert(ReleasablePool<CachingPool>);

struct CleanupRegistration::Entry {
  std::string name;
  CleanupHook clean;
  std::function<bool()> above_high_water;  // empty for hooks; set for watched pools
  // Held while the entry runs. Recursive, so that a hook may drop its own registration.
  std::recursive_mutex run_mutex;
  bool removed = false;  // under run_mutex
};

struct CleanupRegistration::Registry {
  std::mutex mutex;
  std::vector<std::shared_ptr<Entry>> entries;
};

CleanupRegistration& CleanupRegistration::operator=(CleanupRegistration&& other) noexcept {
  if (this != &other) {
    reset();
    registry_ = std::move(other.registry_);
    entry_ = std::move(other.entry_);
  }
  return *this;
}

void CleanupRegistration::reset() noexcept {
  if (!entry_) return;
  {
    std::lock_guard run(entry_->run_mutex);  // waits for a run in progress elsewhere
    entry_->removed = true;
  }
  if (const auto registry = registry_.lock()) {
    std::lock_guard lock(registry->mutex);
    auto& entries = registry->entries;
    entries.erase(std::remove(entries.begin(), entries.end(), entry_), entries.end());
  }
  entry_.reset();
  registry_.reset();
}

MemoryManagerOptions::MemoryManagerOptions() : MemoryManagerOptions(Config{}) {}

MemoryManagerOptions::MemoryManagerOptions(const Config& config)
    // The config only promises a positive number of seconds: keep it within what a duration
    // holds.
    : cleanup_interval(
          std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(
              std::clamp(config.memory.cleanup_interval_s, 1e-3, 365.0 * 24 * 3600)))),
      aggressive(config.memory.aggressive_cleanup) {
  high_water_check_interval = std::min(high_water_check_interval, cleanup_interval);
}

MemoryManagerOptions MemoryManagerOptions::from_config(const Config& config) {
  return MemoryManagerOptions(config);
}

MemoryManager::MemoryManager(MemoryManagerOptions options, const Clock& clock)
    : options_(options),
      clock_(clock),
      registry_(std::make_shared<CleanupRegistration::Registry>()) {
  if (options_.cleanup_interval.count() <= 0) {
    fail(ErrorCode::InvalidArgument, "MemoryManager: cleanup_interval {} ns is not positive",
         options_.cleanup_interval.count());
  }
  if (options_.high_water_check_interval.count() <= 0) {
    fail(ErrorCode::InvalidArgument,
         "MemoryManager: high_water_check_interval {} ns is not positive",
         options_.high_water_check_interval.count());
  }
  const auto now = clock_.now();
  next_periodic_ = now + options_.cleanup_interval;
  next_high_water_check_ = now + options_.high_water_check_interval;
}

MemoryManager::~MemoryManager() {
  stop();
}

CleanupRegistration MemoryManager::add_hook(std::string name, CleanupHook hook) {
  if (!hook) fail(ErrorCode::InvalidArgument, "MemoryManager::add_hook: {} is an empty hook", name);
  return add(std::move(name), std::move(hook), {});
}

CleanupRegistration MemoryManager::add(std::string name, CleanupHook clean,
                                       std::function<bool()> above_high_water) {
  auto entry = std::make_shared<CleanupRegistration::Entry>();
  entry->name = std::move(name);
  entry->clean = std::move(clean);
  entry->above_high_water = std::move(above_high_water);
  {
    std::lock_guard lock(registry_->mutex);
    registry_->entries.push_back(entry);
  }
  return CleanupRegistration(registry_, std::move(entry));
}

void MemoryManager::start() {
  std::lock_guard lifecycle(lifecycle_mutex_);
  if (thread_.joinable()) return;
  {
    std::lock_guard lock(state_mutex_);
    stop_requested_ = false;
  }
  thread_ = std::thread([this] { run_thread(); });
}

void MemoryManager::stop() noexcept {
  std::lock_guard lifecycle(lifecycle_mutex_);
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(state_mutex_);
    stop_requested_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

bool MemoryManager::running() const noexcept {
  std::lock_guard lifecycle(lifecycle_mutex_);
  return thread_.joinable();
}

CleanupReport MemoryManager::cleanup_now(CleanupReason reason) {
  return run_pass(reason);
}

void MemoryManager::request_cleanup() {
  {
    std::lock_guard lock(state_mutex_);
    cleanup_requested_ = true;
  }
  wake_.notify_all();
}

void MemoryManager::wake() {
  {
    std::lock_guard lock(state_mutex_);
    woken_ = true;
  }
  wake_.notify_all();
}

bool MemoryManager::poll() {
  const auto now = clock_.now();
  CleanupReason reason;
  bool check_pools = false;
  {
    std::lock_guard lock(state_mutex_);
    if (cleanup_requested_) {
      cleanup_requested_ = false;
      reason = CleanupReason::requested;
    } else if (now >= next_periodic_) {
      reason = CleanupReason::periodic;
      next_periodic_ = now + options_.cleanup_interval;
      next_high_water_check_ = now + options_.high_water_check_interval;
    } else if (now >= next_high_water_check_) {
      reason = CleanupReason::high_water;
      next_high_water_check_ = now + options_.high_water_check_interval;
      check_pools = true;
    } else {
      return false;
    }
  }
  if (check_pools) {
    std::vector<std::shared_ptr<CleanupRegistration::Entry>> entries;
    {
      std::lock_guard lock(registry_->mutex);
      entries = registry_->entries;
    }
    const bool any_above = std::any_of(entries.begin(), entries.end(), [](const auto& entry) {
      return entry->above_high_water && entry->above_high_water();
    });
    if (!any_above) return false;
  }
  run_pass(reason);
  return true;
}

CleanupReport MemoryManager::run_pass(CleanupReason reason) {
  std::lock_guard pass(pass_mutex_);
  std::vector<std::shared_ptr<CleanupRegistration::Entry>> entries;
  {
    std::lock_guard lock(registry_->mutex);
    entries = registry_->entries;
  }
  const CleanupContext context{reason, options_.aggressive};
  CleanupReport report;
  report.reason = reason;
  for (const auto& entry : entries) {
    std::lock_guard run(entry->run_mutex);
    if (entry->removed) continue;
    try {
      const bool is_pool = static_cast<bool>(entry->above_high_water);
      bool due = false;
      switch (reason) {
        case CleanupReason::requested:
          due = true;
          break;
        case CleanupReason::periodic:
          due = !is_pool || options_.aggressive || entry->above_high_water();
          break;
        case CleanupReason::high_water:
          due = is_pool && entry->above_high_water();
          break;
      }
      if (!due) continue;
      report.bytes_released += std::max<std::int64_t>(0, entry->clean(context));
      ++report.entries_run;
    } catch (const std::exception& e) {
      report.failures.push_back(entry->name + ": " + e.what());
    } catch (...) {
      report.failures.push_back(entry->name + ": unknown exception");
    }
  }
  std::lock_guard lock(state_mutex_);
  switch (reason) {
    case CleanupReason::periodic:
      ++stats_.periodic_passes;
      break;
    case CleanupReason::high_water:
      ++stats_.high_water_passes;
      break;
    case CleanupReason::requested:
      ++stats_.requested_passes;
      break;
  }
  stats_.bytes_released += report.bytes_released;
  stats_.failures += static_cast<std::int64_t>(report.failures.size());
  if (!report.failures.empty()) stats_.last_failure = report.failures.back();
  return report;
}

void MemoryManager::run_thread() {
  std::unique_lock lock(state_mutex_);
  while (!stop_requested_) {
    woken_ = false;
    lock.unlock();
    try {
      poll();
    } catch (const std::exception& e) {  // e.g. bad_alloc copying the entry list: try again later
      std::lock_guard relock(state_mutex_);
      ++stats_.failures;
      stats_.last_failure = std::string("cleanup pass: ") + e.what();
    }
    lock.lock();
    if (stop_requested_ || woken_ || cleanup_requested_) continue;
    const auto due = std::min(next_periodic_, next_high_water_check_);
    wake_.wait_until(lock, due, [this] { return stop_requested_ || woken_ || cleanup_requested_; });
  }
}

MemoryManagerStats MemoryManager::stats() const {
  std::lock_guard lock(state_mutex_);
  return stats_;
}

}  // namespace apo::memory

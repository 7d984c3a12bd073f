#include <chrono>

#include "apo/core/config.hpp"
#include "apo/core/error.hpp"
#include "apo/sched/scheduler.hpp"

namespace apo::sched {

namespace {
Clock::duration seconds(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}
}  // namespace

void SchedulerOptions::validate() const {
  // Slots are 32-bit; the config allows 10 million.
  constexpr std::size_t kMostQueued = std::size_t{1} << 30;
  if (max_queue_size < 1 || max_queue_size > kMostQueued) {
    fail(ErrorCode::InvalidArgument, "scheduler: max_queue_size must be 1 to {}, got {}",
         kMostQueued, max_queue_size);
  }
  if (priority_levels < 1 || priority_levels > 1000) {
    fail(ErrorCode::InvalidArgument, "scheduler: priority_levels must be 1 to 1000, got {}",
         priority_levels);
  }
  if (aging_bound <= Clock::duration::zero() || aging_bound > seconds(1e6)) {
    fail(ErrorCode::InvalidArgument,
         "scheduler: aging_bound must be > 0 and at most 1e6 s, got {} ns", aging_bound.count());
  }
  if (default_timeout < Clock::duration::zero() || default_timeout > seconds(1e6)) {
    fail(ErrorCode::InvalidArgument, "scheduler: default_timeout must be 0 to 1e6 s, got {} ns",
         default_timeout.count());
  }
}

SchedulerOptions::SchedulerOptions() : SchedulerOptions(Config{}) {}

SchedulerOptions::SchedulerOptions(const Config& config)
    : max_queue_size(static_cast<std::size_t>(config.scheduling.max_queue_size)),
      default_timeout(seconds(config.scheduling.default_timeout_s)),
      priority_levels(static_cast<std::size_t>(config.scheduling.priority_levels)),
      aging_bound(seconds(config.scheduling.aging_bound_s)) {}

SchedulerOptions SchedulerOptions::from_config(const Config& config) {
  return SchedulerOptions(config);
}

}  // namespace apo::sched

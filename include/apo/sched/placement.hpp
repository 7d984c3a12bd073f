#pragma once

/// @file
/// @brief Placement across devices (the guide's MultiGPUProcessor): each batch goes to the
/// device with room for it and the lowest score, onto that device's worker queue.

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "apo/batch/batch.hpp"
#include "apo/core/config.hpp"
#include "apo/core/machine.hpp"
#include "apo/sched/scheduler.hpp"

namespace apo::sched {

/// @brief A device batches can run on.
struct DeviceSpec {
  std::string name;               ///< "cuda:0"
  std::int64_t budget_bytes = 0;  ///< device memory batches may use there
};

/// @brief Settings of a Placement (docs/config.md, block "scheduling").
struct PlacementOptions {
  /// Batches one device runs at once (its workers); a device with that many in flight has no
  /// room.
  std::size_t batches_per_device = 1;
  double utilization_weight = 1.0;
  double memory_pressure_weight = 1.0;

  /// @brief Throws Error(InvalidArgument) naming the first setting out of range.
  void validate() const;
  static PlacementOptions from_config(const Config& config);
};

/// @brief One device as placement sees it.
struct DeviceLoad {
  std::int64_t budget_bytes = 0;
  std::int64_t reserved_bytes = 0;  ///< estimates of its batches in flight (queued or running)
  std::int64_t external_bytes = 0;  ///< reported in use by others (resident models, tenants)
  std::size_t in_flight = 0;        ///< batches placed on it and not completed
  double utilization = 0;           ///< reported, else in_flight ÷ batches_per_device

  std::int64_t free_bytes() const noexcept {
    const std::int64_t left = budget_bytes - reserved_bytes - external_bytes;
    return left > 0 ? left : 0;
  }
  /// @brief 1 − free ÷ budget: the guide's "1.0 − available_memory / total_memory".
  double memory_pressure() const noexcept {
    return 1.0 - static_cast<double>(free_bytes()) / static_cast<double>(budget_bytes);
  }
};

/// @brief What one dispatch did.
struct DispatchResult {
  std::optional<std::size_t> device;  ///< where a batch went; unset: none was placed
  std::size_t batch_size = 0;
  std::vector<Request> timed_out;  ///< requests whose deadline passed; they end TimedOut
  /// Nothing placed although requests wait: when to dispatch again with nothing else changing
  /// (see PopResult::retry_at). Unset: after a submit or a completion.
  std::optional<Clock::time_point> retry_at;
};

/// @brief Devices, their loads and one worker queue per device.
///
/// A device has room for a batch when fewer than batches_per_device batches are in flight on
/// it and its free memory (budget − reserved − external) holds the batch's estimate. Among the
/// devices with room, a batch goes to the lowest score = utilization_weight × utilization +
/// memory_pressure_weight × memory pressure (ties: the lowest index). dispatch() forms the batch
/// only when some device can take one, sized for the largest free memory among them, so batches
/// are formed as late as possible and priority order is decided in the scheduler, not in device
/// queues.
///
/// Thread-safe. dispatch() holds the placement's lock while the scheduler forms the batch (lock
/// order: placement, scheduler, batcher); take() blocks a worker until its device has a batch.
class Placement {
 public:
  /// @brief Throws Error(InvalidArgument) for no devices, a budget ≤ 0 or bad options.
  explicit Placement(std::vector<DeviceSpec> devices, PlacementOptions options = {});

  /// @brief The devices of a machine: every CUDA device (only the first unless
  /// performance_optimization.parallel_execution), each with budget max_memory_usage_gb or, when
  /// "auto", tune::device_memory_budget_gib; without CUDA devices, the host ("cpu") with
  /// tune::host_memory_budget_gib.
  static std::vector<DeviceSpec> devices_for(const MachineInfo& machine, const Config& config);

  std::size_t device_count() const noexcept { return devices_.size(); }
  const DeviceSpec& device(std::size_t index) const { return device_at(index).spec; }
  const PlacementOptions& options() const noexcept { return options_; }

  /// @brief Throws Error(Rejected) when `request`'s estimate exceeds every device's budget,
  /// naming the estimate and the budgets: such a request could never run.
  void admit(const Request& request) const;

  /// @brief Forms one batch from `scheduler` with `batcher` for the largest free memory among
  /// devices with room, and places it on the device with room and the lowest score. When no
  /// device has room it only expires overdue requests.
  template <Scheduler S, batch::Batcher B>
  DispatchResult dispatch(S& scheduler, const B& batcher);

  /// @brief The device a batch of `memory_bytes` would go to now, if any has room.
  std::optional<std::size_t> choose(std::int64_t memory_bytes) const;

  /// @brief The next batch queued for `device`, if any (for a worker that polls).
  std::optional<Batch> try_take(std::size_t device);
  /// @brief Waits for the next batch queued for `device`; unset once `stop` is requested.
  std::optional<Batch> take(std::size_t device, std::stop_token stop);
  /// @brief A worker finished `batch` on `device`: frees its memory and its place.
  void complete(std::size_t device, const Batch& batch);

  /// @brief Memory in use on `device` by others, and its measured utilization (NVML); unset
  /// utilization goes back to in_flight ÷ batches_per_device.
  void report(std::size_t device, std::int64_t external_bytes,
              std::optional<double> utilization = std::nullopt);

  DeviceLoad load(std::size_t device) const;

 private:
  struct Device {
    DeviceSpec spec;
    std::int64_t reserved_bytes = 0;
    std::int64_t external_bytes = 0;
    std::size_t in_flight = 0;
    std::optional<double> reported_utilization;
    std::deque<Batch> queue;
  };

  /// @brief Throws Error(InvalidArgument) for an index out of range.
  Device& device_at(std::size_t index);
  const Device& device_at(std::size_t index) const;
  DeviceLoad load_locked(std::size_t device) const;
  std::optional<std::size_t> choose_locked(std::int64_t memory_bytes) const;
  /// @brief The largest free memory among devices with a free place, or -1 if none has one.
  std::int64_t largest_free_locked() const;
  void place_locked(std::size_t device, Batch batch);

  PlacementOptions options_;
  std::vector<Device> devices_;
  mutable std::mutex mutex_;
  std::condition_variable_any changed_;
};

template <Scheduler S, batch::Batcher B>
DispatchResult Placement::dispatch(S& scheduler, const B& batcher) {
  DispatchResult result;
  std::unique_lock lock(mutex_);
  const std::int64_t free_bytes = largest_free_locked();
  if (free_bytes < 0) {
    result.timed_out = scheduler.expire();
    return result;
  }
  PopResult popped = scheduler.pop_batch(
      [&](const BatchCandidate& candidate) { return batcher.plan(candidate, free_bytes); });
  result.timed_out = std::move(popped.timed_out);
  result.retry_at = popped.retry_at;
  if (popped.batch.empty()) return result;
  const std::optional<std::size_t> device = choose_locked(popped.batch.memory_bytes);
  if (!device) {
    // The batch fits free_bytes, which some device with room has, and nothing frees room
    // while the lock is held.
    throw Error(ErrorCode::Internal, "a formed batch fits no device");
  }
  result.device = device;
  result.batch_size = popped.batch.size();
  place_locked(*device, std::move(popped.batch));
  lock.unlock();
  changed_.notify_all();
  return result;
}

}  // namespace apo::sched

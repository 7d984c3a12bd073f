#pragma once

/// @file
/// @brief Placement across devices (the guide's MultiGPUProcessor): each batch goes to the
/// device with room for it and the lowest score, onto that device's worker queue. A device's
/// room is its memory ledger's: resident weights, the activation pool and the batches already
/// placed all count.

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <vector>

#include "apo/batch/batch.hpp"
#include "apo/core/device.hpp"
#include "apo/memory/ledger.hpp"
#include "apo/sched/scheduler.hpp"

namespace apo {
struct Config;
}  // namespace apo

namespace apo::sched {

/// @brief A device and its memory budget, for building ledgers (the simulator, tests).
struct DeviceSpec {
  Device device;
  std::int64_t budget_bytes = 0;
};

/// @brief One ledger per spec.
std::vector<std::shared_ptr<memory::MemoryLedger>> make_ledgers(
    const std::vector<DeviceSpec>& devices);

/// @brief Settings of a Placement (docs/config.md, block "scheduling").
struct PlacementOptions {
  /// @brief The defaults of Config{} (the configuration schema is their one source).
  PlacementOptions();
  static PlacementOptions from_config(const Config& config);

  /// Batches one device runs at once (its workers); a device with that many in flight has no
  /// room.
  std::size_t batches_per_device;
  double utilization_weight;
  double memory_pressure_weight;

  /// @brief Throws Error(InvalidArgument) naming the first setting out of range.
  void validate() const;

 private:
  explicit PlacementOptions(const Config& config);
};

/// @brief One device as placement sees it.
struct DeviceLoad {
  memory::LedgerSnapshot memory;
  std::int64_t room_bytes = 0;  ///< what a new batch may reserve there now
  std::size_t in_flight = 0;    ///< batches placed on it and not completed
  double utilization = 0;       ///< reported, else in_flight ÷ batches_per_device

  /// @brief 1 − room ÷ budget: the guide's "1.0 − available_memory / total_memory".
  double memory_pressure() const noexcept {
    return 1.0 - static_cast<double>(room_bytes) / static_cast<double>(memory.budget_bytes);
  }
};

/// @brief Bytes a batch of this key needs on a device beyond its estimate, which placement leaves
/// free there (the engine: weights of its models that are not resident yet). Called under
/// placement's and the scheduler's locks: it must not call either.
using ExtraBytes = std::function<std::int64_t(batch::GroupKeyView key, std::size_t device)>;

/// @brief Why nothing was placed although requests wait: the head needs more than any device
/// with a free place has room for.
struct BlockedOnMemory {
  RequestId head = 0;
  std::int64_t needed_bytes = 0;        ///< the head's estimate
  std::int64_t largest_room_bytes = 0;  ///< the most any device with a free place could give
};

/// @brief What one dispatch did.
struct DispatchResult {
  std::optional<std::size_t> device;  ///< where a batch went; unset: none was placed
  std::size_t batch_size = 0;
  std::vector<Request> timed_out;  ///< requests whose deadline passed; they end TimedOut
  /// Nothing placed although requests wait: when to dispatch again with nothing else changing
  /// (see PopResult::retry_at). Unset: after a submit or a completion.
  std::optional<Clock::time_point> retry_at;
  std::optional<BlockedOnMemory> blocked;
};

/// @brief Devices, their ledgers and one worker queue per device.
///
/// A device has room for a batch when fewer than batches_per_device batches are in flight on it
/// and its ledger can reserve the batch's estimate as batch memory (MemoryLedger::room) with the
/// key's extra bytes left over. For each batch, dispatch() picks among the devices with room for
/// the head the one of lowest score = utilization_weight × utilization +
/// memory_pressure_weight × memory pressure (ties: the lowest index), reserves its room while
/// the batcher sizes the batch, and keeps the batch's estimate reserved until complete(). So
/// batches are formed as late as possible and priority order is decided in the scheduler, not in
/// device queues.
///
/// Thread-safe. dispatch() holds the placement's lock while the scheduler forms the batch (lock
/// order: placement, scheduler, batcher, ledger); take() blocks a worker until its device has a
/// batch.
class Placement {
 public:
  /// @brief Throws Error(InvalidArgument) for no devices, a null ledger, two ledgers of one
  /// device, or bad options.
  explicit Placement(std::vector<std::shared_ptr<memory::MemoryLedger>> devices,
                     PlacementOptions options = {});

  std::size_t device_count() const noexcept { return devices_.size(); }
  apo::Device device(std::size_t index) const { return device_at(index).ledger->device(); }
  const std::shared_ptr<memory::MemoryLedger>& ledger(std::size_t index) const {
    return device_at(index).ledger;
  }
  const PlacementOptions& options() const noexcept { return options_; }

  /// @brief Throws Error(Rejected) when `request`'s estimate exceeds every device's budget,
  /// naming the estimate and the budgets: such a request could never run.
  void admit(const Request& request) const;

  /// @brief Forms one batch from `scheduler` with `batcher` on the device chosen for its head and
  /// places it there. When no device has a free place it only expires overdue requests.
  template <Scheduler S, batch::BatchPlanner B>
  DispatchResult dispatch(S& scheduler, const B& batcher, const ExtraBytes& extra = {});

  /// @brief The device a batch of `memory_bytes` would go to now, if any has room.
  std::optional<std::size_t> choose(std::int64_t memory_bytes) const;

  /// @brief The next batch queued for `device`, if any (for a worker that polls).
  std::optional<Batch> try_take(std::size_t device);
  /// @brief Waits for the next batch queued for `device`; unset once `stop` is requested.
  std::optional<Batch> take(std::size_t device, std::stop_token stop);
  /// @brief A worker finished `batch` on `device`: frees its reservation and its place.
  void complete(std::size_t device, const Batch& batch);

  /// @brief The device's measured utilization (NVML), 0 to 1; unset goes back to in_flight ÷
  /// batches_per_device.
  void report_utilization(std::size_t device, std::optional<double> utilization);

  DeviceLoad load(std::size_t device) const;

 private:
  struct DeviceState {
    std::shared_ptr<memory::MemoryLedger> ledger;
    std::size_t in_flight = 0;
    std::optional<double> reported_utilization;
    std::deque<Batch> queue;
  };
  struct Choice {
    std::optional<std::size_t> device;  ///< the lowest score among those with room
    std::int64_t room_bytes = -1;       ///< there, or the largest room anywhere when none
  };

  /// @brief Throws Error(InvalidArgument) for an index out of range.
  DeviceState& device_at(std::size_t index);
  const DeviceState& device_at(std::size_t index) const;
  DeviceLoad load_locked(std::size_t device) const;
  double score_locked(std::size_t device) const;
  /// @brief Among devices with a free place, the lowest score with room for `bytes` (after the
  /// key's extra bytes, when a key is given).
  Choice choose_locked(std::int64_t bytes, const batch::GroupKeyView* key,
                       const ExtraBytes& extra) const;
  bool any_place_locked() const;
  void place_locked(std::size_t device, Batch batch);

  PlacementOptions options_;
  std::vector<DeviceState> devices_;
  mutable std::mutex mutex_;
  std::condition_variable_any changed_;
};

template <Scheduler S, batch::BatchPlanner B>
DispatchResult Placement::dispatch(S& scheduler, const B& batcher, const ExtraBytes& extra) {
  DispatchResult result;
  std::unique_lock lock(mutex_);
  if (!any_place_locked()) {
    result.timed_out = scheduler.expire();
    return result;
  }
  // The batch's room is reserved on its device while the batcher sizes it, so that nothing
  // charged to the ledger meanwhile (a model load, pool growth) can leave the batch without room.
  // At most what a full batch of the head's estimate could use is reserved, and only for the
  // planner's call.
  std::optional<std::size_t> target;
  std::int64_t reserved = 0;
  std::int64_t largest_room = 0;
  const auto give_back = [&] {
    if (target && reserved > 0)
      devices_[*target].ledger->release(memory::LedgerUse::batches, reserved);
    reserved = 0;
  };
  PopResult popped;
  try {
    popped = scheduler.pop_batch([&](const BatchCandidate& candidate) {
      for (;;) {
        const Choice choice = choose_locked(candidate.head_memory_bytes, &candidate.key, extra);
        largest_room = std::max<std::int64_t>(choice.room_bytes, 0);
        if (!choice.device) return BatchPlan::blocked();
        const auto full_batch =
            static_cast<std::int64_t>(batcher.max_batch_size()) * candidate.head_memory_bytes;
        const std::int64_t room = std::min(choice.room_bytes, full_batch);
        if (devices_[*choice.device].ledger->try_charge(memory::LedgerUse::batches, room)) {
          target = choice.device;
          reserved = room;
          return batcher.plan(candidate, room);
        }
        // The ledger moved between reading its room and reserving it: look again.
      }
    });
  } catch (...) {
    give_back();
    throw;
  }
  result.timed_out = std::move(popped.timed_out);
  result.retry_at = popped.retry_at;
  if (popped.blocked) {
    result.blocked =
        BlockedOnMemory{popped.blocked->head, popped.blocked->head_memory_bytes, largest_room};
  }
  if (popped.batch.empty()) {
    give_back();
    return result;
  }
  devices_[*target].ledger->release(memory::LedgerUse::batches,
                                    reserved - popped.batch.memory_bytes);
  result.device = target;
  result.batch_size = popped.batch.size();
  place_locked(*target, std::move(popped.batch));
  lock.unlock();
  changed_.notify_all();
  return result;
}

}  // namespace apo::sched

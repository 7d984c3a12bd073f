#include "apo/sched/placement.hpp"

#include <algorithm>
#include <utility>

#include <fmt/format.h>

#include "apo/core/config.hpp"
#include "apo/core/error.hpp"
#include "apo/core/units.hpp"

namespace apo::sched {

using memory::LedgerUse;

std::vector<std::shared_ptr<memory::MemoryLedger>> make_ledgers(
    const std::vector<DeviceSpec>& devices) {
  std::vector<std::shared_ptr<memory::MemoryLedger>> ledgers;
  ledgers.reserve(devices.size());
  for (const DeviceSpec& spec : devices) {
    ledgers.push_back(std::make_shared<memory::MemoryLedger>(spec.device, spec.budget_bytes));
  }
  return ledgers;
}

PlacementOptions::PlacementOptions() : PlacementOptions(Config{}) {}

PlacementOptions::PlacementOptions(const Config& config)
    : batches_per_device(static_cast<std::size_t>(config.scheduling.batches_per_device)),
      utilization_weight(config.scheduling.utilization_weight),
      memory_pressure_weight(config.scheduling.memory_pressure_weight) {}

PlacementOptions PlacementOptions::from_config(const Config& config) {
  return PlacementOptions(config);
}

void PlacementOptions::validate() const {
  if (batches_per_device < 1 || batches_per_device > 64) {
    fail(ErrorCode::InvalidArgument, "Placement: batches_per_device must be 1 to 64, got {}",
         batches_per_device);
  }
  const auto check_weight = [](const char* name, double weight) {
    if (!(weight >= 0.0 && weight <= 100.0)) {
      fail(ErrorCode::InvalidArgument, "Placement: {} must be 0 to 100, got {}", name, weight);
    }
  };
  check_weight("utilization_weight", utilization_weight);
  check_weight("memory_pressure_weight", memory_pressure_weight);
}

Placement::Placement(std::vector<std::shared_ptr<memory::MemoryLedger>> devices,
                     PlacementOptions options)
    : options_(std::move(options)) {
  options_.validate();
  if (devices.empty()) fail(ErrorCode::InvalidArgument, "Placement: no devices");
  for (auto& ledger : devices) {
    if (!ledger) fail(ErrorCode::InvalidArgument, "Placement: a null ledger");
    for (const DeviceState& other : devices_) {
      if (other.ledger->device() == ledger->device()) {
        fail(ErrorCode::InvalidArgument, "Placement: two ledgers for {}", ledger->device().str());
      }
    }
    devices_.emplace_back().ledger = std::move(ledger);
  }
}

void Placement::admit(const Request& request) const {
  // Budgets never change, so no lock is needed.
  std::int64_t largest = 0;
  for (const DeviceState& device : devices_) {
    largest = std::max(largest, device.ledger->budget_bytes());
  }
  if (request.memory_estimate_bytes <= largest) return;
  std::string budgets;
  for (const DeviceState& device : devices_) {
    budgets += fmt::format("{}{} {}", budgets.empty() ? "" : ", ", device.ledger->device().str(),
                           format_bytes(device.ledger->budget_bytes()));
  }
  throw Error(ErrorCode::Rejected,
              fmt::format("needs an estimated {} of device memory; no device has that much "
                          "(budgets: {})",
                          format_bytes(request.memory_estimate_bytes), budgets),
              describe(request));
}

Placement::DeviceState& Placement::device_at(std::size_t index) {
  return const_cast<DeviceState&>(std::as_const(*this).device_at(index));
}

const Placement::DeviceState& Placement::device_at(std::size_t index) const {
  if (index >= devices_.size()) {
    fail(ErrorCode::InvalidArgument, "device index {} out of range ({} devices)", index,
         devices_.size());
  }
  return devices_[index];
}

DeviceLoad Placement::load_locked(std::size_t index) const {
  const DeviceState& device = device_at(index);
  DeviceLoad load;
  load.memory = device.ledger->snapshot();
  load.room_bytes = device.ledger->room(LedgerUse::batches);
  load.in_flight = device.in_flight;
  load.utilization = device.reported_utilization.value_or(
      static_cast<double>(device.in_flight) / static_cast<double>(options_.batches_per_device));
  return load;
}

DeviceLoad Placement::load(std::size_t device) const {
  const std::lock_guard lock(mutex_);
  return load_locked(device);
}

double Placement::score_locked(std::size_t index) const {
  const DeviceLoad load = load_locked(index);
  return options_.utilization_weight * load.utilization +
         options_.memory_pressure_weight * load.memory_pressure();
}

bool Placement::any_place_locked() const {
  return std::any_of(devices_.begin(), devices_.end(), [&](const DeviceState& device) {
    return device.in_flight < options_.batches_per_device;
  });
}

Placement::Choice Placement::choose_locked(std::int64_t bytes, const batch::GroupKeyView* key,
                                           const ExtraBytes& extra) const {
  Choice best;
  Choice largest;
  double best_score = 0;
  for (std::size_t i = 0; i < devices_.size(); ++i) {
    if (devices_[i].in_flight >= options_.batches_per_device) continue;
    std::int64_t room = devices_[i].ledger->room(LedgerUse::batches);
    if (key != nullptr && extra) room -= std::max<std::int64_t>(0, extra(*key, i));
    if (room > largest.room_bytes) largest = {i, room};
    if (room < bytes) continue;
    const double score = score_locked(i);
    if (!best.device || score < best_score) {
      best = {i, room};
      best_score = score;
    }
  }
  if (best.device) return best;
  return {std::nullopt, largest.room_bytes};
}

std::optional<std::size_t> Placement::choose(std::int64_t memory_bytes) const {
  const std::lock_guard lock(mutex_);
  return choose_locked(memory_bytes, nullptr, {}).device;
}

void Placement::place_locked(std::size_t index, Batch batch) {
  DeviceState& device = devices_[index];
  ++device.in_flight;
  device.queue.push_back(std::move(batch));
}

std::optional<Batch> Placement::try_take(std::size_t index) {
  const std::lock_guard lock(mutex_);
  DeviceState& device = device_at(index);
  if (device.queue.empty()) return std::nullopt;
  Batch batch = std::move(device.queue.front());
  device.queue.pop_front();
  return batch;
}

std::optional<Batch> Placement::take(std::size_t index, std::stop_token stop) {
  std::unique_lock lock(mutex_);
  DeviceState& device = device_at(index);
  if (!changed_.wait(lock, stop, [&] { return !device.queue.empty(); })) return std::nullopt;
  Batch batch = std::move(device.queue.front());
  device.queue.pop_front();
  return batch;
}

void Placement::complete(std::size_t index, const Batch& batch) {
  {
    const std::lock_guard lock(mutex_);
    DeviceState& device = device_at(index);
    if (device.in_flight == 0) {
      throw Error(ErrorCode::InvalidArgument,
                  fmt::format("completes a batch of {} that was not placed there",
                              format_bytes(batch.memory_bytes)),
                  device.ledger->device().str());
    }
    device.ledger->release(LedgerUse::batches, batch.memory_bytes);
    --device.in_flight;
  }
  changed_.notify_all();
}

void Placement::report_utilization(std::size_t index, std::optional<double> utilization) {
  if (utilization && !(*utilization >= 0.0 && *utilization <= 1.0)) {
    fail(ErrorCode::InvalidArgument, "utilization must be 0 to 1, got {}", *utilization);
  }
  {
    const std::lock_guard lock(mutex_);
    device_at(index).reported_utilization = utilization;
  }
  changed_.notify_all();
}

}  // namespace apo::sched

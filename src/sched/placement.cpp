#include "apo/sched/placement.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

#include <fmt/format.h>

#include "apo/core/error.hpp"
#include "apo/core/units.hpp"
#include "apo/tune/presets.hpp"

namespace apo::sched {

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

PlacementOptions PlacementOptions::from_config(const Config& config) {
  PlacementOptions options;
  options.batches_per_device = static_cast<std::size_t>(config.scheduling.batches_per_device);
  options.utilization_weight = config.scheduling.utilization_weight;
  options.memory_pressure_weight = config.scheduling.memory_pressure_weight;
  return options;
}

Placement::Placement(std::vector<DeviceSpec> devices, PlacementOptions options)
    : options_(options) {
  options_.validate();
  if (devices.empty()) fail(ErrorCode::InvalidArgument, "Placement: no devices");
  for (auto& spec : devices) {
    if (spec.budget_bytes <= 0) {
      throw Error(ErrorCode::InvalidArgument,
                  fmt::format("memory budget must be > 0, got {} bytes", spec.budget_bytes),
                  spec.name);
    }
    Device& device = devices_.emplace_back();
    device.spec = std::move(spec);
  }
}

std::vector<DeviceSpec> Placement::devices_for(const MachineInfo& machine, const Config& config) {
  const auto& budget = config.performance.max_memory_usage_gib;
  std::vector<DeviceSpec> devices;
  for (const auto& cuda : machine.cuda_devices) {
    const double gib = budget.value_or(tune::device_memory_budget_gib(cuda.total_bytes));
    devices.push_back({fmt::format("cuda:{}", cuda.index), gib_to_bytes(gib)});
    if (!config.performance.parallel_execution) break;
  }
  if (devices.empty()) {
    const double gib = budget.value_or(tune::host_memory_budget_gib(machine.memory.total_bytes));
    devices.push_back({"cpu", gib_to_bytes(gib)});
  }
  return devices;
}

void Placement::admit(const Request& request) const {
  // Budgets never change after construction, so no lock is needed.
  const auto largest = std::max_element(
      devices_.begin(), devices_.end(),
      [](const Device& a, const Device& b) { return a.spec.budget_bytes < b.spec.budget_bytes; });
  if (request.memory_estimate_bytes <= largest->spec.budget_bytes) return;
  std::string budgets;
  for (const auto& device : devices_) {
    budgets += fmt::format("{}{} {}", budgets.empty() ? "" : ", ", device.spec.name,
                           format_bytes(device.spec.budget_bytes));
  }
  throw Error(ErrorCode::Rejected,
              fmt::format("needs an estimated {} of device memory; no device has that much "
                          "(budgets: {})",
                          format_bytes(request.memory_estimate_bytes), budgets),
              describe(request));
}

Placement::Device& Placement::device_at(std::size_t index) {
  return const_cast<Device&>(std::as_const(*this).device_at(index));
}

const Placement::Device& Placement::device_at(std::size_t index) const {
  if (index >= devices_.size()) {
    fail(ErrorCode::InvalidArgument, "device index {} out of range ({} devices)", index,
         devices_.size());
  }
  return devices_[index];
}

DeviceLoad Placement::load_locked(std::size_t index) const {
  const Device& device = device_at(index);
  DeviceLoad load;
  load.budget_bytes = device.spec.budget_bytes;
  load.reserved_bytes = device.reserved_bytes;
  load.external_bytes = device.external_bytes;
  load.in_flight = device.in_flight;
  load.utilization = device.reported_utilization.value_or(
      static_cast<double>(device.in_flight) / static_cast<double>(options_.batches_per_device));
  return load;
}

DeviceLoad Placement::load(std::size_t device) const {
  const std::lock_guard lock(mutex_);
  return load_locked(device);
}

std::int64_t Placement::largest_free_locked() const {
  std::int64_t largest = -1;
  for (std::size_t i = 0; i < devices_.size(); ++i) {
    if (devices_[i].in_flight >= options_.batches_per_device) continue;
    largest = std::max(largest, load_locked(i).free_bytes());
  }
  return largest;
}

std::optional<std::size_t> Placement::choose_locked(std::int64_t memory_bytes) const {
  std::optional<std::size_t> best;
  double best_score = 0;
  for (std::size_t i = 0; i < devices_.size(); ++i) {
    if (devices_[i].in_flight >= options_.batches_per_device) continue;
    const DeviceLoad load = load_locked(i);
    if (load.free_bytes() < memory_bytes) continue;
    const double score = options_.utilization_weight * load.utilization +
                         options_.memory_pressure_weight * load.memory_pressure();
    if (!best || score < best_score) {
      best = i;
      best_score = score;
    }
  }
  return best;
}

std::optional<std::size_t> Placement::choose(std::int64_t memory_bytes) const {
  const std::lock_guard lock(mutex_);
  return choose_locked(memory_bytes);
}

void Placement::place_locked(std::size_t index, Batch batch) {
  Device& device = devices_[index];
  device.reserved_bytes += batch.memory_bytes;
  ++device.in_flight;
  device.queue.push_back(std::move(batch));
}

std::optional<Batch> Placement::try_take(std::size_t index) {
  const std::lock_guard lock(mutex_);
  Device& device = device_at(index);
  if (device.queue.empty()) return std::nullopt;
  Batch batch = std::move(device.queue.front());
  device.queue.pop_front();
  return batch;
}

std::optional<Batch> Placement::take(std::size_t index, std::stop_token stop) {
  std::unique_lock lock(mutex_);
  Device& device = device_at(index);
  if (!changed_.wait(lock, stop, [&] { return !device.queue.empty(); })) return std::nullopt;
  Batch batch = std::move(device.queue.front());
  device.queue.pop_front();
  return batch;
}

void Placement::complete(std::size_t index, const Batch& batch) {
  {
    const std::lock_guard lock(mutex_);
    Device& device = device_at(index);
    if (device.in_flight == 0 || device.reserved_bytes < batch.memory_bytes) {
      throw Error(ErrorCode::InvalidArgument,
                  fmt::format("completes a batch of {} that was not placed there",
                              format_bytes(batch.memory_bytes)),
                  device.spec.name);
    }
    device.reserved_bytes -= batch.memory_bytes;
    --device.in_flight;
  }
  changed_.notify_all();
}

void Placement::report(std::size_t index, std::int64_t external_bytes,
                       std::optional<double> utilization) {
  if (external_bytes < 0) {
    fail(ErrorCode::InvalidArgument, "external memory must be >= 0, got {} bytes", external_bytes);
  }
  if (utilization && !(*utilization >= 0.0 && *utilization <= 1.0)) {
    fail(ErrorCode::InvalidArgument, "utilization must be 0 to 1, got {}", *utilization);
  }
  {
    const std::lock_guard lock(mutex_);
    Device& device = device_at(index);
    device.external_bytes = external_bytes;
    device.reported_utilization = utilization;
  }
  changed_.notify_all();
}

}  // namespace apo::sched

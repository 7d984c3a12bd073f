#include "apo/memory/ledger.hpp"

#include <algorithm>
#include <atomic>

#include <fmt/format.h>

#include "apo/core/error.hpp"
#include "apo/core/units.hpp"

namespace apo::memory {

struct MemoryLedger::PeakWindow::State {
  std::atomic<std::int64_t> peak{0};
};

std::int64_t MemoryLedger::PeakWindow::peak_bytes() const noexcept {
  return state_ ? state_->peak.load(std::memory_order_relaxed) : 0;
}

MemoryLedger::MemoryLedger(Device device, std::int64_t budget_bytes)
    : device_(device), budget_bytes_(budget_bytes) {
  if (budget_bytes <= 0) {
    throw Error(ErrorCode::InvalidArgument,
                fmt::format("memory budget must be > 0, got {} bytes", budget_bytes), device.str());
  }
}

std::int64_t& MemoryLedger::figure(LedgerUse use) noexcept {
  return charged_[static_cast<std::size_t>(use)];
}

std::int64_t MemoryLedger::accounted_locked() const noexcept {
  const auto at = [&](LedgerUse use) { return charged_[static_cast<std::size_t>(use)]; };
  return at(LedgerUse::weights) + at(LedgerUse::staging) +
         std::max(at(LedgerUse::pool), at(LedgerUse::batches));
}

std::int64_t MemoryLedger::used_locked() const noexcept {
  return accounted_locked() + untracked_bytes_;
}

std::int64_t MemoryLedger::room_locked(LedgerUse use) const noexcept {
  const std::int64_t free = std::max<std::int64_t>(0, budget_bytes_ - used_locked());
  const std::int64_t pool = charged_[static_cast<std::size_t>(LedgerUse::pool)];
  const std::int64_t batches = charged_[static_cast<std::size_t>(LedgerUse::batches)];
  switch (use) {
    case LedgerUse::pool:
      return free + std::max<std::int64_t>(0, batches - pool);  // growth the estimates promised
    case LedgerUse::batches:
      return free + std::max<std::int64_t>(0, pool - batches);  // cached segments serve them
    case LedgerUse::weights:
    case LedgerUse::staging:
      return free;
  }
  return free;
}

void MemoryLedger::raise_peaks_locked() noexcept {
  const std::int64_t used = used_locked();
  peak_used_bytes_ = std::max(peak_used_bytes_, used);
  std::erase_if(windows_, [&](const std::weak_ptr<PeakWindow::State>& weak) {
    const auto window = weak.lock();
    if (!window) return true;
    if (window->peak.load(std::memory_order_relaxed) < used) {
      window->peak.store(used, std::memory_order_relaxed);
    }
    return false;
  });
}

void MemoryLedger::charge(LedgerUse use, std::int64_t bytes, std::string_view what) {
  if (bytes < 0) {
    fail(ErrorCode::InvalidArgument, "{}: cannot charge {} bytes to {}", device_.str(), bytes,
         to_string(use));
  }
  LedgerSnapshot seen;
  {
    const std::lock_guard lock(mutex_);
    if (bytes <= room_locked(use)) {
      figure(use) += bytes;
      raise_peaks_locked();
      return;
    }
  }
  seen = snapshot();
  throw Error(ErrorCode::OutOfMemory,
              fmt::format("{} needs {} more for {} than {} has room for: {}", what,
                          format_bytes(bytes), to_string(use), device_.str(), describe(seen)),
              std::string(what));
}

bool MemoryLedger::try_charge(LedgerUse use, std::int64_t bytes) noexcept {
  if (bytes < 0) return false;
  const std::lock_guard lock(mutex_);
  if (bytes > room_locked(use)) return false;
  figure(use) += bytes;
  raise_peaks_locked();
  return true;
}

void MemoryLedger::charge_held(LedgerUse use, std::int64_t bytes) noexcept {
  if (bytes <= 0) return;
  const std::lock_guard lock(mutex_);
  figure(use) += bytes;
  raise_peaks_locked();
}

void MemoryLedger::release(LedgerUse use, std::int64_t bytes) noexcept {
  if (bytes <= 0) return;
  const std::lock_guard lock(mutex_);
  std::int64_t& charged = figure(use);
  charged -= std::min(bytes, charged);
}

std::int64_t MemoryLedger::room(LedgerUse use) const noexcept {
  const std::lock_guard lock(mutex_);
  return room_locked(use);
}

void MemoryLedger::observe(std::int64_t allocator_bytes_in_use) noexcept {
  const std::lock_guard lock(mutex_);
  untracked_bytes_ = std::max<std::int64_t>(0, allocator_bytes_in_use - accounted_locked());
  raise_peaks_locked();
}

LedgerSnapshot MemoryLedger::snapshot() const {
  const std::lock_guard lock(mutex_);
  LedgerSnapshot s;
  s.device = device_;
  s.budget_bytes = budget_bytes_;
  s.weights_bytes = charged_[static_cast<std::size_t>(LedgerUse::weights)];
  s.staging_bytes = charged_[static_cast<std::size_t>(LedgerUse::staging)];
  s.pool_bytes = charged_[static_cast<std::size_t>(LedgerUse::pool)];
  s.batches_bytes = charged_[static_cast<std::size_t>(LedgerUse::batches)];
  s.untracked_bytes = untracked_bytes_;
  s.used_bytes = used_locked();
  s.peak_used_bytes = peak_used_bytes_;
  return s;
}

std::string MemoryLedger::describe(const LedgerSnapshot& s) {
  return fmt::format(
      "{}: {} of {} used (weights {}, staging {}, activation pool {}, batch estimates {}, "
      "untracked {})",
      s.device.str(), format_bytes(s.used_bytes), format_bytes(s.budget_bytes),
      format_bytes(s.weights_bytes), format_bytes(s.staging_bytes), format_bytes(s.pool_bytes),
      format_bytes(s.batches_bytes), format_bytes(s.untracked_bytes));
}

std::string MemoryLedger::describe() const {
  return describe(snapshot());
}

MemoryLedger::PeakWindow MemoryLedger::open_window() {
  auto state = std::make_shared<PeakWindow::State>();
  const std::lock_guard lock(mutex_);
  state->peak.store(used_locked(), std::memory_order_relaxed);
  windows_.push_back(state);
  return PeakWindow(std::move(state));
}

LedgerResource::LedgerResource(AnyResource upstream, std::shared_ptr<MemoryLedger> ledger,
                               LedgerUse use)
    : upstream_(std::move(upstream)), ledger_(std::move(ledger)), use_(use) {
  if (!ledger_) fail(ErrorCode::InvalidArgument, "LedgerResource: null ledger");
}

void* LedgerResource::allocate(std::int64_t bytes, std::int64_t alignment) {
  check_request(bytes, alignment, "LedgerResource");
  if (bytes == 0) return nullptr;
  ledger_->charge(use_, bytes, "an allocation");
  try {
    return upstream_.allocate(bytes, alignment);
  } catch (...) {
    ledger_->release(use_, bytes);
    throw;
  }
}

void LedgerResource::deallocate(void* ptr, std::int64_t bytes, std::int64_t alignment) noexcept {
  if (ptr == nullptr) return;
  upstream_.deallocate(ptr, bytes, alignment);
  ledger_->release(use_, bytes);
}

}  // namespace apo::memory

#pragma once

/// @file
/// @brief MemoryLedger: one account of a device's memory, shared by everything that uses it
/// (resident weights, weight-streaming slots, the activation pool, in-flight batch estimates),
/// bounded by one budget (performance_optimization.max_memory_usage_gb); and LedgerResource,
/// a memory resource whose allocations are charged to a ledger.

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "apo/core/device.hpp"
#include "apo/core/enum_names.hpp"
#include "apo/memory/resource.hpp"

namespace apo::memory {

/// @brief What a charge to a ledger pays for.
enum class LedgerUse : std::uint8_t {
  weights,  ///< models resident on the device, and loads in flight there
  staging,  ///< device slots that streamed weights rotate through
  pool,     ///< segments the device's activation pool holds (in use or cached)
  batches,  ///< memory estimates of the batches placed on the device and not yet completed
};

}  // namespace apo::memory

template <>
struct apo::EnumTraits<apo::memory::LedgerUse> {
  static constexpr std::string_view noun = "ledger use";
  static constexpr std::array<EnumEntry<memory::LedgerUse>, 4> entries{{
      {memory::LedgerUse::weights, "weights"},
      {memory::LedgerUse::staging, "staging"},
      {memory::LedgerUse::pool, "activation pool"},
      {memory::LedgerUse::batches, "batch estimates"},
  }};
};

namespace apo::memory {

/// @brief A ledger's figures, read together.
struct LedgerSnapshot {
  Device device;
  std::int64_t budget_bytes = 0;
  std::int64_t weights_bytes = 0;
  std::int64_t staging_bytes = 0;
  std::int64_t pool_bytes = 0;
  std::int64_t batches_bytes = 0;
  /// In use on the device beyond what was charged, as the allocator last reported it
  /// (MemoryLedger::observe); 0 where nobody observes (the CPU).
  std::int64_t untracked_bytes = 0;
  std::int64_t used_bytes = 0;       ///< see MemoryLedger
  std::int64_t peak_used_bytes = 0;  ///< the most used_bytes has been

  std::int64_t free_bytes() const noexcept {
    return budget_bytes > used_bytes ? budget_bytes - used_bytes : 0;
  }
};

/// @brief The memory of one device, as one account with one budget.
///
/// Counting. Weights, staging slots and the activation pool's segments are memory held; batch
/// estimates are memory promised to batches in flight, which their activations draw from the
/// pool. So the pool and the estimates overlap: the pool's cached segments serve new batches, and
/// estimates cover pool growth still to come. The ledger counts
///
///   used = weights + staging + max(pool, batches) + untracked
///
/// and every charge keeps used ≤ budget: memory held (weights + staging + pool) never passes the
/// budget, and neither does memory promised (weights + staging + batches). `untracked` is what
/// the device's allocator reported in use beyond the charges at the last observe() (torch's
/// caching allocator on CUDA: its statistics are the truth the ledger reconciles with).
///
/// A charge that would pass the budget throws Error(OutOfMemory) naming what asked, the bytes and
/// every figure of the ledger, and changes nothing. Thread-safe (one mutex, never held while
/// calling out).
class MemoryLedger {
 public:
  /// @brief Throws Error(InvalidArgument) unless `budget_bytes` is positive.
  MemoryLedger(Device device, std::int64_t budget_bytes);

  MemoryLedger(const MemoryLedger&) = delete;
  MemoryLedger& operator=(const MemoryLedger&) = delete;

  Device device() const noexcept { return device_; }
  std::int64_t budget_bytes() const noexcept { return budget_bytes_; }

  /// @brief Charges `bytes` to `use`, or throws Error(OutOfMemory) naming `what` when the
  /// device would pass its budget. Throws InvalidArgument for negative bytes.
  void charge(LedgerUse use, std::int64_t bytes, std::string_view what);
  /// @brief Charges `bytes` to `use` if they fit; returns whether it did.
  bool try_charge(LedgerUse use, std::int64_t bytes) noexcept;
  /// @brief Charges memory that is already held (a load that came out larger than planned),
  /// even past the budget: the ledger must not hide it. Later charges see the excess.
  void charge_held(LedgerUse use, std::int64_t bytes) noexcept;
  /// @brief Gives back bytes charged to `use` (at most what is charged there).
  void release(LedgerUse use, std::int64_t bytes) noexcept;
  /// @brief The largest charge to `use` that would succeed now.
  std::int64_t room(LedgerUse use) const noexcept;

  /// @brief Reconciles with what the device's allocator reports in use: what it holds beyond
  /// the charges counts as untracked until the next observation.
  void observe(std::int64_t allocator_bytes_in_use) noexcept;

  LedgerSnapshot snapshot() const;
  /// @brief "cpu: 1.20 GiB of 4.00 GiB used (weights 1.00 GiB, staging 0 B, activation pool
  /// 200.00 MiB, batch estimates 0 B, untracked 0 B)".
  std::string describe() const;

  /// @brief The highest used_bytes seen while a window is open (a batch's run, say).
  class PeakWindow {
   public:
    PeakWindow() = default;
    std::int64_t peak_bytes() const noexcept;

   private:
    friend class MemoryLedger;
    struct State;
    explicit PeakWindow(std::shared_ptr<State> state) : state_(std::move(state)) {}
    std::shared_ptr<State> state_;
  };
  /// @brief Opens a window starting at the current use; it closes when the last copy dies.
  PeakWindow open_window();

 private:
  std::int64_t& figure(LedgerUse use) noexcept;
  std::int64_t accounted_locked() const noexcept;
  std::int64_t used_locked() const noexcept;
  std::int64_t room_locked(LedgerUse use) const noexcept;
  void raise_peaks_locked() noexcept;
  static std::string describe(const LedgerSnapshot& snapshot);

  const Device device_;
  const std::int64_t budget_bytes_;
  mutable std::mutex mutex_;
  std::array<std::int64_t, 4> charged_{};  // by LedgerUse
  std::int64_t untracked_bytes_ = 0;
  std::int64_t peak_used_bytes_ = 0;
  std::vector<std::weak_ptr<PeakWindow::State>> windows_;
};

/// @brief A memory resource whose allocations are charged to a ledger (by default as the
/// activation pool) before they reach the upstream: put it under a CachingPool and the pool's
/// segments count against the device's budget, so the pool releases its cache and retries when
/// the device is full. Thread-safe.
class LedgerResource {
 public:
  /// @brief Throws InvalidArgument for a null ledger.
  LedgerResource(AnyResource upstream, std::shared_ptr<MemoryLedger> ledger,
                 LedgerUse use = LedgerUse::pool);

  /// @brief See MemoryResource. Throws OutOfMemory (the ledger's message) when the charge would
  /// pass the budget.
  void* allocate(std::int64_t bytes, std::int64_t alignment = kDefaultAlignment);
  /// @brief See MemoryResource.
  void deallocate(void* ptr, std::int64_t bytes,
                  std::int64_t alignment = kDefaultAlignment) noexcept;
  /// @brief The upstream's.
  MemorySpace space() const noexcept { return upstream_.space(); }

  const std::shared_ptr<MemoryLedger>& ledger() const noexcept { return ledger_; }

 private:
  AnyResource upstream_;
  std::shared_ptr<MemoryLedger> ledger_;
  LedgerUse use_;
};

static_assert(MemoryResource<LedgerResource>);

}  // namespace apo::memory

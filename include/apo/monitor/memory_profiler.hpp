#pragma once

/// @file
/// @brief MemoryProfiler: the guide's memory profiler (take_snapshot, then compare two
/// snapshots) over the figures apo keeps itself, instead of tracemalloc: memory ledgers, pools,
/// torch's device allocator and the process's resident set.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "apo/memory/arena_pool.hpp"
#include "apo/memory/caching_pool.hpp"
#include "apo/memory/ledger.hpp"
#include "apo/memory/statistics_adaptor.hpp"

namespace apo::monitor {

/// @brief Named figures, as a source reports them. A name ending in "_bytes" is a byte count
/// (tables show it in MiB); any other name is a count (allocations, segments).
using MemoryFigures = std::vector<std::pair<std::string, std::int64_t>>;

/// @brief A source of figures, called at every snapshot (from the thread that takes it).
using MemoryProvider = std::function<MemoryFigures()>;

/// @brief The figures of every source at one moment, each named "source/figure".
struct MemorySnapshot {
  std::string label;
  MemoryFigures figures;  ///< in the order the sources were registered

  /// @brief The figure of this name, if the snapshot has it.
  std::optional<std::int64_t> figure(std::string_view name) const;
};

/// @brief How one figure changed between two snapshots. A figure present in only one of them
/// (a source registered or expired in between) has no value on the other side and counts as 0
/// there in `delta`.
struct MemoryChange {
  std::string name;
  std::optional<std::int64_t> before;
  std::optional<std::int64_t> after;
  std::int64_t delta = 0;  ///< after - before

  bool is_bytes() const noexcept;
};

/// @brief Changes from one snapshot to another, the largest |delta| first (ties by name).
struct MemoryDiff {
  std::string before_label;
  std::string after_label;
  std::vector<MemoryChange> changes;  ///< every figure of either snapshot, unchanged ones last
};

/// @brief What MemoryProfiler reads besides the sources registered with it.
struct MemoryProfilerOptions {
  /// The process's resident set ("process/rss_bytes", "process/peak_rss_bytes") from this file.
  bool process_figures = true;
  std::string proc_status_path = "/proc/self/status";
  /// Torch's device caching allocator, per device ("torch cuda:0/allocated_bytes",
  /// "reserved_bytes", and their peaks), where torch has an accelerator (libtorch 2.9 or newer).
  bool torch_device_figures = true;
};

/// @brief Snapshots of memory figures under labels, and their differences: the guide's
/// MemoryProfiler (take_snapshot, analyze_memory_usage's compare_to) for apo's own accounts.
///
/// Sources: ledgers and pools registered by name (held weakly: a source that died gives no
/// figures), any MemoryProvider, the process's resident set and torch's device allocator (see
/// MemoryProfilerOptions). Torch's CPU allocator keeps no statistics; put a StatisticsAdaptor
/// under a CpuAllocationScope's resource and register it to count torch's CPU tensors.
///
/// Labels are unique: taking a snapshot under a label already taken throws
/// Error(InvalidArgument), so that a diff always names exactly one moment (clear() starts over).
/// Thread-safe: sources are called outside the profiler's lock.
class MemoryProfiler {
 public:
  explicit MemoryProfiler(MemoryProfilerOptions options = {});

  MemoryProfiler(const MemoryProfiler&) = delete;
  MemoryProfiler& operator=(const MemoryProfiler&) = delete;

  /// @brief Registers a source whose figures are named "`name`/figure". Throws
  /// InvalidArgument for an empty name, a name with '/', a name taken, or an empty provider.
  void add_provider(std::string name, MemoryProvider provider);
  /// @brief A ledger's figures: budget, weights, staging, pool, batches, untracked, used, peak
  /// (each "_bytes").
  void add_ledger(std::string name, const std::shared_ptr<const memory::MemoryLedger>& ledger);
  /// @brief A caching pool's PoolStats: in use, requested, reserved, cached, their peaks,
  /// largest free block (bytes) and the allocation counts.
  void add_pool(std::string name, const std::shared_ptr<const memory::CachingPool>& pool);
  /// @brief An arena's capacity, offset, peak offset (bytes) and live allocations.
  void add_pool(std::string name, const std::shared_ptr<const memory::ArenaPool>& pool);
  /// @brief What passed through a StatisticsAdaptor: bytes and allocations (current, peak,
  /// total) and failed allocations.
  void add_pool(std::string name, const std::shared_ptr<const memory::StatisticsAdaptor>& stats);
  /// @brief Forgets a source; returns whether there was one of that name.
  bool remove_provider(std::string_view name);

  /// @brief Reads every source now and keeps the figures under `label`; returns them. Throws
  /// InvalidArgument for an empty label or one already taken.
  MemorySnapshot take_snapshot(std::string label);

  /// @brief The snapshots taken, oldest first.
  std::vector<MemorySnapshot> snapshots() const;
  /// @brief Throws Error(NotFound) naming the label when there is no such snapshot.
  MemorySnapshot snapshot(std::string_view label) const;
  /// @brief Forgets every snapshot (sources stay registered).
  void clear();

  /// @brief What changed from `before_label` to `after_label` (compare_to). Throws
  /// Error(NotFound) naming a label that was never taken.
  MemoryDiff diff(std::string_view before_label, std::string_view after_label) const;
  /// @brief The diffs between consecutive snapshots (analyze_memory_usage); empty with fewer
  /// than two.
  std::vector<MemoryDiff> consecutive_diffs() const;

 private:
  struct Source {
    std::string name;
    MemoryProvider provider;
  };

  const MemorySnapshot& find_locked(std::string_view label) const;

  MemoryProfilerOptions options_;
  mutable std::mutex mutex_;
  std::vector<Source> sources_;
  std::vector<MemorySnapshot> snapshots_;
};

/// @brief The changes of two snapshots (not their order) sorted as MemoryProfiler::diff does.
MemoryDiff diff_snapshots(const MemorySnapshot& before, const MemorySnapshot& after);

/// @brief A table of a diff: figure, before, after, delta; bytes in MiB. `limit` rows at most
/// (0: all); unchanged figures are left out.
std::string format_diff(const MemoryDiff& diff, std::size_t limit = 0);

/// @brief {"before": label, "after": label, "changes": [{"name", "before", "after", "delta",
/// "unit": "bytes"|"count"}]}; a side without the figure is null.
std::string diff_to_json(const MemoryDiff& diff);

/// @brief {"label": label, "figures": {name: value, ...}}.
std::string snapshot_to_json(const MemorySnapshot& snapshot);

/// @brief VmRSS and VmHWM of a /proc/<pid>/status text, as "rss_bytes" and "peak_rss_bytes";
/// a line missing or malformed is left out.
MemoryFigures parse_proc_status(std::string_view text);

}  // namespace apo::monitor

// MemoryProfiler: sources, snapshots and their differences, with the text and JSON forms.

#include "apo/monitor/memory_profiler.hpp"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include <ATen/DeviceAccelerator.h>
#include <fmt/format.h>
#include <torch/version.h>
#include <nlohmann/json.hpp>

#include "apo/core/error.hpp"

namespace apo::monitor {

namespace {

// at::accelerator's device statistics came with libtorch 2.9 (as in memory/torch_allocator.cpp).
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 9)
#define APO_PROFILER_TORCH_DEVICE_STATS 1
#else
#define APO_PROFILER_TORCH_DEVICE_STATS 0
#endif

/// Torch's device caching allocator, per device. Untested here: the CI machine's torch has no
/// accelerator, where this reads nothing.
MemoryFigures torch_device_figures() {
  MemoryFigures figures;
#if APO_PROFILER_TORCH_DEVICE_STATS
  const auto accelerator = at::accelerator::getAccelerator(/*checked=*/false);
  if (!accelerator) return figures;
  const auto aggregate = static_cast<std::size_t>(c10::CachingDeviceAllocator::StatType::AGGREGATE);
  const std::string type = c10::DeviceTypeName(*accelerator, /*lower_case=*/true);
  for (c10::DeviceIndex i = 0; i < at::accelerator::deviceCount(); ++i) {
    const c10::CachingDeviceAllocator::DeviceStats stats = at::accelerator::getDeviceStats(i);
    const std::string prefix = fmt::format("torch {}:{}/", type, i);
    figures.emplace_back(prefix + "allocated_bytes", stats.allocated_bytes[aggregate].current);
    figures.emplace_back(prefix + "peak_allocated_bytes", stats.allocated_bytes[aggregate].peak);
    figures.emplace_back(prefix + "reserved_bytes", stats.reserved_bytes[aggregate].current);
    figures.emplace_back(prefix + "peak_reserved_bytes", stats.reserved_bytes[aggregate].peak);
    figures.emplace_back(prefix + "alloc_retries", stats.num_alloc_retries);
  }
#endif
  return figures;
}

MemoryFigures process_figures(const std::string& path) {
  std::ifstream file(path);
  if (!file) return {};
  std::stringstream text;
  text << file.rdbuf();
  MemoryFigures figures;
  for (auto& [name, value] : parse_proc_status(text.str())) {
    figures.emplace_back("process/" + name, value);
  }
  return figures;
}

void check_source_name(const std::string& name) {
  if (name.empty() || name.find('/') != std::string::npos) {
    fail(ErrorCode::InvalidArgument,
         "MemoryProfiler: source name '{}' must be non-empty and without '/'", name);
  }
}

void check_label(const std::string& label) {
  if (label.empty()) fail(ErrorCode::InvalidArgument, "MemoryProfiler: a snapshot label is empty");
}

std::string mib_text(std::int64_t bytes) {
  return fmt::format("{:.2f}", static_cast<double>(bytes) / static_cast<double>(MiB));
}

std::string value_text(const MemoryChange& change, const std::optional<std::int64_t>& value) {
  if (!value) return "-";
  return change.is_bytes() ? mib_text(*value) : std::to_string(*value);
}

}  // namespace

std::optional<std::int64_t> MemorySnapshot::figure(std::string_view name) const {
  for (const auto& [figure_name, value] : figures) {
    if (figure_name == name) return value;
  }
  return std::nullopt;
}

bool MemoryChange::is_bytes() const noexcept {
  constexpr std::string_view suffix = "_bytes";
  return name.size() >= suffix.size() &&
         std::string_view(name).substr(name.size() - suffix.size()) == suffix;
}

MemoryFigures parse_proc_status(std::string_view text) {
  MemoryFigures figures;
  const auto read_kib = [&](std::string_view key, const char* figure) {
    std::size_t at = 0;
    while (at < text.size()) {
      std::size_t end = text.find('\n', at);
      if (end == std::string_view::npos) end = text.size();
      std::string_view line = text.substr(at, end - at);
      at = end + 1;
      if (!line.starts_with(key) || line.size() <= key.size() || line[key.size()] != ':') continue;
      line.remove_prefix(key.size() + 1);
      while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
      std::int64_t kib = 0;
      const auto [rest, error] = std::from_chars(line.data(), line.data() + line.size(), kib);
      // The kernel writes "VmRSS:\t  123456 kB"; anything else is not trusted.
      if (error != std::errc{} || kib < 0 || kib > std::int64_t{1} << 50 ||
          std::string_view(rest, static_cast<std::size_t>(line.data() + line.size() - rest)) !=
              " kB") {
        return;
      }
      figures.emplace_back(figure, kib * KiB);
      return;
    }
  };
  read_kib("VmRSS", "rss_bytes");
  read_kib("VmHWM", "peak_rss_bytes");
  return figures;
}

MemoryProfiler::MemoryProfiler(MemoryProfilerOptions options) : options_(std::move(options)) {}

void MemoryProfiler::add_provider(std::string name, MemoryProvider provider) {
  check_source_name(name);
  if (!provider) {
    fail(ErrorCode::InvalidArgument, "MemoryProfiler: source '{}' has no provider", name);
  }
  if (name == "process" || name.starts_with("torch ")) {
    fail(ErrorCode::InvalidArgument, "MemoryProfiler: source name '{}' is the profiler's own",
         name);
  }
  const std::lock_guard lock(mutex_);
  for (const Source& source : sources_) {
    if (source.name == name) {
      fail(ErrorCode::InvalidArgument, "MemoryProfiler: a source named '{}' is registered already",
           name);
    }
  }
  sources_.push_back({std::move(name), std::move(provider)});
}

void MemoryProfiler::add_ledger(std::string name,
                                const std::shared_ptr<const memory::MemoryLedger>& ledger) {
  if (!ledger) fail(ErrorCode::InvalidArgument, "MemoryProfiler: ledger '{}' is null", name);
  add_provider(std::move(name), [weak = std::weak_ptr(ledger)]() -> MemoryFigures {
    const auto ledger = weak.lock();
    if (!ledger) return {};
    const memory::LedgerSnapshot s = ledger->snapshot();
    return {{"budget_bytes", s.budget_bytes},   {"weights_bytes", s.weights_bytes},
            {"staging_bytes", s.staging_bytes}, {"pool_bytes", s.pool_bytes},
            {"batches_bytes", s.batches_bytes}, {"untracked_bytes", s.untracked_bytes},
            {"used_bytes", s.used_bytes},       {"peak_used_bytes", s.peak_used_bytes},
            {"free_bytes", s.free_bytes()}};
  });
}

void MemoryProfiler::add_pool(std::string name,
                              const std::shared_ptr<const memory::CachingPool>& pool) {
  if (!pool) fail(ErrorCode::InvalidArgument, "MemoryProfiler: pool '{}' is null", name);
  add_provider(std::move(name), [weak = std::weak_ptr(pool)]() -> MemoryFigures {
    const auto pool = weak.lock();
    if (!pool) return {};
    const memory::PoolStats s = pool->stats();
    return {{"in_use_bytes", s.bytes_in_use},
            {"requested_bytes", s.bytes_requested},
            {"reserved_bytes", s.bytes_reserved},
            {"cached_bytes", s.bytes_cached()},
            {"peak_in_use_bytes", s.peak_bytes_in_use},
            {"peak_reserved_bytes", s.peak_bytes_reserved},
            {"largest_free_block_bytes", s.largest_free_block_bytes},
            {"live_allocations", s.live_allocations},
            {"allocations", s.allocation_count},
            {"upstream_allocations", s.upstream_allocation_count}};
  });
}

void MemoryProfiler::add_pool(std::string name,
                              const std::shared_ptr<const memory::ArenaPool>& pool) {
  if (!pool) fail(ErrorCode::InvalidArgument, "MemoryProfiler: arena '{}' is null", name);
  add_provider(std::move(name), [weak = std::weak_ptr(pool)]() -> MemoryFigures {
    const auto pool = weak.lock();
    if (!pool) return {};
    const memory::ArenaStats s = pool->stats();
    return {{"capacity_bytes", s.capacity_bytes},
            {"offset_bytes", s.offset_bytes},
            {"peak_offset_bytes", s.peak_offset_bytes},
            {"live_allocations", s.live_allocations}};
  });
}

void MemoryProfiler::add_pool(std::string name,
                              const std::shared_ptr<const memory::StatisticsAdaptor>& stats) {
  if (!stats) fail(ErrorCode::InvalidArgument, "MemoryProfiler: statistics '{}' are null", name);
  add_provider(std::move(name), [weak = std::weak_ptr(stats)]() -> MemoryFigures {
    const auto adaptor = weak.lock();
    if (!adaptor) return {};
    const memory::ResourceStatistics s = adaptor->stats();
    return {{"current_bytes", s.bytes.current},
            {"peak_bytes", s.bytes.peak},
            {"total_bytes", s.bytes.total},
            {"live_allocations", s.allocations.current},
            {"peak_live_allocations", s.allocations.peak},
            {"allocations", s.allocations.total},
            {"failed_allocations", s.failed_allocations}};
  });
}

bool MemoryProfiler::remove_provider(std::string_view name) {
  const std::lock_guard lock(mutex_);
  return std::erase_if(sources_, [&](const Source& source) { return source.name == name; }) > 0;
}

MemorySnapshot MemoryProfiler::take_snapshot(std::string label) {
  check_label(label);
  std::vector<Source> sources;
  {
    const std::lock_guard lock(mutex_);
    for (const MemorySnapshot& taken : snapshots_) {
      if (taken.label == label) {
        fail(ErrorCode::InvalidArgument, "MemoryProfiler: snapshot '{}' was taken already", label);
      }
    }
    sources = sources_;
  }
  // Sources are read without the lock: a provider may take locks of its own (a pool's, a
  // ledger's) or be slow, and must not block other threads' snapshots meanwhile.
  MemorySnapshot snapshot{std::move(label), {}};
  for (const Source& source : sources) {
    for (auto& [name, value] : source.provider()) {
      snapshot.figures.emplace_back(source.name + "/" + name, value);
    }
  }
  if (options_.process_figures) {
    for (auto& figure : process_figures(options_.proc_status_path)) {
      snapshot.figures.push_back(std::move(figure));
    }
  }
  if (options_.torch_device_figures) {
    for (auto& figure : torch_device_figures()) snapshot.figures.push_back(std::move(figure));
  }
  const std::lock_guard lock(mutex_);
  // Another thread may have taken the same label while the sources were read.
  for (const MemorySnapshot& taken : snapshots_) {
    if (taken.label == snapshot.label) {
      fail(ErrorCode::InvalidArgument, "MemoryProfiler: snapshot '{}' was taken already",
           snapshot.label);
    }
  }
  snapshots_.push_back(snapshot);
  return snapshot;
}

std::vector<MemorySnapshot> MemoryProfiler::snapshots() const {
  const std::lock_guard lock(mutex_);
  return snapshots_;
}

const MemorySnapshot& MemoryProfiler::find_locked(std::string_view label) const {
  for (const MemorySnapshot& snapshot : snapshots_) {
    if (snapshot.label == label) return snapshot;
  }
  std::string taken;
  for (const MemorySnapshot& snapshot : snapshots_) {
    taken += (taken.empty() ? "'" : ", '") + snapshot.label + "'";
  }
  fail(ErrorCode::NotFound, "MemoryProfiler: no snapshot labelled '{}' (taken: {})", label,
       taken.empty() ? "none" : taken);
}

MemorySnapshot MemoryProfiler::snapshot(std::string_view label) const {
  const std::lock_guard lock(mutex_);
  return find_locked(label);
}

void MemoryProfiler::clear() {
  const std::lock_guard lock(mutex_);
  snapshots_.clear();
}

MemoryDiff MemoryProfiler::diff(std::string_view before_label, std::string_view after_label) const {
  const std::lock_guard lock(mutex_);
  return diff_snapshots(find_locked(before_label), find_locked(after_label));
}

std::vector<MemoryDiff> MemoryProfiler::consecutive_diffs() const {
  const std::lock_guard lock(mutex_);
  std::vector<MemoryDiff> diffs;
  for (std::size_t i = 1; i < snapshots_.size(); ++i) {
    diffs.push_back(diff_snapshots(snapshots_[i - 1], snapshots_[i]));
  }
  return diffs;
}

MemoryDiff diff_snapshots(const MemorySnapshot& before, const MemorySnapshot& after) {
  std::map<std::string, MemoryChange> by_name;
  for (const auto& [name, value] : before.figures) {
    MemoryChange& change = by_name[name];
    change.name = name;
    change.before = value;
  }
  for (const auto& [name, value] : after.figures) {
    MemoryChange& change = by_name[name];
    change.name = name;
    change.after = value;
  }
  MemoryDiff diff{before.label, after.label, {}};
  diff.changes.reserve(by_name.size());
  for (auto& [name, change] : by_name) {
    change.delta = change.after.value_or(0) - change.before.value_or(0);
    diff.changes.push_back(std::move(change));
  }
  // Stable on a name-ordered list: equal |delta| stays in name order.
  std::stable_sort(diff.changes.begin(), diff.changes.end(),
                   [](const MemoryChange& a, const MemoryChange& b) {
                     return std::abs(a.delta) > std::abs(b.delta);
                   });
  return diff;
}

std::string format_diff(const MemoryDiff& diff, std::size_t limit) {
  std::size_t width = 6;
  std::size_t rows = 0;
  for (const MemoryChange& change : diff.changes) {
    if (change.delta == 0 && change.before == change.after) continue;
    if (limit != 0 && rows == limit) break;
    width = std::max(width, change.name.size());
    ++rows;
  }
  std::string text =
      fmt::format("memory from '{}' to '{}' (bytes in MiB)\n", diff.before_label, diff.after_label);
  text +=
      fmt::format("{:<{}}  {:>12}  {:>12}  {:>12}\n", "figure", width, "before", "after", "delta");
  std::size_t shown = 0;
  for (const MemoryChange& change : diff.changes) {
    if (change.delta == 0 && change.before == change.after) continue;
    if (shown == rows) break;
    const std::string delta =
        change.is_bytes() ? mib_text(change.delta) : std::to_string(change.delta);
    text += fmt::format("{:<{}}  {:>12}  {:>12}  {:>12}\n", change.name, width,
                        value_text(change, change.before), value_text(change, change.after),
                        change.delta > 0 ? "+" + delta : delta);
    ++shown;
  }
  if (shown == 0) text += "(no figure changed)\n";
  return text;
}

std::string diff_to_json(const MemoryDiff& diff) {
  nlohmann::json changes = nlohmann::json::array();
  for (const MemoryChange& change : diff.changes) {
    changes.push_back({{"name", change.name},
                       {"before", change.before ? nlohmann::json(*change.before) : nullptr},
                       {"after", change.after ? nlohmann::json(*change.after) : nullptr},
                       {"delta", change.delta},
                       {"unit", change.is_bytes() ? "bytes" : "count"}});
  }
  return nlohmann::json{
      {"before", diff.before_label}, {"after", diff.after_label}, {"changes", changes}}
      .dump(2);
}

std::string snapshot_to_json(const MemorySnapshot& snapshot) {
  nlohmann::json figures = nlohmann::json::object();
  for (const auto& [name, value] : snapshot.figures) figures[name] = value;
  return nlohmann::json{{"label", snapshot.label}, {"figures", figures}}.dump(2);
}

}  // namespace apo::monitor

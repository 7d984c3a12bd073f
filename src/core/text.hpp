#pragma once

// Small text helpers for messages, private to src/.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace apo::detail {

/// The candidate closest to `name` by edit distance (adjacent swaps count once), when close
/// enough to be a likely typo: at most a third of the name's length, and at least 1 allowed.
std::optional<std::string> nearest_name(std::string_view name,
                                        const std::vector<std::string>& candidates);

/// Sorted integers as ranges: {0,1,2,5} -> "0-2, 5".
std::string format_ranges(std::vector<int> values);

}  // namespace apo::detail

#pragma once

// Helpers shared by the memory tests: error checks, fill patterns, overlap checks and the
// stress scale.

#include "apo_catch.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <map>
#include <string>

#include "apo/core/error.hpp"

namespace apo::memory::testing {

// Runs `action`, requires it to throw apo::Error with `code`, and returns the message.
template <class Action>
std::string require_error(ErrorCode code, Action&& action) {
  try {
    action();
  } catch (const Error& error) {
    INFO(error.what());
    CHECK(to_string(error.code()) == to_string(code));
    return error.what();
  }
  FAIL("expected apo::Error(" << to_string(code) << "), nothing was thrown");
  return {};
}

// Writes a byte pattern derived from `tag` over a block, and checks it later: a block that
// another allocation overlapped will have been overwritten.
inline std::uint8_t pattern_byte(std::uint64_t tag, std::int64_t index) {
  return static_cast<std::uint8_t>((tag * 131 + static_cast<std::uint64_t>(index) * 7) & 0xff);
}

// Writes the first and last 64 bytes and one byte per page in between: enough to catch an
// overlap, cheap on large blocks.
template <class Visit>
void for_sampled_bytes(std::int64_t bytes, Visit&& visit) {
  const std::int64_t head = std::min<std::int64_t>(bytes, 64);
  const std::int64_t tail = std::max(head, bytes - 64);
  for (std::int64_t i = 0; i < head; ++i) visit(i);
  for (std::int64_t i = head; i < tail; i += 4096) visit(i);
  for (std::int64_t i = tail; i < bytes; ++i) visit(i);
}

inline void fill_pattern(void* ptr, std::int64_t bytes, std::uint64_t tag) {
  auto* p = static_cast<std::uint8_t*>(ptr);
  for_sampled_bytes(bytes, [&](std::int64_t i) { p[i] = pattern_byte(tag, i); });
}

inline bool has_pattern(const void* ptr, std::int64_t bytes, std::uint64_t tag) {
  const auto* p = static_cast<const std::uint8_t*>(ptr);
  bool intact = true;
  for_sampled_bytes(bytes,
                    [&](std::int64_t i) { intact = intact && p[i] == pattern_byte(tag, i); });
  return intact;
}

// Live blocks by address, to check that a new block overlaps none.
class LiveBlocks {
 public:
  // Returns false when [ptr, ptr + bytes) overlaps a live block.
  bool insert(const void* ptr, std::int64_t bytes) {
    const auto begin = reinterpret_cast<std::uintptr_t>(ptr);
    const auto end = begin + static_cast<std::uintptr_t>(bytes);
    auto next = blocks_.lower_bound(begin);
    if (next != blocks_.end() && next->first < end) return false;
    if (next != blocks_.begin() && std::prev(next)->second > begin) return false;
    blocks_.emplace(begin, end);
    return true;
  }
  void erase(const void* ptr) { blocks_.erase(reinterpret_cast<std::uintptr_t>(ptr)); }
  std::size_t size() const { return blocks_.size(); }

 private:
  std::map<std::uintptr_t, std::uintptr_t> blocks_;  // begin -> end
};

inline bool is_aligned(const void* ptr, std::int64_t alignment) {
  return reinterpret_cast<std::uintptr_t>(ptr) % static_cast<std::uintptr_t>(alignment) == 0;
}

// APO_STRESS_SCALE multiplies the iteration counts of the stress and property tests (default 1).
inline int stress_scale() {
  const char* value = std::getenv("APO_STRESS_SCALE");
  const int scale = value != nullptr ? std::atoi(value) : 1;
  return scale > 0 ? scale : 1;
}

}  // namespace apo::memory::testing

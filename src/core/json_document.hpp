#pragma once

// Parsing JSON with comments into a tree that remembers the line of every key. Private to src/:
// the public headers never expose nlohmann::json.

#include <cstddef>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "apo/core/config.hpp"

namespace apo::detail {

using Json = nlohmann::ordered_json;

/// Maps byte offsets of a text to 1-based lines and columns.
class LineIndex {
 public:
  explicit LineIndex(std::string_view text);
  /// Line and column of the byte at `offset` (clamped to the text).
  std::pair<int, int> locate(std::size_t offset) const;

 private:
  std::vector<std::size_t> line_starts_;
};

/// A parsed JSON document: its tree, the line of each key path ("a.b", "a.list[2]") and the
/// problems met while parsing (syntax errors, duplicate keys, nesting too deep).
struct JsonDocument {
  std::string source;
  Json root;
  std::map<std::string, int, std::less<>> lines;
  std::vector<ConfigProblem> problems;

  /// Line of `key_path`, or 0 when it has none.
  int line_of(std::string_view key_path) const;
};

/// Largest configuration text accepted; configs are small and a huge file is a mistake.
inline constexpr std::size_t kMaxConfigBytes = 16u << 20;

/// Parses `text`, which may carry `//`, `/* */` and `#` comments. Never throws for bad input:
/// problems land in the document, and the tree is then incomplete.
JsonDocument parse_json_document(std::string_view text, std::string source);

/// How a JSON value reads in a message: `string "abc"`, `number 2.5`, `an object`.
std::string describe_json(const Json& value);

}  // namespace apo::detail

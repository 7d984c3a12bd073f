#include "json_document.hpp"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <deque>
#include <iterator>

#include <fmt/format.h>

namespace apo::detail {

LineIndex::LineIndex(std::string_view text) {
  line_starts_.push_back(0);
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\n') line_starts_.push_back(i + 1);
  }
}

std::pair<int, int> LineIndex::locate(std::size_t offset) const {
  const auto next = std::upper_bound(line_starts_.begin(), line_starts_.end(), offset);
  const auto line = static_cast<std::size_t>(std::distance(line_starts_.begin(), next));
  const std::size_t column = offset - line_starts_[line - 1] + 1;
  return {static_cast<int>(line), static_cast<int>(column)};
}

int JsonDocument::line_of(std::string_view key_path) const {
  const auto it = lines.find(key_path);
  return it == lines.end() ? 0 : it->second;
}

namespace {

// Replaces every comment with spaces (keeping newlines), so that the strict parser sees plain
// JSON at the same lines and columns. Returns the offset of an unterminated block comment, or
// npos.
std::size_t blank_comments(std::string& text) {
  enum class State { code, string, line_comment, block_comment } state = State::code;
  std::size_t block_start = std::string::npos;
  for (std::size_t i = 0; i < text.size(); ++i) {
    char& c = text[i];
    switch (state) {
      case State::code:
        if (c == '"') {
          state = State::string;
        } else if (c == '#') {
          state = State::line_comment;
          c = ' ';
        } else if (c == '/' && i + 1 < text.size() && text[i + 1] == '/') {
          state = State::line_comment;
          c = ' ';
        } else if (c == '/' && i + 1 < text.size() && text[i + 1] == '*') {
          state = State::block_comment;
          block_start = i;
          c = ' ';
          text[++i] = ' ';
        }
        break;
      case State::string:
        if (c == '\\') {
          ++i;  // the escaped character cannot end the string
        } else if (c == '"' || c == '\n') {
          state = State::code;  // a newline inside a string is a syntax error the parser reports
        }
        break;
      case State::line_comment:
        if (c == '\n') {
          state = State::code;
        } else {
          c = ' ';
        }
        break;
      case State::block_comment:
        if (c == '*' && i + 1 < text.size() && text[i + 1] == '/') {
          state = State::code;
          c = ' ';
          text[++i] = ' ';
        } else if (c != '\n') {
          c = ' ';
        }
        break;
    }
  }
  return state == State::block_comment ? block_start : std::string::npos;
}

// A character iterator that records how far the parser has read, so the SAX handler knows where
// each key ended.
class TrackingIterator {
 public:
  using iterator_category = std::forward_iterator_tag;
  using value_type = char;
  using difference_type = std::ptrdiff_t;
  using pointer = const char*;
  using reference = const char&;

  TrackingIterator() = default;
  TrackingIterator(const char* position, const char** furthest)
      : position_(position), furthest_(furthest) {}

  reference operator*() const {
    if (position_ >= *furthest_) *furthest_ = position_ + 1;
    return *position_;
  }
  TrackingIterator& operator++() {
    ++position_;
    return *this;
  }
  TrackingIterator operator++(int) {
    TrackingIterator copy = *this;
    ++position_;
    return copy;
  }
  bool operator==(const TrackingIterator& other) const { return position_ == other.position_; }

 private:
  const char* position_ = nullptr;
  const char** furthest_ = nullptr;
};

constexpr std::size_t kMaxDepth = 64;

// Builds the tree, records the line of each key and array element, and rejects duplicate keys.
class DocumentBuilder : public nlohmann::json_sax<Json> {
 public:
  DocumentBuilder(JsonDocument& doc, const char* begin, const char** furthest,
                  const LineIndex& index)
      : doc_(doc), begin_(begin), furthest_(furthest), index_(index) {}

  bool null() override { return put(Json(nullptr)); }
  bool boolean(bool value) override { return put(Json(value)); }
  bool number_integer(number_integer_t value) override { return put(Json(value)); }
  bool number_unsigned(number_unsigned_t value) override { return put(Json(value)); }
  bool number_float(number_float_t value, const string_t&) override { return put(Json(value)); }
  bool string(string_t& value) override { return put(Json(std::move(value))); }
  bool binary(binary_t&) override { return put(Json(nullptr)); }

  bool start_object(std::size_t) override { return open(Json::object()); }
  bool start_array(std::size_t) override { return open(Json::array()); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }

  bool key(string_t& key) override {
    Frame& frame = frames_.back();
    std::string path = frame.path.empty() ? key : frame.path + "." + key;
    const int line = current_line();
    if (frame.node->contains(key)) {
      doc_.problems.push_back(
          {{doc_.source, line, 0},
           path,
           fmt::format("duplicate key (first set on line {})", doc_.line_of(path))});
    } else {
      doc_.lines.emplace(path, line);
    }
    pending_key_ = std::move(key);
    pending_path_ = std::move(path);
    return true;
  }

  bool parse_error(std::size_t position, const std::string& last_token,
                   const nlohmann::detail::exception& error) override {
    // nlohmann counts the characters read, up to the end of the offending token: point at the
    // token's first character.
    // nlohmann restarts the token text for strings, numbers and literals only: before a
    // structural character it still holds what was read since the last such token.
    const bool structural = !last_token.empty() && std::strchr("{}[]:,", last_token.back());
    const std::size_t length = structural ? 1 : std::max<std::size_t>(1, raw_length(last_token));
    std::size_t start = position >= length ? position - length : 0;
    while (start + 1 < position && std::isspace(static_cast<unsigned char>(begin_[start]))) {
      ++start;
    }
    const auto [line, column] = index_.locate(start);
    std::string message = error.what();
    if (const auto at = message.find("syntax error"); at != std::string::npos) {
      message = message.substr(at);
    } else if (const auto colon = message.find(": "); colon != std::string::npos) {
      message = "syntax error: " + message.substr(colon + 2);
    }
    doc_.problems.push_back({{doc_.source, line, column}, "", std::move(message)});
    return false;
  }

 private:
  struct Frame {
    Json* node;
    std::string path;
  };

  // Length in the text of a token as nlohmann prints it: control characters appear as "<U+000A>".
  static std::size_t raw_length(const std::string& token) {
    std::size_t length = 0;
    for (std::size_t i = 0; i < token.size(); ++length) {
      const bool escaped =
          token.compare(i, 3, "<U+") == 0 && i + 8 <= token.size() && token[i + 7] == '>';
      i += escaped ? 8 : 1;
    }
    return length;
  }

  int current_line() const {
    // The last character read ends the current token (a number's delimiter at worst, which sits
    // on the number's line unless it is a newline: step back over whitespace).
    const char* p = *furthest_ - 1;
    while (p > begin_ && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) --p;
    return index_.locate(static_cast<std::size_t>(p - begin_)).first;
  }

  // Where the next value goes, and its key path; nullptr for the root.
  Json* slot(std::string& path) {
    if (frames_.empty()) {
      path.clear();
      return &doc_.root;
    }
    Frame& frame = frames_.back();
    if (frame.node->is_array()) {
      path = fmt::format("{}[{}]", frame.path, frame.node->size());
      doc_.lines.emplace(path, current_line());
      frame.node->push_back(nullptr);
      return &frame.node->back();
    }
    path = std::move(pending_path_);
    if (frame.node->contains(pending_key_)) {
      return &discarded_.emplace_back();  // a duplicate, reported in key(): keep the first value
    }
    return &(*frame.node)[pending_key_];
  }

  bool put(Json value) {
    std::string path;
    *slot(path) = std::move(value);
    return true;
  }

  bool open(Json container) {
    if (frames_.size() >= kMaxDepth) {
      doc_.problems.push_back({{doc_.source, current_line(), 0},
                               "",
                               fmt::format("nested deeper than {} levels", kMaxDepth)});
      return false;
    }
    std::string path;
    Json* node = slot(path);
    *node = std::move(container);
    frames_.push_back({node, std::move(path)});
    return true;
  }

  bool close() {
    frames_.pop_back();
    return true;
  }

  JsonDocument& doc_;
  const char* begin_;
  const char** furthest_;
  const LineIndex& index_;
  std::vector<Frame> frames_;
  std::string pending_key_;
  std::string pending_path_;
  std::deque<Json> discarded_;  // deque: frames may point into it while it grows
};

}  // namespace

JsonDocument parse_json_document(std::string_view text, std::string source) {
  JsonDocument doc;
  doc.source = std::move(source);
  if (text.size() > kMaxConfigBytes) {
    doc.problems.push_back(
        {{doc.source, 0, 0},
         "",
         fmt::format("{} bytes is too large for a configuration (at most {} bytes)", text.size(),
                     kMaxConfigBytes)});
    return doc;
  }
  std::string plain(text);
  const LineIndex index(plain);
  if (const std::size_t open = blank_comments(plain); open != std::string::npos) {
    const auto [line, column] = index.locate(open);
    doc.problems.push_back({{doc.source, line, column}, "", "unterminated /* comment"});
    return doc;
  }
  const char* furthest = plain.data();
  DocumentBuilder builder(doc, plain.data(), &furthest, index);
  Json::sax_parse(TrackingIterator(plain.data(), &furthest),
                  TrackingIterator(plain.data() + plain.size(), &furthest), &builder,
                  nlohmann::json::input_format_t::json, /*strict=*/true);
  return doc;
}

std::string describe_json(const Json& value) {
  switch (value.type()) {
    case Json::value_t::null:
      return "null";
    case Json::value_t::boolean:
      return fmt::format("boolean {}", value.get<bool>());
    case Json::value_t::string: {
      std::string text = value.get<std::string>();
      if (text.size() > 40) text = text.substr(0, 37) + "...";
      return fmt::format("string \"{}\"", text);
    }
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::number_float:
      return fmt::format("number {}", value.dump());
    case Json::value_t::object:
      return "an object";
    case Json::value_t::array:
      return "an array";
    default:
      return "a binary value";
  }
}

}  // namespace apo::detail

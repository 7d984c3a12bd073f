// The safetensors header: parsing and validation (no libtorch here, so the fuzz target can
// compile this file on its own).

#include "apo/models/safetensors_format.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <set>
#include <unordered_set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apo/core/error.hpp"

namespace apo::models {

static_assert(std::endian::native == std::endian::little,
              "safetensors is little-endian; apo reads it in place");

namespace {

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  std::int64_t size;
};

constexpr std::array<DTypeInfo, 15> kDTypes{{
    {DType::BOOL, "BOOL", 1},
    {DType::U8, "U8", 1},
    {DType::I8, "I8", 1},
    {DType::I16, "I16", 2},
    {DType::U16, "U16", 2},
    {DType::I32, "I32", 4},
    {DType::U32, "U32", 4},
    {DType::I64, "I64", 8},
    {DType::U64, "U64", 8},
    {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},
    {DType::F32, "F32", 4},
    {DType::F64, "F64", 8},
    {DType::F8_E4M3, "F8_E4M3", 1},
    {DType::F8_E5M2, "F8_E5M2", 1},
}};

const DTypeInfo& info(DType dtype) {
  return kDTypes[static_cast<std::size_t>(dtype)];
}

constexpr std::string_view kMetadataKey = "__metadata__";

[[noreturn]] void corrupt(const std::string& file, std::string message) {
  throw Error(ErrorCode::Corrupt, std::move(message), file);
}

// A non-negative integer that fits std::int64_t, or nothing.
std::optional<std::int64_t> non_negative(const nlohmann::json& value) {
  if (value.is_number_unsigned()) {
    const auto v = value.get<std::uint64_t>();
    if (v > static_cast<std::uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<std::int64_t>(v);
  }
  if (value.is_number_integer()) {
    const auto v = value.get<std::int64_t>();
    if (v < 0) return std::nullopt;
    return v;
  }
  return std::nullopt;
}

TensorEntry parse_entry(const std::string& name, const nlohmann::json& value,
                        std::int64_t data_bytes, std::int64_t data_offset,
                        const std::string& file) {
  auto bad = [&](const std::string& what) {
    corrupt(file, fmt::format("header: tensor '{}': {}", name, what));
  };
  if (!value.is_object()) bad("expected an object with dtype, shape and data_offsets");
  for (const auto& item : value.items()) {
    if (item.key() != "dtype" && item.key() != "shape" && item.key() != "data_offsets") {
      bad(fmt::format("unknown field \"{}\"", item.key()));
    }
  }
  TensorEntry entry;
  entry.name = name;

  const auto dtype = value.find("dtype");
  if (dtype == value.end() || !dtype->is_string()) bad("dtype missing or not a string");
  const auto parsed = parse_dtype(dtype->get_ref<const std::string&>());
  if (!parsed) bad(fmt::format("unknown dtype \"{}\"", dtype->get_ref<const std::string&>()));
  entry.dtype = *parsed;

  const auto shape = value.find("shape");
  if (shape == value.end() || !shape->is_array()) bad("shape missing or not a list");
  if (shape->size() > 64) bad(fmt::format("{} dimensions (at most 64)", shape->size()));
  std::int64_t numel = 1;
  bool overflow = false;
  for (const auto& dim : *shape) {
    const auto extent = non_negative(dim);
    if (!extent) bad(fmt::format("shape entry {} is not a non-negative integer", dim.dump()));
    entry.shape.push_back(*extent);
    overflow = overflow || __builtin_mul_overflow(numel, *extent, &numel);
  }

  const auto offsets = value.find("data_offsets");
  if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2) {
    bad("data_offsets missing or not [begin, end]");
  }
  const auto begin = non_negative((*offsets)[0]);
  const auto end = non_negative((*offsets)[1]);
  if (!begin || !end) bad("data_offsets are not non-negative integers");
  if (*begin > *end) bad(fmt::format("data_offsets [{}, {}] end before they begin", *begin, *end));
  if (*end > data_bytes) {
    bad(fmt::format("data_offsets [{}, {}] run past the data section ({} bytes; file offset {})",
                    *begin, *end, data_bytes, data_offset + *end));
  }
  entry.data_begin = *begin;
  entry.data_end = *end;

  std::int64_t expected = 0;
  if (overflow || __builtin_mul_overflow(numel, info(entry.dtype).size, &expected) ||
      expected != entry.bytes()) {
    bad(fmt::format("shape {} of {} needs {} bytes, but data_offsets [{}, {}] hold {}",
                    value["shape"].dump(), to_string(entry.dtype),
                    overflow ? std::string("too many") : std::to_string(expected), *begin, *end,
                    entry.bytes()));
  }
  return entry;
}

}  // namespace

std::string_view to_string(DType dtype) noexcept {
  return info(dtype).name;
}

std::optional<DType> parse_dtype(std::string_view name) noexcept {
  for (const auto& entry : kDTypes) {
    if (entry.name == name) return entry.dtype;
  }
  return std::nullopt;
}

std::int64_t element_size(DType dtype) noexcept {
  return info(dtype).size;
}

std::int64_t read_header_length(std::span<const std::byte> first_bytes, std::int64_t file_bytes,
                                const std::string& file_name) {
  if (file_bytes < 8 || first_bytes.size() < 8) {
    corrupt(file_name, fmt::format("{} bytes is too short for a safetensors file (at least 8: "
                                   "the header length)",
                                   file_bytes));
  }
  std::uint64_t length = 0;
  std::memcpy(&length, first_bytes.data(), sizeof(length));
  if (length > static_cast<std::uint64_t>(kMaxHeaderBytes)) {
    corrupt(file_name, fmt::format("header length {} at offset 0 exceeds the {}-byte limit", length,
                                   kMaxHeaderBytes));
  }
  if (static_cast<std::int64_t>(length) > file_bytes - 8) {
    corrupt(file_name, fmt::format("header length {} at offset 0 runs past the end of the "
                                   "{}-byte file",
                                   length, file_bytes));
  }
  return static_cast<std::int64_t>(length);
}

SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file_prefix,
                                           std::int64_t file_bytes, const std::string& file_name) {
  SafetensorsHeader header;
  header.header_bytes = read_header_length(file_prefix, file_bytes, file_name);
  if (static_cast<std::int64_t>(file_prefix.size()) < 8 + header.header_bytes) {
    corrupt(file_name, fmt::format("truncated: the header needs {} bytes, {} read",
                                   8 + header.header_bytes, file_prefix.size()));
  }
  header.data_bytes = file_bytes - header.data_offset();

  const char* text = reinterpret_cast<const char*>(file_prefix.data()) + 8;
  // Duplicate tensor names would silently shadow each other: reject them while parsing.
  std::unordered_set<std::string> top_level_keys;
  std::string duplicate;
  const auto reject_duplicates = [&](int depth, nlohmann::json::parse_event_t event,
                                     nlohmann::json& parsed) {
    if (depth == 1 && event == nlohmann::json::parse_event_t::key) {
      if (!top_level_keys.insert(parsed.get<std::string>()).second && duplicate.empty()) {
        duplicate = parsed.get<std::string>();
      }
    }
    return true;
  };
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text, text + header.header_bytes, reject_duplicates);
  } catch (const nlohmann::json::parse_error& error) {
    corrupt(file_name, fmt::format("header is not valid JSON (file offset {}): {}", 8 + error.byte,
                                   error.what()));
  } catch (const nlohmann::json::exception& error) {  // a number too large, say
    corrupt(file_name, fmt::format("header is not valid JSON: {}", error.what()));
  }
  if (!duplicate.empty()) corrupt(file_name, fmt::format("header: '{}' appears twice", duplicate));
  if (!json.is_object()) corrupt(file_name, "header: expected a JSON object at offset 8");

  for (const auto& item : json.items()) {
    if (item.key() == kMetadataKey) {
      if (!item.value().is_object()) corrupt(file_name, "header: __metadata__ is not an object");
      for (const auto& meta : item.value().items()) {
        if (!meta.value().is_string()) {
          corrupt(file_name,
                  fmt::format("header: __metadata__[\"{}\"] is not a string", meta.key()));
        }
        header.metadata.emplace(meta.key(), meta.value().get<std::string>());
      }
      continue;
    }
    header.tensors.push_back(
        parse_entry(item.key(), item.value(), header.data_bytes, header.data_offset(), file_name));
  }

  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const TensorEntry& a, const TensorEntry& b) {
              return std::tie(a.data_begin, a.data_end) < std::tie(b.data_begin, b.data_end);
            });
  std::int64_t expected_begin = 0;
  const TensorEntry* previous = nullptr;
  for (const TensorEntry& entry : header.tensors) {
    if (entry.data_begin < expected_begin) {
      corrupt(file_name, fmt::format("header: tensor '{}' at data offset {} overlaps '{}', which "
                                     "ends at {} (file offset {})",
                                     entry.name, entry.data_begin, previous->name, expected_begin,
                                     header.data_offset() + entry.data_begin));
    }
    if (entry.data_begin > expected_begin) {
      corrupt(file_name, fmt::format("header: {} unused bytes before tensor '{}' (file offset {})",
                                     entry.data_begin - expected_begin, entry.name,
                                     header.data_offset() + expected_begin));
    }
    expected_begin = entry.data_end;
    previous = &entry;
  }
  if (expected_begin != header.data_bytes) {
    corrupt(file_name,
            fmt::format("{} bytes after the last tensor are not described by the "
                        "header (file offset {})",
                        header.data_bytes - expected_begin, header.data_offset() + expected_begin));
  }
  return header;
}

std::string serialize_safetensors_header(const std::vector<TensorEntry>& entries,
                                         const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json json = nlohmann::ordered_json::object();
  if (!metadata.empty()) json[std::string(kMetadataKey)] = metadata;
  for (const TensorEntry& entry : entries) {
    json[entry.name] = {{"dtype", to_string(entry.dtype)},
                        {"shape", entry.shape},
                        {"data_offsets", {entry.data_begin, entry.data_end}}};
  }
  std::string text = json.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

}  // namespace apo::models

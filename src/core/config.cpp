// Loading, validating and writing the typed configuration (apo/core/config.hpp).

#include "apo/core/config.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "apo/core/machine.hpp"
#include "json_document.hpp"
#include "text.hpp"

namespace apo {

using detail::describe_json;
using detail::Json;
using detail::JsonDocument;

std::string SourceLocation::to_string() const {
  if (line <= 0) return source;
  if (column <= 0) return fmt::format("{}:{}", source, line);
  return fmt::format("{}:{}:{}", source, line, column);
}

std::string ConfigProblem::to_string() const {
  if (key_path.empty()) return fmt::format("{}: {}", where.to_string(), message);
  return fmt::format("{}: {}: {}", where.to_string(), key_path, message);
}

namespace {

std::string join_problems(const std::vector<ConfigProblem>& problems) {
  std::string text;
  for (const auto& problem : problems) {
    if (!text.empty()) text += '\n';
    text += problem.to_string();
  }
  return text;
}

}  // namespace

ConfigError::ConfigError(std::vector<ConfigProblem> problems)
    : Error(ErrorCode::InvalidConfig, join_problems(problems)), problems_(std::move(problems)) {}

const SourceLocation* LoadedConfig::origin(std::string_view key_path) const {
  const auto it = origins.find(key_path);
  return it == origins.end() ? nullptr : &it->second;
}

namespace {

// ---------------------------------------------------------------------------------------------
// Key catalogue: every key path of the schema, for suggestions.

struct NoLimits {};

class KeyCollector {
 public:
  explicit KeyCollector(std::string prefix = {}) : prefix_(std::move(prefix)) {}

  template <class T, class Limits = NoLimits>
  void field(std::string_view key, const T&, Limits = {}) {
    names.emplace_back(key);
    paths.push_back(prefix_ + std::string(key));
  }
  template <class Block>
  void block(std::string_view key, const Block& block) {
    names.emplace_back(key);
    KeyCollector inner(prefix_ + std::string(key) + ".");
    Block::fields(block, inner);
    paths.insert(paths.end(), inner.paths.begin(), inner.paths.end());
  }

  std::vector<std::string> names;  // this level's keys
  std::vector<std::string> paths;  // every leaf path below
 private:
  std::string prefix_;
};

const std::vector<std::string>& all_leaf_paths() {
  static const std::vector<std::string> paths = [] {
    KeyCollector collector;
    const Config config;
    Config::fields(config, collector);
    return collector.paths;
  }();
  return paths;
}

template <class Block>
std::vector<std::string> key_names(const Block& block) {
  KeyCollector collector;
  Block::fields(block, collector);
  return collector.names;
}

// ---------------------------------------------------------------------------------------------
// Aliases: keys the guide writes in one place for facts that live in another.

struct Alias {
  std::string_view written;    // "settings.batch_size"
  std::string_view canonical;  // "performance_optimization.batch_size"
};

constexpr std::array<Alias, 5> kAliases{{
    {"settings.model_precision", "performance_optimization.model_precision"},
    {"settings.batch_size", "performance_optimization.batch_size"},
    {"settings.enable_attention_slicing", "attention_optimization.enable_attention_slicing"},
    {"memory_optimization.enable_attention_slicing",
     "attention_optimization.enable_attention_slicing"},
    {"memory_optimization.attention_slice_size", "attention_optimization.slice_size"},
}};

// The rest of a profile's "settings" block is the generation block.
constexpr std::string_view kProfileSettings = "settings";
constexpr std::string_view kGenerationBlock = "generation";

std::pair<std::string, std::string> split_path(std::string_view path) {
  const auto dot = path.find('.');
  return {std::string(path.substr(0, dot)), std::string(path.substr(dot + 1))};
}

// A document after aliases moved: what each canonical path was written as, for messages.
struct NormalizedDocument {
  JsonDocument doc;
  std::map<std::string, std::string, std::less<>> written_as;

  std::string display(std::string_view path) const {
    const auto it = written_as.find(path);
    return it == written_as.end() ? std::string(path) : it->second;
  }
};

void move_key(NormalizedDocument& nd, const std::string& written_path,
              const std::string& canonical_path) {
  Json& root = nd.doc.root;
  const auto [from_block, from_key] = split_path(written_path);
  const auto [to_block, to_key] = split_path(canonical_path);
  Json& source = root[from_block];
  Json value = std::move(source[from_key]);
  source.erase(from_key);
  const int line = nd.doc.line_of(written_path);
  if (!root.contains(to_block)) root[to_block] = Json::object();
  Json& target = root[to_block];
  if (!target.is_object()) return;  // reported as a wrong type when the block is read
  if (target.contains(to_key)) {
    if (target[to_key] != value) {
      nd.doc.problems.push_back(
          {{nd.doc.source, line, 0},
           written_path,
           fmt::format("conflicts with {} on line {} (the same setting; give it once)",
                       canonical_path, nd.doc.line_of(canonical_path))});
    }
    return;
  }
  target[to_key] = std::move(value);
  nd.doc.lines[canonical_path] = line;
  nd.written_as[canonical_path] = written_path;
}

NormalizedDocument normalize(JsonDocument doc) {
  NormalizedDocument nd{std::move(doc), {}};
  Json& root = nd.doc.root;
  if (!root.is_object()) return nd;
  for (const Alias& alias : kAliases) {
    const auto [block, key] = split_path(alias.written);
    if (root.contains(block) && root[block].is_object() && root[block].contains(key)) {
      move_key(nd, std::string(alias.written), std::string(alias.canonical));
    }
  }
  const std::string settings(kProfileSettings);
  if (root.contains(settings) && root[settings].is_object()) {
    std::vector<std::string> keys;
    for (const auto& item : root[settings].items()) keys.push_back(item.key());
    for (const auto& key : keys) {
      move_key(nd, settings + "." + key, std::string(kGenerationBlock) + "." + key);
    }
    root.erase(settings);
  }
  return nd;
}

// Names a "settings" key may take, for suggestions on a misspelt one.
std::vector<std::string> profile_settings_names() {
  std::vector<std::string> names = key_names(GenerationSettings{});
  for (const Alias& alias : kAliases) {
    if (alias.written.starts_with(kProfileSettings)) {
      names.emplace_back(alias.written.substr(kProfileSettings.size() + 1));
    }
  }
  return names;
}

// ---------------------------------------------------------------------------------------------
// Reading a document into a Config.

struct ReadContext {
  const NormalizedDocument& nd;
  LoadedConfig& loaded;
  std::vector<ConfigProblem>& problems;

  SourceLocation where(const std::string& path) const {
    return {nd.doc.source, nd.doc.line_of(path), 0};
  }
  void problem(const std::string& path, std::string message) const {
    problems.push_back({where(path), nd.display(path), std::move(message)});
  }
};

std::string expected_range(const Range& range) {
  const bool has_min = std::isfinite(range.min);
  const bool has_max = std::isfinite(range.max);
  if (has_min && has_max) {
    if (range.min_exclusive)
      return fmt::format("more than {} and at most {}", range.min, range.max);
    return fmt::format("{} to {}", range.min, range.max);
  }
  if (has_min)
    return fmt::format("{} {}", range.min_exclusive ? "more than" : "at least", range.min);
  if (has_max) return fmt::format("at most {}", range.max);
  return "any number";
}

bool in_range(double value, const Range& range) {
  if (range.min_exclusive ? !(value > range.min) : !(value >= range.min)) return false;
  return value <= range.max;
}

class Reader {
 public:
  Reader(const Json& object, std::string prefix, const ReadContext& ctx)
      : object_(object), prefix_(std::move(prefix)), ctx_(ctx) {}

  template <class T, class Limits = NoLimits>
  void field(std::string_view key, T& member, Limits limits = {}) {
    const Json* value = take(key);
    if (value == nullptr) return;
    const std::string path = prefix_ + std::string(key);
    T parsed = member;
    if (read(*value, parsed, limits, path)) {
      member = std::move(parsed);
      ctx_.loaded.origins[path] = ctx_.where(path);
    }
  }

  template <class Block>
  void block(std::string_view key, Block& member) {
    const Json* value = take(key);
    if (value == nullptr) return;
    const std::string path = prefix_ + std::string(key);
    if (!value->is_object()) {
      ctx_.problem(path,
                   fmt::format("wrong type (expected an object, got {})", describe_json(*value)));
      return;
    }
    Reader inner(*value, path + ".", ctx_);
    Block::fields(member, inner);
    inner.report_unknown(key_names(member));
  }

  // Every key of the object that no field took is unknown: suggest the nearest name at this
  // level, or the block that has a key of exactly this name.
  void report_unknown(const std::vector<std::string>& names) const {
    for (const auto& item : object_.items()) {
      const std::string& key = item.key();
      if (std::find(taken_.begin(), taken_.end(), key) != taken_.end()) continue;
      const std::string path = prefix_ + key;
      const std::string display = ctx_.nd.display(path);
      std::vector<std::string> candidates = names;
      if (display.starts_with(std::string(kProfileSettings) + ".")) {
        candidates = profile_settings_names();
      }
      std::string hint;
      if (auto near = detail::nearest_name(key, candidates)) {
        hint = fmt::format(" (did you mean \"{}\"?)", *near);
      } else {
        for (const auto& leaf : all_leaf_paths()) {
          if (leaf.ends_with("." + key)) {
            hint = fmt::format(" (did you mean \"{}\"?)", leaf);
            break;
          }
        }
      }
      ctx_.problem(path, "unknown key" + hint);
    }
  }

 private:
  const Json* take(std::string_view key) {
    const auto it = object_.find(key);
    if (it == object_.end()) return nullptr;
    taken_.emplace_back(key);
    return &*it;
  }

  bool type_error(const std::string& path, std::string_view expected, const Json& got) const {
    ctx_.problem(path,
                 fmt::format("wrong type (expected {}, got {})", expected, describe_json(got)));
    return false;
  }

  bool range_error(const std::string& path, const Range& range, const Json& got) const {
    ctx_.problem(
        path, fmt::format("out of range (expected {}, got {})", expected_range(range), got.dump()));
    return false;
  }

  bool read(const Json& value, bool& out, NoLimits, const std::string& path) const {
    if (!value.is_boolean()) return type_error(path, "true or false", value);
    out = value.get<bool>();
    return true;
  }

  bool read(const Json& value, int& out, const Range& range, const std::string& path) const {
    if (!value.is_number()) return type_error(path, "an integer", value);
    const double number = value.get<double>();
    if (std::trunc(number) != number) return type_error(path, "an integer", value);
    if (!in_range(number, range)) return range_error(path, range, value);
    out = static_cast<int>(number);
    return true;
  }

  bool read(const Json& value, int& out, NoLimits, const std::string& path) const {
    return read(value, out, Range{}, path);
  }

  bool read(const Json& value, double& out, NoLimits, const std::string& path) const {
    return read(value, out, Range{}, path);
  }

  bool read(const Json& value, double& out, const Range& range, const std::string& path) const {
    if (!value.is_number()) return type_error(path, "a number", value);
    const double number = value.get<double>();
    if (!std::isfinite(number)) return type_error(path, "a finite number", value);
    if (!in_range(number, range)) return range_error(path, range, value);
    out = number;
    return true;
  }

  bool read(const Json& value, std::string& out, NonEmpty, const std::string& path) const {
    if (!value.is_string()) return type_error(path, "a string", value);
    if (value.get_ref<const std::string&>().empty()) {
      ctx_.problem(path, "empty (expected a non-empty string)");
      return false;
    }
    out = value.get<std::string>();
    return true;
  }

  template <NamedEnum E>
  bool read(const Json& value, E& out, NoLimits, const std::string& path) const {
    const std::string_view noun = EnumTraits<E>::noun;
    if (!value.is_string()) return type_error(path, fmt::format("a {} name", noun), value);
    const auto& name = value.get_ref<const std::string&>();
    if (auto parsed = parse_enum<E>(name)) {
      out = *parsed;
      return true;
    }
    std::vector<std::string> names;
    for (const auto& entry : EnumTraits<E>::entries) names.emplace_back(entry.name);
    std::string hint;
    if (auto near = detail::nearest_name(name, names)) {
      hint = fmt::format("; did you mean \"{}\"?", *near);
    }
    ctx_.problem(path, fmt::format("unknown {} (expected one of {}, got \"{}\"{})", noun,
                                   fmt::join(names, ", "), name, hint));
    return false;
  }

  template <class T, class Limits>
  bool read(const Json& value, Auto<T>& out, const Limits& limits, const std::string& path) const {
    if (value.is_string()) {
      if (value.get_ref<const std::string&>() != "auto") {
        return type_error(path, "a number or \"auto\"", value);
      }
      out = Auto<T>();
      return true;
    }
    T parsed{};
    if (!read(value, parsed, limits, path)) return false;
    out = Auto<T>(parsed);
    return true;
  }

  template <class T, class Limits>
  bool read(const Json& value, std::optional<T>& out, const Limits& limits,
            const std::string& path) const {
    if (value.is_null()) {
      out.reset();
      return true;
    }
    T parsed{};
    if (!read(value, parsed, limits, path)) return false;
    out = std::move(parsed);
    return true;
  }

  // Lists of regular expressions (keep_full_precision): strings that compile as ECMAScript.
  bool read(const Json& value, std::vector<std::string>& out, RegexList,
            const std::string& path) const {
    if (!value.is_array()) return type_error(path, "a list of regular expressions", value);
    std::vector<std::string> patterns;
    bool ok = true;
    for (std::size_t i = 0; i < value.size(); ++i) {
      const std::string element_path = fmt::format("{}[{}]", path, i);
      std::string pattern;
      if (!read(value[i], pattern, NonEmpty{}, element_path)) {
        ok = false;
        continue;
      }
      try {
        const std::regex compiled(pattern, std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        ctx_.problem(element_path, fmt::format("not a regular expression ({})", e.what()));
        ok = false;
        continue;
      }
      patterns.push_back(std::move(pattern));
    }
    if (ok) out = std::move(patterns);
    return ok;
  }

  // Core lists (cpu_affinity): non-empty, integers in range, no repeats.
  bool read(const Json& value, std::vector<int>& out, const Range& range,
            const std::string& path) const {
    if (!value.is_array()) return type_error(path, "a list of core numbers", value);
    if (value.empty()) {
      ctx_.problem(path, "empty (expected at least one core; write null to use every core)");
      return false;
    }
    std::vector<int> cores;
    bool ok = true;
    for (std::size_t i = 0; i < value.size(); ++i) {
      const std::string element_path = fmt::format("{}[{}]", path, i);
      int core = 0;
      if (!read(value[i], core, range, element_path)) {
        ok = false;
      } else if (std::find(cores.begin(), cores.end(), core) != cores.end()) {
        ctx_.problem(element_path, fmt::format("core {} is listed twice", core));
        ok = false;
      } else {
        cores.push_back(core);
      }
    }
    if (ok) {
      out = std::move(cores);
      for (std::size_t i = 0; i < out.size(); ++i) {
        const std::string element_path = fmt::format("{}[{}]", path, i);
        ctx_.loaded.origins[element_path] = ctx_.where(element_path);
      }
    }
    return ok;
  }

  const Json& object_;
  std::string prefix_;
  const ReadContext& ctx_;
  std::vector<std::string> taken_;
};

void apply_document(const NormalizedDocument& nd, LoadedConfig& loaded,
                    std::vector<ConfigProblem>& problems) {
  const ReadContext ctx{nd, loaded, problems};
  if (!nd.doc.root.is_object()) {
    problems.push_back({{nd.doc.source, 1, 0},
                        "",
                        fmt::format("wrong type (expected an object at the top level, got {})",
                                    describe_json(nd.doc.root))});
    return;
  }
  Config& config = loaded.config;
  Reader reader(nd.doc.root, "", ctx);
  Config::fields(config, reader);
  reader.report_unknown(key_names(config));
}

// ---------------------------------------------------------------------------------------------
// Writing a Config as JSON.

class Writer {
 public:
  explicit Writer(Json& out) : out_(out) {}

  template <class T, class Limits = NoLimits>
  void field(std::string_view key, const T& member, Limits = {}) {
    out_[std::string(key)] = value(member);
  }
  template <class Block>
  void block(std::string_view key, const Block& member) {
    Json inner = Json::object();
    Writer writer(inner);
    Block::fields(member, writer);
    out_[std::string(key)] = std::move(inner);
  }

 private:
  static Json value(bool v) { return v; }
  static Json value(int v) { return v; }
  static Json value(double v) { return v; }
  static Json value(const std::string& v) { return v; }
  static Json value(const std::vector<int>& v) { return v; }
  static Json value(const std::vector<std::string>& v) { return v; }
  template <NamedEnum E>
  static Json value(E v) {
    return std::string(to_string(v));
  }
  template <class T>
  static Json value(const Auto<T>& v) {
    return v.is_auto() ? Json("auto") : value(*v.get());
  }
  template <class T>
  static Json value(const std::optional<T>& v) {
    return v ? value(*v) : Json(nullptr);
  }

  Json& out_;
};

Json config_to_json(const Config& config) {
  Json out = Json::object();
  Writer writer(out);
  Config::fields(config, writer);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Layers.

std::string read_text_file(const std::filesystem::path& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) {
    const bool missing = !std::filesystem::exists(path, ec);
    throw Error(missing ? ErrorCode::NotFound : ErrorCode::Io,
                missing ? "no such file" : "cannot read: " + ec.message(), path.string());
  }
  if (size > detail::kMaxConfigBytes) {
    throw Error(ErrorCode::InvalidConfig,
                fmt::format("{} bytes is too large for a configuration (at most {} bytes)", size,
                            detail::kMaxConfigBytes),
                path.string());
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::Io, "cannot open for reading", path.string());
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// "a.b=value" as a document {"a": {"b": value}}; the value is JSON when it parses, else a
// string (so "--set storage_optimization.temp_path=/fast/tmp" needs no quotes).
JsonDocument override_document(const std::string& assignment, const std::string& source) {
  JsonDocument doc;
  doc.source = source;
  const auto equals = assignment.find('=');
  const std::string path = assignment.substr(0, equals);
  std::vector<std::string> parts;
  std::stringstream stream(path);
  for (std::string part; std::getline(stream, part, '.');) parts.push_back(part);
  const bool empty_part =
      std::any_of(parts.begin(), parts.end(), [](auto& p) { return p.empty(); });
  if (equals == std::string::npos || parts.empty() || empty_part || path.back() == '.') {
    doc.problems.push_back({{source, 0, 0}, "", "expected key.path=value"});
    return doc;
  }
  const std::string text = assignment.substr(equals + 1);
  Json value = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = text;
  doc.root = Json::object();
  Json* node = &doc.root;
  for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
    node = &(*node)[parts[i]];
    *node = Json::object();
  }
  (*node)[parts.back()] = std::move(value);
  return doc;
}

void check_combinations(const LoadedConfig& loaded, std::vector<ConfigProblem>& problems) {
  const Config& c = loaded.config;
  auto located = [&](std::string_view path) {
    const SourceLocation* origin = loaded.origin(path);
    return origin ? *origin : SourceLocation{"<defaults>", 0, 0};
  };
  if (c.generation.use_fast_scheduler && c.generation.use_high_quality_scheduler) {
    problems.push_back({located("generation.use_high_quality_scheduler"),
                        "generation.use_high_quality_scheduler",
                        "contradicts generation.use_fast_scheduler (expected at most one of "
                        "the two, got both true)"});
  }
  if (c.performance.batch_size > c.performance.max_batch_size) {
    problems.push_back({located("performance_optimization.batch_size"),
                        "performance_optimization.batch_size",
                        fmt::format("above max_batch_size (expected at most {}, got {})",
                                    c.performance.max_batch_size, c.performance.batch_size)});
  }
}

}  // namespace

ConfigLoader& ConfigLoader::preset(std::string name) {
  layers_.push_back({Layer::Kind::preset, std::move(name), {}});
  return *this;
}

ConfigLoader& ConfigLoader::preset_json(std::string json, std::string source_name) {
  layers_.push_back({Layer::Kind::preset_json, std::move(json), std::move(source_name)});
  return *this;
}

ConfigLoader& ConfigLoader::file(std::filesystem::path path) {
  layers_.push_back({Layer::Kind::file, path.string(), path.string()});
  return *this;
}

ConfigLoader& ConfigLoader::text(std::string json, std::string source_name) {
  layers_.push_back({Layer::Kind::text, std::move(json), std::move(source_name)});
  return *this;
}

ConfigLoader& ConfigLoader::set(std::string assignment) {
  std::string source = "override '" + assignment + "'";
  layers_.push_back({Layer::Kind::override_value, std::move(assignment), std::move(source)});
  return *this;
}

ConfigLoader& ConfigLoader::check_against(const MachineInfo& machine) {
  machine_ = &machine;
  return *this;
}

LoadedConfig ConfigLoader::load() const {
  LoadedConfig loaded;
  std::vector<ConfigProblem> problems;
  auto apply = [&](JsonDocument doc) {
    if (!doc.problems.empty()) {
      problems.insert(problems.end(), doc.problems.begin(), doc.problems.end());
      return;
    }
    NormalizedDocument nd = normalize(std::move(doc));
    problems.insert(problems.end(), nd.doc.problems.begin(), nd.doc.problems.end());
    apply_document(nd, loaded, problems);
  };
  for (const auto kind : {Layer::Kind::preset, Layer::Kind::file, Layer::Kind::override_value}) {
    for (const Layer& layer : layers_) {
      const bool same_stage =
          layer.kind == kind ||
          (kind == Layer::Kind::preset && layer.kind == Layer::Kind::preset_json) ||
          (kind == Layer::Kind::file && layer.kind == Layer::Kind::text);
      if (!same_stage) continue;
      switch (layer.kind) {
        case Layer::Kind::preset: {
          const std::optional<std::string_view> json =
              presets_ ? presets_->find(layer.payload) : std::nullopt;
          if (!json) {
            std::vector<std::string> names;
            if (presets_) {
              for (const std::string_view name : presets_->names()) names.emplace_back(name);
            }
            const auto near = detail::nearest_name(layer.payload, names);
            problems.push_back(
                {{"<presets>", 0, 0},
                 "",
                 names.empty()
                     ? fmt::format("unknown preset \"{}\" (this loader has no presets: use "
                                   "tune::config_loader())",
                                   layer.payload)
                     : fmt::format("unknown preset \"{}\" (expected one of {}{})", layer.payload,
                                   fmt::join(names, ", "),
                                   near ? fmt::format("; did you mean \"{}\"?", *near) : "")});
            break;
          }
          apply(detail::parse_json_document(*json, "preset " + layer.payload));
          break;
        }
        case Layer::Kind::file:
          try {
            apply(detail::parse_json_document(read_text_file(layer.payload), layer.source_name));
          } catch (const Error& error) {
            problems.push_back({{layer.source_name, 0, 0}, "", error.message()});
          }
          break;
        case Layer::Kind::preset_json:
        case Layer::Kind::text:
          apply(detail::parse_json_document(layer.payload, layer.source_name));
          break;
        case Layer::Kind::override_value:
          apply(override_document(layer.payload, layer.source_name));
          break;
      }
    }
  }
  if (problems.empty()) check_combinations(loaded, problems);
  if (problems.empty() && machine_ != nullptr) {
    auto machine_problems = check_against_machine(loaded, *machine_);
    problems.insert(problems.end(), machine_problems.begin(), machine_problems.end());
  }
  if (!problems.empty()) throw ConfigError(std::move(problems));
  return loaded;
}

Config load_config(const std::filesystem::path& path) {
  return ConfigLoader().file(path).load().config;
}

Config parse_config(std::string_view json, std::string_view source_name) {
  return ConfigLoader().text(std::string(json), std::string(source_name)).load().config;
}

std::string to_json(const Config& config, int indent) {
  return config_to_json(config).dump(indent);
}

std::vector<ConfigProblem> check_against_machine(const LoadedConfig& loaded,
                                                 const MachineInfo& machine) {
  std::vector<ConfigProblem> problems;
  const Config& c = loaded.config;
  auto located = [&](std::string_view path) {
    const SourceLocation* origin = loaded.origin(path);
    return origin ? *origin : SourceLocation{"<defaults>", 0, 0};
  };

  if (const auto& gib = c.performance.max_memory_usage_gib.get()) {
    const bool on_gpu = !machine.cuda_devices.empty();
    const std::int64_t have =
        on_gpu ? machine.cuda_devices.front().total_bytes : machine.memory.total_bytes;
    const std::string device = on_gpu ? machine.cuda_devices.front().name : "host memory";
    if (have > 0 && gib_to_bytes(*gib) > have) {
      problems.push_back({located("performance_optimization.max_memory_usage_gb"),
                          "performance_optimization.max_memory_usage_gb",
                          fmt::format("more than the device has (expected at most {:.1f} on {}, "
                                      "got {:.1f})",
                                      bytes_to_gib(have), device, *gib)});
    }
  }
  if (const auto& gib = c.system.memory_pool_size_gib.get()) {
    const std::int64_t have = machine.memory.total_bytes;
    if (have > 0 && gib_to_bytes(*gib) > have) {
      problems.push_back(
          {located("system_optimization.memory_pool_size_gb"),
           "system_optimization.memory_pool_size_gb",
           fmt::format("more than the host has (expected at most {:.1f}, got {:.1f})",
                       bytes_to_gib(have), *gib)});
    }
  }
  if (const auto& cores = c.system.cpu_affinity) {
    const auto& usable = machine.cpu.usable_cores;
    for (std::size_t i = 0; i < cores->size(); ++i) {
      const int core = (*cores)[i];
      if (std::find(usable.begin(), usable.end(), core) != usable.end()) continue;
      const std::string path = fmt::format("system_optimization.cpu_affinity[{}]", i);
      problems.push_back({located(path), path,
                          fmt::format("no such core (expected one of {}, got {})",
                                      detail::format_ranges(usable), core)});
    }
  }
  return problems;
}

}  // namespace apo

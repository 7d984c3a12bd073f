#include "apo_catch.hpp"

#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "apo/core/config.hpp"
#include "apo/core/machine.hpp"
#include "apo/tune/presets.hpp"

namespace fs = std::filesystem;

namespace {

const fs::path kData = APO_TEST_DATA_DIR;

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<fs::path> files_in(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<std::string> problems_of(const apo::ConfigLoader& loader) {
  try {
    loader.load();
  } catch (const apo::ConfigError& error) {
    std::vector<std::string> texts;
    for (const auto& p : error.problems()) texts.push_back(p.to_string());
    return texts;
  }
  return {};
}

// A bad config marks each expected problem on the line it belongs to:
//   "batch_size": 0  # expect: performance_optimization.batch_size: out of range (...)
//   ...  # expect(col 9): syntax error ...
// and the test expects "FILE:LINE[:COL]: TEXT" as a prefix of exactly one problem each.
std::vector<std::string> expectations(const fs::path& path) {
  std::vector<std::string> expected;
  std::ifstream in(path);
  const std::regex marker(R"(# expect(\(col (\d+)\))?: (.*)$)");
  int line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    std::smatch match;
    if (!std::regex_search(line, match, marker)) continue;
    std::string where = path.string() + ":" + std::to_string(line_number);
    if (match[2].matched) where += ":" + match[2].str();
    expected.push_back(where + ": " + match[3].str());
  }
  return expected;
}

}  // namespace

TEST_CASE("every configuration block of the guide loads as printed", "[config]") {
  const auto files = files_in(kData / "guide");
  REQUIRE(files.size() == 18);
  for (const auto& file : files) {
    INFO(file.string());
    CHECK_NOTHROW(apo::load_config(file));
  }
}

TEST_CASE("guide blocks set the values they print", "[config]") {
  const apo::Config rtx4090 = apo::load_config(kData / "guide" / "rtx4090.json");
  CHECK(rtx4090.performance.max_memory_usage_gib == apo::Auto<double>(20.0));
  CHECK(rtx4090.performance.parallel_execution);
  CHECK(rtx4090.performance.model_precision == apo::Precision::fp16);
  CHECK_FALSE(rtx4090.attention.enable_attention_slicing);

  const apo::Config rtx3080 = apo::load_config(kData / "guide" / "rtx3080.json");
  CHECK(rtx3080.performance.strategy == apo::Strategy::memory_first);
  CHECK(rtx3080.performance.model_precision == apo::Precision::fp8_e4m3);
  // memory_optimization's slicing keys are stored once, in attention_optimization.
  CHECK(rtx3080.attention.enable_attention_slicing);
  CHECK(rtx3080.attention.slice_size == 1);
  CHECK(rtx3080.memory.enable_cpu_offload);

  const apo::Config hdd = apo::load_config(kData / "guide" / "storage_hdd.json");
  CHECK(hdd.storage.temp_path == "/ssd/temp");
  CHECK(hdd.storage.preload_models);
  CHECK(hdd.storage.io_buffer_size_mb == 16);

  const apo::Config system = apo::load_config(kData / "guide" / "system_high_performance.json");
  CHECK(system.system.cpu_affinity == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7});
  CHECK(system.system.max_cpu_threads == apo::Auto<int>(16));

  const apo::Config speed = apo::load_config(kData / "guide" / "profile_speed_first.json");
  CHECK(speed.profile_name == "speed_first");
  CHECK(speed.target_generation_time_s == 30.0);
  CHECK(speed.performance.batch_size == 4);
  CHECK(speed.generation.num_inference_steps == 15);
  CHECK(speed.generation.enable_lightning_lora);
  CHECK(speed.attention.enable_attention_slicing);

  const apo::Config hunyuan = apo::load_config(kData / "guide" / "hunyuan_quality.json");
  CHECK(hunyuan.hunyuan.scheduler == apo::Sampler::ddim);
  CHECK(hunyuan.hunyuan.num_inference_steps == 75);
  CHECK_FALSE(hunyuan.hunyuan.enable_attention_slicing.has_value());
}

TEST_CASE("each malformed config fails with its file, line and key", "[config]") {
  const auto files = files_in(kData / "bad");
  REQUIRE(files.size() >= 15);
  for (const auto& file : files) {
    INFO(file.string());
    const auto expected = expectations(file);
    REQUIRE_FALSE(expected.empty());
    const auto problems = problems_of(apo::ConfigLoader().file(file));
    INFO("problems:\n"
         << [&] {
              std::string all;
              for (const auto& p : problems) all += p + "\n";
              return all;
            }());
    CHECK(problems.size() == expected.size());
    for (const auto& want : expected) {
      const auto matches = std::count_if(problems.begin(), problems.end(),
                                         [&](const std::string& p) { return p.starts_with(want); });
      CHECK(matches == 1);
    }
  }
}

TEST_CASE("a missing file is a problem naming the file", "[config]") {
  const auto problems = problems_of(apo::ConfigLoader().file("/no/such/config.json"));
  REQUIRE(problems.size() == 1);
  CHECK(problems[0] == "/no/such/config.json: no such file");
}

TEST_CASE("comments of all three kinds are skipped, but not inside strings", "[config]") {
  const apo::Config config = apo::parse_config(R"({
    // a line comment with "quotes" and a # sign
    "storage_optimization": {
      /* a block comment
         over two lines, with a " quote */
      "model_cache_path": "/models/#1 // not a comment", # trailing comment
      "temp_path": "C:\\tmp\\\"x\"" // escaped quotes stay inside the string
    }
  })");
  CHECK(config.storage.model_cache_path == "/models/#1 // not a comment");
  CHECK(config.storage.temp_path == "C:\\tmp\\\"x\"");
}

TEST_CASE("layers apply defaults, presets, files, then overrides, whatever the call order",
          "[config]") {
  const fs::path dir = fs::temp_directory_path() / "apo_layers_test";
  fs::create_directories(dir);
  std::ofstream(dir / "a.json") << R"({"performance_optimization": {"batch_size": 3}})";
  std::ofstream(dir / "b.json") << R"({"performance_optimization": {"batch_size": 5},
                                      "storage_optimization": {"async_io": false}})";

  const apo::LoadedConfig loaded = apo::tune::config_loader()
                                       .set("performance_optimization.batch_size=7")
                                       .file(dir / "a.json")
                                       .preset("rtx4090")
                                       .file(dir / "b.json")
                                       .load();
  CHECK(loaded.config.performance.batch_size == 7);        // the override wins
  CHECK_FALSE(loaded.config.storage.async_io);             // b.json
  CHECK(loaded.config.performance.parallel_execution);     // the preset
  CHECK(loaded.config.memory.cleanup_interval_s == 60.0);  // the default
  REQUIRE(loaded.origin("storage_optimization.async_io") != nullptr);
  CHECK(loaded.origin("storage_optimization.async_io")->to_string() ==
        (dir / "b.json").string() + ":2");
  CHECK(loaded.origin("memory_optimization.cleanup_interval_s") == nullptr);

  const apo::Config without_override =
      apo::ConfigLoader().file(dir / "b.json").file(dir / "a.json").load().config;
  CHECK(without_override.performance.batch_size == 3);  // later files win
  fs::remove_all(dir);
}

TEST_CASE("overrides take JSON values or plain strings", "[config]") {
  const apo::Config config = apo::ConfigLoader()
                                 .set("storage_optimization.temp_path=/fast/tmp")
                                 .set("performance_optimization.max_memory_usage_gb=12.5")
                                 .set("system_optimization.cpu_affinity=[0,1]")
                                 .set("performance_optimization.model_precision=\"int8\"")
                                 .load()
                                 .config;
  CHECK(config.storage.temp_path == "/fast/tmp");
  CHECK(config.performance.max_memory_usage_gib == apo::Auto<double>(12.5));
  CHECK(config.system.cpu_affinity == std::vector<int>{0, 1});
  CHECK(config.performance.model_precision == apo::Precision::int8);

  CHECK(problems_of(apo::ConfigLoader().set("no_equals_sign")) ==
        std::vector<std::string>{"override 'no_equals_sign': expected key.path=value"});
  CHECK(problems_of(apo::ConfigLoader().set("a..b=1")).size() == 1);
  const auto typo = problems_of(apo::ConfigLoader().set("performance_optimization.batchsize=2"));
  REQUIRE(typo.size() == 1);
  CHECK(typo[0].find("did you mean \"batch_size\"") != std::string::npos);
}

TEST_CASE("a loader without a catalog knows no presets", "[config]") {
  const auto problems = problems_of(apo::ConfigLoader().preset("rtx4090"));
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("has no presets") != std::string::npos);
}

TEST_CASE("an unknown preset is a problem with a suggestion", "[config]") {
  const auto problems = problems_of(apo::tune::config_loader().preset("rtx4900"));
  REQUIRE(problems.size() == 1);
  CHECK(problems[0].find("unknown preset \"rtx4900\"") != std::string::npos);
  CHECK(problems[0].find("did you mean \"rtx4090\"") != std::string::npos);
}

TEST_CASE("problems from several layers are all reported", "[config]") {
  const auto problems =
      problems_of(apo::ConfigLoader()
                      .text(R"({"performance_optimization": {"batch_size": 0}})", "first.json")
                      .text("{\n\"generation\": {\"guidance_scale\": -1}}", "second.json"));
  REQUIRE(problems.size() == 2);
  CHECK(problems[0].starts_with("first.json:1: performance_optimization.batch_size"));
  CHECK(problems[1].starts_with("second.json:2: generation.guidance_scale"));
}

TEST_CASE("the canonical JSON loads back unchanged", "[config]") {
  std::vector<apo::Config> configs{apo::Config{}};
  for (const auto& preset : apo::tune::presets()) {
    configs.push_back(apo::tune::config_loader().preset(std::string(preset.name)).load().config);
  }
  apo::Config custom;
  custom.system.cpu_affinity = std::vector<int>{1, 3};
  custom.performance.max_memory_usage_gib = 11.25;
  custom.hunyuan.guidance_scale = 6.5;
  custom.qwen.lighting_blend_mode = apo::BlendMode::overlay;
  configs.push_back(custom);
  for (const auto& config : configs) {
    const std::string json = apo::to_json(config);
    INFO(json);
    const apo::Config again = apo::parse_config(json);
    CHECK(again == config);
    CHECK(apo::to_json(again) == json);
  }
}

TEST_CASE("the built-in defaults are the guide's balanced profile", "[config]") {
  CHECK(apo::tune::config_loader().preset("balanced").load().config == apo::Config{});
}

TEST_CASE("a document's own aliases agree or conflict", "[config]") {
  const apo::Config same = apo::parse_config(R"({
    "memory_optimization": {"enable_attention_slicing": true},
    "attention_optimization": {"enable_attention_slicing": true}})");
  CHECK(same.attention.enable_attention_slicing);
}

TEST_CASE("checks against a machine find memory it lacks and cores it does not have", "[config]") {
  apo::MachineInfo machine;
  machine.cpu.logical_cores = 2;
  machine.cpu.usable_cores = {0, 1};
  machine.memory.total_bytes = 24 * apo::GiB;

  SECTION("CPU only: the memory budget is measured against the host") {
    const auto problems = problems_of(
        apo::ConfigLoader()
            .file(kData / "guide" / "system_high_performance.json")
            .text(R"({"performance_optimization": {"max_memory_usage_gb": 32}})", "mem.json")
            .check_against(machine));
    const std::string file = (kData / "guide" / "system_high_performance.json").string();
    REQUIRE(problems.size() == 7);
    CHECK(problems[0] ==
          "mem.json:1: performance_optimization.max_memory_usage_gb: more than the device has "
          "(expected at most 24.0 on host memory, got 32.0)");
    CHECK(problems[1] == file +
                             ":4: system_optimization.cpu_affinity[2]: no such core "
                             "(expected one of 0-1, got 2)");
  }
  SECTION("with a GPU: the budget is measured against device 0") {
    machine.cuda_devices.push_back({});
    machine.cuda_devices[0].name = "NVIDIA GeForce RTX 4060 Ti";
    machine.cuda_devices[0].total_bytes = 16 * apo::GiB;
    const auto problems = problems_of(
        apo::ConfigLoader().file(kData / "guide" / "rtx4090.json").check_against(machine));
    REQUIRE(problems.size() == 1);
    CHECK(problems[0].find("expected at most 16.0 on NVIDIA GeForce RTX 4060 Ti, got 20.0") !=
          std::string::npos);
    CHECK_NOTHROW(
        apo::ConfigLoader().file(kData / "guide" / "rtx4060ti.json").check_against(machine).load());
  }
}

TEST_CASE("hostile input never crashes the loader", "[config]") {
  SECTION("deep nesting") {
    const std::string deep(100000, '[');
    const auto problems = problems_of(apo::ConfigLoader().text(deep, "deep.json"));
    REQUIRE(problems.size() == 1);
    CHECK(problems[0].find("nested deeper than 64 levels") != std::string::npos);
  }
  SECTION("too large") {
    const std::string huge(17u << 20, ' ');
    const auto problems = problems_of(apo::ConfigLoader().text(huge, "huge.json"));
    REQUIRE(problems.size() == 1);
    CHECK(problems[0].find("too large") != std::string::npos);
  }
  SECTION("invalid UTF-8, NUL bytes and empty input") {
    for (const std::string text : {std::string("{\"a\": \"\xff\xfe\"}"), std::string("{\0}", 3),
                                   std::string(), std::string("   "), std::string("\"\\u12")}) {
      CHECK(problems_of(apo::ConfigLoader().text(text, "x.json")).size() == 1);
    }
  }
  SECTION("random mutations of a valid config load or fail cleanly") {
    const std::string base = read_file(kData / "guide" / "rtx3080.json");
    std::mt19937 rng(1234);
    const std::string alphabet = "{}[]\":,#/*\\\n 0123456789.-eEtrufalsn";
    for (int round = 0; round < 3000; ++round) {
      std::string text = base;
      const int edits = 1 + static_cast<int>(rng() % 4);
      for (int e = 0; e < edits; ++e) {
        const std::size_t at = rng() % text.size();
        switch (rng() % 3) {
          case 0:
            text[at] = alphabet[rng() % alphabet.size()];
            break;
          case 1:
            text.erase(at, 1 + rng() % 8);
            break;
          default:
            text.insert(at, 1, alphabet[rng() % alphabet.size()]);
            break;
        }
        if (text.empty()) text = "{";
      }
      try {
        apo::ConfigLoader().text(text, "mutant.json").load();
      } catch (const apo::ConfigError& error) {
        CHECK_FALSE(error.problems().empty());
      }
    }
  }
}

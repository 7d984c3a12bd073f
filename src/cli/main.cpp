// The apo command line: probe the machine, recommend a configuration, check and show configs,
// handle model files, train the reference models.

#include <chrono>
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "apo/core/config.hpp"
#include "apo/core/machine.hpp"
#include "apo/models/compression.hpp"
#include "apo/models/model.hpp"
#include "apo/models/safetensors.hpp"
#include "apo/quant/precision.hpp"
#include "apo/quant/state_dict.hpp"
#include "apo/tune/presets.hpp"
#include "apo/version.hpp"
#include "bench_commands.hpp"
#include "doctor_command.hpp"
#include "monitor_commands.hpp"
#include "progress.hpp"
#include "reference_commands.hpp"

namespace {

using Json = nlohmann::ordered_json;

constexpr int kExitProblems = 1;
constexpr int kExitUsage = 2;

template <class T>
std::string optional_text(const std::optional<T>& value, std::string_view format) {
  return value ? fmt::format(fmt::runtime(format), *value) : std::string();
}

void print_probe(const apo::MachineInfo& m) {
  fmt::print("apo {} (libtorch {})\n", m.apo_version, m.torch_version);
  fmt::print("CPU     {} ({} logical cores, {} usable)\n", m.cpu.model, m.cpu.logical_cores,
             m.cpu.usable_cores.size());
  fmt::print("Memory  {} total, {} available\n", apo::format_bytes(m.memory.total_bytes),
             apo::format_bytes(m.memory.available_bytes));
  fmt::print("CUDA    {}\n", m.cuda_status);
  for (const auto& d : m.cuda_devices) {
    fmt::print("  [{}] {}  {} total, {} free, compute {}.{}, {} SMs", d.index, d.name,
               apo::format_bytes(d.total_bytes), apo::format_bytes(d.free_bytes),
               d.compute_capability_major, d.compute_capability_minor, d.sm_count);
    const auto& t = d.telemetry;
    fmt::print("{}{}{}", optional_text(t.utilization_percent, ", {}% busy"),
               optional_text(t.temperature_c, ", {} C"), optional_text(t.power_w, ", {:.0f} W"));
    if (d.kernel_check) fmt::print(", kernel check: {}", *d.kernel_check);
    fmt::print("\n");
  }
  fmt::print("NVML    {}\n", m.nvml_status);
}

int run_probe(bool as_json, bool kernel_check) {
  const apo::MachineInfo machine = apo::probe_machine({.run_kernel_check = kernel_check});
  if (as_json) {
    fmt::print("{}\n", apo::to_json(machine));
  } else {
    print_probe(machine);
  }
  return 0;
}

Json expected_json(const std::optional<apo::tune::ExpectedPerformance>& expected) {
  if (!expected) return nullptr;
  const auto per_hour = expected->videos_per_hour();
  return {{"video_seconds", {expected->video.min_s, expected->video.max_s}},
          {"image_seconds", {expected->image.min_s, expected->image.max_s}},
          {"videos_per_hour", {per_hour.min_s, per_hour.max_s}}};
}

int run_recommend(const std::optional<std::string>& profile,
                  const std::optional<std::string>& workflow, bool as_json) {
  const apo::MachineInfo machine = apo::probe_machine();
  const apo::tune::Recommendation rec = apo::tune::recommend(machine, profile, workflow);
  const std::string config = apo::to_json(rec.loaded.config);
  if (as_json) {
    Json out;
    out["hardware_preset"] = rec.hardware;
    out["reasons"] = rec.reasons;
    out["expected_performance"] = expected_json(rec.expected);
    out["config"] = Json::parse(config);
    fmt::print("{}\n", out.dump(4));
    return 0;
  }
  // Comments start with '#', which apo's loader skips: the output is itself a config file.
  fmt::print("# apo recommend: hardware preset {}\n", rec.hardware);
  for (const auto& reason : rec.reasons) fmt::print("# - {}\n", reason);
  if (rec.expected) {
    const auto per_hour = rec.expected->videos_per_hour();
    fmt::print(
        "# expected (guide): video {:.0f}-{:.0f} s, image {:.0f}-{:.0f} s, "
        "{:.0f}-{:.0f} videos/hour\n",
        rec.expected->video.min_s, rec.expected->video.max_s, rec.expected->image.min_s,
        rec.expected->image.max_s, per_hour.min_s, per_hour.max_s);
  }
  fmt::print("{}\n", config);
  return 0;
}

void print_problems(const apo::ConfigError& error) {
  for (const auto& problem : error.problems()) fmt::print(stderr, "{}\n", problem.to_string());
}

int run_config_check(const std::vector<std::string>& files, bool portable) {
  const apo::MachineInfo machine = apo::probe_machine();
  int status = 0;
  for (const auto& file : files) {
    apo::ConfigLoader loader = apo::tune::config_loader();
    loader.file(file);
    if (!portable) loader.check_against(machine);
    try {
      loader.load();
      fmt::print("{}: ok\n", file);
    } catch (const apo::ConfigError& error) {
      print_problems(error);
      status = kExitProblems;
    }
  }
  return status;
}

int run_config_show(const std::vector<std::string>& files, const std::vector<std::string>& presets,
                    const std::vector<std::string>& overrides) {
  apo::ConfigLoader loader = apo::tune::config_loader();
  for (const auto& preset : presets) loader.preset(preset);
  for (const auto& file : files) loader.file(file);
  for (const auto& assignment : overrides) loader.set(assignment);
  try {
    fmt::print("{}\n", apo::to_json(loader.load().config));
    return 0;
  } catch (const apo::ConfigError& error) {
    print_problems(error);
    return kExitProblems;
  }
}

int run_presets(bool as_json) {
  if (as_json) {
    Json out = Json::array();
    for (const auto& preset : apo::tune::presets()) {
      out.push_back({{"name", preset.name},
                     {"kind", apo::to_string(preset.kind)},
                     {"summary", preset.summary},
                     {"expected_performance", expected_json(preset.expected)}});
    }
    fmt::print("{}\n", out.dump(4));
    return 0;
  }
  for (const auto& preset : apo::tune::presets()) {
    fmt::print("{:<16} {:<9} {}\n", preset.name, apo::to_string(preset.kind), preset.summary);
  }
  return 0;
}

int run_models_inspect(const std::string& path, bool as_json) {
  const auto file = apo::models::SafetensorsFile::open(path);
  std::int64_t total = 0;
  for (const auto& t : file.tensors()) total += t.bytes();
  const std::string codec = file.codec() ? std::string(apo::models::to_string(*file.codec())) : "";
  if (as_json) {
    Json out;
    out["path"] = file.path();
    out["stored_bytes"] = file.stored_bytes();
    out["codec"] = file.codec() ? Json(codec) : Json(nullptr);
    out["header_bytes"] = file.header().header_bytes;
    out["tensor_bytes"] = total;
    out["metadata"] = file.metadata();
    out["tensors"] = Json::array();
    for (const auto& t : file.tensors()) {
      out["tensors"].push_back({{"name", t.name},
                                {"dtype", apo::models::to_string(t.dtype)},
                                {"shape", t.shape},
                                {"bytes", t.bytes()},
                                {"data_offsets", {t.data_begin, t.data_end}}});
    }
    fmt::print("{}\n", out.dump(2));
    return 0;
  }
  fmt::print("{}: {} tensors, {} of data, {} stored{}\n", file.path(), file.tensors().size(),
             apo::format_bytes(total), apo::format_bytes(file.stored_bytes()),
             codec.empty() ? "" : " (" + codec + ")");
  for (const auto& [key, value] : file.metadata()) fmt::print("  metadata {} = {}\n", key, value);
  for (const auto& t : file.tensors()) {
    fmt::print("  {:<48} {:<8} {:<20} {:>12}\n", t.name, apo::models::to_string(t.dtype),
               fmt::format("[{}]", fmt::join(t.shape, ", ")), apo::format_bytes(t.bytes()));
  }
  return 0;
}

// Model files smaller than this are done before a progress bar would say anything useful.
constexpr std::int64_t kProgressMinBytes = std::int64_t{64} << 20;

int run_models_compress(const std::string& input, std::optional<std::string> output,
                        const std::string& codec_name, std::optional<int> level, int threads) {
  const auto codec = apo::parse_enum<apo::models::Codec>(codec_name);
  if (!codec) {
    fmt::print(stderr, "apo: unknown codec \"{}\" (expected zstd or xz)\n", codec_name);
    return kExitUsage;
  }
  const std::string target = output.value_or(input + std::string(apo::models::file_suffix(*codec)));
  apo::models::CompressionOptions options;
  options.codec = *codec;
  options.level = level;
  options.threads = threads;
  // On stderr, as the bars of quantize, whose stdout may be JSON.
  apo::cli::ProgressBar bar("bytes", stderr);
  options.on_progress = [&bar](std::int64_t done, std::int64_t total) {
    if (total >= kProgressMinBytes) bar.show("compressing", done, total);
  };
  const auto report = apo::models::compress_file(input, target, options);
  bar.finish();
  // Loading decompresses: time it too, as that is what every later start pays.
  const auto start = std::chrono::steady_clock::now();
  const auto file = apo::models::SafetensorsFile::open(target);
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double mb = static_cast<double>(report.input_bytes) / 1e6;
  fmt::print(
      "{} -> {} ({}): {} -> {}, ratio {:.3f}; compress {:.1f} MB/s, load {:.1f} MB/s, "
      "{} tensors\n",
      input, target, apo::models::to_string(*codec), apo::format_bytes(report.input_bytes),
      apo::format_bytes(report.output_bytes), report.ratio(), mb / report.seconds, mb / load_s,
      file.tensors().size());
  return 0;
}

// ComfyUI's scaled-fp8 layout (see apo::quant::comfyui_scaled_fp8): stock ComfyUI loads the file
// with its own loaders, no apo needed.
int run_models_quantize_comfyui(const apo::models::SafetensorsFile& file,
                                const apo::quant::NamedTensors& tensors, const std::string& output,
                                const std::string& format_name, bool scaling_given,
                                const std::string& scaling_name,
                                const std::vector<std::string>& keep, bool as_json) {
  const auto format = apo::parse_enum<apo::quant::QFormat>(format_name);
  if (!format ||
      (*format != apo::quant::QFormat::fp8_e4m3 && *format != apo::quant::QFormat::fp8_e5m2)) {
    fmt::print(stderr, "apo: --layout comfyui takes --format fp8_e4m3 or fp8_e5m2, not \"{}\"\n",
               format_name);
    return kExitUsage;
  }
  if (scaling_given && scaling_name != "per_tensor") {
    fmt::print(stderr,
               "apo: --layout comfyui scales per tensor (ComfyUI's scale_weight), not \"{}\"\n",
               scaling_name);
    return kExitUsage;
  }
  apo::cli::ProgressBar bar("bytes", stderr);
  const auto exported = apo::quant::comfyui_scaled_fp8(
      tensors, *format, keep, [&bar](std::int64_t done, std::int64_t total) {
        if (total >= kProgressMinBytes) bar.show("quantizing", done, total);
      });
  bar.finish();
  std::vector<apo::models::NamedTensor> named;
  named.reserve(exported.tensors.size());
  for (const auto& [name, tensor] : exported.tensors) named.push_back({name, tensor});
  apo::models::save_safetensors(output, named, file.metadata());
  if (as_json) {
    fmt::print("{}\n", exported.report.to_json());
    return 0;
  }
  fmt::print("{}", exported.report.to_table());
  fmt::print("wrote {} in ComfyUI's scaled-fp8 layout (diffusion model prefix \"{}\")\n", output,
             exported.prefix);
  return 0;
}

// Quantizes a model file: "auto" picks the best format that fits this machine's memory (device
// 0's budget, else the host's), as the engine would.
int run_models_quantize(const std::string& input, const std::string& output,
                        const std::string& format_name, const std::string& scaling_name,
                        bool scaling_given, const std::string& layout,
                        const std::vector<std::string>& keep, bool as_json) {
  const auto file = apo::models::SafetensorsFile::open(input);
  apo::quant::NamedTensors tensors;
  for (const auto& entry : file.tensors()) tensors.emplace_back(entry.name, file.view(entry.name));
  if (layout == "comfyui") {
    return run_models_quantize_comfyui(file, tensors, output, format_name, scaling_given,
                                       scaling_name, keep, as_json);
  }
  apo::quant::QuantizationRules rules;
  for (const auto& pattern : keep) rules.keep_patterns.push_back(pattern);
  const auto scaling = apo::parse_enum<apo::quant::Scaling>(scaling_name);
  if (!scaling || *scaling == apo::quant::Scaling::none) {
    fmt::print(stderr, "apo: unknown scaling \"{}\" (expected per_row or per_tensor)\n",
               scaling_name);
    return kExitUsage;
  }
  std::string why;
  if (format_name == "auto") {
    const apo::MachineInfo machine = apo::probe_machine();
    const std::int64_t available = machine.cuda_devices.empty()
                                       ? machine.memory.available_bytes
                                       : machine.cuda_devices.front().free_bytes;
    apo::quant::PrecisionSettings performance;
    performance.precision = apo::Precision::automatic;
    performance.allow_8bit = true;
    const auto choice = apo::quant::choose_precision(
        performance, apo::quant::footprint_of(tensors, rules), available);
    rules.spec = choice.spec;
    why = choice.reason;
  } else {
    const auto format = apo::parse_enum<apo::quant::QFormat>(format_name);
    if (!format || *format == apo::quant::QFormat::none) {
      fmt::print(stderr,
                 "apo: unknown format \"{}\" (expected fp8_e4m3, fp8_e5m2, int8, fp16, "
                 "bf16 or auto)\n",
                 format_name);
      return kExitUsage;
    }
    rules.spec = {*format,
                  apo::quant::traits(*format).scaled ? *scaling : apo::quant::Scaling::none};
  }
  // On stderr: stdout may be the JSON report.
  apo::cli::ProgressBar bar("bytes", stderr);
  const auto quantized = apo::quant::quantize_state_dict(
      tensors, rules, [&bar](std::int64_t done, std::int64_t total) {
        if (total >= kProgressMinBytes) bar.show("quantizing", done, total);
      });
  bar.finish();
  apo::models::write_model_weights(output, quantized.tensors, file.metadata());
  if (as_json) {
    fmt::print("{}\n", quantized.report.to_json());
    return 0;
  }
  if (!why.empty()) fmt::print("auto: {}\n", why);
  fmt::print("{}", quantized.report.to_table());
  fmt::print("wrote {} ({} -> {})\n", output, apo::format_bytes(quantized.report.bytes_before),
             apo::format_bytes(quantized.report.bytes_after));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"apo: fast, memory-frugal diffusion workflows"};
  app.set_version_flag("--version", std::string("apo ") + APO_VERSION_STRING);
  app.require_subcommand(1);

  bool as_json = false;
  bool kernel_check = false;
  auto* probe = app.add_subcommand("probe", "Show this machine: CPU, memory, CUDA devices");
  probe->add_flag("--json", as_json, "Print JSON");
  probe->add_flag("--kernel-check", kernel_check, "Run a small apo kernel on each CUDA device");

  std::optional<std::string> profile;
  std::optional<std::string> workflow;
  auto* recommend =
      app.add_subcommand("recommend", "Print the configuration apo recommends for this machine");
  recommend->add_option("--profile", profile, "speed_first, balanced or quality_first");
  recommend->add_option("--workflow", workflow, "A workflow preset (see 'apo presets')");
  recommend->add_flag("--json", as_json, "Print JSON with the reasons");

  auto* presets = app.add_subcommand("presets", "List the hardware, profile and workflow presets");
  presets->add_flag("--json", as_json, "Print JSON");

  auto* config = app.add_subcommand("config", "Check or show configuration files");
  config->require_subcommand(1);
  std::vector<std::string> check_files;
  bool portable = false;
  auto* check =
      config->add_subcommand("check", "Validate files; exit 1 with one message per problem");
  check->add_option("files", check_files, "Configuration files")->required();
  check->add_flag("--portable", portable, "Skip the checks against this machine (memory, cores)");

  std::vector<std::string> show_files;
  std::vector<std::string> show_presets;
  std::vector<std::string> overrides;
  auto* show = config->add_subcommand(
      "show", "Print the effective configuration: defaults, presets, files, then --set");
  show->add_option("files", show_files, "Configuration files, applied in order");
  show->add_option("--preset", show_presets, "A preset to apply first (repeatable)");
  show->add_option("--set", overrides, "An override key.path=value (repeatable)");

  auto* models = app.add_subcommand("models", "Inspect and compress model files");
  models->require_subcommand(1);
  std::string model_file;
  auto* inspect =
      models->add_subcommand("inspect", "List a safetensors file's tensors and metadata");
  inspect->add_option("file", model_file, "A .safetensors file (compressed ones too)")->required();
  inspect->add_flag("--json", as_json, "Print JSON");
  std::optional<std::string> compressed_file;
  std::string codec = "zstd";
  std::optional<int> level;
  int threads = 0;
  auto* compress =
      models->add_subcommand("compress", "Write a zstd (or xz) compressed copy that apo loads");
  compress->add_option("file", model_file, "The file to compress")->required();
  compress->add_option("-o,--output", compressed_file, "Output path (default: FILE.zst / FILE.xz)");
  compress->add_option("--codec", codec, "zstd (default) or xz");
  compress->add_option("--level", level, "zstd 1-19 (default 3), xz 0-9 (default 6)");
  compress->add_option("--threads", threads, "Compression threads (default: one per core)");

  std::string quantized_file;
  std::string format = "fp8_e4m3";
  std::string scaling = "per_row";
  std::vector<std::string> keep;
  auto* quantize = models->add_subcommand(
      "quantize", "Write a quantized copy (scales beside the weights) that apo loads as is");
  quantize->add_option("input", model_file, "A .safetensors file")->required();
  quantize->add_option("output", quantized_file, "Where to write the quantized file")->required();
  quantize->add_option("--format", format,
                       "fp8_e4m3 (default), fp8_e5m2, int8, fp16, bf16 or auto");
  auto* scaling_option =
      quantize->add_option("--scaling", scaling, "per_row (default) or per_tensor");
  std::string layout = "apo";
  quantize
      ->add_option("--layout", layout,
                   "apo (default: scales beside the weights, for apo) or comfyui (ComfyUI's "
                   "scaled-fp8 checkpoint layout, for stock ComfyUI)")
      ->check(CLI::IsMember({"apo", "comfyui"}));
  quantize->add_option("--keep", keep, "Also keep tensors matching this regex (repeatable)");
  quantize->add_flag("--json", as_json, "Print the report as JSON");

  apo::cli::ReferenceCommands reference;
  reference.add(app);
  apo::cli::BenchCommands bench;
  bench.add(app);
  apo::cli::DoctorCommand doctor;
  doctor.add(app);
  apo::cli::MonitorCommands monitor_commands;
  monitor_commands.add(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    const int code = app.exit(error);
    return code == 0 ? 0 : kExitUsage;
  }

  try {
    if (auto code = reference.run()) return *code;
    if (auto code = bench.run()) return *code;
    if (auto code = doctor.run()) return *code;
    if (auto code = monitor_commands.run()) return *code;
    if (*probe) return run_probe(as_json, kernel_check);
    if (*recommend) return run_recommend(profile, workflow, as_json);
    if (*presets) return run_presets(as_json);
    if (*check) return run_config_check(check_files, portable);
    if (*show) return run_config_show(show_files, show_presets, overrides);
    if (*inspect) return run_models_inspect(model_file, as_json);
    if (*compress) return run_models_compress(model_file, compressed_file, codec, level, threads);
    if (*quantize) {
      return run_models_quantize(model_file, quantized_file, format, scaling,
                                 scaling_option->count() > 0, layout, keep, as_json);
    }
  } catch (const apo::ConfigError& error) {
    print_problems(error);
    return kExitProblems;
  } catch (const apo::Error& error) {
    fmt::print(stderr, "apo: {}\n", error.what());
    return kExitProblems;
  }
  return kExitUsage;
}

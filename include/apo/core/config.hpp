#pragma once

/// @file
/// @brief The typed configuration: every block of the performance tuning guide, with the
/// built-in defaults as member initializers (they equal the guide's balanced profile), and the
/// loader that layers defaults, presets, files and overrides with validation.
///
/// Each block lists its fields once, in `fields()`: the JSON key, the member and the limits. The
/// loader, the validator, the JSON writer and the "did you mean" suggestions all walk that list,
/// so a field is declared in exactly one place.

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "apo/core/error.hpp"
#include "apo/core/settings.hpp"
#include "apo/core/units.hpp"

namespace apo {

struct MachineInfo;

// ---------------------------------------------------------------------------------------------
// Field vocabulary

/// @brief A value apo derives from the machine unless the config gives one; JSON: "auto" or a
/// value.
template <class T>
class Auto {
 public:
  constexpr Auto() = default;
  constexpr Auto(T value) : value_(value) {}  // NOLINT: implicit, so `field = 8.0` reads well

  constexpr bool is_auto() const noexcept { return !value_.has_value(); }
  constexpr const std::optional<T>& get() const noexcept { return value_; }
  constexpr T value_or(T fallback) const noexcept { return value_.value_or(fallback); }

  friend constexpr bool operator==(const Auto&, const Auto&) = default;

 private:
  std::optional<T> value_;
};

/// @brief A string that must not be empty.
struct NonEmpty {};
/// @brief A list of regular expressions (ECMAScript), each checked to compile.
struct RegexList {};

// ---------------------------------------------------------------------------------------------
// Blocks

/// @brief "performance_optimization": precision, memory budget and batch size.
struct PerformanceOptimization {
  Strategy strategy = Strategy::balanced;
  Precision model_precision = Precision::fp16;
  /// Lets the engine store weights in 8 bits. fp8 and int8 precisions quantize regardless; with
  /// "auto" this decides whether 8-bit formats are among the choices.
  bool enable_quantization = false;
  /// Device memory apo may use, in GiB; "auto" derives it from the device (tune/presets.hpp).
  Auto<double> max_memory_usage_gib;
  int batch_size = 2;
  /// Largest batch the dynamic batcher may form (the guide's DynamicBatcher caps at 8).
  int max_batch_size = 8;
  bool parallel_execution = false;
  /// Dynamic precision choice keeps weights within this share of the memory (the guide: 80%).
  double quantization_memory_fraction = 0.8;
  /// Weights whose names match one of these regular expressions stay in their source precision,
  /// besides those apo always keeps (biases, norms, embeddings, input and output projections).
  std::vector<std::string> keep_full_precision;
  /// Weights with fewer elements stay in their source precision (small models lower it).
  int quantization_min_elements = kQuantizeMinElements;

  template <class Self, class V>
  static void fields(Self& s, V& v) {
    v.field("strategy", s.strategy);
    v.field("model_precision", s.model_precision);
    v.field("enable_quantization", s.enable_quantization);
    v.field("max_memory_usage_gb", s.max_memory_usage_gib, kPositive);
    v.field("batch_size", s.batch_size, Range{1, 64});
    v.field("max_batch_size", s.max_batch_size, Range{1, 64});
    v.field("parallel_execution", s.parallel_execution);
    v.field("quantization_memory_fraction", s.quantization_memory_fraction, kFraction);
    v.field("keep_full_precision", s.keep_full_precision, RegexList{});
    v.field("quantization_min_elements", s.quantization_min_elements, Range{0, 1e9});
  }
  friend bool operator==(const PerformanceOptimization&, const PerformanceOptimization&) = default;
};

/// @brief "memory_optimization": offloading, sharing and cleanup. The guide also writes
/// enable_attention_slicing and attention_slice_size here; the loader moves them to
/// attention_optimization, where they live.
struct MemoryOptimization {
  bool enable_cpu_offload = false;
  bool enable_sequential_cpu_offload = false;
  bool enable_model_sharing = true;
  bool aggressive_cleanup = false;
  /// Period of the background cleanup (the guide's MemoryManager: 60 s).
  double cleanup_interval_s = 60.0;
  /// Models are evicted when use would pass this share of a budget (the guide: 80%).
  double eviction_threshold = 0.8;

  template <class Self, class V>
  static void fields(Self& s, V& v) {
    v.field("enable_cpu_offload", s.enable_cpu_offload);
    v.field("enable_sequential_cpu_offload", s.enable_sequential_cpu_offload);
    v.field("enable_model_sharing", s.enable_model_sharing);
    v.field("aggressive_cleanup", s.aggressive_cleanup);
    v.field("cleanup_interval_s", s.cleanup_interval_s, kPositive);
    v.field("eviction_threshold", s.eviction_threshold, kFraction);
  }
  friend bool operator==(const MemoryOptimization&, const MemoryOptimization&) = default;
};

/// @brief "attention_optimization".
struct AttentionOptimization {
  bool enable_attention_slicing = false;
  /// Slices per attention call: smaller uses less memory and runs slower.
  int slice_size = 1;
  bool enable_memory_efficient_attention = true;
  bool use_flash_attention = true;

  template <class Self, class V>
  static void fields(Self& s, V& v) {
    v.field("enable_attention_slicing", s.enable_attention_slicing);
    v.field("slice_size", s.slice_size, Range{1, 4096});
    v.field("enable_memory_efficient_attention", s.enable_memory_efficient_attention);
    v.field("use_flash_attention", s.use_flash_attention);
  }
  friend bool operator==(const AttentionOptimization&, const AttentionOptimization&) = default;
};

/// @brief "system_optimization": CPU threads, affinity, host memory pool, I/O threads.
struct SystemOptimization {
  Auto<int> max_cpu_threads;
  /// Cores to pin worker threads to; unset (null) means no pinning.
  std::optional<std::vector<int>> cpu_affinity;
  bool enable_cpu_boost = false;
  Auto<double> memory_pool_size_gib;
  int io_threads = 4;

  template <class Self, class V>
  static void fields(Self& s, V& v) {
    v.field("max_cpu_threads", s.max_cpu_threads, Range{1, 4096});
    v.field("cpu_affinity", s.cpu_affinity, Range{0, 65535});
    v.field("enable_cpu_boost", s.enable_cpu_boost);
    v.field("memory_pool_size_gb", s.memory_pool_size_gib, kPositive);
    v.field("io_threads", s.io_threads, Range{1, 256});
  }
  friend bool operator==(const SystemOptimization&, const SystemOptimization&) = default;
};

/// @brief "storage_optimization": where models, temporaries and outputs live, and how they are
/// read.
struct StorageOptimization {
  std::string model_cache_path = "models";
  std::string temp_path = "tmp";
  std::string output_path = "outputs";
  bool enable_compression = false;
  int io_buffer_size_mb = 64;
  bool async_io = true;
  bool preload_models = false;
  /// Preload a model when its predicted probability of use passes this (the guide: 0.3).
  double preload_threshold = 0.3;

  template <class Self, class V>
  static void fields(Self& s, V& v) {
    v.field("model_cache_path", s.model_cache_path, NonEmpty{});
    v.field("temp_path", s.temp_path, NonEmpty{});
    v.field("output_path", s.output_path, NonEmpty{});
    v.field("enable_compression", s.enable_compression);
    v.field("io_buffer_size_mb", s.io_buffer_size_mb, Range{1, 4096});
    v.field("async_io", s.async_io);
    v.field("preload_models", s.preload_models);
    v.field("preload_threshold", s.preload_threshold, kUnitInterval);
  }
  friend bool operator==(const StorageOptimization&, const StorageOptimization&) = default;
};

/// @brief "generation": the sampling settings a profile chooses (the guide's profile
/// "settings", minus precision, batch size and slicing, which live in their own blocks).
struct GenerationSettings {
  int num_inference_steps = 30;
  double guidance_scale = 7.5;
  bool enable_lightning_lora = false;
  bool use_fast_scheduler = false;
  bool use_high_quality_scheduler = false;
  bool enable_refinement = false;

  template <class Self, class V>
  static void fields(Self& s, V& v) {
    v.field("num_inference_steps", s.num_inference_steps, kSteps);
    v.field("guidance_scale", s.guidance_scale, kGuidance);
    v.field("enable_lightning_lora", s.enable_lightning_lora);
    v.field("use_fast_scheduler", s.use_fast_scheduler);
    v.field("use_high_quality_scheduler", s.use_high_quality_scheduler);
    v.field("enable_refinement", s.enable_refinement);
  }
  friend bool operator==(const GenerationSettings&, const GenerationSettings&) = default;
};

/// @brief "hunyuan_optimization". Unset (null) fields inherit the generation and attention
/// settings.
struct HunyuanOptimization {
  bool enable_fast_sampling = false;
  std::optional<int> num_inference_steps;
  std::optional<double> guidance_scale;
  bool enable_cfg_rescale = false;
  double cfg_rescale_multiplier = 0.7;
  std::optional<Sampler> scheduler;
  std::optional<bool> enable_attention_slicing;
  std::optional<int> attention_slice_size;
  bool enable_temporal_consistency = false;

  template <class Self, class V>
  static void fields(Self& s, V& v) {
    v.field("enable_fast_sampling", s.enable_fast_sampling);
    v.field("num_inference_steps", s.num_inference_steps, kSteps);
    v.field("guidance_scale", s.guidance_scale, kGuidance);
    v.field("enable_cfg_rescale", s.enable_cfg_rescale);
    v.field("cfg_rescale_multiplier", s.cfg_rescale_multiplier, kUnitInterval);
    v.field("scheduler", s.scheduler);
    v.field("enable_attention_slicing", s.enable_attention_slicing);
    v.field("attention_slice_size", s.attention_slice_size, Range{1, 4096});
    v.field("enable_temporal_consistency", s.enable_temporal_consistency);
  }
  friend bool operator==(const HunyuanOptimization&, const HunyuanOptimization&) = default;
};

/// @brief "wan_optimization": the guide's WanVideoOptimizer settings (lightning and inpainting).
struct WanOptimization {
  bool use_lightning_lora = false;
  int lightning_steps = 4;
  /// Distilled (lightning) models run without classifier-free guidance: 1.0 (see docs/config.md).
  double lightning_guidance_scale = 1.0;
  bool enable_noise_scheduling = false;
  NoiseSchedule noise_schedule = NoiseSchedule::linear;
  double dual_guidance_strength = 0.8;
  double inpaint_strength = 0.7;
  bool preserve_structure = false;
  bool enable_edge_enhancement = false;

  template <class Self, class V>
  static void fields(Self& s, V& v) {
    v.field("use_lightning_lora", s.use_lightning_lora);
    v.field("lightning_steps", s.lightning_steps, Range{1, 16});
    v.field("lightning_guidance_scale", s.lightning_guidance_scale, kGuidance);
    v.field("enable_noise_scheduling", s.enable_noise_scheduling);
    v.field("noise_schedule", s.noise_schedule);
    v.field("dual_guidance_strength", s.dual_guidance_strength, kUnitInterval);
    v.field("inpaint_strength", s.inpaint_strength, kUnitInterval);
    v.field("preserve_structure", s.preserve_structure);
    v.field("enable_edge_enhancement", s.enable_edge_enhancement);
  }
  friend bool operator==(const WanOptimization&, const WanOptimization&) = default;
};

/// @brief "newbie_optimization": the guide's NewBieOptimizer settings (anime images).
struct NewBieOptimization {
  std::optional<int> num_inference_steps;
  std::optional<double> guidance_scale;
  bool enable_karras_sigmas = false;
  std::optional<Sampler> scheduler;
  bool enable_vae_slicing = false;
  bool enable_attention_refinement = false;
  int refinement_steps = 10;

  template <class Self, class V>
  static void fields(Self& s, V& v) {
    v.field("num_inference_steps", s.num_inference_steps, kSteps);
    v.field("guidance_scale", s.guidance_scale, kGuidance);
    v.field("enable_karras_sigmas", s.enable_karras_sigmas);
    v.field("scheduler", s.scheduler);
    v.field("enable_vae_slicing", s.enable_vae_slicing);
    v.field("enable_attention_refinement", s.enable_attention_refinement);
    v.field("refinement_steps", s.refinement_steps, Range{0, 1000});
  }
  friend bool operator==(const NewBieOptimization&, const NewBieOptimization&) = default;
};

/// @brief "qwen_optimization": the guide's QwenOptimizer settings (relighting, layers).
struct QwenOptimization {
  bool use_lightning_lora = false;
  int lightning_steps = 4;
  double preserve_structure_strength = 0.9;
  BlendMode lighting_blend_mode = BlendMode::soft_light;
  LayerStrategy layer_generation_strategy = LayerStrategy::sequential;
  bool enable_layer_caching = false;
  bool compositing_optimization = false;
  int max_concurrent_layers = 1;

  template <class Self, class V>
  static void fields(Self& s, V& v) {
    v.field("use_lightning_lora", s.use_lightning_lora);
    v.field("lightning_steps", s.lightning_steps, Range{1, 16});
    v.field("preserve_structure_strength", s.preserve_structure_strength, kUnitInterval);
    v.field("lighting_blend_mode", s.lighting_blend_mode);
    v.field("layer_generation_strategy", s.layer_generation_strategy);
    v.field("enable_layer_caching", s.enable_layer_caching);
    v.field("compositing_optimization", s.compositing_optimization);
    v.field("max_concurrent_layers", s.max_concurrent_layers, Range{1, 64});
  }
  friend bool operator==(const QwenOptimization&, const QwenOptimization&) = default;
};

/// @brief "scheduling": the request queue, dynamic batching and placement across devices
/// (include/apo/sched, include/apo/batch). Batch sizes themselves are
/// performance_optimization.batch_size (fixed) and .max_batch_size (dynamic cap).
struct Scheduling {
  QueuePolicy queue_policy = QueuePolicy::priority;
  BatchPolicy batch_policy = BatchPolicy::memory_aware;
  /// Requests a queue holds; a submit beyond it is Rejected (Triton's max_queue_size).
  int max_queue_size = 1024;
  /// Priorities run 0 (lowest) to priority_levels − 1 (highest).
  int priority_levels = 10;
  /// Aging: after this wait a request outranks every newly submitted one, whatever their
  /// priorities (one priority level per aging_bound_s / (priority_levels − 1) of waiting).
  double aging_bound_s = 300.0;
  /// Deadline given to requests that set none, in seconds after submission; 0: none.
  double default_timeout_s = 0.0;
  /// How long a batch may wait for more requests after its head was submitted (Triton's
  /// max_queue_delay_microseconds).
  double max_queue_delay_ms = 100.0;
  /// Throughput samples the dynamic batcher averages over (the guide's last 5).
  int throughput_window = 5;
  /// A throughput sample this fraction below the average counts as a fall.
  double throughput_tolerance = 0.05;
  /// Batches one device runs at the same time (its worker count).
  int batches_per_device = 1;
  /// Placement score = utilization_weight × utilization + memory_pressure_weight × (1 − free ÷
  /// budget), the guide's MultiGPUProcessor formula with weights 1 and 1.
  double utilization_weight = 1.0;
  double memory_pressure_weight = 1.0;

  template <class Self, class V>
  static void fields(Self& s, V& v) {
    v.field("queue_policy", s.queue_policy);
    v.field("batch_policy", s.batch_policy);
    v.field("max_queue_size", s.max_queue_size, Range{1, 10'000'000});
    v.field("priority_levels", s.priority_levels, Range{1, 1000});
    v.field("aging_bound_s", s.aging_bound_s, Range{0.001, 1e6});
    v.field("default_timeout_s", s.default_timeout_s, Range{0, 1e6});
    v.field("max_queue_delay_ms", s.max_queue_delay_ms, Range{0, 60'000});
    v.field("throughput_window", s.throughput_window, Range{1, 1000});
    v.field("throughput_tolerance", s.throughput_tolerance, kUnitInterval);
    v.field("batches_per_device", s.batches_per_device, Range{1, 64});
    v.field("utilization_weight", s.utilization_weight, Range{0, 100});
    v.field("memory_pressure_weight", s.memory_pressure_weight, Range{0, 100});
  }
  friend bool operator==(const Scheduling&, const Scheduling&) = default;
};

/// @brief "monitoring": what PerformanceMonitor samples and when it alerts. The guide's
/// monitoring chapter has no JSON block; the defaults are its numbers (a sample every 5 s, 1000
/// kept, summaries over the last 100, alerts at VRAM > 80%, RAM > 70%, GPU use < 60% while busy).
struct Monitoring {
  double sample_interval_s = 5.0;
  int history_size = 1000;
  int summary_window = 100;
  double vram_alert_fraction = 0.8;
  double ram_alert_fraction = 0.7;
  /// A busy GPU used less than this share of the time is under-fed (batches too small).
  double low_gpu_utilization_fraction = 0.6;
  /// Samples in a row that must agree before an alert is raised, and again before it clears.
  int alert_hysteresis_samples = 3;
  /// Chrome trace-event spans (engine, model loads, each denoising step); off costs one load.
  bool enable_tracing = false;

  template <class Self, class V>
  static void fields(Self& s, V& v) {
    v.field("sample_interval_s", s.sample_interval_s, Range{0.01, 3600});
    v.field("history_size", s.history_size, Range{1, 1'000'000});
    v.field("summary_window", s.summary_window, Range{1, 1'000'000});
    v.field("vram_alert_fraction", s.vram_alert_fraction, kFraction);
    v.field("ram_alert_fraction", s.ram_alert_fraction, kFraction);
    v.field("low_gpu_utilization_fraction", s.low_gpu_utilization_fraction, kUnitInterval);
    v.field("alert_hysteresis_samples", s.alert_hysteresis_samples, Range{1, 1000});
    v.field("enable_tracing", s.enable_tracing);
  }
  friend bool operator==(const Monitoring&, const Monitoring&) = default;
};

/// @brief The whole configuration. The profile's identity and targets sit at the top level,
/// as the guide writes them.
struct Config {
  std::string profile_name = "balanced";
  double target_generation_time_s = 90.0;
  double acceptable_quality_loss = 0.05;

  PerformanceOptimization performance;
  MemoryOptimization memory;
  AttentionOptimization attention;
  SystemOptimization system;
  StorageOptimization storage;
  GenerationSettings generation;
  HunyuanOptimization hunyuan;
  WanOptimization wan;
  NewBieOptimization newbie;
  QwenOptimization qwen;
  Scheduling scheduling;
  Monitoring monitoring;

  template <class Self, class V>
  static void fields(Self& s, V& v) {
    v.field("profile_name", s.profile_name, NonEmpty{});
    v.field("target_generation_time", s.target_generation_time_s, kPositive);
    v.field("acceptable_quality_loss", s.acceptable_quality_loss, kUnitInterval);
    v.block("performance_optimization", s.performance);
    v.block("memory_optimization", s.memory);
    v.block("attention_optimization", s.attention);
    v.block("system_optimization", s.system);
    v.block("storage_optimization", s.storage);
    v.block("generation", s.generation);
    v.block("hunyuan_optimization", s.hunyuan);
    v.block("wan_optimization", s.wan);
    v.block("newbie_optimization", s.newbie);
    v.block("qwen_optimization", s.qwen);
    v.block("scheduling", s.scheduling);
    v.block("monitoring", s.monitoring);
  }
  friend bool operator==(const Config&, const Config&) = default;
};

// ---------------------------------------------------------------------------------------------
// Loading

/// @brief Where a value came from: a file (or preset, or override) and a 1-based line; column
/// is set for syntax errors. line 0 means "the source as a whole".
struct SourceLocation {
  std::string source;
  int line = 0;
  int column = 0;

  /// @brief "FILE:LINE" or "FILE:LINE:COLUMN" or "FILE".
  std::string to_string() const;
};

/// @brief One thing wrong with a configuration: "FILE:LINE: key.path: what is wrong (expected …,
/// got …)".
struct ConfigProblem {
  SourceLocation where;
  std::string key_path;  ///< as the user wrote it: "settings.batch_size", "cpu_affinity[2]"
  std::string message;

  std::string to_string() const;
};

/// @brief A configuration that failed to load; problems() has every problem found, in order.
class ConfigError : public Error {
 public:
  explicit ConfigError(std::vector<ConfigProblem> problems);
  const std::vector<ConfigProblem>& problems() const noexcept { return problems_; }

 private:
  std::vector<ConfigProblem> problems_;
};

/// @brief A loaded configuration and, for each key path that a layer set, where it was set last.
struct LoadedConfig {
  Config config;
  std::map<std::string, SourceLocation, std::less<>> origins;

  /// @brief Where `key_path` ("performance_optimization.batch_size") was set, or nullptr when it
  /// holds its built-in default.
  const SourceLocation* origin(std::string_view key_path) const;
};

/// @brief Named configuration layers that ConfigLoader::preset applies by name. apo's own (the
/// guide's hardware presets, profiles and workflow presets) are tune::preset_catalog(): core
/// knows only this interface, so it never depends on tune.
class PresetCatalog {
 public:
  virtual ~PresetCatalog() = default;
  /// @brief The layer's JSON, or nullopt for a name the catalog does not hold.
  virtual std::optional<std::string_view> find(std::string_view name) const = 0;
  /// @brief Every name the catalog holds, for messages.
  virtual std::vector<std::string_view> names() const = 0;
};

/// @brief Builds a configuration from layers, applied in this order whatever the call order:
/// built-in defaults, presets (tune/presets.hpp), files and texts, then explicit overrides. Each
/// layer only changes the keys it names. Every layer is validated on its own, so each problem
/// names its own file and line; load() reports all of them at once in a ConfigError.
///
/// JSON may carry comments (`//`, `/* */` and `#` to the end of a line), as the guide's examples
/// do. Aliases the guide uses are accepted and stored once: a profile's "settings" block and
/// memory_optimization's attention slicing keys (see docs/config.md).
class ConfigLoader {
 public:
  /// @brief A loader without presets: preset() then reports every name as unknown.
  ConfigLoader() = default;
  /// @brief A loader whose preset() looks names up in `presets`, which must outlive it
  /// (tune::config_loader() gives one over apo's presets).
  explicit ConfigLoader(const PresetCatalog& presets) : presets_(&presets) {}

  /// @brief Adds a preset layer by name (a hardware preset, profile or workflow preset).
  ConfigLoader& preset(std::string name);
  /// @brief Adds a preset layer given as JSON (the automatic preset for a machine, say); preset
  /// layers apply in the order they were added.
  ConfigLoader& preset_json(std::string json, std::string source_name);
  /// @brief Adds a file layer; problems name the file as given.
  ConfigLoader& file(std::filesystem::path path);
  /// @brief Adds a layer from JSON text; problems name `source_name`.
  ConfigLoader& text(std::string json, std::string source_name = "<string>");
  /// @brief Adds an explicit override "key.path=value"; the value is JSON, or else a string.
  ConfigLoader& set(std::string assignment);
  /// @brief Also checks the result against a machine: memory above what it has, cores it lacks.
  ConfigLoader& check_against(const MachineInfo& machine);

  /// @brief Applies every layer; throws ConfigError listing every problem found.
  LoadedConfig load() const;

 private:
  struct Layer {
    enum class Kind { preset, preset_json, file, text, override_value } kind;
    std::string payload;
    std::string source_name;
  };
  std::vector<Layer> layers_;
  const PresetCatalog* presets_ = nullptr;
  const MachineInfo* machine_ = nullptr;
};

/// @brief Loads one file over the built-in defaults.
Config load_config(const std::filesystem::path& path);
/// @brief Parses JSON text over the built-in defaults.
Config parse_config(std::string_view json, std::string_view source_name = "<string>");
/// @brief The configuration as canonical JSON (every key, "auto" where apo decides); it loads
/// back to an equal Config.
std::string to_json(const Config& config, int indent = 4);
/// @brief Problems of a loaded configuration on a given machine (memory above the device or the
/// host, affinity cores that do not exist), located by the layer that set each value.
std::vector<ConfigProblem> check_against_machine(const LoadedConfig& loaded,
                                                 const MachineInfo& machine);

}  // namespace apo
